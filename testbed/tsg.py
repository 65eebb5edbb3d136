"""Time-sequence graphs of one flow from its decision trace (as tcptrace and Wireshark draw them).

Sequence number (bytes, relative to the ISS) against time (ms):

- the application's writes: a tick over the bytes each tcp_sendmsg copied, on the write_seq line;
- segments handed to IP as vertical bars over the bytes they carry (retransmissions in red);
- the cumulative ACK as a step line, and the receive window's right edge as another;
- shaded boxes where data waited, coloured by reason (stack.trace.held_spans): from the first
  waiting byte up to the highest write_seq while it waited; in a timeline built from the wire
  (testbed.wire_trace) the reason is unknown and the boxes grey, one per write's waiting bytes;
- timers that fired (RTO, probe0, loss probe), ICMP errors and MSS changes as marks.

``render(events, base)`` writes ``base.png`` and ``base.svg``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PatchCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from stack.trace import REASONS, read_jsonl  # noqa: E402

from .wire_trace import UNKNOWN, spans_of  # noqa: E402

REASON_COLOURS = {
    "nagle": "#1f77b4", "cork": "#9467bd", "msg_more": "#e377c2", "autocork": "#ff7f0e",
    "cwnd": "#d62728", "rwnd": "#8c564b", "tsq": "#bcbd22", "tso_defer": "#17becf",
    "sndbuf": "#7f7f7f", UNKNOWN: "#b0b0b0",
}
_SEG_COLOUR = "#000000"
_RETRANS_COLOUR = "#d62728"
_WRITE_COLOUR = "#2ca02c"
_ACK_COLOUR = "#1a9850"
_WND_COLOUR = "#fdae61"


def main_sock(events) -> int | None:
    """The socket of a trace that sent the most data (a per-flow trace has only one)."""
    sent: dict = {}
    for ev in events:
        if ev["kind"] == "xmit" and "sock" in ev:
            sent[ev["sock"]] = sent.get(ev["sock"], 0) + ev.get("len", 0)
    if not sent:
        socks = [ev["sock"] for ev in events if "sock" in ev]
        return socks[0] if socks else None
    return max(sent, key=lambda s: (sent[s], -s))


def render(events, base, title: str = "") -> tuple[Path, Path]:
    """Draw the flow's time-sequence graph; returns the PNG and SVG paths."""
    base = Path(base)
    sock = main_sock(events)
    events = [ev for ev in events if ev.get("sock") == sock] if sock is not None else []
    fig = figure(events, title)
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight")
    plt.close(fig)
    return png, svg


def render_file(path, base=None, title: str | None = None) -> tuple[Path, Path]:
    path = Path(path)
    base = Path(base) if base is not None else path.with_suffix("")
    return render(read_jsonl(path), base, title if title is not None else path.stem)


