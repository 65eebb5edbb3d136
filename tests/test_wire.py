"""Tests for stack.wire: round trips, dpkt cross-checks, exact Linux option
layouts, checksum fast path, and fuzzing that only MalformedPacket escapes."""

import random
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from stack.wire import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    BROADCAST_MAC,
    ETH_P_ARP,
    ETH_P_IP,
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_FRAG_NEEDED,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    LINUX_ICMP_QUOTE_LEN,
    TCPHDR_ACK,
    TCPHDR_PSH,
    TCPHDR_SYN,
    TCPOPT_EOL,
    TCPOPT_MSS,
    TCPOPT_NOP,
    TCPOPT_SACK,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
    ArpPacket,
    EthernetFrame,
    Ipv4Header,
    MalformedPacket,
    TcpHeader,
    TcpOption,
    build_arp_reply,
    build_arp_request,
    build_dest_unreach,
    build_echo_reply,
    build_echo_request,
    build_frag_needed,
    build_time_exceeded,
    bytes_to_ip,
    bytes_to_mac,
    decode_arp,
    decode_ethernet,
    decode_icmp,
    decode_ipv4,
    decode_ipv4_header,
    decode_options,
    decode_tcp,
    encode_arp,
    encode_ethernet,
    encode_icmp,
    encode_ipv4,
    encode_options,
    encode_tcp,
    internet_checksum,
    ip_to_bytes,
    mac_to_bytes,
    ones_complement_sum,
    options_length,
    pseudo_header_sum,
    quoted_tcp_ports_seq,
    tcp_checksum,
)

SRC = ip_to_bytes("10.0.0.1")
DST = ip_to_bytes("10.0.0.2")
MAC_A = mac_to_bytes("02:00:00:00:00:01")
MAC_B = mac_to_bytes("02:00:00:00:00:02")

# The two SYN option layouts Linux emits (tcp_options_write order).
LINUX_SYN_OPTS = (
    TcpOption(TCPOPT_MSS, 1460),
    TcpOption(TCPOPT_SACK_PERM),
    TcpOption(TCPOPT_TIMESTAMP, (100, 0)),
    TcpOption(TCPOPT_NOP),
    TcpOption(TCPOPT_WINDOW, 8),
)
LINUX_SYN_OPTS_BYTES = bytes.fromhex("020405b4" "0402" "080a0000006400000000" "01" "030308")
LINUX_SYN_NOTS_OPTS = (
    TcpOption(TCPOPT_MSS, 1240),
    TcpOption(TCPOPT_NOP),
    TcpOption(TCPOPT_NOP),
    TcpOption(TCPOPT_SACK_PERM),
    TcpOption(TCPOPT_NOP),
    TcpOption(TCPOPT_WINDOW, 8),
)
LINUX_SYN_NOTS_OPTS_BYTES = bytes.fromhex("020404d8" "0101" "0402" "01" "030308")


