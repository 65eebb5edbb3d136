"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import MalformedPacket

__all__ = [
    "ARPHRD_ETHER", "ARPOP_REPLY", "ARPOP_REQUEST", "ArpPacket", "build_arp_reply",
    "build_arp_request", "decode_arp", "encode_arp",
]

ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ZERO_MAC = bytes(6)


@dataclass(slots=True)
class ArpPacket:
    op: int
    sha: bytes  # sender hardware address
    spa: bytes  # sender protocol (IPv4) address
    tha: bytes
    tpa: bytes

    def encode(self) -> bytes:
        return encode_arp(self.op, self.sha, self.spa, self.tha, self.tpa)


def encode_arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    if len(sha) != 6 or len(tha) != 6 or len(spa) != 4 or len(tpa) != 4:
        raise ValueError("ARP needs 6-byte MACs and 4-byte IPv4 addresses")
    try:
        return _ARP.pack(ARPHRD_ETHER, 0x0800, 6, 4, op, sha, spa, tha, tpa)
    except struct.error as e:
        raise ValueError(f"ARP: {e}") from None


def build_arp_request(sha: bytes, spa: bytes, tpa: bytes) -> bytes:
    return encode_arp(ARPOP_REQUEST, sha, spa, _ZERO_MAC, tpa)


def build_arp_reply(sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return encode_arp(ARPOP_REPLY, sha, spa, tha, tpa)


def decode_arp(data) -> ArpPacket:
    """Decode an Ethernet/IPv4 ARP packet; trailing Ethernet padding is ignored."""
    if len(data) < ARP_LEN:
        raise MalformedPacket(f"arp: truncated ({len(data)} bytes)")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if htype != ARPHRD_ETHER or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise MalformedPacket(
            f"arp: unsupported htype={htype} ptype={ptype:#06x} hlen={hlen} plen={plen}")
    return ArpPacket(op, sha, spa, tha, tpa)
