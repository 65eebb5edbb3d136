"""Output: tcp_write_xmit and what it calls, segment building, ACKs, retransmission.

Mirrors net/ipv4/tcp_output.c (Linux 6.x). Every function takes the socket
first and the current time last; nothing here blocks or sleeps.
"""

from __future__ import annotations

from .constants import (
    GSO_LEGACY_MAX_SIZE, GSO_MAX_SEGS, ICSK_ACK_PUSHED, ICSK_ACK_SCHED, ICSK_ACK_TIMER,
    ICSK_TIME_LOSS_PROBE, ICSK_TIME_PROBE0, ICSK_TIME_REO_TIMEOUT, ICSK_TIME_RETRANS,
    IP_HEADER_LEN, MAX_TCP_HEADER, TCP_CA_CWR, TCP_CA_Loss, TCP_CA_Recovery,
    TCP_CLOSE,
    TCP_DELACK_MAX_MS, TCP_DELACK_MIN_MS, TCP_HEADER_LEN, TCP_MSS_DEFAULT,
    TCP_NAGLE_CORK, TCP_NAGLE_OFF, TCP_NAGLE_PUSH, TCP_RESOURCE_PROBE_INTERVAL_MS, TCP_RTO_MAX_MS,
    TCPHDR_ACK, TCPHDR_FIN, TCPHDR_PSH, TCPHDR_RST, TCPHDR_SYN,
)
from .jiffies import jiffies, msecs_to_jiffies, timer_deadline, usecs_to_jiffies, TICK_S
from .segment import Segment
from .stream import tcp_check_space
from .seq import after, before, seq_sub
from .skbuff import TCPCB_EVER_RETRANS, TCPCB_LOST, TCPCB_SACKED_ACKED, TCPCB_SACKED_RETRANS, SkBuff

TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8

# sk_gso_max_size as sk_setup_caps() leaves it: the device's 64 KB less the header room.
SK_GSO_MAX_SIZE = GSO_LEGACY_MAX_SIZE - (MAX_TCP_HEADER + 1)
TCP_RTO_MAX = msecs_to_jiffies(TCP_RTO_MAX_MS)
TCP_DELACK_MIN = msecs_to_jiffies(TCP_DELACK_MIN_MS)
TCP_ATO_MIN = TCP_DELACK_MIN
TCP_DELACK_MAX = msecs_to_jiffies(TCP_DELACK_MAX_MS)
PURE_ACK_TRUESIZE = 2   # skb_set_tcp_pure_ack(): pure ACKs barely count against TSQ


# --- MSS and size goal ---------------------------------------------------------------------

def __tcp_mtu_to_mss(tp, pmtu: int) -> int:
    mss_now = pmtu - IP_HEADER_LEN - TCP_HEADER_LEN
    if mss_now > tp.mss_clamp:
        mss_now = tp.mss_clamp
    mss_now -= tp.ext_header_len
    return max(mss_now, tp.sysctl.tcp_min_snd_mss)


def tcp_mtu_to_mss(tp, pmtu: int) -> int:
    """MSS for a path MTU, less the options every segment carries (not SACK blocks)."""
    return __tcp_mtu_to_mss(tp, pmtu) - (tp.tcp_header_len - TCP_HEADER_LEN)


def tcp_mss_to_mtu(tp, mss: int) -> int:
    return mss + tp.tcp_header_len + tp.ext_header_len + IP_HEADER_LEN


def tcp_bound_to_half_wnd(tp, pktsize: int) -> int:
    """Keep packets to half the largest window the peer offered (SWS avoidance)."""
    cutoff = tp.max_window >> 1 if tp.max_window > TCP_MSS_DEFAULT else tp.max_window
    if cutoff and pktsize > cutoff:
        return max(cutoff, 68 - tp.tcp_header_len)
    return pktsize


def tcp_sync_mss(tp, pmtu: int) -> int:
    if tp.mtup_search_high > pmtu:
        tp.mtup_search_high = pmtu
    mss_now = tcp_bound_to_half_wnd(tp, tcp_mtu_to_mss(tp, pmtu))
    tp.pmtu_cookie = pmtu
    if tp.mtup_enabled:
        mss_now = min(mss_now, tcp_mtu_to_mss(tp, tp.mtup_search_low))
    tp.mss_cache = mss_now
    return mss_now


