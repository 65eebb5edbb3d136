"""Tests for stack.packetdrill: the shared conformance scripts plus one
small inline script per grammar rule and per error path."""

import pickle
from pathlib import Path

import pytest

from stack.packetdrill import (
    AnyOptions, CodeBlock, Elided, IcmpPacket, IntList, IovecList, MsgHdr, PollFd, PollFdList,
    PacketdrillSyntaxError, QuotedTcp, Script, ShellCommand, String, Symbol,
    Syscall, TcpOpt, TcpPacket, TimeSpec, parse_file, parse_script,
)

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
SCRIPTS = sorted(CONFORMANCE.glob("*.pkt")) if CONFORMANCE.is_dir() else []
needs_conformance = pytest.mark.skipif(
    not SCRIPTS, reason=f"conformance scripts not found in {CONFORMANCE}")


def event(src: str):
    """The single event of a one-event script."""
    events = parse_script(src).events
    assert len(events) == 1
    return events[0]


def syntax_error(src: str) -> PacketdrillSyntaxError:
    with pytest.raises(PacketdrillSyntaxError) as info:
        parse_script(src, "t.pkt")
    return info.value


def load(name: str) -> Script:
    return parse_file(CONFORMANCE / name)


def of_type(script: Script, cls) -> list:
    return [e for e in script.events if isinstance(e, cls)]


# --------------------------------------------------------------------------
# Conformance scripts
# --------------------------------------------------------------------------

@needs_conformance
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_conformance_script_parses(path):
    script = parse_file(path)
    assert script.path == str(path)
    assert script.asserts and not script.asserts.startswith("Asserts")
    init = script.events[0]
    assert isinstance(init, ShellCommand) and init.time is None
    assert "sysctl -q net.ipv4.tcp_min_tso_segs=1" in init.commands
    timed = script.events[1:]
    assert all(e.time is not None for e in timed)
    assert timed[0].time == TimeSpec("absolute", 0.0)
    # Every line that starts with a time is exactly one event.
    lines = path.read_text().splitlines()
    starts = [n for n, s in enumerate(lines, 1)
              if s.strip() and s.strip()[0] in "+0123456789*"]
    assert [e.line for e in timed] == starts


@needs_conformance
def test_probe0_time_range():
    script = load("probe0_msg_more_lone_segment.pkt")
    probe = next(e for e in script.events if e.time and e.time.end is not None)
    assert probe.time == TimeSpec("relative", 0.112, 0.116)
    assert (probe.direction, probe.flags) == (">", "P.")
    assert (probe.seq_start, probe.seq_end, probe.payload_len) == (1, 501, 500)
    assert probe.ack == 1 and probe.win is None and probe.options is None
    assert probe.line == 22
    small = [e for e in of_type(script, Syscall) if e.time.start == 0.005]
    assert small[0].args == (4, Elided, 100, Symbol(("MSG_MORE",)))


@needs_conformance
def test_sendmsg_iovecs():
    script = load("msg_more_release_paths.pkt")
    sendmsg = next(e for e in of_type(script, Syscall) if e.name == "sendmsg")
    assert sendmsg.args == (4, MsgHdr((100, 200), 0), Symbol(("MSG_MORE",)))
    assert sendmsg.result == 300 and sendmsg.time == TimeSpec("relative", 0.02)
    eor = next(e for e in of_type(load("eor_nagle_no_coalesce.pkt"), Syscall)
               if e.name == "sendmsg")
    assert eor.args[1] == MsgHdr((150, 150), 0)
    assert eor.args[2] == Symbol(("MSG_EOR",))


@needs_conformance
def test_syn_ack_option_order():
    script = load("mss_local_mtu1280_server.pkt")
    syn, synack = of_type(script, TcpPacket)[:2]
    assert syn.options == (TcpOpt("mss", 1460), TcpOpt("sackOK"), TcpOpt("nop"),
                           TcpOpt("nop"), TcpOpt("nop"), TcpOpt("wscale", 7))
    assert (synack.direction, synack.flags, synack.ack, synack.win) == (">", "S.", 1, 65535)
    assert [o.kind for o in synack.options] == [
        "mss", "nop", "nop", "sackOK", "nop", "wscale"]
    assert synack.options[0].value == 1240 and synack.options[-1].value == 8
    assert script.events[0].commands == (
        "ip link set dev tun0 mtu 1280", "sysctl -q net.ipv4.tcp_sack=1",
        "sysctl -q net.ipv4.tcp_min_tso_segs=1")


