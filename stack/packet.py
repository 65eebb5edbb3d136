"""Bytes <-> the core's Segment/IcmpError, through the wire codecs. One place for both ways.

Anything malformed raises ``MalformedPacket``; the host counts and drops it.
"""

from __future__ import annotations

from .segment import IcmpError, Segment
from .wire import (
    MalformedPacket, bytes_to_ip, decode_icmp, decode_ipv4, decode_tcp, encode_ipv4, encode_tcp,
    internet_checksum, ip_to_bytes, quoted_tcp_ports_seq,
)
from .wire.icmp import ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED
from .wire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP

_MAX_TS = 0xFFFFFFFF


def segment_to_ip(seg: Segment) -> bytes:
    src, dst = ip_to_bytes(seg.saddr), ip_to_bytes(seg.daddr)
    tcp = encode_tcp(src, dst, seg.sport, seg.dport, seg.seq, seg.ack_seq, seg.flags, seg.window,
                     seg.options, bytes(seg.payload))
    return encode_ipv4(src, dst, IPPROTO_TCP, tcp, ttl=seg.ttl, tos=seg.tos, ident=seg.ip_id,
                       df=seg.df)


class IcmpDropped(Exception):
    """An ICMP message the stack must drop; ``counters`` are the nstat counters it bumps."""

    def __init__(self, reason: str, counters: tuple) -> None:
        super().__init__(reason)
        self.counters = counters


def ip_to_packet(data, *, verify_checksum: bool = True):
    """Decode one IPv4 packet into a Segment or an IcmpError (None for other protocols).

    Raises MalformedPacket for a bad IP or TCP packet, IcmpDropped for a bad ICMP message
    (which Linux counts under Icmp*, not as an IP header error).
    """
    hdr, payload = decode_ipv4(data, verify_checksum=verify_checksum)
    if hdr.mf or hdr.frag_offset:
        raise MalformedPacket("IP fragments are not reassembled by the stack")
    if hdr.protocol == IPPROTO_TCP:
        th, body = decode_tcp(payload, hdr.src, hdr.dst, verify_checksum=verify_checksum)
        return Segment(bytes_to_ip(hdr.src), bytes_to_ip(hdr.dst), th.sport, th.dport, th.seq,
                       th.ack_seq, th.flags & 0xFF, th.window,
                       tuple((o[0], o[1]) for o in th.options if o[0] != 0), bytes(body),
                       hdr.ident, hdr.df, hdr.ttl, hdr.tos)
    if hdr.protocol == IPPROTO_ICMP:
        return _icmp_error(hdr, payload, verify_checksum)
    return None


def _icmp_error(hdr, payload, verify_checksum: bool):
    if verify_checksum and len(payload) >= 8 and internet_checksum(payload):
        raise IcmpDropped("bad checksum", ("IcmpInMsgs", "IcmpInCsumErrors", "IcmpInErrors"))
    try:
        msg = decode_icmp(payload, verify_checksum=False)
    except MalformedPacket as exc:
        raise IcmpDropped(str(exc), ("IcmpInMsgs", "IcmpInErrors")) from None
    if msg.type not in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED):
        return None
    q = msg.quoted_ip_header
    if q is None or q.protocol != IPPROTO_TCP:
        return None
    try:
        sport, dport, seq = quoted_tcp_ports_seq(msg)
    except MalformedPacket as exc:
        # Too short a quote to find the connection (pskb_may_pull fails in icmp_unreach).
        extra = ("IcmpInDestUnreachs",) if msg.type == ICMP_DEST_UNREACH else ()
        raise IcmpDropped(str(exc), ("IcmpInMsgs", *extra, "IcmpInErrors")) from None
    return IcmpError(bytes_to_ip(hdr.src), bytes_to_ip(hdr.dst), msg.type, msg.code,
                     msg.mtu or 0, bytes_to_ip(q.src), bytes_to_ip(q.dst), sport, dport, seq)


def segment_is_sane(seg: Segment) -> bool:
    """Reject field values no codec would produce, so the core never sees them."""
    try:
        if not (0 <= seg.seq <= 0xFFFFFFFF and 0 <= seg.ack_seq <= 0xFFFFFFFF and
                0 <= seg.window <= 0xFFFF and 0 <= seg.flags <= 0xFFF):
            return False
        for kind, value in seg.options:
            if kind in (2, 3):
                if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                    return False
            elif kind == 8:
                if len(value) != 2 or not all(isinstance(v, int) and 0 <= v <= _MAX_TS for v in value):
                    return False
            elif kind == 5:
                if not 1 <= len(value) <= 4:
                    return False
                for start, end in value:
                    if not (isinstance(start, int) and isinstance(end, int) and
                            0 <= start <= 0xFFFFFFFF and 0 <= end <= 0xFFFFFFFF):
                        return False
    except (TypeError, ValueError):
        return False
    return True
