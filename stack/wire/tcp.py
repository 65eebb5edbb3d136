"""TCP header and options (RFC 9293, 7323, 2018).

Options are kept as an ordered tuple of :class:`TcpOption`, with NOP and EOL
as entries of their own, so any layout Linux emits round-trips byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import MalformedPacket
from .checksum import internet_checksum, pseudo_header_sum

__all__ = [
    "TCPHDR_ACK",
    "TCPHDR_AE",
    "TCPHDR_CWR",
    "TCPHDR_ECE",
    "TCPHDR_FIN",
    "TCPHDR_PSH",
    "TCPHDR_RST",
    "TCPHDR_SYN",
    "TCPHDR_URG",
    "TCPOPT_EOL",
    "TCPOPT_MSS",
    "TCPOPT_NOP",
    "TCPOPT_SACK",
    "TCPOPT_SACK_PERM",
    "TCPOPT_TIMESTAMP",
    "TCPOPT_WINDOW",
    "TCP_MAX_OPTIONS_LEN",
    "TcpHeader",
    "TcpOption",
    "decode_options",
    "decode_tcp",
    "encode_options",
    "encode_tcp",
    "options_length",
]

TCPHDR_FIN = 0x01
TCPHDR_SYN = 0x02
TCPHDR_RST = 0x04
TCPHDR_PSH = 0x08
TCPHDR_ACK = 0x10
TCPHDR_URG = 0x20
TCPHDR_ECE = 0x40
TCPHDR_CWR = 0x80
# Low bit of byte 12 (ex-NS, AccECN's AE). Flags carry all 12 bits after the
# data offset so reserved bits round-trip too.
TCPHDR_AE = 0x100
_FLAGS_MASK = 0xFFF

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8

TCP_MAX_OPTIONS_LEN = 40

_HDR = struct.Struct("!HHIIHHHH")
_MSS = struct.Struct("!BBH")
_WS = struct.Struct("!BBB")
_TS = struct.Struct("!BBII")
_TS_VALUES = struct.Struct("!II")
_SACK = [struct.Struct("!BB" + "II" * k) for k in range(5)]  # 4 blocks fill 34 of 40 bytes
_SACK_VALUES = [struct.Struct("!" + "II" * k) for k in range(5)]
_FIXED_LEN = {TCPOPT_EOL: 1, TCPOPT_NOP: 1, TCPOPT_MSS: 4, TCPOPT_WINDOW: 3,
              TCPOPT_SACK_PERM: 2, TCPOPT_TIMESTAMP: 10}
_NOP_NOP_TS = b"\x01\x01\x08\x0a"


class TcpOption(NamedTuple):
    """One option. ``value`` by kind: MSS int, WINDOW int (shift), SACK_PERM/NOP/EOL
    None, SACK tuple of (start, end), TIMESTAMP (tsval, tsecr), other kinds raw bytes."""

    kind: int
    value: Any = None


EOL = TcpOption(TCPOPT_EOL)
NOP = TcpOption(TCPOPT_NOP)
SACK_PERM = TcpOption(TCPOPT_SACK_PERM)


@dataclass(slots=True)
class TcpHeader:
    sport: int
    dport: int
    seq: int
    ack_seq: int
    flags: int
    window: int
    urg_ptr: int = 0
    options: tuple = ()
    checksum: int = field(default=0, compare=False)  # as read; ignored by encode

    @property
    def header_length(self) -> int:
        return 20 + options_length(self.options)

    def encode(self, src_ip, dst_ip, payload=b"", *, checksum: bool = True) -> bytes:
        return encode_tcp(src_ip, dst_ip, self.sport, self.dport, self.seq, self.ack_seq,
                          self.flags, self.window, self.options, payload,
                          checksum=checksum, urg_ptr=self.urg_ptr)


def options_length(options) -> int:
    """Bytes the options occupy in the header, padding included."""
    n = 0
    for kind, value in options:
        size = _FIXED_LEN.get(kind)
        if size is None:
            size = 2 + (8 * len(value) if kind == TCPOPT_SACK else len(value or b""))
        n += size
    return (n + 3) & ~3


def encode_options(options, pad: bool = True) -> bytes:
    """Encode options in order; with ``pad`` append EOLs up to a 4-byte multiple."""
    parts = []
    kind = value = None
    try:
        for kind, value in options:
            if kind == TCPOPT_NOP:
                parts.append(b"\x01")
            elif kind == TCPOPT_TIMESTAMP:
                parts.append(_TS.pack(8, 10, value[0], value[1]))
            elif kind == TCPOPT_SACK:
                parts.append(_SACK[len(value)].pack(5, 2 + 8 * len(value),
                                                    *[x for block in value for x in block]))
            elif kind == TCPOPT_MSS:
                parts.append(_MSS.pack(2, 4, value))
            elif kind == TCPOPT_WINDOW:
                parts.append(_WS.pack(3, 3, value))
            elif kind == TCPOPT_SACK_PERM:
                parts.append(b"\x04\x02")
            elif kind == TCPOPT_EOL:
                parts.append(b"\x00")
            else:
                raw = bytes(value or b"")
                parts.append(bytes((kind, 2 + len(raw))) + raw)
    except (struct.error, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"bad TCP option {kind}: {value!r} ({e})") from None
    out = b"".join(parts)
    n = len(out)
    if n > TCP_MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options too long ({n} > 40 bytes)")
    if pad and n & 3:
        out += bytes(4 - (n & 3))
    return out


def decode_options(buf) -> tuple:
    """Strictly parse an option block; EOL ends it (trailing bytes are padding)."""
    n = len(buf)
    # Fast path: the NOP,NOP,TS block on nearly every established-state segment.
    if n == 12 and buf[:4] == _NOP_NOP_TS:
        return (NOP, NOP, TcpOption(TCPOPT_TIMESTAMP, _TS_VALUES.unpack_from(buf, 4)))
    opts = []
    i = 0
    while i < n:
        kind = buf[i]
        if kind == TCPOPT_NOP:
            opts.append(NOP)
            i += 1
            continue
        if kind == TCPOPT_EOL:
            opts.append(EOL)
            break
        if i + 1 >= n:
            raise MalformedPacket(f"tcp option {kind}: missing length byte")
        olen = buf[i + 1]
        if olen < 2:
            raise MalformedPacket(f"tcp option {kind}: length {olen} < 2")
        end = i + olen
        if end > n:
            raise MalformedPacket(f"tcp option {kind}: length {olen} runs past header")
        if kind == TCPOPT_MSS:
            if olen != 4:
                raise MalformedPacket(f"tcp option MSS: length {olen} != 4")
            value = buf[i + 2] << 8 | buf[i + 3]
        elif kind == TCPOPT_TIMESTAMP:
            if olen != 10:
                raise MalformedPacket(f"tcp option TS: length {olen} != 10")
            value = _TS_VALUES.unpack_from(buf, i + 2)
        elif kind == TCPOPT_WINDOW:
            if olen != 3:
                raise MalformedPacket(f"tcp option WS: length {olen} != 3")
            value = buf[i + 2]
        elif kind == TCPOPT_SACK_PERM:
            if olen != 2:
                raise MalformedPacket(f"tcp option SACK_PERM: length {olen} != 2")
            opts.append(SACK_PERM)
            i = end
            continue
        elif kind == TCPOPT_SACK:
            if olen < 10 or (olen - 2) & 7:
                raise MalformedPacket(f"tcp option SACK: length {olen} is not 2+8k (k>=1)")
            edges = _SACK_VALUES[(olen - 2) >> 3].unpack_from(buf, i + 2)
            value = tuple(zip(edges[::2], edges[1::2]))
        else:
            value = bytes(buf[i + 2:end])
        opts.append(TcpOption(kind, value))
        i = end
    return tuple(opts)


def encode_tcp(src_ip, dst_ip, sport: int, dport: int, seq: int, ack_seq: int, flags: int,
               window: int, options=(), payload=b"", *, checksum: bool = True,
               urg_ptr: int = 0) -> bytes:
    """Segment bytes (header + options + payload) with data offset and checksum.

    ``src_ip``/``dst_ip`` (4-byte, or 16-byte for IPv6) feed the pseudo header
    and may be None when ``checksum=False``.
    """
    opts = encode_options(options) if options else b""
    hlen = 20 + len(opts)
    off_flags = hlen << 10 | (flags & _FLAGS_MASK)  # (hlen // 4) << 12
    csum = 0
    if checksum:
        # Header words summed from the fields (mod 0xFFFF a 32-bit value is the
        # sum of its halves), so the header is packed only once.
        s = (sport + dport + seq + ack_seq + off_flags + window + urg_ptr
             + pseudo_header_sum(src_ip, dst_ip, 6, hlen + len(payload)))
        if opts:
            s += int.from_bytes(opts, "big")
        csum = internet_checksum(payload, s)
    try:
        hdr = _HDR.pack(sport, dport, seq, ack_seq, off_flags, window, csum, urg_ptr)
    except struct.error as e:
        raise ValueError(f"TCP header field out of range: {e}") from None
    if opts:
        return b"".join((hdr, opts, payload))
    return hdr + payload


def decode_tcp(data, src_ip=None, dst_ip=None, verify_checksum: bool = False):
    """Return ``(TcpHeader, payload)``; ``payload`` is a slice of ``data``.

    ``data`` must be exactly the segment (as returned by decode_ipv4), since
    everything after the header is payload and the checksum covers it all.
    """
    n = len(data)
    if n < 20:
        raise MalformedPacket(f"tcp: truncated header ({n} bytes)")
    sport, dport, seq, ack_seq, off_flags, window, csum, urg_ptr = _HDR.unpack_from(data)
    hlen = off_flags >> 10 & ~3
    if hlen < 20:
        raise MalformedPacket(f"tcp: data offset {hlen >> 2} < 5")
    if hlen > n:
        raise MalformedPacket(f"tcp: header length {hlen} exceeds segment ({n} bytes)")
    if verify_checksum:
        if src_ip is None or dst_ip is None:
            raise ValueError("verify_checksum needs src_ip and dst_ip")
        if internet_checksum(data, pseudo_header_sum(src_ip, dst_ip, 6, n)):
            raise MalformedPacket("tcp: bad checksum")
    options = decode_options(bytes(data[20:hlen])) if hlen > 20 else ()
    return (TcpHeader(sport, dport, seq, ack_seq, off_flags & _FLAGS_MASK, window, urg_ptr,
                      options, csum),
            data[hlen:])