def figure(events, title: str = ""):
    """The matplotlib figure of one socket's events."""
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ms = 1000.0
    handles = []
    if not events:
        ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
        return fig

    # Held spans first, so everything else draws on top.
    spans = spans_of(events)
    used = []
    for reason in REASONS + (UNKNOWN,):
        mine = [s for s in spans if s["reason"] == reason]
        if not mine:
            continue
        used.append(reason)
        rects = [Rectangle((s["start"] * ms, s["seq"]), max((s["end"] - s["start"]) * ms, 1e-6),
                           max(s["upto"] - s["seq"], 1)) for s in mine]
        ax.add_collection(PatchCollection(rects, facecolor=REASON_COLOURS[reason], alpha=0.3,
                                          edgecolor="none", zorder=1))
    handles += [Patch(facecolor=REASON_COLOURS[r], alpha=0.3, label=f"held: {r}") for r in used]

    # write_seq as a step line, each write as a tick over the bytes it copied.
    ws = [(ev["t"] * ms, ev["write_seq"]) for ev in events if "write_seq" in ev]
    if ws:
        ax.step([t for t, _ in ws], [w for _, w in ws], where="post", color=_WRITE_COLOUR,
                linewidth=0.6, alpha=0.6, zorder=2)
    writes = [ev for ev in events if ev["kind"] == "skb_append"]
    if not writes:    # a timeline built from the wire: the writes as the application saw them
        writes = [dict(ev, added=ev["size"]) for ev in events
                  if ev["kind"] == "call" and "end" in ev and ev.get("size")]
    if writes:
        ax.add_collection(LineCollection(
            [[(ev["t"] * ms, ev["end"] - ev["added"]), (ev["t"] * ms, ev["end"])] for ev in writes],
            colors=_WRITE_COLOUR, linewidths=1.0, zorder=3))
        ax.plot([ev["t"] * ms for ev in writes], [ev["end"] for ev in writes], linestyle="none",
                marker="_", markersize=5, color=_WRITE_COLOUR, zorder=3)
        handles.append(Line2D([], [], color=_WRITE_COLOUR, marker="_",
                              label="application writes (write_seq)"))

    # Segments as vertical bars.
    for retrans, colour, label, width in ((False, _SEG_COLOUR, "segments sent", 1.2),
                                         (True, _RETRANS_COLOUR, "retransmissions", 2.0)):
        segs = [ev for ev in events if ev["kind"] == "xmit" and bool(ev.get("retrans")) == retrans
                and (ev.get("len") or "S" in ev.get("flags", "") or "F" in ev.get("flags", ""))]
        if not segs:
            continue
        bars = [[(ev["t"] * ms, ev["seq"]), (ev["t"] * ms, ev["seq"] + max(ev.get("len", 0), 1))]
                for ev in segs]
        ax.add_collection(LineCollection(bars, colors=colour, linewidths=width, zorder=4))
        marker, size = ("x", 6) if retrans else ("_", 4)   # a retransmission stands out
        ax.plot([ev["t"] * ms for ev in segs], [ev["seq"] + ev.get("len", 0) for ev in segs],
                linestyle="none", marker=marker, markersize=size, color=colour, zorder=4)
        handles.append(Line2D([], [], color=colour, linewidth=width, marker=marker,
                              markersize=size, label=label))

    # ACKs and the receive window's right edge, as step lines.
    acks = [ev for ev in events if ev["kind"] == "ack"]
    if acks:
        ack_line, wnd_line, high = [], [], None
        for ev in acks:
            high = ev["ack"] if high is None else max(high, ev["ack"])
            ack_line.append((ev["t"] * ms, high))
            wnd_line.append((ev["t"] * ms, ev["wnd_end"]))
        t_end = max(ev["t"] for ev in events) * ms
        ack_line.append((t_end, ack_line[-1][1]))
        wnd_line.append((t_end, wnd_line[-1][1]))
        ax.step(*zip(*ack_line), where="post", color=_ACK_COLOUR, linewidth=1.2, zorder=5)
        ax.step(*zip(*wnd_line), where="post", color=_WND_COLOUR, linewidth=1.0, zorder=5)
        handles.append(Line2D([], [], color=_ACK_COLOUR, label="cumulative ACK"))
        handles.append(Line2D([], [], color=_WND_COLOUR, label="receive window edge"))

    # Timers, ICMP and MSS changes: marks at the ACK line, labels for the rare ones.
    marks = {"timer": ("v", "#444444", "timer fired"), "icmp": ("x", "#9e0142", "ICMP"),
             "mss_change": ("D", "#5e4fa2", "MSS change")}
    for kind, (marker, colour, label) in marks.items():
        evs = [ev for ev in events if ev["kind"] == kind and
               (kind != "timer" or ev.get("timer") != "delack")]
        if not evs:
            continue
        ax.plot([ev["t"] * ms for ev in evs], [ev["snd_una"] for ev in evs], linestyle="none",
                marker=marker, color=colour, markersize=6, zorder=6)
        handles.append(Line2D([], [], color=colour, marker=marker, linestyle="none", label=label))
        if kind == "mss_change" or (kind == "timer" and len(evs) <= 12):
            for ev in evs:
                text = (f"mss {ev.get('mss')} ({ev.get('why')})" if kind == "mss_change"
                        else ev.get("timer", ""))
                ax.annotate(text, (ev["t"] * ms, ev["snd_una"]), textcoords="offset points",
                            xytext=(3, -10), fontsize=7, color=colour)

    ax.autoscale_view()
    # Keep the data readable: a receive window far above it is clipped and stated instead.
    data_top = max([ev["write_seq"] for ev in events if "write_seq" in ev] +
                   [ev["seq"] + ev.get("len", 0) for ev in events if ev["kind"] == "xmit"] + [1])
    wnd_top = max([ev["wnd_end"] for ev in acks] + [0])
    if wnd_top > 1.5 * data_top:
        ax.set_ylim(top=data_top * 1.25)
        ax.text(0.99, 0.98, f"receive window edge above the plot (up to {wnd_top} B)",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color=_WND_COLOUR)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("sequence number (bytes from the ISS)")
    ax.set_title(title or (events[-1].get("conn") or ""))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0)
    return fig
