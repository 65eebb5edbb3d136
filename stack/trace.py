"""The decision trace of the send path: what the application asked, and why bytes waited.

A Host calls its tracer only when one is attached (``host.tracer``). The core
tests ``tp.host.tracer is not None`` before building any argument, so with no
tracer the hooks cost one attribute test each: no call, no formatting, no
allocation. With one attached, every event is a flat dict of JSON-native
values (written one per line by ``write_jsonl``).

Every event has (sequence numbers relative to the connection's ISS, so the
SYN is 0 and the first data byte 1, as packetdrill and tcptrace show them;
``conn`` and the sequence fields are absent for a segment with no socket)::

    t          virtual (or real) time, seconds
    kind       see below
    sock       the socket's number in this trace (stable across connect, unlike conn)
    conn       "saddr:sport-daddr:dport" (ports and peer are 0/empty before connect)
    snd_una, snd_nxt, write_seq, cwnd (packets), in_flight (packets)

and, by kind:

    call       call: tcp_sendmsg (size, copied, flags), setsockopt (level, opt, value),
               shutdown (how) or close
    skb_new    seq: an empty skb was queued at the tail, starting at seq
    skb_append seq, end, added, skb_len: tcp_sendmsg copied ``added`` bytes into the tail skb
    hold       reason (REASONS), queue ("write", or "rtx" for a TSQ-held retransmission),
               seq, len (the head skb; for sndbuf the tail), and by reason:
               nagle: sml = [start, end] of the unacked small segment (snd_sml) that holds it;
               autocork / tsq: wmem_alloc (bytes still awaiting TX completion), truesize;
               rwnd: wnd_end; sndbuf: wmem_queued, sndbuf, pending (bytes the call still has)
    send       seq, len, segs, via: tcp_write_xmit decided to send the head skb
               (via "write_xmit", "push_one" or "loss_probe")
    xmit       seq, len, flags, segs, retrans, ack: a segment handed to IP (data, pure ACK,
               SYN, FIN, RST, probes); retrans is true for a retransmission
    ack        ack, acked (bytes newly acknowledged, 0 for a duplicate), win (bytes),
               wnd_end, sack (blocks): an ACK received, before it is processed
    timer      timer: rto, probe0, loss_probe, reo or delack
    icmp       type, code, mtu, quoted_seq, verdict (frag_needed, out_of_window, soft_error)
    mss_change mss, why (icmp, probe_success, blackhole), mtu
    mtu_probe  size
    mtu_probe_failed  search_high
    state      old, new (TCP state names)

``held_spans`` turns a connection's events into the spans during which its data waited,
and ``held_s_by_reason`` sums them per reason (see their docstrings for the exact rule).
"""

from __future__ import annotations

import json

from .constants import (
    MSG_DONTWAIT, MSG_EOR, MSG_MORE, MSG_NOSIGNAL, MSG_OOB, MSG_PEEK, SOL_SOCKET, SOL_TCP,
    STATE_NAMES, TCPHDR_FIN, TCPHDR_SYN,
)
from .debug import flags_str

REASONS = ("nagle", "cork", "msg_more", "autocork", "cwnd", "rwnd", "tsq", "tso_defer", "sndbuf")
KINDS = ("call", "skb_new", "skb_append", "hold", "send", "xmit", "ack", "timer", "icmp",
         "mss_change", "mtu_probe", "mtu_probe_failed", "state")

_MSG_NAMES = ((MSG_OOB, "MSG_OOB"), (MSG_PEEK, "MSG_PEEK"), (MSG_DONTWAIT, "MSG_DONTWAIT"),
              (MSG_EOR, "MSG_EOR"), (MSG_NOSIGNAL, "MSG_NOSIGNAL"), (MSG_MORE, "MSG_MORE"))
_TCP_OPTS = {1: "TCP_NODELAY", 2: "TCP_MAXSEG", 3: "TCP_CORK", 13: "TCP_CONGESTION",
             25: "TCP_NOTSENT_LOWAT"}
_SOCK_OPTS = {2: "SO_REUSEADDR", 7: "SO_SNDBUF", 8: "SO_RCVBUF", 9: "SO_KEEPALIVE",
              32: "SO_SNDBUFFORCE"}
