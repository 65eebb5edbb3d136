"""Timers: retransmission (RFC 6298 with Linux's backoff), probe0, loss probe, delayed ACK,
SYN-ACK retransmission and TIME_WAIT. Mirrors net/ipv4/tcp_timer.c.

Each socket has one transmit timer (``pending``/``timeout``) shared by RTO,
probe0 and the loss probe, as icsk_retransmit_timer is in the kernel, plus
the delayed-ACK timer and the TIME_WAIT deadline.
"""

from __future__ import annotations

from .constants import (
    ETIMEDOUT, ICSK_ACK_SCHED, ICSK_ACK_TIMER, ICSK_TIME_LOSS_PROBE, ICSK_TIME_PROBE0,
    ICSK_TIME_REO_TIMEOUT, ICSK_TIME_RETRANS, TCP_FIN_WAIT2, TCP_RESOURCE_PROBE_INTERVAL_MS, TCP_RTO_MIN_MS, TCP_SYN_RECV,
    TCP_SYN_SENT, TCP_TIME_WAIT, TCP_TIMEOUT_INIT_MS,
)
from .jiffies import msecs_to_jiffies
from .tcp_output import (
    TCP_DELACK_MAX, TCP_RTO_MAX, tcp_reset_xmit_timer, tcp_retransmit_skb, tcp_send_ack, tcp_send_probe0,
    tcp_send_synack,
)
from .tcp_input import TCP_ATO_MIN
from .tcp_recovery import tcp_enter_loss, tcp_rack_reo_timeout, tcp_send_loss_probe

TCP_RTO_MIN = msecs_to_jiffies(TCP_RTO_MIN_MS)
TCP_TIMEOUT_INIT = msecs_to_jiffies(TCP_TIMEOUT_INIT_MS)
TCP_SYN_LINEAR_TIMEOUTS = 4   # net.ipv4.tcp_syn_linear_timeouts (6.5+)
_TIMER_NAMES = {ICSK_TIME_RETRANS: "rto", ICSK_TIME_PROBE0: "probe0",   # for the decision trace
                ICSK_TIME_LOSS_PROBE: "loss_probe", ICSK_TIME_REO_TIMEOUT: "reo"}


def tcp_next_deadline(tp):
    """The earliest time a timer of this socket fires, or None."""
    best = tp.timeout
    for t in (tp.ack_timeout, tp.timewait_deadline):
        if t is not None and (best is None or t < best):
            best = t
    return best


def tcp_handle_timers(tp, now: float) -> None:
    if tp.timewait_deadline is not None and tp.timewait_deadline <= now:
        tp.timewait_deadline = None
        if tp.state in (TCP_TIME_WAIT, TCP_FIN_WAIT2):
            # TIME_WAIT is over, or an orphaned FIN_WAIT2 waited tcp_fin_timeout in vain.
            _tcp.tcp_done(tp)
            return
    if tp.ack_timeout is not None and tp.ack_timeout <= now:
        tcp_delack_timer_handler(tp, now)
    if tp.timeout is not None and tp.timeout <= now:
        tcp_write_timer_handler(tp, now)


def tcp_write_timer_handler(tp, now: float) -> None:
    event = tp.pending
    tp.pending = 0
    tp.timeout = None
    tp.tcp_clock = now
    if tp.host.tracer is not None:
        tp.host.tracer.timer(tp, _TIMER_NAMES.get(event, str(event)), now)
    if event == ICSK_TIME_RETRANS:
        if tp.state == TCP_SYN_RECV:
            tcp_synack_timer(tp, now)
        else:
            tcp_retransmit_timer(tp, now)
    elif event == ICSK_TIME_PROBE0:
        tcp_probe_timer(tp, now)
    elif event == ICSK_TIME_LOSS_PROBE:
        tcp_send_loss_probe(tp, now)
    elif event == ICSK_TIME_REO_TIMEOUT:
        tcp_rack_reo_timeout(tp, now)


def tcp_delack_timer_handler(tp, now: float) -> None:
    tp.ack_timeout = None
    if not tp.ack_pending & ICSK_ACK_TIMER:
        return
    if tp.host.tracer is not None:
        tp.host.tracer.timer(tp, "delack", now)
    tp.ack_pending &= ~ICSK_ACK_TIMER
    if tp.ack_pending & ICSK_ACK_SCHED:
        if not tp.ack_pingpong:
            # The delayed ACK was missed: inflate ato.
            tp.ack_ato = min(tp.ack_ato << 1, tp.rto, TCP_DELACK_MAX)
        else:
            # Missed in ping-pong mode: leave it and deflate ato.
            tp.ack_pingpong = 0
            tp.ack_ato = TCP_ATO_MIN
        tcp_send_ack(tp, now)
        tp.host.mib["TcpExtDelayedACKs"] += 1