@needs_conformance
def test_timestamps_and_connect_einprogress():
    script = load("syn_options_client_ts_iw10.pkt")
    connect = next(e for e in of_type(script, Syscall) if e.name == "connect")
    assert (connect.result, connect.errno, connect.errno_text) == (
        -1, "EINPROGRESS", "Operation now in progress")
    syn = of_type(script, TcpPacket)[0]
    assert syn.options[2] == TcpOpt("TS", (100, 0))
    last = of_type(script, TcpPacket)[-1]
    assert last.win == 1024 and last.options[-1] == TcpOpt("TS", (5100, 250))
    maxseg = next(e for e in of_type(script, Syscall) if e.name == "getsockopt")
    assert maxseg.args == (3, Symbol(("SOL_TCP",)), Symbol(("TCP_MAXSEG",)),
                           IntList((1448,)), IntList((4,)))


@needs_conformance
def test_icmp_quoted_header_and_mtu():
    icmp, = of_type(load("icmp_frag_needed_mtu1200.pkt"), IcmpPacket)
    assert (icmp.direction, icmp.icmp_type, icmp.code, icmp.mtu) == (
        "<", "unreachable", "frag_needed", 1200)
    assert icmp.quoted == QuotedTcp(1, 1461, 1460, None)
    assert icmp.line == 21 and icmp.time == TimeSpec("relative", 0.01)


@needs_conformance
def test_eagain_results():
    script = load("sndbuf_partial_write_eagain.pkt")
    failing = [e for e in of_type(script, Syscall) if e.errno]
    assert [(e.name, e.result, e.errno, e.errno_text) for e in failing] == [
        ("write", -1, "EAGAIN", "Resource temporarily unavailable"),
        ("send", -1, "EAGAIN", "Resource temporarily unavailable")]
    write = next(e for e in of_type(script, Syscall) if e.result == 26000)
    assert write.args == (4, Elided, 100000)
    fcntl = next(e for e in of_type(script, Syscall) if e.name == "fcntl")
    assert fcntl.args[2] == Symbol(("O_RDWR", "O_NONBLOCK"))
    assert len([p for p in of_type(script, TcpPacket) if p.direction == ">"]) == 28


# --------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0", TimeSpec("absolute", 0.0)),
    ("1.5", TimeSpec("absolute", 1.5)),
    ("+0", TimeSpec("relative", 0.0)),
    ("+0.0", TimeSpec("relative", 0.0)),
    ("+.1", TimeSpec("relative", 0.1)),
    ("+2", TimeSpec("relative", 2.0)),
    ("+.112~+.116", TimeSpec("relative", 0.112, 0.116)),
    ("0.1~0.2", TimeSpec("absolute", 0.1, 0.2)),
    ("*", TimeSpec("any", 0.0)),
])
def test_times(text, expected):
    assert event(f"{text} > . 1:1(0) ack 1").time == expected


def test_ranges_and_star_only_for_outbound_packets():
    assert "'*'" in syntax_error("* < . 1:1(0) ack 1").message
    assert syntax_error("+0~+1 write(3, ..., 1) = 1").line == 1
    assert "outbound" in syntax_error("0 close(3) = 0\n+0~+1 < . 1:1(0) ack 1").message


def test_backwards_range_and_negative_time():
    assert "backwards" in syntax_error("+.2~+.1 > . 1:1(0) ack 1").message
    assert "negative" in syntax_error("-1 write(3, ..., 1) = 1").message


def test_relative_range_needs_plus_on_both_ends():
    err = syntax_error("+.1~.2 > . 1:1(0) ack 1")
    assert err.line == 1 and "'+'" in err.message


# --------------------------------------------------------------------------
# TCP packets
# --------------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["S", "S.", "P.", ".", "F.", "F", "R", "R.",
                                   "SEW", "-", "U."])
def test_tcp_flags_as_written(flags):
    assert event(f"+0 < {flags} 0:0(0) win 100").flags == flags


def test_tcp_packet_fields():
    pkt = event("+0 < P. 1:1001(1000) ack 7 win 257")
    assert pkt == TcpPacket(1, TimeSpec("relative", 0.0), "<", "P.", 1, 1001,
                            1000, 7, 257, None)


def test_win_and_ack_omitted():
    pkt = event("0 > S 0:0(0) <mss 1460>")
    assert pkt.ack is None and pkt.win is None
    assert pkt.options == (TcpOpt("mss", 1460),)


def test_options_nop_eol_wscale_sackok():
    pkt = event("0 > S 0:0(0) <nop,eol,wscale 14,sackOK>")
    assert pkt.options == (TcpOpt("nop"), TcpOpt("eol"), TcpOpt("wscale", 14),
                           TcpOpt("sackOK"))


