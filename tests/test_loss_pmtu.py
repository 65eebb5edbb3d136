"""The stack under loss and small MTUs: packetdrill scripts, then forged and broken ICMP.

1. Every ``tests/pkt/loss_*.pkt`` and ``tests/pkt/pmtu_*.pkt`` script passes. Each says in its
   comments which Linux 6.12 functions its expectations come from. Scripts that fail because the
   stack departs from Linux are strict xfails, and a second test pins the line where they fail.
2. A few mutants: the scripts fail when they expect what Linux would not do.
3. ``stack.Host`` driven directly (as the runner drives it) with forged ``IcmpError`` objects
   and with byte-level ICMP through ``Host.receive_ip``.

Linux references for section 3 (6.12): net/ipv4/icmp.c icmp_rcv() (IcmpInMsgs before the
checksum check, IcmpInCsumErrors + IcmpInErrors on a bad checksum, the per-type counter that
nstat shows as IcmpInDestUnreachs after it), icmp_unreach() (the frag-needed MTU is passed on
unchecked), icmp_socket_deliver() (IcmpInErrors when the quote is shorter than the IP header
+ 8 bytes); net/ipv4/tcp_ipv4.c tcp_v4_err() (no established socket: IcmpInErrors; quoted seq
outside snd_una..snd_nxt: LINUX_MIB_OUTOFWINDOWICMPS, nothing else) and tcp_v4_mtu_reduced();
net/ipv4/route.c __ip_rt_update_pmtu() (a larger MTU is ignored; below ip_rt_min_pmtu = 552
the route is locked at 552).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import IcmpError
from stack.constants import TCP_CA_Loss, TCPHDR_PSH
from stack.packetdrill.runner import run_script
from stack.packet import segment_to_ip
from stack.wire import build_frag_needed, encode_ipv4, ip_to_bytes
from stack.wire.icmp import encode_icmp

from conftest import LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, open_connection

PKT = Path(__file__).resolve().parent / "pkt"
SCRIPTS = sorted(list(PKT.glob("loss_*.pkt")) + list(PKT.glob("pmtu_*.pkt")))
ROUTER_IP = "198.51.100.1"

# Scripts that fail because the stack departs from Linux: name -> (reason, the line at which
# the stack departs; it must occur exactly once in the script).
# Scripts that fail because the stack departs from Linux: {name: (reason, line that fails)}.
# Empty: the nine departures these scripts found were fixed.
STACK_BUGS: dict[str, tuple[str, str]] = {}


def _params():
    assert SCRIPTS, f"no loss_/pmtu_ scripts in {PKT}"
    return [pytest.param(p, id=p.name,
                         marks=[pytest.mark.xfail(reason=STACK_BUGS[p.name][0], strict=True)]
                         if p.name in STACK_BUGS else [])
            for p in SCRIPTS]


# --------------------------------------------------------------------------
# 1. The scripts
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path", _params())
def test_loss_pmtu_script_passes(path):
    result = run_script(path)
    assert result.passed, result.failure.render()


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_loss_pmtu_script_follows_conventions(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("// Asserts: ") and len(lines[0]) > len("// Asserts: ")
    assert lines[1].startswith("`sysctl -q net.ipv4.tcp_min_tso_segs=1")
    assert sum(line.count("`") for line in lines) == 2


# --------------------------------------------------------------------------
# 2. Mutants: each script fails when it expects what Linux would not do
# --------------------------------------------------------------------------

TAG = "  // mutated"


def _mutant(tmp_path, name: str, old: str, new: str, *, how: str = "replace") -> Path:
    """A copy of ``name`` with the unique line ``old`` replaced by ``new`` (how="replace"),
    followed by ``new`` (how="insert"), or with the line after it replaced (how="next")."""
    lines = (PKT / name).read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if line == old]
    assert len(hits) == 1, f"{old!r} matches {len(hits)} lines of {name}"
    at = hits[0]
    if how == "insert":
        lines.insert(at + 1, new + TAG)
    else:
        lines[at + (how == "next")] = new + TAG
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _fails_at(path: Path, new: str, reason: str) -> None:
    result = run_script(path)
    assert not result.passed, f"mutant {path.name} passed"
    lines = path.read_text().splitlines()
    assert result.failure.line == lines.index(new + TAG) + 1, result.failure.render()
    assert reason in result.failure.render(), result.failure.render()


NOT_SENT = "expected outbound packet was not sent"
WRONG_TIME = "outbound packet at the wrong time"
MISMATCH = "outbound packet mismatch"
WRONG_OPT = "getsockopt() returned the wrong option value"

# (script, unique line, mutated line, how, what the runner reports)
MUTANTS = [
    # RACK waits for the reordering window: no immediate retransmission ...
    ("loss_sack_rack_reo_timer_one_sacked.pkt", "+.008~+.012 > . 1:1001(1000) ack 1",
     "   +0 > . 1:1001(1000) ack 1", "replace", NOT_SENT),
    # ... and it does not wait for the TLP (24..28 ms).
    ("loss_sack_rack_reo_timer_one_sacked.pkt", "+.008~+.012 > . 1:1001(1000) ack 1",
     "+.024~+.028 > . 1:1001(1000) ack 1", "replace", WRONG_TIME),
    # With three SACKed segments the hole is retransmitted at once, not after the window.
    ("loss_sack_rack_third_sack_prr_exit.pkt",
     "+.005 < . 1:1(0) ack 1 win 257 <nop,nop,sack 1001:4001>",
     "+.008~+.012 > . 1:1001(1000) ack 1", "next", WRONG_TIME),
    # Two SACKed segments are not enough.
    ("loss_sack_rack_third_sack_prr_exit.pkt", "   +0 > . 11001:12001(1000) ack 1",
     "   +0 > . 1:1001(1000) ack 1", "insert", NOT_SENT),
    # PRR owes nothing on the sixth SACK.
    ("loss_sack_rack_third_sack_prr_exit.pkt", "+.005 < . 1:1(0) ack 1 win 257 <nop,nop,sack 1001:7001>",
     "   +0 > . 14001:15001(1000) ack 1", "insert", NOT_SENT),
    # Non-SACK: the second dupack does not trigger fast retransmit.
    ("loss_reno_fast_retransmit_partial_ack.pkt", "   +0 > . 11001:12001(1000) ack 1",
     "   +0 > . 1:1001(1000) ack 1", "replace", MISMATCH),
    # The partial ACK retransmits the next hole.
    ("loss_reno_fast_retransmit_partial_ack.pkt", "+.005 < . 1:1(0) ack 4001 win 257",
     "   +0 > . 16001:17001(1000) ack 1", "next", MISMATCH),
    # The TLP is the last segment, not the head.
    ("loss_tlp_two_segments_probe_last.pkt", "+.024~+.028 > P. 1001:2001(1000) ack 1",
     "+.024~+.028 > . 1:1001(1000) ack 1", "replace", MISMATCH),
    # PTO = 2*srtt + 2 ms, not the RTO.
    ("loss_tlp_probe_sends_new_data.pkt", "+.024~+.028 > P. 10001:11001(1000) ack 1",
     "+.212~+.216 > P. 10001:11001(1000) ack 1", "replace", WRONG_TIME),
    # Had the one-segment probe been an RTO, cwnd would be 2: the third segment would wait.
    ("loss_tlp_one_segment_capped_at_rto.pkt", "   +0 > . 2101:3101(1000) ack 1",
     " +.01 > . 2101:3101(1000) ack 1", "replace", WRONG_TIME),
    # The third backoff is 4*RTO, not 3*RTO.
    ("loss_rto_third_backoff_cwnd_one_slow_start.pkt", "+.864 > P. 1:101(100) ack 1",
     "+.640 > P. 1:101(100) ack 1", "replace", NOT_SENT),
    # After the RTOs cwnd is 2, not 3.
    ("loss_rto_third_backoff_cwnd_one_slow_start.pkt", "   +0 > . 1101:2101(1000) ack 1",
     "   +0 > P. 2101:3101(1000) ack 1", "insert", NOT_SENT),
    # The black hole is not detected at the third RTO ...
    ("pmtu_blackhole_mtu_probing1_fourth_rto_base_mss.pkt", "+.864 > P. 1:1461(1460) ack 1",
     "+.864 > . 1:1025(1024) ack 1", "replace", MISMATCH),
    # ... and is at the fourth.
    ("pmtu_blackhole_mtu_probing1_fourth_rto_base_mss.pkt", "+1.728 > . 1:1025(1024) ack 1",
     "+1.728 > P. 1:1461(1460) ack 1", "replace", MISMATCH),
    # The first probe is 1242 bytes, and the second is the next binary-search size.
    ("pmtu_probing2_binary_search_sizes.pkt", "   +0 > . 10241:11483(1242) ack 1",
     "   +0 > . 10241:11265(1024) ack 1", "replace", MISMATCH),
    ("pmtu_probing2_binary_search_sizes.pkt", "   +0 > . 11483:12834(1351) ack 1",
     "   +0 > . 11483:12725(1242) ack 1", "replace", MISMATCH),
    # An out-of-window frag-needed causes no retransmission.
    ("pmtu_frag_needed_out_of_window_ignored.pkt",
     " +.01 < icmp unreachable frag_needed mtu 1200 [1:1461(1460)]",
     "   +0 > . 1461:2621(1160) ack 1", "insert", NOT_SENT),
    # A larger MTU does not raise the MSS.
    ("pmtu_frag_needed_larger_than_pmtu_ignored.pkt",
     " +.01 < icmp unreachable frag_needed mtu 1400 [1:1161(1160)]",
     "   +0 getsockopt(4, SOL_TCP, TCP_MAXSEG, [1360], [4]) = 0", "insert", WRONG_OPT),
    # MTU 67 is clamped to 552, not ignored.
    ("pmtu_frag_needed_below_min_pmtu_clamped_552.pkt",
     "   +0 getsockopt(4, SOL_TCP, TCP_MAXSEG, [512], [4]) = 0",
     "   +0 getsockopt(4, SOL_TCP, TCP_MAXSEG, [1460], [4]) = 0", "replace", WRONG_OPT),
    # The second, smaller MTU does not resend the 300-byte tail.
    ("pmtu_frag_needed_second_smaller_lowers_again.pkt", "   +0 > . 961:1161(200) ack 1",
     "   +0 > P. 1161:1461(300) ack 1", "insert", NOT_SENT),
]


@pytest.mark.parametrize("name,old,new,how,reason", MUTANTS,
                         ids=[f"{m[0]}:{i}" for i, m in enumerate(MUTANTS)])
def test_mutant_fails(tmp_path, name, old, new, how, reason):
    _fails_at(_mutant(tmp_path, name, old, new, how=how), new, reason)


# --------------------------------------------------------------------------
# 3. stack.Host with forged and broken ICMP
# --------------------------------------------------------------------------

def _conn(**kw):
    """A non-SACK connection (no TLP) with one full-sized 1460-byte segment unacknowledged."""
    peer = open_connection(mss=1460, win=64000, sack=False, **kw)
    assert peer.write(b"x" * 1460) == 1460
    sent = peer.new()
    assert [len(s.payload) for s in sent] == [1460]
    return peer


def _state(peer) -> dict:
    tp, host = peer.tp, peer.host
    return {
        "mss_cache": tp.mss_cache, "pmtu_cookie": tp.pmtu_cookie, "snd_una": tp.snd_una,
        "snd_nxt": tp.snd_nxt, "write_seq": tp.write_seq, "packets_out": tp.packets_out,
        "lost_out": tp.lost_out, "retrans_out": tp.retrans_out, "ca_state": tp.ca_state,
        "snd_cwnd": tp.snd_cwnd, "snd_ssthresh": tp.snd_ssthresh,
        "rtx_queue": [(s.seq, s.end_seq, s.sacked, s.pcount) for s in tp.rtx_queue],
        "write_queue": [(s.seq, s.end_seq) for s in tp.write_queue],
        "pending": tp.pending, "timeout": tp.timeout, "sk_err_soft": tp.sk_err_soft,
        "route_mtu": host.route_mtu(tp.daddr),
        "pmtu": {k: (v.mtu, v.locked) for k, v in host.pmtu.items()},
    }


def _icmp(peer, *, mtu=1200, seq=None, saddr=LOCAL_IP, daddr=REMOTE_IP, sport=LOCAL_PORT,
          dport=REMOTE_PORT, icmp_type=3, code=4) -> IcmpError:
    q_seq = peer.tp.snd_una if seq is None else seq
    return IcmpError(ROUTER_IP, LOCAL_IP, icmp_type, code, mtu, saddr, daddr, sport, dport,
                     q_seq & 0xFFFFFFFF)


def _deliver(peer, err: IcmpError) -> list:
    peer.host.receive_icmp(err, peer.now)
    peer.collect()
    return peer.new()


def _mib(peer, *names) -> dict:
    return {n: peer.host.mib[n] for n in names}


# --- in-window control: what an accepted frag-needed does ---------------------------------

@pytest.mark.parametrize("where", ["snd_una", "snd_nxt"])
def test_in_window_frag_needed_at_the_window_edges_is_acted_on(where):
    # between(seq, snd_una, snd_nxt) is inclusive at both ends.
    peer = _conn()
    seq = getattr(peer.tp, where)
    out = _deliver(peer, _icmp(peer, mtu=1200, seq=seq))
    assert peer.tp.mss_cache == 1160
    assert [len(s.payload) for s in out] == [1160, 300]
    assert out[1].flags & TCPHDR_PSH and not out[0].flags & TCPHDR_PSH
    assert peer.tp.ca_state == TCP_CA_Loss
    assert peer.host.mib["TcpExtOutOfWindowIcmps"] == 0


# --- forged: quoted sequence number outside snd_una..snd_nxt -------------------------------

OUT_OF_WINDOW = {
    "below_snd_una": lambda tp: tp.snd_una - 1,
    "far_below": lambda tp: tp.snd_una - 100000,
    "above_snd_nxt": lambda tp: tp.snd_nxt + 1,
    "half_space_away": lambda tp: tp.snd_una + 0x80000000,
}


@pytest.mark.parametrize("case", sorted(OUT_OF_WINDOW))
def test_frag_needed_with_out_of_window_seq_changes_nothing(case):
    peer = _conn()
    before = _state(peer)
    mib = _mib(peer, "TcpExtOutOfWindowIcmps", "IcmpInMsgs", "TcpRetransSegs")
    out = _deliver(peer, _icmp(peer, mtu=1200, seq=OUT_OF_WINDOW[case](peer.tp)))
    assert out == []
    assert _state(peer) == before
    assert peer.tp.mtu_info == 0          # tcp_v4_err() leaves before recording it
    assert peer.host.mib["TcpExtOutOfWindowIcmps"] == mib["TcpExtOutOfWindowIcmps"] + 1
    assert peer.host.mib["IcmpInMsgs"] == mib["IcmpInMsgs"] + 1
    assert peer.host.mib["TcpRetransSegs"] == mib["TcpRetransSegs"]
    # And the connection is still usable at full size.
    peer.ack()
    assert peer.write(b"y" * 3000) == 3000
    assert [len(s.payload) for s in peer.new()] == [1460, 1460, 80]


def test_out_of_window_frag_needed_after_ack_quoting_old_data_changes_nothing():
    # A segment that was really sent and then ACKed: its quote is now stale.
    peer = _conn()
    old = peer.tp.snd_una
    peer.ack(dt=0.01)
    assert peer.write(b"x" * 1460) == 1460
    peer.new()
    before = _state(peer)
    assert _deliver(peer, _icmp(peer, mtu=576, seq=old)) == []
    assert _state(peer) == before
    assert peer.host.mib["TcpExtOutOfWindowIcmps"] == 1


# --- forged: an MTU that is not smaller than the path's ----------------------------------

@pytest.mark.parametrize("mtu", [1500, 1501, 9000, 0xFFFF])
def test_frag_needed_not_below_current_mtu_changes_nothing(mtu):
    peer = _conn()
    before = _state(peer)
    out = _deliver(peer, _icmp(peer, mtu=mtu))
    assert out == []
    assert _state(peer) == before
    assert peer.host.mib["TcpExtOutOfWindowIcmps"] == 0


@pytest.mark.parametrize("mtu", [1200, 1201, 1400])
def test_frag_needed_above_a_learned_pmtu_changes_nothing(mtu):
    # __ip_rt_update_pmtu(): "if (old_mtu < mtu) return;" against the learned 1200.
    peer = _conn()
    _deliver(peer, _icmp(peer, mtu=1200))
    assert peer.tp.mss_cache == 1160
    before = _state(peer)
    assert _deliver(peer, _icmp(peer, mtu=mtu)) == []
    assert _state(peer) == before


def test_second_smaller_frag_needed_lowers_again():
    peer = _conn()
    _deliver(peer, _icmp(peer, mtu=1200))
    out = _deliver(peer, _icmp(peer, mtu=1000))
    assert peer.tp.mss_cache == 960
    assert peer.host.route_mtu(REMOTE_IP) == 1000
    # Everything longer than 960 is resent at once, cut at 960. (Here, at srtt 10 ms,
    # tcp_tso_autosize() allows 2 segments per skb, so the 1460-byte skb goes whole: 960 + 500;
    # the script with max_segs 1 shows the per-skb cut.)
    assert out and all(len(s.payload) <= 960 for s in out)
    assert peer.rel(out[0].seq) == 1
    assert sum(len(s.payload) for s in out) == 1460


# --- forged: tiny MTUs (below 68, below ip_rt_min_pmtu 552) ------------------------------

TINY = [0, 40, 67, 68, 551]


@pytest.mark.parametrize("mtu", TINY)
def test_frag_needed_below_min_pmtu_is_clamped_to_552(mtu):
    # Linux does not ignore these: __ip_rt_update_pmtu() locks the route at 552, and
    # tcp_v4_mtu_reduced() then syncs the MSS to 552 - 40 = 512 and retransmits at once.
    peer = _conn()
    mib = peer.host.mib["TcpRetransSegs"]
    out = _deliver(peer, _icmp(peer, mtu=mtu))
    assert peer.tp.mss_cache == 512
    assert peer.host.route_mtu(REMOTE_IP) == 552
    assert peer.host.pmtu[REMOTE_IP].locked
    assert out and all(len(s.payload) <= 512 for s in out)
    assert sum(len(s.payload) for s in out) == 1460
    assert peer.host.mib["TcpRetransSegs"] > mib


def test_frag_needed_below_min_pmtu_with_mss_already_small_retransmits_nothing():
    # Peer MSS 500: tcp_sync_mss(552) leaves mss 500 and nothing is longer than it.
    peer = open_connection(mss=500, win=64000, sack=False)
    assert peer.write(b"x" * 500) == 500
    peer.new()
    out = _deliver(peer, _icmp(peer, mtu=40))
    assert out == []
    assert peer.tp.mss_cache == 500
    assert peer.tp.ca_state != TCP_CA_Loss


def test_frag_needed_below_min_pmtu_clears_df_on_the_locked_route():
    peer = _conn()
    out = _deliver(peer, _icmp(peer, mtu=67))
    assert out and peer.host.pmtu[REMOTE_IP].locked
    assert [s.df for s in out] == [False] * len(out)


def test_frag_needed_below_min_pmtu_records_no_soft_error():
    peer = _conn()
    assert _deliver(peer, _icmp(peer, mtu=67))
    assert peer.tp.sk_err_soft == 0


# --- forged: not our connection ------------------------------------------------------------

OTHER = {
    "other_local_port": {"sport": LOCAL_PORT + 1},
    "other_remote_port": {"dport": REMOTE_PORT + 1},
    "other_remote_addr": {"daddr": "192.0.2.99"},
    "other_local_addr": {"saddr": "192.168.0.2"},
    "ports_swapped": {"sport": REMOTE_PORT, "dport": LOCAL_PORT},
}


@pytest.mark.parametrize("case", sorted(OTHER))
def test_frag_needed_for_another_connection_changes_nothing(case):
    peer = _conn()
    before = _state(peer)
    out = _deliver(peer, _icmp(peer, mtu=576, **OTHER[case]))
    assert out == []
    assert _state(peer) == before
    assert peer.tp.mtu_info == 0


# --- forged: field values no decoder would produce ----------------------------------------

@pytest.mark.parametrize("field,value", [("mtu", -1), ("mtu", 0x10000), ("mtu", "1200"),
                                         ("mtu", None), ("q_seq", 1 << 32), ("q_seq", -1)])
def test_icmp_error_with_impossible_fields_is_dropped(field, value):
    peer = _conn()
    before = _state(peer)
    dropped = peer.host.mib["SendlabMalformedDropped"]
    err = _icmp(peer, mtu=1200)
    setattr(err, field, value)
    assert _deliver(peer, err) == []
    assert _state(peer) == before
    assert peer.host.mib["SendlabMalformedDropped"] == dropped + 1


# --- byte-level ICMP through Host.receive_ip ----------------------------------------------

def _our_segment_bytes(peer) -> bytes:
    """Our in-flight segment, as the IP packet the router would quote."""
    seg = peer.out[-1]
    assert seg.payload and seg.seq == peer.tp.snd_una
    return segment_to_ip(seg)


def _outer(icmp: bytes) -> bytes:
    return encode_ipv4(ip_to_bytes(ROUTER_IP), ip_to_bytes(LOCAL_IP), 1, icmp)


def _frag_needed_bytes(peer, mtu=1200) -> bytes:
    return _outer(build_frag_needed(mtu, _our_segment_bytes(peer)))


def _bad_checksum(peer) -> bytes:
    icmp = bytearray(build_frag_needed(1200, _our_segment_bytes(peer)))
    icmp[2] ^= 0x5A
    return _outer(bytes(icmp))


def _quote_of(peer, tcp_bytes: int) -> bytes:
    quoted = _our_segment_bytes(peer)
    ihl = (quoted[0] & 15) * 4
    return _outer(encode_icmp(3, 4, 1200, quoted[:ihl + tcp_bytes]))


def _quoted_ihl_below_5(peer) -> bytes:
    quoted = bytearray(_our_segment_bytes(peer)[:28])
    quoted[0] = 0x44
    return _outer(encode_icmp(3, 4, 1200, bytes(quoted)))


def _truncated_outer(peer) -> bytes:
    return _frag_needed_bytes(peer)[:30]


GARBAGE = {
    "bad_icmp_checksum": _bad_checksum,
    "quote_4_tcp_bytes": lambda p: _quote_of(p, 4),
    "quote_ip_header_only": lambda p: _quote_of(p, 0),
    "quoted_ihl_below_5": _quoted_ihl_below_5,
    "truncated_outer_packet": _truncated_outer,
    "random_bytes": lambda p: b"\x45\x00garbage",
}


def test_valid_frag_needed_bytes_are_acted_on():
    # The control for the garbage below: the same message, intact, lowers the MSS.
    peer = _conn()
    peer.host.receive_ip(_frag_needed_bytes(peer), peer.now)
    peer.collect()
    assert peer.tp.mss_cache == 1160
    assert [len(s.payload) for s in peer.new()] == [1160, 300]
    assert peer.host.mib["SendlabMalformedDropped"] == 0


def test_quote_with_exactly_8_tcp_bytes_is_enough():
    # icmp_socket_deliver() needs the IP header + 8 bytes: ports and sequence number.
    peer = _conn()
    peer.host.receive_ip(_quote_of(peer, 8), peer.now)
    peer.collect()
    assert peer.tp.mss_cache == 1160


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_icmp_bytes_change_nothing(case):
    peer = _conn()
    data = GARBAGE[case](peer)
    before = _state(peer)
    dropped = peer.host.mib["SendlabMalformedDropped"]
    peer.host.receive_ip(data, peer.now)
    peer.collect()
    assert peer.new() == []
    assert _state(peer) == before
    assert peer.host.mib["SendlabMalformedDropped"] == dropped + 1


# --- counters, as Linux keeps them --------------------------------------------------------

def _linux_counter_case(name):
    """(deliver(peer), {counter: expected increase}) for one ICMP, per Linux 6.12."""
    def err(**kw):
        return lambda p: p.host.receive_icmp(_icmp(p, **kw), p.now)

    def raw(make):
        return lambda p: p.host.receive_ip(make(p), p.now)

    cases = {
        # icmp_rcv(): InMsgs and the type-3 counter; tcp_v4_mtu_reduced() acts.
        "in_window": (err(mtu=1200), {"IcmpInMsgs": 1, "IcmpInDestUnreachs": 1,
                                      "IcmpInErrors": 0, "TcpExtOutOfWindowIcmps": 0}),
        # icmp_rcv() counts it before TCP looks at the sequence number.
        "out_of_window": (err(mtu=1200, seq=0), {"IcmpInMsgs": 1, "IcmpInDestUnreachs": 1,
                                                "IcmpInErrors": 0,
                                                "TcpExtOutOfWindowIcmps": 1}),
        # tcp_v4_err(): __inet_lookup_established() finds nothing -> ICMP_MIB_INERRORS.
        "no_socket_local_port": (err(sport=LOCAL_PORT + 1),
                                 {"IcmpInMsgs": 1, "IcmpInDestUnreachs": 1, "IcmpInErrors": 1}),
        # The listener's port with another peer: still no *established* socket.
        "no_socket_listener_port": (err(dport=REMOTE_PORT + 1),
                                    {"IcmpInMsgs": 1, "IcmpInDestUnreachs": 1,
                                     "IcmpInErrors": 1}),
        # icmp_rcv(): skb_checksum_simple_validate() fails -> InCsumErrors and InErrors;
        # the IP header itself is fine.
        "bad_checksum_bytes": (raw(_bad_checksum), {"IcmpInMsgs": 1, "IcmpInErrors": 1,
                                                    "IcmpInCsumErrors": 1,
                                                    "IcmpInDestUnreachs": 0,
                                                    "IpInHdrErrors": 0}),
        # icmp_socket_deliver(): pskb_may_pull(ihl * 4 + 8) fails -> InErrors.
        "truncated_quote_bytes": (raw(lambda p: _quote_of(p, 4)),
                                  {"IcmpInMsgs": 1, "IcmpInDestUnreachs": 1, "IcmpInErrors": 1,
                                   "IpInHdrErrors": 0}),
    }
    return cases[name]


COUNTER_BUGS: dict[str, str] = {}   # fixed: counters now follow icmp.c and tcp_v4_err()

COUNTER_CASES = ["in_window", "out_of_window", "no_socket_local_port",
                 "no_socket_listener_port", "bad_checksum_bytes", "truncated_quote_bytes"]


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=COUNTER_BUGS[c])]
                 if c in COUNTER_BUGS else []) for c in COUNTER_CASES])
def test_icmp_counters_as_linux_keeps_them(case):
    peer = _conn()
    deliver, expected = _linux_counter_case(case)
    before = {name: peer.host.mib[name] for name in expected}
    deliver(peer)
    peer.collect()
    after = {name: peer.host.mib[name] - before[name] for name in expected}
    assert after == expected
