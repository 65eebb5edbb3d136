"""Ethernet II framing (no FCS: AF_PACKET and pcap never see it)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import MalformedPacket

__all__ = [
    "BROADCAST_MAC", "ETH_ALEN", "ETH_HLEN", "ETH_P_8021Q", "ETH_P_ARP", "ETH_P_IP",
    "ETH_P_IPV6", "ETH_ZLEN", "EthernetFrame", "bytes_to_mac", "decode_ethernet",
    "encode_ethernet", "mac_to_bytes",
]

ETH_ALEN = 6
ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame length without FCS
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6

_HDR = struct.Struct("!6s6sH")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class EthernetFrame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes  # or a memoryview slice when decoded from one

    def encode(self, *, pad: bool = False) -> bytes:
        return encode_ethernet(self.dst, self.src, self.ethertype, self.payload, pad=pad)


def encode_ethernet(dst: bytes, src: bytes, ethertype: int, payload, *, pad: bool = False) -> bytes:
    """Frame ``payload``; ``pad`` zero-fills to the 60-byte minimum like a NIC would."""
    # struct's "6s" would silently truncate or zero-fill a bad address.
    if len(dst) != 6 or len(src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    if not 0 <= ethertype <= 0xFFFF:
        raise ValueError(f"ethertype out of range: {ethertype!r}")
    frame = _HDR.pack(dst, src, ethertype) + payload
    if pad and len(frame) < ETH_ZLEN:
        frame += bytes(ETH_ZLEN - len(frame))
    return frame


def decode_ethernet(data) -> EthernetFrame:
    if len(data) < ETH_HLEN:
        raise MalformedPacket(f"ethernet: truncated header ({len(data)} bytes)")
    dst, src, ethertype = _HDR.unpack_from(data)
    return EthernetFrame(dst, src, ethertype, data[ETH_HLEN:])


def bytes_to_mac(mac: bytes) -> str:
    """b"\\x02\\0\\0\\0\\0\\x01" -> "02:00:00:00:00:01"."""
    if len(mac) != 6:
        raise ValueError(f"MAC address must be 6 bytes, got {len(mac)}")
    return bytes(mac).hex(":")


def mac_to_bytes(text: str) -> bytes:
    """"02:00:00:00:00:01" (or with '-') -> 6 bytes; one-digit groups are accepted."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(0 < len(p) <= 2 and _HEX.issuperset(p) for p in parts):
        raise ValueError(f"invalid MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
