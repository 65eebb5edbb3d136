"""The link model, one rule per test: serialization, drop-tail queue, delay, jitter, loss."""

from __future__ import annotations

import math
import statistics

import pytest

from testbed.link_model import (
    Bernoulli, GilbertElliott, Link, LinkDirection, LinkStats, derive_seed,
)

EPS = 1e-12


def offer_all(d: LinkDirection, sizes, times):
    return [d.offer(size, now) for size, now in zip(sizes, times)]


def lost_indices(d: LinkDirection, n: int, size: int = 1000, spacing_s: float = 1e-3):
    return [i for i in range(n) if d.offer(size, i * spacing_s) is None]


def bursts(indices) -> list[int]:
    """Lengths of runs of consecutive indices."""
    runs, prev = [], None
    for i in indices:
        if prev is not None and i == prev + 1:
            runs[-1] += 1
        else:
            runs.append(1)
        prev = i
    return runs


# --- serialization ------------------------------------------------------------------------

def test_serialization_time_is_size_times_8_over_rate():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0)
    assert d.offer(1000, 0.0) == 0.001                 # 8000 bits at 8 Mbit/s
    d = LinkDirection(rate_bps=12e6, delay_s=0.0)
    assert d.offer(1500, 2.0) == pytest.approx(2.001, abs=EPS)


def test_overhead_bytes_are_serialized_but_not_counted_as_delivered():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0, overhead_bytes=24)
    assert d.offer(1000, 0.0) == pytest.approx(1024 * 8 / 8e6, abs=EPS)
    assert d.bytes_delivered == 1000


def test_back_to_back_frames_are_spaced_by_their_serialization_time():
    rate = 10e6
    d = LinkDirection(rate_bps=rate, delay_s=0.005)
    sizes = [1514, 60, 1514, 800, 1514]
    due = offer_all(d, sizes, [0.0] * len(sizes))
    for i in range(1, len(sizes)):
        assert due[i] - due[i - 1] == pytest.approx(sizes[i] * 8 / rate, abs=EPS)
    assert due[-1] == pytest.approx(sum(sizes) * 8 / rate + 0.005, abs=EPS)


def test_idle_transmitter_starts_serializing_at_offer_time():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0)
    d.offer(1000, 0.0)                                 # busy until 1 ms
    assert d.offer(1000, 0.5) == pytest.approx(0.501, abs=EPS)


def test_rate_none_means_no_serialization_delay():
    d = LinkDirection(rate_bps=None, delay_s=0.010, queue_bytes=100)
    due = offer_all(d, [1500] * 100, [0.0] * 100)
    assert due == [0.010] * 100
    assert d.dropped_queue == 0 and d.max_backlog_bytes == 0


# --- the drop-tail queue ------------------------------------------------------------------

def test_queue_drops_exactly_when_backlog_plus_frame_exceeds_queue_bytes():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0, queue_bytes=3000)   # 1000 B = 1 ms
    assert d.offer(1000, 0.0) is not None              # backlog 0 -> 1000
    assert d.offer(1000, 0.0) is not None              # 1000 -> 2000
    assert d.offer(999, 0.0) is not None               # 2000 -> 2999
    assert d.offer(2, 0.0) is None                     # 2999 + 2 > 3000
    assert d.offer(1, 0.0) is not None                 # 2999 + 1 == 3000 is accepted
    assert d.backlog_bytes(0.0) == 3000
    assert (d.dropped_queue, d.max_backlog_bytes) == (1, 3000)


def test_frame_on_the_wire_counts_in_backlog_until_its_last_bit_leaves():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0, queue_bytes=2000)
    d.offer(1000, 0.0)                                 # on the wire until 1 ms
    d.offer(1000, 0.0)                                 # waiting, finishes at 2 ms
    assert d.offer(1000, 0.0009) is None               # first frame still serializing
    assert d.backlog_bytes(0.0009) == 2000
    assert d.offer(1000, 0.001) == pytest.approx(0.003, abs=EPS)   # first left at 1 ms
    assert d.backlog_bytes(0.0025) == 1000
    assert d.backlog_bytes(0.003) == 0


