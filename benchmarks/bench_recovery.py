"""Loss and PMTU behaviour on the virtual clock:
- recovery time from a PMTU black hole for each tcp_mtu_probing mode;
- goodput versus Bernoulli loss for Reno and CUBIC against the Mathis et al. prediction
  (MSS / RTT * 1.22 / sqrt(p), for Reno), every transfer checked intact end to end.

Usage: python benchmarks/bench_recovery.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.run import run_sim  # noqa: E402
from testbed.topology import load_topology  # noqa: E402


def run(topology: str, *overrides: str) -> dict:
    topo = load_topology(ROOT / "topologies" / topology, list(overrides))
    with tempfile.TemporaryDirectory() as out:
        return run_sim(topo, out)["flows"][0]


def blackhole(quick: bool) -> None:
    print("PMTU black hole (h2 -> r2 -> 1280-byte link, r2 silent), 1 MB, 24 ms RTT")
    for mode in (0, 1, 2):
        flow = run("pmtu_blackhole.yaml", f"traffic.0.sysctls.net.ipv4.tcp_mtu_probing={mode}",
                   "traffic.0.bulk.bytes=1MB" if not quick else "traffic.0.bulk.bytes=300kB",
                   "run.stall_timeout_s=20")
        verdict = ("completed" if flow["completed"] else
                   f"stalled (no progress after {flow['last_progress_s']:.3f} s)")
        print(f"  tcp_mtu_probing={mode}: {verdict}; first byte acked after "
              f"{flow['time_to_first_byte_s']} s, done in {flow['duration_s']:.3f} s, "
              f"MSS {flow['mss_initial']} -> {flow['mss_final']}, "
              f"{flow['counters'].get('SendlabMtuProbes', 0)} probes")
        print(f"RESULT blackhole mode {mode}: "
              + (f"recovered, {flow['duration_s']:.3f} s to complete, "
                 f"{flow['time_to_first_byte_s']} s to first byte" if flow["completed"]
                 else "stalled"))


def loss_table(quick: bool) -> None:
    # Long enough to see many loss events: Mathis describes the steady state, not slow start.
    sizes = {0.001: 20_000_000, 0.01: 5_000_000, 0.05: 1_000_000, 0.10: 1_000_000}
    rtt = 0.02
    print(f"\nGoodput versus loss (h1 -> h2, 100 Mbit/s, {rtt * 1000:.0f} ms RTT, "
          f"loss on the data direction; Mathis with C = 1.22)")
    print(f"{'loss':>6} {'reno Mbit/s':>12} {'cubic Mbit/s':>13} {'Mathis (reno)':>14} "
          f"{'reno/Mathis':>12} {'intact':>7}")
    for loss in (0.001, 0.01, 0.05, 0.10):
        size = sizes[loss] // (10 if quick else 1)
        got = {}
        intact = True
        for cc in ("reno", "cubic"):
            flow = run("two_hosts.yaml", "traffic.0.writes=null", f"traffic.0.bulk.bytes={size}",
                       "defaults.rate_mbit=100", "defaults.delay_ms=10",
                       f"links.0.from.h1.loss={loss}", f"hosts.h1.socket.congestion={cc}",
                       "run.stall_timeout_s=60", "run.duration_s=600")
            got[cc] = flow["goodput_mbit"]
            intact = intact and flow["completed"] and flow["intact"]
        mss = 1448
        mathis = mss * 8 / rtt * 1.22 / math.sqrt(loss) / 1e6
        print(f"{loss:>6.3f} {got['reno']:>12.2f} {got['cubic']:>13.2f} {mathis:>14.2f} "
              f"{got['reno'] / mathis:>12.2f} {str(intact):>7}")
        print(f"RESULT loss {loss}: reno {got['reno']:.2f} Mbit/s, cubic {got['cubic']:.2f} "
              f"Mbit/s, Mathis {mathis:.2f} Mbit/s, intact {intact}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    blackhole(args.quick)
    loss_table(args.quick)
    print(f"(total {time.perf_counter() - t0:.1f} s wall)")


if __name__ == "__main__":
    main()
