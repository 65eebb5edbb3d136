"""Fan-out efficiency of sweeps over SSH workers on the simulated backend.

Starts the test lab (tests/test_workers.py: network namespaces on a veth underlay, each with its
own sshd), then times the same experiment locally (--jobs 1 and 2) and over N = 1, 2, 3
workers (1 slot each). Efficiency = cells/min with N workers / (N x cells/min with one worker).
All "machines" share this host's cores, so N above the core count cannot scale.

Usage (root, openssh-server installed): python benchmarks/bench_workers.py [--cells N]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from testbed.sweep import sweep  # noqa: E402

EXP = """name: bench_workers
topology: {topo}
set:
  run.stall_timeout_s: 2
  routers.r2.icmp: send
grid:
  traffic.0.bulk.bytes: [1MB, 2MB]
  traffic.0.sysctls.net.ipv4.tcp_mtu_probing: [0, 2]
repetitions: {reps}
"""


def _lab_module():
    spec = importlib.util.spec_from_file_location("_lab", ROOT / "tests" / "sshlab.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_lab"] = mod   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _timed(fn, *args, **kw) -> tuple[float, int]:
    out = kw.pop("out")
    t0 = time.perf_counter()
    rc = fn(*args, out, console=Console(file=io.StringIO()), **kw)
    wall = time.perf_counter() - t0
    db = sqlite3.connect(Path(out) / "results.db")
    n = db.execute("SELECT count(*) FROM cells WHERE status = 'done'").fetchone()[0]
    db.close()
    if rc != 0:
        db = sqlite3.connect(Path(out) / "results.db")
        why = db.execute("SELECT worker, outcome, error FROM attempts WHERE outcome != 'done'"
                         ).fetchall()
        db.close()
        raise SystemExit(f"bench: sweep failed (rc {rc}): {why}")
    return wall, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=24, help="cells per sweep (multiple of 4)")
    args = parser.parse_args()
    mod = _lab_module()
    if mod.NO_LAB:
        print(f"bench_workers: skipped: {mod.NO_LAB}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        exp = base / "exp.yaml"
        exp.write_text(EXP.format(topo=ROOT / "topologies" / "pmtu_blackhole.yaml",
                                  reps=max(1, args.cells // 4)))
        rates = {}
        for jobs in (1, 2):
            wall, n = _timed(sweep, str(exp), out=str(base / f"local{jobs}"), jobs=jobs)
            rates[f"local --jobs {jobs}"] = (n, wall)
        lab = mod.Lab(base / "lab", ["w1", "w2", "w3"])
        try:
            for n_workers in (1, 2, 3):
                names = ["w1", "w2", "w3"][:n_workers]
                wf = lab.workers_file(base / f"workers{n_workers}.yaml", names)
                wall, n = lab.coord.call(_timed, sweep, str(exp), out=str(base / f"r{n_workers}"),
                                         workers=str(wf), timeout=600)
                rates[f"{n_workers} worker(s)"] = (n, wall)
        finally:
            lab.close()
    per_min = {k: n / wall * 60 for k, (n, wall) in rates.items()}
    for key, (n, wall) in rates.items():
        print(f"{key:>14}: {n} cells in {wall:5.1f} s = {per_min[key]:6.0f} cells/min")
    one = per_min["1 worker(s)"]
    effs = []
    for n_workers in (1, 2, 3):
        eff = per_min[f"{n_workers} worker(s)"] / (n_workers * one)
        effs.append(f"N={n_workers} {eff:.2f}")
    print(f"RESULT fan-out efficiency on sim ({os.cpu_count()} cores, 1 slot per worker, "
          f"workers share the cores): {', '.join(effs)}; one worker runs at "
          f"{one / per_min['local --jobs 1']:.2f} x local --jobs 1")


if __name__ == "__main__":
    main()
