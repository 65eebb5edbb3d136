"""``sendlab run TOPOLOGY --backend sim``: run a topology's traffic and write summary.json + pcaps.

summary.json is the contract the report and the other backends share; its
fields are documented in topologies/README.md ("What a run writes").
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from stack.trace import Tracer, held_s_by_reason, write_jsonl

from .pcap import write_ip_pcap
from .sim import SimNetwork
from .topology import Topology
from .traffic import FlowRecord, FlowSpec, SocketOptions, sender, serve

SUMMARY_VERSION = 1
_CHUNK_S = 0.05


def _flow_specs(topo: Topology) -> list[FlowSpec]:
    plan = topo.address_plan()
    specs = []
    for flow in topo.traffic:
        opts = topo.socket_options(flow, "from")
        pat = flow.pattern
        spec = FlowSpec(
            name=flow.name, src=flow.from_, dst=flow.to, dst_addr=str(plan.addr(flow.to)),
            port=flow.port, kind=flow.kind, start_s=flow.start_ms / 1000,
            options=SocketOptions(nodelay=bool(opts.nodelay), cork=bool(opts.cork),
                                  sndbuf=opts.sndbuf, congestion=opts.congestion,
                                  notsent_lowat=opts.notsent_lowat))
        if flow.kind == "bulk":
            spec.bytes = pat.bytes
        elif flow.kind == "writes":
            spec.count, spec.size = pat.count, pat.size
            spec.interval_s = pat.interval_ms / 1000
            mm = pat.msg_more
            spec.msg_more_every = (1 << 62) if mm is True else int(mm or 0)
        else:
            spec.count = pat.count
            spec.request_bytes, spec.response_bytes = pat.request_bytes, pat.response_bytes
            spec.think_s = pat.think_ms / 1000
        specs.append(spec)
    return specs


class _Progress:
    """Per flow: when data was last acknowledged, and the ACK curve for write latency."""

    def __init__(self, rec: FlowRecord) -> None:
        self.rec = rec
        self.last_acked = 0
        self.last_progress = rec.spec.start_s
        self.stalled_at = None

    def acked(self) -> int:
        sock = self.rec.sock
        if sock is None:
            return 0
        tp = sock.tp
        return min((tp.snd_una - tp.iss - 1) & 0xFFFFFFFF, self.rec.spec.bytes_requested)


def run_sim(topo: Topology, out_dir: str | Path, *, seed: int | None = None,
            trace: bool = False) -> dict:
    """Run the topology's traffic; with ``trace``, also the decision trace of each flow."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = SimNetwork(topo, seed=seed)
    net = sim.net
    if trace:
        for host in sim.hosts.values():
            host.tracer = Tracer()
    specs = _flow_specs(topo)
    records = [FlowRecord(spec) for spec in specs]
    progress = [_Progress(rec) for rec in records]
    by_sender: dict[str, list[_Progress]] = {}
    for p in progress:
        by_sender.setdefault(p.rec.spec.src, []).append(p)
    for name, host in sim.hosts.items():
        watched = by_sender.get(name, [])
        if watched:
            host.after_input = _ack_watcher(watched)
    served = {}
    for rec in records:
        served.setdefault((rec.spec.dst, rec.spec.port), []).append(rec)
    for (dst, port), recs in served.items():
        net.spawn(sim.hosts[dst], serve(net, sim.hosts[dst], port, recs))
    for rec in records:
        net.spawn(sim.hosts[rec.spec.src], sender(net, sim.hosts[rec.spec.src], rec))
    limits = topo.run
    end = _drive(net, progress, limits.duration_s, limits.stall_timeout_s)
    summary = _summary(topo, sim, records, progress, end, seed)
    if trace:
        _write_traces(sim, records, summary, out, end)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "pcaps").mkdir(exist_ok=True)
    for index, wires in sim.link_wires.items():
        link = topo.links[index]
        frames = sorted(((t, pkt, w.src, w.dst) for w in wires for t, pkt, _ in w.capture),
                        key=lambda f: f[0])
        write_ip_pcap(out / "pcaps" / f"link{index}_{link.ends[0]}-{link.ends[1]}.pcap", frames)
    return summary


