"""Packetization-layer path-MTU discovery (RFC 4821) as Linux's tcp_mtu_probing modes 0/1/2.

tcp_mtup_init and tcp_mtu_probe come from tcp_output.c, the black-hole
reaction tcp_mtu_probing() from tcp_timer.c, probe success and failure from
tcp_input.c.
"""

from __future__ import annotations

from .constants import IP_HEADER_LEN, TCP_CA_Open, TCP_HEADER_LEN, TCPHDR_ACK, TCPHDR_FIN, TCPHDR_PSH
from .jiffies import HZ, jiffies
from .seq import after, seq_sub
from .skbuff import SkBuff
from .tcp_output import (
    tcp_current_mss, tcp_event_new_data_sent, tcp_mss_to_mtu, tcp_mtu_to_mss, tcp_set_skb_tso_segs,
    tcp_sync_mss, tcp_transmit_skb,
)


def tcp_mtup_init(tp) -> None:
    sysctl = tp.sysctl
    tp.mtup_enabled = sysctl.tcp_mtu_probing > 1
    tp.mtup_search_high = tp.mss_clamp + TCP_HEADER_LEN + IP_HEADER_LEN
    tp.mtup_search_low = tcp_mss_to_mtu(tp, sysctl.tcp_base_mss)
    tp.mtup_probe_size = 0
    if tp.mtup_enabled:
        tp.mtup_probe_timestamp = jiffies(tp.tcp_clock)


def tcp_mtu_check_reprobe(tp, now: float) -> None:
    delta = jiffies(now) - tp.mtup_probe_timestamp
    if delta >= tp.sysctl.tcp_probe_interval * HZ:
        mss = tcp_current_mss(tp)
        tp.mtup_probe_size = 0
        tp.mtup_search_high = tp.mss_clamp + TCP_HEADER_LEN + IP_HEADER_LEN
        tp.mtup_search_low = tcp_mss_to_mtu(tp, mss)
        tp.mtup_probe_timestamp = jiffies(now)


def tcp_mtu_probe(tp, now: float) -> int:
    """Send one probe of the next binary-search size. 1: sent, 0: wait, -1: not now."""
    if (not tp.mtup_enabled or tp.mtup_probe_size or tp.ca_state != TCP_CA_Open or
            tp.snd_cwnd < 11 or tp.selective_acks):
        return -1
    mss_now = tcp_current_mss(tp)
    probe_size = tcp_mtu_to_mss(tp, (tp.mtup_search_high + tp.mtup_search_low) >> 1)
    size_needed = probe_size + (tp.reordering + 1) * tp.mss_cache
    interval = tp.mtup_search_high - tp.mtup_search_low
    if probe_size > tcp_mtu_to_mss(tp, tp.mtup_search_high) or \
            interval < tp.sysctl.tcp_probe_threshold:
        tcp_mtu_check_reprobe(tp, now)
        return -1
    if seq_sub(tp.write_seq, tp.snd_nxt) < size_needed:
        return -1
    if tp.snd_wnd < size_needed:
        return -1
    if after((tp.snd_nxt + size_needed) & 0xFFFFFFFF, tp.wnd_end()):
        return 0
    in_flight = tp.packets_in_flight()
    if in_flight + 2 > tp.snd_cwnd:
        return -1 if not in_flight else 0
    if not _can_coalesce_send_queue_head(tp, probe_size):
        return -1
    nskb = _build_probe(tp, probe_size, mss_now)
    tcp_transmit_skb(tp, nskb, now)
    # The probe stands for two packets; take one back from cwnd.
    tp.snd_cwnd -= 1
    tcp_event_new_data_sent(tp, nskb, now)
    tp.mtup_probe_size = tcp_mss_to_mtu(tp, len(nskb.data))
    tp.mtu_probe_seq_start = nskb.seq
    tp.mtu_probe_seq_end = nskb.end_seq
    tp.host.mib["SendlabMtuProbes"] += 1
    if tp.host.tracer is not None:
        tp.host.tracer.event(tp, "mtu_probe", {"size": tp.mtup_probe_size}, now)
    return 1


