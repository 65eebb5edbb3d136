"""Loss recovery: the SACK scoreboard, fast retransmit with PRR, RTO loss state, tail loss probes.

Follows tcp_input.c's tcp_sacktag_write_queue / tcp_fastretrans_alert and
tcp_output.c's tcp_schedule_loss_probe / tcp_send_loss_probe. Loss detection
uses the classic duplicate-ACK threshold (``tcp_reordering`` SACKed segments
above a hole, or dupacks for non-SACK peers) rather than RACK's time-based rule.
"""

from __future__ import annotations

from .constants import (
    ICSK_TIME_LOSS_PROBE, ICSK_TIME_RETRANS, TCP_CA_CWR, TCP_CA_Disorder, TCP_CA_Loss,
    TCP_CA_Open, TCP_CA_Recovery,
)
from .jiffies import TICK_S, usecs_to_jiffies
from .seq import after, before, seq_sub
from .skbuff import TCPCB_LOST, TCPCB_SACKED_ACKED, TCPCB_SACKED_RETRANS
from .tcp_output import (
    TCP_RTO_MAX, tcp_current_mss, tcp_fragment_rtx, tcp_rearm_rto, tcp_reset_xmit_timer,
    tcp_retransmit_skb, tcp_write_xmit, tcp_xmit_retransmit_queue,
)

FLAG_DATA_SACKED = 0x20
FLAG_SND_UNA_ADVANCED = 0x400
FLAG_DSACKING_ACK = 0x800
TCP_TIMEOUT_MIN_US = 2000
TCP_TIMEOUT_INIT_J = 250


def tcp_is_sack(tp) -> bool:
    return tp.sack_ok


def tcp_set_ca_state(tp, state: int) -> None:
    if tp.ca_ops is not None:
        tp.ca_ops.set_state(tp, state)
    tp.ca_state = state


def tcp_in_cwnd_reduction(tp) -> bool:
    return tp.ca_state in (TCP_CA_CWR, TCP_CA_Recovery)


# --- SACK scoreboard -----------------------------------------------------------------------

def tcp_sacktag_write_queue(tp, blocks, prior_snd_una: int, state: dict, now: float) -> int:
    """Mark the skbs the peer's SACK blocks cover; returns FLAG_DATA_SACKED if any were new."""
    flag = 0
    for start, end in blocks:
        if not after(end, start) or after(end, tp.snd_nxt):
            continue
        if not after(end, prior_snd_una):
            # A block below snd_una is a DSACK: the peer got something twice.
            flag |= FLAG_DSACKING_ACK
            tp.host.mib["TcpExtTCPDSACKRecv"] += 1
            continue
        flag |= _sacktag_block(tp, start, end, state, now)
    return flag


def _sacktag_block(tp, start: int, end: int, state: dict, now: float) -> int:
    flag = 0
    q = tp.rtx_queue
    i = 0
    while i < len(q):
        skb = q[i]
        if not after(skb.end_seq, start):
            i += 1
            continue
        if not before(skb.seq, end):
            break
        if skb.sacked & TCPCB_SACKED_ACKED:
            i += 1
            continue
        mss = skb.gso_size or tcp_current_mss(tp)
        # Cut the skb at the block's edges, on whole segments, so only what was SACKed is marked.
        if before(skb.seq, start):
            cut = seq_sub(start, skb.seq) // mss * mss
            if cut and cut < len(skb.data):
                tcp_fragment_rtx(tp, skb, cut, mss)
                i += 1
                continue
            i += 1
            continue
        if after(skb.end_seq, end):
            cut = seq_sub(end, skb.seq) // mss * mss
            if not cut or cut >= len(skb.data):
                break
            tcp_fragment_rtx(tp, skb, cut, mss)
        _mark_sacked(tp, skb, state, now)
        flag |= FLAG_DATA_SACKED
        i += 1
    return flag