def test_frame_larger_than_queue_is_dropped_even_on_an_idle_link():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0, queue_bytes=1000)
    assert d.offer(1001, 0.0) is None
    assert d.offer(1000, 0.0) is not None


def test_queue_overflow_under_steady_overload_accepts_only_the_link_rate():
    # 2x overload for 1 s: the link carries what the rate allows, the queue drops the rest.
    rate, size = 8e6, 1000                             # 1000 frames/s fit
    d = LinkDirection(rate_bps=rate, delay_s=0.0, queue_bytes=10 * size)
    for i in range(2000):
        d.offer(size, i * 0.0005)
    assert d.delivered == pytest.approx(1000 + 10, abs=2)
    assert d.max_backlog_bytes == 10 * size
    assert d.offered == d.delivered + d.dropped_queue


# --- delay and jitter ---------------------------------------------------------------------

def test_propagation_delay_is_added_after_serialization():
    d = LinkDirection(rate_bps=8e6, delay_s=0.020)
    assert d.offer(1000, 1.0) == pytest.approx(1.021, abs=EPS)
    assert LinkDirection(None, 0.020).offer(1000, 1.0) == pytest.approx(1.020, abs=EPS)


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_jitter_never_reorders_frames(dist):
    d = LinkDirection(rate_bps=None, delay_s=0.010, jitter_s=0.005, seed=3, jitter_dist=dist)
    due = [d.offer(100, i * 1e-4) for i in range(20_000)]     # spacing << jitter
    assert all(b >= a for a, b in zip(due, due[1:]))
    moved = sum(abs(t - (i * 1e-4 + 0.010)) > 1e-6 for i, t in enumerate(due))
    assert moved > 19_000                              # jitter really moved frames


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_jitter_reorders_frames_when_allowed(dist):
    d = LinkDirection(rate_bps=None, delay_s=0.010, jitter_s=0.005, seed=3, jitter_dist=dist,
                      allow_reorder=True)
    due = [d.offer(100, i * 1e-4) for i in range(1000)]
    assert any(b < a for a, b in zip(due, due[1:]))


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_jitter_has_mean_zero_and_stddev_jitter_s(dist):
    # Frames far apart and delay >> jitter: no clamping, so the offsets are the raw draws.
    d = LinkDirection(rate_bps=None, delay_s=1.0, jitter_s=0.002, seed=11, jitter_dist=dist)
    offsets = [d.offer(100, float(i)) - i - 1.0 for i in range(20_000)]
    assert statistics.fmean(offsets) == pytest.approx(0.0, abs=1e-4)
    assert statistics.pstdev(offsets) == pytest.approx(0.002, rel=0.03)
    if dist == "uniform":
        assert max(abs(x) for x in offsets) <= math.sqrt(3) * 0.002 + EPS


def test_jitter_never_makes_delay_negative():
    d = LinkDirection(rate_bps=None, delay_s=0.001, jitter_s=0.010, seed=5, allow_reorder=True)
    for i in range(5000):
        now = i * 1.0
        assert d.offer(100, now) >= now


# --- loss ---------------------------------------------------------------------------------

def test_bernoulli_one_percent_over_100k_frames():
    d = LinkDirection(None, 0.0, loss=Bernoulli(0.01), seed=42)
    lost = lost_indices(d, 100_000)
    # binomial sd = sqrt(1e5 * 0.01 * 0.99) = 31.5 frames; allow ~5 sd
    assert abs(len(lost) - 1000) < 160
    assert d.dropped_loss == len(lost) and d.delivered == 100_000 - len(lost)


def test_bernoulli_zero_and_one():
    assert lost_indices(LinkDirection(None, 0.0, loss=Bernoulli(0.0)), 1000) == []
    assert len(lost_indices(LinkDirection(None, 0.0, loss=Bernoulli(1.0)), 1000)) == 1000


