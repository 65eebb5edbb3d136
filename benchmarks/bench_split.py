"""One topology split over two workers against the same topology on one machine, side by side.

Starts the lab of tests/sshlab.py (two "machines": namespaces on a 1550-byte veth underlay,
each with its own sshd), then alternates, REPS times, a split run (``sendlab run --backend
mininet --workers``) and a local run of the same topology and seed:

- two_hosts with a 5 MB bulk transfer over its 100 Mbit/s, 5 ms link, split between h1 and h2
  (the link is a VXLAN tunnel shaped on both machines): goodput and wall time per run;
- pmtu_blackhole with tcp_mtu_probing=1, split across the black-hole link: when the first
  byte is acknowledged (black-hole detection) and when the transfer completes.

Prints medians and split/local ratios. Usage (root, openssh-server installed):
python benchmarks/bench_split.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sshlab  # noqa: E402

CASES = {
    "two_hosts bulk 5MB": ("two_hosts.yaml", {"h1": "w1", "h2": "w2"},
                           ["--set", "traffic.0.bulk.bytes=5MB"]),
    "pmtu_blackhole mode 1": ("pmtu_blackhole.yaml",
                              {"h1": "w1", "r1": "w1", "r2": "w2", "h2": "w2"},
                              ["--set", "traffic.0.sysctls.net.ipv4.tcp_mtu_probing=1"]),
}


def _topology(base: Path, src: str, placement: dict) -> Path:
    text = (ROOT / "topologies" / src).read_text()
    if src == "two_hosts.yaml":   # its 200 small writes become one bulk transfer
        head, _, tail = text.partition("    writes:")
        text = head + "    bulk: {bytes: 1MB}\n    socket:" + tail.split("    socket:", 1)[1]
    text += "\nplacement:\n" + "".join(f"  {n}: {w}\n" for n, w in placement.items())
    path = base / src
    path.write_text(text)
    return path


def _cli(argv: list[str]):
    import contextlib
    import io
    from testbed.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if sshlab.NO_LAB:
        print(f"bench_split: skipped: {sshlab.NO_LAB}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="bench-split-"))
    lab = sshlab.Lab(base / "lab", ["w1", "w2"], mtu=1550)
    results: dict = {}
    try:
        wf = lab.workers_file(base / "workers.yaml", ["w1", "w2"])
        for rep in range(args.reps):
            for case, (src, placement, sets) in CASES.items():
                topo = _topology(base, src, placement)
                for where, extra in (("split", ["--workers", str(wf)]), ("local", [])):
                    out = base / f"{where}-{rep}-{src}"
                    t0 = time.perf_counter()
                    rc, text = lab.coord.call(_cli, ["run", str(topo), "--backend", "mininet",
                                                     "--out", str(out), *sets, *extra],
                                              timeout=600)
                    wall = time.perf_counter() - t0
                    if rc != 0:
                        print(f"{case} {where}: exit {rc}\n{text}")
                        return 1
                    flow = json.loads((out / "summary.json").read_text())["flows"][0]
                    results.setdefault((case, where), []).append(
                        {"wall_s": wall, "goodput_mbit": flow["goodput_mbit"],
                         "first_byte_s": flow["time_to_first_byte_s"],
                         "duration_s": flow["duration_s"], "completed": flow["completed"]})
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0] if m != "completed"}
           for k, v in results.items()}
    print(f"{'case':<24}{'where':<7}{'wall s':>8}{'Mbit/s':>9}{'1st byte s':>12}"
          f"{'done s':>8}  completed")
    for (case, where), m in med.items():
        done = sum(r["completed"] for r in results[(case, where)])
        print(f"{case:<24}{where:<7}{m['wall_s']:8.2f}{m['goodput_mbit']:9.2f}"
              f"{m['first_byte_s']:12.3f}{m['duration_s']:8.3f}  {done}/{args.reps}")
    for case in CASES:
        s, lo = med[(case, "split")], med[(case, "local")]
        print(f"RESULT {case}: split/local goodput {s['goodput_mbit'] / lo['goodput_mbit']:.3f}, "
              f"first byte {s['first_byte_s'] / lo['first_byte_s']:.3f}, "
              f"wall per run {s['wall_s'] / lo['wall_s']:.2f} (medians of {args.reps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
