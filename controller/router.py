"""The decisions of an IPv4 router, as a pure function of (packet, ingress port, time).

No I/O, no clock, no threads: the ``sim`` backend calls :meth:`Router.decide` with frames'
IP payloads on its virtual clock, the SDN controller calls it with packet-ins from Open
vSwitch, and both get the same list of actions back. The order of checks follows Linux's
``ip_rcv`` -> ``ip_route_input`` -> ``ip_forward`` -> ``ip_output``:

1. header sanity (``ip_rcv``): bad version/length/checksum -> drop as malformed;
2. route input: martian addresses dropped, local addresses delivered (echo reply),
   no route -> ICMP net unreachable;
3. ``ip_forward``: TTL <= 1 -> ICMP time exceeded; too big with DF -> ICMP
   fragmentation needed (RFC 1191); otherwise TTL - 1;
4. FORWARD hook: optional TCPMSS clamp on SYNs;
5. ``ip_output``: fragment to the egress MTU when DF is clear (RFC 791).

ICMP errors the router originates are ``Forward`` actions toward the offending packet's
source, subject to the ICMP policy: ``"send"``, ``"suppress"`` (the PMTU black hole) or
``"ratelimit"`` (Linux's per-destination token bucket, ``inet_peer_xrlim_allow``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, get_args

from stack.wire import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_NET_UNREACH,
    ICMP_PARAMETERPROB,
    ICMP_REDIRECT,
    ICMP_SOURCE_QUENCH,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    LINUX_ICMP_QUOTE_LEN,
    TCPHDR_RST,
    TCPHDR_SYN,
    TCPOPT_EOL,
    TCPOPT_MSS,
    TCPOPT_NOP,
    Ipv4Header,
    MalformedPacket,
    build_dest_unreach,
    build_echo_reply,
    build_frag_needed,
    build_time_exceeded,
    bytes_to_ip,
    decode_icmp,
    decode_ipv4,
    encode_ipv4,
    ip_to_bytes,
)

__all__ = [
    "COUNTERS",
    "ICMP_POLICIES",
    "IP_DEFAULT_TTL",
    "IP_MIN_MTU",
    "XRLIM_BURST_FACTOR",
    "Action",
    "Drop",
    "Forward",
    "IcmpPolicy",
    "PortConfig",
    "Route",
    "Router",
    "RouterConfig",
    "decrease_ttl",
    "fragment",
]

IcmpPolicy = Literal["send", "suppress", "ratelimit"]
ICMP_POLICIES: tuple[str, ...] = get_args(IcmpPolicy)

IP_MIN_MTU = 68  # RFC 791: every module forwards 68 octets unfragmented (60 header + 8 data)
IP_DEFAULT_TTL = 64  # net.ipv4.ip_default_ttl, for the packets the router originates
XRLIM_BURST_FACTOR = 6  # include/net/inetpeer.h: the bucket holds six messages
ICMP_MAX_DATAGRAM = 576  # icmp_send() sizes its reply to fit the minimum reassembly buffer
IPOPT_COPIED = 0x80  # option type bit: copy into every fragment (RFC 791)
IP_MAX_LEN = 0xFFFF

# ICMP types that are errors: RFC 1122 3.2.2 forbids answering one with another.
_ICMP_ERROR_TYPES = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT,
                               ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB))

# Every counter a Router keeps, all starting at zero. Per-kind ICMP error counters use the
# kinds "frag_needed", "time_exceeded" and "net_unreach".
COUNTERS = (
    "forwarded",                    # datagrams forwarded (whole or fragmented)
    "fragmented",                   # datagrams split, forwarded or originated
    "fragments_sent",               # fragments those produced
    "malformed",                    # failed header/ICMP sanity checks
    "martian",                      # impossible addresses, and multicast (not routed here)
    "to_router",                    # addressed to the router and not an echo request
    "echo_replies",
    "no_route",
    "ttl_expired",
    "dropped_oversize",             # DF set and larger than the egress MTU
    "mss_clamped",
    "icmp_frag_needed_sent",
    "icmp_time_exceeded_sent",
    "icmp_net_unreach_sent",
    "icmp_frag_needed_suppressed",  # withheld by the "suppress" policy (the black hole)
    "icmp_time_exceeded_suppressed",
    "icmp_net_unreach_suppressed",
    "icmp_ratelimited",             # refused by the token bucket, any kind
    "icmp_not_allowed",             # RFC 1122 forbids the error (about an ICMP error,
                                    # a non-first fragment), or no route back to the source
)


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True, slots=True)
class PortConfig:
    """One router interface: its address on the attached subnet and the link MTU."""

    name: str
    ip: str
    prefixlen: int
    mtu: int

    def __post_init__(self):
        ip_to_bytes(self.ip)  # raises ValueError naming the bad address
        if not 0 <= self.prefixlen <= 32:
            raise ValueError(f"port {self.name}: prefixlen {self.prefixlen} not in 0..32")
        if not IP_MIN_MTU <= self.mtu <= IP_MAX_LEN:
            raise ValueError(f"port {self.name}: mtu {self.mtu} not in {IP_MIN_MTU}..65535")


@dataclass(frozen=True, slots=True)
class Route:
    """``prefix`` ("10.0.2.0/24") via ``port``; ``next_hop`` None = directly connected."""

    prefix: str
    port: str
    next_hop: str | None = None

    def __post_init__(self):
        try:
            ipaddress.IPv4Network(self.prefix, strict=True)
        except ValueError as e:
            raise ValueError(f"route {self.prefix}: {e}") from None
        if self.next_hop is not None:
            ip_to_bytes(self.next_hop)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    name: str
    ports: list[PortConfig]
    routes: list[Route] = field(default_factory=list)
    icmp_policy: IcmpPolicy = "send"
    icmp_ratelimit_ms: int = 1000  # net.ipv4.icmp_ratelimit
    mss_clamp: int | None = None  # iptables -j TCPMSS --set-mss, None = off
    # Bytes of the offending datagram an ICMP error quotes. Linux quotes as much as fits a
    # 576-byte reply; RFC 792 asks only for the header + 8 bytes, which is always quoted.
    icmp_quote_len: int = LINUX_ICMP_QUOTE_LEN

    def __post_init__(self):
        _check_policy(self.icmp_policy)
        if self.icmp_ratelimit_ms < 0:
            raise ValueError(f"router {self.name}: icmp_ratelimit_ms must be >= 0")
        if self.mss_clamp is not None and not 1 <= self.mss_clamp <= 0xFFFF:
            raise ValueError(f"router {self.name}: mss_clamp {self.mss_clamp} not in 1..65535")
        if self.icmp_quote_len < 28:
            raise ValueError(f"router {self.name}: icmp_quote_len {self.icmp_quote_len} < 28")
        names = [p.name for p in self.ports]
        if len(set(names)) != len(names):
            raise ValueError(f"router {self.name}: duplicate port names in {names}")
        for route in self.routes:
            if route.port not in names:
                raise ValueError(f"router {self.name}: route {route.prefix} uses unknown "
                                 f"port {route.port!r}")


def _check_policy(policy: str) -> None:
    if policy not in ICMP_POLICIES:
        raise ValueError(f"icmp policy {policy!r} is not one of {', '.join(ICMP_POLICIES)}")


# ----------------------------------------------------------------------------- actions

@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``packet`` (a complete IPv4 datagram) out of ``port`` toward ``next_hop_ip``.

    ``originated`` marks packets the router made itself (ICMP), as opposed to the input
    packet or its fragments.
    """

    port: str
    next_hop_ip: str
    packet: bytes
    originated: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str  # malformed, martian, to_router, no_route, ttl_expired, oversize