def _mark_sacked(tp, skb, state: dict, now: float) -> None:
    pcount = skb.pcount or 1
    if skb.sacked & TCPCB_SACKED_RETRANS:
        skb.sacked &= ~TCPCB_SACKED_RETRANS
        tp.retrans_out -= pcount
    elif not skb.sacked & TCPCB_LOST:
        state["rtt_us"] = int((now - skb.tstamp) * 1e6)
    if skb.sacked & TCPCB_LOST:
        skb.sacked &= ~TCPCB_LOST
        tp.lost_out -= pcount
    skb.sacked |= TCPCB_SACKED_ACKED
    tp.sacked_out += pcount
    tp.delivered += pcount
    if tp.highest_sack is None or after(skb.end_seq, tp.highest_sack):
        tp.highest_sack = skb.end_seq


# --- loss marking --------------------------------------------------------------------------

def tcp_mark_skb_lost(tp, skb) -> None:
    if skb.sacked & (TCPCB_LOST | TCPCB_SACKED_ACKED):
        return
    if skb.sacked & TCPCB_SACKED_RETRANS:
        # A retransmission is itself lost: count it out of flight and retransmit again.
        skb.sacked &= ~TCPCB_SACKED_RETRANS
        tp.retrans_out -= skb.pcount or 1
        tp.host.mib["TcpExtTCPLostRetransmit"] += 1
    skb.sacked |= TCPCB_LOST
    tp.lost_out += skb.pcount or 1
    tp.lost += skb.pcount or 1


def tcp_update_scoreboard(tp) -> None:
    """Mark lost every un-SACKed skb with at least ``reordering`` SACKed segments above it."""
    if not tcp_is_sack(tp):
        if tp.rtx_queue:
            tcp_mark_skb_lost(tp, tp.rtx_queue[0])
        return
    sacked_above = 0
    for skb in reversed(tp.rtx_queue):
        if skb.sacked & TCPCB_SACKED_ACKED:
            sacked_above += skb.pcount or 1
        elif sacked_above >= tp.reordering:
            tcp_mark_skb_lost(tp, skb)
    if not tp.lost_out and tp.sacked_out and tp.rtx_queue:
        # Fewer than dupthresh SACKed but recovery was entered: the head is the hole.
        tcp_mark_skb_lost(tp, tp.rtx_queue[0])


def tcp_add_reno_sack(tp) -> None:
    """A duplicate ACK from a non-SACK peer counts as one segment that left the network."""
    tp.sacked_out = min(tp.sacked_out + 1, max(tp.packets_out - 1, 0))


def tcp_remove_reno_sacks(tp, acked: int) -> None:
    if acked > 0:
        tp.sacked_out = max(tp.sacked_out - (acked - 1), 0)


# --- entering and leaving recovery ---------------------------------------------------------

def tcp_init_cwnd_reduction(tp) -> None:
    tp.high_seq = tp.snd_nxt
    tp.prior_cwnd = tp.snd_cwnd
    tp.prr_delivered = 0
    tp.prr_out = 0
    tp.snd_ssthresh = tp.ca_ops.ssthresh(tp)


def tcp_enter_recovery(tp, now: float) -> None:
    tp.host.mib["TcpExtTCPSackRecovery" if tcp_is_sack(tp) else "TcpExtTCPRenoRecovery"] += 1
    tp.prior_ssthresh = 0
    tp.undo_marker = tp.snd_una
    tp.undo_retrans = tp.retrans_out or -1
    if not tcp_in_cwnd_reduction(tp):
        tcp_init_cwnd_reduction(tp)
    tcp_set_ca_state(tp, TCP_CA_Recovery)


def tcp_end_cwnd_reduction(tp) -> None:
    if tp.snd_ssthresh < 0x7FFFFFFF and tp.ca_state in (TCP_CA_CWR, TCP_CA_Recovery):
        tp.snd_cwnd = tp.snd_ssthresh
        tp.snd_cwnd_stamp = 0


