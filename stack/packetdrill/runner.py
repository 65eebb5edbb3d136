"""Run packetdrill scripts against the stack on the virtual clock.

The script plays the remote peer and the application; the stack is one host
behind a tun-like device that completes transmission at once, in the
environment of ``shared/conformance/README.md`` (addresses, the sysctl
defaults of packetdrill's defaults.sh, packetdrill's timing tolerance and its
rules for relative times and ranges).

What packetdrill's own test suite uses is understood the way packetdrill does: a line may
match several packets that add up to it (unless ``--strict_segments``), script fd numbers
map onto the stack's, ``--tolerance_usecs``-style options, ``%{ }%`` code blocks against
the socket's TCP_INFO (``stack.packetdrill.code``), poll(), blocking calls that resume
when their socket is woken, and the setup helpers (defaults.sh, set_sysctls.py, sysctl,
``ip link ... mtu``, ``ethtool -K tun0 tso|gso``, a FIFO qdisc). The timer model is the
reference kernel's HZ=250 jiffies.
"""

from __future__ import annotations

import errno as _errno
import math
import shlex
from dataclasses import dataclass

from ..constants import (
    MSG_DONTWAIT, MSG_EOR, MSG_MORE, MSG_NOSIGNAL, MSG_OOB, MSG_PEEK, SO_KEEPALIVE, SO_RCVBUF,
    SO_REUSEADDR, SO_SNDBUF, SOL_SOCKET, SOL_TCP, TCP_CONGESTION, TCP_CORK, TCP_MAXSEG,
    TCP_LISTEN, TCP_NODELAY, TCP_NOTSENT_LOWAT, TCPHDR_ACK, TCPHDR_CWR, TCPHDR_ECE, TCPHDR_FIN, TCPHDR_PSH,
    TCPHDR_RST, TCPHDR_SYN, TCPHDR_URG, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI,
    POLLRDBAND, POLLRDHUP, POLLRDNORM, POLLWRBAND, POLLWRNORM, IP_MTU, IP_MTU_DISCOVER,
    IP_PMTUDISC_DO, IP_PMTUDISC_DONT, IP_PMTUDISC_INTERFACE, IP_PMTUDISC_OMIT, IP_PMTUDISC_PROBE,
    IP_PMTUDISC_WANT,
)
from ..debug import flags_str
from ..host import Host
from ..info import tcp_info
from ..segment import IcmpError, Segment
from ..socket import PollCall, Socket
from ..seq import seq_sub
from ..sysctl import Sysctl, SysctlError
from .code import CodeError, CodeRunner
from .parser import (
    AnyOptions, CodeBlock, Elided, IcmpPacket, IntList, IovecList, MsgHdr, PacketdrillSyntaxError,
    PollFdList, Script, ShellCommand, String, Symbol, Syscall, TcpPacket, parse_file,
)

LOCAL_IP = "192.168.0.1"
REMOTE_IP = "192.0.2.1"
LOCAL_PORT = 8080
REMOTE_PORT = 47123
REMOTE_ISN = 0x5EED0000

# net.ipv4 defaults packetdrill's defaults.sh applies in each namespace.
PACKETDRILL_SYSCTLS = {
    "net.ipv4.tcp_rmem": "4096 540000 15728640",
    "net.ipv4.tcp_wmem": "4096 262144 4194304",
    "net.ipv4.tcp_timestamps": 1, "net.ipv4.tcp_syn_retries": 5,
    "net.ipv4.tcp_synack_retries": 5, "net.ipv4.tcp_frto": 2, "net.ipv4.tcp_sack": 1,
    "net.ipv4.tcp_dsack": 1, "net.ipv4.tcp_reordering": 3,
    "net.ipv4.tcp_congestion_control": "cubic", "net.ipv4.tcp_slow_start_after_idle": 0,
    "net.ipv4.tcp_early_retrans": 4, "net.ipv4.tcp_recovery": 1,
    "net.ipv4.tcp_tso_win_divisor": 3, "net.ipv4.tcp_ecn": 0,
    "net.ipv4.tcp_pacing_ss_ratio": 200, "net.ipv4.tcp_pacing_ca_ratio": 120,
    "net.ipv4.tcp_notsent_lowat": 4294967295,
    "net.core.rmem_max": 212992, "net.core.wmem_max": 212992,
}

_FLAG_LETTERS = {"F": TCPHDR_FIN, "S": TCPHDR_SYN, "R": TCPHDR_RST, "P": TCPHDR_PSH,
                 ".": TCPHDR_ACK, "U": TCPHDR_URG, "E": TCPHDR_ECE, "W": TCPHDR_CWR}
