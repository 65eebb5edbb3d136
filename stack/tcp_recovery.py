"""Loss recovery: SACK scoreboard, RACK loss detection, fast recovery with PRR, the RTO loss
state, tail loss probes and undo.

The congestion-state machine follows tcp_fastretrans_alert() in tcp_input.c;
RACK (RFC 8985) follows tcp_recovery.c; TLP follows tcp_schedule_loss_probe()
and tcp_send_loss_probe() in tcp_output.c. Non-SACK peers get NewReno's
duplicate-ACK counting (tcp_newreno_mark_lost). After an RTO, F-RTO (RFC 5682, SACK-enhanced,
tcp_frto) sends new data when the retransmitted head is ACKed and undoes the timeout when data
sent only once is then delivered (tcp_process_loss). Undo comes in every form Linux has:
full (timestamps or no retransmission needed), partial (a delayed original fills the hole),
DSACK (every retransmission reported duplicate) and F-RTO. Reordering is detected when data
sent once is (S)ACKed below the highest SACK (tcp_check_sack_reordering): it raises the
reordering degree, keeps RACK's reordering window open in recovery, and lets DSACKs widen it
(tcp_rack_update_reo_wnd). SACK reneging is noticed at RTO time only (a SACKed head), not by
the early ACK check of tcp_check_sack_reneging().
"""

from __future__ import annotations

from .constants import (
    ICSK_TIME_LOSS_PROBE, ICSK_TIME_REO_TIMEOUT, ICSK_TIME_RETRANS, TCP_CA_CWR, TCP_CA_Disorder,
    TCP_CA_Loss, TCP_CA_Open, TCP_CA_Recovery, TCP_NAGLE_OFF, TCP_RACK_RECOVERY_THRESH,
    TCP_SYN_SENT,
)
from .jiffies import TICK_S, usecs_to_jiffies
from .seq import after, before, seq_sub
from .skbuff import TCPCB_EVER_RETRANS, TCPCB_LOST, TCPCB_SACKED_ACKED, TCPCB_SACKED_RETRANS
from .tcp_output import (
    tcp_current_mss, tcp_fragment_rtx, tcp_rearm_rto, tcp_reset_xmit_timer, tcp_skb_seglen, tcp_write_xmit, tcp_xmit_retransmit_queue,
)

FLAG_DATA_SACKED = 0x20
FLAG_ECE = 0x40
FLAG_LOST_RETRANS = 0x80
FLAG_ORIG_SACK_ACKED = 0x200   # never-retransmitted data was (s)acked
FLAG_SND_UNA_ADVANCED = 0x400
FLAG_DSACKING_ACK = 0x800
FLAG_SET_XMIT_TIMER = 0x1000
FLAG_DATA = 0x01
FLAG_WIN_UPDATE = 0x02
FLAG_DATA_ACKED = 0x04
FLAG_SYN_ACKED = 0x10
FLAG_NOT_DUP = FLAG_DATA | FLAG_WIN_UPDATE | FLAG_DATA_ACKED | FLAG_SYN_ACKED
FLAG_DSACK_TLP = 0x20000
TCP_TIMEOUT_MIN_US = 2000
TCP_TIMEOUT_INIT_J = 250
TCPCB_RETRANS = TCPCB_SACKED_RETRANS | TCPCB_EVER_RETRANS

TCP_RACK_STATIC_REO_WND = 0x2   # tcp_recovery bit: never adapt the reordering window

REXMIT_NONE = 0
REXMIT_LOST = 1
REXMIT_NEW = 2      # F-RTO: send new data rather than retransmit


def tcp_is_sack(tp) -> bool:
    return tp.sack_ok


def tcp_is_rack(tp) -> bool:
    return bool(tp.sysctl.tcp_recovery & 1)


def tcp_set_ca_state(tp, state: int) -> None:
    if tp.ca_ops is not None:
        tp.ca_ops.set_state(tp, state)
    tp.ca_state = state


def tcp_in_cwnd_reduction(tp) -> bool:
    return tp.ca_state in (TCP_CA_CWR, TCP_CA_Recovery)


def tcp_left_out(tp) -> int:
    return tp.sacked_out + tp.lost_out


def tcp_any_retrans_done(tp) -> bool:
    if tp.retrans_out:
        return True
    return bool(tp.rtx_queue and tp.rtx_queue[0].sacked & TCPCB_EVER_RETRANS)


# --- SACK scoreboard -----------------------------------------------------------------------

def tcp_sacktag_write_queue(tp, blocks, prior_snd_una: int, ack: int, state: dict,
                            now: float) -> int:
    """Mark the skbs the peer's SACK blocks cover; FLAG_DATA_SACKED if any were new."""
    flag = 0
    state["reord"] = tp.snd_nxt    # lowest never-retransmitted seq SACKed below the highest
    for i, (start, end) in enumerate(blocks):
        if i == 0 and (before(start, ack) or _inside_later_block(blocks, start, end)):
            # A DSACK: the peer got these bytes twice (RFC 2883).
            dsack = tcp_check_dsack(tp, start, end, prior_snd_una)
            flag |= dsack
            if dsack & FLAG_DSACKING_ACK and after(end, prior_snd_una):
                _dsack_in_window(tp, start, end, state)
            continue
        if not after(end, start) or after(end, tp.snd_nxt):
            continue
        if not after(end, tp.snd_una):
            continue
        flag |= _sacktag_block(tp, start, end, state, now)
    if tp.ca_state != TCP_CA_Loss or tp.undo_marker:
        tcp_check_sack_reordering(tp, state["reord"], 0)
    return flag


