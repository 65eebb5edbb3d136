"""Congestion control behind one interface: Reno and CUBIC (with HyStart), as in Linux.

tcp_cong.c gives slow start and additive increase; tcp_cubic.c the CUBIC
window. Each algorithm keeps its private state in ``tp.ca_priv``.
"""

from __future__ import annotations

import errno

from .constants import TCP_CA_Loss, TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT
from .jiffies import HZ, jiffies, usecs_to_jiffies


def tcp_slow_start(tp, acked: int) -> int:
    cwnd = min(tp.snd_cwnd + acked, tp.snd_ssthresh)
    acked -= cwnd - tp.snd_cwnd
    tp.snd_cwnd = min(cwnd, tp.snd_cwnd_clamp)
    return acked


def tcp_cong_avoid_ai(tp, w: int, acked: int) -> None:
    """Grow cwnd by one segment per ``w`` segments ACKed."""
    if tp.snd_cwnd_cnt >= w:
        tp.snd_cwnd_cnt = 0
        tp.snd_cwnd += 1
    tp.snd_cwnd_cnt += acked
    if tp.snd_cwnd_cnt >= w:
        delta = tp.snd_cwnd_cnt // w
        tp.snd_cwnd_cnt -= delta * w
        tp.snd_cwnd += delta
    tp.snd_cwnd = min(tp.snd_cwnd, tp.snd_cwnd_clamp)


class CongestionOps:
    """What an algorithm provides (struct tcp_congestion_ops)."""

    name = "base"
    min_tso_segs = None
    sndbuf_expand = 2

    def init(self, tp, now: float) -> None:
        pass

    def ssthresh(self, tp) -> int:
        return max(tp.snd_cwnd >> 1, 2)

    def cong_avoid(self, tp, ack: int, acked: int, now: float) -> None:
        raise NotImplementedError

    def set_state(self, tp, state: int) -> None:
        pass

    def pkts_acked(self, tp, pkts: int, rtt_us: int, now: float) -> None:
        pass

    def cwnd_event_tx_start(self, tp, now: float) -> None:
        pass

    def undo_cwnd(self, tp) -> int:
        return max(tp.snd_cwnd, tp.prior_cwnd)


class Reno(CongestionOps):
    name = "reno"

    def cong_avoid(self, tp, ack: int, acked: int, now: float) -> None:
        if not _tcp_output.tcp_is_cwnd_limited(tp):
            return
        if tp.in_slow_start():
            acked = tcp_slow_start(tp, acked)
            if not acked:
                return
        tcp_cong_avoid_ai(tp, tp.snd_cwnd, acked)


BICTCP_BETA_SCALE = 1024
BICTCP_HZ = 10
BETA = 717
BIC_SCALE = 41
HYSTART_LOW_WINDOW = 16
HYSTART_ACK_DELTA_US = 2000
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN = 4000
HYSTART_DELAY_MAX = 16000
BETA_SCALE = 8 * (BICTCP_BETA_SCALE + BETA) // 3 // (BICTCP_BETA_SCALE - BETA)
CUBE_RTT_SCALE = BIC_SCALE * 10
CUBE_FACTOR = (1 << (10 + 3 * BICTCP_HZ)) // (BIC_SCALE * 10)


def cubic_root(a: int) -> int:
    """Integer cube root, rounded down."""
    if a <= 0:
        return 0
    x = int(round(a ** (1.0 / 3.0)))
    while x * x * x > a:
        x -= 1
    while (x + 1) ** 3 <= a:
        x += 1
    return x


class _CubicState:
    __slots__ = ("cnt", "last_max_cwnd", "last_cwnd", "last_time", "bic_origin_point", "bic_K",
                 "delay_min", "epoch_start", "ack_cnt", "tcp_cwnd", "found", "round_start",
                 "end_seq", "last_ack", "curr_rtt", "sample_cnt")

    def __init__(self) -> None:
        self.reset()
        self.round_start = 0
        self.end_seq = 0
        self.last_ack = 0
        self.curr_rtt = 0xFFFFFFFF
        self.sample_cnt = 0

    def reset(self) -> None:
        self.cnt = 0
        self.last_max_cwnd = 0
        self.last_cwnd = 0
        self.last_time = 0
        self.bic_origin_point = 0
        self.bic_K = 0
        self.delay_min = 0
        self.epoch_start = 0
        self.ack_cnt = 0
        self.tcp_cwnd = 0
        self.found = 0


