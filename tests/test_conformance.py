"""The stack against packetdrill scripts: every script passes, and the runner can fail.

Two sets of scripts run through ``stack.packetdrill.runner``:

- ``shared/conformance/*.pkt``: recorded on a real Linux 6.18 kernel (see its README);
- ``tests/pkt/*.pkt``: one rule each, derived from the Linux 6.x source (each script
  says which functions in a comment).

A passing script only means something if the runner fails when the stack does not
do what a line says. The mutation tests below alter shared scripts so that they
expect something Linux would not do, and check that each mutant fails at the line
that was altered, for the reason that was altered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.packetdrill.runner import run_script

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
LOCAL = Path(__file__).resolve().parent / "pkt"
SHARED_SCRIPTS = sorted(SHARED.glob("*.pkt")) if SHARED.is_dir() else []
LOCAL_SCRIPTS = sorted(LOCAL.glob("*.pkt"))
SHARED_MISSING = f"shared conformance scripts not found in {SHARED}"

needs_shared = pytest.mark.skipif(not SHARED_SCRIPTS, reason=SHARED_MISSING)

# Local scripts that fail because the stack differs from Linux:
# name -> (reason, the line at which the stack departs from Linux).
# Both tests below are strict: a fix makes them fail until the entry is removed.
# Scripts that fail because the stack departs from Linux: {name: (reason, the line that fails)}.
# Empty now: the quick-ACK accounting and the reset on data after close() were fixed.
STACK_BUGS: dict[str, tuple[str, str]] = {}


def _script_params(paths, missing_reason, bugs=None):
    if not paths:
        return [pytest.param(None, id="none", marks=pytest.mark.skip(reason=missing_reason))]
    bugs = bugs or {}
    return [pytest.param(p, id=p.name,
                         marks=[pytest.mark.xfail(reason=bugs[p.name][0], strict=True)]
                         if p.name in bugs else [])
            for p in paths]


def assert_passes(path: Path) -> None:
    result = run_script(path)
    assert result.passed, result.failure.render()


# --------------------------------------------------------------------------
# Every script passes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path", _script_params(SHARED_SCRIPTS, SHARED_MISSING))
def test_shared_script_passes(path):
    assert_passes(path)


@pytest.mark.parametrize("path", _script_params(LOCAL_SCRIPTS, f"no scripts in {LOCAL}",
                                                STACK_BUGS))
def test_local_script_passes(path):
    assert_passes(path)


@pytest.mark.parametrize("path", _script_params(LOCAL_SCRIPTS, f"no scripts in {LOCAL}"))
def test_local_script_follows_shared_conventions(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("// Asserts: ") and len(lines[0]) > len("// Asserts: ")
    assert lines[1].startswith("`sysctl -q net.ipv4.tcp_min_tso_segs=1")
    # One untimed init block, and nothing else untimed.
    assert sum(line.count("`") for line in lines) == 2


# --------------------------------------------------------------------------
# Mutants: the runner fails, at the right line, for the right reason
# --------------------------------------------------------------------------

class Mutant:
    """A copy of a script being edited line by line.

    Existing lines are named by their exact (stripped) text, which must be unique.
    Lines the mutant adds carry a trailing ``// mutated`` comment, so they stay
    unique even when they repeat a line of the script.
    """

    TAG = "  // mutated"

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.lines = path.read_text().splitlines()

    def _index(self, text: str) -> int:
        hits = [i for i, line in enumerate(self.lines) if line.strip() == text.strip()]
        assert len(hits) == 1, f"{text!r} matches {len(hits)} lines of {self.name}"
        return hits[0]

    def replace(self, old: str, new: str) -> "Mutant":
        self.lines[self._index(old)] = new + self.TAG
        return self

    def insert_after(self, anchor: str, new: str) -> "Mutant":
        self.lines.insert(self._index(anchor) + 1, new + self.TAG)
        return self

    def delete(self, old: str) -> "Mutant":
        del self.lines[self._index(old)]
        return self

    def append(self, new: str) -> "Mutant":
        self.lines.append(new + self.TAG)
        return self

    def line_of(self, text: str) -> int:
        """1-based line number of a line the mutant added, else of an original line."""
        tagged = (text + self.TAG).strip()
        if any(line.strip() == tagged for line in self.lines):
            return self._index(tagged) + 1
        return self._index(text) + 1

    def run(self, tmp_path: Path):
        path = tmp_path / self.name
        path.write_text("\n".join(self.lines) + "\n")
        return path, run_script(path)


def shared(name: str) -> Mutant:
    return Mutant(SHARED / name)


def assert_fails_at(mutant: Mutant, tmp_path: Path, blamed: str, *reasons: str):
    """The mutant fails at the line ``blamed``, and the report mentions each of ``reasons``."""
    path, result = mutant.run(tmp_path)
    assert not result.passed, f"mutant of {mutant.name} passed"
    failure = result.failure
    assert (failure.path, failure.line) == (str(path), mutant.line_of(blamed)), failure.render()
    text = failure.render()
    assert text.startswith(f"{path}:{failure.line}: ")
    for reason in reasons:
        assert reason in text, text


@needs_shared
def test_nagle_hold_released_only_by_ack_mutant_fails(tmp_path):
    # Expect the Nagle-held 80-byte write to leave at once.
    early = "   +0 > P. 121:201(80) ack 1"
    m = shared("nagle_hold_until_ack.pkt").insert_after(" +.01 write(4, ..., 80) = 80", early)
    assert_fails_at(m, tmp_path, early, "expected outbound packet was not sent",
                    "P. 121:201(80) ack 1", "(nothing)")


@needs_shared
def test_minshall_ack_of_full_segment_does_not_release_mutant_fails(tmp_path):
    early = "   +0 > P. 1101:1201(100) ack 1"
    m = shared("nagle_minshall_full_vs_small.pkt").insert_after(
        " +.02 < . 1:1(0) ack 1001 win 257", early)
    assert_fails_at(m, tmp_path, early, "expected outbound packet was not sent")


@needs_shared
def test_corked_tail_held_after_everything_acked_mutant_fails(tmp_path):
    early = "   +0 > P. 2901:3401(500) ack 1"
    m = shared("cork_hold_flush_full_mss.pkt").insert_after(
        " +.05 < . 1:1(0) ack 2901 win 257", early)
    assert_fails_at(m, tmp_path, early, "expected outbound packet was not sent")


@needs_shared
def test_uncork_flush_carries_psh_mutant_fails(tmp_path):
    no_psh = "   +0 > . 1:901(900) ack 1"
    m = shared("cork_hold_flush_full_mss.pkt").replace("   +0 > P. 1:901(900) ack 1", no_psh)
    assert_fails_at(m, tmp_path, no_psh, "outbound packet mismatch (flags)",
                    "expected: . 1:901(900) ack 1", "actual:   P. 1:901(900) ack 1")


@needs_shared
def test_nodelay_flush_of_msg_more_data_has_no_psh_mutant_fails(tmp_path):
    psh = "   +0 > P. 701:901(200) ack 1"
    m = shared("msg_more_release_paths.pkt").replace("   +0 > . 701:901(200) ack 1", psh)
    assert_fails_at(m, tmp_path, psh, "outbound packet mismatch (flags)")


@needs_shared
def test_ack_release_of_msg_more_tail_timing_mutant_fails(tmp_path):
    # The ACK releases the held tail at once, not 20 ms later.
    late = " +.02 > . 1901:2201(300) ack 1"
    m = shared("msg_more_release_paths.pkt").replace("   +0 > . 1901:2201(300) ack 1", late)
    assert_fails_at(m, tmp_path, late, "outbound packet at the wrong time")


@needs_shared
def test_probe0_fires_after_rto_not_earlier_window_mutant_fails(tmp_path):
    moved = "+.150~+.160 > P. 1:501(500) ack 1"
    m = shared("probe0_msg_more_lone_segment.pkt").replace(
        "+.112~+.116 > P. 1:501(500) ack 1", moved)
    assert_fails_at(m, tmp_path, moved, "outbound packet at the wrong time")


@needs_shared
def test_eor_record_never_merged_mutant_fails(tmp_path):
    # Expect the 200-byte EOR record and the 300-byte write as one 500-byte segment.
    merged = "   +0 > P. 701:1201(500) ack 1"
    m = (shared("eor_nagle_no_coalesce.pkt")
         .replace("   +0 > P. 701:901(200) ack 1", merged)
         .delete("   +0 > P. 901:1201(300) ack 1"))
    assert_fails_at(m, tmp_path, merged, "outbound packet mismatch (seq)",
                    "actual:   P. 701:901(200) ack 1")


@needs_shared
def test_nonblocking_write_returns_exactly_26000_mutant_fails(tmp_path):
    wrong = "   +0 write(4, ..., 100000) = 26001"
    m = shared("sndbuf_partial_write_eagain.pkt").replace(
        "   +0 write(4, ..., 100000) = 26000", wrong)
    assert_fails_at(m, tmp_path, wrong, "write() returned the wrong value",
                    "expected: 26001", "actual:   26000")


@needs_shared
def test_full_send_buffer_errno_is_eagain_mutant_fails(tmp_path):
    wrong = " +.01 write(4, ..., 1000) = -1 EPIPE (Broken pipe)"
    m = shared("sndbuf_partial_write_eagain.pkt").replace(
        " +.01 write(4, ..., 1000) = -1 EAGAIN (Resource temporarily unavailable)", wrong)
    assert_fails_at(m, tmp_path, wrong, "write() returned the wrong value",
                    "expected: -1 EPIPE", "actual:   -1 EAGAIN")


@needs_shared
def test_synack_window_scale_is_8_mutant_fails(tmp_path):
    wscale7 = "   +0 > S. 0:0(0) ack 1 <mss 1460,nop,wscale 7>"
    m = shared("nagle_hold_until_ack.pkt").replace(
        "   +0 > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>", wscale7)
    assert_fails_at(m, tmp_path, wscale7, "outbound packet mismatch (options)")


@needs_shared
def test_synack_mss_follows_local_mtu_mutant_fails(tmp_path):
    mss1460 = "   +0 > S. 0:0(0) ack 1 win 65535 <mss 1460,nop,nop,sackOK,nop,wscale 8>"
    m = shared("mss_local_mtu1280_server.pkt").replace(
        "   +0 > S. 0:0(0) ack 1 win 65535 <mss 1240,nop,nop,sackOK,nop,wscale 8>", mss1460)
    assert_fails_at(m, tmp_path, mss1460, "outbound packet mismatch (options)",
                    "mss 1240")


@needs_shared
def test_outbound_ack_number_is_checked_mutant_fails(tmp_path):
    wrong_ack = "   +0 > P. 1001:1101(100) ack 2"
    m = shared("nagle_minshall_full_vs_small.pkt").replace(
        "   +0 > P. 1001:1101(100) ack 1", wrong_ack)
    assert_fails_at(m, tmp_path, wrong_ack, "outbound packet mismatch (ack)")


@needs_shared
def test_mss_after_frag_needed_is_1160_mutant_fails(tmp_path):
    wrong = "   +0 getsockopt(4, SOL_TCP, TCP_MAXSEG, [1200], [4]) = 0"
    m = shared("icmp_frag_needed_mtu1200.pkt").replace(
        "   +0 getsockopt(4, SOL_TCP, TCP_MAXSEG, [1160], [4]) = 0", wrong)
    assert_fails_at(m, tmp_path, wrong, "getsockopt() returned the wrong option value",
                    "[1200]", "[1160]")


@needs_shared
def test_initial_window_is_ten_segments_mutant_fails(tmp_path):
    eleventh = "   +0 > . 14481:15929(1448) ack 1 <nop,nop,TS val 200 ecr 5000>"
    m = shared("syn_options_client_ts_iw10.pkt").insert_after(
        "   +0 > . 13033:14481(1448) ack 1 <nop,nop,TS val 200 ecr 5000>", eleventh)
    assert_fails_at(m, tmp_path, eleventh, "expected outbound packet was not sent")


@needs_shared
def test_extra_expected_packet_that_never_comes_mutant_fails(tmp_path):
    extra = "   +0 > P. 1061:1161(100) ack 1"
    m = shared("nagle_hold_until_ack.pkt").append(extra)
    assert_fails_at(m, tmp_path, extra, "expected outbound packet was not sent")


@needs_shared
def test_dropped_expected_segment_shifts_the_rest_mutant_fails(tmp_path):
    # Without the line for 1901:2901, that segment is matched against the next line.
    m = shared("cork_hold_flush_full_mss.pkt").delete("   +0 > . 1901:2901(1000) ack 1")
    assert_fails_at(m, tmp_path, "   +0 > . 2901:3901(1000) ack 1",
                    "outbound packet mismatch (seq)", "actual:   . 1901:2901(1000) ack 1")


def test_dropped_first_retransmission_timing_mutant_fails(tmp_path):
    # Without the first RTO line, the second one (428..456 ms after the first)
    # meets the first retransmission, 212..216 ms after the send.
    m = Mutant(LOCAL / "rto_retransmit_backoff.pkt").delete(
        "+.212~+.216 > P. 1:101(100) ack 1")
    assert_fails_at(m, tmp_path, "+.428~+.456 > P. 1:101(100) ack 1",
                    "outbound packet at the wrong time")


@needs_shared
def test_unexpected_extra_outbound_packet_alone_does_not_fail(tmp_path):
    # packetdrill's rule, kept by the runner: a held segment leaving early is
    # caught by the next '>' line, not by the packet itself. Dropping the last
    # expected segment leaves a packet nobody expects, and the script passes.
    m = shared("nagle_hold_until_ack.pkt").delete("   +0 > P. 761:1061(300) ack 1")
    _, result = m.run(tmp_path)
    assert result.passed, result.failure.render()


# --------------------------------------------------------------------------
# Scripts the runner cannot run
# --------------------------------------------------------------------------

HEADER = ("// Asserts: a script for the runner's error paths.\n"
          "`sysctl -q net.ipv4.tcp_min_tso_segs=1`\n")


def test_syntax_error_fails_naming_file_and_line(tmp_path):
    path = tmp_path / "bad_syntax.pkt"
    path.write_text(HEADER + "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                    "   +0 > P. 1:101(99) ack 1\n")
    result = run_script(path)
    assert not result.passed
    assert (result.failure.path, result.failure.line) == (str(path), 4)
    text = result.failure.render()
    assert text.startswith(f"{path}:4: syntax error:")
    assert "inconsistent TCP sequence numbers" in text


@needs_shared
def test_syntax_error_in_shared_script_copy_names_its_line(tmp_path):
    broken = "   +0 wirte(4, ..., 120 = 120"
    m = shared("nagle_hold_until_ack.pkt").replace("   +0 write(4, ..., 120) = 120", broken)
    path, result = m.run(tmp_path)
    assert not result.passed
    assert (result.failure.path, result.failure.line) == (str(path), m.line_of(broken))
    assert "syntax error" in result.failure.render()


def test_unsupported_shell_command_fails_clearly(tmp_path):
    path = tmp_path / "qdisc.pkt"
    path.write_text("// Asserts: needs a qdisc the runner does not model.\n"
                    "`sysctl -q net.ipv4.tcp_min_tso_segs=1\n"
                    "tc qdisc replace dev tun0 root fq`\n"
                    "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n")
    result = run_script(path)
    assert not result.passed
    assert (result.failure.path, result.failure.line) == (str(path), 2)
    assert "unsupported shell command 'tc qdisc replace dev tun0 root fq'" in \
        result.failure.render()


def test_missing_script_fails_naming_it(tmp_path):
    path = tmp_path / "absent.pkt"
    result = run_script(path)
    assert not result.passed
    assert result.failure.path == str(path)
    assert "cannot read" in result.failure.render()


# --------------------------------------------------------------------------
# packetdrill's aggregation: one line may match several packets in sequence
# --------------------------------------------------------------------------

AGG_FIRST = "   +0 > . 1461:2621(1160) ack 1"
AGG_LAST = "   +0 > P. 2621:2921(300) ack 1"


def local(name: str) -> Mutant:
    return Mutant(LOCAL / name)


def test_a_line_expecting_more_payload_takes_the_packets_that_follow(tmp_path):
    """As packetdrill without --strict_segments (checked on Linux 6.18 with this very
    edit): 1160 + 300 in sequence match one 1460-byte line, flags from the last."""
    m = (local("ip_pmtudisc_dont_keeps_mss_after_frag_needed.pkt")
         .replace(AGG_FIRST, "   +0 > P. 1461:2921(1460) ack 1").delete(AGG_LAST))
    path, result = m.run(tmp_path)
    assert result.passed, result.failure.render()


def test_aggregation_that_cannot_add_up_fails_on_the_first_packet(tmp_path):
    too_long = "   +0 > P. 1461:3001(1540) ack 1"
    m = (local("ip_pmtudisc_dont_keeps_mss_after_frag_needed.pkt")
         .replace(AGG_FIRST, too_long).delete(AGG_LAST))
    assert_fails_at(m, tmp_path, too_long, "outbound packet mismatch",
                    "actual:   . 1461:2621(1160) ack 1")


def test_packetdrill_setup_helpers_are_understood(tmp_path):
    """Google's scripts start with `../common/defaults.sh` (the runner's defaults already) and
    set sysctls with set_sysctls.py /proc/sys/... paths, restored by a script at the end."""
    path = tmp_path / "helpers.pkt"
    path.write_text(
        "`../common/defaults.sh\n"
        "../common/set_sysctls.py /proc/sys/net/ipv4/tcp_timestamps=0 \\\n"
        "    /proc/sys/net/ipv4/tcp_min_tso_segs=1`\n"
        "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
        "   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0\n"
        "   +0 bind(3, ..., ...) = 0\n"
        "   +0 listen(3, 1) = 0\n"
        "   +0 < S 0:0(0) win 32792 <mss 1000,sackOK,TS val 1 ecr 0,nop,wscale 7>\n"
        "   +0 > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>\n"
        "`/tmp/sysctl_restore_${PPID}.sh`\n")
    result = run_script(path)
    assert result.passed, result.failure.render()
    # With timestamps left on, the SYN-ACK would carry them: the same script fails.
    path.write_text(path.read_text().replace("tcp_timestamps=0", "tcp_timestamps=1"))
    assert not run_script(path).passed


CODE_SCRIPT = """`sysctl -q net.ipv4.tcp_min_tso_segs=1`
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 32792 <mss 1000,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
  +.1 < . 1:1(0) ack 1 win 257
   +0 accept(3, ..., ...) = 4
   +0 %{ cwnd = 10 }%
   +0 %{
assert tcpi_snd_cwnd == cwnd, tcpi_snd_cwnd
assert tcpi_snd_ssthresh == TCP_INFINITE_SSTHRESH
assert tcpi_ca_state == TCP_CA_Open
}%
"""


def test_code_blocks_check_tcp_info_and_share_variables(tmp_path):
    path = tmp_path / "code.pkt"
    path.write_text(CODE_SCRIPT)
    result = run_script(path)
    assert result.passed, result.failure.render()
    path.write_text(CODE_SCRIPT.replace("cwnd = 10", "cwnd = 11"))
    failure = run_script(path).failure
    assert failure is not None and failure.line == 11
    assert "assertion failed" in failure.message and "10" in failure.message


@pytest.mark.parametrize("code", ["import os", "().__class__", "open('/etc/passwd')",
                                  "(lambda: 1)()"])
def test_code_blocks_cannot_reach_beyond_numbers(tmp_path, code):
    path = tmp_path / "evil.pkt"
    path.write_text(CODE_SCRIPT.replace("cwnd = 10", code))
    failure = run_script(path).failure
    assert failure is not None and failure.line == 10, failure
    assert "code block" in failure.message


def test_script_fd_numbers_are_mapped_like_packetdrill(tmp_path):
    """packetdrill maps a script's descriptor numbers onto the kernel's: socket() = 7 is fine."""
    path = tmp_path / "fd.pkt"
    path.write_text(CODE_SCRIPT.replace("= 3\n", "= 7\n", 1).replace("(3,", "(7,"))
    result = run_script(path)
    assert result.passed, result.failure.render()


def test_gso_off_leaves_tcp_building_gso_packets(tmp_path):
    """`ethtool -K tun0 tso off gso off` does not stop TCP's GSO (sk_setup_caps() forces it):
    with TCP_NODELAY a 2002-byte write at MSS 974 leaves as a two-segment packet, cut in
    software (974, then 974 with the GSO packet's PSH), and the 54-byte tail, as Linux 6.18
    sends it (packetdrill's nagle/https_client.pkt)."""
    path = tmp_path / "gso.pkt"
    path.write_text("""`ethtool -K tun0 tso off gso off
sysctl -q net.ipv4.tcp_timestamps=0`
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 4
   +0 fcntl(4, F_SETFL, O_RDWR|O_NONBLOCK) = 0
   +0 setsockopt(4, SOL_TCP, TCP_NODELAY, [1], 4) = 0
   +0 connect(4, ..., ...) = -1 EINPROGRESS (Operation now in progress)
   +0 > S 0:0(0) <mss 1460,nop,nop,sackOK,nop,wscale 8>
  +.1 < S. 0:0(0) ack 1 win 5792 <mss 974,nop,nop,sackOK,nop,wscale 7>
   +0 > . 1:1(0) ack 1
   +0 write(4, ..., 2002) = 2002
   +0 > . 1:975(974) ack 1
   +0 > P. 975:1949(974) ack 1
   +0 > P. 1949:2003(54) ack 1
""")
    result = run_script(path)
    assert result.passed, result.failure.render()
