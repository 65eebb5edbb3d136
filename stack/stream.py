"""Send-buffer accounting and writer wake-ups (net/core/stream.c and tcp_check_space)."""

from __future__ import annotations

from .constants import MAX_TCP_HEADER, TCP_INIT_CWND
from .seq import seq_sub

_SKB_SHINFO = 320
_SKB_STRUCT = 256


def tcp_notsent_lowat(tp) -> int:
    return tp.notsent_lowat or tp.sysctl.tcp_notsent_lowat


def tcp_stream_memory_free(tp, wake: int) -> bool:
    notsent_bytes = seq_sub(tp.write_seq, tp.snd_nxt)
    return (notsent_bytes << wake) < tcp_notsent_lowat(tp)


def sk_stream_memory_free(tp, wake: int = 0) -> bool:
    if tp.wmem_queued >= tp.sndbuf:
        return False
    return tcp_stream_memory_free(tp, wake)


def sk_stream_is_writeable(tp) -> bool:
    """Room enough to wake a writer: free space at least half of what is queued."""
    return (tp.sndbuf - tp.wmem_queued >= tp.wmem_queued >> 1) and sk_stream_memory_free(tp, 1)


def sk_stream_write_space(tp) -> None:
    if sk_stream_is_writeable(tp):
        tp.nospace = False
        tp.host.wake(tp)


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def tcp_sndbuf_expand(tp) -> None:
    """Size sndbuf for two windows of worst-case (one skb per MSS) memory."""
    per_mss = max(tp.mss_clamp, tp.mss_cache)
    per_mss = _roundup_pow_of_two(per_mss + MAX_TCP_HEADER + _SKB_SHINFO) + _SKB_STRUCT
    nr_segs = max(TCP_INIT_CWND, tp.snd_cwnd, tp.reordering + 1)
    factor = tp.ca_ops.sndbuf_expand if tp.ca_ops is not None else 2
    sndmem = factor * nr_segs * per_mss
    if tp.sndbuf < sndmem:
        tp.sndbuf = min(sndmem, tp.sysctl.tcp_wmem[2])


def tcp_should_expand_sndbuf(tp) -> bool:
    if tp.userlocks_sndbuf:
        return False
    return tp.packets_in_flight() < tp.snd_cwnd


def tcp_new_space(tp) -> None:
    if tcp_should_expand_sndbuf(tp):
        tcp_sndbuf_expand(tp)
    sk_stream_write_space(tp)


def tcp_check_space(tp) -> None:
    """Space was freed (ACKed data or sent data): wake a writer that ran out of room."""
    if tp.nospace:
        tcp_new_space(tp)