Action = Forward | Drop


# ----------------------------------------------------------------------------- pure helpers

def decrease_ttl(packet: bytes) -> bytes:
    """``ip_decrease_ttl()``: TTL - 1, header checksum patched incrementally (RFC 1624).

    The TTL is the high byte of its 16-bit word, so the checksum rises by 0x0100 with an
    end-around carry; like Linux this never yields 0xFFFF, so the result equals a full
    recomputation.
    """
    buf = bytearray(packet)
    buf[8] -= 1
    check = (buf[10] << 8 | buf[11]) + 0x0100
    check = (check + (check >= 0xFFFF)) & 0xFFFF
    buf[10:12] = check.to_bytes(2, "big")
    return bytes(buf)


def _option_spans(options: bytes):
    """Yield (type, start, end) of each IPv4 option; EOL ends the list (padding follows)."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:  # EOL
            return
        if kind == 1:  # NOP
            yield kind, i, i + 1
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            raise MalformedPacket(f"ipv4: option {kind} has a bad length")
        yield kind, i, i + options[i + 1]
        i += options[i + 1]


def _copied_options(options: bytes) -> bytes:
    """Options that go into every fragment: those with the copied flag (RFC 791).

    Linux's ip_options_fragment() overwrites the others with NOPs and keeps the header
    size; RFC 791 removes them, which is what we do (later fragments carry more data).
    """
    return b"".join(options[s:e] for kind, s, e in _option_spans(options)
                    if kind & IPOPT_COPIED)


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    """Split a DF-clear datagram into fragments of at most ``mtu`` bytes (RFC 791).

    Data sizes are multiples of 8 except the last; MF is set on all but the last, which
    keeps the incoming MF (the datagram may itself be a fragment); offsets add to the
    incoming offset; the first fragment keeps every option, the rest only copied ones.
    Every field but length, flags, offset, options and checksum is unchanged.
    """
    hdr, payload = decode_ipv4(packet, verify_checksum=False)
    if hdr.df:
        raise ValueError("fragment: DF is set")
    later_options = _copied_options(hdr.options)
    options = hdr.options
    fragments = []
    pos, n = 0, len(payload)
    while True:
        room = mtu - (20 + ((len(options) + 3) & ~3))
        if room < 8:
            raise ValueError(f"fragment: mtu {mtu} leaves no room for 8 data bytes")
        last = n - pos <= room
        size = n - pos if last else room & ~7
        fragments.append(encode_ipv4(
            hdr.src, hdr.dst, hdr.protocol, payload[pos:pos + size], ttl=hdr.ttl, tos=hdr.tos,
            ident=hdr.ident, df=False, mf=hdr.mf or not last,
            frag_offset=hdr.frag_offset + pos, options=options))
        if last:
            return fragments
        pos += size
        options = later_options


def _csum_replace16(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'): patch a checksum without re-summing.

    Incremental so a segment that arrived corrupted stays detectably corrupted.
    """
    s = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _swap16(v: int) -> int:
    return (v & 0xFF) << 8 | v >> 8


