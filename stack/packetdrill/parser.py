"""Parser for the packetdrill script language (the subset sendlab replays).

The grammar follows google/packetdrill's lexer.l / parser.y: tokens are
free-form (newlines are plain whitespace), an event is `time action`, and
the action is a TCP or ICMP packet, a system call or a back-quoted shell
command.  Constructs packetdrill accepts but sendlab cannot model (IP/ECN
prefixes, UDP, port numbers, sockaddr/pollfd structs, `%{ }%` code, command
line `--options`, `-D` symbols) are rejected with a PacketdrillSyntaxError
rather than skipped, so a script is either fully understood or refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional, Union

__all__ = [
    "AnyOptions", "Arg", "CodeBlock", "Elided", "Event", "IcmpPacket", "IntList",
    "IovecList", "MsgHdr", "PacketdrillSyntaxError", "PollFd", "PollFdList", "QuotedTcp", "Script",
    "ShellCommand", "String", "Symbol", "Syscall", "TcpOpt", "TcpPacket",
    "TimeSpec", "parse_file", "parse_script",
]

_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFFFFFF


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class PacketdrillSyntaxError(Exception):
    """A script the parser does not fully understand."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message

    def __reduce__(self):
        # The default pickling would call __init__ with the formatted text.
        return (type(self), (self.path, self.line, self.message))


# --------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------

class _SentinelMeta(type):
    """Lets a class serve as its own unique value.

    Callers may test `x is Elided` or `isinstance(x, Elided)`; both hold,
    and `Elided()` hands back the same object, so there is only one.
    """

    def __repr__(cls) -> str:
        return cls._repr

    def __instancecheck__(cls, obj: object) -> bool:
        return obj is cls or super().__instancecheck__(obj)


class Elided(metaclass=_SentinelMeta):
    """`...` in a system call argument: any value is accepted."""

    _repr = "Elided"

    def __new__(cls):
        return cls


class AnyOptions(metaclass=_SentinelMeta):
    """`<...>` on an outbound packet: TCP options are not checked."""

    _repr = "AnyOptions"

    def __new__(cls):
        return cls


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """When an event happens.  For 'relative' both start and end count
    from the previous event's script time; for 'any' start is 0.0."""
    kind: str
    start: float
    end: Optional[float] = None


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbolic constant, or several OR-ed together (`O_RDWR|O_NONBLOCK`)."""
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IntList:
    """`[1]`, `[1460]`, `[IP_PMTUDISC_DO]`: an int passed by reference."""
    values: tuple[Union[int, Symbol], ...]


@dataclass(frozen=True, slots=True)
class IovecList:
    """`[{..., 100}, {..., 200}]`: only the lengths carry information."""
    iov_lens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MsgHdr:
    """sendmsg's `{msg_name(...)=..., msg_iov(n)=[...], msg_flags=f}`."""
    iov_lens: tuple[int, ...]
    flags: int


@dataclass(frozen=True, slots=True)
class PollFd:
    """One `{fd=4, events=POLLOUT, revents=POLLOUT}` of poll()'s array; a field given as a
    number or as symbols OR-ed together."""
    fd: Union[int, Symbol]
    events: Union[int, Symbol]
    revents: Union[int, Symbol]


@dataclass(frozen=True, slots=True)
class PollFdList:
    """poll()'s `[{fd=..., events=..., revents=...}, ...]`."""
    fds: tuple[PollFd, ...]


@dataclass(frozen=True, slots=True)
class String:
    value: str


Arg = Union[type, int, Symbol, IntList, IovecList, MsgHdr, PollFdList, String]


@dataclass(frozen=True, slots=True)
class TcpOpt:
    """One TCP option.  value: int for mss/wscale, (val, ecr) for TS,
    ((start, end), ...) for sack, None for nop/eol/sackOK, and the option's
    source text (e.g. 'FO 0102') for 'unknown' (FO, FOEXP, md5, ECN)."""
    kind: str
    value: object = None