def tcp_established_options_len(tp) -> int:
    size = 12 if tp.tstamp_ok else 0
    if tp.selective_acks:
        blocks = min(len(tp.selective_acks), (40 - size - 4) // 8)
        size += 4 + 8 * blocks
    return size


def tcp_current_mss(tp) -> int:
    mss_now = tp.mss_cache
    mtu = tp.host.route_mtu(tp.daddr)
    if mtu != tp.pmtu_cookie:
        mss_now = tcp_sync_mss(tp, mtu)
    header_len = TCP_HEADER_LEN + tcp_established_options_len(tp)
    if header_len != tp.tcp_header_len:
        mss_now -= header_len - tp.tcp_header_len
    return mss_now


def tcp_xmit_size_goal(tp, mss_now: int, large_allowed: bool) -> int:
    if not large_allowed:
        return mss_now
    new_size_goal = tcp_bound_to_half_wnd(tp, SK_GSO_MAX_SIZE)
    size_goal = tp.gso_segs * mss_now
    if new_size_goal < size_goal or new_size_goal >= size_goal + mss_now:
        tp.gso_segs = min(new_size_goal // mss_now, GSO_MAX_SEGS)
        size_goal = tp.gso_segs * mss_now
    return max(size_goal, mss_now)


def tcp_send_mss(tp, flags: int) -> tuple[int, int]:
    """Returns (mss_now, size_goal)."""
    mss_now = tcp_current_mss(tp)
    return mss_now, tcp_xmit_size_goal(tp, mss_now, not flags & _constants.MSG_OOB)


def tcp_tso_autosize(tp, mss_now: int, min_tso_segs: int) -> int:
    """About 1 ms worth of data at the pacing rate, plus a bonus on short RTTs."""
    rate = tp.pacing_rate
    gso = SK_GSO_MAX_SIZE
    nbytes = gso if rate == float("inf") else int(rate) >> tp.pacing_shift
    r = tp.min_rtt_us >> tp.sysctl.tcp_tso_rtt_log if tp.min_rtt_us != 0xFFFFFFFF else 64
    if r < 32:
        nbytes += gso >> r
    nbytes = min(nbytes, gso)
    return max(nbytes // mss_now, min_tso_segs)


def tcp_tso_segs(tp, mss_now: int) -> int:
    min_tso = tp.ca_ops.min_tso_segs(tp) if tp.ca_ops and tp.ca_ops.min_tso_segs else \
        tp.sysctl.tcp_min_tso_segs
    return min(tcp_tso_autosize(tp, mss_now, min_tso), GSO_MAX_SEGS)


# --- skb segment counts, splitting ---------------------------------------------------------

def tcp_set_skb_tso_segs(skb: SkBuff, mss_now: int) -> int:
    if len(skb.data) <= mss_now:
        skb.pcount = 1
        skb.gso_size = 0
        return 1
    skb.gso_size = mss_now
    skb.pcount = -(-len(skb.data) // mss_now)
    return skb.pcount


def tcp_init_tso_segs(skb: SkBuff, mss_now: int) -> int:
    pcount = skb.pcount
    if not pcount or (pcount > 1 and skb.gso_size != mss_now):
        return tcp_set_skb_tso_segs(skb, mss_now)
    return pcount


def tcp_skb_mss(skb: SkBuff) -> int:
    return skb.gso_size


def tcp_skb_seglen(skb: SkBuff) -> int:
    return len(skb.data) if skb.pcount == 1 else skb.gso_size


def tcp_skb_can_collapse_to(skb: SkBuff) -> bool:
    return not skb.eor


def _split(tp, skb: SkBuff, length: int) -> SkBuff:
    """Move the bytes of ``skb`` after ``length`` into a new skb (skb_split)."""
    nlen = len(skb.data) - length
    buff = SkBuff((skb.seq + length) & 0xFFFFFFFF)
    buff.end_seq = skb.end_seq
    skb.end_seq = buff.seq
    buff.data = skb.data[length:]
    del skb.data[length:]
    tp.wmem_queued += buff.truesize
    buff.truesize += nlen
    skb.truesize -= nlen
    # PSH and FIN belong to the last piece; so does the end of record.
    flags = skb.tcp_flags
    skb.tcp_flags = flags & ~(TCPHDR_FIN | TCPHDR_PSH)
    buff.tcp_flags = flags
    buff.eor, skb.eor = skb.eor, False
    buff.tstamp = skb.tstamp
    buff.first_tx = skb.first_tx
    buff.sacked = skb.sacked
    buff.retrans_stamp = skb.retrans_stamp
    return buff


def tso_fragment(tp, skb: SkBuff, length: int, mss_now: int) -> None:
    """Split an unsent skb so its first ``length`` bytes can go now."""
    buff = _split(tp, skb, length)
    tcp_set_skb_tso_segs(skb, mss_now)
    tcp_set_skb_tso_segs(buff, mss_now)
    q = tp.write_queue
    if q and q[0] is skb:
        q.insert(1, buff)
    else:
        q.insert(q.index(skb) + 1, buff)


def tcp_fragment_rtx(tp, skb: SkBuff, length: int, mss_now: int) -> None:
    """tcp_fragment() for an skb in the retransmit queue: keeps the counters straight."""
    old_factor = skb.pcount
    buff = _split(tp, skb, length)
    tcp_set_skb_tso_segs(skb, mss_now)
    tcp_set_skb_tso_segs(buff, mss_now)
    diff = old_factor - skb.pcount - buff.pcount
    if diff:
        tcp_adjust_pcount(tp, skb, diff)
    q = tp.rtx_queue
    q.insert(q.index(skb) + 1, buff)
    if skb in tp.tsorted:
        # The new piece was sent when skb was: it goes right after it in transmit order.
        order = list(tp.tsorted)
        order.insert(order.index(skb) + 1, buff)
        tp.tsorted = dict.fromkeys(order)


def tcp_adjust_pcount(tp, skb: SkBuff, decr: int) -> None:
    tp.packets_out -= decr
    if skb.sacked & TCPCB_SACKED_ACKED:
        tp.sacked_out -= decr
    if skb.sacked & TCPCB_SACKED_RETRANS:
        tp.retrans_out -= decr
    if skb.sacked & TCPCB_LOST:
        tp.lost_out -= decr


def tcp_grow_skb(tp, skb: SkBuff, amount: int) -> None:
    """Pull bytes from the next unsent skb so this one fills the cwnd quota (6.10+)."""
    q = tp.write_queue
    if len(q) < 2 or q[0] is not skb or not tcp_skb_can_collapse_to(skb):
        return
    next_skb = q[1]
    nlen = min(amount, len(next_skb.data))
    if not nlen:
        return
    skb.data += next_skb.data[:nlen]
    del next_skb.data[:nlen]
    skb.truesize += nlen
    next_skb.truesize -= nlen
    skb.end_seq = (skb.end_seq + nlen) & 0xFFFFFFFF
    next_skb.seq = (next_skb.seq + nlen) & 0xFFFFFFFF
    if not next_skb.data:
        skb.end_seq = next_skb.end_seq
        skb.tcp_flags |= next_skb.tcp_flags
        skb.eor = next_skb.eor
        del q[1]
        tp.wmem_queued -= next_skb.truesize


# --- Nagle, window and cwnd tests ----------------------------------------------------------

def tcp_minshall_check(tp) -> bool:
    return after(tp.snd_sml, tp.snd_una) and not after(tp.snd_sml, tp.snd_nxt)


def tcp_minshall_update(tp, mss_now: int, skb: SkBuff) -> None:
    if len(skb.data) < skb.pcount * mss_now:
        tp.snd_sml = skb.end_seq


def tcp_nagle_check(partial: bool, tp, nonagle: int) -> bool:
    """True when a partial segment must wait: corked, or Nagle with a small one unacked."""
    return partial and (bool(nonagle & TCP_NAGLE_CORK) or
                        (not nonagle and tp.packets_out > 0 and tcp_minshall_check(tp)))


def tcp_nagle_test(tp, skb: SkBuff, cur_mss: int, nonagle: int) -> bool:
    """True when ``skb`` may be sent now as far as Nagle and cork are concerned."""
    if nonagle & TCP_NAGLE_PUSH:
        return True
    if tp.urg_mode or skb.tcp_flags & TCPHDR_FIN:
        return True
    return not tcp_nagle_check(len(skb.data) < cur_mss, tp, nonagle)


def tcp_cwnd_test(tp) -> int:
    in_flight = tp.packets_in_flight()
    cwnd = tp.snd_cwnd
    if in_flight >= cwnd:
        return 0
    # At least two GSO packets in flight, for better scheduling.
    return min(max(cwnd >> 1, 1), cwnd - in_flight)


def tcp_snd_wnd_test(tp, skb: SkBuff, cur_mss: int) -> bool:
    end_seq = skb.end_seq
    if len(skb.data) > cur_mss:
        end_seq = (skb.seq + cur_mss) & 0xFFFFFFFF
    return not after(end_seq, tp.wnd_end())


def tcp_mss_split_point(tp, skb: SkBuff, mss_now: int, max_segs: int, nonagle: int) -> int:
    window = seq_sub(tp.wnd_end(), skb.seq)
    max_len = mss_now * max_segs
    if max_len <= window and skb is not tp.write_queue[-1]:
        return max_len
    needed = min(len(skb.data), window)
    if max_len <= needed:
        return max_len
    partial = needed % mss_now
    # Leave a sub-MSS tail behind if Nagle or cork would hold it anyway.
    if tcp_nagle_check(partial != 0, tp, nonagle):
        return needed - partial
    return needed


def tcp_tso_should_defer(tp, skb: SkBuff, max_segs: int, now: float, limited: list) -> bool:
    """Hold a multi-segment skb back a little in the hope of sending a bigger one."""
    if tp.ca_state >= TCP_CA_Recovery:
        return False
    # Defer only if the last transmit was recent (1 ms).
    if now - tp.tcp_wstamp > 0.001:
        return False
    in_flight = tp.packets_in_flight()
    send_win = seq_sub(tp.wnd_end(), skb.seq)
    cong_win = (tp.snd_cwnd - in_flight) * tp.mss_cache
    limit = min(send_win, cong_win)
    if limit >= max_segs * tp.mss_cache:
        return False
    if skb is not tp.write_queue[-1] and limit >= len(skb.data):
        return False
    win_divisor = tp.sysctl.tcp_tso_win_divisor
    if win_divisor:
        chunk = min(tp.snd_wnd, tp.snd_cwnd * tp.mss_cache) // win_divisor
        if limit >= chunk:
            return False
    elif limit > 3 * tp.mss_cache:
        return False
    if not tp.rtx_queue:
        return False
    srtt_s = (tp.srtt_us >> 3) / 1e6
    how_far_is_the_ack = tp.rtx_queue[0].tstamp + srtt_s - now
    if how_far_is_the_ack - min(srtt_s / 2, 0.001) > 0:
        return False
    if cong_win < send_win:
        if cong_win <= len(skb.data):
            limited[0] = True
    elif send_win <= len(skb.data):
        limited[1] = True
    if skb.tcp_flags & TCPHDR_FIN or skb.eor:
        return False
    return True


def tcp_rtx_queue_empty_or_single_skb(tp) -> bool:
    return len(tp.rtx_queue) <= 1


def tcp_small_queue_check(tp, skb: SkBuff, factor: int) -> bool:
    """TCP small queues: True when enough of this flow already sits in qdisc/device."""
    rate_bytes = tp.pacing_rate if tp.pacing_rate == float("inf") else int(tp.pacing_rate) >> tp.pacing_shift
    limit = max(2 * skb.truesize, rate_bytes)
    limit = min(limit, tp.sysctl.tcp_limit_output_bytes)
    limit <<= factor
    if tp.wmem_alloc > limit:
        # Always send when the retransmit queue is empty or holds one skb:
        # waiting on a slow TX completion would only add latency.
        if tcp_rtx_queue_empty_or_single_skb(tp):
            return False
        tp.tsq_throttled = True
        if tp.host.tracer is not None:
            tp.host.tracer.hold(tp, "tsq", skb, tp.tcp_clock, "rtx" if factor else "write")
        return True
    return False


# --- the transmit loop ---------------------------------------------------------------------

def tcp_write_xmit(tp, mss_now: int, nonagle: int, push_one: int, now: float) -> bool:
    """Send what cwnd, rwnd, Nagle/cork, TSO deferral and TSQ allow.

    Returns True when nothing is in flight but data is queued, so the caller must
    arm the probe timer (the only thing that will move the queue).
    """
    sent_pkts = 0
    limited = [False, False]   # is_cwnd_limited, is_rwnd_limited
    tp.tcp_clock = now
    if not push_one and tp.mtup_enabled:
        result = _tcp_mtu.tcp_mtu_probe(tp, now)
        if result > 0:
            sent_pkts = 1
        elif result == 0:
            return False   # waiting for ACKs before a probe can be built
    max_segs = tcp_tso_segs(tp, mss_now)
    q = tp.write_queue
    tracer = tp.host.tracer
    while q:
        skb = q[0]
        tso_segs = tcp_init_tso_segs(skb, mss_now)
        cwnd_quota = tcp_cwnd_test(tp)
        if not cwnd_quota:
            if push_one == 2:
                cwnd_quota = 1    # force out a loss probe
            else:
                if tracer is not None:
                    tracer.hold(tp, "cwnd", skb, now)
                break
        cwnd_quota = min(cwnd_quota, max_segs)
        missing_bytes = cwnd_quota * mss_now - len(skb.data)
        if missing_bytes > 0:
            tcp_grow_skb(tp, skb, missing_bytes)
        tso_segs = tcp_set_skb_tso_segs(skb, mss_now)
        if not tcp_snd_wnd_test(tp, skb, mss_now):
            limited[1] = True
            if tracer is not None:
                tracer.hold(tp, "rwnd", skb, now)
            break
        if tso_segs == 1:
            is_last = len(q) == 1
            if not tcp_nagle_test(tp, skb, mss_now, nonagle if is_last else TCP_NAGLE_PUSH):
                if tracer is not None:
                    tracer.hold(tp, _hold_reason(tp, nonagle), skb, now)
                break
        elif not push_one and tcp_tso_should_defer(tp, skb, max_segs, now, limited):
            if tracer is not None:
                tracer.hold(tp, "tso_defer", skb, now)
            break
        limit = mss_now
        if tso_segs > 1 and not tp.urg_mode:
            limit = tcp_mss_split_point(tp, skb, mss_now, cwnd_quota, nonagle)
        if len(skb.data) > limit:
            tso_fragment(tp, skb, limit, mss_now)
        if tcp_small_queue_check(tp, skb, 0):
            break
        # An empty skb means a writer sleeps in sendmsg; never send it as a pure ACK.
        if skb.end_seq == skb.seq:
            break
        if tracer is not None:
            tracer.send(tp, skb, now, push_one)
        tcp_transmit_skb(tp, skb, now)
        tcp_event_new_data_sent(tp, skb, now)
        tcp_minshall_update(tp, mss_now, skb)
        sent_pkts += skb.pcount
        if push_one:
            break
    is_cwnd_limited = limited[0] or tp.packets_in_flight() >= tp.snd_cwnd
    if sent_pkts or is_cwnd_limited:
        tcp_cwnd_validate(tp, is_cwnd_limited, now)
    if sent_pkts:
        if tp.ca_state in (TCP_CA_CWR, TCP_CA_Recovery):
            tp.prr_out += sent_pkts
        if push_one != 2:
            _tcp_recovery.tcp_schedule_loss_probe(tp, False, now)
        return False
    return not tp.packets_out and bool(q)


def _hold_reason(tp, nonagle: int) -> str:
    """Why Nagle's test held the tail: for the decision trace only."""
    if nonagle & TCP_NAGLE_CORK:
        return "cork" if tp.nonagle & TCP_NAGLE_CORK else "msg_more"
    return "nagle"


def tcp_cwnd_validate(tp, is_cwnd_limited: bool, now: float) -> None:
    if (not before(tp.snd_una, tp.cwnd_usage_seq) or is_cwnd_limited or
            (not tp.is_cwnd_limited and tp.packets_out > tp.max_packets_out)):
        tp.is_cwnd_limited = is_cwnd_limited
        tp.max_packets_out = tp.packets_out
        tp.cwnd_usage_seq = tp.snd_nxt
    if tcp_is_cwnd_limited(tp):
        tp.snd_cwnd_used = 0
        tp.snd_cwnd_stamp = jiffies(now)
    else:
        if tp.packets_out > tp.snd_cwnd_used:
            tp.snd_cwnd_used = tp.packets_out
        if (tp.sysctl.tcp_slow_start_after_idle and
                jiffies(now) - tp.snd_cwnd_stamp >= tp.rto):
            tcp_cwnd_application_limited(tp, now)


def tcp_is_cwnd_limited(tp) -> bool:
    if tp.is_cwnd_limited:
        return True
    # In slow start, grow cwnd to twice what was in flight.
    if tp.in_slow_start():
        return tp.snd_cwnd < 2 * tp.max_packets_out
    return False


def tcp_cwnd_application_limited(tp, now: float) -> None:
    """RFC 2861: shrink an unused cwnd halfway to what was actually used."""
    if tp.ca_state == 0 and not tp.nospace:
        init_win = tp.snd_cwnd
        win_used = max(tp.snd_cwnd_used, tp.sysctl.tcp_init_cwnd)
        if win_used < init_win:
            tp.snd_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
            tp.snd_cwnd = (init_win + win_used) >> 1
        tp.snd_cwnd_used = 0
    tp.snd_cwnd_stamp = jiffies(now)


def tcp_event_new_data_sent(tp, skb: SkBuff, now: float) -> None:
    prior_packets = tp.packets_out
    tp.snd_nxt = skb.end_seq
    tp.write_queue.popleft()
    tp.rtx_queue.append(skb)
    tp.packets_out += skb.pcount
    if not prior_packets or tp.pending == ICSK_TIME_LOSS_PROBE:
        tcp_rearm_rto(tp, now)
    tcp_check_space(tp)


def __tcp_push_pending_frames(tp, cur_mss: int, nonagle: int, now: float) -> None:
    if tp.state == TCP_CLOSE:
        return
    if tcp_write_xmit(tp, cur_mss, nonagle, 0, now):
        tcp_check_probe_timer(tp, now)


def tcp_push_pending_frames(tp, now: float) -> None:
    if tp.write_queue:
        __tcp_push_pending_frames(tp, tcp_current_mss(tp), tp.nonagle, now)


def tcp_push_one(tp, mss_now: int, now: float) -> None:
    tcp_write_xmit(tp, mss_now, TCP_NAGLE_PUSH, 1, now)


def tcp_data_snd_check(tp, now: float) -> None:
    tcp_push_pending_frames(tp, now)
    tcp_check_space(tp)


# --- building segments ---------------------------------------------------------------------

def tcp_syn_options(tp, mss: int, now: float) -> tuple:
    """SYN options in Linux's order: MSS, SACK-permitted+TS, NOP+WS."""
    return syn_option_layout(mss, tp.tstamp_ok, tp.sack_ok, tp.wscale_ok, tp.rcv_wscale,
                             tcp_time_stamp(tp, now), tp.ts_recent)


def syn_option_layout(mss: int, ts: bool, sack: bool, wscale_ok: bool, wscale: int,
                      tsval: int, tsecr: int) -> tuple:
    opts = [(TCPOPT_MSS, mss)]
    if ts:
        if sack:
            opts.append((TCPOPT_SACK_PERM, None))
        else:
            opts += [(TCPOPT_NOP, None), (TCPOPT_NOP, None)]
        opts.append((TCPOPT_TIMESTAMP, (tsval, tsecr)))
    elif sack:
        opts += [(TCPOPT_NOP, None), (TCPOPT_NOP, None), (TCPOPT_SACK_PERM, None)]
    if wscale_ok:
        opts += [(TCPOPT_NOP, None), (TCPOPT_WINDOW, wscale)]
    return tuple(opts)


_NOP2 = ((TCPOPT_NOP, None), (TCPOPT_NOP, None))


def tcp_established_options(tp, now: float) -> tuple:
    opts: tuple = ()
    if tp.tstamp_ok:
        opts = _NOP2 + ((TCPOPT_TIMESTAMP, (tcp_time_stamp(tp, now), tp.ts_recent)),)
    if tp.selective_acks:
        room = (40 - len(opts) * 4 - 4) // 8 if opts else 4
        blocks = tuple(tp.selective_acks[:min(room, 4 if not opts else 3)])
        opts = opts + _NOP2 + ((TCPOPT_SACK, blocks),)
    return opts


def tcp_time_stamp(tp, now: float) -> int:
    """TS value: a millisecond clock plus the connection's random offset."""
    return (int(now * 1000) + tp.ts_offset) & 0xFFFFFFFF


def tcp_select_window(tp) -> int:
    cur_win = _tcp_input.tcp_receive_window(tp)
    new_win = _tcp_input.__tcp_select_window(tp)
    # Never shrink the offered window.
    if new_win < cur_win:
        new_win = (cur_win + (1 << tp.rcv_wscale) - 1) >> tp.rcv_wscale << tp.rcv_wscale
    tp.rcv_wnd = new_win
    tp.rcv_wup = tp.rcv_nxt
    new_win = min(new_win, 65535 << tp.rcv_wscale)
    return new_win >> tp.rcv_wscale


def _make_segment(tp, seq: int, flags: int, payload, options: tuple, window: int) -> Segment:
    seg = Segment(tp.saddr, tp.daddr, tp.sport, tp.dport, seq, tp.rcv_nxt if flags & TCPHDR_ACK else 0,
                  flags, window, options, payload, 0, True, tp.ttl, tp.tos)
    seg.sk = tp
    return seg


def tcp_transmit_skb(tp, skb: SkBuff, now: float, rcv_nxt=None) -> None:
    """Build the segment for ``skb`` (a clone: the skb stays queued) and hand it to IP."""
    flags = skb.tcp_flags
    if flags & TCPHDR_SYN:
        options = tcp_syn_options(tp, tcp_advertise_mss(tp), now)
        window = min(tp.rcv_wnd, 65535)
    else:
        options = tcp_established_options(tp, now)
        window = tcp_select_window(tp)
        if (skb.pcount or 1) > 1:
            # Every GSO packet carries PSH (on its last segment once cut), so the receiver's
            # GRO flushes at once. Only the clone sent is marked, not the queued skb.
            flags |= TCPHDR_PSH
    seg = _make_segment(tp, skb.seq, flags, bytes(skb.data), options, window)
    if rcv_nxt is not None:
        seg.ack_seq = rcv_nxt
    pcount = skb.pcount or 1
    if pcount > 1:
        seg.gso_size = skb.gso_size
        seg.gso_segs = pcount
    skb.tstamp = now
    skb.tx_delivered = tp.delivered   # tcp_rate_skb_sent(): what was delivered when it left
    if not skb.first_tx:
        skb.first_tx = now
    if skb.data or flags & TCPHDR_FIN:
        # Newest transmission last: the order RACK walks (tsorted_sent_queue).
        tp.tsorted.pop(skb, None)
        tp.tsorted[skb] = None
    tp.tcp_wstamp = now
    if flags & TCPHDR_ACK:
        tcp_event_ack_sent(tp)
    if skb.data:
        tcp_event_data_sent(tp, now)
        tp.data_segs_out += pcount
        tp.bytes_sent += len(skb.data)
    tp.segs_out += pcount
    seg.skb_truesize = skb.truesize
    skb.clones += 1
    seg.owner = skb
    tp.wmem_alloc += skb.truesize
    ip_queue_xmit(tp, seg, pcount, now)


def ip_queue_xmit(tp, seg: Segment, pcount: int, now: float) -> None:
    # DF as IP_MTU_DISCOVER says (by default: unless the route's MTU is locked at min_pmtu);
    # a connected socket numbers its packets.
    seg.df = _tcp_ipv4.ip_dont_fragment(tp)
    seg.ip_id = tp.inet_id
    tp.inet_id = (tp.inet_id + pcount) & 0xFFFF
    tp.host.mib["TcpOutSegs"] += pcount
    if seg.flags & TCPHDR_RST:
        tp.host.mib["TcpOutRsts"] += 1
    tp.host.ip_output(tp, seg, now)


def tcp_event_data_sent(tp, now: float) -> None:
    if tp.packets_in_flight() == 0 and tp.ca_ops is not None:
        tp.ca_ops.cwnd_event_tx_start(tp, now)
    tp.lsndtime = jiffies(now)
    # A reply sent within ato of the last received data means an interactive flow.
    if (now - tp.ack_lrcvtime) < tp.ack_ato * TICK_S:
        tp.ack_pingpong = min(tp.ack_pingpong + 1, 255)


def tcp_cwnd_restart(tp, now: float) -> None:
    """RFC 2861: after an idle period longer than the RTO, restart from the initial window."""
    delta = jiffies(now) - tp.lsndtime
    restart_cwnd = min(tp.sysctl.tcp_init_cwnd, tp.snd_cwnd)
    cwnd = tp.snd_cwnd
    tp.snd_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
    delta -= tp.rto
    while delta > 0 and cwnd > restart_cwnd:
        cwnd >>= 1
        delta -= tp.rto
    tp.snd_cwnd = max(cwnd, restart_cwnd)
    tp.snd_cwnd_stamp = jiffies(now)
    tp.snd_cwnd_used = 0


def tcp_dec_quickack_mode(tp) -> None:
    """Only ACKs of new data use up quick-ACK mode (6.6+); leaving it deflates ato."""
    if tp.ack_quick:
        pkts = 1 if tp.ack_pending & ICSK_ACK_SCHED else 0
        if pkts >= tp.ack_quick:
            tp.ack_quick = 0
            tp.ack_ato = TCP_ATO_MIN
        else:
            tp.ack_quick -= pkts


def tcp_event_ack_sent(tp) -> None:
    tcp_dec_quickack_mode(tp)
    tp.ack_pending = 0
    tp.ack_timeout = None


def tcp_delack_max(tp) -> int:
    return min(TCP_DELACK_MAX, max(tp.rto_min, 2) - 1)


def tcp_advertise_mss(tp) -> int:
    return tp.advmss


def tcp_acceptable_seq(tp) -> int:
    wnd_end = tp.wnd_end()
    if not before(wnd_end, tp.snd_nxt) or (
            tp.wscale_ok and seq_sub(tp.snd_nxt, wnd_end) < (1 << tp.rcv_wscale)):
        return tp.snd_nxt
    return wnd_end


def __tcp_send_ack(tp, now: float, flags: int = 0) -> None:
    if tp.state == TCP_CLOSE:
        return
    window = tcp_select_window(tp)
    seg = _make_segment(tp, tcp_acceptable_seq(tp), TCPHDR_ACK | flags, b"",
                        tcp_established_options(tp, now), window)
    tcp_event_ack_sent(tp)
    tp.segs_out += 1
    seg.skb_truesize = PURE_ACK_TRUESIZE
    tp.wmem_alloc += PURE_ACK_TRUESIZE
    ip_queue_xmit(tp, seg, 1, now)


def tcp_send_ack(tp, now: float) -> None:
    __tcp_send_ack(tp, now)


def tcp_send_delayed_ack(tp, now: float) -> None:
    ato = tp.ack_ato
    if ato > TCP_DELACK_MIN:
        max_ato = 250 // 2     # HZ / 2
        if tp.ack_pingpong or tp.ack_pending & ICSK_ACK_PUSHED:
            max_ato = TCP_DELACK_MAX
        if tp.srtt_us:
            rtt = max(usecs_to_jiffies(tp.srtt_us >> 3), TCP_DELACK_MIN)
            max_ato = min(max_ato, rtt)
        ato = min(ato, max_ato)
    ato = min(ato, tcp_delack_max(tp))
    j = jiffies(now)
    timeout = j + ato
    if tp.ack_pending & ICSK_ACK_TIMER and tp.ack_timeout_j is not None:
        # If the delayed-ACK timer is about to expire, send the ACK now.
        if tp.ack_timeout_j <= j + (ato >> 2):
            tcp_send_ack(tp, now)
            return
        timeout = min(timeout, tp.ack_timeout_j)
    tp.ack_pending |= ICSK_ACK_SCHED | ICSK_ACK_TIMER
    tp.ack_timeout_j = timeout
    tp.ack_timeout = timer_deadline(now, timeout - j)


def tcp_send_fin(tp, now: float) -> None:
    """Put FIN on the last unsent skb if there is one, else queue a FIN-only skb."""
    tail = tp.write_queue_tail()
    if tail is not None:
        tail.tcp_flags |= TCPHDR_FIN
        tail.end_seq = (tail.end_seq + 1) & 0xFFFFFFFF
    else:
        skb = SkBuff(tp.write_seq, TCPHDR_ACK | TCPHDR_FIN)
        skb.end_seq = (tp.write_seq + 1) & 0xFFFFFFFF
        skb.pcount = 1
        tp.write_queue.append(skb)
        tp.wmem_queued += skb.truesize
    tp.write_seq = (tp.write_seq + 1) & 0xFFFFFFFF
    __tcp_push_pending_frames(tp, tcp_current_mss(tp), TCP_NAGLE_OFF, now)



def tcp_send_active_reset(tp, now: float) -> None:
    # Built by tcp_transmit_skb() like any segment: timestamps (a fresh TSval) and the window.
    seg = _make_segment(tp, tcp_acceptable_seq(tp), TCPHDR_ACK | TCPHDR_RST, b"",
                        tcp_established_options(tp, now), tcp_select_window(tp))
    seg.skb_truesize = 0
    ip_queue_xmit(tp, seg, 1, now)


def tcp_connect(tp, now: float) -> None:
    """Queue and send the SYN of an active open."""
    skb = SkBuff(tp.iss, TCPHDR_SYN)
    skb.end_seq = (tp.iss + 1) & 0xFFFFFFFF
    skb.pcount = 1
    tp.snd_nxt = tp.iss
    tp.snd_una = tp.iss
    tp.pushed_seq = tp.write_seq = skb.end_seq
    tp.wmem_queued += skb.truesize
    tp.write_queue.append(skb)
    tcp_transmit_skb(tp, skb, now)
    tp.snd_nxt = skb.end_seq
    tp.write_queue.popleft()
    tp.rtx_queue.append(skb)
    tp.packets_out += 1
    tp.retrans_stamp = now
    tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, tp.rto, now)


def tcp_send_synack(tp, now: float) -> None:
    """SYN-ACK of a passive open. Linux sends it from the request socket, with IP ID 0."""
    seg = _make_segment(tp, tp.iss, TCPHDR_SYN | TCPHDR_ACK, b"",
                        tcp_syn_options(tp, tcp_advertise_mss(tp), now), min(tp.rcv_wnd, 65535))
    if tp.synack_stamp is None:
        tp.synack_stamp = now
    tp.segs_out += 1
    tp.host.mib["TcpOutSegs"] += 1
    tp.host.ip_output(tp, seg, now)


# --- timers --------------------------------------------------------------------------------

def tcp_reset_xmit_timer(tp, what: int, when_jiffies: int, now: float) -> None:
    when_jiffies = min(when_jiffies, TCP_RTO_MAX)
    tp.pending = what
    tp.timeout = timer_deadline(now, when_jiffies)


def inet_csk_clear_xmit_timer(tp, what: int) -> None:
    if tp.pending == what or what == 0:
        tp.pending = 0
        tp.timeout = None


def tcp_rearm_rto(tp, now: float) -> None:
    if not tp.packets_out:
        inet_csk_clear_xmit_timer(tp, ICSK_TIME_RETRANS)
        tp.pending = 0
        tp.timeout = None
        return
    rto = tp.rto
    if tp.pending in (ICSK_TIME_REO_TIMEOUT, ICSK_TIME_LOSS_PROBE) and tp.rtx_queue:
        # Keep the RTO measured from the head's transmission, not from now.
        delta_s = tp.rtx_queue[0].tstamp + rto * TICK_S - now
        rto = usecs_to_jiffies(max(delta_s * 1e6, 1))
    tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, rto, now)


def tcp_probe0_base(tp) -> int:
    return max(tp.rto, tp.rto_min)


def tcp_probe0_when(tp, max_when: int) -> int:
    backoff = min(tp.backoff, 15)
    return min(tcp_probe0_base(tp) << backoff, max_when)


def tcp_check_probe_timer(tp, now: float) -> None:
    """Arm probe0 when nothing is in flight and no timer is pending; never re-arm it."""
    if not tp.packets_out and not tp.pending:
        tcp_reset_xmit_timer(tp, ICSK_TIME_PROBE0, tcp_probe0_base(tp), now)


def tcp_write_wakeup(tp, now: float) -> int:
    """Send the head of the queue regardless of Nagle/cork (window or hold probe)."""
    skb = tp.send_head()
    if skb is not None and before(skb.seq, tp.wnd_end()):
        mss = tcp_current_mss(tp)
        seg_size = seq_sub(tp.wnd_end(), skb.seq)
        if before(tp.pushed_seq, skb.end_seq):
            tp.pushed_seq = skb.end_seq
        if seg_size < seq_sub(skb.end_seq, skb.seq) or len(skb.data) > mss:
            seg_size = min(seg_size, mss)
            skb.tcp_flags |= TCPHDR_PSH
            tso_fragment(tp, skb, seg_size, mss)
        elif not skb.pcount:
            tcp_set_skb_tso_segs(skb, mss)
        skb.tcp_flags |= TCPHDR_PSH
        tcp_transmit_skb(tp, skb, now)
        tcp_event_new_data_sent(tp, skb, now)
        return 0
    # Zero window: a segment the peer must ACK (seq one below snd_una).
    seg = _make_segment(tp, (tp.snd_una - 1) & 0xFFFFFFFF, TCPHDR_ACK, b"",
                        tcp_established_options(tp, now), tcp_select_window(tp))
    tp.host.mib["TcpExtTCPWinProbe"] += 1
    ip_queue_xmit(tp, seg, 1, now)
    return -1


def tcp_send_probe0(tp, now: float) -> None:
    err = tcp_write_wakeup(tp, now)
    if tp.packets_out or not tp.write_queue:
        tp.probes_out = 0
        tp.backoff = 0
        return
    tp.probes_out += 1
    if err <= 0:
        if tp.backoff < tp.sysctl.tcp_retries2:
            tp.backoff += 1
        timeout = tcp_probe0_when(tp, TCP_RTO_MAX)
    else:
        timeout = msecs_to_jiffies(TCP_RESOURCE_PROBE_INTERVAL_MS)
    tcp_reset_xmit_timer(tp, ICSK_TIME_PROBE0, timeout, now)


# --- retransmission ------------------------------------------------------------------------

def tcp_trim_head(tp, skb: SkBuff, length: int) -> None:
    del skb.data[:length]
    skb.seq = (skb.seq + length) & 0xFFFFFFFF
    skb.truesize -= length
    tp.wmem_queued -= length


def __tcp_retransmit_skb(tp, skb: SkBuff, segs: int, now: float) -> int:
    tp.mtup_probe_size = 0
    # The previous copy is still in the qdisc/device: sending again helps no one.
    if skb.clones:
        return -16   # -EBUSY
    if before(skb.seq, tp.snd_una):
        if not before(skb.end_seq, tp.snd_una):
            if skb.end_seq == tp.snd_una:
                return -22
        tcp_trim_head(tp, skb, seq_sub(tp.snd_una, skb.seq))
    cur_mss = tcp_current_mss(tp)
    avail_wnd = seq_sub(tp.wnd_end(), skb.seq)
    if avail_wnd == 0 or avail_wnd >= 0x80000000:
        if skb.seq != tp.snd_una:
            return -11
        avail_wnd = cur_mss
    length = cur_mss * segs
    if length > avail_wnd:
        length = avail_wnd // cur_mss * cur_mss or avail_wnd
    if len(skb.data) > length:
        tcp_fragment_rtx(tp, skb, length, cur_mss)
    else:
        diff = skb.pcount
        tcp_set_skb_tso_segs(skb, cur_mss)
        diff -= skb.pcount
        if diff:
            tcp_adjust_pcount(tp, skb, diff)
    segs = skb.pcount
    tp.host.mib["TcpRetransSegs"] += segs
    tp.total_retrans += segs
    tp.bytes_retrans += len(skb.data)
    tcp_transmit_skb(tp, skb, now)
    return 0


def tcp_retransmit_skb(tp, skb: SkBuff, segs: int, now: float) -> int:
    err = __tcp_retransmit_skb(tp, skb, segs, now)
    if err == 0:
        skb.sacked |= TCPCB_SACKED_RETRANS | TCPCB_EVER_RETRANS
        tp.retrans_out += skb.pcount
        if not tp.retrans_stamp:
            # The time of this first retransmission (the skb was just stamped by the send).
            tp.retrans_stamp = skb.tstamp
        if tp.undo_retrans < 0:
            tp.undo_retrans = 0
        tp.undo_retrans += skb.pcount
    return err


def tcp_xmit_retransmit_queue(tp, now: float) -> None:
    """Retransmit the skbs marked lost, as far as cwnd allows."""
    if not tp.packets_out:
        return
    rtx_head = tp.rtx_queue[0] if tp.rtx_queue else None
    max_segs = tcp_tso_segs(tp, tcp_current_mss(tp))
    rearm_timer = False
    i = 0
    while i < len(tp.rtx_queue):
        skb = tp.rtx_queue[i]
        i += 1
        segs = tp.snd_cwnd - tp.packets_in_flight()
        if segs <= 0:
            break
        segs = min(segs, max_segs)
        sacked = skb.sacked
        if tp.retrans_out >= tp.lost_out:
            break
        if not sacked & TCPCB_LOST:
            continue
        if sacked & (TCPCB_SACKED_ACKED | TCPCB_SACKED_RETRANS):
            continue
        if tcp_small_queue_check(tp, skb, 1):
            break
        if tcp_retransmit_skb(tp, skb, segs, now):
            break
        tp.host.mib["TcpExtTCPFastRetrans" if tp.ca_state != TCP_CA_Loss
                    else "TcpExtTCPSlowStartRetrans"] += skb.pcount
        if tp.ca_state in (TCP_CA_CWR, TCP_CA_Recovery):
            tp.prr_out += skb.pcount
        if skb is rtx_head and tp.pending != ICSK_TIME_REO_TIMEOUT:
            rearm_timer = True
    if rearm_timer:
        tcp_reset_xmit_timer(tp, ICSK_TIME_RETRANS, tp.rto, now)


# Imported last: these modules import this one, and are used only inside functions.
from . import constants as _constants  # noqa: E402
from . import tcp_input as _tcp_input  # noqa: E402
from . import tcp_ipv4 as _tcp_ipv4  # noqa: E402
from . import tcp_mtu as _tcp_mtu  # noqa: E402
from . import tcp_recovery as _tcp_recovery  # noqa: E402