def tcp_check_dsack(tp, start: int, end: int, prior_snd_una: int) -> int:
    """A D-SACK block: count it, unless it is dubious (longer than any window we offered, or
    more duplicates than we ever retransmitted); it may make an undo possible (undo_retrans)
    and, once reordering was seen, widen RACK's reordering window (dsack_seen)."""
    if not before(start, end):
        return 0
    seq_len = seq_sub(end, start)
    if seq_len > tp.max_window:
        return 0
    flag = 0
    dup_segs = 1
    if seq_len > tp.mss_cache:
        dup_segs = -(-seq_len // tp.mss_cache)
    elif tp.tlp_high_seq and tp.tlp_high_seq == end:
        flag |= FLAG_DSACK_TLP
    tp.dsack_dups += dup_segs
    if tp.dsack_dups > tp.total_retrans:
        tp.host.mib["TcpExtTCPDSACKIgnoredDubious"] += 1
        return flag
    tp.host.mib["TcpExtTCPDSACKRecv"] += 1
    if tp.reord_seen and not flag & FLAG_DSACK_TLP:
        tp.rack_dsack_seen = True
    if tp.undo_marker and tp.undo_retrans > 0 and not after(end, prior_snd_una) and \
            after(end, tp.undo_marker):
        tp.undo_retrans = max(0, tp.undo_retrans - dup_segs)
    return flag | FLAG_DSACKING_ACK


def _dsack_in_window(tp, start: int, end: int, state: dict) -> None:
    """A DSACK above snd_una: each retransmitted skb it covers was one retransmission too
    many (undo_retrans), and one SACKed before was reordered, not lost."""
    for skb in tp.rtx_queue:
        if not after(skb.end_seq, start):
            continue
        if not before(skb.seq, end):
            break
        if not skb.sacked & TCPCB_RETRANS or before(skb.seq, start) or after(skb.end_seq, end):
            continue
        if tp.undo_marker and tp.undo_retrans > 0 and after(skb.end_seq, tp.undo_marker):
            tp.undo_retrans = max(0, tp.undo_retrans - (skb.pcount or 1))
        if skb.sacked & TCPCB_SACKED_ACKED and before(skb.seq, state["reord"]):
            state["reord"] = skb.seq


def _inside_later_block(blocks, start: int, end: int) -> bool:
    for s, e in blocks[1:]:
        if not before(start, s) and not after(end, e):
            return True
    return False


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
            cut = -(-seq_sub(start, skb.seq) // mss) * mss
            if cut < len(skb.data):
                tcp_fragment_rtx(tp, skb, cut, mss)
            i += 1
            continue
        if after(skb.end_seq, end):
            cut = seq_sub(end, skb.seq) // mss * mss
            if not cut:
                break
            if cut < len(skb.data):
                tcp_fragment_rtx(tp, skb, cut, mss)
        flag |= _sacktag_one(tp, skb, state, now) | FLAG_DATA_SACKED
        i += 1
    return flag


def _sacktag_one(tp, skb, state: dict, now: float) -> int:
    """Mark one skb SACKed; FLAG_ORIG_SACK_ACKED when it was never retransmitted and lies
    below high_seq (what tells F-RTO that an RTO was spurious)."""
    flag = 0
    pcount = skb.pcount or 1
    sacked = skb.sacked
    if sacked & TCPCB_SACKED_RETRANS:
        skb.sacked &= ~TCPCB_SACKED_RETRANS
        tp.retrans_out -= pcount
    elif not sacked & TCPCB_RETRANS:
        state["rtt_us"] = int((now - skb.tstamp) * 1e6)
        # Sent once and SACKed below what was SACKed before: the network reordered it.
        if before(skb.seq, tcp_highest_sack_seq(tp)) and before(skb.seq, state["reord"]):
            state["reord"] = skb.seq
        if not after(skb.end_seq, tp.high_seq):
            flag = FLAG_ORIG_SACK_ACKED
    if sacked & TCPCB_LOST:
        skb.sacked &= ~TCPCB_LOST
        tp.lost_out -= pcount
    skb.sacked |= TCPCB_SACKED_ACKED
    tp.tsorted.pop(skb, None)   # delivered: no loss detection needed for it any more
    tp.sacked_out += pcount
    tp.delivered += pcount
    tcp_rack_advance(tp, sacked, skb.end_seq, skb.tstamp, now)
    tcp_rate_skb_delivered(tp, skb, state)
    if tp.highest_sack is None or after(skb.end_seq, tp.highest_sack):
        tp.highest_sack = skb.end_seq
    return flag


def tcp_highest_sack_seq(tp) -> int:
    if not tp.sacked_out:
        return tp.snd_una
    if tp.highest_sack is None:
        return tp.snd_nxt
    return tp.highest_sack


def tcp_check_sack_reordering(tp, low_seq: int, ts: int) -> None:
    """Data below the highest SACK arrived late (``low_seq``): the path reorders. Raise the
    reordering degree to cover it and remember that reordering was seen (RACK then keeps a
    reordering window in recovery, and DSACKs may widen it)."""
    fack = tcp_highest_sack_seq(tp)
    if not before(low_seq, fack):
        return
    metric = seq_sub(fack, low_seq)
    mss = tp.mss_cache
    if mss and metric > tp.reordering * mss:
        tp.reordering = min(-(-metric // mss), tp.sysctl.tcp_max_reordering)
    tp.reord_seen += 1
    tp.host.mib["TcpExtTCPTSReorder" if ts else "TcpExtTCPSACKReorder"] += 1


def tcp_rate_skb_delivered(tp, skb, state: dict) -> None:
    """Note what had been delivered when the latest-sent of the skbs this ACK delivers left
    (the rate sample's prior_delivered); a SACKed skb counts once, not again when ACKed."""
    if skb.tx_delivered < 0:
        return
    if "prior_delivered" not in state or _sent_after(skb.tstamp, state["rate_mstamp"],
                                                     skb.end_seq, state["rate_end_seq"]):
        state["prior_delivered"] = skb.tx_delivered
        state["rate_mstamp"] = skb.tstamp
        state["rate_end_seq"] = skb.end_seq
    if skb.sacked & TCPCB_SACKED_ACKED:
        skb.tx_delivered = -1


def tcp_rack_update_reo_wnd(tp, prior_delivered: int | None) -> None:
    """After an ACK: a DSACK seen since reordering widens the reordering window by one step
    (kept for 16 recoveries), at most once per round trip; otherwise it returns to one step."""
    if tp.sysctl.tcp_recovery & TCP_RACK_STATIC_REO_WND or prior_delivered is None:
        return
    if before(prior_delivered, tp.rack_last_delivered):
        tp.rack_dsack_seen = False    # less than a round trip since the last widening
    if tp.rack_dsack_seen:
        tp.rack_reo_wnd_steps = min(0xFF, tp.rack_reo_wnd_steps + 1)
        tp.rack_dsack_seen = False
        tp.rack_last_delivered = tp.delivered
        tp.rack_reo_wnd_persist = TCP_RACK_RECOVERY_THRESH
    elif not tp.rack_reo_wnd_persist:
        tp.rack_reo_wnd_steps = 1


# --- RACK ----------------------------------------------------------------------------------

def _sent_after(t1: float, t2: float, seq1: int, seq2: int) -> bool:
    return t1 > t2 or (t1 == t2 and after(seq1, seq2))


def tcp_rack_advance(tp, sacked: int, end_seq: int, xmit_time: float, now: float) -> None:
    """Remember the latest-sent packet known delivered, and its RTT."""
    rtt_us = int((now - xmit_time) * 1e6)
    if rtt_us < tp.min_rtt_us and sacked & TCPCB_RETRANS:
        # Delivered faster than min_rtt: the original was SACKed, not this retransmission.
        return
    tp.rack_advanced = True
    tp.rack_rtt_us = rtt_us
    if _sent_after(xmit_time, tp.rack_mstamp, end_seq, tp.rack_end_seq):
        tp.rack_mstamp = xmit_time
        tp.rack_end_seq = end_seq


def tcp_rack_reo_wnd(tp) -> int:
    """The reordering window, in microseconds: none while recovering or past dupthresh."""
    if not tp.reord_seen:
        if tp.ca_state >= TCP_CA_Recovery:
            return 0
        if tp.sacked_out >= tp.reordering:
            return 0
    min_rtt = tp.min_rtt_us if tp.min_rtt_us != 0xFFFFFFFF else 0
    return min((min_rtt >> 2) * tp.rack_reo_wnd_steps, tp.srtt_us >> 3)


def tcp_rack_detect_loss(tp, now: float) -> int:
    """Mark lost what was sent before the latest delivered packet and is overdue; returns the
    longest remaining wait (us) of those not yet overdue."""
    reo_wnd = tcp_rack_reo_wnd(tp)
    reo_timeout = 0
    lost = []
    # tp.tsorted is in transmit order, so the walk stops at the first packet sent too late.
    for skb in tp.tsorted:
        if skb.sacked & TCPCB_SACKED_ACKED:
            continue
        if skb.sacked & TCPCB_LOST and not skb.sacked & TCPCB_SACKED_RETRANS:
            continue
        if not _sent_after(tp.rack_mstamp, skb.tstamp, tp.rack_end_seq, skb.end_seq):
            break
        remaining = tp.rack_rtt_us + reo_wnd - int((now - skb.tstamp) * 1e6)
        if remaining <= 0:
            lost.append(skb)
        else:
            reo_timeout = max(reo_timeout, remaining)
    for skb in lost:
        tcp_mark_skb_lost(tp, skb)
        # Out of the transmit-order list until it is retransmitted (list_del_init in Linux).
        tp.tsorted.pop(skb, None)
    return reo_timeout


def tcp_rack_mark_lost(tp, now: float) -> bool:
    if not tp.rack_advanced:
        return False
    tp.rack_advanced = False
    timeout = tcp_rack_detect_loss(tp, now)
    if timeout:
        tcp_reset_xmit_timer(tp, ICSK_TIME_REO_TIMEOUT,
                             usecs_to_jiffies(timeout + TCP_TIMEOUT_MIN_US), now)
    return bool(timeout)


def tcp_rack_reo_timeout(tp, now: float) -> None:
    """The reordering window expired: what is still missing is lost."""
    lost = tp.lost
    prior_inflight = tp.packets_in_flight()
    tcp_rack_detect_loss(tp, now)
    if prior_inflight != tp.packets_in_flight():
        if tp.ca_state != TCP_CA_Recovery:
            tcp_enter_recovery(tp, False)
            tcp_cwnd_reduction(tp, 1, tp.lost - lost, 0, now)
        tcp_xmit_retransmit_queue(tp, now)
    if tp.pending != ICSK_TIME_RETRANS:
        tcp_rearm_rto(tp, now)


# --- loss marking --------------------------------------------------------------------------

def tcp_mark_skb_lost(tp, skb) -> None:
    sacked = skb.sacked
    if sacked & TCPCB_SACKED_ACKED:
        return
    pcount = skb.pcount or 1
    if sacked & TCPCB_LOST:
        if sacked & TCPCB_SACKED_RETRANS:
            # The retransmission is lost too: out of flight, to be sent again.
            skb.sacked &= ~TCPCB_SACKED_RETRANS
            tp.retrans_out -= pcount
            tp.host.mib["TcpExtTCPLostRetransmit"] += pcount
    else:
        skb.sacked |= TCPCB_LOST
        tp.lost_out += pcount
        tp.lost += pcount


def tcp_newreno_mark_lost(tp, snd_una_advanced: bool) -> None:
    """Non-SACK peers: the head is lost after dupthresh dupacks, or on a partial ACK."""
    state = tp.ca_state
    if ((state < TCP_CA_Recovery and tp.sacked_out >= tp.reordering) or
            (state == TCP_CA_Recovery and snd_una_advanced)):
        skb = tp.rtx_queue[0]
        if skb.sacked & TCPCB_LOST:
            return
        mss = tcp_current_mss(tp)
        if len(skb.data) > mss:
            tcp_fragment_rtx(tp, skb, mss, mss)
        tcp_mark_skb_lost(tp, skb)


def tcp_update_scoreboard(tp) -> None:
    """Without RACK: mark lost every un-SACKed skb with dupthresh SACKed segments above it."""
    sacked_above = 0
    for skb in reversed(tp.rtx_queue):
        if skb.sacked & TCPCB_SACKED_ACKED:
            sacked_above += skb.pcount or 1
        elif sacked_above >= tp.reordering:
            tcp_mark_skb_lost(tp, skb)
    if not tp.lost_out and tp.rtx_queue:
        tcp_mark_skb_lost(tp, tp.rtx_queue[0])


def tcp_identify_packet_loss(tp, flag: int, now: float) -> int:
    if not tp.rtx_queue:
        return flag
    if not tcp_is_sack(tp):
        tcp_newreno_mark_lost(tp, bool(flag & FLAG_SND_UNA_ADVANCED))
    elif tcp_is_rack(tp):
        prior_retrans = tp.retrans_out
        if tcp_rack_mark_lost(tp, now):
            flag &= ~FLAG_SET_XMIT_TIMER
        if prior_retrans > tp.retrans_out:
            flag |= FLAG_LOST_RETRANS
    return flag


def tcp_add_reno_sack(tp, num_dupack: int) -> None:
    """A duplicate ACK from a non-SACK peer stands for one segment that left the network."""
    if num_dupack:
        prior = tp.sacked_out
        tp.sacked_out = min(tp.sacked_out + num_dupack, max(tp.packets_out - 1, 0))
        if tp.sacked_out > prior:
            tp.delivered += tp.sacked_out - prior


def tcp_remove_reno_sacks(tp, acked: int) -> None:
    """A cumulative ACK without SACK: one segment filled the hole, the rest were dupacks."""
    if acked > 0:
        tp.delivered += max(acked - tp.sacked_out, 1)
        if acked - 1 >= tp.sacked_out:
            tp.sacked_out = 0
        else:
            tp.sacked_out -= acked - 1


def tcp_reset_reno_sack(tp) -> None:
    tp.sacked_out = 0


# --- cwnd reduction ------------------------------------------------------------------------

def tcp_init_cwnd_reduction(tp) -> None:
    tp.high_seq = tp.snd_nxt
    tp.tlp_high_seq = 0
    tp.snd_cwnd_cnt = 0
    tp.prior_cwnd = tp.snd_cwnd
    tp.prr_delivered = 0
    tp.prr_out = 0
    tp.snd_ssthresh = tp.ca_ops.ssthresh(tp)


def tcp_cwnd_reduction(tp, newly_acked_sacked: int, newly_lost: int, flag: int, now: float) -> None:
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
        if flag & FLAG_SND_UNA_ADVANCED and not newly_lost:
            sndcnt += 1
        sndcnt = min(delta, sndcnt)
    # Force a fast retransmit upon entering fast recovery.
    sndcnt = max(sndcnt, 0 if tp.prr_out else 1)
    tp.snd_cwnd = tp.packets_in_flight() + sndcnt


def tcp_end_cwnd_reduction(tp) -> None:
    # Reset cwnd to ssthresh at the end of CWR or recovery, unless the reduction was undone.
    if tp.snd_ssthresh < 0x7FFFFFFF and (tp.ca_state == TCP_CA_CWR or tp.undo_marker):
        tp.snd_cwnd = tp.snd_ssthresh
        tp.snd_cwnd_stamp = 0


def tcp_enter_cwr(tp) -> None:
    tp.prior_ssthresh = 0
    if tp.ca_state < TCP_CA_CWR:
        tp.undo_marker = 0
        tcp_init_cwnd_reduction(tp)
        tcp_set_ca_state(tp, TCP_CA_CWR)


# --- undo ----------------------------------------------------------------------------------

def tcp_init_undo(tp) -> None:
    tp.undo_marker = tp.snd_una
    # Retransmissions still in flight (a TLP's among them) may come back as DSACKs; 0 would
    # mean "may undo now", so nothing out is -1.
    tp.undo_retrans = tp.retrans_out + (1 if tp.tlp_high_seq and tp.tlp_retrans else 0)
    if not tp.undo_retrans:
        tp.undo_retrans = -1


def tcp_may_undo(tp) -> bool:
    return bool(tp.undo_marker) and (not tp.undo_retrans or tcp_packet_delayed(tp))


def tcp_packet_delayed(tp) -> bool:
    """The ACK echoes a timestamp from before our first retransmission (the original was only
    delayed), or nothing was retransmitted at all."""
    if not tp.retrans_stamp:
        return tp.state != TCP_SYN_SENT
    if not tp.saw_tstamp or not tp.rcv_tsecr:
        return False
    stamp = _tcp_output.tcp_time_stamp(tp, tp.retrans_stamp)
    return ((stamp - tp.rcv_tsecr) & 0xFFFFFFFF) < 0x80000000 and stamp != tp.rcv_tsecr


def tcp_undo_cwnd_reduction(tp, unmark_loss: bool) -> None:
    if unmark_loss:
        for skb in tp.rtx_queue:
            skb.sacked &= ~TCPCB_LOST
        tp.lost_out = 0
    if tp.prior_ssthresh:
        tp.snd_cwnd = tp.ca_ops.undo_cwnd(tp)
        if tp.prior_ssthresh > tp.snd_ssthresh:
            tp.snd_ssthresh = tp.prior_ssthresh
    tp.undo_marker = 0
    tp.rack_advanced = True   # let RACK look at the losses again
    tp.host.mib["TcpExtTCPSpuriousRTOs" if tp.ca_state == TCP_CA_Loss else "TcpExtTCPFullUndo"] += 1


def tcp_try_undo_recovery(tp) -> bool:
    if tcp_may_undo(tp):
        tcp_undo_cwnd_reduction(tp, False)
    elif tp.rack_reo_wnd_persist:
        tp.rack_reo_wnd_persist -= 1
    if tcp_is_non_sack_preventing_reopen(tp):
        return True
    tcp_set_ca_state(tp, TCP_CA_Open)
    return False


def tcp_is_non_sack_preventing_reopen(tp) -> bool:
    """NewReno holds the recovery state until something above high_seq is ACKed (RFC 6582:
    no false fast retransmits); SACK needs no such hold."""
    if tp.snd_una == tp.high_seq and not tcp_is_sack(tp):
        if not tcp_any_retrans_done(tp):
            tp.retrans_stamp = 0
        return True
    return False


def tcp_try_undo_dsack(tp) -> bool:
    """DSACKs accounted for every retransmission: they were all needless; undo."""
    if tp.undo_marker and not tp.undo_retrans:
        tp.rack_reo_wnd_persist = min(TCP_RACK_RECOVERY_THRESH, tp.rack_reo_wnd_persist + 1)
        tcp_undo_cwnd_reduction(tp, False)
        tp.host.mib["TcpExtTCPDSACKUndo"] += 1
        return True
    return False


def tcp_try_undo_partial(tp, prior_snd_una: int, do_lost: bool) -> tuple[bool, bool]:
    """A partial ACK in Recovery: undo if it proves the original was only delayed (timestamps);
    returns (stop here, do_lost)."""
    if tp.undo_marker and tcp_packet_delayed(tp):
        tcp_check_sack_reordering(tp, prior_snd_una, 1)
        if tp.retrans_out:
            # More reordering than we thought: clock out new data, retransmit no more.
            return True, do_lost
        if not tcp_any_retrans_done(tp):
            tp.retrans_stamp = 0
        tcp_undo_cwnd_reduction(tp, True)
        tp.host.mib["TcpExtTCPPartialUndo"] += 1
        tcp_try_keep_open(tp)
        return False, do_lost
    return False, tcp_force_fast_retransmit(tp)


def tcp_force_fast_retransmit(tp) -> bool:
    """SACKs reach more than dupthresh segments past snd_una."""
    return after(tcp_highest_sack_seq(tp),
                 (tp.snd_una + tp.reordering * tp.mss_cache) & 0xFFFFFFFF)


def tcp_try_undo_loss(tp, frto_undo: bool) -> bool:
    if frto_undo or tcp_may_undo(tp):
        tcp_undo_cwnd_reduction(tp, True)
        tp.retransmits = 0
        if tcp_is_non_sack_preventing_reopen(tp):
            return True
        if frto_undo or tcp_is_sack(tp):
            tcp_set_ca_state(tp, TCP_CA_Open)
        return True
    return False


def tcp_try_keep_open(tp) -> None:
    state = TCP_CA_Disorder if tcp_left_out(tp) or tcp_any_retrans_done(tp) else TCP_CA_Open
    if tp.ca_state != state:
        tcp_set_ca_state(tp, state)
        tp.high_seq = tp.snd_nxt


def tcp_try_to_open(tp, flag: int) -> None:
    if not tcp_any_retrans_done(tp):
        tp.retrans_stamp = 0
    if flag & FLAG_ECE:
        tcp_enter_cwr(tp)
    if tp.ca_state != TCP_CA_CWR:
        tcp_try_keep_open(tp)


# --- entering and leaving recovery ---------------------------------------------------------

def tcp_enter_recovery(tp, ece_ack: bool) -> None:
    tp.host.mib["TcpExtTCPSackRecovery" if tcp_is_sack(tp) else "TcpExtTCPRenoRecovery"] += 1
    tp.prior_ssthresh = 0
    tcp_init_undo(tp)
    if not tcp_in_cwnd_reduction(tp):
        if not ece_ack:
            tp.prior_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
        tcp_init_cwnd_reduction(tp)
    tcp_set_ca_state(tp, TCP_CA_Recovery)


def tcp_time_to_recover(tp) -> bool:
    if tp.lost_out:
        return True
    # Without RACK, the classic dupthresh rule (tcp_dupack_heuristics() > reordering).
    return not tcp_is_rack(tp) and tp.sacked_out + 1 > tp.reordering


def tcp_timeout_mark_lost(tp, now: float) -> None:
    head = tp.rtx_queue[0] if tp.rtx_queue else None
    # A SACKed head at RTO time means the receiver reneged: forget every SACK.
    is_reneg = head is not None and bool(head.sacked & TCPCB_SACKED_ACKED)
    if is_reneg:
        tp.host.mib["TcpExtTCPSACKReneging"] += 1
        tp.sacked_out = 0
    elif not tcp_is_sack(tp):
        tcp_reset_reno_sack(tp)
    for skb in tp.rtx_queue:
        if is_reneg:
            skb.sacked &= ~TCPCB_SACKED_ACKED
        elif skb is not head and tp.rack_rtt_us - int((now - skb.tstamp) * 1e6) > 0:
            continue   # sent too recently to call lost yet
        tcp_mark_skb_lost(tp, skb)


def tcp_enter_loss(tp, now: float) -> None:
    """RTO: presume lost what is unacknowledged; cwnd restarts from what is in flight + 1."""
    new_recovery = tp.ca_state < TCP_CA_Recovery
    tcp_timeout_mark_lost(tp, now)
    if (tp.ca_state <= TCP_CA_Disorder or not after(tp.high_seq, tp.snd_una) or
            (tp.ca_state == TCP_CA_Loss and not tp.retransmits)):
        tp.prior_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
        tp.prior_cwnd = tp.snd_cwnd
        tp.snd_ssthresh = tp.ca_ops.ssthresh(tp)
        tcp_init_undo(tp)
    tp.snd_cwnd = tp.packets_in_flight() + 1
    tp.snd_cwnd_cnt = 0
    tp.snd_cwnd_stamp = 0
    reordering = tp.sysctl.tcp_reordering
    if tp.ca_state <= TCP_CA_Disorder and tp.sacked_out >= reordering:
        tp.reordering = min(tp.reordering, reordering)
    tcp_set_ca_state(tp, TCP_CA_Loss)
    tp.high_seq = tp.snd_nxt
    tp.tlp_high_seq = 0
    # F-RTO (RFC 5682 3.1 step 1) judges a first timeout, or one recurring on the same
    # snd_una, but not one that ends a fast recovery, nor one lost to a path-MTU probe.
    tp.frto = bool(tp.sysctl.tcp_frto) and (new_recovery or tp.retransmits > 0) and \
        not tp.mtup_probe_size


def tcp_process_loss(tp, flag: int, num_dupack: int) -> int:
    """An ACK in CA_Loss: undo, F-RTO's verdict, or more retransmissions; returns rexmit."""
    recovered = not before(tp.snd_una, tp.high_seq)
    if flag & FLAG_SND_UNA_ADVANCED and tcp_try_undo_loss(tp, False):
        return REXMIT_NONE
    if tp.frto:
        # Step 3.b: never-retransmitted data was delivered, so not everything was lost.
        if flag & FLAG_ORIG_SACK_ACKED and tcp_try_undo_loss(tp, True):
            return REXMIT_NONE
        if after(tp.snd_nxt, tp.high_seq):
            if flag & FLAG_DATA_SACKED or num_dupack:
                tp.frto = False     # step 3.a: new data went out and the loss was real
        elif flag & FLAG_SND_UNA_ADVANCED and not recovered:
            # Step 2.b: the retransmission got through; probe with new data (after
            # tcp_ack() has grown cwnd), or fall back to conventional recovery.
            tp.high_seq = tp.snd_nxt
            if tp.write_queue and after(tp.wnd_end(), tp.snd_nxt):
                return REXMIT_NEW
            tp.frto = False
    if recovered:
        tcp_try_undo_recovery(tp)
        return REXMIT_NONE
    if not tcp_is_sack(tp):
        if after(tp.snd_nxt, tp.high_seq) and num_dupack:
            tcp_add_reno_sack(tp, num_dupack)
        elif flag & FLAG_SND_UNA_ADVANCED:
            tcp_reset_reno_sack(tp)
    return REXMIT_LOST


def tcp_fastretrans_alert(tp, prior_snd_una: int, num_dupack: int, flag: int,
                          now: float) -> tuple[int, int]:
    """The congestion-state machine; returns (flag, rexmit)."""
    if not tp.packets_out and tp.sacked_out:
        tp.sacked_out = 0
    if flag & FLAG_ECE:
        tp.prior_ssthresh = 0
    state = tp.ca_state
    if state == TCP_CA_Open:
        tp.retrans_stamp = 0
    elif not before(tp.snd_una, tp.high_seq):
        if state == TCP_CA_CWR:
            if tp.snd_una != tp.high_seq:
                tcp_end_cwnd_reduction(tp)
                tcp_set_ca_state(tp, TCP_CA_Open)
        elif state == TCP_CA_Recovery:
            if not tcp_is_sack(tp):
                tcp_reset_reno_sack(tp)
            if tcp_try_undo_recovery(tp):
                return flag, REXMIT_NONE
            tcp_end_cwnd_reduction(tp)
    state = tp.ca_state
    if state == TCP_CA_Recovery:
        do_lost = bool(num_dupack) or bool(flag & FLAG_DATA_SACKED and tcp_force_fast_retransmit(tp))
        if not flag & FLAG_SND_UNA_ADVANCED:
            if not tcp_is_sack(tp):
                tcp_add_reno_sack(tp, num_dupack)
        else:
            stop, do_lost = tcp_try_undo_partial(tp, prior_snd_una, do_lost)
            if stop:
                return flag, REXMIT_NONE
        if tcp_try_undo_dsack(tp):
            tcp_try_to_open(tp, flag)
        flag = tcp_identify_packet_loss(tp, flag, now)
        if tp.ca_state != TCP_CA_Recovery:
            if not tcp_time_to_recover(tp):
                return flag, REXMIT_NONE
            # The undo ended one recovery, but loss is evident: a new one starts.
            tcp_enter_recovery(tp, bool(flag & FLAG_ECE))
        if not tcp_is_rack(tp) and do_lost and tcp_is_sack(tp):
            tcp_update_scoreboard(tp)
        return flag, REXMIT_LOST
    if state == TCP_CA_Loss:
        rexmit = tcp_process_loss(tp, flag, num_dupack)
        flag = tcp_identify_packet_loss(tp, flag, now)
        if not (tp.ca_state == TCP_CA_Open or flag & FLAG_LOST_RETRANS):
            return flag, rexmit
    if not tcp_is_sack(tp):
        if flag & FLAG_SND_UNA_ADVANCED:
            tcp_reset_reno_sack(tp)
        tcp_add_reno_sack(tp, num_dupack)
    if tp.ca_state <= TCP_CA_Disorder:
        tcp_try_undo_dsack(tp)
    flag = tcp_identify_packet_loss(tp, flag, now)
    if not tcp_time_to_recover(tp):
        tcp_try_to_open(tp, flag)
        return flag, REXMIT_NONE
    if (tp.ca_state < TCP_CA_CWR and tp.mtup_probe_size and
            tp.snd_una == tp.mtu_probe_seq_start):
        # The MTU probe was lost: lower search_high, keep cwnd, resend at the old size.
        _tcp_mtu.tcp_mtup_probe_failed(tp)
        tp.snd_cwnd += 1
        tcp_simple_retransmit(tp, now)
        return flag, REXMIT_NONE
    tcp_enter_recovery(tp, bool(flag & FLAG_ECE))
    if not tcp_is_rack(tp) and tcp_is_sack(tp):
        tcp_update_scoreboard(tp)
    return flag, REXMIT_LOST


def tcp_xmit_recovery(tp, rexmit: int, now: float) -> None:
    if rexmit == REXMIT_NONE or tp.state == TCP_SYN_SENT:
        return
    if rexmit == REXMIT_NEW:
        _tcp_output.__tcp_push_pending_frames(tp, tcp_current_mss(tp), TCP_NAGLE_OFF, now)
        if after(tp.snd_nxt, tp.high_seq):
            return
        tp.frto = False
    tcp_xmit_retransmit_queue(tp, now)


def tcp_set_xmit_timer(tp, now: float) -> None:
    if not tcp_schedule_loss_probe(tp, True, now):
        tcp_rearm_rto(tp, now)


def tcp_process_tlp_ack(tp, ack: int, flag: int) -> None:
    if before(ack, tp.tlp_high_seq):
        return
    if not tp.tlp_retrans:
        tp.tlp_high_seq = 0
    elif flag & FLAG_DSACK_TLP:
        tp.tlp_high_seq = 0
    elif after(ack, tp.tlp_high_seq):
        # The probe repaired a loss: that still calls for a cwnd reduction.
        tcp_init_cwnd_reduction(tp)
        tcp_set_ca_state(tp, TCP_CA_CWR)
        tcp_end_cwnd_reduction(tp)
        tcp_try_keep_open(tp)
        tp.host.mib["TcpExtTCPLossProbeRecovery"] += 1
    elif not flag & (FLAG_SND_UNA_ADVANCED | FLAG_NOT_DUP | FLAG_DATA_SACKED):
        tp.tlp_high_seq = 0


# --- tail loss probe -----------------------------------------------------------------------

def tcp_schedule_loss_probe(tp, advancing_rto: bool, now: float) -> bool:
    early_retrans = tp.sysctl.tcp_early_retrans
    if (early_retrans not in (3, 4) or not tp.packets_out or not tcp_is_sack(tp) or
            tp.ca_state not in (TCP_CA_Open, TCP_CA_CWR)):
        return False
    if tp.srtt_us:
        timeout_us = tp.srtt_us >> 2
        if tp.packets_out == 1:
            timeout_us += tp.rto_min * 4000     # room for a delayed ACK
        else:
            timeout_us += TCP_TIMEOUT_MIN_US
        timeout = usecs_to_jiffies(timeout_us)
    else:
        timeout = TCP_TIMEOUT_INIT_J
    if advancing_rto:
        rto_delta_j = tp.rto
    elif tp.rtx_queue:
        left = tp.rtx_queue[0].tstamp + tp.rto * TICK_S - now
        rto_delta_j = usecs_to_jiffies(left * 1e6) if left > 0 else 0
    else:
        rto_delta_j = tp.rto
    if rto_delta_j > 0:
        timeout = min(timeout, rto_delta_j)
    tcp_reset_xmit_timer(tp, ICSK_TIME_LOSS_PROBE, timeout, now)
    return True


def tcp_send_loss_probe(tp, now: float) -> None:
    """Send new data if any (so a lost tail shows up as a SACK hole), else the last segment."""
    if tp.tlp_high_seq:
        tcp_rearm_rto(tp, now)   # one probe per tail-loss episode
        return
    tp.tlp_retrans = False
    mss = tcp_current_mss(tp)
    head = tp.send_head()
    if head is not None and _tcp_output.tcp_snd_wnd_test(tp, head, mss):
        pcount = tp.packets_out
        tcp_write_xmit(tp, mss, TCP_NAGLE_OFF, 2, now)   # what Nagle held is the probe
        if tp.packets_out > pcount:
            _probe_sent(tp, now)
        else:
            tcp_rearm_rto(tp, now)
        return
    if not tp.rtx_queue:
        tcp_rearm_rto(tp, now)
        return
    skb = tp.rtx_queue[-1]
    if skb.clones:
        tcp_rearm_rto(tp, now)
        return
    pcount = skb.pcount or 1
    if pcount > 1 and len(skb.data) > (pcount - 1) * mss:
        tcp_fragment_rtx(tp, skb, (pcount - 1) * mss, mss)
        skb = tp.rtx_queue[-1]
    # A probe, not a retransmission of lost data: it is not counted in retrans_out.
    if _tcp_output.__tcp_retransmit_skb(tp, skb, 1, now):
        tcp_rearm_rto(tp, now)
        return
    tp.tlp_retrans = True
    _probe_sent(tp, now)


def _probe_sent(tp, now: float) -> None:
    tp.tlp_high_seq = tp.snd_nxt
    tp.host.mib["TcpExtTCPLossProbes"] += 1
    tp.pending = 0          # so the RTO restarts from now
    tcp_rearm_rto(tp, now)


def tcp_simple_retransmit(tp, now: float) -> None:
    """The path MTU shrank: everything longer than the new MSS is lost, resend it now.

    cwnd is left alone: the amount of data in the network did not grow, only its units changed.
    """
    mss = tcp_current_mss(tp)
    for skb in tp.rtx_queue:
        if tcp_skb_seglen(skb) > mss:
            tcp_mark_skb_lost(tp, skb)
    if not tp.lost_out:
        return
    if tp.ca_state != TCP_CA_Loss:
        tp.high_seq = tp.snd_nxt
        tp.snd_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
        tp.prior_ssthresh = 0
        tp.undo_marker = 0
        tcp_set_ca_state(tp, TCP_CA_Loss)
    tcp_xmit_retransmit_queue(tp, now)


# Imported last: these modules import this one, and are used only inside functions.
from . import tcp_input as _tcp_input  # noqa: E402
from . import tcp_mtu as _tcp_mtu  # noqa: E402
from . import tcp_output as _tcp_output  # noqa: E402
