"""``sendlab trace FILE``: a decision trace (JSON lines) as a readable timeline.

One line per event: the time in ms, the kind, the connection's sequence state
(snd_una, snd_nxt and write_seq relative to its ISS, cwnd and packets in flight),
then what happened, e.g.::

    110.000  hold  una 1  nxt 121  wseq 201  cwnd 10 infl 1  nagle: 121:201 (80 B) waits for
                                                              unacked small segment 1:121
    150.000  ack   una 1  nxt 121  wseq 451  cwnd 10 infl 1  ack 121 (+120 B) win 32896 -> 33017

(one line each; the first is folded here).

Filters: ``--kind hold,xmit`` (repeatable), ``--reason nagle``, ``--from-ms``/``--to-ms``
(inclusive), ``--sock N``. ``--spans`` prints the held spans and the seconds per reason instead.

A timeline built from the wire (testbed.wire_trace, for kernel hosts) reads the same way, with
cwnd and in-flight shown as ``?`` and every hold's reason ``unknown``.
"""

from __future__ import annotations

import argparse
import sys

from stack.trace import KINDS, REASONS, TraceFormatError, read_jsonl

from .wire_trace import UNKNOWN, held_by_reason, spans_of


def describe(ev: dict) -> str:
    """What an event says, without its common fields."""
    kind = ev["kind"]
    g = ev.get
    if kind == "call":
        call = ev["call"]
        if call == "tcp_sendmsg":
            resumed = f" (resumed, {g('copied')} B copied)" if g("copied") else ""
            return f"tcp_sendmsg {g('size')} B{' ' + g('flags') if g('flags') else ''}{resumed}"
        if call == "setsockopt":
            return f"setsockopt {g('level')} {g('opt')} = {g('value')}"
        if call == "shutdown":
            return f"shutdown how={g('how')}"
        return call
    if kind == "skb_new":
        return f"new skb at {g('seq')}"
    if kind == "skb_append":
        return f"copied {g('added')} B into skb {g('seq')}:{g('end')} (now {g('skb_len')} B)"
    if kind == "hold":
        reason = g("reason")
        what = f"{g('seq')}:{g('seq', 0) + g('len', 0)} ({g('len')} B)"
        if reason == "nagle":
            sml = g("sml") or ["?", "?"]
            return f"nagle: {what} waits for unacked small segment {sml[0]}:{sml[1]}"
        if reason in ("autocork", "tsq"):
            rtx = " retransmission" if g("queue") == "rtx" else ""
            return (f"{reason}:{rtx} {what} waits, {g('wmem_alloc')} B still awaiting TX "
                    f"completion")
        if reason == "rwnd":
            return f"rwnd: {what} waits, peer window ends at {g('wnd_end')}"
        if reason == "cwnd":
            return f"cwnd: {what} waits, {g('in_flight')} in flight of cwnd {g('cwnd')}"
        if reason == "sndbuf":
            return (f"sndbuf: {g('pending')} B of the call wait, {g('wmem_queued')} B queued "
                    f"of sndbuf {g('sndbuf')}")
        if reason == UNKNOWN:       # a wire-built timeline: the wait is seen, not its reason
            until = g("until")
            left = "never left" if until is None else f"left at {until * 1000:.3f} ms"
            return f"unknown: {what} waited (written, {left})"
        return f"{reason}: {what} waits"
    if kind == "send":
        return (f"send {g('seq')}:{g('seq', 0) + g('len', 0)} ({g('len')} B, {g('segs')} seg)"
                f" [{g('via')}]")
    if kind == "xmit":
        seq, length = g("seq"), g("len", 0)
        rtx = " RETRANS" if g("retrans") else ""
        segs = f" x{g('segs')}" if g("segs", 1) > 1 else ""
        return f"{g('flags')} {seq}:{seq + length}({length}){segs}{rtx}"
    if kind == "ack":
        dup = " dup" if not g("acked") else f" (+{g('acked')} B)"
        sack = f" sack {g('sack')}" if g("sack") else ""
        return f"ack {g('ack')}{dup} win {g('win')} -> {g('wnd_end')}{sack}"
    if kind == "timer":
        return f"{g('timer')} timer fired"
    if kind == "icmp":
        return (f"icmp type {g('type')} code {g('code')} mtu {g('mtu')} quoting "
                f"{g('quoted_seq')}: {g('verdict')}")
    if kind == "mss_change":
        return f"mss -> {g('mss')} ({g('why')}, mtu {g('mtu')})"
    if kind == "state":
        return f"{g('old')} -> {g('new')}"
    skip = {"t", "kind", "sock", "conn", "snd_una", "snd_nxt", "write_seq", "cwnd", "in_flight"}
    return " ".join(f"{k}={v}" for k, v in ev.items() if k not in skip)


