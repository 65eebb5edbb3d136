"""The decision trace: reasons match what the conformance scripts assert, the files round-trip,
``sendlab trace`` filters, the time-sequence graph renders, held time adds up per reason, and
the hooks cost nothing when no tracer is attached."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from stack.packetdrill.runner import run_script
from stack.trace import (
    KINDS, REASONS, TraceFormatError, Tracer, held_s_by_reason, held_spans, read_jsonl,
    write_jsonl,
)
from testbed.cli import main
from testbed.run import run_sim
from testbed.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
SHARED_SCRIPTS = sorted(SHARED.glob("*.pkt")) if SHARED.is_dir() else []
needs_shared = pytest.mark.skipif(not SHARED_SCRIPTS, reason=f"no scripts in {SHARED}")
BASE_FIELDS = {"t", "kind", "sock", "conn", "snd_una", "snd_nxt", "write_seq", "cwnd",
               "in_flight"}

# What each shared script asserts about held data, as the reasons its trace must show
# (the write-queue and application holds; an empty set: nothing is ever held).
EXPECTED_REASONS = {
    "nagle_hold_until_ack.pkt": {"nagle"},
    "nagle_minshall_full_vs_small.pkt": {"nagle"},
    "cork_hold_flush_full_mss.pkt": {"cork"},
    "msg_more_release_paths.pkt": {"msg_more"},
    "probe0_msg_more_lone_segment.pkt": {"msg_more"},
    "sndbuf_partial_write_eagain.pkt": {"sndbuf", "cwnd"},
    "eor_nagle_no_coalesce.pkt": {"nagle"},
    "syn_options_client_ts_iw10.pkt": {"cwnd"},      # IW10: the 11th segment waits for an ACK
    "mss_local_mtu1280_server.pkt": {"cork"},
    "icmp_frag_needed_mtu1200.pkt": set(),
}


def traced(name: str):
    """Run a shared script with a tracer; returns the events of the connection that sent data."""
    tracer = Tracer()
    result = run_script(SHARED / name, tracer=tracer)
    assert result.passed, result.failure.render()
    sent = {ev["sock"] for ev in tracer.events if ev["kind"] == "xmit" and ev.get("len")}
    assert len(sent) == 1
    sock = sent.pop()
    return [ev for ev in tracer.events if ev.get("sock") == sock]


def holds(events, reason=None):
    return [ev for ev in events
            if ev["kind"] == "hold" and (reason is None or ev["reason"] == reason)]


def at_ms(events, t_ms: float, kind: str):
    return [ev for ev in events if ev["kind"] == kind and abs(ev["t"] * 1000 - t_ms) < 1e-6]


# --------------------------------------------------------------------------
# Reasons against the conformance scripts
# --------------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("path", SHARED_SCRIPTS, ids=lambda p: p.name)
def test_script_passes_traced_and_reports_the_reasons_it_asserts(path):
    tracer = Tracer()
    result = run_script(path, tracer=tracer)
    assert result.passed, result.failure.render()       # tracing changes nothing on the wire
    reasons = {ev["reason"] for ev in tracer.events if ev["kind"] == "hold"
               and ev["queue"] != "rtx"}
    assert reasons <= set(REASONS)
    assert {ev["kind"] for ev in tracer.events} <= set(KINDS)
    for ev in tracer.events:
        if "sock" in ev:
            assert BASE_FIELDS <= set(ev), ev
    if path.name in EXPECTED_REASONS:
        assert reasons == EXPECTED_REASONS[path.name]


@needs_shared
def test_nagle_holds_writes_on_the_unacked_small_segment_until_its_ack():
    ev = traced("nagle_hold_until_ack.pkt")
    held = holds(ev)
    assert held and {h["reason"] for h in held} == {"nagle"}
    # The 80- and 250-byte writes wait behind the 120-byte segment 1:121.
    first = at_ms(ev, 110, "hold")[0]
    assert (first["seq"], first["len"], first["sml"]) == (121, 80, [1, 121])
    assert at_ms(ev, 120, "hold")[0]["len"] == 330
    spans = held_spans(ev)
    assert [(s["reason"], s["seq"], round(s["start"], 3), round(s["end"], 3), s["released_by"])
            for s in spans] == [("nagle", 121, 0.11, 0.15, "ack"), ("nagle", 451, 0.16, 0.2, "ack")]
    # With TCP_NODELAY nothing is held any more.
    nodelay = next(e for e in ev if e["kind"] == "call" and e.get("opt") == "TCP_NODELAY")
    assert not [h for h in held if h["t"] >= nodelay["t"]]


@needs_shared
def test_minshall_an_unacked_full_segment_never_holds():
    ev = traced("nagle_minshall_full_vs_small.pkt")
    held = holds(ev)
    assert held and all(h["sml"] == [1001, 1101] for h in held)   # the small one, never 1:1001
    assert [s["released_by"] for s in held_spans(ev)] == ["ack"]


@needs_shared
def test_cork_holds_until_uncork_and_full_segments_leave_while_corked():
    ev = traced("cork_hold_flush_full_mss.pkt")
    assert {h["reason"] for h in holds(ev)} == {"cork"}
    assert [s["released_by"] for s in held_spans(ev)] == [
        "setsockopt:TCP_CORK", "tcp_sendmsg", "setsockopt:TCP_CORK"]
    sent_corked = [e for e in ev if e["kind"] == "send" and 0.2 < e["t"] < 0.35]
    assert {e["len"] for e in sent_corked} == {1000}


@needs_shared
def test_msg_more_holds_and_each_release_path_is_named():
    ev = traced("msg_more_release_paths.pkt")
    assert {h["reason"] for h in holds(ev)} == {"msg_more"}
    assert [s["released_by"] for s in held_spans(ev)] == [
        "tcp_sendmsg", "setsockopt:TCP_NODELAY", "ack", "ack"]
    calls = [e for e in ev if e["kind"] == "call" and e["call"] == "tcp_sendmsg"]
    assert calls[0]["flags"] == "MSG_MORE" and calls[0]["size"] == 300


@needs_shared
def test_lone_msg_more_segment_is_released_by_the_probe0_timer():
    ev = traced("probe0_msg_more_lone_segment.pkt")
    first = held_spans(ev)[0]
    assert first["reason"] == "msg_more" and first["released_by"] == "timer:probe0"
    timer = next(e for e in ev if e["kind"] == "timer")
    assert timer["timer"] == "probe0"
    after = ev[ev.index(timer) + 1]
    assert (after["kind"], after["seq"], after["len"], after["flags"]) == ("xmit", 1, 500, "P.")
    assert 0.212 <= first["end"] - first["start"] <= 0.216 + 0.012


@needs_shared
def test_full_send_buffer_shows_sndbuf_behind_cwnd():
    ev = traced("sndbuf_partial_write_eagain.pkt")
    sndbuf = holds(ev, "sndbuf")
    assert len(sndbuf) == 3           # the partial 100000-byte write, then the two EAGAINs
    assert sndbuf[0]["pending"] == 100000 - 26000
    assert all(h["wmem_queued"] >= h["sndbuf"] == 20000 for h in sndbuf)
    assert holds(ev, "cwnd")[0]["in_flight"] == 10
    by_reason = {s["reason"]: s for s in held_spans(ev)}
    assert by_reason["cwnd"]["released_by"] == "ack"
    assert by_reason["sndbuf"]["released_by"] == "tcp_sendmsg"   # the next write copies again


@needs_shared
def test_eor_skb_is_sent_and_the_new_tail_is_the_one_nagle_holds():
    ev = traced("eor_nagle_no_coalesce.pkt")
    assert {h["reason"] for h in holds(ev)} == {"nagle"}
    eor = at_ms(ev, 210, "hold")[0]
    assert (eor["seq"], eor["len"], eor["sml"]) == (701, 200, [601, 701])
    tail = at_ms(ev, 220, "hold")[0]
    assert (tail["seq"], tail["len"], tail["sml"]) == (901, 300, [701, 901])
    assert [(x["seq"], x["len"]) for x in at_ms(ev, 220, "xmit")] == [(701, 200)]


@needs_shared
def test_icmp_frag_needed_shows_the_mss_change_and_the_retransmissions():
    ev = traced("icmp_frag_needed_mtu1200.pkt")
    icmp = next(e for e in ev if e["kind"] == "icmp")
    assert (icmp["mtu"], icmp["verdict"], icmp["quoted_seq"]) == (1200, "frag_needed", 1)
    mss = next(e for e in ev if e["kind"] == "mss_change")
    assert (mss["mss"], mss["why"]) == (1160, "icmp")
    rtx = [(e["seq"], e["len"]) for e in ev if e["kind"] == "xmit" and e["retrans"]]
    assert rtx == [(1, 1160), (1161, 300)]


# --------------------------------------------------------------------------
# held_spans on hand-made events
# --------------------------------------------------------------------------

def _ev(t, kind, write_seq=100, **kw):
    return {"t": t, "kind": kind, "sock": 0, "write_seq": write_seq, **kw}


def test_held_span_is_relabelled_when_another_reason_takes_over():
    ev = [_ev(1.0, "hold", reason="autocork", queue="write", seq=1, len=10),
          _ev(1.5, "hold", reason="nagle", queue="write", seq=1, len=10),
          _ev(2.0, "ack", ack=1),
          _ev(2.0, "xmit", seq=1, len=99, flags="P.", retrans=False)]
    assert held_s_by_reason(ev)["autocork"] == 0.5
    assert held_s_by_reason(ev)["nagle"] == 0.5
    assert [s["released_by"] for s in held_spans(ev)] == ["then nagle", "ack"]


def test_retransmissions_do_not_release_held_data():
    ev = [_ev(1.0, "hold", reason="cwnd", queue="write", seq=50, len=50),
          _ev(2.0, "xmit", seq=1, len=49, flags=".", retrans=True),
          _ev(3.0, "xmit", seq=50, len=50, flags=".", retrans=False)]
    assert held_s_by_reason(ev)["cwnd"] == 2.0


def test_bytes_left_behind_a_send_keep_waiting_for_the_same_reason():
    ev = [_ev(1.0, "hold", reason="cwnd", queue="write", seq=50, len=50),
          _ev(2.0, "timer", timer="loss_probe"),
          _ev(2.0, "xmit", seq=50, len=10, flags=".", retrans=False),
          _ev(5.0, "timer", timer="rto")]
    spans = held_spans(ev, end_t=6.0)
    assert [(s["seq"], s["start"], s["end"], s["released_by"]) for s in spans] == [
        (50, 1.0, 2.0, "timer:loss_probe"), (60, 2.0, 6.0, "end")]


def test_sndbuf_wait_ends_when_the_application_copies_again():
    ev = [_ev(1.0, "hold", reason="sndbuf", queue="app", seq=1, len=0, pending=500),
          _ev(1.2, "call", call="tcp_sendmsg"),
          _ev(1.2, "hold", reason="sndbuf", queue="app", seq=1, len=0, pending=500),
          _ev(3.0, "call", call="tcp_sendmsg"),
          _ev(3.0, "skb_append", seq=100, end=600, added=500, skb_len=500, write_seq=600)]
    (span,) = held_spans(ev)
    assert (span["start"], span["end"], span["upto"]) == (1.0, 3.0, 600)


def test_rtx_tsq_holds_are_not_counted():
    ev = [_ev(1.0, "hold", reason="tsq", queue="rtx", seq=1, len=10), _ev(2.0, "ack")]
    assert not any(held_s_by_reason(ev).values())


# --------------------------------------------------------------------------
# Files and the CLI
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nagle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nagle")
    summary = run_sim(load_topology(ROOT / "topologies" / "small_writes.yaml"), out, trace=True)
    return out, summary


@needs_shared
def test_trace_jsonl_round_trips(tmp_path):
    tracer = Tracer()
    assert run_script(SHARED / "msg_more_release_paths.pkt", tracer=tracer).passed
    path = tmp_path / "t.jsonl"
    assert write_jsonl(path, tracer.events) == len(tracer.events)
    assert read_jsonl(path) == tracer.events
    # Each line is one JSON object.
    lines = path.read_text().splitlines()
    assert len(lines) == len(tracer.events) and json.loads(lines[0]) == tracer.events[0]


def test_run_trace_writes_jsonl_beside_summary_and_held_time_per_reason(nagle_run):
    out, summary = nagle_run
    on_disk = json.loads((out / "summary.json").read_text())
    for flow in on_disk["flows"]:
        events = read_jsonl(out / f"trace_{flow['name']}.jsonl")
        assert events and {ev["sock"] for ev in events} == {events[0]["sock"]}
        assert set(flow["held_s_by_reason"]) == set(REASONS)
        assert flow["held_s_by_reason"] == held_s_by_reason(events, on_disk["end_s"])
    stream = next(f for f in on_disk["flows"] if f["name"] == "stream")
    held = stream["held_s_by_reason"]
    assert held["nagle"] > 0, "Nagle on: small writes wait behind an unacked small segment"
    assert sum(held.values()) <= 2 * on_disk["end_s"]   # head and application tracks at most
    # The trace explains the segments: every data segment on the wire is an xmit event.
    xmits = [ev for ev in read_jsonl(out / "trace_stream.jsonl")
             if ev["kind"] == "xmit" and ev["len"]]
    assert sum(ev["segs"] for ev in xmits) == stream["data_segments"]


def test_nodelay_run_has_no_nagle_cork_or_msg_more_time(tmp_path):
    topo = load_topology(ROOT / "topologies" / "small_writes.yaml",
                         ["hosts.h1.socket.nodelay=true"])
    summary = run_sim(topo, tmp_path, trace=True)
    for flow in summary["flows"]:
        held = flow["held_s_by_reason"]
        assert held["nagle"] == held["cork"] == held["msg_more"] == 0.0


def test_tracing_does_not_change_the_run(nagle_run, tmp_path):
    _, traced_summary = nagle_run
    plain = run_sim(load_topology(ROOT / "topologies" / "small_writes.yaml"), tmp_path)
    for flow in traced_summary["flows"]:
        flow = dict(flow)
        flow.pop("held_s_by_reason")
        assert flow == next(f for f in plain["flows"] if f["name"] == flow["name"])
    assert "held_s_by_reason" not in plain["flows"][0]
    assert not list(tmp_path.glob("trace_*.jsonl"))


def test_sendlab_trace_filters_by_kind_reason_and_time(nagle_run, capsys):
    out, _ = nagle_run
    path = str(out / "trace_stream.jsonl")
    events = read_jsonl(path)
    lo, hi = 20.1, 20.5
    assert main(["trace", path, "--kind", "hold,ack", "--from-ms", str(lo),
                 "--to-ms", str(hi)]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = [ev for ev in events if ev["kind"] in ("hold", "ack") and lo <= ev["t"] * 1000 <= hi]
    assert len(lines) == len(want) > 0
    assert all(line.split()[1] in ("hold", "ack") and lo <= float(line.split()[0]) <= hi
               for line in lines)
    assert main(["trace", path, "--reason", "nagle"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("nagle: " in line and "waits for unacked small segment" in line
                         for line in lines)
    assert main(["trace", path]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(events)
    assert main(["trace", path, "--spans"]) == 0
    text = capsys.readouterr().out
    assert "released by" in text and "held: " in text and "nagle" in text


def test_sendlab_trace_rejects_bad_input_with_a_line_number(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "kind": "call"}\nnot json\n')
    assert main(["trace", str(bad)]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    with pytest.raises(TraceFormatError):
        read_jsonl(bad)
    good = tmp_path / "good.jsonl"
    good.write_text('{"t": 0, "kind": "call", "call": "close"}\n')
    assert main(["trace", str(good), "--kind", "nonsense"]) == 2
    assert "unknown kind" in capsys.readouterr().err
    assert main(["trace", str(tmp_path / "missing.jsonl")]) == 2


def test_time_sequence_graph_renders_png_and_svg(nagle_run, tmp_path):
    import matplotlib.image as mpimg

    from testbed.tsg import render_file
    out, _ = nagle_run
    png, svg = render_file(out / "trace_stream.jsonl", tmp_path / "tsg")
    img = mpimg.imread(png)[..., :3]
    ink = (img.sum(axis=2) < 2.9).mean()
    assert ink > 0.02, "the graph has content, not an empty canvas"
    assert len({tuple(px) for px in img.reshape(-1, 3)[::97].round(2)}) > 8, "several colours"
    text = svg.read_text()
    assert "<svg" in text and "time (ms)" in text and "held: nagle" in text


# --------------------------------------------------------------------------
# Cheap when disabled
# --------------------------------------------------------------------------

def _is_tracer_test(node) -> bool:
    return (isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.IsNot) and
            ((isinstance(node.left, ast.Attribute) and node.left.attr == "tracer") or
             (isinstance(node.left, ast.Name) and node.left.id == "tracer")))


def test_every_core_hook_is_behind_a_tracer_test():
    """No call, argument or formatting runs in the core when no tracer is attached."""
    for path in sorted((ROOT / "stack").glob("*.py")):
        if path.name in ("trace.py", "host.py"):
            continue
        tree = ast.parse(path.read_text())
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_tracer_test(node.test):
                guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target = node.func.value
            to_tracer = (isinstance(target, ast.Attribute) and target.attr == "tracer") or \
                (isinstance(target, ast.Name) and target.id == "tracer")
            assert not node.func.attr.startswith("trace_"), \
                f"{path.name}:{node.lineno}: unguarded host.{node.func.attr}()"
            if to_tracer:
                assert id(node) in guarded, f"{path.name}:{node.lineno}: tracer call not guarded"


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------

SWEEP = """name: tiny
topology: TOPO
set:
  traffic.0.bulk.bytes: 30kB
  run.stall_timeout_s: 2
