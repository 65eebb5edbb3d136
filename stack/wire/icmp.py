"""ICMP (RFC 792) with RFC 1191 next-hop MTU in fragmentation-needed messages."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import MalformedPacket
from .checksum import internet_checksum
from .ipv4 import IPPROTO_TCP, Ipv4Header, decode_ipv4_header

__all__ = [
    "ICMP_DEST_UNREACH", "ICMP_ECHO", "ICMP_ECHOREPLY", "ICMP_EXC_FRAGTIME", "ICMP_EXC_TTL",
    "ICMP_FRAG_NEEDED", "ICMP_HOST_UNREACH", "ICMP_NET_UNREACH", "ICMP_PARAMETERPROB",
    "ICMP_PORT_UNREACH", "ICMP_PROT_UNREACH", "ICMP_REDIRECT", "ICMP_SOURCE_QUENCH",
    "ICMP_TIME_EXCEEDED", "LINUX_ICMP_QUOTE_LEN", "IcmpMessage", "build_dest_unreach",
    "build_echo_reply", "build_echo_request", "build_frag_needed", "build_time_exceeded",
    "decode_icmp", "encode_icmp", "quoted_tcp_ports_seq",
]

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12

# ICMP_DEST_UNREACH codes
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4

# ICMP_TIME_EXCEEDED codes
ICMP_EXC_TTL = 0
ICMP_EXC_FRAGTIME = 1

# Linux icmp_send() quotes as much as fits a 576-byte datagram:
# 576 - 20 (IP header) - 8 (ICMP header).
LINUX_ICMP_QUOTE_LEN = 576 - 20 - 8

_HDR = struct.Struct("!BBHI")
_PORTS_SEQ = struct.Struct("!HHI")
# Types whose body quotes the offending datagram.
_ERROR_TYPES = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT,
                          ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB))


@dataclass(slots=True)
class IcmpMessage:
    type: int
    code: int
    mtu: int | None = None  # next-hop MTU, only for DEST_UNREACH/FRAG_NEEDED (0 = not given)
    quoted_ip_header: Ipv4Header | None = None  # error messages only
    quoted_payload: bytes = b""  # quoted bytes after the quoted IP header
    ident: int | None = None  # echo request/reply only
    seq: int | None = None
    data: bytes = b""  # everything after the 8-byte ICMP header
    rest: int = 0  # bytes 4-7 of the header as a big-endian int


def encode_icmp(type: int, code: int, rest: int = 0, body=b"") -> bytes:
    """Generic ICMP message: 8-byte header (``rest`` = bytes 4-7) + body, checksummed."""
    csum = internet_checksum(body, (type << 8 | code) + rest)
    try:
        return _HDR.pack(type, code, csum, rest) + body
    except struct.error as e:
        raise ValueError(f"ICMP header field out of range: {e}") from None


def build_echo_request(ident: int, seq: int, data=b"") -> bytes:
    return encode_icmp(ICMP_ECHO, 0, (ident << 16) | seq, data)


def build_echo_reply(ident: int, seq: int, data=b"") -> bytes:
    return encode_icmp(ICMP_ECHOREPLY, 0, (ident << 16) | seq, data)


def _quote(ip_packet, quote_len: int | None):
    n = len(ip_packet)
    if n < 20 or ip_packet[0] >> 4 != 4:
        raise ValueError("quoted packet is not IPv4")
    hlen = (ip_packet[0] & 15) << 2
    total = ip_packet[2] << 8 | ip_packet[3]
    if hlen < 20 or hlen > n or total < hlen:
        raise ValueError("quoted packet has a bad IPv4 header")
    minimum = hlen + 8  # RFC 792: the header plus the first 64 bits of data
    if quote_len is None:
        limit = minimum
    elif quote_len < minimum:
        raise ValueError(f"quote_len {quote_len} < IP header + 8 ({minimum})")
    else:
        limit = quote_len
    # min with total drops link-layer padding the packet may still carry.
    return ip_packet[:min(n, total, limit)]


def build_dest_unreach(code: int, quoted_ip_packet, *, mtu: int = 0,
                       quote_len: int | None = None) -> bytes:
    """Destination unreachable quoting ``quoted_ip_packet``.

    By default the quote is the IP header + 8 bytes (RFC 792); pass
    ``quote_len=LINUX_ICMP_QUOTE_LEN`` to quote as much as Linux does.
    """
    if not 0 <= mtu <= 0xFFFF:
        raise ValueError(f"mtu out of range: {mtu}")
    return encode_icmp(ICMP_DEST_UNREACH, code, mtu, _quote(quoted_ip_packet, quote_len))


def build_frag_needed(mtu: int, quoted_ip_packet, *, quote_len: int | None = None) -> bytes:
    """Type 3 code 4 with the next-hop MTU in bytes 6-7 (RFC 1191)."""
    return build_dest_unreach(ICMP_FRAG_NEEDED, quoted_ip_packet, mtu=mtu, quote_len=quote_len)


def build_time_exceeded(quoted_ip_packet, *, code: int = ICMP_EXC_TTL,
                        quote_len: int | None = None) -> bytes:
    return encode_icmp(ICMP_TIME_EXCEEDED, code, 0, _quote(quoted_ip_packet, quote_len))


def decode_icmp(data, verify_checksum: bool = True) -> IcmpMessage:
    """Decode an ICMP message (the IPv4 payload).

    Error messages must quote a parseable IPv4 header; its checksum is not
    checked (routers and NATs may have rewritten it). ``quoted_payload`` is
    capped at the quoted header's total length.
    """
    n = len(data)
    if n < 8:
        raise MalformedPacket(f"icmp: truncated header ({n} bytes)")
    type_, code, _csum, rest = _HDR.unpack_from(data)
    if verify_checksum and internet_checksum(data):
        raise MalformedPacket("icmp: bad checksum")
    body = data[8:]
    msg = IcmpMessage(type_, code, data=body, rest=rest)
    if type_ == ICMP_ECHO or type_ == ICMP_ECHOREPLY:
        msg.ident = rest >> 16
        msg.seq = rest & 0xFFFF
    elif type_ in _ERROR_TYPES:
        try:
            qhdr = decode_ipv4_header(body)
        except MalformedPacket as e:
            raise MalformedPacket(f"icmp: quoted {e}") from None
        qhlen = qhdr.header_length
        if qhdr.total_length < qhlen:
            raise MalformedPacket(
                f"icmp: quoted ipv4 total length {qhdr.total_length} < header length {qhlen}")
        msg.quoted_ip_header = qhdr
        msg.quoted_payload = body[qhlen:qhdr.total_length]
        if type_ == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
            msg.mtu = rest & 0xFFFF
    return msg


def quoted_tcp_ports_seq(msg: IcmpMessage) -> tuple[int, int, int]:
    """(sport, dport, seq) of the TCP segment quoted by an ICMP error."""
    qhdr = msg.quoted_ip_header
    if qhdr is None:
        raise MalformedPacket(f"icmp: type {msg.type} quotes no datagram")
    if qhdr.protocol != IPPROTO_TCP:
        raise MalformedPacket(f"icmp: quoted protocol {qhdr.protocol} is not TCP")
    if qhdr.frag_offset:
        raise MalformedPacket("icmp: quoted datagram is a non-first fragment")
    if len(msg.quoted_payload) < 8:
        raise MalformedPacket(
            f"icmp: quoted TCP header truncated ({len(msg.quoted_payload)} < 8 bytes)")
    return _PORTS_SEQ.unpack_from(msg.quoted_payload)