_OPT_KINDS = {"eol": 0, "nop": 1, "mss": 2, "wscale": 3, "sackOK": 4, "sack": 5, "TS": 8}
_OPT_NAMES = {v: k for k, v in _OPT_KINDS.items()}

_SYMBOLS = {
    "SOL_SOCKET": SOL_SOCKET, "SOL_TCP": SOL_TCP, "IPPROTO_TCP": SOL_TCP,
    "SO_REUSEADDR": SO_REUSEADDR, "SO_SNDBUF": SO_SNDBUF, "SO_RCVBUF": SO_RCVBUF,
    "SO_KEEPALIVE": SO_KEEPALIVE,
    "TCP_NODELAY": TCP_NODELAY, "TCP_CORK": TCP_CORK, "TCP_MAXSEG": TCP_MAXSEG,
    "TCP_NOTSENT_LOWAT": TCP_NOTSENT_LOWAT, "TCP_CONGESTION": TCP_CONGESTION,
    "MSG_MORE": MSG_MORE, "MSG_EOR": MSG_EOR, "MSG_DONTWAIT": MSG_DONTWAIT,
    "MSG_NOSIGNAL": MSG_NOSIGNAL, "MSG_PEEK": MSG_PEEK, "MSG_OOB": MSG_OOB,
    "O_RDWR": 0o2, "O_RDONLY": 0, "O_WRONLY": 0o1, "O_NONBLOCK": 0o4000,
    "F_GETFL": 3, "F_SETFL": 4, "SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2,
    "SOCK_STREAM": 1, "AF_INET": 2, "PF_INET": 2, "IPPROTO_IP": 0,
    "SIOCINQ": 0x541B, "FIONREAD": 0x541B, "SIOCOUTQ": 0x5411, "TIOCOUTQ": 0x5411,
    "SIOCOUTQNSD": 0x894B,
    "POLLIN": POLLIN, "POLLPRI": POLLPRI, "POLLOUT": POLLOUT, "POLLERR": POLLERR,
    "POLLHUP": POLLHUP, "POLLNVAL": POLLNVAL, "POLLRDNORM": POLLRDNORM,
    "POLLRDBAND": POLLRDBAND, "POLLWRNORM": POLLWRNORM, "POLLWRBAND": POLLWRBAND,
    "POLLRDHUP": POLLRDHUP,
    "IP_MTU_DISCOVER": IP_MTU_DISCOVER, "IP_MTU": IP_MTU, "IP_PMTUDISC_DONT": IP_PMTUDISC_DONT,
    "IP_PMTUDISC_WANT": IP_PMTUDISC_WANT, "IP_PMTUDISC_DO": IP_PMTUDISC_DO,
    "IP_PMTUDISC_PROBE": IP_PMTUDISC_PROBE, "IP_PMTUDISC_INTERFACE": IP_PMTUDISC_INTERFACE,
    "IP_PMTUDISC_OMIT": IP_PMTUDISC_OMIT, "SOL_IP": 0,
}


def _join_continued(commands) -> list[str]:
    """Shell lines ending in a backslash continue on the next."""
    out, pending = [], ""
    for cmd in commands:
        if cmd.rstrip().endswith("\\"):
            pending += cmd.rstrip()[:-1] + " "
            continue
        out.append(pending + cmd)
        pending = ""
    if pending.strip():
        out.append(pending)
    return out


def _poll_names(mask: int) -> str:
    names = [n for n in ("POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP", "POLLNVAL",
                         "POLLRDNORM", "POLLRDBAND", "POLLWRNORM", "POLLWRBAND", "POLLRDHUP")
             if mask & _SYMBOLS[n]]
    return "|".join(names) or "0"


class ScriptFailure(Exception):
    """The stack did not do what the script says (or the script asks for what we cannot do)."""

    def __init__(self, path: str, line: int, message: str, expected: str = "",
                 actual: str = "") -> None:
        self.path = path
        self.line = line
        self.message = message
        self.expected = expected
        self.actual = actual
        super().__init__(self.render())

    def render(self) -> str:
        out = f"{self.path}:{self.line}: {self.message}"
        if self.expected or self.actual:
            out += f"\n    expected: {self.expected}\n    actual:   {self.actual}"
        return out


@dataclass
class Result:
    path: str
    passed: bool
    failure: ScriptFailure | None = None
    events: int = 0


class _Emitted:
    __slots__ = ("time", "seg")

    def __init__(self, time: float, seg: Segment) -> None:
        self.time = time
        self.seg = seg


