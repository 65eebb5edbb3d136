"""A TCP/IPv4 segment as the core emits and accepts it (the parsed form of a packet).

The core never builds bytes itself: runtimes encode segments with ``stack.wire``
when they need them (AF_PACKET, pcaps) and hand parsed segments back in.
"""

from __future__ import annotations


class Segment:
    """One TCP segment with the IPv4 fields the send path sets.

    ``options`` is an ordered tuple of ``(kind, value)`` pairs, NOPs included,
    so the exact option layout survives. ``gso_size`` is non-zero for a GSO
    super-segment that the device will cut into ``gso_size``-byte segments.
    """

    __slots__ = (
        "saddr", "daddr", "sport", "dport", "seq", "ack_seq", "flags", "window",
        "options", "payload", "ip_id", "df", "ttl", "tos", "gso_size", "gso_segs", "skb_truesize",
        "owner", "sk", "opts_cache",
    )

    def __init__(self, saddr: str, daddr: str, sport: int, dport: int, seq: int, ack_seq: int,
                 flags: int, window: int, options: tuple = (), payload: bytes = b"",
                 ip_id: int = 0, df: bool = True, ttl: int = 64, tos: int = 0) -> None:
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack_seq = ack_seq
        self.flags = flags
        self.window = window
        self.options = options
        self.payload = payload
        self.ip_id = ip_id
        self.df = df
        self.ttl = ttl
        self.tos = tos
        self.gso_size = 0
        self.gso_segs = 1
        self.skb_truesize = 0
        self.owner = None      # the skb this segment was cloned from, while it is in flight
        self.sk = None         # the socket charged for it (sk_wmem_alloc)
        self.opts_cache = None # options parsed by the receiver, kept for tcp_ack

    @property
    def len(self) -> int:
        return len(self.payload)

    @property
    def end_seq(self) -> int:
        n = len(self.payload) + (self.flags & 0x02) // 2 + (self.flags & 0x01)
        return (self.seq + n) & 0xFFFFFFFF

    def copy(self) -> "Segment":
        seg = Segment(self.saddr, self.daddr, self.sport, self.dport, self.seq, self.ack_seq,
                      self.flags, self.window, self.options, self.payload, self.ip_id, self.df,
                      self.ttl, self.tos)
        seg.gso_size = self.gso_size
        seg.gso_segs = self.gso_segs
        seg.skb_truesize = self.skb_truesize
        seg.owner = self.owner
        seg.sk = self.sk
        return seg

    def __repr__(self) -> str:
        from .debug import flags_str
        return (f"Segment({self.saddr}:{self.sport}>{self.daddr}:{self.dport} "
                f"{flags_str(self.flags)} {self.seq}:{(self.seq + len(self.payload)) & 0xFFFFFFFF}"
                f"({len(self.payload)}) ack {self.ack_seq} win {self.window} opts {self.options})")


class IcmpError:
    """An ICMP error delivered to the stack (already matched to IPv4 + quoted TCP header)."""

    __slots__ = ("saddr", "daddr", "icmp_type", "code", "mtu", "q_saddr", "q_daddr",
                 "q_sport", "q_dport", "q_seq")

    def __init__(self, saddr: str, daddr: str, icmp_type: int, code: int, mtu: int,
                 q_saddr: str, q_daddr: str, q_sport: int, q_dport: int, q_seq: int) -> None:
        self.saddr = saddr
        self.daddr = daddr
        self.icmp_type = icmp_type
        self.code = code
        self.mtu = mtu
        self.q_saddr = q_saddr
        self.q_daddr = q_daddr
        self.q_sport = q_sport
        self.q_dport = q_dport
        self.q_seq = q_seq