def _write_traces(sim, records, summary: dict, out: Path, end: float) -> None:
    """Per flow: the sender socket's events as ``trace_<flow>.jsonl``, and in summary.json
    ``held_s_by_reason``: seconds its data waited, per reason. The rule is
    stack.trace.held_spans: the head of the write queue waits from a hold decision until new
    data leaves (bytes left behind keep the reason until the next decision); the application
    waits (sndbuf) from a full send buffer until it copies again; spans still open at the end
    of the run close there. Every reason is present, 0.0 when nothing waited for it.
    """
    for rec, flow in zip(records, summary["flows"]):
        sock = rec.sock if rec.sock is not None else rec.sock_pending
        tracer = sim.hosts[rec.spec.src].tracer
        events = tracer.for_sock(sock.tp) if sock is not None else []
        write_jsonl(out / f"trace_{rec.spec.name}.jsonl", events)
        flow["held_s_by_reason"] = held_s_by_reason(events, end)


def _ack_watcher(watched: list):
    def after_input(tp, now: float) -> None:
        for p in watched:
            sock = p.rec.sock
            if sock is not None and sock.tp is tp:
                acked = p.acked()
                if acked > p.last_acked:
                    p.last_acked = acked
                    p.last_progress = now
                    p.rec.acks.append((now, acked))
    return after_input


def _done(p: _Progress) -> bool:
    rec = p.rec
    return rec.error is not None or p.stalled_at is not None or (
        rec.finished_at is not None and (rec.spec.kind == "request_response" or
                                         p.last_acked >= rec.spec.bytes_requested))


def _drive(net, progress: list, duration_s: float, stall_timeout_s: float) -> float:
    """Run until every flow completed or stalled, or the duration is up."""
    t = 0.0
    while t < duration_s:
        t = min(t + _CHUNK_S, duration_s)
        net.run(until=t)
        for p in progress:
            if _done(p):
                continue
            if p.rec.connected_at is not None and p.last_progress < p.rec.connected_at:
                p.last_progress = p.rec.connected_at
            if net.now - p.last_progress >= stall_timeout_s and net.now >= p.rec.spec.start_s:
                p.stalled_at = p.last_progress
        if all(_done(p) for p in progress):
            break
    return net.now