def _clamp_mss(segment: bytes, mss: int) -> bytes | None:
    """xt_TCPMSS --set-mss on one TCP SYN: the segment with a lowered MSS, or None.

    Left out from Linux: a SYN without an MSS option gets none inserted (Linux adds
    min(mss, 536)), since that would change the datagram's length.
    """
    if len(segment) < 20 or not segment[13] & TCPHDR_SYN or segment[13] & TCPHDR_RST:
        return None
    hlen = (segment[12] >> 4) * 4
    if hlen < 20 or hlen > len(segment):
        return None
    i = 20
    while i < hlen:
        kind = segment[i]
        if kind == TCPOPT_EOL:
            return None
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= hlen or segment[i + 1] < 2 or i + segment[i + 1] > hlen:
            return None  # bad option list: leave the segment alone, as Linux does
        if kind == TCPOPT_MSS and segment[i + 1] == 4:
            return _set_mss(segment, i + 2, mss)
        i += segment[i + 1]
    return None


def _set_mss(segment: bytes, at: int, mss: int) -> bytes | None:
    """Lower the MSS value at offset ``at`` to ``mss`` (None if not above it)."""
    old = segment[at] << 8 | segment[at + 1]
    if old <= mss:
        return None
    buf = bytearray(segment)
    buf[at:at + 2] = mss.to_bytes(2, "big")
    # The checksum sums 16-bit words from the segment start: a value at an odd offset
    # straddles two words and enters the sum byte-swapped.
    if at & 1:
        old, mss = _swap16(old), _swap16(mss)
    check = _csum_replace16(buf[16] << 8 | buf[17], old, mss)
    buf[16:18] = check.to_bytes(2, "big")
    return bytes(buf)


def _ip_int(addr: bytes) -> int:
    return int.from_bytes(addr, "big")