def tcp_model_timeout(boundary: int, rto_base: int) -> int:
    """Jiffies that ``boundary`` exponential backoffs from ``rto_base`` take (capped at RTO max)."""
    linear_backoff_thresh = (TCP_RTO_MAX // rto_base).bit_length() - 1
    if boundary <= linear_backoff_thresh:
        return ((2 << boundary) - 1) * rto_base
    return ((2 << linear_backoff_thresh) - 1) * rto_base + \
        (boundary - linear_backoff_thresh) * TCP_RTO_MAX


def retransmits_timed_out(tp, boundary: int, now: float) -> bool:
    if not tp.retransmits:
        return False
    rto_base = TCP_TIMEOUT_INIT if tp.state in (TCP_SYN_SENT, TCP_SYN_RECV) else TCP_RTO_MIN
    timeout_ms = tcp_model_timeout(boundary, rto_base) * 4
    return (now - tp.retrans_stamp) * 1000 - timeout_ms >= 0


def tcp_write_err(tp) -> None:
    tp.sk_err = tp.sk_err_soft or ETIMEDOUT
    tp.host.mib["TcpExtTCPAbortOnTimeout"] += 1
    tp.write_queue.clear()
    tp.rtx_queue.clear()
    tp.tsorted.clear()
    tp.packets_out = tp.retrans_out = tp.lost_out = tp.sacked_out = 0
    tp.wmem_queued = 0
    _tcp.tcp_done(tp)


def tcp_write_timeout(tp, now: float) -> bool:
    """Give up after too many retransmissions; detect PMTU black holes on the way."""
    sysctl = tp.sysctl
    if tp.state in (TCP_SYN_SENT, TCP_SYN_RECV):
        max_retransmits = sysctl.tcp_syn_retries
        if tp.state == TCP_SYN_SENT:
            max_retransmits += TCP_SYN_LINEAR_TIMEOUTS
        expired = tp.retransmits >= max_retransmits
    else:
        if retransmits_timed_out(tp, sysctl.tcp_retries1, now):
            _tcp_mtu.tcp_mtu_probing(tp)
        expired = retransmits_timed_out(tp, sysctl.tcp_retries2, now)
    if expired:
        tcp_write_err(tp)
        return True
    return False


def tcp_retransmit_timer(tp, now: float) -> None:
    if not tp.packets_out or not tp.rtx_queue:
        return
    tp.host.mib["TcpExtTCPTimeouts"] += 1
    if tcp_write_timeout(tp, now):
        return
    tcp_enter_loss(tp, now)
    tp.retransmits += 1
    if tcp_retransmit_skb(tp, tp.rtx_queue[0], 1, now) > 0:
        tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS,
                             msecs_to_jiffies(TCP_RESOURCE_PROBE_INTERVAL_MS), now)
        return
    tp.backoff += 1
    if tp.state != TCP_SYN_SENT or tp.retransmits > TCP_SYN_LINEAR_TIMEOUTS:
        tp.rto = min(tp.rto << 1, TCP_RTO_MAX)
    tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, tp.rto, now)


def tcp_probe_timer(tp, now: float) -> None:
    if tp.packets_out or not tp.write_queue:
        tp.probes_out = 0
        return
    if tp.probes_out >= tp.sysctl.tcp_retries2:
        tcp_write_err(tp)
        return
    tcp_send_probe0(tp, now)


def tcp_synack_timer(tp, now: float) -> None:
    """A passive child's SYN-ACK went unanswered: resend with backoff, then give up."""
    if tp.syn_retries >= tp.sysctl.tcp_synack_retries:
        _tcp.tcp_done(tp)
        return
    tp.syn_retries += 1
    tcp_send_synack(tp, now)
    timeout = min(TCP_TIMEOUT_INIT << tp.syn_retries, TCP_RTO_MAX)
    tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, timeout, now)


# Imported last: these modules import this one, and are used only inside functions.
from . import tcp as _tcp  # noqa: E402
from . import tcp_mtu as _tcp_mtu  # noqa: E402