def tcp_cwnd_reduction(tp, newly_acked_sacked: int, flag: int, now: float) -> None:
    """Proportional Rate Reduction (RFC 6937) as Linux does it."""
    if newly_acked_sacked <= 0 or not tp.prior_cwnd:
        return
    delta = tp.snd_ssthresh - tp.packets_in_flight()
    tp.prr_delivered += newly_acked_sacked
    if delta < 0:
        dividend = tp.snd_ssthresh * tp.prr_delivered + tp.prior_cwnd - 1
        sndcnt = dividend // tp.prior_cwnd - tp.prr_out
    else:
        sndcnt = max(tp.prr_delivered - tp.prr_out, newly_acked_sacked)
        if flag & FLAG_SND_UNA_ADVANCED:
            sndcnt += 1
        sndcnt = min(delta, sndcnt)
    sndcnt = max(sndcnt, 0 if tp.prr_out else 1)
    tp.snd_cwnd = tp.packets_in_flight() + sndcnt


def tcp_enter_loss(tp, now: float) -> None:
    """RTO: everything not SACKed is presumed lost; cwnd restarts from one segment."""
    new_recovery = after(tp.snd_una, tp.high_seq) or tp.ca_state != TCP_CA_Loss
    if tp.ca_state <= TCP_CA_Disorder or not after(tp.high_seq, tp.snd_una) or \
            (tp.ca_state == TCP_CA_Loss and not tp.retransmits):
        tp.prior_ssthresh = 0
        tp.snd_ssthresh = tp.ca_ops.ssthresh(tp)
        tp.undo_marker = tp.snd_una
    tp.snd_cwnd = 1
    tp.snd_cwnd_cnt = 0
    tp.snd_cwnd_stamp = 0
    tp.retrans_out = 0
    tp.lost_out = 0
    for skb in tp.rtx_queue:
        skb.sacked &= ~TCPCB_SACKED_RETRANS
        if not skb.sacked & TCPCB_SACKED_ACKED:
            skb.sacked &= ~TCPCB_LOST
            tcp_mark_skb_lost(tp, skb)
    if not tcp_is_sack(tp):
        tp.sacked_out = 0
    if new_recovery:
        tcp_set_ca_state(tp, TCP_CA_Loss)
    tp.ca_state = TCP_CA_Loss
    tp.high_seq = tp.snd_nxt
    tp.reordering = min(tp.reordering, tp.sysctl.tcp_reordering)


def tcp_try_undo_recovery_exit(tp) -> None:
    tcp_set_ca_state(tp, TCP_CA_Open)


def tcp_fastretrans_alert(tp, prior_snd_una: int, pkts_acked: int, is_dupack: bool, flag: int,
                          now: float) -> int:
    """The congestion-state machine, entered on anything but a clean in-order ACK."""
    if not tp.packets_out and tp.sacked_out:
        tp.sacked_out = 0
    if not tcp_is_sack(tp):
        if is_dupack:
            tcp_add_reno_sack(tp)
        elif flag & FLAG_SND_UNA_ADVANCED:
            tcp_remove_reno_sacks(tp, pkts_acked)
    state = tp.ca_state
    if state == TCP_CA_Loss:
        if not before(tp.snd_una, tp.high_seq):
            tcp_try_undo_recovery_exit(tp)
        return 0
    if state == TCP_CA_Recovery:
        if not before(tp.snd_una, tp.high_seq):
            tcp_end_cwnd_reduction(tp)
            tcp_try_undo_recovery_exit(tp)
            return 0
        if flag & FLAG_SND_UNA_ADVANCED and not tcp_is_sack(tp):
            # NewReno partial ACK: the next hole is lost too.
            if tp.rtx_queue:
                tcp_mark_skb_lost(tp, tp.rtx_queue[0])
        tcp_update_scoreboard(tp)
        return 0
    if state == TCP_CA_CWR:
        if not before(tp.snd_una, tp.high_seq):
            tcp_end_cwnd_reduction(tp)
            tcp_set_ca_state(tp, TCP_CA_Open)
    if tcp_time_to_recover(tp):
        tcp_enter_recovery(tp, now)
        tcp_update_scoreboard(tp)
        return 0
    if tp.sacked_out or tp.lost_out:
        tcp_set_ca_state(tp, TCP_CA_Disorder)
    elif tp.ca_state == TCP_CA_Disorder:
        tcp_set_ca_state(tp, TCP_CA_Open)
    return 0


