"""The virtual-clock runtime: hosts, point-to-point links and applications in one process.

Deterministic: time only moves when the event loop jumps to the next deadline,
links draw loss from their own seeded generators, and applications are Python
generators that yield socket operations (``n = yield sock.send(data)``) or
``Sleep(seconds)``. Nothing sleeps for real.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from ..host import Host
from ..socket import Socket
from .apps import Process, Sleep, advance
from ..sysctl import Sysctl


@dataclass
class Link:
    """A point-to-point link: propagation delay, Bernoulli loss, an MTU that drops bigger frames."""

    a: Host
    b: Host
    delay_s: float = 0.0
    loss: float = 0.0
    mtu: int = 65535
    seed: int = 0
    capture: list | None = None          # (time, Segment) of every frame put on the link
    rng: random.Random = field(init=False)
    dropped: int = 0
    delivered: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def peer(self, host: Host) -> Host:
        return self.b if host is self.a else self.a


class VirtualNetwork:
    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.seed = seed
        self.hosts: list[Host] = []
        self.links: dict = {}            # host -> Link
        self._events: list = []          # (time, seq, fn, args)
        self._seq = itertools.count()
        self._procs: list[Process] = []
        self._pid = itertools.count(1)
        self.egress: dict = {}           # host -> fn(host, frames, now): a backend's own wiring
        self._deadlines: dict = {}       # host -> the deadline its heap entry is for
        self._waiting: dict = {}         # TcpSock -> processes blocked on it

    # --- building -----------------------------------------------------------------------

    def add_host(self, addr: str, *, name: str = "", mtu: int = 1500, sysctl: Sysctl | None = None,
                 rate_bps: float | None = None, tx_completion_delay_s: float = 0.0) -> Host:
        host = Host(addr, name=name, sysctl=sysctl, seed=self.seed * 7919 + len(self.hosts) + 1,
                    device=_device.NetDevice(mtu=mtu, rate_bps=rate_bps,
                                     tx_completion_delay_s=tx_completion_delay_s))
        self.hosts.append(host)
        return host

    def connect(self, a: Host, b: Host, **kw) -> Link:
        link = Link(a, b, seed=self.seed * 104729 + len(self.links) + 1, **kw)
        self.links[a] = link
        self.links[b] = link
        return link

    def spawn(self, host: Host, gen, name: str = "") -> Process:
        proc = Process(next(self._pid), gen, name, host)
        self._procs.append(proc)
        self._advance(proc, None, None)
        self._flush(host)
        return proc

    def socket(self, host: Host) -> Socket:
        return Socket(host)

    # --- the loop -----------------------------------------------------------------------

    def at(self, t: float, fn, *args) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn, args))

    def run(self, until: float | None = None, *, max_events: int = 50_000_000) -> float:
        """Run until nothing is left to do (or ``until``); returns the final time."""
        events = self._events
        for _ in range(max_events):
            if not events or (until is not None and events[0][0] > until):
                if until is not None:
                    self.now = max(self.now, until)
                return self.now
            t, _, fn, args = heapq.heappop(events)
            if t > self.now:
                self.now = t
            fn(*args)
        raise RuntimeError(f"virtual network still busy after {max_events} events")

    def _reschedule(self, host: Host) -> None:
        """Keep one heap entry for the host's next deadline (stale ones are skipped)."""
        d = host.next_deadline()
        if d != self._deadlines.get(host):
            self._deadlines[host] = d
            if d is not None:
                self.at(d, self._host_timer, host, d)

    def _host_timer(self, host: Host, due: float) -> None:
        if self._deadlines.get(host) != due:
            return
        self._deadlines[host] = None
        host.handle_timer(self.now)
        self._flush(host)

    def _wake(self, proc: Process, due: float) -> None:
        if proc.wake_at != due or proc.done:
            return
        proc.wake_at = None
        self._advance(proc, None, None)
        self._flush(proc.host)

    def _deliver(self, host: Host, seg) -> None:
        host.receive(seg, self.now)
        self._flush(host)

    def deliver_ip(self, host: Host, data: bytes) -> None:
        """Hand an IPv4 packet (bytes) to a host, then move what it sends in reply."""
        host.receive_ip(data, self.now)
        self._flush(host)

    def add_existing_host(self, host: Host) -> Host:
        self.hosts.append(host)
        return host

    def _flush(self, host: Host) -> None:
        """Put the host's frames on its link and resume applications it woke."""
        for _ in range(1000):
            frames = host.take_frames()
            if frames:
                egress = self.egress.get(host)
                if egress is not None:
                    egress(host, frames, self.now)
                else:
                    link = self.links.get(host)
                    if link is not None:
                        self._transmit(link, host, frames)
            if not host.woken:
                self._reschedule(host)
                return
            woken = host.woken
            host.woken = set()
            ready = []
            for tp in woken:
                ready.extend(self._waiting.pop(tp, ()))
            # Resume in spawn order, so runs do not depend on set ordering.
            for proc in sorted(ready, key=lambda p: p.pid):
                if proc.op is not None:
                    self._resume(proc)

    def _transmit(self, link: Link, src: Host, frames) -> None:
        dst = link.peer(src)
        for seg in frames:
            if link.capture is not None:
                link.capture.append((self.now, seg))
            if len(seg.payload) + 40 + _opts_len(seg) > link.mtu:
                link.dropped += 1
                continue
            if link.loss and link.rng.random() < link.loss:
                link.dropped += 1
                continue
            link.delivered += 1
            self.at(self.now + link.delay_s, self._deliver, dst, seg)

    # --- applications -------------------------------------------------------------------

    def _resume(self, proc: Process) -> None:
        op = proc.op
        if not op.step(self.now):
            self._waiting.setdefault(op.sock.tp, []).append(proc)
            return
        proc.op = None
        if op.error:
            self._advance(proc, None, op)
        else:
            self._advance(proc, op.result, None)

    def _advance(self, proc: Process, value, failed) -> None:
        """Run the application until it waits on something."""
        try:
            waiting = advance(proc, value, failed, self.now)
        finally:
            if proc.done:
                self._procs.remove(proc)
        if isinstance(waiting, Sleep):
            proc.wake_at = self.now + max(waiting.seconds, 0.0)
            self.at(proc.wake_at, self._wake, proc, proc.wake_at)
        elif waiting is not None:
            self._waiting.setdefault(waiting.sock.tp, []).append(proc)


def _opts_len(seg) -> int:
    return _device._opt_len(seg)


# Imported last: these modules import this one, and are used only inside functions.
from .. import device as _device  # noqa: E402