grid:
  routers.r2.icmp: [send, suppress]
  traffic.0.sysctls.net.ipv4.tcp_mtu_probing: [0, 2]
repetitions: 2
metrics: [completed, duration_s]
plots:
  - {x: traffic.0.sysctls.net.ipv4.tcp_mtu_probing, y: duration_s, by: routers.r2.icmp, kind: bar}
"""


def test_report_has_one_time_sequence_graph_per_mode_from_repetition_0(tmp_path):
    from testbed.report import write_report
    from testbed.sweep import sweep
    exp = tmp_path / "exp.yaml"
    exp.write_text(SWEEP.replace("TOPO", str(ROOT / "topologies" / "pmtu_blackhole.yaml")))
    out = tmp_path / "out"
    assert sweep(str(exp), str(out)) == 0
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*/summary.json")]
    traced_cells = [c for c in cells if "held_s_by_reason" in c["flows"][0]]
    assert len(cells) == 8 and len(traced_cells) == 4      # repetition 0 of each of 4 cells
    assert len(list(out.glob("cells/*/trace_*.jsonl"))) == 4
    html = write_report(str(out)).read_text()
    assert "Time-sequence graphs" in html
    pngs = sorted(out.glob("tsg_*.png"))
    assert len(pngs) == 4 and len(list(out.glob("tsg_*.svg"))) == 4   # each (icmp, probing) bar
    assert any("icmp=suppress" in p.name and "tcp_mtu_probing=0" in p.name for p in pngs)
    assert html.count("alt='time-sequence graph") == 4