class Cubic(CongestionOps):
    name = "cubic"

    def init(self, tp, now: float) -> None:
        ca = self._ca(tp)
        ca.reset()
        self._hystart_reset(tp, ca, now)

    @staticmethod
    def _ca(tp) -> _CubicState:
        # Like the kernel's zeroed icsk_ca_priv: usable before init() runs.
        ca = tp.ca_priv.get("cubic")
        if ca is None:
            ca = tp.ca_priv["cubic"] = _CubicState()
        return ca

    def _hystart_reset(self, tp, ca: _CubicState, now: float) -> None:
        ca.round_start = ca.last_ack = int(now * 1e6)
        ca.end_seq = tp.snd_nxt
        ca.curr_rtt = 0xFFFFFFFF
        ca.sample_cnt = 0

    def _update(self, tp, ca: _CubicState, cwnd: int, acked: int, now: float) -> None:
        j = jiffies(now)
        ca.ack_cnt += acked
        if ca.last_cwnd == cwnd and j - ca.last_time <= HZ // 32:
            return
        if not (ca.epoch_start and j == ca.last_time):
            ca.last_cwnd = cwnd
            ca.last_time = j
            if ca.epoch_start == 0:
                ca.epoch_start = j or 1
                ca.ack_cnt = acked
                ca.tcp_cwnd = cwnd
                if ca.last_max_cwnd <= cwnd:
                    ca.bic_K = 0
                    ca.bic_origin_point = cwnd
                else:
                    ca.bic_K = cubic_root(CUBE_FACTOR * (ca.last_max_cwnd - cwnd))
                    ca.bic_origin_point = ca.last_max_cwnd
            t = j - ca.epoch_start + usecs_to_jiffies(ca.delay_min)
            t = (t << BICTCP_HZ) // HZ
            offs = ca.bic_K - t if t < ca.bic_K else t - ca.bic_K
            delta = (CUBE_RTT_SCALE * offs * offs * offs) >> (10 + 3 * BICTCP_HZ)
            bic_target = ca.bic_origin_point - delta if t < ca.bic_K else ca.bic_origin_point + delta
            if bic_target > cwnd:
                ca.cnt = cwnd // (bic_target - cwnd)
            else:
                ca.cnt = 100 * cwnd
            if ca.last_max_cwnd == 0 and ca.cnt > 20:
                ca.cnt = 20
        # TCP friendliness: never grow slower than Reno would.
        delta = (cwnd * BETA_SCALE) >> 3
        while delta and ca.ack_cnt > delta:
            ca.ack_cnt -= delta
            ca.tcp_cwnd += 1
        if ca.tcp_cwnd > cwnd:
            max_cnt = cwnd // (ca.tcp_cwnd - cwnd)
            if ca.cnt > max_cnt:
                ca.cnt = max_cnt
        ca.cnt = max(ca.cnt, 2)

    def cong_avoid(self, tp, ack: int, acked: int, now: float) -> None:
        if not _tcp_output.tcp_is_cwnd_limited(tp):
            return
        if tp.in_slow_start():
            acked = tcp_slow_start(tp, acked)
            if not acked:
                return
        ca = self._ca(tp)
        self._update(tp, ca, tp.snd_cwnd, acked, now)
        tcp_cong_avoid_ai(tp, ca.cnt, acked)

    def ssthresh(self, tp) -> int:
        ca = self._ca(tp)
        ca.epoch_start = 0
        if tp.snd_cwnd < ca.last_max_cwnd:
            ca.last_max_cwnd = tp.snd_cwnd * (BICTCP_BETA_SCALE + BETA) // (2 * BICTCP_BETA_SCALE)
        else:
            ca.last_max_cwnd = tp.snd_cwnd
        return max(tp.snd_cwnd * BETA // BICTCP_BETA_SCALE, 2)

    def set_state(self, tp, state: int) -> None:
        if state == TCP_CA_Loss:
            ca = self._ca(tp)
            ca.reset()
            self._hystart_reset(tp, ca, tp.tcp_clock)

    def cwnd_event_tx_start(self, tp, now: float) -> None:
        ca = self._ca(tp)
        j = jiffies(now)
        delta = j - tp.lsndtime
        # Idle for a while: shift the epoch so the cubic curve resumes where it was.
        if ca.epoch_start and delta > 0:
            ca.epoch_start = min(ca.epoch_start + delta, j)

    def pkts_acked(self, tp, pkts: int, rtt_us: int, now: float) -> None:
        if rtt_us < 0:
            return
        ca = self._ca(tp)
        if ca.epoch_start and jiffies(now) - ca.epoch_start < HZ:
            return
        delay = rtt_us or 1
        if ca.delay_min == 0 or ca.delay_min > delay:
            ca.delay_min = delay
        if not ca.found and tp.in_slow_start():
            self._hystart_update(tp, ca, delay, now)

    def _hystart_update(self, tp, ca: _CubicState, delay: int, now: float) -> None:
        if _seq.after(tp.snd_una, ca.end_seq):
            self._hystart_reset(tp, ca, now)
        if tp.snd_cwnd < HYSTART_LOW_WINDOW:
            return
        now_us = int(now * 1e6)
        if now_us - ca.last_ack <= HYSTART_ACK_DELTA_US:
            ca.last_ack = now_us
            rate = tp.pacing_rate
            ack_delay = 0 if not rate or rate == float("inf") else \
                min(1000, int(65536 * 4 * 1_000_000 // rate))
            threshold = (ca.delay_min + ack_delay) >> 1
            if now_us - ca.round_start > threshold:
                ca.found = 1
                tp.snd_ssthresh = tp.snd_cwnd
        if ca.curr_rtt > delay:
            ca.curr_rtt = delay
        if ca.sample_cnt < HYSTART_MIN_SAMPLES:
            ca.sample_cnt += 1
        elif ca.curr_rtt > ca.delay_min + min(max(ca.delay_min >> 3, HYSTART_DELAY_MIN),
                                              HYSTART_DELAY_MAX):
            ca.found = 1
            tp.snd_ssthresh = tp.snd_cwnd


ALGORITHMS = {"reno": Reno, "cubic": Cubic}


def tcp_init_congestion_control(tp, now: float) -> None:
    if tp.ca_ops is None:
        name = tp.sysctl.tcp_congestion_control
        tp.ca_ops = ALGORITHMS.get(name, Cubic)()
    tp.ca_ops.init(tp, now)


def tcp_set_congestion_control(tp, value, now: float) -> int:
    name = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    name = name.rstrip("\x00")
    cls = ALGORITHMS.get(name)
    if cls is None:
        return -errno.ENOENT
    tp.ca_ops = cls()
    if tp.state not in (TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT):
        # Already established: initialise now, as Linux does on a live socket.
        tp.ca_ops.init(tp, now)
    return 0


# Imported last: these modules import this one, and are used only inside functions.
from . import seq as _seq  # noqa: E402
from . import tcp_output as _tcp_output  # noqa: E402