_LEVELS = {SOL_SOCKET: "SOL_SOCKET", SOL_TCP: "SOL_TCP"}
_XMIT_VIA = ("write_xmit", "push_one", "loss_probe")
# What can set data moving again (the "released_by" of a held span).
_TRIGGERS = ("call", "ack", "timer", "icmp")


def _rel(seq: int, base: int) -> int:
    """seq relative to base, signed (a window probe one below snd_una shows as -1 past it)."""
    return ((seq - base + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def msg_flags_str(flags: int) -> str:
    names = [name for bit, name in _MSG_NAMES if flags & bit]
    rest = flags & ~sum(bit for bit, _ in _MSG_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names)


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    return repr(value)


class Tracer:
    """Collects events in memory, in the order the stack made them."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.last_t = 0.0
        self.socks: dict = {}      # TcpSock -> (its number in this trace, conn, sport, dport)

    # --- the event frame ----------------------------------------------------------------

    def _base(self, tp, kind: str, now) -> dict:
        if now is None or now < self.last_t:
            now = self.last_t     # a hook without a clock of its own (e.g. a state change)
        else:
            self.last_t = now
        if tp is None:
            ev = {"t": now, "kind": kind}
        else:
            info = self.socks.get(tp)
            if info is None or info[2] != tp.sport or info[3] != tp.dport:
                sock = len(self.socks) if info is None else info[0]
                info = self.socks[tp] = (sock, f"{tp.saddr}:{tp.sport}-{tp.daddr}:{tp.dport}",
                                         tp.sport, tp.dport)
            iss = tp.iss - 0x80000000
            ev = {"t": now, "kind": kind, "sock": info[0], "conn": info[1],
                  "snd_una": ((tp.snd_una - iss) & 0xFFFFFFFF) - 0x80000000,
                  "snd_nxt": ((tp.snd_nxt - iss) & 0xFFFFFFFF) - 0x80000000,
                  "write_seq": ((tp.write_seq - iss) & 0xFFFFFFFF) - 0x80000000,
                  "cwnd": tp.snd_cwnd,
                  "in_flight": tp.packets_out - (tp.sacked_out + tp.lost_out) + tp.retrans_out}
        self.events.append(ev)
        return ev

    # --- hooks the core calls -----------------------------------------------------------

    def call(self, tp, call: str, now, **fields) -> None:
        ev = self._base(tp, "call", now)
        ev["call"] = call
        if call == "tcp_sendmsg":
            fields["flags"] = msg_flags_str(fields.get("flags", 0))
        elif call == "setsockopt":
            level, opt = fields.get("level"), fields.get("opt")
            names = _SOCK_OPTS if level == SOL_SOCKET else _TCP_OPTS if level == SOL_TCP else {}
            fields["level"] = _LEVELS.get(level, level)
            fields["opt"] = names.get(opt, opt)
            fields["value"] = _jsonable(fields.get("value"))
        ev.update(fields)

    def skb(self, tp, what: str, skb, now, added: int = 0) -> None:
        ev = self._base(tp, what, now)
        ev["seq"] = _rel(skb.seq, tp.iss)
        if what == "skb_append":
            ev["end"] = _rel(skb.end_seq, tp.iss)
            ev["added"] = added
            ev["skb_len"] = len(skb.data)

    def hold(self, tp, reason: str, skb, now, queue: str = "write", pending: int = 0) -> None:
        ev = self._base(tp, "hold", now)
        ev["reason"] = reason
        ev["queue"] = queue
        iss = tp.iss
        if skb is not None:
            ev["seq"] = _rel(skb.seq, iss)
            ev["len"] = len(skb.data)
        else:
            ev["seq"] = _rel(tp.write_seq, iss)
            ev["len"] = 0
        if reason == "nagle":
            end = tp.snd_sml
            start = end
            for s in reversed(tp.rtx_queue):   # the small segment is nearly always the last sent
                if s.end_seq == end:
                    start = s.seq
                    break
            ev["sml"] = [_rel(start, iss), _rel(end, iss)]
        elif reason in ("autocork", "tsq"):
            ev["wmem_alloc"] = tp.wmem_alloc
            ev["truesize"] = skb.truesize if skb is not None else 0
        elif reason == "rwnd":
            ev["wnd_end"] = _rel(tp.wnd_end(), iss)
        elif reason == "sndbuf":
            ev["wmem_queued"] = tp.wmem_queued
            ev["sndbuf"] = tp.sndbuf
            ev["pending"] = pending

    def send(self, tp, skb, now, push_one: int = 0) -> None:
        """tcp_write_xmit sends the head skb (push_one as tcp_write_xmit's argument)."""
        ev = self._base(tp, "send", now)
        ev["seq"] = _rel(skb.seq, tp.iss)
        ev["len"] = len(skb.data)
        ev["segs"] = skb.pcount or 1
        ev["via"] = _XMIT_VIA[push_one]

    def segment(self, tp, seg, now) -> None:
        """A segment handed to IP (Host.ip_output)."""
        ev = self._base(tp, "xmit", now)
        length = len(seg.payload)
        ev["len"] = length
        ev["flags"] = flags_str(seg.flags)
        ev["segs"] = seg.gso_segs or 1
        if tp is None:
            ev["seq"] = seg.seq
            ev["retrans"] = False
            return
        ev["seq"] = _rel(seg.seq, tp.iss)
        ev["ack"] = _rel(seg.ack_seq, tp.irs)
        if seg.flags & TCPHDR_SYN:
            retrans = bool(tp.retransmits or tp.syn_retries)
        elif length or seg.flags & TCPHDR_FIN:
            # New data leaves at snd_nxt (advanced only after the send); anything below it
            # was sent before.
            retrans = ((seg.seq - tp.snd_nxt) & 0xFFFFFFFF) >= 0x80000000
        else:
            retrans = False
        ev["retrans"] = retrans

    def ack(self, tp, seg, now) -> None:
        """An ACK arrived (traced before tcp_ack processes it)."""
        ev = self._base(tp, "ack", now)
        iss = tp.iss
        win = seg.window if seg.flags & TCPHDR_SYN else seg.window << tp.snd_wscale
        acked = (seg.ack_seq - tp.snd_una) & 0xFFFFFFFF
        ev["ack"] = _rel(seg.ack_seq, iss)
        ev["acked"] = acked if acked < 0x80000000 else 0
        ev["win"] = win
        ev["wnd_end"] = _rel(seg.ack_seq + win, iss)
        sack = 0
        for kind, value in seg.options:
            if kind == 5:
                sack = len(value)
        ev["sack"] = sack

    def timer(self, tp, which: str, now) -> None:
        self._base(tp, "timer", now)["timer"] = which

    def icmp(self, tp, err, now, verdict: str) -> None:
        ev = self._base(tp, "icmp", now)
        ev.update(type=err.icmp_type, code=err.code, mtu=err.mtu,
                  quoted_seq=_rel(err.q_seq, tp.iss), verdict=verdict)

    def state(self, tp, old: int, new: int, now=None) -> None:
        ev = self._base(tp, "state", now)
        ev["old"] = STATE_NAMES.get(old, old)
        ev["new"] = STATE_NAMES.get(new, new)

    def event(self, tp, kind: str, fields: dict, now) -> None:
        """Anything else (mss_change, mtu_probe): the fields as given."""
        self._base(tp, kind, now).update(fields)

    # --- output -------------------------------------------------------------------------

    def for_sock(self, tp) -> list[dict]:
        """The events of one socket, including those from before it was connected."""
        info = self.socks.get(tp)
        return [] if info is None else [ev for ev in self.events if ev.get("sock") == info[0]]

    def write_jsonl(self, path, tp=None) -> int:
        return write_jsonl(path, self.events if tp is None else self.for_sock(tp))


def write_jsonl(path, events) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(ev, separators=(",", ":")) + "\n")
    return len(events)


class TraceFormatError(ValueError):
    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


def read_jsonl(path) -> list[dict]:
    """The events of a trace file; a line that is not a JSON event raises TraceFormatError."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(str(path), n, f"not JSON: {exc.msg}") from None
            if not isinstance(ev, dict) or "t" not in ev or "kind" not in ev:
                raise TraceFormatError(str(path), n, "not a trace event (needs 't' and 'kind')")
            events.append(ev)
    return events


# --- why bytes waited ---------------------------------------------------------------------------

def _trigger_name(ev: dict) -> str:
    kind = ev["kind"]
    if kind == "call":
        return ev["call"] if ev["call"] != "setsockopt" else f"setsockopt:{ev.get('opt')}"
    if kind == "timer":
        return f"timer:{ev['timer']}"
    return kind


def held_spans(events, end_t: float | None = None) -> list[dict]:
    """The spans of one connection's trace during which its data waited, with the reason.

    Two tracks, which may overlap in time:

    - the head of the write queue: a ``hold`` decision on the write queue opens a span at
      its time (seq = the head skb's first byte). A later hold with another reason closes it
      and opens one with the new reason; the same reason again extends it. The span closes
      when new data leaves (an ``xmit`` that is not a retransmission: the head, or its first
      part, was sent), or when the connection reaches CLOSE. If unsent bytes remain behind
      what left, a span with the same reason continues from the end of what left (a later
      decision at the same instant replaces it; zero-length spans are dropped). So a stall
      after a loss probe, where nothing decides again until an RTO, counts for the reason
      that held the data last (typically cwnd);
    - the application (reason ``sndbuf``): tcp_sendmsg found the send buffer full; the span
      closes when it copies bytes again (``skb_append``) or the connection closes.

    A span still open at the end closes at ``end_t`` (default: the last event's time).
    Each span: reason, start, end, seq (first waiting byte), upto (the highest write_seq
    while it was open; for sndbuf, write_seq plus the bytes the call still had), released_by
    (what let the data go: tcp_sendmsg, setsockopt:TCP_CORK, ack, timer:probe0... at the same
    instant; "tx_completion" when nothing traced happened then, which in this stack means the
    TSQ handler after a TX completion; "then <reason>" when another reason took over; "closed";
    "end" if the trace ended first). TSQ holds of retransmissions (queue "rtx") are not
    counted. Pass the events of one socket (``Tracer.for_sock``, or one trace_<flow>.jsonl).
    """
    spans: list[dict] = []
    head = None
    app = None
    trigger = None
    last_t = 0.0

    def close(span, t, by):
        span["end"] = t
        span["released_by"] = by
        if t > span["start"]:
            spans.append(span)

    def released_by(t):
        if trigger is not None and abs(trigger["t"] - t) < 1e-9:
            return _trigger_name(trigger)
        return "tx_completion"

    for ev in events:
        t = ev["t"]
        last_t = t
        kind = ev["kind"]
        if head is not None and ev.get("write_seq", 0) > head["upto"]:
            head["upto"] = ev["write_seq"]
        if kind in _TRIGGERS:
            trigger = ev
        elif kind == "hold":
            reason = ev["reason"]
            if reason == "sndbuf":
                if app is None:
                    app = {"reason": reason, "start": t, "seq": ev["write_seq"],
                           "upto": ev["write_seq"] + ev.get("pending", 0)}
            elif ev.get("queue", "write") == "write":
                if head is not None and head["reason"] != reason:
                    close(head, t, f"then {reason}")
                    head = None
                if head is None:
                    head = {"reason": reason, "start": t, "seq": ev["seq"],
                            "upto": ev["write_seq"]}
        elif kind == "xmit":
            fin = "F" in ev.get("flags", "")
            if head is not None and not ev.get("retrans") and (ev.get("len") or fin):
                close(head, t, released_by(t))
                sent_end = ev["seq"] + ev.get("len", 0) + fin
                if ev["write_seq"] > sent_end:
                    # Bytes behind it still wait, for the same reason until a decision says
                    # otherwise (a loss probe or push_one sends one skb and decides nothing
                    # about the rest).
                    head = {"reason": head["reason"], "start": t, "seq": sent_end,
                            "upto": ev["write_seq"]}
                else:
                    head = None
        elif kind == "skb_append":
            if app is not None:
                close(app, t, released_by(t))
                app = None
        elif kind == "state" and ev.get("new") == "CLOSE":
            for span in (head, app):
                if span is not None:
                    close(span, t, "closed")
            head = app = None
    end = last_t if end_t is None else max(end_t, last_t)
    for span in (head, app):
        if span is not None:
            close(span, end, "end")
    spans.sort(key=lambda s: (s["start"], s["end"]))
    return spans


def held_s_by_reason(events, end_t: float | None = None) -> dict:
    """Seconds the connection's data spent held, per reason (every reason present, 0.0 if none)."""
    out = dict.fromkeys(REASONS, 0.0)
    for span in held_spans(events, end_t):
        out[span["reason"]] = out.get(span["reason"], 0.0) + (span["end"] - span["start"])
    return {k: round(v, 9) for k, v in out.items()}
