"""Write captured segments as a pcap that Wireshark opens (Ethernet + IPv4 + TCP)."""

from __future__ import annotations

import functools

import dpkt

from stack.wire import encode_ethernet, encode_ipv4, encode_tcp, ip_to_bytes
from stack.wire.ethernet import ETH_P_IP
from stack.wire.ipv4 import IPPROTO_TCP


def _mac(addr: str) -> bytes:
    # A stable locally administered MAC per IPv4 address.
    return b"\x02\x00" + ip_to_bytes(addr)


def segment_to_frame(seg) -> bytes:
    src, dst = ip_to_bytes(seg.saddr), ip_to_bytes(seg.daddr)
    tcp = encode_tcp(src, dst, seg.sport, seg.dport, seg.seq, seg.ack_seq, seg.flags, seg.window,
                     seg.options, bytes(seg.payload))
    ip = encode_ipv4(src, dst, IPPROTO_TCP, tcp, ttl=seg.ttl, tos=seg.tos, ident=seg.ip_id,
                     df=seg.df)
    return encode_ethernet(_mac(seg.daddr), _mac(seg.saddr), ETH_P_IP, ip)


def write_pcap(path, capture) -> int:
    """``capture`` is a list of (time_s, Segment). Returns the number of frames written."""
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, nano=True)
        for t, seg in capture:
            writer.writepkt(segment_to_frame(seg), ts=t)
    return len(capture)


@functools.lru_cache(maxsize=None)
def node_mac(name: str) -> bytes:
    """A stable locally administered MAC for a node name (for pcaps of the simulated network)."""
    import hashlib
    return b"\x02" + hashlib.sha256(name.encode()).digest()[:5]


def write_ip_pcap(path, frames) -> int:
    """``frames``: (time_s, ip_bytes, src_node, dst_node). Ethernet framing is added."""
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, nano=True)
        for t, packet, src, dst in frames:
            writer.writepkt(encode_ethernet(node_mac(dst), node_mac(src), ETH_P_IP, packet), ts=t)
    return len(frames)
