"""Bulk throughput of the sendlab stack over AF_PACKET into the kernel's TCP, one veth pair.

Two namespaces joined by a veth (offloads `tx off tso off gso off` on both ends, as
INFRA-NOTES requires for PACKET_VNET_HDR): the sendlab stack sends in one, a kernel
listener reads and discards in the other. Each mode sends for --seconds:

- python-gso: the Host's device cuts 64 KB skbs into MSS frames, each encoded and
  checksummed in Python, one send() per frame;
- vnet-hdr:   the 64 KB skbs go to the kernel whole behind a virtio-net header; the kernel
  segments and checksums them.

Printed per mode: goodput (bytes the kernel read / its read time) in Mbit/s, wire segments,
frames handed to the kernel, and the sender's CPU (getrusage of this process, user + sys) per
wire segment and as a share of one core. On a veth the receiver's softirq work often runs
inline in the sender's send() and is counted as the sender's sys time; the columns show both.

    PYTHONPATH=. python3 benchmarks/bench_afpacket.py [--seconds 3] [--mtu 1500] [--profile]

Needs root; without it (or without `ip netns`) it says so and exits 0. Everything it creates
is removed on exit, failure included.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time

try:
    import stack  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stack.runtime.afpacket import AfPacketRuntime  # noqa: E402
from testbed import netns  # noqa: E402

SL_IP, K_IP, PORT = "10.0.0.1", "10.0.0.2", 5201
CHUNK = 1 << 16
MODES = {"python-gso": False, "vnet-hdr": True}


def kernel_sink(ready) -> dict:
    """Read and discard until EOF; the receive time runs from the first byte to EOF."""
    with socket.create_server((K_IP, PORT)) as srv:
        srv.settimeout(30)
        ready.set()
        conn, _ = srv.accept()
    buf = bytearray(1 << 20)
    got, first, last = 0, None, None
    with conn:
        conn.settimeout(30)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            last = time.monotonic()
            first = first or last
            got += n
    return {"bytes": got, "seconds": (last - first) if got else 0.0}


def sender(rt, seconds: float, out: dict):
    sock = rt.socket()
    yield sock.connect((K_IP, PORT))
    data = bytes(CHUNK)
    end = rt.now + seconds
    while rt.now < end:
        yield sock.send(data)
    yield sock.close()
    out["sock"] = sock


def cpu_s() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def run_mode(run: netns.NetnsRun, a, b, veth, vnet_hdr: bool, seconds: float,
             profile: bool) -> dict:
    ready = multiprocessing.get_context("fork").Event()
    child = b.start(kernel_sink, ready)
    if not ready.wait(10):
        raise RuntimeError("kernel listener did not start")
    out: dict = {}
    with a.entered():
        rt = AfPacketRuntime.for_interface(veth.a_if, SL_IP, vnet_hdr=vnet_hdr)
    with rt:
        u0, s0 = cpu_s()
        rt.spawn(sender(rt, seconds, out), "sender")
        if profile:
            _profiled(rt, seconds)
        else:
            rt.run(timeout_s=seconds + 30)
        u1, s1 = cpu_s()
        rt.run(until=rt.now + 0.2)
        stats = dict(rt.stats, **rt.kernel_stats())
    kernel = child.result(60)
    info = out["sock"].tcp_info()
    return {"kernel": kernel, "stats": stats, "user_s": u1 - u0, "sys_s": s1 - s0,
            "retrans": info["tcpi_total_retrans"], "cwnd": info["tcpi_snd_cwnd"],
            "mss": info["tcpi_snd_mss"], "wall_s": seconds}


def _profiled(rt, seconds: float) -> None:
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.runcall(rt.run, timeout_s=seconds + 30)
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def report(name: str, r: dict) -> None:
    k, st = r["kernel"], r["stats"]
    mbit = k["bytes"] * 8 / k["seconds"] / 1e6 if k["seconds"] else 0.0
    segs = st["wire_segs_out"]
    cpu = r["user_s"] + r["sys_s"]
    drops = st["send_dropped"] + st["kernel_rx_dropped"]
    per_seg = [x / segs * 1e6 for x in (cpu, r["user_s"], r["sys_s"])]
    print(f"{name:<11} {mbit:9.1f} {segs:9d} {st['frames_out']:8d} {per_seg[0]:10.2f} "
          f"{per_seg[1]:7.2f} {per_seg[2]:7.2f} {cpu / r['wall_s'] * 100:5.0f}% "
          f"{r['retrans']:6d} {drops:5d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="sending time per mode")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--profile", action="store_true", help="cProfile the sender loop")
    args = ap.parse_args()
    # Leave through the `with` below on SIGTERM too, so the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    why_not = netns.available()
    if why_not:
        print(f"bench_afpacket: skipped: {why_not}")
        return 0
    print(f"sendlab -> kernel TCP over one veth, MTU {args.mtu}, {args.seconds:g} s per mode, "
          f"sendlab cubic, offloads tx/tso/gso off")
    print(f"{'mode':<11} {'Mbit/s':>9} {'wire_segs':>9} {'frames':>8} {'cpu_us/seg':>10} "
          f"{'user':>7} {'sys':>7} {'cpu':>6} {'retx':>6} {'drops':>5}")
    with netns.NetnsRun() as run:
        for name in args.modes.split(","):
            # A fresh pair per mode: no ARP entry, socket or queue state carried over.
            k = len(run.namespaces)
            a, b = run.add_namespace(f"a{k}"), run.add_namespace(f"b{k}")
            veth = run.add_veth(a, b, mtu=args.mtu)
            b.addr_add(veth.b_if, f"{K_IP}/24")
            report(name, run_mode(run, a, b, veth, MODES[name], args.seconds, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