def test_gilbert_elliott_stationary_formula():
    assert GilbertElliott(0.01, 0.3).stationary_loss_rate() == pytest.approx(0.01 / 0.31)
    ge = GilbertElliott(p=0.05, r=0.2, h=0.3, k=0.98)
    assert ge.stationary_loss_rate() == pytest.approx(0.8 * 0.02 + 0.2 * 0.7)
    assert GilbertElliott(0.0, 0.0, k=0.9).stationary_loss_rate() == pytest.approx(0.1)
    assert GilbertElliott(0.01, 0.25).mean_bad_run_frames() == pytest.approx(4.0)


# rel: ~4 standard deviations of the relative error over seeds, measured for n = 200k
@pytest.mark.parametrize("ge, rel", [
    (GilbertElliott(p=0.01, r=0.3), 0.10),
    (GilbertElliott(p=0.05, r=0.2, h=0.3, k=0.98), 0.05),
    (GilbertElliott(p=0.002, r=0.1, h=0.5, k=0.999), 0.24),
])
def test_gilbert_elliott_long_run_loss_matches_stationary_rate(ge, rel):
    n = 200_000
    d = LinkDirection(None, 0.0, loss=ge, seed=9)
    rate = len(lost_indices(d, n)) / n
    assert rate == pytest.approx(ge.stationary_loss_rate(), rel=rel)


def test_gilbert_elliott_losses_come_in_bursts_of_mean_one_over_r():
    ge = GilbertElliott(p=0.01, r=0.25)                # h=0, k=1: bad state loses everything
    n = 200_000
    ge_runs = bursts(lost_indices(LinkDirection(None, 0.0, loss=ge, seed=1), n))
    assert statistics.fmean(ge_runs) == pytest.approx(1 / 0.25, rel=0.08)   # sd over seeds ~2.5 %
    # A Bernoulli loss of the same long-run rate has bursts of ~1/(1-p) ~ 1.04 frames.
    be_runs = bursts(lost_indices(
        LinkDirection(None, 0.0, loss=Bernoulli(ge.stationary_loss_rate()), seed=1), n))
    assert statistics.fmean(be_runs) < 1.1
    assert statistics.fmean(ge_runs) > 3 * statistics.fmean(be_runs)


def test_lost_frame_takes_no_queue_space_or_link_time():
    d = LinkDirection(rate_bps=8e6, delay_s=0.0, queue_bytes=1000, loss=Bernoulli(1.0))
    assert d.offer(1000, 0.0) is None
    assert (d.dropped_loss, d.dropped_queue, d.busy_until, d.backlog_bytes(0.0)) == (1, 0, 0.0, 0)


def test_loss_probabilities_are_validated():
    with pytest.raises(ValueError, match="Bernoulli p"):
        Bernoulli(1.5)
    with pytest.raises(ValueError, match="GilbertElliott r"):
        GilbertElliott(0.1, -0.1)


# --- determinism --------------------------------------------------------------------------

def _run(seed: int, n: int = 5000, **kw):
    d = LinkDirection(rate_bps=10e6, delay_s=0.010, jitter_s=0.002, queue_bytes=20_000,
                      loss=GilbertElliott(0.02, 0.3, h=0.1, k=0.99), seed=seed, **kw)
    return [d.offer(1000 + (i % 7) * 50, i * 0.0007) for i in range(n)]


def test_same_seed_gives_identical_drops_and_delivery_times():
    a, b = _run(7), _run(7)
    assert a == b
    assert any(x is None for x in a)


def test_different_seed_gives_different_drops_and_delivery_times():
    a, b = _run(7), _run(8)
    assert [x is None for x in a] != [x is None for x in b]
    assert [x for x in a if x is not None][:100] != [x for x in b if x is not None][:100]


