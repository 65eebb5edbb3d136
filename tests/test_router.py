"""Tests for controller.router: one test per forwarding decision, plus fuzzing and dpkt checks.

The topology every test uses (``make_router``)::

    10.0.1.0/24 --eth0 [r1] eth1-- 10.0.2.0/24 (192.168.0.0/16 via 10.0.2.2)
                        eth2-- 10.0.3.0/24, MTU 576 (192.168.5.0/24 via 10.0.3.2)
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.router import (
    COUNTERS,
    Drop,
    Forward,
    PortConfig,
    Route,
    Router,
    RouterConfig,
    decrease_ttl,
    fragment,
)
from stack.wire import (
    ICMP_DEST_UNREACH,
    ICMP_ECHOREPLY,
    ICMP_FRAG_NEEDED,
    ICMP_NET_UNREACH,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    TCPHDR_ACK,
    TCPHDR_SYN,
    TCPOPT_MSS,
    TCPOPT_NOP,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
    TcpOption,
    build_echo_request,
    build_time_exceeded,
    decode_icmp,
    decode_ipv4,
    decode_ipv4_header,
    decode_tcp,
    encode_ipv4,
    encode_tcp,
    internet_checksum,
    ip_to_bytes,
    options_length,
    quoted_tcp_ports_seq,
)

CLIENT = "10.0.1.10"  # on eth0
SERVER = "10.0.2.20"  # on eth1
FAR = "192.168.6.7"  # via eth1, 10.0.2.2
FAR_SMALL_MTU = "192.168.5.7"  # via eth2 (MTU 576), 10.0.3.2
SMALL_MTU = 576
SPORT, DPORT, SEQ = 40000, 80, 0x12345678
# Linux's SYN: MSS, SACK_PERM, TS, NOP, WS.
SYN_OPTS = (TcpOption(TCPOPT_MSS, 1460), TcpOption(TCPOPT_SACK_PERM),
            TcpOption(TCPOPT_TIMESTAMP, (1, 0)), TcpOption(TCPOPT_NOP),
            TcpOption(TCPOPT_WINDOW, 7))
# Record route (type 7, not copied) then router alert (type 0x94, copied), padded to 12.
RR_OPTION = bytes([7, 7, 4, 0, 0, 0, 0])
ROUTER_ALERT = bytes([0x94, 4, 0, 0])
OPTIONS = RR_OPTION + ROUTER_ALERT + b"\0"


def make_router(**overrides) -> Router:
    config = dict(
        name="r1",
        ports=[PortConfig("eth0", "10.0.1.1", 24, 1500),
               PortConfig("eth1", "10.0.2.1", 24, 1500),
               PortConfig("eth2", "10.0.3.1", 24, SMALL_MTU)],
        routes=[Route("192.168.0.0/16", "eth1", "10.0.2.2"),
                Route("192.168.5.0/24", "eth2", "10.0.3.2")])
    config.update(overrides)
    return Router(RouterConfig(**config))


def tcp_packet(src=CLIENT, dst=SERVER, *, size=100, ttl=64, df=True, mf=False,
               frag_offset=0, flags=TCPHDR_ACK, opts=(), options=b"", ident=0x4242) -> bytes:
    """An IPv4 TCP datagram of ``size`` bytes in total."""
    s, d = ip_to_bytes(src), ip_to_bytes(dst)
    hlen = 20 + ((len(options) + 3) & ~3) + 20 + options_length(opts)
    payload = bytes(i & 0xFF for i in range(size - hlen))
    seg = encode_tcp(s, d, SPORT, DPORT, SEQ, 1, flags, 65535, opts, payload)
    return encode_ipv4(s, d, IPPROTO_TCP, seg, ttl=ttl, df=df, mf=mf, frag_offset=frag_offset,
                       options=options, ident=ident)


def forwards(actions, originated=None):
    return [a for a in actions
            if isinstance(a, Forward) and (originated is None or a.originated == originated)]


def only_icmp(actions):
    """The one ICMP the router originated: (Forward, IPv4 header, IcmpMessage)."""
    (fwd,) = forwards(actions, originated=True)
    hdr, body = decode_ipv4(fwd.packet)  # verifies the header checksum
    assert hdr.protocol == IPPROTO_ICMP
    return fwd, hdr, decode_icmp(body)  # verifies the ICMP checksum


# --------------------------------------------------------------------- forwarding


def test_forward_decrements_ttl_and_keeps_valid_checksum():
    router = make_router()
    pkt = tcp_packet(ttl=64)
    actions = router.decide(pkt, "eth0", 0.0)
    assert actions == [Forward("eth1", SERVER, actions[0].packet)]
    hdr, payload = decode_ipv4(actions[0].packet, verify_checksum=True)
    orig, orig_payload = decode_ipv4(pkt)
    assert hdr.ttl == 63
    assert payload == orig_payload
    # Nothing but TTL and checksum changed.
    assert actions[0].packet[:8] == pkt[:8] and actions[0].packet[12:] == pkt[12:]
    assert router.counters["forwarded"] == 1


@settings(max_examples=300)
@given(st.integers(2, 255), st.integers(0, 0xFFFF), st.integers(0, 255),
       st.integers(0, 0xFF), st.binary(min_size=4, max_size=4))
def test_incremental_ttl_checksum_equals_full_recompute(ttl, ident, tos, proto, src):
    pkt = encode_ipv4(src, b"\x0a\0\2\x14", proto, b"data", ttl=ttl, ident=ident, tos=tos)
    assert decrease_ttl(pkt) == encode_ipv4(src, b"\x0a\0\2\x14", proto, b"data",
                                            ttl=ttl - 1, ident=ident, tos=tos)


def test_forward_trims_link_layer_padding():
    pkt = tcp_packet(size=40)
    (fwd,) = make_router().decide(pkt + b"\0" * 6, "eth0", 0.0)
    assert len(fwd.packet) == 40


def test_longest_prefix_wins():
    router = make_router()
    (a,) = router.decide(tcp_packet(dst=FAR_SMALL_MTU), "eth0", 0.0)
    (b,) = router.decide(tcp_packet(dst=FAR), "eth0", 0.0)
    assert (a.port, a.next_hop_ip) == ("eth2", "10.0.3.2")  # the /24
    assert (b.port, b.next_hop_ip) == ("eth1", "10.0.2.2")  # the /16


def test_connected_subnet_routes_to_the_destination_itself():
    (fwd,) = make_router().decide(tcp_packet(dst="10.0.3.9"), "eth0", 0.0)
    assert (fwd.port, fwd.next_hop_ip) == ("eth2", "10.0.3.9")


def test_default_route_catches_everything_else():
    router = make_router(routes=[Route("0.0.0.0/0", "eth1", "10.0.2.254")])
    (fwd,) = router.decide(tcp_packet(dst="8.8.8.8"), "eth0", 0.0)
    assert (fwd.port, fwd.next_hop_ip) == ("eth1", "10.0.2.254")


# --------------------------------------------------------------------- TTL and routes


def test_ttl_expiry_sends_time_exceeded_quoting_the_header():
    router = make_router()
    pkt = tcp_packet(ttl=1, size=1000)
    actions = router.decide(pkt, "eth0", 0.0)
    assert actions[-1] == Drop("ttl_expired")
    fwd, ip, msg = only_icmp(actions)
    assert (fwd.port, fwd.next_hop_ip) == ("eth0", CLIENT)
    assert (ip.src, ip.dst) == (ip_to_bytes("10.0.1.1"), ip_to_bytes(CLIENT))
    assert (msg.type, msg.code) == (ICMP_TIME_EXCEEDED, 0)
    assert msg.quoted_ip_header == decode_ipv4_header(pkt)
    assert quoted_tcp_ports_seq(msg) == (SPORT, DPORT, SEQ)
    assert len(fwd.packet) == 576  # Linux quotes as much as fits 576 bytes
    assert router.counters["ttl_expired"] == router.counters["icmp_time_exceeded_sent"] == 1
    assert router.counters["forwarded"] == 0


def test_no_route_sends_net_unreachable():
    router = make_router()
    pkt = tcp_packet(dst="8.8.8.8")
    actions = router.decide(pkt, "eth0", 0.0)
    assert actions[-1] == Drop("no_route")
    fwd, ip, msg = only_icmp(actions)
    assert (msg.type, msg.code) == (ICMP_DEST_UNREACH, ICMP_NET_UNREACH)
    assert ip.dst == ip_to_bytes(CLIENT) and fwd.port == "eth0"
    assert bytes(msg.data) == pkt  # a 100-byte packet is quoted whole
    assert router.counters["no_route"] == router.counters["icmp_net_unreach_sent"] == 1


def test_no_icmp_error_about_an_icmp_error():
    router = make_router()
    err = build_time_exceeded(tcp_packet(src=SERVER, dst=CLIENT))
    pkt = encode_ipv4(ip_to_bytes(SERVER), ip_to_bytes(CLIENT), IPPROTO_ICMP, err, ttl=1)
    assert router.decide(pkt, "eth1", 0.0) == [Drop("ttl_expired")]
    assert router.counters["icmp_not_allowed"] == 1


def test_no_icmp_error_about_a_non_first_fragment():
    router = make_router()
    pkt = tcp_packet(ttl=1, df=False, frag_offset=1480)
    assert router.decide(pkt, "eth0", 0.0) == [Drop("ttl_expired")]
    assert router.counters["icmp_not_allowed"] == 1


# --------------------------------------------------------------------- PMTU


def test_oversize_df_sends_frag_needed_with_next_hop_mtu():
    router = make_router()
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500, df=True)
    actions = router.decide(pkt, "eth0", 0.0)
    assert actions[-1] == Drop("oversize")
    fwd, ip, msg = only_icmp(actions)
    assert (fwd.port, fwd.next_hop_ip) == ("eth0", CLIENT)
    assert ip.src == ip_to_bytes("10.0.1.1")  # the egress port toward the source
    assert (msg.type, msg.code, msg.mtu) == (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, SMALL_MTU)
    assert fwd.packet[20 + 6:20 + 8] == SMALL_MTU.to_bytes(2, "big")  # RFC 1191 bytes 6-7
    assert msg.quoted_ip_header == decode_ipv4_header(pkt)  # as received: TTL 64, len 1500
    assert quoted_tcp_ports_seq(msg) == (SPORT, DPORT, SEQ)
    assert len(fwd.packet) == 576 and bytes(msg.data) == pkt[:548]
    assert router.counters["dropped_oversize"] == router.counters["icmp_frag_needed_sent"] == 1


def test_frag_needed_quote_length_is_configurable_down_to_rfc792():
    router = make_router(icmp_quote_len=28)
    actions = router.decide(tcp_packet(dst=FAR_SMALL_MTU, size=1500), "eth0", 0.0)
    fwd, _, msg = only_icmp(actions)
    assert len(fwd.packet) == 20 + 8 + 20 + 8  # header + first 64 bits of data
    assert quoted_tcp_ports_seq(msg) == (SPORT, DPORT, SEQ)


def test_suppress_policy_is_silent():
    router = make_router(icmp_policy="suppress")
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500)
    assert router.decide(pkt, "eth0", 0.0) == [Drop("oversize")]
    assert router.counters["icmp_frag_needed_suppressed"] == 1
    assert router.counters["icmp_frag_needed_sent"] == 0
    assert router.decide(tcp_packet(ttl=1), "eth0", 0.0) == [Drop("ttl_expired")]
    # The policy changes while running.
    router.set_icmp_policy("send")
    assert len(forwards(router.decide(pkt, "eth0", 1.0), originated=True)) == 1
    with pytest.raises(ValueError, match="icmp policy"):
        router.set_icmp_policy("loud")


def test_ratelimit_policy_lets_a_burst_of_six_then_one_per_interval():
    router = make_router(icmp_policy="ratelimit", icmp_ratelimit_ms=1000)
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500)

    def icmps(now, n=1):
        return sum(len(forwards(router.decide(pkt, "eth0", now), originated=True))
                   for _ in range(n))

    assert icmps(0.0, 10) == 6  # XRLIM_BURST_FACTOR
    assert router.counters["icmp_ratelimited"] == 4
    assert icmps(0.999) == 0
    assert icmps(1.0) == 1
    assert icmps(1.5, 3) == 0
    assert icmps(2.0, 3) == 1
    assert icmps(100.0, 10) == 6  # a long pause refills the bucket, but only to six
    # Each destination of the ICMP has its own bucket.
    other = tcp_packet(src="10.0.1.11", dst=FAR_SMALL_MTU, size=1500)
    assert sum(len(forwards(router.decide(other, "eth0", 100.0), True))
               for _ in range(10)) == 6
    assert router.counters["dropped_oversize"] == 10 + 1 + 1 + 3 + 3 + 10 + 10


# --------------------------------------------------------------------- fragmentation


def test_fragmentation_splits_on_8_byte_boundaries_and_copies_only_copied_options():
    router = make_router()
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500, df=False, options=OPTIONS)
    orig, orig_payload = decode_ipv4(pkt)
    pieces = [decode_ipv4(f.packet, verify_checksum=True) for f in router.decide(pkt, "eth0", 0)]
    # First: 32-byte header, (576 - 32) & ~7 = 544 data bytes; later: 24-byte header (router
    # alert only), 552; the last gets the rest.
    assert [len(p) for _, p in pieces] == [544, 552, 1468 - 544 - 552]
    assert [h.options for h, _ in pieces] == [OPTIONS, ROUTER_ALERT, ROUTER_ALERT]
    assert [h.frag_offset for h, _ in pieces] == [0, 544, 544 + 552]
    assert [h.mf for h, _ in pieces] == [True, True, False]
    assert all(h.total_length <= SMALL_MTU for h, _ in pieces)
    assert all((h.ident, h.ttl, h.df, h.protocol) == (orig.ident, 63, False, IPPROTO_TCP)
               for h, _ in pieces)
    assert b"".join(bytes(p) for _, p in pieces) == bytes(orig_payload)
    assert router.counters["fragmented"] == 1 and router.counters["fragments_sent"] == 3
    assert router.counters["forwarded"] == 1


def test_fragment_arriving_with_mf_keeps_mf_on_all_pieces():
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1000, df=False, mf=True, frag_offset=1480)
    actions = make_router().decide(pkt, "eth0", 0.0)
    headers = [decode_ipv4(f.packet)[0] for f in actions]
    assert len(headers) == 2
    assert all(h.mf for h in headers)
    assert [h.frag_offset for h in headers] == [1480, 1480 + 552]


def test_fragment_reassembles_for_any_size_and_mtu():
    for size in (69, 577, 1500, 9000):
        for mtu in (68, 576, 1280):
            pkt = tcp_packet(size=size, df=False, options=OPTIONS)
            pieces = [decode_ipv4(f) for f in fragment(decrease_ttl(pkt), mtu)]
            assert all(h.total_length <= mtu for h, _ in pieces)
            assert all(len(p) % 8 == 0 for _, p in pieces[:-1])
            offsets = [h.frag_offset for h, _ in pieces]
            assert offsets == [sum(len(p) for _, p in pieces[:i]) for i in range(len(pieces))]
            assert b"".join(bytes(p) for _, p in pieces) == bytes(decode_ipv4(pkt)[1])


# --------------------------------------------------------------------- to the router


def test_echo_request_to_router_gets_echo_reply():
    router = make_router()
    req = build_echo_request(0x77, 3, b"ping-data")
    pkt = encode_ipv4(ip_to_bytes(CLIENT), ip_to_bytes("10.0.2.1"), IPPROTO_ICMP, req)
    actions = router.decide(pkt, "eth0", 0.0)
    fwd, ip, msg = only_icmp(actions)
    assert actions == [fwd]
    assert (fwd.port, fwd.next_hop_ip) == ("eth0", CLIENT)
    # The reply comes from the address that was pinged.
    assert (ip.src, ip.dst) == (ip_to_bytes("10.0.2.1"), ip_to_bytes(CLIENT))
    assert (msg.type, msg.ident, msg.seq, bytes(msg.data)) == (ICMP_ECHOREPLY, 0x77, 3,
                                                               b"ping-data")
    assert router.counters["echo_replies"] == 1


def test_other_traffic_to_router_is_dropped():
    router = make_router()
    assert router.decide(tcp_packet(dst="10.0.1.1"), "eth0", 0.0) == [Drop("to_router")]
    # Broadcasts are not answered (icmp_echo_ignore_broadcasts) nor forwarded.
    req = build_echo_request(1, 1)
    bcast = encode_ipv4(ip_to_bytes(CLIENT), ip_to_bytes("10.0.2.255"), IPPROTO_ICMP, req)
    assert router.decide(bcast, "eth0", 0.0) == [Drop("to_router")]
    assert router.counters["to_router"] == 2


def test_martian_addresses_are_dropped():
    router = make_router()
    for src, dst in [("127.0.0.1", SERVER), ("0.0.0.0", SERVER), ("224.0.0.5", SERVER),
                     (CLIENT, "224.0.0.5"), ("10.0.2.1", SERVER)]:
        assert router.decide(tcp_packet(src=src, dst=dst), "eth0", 0.0) == [Drop("martian")]


# --------------------------------------------------------------------- malformed input


def test_bad_header_checksum_is_malformed():
    router = make_router()
    pkt = bytearray(tcp_packet())
    pkt[10] ^= 0xFF
    assert router.decide(bytes(pkt), "eth0", 0.0) == [Drop("malformed")]
    assert router.counters["malformed"] == 1


def test_fragment_reaching_past_65535_bytes_is_malformed():
    pkt = tcp_packet(size=100, df=False, frag_offset=65528 - 8)
    assert make_router().decide(pkt, "eth0", 0.0) == [Drop("malformed")]


def _check_actions(router, actions):
    assert actions and all(isinstance(a, (Forward, Drop)) for a in actions)
    assert sum(isinstance(a, Drop) for a in actions) <= 1
    for fwd in forwards(actions):
        decode_ipv4(fwd.packet, verify_checksum=True)
        assert len(fwd.packet) <= router._ports[fwd.port].config.mtu
    assert set(router.counters) == set(COUNTERS)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_malformed_input_never_raises(data):
    router = make_router()
    _check_actions(router, router.decide(data, "eth0", 0.0))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80), st.integers(0, 20), st.integers(0, 255))
def test_mangled_header_never_raises(tail, flip_at, flip):
    # A valid header with one byte changed and the checksum fixed up reaches the deeper
    # checks (lengths, options, offsets) that random bytes rarely get to.
    router = make_router(mss_clamp=536)
    pkt = bytearray(tcp_packet(dst=FAR_SMALL_MTU, size=60, df=False, options=OPTIONS) + tail)
    pkt[flip_at] = flip
    ihl = (pkt[0] & 15) * 4
    if 20 <= ihl <= len(pkt):
        pkt[10:12] = b"\0\0"
        pkt[10:12] = internet_checksum(pkt[:ihl]).to_bytes(2, "big")
    _check_actions(router, router.decide(bytes(pkt), "eth0", 0.0))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([SERVER, FAR, FAR_SMALL_MTU, "8.8.8.8", "10.0.3.1", CLIENT]),
       st.integers(21, 3000), st.integers(0, 3), st.booleans(), st.booleans(),
       st.sampled_from([b"", OPTIONS, ROUTER_ALERT, bytes([0x83, 7, 4]) + bytes(5)]),
       st.sampled_from(["send", "suppress", "ratelimit"]), st.floats(0, 10))
def test_valid_packets_give_consistent_actions(dst, size, ttl, df, mf, options, policy, now):
    router = make_router(icmp_policy=policy)
    pkt = tcp_packet(dst=dst, size=max(size, 40 + len(options)), ttl=ttl, df=df, mf=mf,
                     options=options)
    _check_actions(router, router.decide(pkt, "eth1", now))


# --------------------------------------------------------------------- MSS clamp


@pytest.mark.parametrize("opts", [
    SYN_OPTS,  # MSS first: the value sits at an even offset
    (TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_MSS, 1460), TcpOption(TCPOPT_WINDOW, 7)),  # odd
], ids=["even_offset", "odd_offset"])
def test_mss_clamp_rewrites_the_option_and_tcp_checksum_verifies(opts):
    router = make_router(mss_clamp=1200)
    pkt = tcp_packet(size=80, flags=TCPHDR_SYN, opts=opts)
    (fwd,) = router.decide(pkt, "eth0", 0.0)
    hdr, seg = decode_ipv4(fwd.packet)
    tcp, _ = decode_tcp(seg, hdr.src, hdr.dst, verify_checksum=True)
    assert dict((o.kind, o.value) for o in tcp.options if o.kind != TCPOPT_NOP)[TCPOPT_MSS] \
        == 1200
    assert len(tcp.options) == len(opts)
    assert router.counters["mss_clamped"] == 1


def test_mss_clamp_leaves_small_mss_and_non_syn_alone():
    router = make_router(mss_clamp=1200)
    small = tcp_packet(flags=TCPHDR_SYN, opts=(TcpOption(TCPOPT_MSS, 536),))
    not_syn = tcp_packet(flags=TCPHDR_ACK, opts=(TcpOption(TCPOPT_MSS, 1460),))
    for pkt in (small, not_syn):
        (fwd,) = router.decide(pkt, "eth0", 0.0)
        assert fwd.packet == decrease_ttl(pkt)
    assert router.counters["mss_clamped"] == 0


def test_mss_clamp_keeps_a_corrupt_tcp_checksum_corrupt():
    router = make_router(mss_clamp=1200)
    pkt = bytearray(tcp_packet(flags=TCPHDR_SYN, opts=SYN_OPTS))
    pkt[20 + 16] ^= 0x01  # TCP checksum, not covered by the IP header checksum
    (fwd,) = router.decide(bytes(pkt), "eth0", 0.0)
    hdr, seg = decode_ipv4(fwd.packet)
    with pytest.raises(Exception, match="bad checksum"):
        decode_tcp(seg, hdr.src, hdr.dst, verify_checksum=True)


# --------------------------------------------------------------------- configuration


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="mtu 40"):
        PortConfig("eth0", "10.0.0.1", 24, 40)
    with pytest.raises(ValueError, match="unknown port 'eth9'"):
        make_router(routes=[Route("10.9.0.0/16", "eth9")])
    with pytest.raises(ValueError, match="10.0.2.1/24"):
        Route("10.0.2.1/24", "eth0")
    with pytest.raises(ValueError, match="unknown ingress port"):
        make_router().decide(tcp_packet(), "eth7", 0.0)


# --------------------------------------------------------------------- dpkt


@pytest.fixture(scope="module")
def dpkt():
    return pytest.importorskip("dpkt", reason="dpkt (test dependency) is not installed")


def _dpkt_ip_sum_ok(dpkt, raw):
    return dpkt.in_cksum(raw[:(raw[0] & 15) * 4]) == 0


def test_forwarded_and_fragmented_packets_in_dpkt(dpkt):
    router = make_router()
    (fwd,) = router.decide(tcp_packet(), "eth0", 0.0)
    ip = dpkt.ip.IP(fwd.packet)
    assert ip.ttl == 63 and _dpkt_ip_sum_ok(dpkt, fwd.packet)

    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500, df=False, options=OPTIONS)
    frags = [dpkt.ip.IP(f.packet) for f in router.decide(pkt, "eth0", 0.0)]
    # dpkt's offset is in 8-byte units.
    assert [(ip.mf, ip.df, ip.offset * 8, len(ip)) for ip in frags] == \
        [(1, 0, 0, 576), (1, 0, 544, 576), (0, 0, 1096, 24 + 372)]
    assert [ip.opts for ip in frags] == [OPTIONS, ROUTER_ALERT, ROUTER_ALERT]
    assert all(_dpkt_ip_sum_ok(dpkt, bytes(f.packet))
               for f in router.decide(pkt, "eth0", 0.0))


def test_frag_needed_in_dpkt(dpkt):
    pkt = tcp_packet(dst=FAR_SMALL_MTU, size=1500)
    (fwd,) = forwards(make_router().decide(pkt, "eth0", 0.0), originated=True)
    ip = dpkt.ip.IP(fwd.packet)
    icmp = ip.data
    assert (icmp.type, icmp.code, icmp.data.mtu) == (3, 4, SMALL_MTU)
    assert dpkt.in_cksum(bytes(icmp)) == 0
    quoted = icmp.data.data  # dpkt parses the (truncated) quote as IP itself
    assert isinstance(quoted, dpkt.ip.IP)
    assert (quoted.len, quoted.ttl, quoted.src, quoted.dst) == \
        (1500, 64, ip_to_bytes(CLIENT), ip_to_bytes(FAR_SMALL_MTU))


def test_clamped_syn_in_dpkt(dpkt):
    pkt = tcp_packet(size=80, flags=TCPHDR_SYN, opts=SYN_OPTS)
    (fwd,) = make_router(mss_clamp=1000).decide(pkt, "eth0", 0.0)
    ip = dpkt.ip.IP(fwd.packet)
    tcp_sum = ip.data.sum
    ip.data.sum = 0
    ip.sum = 0
    bytes(ip)  # dpkt recomputes both checksums
    assert ip.data.sum == tcp_sum
    assert (dpkt.tcp.TCP_OPT_MSS, (1000).to_bytes(2, "big")) in dpkt.tcp.parse_opts(ip.data.opts)
