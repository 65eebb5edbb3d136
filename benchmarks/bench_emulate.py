"""The emulated backend (``--backend mininet``), as root: start-up, goodput, shaper accuracy.

Prints, in one run:
- the time until a 20-router linear topology (h1 - r1 - ... - r20 - h2) is ready: namespaces,
  links, private OVS, controller, every router's flows installed, and the first ping from h1
  to h2 answered;
- bulk goodput of the python stack and of the kernel as sender h2 (receiver h1 is the kernel
  in both) over the same two-router path (pmtu_icmp.yaml with every link 1500 and unshaped);
- the shaper's delay error (ping RTT over 20 ms + 20 ms, p50 and p99, minus 40 ms; and the
  shaper's own lateness against its due times) and its rate error (TCP goodput over a 10 Mbit/s
  link against payload / (payload + 66) x 10 Mbit/s).

Stock ``mn --switch ovs,datapath=user --controller remote --topo linear,20 --test pingall`` is
NOT run: it names its interfaces s1-eth1 ... in the namespace it runs in and its switches s1...
in whatever OVS it finds, needs a learning-switch controller on 127.0.0.1:6653 (os-ken 4.x
ships none), and after a crash only Mininet's own cleanup (which kills and deletes by broad names) cleans
it. Making that safe beside other runs would need it wrapped in a private namespace, a private
OVS and our own controller: not done here, so sendlab is measured alone.

Usage: python benchmarks/bench_emulate.py        (root; every run cleans up after itself)
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed import emulate  # noqa: E402
from testbed.topology import Topology, load_topology  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def linear(n: int) -> Topology:
    routers = {f"r{i}": {} for i in range(1, n + 1)}
    links = ["h1:r1"] + [f"r{i}:r{i + 1}" for i in range(1, n)] + [f"r{n}:h2"]
    return Topology.model_validate({
        "name": f"linear{n}", "seed": 1,
        "defaults": {"rate_mbit": 0, "delay_ms": 0},
        "hosts": {"h1": {"stack": "linux"}, "h2": {"stack": "linux"}},
        "routers": routers, "links": links,
        "traffic": [{"name": "t", "from": "h1", "to": "h2", "writes": {"count": 1, "size": 10}}],
        "run": {"duration_s": 5, "stall_timeout_s": 5}})


def ready_time(n: int, out: Path) -> dict:
    net = emulate.EmulatedNetwork(linear(n), out)
    with net:
        t0 = time.monotonic()
        net.build()
        built = time.monotonic() - t0
        dst = str(net.plan.addr("h2").ip if hasattr(net.plan.addr("h2"), "ip")
                  else net.plan.addr("h2"))
        while True:
            res = net.ns["h1"].run(["ping", "-n", "-c", "1", "-W", "0.2", dst], check=False)
            if res.returncode == 0:
                break
            if time.monotonic() - t0 > 60:
                raise RuntimeError("no ping answered after 60 s")
        pinged = time.monotonic() - t0
        rtt = re.search(r"time=([\d.]+) ms", res.stdout)
        return {"build_s": built, "routers_ready_s": net.timings.get("routers_ready_s"),
                "first_ping_s": pinged, "first_rtt_ms": float(rtt.group(1)) if rtt else None}


def bulk(stack: str, out: Path, mb: int = 30) -> dict:
    other = "linux"   # the receiver is the kernel for both: only the sender differs
    t = load_topology(REPO / "topologies" / "pmtu_icmp.yaml",
                      [f"hosts.h2.stack={stack}", f"hosts.h1.stack={other}",
                       "links.1.mtu=1500", "defaults.rate_mbit=0", "defaults.delay_ms=0",
                       "links.1.delay_ms=0", f"traffic.0.bulk.bytes={mb}MB",
                       "run.duration_s=60"])
    f = emulate.run_emulated(t, out)["flows"][0]
    return {"goodput_mbit": f["goodput_mbit"], "completed": f["completed"] and f["intact"]}


def delay_error(out: Path) -> dict:
    t = load_topology(REPO / "topologies" / "two_hosts.yaml",
                      ["defaults.delay_ms=20", "hosts.h1.stack=linux", "hosts.h2.stack=linux",
                       "traffic.0.writes.count=10"])
    net = emulate.EmulatedNetwork(t, out)
    with net:
        net.build()
        a = net.plan.addr("h2")
        res = net.ns["h1"].run(["ping", "-n", "-c", "300", "-i", "0.01",
                                str(a.ip if hasattr(a, "ip") else a)], timeout=60, check=False)
        summary = net.run_traffic()
    rtts = sorted(float(m) for m in re.findall(r"time=([\d.]+) ms", res.stdout))
    late = summary["links"]["link0:h1>h2"].get("late_us") or {}
    return {"n": len(rtts), "p50": rtts[len(rtts) // 2] - 40,
            "p99": rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] - 40, "late_us": late}


def rate_error(stack: str, out: Path) -> dict:
    t = load_topology(REPO / "topologies" / "two_hosts.yaml",
                      [f"hosts.h1.stack={stack}", "defaults.rate_mbit=10", "defaults.delay_ms=2",
                       "defaults.queue_packets=100", "traffic.0.writes.count=6000",
                       "traffic.0.writes.size=1000", "traffic.0.writes.interval_ms=0"])
    f = emulate.run_emulated(t, out)["flows"][0]
    ideal = f["mss_final"] / (f["mss_final"] + 66) * 10
    return {"goodput": f["goodput_mbit"], "ideal": ideal,
            "error": (f["goodput_mbit"] - ideal) / ideal}


def main() -> int:
    reason = emulate.available()
    if reason:
        print(f"bench_emulate: skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-emulate-") as tmp:
        tmp = Path(tmp)
        r = ready_time(20, tmp / "linear")
        print(f"RESULT linear,20 ready: sendlab build {r['build_s']:.2f} s (routers' flows "
              f"installed at {r['routers_ready_s']} s), first ping answered at "
              f"{r['first_ping_s']:.2f} s (rtt {r['first_rtt_ms']} ms) | stock mn pingall: "
              "not run (no safe private-instance cleanup without Mininet's broad cleanup; see docstring)")
        g = {s: bulk(s, tmp / f"bulk-{s}") for s in ("python", "linux")}
        print(f"RESULT bulk goodput h2->h1 via r2,r1 (MTU 1500, unshaped, kernel receiver): python sender "
              f"{g['python']['goodput_mbit']:.0f} Mbit/s | kernel "
              f"{g['linux']['goodput_mbit']:.0f} Mbit/s sender")
        d = delay_error(tmp / "delay")
        print(f"RESULT shaper delay error (ping RTT - 40 ms over {d['n']} pings): p50 "
              f"{d['p50']:+.3f} ms, p99 {d['p99']:+.3f} ms; shaper lateness vs due time "
              f"p50 {d['late_us'].get('p50')} us, p99 {d['late_us'].get('p99')} us")
        for s in ("python", "linux"):
            e = rate_error(s, tmp / f"rate-{s}")
            print(f"RESULT shaper rate error at 10 Mbit/s ({s} sender): goodput "
                  f"{e['goodput']:.3f} vs ideal {e['ideal']:.3f} Mbit/s "
                  f"(payload/(payload+66) x rate): {e['error']:+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