def ref_checksum(data: bytes) -> int:
    """Plain RFC 1071 loop, the reference for the fast path."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ipaddr = st.binary(min_size=4, max_size=4)
mac = st.binary(min_size=6, max_size=6)
payloads = st.binary(max_size=1500)


@st.composite
def tcp_option_lists(draw):
    """Valid option lists that fit in 40 bytes; EOL only as the last entry."""
    opts = []
    size = 0
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(
            [TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_SACK,
             TCPOPT_TIMESTAMP, 30, 34, 254]))
        if kind == TCPOPT_NOP:
            opt, n = TcpOption(kind), 1
        elif kind == TCPOPT_MSS:
            opt, n = TcpOption(kind, draw(u16)), 4
        elif kind == TCPOPT_WINDOW:
            opt, n = TcpOption(kind, draw(u8)), 3
        elif kind == TCPOPT_SACK_PERM:
            opt, n = TcpOption(kind), 2
        elif kind == TCPOPT_TIMESTAMP:
            opt, n = TcpOption(kind, (draw(u32), draw(u32))), 10
        elif kind == TCPOPT_SACK:
            blocks = tuple(draw(st.lists(st.tuples(u32, u32), min_size=1, max_size=4)))
            opt, n = TcpOption(kind, blocks), 2 + 8 * len(blocks)
        else:
            raw = draw(st.binary(max_size=10))
            opt, n = TcpOption(kind, raw), 2 + len(raw)
        if size + n > 40:
            break
        opts.append(opt)
        size += n
    if size < 40 and draw(st.booleans()):
        opts.append(TcpOption(TCPOPT_EOL))
    return tuple(opts)


def expected_decoded_options(opts):
    """decode(encode(opts)): padding shows up as one EOL entry when needed."""
    unpadded = sum(len(encode_options((o,), pad=False)) for o in opts)
    if options_length(opts) != unpadded and (not opts or opts[-1].kind != TCPOPT_EOL):
        return opts + (TcpOption(TCPOPT_EOL),)
    return opts


# ----------------------------------------------------------------- checksum


@given(st.binary(max_size=3000))
@example(b"")
@example(b"\xff")
@example(b"\xff\xff")
@example(b"\xff" * 3)
@example(b"\xff" * 1500)
@example(b"\x00" * 7)
def test_checksum_fast_path_matches_loop(data):
    assert internet_checksum(data) == ref_checksum(data)
    assert internet_checksum(memoryview(data)) == ref_checksum(data)
    assert ones_complement_sum(data) == 0xFFFF - ref_checksum(data)


@pytest.mark.parametrize("n", [2, 3, 4, 20, 1460, 1461])
def test_checksum_all_ones_edge(n):
    data = b"\xff" * n
    # The big-int remainder is 0 here but the one's-complement sum is 0xFFFF.
    assert internet_checksum(data) == ref_checksum(data)
    if n % 2 == 0:
        assert internet_checksum(data) == 0


def test_checksum_known_values():
    # RFC 1071 section 3 example: sum 0xddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\0\0\0") == 0xFFFF


@given(ipaddr, ipaddr, u8, u16, st.binary(max_size=200))
def test_pseudo_header_sum_matches_loop(src, dst, proto, length, data):
    pseudo = src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    assert internet_checksum(data, pseudo_header_sum(src, dst, proto, length)) == \
        ref_checksum(pseudo + data)


@given(st.binary(max_size=100), st.binary(max_size=100))
@example(b"", b"")
@example(b"\xff\xff", b"")
@example(b"\xff\xff", b"\0\0\0")
@example(b"\x00\x01", b"\xff\xfe")
@example(b"\xff\xfe", b"\x00")
def test_checksum_initial_is_a_partial_sum(a, b):
    assume(len(a) % 2 == 0)
    partial = ones_complement_sum(a)
    assert partial == 0xFFFF - internet_checksum(a)
    assert internet_checksum(b, partial) == ref_checksum(a + b)
    assert ones_complement_sum(b, partial) == 0xFFFF - ref_checksum(a + b)
    # An unfolded partial sum works too.
    words = sum(int.from_bytes(a[i:i + 2], "big") for i in range(0, len(a), 2))
    assert internet_checksum(b, words) == ref_checksum(a + b)


# ----------------------------------------------------------------- ethernet


@given(mac, mac, u16, st.binary(max_size=100), st.booleans())
def test_ethernet_round_trip(dst, src, ethertype, payload, pad):
    frame = encode_ethernet(dst, src, ethertype, payload, pad=pad)
    assert len(frame) == max(14 + len(payload), 60 if pad else 0)
    got = decode_ethernet(frame)
    assert (got.dst, got.src, got.ethertype) == (dst, src, ethertype)
    assert got.payload[:len(payload)] == payload
    if not pad:
        assert got == EthernetFrame(dst, src, ethertype, payload)
        assert got.encode() == frame


def test_ethernet_errors_and_mac_helpers():
    with pytest.raises(MalformedPacket, match="truncated"):
        decode_ethernet(b"\0" * 13)
    with pytest.raises(ValueError):
        encode_ethernet(b"\0" * 5, MAC_A, ETH_P_IP, b"")
    assert MAC_A == b"\x02\0\0\0\0\x01"
    assert bytes_to_mac(MAC_A) == "02:00:00:00:00:01"
    assert mac_to_bytes("2-0-0-0-0-AB") == b"\x02\0\0\0\0\xab"
    for bad in ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "02:00:00:00:00:0g",
                "02:00:00:00:00:001", "+2:00:00:00:00:01"]:
        with pytest.raises(ValueError):
            mac_to_bytes(bad)
    assert ip_to_bytes("10.0.0.1") == b"\n\0\0\x01"
    assert bytes_to_ip(b"\xc0\xa8\x01\xff") == "192.168.1.255"
    for bad in ["10.1", "256.0.0.1", "a.b.c.d", "1.2.3.4 "]:
        with pytest.raises(ValueError):
            ip_to_bytes(bad)


# ---------------------------------------------------------------------- arp


@given(st.sampled_from([ARPOP_REQUEST, ARPOP_REPLY]), mac, ipaddr, mac, ipaddr)
def test_arp_round_trip(op, sha, spa, tha, tpa):
    wire = encode_arp(op, sha, spa, tha, tpa)
    assert len(wire) == 28
    pkt = decode_arp(wire + b"\0" * 18)  # Ethernet padding is ignored
    assert pkt == ArpPacket(op, sha, spa, tha, tpa)
    assert pkt.encode() == wire


def test_arp_builders_and_errors():
    req = decode_arp(build_arp_request(MAC_A, SRC, DST))
    assert req == ArpPacket(ARPOP_REQUEST, MAC_A, SRC, b"\0" * 6, DST)
    rep = decode_arp(build_arp_reply(MAC_B, DST, MAC_A, SRC))
    assert rep == ArpPacket(ARPOP_REPLY, MAC_B, DST, MAC_A, SRC)
    with pytest.raises(MalformedPacket, match="truncated"):
        decode_arp(build_arp_request(MAC_A, SRC, DST)[:27])
    bad = bytearray(build_arp_request(MAC_A, SRC, DST))
    bad[1] = 6  # htype IEEE 802
    with pytest.raises(MalformedPacket, match="unsupported"):
        decode_arp(bytes(bad))


# --------------------------------------------------------------------- ipv4


ipv4_options = st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4))


@given(ipaddr, ipaddr, u8, payloads, u8, u16, st.booleans(), st.booleans(),
       st.integers(0, 0x1FFF).map(lambda x: x * 8), st.integers(1, 255), ipv4_options)
def test_ipv4_round_trip(src, dst, proto, payload, tos, ident, df, mf, frag, ttl, options):
    assume(20 + len(options) + len(payload) <= 0xFFFF)
    wire = encode_ipv4(src, dst, proto, payload, ttl=ttl, tos=tos, ident=ident, df=df, mf=mf,
                       frag_offset=frag, options=options)
    assert internet_checksum(wire[:20 + len(options)]) == 0
    hdr, got = decode_ipv4(wire)
    assert got == payload
    assert hdr == Ipv4Header(tos, len(wire), ident, df, mf, frag, ttl, proto, src, dst, options)
    assert hdr.header_length == 20 + len(options)
    assert hdr.encode(payload) == wire
    # Zero-copy path: a memoryview in gives a memoryview slice out.
    hdr2, view = decode_ipv4(memoryview(wire))
    assert hdr2 == hdr and isinstance(view, memoryview) and view == payload


def test_ipv4_trims_padding_and_validates():
    wire = encode_ipv4(SRC, DST, IPPROTO_TCP, b"abc")
    hdr, payload = decode_ipv4(wire + b"\0" * 20)
    assert payload == b"abc" and hdr.total_length == 23
    assert decode_ipv4_header(wire[:20]).protocol == IPPROTO_TCP

    def mutate(i, v):
        b = bytearray(wire)
        b[i] = v
        return bytes(b)

    with pytest.raises(MalformedPacket, match="truncated"):
        decode_ipv4(wire[:19])
    with pytest.raises(MalformedPacket, match="version"):
        decode_ipv4(mutate(0, 0x65), verify_checksum=False)
    with pytest.raises(MalformedPacket, match="IHL"):
        decode_ipv4(mutate(0, 0x44), verify_checksum=False)
    with pytest.raises(MalformedPacket, match="header length"):
        decode_ipv4(mutate(0, 0x4F), verify_checksum=False)
    with pytest.raises(MalformedPacket, match="exceeds buffer"):
        decode_ipv4(wire[:-1])
    with pytest.raises(MalformedPacket, match="total length 19"):
        decode_ipv4(mutate(3, 19), verify_checksum=False)
    corrupt = mutate(8, 63)  # TTL changed, checksum stale
    with pytest.raises(MalformedPacket, match="checksum"):
        decode_ipv4(corrupt)
    assert decode_ipv4(corrupt, verify_checksum=False)[0].ttl == 63
    unchecked = encode_ipv4(SRC, DST, IPPROTO_TCP, b"", checksum=False)
    assert unchecked[10:12] == b"\0\0"
    with pytest.raises(ValueError):
        encode_ipv4(SRC, DST, 6, b"", frag_offset=4)
    with pytest.raises(ValueError):
        encode_ipv4(SRC, DST, 6, b"", options=b"\1" * 41)
    with pytest.raises(ValueError):
        encode_ipv4(SRC, DST, 6, b"\0" * 65516)
    with pytest.raises(ValueError):
        encode_ipv4(SRC, DST, 256, b"")
    # Odd-length options are padded with EOL (zero) bytes.
    hdr, _ = decode_ipv4(encode_ipv4(SRC, DST, 6, b"", options=b"\x01\x01\x01"))
    assert hdr.options == b"\x01\x01\x01\x00"


# ---------------------------------------------------------------------- tcp


def test_linux_syn_option_layouts_exact_bytes():
    assert encode_options(LINUX_SYN_OPTS) == LINUX_SYN_OPTS_BYTES
    assert len(LINUX_SYN_OPTS_BYTES) == options_length(LINUX_SYN_OPTS) == 20
    assert decode_options(LINUX_SYN_OPTS_BYTES) == LINUX_SYN_OPTS
    assert encode_options(LINUX_SYN_NOTS_OPTS) == LINUX_SYN_NOTS_OPTS_BYTES
    assert len(LINUX_SYN_NOTS_OPTS_BYTES) == options_length(LINUX_SYN_NOTS_OPTS) == 12
    assert decode_options(LINUX_SYN_NOTS_OPTS_BYTES) == LINUX_SYN_NOTS_OPTS
    for opts, raw in [(LINUX_SYN_OPTS, LINUX_SYN_OPTS_BYTES),
                      (LINUX_SYN_NOTS_OPTS, LINUX_SYN_NOTS_OPTS_BYTES)]:
        seg = encode_tcp(SRC, DST, 40000, 80, 12345, 0, TCPHDR_SYN, 64240, opts, b"")
        assert seg[12] >> 4 == (20 + len(raw)) // 4
        assert seg[20:] == raw
        hdr, payload = decode_tcp(seg, SRC, DST, verify_checksum=True)
        assert hdr.options == opts and payload == b""
        assert hdr.encode(SRC, DST) == seg


def test_tcp_established_timestamp_fast_path():
    opts = (TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_TIMESTAMP, (7, 9)))
    raw = encode_options(opts)
    assert raw == bytes.fromhex("0101080a0000000700000009")
    assert decode_options(raw) == opts
    # Same prefix but a SACK after it takes the general path.
    sack = opts + (TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_NOP),
                   TcpOption(TCPOPT_SACK, ((1, 2),)))
    assert decode_options(encode_options(sack)) == sack


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(ipaddr, ipaddr, u16, u16, u32, u32, st.integers(0, 0xFFF), u16, u16,
       tcp_option_lists(), payloads)
def test_tcp_round_trip(src, dst, sport, dport, seq, ack, flags, window, urg, opts, payload):
    seg = encode_tcp(src, dst, sport, dport, seq, ack, flags, window, opts, payload,
                     urg_ptr=urg)
    assert len(seg) == 20 + options_length(opts) + len(payload)
    assert tcp_checksum(src, dst, seg) == 0
    hdr, got = decode_tcp(seg, src, dst, verify_checksum=True)
    assert got == payload
    assert hdr == TcpHeader(sport, dport, seq, ack, flags, window, urg,
                            expected_decoded_options(opts))
    assert hdr.header_length == 20 + options_length(opts)
    assert hdr.encode(src, dst, payload) == seg
    assert encode_options(hdr.options) == encode_options(opts)


def test_tcp_checksum_flag_and_verification():
    seg = encode_tcp(SRC, DST, 1, 2, 3, 4, TCPHDR_ACK, 5, (), b"hello")
    unchecked = encode_tcp(None, None, 1, 2, 3, 4, TCPHDR_ACK, 5, (), b"hello", checksum=False)
    assert unchecked[16:18] == b"\0\0" and unchecked[:16] == seg[:16]
    with pytest.raises(MalformedPacket, match="checksum"):
        decode_tcp(unchecked, SRC, DST, verify_checksum=True)
    hdr, _ = decode_tcp(unchecked)  # no verification by default
    assert hdr.checksum == 0
    with pytest.raises(MalformedPacket, match="checksum"):
        decode_tcp(seg, SRC, ip_to_bytes("10.0.0.3"), verify_checksum=True)
    with pytest.raises(ValueError):
        decode_tcp(seg, verify_checksum=True)


def _seg_with_raw_options(raw: bytes) -> bytes:
    raw += b"\0" * (-len(raw) % 4)
    hdr = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (5 + len(raw) // 4) << 12 | TCPHDR_SYN, 5, 0, 0)
    return hdr + raw


@pytest.mark.parametrize("raw, reason", [
    (b"\x01\x01\x01\x02", "missing length"),
    (b"\x01\x01\x01\x08", "missing length"),
    (b"\x02\x01\x05\xb4", "length 1 < 2"),
    (b"\x1e\x00", "length 0 < 2"),
    (b"\x02\x06\x05\xb4", "runs past header"),
    (b"\x08\x0a\0\0\0\x01\0\0", "runs past header"),
    (b"\x02\x03\x05\x01", "MSS: length 3"),
    (b"\x02\x05\x05\xb4\x00\x00\x00\x00", "MSS: length 5"),
    (b"\x08\x08\0\0\0\x01\0\0", "TS: length 8"),
    (b"\x08\x0b" + b"\0" * 10, "TS: length 11"),
    (b"\x05\x02", "SACK: length 2"),
    (b"\x05\x06\0\0\0\0", "SACK: length 6"),
    (b"\x05\x0b" + b"\0" * 9, "SACK: length 11"),
    (b"\x03\x04\x07\x00", "WS: length 4"),
    (b"\x03\x02\x01\x01", "WS: length 2"),
    (b"\x04\x03\x00\x00", "SACK_PERM: length 3"),
])
def test_tcp_malformed_options(raw, reason):
    with pytest.raises(MalformedPacket, match=reason):
        decode_tcp(_seg_with_raw_options(raw))
    with pytest.raises(MalformedPacket, match=reason):
        decode_options(raw)


def test_tcp_header_validation_and_odd_options():
    seg = encode_tcp(SRC, DST, 1, 2, 3, 4, TCPHDR_ACK, 5, LINUX_SYN_OPTS, b"x")
    with pytest.raises(MalformedPacket, match="truncated"):
        decode_tcp(seg[:19])
    with pytest.raises(MalformedPacket, match="exceeds segment"):
        decode_tcp(seg[:39])
    bad = bytearray(seg)
    bad[12] = 0x40
    with pytest.raises(MalformedPacket, match="data offset 4"):
        decode_tcp(bytes(bad))
    # Bytes after EOL are padding; unknown options keep their raw value.
    hdr, _ = decode_tcp(_seg_with_raw_options(b"\x02\x04\x05\xb4\x00\xff\xff\xff"))
    assert hdr.options == (TcpOption(TCPOPT_MSS, 1460), TcpOption(TCPOPT_EOL))
    hdr, _ = decode_tcp(_seg_with_raw_options(b"\xfd\x06\xf9\x89\x01\x02"))
    assert hdr.options == (TcpOption(253, b"\xf9\x89\x01\x02"), TcpOption(TCPOPT_EOL))
    assert encode_options([TcpOption(TCPOPT_MSS, 1460), TcpOption(TCPOPT_SACK_PERM)]) == \
        b"\x02\x04\x05\xb4\x04\x02\x00\x00"
    for bad_opts in [[TcpOption(TCPOPT_TIMESTAMP, (1, 2))] * 5,
                     [TcpOption(TCPOPT_MSS, 70000)],
                     [TcpOption(TCPOPT_MSS, None)],
                     [TcpOption(TCPOPT_SACK, ((1, 2),) * 5)],
                     [TcpOption(TCPOPT_TIMESTAMP, 5)]]:
        with pytest.raises(ValueError):
            encode_options(bad_opts)
    with pytest.raises(ValueError):
        encode_tcp(SRC, DST, 70000, 2, 3, 4, 0, 5)


# --------------------------------------------------------------------- icmp


def _tcp_ip_packet(payload=b"y" * 100, sport=40000, dport=80, seq=0xDEADBEEF):
    seg = encode_tcp(SRC, DST, sport, dport, seq, 1, TCPHDR_ACK | TCPHDR_PSH, 100,
                     LINUX_SYN_NOTS_OPTS, payload)
    return encode_ipv4(SRC, DST, IPPROTO_TCP, seg, ident=77)


@given(u16, u16, st.binary(max_size=200), st.booleans())
def test_icmp_echo_round_trip(ident, seq, data, reply):
    wire = (build_echo_reply if reply else build_echo_request)(ident, seq, data)
    assert internet_checksum(wire) == 0
    msg = decode_icmp(wire)
    assert (msg.type, msg.code) == ((ICMP_ECHOREPLY if reply else ICMP_ECHO), 0)
    assert (msg.ident, msg.seq, msg.data) == (ident, seq, data)
    assert msg.mtu is None and msg.quoted_ip_header is None
    with pytest.raises(MalformedPacket, match="quotes no datagram"):
        quoted_tcp_ports_seq(msg)


@given(st.integers(68, 0xFFFF), st.binary(min_size=0, max_size=1400), u16, u16, u32)
def test_icmp_frag_needed_round_trip(mtu, payload, sport, dport, seq):
    orig = _tcp_ip_packet(payload, sport, dport, seq)
    wire = build_frag_needed(mtu, orig + b"\0" * 6)  # link padding is not quoted
    assert wire[6:8] == mtu.to_bytes(2, "big")
    assert len(wire) == 8 + 20 + 8  # RFC 792 minimum quote
    msg = decode_icmp(wire)
    assert (msg.type, msg.code, msg.mtu) == (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)
    assert msg.quoted_ip_header == decode_ipv4(orig)[0]
    assert msg.quoted_payload == orig[20:28]
    assert quoted_tcp_ports_seq(msg) == (sport, dport, seq)
    # Linux-style quoting: as much as fits in 576 bytes.
    big = build_frag_needed(mtu, orig, quote_len=LINUX_ICMP_QUOTE_LEN)
    assert len(big) == 8 + min(len(orig), LINUX_ICMP_QUOTE_LEN)
    assert 20 + len(big) <= 576
    msg = decode_icmp(big)
    assert msg.quoted_payload == orig[20:LINUX_ICMP_QUOTE_LEN]
    assert quoted_tcp_ports_seq(msg) == (sport, dport, seq)


def test_icmp_time_exceeded_and_unreach():
    orig = _tcp_ip_packet()
    msg = decode_icmp(build_time_exceeded(orig))
    assert (msg.type, msg.code, msg.mtu) == (ICMP_TIME_EXCEEDED, 0, None)
    assert quoted_tcp_ports_seq(msg) == (40000, 80, 0xDEADBEEF)
    msg = decode_icmp(build_time_exceeded(orig, code=1, quote_len=100))
    assert msg.code == 1 and len(msg.data) == 100
    msg = decode_icmp(build_dest_unreach(3, orig))
    assert (msg.code, msg.mtu) == (3, None)
    # A tiny datagram is quoted whole.
    tiny = encode_ipv4(SRC, DST, IPPROTO_TCP, b"abc")
    msg = decode_icmp(build_time_exceeded(tiny))
    assert msg.quoted_payload == b"abc"
    with pytest.raises(MalformedPacket, match="truncated"):
        quoted_tcp_ports_seq(msg)
    icmp_quoted = decode_icmp(build_time_exceeded(
        encode_ipv4(SRC, DST, IPPROTO_ICMP, build_echo_request(1, 2))))
    with pytest.raises(MalformedPacket, match="not TCP"):
        quoted_tcp_ports_seq(icmp_quoted)
    frag = encode_ipv4(SRC, DST, IPPROTO_TCP, b"z" * 16, frag_offset=1480)
    with pytest.raises(MalformedPacket, match="fragment"):
        quoted_tcp_ports_seq(decode_icmp(build_time_exceeded(frag)))
    with pytest.raises(ValueError):
        build_time_exceeded(orig, quote_len=20)
    with pytest.raises(ValueError):
        build_time_exceeded(b"\x60" + b"\0" * 39)


def test_icmp_decode_errors():
    with pytest.raises(MalformedPacket, match="truncated"):
        decode_icmp(b"\x08\0\0\0\0\0\0")
    wire = bytearray(build_echo_request(1, 2, b"ping"))
    wire[-1] ^= 1
    with pytest.raises(MalformedPacket, match="checksum"):
        decode_icmp(bytes(wire))
    assert decode_icmp(bytes(wire), verify_checksum=False).data == b"pinf"
    with pytest.raises(MalformedPacket, match="quoted ipv4"):
        decode_icmp(encode_icmp(ICMP_DEST_UNREACH, 4, 1500, b"\x45" + b"\0" * 10))
    with pytest.raises(MalformedPacket, match="quoted ipv4"):
        decode_icmp(encode_icmp(ICMP_TIME_EXCEEDED, 0, 0, b"\x60" + b"\0" * 40))
    # Quoted total length shorter than its own header.
    with pytest.raises(MalformedPacket, match="quoted ipv4 total length"):
        decode_icmp(encode_icmp(ICMP_TIME_EXCEEDED, 0, 0, b"\x45\0\0\x10" + b"\0" * 24))


# --------------------------------------------------------------------- dpkt


@pytest.fixture(scope="module")
def dpkt():
    return pytest.importorskip("dpkt", reason="dpkt (test dependency) is not installed")


def _dpkt_tcp_sum_ok(dpkt, ip):
    """Let dpkt recompute both checksums and compare with what is on the wire."""
    ip_sum, tcp_sum = ip.sum, ip.data.sum
    ip.sum = 0
    ip.data.sum = 0
    bytes(ip)
    return ip.sum == ip_sum and ip.data.sum == tcp_sum


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture])
@given(ipaddr, ipaddr, u16, u16, u32, u32, st.integers(0, 0xFF), u16,
       tcp_option_lists(), st.binary(max_size=1460), u8, u16, st.integers(1, 255))
def test_ours_parse_in_dpkt(dpkt, src, dst, sport, dport, seq, ack, flags, window, opts,
                            payload, tos, ident, ttl):
    seg = encode_tcp(src, dst, sport, dport, seq, ack, flags, window, opts, payload)
    wire = encode_ipv4(src, dst, IPPROTO_TCP, seg, ttl=ttl, tos=tos, ident=ident)
    ip = dpkt.ip.IP(wire)
    assert (ip.v, ip.hl, ip.tos, ip.len, ip.id, ip.df, ip.mf, ip.offset, ip.ttl, ip.p,
            ip.src, ip.dst) == (4, 5, tos, len(wire), ident, 1, 0, 0, ttl, 6, src, dst)
    assert dpkt.in_cksum(wire[:20]) == 0
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win, tcp.off) == \
        (sport, dport, seq, ack, flags, window, 5 + options_length(opts) // 4)
    assert tcp.opts == encode_options(opts)
    assert tcp.data == payload
    assert _dpkt_tcp_sum_ok(dpkt, ip)


def test_linux_syn_layouts_in_dpkt(dpkt):
    for opts, raw in [(LINUX_SYN_OPTS, LINUX_SYN_OPTS_BYTES),
                      (LINUX_SYN_NOTS_OPTS, LINUX_SYN_NOTS_OPTS_BYTES)]:
        wire = encode_ipv4(SRC, DST, IPPROTO_TCP,
                           encode_tcp(SRC, DST, 40000, 80, 1, 0, TCPHDR_SYN, 64240, opts))
        tcp = dpkt.ip.IP(wire).data
        assert tcp.opts == raw
        parsed = dpkt.tcp.parse_opts(tcp.opts)
        assert [k for k, _ in parsed] == [o.kind for o in opts]
        assert (dpkt.tcp.TCP_OPT_MSS, struct.pack("!H", opts[0].value)) in parsed


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ipaddr, ipaddr, u16, u16, u32, u32, st.integers(0, 0x1FF), u16, tcp_option_lists(),
       st.binary(max_size=1460), u8, u16, st.integers(1, 255), st.booleans())
def test_dpkt_packets_parse_in_ours(dpkt, src, dst, sport, dport, seq, ack, flags, window,
                                    opts, payload, tos, ident, ttl, df):
    raw_opts = encode_options(opts)
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=window,
                       off=5 + len(raw_opts) // 4, opts=raw_opts, data=payload)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, tos=tos, id=ident, ttl=ttl, df=int(df), data=tcp)
    wire = bytes(ip)
    hdr, seg = decode_ipv4(wire)
    assert (hdr.tos, hdr.total_length, hdr.ident, hdr.df, hdr.mf, hdr.frag_offset, hdr.ttl,
            hdr.protocol, hdr.src, hdr.dst) == \
        (tos, len(wire), ident, df, False, 0, ttl, 6, src, dst)
    th, data = decode_tcp(seg, src, dst, verify_checksum=True)
    assert th == TcpHeader(sport, dport, seq, ack, flags, window, 0,
                           expected_decoded_options(opts))
    assert th.checksum == tcp.sum
    assert data == payload


def test_icmp_cross_dpkt(dpkt):
    # Ours -> dpkt
    echo = build_echo_request(0x1234, 7, b"abcdefgh")
    d = dpkt.icmp.ICMP(echo)
    assert (d.type, d.code, d.data.id, d.data.seq, d.data.data) == (8, 0, 0x1234, 7, b"abcdefgh")
    assert dpkt.in_cksum(echo) == 0
    orig = _tcp_ip_packet()
    frag = build_frag_needed(1400, orig, quote_len=LINUX_ICMP_QUOTE_LEN)
    d = dpkt.icmp.ICMP(frag)
    assert (d.type, d.code, d.data.mtu) == (3, 4, 1400)
    assert dpkt.in_cksum(frag) == 0
    quoted = d.data.data
    assert isinstance(quoted, dpkt.ip.IP) and quoted.id == 77 and quoted.data.sport == 40000
    wire = encode_ipv4(DST, SRC, IPPROTO_ICMP, build_time_exceeded(orig))
    ip = dpkt.ip.IP(wire)
    assert ip.p == 1 and ip.data.type == 11 and dpkt.in_cksum(wire[:20]) == 0
    # dpkt -> ours
    d = dpkt.icmp.ICMP(type=0, code=0, data=dpkt.icmp.ICMP.Echo(id=9, seq=10, data=b"pong"))
    msg = decode_icmp(bytes(d))
    assert (msg.type, msg.ident, msg.seq, msg.data) == (0, 9, 10, b"pong")
    unreach = dpkt.icmp.ICMP.Unreach(mtu=1280, data=orig[:28])
    d = dpkt.icmp.ICMP(type=3, code=4, data=unreach)
    msg = decode_icmp(bytes(d))
    assert msg.mtu == 1280 and quoted_tcp_ports_seq(msg) == (40000, 80, 0xDEADBEEF)


def test_arp_and_ethernet_cross_dpkt(dpkt):
    frame = encode_ethernet(BROADCAST_MAC, MAC_A, ETH_P_ARP,
                            build_arp_request(MAC_A, SRC, DST), pad=True)
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.dst, eth.src, eth.type) == (BROADCAST_MAC, MAC_A, ETH_P_ARP)
    arp = eth.data
    assert (arp.op, arp.sha, arp.spa, arp.tpa) == (ARPOP_REQUEST, MAC_A, SRC, DST)
    reply = dpkt.arp.ARP(op=2, sha=MAC_B, spa=DST, tha=MAC_A, tpa=SRC)
    frame = bytes(dpkt.ethernet.Ethernet(dst=MAC_A, src=MAC_B, type=ETH_P_ARP, data=reply))
    got = decode_ethernet(frame)
    assert (got.dst, got.src, got.ethertype) == (MAC_A, MAC_B, ETH_P_ARP)
    assert decode_arp(got.payload) == ArpPacket(ARPOP_REPLY, MAC_B, DST, MAC_A, SRC)


# --------------------------------------------------------------------- fuzz


def _valid_samples():
    orig = _tcp_ip_packet()
    syn = encode_ipv4(SRC, DST, IPPROTO_TCP, encode_tcp(
        SRC, DST, 1, 2, 3, 0, TCPHDR_SYN, 5, LINUX_SYN_OPTS, b""), options=b"\x94\x04\0\0")
    sack = encode_tcp(SRC, DST, 1, 2, 3, 4, TCPHDR_ACK, 5, (
        TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_TIMESTAMP, (1, 2)),
        TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_NOP),
        TcpOption(TCPOPT_SACK, ((10, 20), (30, 40)))), b"data")
    icmp_frag = build_frag_needed(1400, orig, quote_len=LINUX_ICMP_QUOTE_LEN)
    icmp_te = build_time_exceeded(syn)
    samples = [
        orig, syn, sack, icmp_frag, icmp_te, build_echo_request(1, 2, b"x" * 30),
        encode_ipv4(SRC, DST, IPPROTO_ICMP, icmp_frag),
        build_arp_request(MAC_A, SRC, DST),
        encode_ethernet(MAC_A, MAC_B, ETH_P_IP, orig),
    ]
    return samples


VALID_SAMPLES = _valid_samples()


def _all_decoders(data):
    """Run every decoder on data; anything but MalformedPacket propagates."""

    def attempt(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except MalformedPacket as e:
            assert str(e)  # always carries a reason
            return None

    attempt(decode_ethernet, data)
    attempt(decode_arp, data)
    attempt(decode_ipv4_header, data)
    attempt(decode_ipv4, data)
    res = attempt(decode_ipv4, data, verify_checksum=False)
    if res is not None:
        hdr, payload = res
        attempt(decode_tcp, payload, hdr.src, hdr.dst, verify_checksum=True)
        attempt(decode_icmp, payload, verify_checksum=False)
    attempt(decode_tcp, data)
    attempt(decode_tcp, data, SRC, DST, verify_checksum=True)
    attempt(decode_options, data)
    attempt(decode_options, data[20:60])
    for verify in (True, False):
        msg = attempt(decode_icmp, data, verify_checksum=verify)
        if msg is not None:
            attempt(quoted_tcp_ports_seq, msg)


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data):
    _all_decoders(data)
    _all_decoders(memoryview(data))


@settings(max_examples=1000)
@given(st.sampled_from(VALID_SAMPLES), st.data())
def test_fuzz_mutated_valid_packets(sample, data):
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        how = data.draw(st.sampled_from(["set", "truncate", "append", "flip"]))
        if how == "truncate":
            del buf[data.draw(st.integers(0, len(buf))):]
        elif how == "append":
            buf += data.draw(st.binary(min_size=1, max_size=16))
        elif buf:
            i = data.draw(st.integers(0, min(len(buf) - 1, 80)))  # headers live up front
            if how == "set":
                buf[i] = data.draw(u8)
            else:
                buf[i] ^= 1 << data.draw(st.integers(0, 7))
    _all_decoders(bytes(buf))


def test_decoders_accept_mutation_free_samples():
    for sample in VALID_SAMPLES:
        _all_decoders(sample)


def test_random_soak():
    """A few thousand cheap random probes on top of hypothesis."""
    rng = random.Random(1234)
    for n in range(3000):
        _all_decoders(rng.randbytes(n % 90))