@dataclass(frozen=True, slots=True)
class QuotedTcp:
    """The TCP header quoted inside an ICMP error, `[S 1:1461(1460)]`."""
    seq_start: int
    seq_end: int
    payload_len: int
    flags: Optional[str] = None


@dataclass(frozen=True, slots=True)
class ShellCommand:
    line: int
    time: Optional[TimeSpec]
    commands: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Syscall:
    """errno/errno_text: `-1 EAGAIN (Resource ...)`; note: a trailing
    `(flags O_RDWR)`.  end_time: `+0...0.2 accept(...)`, the time by which a
    blocking call returns, counted from the same base as `time`."""
    line: int
    time: TimeSpec
    name: str
    args: tuple[Arg, ...]
    result: int
    errno: Optional[str] = None
    errno_text: Optional[str] = None
    note: Optional[str] = None
    end_time: Optional[float] = None


@dataclass(frozen=True, slots=True)
class TcpPacket:
    line: int
    time: TimeSpec
    direction: str
    flags: str
    seq_start: int
    seq_end: int
    payload_len: int
    ack: Optional[int] = None
    win: Optional[int] = None
    options: object = None  # tuple[TcpOpt, ...] | AnyOptions | None


@dataclass(frozen=True, slots=True)
class IcmpPacket:
    line: int
    time: TimeSpec
    direction: str
    icmp_type: str
    code: Optional[str] = None
    mtu: Optional[int] = None
    quoted: Optional[QuotedTcp] = None


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """`%{ assert tcpi_snd_cwnd == 10 }%`: Python run against the socket's TCP_INFO then."""
    line: int
    time: TimeSpec
    code: str


Event = Union[ShellCommand, Syscall, TcpPacket, IcmpPacket, CodeBlock]


@dataclass(frozen=True, slots=True)
class Script:
    path: str
    events: tuple[Event, ...]
    asserts: Optional[str] = None
    options: tuple[tuple[str, str, int], ...] = ()   # (name, value, line) of --name=value


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Token:
    kind: str   # int hex float word string backtick ellipsis option ipv4 punct eof
    text: str
    line: int
    end_line: int
    start: int
    end: int