def _can_coalesce_send_queue_head(tp, length: int) -> bool:
    for skb in tp.write_queue:
        if len(skb.data) >= length:
            return True
        if skb.eor or skb.tcp_flags & TCPHDR_FIN:
            return False
        length -= len(skb.data)
    return False


def _build_probe(tp, probe_size: int, mss_now: int) -> SkBuff:
    """Take ``probe_size`` bytes off the head of the write queue into one new skb."""
    q = tp.write_queue
    head = q[0]
    nskb = SkBuff(head.seq, TCPHDR_ACK)
    nskb.end_seq = (head.seq + probe_size) & 0xFFFFFFFF
    tp.wmem_queued += nskb.truesize
    length = 0
    while q and length < probe_size:
        skb = q[0]
        copy = min(len(skb.data), probe_size - length)
        if len(skb.data) <= copy:
            nskb.data += skb.data
            nskb.tcp_flags |= skb.tcp_flags
            nskb.eor = skb.eor
            q.popleft()
            tp.wmem_queued -= skb.truesize
        else:
            nskb.tcp_flags |= skb.tcp_flags & ~(TCPHDR_FIN | TCPHDR_PSH)
            nskb.data += skb.data[:copy]
            del skb.data[:copy]
            skb.truesize -= copy
            skb.seq = (skb.seq + copy) & 0xFFFFFFFF
            tcp_set_skb_tso_segs(skb, mss_now)
        length += copy
    nskb.truesize += len(nskb.data)
    tp.wmem_queued += len(nskb.data)
    tcp_set_skb_tso_segs(nskb, len(nskb.data))
    q.appendleft(nskb)
    return nskb


def tcp_mtup_probe_success(tp, now: float) -> None:
    tp.prior_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
    val = tp.snd_cwnd * tcp_mss_to_mtu(tp, tp.mss_cache) // tp.mtup_probe_size
    tp.snd_cwnd = max(1, val)
    tp.snd_cwnd_cnt = 0
    tp.snd_cwnd_stamp = jiffies(now)
    tp.snd_ssthresh = _tcp_input.tcp_current_ssthresh(tp)
    tp.mtup_search_low = tp.mtup_probe_size
    tp.mtup_probe_size = 0
    tcp_sync_mss(tp, tp.pmtu_cookie)
    tp.host.mib["TcpExtTCPMTUPSuccess"] += 1
    if tp.host.tracer is not None:
        tp.host.tracer.event(tp, "mss_change", {"mss": tp.mss_cache, "why": "probe_success",
                                                "mtu": tp.pmtu_cookie}, now)


def tcp_mtup_probe_failed(tp) -> None:
    tp.mtup_search_high = tp.mtup_probe_size - 1
    tp.mtup_probe_size = 0
    tp.host.mib["TcpExtTCPMTUPFail"] += 1
    if tp.host.tracer is not None:
        tp.host.tracer.event(tp, "mtu_probe_failed", {"search_high": tp.mtup_search_high}, None)


def tcp_mtu_probing(tp) -> None:
    """Black-hole detection after repeated RTOs: enable probing, drop to a safe MSS."""
    sysctl = tp.sysctl
    if not sysctl.tcp_mtu_probing:
        return
    if not tp.mtup_enabled:
        tp.mtup_enabled = True
        tp.mtup_probe_timestamp = jiffies(tp.tcp_clock)
    else:
        mss = tcp_mtu_to_mss(tp, tp.mtup_search_low) >> 1
        mss = min(sysctl.tcp_base_mss, mss)
        mss = max(mss, sysctl.tcp_mtu_probe_floor, sysctl.tcp_min_snd_mss)
        tp.mtup_search_low = tcp_mss_to_mtu(tp, mss)
    tcp_sync_mss(tp, tp.pmtu_cookie)
    if tp.host.tracer is not None:
        tp.host.tracer.event(tp, "mss_change", {"mss": tp.mss_cache, "why": "blackhole",
                                                "mtu": tp.mtup_search_low}, tp.tcp_clock)


# Imported last: these modules import this one, and are used only inside functions.
from . import tcp_input as _tcp_input  # noqa: E402
