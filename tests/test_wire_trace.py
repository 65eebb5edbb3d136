"""The timeline built from the wire (testbed.wire_trace): what a capture and the application's
writes show, in the decision trace's schema, with the reasons left unknown.

A hand-built pcap checks each field; a sim run checks that the wire-built timeline of a python
flow agrees with the stack's own trace on what both can see."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

import testbed.run as run_mod
from stack.trace import held_s_by_reason, held_spans, read_jsonl, write_jsonl
from stack.wire import (
    IPPROTO_ICMP, IPPROTO_TCP, TCPHDR_ACK, TCPHDR_PSH, TCPHDR_SYN, TCPOPT_MSS, TCPOPT_NOP,
    TCPOPT_SACK, TCPOPT_SACK_PERM, TCPOPT_WINDOW, TcpOption, build_frag_needed, encode_ipv4,
    encode_tcp, ip_to_bytes,
)
from testbed import trace_cli
from testbed.pcap import write_ip_pcap
from testbed.topology import load_topology
from testbed.tsg import render
from testbed.wire_trace import (
    UNKNOWN, held_by_reason, held_s_unknown, is_wire_built, spans_of, timeline_from_wire,
    wire_spans,
)

ROOT = Path(__file__).resolve().parents[1]
BASE_FIELDS = {"t", "kind", "sock", "conn", "snd_una", "snd_nxt", "write_seq", "cwnd",
               "in_flight"}

S_ADDR, S_PORT = "10.0.0.1", 40000
R_ADDR, R_PORT = "10.0.0.2", 5001
ROUTER = "10.0.0.254"
ISS = 0xFFFFFF00            # the data wraps past 2**32 after 255 bytes
IRS = 0x00001000
S_WSCALE, R_WSCALE = 7, 5

# The application's writes: (time, stream offset after the write).
WRITES = [(0.010, 100), (0.011, 300), (0.012, 400), (0.030, 1400), (0.045, 1500),
          (0.070, 1600)]


def tcp_ip(src, dst, sport, dport, seq, ack, flags, win, opts=(), payload=b""):
    s, d = ip_to_bytes(src), ip_to_bytes(dst)
    seg = encode_tcp(s, d, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, win,
                     tuple(opts), payload)
    return encode_ipv4(s, d, IPPROTO_TCP, seg)


def out(seq, length, t, flags=TCPHDR_ACK | TCPHDR_PSH, ack=1):
    """A segment from the sender, seq relative to ISS (ack relative to IRS)."""
    return (t, tcp_ip(S_ADDR, R_ADDR, S_PORT, R_PORT, ISS + seq, IRS + ack, flags, 502, (),
                      bytes(length)), "h1", "h2")


def back(ack, win, t, opts=()):
    """An ACK from the receiver, ack relative to ISS; win as it is in the header (unscaled)."""
    return (t, tcp_ip(R_ADDR, S_ADDR, R_PORT, S_PORT, IRS + 1, ISS + ack, TCPHDR_ACK, win, opts),
            "h2", "h1")


def handshake(t_syn=0.0, t_synack=0.010, wscale=True):
    syn_opts = [TcpOption(TCPOPT_MSS, 1460), TcpOption(TCPOPT_SACK_PERM), TcpOption(TCPOPT_NOP)]
    synack_opts = list(syn_opts)
    if wscale:
        syn_opts.append(TcpOption(TCPOPT_WINDOW, S_WSCALE))
        synack_opts.append(TcpOption(TCPOPT_WINDOW, R_WSCALE))
    return [
        (t_syn, tcp_ip(S_ADDR, R_ADDR, S_PORT, R_PORT, ISS, 0, TCPHDR_SYN, 64240, syn_opts),
         "h1", "h2"),
        (t_synack, tcp_ip(R_ADDR, S_ADDR, R_PORT, S_PORT, IRS, ISS + 1, TCPHDR_SYN | TCPHDR_ACK,
                          65160, synack_opts), "h2", "h1"),
        out(1, 0, t_synack, TCPHDR_ACK),
    ]


def frag_needed(t, quoted, mtu=1200):
    icmp = build_frag_needed(mtu, quoted)
    return (t, encode_ipv4(ip_to_bytes(ROUTER), ip_to_bytes(S_ADDR), IPPROTO_ICMP, icmp),
            "r1", "h1")


def sack(start, end):
    return [TcpOption(TCPOPT_NOP), TcpOption(TCPOPT_NOP),
            TcpOption(TCPOPT_SACK, (((ISS + start) & 0xFFFFFFFF, (ISS + end) & 0xFFFFFFFF),))]


@pytest.fixture
def capture(tmp_path):
    big = out(401, 1000, 0.030)
    frames = handshake() + [
        out(1, 100, 0.010),                    # write 1 leaves at once
        back(101, 2000, 0.020),                # 2000 << 5 = 64000
        out(101, 300, 0.020),                  # writes 2 and 3 waited for this
        big,                                   # write 4 leaves at once
        frag_needed(0.031, big[1]),            # a router on the path quotes it
        back(401, 2000, 0.040),
        back(401, 2000, 0.045, sack(1101, 1401)),   # a duplicate with a SACK block
        out(401, 700, 0.050),                  # retransmission (the MTU shrank)
        out(1101, 400, 0.055),                 # 1101:1401 again, then write 5's 1401:1501
        back(1501, 3000, 0.060),
        back(1501, 3000, 0.080),               # write 6 (1501:1601) never leaves
        # another connection on the same link, to be ignored
        (0.015, tcp_ip(S_ADDR, R_ADDR, S_PORT + 1, R_PORT, 7, 9, TCPHDR_ACK, 100, (), b"x" * 50),
         "h1", "h2"),
    ]
    frames.sort(key=lambda f: f[0])
    path = tmp_path / "link0_h1-h2.pcap"
    write_ip_pcap(path, frames)
    return path


def kinds(events, kind):
    return [ev for ev in events if ev["kind"] == kind]


# --------------------------------------------------------------------------
# A hand-built capture
# --------------------------------------------------------------------------

def test_every_event_has_the_trace_schema_with_cwnd_unknown(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    assert events
    for ev in events:
        assert BASE_FIELDS <= set(ev), ev
        assert ev["cwnd"] is None and ev["in_flight"] is None
        assert ev["sock"] == 0
        assert ev["conn"] == f"{S_ADDR}:{S_PORT}-{R_ADDR}:{R_PORT}"
    assert {ev["kind"] for ev in events} == {"call", "hold", "xmit", "ack", "icmp"}
    assert [ev["t"] for ev in events] == sorted(ev["t"] for ev in events)
    assert is_wire_built(events)
    json.dumps(events)        # JSON-native, as write_jsonl needs


def test_xmit_relative_seqs_and_retransmissions(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    xmits = [(ev["seq"], ev["len"], ev["flags"], ev["retrans"]) for ev in kinds(events, "xmit")]
    assert xmits == [
        (0, 0, "S", False), (1, 0, ".", False), (1, 100, "P.", False), (101, 300, "P.", False),
        (401, 1000, "P.", False), (401, 700, "P.", True), (1101, 400, "P.", True),
    ]
    x = kinds(events, "xmit")
    assert x[0]["ack"] is None                 # the SYN carries no ACK
    assert x[1]["ack"] == 1                    # relative to the receiver's ISS
    # the sequence state before each send, as the stack shows it
    rtx = x[5]
    assert (rtx["snd_una"], rtx["snd_nxt"], rtx["write_seq"]) == (401, 1401, 1501)
    assert (x[6]["snd_una"], x[6]["snd_nxt"]) == (401, 1401)


def test_acks_relative_with_the_window_scaled(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    acks = [(ev["ack"], ev["acked"], ev["win"], ev["wnd_end"], ev["sack"])
            for ev in kinds(events, "ack")]
    assert acks == [
        (1, 1, 65160, 65161, 0),               # the SYN-ACK: its window is never scaled
        (101, 100, 64000, 64101, 0),
        (401, 300, 64000, 64401, 0),
        (401, 0, 64000, 64401, 1),
        (1501, 1100, 96000, 97501, 0),
        (1501, 0, 96000, 97501, 0),
    ]
    assert [ev["snd_una"] for ev in kinds(events, "ack")] == [0, 1, 101, 401, 401, 1501]


def test_window_unscaled_without_the_option(tmp_path):
    frames = handshake(wscale=False) + [out(1, 100, 0.010), back(101, 2000, 0.020)]
    path = tmp_path / "noscale.pcap"
    write_ip_pcap(path, frames)
    events = timeline_from_wire(path, S_ADDR, S_PORT, R_ADDR, R_PORT, [(0.010, 100)])
    assert [ev["win"] for ev in kinds(events, "ack")] == [65160, 2000]
    assert not kinds(events, "hold")


def test_icmp_quoting_the_connection(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    (icmp,) = kinds(events, "icmp")
    assert (icmp["t"], icmp["type"], icmp["code"], icmp["mtu"]) == (pytest.approx(0.031), 3, 4,
                                                                      1200)
    assert icmp["quoted_seq"] == 401
    assert icmp["verdict"] == UNKNOWN          # what the kernel made of it is not on the wire


def test_calls_from_the_writes(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    calls = kinds(events, "call")
    assert [(ev["t"], ev["call"], ev["size"], ev["seq"], ev["end"]) for ev in calls] == [
        (pytest.approx(t), "tcp_sendmsg", size, seq, seq + size)
        for t, size, seq in ((0.010, 100, 1), (0.011, 200, 101), (0.012, 100, 301),
                             (0.030, 1000, 401), (0.045, 100, 1401), (0.070, 100, 1501))]
    assert [ev["write_seq"] for ev in calls] == [101, 301, 401, 1401, 1501, 1601]
    assert all(ev["flags"] is None for ev in calls)


def test_hold_spans_where_written_bytes_waited_reason_unknown(capture):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    holds = [(ev["t"], ev["seq"], ev["len"], ev["until"], ev["reason"], ev["queue"])
             for ev in kinds(events, "hold")]
    approx = pytest.approx
    assert holds == [
        (approx(0.011), 101, 200, approx(0.020), UNKNOWN, "write"),
        (approx(0.012), 301, 100, approx(0.020), UNKNOWN, "write"),
        (approx(0.045), 1401, 100, approx(0.055), UNKNOWN, "write"),   # left in a retransmission
        (approx(0.070), 1501, 100, None, UNKNOWN, "write"),            # never left
    ]
    spans = wire_spans(events)
    assert [(s["start"], s["end"], s["seq"], s["upto"], s["released_by"]) for s in spans] == [
        (approx(0.011), approx(0.020), 101, 301, "sent"),
        (approx(0.012), approx(0.020), 301, 401, "sent"),
        (approx(0.045), approx(0.055), 1401, 1501, "sent"),
        (approx(0.070), approx(0.080), 1501, 1601, "end"),
    ]
    assert {s["reason"] for s in spans} == {UNKNOWN}
    # overlapping waits count once: 9 + 10 + 10 ms
    assert held_s_unknown(events) == pytest.approx(0.029)
    assert held_s_unknown(events, end_t=0.100) == pytest.approx(0.049)
    assert held_by_reason(events) == {UNKNOWN: pytest.approx(0.029)}
    assert spans_of(events) == spans


def test_a_write_split_over_segments_waits_per_part(tmp_path):
    frames = handshake() + [out(1, 1000, 0.020), out(1001, 1000, 0.030),
                            out(2001, 1000, 0.030)]
    path = tmp_path / "split.pcap"
    write_ip_pcap(path, frames)
    events = timeline_from_wire(path, S_ADDR, S_PORT, R_ADDR, R_PORT, [(0.015, 3000)])
    assert [(ev["seq"], ev["len"], ev["until"]) for ev in kinds(events, "hold")] == [
        (1, 1000, pytest.approx(0.020)), (1001, 2000, pytest.approx(0.030))]
    assert held_s_unknown(events) == pytest.approx(0.015)


def test_sender_port_found_from_the_syn_and_a_capture_without_syn_refused(capture, tmp_path):
    events = timeline_from_wire(capture, S_ADDR, None, R_ADDR, R_PORT, WRITES)
    assert events == timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    path = tmp_path / "nosyn.pcap"
    write_ip_pcap(path, [out(1, 100, 0.010)])
    with pytest.raises(ValueError, match="no SYN"):
        timeline_from_wire(path, S_ADDR, S_PORT, R_ADDR, R_PORT, [(0.010, 100)])


def test_t0_shifts_the_capture_onto_the_writes_clock(tmp_path):
    base = 1_700_000_000.0     # an emulated capture: wall-clock timestamps
    frames = [(t + base, pkt, a, b) for t, pkt, a, b in
              handshake() + [out(1, 100, 0.020)]]
    path = tmp_path / "wall.pcap"
    write_ip_pcap(path, frames)
    events = timeline_from_wire(path, S_ADDR, S_PORT, R_ADDR, R_PORT, [(0.015, 100)], t0=base)
    (hold,) = kinds(events, "hold")
    assert hold["t"] == pytest.approx(0.015)
    assert hold["until"] == pytest.approx(0.020, abs=1e-6)
    assert kinds(events, "xmit")[0]["t"] == pytest.approx(0.0, abs=1e-6)


def test_trace_cli_prints_a_wire_built_timeline(capture, tmp_path, capsys):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    path = tmp_path / "trace_wire.jsonl"
    write_jsonl(path, events)
    assert trace_cli.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "cwnd ?   infl ?" in text
    assert "unknown: 101:301 (200 B) waited (written, left at 20.000 ms)" in text
    assert "unknown: 1501:1601 (100 B) waited (written, never left)" in text
    assert "401:1101(700) RETRANS" in text
    assert trace_cli.main([str(path), "--reason", "unknown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" hold " in line for line in lines)
    assert trace_cli.main([str(path), "--spans"]) == 0
    text = capsys.readouterr().out
    assert "released by sent" in text and "released by end" in text
    assert "held: unknown 0.029000 s" in text


def nonblank_png(path) -> bool:
    img = mpimg.imread(path)
    return img.ndim == 3 and float(np.ptp(img[..., :3])) > 0.5


def test_tsg_renders_a_wire_built_timeline(capture, tmp_path):
    events = timeline_from_wire(capture, S_ADDR, S_PORT, R_ADDR, R_PORT, WRITES)
    png, svg = render(events, tmp_path / "tsg_wire", "wire")
    assert png.stat().st_size > 5000 and svg.stat().st_size > 5000
    assert nonblank_png(png)
    text = svg.read_text()
    assert "held: unknown" in text and "application writes" in text


# --------------------------------------------------------------------------
# Against the stack's own trace, in the sim
# --------------------------------------------------------------------------

def sim_flow(tmp_path, monkeypatch, overrides):
    """Run two_hosts in the sim with a trace; returns (FlowRecord, stack events, pcap path)."""
    records = []

    class Recorded(run_mod.FlowRecord):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            records.append(self)

    monkeypatch.setattr(run_mod, "FlowRecord", Recorded)
    topo = load_topology(ROOT / "topologies" / "two_hosts.yaml", overrides)
    summary = run_mod.run_sim(topo, tmp_path, trace=True)
    (rec,) = records
    flow = summary["flows"][0]
    assert flow["completed"], flow
    pcaps = sorted(glob.glob(str(tmp_path / "*.pcap")) + glob.glob(str(tmp_path / "pcaps" /
                                                                         "*.pcap")))
    assert len(pcaps) == 1, pcaps
    stack_events = read_jsonl(tmp_path / f"trace_{rec.spec.name}.jsonl")
    return rec, stack_events, pcaps[0], flow


def wire_of(rec, pcap):
    tp = rec.sock.tp
    return timeline_from_wire(pcap, tp.saddr, tp.sport, tp.daddr, tp.dport, rec.writes)


def test_sim_nagle_wire_timeline_agrees_with_the_stack_trace(tmp_path, monkeypatch):
    rec, stack_events, pcap, flow = sim_flow(
        tmp_path, monkeypatch, ["traffic.0.writes.count=30", "traffic.0.socket.nodelay=false"])
    wire = wire_of(rec, pcap)
    assert [(e["seq"], e["len"]) for e in kinds(wire, "xmit")] == \
        [(e["seq"], e["len"]) for e in kinds(stack_events, "xmit")]
    assert [e["retrans"] for e in kinds(wire, "xmit")] == \
        [e["retrans"] for e in kinds(stack_events, "xmit")]
    assert [e["ack"] for e in kinds(wire, "ack")] == [e["ack"] for e in kinds(stack_events, "ack")]
    # Nagle held writes in the stack; from the wire the waits are seen, the reason is not.
    assert flow["held_s_by_reason"]["nagle"] > 0
    assert {e["reason"] for e in kinds(wire, "hold")} == {UNKNOWN}
    assert not is_wire_built(stack_events)
    # The writes and the capture share the virtual clock and the capture is taken where h1
    # puts frames on the link, so the time bytes waited is the same as the stack's total.
    assert held_s_unknown(wire) == pytest.approx(sum(held_s_by_reason(stack_events).values()),
                                                 abs=1e-6)
    # ... and every wait ends when the stack's span ends (a segment with the bytes left).
    stack_ends = {round(s["end"], 6) for s in held_spans(stack_events)}
    assert {round(s["end"], 6) for s in wire_spans(wire)} <= stack_ends
    # The call sizes are the writes the application made.
    assert [e["size"] for e in kinds(wire, "call")] == [100] * 30


def _runs(events):
    """Data xmits with contiguous ones at one instant merged (a GSO skb is one xmit in the
    stack's trace, its segments on the wire)."""
    runs = []
    for e in kinds(events, "xmit"):
        if not e["len"]:
            continue
        last = runs[-1] if runs else None
        if last and abs(last[0] - e["t"]) < 1e-9 and last[2] == e["seq"] and \
                last[3] == e["retrans"]:
            last[2] = e["seq"] + e["len"]
        else:
            runs.append([e["t"], e["seq"], e["seq"] + e["len"], e["retrans"]])
    return [tuple(r[1:]) for r in runs]


def test_sim_lossy_wire_timeline_agrees_on_segments_and_retransmissions(tmp_path, monkeypatch):
    rec, stack_events, pcap, flow = sim_flow(
        tmp_path, monkeypatch, ["links.0.loss=0.05", "traffic.0.writes.count=100",
                                "traffic.0.writes.size=1000"])
    assert flow["retransmits"] > 0
    wire = wire_of(rec, pcap)
    assert _runs(wire) == _runs(stack_events)
    assert any(e["retrans"] for e in kinds(wire, "xmit"))
    # The capture is taken as frames enter the link, so it holds ACKs the loss then dropped:
    # the stack's ACKs are the wire's, in order, with those missing.
    wire_acks = iter(e["ack"] for e in kinds(wire, "ack"))
    assert all(a in wire_acks for a in (e["ack"] for e in kinds(stack_events, "ack")))


def test_tsg_renders_a_sim_wire_built_timeline(tmp_path, monkeypatch):
    rec, _, pcap, _ = sim_flow(tmp_path, monkeypatch, ["traffic.0.writes.count=30"])
    wire = wire_of(rec, pcap)
    png, _ = render(wire, tmp_path / "tsg_sim_wire")
    assert nonblank_png(png)