class ScriptRunner:
    def __init__(self, script: Script, *, tolerance_usecs: int = 4000,
                 tolerance_percent: float = 12.5, seed: int = 1, tracer=None) -> None:
        self.script = script
        self.tracer = tracer           # a stack.trace.Tracer attached to the host, if any
        self.path = script.path
        self.tol_s = tolerance_usecs / 1e6
        self.tol_pct = tolerance_percent / 100.0
        self.sysctl = Sysctl()
        for key, value in PACKETDRILL_SYSCTLS.items():
            self.sysctl.set(key, value)
        self.mtu = 1500
        self.seed = seed
        self.code = CodeRunner()
        self.strict_segments = False
        self.host: Host | None = None
        self.now = 0.0
        self.fds: dict[int, Socket] = {}
        self.emitted: list[_Emitted] = []
        self.pending = None            # (Syscall, op) of a blocking call still running
        self.local_isn = None
        self.remote_isn = REMOTE_ISN
        self.remote_port = REMOTE_PORT
        self.local_port = LOCAL_PORT
        self.ts_map: dict[int, int] = {}
        self.prev_script_time = 0.0
        self.base_time = 0.0

    # --- top level ----------------------------------------------------------------------

    def run(self) -> Result:
        events = self.script.events
        try:
            self._options()
            for ev in events:
                if isinstance(ev, ShellCommand) and ev.time is None:
                    self._shell(ev)
            self.host = Host(LOCAL_IP, name="sut", mtu=self.mtu, sysctl=self.sysctl,
                             seed=self.seed, tracer=self.tracer)
            for ev in events:
                if isinstance(ev, ShellCommand) and ev.time is None:
                    continue
                self._event(ev)
            self._finish_pending(None)
        except ScriptFailure as failure:
            return Result(self.path, False, failure, len(events))
        return Result(self.path, True, None, len(events))

    def _fail(self, line: int, message: str, expected: str = "", actual: str = ""):
        raise ScriptFailure(self.path, line, message, expected, actual)

    # --- time ---------------------------------------------------------------------------

    def _window(self, ev) -> tuple[float, float, float, bool]:
        """(script time, earliest, latest, floating) for an event."""
        spec = ev.time
        if spec.kind == "any":
            return self.base_time, self.base_time, math.inf, True
        base = self.base_time if spec.kind == "relative" else 0.0
        start = base + spec.start
        gap = max(start - self.prev_script_time, 0.0)
        tol = max(self.tol_s, self.tol_pct * gap)
        if spec.end is not None:
            end = base + spec.end
            return start, start - tol, end + tol, True
        return start, start - tol, start + tol, False

    def _advance(self, t: float) -> None:
        """Run the stack's timers up to time ``t``."""
        host = self.host
        while True:
            d = host.next_deadline()
            wake = getattr(self.pending[1], "deadline", None) if self.pending else None
            if wake is not None and wake <= t and (d is None or wake < d):
                self.now = max(self.now, wake)   # a poll() timing out with nothing to do
                self._poll_pending()
                continue
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            host.handle_timer(self.now)
            self._collect()
            self._poll_pending()
        self.now = max(self.now, t)

    def _collect(self) -> None:
        for seg in self.host.take_frames():
            self.emitted.append(_Emitted(self.now, seg))

    def _settle(self, ev, script_time: float, floating: bool, actual: float) -> None:
        self.prev_script_time = script_time
        self.base_time = actual if floating else script_time

    # --- events -------------------------------------------------------------------------

    def _event(self, ev) -> None:
        if isinstance(ev, TcpPacket) and ev.direction == ">":
            self._outbound(ev)
            return
        script_time, lo, hi, floating = self._window(ev)
        at = script_time if not math.isinf(hi) or not floating else self.now
        self._advance(at)
        if isinstance(ev, Syscall):
            self._syscall(ev)
        elif isinstance(ev, TcpPacket):
            self._inbound_tcp(ev)
        elif isinstance(ev, IcmpPacket):
            if ev.direction == ">":
                self._fail(ev.line, "outbound ICMP is not produced by a TCP stack")
            self._inbound_icmp(ev)
        elif isinstance(ev, ShellCommand):
            self._shell(ev)
        elif isinstance(ev, CodeBlock):
            self._code(ev)
        self._settle(ev, script_time, floating, self.now)

    def _options(self) -> None:
        """A script's own `--name=value` lines, as packetdrill's command line takes them."""
        for name, value, line in self.script.options:
            try:
                if name == "tolerance_usecs":
                    self.tol_s = int(value) / 1e6
                elif name == "tolerance_percent":
                    self.tol_pct = float(value) / 100.0
                elif name == "tcp_ts_tick_usecs":
                    pass   # outbound TS values are not compared, so their tick does not matter
                elif name == "strict_segments":
                    self.strict_segments = True   # one line, one packet: no aggregation
                else:
                    self._fail(line, f"option --{name} is not supported")
            except ValueError:
                self._fail(line, f"--{name}={value}: not a number")

    def _code(self, ev: CodeBlock) -> None:
        """A `%{ }%` block, against TCP_INFO of the socket under test (the newest one that is
        not listening), as packetdrill evaluates it."""
        socks = [sock for fd, sock in sorted(self.fds.items(), reverse=True)
                 if sock.tp.state != TCP_LISTEN]
        if not socks:
            self._fail(ev.line, "code block with no connected socket to inspect")
        try:
            self.code.run(ev.code, tcp_info(socks[0].tp))
        except CodeError as exc:
            self._fail(ev.line, f"code block: {exc}")

    def _outbound(self, ev: TcpPacket) -> None:
        script_time, lo, hi, floating = self._window(ev)
        if not self.emitted:
            self._advance_until_emitted(hi)
        if not self.emitted:
            self._fail(ev.line, "expected outbound packet was not sent",
                       expected=self._describe_expected(ev), actual="(nothing)")
        got = self.emitted.pop(0)
        if 0 < len(got.seg.payload) < ev.payload_len and not self.strict_segments:
            got = self._aggregate(ev, got, hi)
        self._match(ev, got.seg)
        if not lo - 1e-9 <= got.time <= hi + 1e-9:
            self._fail(ev.line, "outbound packet at the wrong time",
                       expected=f"{self._describe_expected(ev)} at {script_time:.6f}s "
                                f"(window {max(lo, 0):.6f}..{hi:.6f})",
                       actual=f"{self._describe(got.seg)} at {got.time:.6f}s")
        self.now = max(self.now, got.time)
        self._settle(ev, script_time, floating, got.time)

    def _aggregate(self, ev: TcpPacket, first: _Emitted, hi: float) -> _Emitted:
        """packetdrill's rule without --strict_segments: a line expecting more payload than
        the next packet carries takes the packets that follow it in sequence (same ack,
        equal sizes but the last) until the payload adds up; the result has the first
        packet's seq and CWR, the last one's other flags, options and time. If they do not add
        up exactly, the packets stay as they were and the first is matched alone."""
        parts = [first]
        total = len(first.seg.payload)
        while total < ev.payload_len:
            if not self.emitted:
                self._advance_until_emitted(hi)
            if not self.emitted:
                break
            prev, nxt = parts[-1].seg, self.emitted[0].seg
            size = len(nxt.payload)
            if (nxt.sport, nxt.dport) != (prev.sport, prev.dport) or \
                    nxt.seq != (prev.seq + len(prev.payload)) & 0xFFFFFFFF or \
                    nxt.ack_seq != prev.ack_seq or nxt.flags & (TCPHDR_SYN | TCPHDR_RST) or \
                    (size < ev.payload_len - total and size != len(prev.payload)):
                break
            parts.append(self.emitted.pop(0))
            total += size
        if total != ev.payload_len or len(parts) == 1:
            self.emitted[0:0] = parts[1:]
            return first
        last = parts[-1]
        seg = last.seg.copy()
        seg.seq = first.seg.seq
        seg.flags = (last.seg.flags & ~TCPHDR_CWR) | (first.seg.flags & TCPHDR_CWR)
        seg.payload = b"".join(p.seg.payload for p in parts)
        return _Emitted(last.time, seg)

    def _advance_until_emitted(self, limit: float) -> None:
        host = self.host
        while not self.emitted:
            d = host.next_deadline()
            if d is None or d > limit:
                return
            self.now = max(self.now, d)
            host.handle_timer(self.now)
            self._collect()
            self._poll_pending()

    # --- matching -----------------------------------------------------------------------

    def _flags(self, text: str, line: int) -> int:
        mask = 0
        for ch in text:
            if ch not in _FLAG_LETTERS:
                self._fail(line, f"unknown TCP flag {ch!r}")
            mask |= _FLAG_LETTERS[ch]
        return mask

    def _rel_out(self, seq: int) -> int:
        return (seq - self.local_isn) & 0xFFFFFFFF

    def _match(self, ev: TcpPacket, seg: Segment) -> None:
        want_flags = self._flags(ev.flags, ev.line)
        if want_flags & TCPHDR_SYN and self.local_isn is None:
            self.local_isn = (seg.seq - ev.seq_start) & 0xFFFFFFFF
        if self.local_isn is None:
            self._fail(ev.line, "outbound data before any SYN: cannot map sequence numbers")
        problems = []
        if seg.flags & 0xFF != want_flags:
            problems.append("flags")
        if self._rel_out(seg.seq) != ev.seq_start or len(seg.payload) != ev.payload_len:
            problems.append("seq")
        if ev.ack is not None and want_flags & TCPHDR_ACK:
            if (seg.ack_seq - self.remote_isn) & 0xFFFFFFFF != ev.ack:
                problems.append("ack")
        if ev.win is not None and seg.window != ev.win:
            problems.append("win")
        if ev.options is not AnyOptions and not self._options_match(ev, seg):
            problems.append("options")
        if problems:
            self._fail(ev.line, "outbound packet mismatch (" + ", ".join(problems) + ")",
                       expected=self._describe_expected(ev), actual=self._describe(seg))

    def _options_match(self, ev: TcpPacket, seg: Segment) -> bool:
        want = ev.options or ()
        got = seg.options
        if len(want) != len(got):
            return False
        for w, (kind, value) in zip(want, got):
            if _OPT_KINDS.get(w.kind, -1) != kind:
                return False
            if kind in (2, 3) and w.value != value:
                return False
            if kind == 8:
                self.ts_map[w.value[0]] = value[0]
            if kind == 5:
                blocks = tuple(((s - self.remote_isn) & 0xFFFFFFFF, (e - self.remote_isn) & 0xFFFFFFFF)
                               for s, e in value)
                if tuple(tuple(b) for b in w.value) != blocks:
                    return False
        return True

    def _describe_expected(self, ev: TcpPacket) -> str:
        out = f"{ev.flags} {ev.seq_start}:{ev.seq_end}({ev.payload_len})"
        if ev.ack is not None:
            out += f" ack {ev.ack}"
        if ev.win is not None:
            out += f" win {ev.win}"
        if ev.options is AnyOptions:
            out += " <...>"
        elif ev.options:
            out += " <" + ",".join(_opt_text(o.kind, o.value) for o in ev.options) + ">"
        return out

    def _describe(self, seg: Segment) -> str:
        isn = self.local_isn or 0
        start = (seg.seq - isn) & 0xFFFFFFFF
        out = f"{flags_str(seg.flags)} {start}:{(start + len(seg.payload)) & 0xFFFFFFFF}" \
              f"({len(seg.payload)})"
        if seg.flags & TCPHDR_ACK:
            out += f" ack {(seg.ack_seq - self.remote_isn) & 0xFFFFFFFF}"
        out += f" win {seg.window}"
        if seg.options:
            out += " <" + ",".join(_opt_text(_OPT_NAMES.get(k, str(k)), v) for k, v in seg.options) + ">"
        return out

    # --- inbound ------------------------------------------------------------------------

    def _inbound_tcp(self, ev: TcpPacket) -> None:
        flags = self._flags(ev.flags, ev.line)
        seq = (self.remote_isn + ev.seq_start) & 0xFFFFFFFF
        ack = 0
        if flags & TCPHDR_ACK:
            if ev.ack is None:
                self._fail(ev.line, "inbound ACK without an ack number")
            if self.local_isn is None:
                self._fail(ev.line, "inbound ACK before our SYN was seen")
            ack = (self.local_isn + ev.ack) & 0xFFFFFFFF
        options = []
        if ev.options is AnyOptions:
            self._fail(ev.line, "inbound packet with <...> options cannot be built")
        for opt in ev.options or ():
            if opt.kind == "TS":
                val, ecr = opt.value
                options.append((8, (val, self.ts_map.get(ecr, ecr))))
            elif opt.kind == "sack":
                options.append((5, tuple(((self.local_isn + s) & 0xFFFFFFFF,
                                          (self.local_isn + e) & 0xFFFFFFFF) for s, e in opt.value)))
            elif opt.kind in _OPT_KINDS:
                options.append((_OPT_KINDS[opt.kind], opt.value))
            else:
                self._fail(ev.line, f"option {opt.kind} is not supported in inbound packets")
        win = ev.win if ev.win is not None else 65535
        seg = Segment(REMOTE_IP, LOCAL_IP, self.remote_port, self.local_port, seq, ack, flags,
                      win, tuple(options), bytes(ev.payload_len))
        self.host.receive(seg, self.now)
        self._collect()
        self._poll_pending()

    def _inbound_icmp(self, ev: IcmpPacket) -> None:
        types = {"unreachable": 3, "time_exceeded": 11}
        codes = {"frag_needed": 4, "port_unreachable": 3, "host_unreachable": 1,
                 "net_unreachable": 0, "protocol_unreachable": 2, None: 0}
        if ev.icmp_type not in types or ev.code not in codes:
            self._fail(ev.line, f"ICMP {ev.icmp_type} {ev.code} is not supported")
        if ev.quoted is None or self.local_isn is None:
            self._fail(ev.line, "ICMP error must quote one of our segments, after the handshake")
        q_seq = (self.local_isn + ev.quoted.seq_start) & 0xFFFFFFFF
        err = IcmpError(REMOTE_IP, LOCAL_IP, types[ev.icmp_type], codes[ev.code], ev.mtu or 0,
                        LOCAL_IP, REMOTE_IP, self.local_port, self.remote_port, q_seq)
        self.host.receive_icmp(err, self.now)
        self._collect()
        self._poll_pending()

    # --- shell --------------------------------------------------------------------------

    def _shell(self, ev: ShellCommand) -> None:
        """The shell commands packetdrill scripts run to set up the kernel: sysctl, the
        device's MTU, packetdrill's own defaults.sh and set_sysctls.py helpers; anything else
        would change what the stack cannot model, and fails the script."""
        for cmd in _join_continued(ev.commands):
            words = cmd.split()
            if words[:1] == ["sysctl"]:
                for arg in (w for w in words[1:] if not w.startswith("-")):
                    self._set_sysctl(ev.line, cmd, arg)
            elif words[:3] == ["ip", "link", "set"] and "mtu" in words:
                mtu = int(words[words.index("mtu") + 1])
                self.mtu = mtu
                if self.host is not None:
                    self.host.device.mtu = mtu
            elif len(words) == 1 and words[0].endswith("common/defaults.sh"):
                for key, value in PACKETDRILL_SYSCTLS.items():   # what it sets, as run here
                    self.sysctl.set(key, value)
            elif words and words[0].endswith("common/set_sysctls.py"):
                for arg in shlex.split(cmd)[1:]:
                    if not arg.startswith("/proc/sys/"):
                        self._fail(ev.line, f"set_sysctls.py wants /proc/sys/...=V: {arg!r}")
                    path, _, value = arg.partition("=")
                    self._set_sysctl(ev.line, cmd, path[len("/proc/sys/"):].replace("/", ".")
                                     + "=" + value)
            elif len(words) == 1 and words[0].startswith("/tmp/sysctl_restore_"):
                pass   # set_sysctls.py's undo script, run at the end: each run starts afresh
            elif words[:3] == ["ethtool", "-K", "tun0"] and len(words) % 2 == 1 and \
                    all(w in ("tso", "gso", "on", "off") for w in words[3:]):
                # TCP keeps building GSO skbs whatever the device says (sk_setup_caps() forces
                # NETIF_F_GSO for TCP); TSO and GSO only decide where they are cut, and the
                # runner's segments are the wire's either way.
                pass
            elif words[:3] in (["tc", "qdisc", "add"], ["tc", "qdisc", "replace"]) and \
                    words[-1] in ("pfifo", "pfifo_fast"):
                pass   # a FIFO qdisc neither paces nor reorders: the stack's device is one
            else:
                self._fail(ev.line, f"unsupported shell command {cmd!r}")

    def _set_sysctl(self, line: int, cmd: str, arg: str) -> None:
        if "=" not in arg:
            self._fail(line, f"sysctl without a value: {cmd!r}")
        key, value = arg.split("=", 1)
        try:
            self.sysctl.set(key, value.strip("\"'"))
        except SysctlError as exc:
            self._fail(line, f"{exc}")

    # --- syscalls -----------------------------------------------------------------------

    def _sym(self, arg, line: int) -> int:
        if isinstance(arg, int):
            return arg
        if isinstance(arg, Symbol):
            value = 0
            for name in arg.names:
                if name not in _SYMBOLS:
                    self._fail(line, f"unknown symbol {name}")
                value |= _SYMBOLS[name]
            return value
        if isinstance(arg, IntList) and len(arg.values) == 1:
            return self._sym(arg.values[0], line)
        self._fail(line, f"expected a number or a symbol, got {arg!r}")

    def _sock(self, arg, line: int) -> Socket:
        fd = self._sym(arg, line)
        sock = self.fds.get(fd)
        if sock is None:
            self._fail(line, f"fd {fd} is not an open socket")
        return sock

    def _new_fd(self, sock: Socket, want: int | None = None) -> int:
        """A descriptor for ``sock``: the one the script names if it is free (packetdrill maps
        a script's fd numbers onto whatever the kernel returns), else the lowest free."""
        if want is not None and want >= 0 and want not in self.fds:
            self.fds[want] = sock
            return want
        fd = 3
        while fd in self.fds:
            fd += 1
        self.fds[fd] = sock
        return fd

    def _syscall(self, ev: Syscall) -> None:
        self._finish_pending(ev)
        handler = getattr(self, "_sys_" + ev.name, None)
        if handler is None:
            self._fail(ev.line, f"system call {ev.name}() is not supported")
        outcome = handler(ev)
        if outcome is None:
            return
        op, post = outcome
        # A blocking call's `...END` counts from where its own start did, whatever events
        # come while it waits.
        base = self.base_time if ev.time.kind == "relative" else 0.0
        if op.done or op.step(self.now):
            self._collect()
            self._check_result(ev, op, post, base)
        else:
            self._collect()
            self.pending = (ev, op, post, base)

    def _poll_pending(self) -> None:
        if self.pending is None:
            return
        ev, op, post, base = self.pending
        # A blocked call runs again only when its socket is woken (sk_stream_write_space(),
        # data, a state change), as a sleeping process would; a poll() also at its timeout.
        tps = {sock.tp for sock in op.sockets()}
        deadline = getattr(op, "deadline", None)
        timed_out = deadline is not None and self.now >= deadline
        if not (tps & self.host.woken) and not timed_out:
            return
        self.host.woken -= tps
        if op.step(self.now):
            self.pending = None
            self._collect()
            self._check_result(ev, op, post, base)

    def _finish_pending(self, next_ev) -> None:
        if self.pending is None:
            return
        ev = self.pending[0]
        where = f"before line {next_ev.line}" if next_ev is not None else "by the end of the script"
        self._fail(ev.line, f"blocking {ev.name}() did not return {where}")

    def _check_result(self, ev: Syscall, op, post, base: float) -> None:
        if ev.end_time is not None:
            end = base + ev.end_time
            if abs(self.now - end) > max(self.tol_s, 0):
                self._fail(ev.line, f"{ev.name}() returned at the wrong time",
                           expected=f"{end:.6f}s", actual=f"{self.now:.6f}s")
        if op.error:
            got, err = -1, _errno.errorcode.get(op.error, str(op.error))
        else:
            got, err = (post(op.result) if post else op.result), None
        if got != ev.result or (ev.errno is not None and err != ev.errno):
            want = f"{ev.result}" + (f" {ev.errno}" if ev.errno else "")
            have = f"{got}" + (f" {err}" if err else "")
            self._fail(ev.line, f"{ev.name}() returned the wrong value", expected=want, actual=have)

    def _done(self, value):
        """An already finished operation, for calls that never involve the stack's time."""
        from ..socket import Immediate
        return Immediate(None, lambda now: value), None

    def _sys_socket(self, ev: Syscall):
        sock = Socket(self.host)
        return self._done(self._new_fd(sock, ev.result))

    def _sys_bind(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return sock.bind(("", self.local_port)), None

    def _sys_listen(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return sock.listen(self._sym(ev.args[1], ev.line)), None

    def _sys_accept(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return sock.accept(), lambda child: self._new_fd(child, ev.result)

    def _sys_connect(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        # packetdrill's remote end listens on 8080; our port is whatever connect() picks.
        self.remote_port = LOCAL_PORT
        op = sock.connect((REMOTE_IP, self.remote_port))
        op.step(self.now)
        self.local_port = sock.tp.sport
        return op, None

    def _sys_fcntl(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        cmd = self._sym(ev.args[1], ev.line)
        if cmd == _SYMBOLS["F_SETFL"]:
            flags = self._sym(ev.args[2], ev.line)
            sock.setblocking(not flags & _SYMBOLS["O_NONBLOCK"])
            return self._done(0)
        if cmd == _SYMBOLS["F_GETFL"]:
            return self._done(0o2 | (_SYMBOLS["O_NONBLOCK"] if sock.nonblock else 0))
        self._fail(ev.line, f"fcntl command {cmd} is not supported")

    def _opt_value(self, arg, line: int):
        if isinstance(arg, String):
            return arg.value
        return self._sym(arg, line)

    def _sys_setsockopt(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        level = self._sym(ev.args[1], ev.line)
        name = self._sym(ev.args[2], ev.line)
        return sock.setsockopt(level, name, self._opt_value(ev.args[3], ev.line)), None

    def _sys_getsockopt(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        level = self._sym(ev.args[1], ev.line)
        name = self._sym(ev.args[2], ev.line)
        want = ev.args[3]
        op = sock.getsockopt(level, name)
        op.step(self.now)
        if op.error:
            return op, None
        value = op.result
        if isinstance(want, IntList) and [self._sym(v, ev.line) for v in want.values] != [value]:
            self._fail(ev.line, "getsockopt() returned the wrong option value",
                       expected=str(list(want.values)), actual=str([value]))
        if isinstance(want, String) and want.value != value:
            self._fail(ev.line, "getsockopt() returned the wrong option value",
                       expected=want.value, actual=str(value))
        return self._done(0)

    def _send(self, ev: Syscall, sock: Socket, size: int, flags: int):
        return sock.send(bytes(size), flags), None

    def _sys_write(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return self._send(ev, sock, self._sym(ev.args[2], ev.line), 0)

    def _sys_send(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        flags = self._sym(ev.args[3], ev.line) if len(ev.args) > 3 else 0
        return self._send(ev, sock, self._sym(ev.args[2], ev.line), flags)

    _sys_sendto = _sys_send

    def _sys_sendmsg(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        msg = ev.args[1]
        if not isinstance(msg, MsgHdr):
            self._fail(ev.line, "sendmsg() needs a msghdr with msg_iov")
        flags = self._sym(ev.args[2], ev.line) if len(ev.args) > 2 else 0
        return self._send(ev, sock, sum(msg.iov_lens), flags)

    def _sys_writev(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        iov = ev.args[1]
        if not isinstance(iov, IovecList):
            self._fail(ev.line, "writev() needs an iovec list")
        return self._send(ev, sock, sum(iov.iov_lens), 0)

    def _sys_read(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return sock.recv(self._sym(ev.args[2], ev.line)), len

    def _sys_recv(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        flags = self._sym(ev.args[3], ev.line) if len(ev.args) > 3 else 0
        return sock.recv(self._sym(ev.args[2], ev.line), flags), len

    def _sys_poll(self, ev: Syscall):
        """poll([{fd=N, events=E, revents=R}, ...], nfds, timeout_ms): ready sockets' count;
        each revents must be what the script says. A timeout of -1 waits without limit."""
        if len(ev.args) != 3 or not isinstance(ev.args[0], PollFdList):
            self._fail(ev.line, "poll() needs [{fd=N, events=E, revents=R}, ...], nfds, timeout")
        fds = ev.args[0].fds
        if self._sym(ev.args[1], ev.line) != len(fds):
            self._fail(ev.line, f"poll(): nfds disagrees with the {len(fds)} pollfds listed")
        timeout_ms = self._sym(ev.args[2], ev.line)
        if timeout_ms >= 2**63:   # -1 parsed as unsigned
            timeout_ms -= 2**64
        entries = [(self._sock(p.fd, ev.line), self._sym(p.events, ev.line)) for p in fds]
        want = [self._sym(p.revents, ev.line) for p in fds]
        deadline = None if timeout_ms < 0 else self.now + timeout_ms / 1000.0

        def post(revents: list) -> int:
            if revents != want:
                names = ", ".join(_poll_names(r) for r in revents)
                self._fail(ev.line, "poll() returned the wrong revents",
                           expected=", ".join(_poll_names(r) for r in want), actual=names)
            return sum(1 for r in revents if r)
        return PollCall(entries, deadline), post

    def _sys_shutdown(self, ev: Syscall):
        sock = self._sock(ev.args[0], ev.line)
        return sock.shutdown(self._sym(ev.args[1], ev.line)), None

    def _sys_ioctl(self, ev: Syscall):
        """SIOCINQ (unread bytes), SIOCOUTQ (unacked + unsent), SIOCOUTQNSD (unsent)."""
        sock = self._sock(ev.args[0], ev.line)
        request = self._sym(ev.args[1], ev.line)
        tp = sock.tp
        if tp.state == TCP_LISTEN:
            return self._done(-_errno.EINVAL)
        if request == _SYMBOLS["SIOCINQ"]:
            value = len(tp.receive_queue)
        elif request == _SYMBOLS["SIOCOUTQ"]:
            value = seq_sub(tp.write_seq, tp.snd_una)
        elif request == _SYMBOLS["SIOCOUTQNSD"]:
            value = seq_sub(tp.write_seq, tp.snd_nxt)
        else:
            self._fail(ev.line, f"ioctl request {request:#x} is not supported")
        want = ev.args[2] if len(ev.args) > 2 else None
        if isinstance(want, IntList) and [self._sym(v, ev.line) for v in want.values] != [value]:
            self._fail(ev.line, "ioctl() returned the wrong value",
                       expected=str(list(want.values)), actual=str([value]))
        return self._done(0)

    def _sys_close(self, ev: Syscall):
        fd = self._sym(ev.args[0], ev.line)
        sock = self._sock(fd, ev.line)
        del self.fds[fd]
        return sock.close(), None


def _opt_text(kind: str, value) -> str:
    if kind == "TS":
        return f"TS val {value[0]} ecr {value[1]}"
    if kind == "sack":
        return "sack " + " ".join(f"{s}:{e}" for s, e in value)
    if value is None:
        return kind
    return f"{kind} {value}"


def run_script(path, **kw) -> Result:
    """Parse and run one script; a script that cannot be parsed is a failure naming its line."""
    try:
        script = parse_file(path)
    except PacketdrillSyntaxError as exc:
        return Result(str(path), False, ScriptFailure(exc.path, exc.line, f"syntax error: {exc.message}"))
    except OSError as exc:
        return Result(str(path), False, ScriptFailure(str(path), 0, f"cannot read: {exc.strerror}"))
    return ScriptRunner(script, **kw).run()


__all__ = ["ScriptRunner", "ScriptFailure", "Result", "run_script", "Elided"]
