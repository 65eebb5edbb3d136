"""One topology across machines: ``sendlab run TOPOLOGY --backend mininet --workers FILE``.

The coordinator (this module) splits the topology over the workers (``testbed.split``: the
topology's ``placement``, completed so that few links cross), starts ``remote_cell --part`` on
each worker that gets nodes (``testbed.remote_part``), and drives them in steps, every worker
finishing one before any starts the next:

1. **underlay**: each worker says how it reaches its peers (``ip route get``: source address,
   device, MTU); :func:`testbed.split.plan_vxlan` makes one VXLAN tunnel per crossing link and
   refuses, with the numbers, an underlay that cannot carry the link's MTU + 50 bytes;
2. **build**: each worker builds its part with the emulated backend, the tunnel ends included;
3. **start**: the hosts' agents start and say they are ready;
4. **go**: each worker starts its flows' clocks ``GO_DELAY_S`` from when it hears the word (so
   flows on different machines start within the SSH round-trip of each other), and reports
   each host's ``senders_done``/``receivers_done``; the coordinator stops the run by the same
   rule as a one-machine run (every sender done, then receivers or a grace; or the duration);
5. **stop**: each worker stops its agents and captures; their results come back with SFTP to
   ``DIR/parts/<worker>/`` and merge into one ``DIR/summary.json`` (``backend: "mininet"``,
   with ``emulation.workers`` and ``emulation.tunnels``) and ``DIR/pcaps/``: a crossing link's
   pcap takes each direction from the worker that sends it (pcap timestamps are each worker's
   wall clock: keep the machines' clocks synchronised);
6. **close**: every worker tears down what its part made and confirms it. The coordinator
   closes the parts however it leaves (error, Ctrl-C, SIGTERM); if it is killed outright its
   SSH connections drop, each worker's part sees its stdin close, and tears down by itself.

Each direction of a crossing link is shaped on the worker it leaves (the user-space shaper,
the sim's link model, on both machines alike), so a crossing link behaves as a local one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dpkt

from . import remote as remote_mod
from .emulate import EmulatedNetwork, EmulationError, RECEIVER_GRACE_S, _is_main_thread
from .emulate import _LinkBuild
from .shaper import PcapWriter
from .split import Partition, Tunnel, Underlay, partition, part_spec, plan_vxlan
from .topology import Topology
from .workers import Worker, load_workers

log = logging.getLogger(__name__)

__all__ = ["SplitRunError", "run_split", "merge_pcaps"]

STEP_TIMEOUT_S = {"underlay": 30.0, "built": 240.0, "ready": 60.0, "going": 30.0,
                  "stopped": 90.0, "closed": 90.0}
GO_DELAY_S = 0.5


class SplitRunError(EmulationError):
    """A run across workers failed; the message names the worker and the step."""


class _Interrupted(BaseException):
    pass


# --- one worker's part, over SSH ----------------------------------------------------------------

class Part:
    """``remote_cell --part`` on one worker: requests out, events into a shared queue."""

    def __init__(self, worker: Worker, conn: remote_mod.Connection, events: queue.Queue) -> None:
        self.worker = worker
        self.conn = conn
        self.events = events
        try:
            self.agent = remote_mod.Agent(conn, part=True)
        except (remote_mod.RemoteError, remote_mod.Lost) as exc:
            raise SplitRunError(f"worker {worker.name}: {exc}") from None
        self.closed_seen = False
        self.lost = False
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"part-{worker.name}")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ev = self.agent.lines.next(lambda: time.monotonic() + 3600, self._stop)
            except remote_mod.Lost as exc:
                self.lost = True
                self.events.put((self, {"event": "lost", "message": str(exc)}))
                return
            self.events.put((self, ev))
            if ev.get("event") == "closed":
                return

    def request(self, op: str, **fields) -> None:
        try:
            self.agent.request({"op": op, **fields})
        except remote_mod.Lost as exc:
            raise SplitRunError(f"worker {self.worker.name}: during {op}: {exc}") from None

    def fetch(self, remote_dir: str, local_dir: Path) -> None:
        try:
            self.agent.fetch(remote_dir, local_dir)
        except remote_mod.Lost as exc:
            raise SplitRunError(f"worker {self.worker.name}: {exc}") from None

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.agent.close()
        self.conn.close()


def _wait_all(events: queue.Queue, parts: list[Part], kind: str, *,
              on_other: Callable[[Part, dict], None] | None = None) -> dict[str, dict]:
    """Each part's ``kind`` event, by worker; :class:`SplitRunError` on an error, a lost
    connection, or a part silent past the step's timeout."""
    got: dict[str, dict] = {}
    deadline = time.monotonic() + STEP_TIMEOUT_S[kind]
    while len(got) < len(parts):
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = [p.worker.name for p in parts if p.worker.name not in got]
            raise SplitRunError(f"no '{kind}' from worker(s) {', '.join(waiting)} after "
                                f"{STEP_TIMEOUT_S[kind]:.0f} s")
        try:
            part, ev = events.get(timeout=left)
        except queue.Empty:
            continue
        what = ev.get("event")
        if what == "closed":
            part.closed_seen = True
        if what == kind:
            got[part.worker.name] = ev
        elif what in ("error", "lost") or (what == "closed" and kind != "closed"):
            raise SplitRunError(f"worker {part.worker.name} ({part.worker.address}), waiting "
                                f"for '{kind}': {ev.get('message') or what}")
        elif on_other is not None:
            on_other(part, ev)
    return got


