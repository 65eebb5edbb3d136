"""IPv4 header (RFC 791)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from . import MalformedPacket
from .checksum import internet_checksum

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IP_DF",
    "IP_MF",
    "IP_OFFMASK",
    "Ipv4Header",
    "bytes_to_ip",
    "decode_ipv4",
    "decode_ipv4_header",
    "encode_ipv4",
    "ip_to_bytes",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
IP_MAX_OPTIONS_LEN = 40

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(slots=True)
class Ipv4Header:
    tos: int = 0
    total_length: int = 0  # as read off the wire; encoders recompute it
    ident: int = 0
    df: bool = True
    mf: bool = False
    frag_offset: int = 0  # bytes, a multiple of 8
    ttl: int = 64
    protocol: int = 0
    src: bytes = b"\0\0\0\0"
    dst: bytes = b"\0\0\0\0"
    options: bytes = b""

    @property
    def header_length(self) -> int:
        olen = len(self.options)
        return 20 + ((olen + 3) & ~3)

    def encode(self, payload=b"", *, checksum: bool = True) -> bytes:
        return encode_ipv4(
            self.src, self.dst, self.protocol, payload, ttl=self.ttl, tos=self.tos,
            ident=self.ident, df=self.df, mf=self.mf, frag_offset=self.frag_offset,
            options=self.options, checksum=checksum)


def encode_ipv4(src: bytes, dst: bytes, protocol: int, payload=b"", *, ttl: int = 64,
                tos: int = 0, ident: int = 0, df: bool = True, mf: bool = False,
                frag_offset: int = 0, options: bytes = b"", checksum: bool = True) -> bytes:
    """Header + payload with total length and (unless ``checksum=False``) checksum filled in.

    ``options`` is zero-padded (EOL) to a 4-byte multiple.
    """
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("IPv4 addresses must be 4 bytes")
    olen = len(options)
    if olen:
        if olen & 3:
            options = bytes(options) + bytes(4 - (olen & 3))
            olen = len(options)
        if olen > IP_MAX_OPTIONS_LEN:
            raise ValueError(f"IPv4 options too long ({olen} > 40 bytes)")
    hlen = 20 + olen
    total = hlen + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet too long ({total} bytes)")
    if frag_offset & 7 or not 0 <= frag_offset <= IP_OFFMASK << 3:
        raise ValueError(f"fragment offset must be a multiple of 8 in 0..65528: {frag_offset}")
    flags_frag = (IP_DF if df else 0) | (IP_MF if mf else 0) | (frag_offset >> 3)
    vihl = 0x40 | (hlen >> 2)
    csum = 0
    if checksum:
        # Sum the header from its fields: cheaper than packing it twice.
        s = ((vihl << 8 | tos) + total + ident + flags_frag + (ttl << 8 | protocol)
             + int.from_bytes(src, "big") + int.from_bytes(dst, "big"))
        csum = internet_checksum(options, s) if olen else 0xFFFE - (s - 1) % 0xFFFF
    try:
        hdr = _HDR.pack(vihl, tos, total, ident, flags_frag, ttl, protocol, csum, src, dst)
    except struct.error as e:
        raise ValueError(f"IPv4 header field out of range: {e}") from None
    if olen:
        return b"".join((hdr, options, payload))
    return hdr + payload


def _parse(data, verify_checksum: bool) -> tuple[Ipv4Header, int]:
    n = len(data)
    if n < 20:
        raise MalformedPacket(f"ipv4: truncated header ({n} bytes)")
    vihl, tos, total, ident, flags_frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(data)
    if vihl >> 4 != 4:
        raise MalformedPacket(f"ipv4: version {vihl >> 4}")
    hlen = (vihl & 15) << 2
    if hlen < 20:
        raise MalformedPacket(f"ipv4: IHL {hlen >> 2} < 5")
    if hlen > n:
        raise MalformedPacket(f"ipv4: header length {hlen} exceeds buffer ({n} bytes)")
    if verify_checksum and internet_checksum(data[:hlen]):
        raise MalformedPacket("ipv4: bad header checksum")
    hdr = Ipv4Header(tos, total, ident, bool(flags_frag & IP_DF), bool(flags_frag & IP_MF),
                     (flags_frag & IP_OFFMASK) << 3, ttl, proto, src, dst,
                     bytes(data[20:hlen]) if hlen > 20 else b"")
    return hdr, hlen


def decode_ipv4_header(data, *, verify_checksum: bool = False) -> Ipv4Header:
    """Parse only the header; the buffer may be shorter than total_length (ICMP quotes)."""
    return _parse(data, verify_checksum)[0]


def decode_ipv4(data, verify_checksum: bool = True):
    """Return ``(Ipv4Header, payload)``.

    The payload is exactly ``total_length - header_length`` bytes: trailing
    link-layer padding is trimmed. It is a slice of ``data`` (zero-copy for a
    memoryview).
    """
    hdr, hlen = _parse(data, verify_checksum)
    total = hdr.total_length
    if total < hlen:
        raise MalformedPacket(f"ipv4: total length {total} < header length {hlen}")
    if total > len(data):
        raise MalformedPacket(f"ipv4: total length {total} exceeds buffer ({len(data)} bytes)")
    return hdr, data[hlen:total]


def ip_to_bytes(text: str) -> bytes:
    """"10.0.0.1" -> b"\\n\\0\\0\\x01" (strict dotted quad, no shorthand)."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        raise ValueError(f"invalid IPv4 address: {text!r}") from None


def bytes_to_ip(addr: bytes) -> str:
    if len(addr) != 4:
        raise ValueError(f"IPv4 address must be 4 bytes, got {len(addr)}")
    return "{}.{}.{}.{}".format(*addr)