def _is_martian_source(src: int) -> bool:
    # ip_route_input_slow(): zeronet, loopback, multicast, limited broadcast.
    return src >> 24 in (0, 127) or src >> 28 == 0xE or src == 0xFFFFFFFF


def _is_martian_destination(dst: int) -> bool:
    # Zeronet and loopback are martian; multicast is dropped too, as by a Linux router
    # without multicast routing (ip_route_input_mc).
    return dst >> 24 in (0, 127) or dst >> 28 == 0xE


# ----------------------------------------------------------------------------- the router

@dataclass(slots=True)
class _Port:
    config: PortConfig
    addr: bytes


@dataclass(slots=True)
class _RouteEntry:
    network: int
    mask: int
    prefixlen: int
    port: str
    next_hop: str | None


@dataclass(slots=True)
class _Peer:
    """The rate-limit state Linux keeps in an inet_peer, per ICMP destination."""

    rate_tokens: int  # ms of credit
    rate_last: int  # ms


class Router:
    """One router's forwarding decisions. State: counters and the ICMP rate limiter."""

    def __init__(self, config: RouterConfig):
        self.config = config
        self.icmp_policy: IcmpPolicy = config.icmp_policy
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._ports = {p.name: _Port(p, ip_to_bytes(p.ip)) for p in config.ports}
        self._local = {_ip_int(p.addr) for p in self._ports.values()}
        self._broadcast = {0xFFFFFFFF} | {
            int(ipaddress.IPv4Interface(f"{p.ip}/{p.prefixlen}").network.broadcast_address)
            for p in config.ports if p.prefixlen <= 30}  # /31 and /32 have no broadcast
        self._routes = self._build_fib(config)
        self._peers: dict[int, _Peer] = {}
        self._ident = 0

    @staticmethod
    def _build_fib(config: RouterConfig) -> list[_RouteEntry]:
        """Routes sorted longest prefix first; interfaces' subnets act as connected routes.

        Configured routes come first, so they win a tie with a connected route.
        """
        connected = [Route(str(ipaddress.IPv4Interface(f"{p.ip}/{p.prefixlen}").network),
                           p.name) for p in config.ports]
        entries = []
        for route in [*config.routes, *connected]:
            net = ipaddress.IPv4Network(route.prefix)
            entries.append(_RouteEntry(int(net.network_address), int(net.netmask),
                                       net.prefixlen, route.port, route.next_hop))
        entries.sort(key=lambda e: -e.prefixlen)  # stable: order kept within a length
        return entries

    def set_icmp_policy(self, policy: IcmpPolicy) -> None:
        _check_policy(policy)
        self.icmp_policy = policy

    # ------------------------------------------------------------------ the decision

    def decide(self, packet: bytes, in_port: str, now: float) -> list[Action]:
        """Everything the router does with ``packet`` (an IPv4 datagram) at time ``now`` (s).

        Returns the input's fate (its ``Forward``/fragments, or one ``Drop``) plus a
        ``Forward`` for any packet the router originates in response (``originated=True``).
        Never raises on packet contents.
        """
        if in_port not in self._ports:
            raise ValueError(f"router {self.config.name}: unknown ingress port {in_port!r}")
        packet = bytes(packet)
        try:
            hdr, payload = decode_ipv4(packet)
            self._check_header(hdr, payload)
        except MalformedPacket:
            return self._drop("malformed")
        packet = packet[:hdr.total_length]  # ip_rcv trims link-layer padding
        src, dst = _ip_int(hdr.src), _ip_int(hdr.dst)
        if _is_martian_source(src) or src in self._local or _is_martian_destination(dst):
            return self._drop("martian")
        if dst in self._local or dst in self._broadcast:
            return self._local_deliver(hdr, payload, now)
        return self._forward(packet, hdr, payload, now)

    @staticmethod
    def _check_header(hdr: Ipv4Header, payload: bytes) -> None:
        """Checks beyond decode_ipv4's that forwarding relies on."""
        if hdr.frag_offset + len(payload) > IP_MAX_LEN - 20:
            # A fragment reaching past 65535 bytes (ping of death): no valid datagram.
            raise MalformedPacket("ipv4: fragment extends past 65535 bytes")
        for _ in _option_spans(hdr.options):  # Linux's ip_options_compile() would also
            pass                              # send parameter problem; we only drop

    def _forward(self, packet: bytes, hdr: Ipv4Header, payload: bytes,
                 now: float) -> list[Action]:
        route = self._lookup(_ip_int(hdr.dst))
        if route is None:
            # Route input fails before ip_forward runs, so this precedes the TTL check.
            self.counters["no_route"] += 1
            return [*self._icmp_error("net_unreach", packet, hdr, payload, now),
                    Drop("no_route")]
        if hdr.ttl <= 1:
            self.counters["ttl_expired"] += 1
            return [*self._icmp_error("time_exceeded", packet, hdr, payload, now),
                    Drop("ttl_expired")]
        mtu = self._ports[route.port].config.mtu
        if len(packet) > mtu and hdr.df:
            # ip_exceeds_mtu(): the quote shows the packet as received (TTL not yet lowered).
            self.counters["dropped_oversize"] += 1
            return [*self._icmp_error("frag_needed", packet, hdr, payload, now, mtu=mtu),
                    Drop("oversize")]
        packet = decrease_ttl(packet)
        if self._should_clamp(hdr):
            packet = self._clamp(packet, hdr)
        self.counters["forwarded"] += 1
        return self._output(packet, route, bytes_to_ip(hdr.dst))

    def _output(self, packet: bytes, route: _RouteEntry, dst: str,
                originated: bool = False) -> list[Action]:
        """ip_output(): send as is, or fragmented when larger than the egress MTU."""
        next_hop = route.next_hop or dst
        mtu = self._ports[route.port].config.mtu
        if len(packet) <= mtu:
            return [Forward(route.port, next_hop, packet, originated)]
        pieces = fragment(packet, mtu)
        self.counters["fragmented"] += 1
        self.counters["fragments_sent"] += len(pieces)
        return [Forward(route.port, next_hop, p, originated) for p in pieces]

    def _lookup(self, addr: int) -> _RouteEntry | None:
        """Longest-prefix match (a linear scan of the sorted table: routers here are small)."""
        for entry in self._routes:
            if addr & entry.mask == entry.network:
                return entry
        return None

    def _drop(self, reason: str) -> list[Action]:
        self.counters[reason] += 1
        return [Drop(reason)]

    # ------------------------------------------------------------------ MSS clamp

    def _should_clamp(self, hdr: Ipv4Header) -> bool:
        # Only whole datagrams: a fragment may not hold the TCP header, and the
        # checksum covers the whole segment.
        return (self.config.mss_clamp is not None and hdr.protocol == IPPROTO_TCP
                and not hdr.mf and not hdr.frag_offset)

    def _clamp(self, packet: bytes, hdr: Ipv4Header) -> bytes:
        hlen = hdr.header_length
        segment = _clamp_mss(packet[hlen:], self.config.mss_clamp)
        if segment is None:
            return packet
        self.counters["mss_clamped"] += 1
        return packet[:hlen] + segment

    # ------------------------------------------------------------------ local delivery

    def _local_deliver(self, hdr: Ipv4Header, payload: bytes, now: float) -> list[Action]:
        """Answer echo requests to our unicast addresses; nothing else is served here."""
        if (hdr.protocol != IPPROTO_ICMP or hdr.mf or hdr.frag_offset  # no reassembly
                or _ip_int(hdr.dst) in self._broadcast):  # icmp_echo_ignore_broadcasts=1
            return self._drop("to_router")
        try:
            msg = decode_icmp(payload)
        except MalformedPacket:
            return self._drop("malformed")
        if msg.type != ICMP_ECHO or msg.code != 0:
            return self._drop("to_router")
        # Left out from Linux: IP options of the request are not echoed.
        route = self._lookup(_ip_int(hdr.src))
        if route is None:
            return self._drop("no_route")
        self.counters["echo_replies"] += 1
        reply = build_echo_reply(msg.ident, msg.seq, msg.data)
        return self._originate(hdr.dst, hdr.src, reply, route, tos=hdr.tos)

    def _originate(self, src: bytes, dst: bytes, icmp: bytes, route: _RouteEntry,
                   tos: int = 0) -> list[Action]:
        """Wrap an ICMP message the router sends in IPv4 and output it.

        DF is clear, as on Linux's ICMP socket (IP_PMTUDISC_DONT), so it fragments if need be.
        """
        self._ident = (self._ident + 1) & 0xFFFF
        packet = encode_ipv4(src, dst, IPPROTO_ICMP, icmp, ttl=IP_DEFAULT_TTL, tos=tos,
                             ident=self._ident, df=False)
        return self._output(packet, route, bytes_to_ip(dst), originated=True)

    # ------------------------------------------------------------------ ICMP errors

    def _icmp_error(self, kind: str, packet: bytes, hdr: Ipv4Header, payload: bytes,
                    now: float, mtu: int = 0) -> list[Action]:
        """icmp_send(): the ICMP error ``kind`` about ``packet``, if allowed and not limited."""
        if not self._icmp_error_allowed(hdr, payload):
            self.counters["icmp_not_allowed"] += 1
            return []
        if self.icmp_policy == "suppress":
            self.counters[f"icmp_{kind}_suppressed"] += 1
            return []
        route = self._lookup(_ip_int(hdr.src))
        if route is None:
            self.counters["icmp_not_allowed"] += 1
            return []
        # Linux never rate-limits frag-needed (icmpv4_mask_allow); here "ratelimit" is an
        # experiment knob and applies to every error the router sends.
        if self.icmp_policy == "ratelimit" and not self._xrlim_allow(_ip_int(hdr.src), now):
            self.counters["icmp_ratelimited"] += 1
            return []
        egress = self._ports[route.port]
        quote_len = self._quote_len(hdr, egress.config.mtu)
        if kind == "frag_needed":
            icmp = build_frag_needed(mtu, packet, quote_len=quote_len)
        elif kind == "time_exceeded":
            icmp = build_time_exceeded(packet, quote_len=quote_len)
        else:
            icmp = build_dest_unreach(ICMP_NET_UNREACH, packet, quote_len=quote_len)
        self.counters[f"icmp_{kind}_sent"] += 1
        # The ICMP leaves from the address of the port it goes out on (Linux's default,
        # icmp_errors_use_inbound_ifaddr = 0).
        return self._originate(egress.addr, hdr.src, icmp, route)

    @staticmethod
    def _icmp_error_allowed(hdr: Ipv4Header, payload: bytes) -> bool:
        """RFC 1122 3.2.2: no error about a non-first fragment or about an ICMP error.

        Martian and broadcast sources never get this far.
        """
        if hdr.frag_offset:
            return False
        if hdr.protocol == IPPROTO_ICMP:
            # An unreadable type counts as an error, as in icmp_send().
            return bool(payload) and payload[0] not in _ICMP_ERROR_TYPES
        return True

    def _quote_len(self, hdr: Ipv4Header, egress_mtu: int) -> int:
        """How much of the offending datagram to quote.

        Like icmp_send(), the reply fits min(576, egress MTU); never below RFC 792's
        header + 8 bytes (such a reply is fragmented instead).
        """
        room = min(ICMP_MAX_DATAGRAM, egress_mtu) - 20 - 8
        return max(min(self.config.icmp_quote_len, room), hdr.header_length + 8)

    def _xrlim_allow(self, dst: int, now: float) -> bool:
        """inet_peer_xrlim_allow(): per-destination token bucket, tokens in ms.

        Each message costs icmp_ratelimit_ms; the bucket holds XRLIM_BURST_FACTOR messages
        and refills with elapsed time. A new peer starts full (Linux backdates rate_last by
        60 s). The clock is read in whole ms, like jiffies at HZ=1000, so repeated float
        steps cannot drift. Left out: Linux's global limit (icmp_msgs_per_sec) and peer GC.
        """
        timeout = self.config.icmp_ratelimit_ms
        now_ms = round(now * 1000)
        peer = self._peers.get(dst)
        if peer is None:
            peer = self._peers[dst] = _Peer(0, now_ms - 60_000)
        token = peer.rate_tokens + max(0, now_ms - peer.rate_last)
        peer.rate_last = now_ms
        token = min(token, XRLIM_BURST_FACTOR * timeout)
        allowed = token >= timeout
        if allowed:
            token -= timeout
        peer.rate_tokens = token
        return allowed