# --- the run -----------------------------------------------------------------------------------

@dataclass
class _Plan:
    topo: Topology
    partition: Partition
    tunnels: list[Tunnel]
    prefix: str


def run_split(topo: Topology, topo_path: str | Path, overrides: list[str], workers_file: str,
              out_dir: str | Path, *, seed: int | None = None, trace: bool = False,
              accept_new: bool = False, say: Callable[[str], None] = print) -> dict:
    """Run ``topo`` (loaded from ``topo_path`` with ``overrides``) split over the workers of
    ``workers_file``; writes ``DIR/summary.json`` and returns the summary."""
    workers = load_workers(workers_file)
    part = partition(topo, [w.name for w in workers])
    used = [w for w in workers if w.name in part.parts]
    seed = topo.seed if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for w in used:
        say(f"{w.name} ({w.address}): {', '.join(part.parts[w.name])}")
    old = None
    if _is_main_thread():
        def on_sigterm(signum, frame):
            raise _Interrupted()
        old = signal.signal(signal.SIGTERM, on_sigterm)
    events: queue.Queue = queue.Queue()
    parts: list[Part] = []
    try:
        try:
            parts = _connect(used, events, accept_new)
            plan = _plan(topo, part, parts, events, workers)
            for t in plan.tunnels:
                (ea, eb) = t.ends
                say(f"links[{t.link}] ({t.label}) crosses {ea.worker} - {eb.worker}: VXLAN "
                    f"{ea.device} VNI {t.vni} between {ea.local} and {eb.local}, link MTU "
                    f"{t.mtu}, underlay MTU {t.underlay_mtu} or more needed")
            summary = _run(plan, parts, events, Path(topo_path), overrides, out, seed, trace,
                           say)
        except BaseException:
            # The first failure is the one to report; what the close finds is said as well.
            with contextlib.suppress(SplitRunError):
                _close_all(parts, events, say)
            raise
        _close_all(parts, events, say)
        return summary
    except _Interrupted:
        raise KeyboardInterrupt("SIGTERM") from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _connect(used: list[Worker], events: queue.Queue, accept_new: bool) -> list[Part]:
    def one(w: Worker) -> Part:
        try:
            conn = remote_mod.connect(w, accept_new=accept_new)
        except remote_mod.RemoteError as exc:
            raise SplitRunError(f"worker {w.name}: {exc}") from None
        try:
            return Part(w, conn, events)
        except BaseException:
            conn.close()
            raise
    parts, errors = [], []
    with ThreadPoolExecutor(max_workers=len(used)) as pool:
        for fut in [pool.submit(one, w) for w in used]:
            try:
                parts.append(fut.result())
            except SplitRunError as exc:
                errors.append(str(exc))
    if errors:
        for p in parts:
            p.close()
        raise SplitRunError("\n".join(errors))
    return parts


def _plan(topo: Topology, part: Partition, parts: list[Part], events: queue.Queue,
          workers: list[Worker]) -> _Plan:
    address = {w.name: w.address for w in workers}
    peers: dict[str, dict[str, str]] = {}
    for c in part.crossing:
        (_, wa), (_, wb) = c.ends
        peers.setdefault(wa, {})[wb] = address[wb]
        peers.setdefault(wb, {})[wa] = address[wa]
    asking = [p for p in parts if p.worker.name in peers]
    for p in asking:
        p.request("underlay", peers=peers[p.worker.name])
    underlays = {}
    for name, ev in _wait_all(events, asking, "underlay").items():
        for peer, r in ev["routes"].items():
            underlays[(name, peer)] = Underlay(r["address"], r["dev"], int(r["mtu"]))
    prefix = "sl" + secrets.token_hex(2)
    tunnels = plan_vxlan(topo, part, underlays, prefix=prefix)
    return _Plan(topo, part, tunnels, prefix)