def test_options_sack_blocks():
    pkt = event("+0 < . 1:1(0) ack 1 win 257 <nop,nop,sack 1001:2001 3001:4001>")
    assert pkt.options[-1] == TcpOpt("sack", ((1001, 2001), (3001, 4001)))


def test_options_ts_val_ecr():
    pkt = event("+0 < . 1:1(0) ack 1 win 257 <nop,nop,TS val 5050 ecr 200>")
    assert pkt.options[2] == TcpOpt("TS", (5050, 200))


def test_any_options_outbound():
    pkt = event("+0 > S. 0:0(0) ack 1 <...>")
    assert pkt.options is AnyOptions and isinstance(pkt.options, AnyOptions)


def test_any_options_inbound_is_an_error():
    assert "outbound" in syntax_error("+0 < S 0:0(0) win 1 <...>").message


def test_unknown_tcp_options_keep_their_text():
    pkt = event("+0 < S 0:0(0) win 1 <mss 1000,FO 0102030405060708,nop>")
    assert pkt.options[1] == TcpOpt("unknown", "FO 0102030405060708")


def test_empty_option_list_is_not_none():
    with pytest.raises(PacketdrillSyntaxError):
        parse_script("+0 > S 0:0(0) <>")


def test_payload_length_mismatch():
    err = syntax_error("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                       "+0 > P. 1:101(99) ack 1\n")
    assert err.line == 2 and "inconsistent" in err.message
    assert str(err) == f"t.pkt:2: {err.message}"


@pytest.mark.parametrize("src, fragment", [
    ("+0 > X. 1:1(0) ack 1", "invalid TCP flags"),
    ("+0 > . 1:1(0) ack 1 <mss 1460,bogus>", "unknown TCP option"),
    ("+0 > . 1:1(0) ack 99999999999", "out of range"),
    ("+0 > . 1:1(0) ack 1 win 70000", "out of range"),
    ("+0 > . 1:1(0) ack 1 urg 5", "urg"),
    ("+0 > [ect0] . 1:1(0) ack 1", "ECN"),
    ("+0 > udp (10)", "udp"),
    ("+0 > 8080>80 . 1:1(0) ack 1", "port"),
    ("+0 > . 1:1(0) ack 1 win 5 ack 2", "unexpected 'ack'"),
])
def test_unsupported_or_invalid_packets(src, fragment):
    err = syntax_error(src)
    assert err.line == 1 and fragment in err.message


# --------------------------------------------------------------------------
# ICMP packets
# --------------------------------------------------------------------------

def test_icmp_outbound_port_unreachable():
    pkt = event("+0 > icmp unreachable port_unreachable")
    assert pkt == IcmpPacket(1, TimeSpec("relative", 0.0), ">", "unreachable",
                             "port_unreachable", None, None)


def test_icmp_without_code_and_with_flags_in_quote():
    pkt = event("+0 < icmp time_exceeded [S 0:0(0)]")
    assert pkt.code is None and pkt.quoted == QuotedTcp(0, 0, 0, "S")


def test_icmp_numeric_type_and_code():
    pkt = event("+0 < icmp type_3 code_4 [P. 1:11(10)]")
    assert (pkt.icmp_type, pkt.code, pkt.quoted.flags) == ("type_3", "code_4", "P.")


def test_icmp_packet_too_big_mtu():
    assert event("+0 < icmp packet_too_big mtu 1280").mtu == 1280


@pytest.mark.parametrize("src, fragment", [
    ("+0 < icmp bogus", "unknown ICMP type"),
    ("+0 < icmp unreachable frag_nedded", "unknown ICMP code"),
    ("+0 < icmp unreachable port_unreachable mtu 1200", "mtu"),
    ("+0 < icmp unreachable frag_needed mtu 1200 [1:1461(1400)]", "inconsistent"),
    ("+0 < icmp unreachable [udp (10)]", "udp"),
])
def test_icmp_errors(src, fragment):
    err = syntax_error(src)
    assert err.line == 1 and fragment in err.message


# --------------------------------------------------------------------------
# System calls
# --------------------------------------------------------------------------

def test_read_shutdown_close():
    script = parse_script("0 read(4, ..., 1000) = 1000\n"
                          "+0 shutdown(4, SHUT_WR) = 0\n"
                          "+0 close(4) = 0\n")
    read, shutdown, close = script.events
    assert (read.name, read.args, read.result) == ("read", (4, Elided, 1000), 1000)
    assert shutdown.args == (4, Symbol(("SHUT_WR",)))
    assert close.args == (4,) and close.line == 3


def test_getsockopt_and_setsockopt_lists():
    get = event("+0 getsockopt(4, SOL_SOCKET, SO_SNDBUF, [20000], [4]) = 0")
    assert get.args[3:] == (IntList((20000,)), IntList((4,)))
    put = event("+0 setsockopt(4, SOL_TCP, TCP_MAXSEG, [1100], 4) = 0")
    assert put.args == (4, Symbol(("SOL_TCP",)), Symbol(("TCP_MAXSEG",)),
                        IntList((1100,)), 4)


def test_hex_result_with_note():
    call = event("+0 fcntl(3, F_GETFL) = 0x2 (flags O_RDWR)")
    assert (call.result, call.errno, call.errno_text, call.note) == (
        2, None, None, "flags O_RDWR")


def test_errno_text_and_note_together():
    call = event("+0 write(4, ..., 1000) = -1 EAGAIN (Resource temporarily "
                 "unavailable) (the buffer is full)")
    assert call.errno_text == "Resource temporarily unavailable"
    assert call.note == "the buffer is full"


def test_errno_without_text():
    call = event("+0 connect(3, ..., ...) = -1 ECONNREFUSED")
    assert (call.errno, call.errno_text) == ("ECONNREFUSED", None)


def test_writev_iovec_list_and_empty_args():
    call = event("+0 writev(4, [{..., 100}, {..., 200}], 2) = 300")
    assert call.args == (4, IovecList((100, 200)), 2)
    assert event("+0 getpid() = 7").args == ()


def test_hex_args_strings_and_empty_list():
    call = event('+0 foo(0x10, "ab" "cd", [], [1, 0x2, -3]) = 0')
    assert call.args == (16, String("abcd"), IntList(()), IntList((1, 2, -3)))


def test_blocking_syscall_end_time():
    call = event("+.1...0.200 accept(3, ..., ...) = 4")
    assert call.time == TimeSpec("relative", 0.1) and call.end_time == 0.2


def test_elided_sentinel():
    assert Elided() is Elided and isinstance(Elided, Elided)
    assert event("0 bind(3, ..., ...) = 0").args[1] is Elided


def test_msghdr_count_mismatch():
    err = syntax_error("+0 sendmsg(4, {msg_name(...)=..., msg_iov(2)="
                       "[{..., 100}], msg_flags=0}, 0) = 100")
    assert err.line == 1 and "msg_iov(2)" in err.message


@pytest.mark.parametrize("src, fragment", [
    ("+0 bind(3, {sa_family=AF_INET, sin_port=htons(8080)}, 16) = 0", "msghdr"),
    ("+0 setsockopt(3, SOL_SOCKET, SO_LINGER, {onoff=1, linger=0}, 8) = 0", "msghdr"),
    ("+0 foo(x=1) = 0", "not supported"),
    ("+0 foo(htons(1)) = 0", "not supported"),
    ("+0 foo(1|O_RDWR) = 0", "'|'"),
    ("+0 write(4, ..., 10)", "'='"),
    ("+0 write(4, ..., 10) = x", "return value"),
])
def test_syscall_errors(src, fragment):
    err = syntax_error(src)
    assert err.line == 1 and fragment in err.message


# --------------------------------------------------------------------------
# Shell commands, comments, layout
# --------------------------------------------------------------------------

def test_multiline_init_block_and_timed_command():
    script = parse_script("`sysctl -q a=1\n\n   sysctl -q b=2  \n`\n"
                          "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                          "+0 `ip link set dev tun0 mtu 1200\necho hi`\n"
                          "+0 close(3) = 0\n")
    init, _, timed, close = script.events
    assert init == ShellCommand(1, None, ("sysctl -q a=1", "sysctl -q b=2"))
    assert timed == ShellCommand(6, TimeSpec("relative", 0.0),
                                 ("ip link set dev tun0 mtu 1200", "echo hi"))
    assert close.line == 8


def test_cleanup_command_at_end():
    script = parse_script("0 close(3) = 0\n`echo done`\n")
    assert script.events[-1] == ShellCommand(2, None, ("echo done",))


def test_untimed_command_in_the_middle():
    err = syntax_error("0 close(3) = 0\n`echo hi`\n+0 close(4) = 0\n")
    assert err.line == 2 and "untimed" in err.message


def test_comments_everywhere():
    script = parse_script("// Asserts: comments vanish\n"
                          "/* block\n   comment */ 0 close(3) = 0 // trailing\n"
                          "+0 close(/* inline */ 4) = 0\n")
    assert script.asserts == "comments vanish"
    assert [e.line for e in script.events] == [3, 4]


def test_asserts_only_from_first_line():
    assert parse_script("\n// Asserts: late\n0 close(3) = 0").asserts is None


def test_crlf_line_endings():
    script = parse_script("// Asserts: x\r\n0 close(3) = 0\r\n+0 close(4) = 0\r\n")
    assert [e.line for e in script.events] == [2, 3]


def test_error_pickles_and_formats():
    err = PacketdrillSyntaxError("a.pkt", 7, "boom")
    assert str(err) == "a.pkt:7: boom"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.message) == ("a.pkt", 7, "boom")


