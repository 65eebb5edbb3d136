"""Input: the handshake, ACK processing, RTT estimation, receiving data, delayed ACKs.

Mirrors net/ipv4/tcp_input.c (Linux 6.x). Loss recovery proper (SACK
scoreboard, fast retransmit, RACK/TLP) lives in tcp_recovery.py.
"""

from __future__ import annotations

from .constants import (
    ECONNREFUSED, ECONNRESET, EPIPE, ICSK_ACK_NOW, ICSK_ACK_PUSHED, ICSK_ACK_PUSHED2, ICSK_ACK_SCHED,
    ICSK_TIME_PROBE0, RCV_SHUTDOWN, SEND_SHUTDOWN, TCP_ATO_MIN_MS,
    TCP_CA_Open, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED,
    TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_MAX_QUICKACKS, TCP_MAX_WSCALE,
    TCP_MSS_DEFAULT, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, TCP_TIMEWAIT_LEN_MS,
    TCPHDR_ACK, TCPHDR_FIN, TCPHDR_PSH, TCPHDR_RST, TCPHDR_SYN, TCP_RTO_MIN_MS,
)
from .jiffies import jiffies, msecs_to_jiffies, usecs_to_jiffies
from .seq import after, before, seq_sub
from .skbuff import TCPCB_EVER_RETRANS, TCPCB_LOST, TCPCB_SACKED_ACKED, TCPCB_SACKED_RETRANS
from .tcp_output import (
    TCP_RTO_MAX, TCPOPT_MSS, TCPOPT_SACK, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP, TCPOPT_WINDOW,
    inet_csk_clear_xmit_timer, tcp_data_snd_check, tcp_probe0_when, tcp_reset_xmit_timer, tcp_send_ack, tcp_send_delayed_ack,
    tcp_sync_mss,
)

# tcp_ack() flags.
FLAG_DATA = 0x01
FLAG_WIN_UPDATE = 0x02
FLAG_DATA_ACKED = 0x04
FLAG_RETRANS_DATA_ACKED = 0x08
FLAG_SYN_ACKED = 0x10
FLAG_DATA_SACKED = 0x20
FLAG_ECE = 0x40
FLAG_LOST_RETRANS = 0x80
FLAG_SLOWPATH = 0x100
FLAG_ORIG_SACK_ACKED = 0x200
FLAG_SND_UNA_ADVANCED = 0x400
FLAG_DSACKING_ACK = 0x800
FLAG_SET_XMIT_TIMER = 0x1000
FLAG_SACK_RENEGING = 0x2000
FLAG_UPDATE_TS_RECENT = 0x4000
FLAG_NO_CHALLENGE_ACK = 0x8000
FLAG_ACK_MAYBE_DELAYED = 0x10000
FLAG_DSACK_TLP = 0x20000
FLAG_ACKED = FLAG_DATA_ACKED | FLAG_SYN_ACKED
FLAG_NOT_DUP = FLAG_DATA | FLAG_WIN_UPDATE | FLAG_ACKED
FLAG_CA_ALERT = FLAG_DATA_SACKED | FLAG_ECE | FLAG_DSACKING_ACK
FLAG_FORWARD_PROGRESS = FLAG_ACKED | FLAG_DATA_SACKED

TCP_ATO_MIN = msecs_to_jiffies(TCP_ATO_MIN_MS)
TCP_RTO_MIN_US = TCP_RTO_MIN_MS * 1000
TCP_RMEM_TO_WIN_SCALE = 8
TCP_DEFAULT_SCALING_RATIO = 1 << (TCP_RMEM_TO_WIN_SCALE - 1)


# --- options -------------------------------------------------------------------------------

def tcp_parse_options(tp, seg, is_syn: bool, opt: dict) -> None:
    """Fill ``opt`` from the segment's options, ignoring what this segment may not carry."""
    for kind, value in seg.options:
        if kind == TCPOPT_MSS and is_syn:
            in_mss = value
            if in_mss:
                if tp.user_mss and tp.user_mss < in_mss:
                    in_mss = tp.user_mss
                opt["mss_clamp"] = in_mss
        elif kind == TCPOPT_WINDOW and is_syn and tp.sysctl.tcp_window_scaling:
            opt["wscale_ok"] = True
            opt["snd_wscale"] = min(value, TCP_MAX_WSCALE)
        elif kind == TCPOPT_TIMESTAMP:
            if (is_syn and tp.sysctl.tcp_timestamps) or (not is_syn and tp.tstamp_ok):
                opt["saw_tstamp"] = True
                opt["rcv_tsval"], opt["rcv_tsecr"] = value
        elif kind == TCPOPT_SACK_PERM and is_syn and tp.sysctl.tcp_sack:
            opt["sack_ok"] = True
        elif kind == TCPOPT_SACK and not is_syn and tp.sack_ok:
            opt["sack"] = value


def _apply_ts(tp, opt: dict) -> None:
    tp.saw_tstamp = opt.get("saw_tstamp", False)
    if tp.saw_tstamp:
        tp.rcv_tsval = opt["rcv_tsval"]
        tp.rcv_tsecr = opt["rcv_tsecr"]


# --- windows -------------------------------------------------------------------------------

def tcp_win_from_space(tp, space: int) -> int:
    return (space * TCP_DEFAULT_SCALING_RATIO) >> TCP_RMEM_TO_WIN_SCALE if space > 0 else 0


def tcp_full_space(tp) -> int:
    return tcp_win_from_space(tp, tp.rcvbuf)


def tcp_rmem_alloc(tp) -> int:
    return len(tp.receive_queue) + sum(len(d) for _, _, d, _ in tp.ooo_queue)


def tcp_space(tp) -> int:
    return tcp_win_from_space(tp, tp.rcvbuf - tcp_rmem_alloc(tp))