def _run(plan: _Plan, parts: list[Part], events: queue.Queue, topo_path: Path,
         overrides: list[str], out: Path, seed: int, trace: bool, say) -> dict:
    topo = plan.topo
    t_build = time.monotonic()
    doc = {"name": topo_path.name, "text": topo_path.read_text(), "overrides": list(overrides)}
    # Both ends of a crossing link must shape alike: the user-space shaper (the sim's model)
    # runs everywhere, where netem might be on one machine and not the other.
    for p in parts:
        p.request("build", topology=doc, part=part_spec(plan.partition, plan.tunnels,
                                                        p.worker.name),
                  seed=seed, trace=trace, shaping="shaper")
    built = _wait_all(events, parts, "built")
    for p in parts:
        p.request("start")
    ready = _wait_all(events, parts, "ready")
    build_s = time.monotonic() - t_build
    say(f"built on {len(parts)} worker(s) in {build_s:.1f} s; running")
    hosts = {h for ev in ready.values() for h in ev.get("hosts", [])}
    said: dict[str, set] = {h: set() for h in hosts}

    def note(part: Part, ev: dict) -> None:
        if ev.get("event") == "host" and ev.get("host") in said:
            said[ev["host"]].add(ev.get("what"))

    t0 = time.monotonic() + GO_DELAY_S
    for p in parts:
        p.request("go", in_s=GO_DELAY_S)
    _wait_all(events, parts, "going", on_other=note)
    stopped_at = _watch(events, parts, said, t0, topo.run.duration_s, note)
    for p in parts:
        p.request("stop")
    stopped = _wait_all(events, parts, "stopped", on_other=note)
    for p in parts:
        p.fetch(stopped[p.worker.name]["out"], out / "parts" / p.worker.name)
    summary = merge(plan, out, seed, trace, stopped_at,
                    {p.worker.name: p.worker for p in parts}, built)
    summary["emulation"]["timings"] = {"build_s": round(build_s, 3),
                                       "traffic_s": round(stopped_at, 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _watch(events: queue.Queue, parts: list[Part], said: dict, t0: float, duration_s: float,
           note) -> float:
    """The one-machine rule (``EmulatedNetwork.wait_done``) over every worker's hosts."""
    deadline = t0 + duration_s
    senders_done_at = None
    while True:
        now = time.monotonic()
        if all("senders_done" in s for s in said.values()):
            if senders_done_at is None:
                senders_done_at = now
            if all("receivers_done" in s for s in said.values()) or \
                    now - senders_done_at >= RECEIVER_GRACE_S:
                break
        if now >= deadline:
            break
        wake = min(deadline, senders_done_at + RECEIVER_GRACE_S) if senders_done_at \
            else deadline
        try:
            part, ev = events.get(timeout=max(0.0, min(wake - now, 0.5)))
        except queue.Empty:
            continue
        if ev.get("event") in ("error", "lost", "closed"):
            raise SplitRunError(f"worker {part.worker.name} ({part.worker.address}) during "
                                f"the run: {ev.get('message') or ev.get('event')}")
        note(part, ev)
    return time.monotonic() - t0


def _close_all(parts: list[Part], events: queue.Queue, say) -> None:
    """Every part tears down and confirms; raises if one could not (after closing all)."""
    if not parts:
        return
    problems = []
    for p in parts:
        if p.lost:
            problems.append(f"worker {p.worker.name} ({p.worker.address}) was lost before it "
                            "could confirm its teardown: if it is up, its part tears down "
                            "when its stdin closes; `sendlab clean` on it removes what is left")
    open_parts = []
    for p in parts:
        if p.closed_seen or p.lost:
            continue
        try:
            p.request("close")
            open_parts.append(p)
        except SplitRunError as exc:   # its stdin is gone with the connection: it tears down
            problems.append(str(exc))
    deadline = time.monotonic() + STEP_TIMEOUT_S["closed"]
    pending = {p.worker.name: p for p in open_parts}
    while pending and time.monotonic() < deadline:
        try:
            part, ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if ev.get("event") == "closed":
            pending.pop(part.worker.name, None)
            if ev.get("errors"):
                problems.append(f"worker {part.worker.name}: teardown incomplete: "
                                f"{'; '.join(ev['errors'])}")
        elif ev.get("event") == "lost" and part.worker.name in pending:
            pending.pop(part.worker.name)
            problems.append(f"worker {part.worker.name} ({part.worker.address}) was lost "
                            f"before it confirmed its teardown ({ev.get('message')}): if it "
                            "is up, its part tears down when its stdin closes; `sendlab "
                            "clean` on it removes what is left")
    for name in pending:
        problems.append(f"worker {name}: no teardown confirmation after "
                        f"{STEP_TIMEOUT_S['closed']:.0f} s")
    for p in parts:
        p.close()
    if problems:
        for line in problems:
            say(f"warning: {line}")
        raise SplitRunError("\n".join(problems))


# --- one summary from the parts -----------------------------------------------------------------

def merge(plan: _Plan, out: Path, seed: int, trace: bool, stopped_at: float,
          workers: dict[str, Worker], built: dict) -> dict:
    """The parts' results (under ``out/parts/<worker>/``) as one run's summary and pcaps."""
    topo = plan.topo
    view = EmulatedNetwork(topo, out, seed=seed, trace=trace)
    view.run_prefix = plan.prefix
    docs = {}
    for name in workers:
        base = out / "parts" / name
        docs[name] = json.loads((base / "part.json").read_text())
        for host, res in docs[name]["agent_results"].items():
            view.agent_results[host] = res
            view.t0_wall_of[host] = docs[name]["t0_wall"]
        view.router_status.update(docs[name].get("router_status") or {})
        for trace_file in base.glob("trace_*.jsonl"):
            shutil.copy(trace_file, out / trace_file.name)
    mechanisms = {d["mechanism"] for d in docs.values()}
    view.mechanism = mechanisms.pop() if len(mechanisms) == 1 else "mixed"
    view.t0_wall = min(d["t0_wall"] for d in docs.values())
    (out / "pcaps").mkdir(exist_ok=True)
    sides: dict[int, list] = {}
    for name, d in docs.items():
        for rec in d["links"]:
            sides.setdefault(rec["index"], []).append((name, rec))
    for i in sorted(sides):
        view.links.append(_merge_link(view, i, sides[i], out))
    summary = view.summary(stopped_at)
    summary["emulation"]["workers"] = {
        name: {"address": workers[name].address, "nodes": list(plan.partition.parts[name]),
               "prefix": built[name].get("prefix"), "timings": docs[name]["timings"]}
        for name in workers}
    summary["emulation"]["tunnels"] = [
        {"link": t.link, "label": t.label, "vni": t.vni, "mtu": t.mtu,
         "underlay_mtu_needed": t.underlay_mtu,
         "ends": [{"worker": e.worker, "node": e.node, "device": e.device, "local": e.local,
                   "remote": e.remote, "underlay_dev": e.underlay_dev} for e in t.ends]}
        for t in plan.tunnels]
    return summary


def _merge_link(view: EmulatedNetwork, i: int, sides: list, out: Path) -> _LinkBuild:
    topo = view.topo
    a, b = topo.links[i].ends
    plan = view.plan
    if_a, if_b = plan.interface(a, i).name, plan.interface(b, i).name
    pcap = str(out / "pcaps" / f"link{i}_{a}-{b}.pcap")
    if len(sides) == 1:
        name, rec = sides[0]
        shutil.copy(out / "parts" / name / rec["pcap"], pcap)
        return _LinkBuild(i, a, b, if_a, if_b, None, None, rec["shaping"], pcap,
                          stats=rec["stats"])
    by_end = {rec["local"]: (name, rec) for name, rec in sides}
    stats: dict = {}
    (_, ra), (_, rb) = by_end[a], by_end[b]
    if ra["shaping"] == "shaper":
        stats = {"a>b": ra["stats"].get("a>b", {}), "b>a": rb["stats"].get("b>a", {}),
                 "cpu_s": (ra["stats"].get("cpu_s") or 0) + (rb["stats"].get("cpu_s") or 0)}
    elif ra["shaping"] == "netem":
        stats = {a: ra["stats"].get(a, {}), b: rb["stats"].get(b, {})}
    merge_pcaps(pcap, [(out / "parts" / by_end[end][0] / by_end[end][1]["pcap"],
                        _macs_sent_from(view, end, i)) for end in (a, b)])
    return _LinkBuild(i, a, b, if_a, if_b, None, None, ra["shaping"], pcap, stats=stats)


def _macs_sent_from(view: EmulatedNetwork, node: str, link: int) -> set[bytes]:
    """Source MACs of the frames ``node`` puts on ``link``: its own, or for a switch those of
    everything behind its other ports."""
    if node not in view.topo.switches:
        macs = [view.mac(node, link)]
    else:
        macs = [m for iface in view.plan.interfaces[node] if iface.link != link
                for m in view._macs_behind(node, iface)]
    return {bytes.fromhex(m.replace(":", "")) for m in macs}


def merge_pcaps(path: str | Path, sources: list[tuple[Path, set[bytes]]]) -> int:
    """One pcap from several captures of a link: from each, the frames whose source MAC is in
    its set (what that side sent), in time order. Returns the number of frames."""
    frames = []
    for src, macs in sources:
        if not os.path.exists(src):
            continue
        with open(src, "rb") as f:
            try:
                for ts, frame in dpkt.pcap.Reader(f):
                    if frame[6:12] in macs:
                        frames.append((float(ts), bytes(frame)))
            except (ValueError, dpkt.dpkt.NeedData) as exc:   # a capture cut short
                log.warning("%s: %s", src, exc)
    frames.sort(key=lambda x: x[0])
    w = PcapWriter(str(path))
    try:
        for ts, frame in frames:
            w.write(ts, frame)
    finally:
        w.close()
    return len(frames)