# --------------------------------------------------------------------------
# Error line numbers
# --------------------------------------------------------------------------

HEADER = ("// Asserts: x\n"
          "`sysctl -q a=1`\n"
          "\n"
          "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n")  # lines 1-4


@pytest.mark.parametrize("body, line, fragment", [
    ("+0 > . 1:1(0) ack 1 <mss 1460\n+0 close(3) = 0\n", 5, "'>'"),
    ("+0 write(4, ..., 10 = 10\n+0 close(3) = 0\n", 5, "')'"),
    ("+0 setsockopt(4, SOL_TCP, TCP_CORK, [1, 4) = 0\n", 5, "']'"),
    ("+0 write(4, ..., 10) = -1 EAGAIN (Resource\n+0 close(3) = 0\n", 5, "')'"),
    ("\n+0 `echo never closed\n+0 close(3) = 0\n", 6, "unterminated"),
    ("+0 close(3) = 0\n/* open\n\n", 6, "unterminated"),
    ("+0 write(4, \"abc, 3) = 3\n", 5, "unterminated"),
    ("+0 close(3) = 0\n+0 frobnicate\n", 6, "packet"),
    ("+0 close(3) = 0\n\nsomething\n", 7, "event time"),
    ("+0 > . 1:1(0)\n+0 > P. 1:3(3) ack 1\n", 6, "inconsistent"),
    ("+0 > . 1:1(0) ack 1 <mss 1460, wscale 7\n", 5, "'>'"),
    ("%{ print(1) }%\n", 5, "%{"),
    ("+0 write(4, ..., 10) =\n", 5, "end of line"),
    ("+0 < icmp unreachable frag_needed mtu 1200 [1:1461(1460)\n", 5, "']'"),
])
def test_error_line_numbers(body, line, fragment):
    err = syntax_error(HEADER + body)
    assert err.line == line, str(err)
    assert fragment in err.message
    assert str(err).startswith(f"t.pkt:{line}: ")