# Listed in lexer.l's rule order: flex takes the longest match and breaks
# ties by that order (so `0x2` is hex, not a word, and `-1` an integer).
_LEXEMES = (
    ("ellipsis", re.compile(r"\.\.\.")),
    ("option", re.compile(r"--[A-Za-z0-9_]+")),
    ("float", re.compile(r"-?[0-9]*\.[0-9]+")),
    ("int", re.compile(r"-?[0-9]+")),
    ("hex", re.compile(r"0x[0-9a-fA-F]+")),
    ("word", re.compile(r"[A-Za-z0-9_]+")),
    ("ipv4", re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")),
)
_SPACE = re.compile(r"[ \t\r\f\v\n]+")
_QUOTED = {
    "`": (re.compile(r"`(\\.|[^`\\])*`", re.S), "backtick", "back-quoted command"),
    '"': (re.compile(r'"(\\.|[^"\\])*"', re.S), "string", "string"),
}


class _Lexer:
    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path
        self.pos, self.line = 0, 1
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        while self._skip_blanks():
            self.tokens.append(self._token())
        self.tokens.append(_Token("eof", "", self.line, self.line,
                                  self.pos, self.pos))
        return self.tokens

    def _error(self, line: int, message: str) -> NoReturn:
        raise PacketdrillSyntaxError(self.path, line, message)

    def _consume(self, end: int) -> tuple[int, int]:
        start_line = self.line
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end
        return start_line, self.line

    def _skip_blanks(self) -> bool:
        """Skip whitespace and comments; False at end of input."""
        while self.pos < len(self.text):
            if m := _SPACE.match(self.text, self.pos):
                self._consume(m.end())
            elif self.text.startswith("//", self.pos):
                eol = self.text.find("\n", self.pos)
                self._consume(len(self.text) if eol < 0 else eol)
            elif self.text.startswith("/*", self.pos):
                close = self.text.find("*/", self.pos + 2)
                if close < 0:
                    self._error(self.line, "unterminated /* comment")
                self._consume(close + 2)
            else:
                return True
        return False

    def _token(self) -> _Token:
        ch = self.text[self.pos]
        if self.text.startswith("%{", self.pos):
            close = self.text.find("}%", self.pos + 2)
            if close < 0:
                self._error(self.line, "unterminated %{ code block (no closing }%)")
            return self._make("code", close + 2)
        if ch in _QUOTED:
            return self._quoted(ch)
        kind, end = self._longest_match()
        return self._make(kind, end)

    def _quoted(self, ch: str) -> _Token:
        regex, kind, what = _QUOTED[ch]
        m = regex.match(self.text, self.pos)
        if m is None:
            self._error(self.line, f"unterminated {what} (opening {ch} "
                        "has no closing match)")
        return self._make(kind, m.end())

    def _longest_match(self) -> tuple[str, int]:
        # Strictly-longer wins, so ties go to the earlier rule; any lexeme
        # beats the single-character fallback, which flex lists after them.
        best_kind, best_end = "punct", self.pos + 1
        matched = False
        for kind, regex in _LEXEMES:
            m = regex.match(self.text, self.pos)
            if m and (m.end() > best_end or not matched):
                best_kind, best_end, matched = kind, m.end(), True
        return best_kind, best_end

    def _make(self, kind: str, end: int) -> _Token:
        start = self.pos
        line, end_line = self._consume(end)
        return _Token(kind, self.text[start:end], line, end_line, start, end)


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_TCP_FLAGS = re.compile(r"[FSRPEWAU]+")
_UNKNOWN_TCP_OPTIONS = ("FO", "FOEXP", "md5", "ECN")
_UNSUPPORTED_PREFIXES = ("ipv4", "ipv6", "gre", "GREv0", "mpls", "encap", "udp")

# packetdrill's ICMPv4 and ICMPv6 name tables merged, because the address
# family is a command-line flag and unknown when the script is parsed.
_UNREACH_CODES = frozenset((
    "net_unreachable", "host_unreachable", "protocol_unreachable",
    "port_unreachable", "frag_needed", "source_route_failed", "net_unknown",
    "host_unknown", "source_host_isolated", "net_prohibited",
    "host_prohibited", "net_unreachable_for_tos", "host_unreachable_for_tos",
    "packet_filtered", "precedence_violation", "precedence_cutoff",
    "no_route", "admin_prohibited", "not_neighbour", "address_unreachable"))
_ICMP_CODES: dict[str, frozenset] = {
    "unreachable": _UNREACH_CODES,
    "time_exceeded": frozenset(("exceeded_hop_limit", "exceeded_frag_time")),
    "parameter_problem": frozenset(("header_field", "unknown_next_header",
                                    "unknown_option")),
}
_ICMP_TYPES = frozenset(_ICMP_CODES) | {
    "echo_reply", "source_quench", "redirect", "echo_request",
    "timestamp_request", "timestamp_reply", "information_request",
    "information_reply", "address_mask_request", "address_mask_reply",
    "packet_too_big"}


def _describe(tok: _Token) -> str:
    return "end of script" if tok.kind == "eof" else repr(tok.text)


class _Parser:
    def __init__(self, tokens: list[_Token], source: str, path: str) -> None:
        self.tokens, self.path = tokens, path
        self._source = source  # notes are sliced from it to keep punctuation
        self.i = 0

    # -- token helpers ------------------------------------------------------

    def _peek(self, k: int = 0) -> _Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def _next(self) -> _Token:
        tok = self._peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def _is(self, text: str, k: int = 0) -> bool:
        tok = self._peek(k)
        return tok.kind in ("punct", "word", "ellipsis") and tok.text == text

    def _accept(self, text: str) -> Optional[_Token]:
        return self._next() if self._is(text) else None

    def _expect(self, text: str, what: Optional[str] = None) -> _Token:
        if not self._is(text):
            self._fail(what or repr(text))
        return self._next()

    def _expect_kind(self, kinds: tuple[str, ...], what: str) -> _Token:
        if self._peek().kind not in kinds:
            self._fail(what)
        return self._next()

    def _error(self, line: int, message: str) -> NoReturn:
        raise PacketdrillSyntaxError(self.path, line, message)

    def _fail(self, expected: str) -> NoReturn:
        """Report a missing `expected`.  When the line ended early the
        culprit is the line just consumed, not the next event's line."""
        tok, prev = self._peek(), self.tokens[self.i - 1] if self.i else None
        if prev is not None and (tok.kind == "eof" or tok.line > prev.end_line):
            self._error(prev.end_line, f"expected {expected}, found end of line")
        self._error(tok.line, f"expected {expected}, found {_describe(tok)}")

    def _close(self, opener: _Token, closer: str) -> None:
        if not self._accept(closer):
            self._fail(f"{closer!r} to close {opener.text!r} "
                       f"opened on line {opener.line}")

    def _sequence(self, item: Callable[[], object], opener: _Token,
                  closer: str) -> list:
        """`item (',' item)* closer`, the opener already consumed."""
        items = [item()]
        while self._accept(","):
            items.append(item())
        if not self._accept(closer):
            self._fail(f"',' or {closer!r} to close {opener.text!r} "
                       f"opened on line {opener.line}")
        return items

    def _int(self, what: str, low: int, high: int,
             kinds: tuple[str, ...] = ("int",)) -> int:
        tok = self._expect_kind(kinds, what)
        value = int(tok.text, 0) if tok.kind == "hex" else int(tok.text)
        if not low <= value <= high:
            self._error(tok.line, f"{what} {tok.text} out of range "
                        f"[{low}, {high}]")
        return value

    # -- script -------------------------------------------------------------

    def options(self) -> list[tuple[str, str, int]]:
        """`--name=value` lines before the first event, as packetdrill's command line has."""
        out = []
        while self._peek().kind == "option":
            tok = self._next()
            value = ""
            if self._accept("="):
                parts = []
                while self._peek().line == tok.line and self._peek().kind != "eof":
                    parts.append(self._next().text)
                value = "".join(parts)
            out.append((tok.text[2:], value, tok.line))
        return out

    def script(self) -> list[Event]:
        events: list[Event] = []
        if self._peek().kind == "backtick":
            events.append(self._untimed_command())
        while self._peek().kind != "eof":
            events.append(self._statement(events))
        if not any(e.time is not None for e in events):
            self._error(1, "script has no events")
        return events

    def _statement(self, events: list[Event]) -> Event:
        if self._peek().kind == "backtick":
            # Besides the init block, packetdrill only allows one untimed
            # command: the cleanup command, which must end the script.
            command = self._untimed_command()
            if self._peek().kind != "eof":
                self._error(command.line, "an untimed shell command is only "
                            "allowed first (init) or last (cleanup)")
            return command
        self._check_event_start(events)
        return self._event()

    def _check_event_start(self, events: list[Event]) -> None:
        tok = self._peek()
        if self._is("+") or self._is("*") or tok.kind in ("int", "float"):
            return
        prev = self.tokens[self.i - 1] if self.i else None
        if events and prev is not None and tok.line == prev.end_line:
            self._error(tok.line, f"unexpected {_describe(tok)} after the "
                        "end of the event")
        # Not _fail(): an event starts a fresh line, so blame this token.
        self._error(tok.line, "expected an event time such as 0, +.1, "
                    f"+.1~+.2 or *, found {_describe(tok)}")

    def _untimed_command(self) -> ShellCommand:
        tok = self._next()
        return ShellCommand(tok.line, None, self._commands(tok))

    def _commands(self, tok: _Token) -> tuple[str, ...]:
        lines = (s.strip() for s in tok.text[1:-1].split("\n"))
        commands = tuple(s for s in lines if s)
        if not commands:
            self._error(tok.line, "empty back-quoted shell command")
        return commands

    # -- events -------------------------------------------------------------

    def _event(self) -> Event:
        line = self._peek().line
        time = self._time()
        event = self._action(line, time)
        self._check_time_kind(event)
        return event

    def _action(self, line: int, time: TimeSpec) -> Event:
        tok = self._peek()
        if self._is("<") or self._is(">"):
            return self._packet(line, time)
        if tok.kind == "backtick":
            return ShellCommand(line, time, self._commands(self._next()))
        if tok.kind == "code":
            code = self._next().text[2:-2]
            return CodeBlock(line, time, code)
        if tok.kind == "ellipsis" or (tok.kind == "word" and self._is("(", 1)):
            return self._syscall(line, time)
        self._fail("a packet ('<' or '>'), a system call or a `command`")

    def _check_time_kind(self, event: Event) -> None:
        # packetdrill only lets the kernel's own output float in time.
        outbound = (isinstance(event, (TcpPacket, IcmpPacket))
                    and event.direction == ">")
        if event.time.kind == "any" and not outbound:
            self._error(event.line, "event time '*' can only be used with "
                        "outbound packets")
        if event.time.end is not None and not outbound:
            self._error(event.line, "event time range can only be used with "
                        "outbound packets")

    # -- time ---------------------------------------------------------------

    def _time(self) -> TimeSpec:
        if self._accept("*"):
            return TimeSpec("any", 0.0)
        relative = self._accept("+") is not None
        start = self._time_value()
        end = None
        if tilde := self._accept("~"):
            if relative and not self._accept("+"):
                self._fail("'+' after '~' in a relative time range")
            end = self._time_value()
            if end < start:
                self._error(tilde.line, "time range is backwards")
        return TimeSpec("relative" if relative else "absolute", start, end)

    def _time_value(self) -> float:
        tok = self._expect_kind(("int", "float"), "a time in seconds")
        value = float(tok.text)
        if value < 0:
            self._error(tok.line, f"negative time {tok.text}")
        return value

    # -- TCP packets ----------------------------------------------------------

    def _packet(self, line: int, time: TimeSpec) -> Union[TcpPacket, IcmpPacket]:
        direction = self._next().text
        self._reject_packet_prefix()
        if self._accept("icmp"):
            return self._icmp(line, time, direction)
        flags = self._tcp_flags()
        start, end, length = self._seq_range()
        ack = self._keyword_int("ack", "ack number", _U32)
        win = self._keyword_int("win", "window", _U16)
        if self._is("urg"):
            self._error(self._peek().line, "'urg' pointers are not supported")
        options = self._tcp_options(direction) if self._is("<") else None
        return TcpPacket(line, time, direction, flags, start, end, length,
                         ack, win, options)

    def _reject_packet_prefix(self) -> None:
        tok = self._peek()
        if self._is("(") or self._is("["):
            self._error(tok.line, "IP TOS/ECN/TTL/flowlabel annotations "
                        "are not supported")
        if tok.kind == "word" and tok.text in _UNSUPPORTED_PREFIXES:
            self._error(tok.line, f"{tok.text!r} packets are not supported")
        if tok.kind == "int" and self._is(">", 1):
            self._error(tok.line, "explicit port numbers are not supported")

    def _tcp_flags(self) -> str:
        tok = self._peek()
        if self._is(".") or self._is("-"):
            return self._next().text
        if tok.kind == "word" and _TCP_FLAGS.fullmatch(tok.text):
            self._next()
            return tok.text + ("." if self._accept(".") else "")
        if tok.kind == "word" or tok.kind == "float":
            self._error(tok.line, f"invalid TCP flags {tok.text!r} "
                        "(use F S R P U E W A and '.' for ACK)")
        self._fail("TCP flags such as S, S., P., ., F., R")

    def _seq_range(self) -> tuple[int, int, int]:
        line = self._peek().line
        start = self._int("start sequence number", 0, _U32)
        self._expect(":", "':' in start:end(length)")
        end = self._int("end sequence number", 0, _U32)
        opener = self._expect("(", "'(' in start:end(length)")
        length = self._int("payload length", 0, _U16)
        self._close(opener, ")")
        if end - start != length:
            self._error(line, f"inconsistent TCP sequence numbers and payload "
                        f"size: {end} - {start} != {length}")
        return start, end, length

    def _keyword_int(self, keyword: str, what: str, high: int) -> Optional[int]:
        if not self._accept(keyword):
            return None
        return self._int(what, 0, high)

    def _tcp_options(self, direction: str) -> object:
        opener = self._next()
        if self._accept("..."):
            self._close(opener, ">")
            if direction == "<":
                self._error(opener.line, "<...> for TCP options can only be "
                            "used with outbound packets")
            return AnyOptions
        return tuple(self._sequence(self._tcp_option, opener, ">"))

    def _tcp_option(self) -> TcpOpt:
        tok = self._expect_kind(("word",), "a TCP option")
        name = tok.text
        if name in ("nop", "eol", "sackOK"):
            return TcpOpt(name)
        if name in ("mss", "wscale"):
            return TcpOpt(name, self._int(name, 0, _U16 if name == "mss" else _U8))
        if name == "TS":
            return TcpOpt("TS", self._timestamp())
        if name == "sack":
            return TcpOpt("sack", self._sack_blocks())
        if name in _UNKNOWN_TCP_OPTIONS:
            return TcpOpt("unknown", self._option_text(tok))
        self._error(tok.line, f"unknown TCP option {name!r}")

    def _timestamp(self) -> tuple[int, int]:
        self._expect("val", "'val' after TS")
        val = self._int("TS val", 0, _U32)
        self._expect("ecr", "'ecr' after the TS val")
        return val, self._int("TS ecr", 0, _U32)

    def _sack_blocks(self) -> tuple[tuple[int, int], ...]:
        blocks = [self._sack_block()]
        while self._peek().kind == "int":
            blocks.append(self._sack_block())
        return tuple(blocks)

    def _sack_block(self) -> tuple[int, int]:
        left = self._int("SACK block start", 0, _U32)
        self._expect(":", "':' in a SACK block start:end")
        return left, self._int("SACK block end", 0, _U32)

    def _option_text(self, first: _Token) -> str:
        """Options sendlab does not model keep their words (cookie, key)."""
        words = [first.text]
        while self._peek().kind in ("word", "int", "hex"):
            words.append(self._next().text)
        return " ".join(words)

    # -- ICMP packets ---------------------------------------------------------

    def _icmp(self, line: int, time: TimeSpec, direction: str) -> IcmpPacket:
        type_tok = self._expect_kind(("word",), "an ICMP type")
        code = None
        nxt = self._peek()
        if (nxt.kind == "word" and nxt.line == type_tok.line
                and not (self._is("mtu") or self._is("id"))):
            code = self._next().text
        self._check_icmp_names(type_tok, code)
        mtu = self._keyword_int("mtu", "ICMP mtu", _U32)
        if mtu is not None:
            self._check_icmp_mtu(type_tok, code)
        if self._is("id"):
            self._error(self._peek().line, "ICMP echo ids are not supported")
        quoted = self._quoted_tcp() if self._is("[") else None
        return IcmpPacket(line, time, direction, type_tok.text, code, mtu, quoted)

    def _check_icmp_names(self, type_tok: _Token, code: Optional[str]) -> None:
        icmp_type = type_tok.text
        if icmp_type not in _ICMP_TYPES and not re.fullmatch(r"type_\d+", icmp_type):
            self._error(type_tok.line, f"unknown ICMP type {icmp_type!r}")
        if code is None or re.fullmatch(r"code_\d+", code):
            return
        if code not in _ICMP_CODES.get(icmp_type, ()):
            self._error(type_tok.line, f"unknown ICMP code {code!r} "
                        f"for type {icmp_type!r}")

    def _check_icmp_mtu(self, type_tok: _Token, code: Optional[str]) -> None:
        # packetdrill compares numbers: IPv4 3/4 or IPv6 2/0 carry an MTU.
        icmp_type = type_tok.text
        valid = ((icmp_type in ("unreachable", "type_3")
                  and code in ("frag_needed", "code_4"))
                 or (icmp_type in ("packet_too_big", "type_2")
                     and code in (None, "code_0")))
        if not valid:
            self._error(type_tok.line, "ICMP mtu is only valid for "
                        "'unreachable frag_needed' or 'packet_too_big'")

    def _quoted_tcp(self) -> QuotedTcp:
        opener = self._next()
        if self._is("udp") or self._is("raw"):
            self._error(opener.line, f"quoted {self._peek().text!r} headers "
                        "in ICMP are not supported")
        flags = None if self._peek().kind == "int" else self._tcp_flags()
        start, end, length = self._seq_range()
        self._close(opener, "]")
        return QuotedTcp(start, end, length, flags)

    # -- system calls ---------------------------------------------------------

    def _syscall(self, line: int, time: TimeSpec) -> Syscall:
        end_time = self._time_value() if self._accept("...") else None
        name = self._expect_kind(("word",), "a system call name").text
        args = self._arguments()
        self._expect("=", "'=' and the expected return value")
        line_end = self._peek().line
        result = self._int("return value", -(2**63), 2**64 - 1, ("int", "hex"))
        # errno and note are optional, so only the result's own line may
        # supply them; a stray word further down is an error, not an errno.
        errno, errno_text = self._errno(line_end)
        note = self._paren_text() if self._on_line("(", line_end) else None
        return Syscall(line, time, name, args, result, errno, errno_text,
                       note, end_time)

    def _arguments(self) -> tuple[Arg, ...]:
        opener = self._expect("(", "'(' after the system call name")
        if self._accept(")"):
            return ()
        return tuple(self._sequence(self._expression, opener, ")"))

    def _on_line(self, text: str, line: int) -> bool:
        return self._is(text) and self._peek().line == line

    def _errno(self, line: int) -> tuple[Optional[str], Optional[str]]:
        tok = self._peek()
        if tok.kind != "word" or tok.line != line:
            return None, None
        self._next()
        return tok.text, self._paren_text() if self._on_line("(", line) else None

    def _paren_text(self) -> str:
        """Free text such as `(Resource temporarily unavailable)`.

        Kept to one line so a missing ')' cannot swallow later events."""
        opener = self._next()
        while not self._is(")"):
            tok = self._peek()
            if tok.kind == "eof" or tok.line != opener.line or self._is("("):
                self._error(opener.line, "unbalanced '(': expected ')' on "
                            "the same line")
            self._next()
        close = self._next()
        text = " ".join(self._source[opener.end:close.start].split())
        if not text:
            self._error(opener.line, "empty '()' after the return value")
        return text

    # -- system call arguments ----------------------------------------------

    def _expression(self) -> Arg:
        tok = self._peek()
        if tok.kind == "ellipsis":
            self._next()
            return Elided
        if tok.kind in ("int", "hex"):
            return self._scalar_int()
        if tok.kind == "word":
            return self._symbol()
        if tok.kind == "string":
            return self._string()
        if self._is("["):
            return self._list()
        if self._is("{"):
            return self._msghdr()
        self._fail("a system call argument")

    def _scalar_int(self) -> int:
        value = self._int("integer", -(2**63), 2**64 - 1, ("int", "hex"))
        if self._is("|"):
            self._error(self._peek().line, "'|' is only supported between "
                        "symbolic names")
        return value

    def _symbol(self) -> Symbol:
        names = [self._word_operand()]
        while self._accept("|"):
            names.append(self._word_operand())
        return Symbol(tuple(names))

    def _word_operand(self) -> str:
        tok = self._expect_kind(("word",), "a symbolic name")
        if self._is("(") or self._is("="):
            self._error(tok.line, f"'{tok.text}{self._peek().text}...' "
                        "expressions are not supported")
        return tok.text

    def _string(self) -> String:
        # Adjacent strings concatenate, as in C and in packetdrill.
        parts = []
        while self._peek().kind == "string":
            parts.append(self._next().text[1:-1])
        if self._peek().kind == "ellipsis":
            self._error(self._peek().line, "'\"...\"...' prefix strings "
                        "are not supported")
        return String("".join(parts))

    def _list(self) -> Union[IntList, IovecList, PollFdList]:
        opener = self._next()
        if self._accept("]"):
            return IntList(())
        if self._is("{") and self._peek(1).text == "fd":
            return PollFdList(tuple(self._sequence(self._pollfd, opener, "]")))
        if self._is("{"):
            return IovecList(tuple(self._sequence(self._iovec, opener, "]")))
        return IntList(tuple(self._sequence(self._list_int, opener, "]")))

    def _list_int(self) -> Union[int, Symbol]:
        if self._peek().kind == "word":   # [IP_PMTUDISC_DONT]
            return self._symbol()
        return self._int("list element", -(2**63), 2**64 - 1, ("int", "hex"))

    def _pollfd(self) -> PollFd:
        opener = self._expect("{", "'{' starting a pollfd {fd=N, events=E, revents=R}")
        fields = {}
        for k, name in enumerate(("fd", "events", "revents")):
            if k:
                self._expect(",", f"',' before {name} in a pollfd")
            self._expect(name, f"{name!r} in a pollfd {{fd=N, events=E, revents=R}}")
            self._expect("=", f"'=' after {name}")
            tok = self._peek()
            fields[name] = self._symbol() if tok.kind == "word" else self._int(
                name, 0, 2**32 - 1, ("int", "hex"))
        self._close(opener, "}")
        return PollFd(**fields)

    def _iovec(self) -> int:
        opener = self._expect("{", "'{' starting an iovec {..., length}")
        self._expect("...", "'...' as the iovec base")
        self._expect(",", "',' in an iovec {..., length}")
        length = self._int("iovec length", 0, 2**64 - 1)
        self._close(opener, "}")
        return length

    def _msghdr(self) -> MsgHdr:
        opener = self._next()
        if not self._is("msg_name"):
            self._error(opener.line, "only msghdr structures "
                        "({msg_name(...)=..., ...}) are supported in '{ }'")
        for text in ("msg_name", "(", "...", ")", "=", "...", ",", "msg_iov"):
            self._expect(text, f"{text!r} in a msghdr")
        count = self._msg_iov_count()
        lens = self._msg_iov_list(count)
        for text in (",", "msg_flags", "="):
            self._expect(text, f"{text!r} in a msghdr")
        flags = self._int("msg_flags", 0, _U32, ("int", "hex"))
        if self._is(","):
            self._error(self._peek().line, "msg_control is not supported")
        self._close(opener, "}")
        return MsgHdr(lens, flags)

    def _msg_iov_count(self) -> int:
        opener = self._expect("(", "'(' in msg_iov(count)")
        count = self._int("msg_iov count", 0, _U32)
        self._close(opener, ")")
        self._expect("=", "'=' after msg_iov(count)")
        return count

    def _msg_iov_list(self, count: int) -> tuple[int, ...]:
        line = self._peek().line
        if not self._is("["):
            self._fail("an iovec list [{..., length}, ...]")
        iovs = self._list()
        if isinstance(iovs, IntList) and iovs.values:
            self._error(line, "msg_iov must be a list of {..., length} iovecs")
        lens = iovs.iov_lens if isinstance(iovs, IovecList) else ()
        if len(lens) != count:
            self._error(line, f"msg_iov({count}) disagrees with the "
                        f"{len(lens)} iovecs listed")
        return lens


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------

_ASSERTS = re.compile(r"[ \t]*//[ \t]*Asserts:[ \t]*(.*)")


def _asserts(text: str) -> Optional[str]:
    match = _ASSERTS.match(text.split("\n", 1)[0])
    return match.group(1).strip() if match else None


def parse_script(text: str, path: str = "<string>") -> Script:
    """Parse packetdrill source `text`; `path` is only used in messages."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    tokens = _Lexer(text, path).run()
    parser = _Parser(tokens, text, path)
    options = parser.options()
    events = parser.script()
    return Script(path, tuple(events), _asserts(text), tuple(options))


def parse_file(path: Union[str, os.PathLike]) -> Script:
    """Read and parse a .pkt file (UTF-8)."""
    name = os.fspath(path)
    with open(name, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PacketdrillSyntaxError(name, line, "file is not valid UTF-8") from None
    return parse_script(text, name)