def test_same_seed_loses_same_frame_indices_whatever_the_queue_and_jitter():
    loss = Bernoulli(0.05)
    plain = LinkDirection(None, 0.0, loss=loss, seed=21)
    shaped = LinkDirection(rate_bps=1e6, delay_s=0.03, jitter_s=0.01, queue_bytes=5000,
                           loss=loss, seed=21)
    expected = lost_indices(plain, 3000)
    shaped_lost = lost_indices(shaped, 3000)
    assert shaped.dropped_queue > 0                    # the queue dropped frames too...
    lost_by_loss = [i for i in shaped_lost if i in set(expected)]
    assert lost_by_loss == expected                    # ...but loss hit the very same indices
    assert shaped.dropped_loss == len(expected)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(1, "a_to_b") == derive_seed(1, "a_to_b")
    assert len({derive_seed(s, n) for s in range(3) for n in ("a_to_b", "b_to_a")}) == 6


# --- counters -----------------------------------------------------------------------------

def test_counters_add_up():
    d = LinkDirection(rate_bps=1e6, delay_s=0.0, queue_bytes=3000, loss=Bernoulli(0.1), seed=2)
    sizes = [500 + i % 1000 for i in range(4000)]
    due = offer_all(d, sizes, [i * 0.001 for i in range(4000)])
    s = d.stats()
    assert isinstance(s, LinkStats)
    assert s.offered == 4000 == s.delivered + s.dropped_queue + s.dropped_loss
    assert s.dropped_queue > 0 and s.dropped_loss > 0
    assert s.bytes_delivered == sum(sz for sz, t in zip(sizes, due) if t is not None)
    assert 0 < s.max_backlog_bytes <= 3000


# --- Link ---------------------------------------------------------------------------------

def test_link_from_params_applies_per_direction_overrides():
    link = Link.from_params(rate_bps=10e6, delay_s=0.005, queue_bytes=50_000, seed=1,
                            b_to_a={"rate_bps": 1e6, "delay_s": 0.050})
    assert (link.a_to_b.rate_bps, link.a_to_b.delay_s) == (10e6, 0.005)
    assert (link.b_to_a.rate_bps, link.b_to_a.delay_s, link.b_to_a.queue_bytes) == (
        1e6, 0.050, 50_000)
    assert link.a_to_b.offer(1250, 0.0) == pytest.approx(0.001 + 0.005, abs=EPS)
    assert link.b_to_a.offer(1250, 0.0) == pytest.approx(0.010 + 0.050, abs=EPS)


def test_link_directions_draw_unrelated_loss_streams():
    link = Link.from_params(loss=Bernoulli(0.05), seed=4)
    a, b = lost_indices(link.a_to_b, 2000), lost_indices(link.b_to_a, 2000)
    assert a != b
    again = Link.from_params(loss=Bernoulli(0.05), seed=4)
    assert (lost_indices(again.a_to_b, 2000), lost_indices(again.b_to_a, 2000)) == (a, b)
    assert lost_indices(Link.from_params(loss=Bernoulli(0.05), seed=5).a_to_b, 2000) != a


def test_link_directions_do_not_share_gilbert_elliott_state():
    ge = GilbertElliott(0.01, 0.3)
    link = Link.from_params(loss=ge, seed=0, b_to_a={"seed": 123})
    alone = LinkDirection(None, 0.0, loss=ge, seed=123)
    interleaved = []
    for i in range(3000):
        link.a_to_b.offer(100, i * 1e-3)
        if link.b_to_a.offer(100, i * 1e-3) is None:
            interleaved.append(i)
    assert interleaved == lost_indices(alone, 3000)


def test_link_rejects_unknown_override():
    with pytest.raises(ValueError, match="a_to_b: unknown link parameter.*delay_ms"):
        Link.from_params(a_to_b={"delay_ms": 5})


@pytest.mark.parametrize("kw, match", [
    ({"rate_bps": 0}, "rate_bps"),
    ({"delay_s": -1}, "delay_s"),
    ({"jitter_s": -0.1}, "jitter_s"),
    ({"queue_bytes": -1}, "queue_bytes"),
    ({"overhead_bytes": -24}, "overhead_bytes"),
    ({"jitter_dist": "pareto"}, "jitter_dist"),
])
def test_bad_parameters_are_rejected_with_the_field_name(kw, match):
    params = {"rate_bps": 1e6, "delay_s": 0.0} | kw
    with pytest.raises(ValueError, match=match):
        LinkDirection(**params)
