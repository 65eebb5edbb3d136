"""How much faster than real time the sim backend runs a 100 Mbit/s dumbbell bulk transfer,
and how that scales with the number of flows (1, 4, 16).

Prints simulated seconds per wall second (higher is better) and segments per wall second.
Usage: python benchmarks/bench_sim.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.run import run_sim  # noqa: E402
from testbed.topology import Topology  # noqa: E402


def dumbbell(flows: int, megabytes: float, seconds: float) -> Topology:
    hosts = {f"s{i}": {} for i in range(flows)} | {f"d{i}": {} for i in range(flows)}
    links = [f"s{i}:sw1" for i in range(flows)] + [f"d{i}:sw2" for i in range(flows)]
    links += ["sw1:r1", {"ends": ["r1", "r2"], "rate_mbit": 100, "delay_ms": 10,
                         "queue_packets": 500}, "r2:sw2"]
    traffic = [{"name": f"f{i}", "from": f"s{i}", "to": f"d{i}",
                "bulk": {"bytes": int(megabytes * 1e6 / flows)}} for i in range(flows)]
    return Topology.model_validate({
        "name": f"bench{flows}", "seed": 1,
        "defaults": {"rate_mbit": 1000, "delay_ms": 0.05, "queue_packets": 1000},
        "hosts": hosts, "routers": {"r1": {}, "r2": {}}, "switches": {"sw1": {}, "sw2": {}},
        "links": links, "traffic": traffic,
        "run": {"duration_s": seconds, "stall_timeout_s": seconds}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    megabytes = 5 if args.quick else 25
    print(f"dumbbell, 100 Mbit/s bottleneck, 20 ms RTT, {megabytes} MB in total, sim backend")
    print(f"{'flows':>6} {'virtual s':>10} {'wall s':>8} {'sim s / wall s':>15} {'segments':>9}"
          f" {'segments/wall s':>16} {'goodput Mbit/s':>15}")
    for flows in (1, 4, 16):
        topo = dumbbell(flows, megabytes, 120.0)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = run_sim(topo, out)
            wall = time.perf_counter() - t0
        virtual = summary["end_s"]
        segs = sum(f["data_segments"] for f in summary["flows"])
        acked = sum(f["bytes_acked"] for f in summary["flows"])
        print(f"{flows:>6} {virtual:>10.3f} {wall:>8.2f} {virtual / wall:>15.3f} {segs:>9}"
              f" {segs / wall:>16.0f} {acked * 8 / virtual / 1e6:>15.1f}")


if __name__ == "__main__":
    main()
