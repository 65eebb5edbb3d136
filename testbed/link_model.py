"""The link model: rate, drop-tail queue, loss, delay and jitter of one link, sans-I/O.

One object per direction of a link. The caller hands it each frame and the current time and gets
back when that frame arrives at the far end, or ``None`` if the link drops it::

    d = LinkDirection(rate_bps=10e6, delay_s=0.020, queue_bytes=100_000, seed=7)
    due = d.offer(1514, now)        # -> float seconds, or None

The model never reads a clock, sleeps or touches a socket. The ``sim`` backend calls it on its
virtual clock; the user-space shaper (two veths, AF_PACKET, a heap of due times) calls the same
code with ``time.monotonic()`` and sends each frame when its due time comes. ``now`` must not go
backwards between calls.

What happens to a frame, in order (each rule is a test in ``tests/test_link_model.py``):

1. **Loss.** Decided first, for every offered frame, with the direction's own
   ``random.Random(seed)``: the same seed loses the same frame indices whatever the queue and
   jitter do. As in netem, a lost frame takes no queue space and no link time.
2. **Drop-tail queue** (``queue_bytes``, like a ``bfifo``). The backlog at ``now`` is the bytes of
   accepted frames whose last bit has not yet left the transmitter, the frame being serialized
   counted in full. A frame is dropped when backlog + its size would exceed ``queue_bytes``
   (equal is accepted). ``None`` means unlimited. Sizes are frame bytes, without overhead.
3. **Serialization** at ``rate_bps`` of ``size_bytes + overhead_bytes``, starting when the
   transmitter is free: ``finish = max(now, busy_until) + (size + overhead) * 8 / rate_bps``.
   Use ``overhead_bytes=24`` (preamble 8 + FCS 4 + inter-frame gap 12) for wire-exact Ethernet
   rates with frames given without FCS. ``rate_bps=None``: no serialization and no queue.
4. **Propagation** ``delay_s`` plus jitter: a seeded offset with mean 0 and standard deviation
   ``jitter_s``, normal (``jitter_dist="normal"``) or uniform on +-sqrt(3)*jitter_s
   (``"uniform"``). The delay is clamped at 0, never negative (which raises the mean delay a little
   when jitter_s is not small against delay_s). Unless ``allow_reorder``, a frame never arrives
   before the one offered before it: ``due = max(computed, previous due)``.

Left out: per-frame corruption, duplication and rate-dependent (token bucket burst) behaviour;
netem's ``reorder`` knob (use ``allow_reorder`` with jitter).

netem equivalents: ``delay D J distribution normal`` is ``delay_s=D, jitter_s=J``; netem's
``delay D J`` without a distribution is uniform on [D-J, D+J], i.e. ``jitter_dist="uniform",
jitter_s=J/sqrt(3)``; ``loss random P%`` is ``Bernoulli(P/100)``; ``loss gemodel`` is below.

Hot path: ``offer`` allocates one tuple per queued frame and nothing else. Measured on CPython
3.11: 0.4 us/frame (delay only), 0.8 us (rate + queue), 1.1-1.5 us (with jitter and loss), i.e.
well above the shaper's ~100-160k frames/s.
"""

from __future__ import annotations

import hashlib
import math
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "Bernoulli", "GilbertElliott", "LossModel", "LinkDirection", "Link", "LinkStats",
    "derive_seed",
]

JITTER_DISTS = ("normal", "uniform")
_SQRT3 = math.sqrt(3.0)


def derive_seed(seed: int, label: str) -> int:
    """A 64-bit seed for a named sub-stream of ``seed``, the same in every process and platform."""
    digest = hashlib.sha256(f"sendlab.link:{seed}:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


# --- loss models ------------------------------------------------------------------------------

class LossModel(ABC):
    """Immutable loss parameters. ``process(rng)`` makes the per-direction stateful decider."""

    @abstractmethod
    def process(self, rng: random.Random) -> Callable[[], bool]:
        """A function called once per offered frame, True when that frame is lost."""

    @abstractmethod
    def stationary_loss_rate(self) -> float:
        """The long-run fraction of frames lost."""


@dataclass(frozen=True, slots=True)
class Bernoulli(LossModel):
    """Each frame lost independently with probability ``p`` (netem ``loss random p*100%``)."""

    p: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _check_probability("Bernoulli p", self.p))

    def process(self, rng: random.Random) -> Callable[[], bool]:
        p = self.p
        rnd = rng.random
        if p <= 0.0:
            return lambda: False
        return lambda: rnd() < p

    def stationary_loss_rate(self) -> float:
        return self.p