def _percentile(values: list, q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return round(values[k], 3)


def _write_latencies(rec: FlowRecord) -> list:
    out = []
    acks = rec.acks
    j = 0
    for t_write, end in rec.writes:
        while j < len(acks) and acks[j][1] < end:
            j += 1
        if j < len(acks):
            out.append((acks[j][0] - t_write) * 1000)
    return out


def _flow_summary(topo, sim, rec: FlowRecord, p: _Progress, end: float) -> dict:
    spec = rec.spec
    host = sim.hosts[spec.src]
    tp = rec.sock.tp if rec.sock is not None else None
    sizes: Counter = Counter()
    data_segments = 0
    if tp is not None:
        for wire in sim.wires.values():
            if wire.src != spec.src:
                continue
            for _, pkt, _ in wire.capture:
                size = _tcp_payload_for(pkt, tp.sport, tp.dport)
                if size:
                    data_segments += 1
                    sizes[size] += 1
    completed = _done(p) and rec.error is None and p.stalled_at is None and rec.intact
    start = rec.connected_at if rec.connected_at is not None else spec.start_s
    finish = rec.finished_at if completed else end
    duration = max(finish - start, 1e-9) if rec.connected_at is not None else 0.0
    acked = p.last_acked
    lat = _write_latencies(rec)
    ttfb = None
    if rec.acks and rec.connected_at is not None:
        ttfb = round(rec.acks[0][0] - rec.connected_at, 6)
    stall = _longest_stall(rec, end if not completed else finish)
    return {
        "name": spec.name, "sender": spec.src, "receiver": spec.dst, "stack": "python",
        "kind": spec.kind, "bytes_requested": spec.bytes_requested, "bytes_acked": acked,
        "bytes_received": rec.received, "intact": rec.intact, "completed": completed,
        "stalled": p.stalled_at is not None,
        "last_progress_s": round(p.last_progress, 6), "error": rec.error,
        "duration_s": round(duration, 6),
        "goodput_mbit": round(acked * 8 / duration / 1e6, 3) if duration else 0.0,
        "data_segments": data_segments,
        "retransmits": tp.total_retrans if tp else 0,
        "time_to_first_byte_s": ttfb, "longest_stall_s": stall,
        "mss_initial": rec.mss_initial, "mss_final": tp.mss_cache if tp else 0,
        "icmp_frag_needed_received": host.mib["IcmpInDestUnreachs"],
        "segment_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "write_latency_ms": {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99)},
        "response_time_ms": {"p50": _percentile([r * 1000 for r in rec.responses], 0.5),
                             "p99": _percentile([r * 1000 for r in rec.responses], 0.99)},
        "counters": {k: v for k, v in sorted(host.mib.snapshot().items()) if v},
    }


def _longest_stall(rec: FlowRecord, until: float) -> float:
    """The longest time without newly acknowledged data, from connect to ``until``."""
    if rec.connected_at is None:
        return 0.0
    times = [rec.connected_at] + [t for t, _ in rec.acks] + [until]
    return round(max(b - a for a, b in zip(times, times[1:])), 6)


def _tcp_payload_for(pkt: bytes, sport: int, dport: int) -> int:
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[9] != 6 or len(pkt) < ihl + 20:
        return 0
    if int.from_bytes(pkt[ihl:ihl + 2], "big") != sport or \
            int.from_bytes(pkt[ihl + 2:ihl + 4], "big") != dport:
        return 0
    doff = (pkt[ihl + 12] >> 4) * 4
    total = int.from_bytes(pkt[2:4], "big")
    return total - ihl - doff


def _summary(topo, sim, records, progress, end: float, seed) -> dict:
    flows = [_flow_summary(topo, sim, rec, p, end) for rec, p in zip(records, progress)]
    routers = {}
    for name, router in sim.routers.items():
        c = router.counters
        routers[name] = {"icmp_frag_needed_sent": c.get("icmp_frag_needed_sent", 0),
                         "dropped_oversize": c.get("dropped_oversize", 0),
                         "fragmented": c.get("fragmented", 0), "counters": dict(sorted(c.items()))}
    links = {}
    for index, wires in sim.link_wires.items():
        for w in wires:
            m = w.model
            links[f"link{index}:{w.src}>{w.dst}"] = {
                "offered": m.offered, "delivered": m.delivered, "dropped_queue": m.dropped_queue,
                "dropped_loss": m.dropped_loss, "dropped_oversize": w.dropped_oversize,
                "mtu": w.mtu}
    return {"version": SUMMARY_VERSION, "topology": topo.name, "backend": "sim",
            "seed": topo.seed if seed is None else seed, "end_s": round(end, 6), "flows": flows,
            "routers": routers, "links": links}


def format_table(summary: dict) -> str:
    head = (f"{'flow':<12}{'bytes':>10}{'time s':>9}{'Mbit/s':>9}{'segs':>7}{'rexmit':>7}"
            f"{'mss':>11}  status")
    lines = [head]
    for f in summary["flows"]:
        status = "completed" if f["completed"] else (
            f"STALLED since {f['last_progress_s']:.3f}s" if f["stalled"] else
            (f"error: {f['error']}" if f["error"] else "incomplete"))
        lines.append(f"{f['name']:<12}{f['bytes_acked']:>10}{f['duration_s']:>9.3f}"
                     f"{f['goodput_mbit']:>9.2f}{f['data_segments']:>7}{f['retransmits']:>7}"
                     f"{str(f['mss_initial']) + '>' + str(f['mss_final']):>11}  {status}")
    return "\n".join(lines)