def format_event(ev: dict, with_conn: bool = False) -> str:
    head = f"{ev['t'] * 1000:10.3f}  {ev['kind']:<10}"
    if "snd_una" in ev:
        # cwnd and in_flight are null (unknown) in a timeline built from the wire
        cwnd, infl = ("?" if ev[k] is None else ev[k] for k in ("cwnd", "in_flight"))
        head += (f" una {ev['snd_una']:<7} nxt {ev['snd_nxt']:<7} wseq {ev['write_seq']:<7}"
                 f" cwnd {cwnd:<3} infl {infl:<3}")
    if with_conn and ev.get("conn"):
        head += f" [{ev['conn']}]"
    return f"{head} {describe(ev)}"


def select(events, kinds=None, reasons=None, from_ms=None, to_ms=None, sock=None) -> list[dict]:
    out = []
    for ev in events:
        t_ms = ev["t"] * 1000
        if from_ms is not None and t_ms < from_ms - 1e-9:
            continue
        if to_ms is not None and t_ms > to_ms + 1e-9:
            continue
        if kinds and ev["kind"] not in kinds:
            continue
        if reasons and ev.get("reason") not in reasons:
            continue
        if sock is not None and ev.get("sock") != sock:
            continue
        out.append(ev)
    return out


def _split(values) -> set:
    return {v.strip() for item in values or [] for v in item.split(",") if v.strip()}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="sendlab trace", description=__doc__)
    p.add_argument("file", help="a trace_<flow>.jsonl written by `sendlab run --trace`")
    p.add_argument("--kind", action="append", metavar="KIND[,KIND]",
                   help=f"only these kinds ({', '.join(KINDS)})")
    p.add_argument("--reason", action="append", metavar="REASON[,REASON]",
                   help=f"only hold events for these reasons ({', '.join(REASONS)}; "
                        f"{UNKNOWN} in a timeline built from the wire)")
    p.add_argument("--from-ms", type=float, help="only events at or after this time (ms)")
    p.add_argument("--to-ms", type=float, help="only events at or before this time (ms)")
    p.add_argument("--sock", type=int, help="only this socket's events (the 'sock' field)")
    p.add_argument("--spans", action="store_true",
                   help="print the spans where data waited and the seconds per reason")
    return p


def run(args, out=None) -> int:
    out = out or sys.stdout
    try:
        events = read_jsonl(args.file)
    except OSError as exc:
        print(f"sendlab: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except TraceFormatError as exc:
        print(f"sendlab: {exc}", file=sys.stderr)
        return 2
    kinds, reasons = _split(args.kind), _split(args.reason)
    unknown = (kinds - set(KINDS)) | (reasons - set(REASONS) - {UNKNOWN})
    if unknown:
        print(f"sendlab: unknown kind or reason: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if reasons and not kinds:
        kinds = {"hold"}
    if args.spans:
        return _print_spans(events, args, reasons, out)
    chosen = select(events, kinds, reasons, args.from_ms, args.to_ms, args.sock)
    with_conn = len({ev.get("sock") for ev in events if "sock" in ev}) > 1
    try:
        for ev in chosen:
            print(format_event(ev, with_conn), file=out)
    except BrokenPipeError:        # `sendlab trace FILE | head`
        sys.stdout = None
    return 0


def _print_spans(events, args, reasons, out) -> int:
    socks = sorted({ev["sock"] for ev in events if "sock" in ev} if args.sock is None
                   else {args.sock})
    for sock in socks:
        mine = [ev for ev in events if ev.get("sock") == sock]
        conn = next((ev["conn"] for ev in reversed(mine) if ev.get("conn")), "?")
        print(f"socket {sock} {conn}", file=out)
        for span in spans_of(mine):
            if reasons and span["reason"] not in reasons:
                continue
            if args.from_ms is not None and span["end"] * 1000 < args.from_ms:
                continue
            if args.to_ms is not None and span["start"] * 1000 > args.to_ms:
                continue
            print(f"  {span['start'] * 1000:10.3f} .. {span['end'] * 1000:10.3f} ms "
                  f"{(span['end'] - span['start']) * 1000:9.3f} ms  {span['reason']:<9} "
                  f"from {span['seq']} (written up to {span['upto']}), "
                  f"released by {span['released_by']}", file=out)
        held = {k: v for k, v in held_by_reason(mine).items() if v}
        total = ", ".join(f"{k} {v:.6f} s" for k, v in held.items()) or "nothing held"
        print(f"  held: {total}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