def tcp_receive_window(tp) -> int:
    win = tp.rcv_wup + tp.rcv_wnd - tp.rcv_nxt
    win = ((win + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    return max(win, 0)


def __tcp_select_window(tp) -> int:
    """The window to offer now: free space, bounded by rcv_ssthresh, never creeping by bytes."""
    mss = tp.rcv_mss
    free_space = tcp_space(tp)
    allowed_space = tcp_full_space(tp)
    full_space = min(tp.window_clamp, allowed_space)
    if mss > full_space:
        mss = full_space
        if mss <= 0:
            return 0
    if free_space < (full_space >> 1):
        tp.ack_quick = 0
        free_space = free_space >> tp.rcv_wscale << tp.rcv_wscale
        if free_space < (allowed_space >> 4) or free_space < mss:
            return 0
    if free_space > tp.rcv_ssthresh:
        free_space = tp.rcv_ssthresh
    if tp.rcv_wscale:
        align = 1 << tp.rcv_wscale
        return (free_space + align - 1) // align * align
    window = tp.rcv_wnd
    if window <= free_space - mss or window > free_space:
        window = free_space // mss * mss
    elif mss == full_space and free_space > window + (full_space >> 1):
        window = free_space
    return window


def tcp_select_initial_window(tp, space: int, mss: int) -> None:
    """Initial rcv_wnd, window_clamp and our window scale (tcp_select_initial_window)."""
    sysctl = tp.sysctl
    if tp.window_clamp == 0:
        tp.window_clamp = 0xFFFF << TCP_MAX_WSCALE
    space = min(tp.window_clamp, max(space, 0))
    if space > mss:
        space = space // mss * mss
    tp.rcv_wnd = min(space, 32767) if sysctl.tcp_workaround_signed_windows else space
    tp.rcv_wscale = 0
    if tp.wscale_ok or tp.state == TCP_SYN_SENT or tp.state == TCP_CLOSE:
        if sysctl.tcp_window_scaling:
            wspace = max(space, sysctl.tcp_rmem[2], sysctl.core_rmem_max)
            wspace = min(wspace, tp.window_clamp)
            tp.rcv_wscale = max(0, min(wspace.bit_length() - 1 - 15, TCP_MAX_WSCALE))
    tp.window_clamp = min(0xFFFF << tp.rcv_wscale, tp.window_clamp)
    tp.rcv_ssthresh = tp.rcv_wnd


def tcp_grow_window(tp, seg_len: int) -> None:
    if tp.rcv_ssthresh < tp.window_clamp and tp.rcv_ssthresh < tcp_space(tp):
        tp.rcv_ssthresh = min(tp.rcv_ssthresh + 2 * tp.advmss, tp.window_clamp)
        tp.ack_quick |= 1


def tcp_rcv_space_adjust(tp, now: float) -> None:
    """Receive-buffer autotuning, reduced to its core: make room for twice a round's reads."""
    if not tp.sysctl.tcp_moderate_rcvbuf or tp.userlocks_rcvbuf:
        return
    rtt_s = max((tp.srtt_us >> 3) / 1e6, 0.001)
    if now - tp.rcvq_time < rtt_s:
        return
    copied = seq_sub(tp.copied_seq, tp.rcvq_seq)
    if copied > tp.rcvq_space:
        rcvwin = (copied << 1) + 16 * tp.advmss
        rcvbuf = min(rcvwin * 2, tp.sysctl.tcp_rmem[2])
        if rcvbuf > tp.rcvbuf:
            tp.rcvbuf = rcvbuf
            tp.window_clamp = max(tp.window_clamp, min(tcp_win_from_space(tp, rcvbuf),
                                                       0xFFFF << tp.rcv_wscale))
        tp.rcvq_space = copied
    tp.rcvq_seq = tp.copied_seq
    tp.rcvq_time = now


# --- RTT and RTO ---------------------------------------------------------------------------

def tcp_rto_min_us(tp) -> int:
    return tp.rto_min * 1_000_000 // 250


def tcp_rtt_estimator(tp, mrtt_us: int) -> None:
    m = mrtt_us
    srtt = tp.srtt_us
    if srtt != 0:
        m -= srtt >> 3
        srtt += m
        if m < 0:
            m = -m
            m -= tp.mdev_us >> 2
            if m > 0:
                m >>= 3
        else:
            m -= tp.mdev_us >> 2
        tp.mdev_us += m
        if tp.mdev_us > tp.mdev_max_us:
            tp.mdev_max_us = tp.mdev_us
            if tp.mdev_max_us > tp.rttvar_us:
                tp.rttvar_us = tp.mdev_max_us
        if after(tp.snd_una, tp.rtt_seq):
            if tp.mdev_max_us < tp.rttvar_us:
                tp.rttvar_us -= (tp.rttvar_us - tp.mdev_max_us) >> 2
            tp.rtt_seq = tp.snd_nxt
            tp.mdev_max_us = tcp_rto_min_us(tp)
    else:
        srtt = m << 3
        tp.mdev_us = m << 1
        tp.rttvar_us = max(tp.mdev_us, tcp_rto_min_us(tp))
        tp.mdev_max_us = tp.rttvar_us
        tp.rtt_seq = tp.snd_nxt
    tp.srtt_us = max(1, srtt)


def tcp_set_rto(tp) -> None:
    tp.rto = min(usecs_to_jiffies((tp.srtt_us >> 3) + tp.rttvar_us), TCP_RTO_MAX)


def tcp_ack_update_rtt(tp, flag: int, seq_rtt_us: int, sack_rtt_us: int, ca_rtt_us: int,
                       now: float) -> bool:
    if seq_rtt_us < 0:
        seq_rtt_us = sack_rtt_us
    if seq_rtt_us < 0 and tp.saw_tstamp and tp.rcv_tsecr and flag & FLAG_ACKED:
        delta_ms = (_tcp_output.tcp_time_stamp(tp, now) - tp.rcv_tsecr) & 0xFFFFFFFF
        if delta_ms < 0x7FFFFFFF:
            seq_rtt_us = ca_rtt_us = max(delta_ms * 1000, 1)
    if seq_rtt_us < 0:
        return False
    if ca_rtt_us >= 0:
        tp.min_rtt_us = min(tp.min_rtt_us, max(ca_rtt_us, 1))
    tcp_rtt_estimator(tp, seq_rtt_us)
    tcp_set_rto(tp)
    tp.backoff = 0
    return True


def tcp_update_pacing_rate(tp) -> None:
    """200 % of cwnd/srtt in slow start, 120 % after: drives TSO autosizing and TSQ."""
    rate = tp.mss_cache * ((1_000_000 // 100) << 3)
    if tp.snd_cwnd < tp.snd_ssthresh // 2:
        rate *= tp.sysctl.tcp_pacing_ss_ratio
    else:
        rate *= tp.sysctl.tcp_pacing_ca_ratio
    rate *= max(tp.snd_cwnd, tp.packets_out)
    if tp.srtt_us:
        rate //= tp.srtt_us
    tp.pacing_rate = rate


# --- ACK processing ------------------------------------------------------------------------

def tcp_may_update_window(tp, ack: int, ack_seq: int, nwin: int) -> bool:
    return (after(ack, tp.snd_una) or after(ack_seq, tp.snd_wl1) or
            (ack_seq == tp.snd_wl1 and (nwin > tp.snd_wnd or not nwin)))


def tcp_ack_update_window(tp, seg, ack: int, ack_seq: int, now: float) -> int:
    flag = 0
    nwin = seg.window
    if not seg.flags & TCPHDR_SYN:
        nwin <<= tp.snd_wscale
    if tcp_may_update_window(tp, ack, ack_seq, nwin):
        flag |= FLAG_WIN_UPDATE
        tp.snd_wl1 = ack_seq
        if tp.snd_wnd != nwin:
            tp.snd_wnd = nwin
            if tp.write_queue:
                _tcp.tcp_slow_start_after_idle_check(tp, now)
            if nwin > tp.max_window:
                tp.max_window = nwin
                tcp_sync_mss(tp, tp.pmtu_cookie)
    if after(ack, tp.snd_una):
        tp.bytes_acked += seq_sub(ack, tp.snd_una)
        tp.snd_una = ack
    return flag


def tcp_clean_rtx_queue(tp, prior_snd_una: int, now: float, sack_state: dict) -> tuple[int, int]:
    """Free what the cumulative ACK covers; returns (flag, packets acked)."""
    flag = 0
    pkts_acked = 0
    first_ackt = last_ackt = None
    q = tp.rtx_queue
    snd_una = tp.snd_una
    reord = tp.snd_nxt     # lowest never-retransmitted, never-SACKed seq this ACK covers
    while q:
        skb = q[0]
        sacked = skb.sacked
        start_seq = skb.seq
        if after(skb.end_seq, snd_una):
            if skb.pcount == 1 or not after(snd_una, skb.seq):
                break
            acked_pcount = _tcp_tso_acked(tp, skb)
            if not acked_pcount:
                break
            fully_acked = False
        else:
            acked_pcount = skb.pcount or 1
            fully_acked = True
        if sacked & TCPCB_SACKED_RETRANS:
            tp.retrans_out -= acked_pcount
            flag |= FLAG_RETRANS_DATA_ACKED
        elif sacked & TCPCB_EVER_RETRANS:
            flag |= FLAG_RETRANS_DATA_ACKED
        elif not sacked & TCPCB_SACKED_ACKED:
            last_ackt = skb.tstamp
            if first_ackt is None:
                first_ackt = last_ackt
            if before(start_seq, reord):
                reord = start_seq
            if not after(skb.end_seq, tp.high_seq):
                flag |= FLAG_ORIG_SACK_ACKED
        if sacked & TCPCB_SACKED_ACKED:
            tp.sacked_out -= acked_pcount
        elif tp.sack_ok:
            tp.delivered += acked_pcount
            _tcp_recovery.tcp_rack_advance(tp, sacked, skb.end_seq, skb.tstamp, now)
        if sacked & TCPCB_LOST:
            tp.lost_out -= acked_pcount
        _tcp_recovery.tcp_rate_skb_delivered(tp, skb, sack_state)
        tp.packets_out -= acked_pcount
        pkts_acked += acked_pcount
        if skb.tcp_flags & TCPHDR_SYN:
            flag |= FLAG_SYN_ACKED
        else:
            flag |= FLAG_DATA_ACKED
        if not fully_acked:
            break
        q.popleft()
        tp.tsorted.pop(skb, None)
        tp.wmem_queued -= skb.truesize
    if tp.packets_out < 0 or tp.retrans_out < 0 or tp.lost_out < 0 or tp.sacked_out < 0:
        tp.host.mib["SendlabAccountingRepairs"] += 1
        tp.packets_out = max(tp.packets_out, 0)
        tp.retrans_out = max(tp.retrans_out, 0)
        tp.lost_out = max(tp.lost_out, 0)
        tp.sacked_out = max(tp.sacked_out, 0)
    seq_rtt_us = ca_rtt_us = -1
    if first_ackt is not None and not flag & FLAG_RETRANS_DATA_ACKED:
        seq_rtt_us = int((now - first_ackt) * 1e6)
        ca_rtt_us = int((now - last_ackt) * 1e6)
    sack_rtt_us = sack_state.get("rtt_us", -1)
    tcp_ack_update_rtt(tp, flag, seq_rtt_us, sack_rtt_us, ca_rtt_us, now)
    if flag & FLAG_ACKED:
        flag |= FLAG_SET_XMIT_TIMER
        if tp.mtup_probe_size and not after(tp.mtu_probe_seq_end, tp.snd_una):
            _tcp_mtu.tcp_mtup_probe_success(tp, now)
        if not tp.sack_ok:
            # Without SACK, dupacks stood in for delivered segments: the ACK takes them back.
            _tcp_recovery.tcp_remove_reno_sacks(tp, pkts_acked)
            # Nor can a cumulative ACK prove that an original, not a retransmission, arrived.
            if flag & FLAG_RETRANS_DATA_ACKED:
                flag &= ~FLAG_ORIG_SACK_ACKED
        elif before(reord, sack_state.get("prior_fack", reord)):
            # A hole of data sent once got filled: the network reordered it.
            _tcp_recovery.tcp_check_sack_reordering(tp, reord, 0)
        if tp.ca_ops is not None:
            tp.ca_ops.pkts_acked(tp, pkts_acked, ca_rtt_us, now)
    return flag, pkts_acked


def _tcp_tso_acked(tp, skb) -> int:
    """Trim whole segments the ACK covers off the front of a TSO skb."""
    packets_acked = skb.pcount
    _tcp_output.tcp_trim_head(tp, skb, seq_sub(tp.snd_una, skb.seq))
    if skb.pcount > 1:
        _tcp_output.tcp_set_skb_tso_segs(skb, skb.gso_size)
    return packets_acked - skb.pcount


def tcp_ack(tp, seg, flag: int, now: float) -> int:
    """Process the ACK field; returns >0 if it was used, 0 if old, <0 if it must be dropped."""
    if tp.host.tracer is not None:
        tp.host.tracer.ack(tp, seg, now)
    prior_snd_una = tp.snd_una
    ack = seg.ack_seq
    sack_state: dict = {"prior_fack": _tcp_recovery.tcp_highest_sack_seq(tp)}
    opts = seg_opt(seg)
    sack = opts.get("sack") if tp.sack_ok else None
    if before(ack, prior_snd_una):
        # An old ACK: only its SACK blocks (maybe a DSACK) can tell us something.
        if before(ack, (prior_snd_una - tp.max_window) & 0xFFFFFFFF):
            return -1
        if sack:
            flag |= _tcp_recovery.tcp_sacktag_write_queue(tp, sack, prior_snd_una, ack,
                                                          sack_state, now)
            flag, rexmit = _tcp_recovery.tcp_fastretrans_alert(tp, prior_snd_una, 0, flag, now)
            _tcp_recovery.tcp_xmit_recovery(tp, rexmit, now)
        return 0
    if after(ack, tp.snd_nxt):
        return -1
    if after(ack, prior_snd_una):
        flag |= FLAG_SND_UNA_ADVANCED
        tp.retransmits = 0
    prior_packets = tp.packets_out
    prior_in_flight = tp.packets_in_flight()
    prior_delivered = tp.delivered
    prior_lost = tp.lost
    flag |= tcp_ack_update_window(tp, seg, ack, seg.seq, now)
    # An ACK that moves the connection forward clears an earlier ICMP's soft error.
    tp.sk_err_soft = 0
    tp.probes_out = 0
    if sack:
        flag |= _tcp_recovery.tcp_sacktag_write_queue(tp, sack, prior_snd_una, ack, sack_state,
                                                      now)
    if seg.payload or seg.flags & (TCPHDR_SYN | TCPHDR_FIN):
        flag |= FLAG_DATA
    if not prior_packets:
        if tp.write_queue:
            tcp_ack_probe(tp, now)
        if tp.tlp_high_seq:
            _tcp_recovery.tcp_process_tlp_ack(tp, ack, flag)
        return 1
    clean_flag, pkts_acked = tcp_clean_rtx_queue(tp, prior_snd_una, now, sack_state)
    flag |= clean_flag
    _tcp_recovery.tcp_rack_update_reo_wnd(tp, sack_state.get("prior_delivered"))
    if tp.tlp_high_seq:
        _tcp_recovery.tcp_process_tlp_ack(tp, ack, flag)
    rexmit = _tcp_recovery.REXMIT_NONE
    if not flag & FLAG_NOT_DUP or flag & FLAG_CA_ALERT or tp.ca_state != TCP_CA_Open:
        num_dupack = 0
        if not flag & (FLAG_SND_UNA_ADVANCED | FLAG_NOT_DUP | FLAG_DSACKING_ACK):
            num_dupack = 1
        flag, rexmit = _tcp_recovery.tcp_fastretrans_alert(tp, prior_snd_una, num_dupack, flag, now)
    if flag & FLAG_SET_XMIT_TIMER:
        _tcp_recovery.tcp_set_xmit_timer(tp, now)
    if not tp.retrans_out and flag & FLAG_SND_UNA_ADVANCED and tp.ca_state == TCP_CA_Open:
        tp.retrans_stamp = 0
    delivered = tp.delivered - prior_delivered
    tcp_cong_control(tp, ack, delivered, tp.lost - prior_lost, flag, prior_in_flight, now)
    _tcp_recovery.tcp_xmit_recovery(tp, rexmit, now)
    return 1


def seg_opt(seg) -> dict:
    opt = seg.opts_cache
    if opt is None:
        opt = {}
        for kind, value in seg.options:
            if kind == TCPOPT_SACK:
                opt["sack"] = value
        seg.opts_cache = opt
    return opt


def tcp_ack_probe(tp, now: float) -> None:
    head = tp.send_head()
    if head is None:
        return
    if not after(head.end_seq, tp.wnd_end()):
        tp.backoff = 0
        inet_csk_clear_xmit_timer(tp, ICSK_TIME_PROBE0)
    else:
        tcp_reset_xmit_timer(tp, ICSK_TIME_PROBE0, tcp_probe0_when(tp, TCP_RTO_MAX), now)


def tcp_may_raise_cwnd(tp, flag: int) -> bool:
    if tp.reordering > tp.sysctl.tcp_reordering:
        return bool(flag & FLAG_FORWARD_PROGRESS)
    return bool(flag & FLAG_DATA_ACKED)


def tcp_cong_control(tp, ack: int, acked_sacked: int, newly_lost: int, flag: int,
                     prior_in_flight: int, now: float) -> None:
    if _tcp_recovery.tcp_in_cwnd_reduction(tp):
        _tcp_recovery.tcp_cwnd_reduction(tp, acked_sacked, newly_lost, flag, now)
    elif tcp_may_raise_cwnd(tp, flag):
        tp.ca_ops.cong_avoid(tp, ack, acked_sacked, now)
    tcp_update_pacing_rate(tp)


def tcp_current_ssthresh(tp) -> int:
    if _tcp_recovery.tcp_in_cwnd_reduction(tp):
        return tp.snd_ssthresh
    return max(tp.snd_ssthresh, (tp.snd_cwnd >> 1) + (tp.snd_cwnd >> 2))


# --- receiving data ------------------------------------------------------------------------

def tcp_sequence(tp, seq: int, end_seq: int) -> bool:
    return (not before(end_seq, tp.rcv_wup) and
            not after(seq, (tp.rcv_nxt + tcp_receive_window(tp)) & 0xFFFFFFFF))


def tcp_incr_quickack(tp, max_quickacks: int) -> None:
    quickacks = tp.rcv_wnd // (2 * tp.rcv_mss) if tp.rcv_mss else 2
    if quickacks == 0:
        quickacks = 2
    quickacks = min(quickacks, max_quickacks)
    if quickacks > tp.ack_quick:
        tp.ack_quick = quickacks


def tcp_enter_quickack_mode(tp, max_quickacks: int) -> None:
    tcp_incr_quickack(tp, max_quickacks)
    tp.ack_pingpong = 0
    tp.ack_ato = TCP_ATO_MIN


def tcp_in_quickack_mode(tp) -> bool:
    return bool(tp.ack_quick) and not tp.ack_pingpong


def tcp_measure_rcv_mss(tp, seg) -> None:
    length = seg.gso_size or len(seg.payload)
    if length >= tp.rcv_mss:
        tp.rcv_mss = min(length, tp.advmss)
        if seg.flags & TCPHDR_PSH:
            tp.ack_pending |= ICSK_ACK_PUSHED
    else:
        if tp.ack_pending & ICSK_ACK_PUSHED:
            tp.ack_pending |= ICSK_ACK_PUSHED2
        tp.ack_pending |= ICSK_ACK_PUSHED


def tcp_event_data_recv(tp, seg, now: float) -> None:
    tp.ack_pending |= ICSK_ACK_SCHED
    tcp_measure_rcv_mss(tp, seg)
    if not tp.ack_ato:
        # The first data segment: start the delayed-ACK engine in quick-ACK mode.
        tcp_incr_quickack(tp, TCP_MAX_QUICKACKS)
        tp.ack_ato = TCP_ATO_MIN
    else:
        m = jiffies(now) - jiffies(tp.ack_lrcvtime)
        if m <= TCP_ATO_MIN // 2:
            tp.ack_ato = (tp.ack_ato >> 1) + TCP_ATO_MIN // 2
        elif m < tp.ack_ato:
            tp.ack_ato = min((tp.ack_ato >> 1) + m, tp.rto)
        elif m > tp.rto:
            tcp_incr_quickack(tp, TCP_MAX_QUICKACKS)
    tp.ack_lrcvtime = now
    if len(seg.payload) >= 128:
        tcp_grow_window(tp, len(seg.payload))


def __tcp_ack_snd_check(tp, ofo_possible: bool, now: float) -> None:
    if ((seq_sub(tp.rcv_nxt, tp.rcv_wup) > tp.rcv_mss and
         (seq_sub(tp.rcv_nxt, tp.copied_seq) < 1 or __tcp_select_window(tp) >= tp.rcv_wnd)) or
            tcp_in_quickack_mode(tp) or tp.ack_pending & ICSK_ACK_NOW):
        tcp_send_ack(tp, now)
        return
    if not ofo_possible or not tp.ooo_queue:
        tcp_send_delayed_ack(tp, now)
        return
    tcp_send_ack(tp, now)


def tcp_ack_snd_check(tp, now: float) -> None:
    if not tp.ack_pending & ICSK_ACK_SCHED:
        return
    __tcp_ack_snd_check(tp, True, now)


def tcp_data_queue(tp, seg, now: float) -> None:
    """Queue received data in order (or out of order) and decide how to ACK it."""
    seq = seg.seq
    payload = seg.payload
    fin = bool(seg.flags & TCPHDR_FIN)
    end_seq = (seq + len(payload)) & 0xFFFFFFFF
    if not payload and not fin:
        return
    if tp.shutdown & RCV_SHUTDOWN and tp.dead and payload:
        return
    if seq == tp.rcv_nxt:
        if tcp_receive_window(tp) == 0 and payload:
            tp.host.mib["TcpExtTCPZeroWindowDrop"] += 1
            tcp_send_ack(tp, now)
            return
        _queue_in_order(tp, seg, payload, fin, now)
        if tp.ooo_queue:
            _ofo_drain(tp, now)
            if not tp.ooo_queue:
                tp.ack_pending |= ICSK_ACK_NOW
        tp.host.wake(tp)
        return
    if not after(end_seq, tp.rcv_nxt):
        # A retransmission of what we already have: ACK at once (it says our ACK was lost).
        tp.host.mib["TcpExtDelayedACKLost"] += 1
        tcp_enter_quickack_mode(tp, TCP_MAX_QUICKACKS)
        if tp.sack_ok and tp.sysctl.tcp_dsack:
            tp.dsack = (seq, end_seq)
        tcp_send_ack(tp, now)
        return
    if not before(seq, (tp.rcv_nxt + tcp_receive_window(tp)) & 0xFFFFFFFF):
        tcp_send_ack(tp, now)
        return
    if before(seq, tp.rcv_nxt):
        # Partial overlap: keep only the new part.
        _queue_in_order(tp, seg, payload[seq_sub(tp.rcv_nxt, seq):], fin, now)
        _ofo_drain(tp, now)
        tp.host.wake(tp)
        return
    tcp_data_queue_ofo(tp, seq, end_seq, payload, fin, now)


def _queue_in_order(tp, seg, payload, fin: bool, now: float) -> None:
    """Append in-order data; the delayed-ACK engine hears of data first, then of the FIN."""
    if payload:
        tp.receive_queue += payload
        tp.bytes_received += len(payload)
        tp.data_segs_in += 1
        tp.rcv_nxt = (tp.rcv_nxt + len(payload)) & 0xFFFFFFFF
        if seg is not None:
            tcp_event_data_recv(tp, seg, now)
    if fin:
        tcp_fin(tp, now)


def _ofo_drain(tp, now: float) -> None:
    q = tp.ooo_queue
    while q and not after(q[0][0], tp.rcv_nxt):
        seq, end_seq, data, fin = q.pop(0)
        if after(end_seq, tp.rcv_nxt) or (fin and end_seq == tp.rcv_nxt):
            cut = seq_sub(tp.rcv_nxt, seq)
            _queue_in_order(tp, None, data[cut:], fin, now)
    tcp_sack_update_blocks(tp)


def tcp_data_queue_ofo(tp, seq: int, end_seq: int, payload, fin: bool, now: float) -> None:
    tp.host.mib["TcpExtTCPOFOQueue"] += 1
    q = tp.ooo_queue
    # Out-of-order data: the sender needs to hear about the hole right away.
    tcp_enter_quickack_mode(tp, TCP_MAX_QUICKACKS)
    i = 0
    while i < len(q) and before(q[i][0], seq):
        i += 1
    q.insert(i, (seq, end_seq, bytes(payload), fin))
    tp.last_ofo = (seq, end_seq)
    tcp_sack_update_blocks(tp)
    tcp_send_ack(tp, now)


def tcp_sack_update_blocks(tp) -> None:
    """SACK blocks from the out-of-order queue; the most recently received block first."""
    if not tp.sack_ok:
        return
    blocks: list = []
    for seq, end_seq, data, fin in tp.ooo_queue:
        if blocks and not after(seq, blocks[-1][1]):
            if after(end_seq, blocks[-1][1]):
                blocks[-1] = (blocks[-1][0], end_seq)
        else:
            blocks.append((seq, end_seq))
    last = getattr(tp, "last_ofo", None)
    if last is not None:
        for i, (s, e) in enumerate(blocks):
            if not before(last[0], s) and not after(last[1], e):
                blocks.insert(0, blocks.pop(i))
                break
    dsack = getattr(tp, "dsack", None)
    if dsack:
        blocks.insert(0, dsack)
    tp.selective_acks = blocks[:4]


def tcp_fin(tp, now: float) -> None:
    """The peer has finished sending."""
    tp.rcv_nxt = (tp.rcv_nxt + 1) & 0xFFFFFFFF
    tp.shutdown |= RCV_SHUTDOWN
    tp.done = True
    tp.ack_pending |= ICSK_ACK_SCHED
    if tp.state in (TCP_SYN_RECV, TCP_ESTABLISHED):
        _tcp.tcp_set_state(tp, TCP_CLOSE_WAIT)
        tp.ack_pingpong = 1
    elif tp.state == TCP_FIN_WAIT1:
        tcp_send_ack(tp, now)
        _tcp.tcp_set_state(tp, TCP_CLOSING)
    elif tp.state == TCP_FIN_WAIT2:
        tcp_send_ack(tp, now)
        tcp_time_wait(tp, now)
    tp.ooo_queue.clear()
    tp.host.wake(tp)


def tcp_time_wait(tp, now: float) -> None:
    _tcp.tcp_set_state(tp, TCP_TIME_WAIT)
    tp.pending = 0
    tp.timeout = None
    tp.timewait_deadline = now + TCP_TIMEWAIT_LEN_MS / 1000
    tp.host.wake(tp)


def tcp_reset(tp, now: float) -> None:
    if tp.state == TCP_SYN_SENT:
        tp.sk_err = ECONNREFUSED
    elif tp.state == TCP_CLOSE_WAIT:
        tp.sk_err = EPIPE
    elif tp.state != TCP_CLOSE:
        tp.sk_err = ECONNRESET
    tp.host.mib["TcpEstabResets"] += tp.state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)
    tp.write_queue.clear()
    tp.rtx_queue.clear()
    tp.tsorted.clear()
    tp.packets_out = tp.retrans_out = tp.lost_out = tp.sacked_out = 0
    tp.wmem_queued = 0
    _tcp.tcp_done(tp)


# --- the established-state receive path ----------------------------------------------------

def tcp_rcv_established(tp, seg, now: float) -> None:
    tp.segs_in += 1
    opt: dict = {}
    if seg.options:
        tcp_parse_options(tp, seg, False, opt)
    seg.opts_cache = opt
    _apply_ts(tp, opt)
    if tp.saw_tstamp and tcp_paws_discard(tp, seg, now):
        if not seg.flags & TCPHDR_RST:
            tcp_send_ack(tp, now)
        return
    end_seq = (seg.seq + len(seg.payload) + (1 if seg.flags & TCPHDR_FIN else 0)) & 0xFFFFFFFF
    if not tcp_sequence(tp, seg.seq, end_seq):
        if not seg.flags & TCPHDR_RST:
            tcp_send_ack(tp, now)   # tcp_send_dupack
        return
    if seg.flags & TCPHDR_RST:
        if seg.seq == tp.rcv_nxt:
            tcp_reset(tp, now)
        else:
            tcp_send_challenge_ack(tp, now)
        return
    if seg.flags & TCPHDR_SYN:
        tcp_send_challenge_ack(tp, now)
        return
    if not seg.flags & TCPHDR_ACK:
        return
    if tp.saw_tstamp and not after(seg.seq, tp.rcv_wup):
        tp.ts_recent = tp.rcv_tsval
        tp.ts_recent_stamp = now
    if tcp_ack(tp, seg, FLAG_SLOWPATH | FLAG_UPDATE_TS_RECENT, now) < 0:
        return
    if not tcp_rcv_state_after_ack(tp, seg, now) or tp.state == TCP_CLOSE:
        return
    if tp.state not in (TCP_CLOSING, TCP_LAST_ACK, TCP_TIME_WAIT):
        tcp_data_queue(tp, seg, now)
    # Receiving a FIN may have moved us to TIME_WAIT: nothing more to send then.
    if tp.state in (TCP_CLOSE, TCP_TIME_WAIT):
        return
    tcp_data_snd_check(tp, now)
    tcp_ack_snd_check(tp, now)


def tcp_paws_discard(tp, seg, now: float) -> bool:
    """PAWS (RFC 7323): drop a segment whose timestamp went backwards."""
    if not tp.ts_recent_stamp:
        return False
    if ((tp.ts_recent - tp.rcv_tsval) & 0xFFFFFFFF) < 0x80000000 and tp.ts_recent != tp.rcv_tsval:
        if now - tp.ts_recent_stamp > 24 * 24 * 3600:
            return False
        # A pure ACK that moves nothing may pass (tcp_disordered_ack, simplified).
        return bool(seg.payload)
    return False


def tcp_send_challenge_ack(tp, now: float) -> None:
    tcp_send_ack(tp, now)


def tcp_rcv_state_after_ack(tp, seg, now: float) -> bool:
    """The state moves an ACK of our FIN causes. False when the segment must be dropped with
    a reset (data for a socket the application has closed)."""
    fin_acked = (tp.shutdown & SEND_SHUTDOWN and not tp.write_queue and not tp.rtx_queue
                 and tp.snd_una == tp.write_seq)
    if tp.state == TCP_FIN_WAIT1 and fin_acked:
        _tcp.tcp_set_state(tp, TCP_FIN_WAIT2)
        if not tp.dead:
            tp.host.wake(tp)
        elif _new_data_beyond(tp, seg):
            # An orphan that still gets data: nobody will read it (tcp_rcv_state_process).
            return _abort_on_data(tp, seg, now)
        else:
            tp.timewait_deadline = now + tp.sysctl.tcp_fin_timeout
    elif tp.state == TCP_CLOSING and fin_acked:
        tcp_time_wait(tp, now)
    elif tp.state == TCP_LAST_ACK and fin_acked:
        _tcp.tcp_done(tp)
    if tp.state in (TCP_FIN_WAIT1, TCP_FIN_WAIT2) and tp.shutdown & RCV_SHUTDOWN and \
            _new_data_beyond(tp, seg):
        # RFC 1122: data after we shut down reading gets a reset.
        return _abort_on_data(tp, seg, now)
    return True


def _new_data_beyond(tp, seg) -> bool:
    return bool(seg.payload) and after((seg.seq + len(seg.payload)) & 0xFFFFFFFF, tp.rcv_nxt)


def _abort_on_data(tp, seg, now: float) -> bool:
    tp.host.mib["TcpExtTCPAbortOnData"] += 1
    tcp_reset(tp, now)
    tp.host.send_reset_for(seg, now)
    return False


# --- handshake -----------------------------------------------------------------------------

def tcp_init_transfer(tp, now: float) -> None:
    """Connection established: initial window, congestion control, buffers, pacing."""
    _tcp_mtu.tcp_mtup_init(tp)
    if tp.total_retrans > 1 and tp.undo_marker:
        tp.snd_cwnd = 1
    else:
        tp.snd_cwnd = tp.sysctl.tcp_init_cwnd
    tp.snd_cwnd_stamp = jiffies(now)
    _tcp_cong.tcp_init_congestion_control(tp, now)
    if not tp.userlocks_sndbuf:
        _stream.tcp_sndbuf_expand(tp)
    tp.rcvq_space = min(tp.rcv_wnd, 10 * tp.advmss)
    tp.rcvq_seq = tp.copied_seq
    tp.rcvq_time = now
    tcp_update_pacing_rate(tp)
    tp.lsndtime = jiffies(now)


def tcp_initialize_rcv_mss(tp) -> None:
    hint = min(tp.advmss, tp.mss_cache, tp.rcv_wnd // 2 if tp.rcv_wnd else tp.advmss)
    tp.rcv_mss = max(min(hint, TCP_MSS_DEFAULT), 88)


def apply_syn_options(tp, opt: dict) -> None:
    """Take what the peer's SYN or SYN-ACK offered."""
    tp.mss_clamp = opt.get("mss_clamp", TCP_MSS_DEFAULT)
    if tp.user_mss and tp.user_mss < tp.mss_clamp:
        tp.mss_clamp = tp.user_mss
    tp.wscale_ok = opt.get("wscale_ok", False) and bool(tp.sysctl.tcp_window_scaling)
    tp.snd_wscale = opt.get("snd_wscale", 0) if tp.wscale_ok else 0
    if not tp.wscale_ok:
        tp.rcv_wscale = 0
        tp.window_clamp = min(tp.window_clamp, 65535)
    tp.sack_ok = opt.get("sack_ok", False) and bool(tp.sysctl.tcp_sack)
    tp.tstamp_ok = opt.get("saw_tstamp", False) and bool(tp.sysctl.tcp_timestamps)
    if tp.tstamp_ok:
        tp.ts_recent = opt["rcv_tsval"]
        tp.tcp_header_len = 20 + 12
    else:
        tp.tcp_header_len = 20


def tcp_rcv_synsent_state_process(tp, seg, now: float) -> None:
    """Our SYN is out: expect a SYN-ACK (or a simultaneous-open SYN, which we refuse)."""
    flags = seg.flags
    if flags & TCPHDR_ACK:
        if not after(seg.ack_seq, tp.iss) or after(seg.ack_seq, tp.snd_nxt):
            if not flags & TCPHDR_RST:
                tp.host.send_reset_for(seg, now)
            return
        if flags & TCPHDR_RST:
            tcp_reset(tp, now)
            return
        if not flags & TCPHDR_SYN:
            return
        opt: dict = {}
        tcp_parse_options(tp, seg, True, opt)
        apply_syn_options(tp, opt)
        _apply_ts(tp, opt)
        if tp.tstamp_ok:
            tp.ts_recent_stamp = now
            tp.advmss -= 12   # from now on every segment carries the timestamp option
        tp.irs = seg.seq
        tp.rcv_nxt = tp.rcv_wup = tp.copied_seq = (seg.seq + 1) & 0xFFFFFFFF
        tp.snd_wl1 = seg.seq
        seg.opts_cache = {}
        tcp_ack(tp, seg, FLAG_SLOWPATH, now)
        tp.snd_wnd = seg.window    # never scaled in a SYN-ACK
        tp.max_window = max(tp.max_window, tp.snd_wnd)
        if not tp.wscale_ok:
            tp.rcv_wnd = min(tp.rcv_wnd, 65535)
        tcp_sync_mss(tp, tp.pmtu_cookie or tp.host.route_mtu(tp.daddr))
        tcp_initialize_rcv_mss(tp)
        tp.snd_una = seg.ack_seq
        _tcp.tcp_set_state(tp, TCP_ESTABLISHED)
        tp.host.mib["TcpActiveOpens"] += 0
        tcp_init_transfer(tp, now)
        tp.host.wake(tp)
        tcp_send_ack(tp, now)
        tcp_data_snd_check(tp, now)
        return
    if flags & TCPHDR_RST:
        return
    # A SYN without ACK while we wait for a SYN-ACK (simultaneous open) is not modelled.
    tp.host.mib["TcpExtTCPSimultaneousOpenDropped"] += 1


def tcp_rcv_synrecv(tp, seg, now: float) -> None:
    """A passive child waits for the ACK of its SYN-ACK."""
    flags = seg.flags
    if flags & TCPHDR_RST:
        if seg.seq == tp.rcv_nxt:
            tp.host.unhash(tp)
            tp.state = TCP_CLOSE
        return
    if flags & TCPHDR_SYN and seg.seq == tp.irs:
        # The peer retransmitted its SYN: our SYN-ACK was lost.
        _tcp_output.tcp_send_synack(tp, now)
        return
    if not flags & TCPHDR_ACK:
        return
    if seg.ack_seq != tp.snd_nxt:
        tp.host.send_reset_for(seg, now)
        return
    if tp.host.tracer is not None:
        tp.host.tracer.ack(tp, seg, now)
    opt: dict = {}
    tcp_parse_options(tp, seg, False, opt)
    seg.opts_cache = opt
    _apply_ts(tp, opt)
    tp.snd_una = seg.ack_seq
    tp.snd_wnd = seg.window << tp.snd_wscale
    tp.max_window = tp.snd_wnd
    tp.snd_wl1 = seg.seq
    tp.pending = 0
    tp.timeout = None
    # The SYN-ACK RTT, unless the SYN-ACK was retransmitted (Karn).
    if not tp.syn_retries and tp.synack_stamp is not None:
        rtt_us = max(int((now - tp.synack_stamp) * 1e6), 1)
        tcp_ack_update_rtt(tp, FLAG_SYN_ACKED, rtt_us, -1, rtt_us, now)
    if tp.tstamp_ok:
        tp.advmss -= 12   # the SYN-ACK advertised the full MSS; segments now carry timestamps
    tcp_sync_mss(tp, tp.host.route_mtu(tp.daddr))
    tcp_initialize_rcv_mss(tp)
    _tcp.tcp_set_state(tp, TCP_ESTABLISHED)
    tcp_init_transfer(tp, now)
    if tp.saw_tstamp:
        tp.ts_recent = tp.rcv_tsval
        tp.ts_recent_stamp = now
    parent = tp.parent
    if parent is not None and parent.state != TCP_CLOSE:
        parent.accept_queue.append(tp)
        tp.host.wake(parent)
    if seg.payload or flags & TCPHDR_FIN:
        tcp_data_queue(tp, seg, now)
        tcp_ack_snd_check(tp, now)
    tcp_data_snd_check(tp, now)


# Imported last: these modules import this one, and are used only inside functions.
from . import stream as _stream  # noqa: E402
from . import tcp as _tcp  # noqa: E402
from . import tcp_cong as _tcp_cong  # noqa: E402
from . import tcp_mtu as _tcp_mtu  # noqa: E402
from . import tcp_output as _tcp_output  # noqa: E402
from . import tcp_recovery as _tcp_recovery  # noqa: E402