@dataclass(frozen=True, slots=True)
class GilbertElliott(LossModel):
    """Two-state Markov loss (Gilbert-Elliott), stepped once per offered frame.

    - ``p``: P(good -> bad) per frame; ``r``: P(bad -> good) per frame.
    - ``k``: P(frame delivered | good), so loss in good is ``1 - k``.
    - ``h``: P(frame delivered | bad), so loss in bad is ``1 - h``.

    Defaults ``h=0, k=1`` give the simple Gilbert model: every frame in the bad state is lost,
    none in the good one, so a loss burst lasts 1/r frames on average.

    netem: ``loss gemodel P R ONE_MINUS_H ONE_MINUS_K`` (all in %) is
    ``GilbertElliott(p=P/100, r=R/100, h=1-ONE_MINUS_H/100, k=1-ONE_MINUS_K/100)``; netem's own
    defaults (``r = 1-p``, ``1-h = 100%``, ``1-k = 0%``) match ``h=0, k=1``. As in netem, the
    link starts in the good state; the frame's fate is decided in the state it finds, then the
    chain steps.
    """

    p: float
    r: float
    h: float = 0.0
    k: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p", "r", "h", "k"):
            object.__setattr__(self, name,
                               _check_probability(f"GilbertElliott {name}", getattr(self, name)))

    def stationary_bad_fraction(self) -> float:
        """pi_bad = p / (p + r); 0 when the chain never leaves the good state it starts in."""
        if self.p == 0.0:
            return 0.0
        return self.p / (self.p + self.r)

    def stationary_loss_rate(self) -> float:
        """pi_good * (1 - k) + pi_bad * (1 - h), with pi_bad = p / (p + r)."""
        bad = self.stationary_bad_fraction()
        return (1.0 - bad) * (1.0 - self.k) + bad * (1.0 - self.h)

    def mean_bad_run_frames(self) -> float:
        """Mean stay in the bad state, 1/r frames (the mean loss burst when h=0, k=1)."""
        return math.inf if self.r == 0.0 else 1.0 / self.r

    def process(self, rng: random.Random) -> Callable[[], bool]:
        p, r = self.p, self.r
        loss_good, loss_bad = 1.0 - self.k, 1.0 - self.h
        rnd = rng.random
        bad = False

        def lost() -> bool:
            nonlocal bad
            # A probability of 0 takes no draw; `rnd() < 1.0` is always true. Which draws are
            # taken depends only on the parameters, so the stream stays reproducible.
            if bad:
                drop = loss_bad > 0.0 and rnd() < loss_bad
                if r > 0.0 and rnd() < r:
                    bad = False
            else:
                drop = loss_good > 0.0 and rnd() < loss_good
                if p > 0.0 and rnd() < p:
                    bad = True
            return drop

        return lost


# --- one direction ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LinkStats:
    offered: int
    delivered: int
    dropped_queue: int
    dropped_loss: int
    bytes_delivered: int
    max_backlog_bytes: int


