"""``sendlab demo``: small writes under Nagle, TCP_NODELAY, TCP_CORK, MSG_MORE and autocorking,
plus a bulk transfer under loss, all on the virtual clock; writes a report.

This is the main job until the topology and experiment issues land: it shows
what the send path does with the same application writes in each mode.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stack import MSG_MORE, SOL_TCP, TCP_CORK, TCP_NODELAY, Sysctl
from stack.runtime import Sleep, VirtualNetwork
from stack.seq import seq_sub
from stack.trace import Tracer

from .pcap import write_pcap

PORT = 5001


@dataclass
class Mode:
    name: str
    nodelay: bool = False
    cork_every: int = 0          # uncork (and cork again) after this many writes
    msg_more_every: int = 0      # MSG_MORE on all but every n-th write
    autocorking: int = 1


@dataclass
class ModeResult:
    mode: str
    writes: int
    bytes_written: int
    data_segments: int
    segments_per_kb: float
    tinygram_share: float
    latency_p50_ms: float
    latency_p99_ms: float
    goodput_mbit: float
    retransmissions: int
    autocorked: int
    held: dict = field(default_factory=dict)


MODES = [
    Mode("nagle"),
    Mode("nodelay", nodelay=True),
    Mode("cork_10", cork_every=10),
    Mode("msg_more_10", msg_more_every=10),
    Mode("nagle_autocork_off", autocorking=0),
    Mode("nodelay_autocork_off", nodelay=True, autocorking=0),
]


def _run_small_writes(mode: Mode, *, seed: int, writes: int = 400, size: int = 100,
                      interval_s: float = 0.0005, rate_bps: float = 20e6, delay_s: float = 0.005,
                      loss: float = 0.0):
    sysctl = Sysctl()
    sysctl.tcp_autocorking = mode.autocorking
    net = VirtualNetwork(seed=seed)
    # A TX completion delay makes the device hold our packets a little, as a real NIC does.
    a = net.add_host("10.0.0.1", name="h1", sysctl=sysctl, rate_bps=rate_bps,
                     tx_completion_delay_s=50e-6)
    b = net.add_host("10.0.0.2", name="h2", rate_bps=rate_bps, tx_completion_delay_s=50e-6)
    capture: list = []
    net.connect(a, b, delay_s=delay_s, loss=loss, capture=capture)
    tracer = Tracer()
    a.tracer = tracer
    write_log: list = []     # (time, end offset) of each write
    state = {}

    def server():
        s = net.socket(b)
        yield s.bind(("", PORT))
        yield s.listen()
        c = yield s.accept()
        while True:
            d = yield c.recv(65536)
            if not d:
                break
        yield c.close()

    def client():
        s = net.socket(a)
        if mode.nodelay:
            yield s.setsockopt(SOL_TCP, TCP_NODELAY, 1)
        yield s.connect(("10.0.0.2", PORT))
        state["iss"] = s.tp.iss
        state["start"] = net.now
        sent = 0
        if mode.cork_every:
            yield s.setsockopt(SOL_TCP, TCP_CORK, 1)
        for i in range(writes):
            flags = 0
            if mode.msg_more_every and (i + 1) % mode.msg_more_every:
                flags = MSG_MORE
            n = yield s.send(bytes(size), flags)
            sent += n
            write_log.append((net.now, sent))
            if mode.cork_every and (i + 1) % mode.cork_every == 0:
                yield s.setsockopt(SOL_TCP, TCP_CORK, 0)
                yield s.setsockopt(SOL_TCP, TCP_CORK, 1)
            yield Sleep(interval_s)
        if mode.cork_every:
            yield s.setsockopt(SOL_TCP, TCP_CORK, 0)
        state["mss"] = s.tp.mss_cache
        yield s.close()

    net.spawn(b, server())
    net.spawn(a, client())
    end = net.run()
    return a, capture, tracer, write_log, state, end, delay_s


def _measure(mode: Mode, a, capture, tracer, write_log, state, end, delay_s) -> ModeResult:
    iss = state["iss"]
    mss = state["mss"]
    data = [seg for t, seg in capture if seg.saddr == a.addr and seg.payload]
    acks = [(t + delay_s, seq_sub(seg.ack_seq, iss) - 1)
            for t, seg in capture if seg.daddr == a.addr and seg.flags & 0x10]
    latencies = []
    j = 0
    for t_write, end_off in write_log:
        while j < len(acks) and acks[j][1] < end_off:
            j += 1
        if j < len(acks):
            latencies.append((acks[j][0] - t_write) * 1000)
    total = write_log[-1][1] if write_log else 0
    duration = (acks[-1][0] if acks else end) - state["start"]
    lat = sorted(latencies) or [0.0]
    return ModeResult(
        mode=mode.name, writes=len(write_log), bytes_written=total, data_segments=len(data),
        segments_per_kb=round(len(data) / (total / 1024), 3) if total else 0.0,
        tinygram_share=round(sum(1 for s in data if len(s.payload) < mss) / max(len(data), 1), 3),
        latency_p50_ms=round(statistics.median(lat), 3),
        latency_p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
        goodput_mbit=round(total * 8 / duration / 1e6, 3) if duration > 0 else 0.0,
        retransmissions=a.mib["TcpRetransSegs"], autocorked=a.mib["TcpExtTCPAutoCorking"],
        held=tracer.held_time_by_reason(),
    )


def _run_bulk(seed: int, out: Path) -> dict:
    net = VirtualNetwork(seed=seed)
    a = net.add_host("10.0.1.1", name="h1", rate_bps=100e6)
    b = net.add_host("10.0.1.2", name="h2", rate_bps=100e6)
    capture: list = []
    link = net.connect(a, b, delay_s=0.01, loss=0.01, capture=capture)
    size = 4 * 1024 * 1024
    received: list = []
    done_at: list = []

    def server():
        s = net.socket(b)
        yield s.bind(("", PORT))
        yield s.listen()
        c = yield s.accept()
        total = 0
        while True:
            d = yield c.recv(1 << 20)
            if not d:
                break
            total += len(d)
        received.append(total)
        done_at.append(net.now)
        yield c.close()

    def client():
        s = net.socket(a)
        yield s.connect(("10.0.1.2", PORT))
        yield s.send(bytes(size))
        yield s.close()

    net.spawn(b, server())
    net.spawn(a, client())
    net.run()
    write_pcap(out / "bulk.pcap", capture)
    end = done_at[0] if done_at else float("inf")
    return {"bytes": size, "received": received[0] if received else 0, "seconds": round(end, 6),
            "goodput_mbit": round(size * 8 / end / 1e6, 3), "link_rate_mbit": 100,
            "rtt_ms": 20, "loss": 0.01, "frames_dropped": link.dropped,
            "retransmissions": a.mib["TcpRetransSegs"], "timeouts": a.mib["TcpExtTCPTimeouts"],
            "fast_retransmits": a.mib["TcpExtTCPFastRetrans"]}


def run_demo(out_dir: str, *, seed: int = 1, out=None) -> int:
    import sys
    out = out or sys.stdout
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in MODES:
        a, capture, tracer, write_log, state, end, delay_s = _run_small_writes(mode, seed=seed)
        results.append(_measure(mode, a, capture, tracer, write_log, state, end, delay_s))
        write_pcap(path / f"small_writes_{mode.name}.pcap", capture)
        tracer.write_jsonl(path / f"trace_{mode.name}.jsonl")
    bulk = _run_bulk(seed, path)
    summary = {"seed": seed, "small_writes": [asdict(r) for r in results], "bulk": bulk}
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = _report(results, bulk)
    (path / "report.md").write_text(report)
    print(report, file=out)
    print(f"sendlab: wrote {path}/summary.json, report.md, pcaps and traces", file=out)
    return 0


def _report(results: list[ModeResult], bulk: dict) -> str:
    lines = ["# sendlab demo: 400 writes of 100 bytes every 0.5 ms, 10 ms RTT, 20 Mbit/s", "",
             "| mode | data segments | segments/KB | tinygrams | p50 ms | p99 ms | autocorked |"
             " holds by reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        held = ", ".join(f"{k} {v}" for k, v in sorted(r.held.items())) or "-"
        lines.append(f"| {r.mode} | {r.data_segments} | {r.segments_per_kb} | "
                     f"{r.tinygram_share:.0%} | {r.latency_p50_ms} | {r.latency_p99_ms} | "
                     f"{r.autocorked} | {held} |")
    lines += ["", "# Bulk transfer: 4 MiB, 100 Mbit/s, 20 ms RTT, 1 % loss", "",
              f"goodput {bulk['goodput_mbit']} Mbit/s in {bulk['seconds']} s; "
              f"{bulk['frames_dropped']} frames dropped, {bulk['retransmissions']} retransmitted "
              f"({bulk['fast_retransmits']} fast, {bulk['timeouts']} timeouts); "
              f"received {bulk['received']} of {bulk['bytes']} bytes", ""]
    return "\n".join(lines)