def test_scripts_without_events():
    assert syntax_error("").line == 1
    err = syntax_error("// Asserts: nothing\n`sysctl -q a=1`\n")
    assert (err.line, err.message) == (1, "script has no events")


def test_option_lines_before_the_events_are_kept():
    script = parse_script("// x\n--tolerance_usecs=10000\n--tcp_ts_tick_usecs=1000\n"
                          "0 close(3) = 0\n")
    assert script.options == (("tolerance_usecs", "10000", 2), ("tcp_ts_tick_usecs", "1000", 3))


def test_code_blocks_keep_their_text_and_time():
    ev = event("+.1 %{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%")
    assert ev == CodeBlock(1, TimeSpec("relative", 0.1), " assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd ")
    assert "unterminated %{" in syntax_error("+0 %{ assert 1\n+0 close(3) = 0\n").message


def test_two_untimed_init_blocks():
    assert syntax_error("`a`\n`b`\n0 close(3) = 0\n").line == 2


def test_parse_file_reports_invalid_utf8(tmp_path):
    bad = tmp_path / "bad.pkt"
    bad.write_bytes(b"0 close(3) = 0\n+0 close(\xff) = 0\n")
    with pytest.raises(PacketdrillSyntaxError) as info:
        parse_file(bad)
    assert info.value.line == 2 and info.value.path == str(bad)


def test_poll_fd_array():
    ev = event("+0...0.05 poll([{fd=4, events=POLLIN|POLLOUT, revents=POLLOUT}, "
               "{fd=3, events=POLLIN, revents=0}], 2, 1000) = 1")
    assert ev.name == "poll" and ev.result == 1 and ev.end_time == 0.05
    assert ev.args == (PollFdList((PollFd(4, Symbol(("POLLIN", "POLLOUT")), Symbol(("POLLOUT",))),
                                   PollFd(3, Symbol(("POLLIN",)), 0))), 2, 1000)


def test_poll_fd_missing_revents_is_an_error_at_its_line():
    err = syntax_error("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                       "+0 poll([{fd=3, events=POLLIN}], 1, 0) = 0\n")
    assert err.line == 2 and "revents" in err.message