class LinkDirection:
    """One direction of a link: ``offer(size_bytes, now)`` -> due time at the far end, or None.

    Counters (plain attributes, read them any time): ``offered``, ``delivered`` (frames given a
    due time; counted at offer), ``dropped_queue``, ``dropped_loss``, ``bytes_delivered`` (frame
    bytes, no overhead), ``max_backlog_bytes`` (the largest backlog, this frame included, right
    after accepting a frame). ``offered == delivered + dropped_queue + dropped_loss`` always.
    """

    __slots__ = (
        "rate_bps", "delay_s", "jitter_s", "jitter_dist", "loss", "queue_bytes", "seed",
        "overhead_bytes", "allow_reorder",
        "busy_until", "last_due", "offered", "delivered", "dropped_queue", "dropped_loss",
        "bytes_delivered", "max_backlog_bytes",
        "_lost", "_jitter", "_inflight", "_backlog", "_limit",
    )

    def __init__(self, rate_bps: float | None, delay_s: float, jitter_s: float = 0.0,
                 loss: LossModel | None = None, queue_bytes: int | None = None, seed: int = 0,
                 overhead_bytes: int = 0, allow_reorder: bool = False, *,
                 jitter_dist: str = "normal") -> None:
        if rate_bps is not None:
            rate_bps = float(rate_bps)
            if not (rate_bps > 0.0 and math.isfinite(rate_bps)):
                raise ValueError(f"rate_bps must be a positive number or None, got {rate_bps!r}")
        delay_s = float(delay_s)
        if not (delay_s >= 0.0 and math.isfinite(delay_s)):
            raise ValueError(f"delay_s must be >= 0, got {delay_s!r}")
        jitter_s = float(jitter_s)
        if not (jitter_s >= 0.0 and math.isfinite(jitter_s)):
            raise ValueError(f"jitter_s must be >= 0, got {jitter_s!r}")
        if jitter_dist not in JITTER_DISTS:
            raise ValueError(f"jitter_dist must be one of {JITTER_DISTS}, got {jitter_dist!r}")
        if queue_bytes is not None and (int(queue_bytes) != queue_bytes or queue_bytes < 0):
            raise ValueError(f"queue_bytes must be an integer >= 0 or None, got {queue_bytes!r}")
        if int(overhead_bytes) != overhead_bytes or overhead_bytes < 0:
            raise ValueError(f"overhead_bytes must be an integer >= 0, got {overhead_bytes!r}")
        if loss is not None and not isinstance(loss, LossModel):
            raise TypeError(f"loss must be a LossModel or None, got {type(loss).__name__}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")

        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.jitter_dist = jitter_dist
        self.loss = loss
        self.queue_bytes = None if queue_bytes is None else int(queue_bytes)
        self.seed = seed
        self.overhead_bytes = int(overhead_bytes)
        self.allow_reorder = bool(allow_reorder)

        self.busy_until = 0.0        # when the transmitter finishes the last accepted frame
        self.last_due = -math.inf    # due time of the last delivered frame
        self.offered = 0
        self.delivered = 0
        self.dropped_queue = 0
        self.dropped_loss = 0
        self.bytes_delivered = 0
        self.max_backlog_bytes = 0

        # Loss and jitter draw from separate streams: jitter never shifts which frames are lost.
        self._lost = None if loss is None else loss.process(random.Random(seed))
        self._jitter = self._make_jitter(random.Random(derive_seed(seed, "jitter")))
        self._inflight: deque[tuple[float, int]] = deque()  # (finish_time, size), finish order
        self._backlog = 0            # sum of sizes in _inflight
        # With no rate, frames leave at once, so there is never a queue to limit.
        self._limit = self.queue_bytes if rate_bps is not None else None

    def _make_jitter(self, rng: random.Random) -> Callable[[], float] | None:
        sigma = self.jitter_s
        if sigma == 0.0:
            return None
        if self.jitter_dist == "normal":
            gauss = rng.gauss
            return lambda: gauss(0.0, sigma)
        half = _SQRT3 * sigma          # uniform on [-half, half] has stddev sigma
        width = 2.0 * half
        rnd = rng.random
        return lambda: rnd() * width - half

    def offer(self, size_bytes: int, now: float) -> float | None:
        """The time the frame of ``size_bytes`` offered at ``now`` reaches the far end, or None."""
        self.offered += 1
        lost = self._lost
        if lost is not None and lost():
            self.dropped_loss += 1
            return None

        rate = self.rate_bps
        if rate is None:
            t = now
        else:
            q = self._inflight
            backlog = self._backlog
            while q and q[0][0] <= now:
                backlog -= q.popleft()[1]
            limit = self._limit
            if limit is not None and backlog + size_bytes > limit:
                self._backlog = backlog
                self.dropped_queue += 1
                return None
            t = self.busy_until
            if t < now:
                t = now
            t += (size_bytes + self.overhead_bytes) * 8.0 / rate
            self.busy_until = t
            q.append((t, size_bytes))
            backlog += size_bytes
            self._backlog = backlog
            if backlog > self.max_backlog_bytes:
                self.max_backlog_bytes = backlog

        jitter = self._jitter
        if jitter is None:
            t += self.delay_s
        else:
            delay = self.delay_s + jitter()
            if delay > 0.0:
                t += delay
        if t < self.last_due and not self.allow_reorder:
            t = self.last_due
        else:
            self.last_due = t
        self.delivered += 1
        self.bytes_delivered += size_bytes
        return t

    def backlog_bytes(self, now: float) -> int:
        """Bytes accepted and not fully serialized at ``now`` (the frame on the wire included)."""
        q = self._inflight
        backlog = self._backlog
        while q and q[0][0] <= now:
            backlog -= q.popleft()[1]
        self._backlog = backlog
        return backlog

    def stats(self) -> LinkStats:
        return LinkStats(self.offered, self.delivered, self.dropped_queue, self.dropped_loss,
                         self.bytes_delivered, self.max_backlog_bytes)

    def __repr__(self) -> str:
        return (f"LinkDirection(rate_bps={self.rate_bps!r}, delay_s={self.delay_s!r}, "
                f"jitter_s={self.jitter_s!r}, loss={self.loss!r}, "
                f"queue_bytes={self.queue_bytes!r}, seed={self.seed!r}, "
                f"overhead_bytes={self.overhead_bytes!r}, allow_reorder={self.allow_reorder!r}, "
                f"jitter_dist={self.jitter_dist!r})")