def tcp_time_to_recover(tp) -> bool:
    if tp.lost_out:
        return True
    return tp.sacked_out >= tp.reordering or (
        tp.sacked_out and tp.packets_out <= tp.reordering and not tp.write_queue and
        tp.sacked_out >= max(tp.packets_out // 2, 1) and tp.packets_out > 1)


def tcp_xmit_recovery(tp, now: float) -> None:
    if tp.lost_out > tp.retrans_out:
        tcp_xmit_retransmit_queue(tp, now)


def tcp_set_xmit_timer(tp, now: float) -> None:
    if not tcp_schedule_loss_probe(tp, True, now):
        tcp_rearm_rto(tp, now)


# --- tail loss probe -----------------------------------------------------------------------

def tcp_schedule_loss_probe(tp, advancing_rto: bool, now: float) -> bool:
    early_retrans = tp.sysctl.tcp_early_retrans
    if (early_retrans not in (3, 4) or not tp.packets_out or not tcp_is_sack(tp) or
            tp.ca_state not in (TCP_CA_Open, TCP_CA_CWR)):
        return False
    if tp.srtt_us:
        timeout_us = tp.srtt_us >> 2
        if tp.packets_out == 1:
            timeout_us += tp.rto_min * 4000
        else:
            timeout_us += TCP_TIMEOUT_MIN_US
        timeout = usecs_to_jiffies(timeout_us)
    else:
        timeout = TCP_TIMEOUT_INIT_J
    if advancing_rto:
        rto_delta_j = tp.rto
    elif tp.rtx_queue:
        rto_delta_j = usecs_to_jiffies(max((tp.rtx_queue[0].tstamp + tp.rto * TICK_S - now) * 1e6, 0))
    else:
        rto_delta_j = tp.rto
    if rto_delta_j > 0:
        timeout = min(timeout, rto_delta_j)
    tcp_reset_xmit_timer(tp, ICSK_TIME_LOSS_PROBE, timeout, now)
    return True


def tcp_send_loss_probe(tp, now: float) -> None:
    """Send new data if any (so a lost tail shows up as a SACK hole), else the last segment."""
    mss = tcp_current_mss(tp)
    pcount = tp.packets_out
    if tp.write_queue:
        tcp_write_xmit(tp, mss, tp.nonagle, 2, now)
        if tp.packets_out > pcount:
            tp.host.mib["TcpExtTCPLossProbes"] += 1
            return
    if tp.rtx_queue:
        skb = tp.rtx_queue[-1]
        if (skb.pcount or 1) > 1 and len(skb.data) > mss:
            tcp_fragment_rtx(tp, skb, len(skb.data) - mss, mss)
            skb = tp.rtx_queue[-1]
        if not tcp_retransmit_skb(tp, skb, 1, now):
            tp.host.mib["TcpExtTCPLossProbes"] += 1
    tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, tp.rto, now)


def tcp_simple_retransmit(tp, now: float) -> None:
    """The path MTU shrank: everything longer than the new MSS is lost, resend it now.

    cwnd is left alone: the amount of data in the network did not grow, only its units changed.
    """
    from .tcp_output import tcp_skb_seglen
    mss = tcp_current_mss(tp)
    for skb in tp.rtx_queue:
        if tcp_skb_seglen(skb) > mss:
            tcp_mark_skb_lost(tp, skb)
    if not tp.lost_out:
        return
    if tp.ca_state != TCP_CA_Loss:
        from .tcp_input import tcp_current_ssthresh
        tp.high_seq = tp.snd_nxt
        tp.snd_ssthresh = tcp_current_ssthresh(tp)
        tp.prior_ssthresh = 0
        tp.undo_marker = 0
        tcp_set_ca_state(tp, TCP_CA_Loss)
    tcp_xmit_retransmit_queue(tp, now)