# --- a link: two directions -------------------------------------------------------------------

_DIRECTION_PARAMS = ("rate_bps", "delay_s", "jitter_s", "loss", "queue_bytes", "seed",
                     "overhead_bytes", "allow_reorder", "jitter_dist")


class Link:
    """Two independent directions. ``link.a_to_b.offer(...)``, ``link.b_to_a.offer(...)``."""

    __slots__ = ("a_to_b", "b_to_a")

    def __init__(self, a_to_b: LinkDirection, b_to_a: LinkDirection) -> None:
        if a_to_b is b_to_a:
            raise ValueError("a link needs two distinct LinkDirection objects")
        self.a_to_b = a_to_b
        self.b_to_a = b_to_a

    @classmethod
    def from_params(cls, *, rate_bps: float | None = None, delay_s: float = 0.0,
                    jitter_s: float = 0.0, loss: LossModel | None = None,
                    queue_bytes: int | None = None, seed: int = 0, overhead_bytes: int = 0,
                    allow_reorder: bool = False, jitter_dist: str = "normal",
                    a_to_b: Mapping[str, object] | None = None,
                    b_to_a: Mapping[str, object] | None = None) -> Link:
        """A link with the same parameters both ways, each overridable per direction.

        ``a_to_b``/``b_to_a`` map parameter names of :class:`LinkDirection` to values, e.g.
        ``b_to_a={"rate_bps": 1e6}``. Unless overridden, each direction's seed is derived from
        ``seed`` and the direction's name, so the two directions (and links with neighbouring
        seeds) draw unrelated random streams.
        """
        common = {"rate_bps": rate_bps, "delay_s": delay_s, "jitter_s": jitter_s, "loss": loss,
                  "queue_bytes": queue_bytes, "overhead_bytes": overhead_bytes,
                  "allow_reorder": allow_reorder, "jitter_dist": jitter_dist}
        built = []
        for name, override in (("a_to_b", a_to_b), ("b_to_a", b_to_a)):
            params = dict(common, seed=derive_seed(seed, name))
            if override:
                unknown = sorted(set(override) - set(_DIRECTION_PARAMS))
                if unknown:
                    raise ValueError(f"{name}: unknown link parameter(s) {', '.join(unknown)}; "
                                     f"known: {', '.join(_DIRECTION_PARAMS)}")
                params.update(override)
            built.append(LinkDirection(**params))
        return cls(*built)

    def stats(self) -> tuple[LinkStats, LinkStats]:
        return self.a_to_b.stats(), self.b_to_a.stats()

    def __repr__(self) -> str:
        return f"Link(a_to_b={self.a_to_b!r}, b_to_a={self.b_to_a!r})"
