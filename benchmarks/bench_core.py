"""Wall-clock cost of the sans-I/O TCP core on the virtual-clock runtime.

Measures, in one run and side by side (wall clock, time.perf_counter, best of N repetitions):

1. bulk   - MSS-sized data segments per wall second through tcp_sendmsg -> tcp_write_xmit ->
            device (GSO) -> link -> receiver -> delayed ACK -> tcp_ack, two hosts on a
            10 Gbit/s, 50 us link (SO_SNDBUF 1 MB so the device queue never overflows); also
            simulated payload MB per wall second and the virtual goodput.
2. small  - microseconds of wall time per send() call for 1, 100 and 1000-byte writes,
            TCP_NODELAY off and on, the whole transfer timed (segments, ACKs, recv, close):
            back to back (autocorking and Nagle coalesce) and 20 us apart in virtual time.
3a. queue - microseconds per send() while the write queue holds 1k, 10k, 50k skbs (MSG_EOR
            makes every write its own skb; the head cannot leave because the path drops
            everything (cwnd-limited) or the peer's window is closed).
3b. ackq  - microseconds per cumulative ACK (one MSS each) with 1k, 10k, 50k segments
            outstanding (one skb per segment, and 64 KB TSO skbs).
3c. sackq - microseconds per duplicate ACK with SACK while the head is lost, 1k/10k/50k
            segments outstanding, with RACK (default) and with the dupthresh scoreboard.
3d.       - the same dupthresh recovery as the number of SACKed segments m grows.

3a and 3b report the best 100-operation stretch, 3c/3d the best 20-ACK one, so a scheduler
hiccup on a shared machine does not count. Next to each timing the Python and builtin function
calls per operation are counted (sys.setprofile, on untimed operations right after the timed
ones): a noise-free witness. For 3a and 3b neither should depend on the queue length (ratio to
the smallest size near 1); 3c/3d show where they do.

    PYTHONPATH=. python3 benchmarks/bench_core.py [--quick] [--reps N] [--only bulk,small,...]
    PYTHONPATH=. python3 benchmarks/bench_core.py --profile [--top 20]   # cProfile of bulk

Nothing here changes the stack: the benchmark uses the socket API and the runtime, and for
3b-3d loads the sender through the socket API, discards its frames and hands it crafted ACK
segments through Host.receive, the way a runtime would.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

try:
    import stack  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stack.constants import (  # noqa: E402
    MSG_EOR, SO_RCVBUF, SO_SNDBUFFORCE, SOL_SOCKET, SOL_TCP, TCP_NODELAY, TCPHDR_ACK,
)
from stack.runtime import Sleep, VirtualNetwork  # noqa: E402
from stack.segment import Segment  # noqa: E402
from stack.sysctl import Sysctl  # noqa: E402

A_ADDR, B_ADDR, PORT = "10.0.0.1", "10.0.0.2", 5000
RATE = 10e9          # 10 Gbit/s
DELAY = 50e-6        # 50 us one way
TCPOPT_NOP, TCPOPT_SACK, TCPOPT_TIMESTAMP = 1, 5, 8
CHUNK = 100          # ops per timed stretch in [3a]/[3b]; the best stretch is reported
COUNT_N = 100        # ops whose function calls are counted (untimed) at each size in [3a]/[3b]
SACK_CHUNK = 20      # [3c]/[3d]: the best 20-ACK stretch is reported
SMALL_GAP = 20e-6    # spacing of the "spaced" small writes: 5 per RTT


class _Calls:
    """Counts Python and builtin function calls while installed with sys.setprofile.

    A noise-free witness next to the timings: if the calls per operation do not change with
    the queue length, neither does the work (up to memory effects).
    """

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, frame, event, arg) -> None:
        if event == "call" or event == "c_call":
            self.n += 1

    def start(self) -> None:
        sys.setprofile(self)

    def stop(self) -> int:
        sys.setprofile(None)
        return self.n


def _best(fn, reps: int):
    """Run ``fn`` ``reps`` times; return the result with the smallest wall time (result['wall'])."""
    best = None
    for _ in range(reps):
        gc.collect()
        r = fn()
        if best is None or r["wall"] < best["wall"]:
            best = r
    return best


def _pair(rate=RATE, delay=DELAY, sysctl_a=None, sysctl_b=None, seed=1):
    net = VirtualNetwork(seed=seed)
    a = net.add_host(A_ADDR, rate_bps=rate, sysctl=sysctl_a)
    b = net.add_host(B_ADDR, rate_bps=rate, sysctl=sysctl_b)
    link = net.connect(a, b, delay_s=delay)
    return net, a, b, link


# --- 1. bulk ---------------------------------------------------------------------------------

def bulk_once(nbytes: int, sndbuf: int = 1 << 20, chunk: int = 1 << 20) -> dict:
    """One transfer of ``nbytes``; the sender writes ``chunk`` bytes per send()."""
    net, a, b, link = _pair()
    st: dict = {}

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
        st["received"] = total
        st["t_end"] = net.now
        yield c.close()

    def client():
        s = net.socket(a)
        if sndbuf:
            yield s.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, sndbuf // 2)
        yield s.connect((B_ADDR, PORT))
        st["t_start"] = net.now
        st["tp"] = s.tp
        data = memoryview(bytes(chunk))
        left = nbytes
        while left:
            n = min(left, chunk)
            sent = yield s.send(data[:n])
            left -= sent
        yield s.close()

    t0 = time.perf_counter()
    net.spawn(b, server())
    net.spawn(a, client())
    net.run()
    wall = time.perf_counter() - t0
    tp = st["tp"]
    assert st["received"] == nbytes, (st["received"], nbytes)
    return {
        "wall": wall,
        "bytes": nbytes,
        "data_segs": tp.data_segs_out,               # MSS-sized segments (TSO pcount)
        "frames_ab": b.mib["TcpInSegs"],             # frames the receiver got (data + handshake)
        "acks": a.mib["TcpInSegs"],                  # segments the sender got back
        "skbs_sent": a.mib["IpOutRequests"],         # tcp_transmit_skb calls (GSO skbs)
        "retrans": tp.total_retrans,
        "virt_s": st["t_end"] - st["t_start"],
        "cwnd": tp.snd_cwnd,
    }


def bench_bulk(nbytes: int, reps: int) -> dict:
    r = _best(lambda: bulk_once(nbytes), reps)
    r["segs_per_s"] = r["data_segs"] / r["wall"]
    r["mb_per_s"] = r["bytes"] / r["wall"] / 1e6
    r["goodput_gbit"] = r["bytes"] * 8 / r["virt_s"] / 1e9
    r["us_per_seg"] = r["wall"] / r["data_segs"] * 1e6
    return r


# --- 2. small writes -------------------------------------------------------------------------

def small_once(size: int, nwrites: int, nodelay: bool, gap: float = 0.0) -> dict:
    """``nwrites`` send() calls of ``size`` bytes, back to back or ``gap`` virtual seconds apart."""
    net, a, b, link = _pair()
    st: dict = {}

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
        st["received"] = total
        yield c.close()

    def client():
        s = net.socket(a)
        if nodelay:
            yield s.setsockopt(SOL_TCP, TCP_NODELAY, 1)
        yield s.connect((B_ADDR, PORT))
        st["tp"] = s.tp
        data = bytes(size)
        if gap:
            for _ in range(nwrites):
                yield s.send(data)
                yield Sleep(gap)
        else:
            for _ in range(nwrites):
                yield s.send(data)
        yield s.close()

    t0 = time.perf_counter()
    net.spawn(b, server())
    net.spawn(a, client())
    net.run()
    wall = time.perf_counter() - t0
    assert st["received"] == size * nwrites
    tp = st["tp"]
    return {"wall": wall, "segs": tp.data_segs_out, "acks": a.mib["TcpInSegs"],
            "skbs": a.mib["IpOutRequests"]}


def bench_small(sizes, nwrites: int, reps: int, gap: float = 0.0) -> list:
    """One row per (size, nodelay); repetitions go round all rows (best of ``reps`` each)."""
    rows = {}
    for _ in range(reps):
        for size in sizes:
            for nodelay in (False, True):
                gc.collect()
                r = small_once(size, nwrites, nodelay, gap)
                if (size, nodelay) not in rows or r["wall"] < rows[size, nodelay]["wall"]:
                    rows[size, nodelay] = r
    out = []
    for (size, nodelay), r in rows.items():
        r.update(size=size, nodelay=nodelay, nwrites=nwrites, gap=gap,
                 us_per_write=r["wall"] / nwrites * 1e6, segs_per_write=r["segs"] / nwrites)
        out.append(r)
    return out


# --- 3a. long write queue --------------------------------------------------------------------

def queue_once(sizes, batch: int, mode: str, wsize: int = 100) -> dict:
    """Grow the write queue to max(sizes) skbs; time ``batch`` writes ending at each size.

    mode "cwnd": the link drops everything after the handshake, so the first cwnd of data
    stays in flight and every later write waits in the write queue.
    mode "rwnd": the receiver never reads and has a tiny receive buffer, so the peer's window
    closes and the queue grows behind it.
    """
    net, a, b, link = _pair()
    target = max(sizes) + COUNT_N
    marks = {}
    calls = {}
    st: dict = {}

    def server():
        s = net.socket(b)
        if mode == "rwnd":
            yield s.setsockopt(SOL_SOCKET, SO_RCVBUF, 1)      # SOCK_MIN_RCVBUF
        yield s.bind(("", PORT))
        yield s.listen()
        c = yield s.accept()
        st["server"] = c
        yield Sleep(10.0)                                      # never reads

    def client():
        s = net.socket(a)
        yield s.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
        yield s.connect((B_ADDR, PORT))
        st["tp"] = s.tp
        data = bytes(wsize)
        if mode == "rwnd":
            # Fill the peer's window first; its zero-window ACK arrives during the Sleep.
            for _ in range(200):
                yield s.send(data, MSG_EOR)
        else:
            yield Sleep(0.001)
            link.loss = 1.0
            for _ in range(20):                                # fill cwnd; all of it is lost
                yield s.send(data, MSG_EOR)
        # Let the device report the sent skbs complete, so autocorking does not hold the
        # writes below (virtual time stands still while they run); RTO and TLP are further off.
        yield Sleep(0.001)
        tp = s.tp
        base = len(tp.write_queue)
        st["base"] = base
        clock = time.perf_counter
        t_prev = clock()
        marks[0] = t_prev
        n = 0
        checkpoints = {sz - k for sz in sizes for k in range(0, batch + 1, CHUNK)}
        counting = None
        while n < target:
            if n in sizes:                       # count calls in the writes after a checkpoint
                counting = (n, _Calls())
                counting[1].start()
            yield s.send(data, MSG_EOR)
            n += 1
            if n in checkpoints:
                marks[n] = clock()
            if counting is not None and n == counting[0] + COUNT_N:
                calls[counting[0]] = counting[1].stop() / COUNT_N
                counting = None
        st["t_total"] = clock() - t_prev
        st["qlen"] = len(tp.write_queue)
        st["pending"] = tp.packets_out

    t0 = time.perf_counter()
    net.spawn(b, server())
    net.spawn(a, client())
    net.run(until=0.05)
    wall = time.perf_counter() - t0
    assert st["qlen"] >= target, (st["qlen"], target)
    per = {sz: _chunked(marks, sz, batch) for sz in sizes}
    return {"wall": wall, "per_op_us": per, "calls": calls, "qlen": st["qlen"],
            "base": st["base"], "packets_out": st["pending"]}


def _chunked(marks: dict, end: int, batch: int) -> float:
    """us per op: the best CHUNK-op stretch among the ``batch`` ops ending at ``end``."""
    return min((marks[k + CHUNK] - marks[k]) / CHUNK * 1e6
               for k in range(end - batch, end, CHUNK))


def bench_queue(sizes, batch: int, reps: int, mode: str) -> dict:
    # Best of N per size separately: take the minimum per checkpoint across repetitions.
    best = None
    for _ in range(reps):
        gc.collect()
        r = queue_once(sizes, batch, mode)
        if best is None:
            best = r
        else:
            for sz in sizes:
                best["per_op_us"][sz] = min(best["per_op_us"][sz], r["per_op_us"][sz])
            best["wall"] = min(best["wall"], r["wall"])
    return best


# --- 3b/3c. long retransmit queue ------------------------------------------------------------

def _established_pair(nsegs: int, tso: bool, sysctl_a: Sysctl | None = None):
    """Handshake over the runtime, then load the sender with ``nsegs`` MSS of unacked data.

    The devices are instant (no rate) so nothing is dropped at a queue; the frames the sender
    emits are taken from the host and thrown away, so the data is never ACKed by the peer.
    """
    big = Sysctl()
    big.tcp_rmem = (4096, 131072, 1 << 30)   # receiver: window scale 14, room for any window
    net = VirtualNetwork(seed=1)
    a = net.add_host(A_ADDR, rate_bps=None, sysctl=sysctl_a)
    b = net.add_host(B_ADDR, rate_bps=None, sysctl=big)
    net.connect(a, b, delay_s=DELAY)
    st: dict = {}

    def server():
        s = net.socket(b)
        yield s.bind(("", PORT))
        yield s.listen()
        st["server"] = yield s.accept()
        yield Sleep(10.0)

    def client():
        s = net.socket(a)
        yield s.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
        yield s.connect((B_ADDR, PORT))
        st["sock"] = s
        yield Sleep(10.0)

    net.spawn(b, server())
    net.spawn(a, client())
    net.run(until=0.01)
    s = st["sock"]
    tp = s.tp
    mss = tp.mss_cache
    now = 0.01
    tp.snd_cwnd = tp.snd_cwnd_clamp = nsegs + 100
    tp.snd_ssthresh = nsegs + 100            # congestion avoidance: cwnd stays put
    assert tp.snd_wscale == 14, tp.snd_wscale
    tp.snd_wnd = tp.max_window = 0xFFFF << tp.snd_wscale   # what the ACKs below advertise
    from stack.socket import SendCall
    if tso:
        op = SendCall(s, bytes(nsegs * mss), 0)
        op.step(now)
    else:
        data = bytes(mss)
        for _ in range(nsegs):
            SendCall(s, data, MSG_EOR).step(now)
    a.take_frames()
    assert tp.packets_out == nsegs and not tp.write_queue, (tp.packets_out, len(tp.write_queue))
    return net, a, b, tp, mss, now


def _ack(tp, ack_seq: int, tsval: int, sack=None) -> Segment:
    opts = ((TCPOPT_NOP, None), (TCPOPT_NOP, None), (TCPOPT_TIMESTAMP, (tsval, tp.rcv_tsval)))
    if sack:
        opts = opts + ((TCPOPT_NOP, None), (TCPOPT_NOP, None), (TCPOPT_SACK, sack))
    return Segment(tp.daddr, tp.saddr, tp.dport, tp.sport, tp.rcv_nxt, ack_seq, TCPHDR_ACK,
                   0xFFFF, opts)


def _count_acks(a, acks, now: float) -> float:
    """Calls per ACK for ``acks`` handed to host ``a`` (not timed)."""
    counter = _Calls()
    counter.start()
    try:
        for seg in acks:
            now += 1e-6
            a.receive(seg, now)
            a.take_frames()
    finally:
        n = counter.stop()
    return n / len(acks)


def ackq_once(nsegs: int, nacks: int, tso: bool) -> dict:
    net, a, b, tp, mss, now = _established_pair(nsegs, tso)
    una = tp.snd_una
    tsval = tp.ts_recent
    nacks -= nacks % CHUNK
    acks = [_ack(tp, (una + (k + 1) * mss) & 0xFFFFFFFF, tsval + k)
            for k in range(nacks + COUNT_N)]
    acks, extra = acks[:nacks], acks[nacks:]
    clock = time.perf_counter
    receive, take = a.receive, a.take_frames
    marks = {0: clock()}
    for k in range(0, nacks, CHUNK):
        for seg in acks[k:k + CHUNK]:
            now += 1e-6
            receive(seg, now)
            take()
        marks[k + CHUNK] = clock()
    wall = marks[nacks] - marks[0]
    calls = _count_acks(a, extra, now)
    assert tp.packets_out == nsegs - nacks - COUNT_N, (tp.packets_out, nsegs, nacks)
    # Like bench_queue: the best CHUNK-ACK stretch, so a scheduler hiccup does not count.
    return {"wall": _chunked(marks, nacks, nacks), "us_per_ack": _chunked(marks, nacks, nacks),
            "mean_us": wall / nacks * 1e6, "calls": calls}


def sackq_once(nsegs: int, nacks: int, rack: bool = True) -> dict:
    """The head segment is lost; each dup ACK SACKs one more segment above it."""
    sysctl_a = Sysctl()
    if not rack:
        sysctl_a.tcp_recovery = 0           # classic dupthresh scoreboard instead of RACK
    net, a, b, tp, mss, now = _established_pair(nsegs, False, sysctl_a)
    nacks -= nacks % SACK_CHUNK
    una = tp.snd_una
    tsval = tp.ts_recent
    acks = [_ack(tp, una, tsval + k,
                 sack=(((una + mss) & 0xFFFFFFFF, (una + (k + 2) * mss) & 0xFFFFFFFF),))
            for k in range(nacks + SACK_CHUNK)]
    acks, extra = acks[:nacks], acks[nacks:]
    clock = time.perf_counter
    receive, take = a.receive, a.take_frames
    chunk = SACK_CHUNK
    marks = {0: clock()}
    for k, seg in enumerate(acks, 1):
        now += 1e-6
        receive(seg, now)
        take()
        if k % chunk == 0:
            marks[k] = clock()
    calls = _count_acks(a, extra, now)
    assert tp.sacked_out == nacks + SACK_CHUNK, (tp.sacked_out, nacks)
    best = min((marks[k + chunk] - marks[k]) / chunk * 1e6
               for k in range(0, nacks - chunk + 1, chunk))
    return {"wall": best, "us_per_ack": best, "mean_us": (marks[nacks] - marks[0]) / nacks * 1e6,
            "retrans": tp.total_retrans, "calls": calls}


def sackm_once(marks_at, window: int) -> dict:
    """dupthresh recovery (RACK off): per-ACK cost once ``m`` segments above the hole are SACKed.

    The retransmit queue is fixed (max(marks_at) + 1000 segments); what grows is the number of
    SACKed skbs between the head and the newly SACKed one.
    """
    sysctl_a = Sysctl()
    sysctl_a.tcp_recovery = 0
    top = max(marks_at)
    net, a, b, tp, mss, now = _established_pair(top + 1000, False, sysctl_a)
    una = tp.snd_una
    tsval = tp.ts_recent
    acks = [_ack(tp, una, tsval + k,
                 sack=(((una + mss) & 0xFFFFFFFF, (una + (k + 2) * mss) & 0xFFFFFFFF),))
            for k in range(top + SACK_CHUNK)]
    clock = time.perf_counter
    receive, take = a.receive, a.take_frames
    stamps = {0: clock()}
    want = {m - window + j for m in marks_at for j in range(0, window + 1, SACK_CHUNK)}
    calls = {}
    counter = None
    for k, seg in enumerate(acks, 1):
        now += 1e-6
        receive(seg, now)
        take()
        if k in want:
            stamps[k] = clock()
        if counter is not None and k == counter[0] + SACK_CHUNK:
            calls[counter[0]] = counter[1].stop() / SACK_CHUNK
            counter = None
        if k in marks_at:                        # count calls in the ACKs after each mark
            counter = (k, _Calls())
            counter[1].start()
    # The best SACK_CHUNK-ACK stretch of the ``window`` ACKs before each mark.
    per = {m: min((stamps[k + SACK_CHUNK] - stamps[k]) / SACK_CHUNK * 1e6
                  for k in range(m - window, m, SACK_CHUNK)) for m in marks_at}
    return {"wall": stamps[top] - stamps[0], "per": per, "calls": calls}


def _warm() -> None:
    """Run every code path once: the first use of a path pays for imports done inside functions."""
    sackq_once(200, 20, True)
    sackq_once(200, 20, False)
    ackq_once(300, 200, False)


def bench_rtxq(sizes, nacks: int, reps: int, kind: str) -> dict:
    """us per ACK for each queue size; repetitions go round the sizes, so a slow spell of a
    shared machine does not land on one size only."""
    out: dict = {}
    calls: dict = {}
    for _ in range(reps):
        for n in sizes:
            gc.collect()
            k = min(nacks, n - 1 - COUNT_N)
            if kind in ("sack", "sack_norack"):
                r = sackq_once(n, k, kind == "sack")
            else:
                r = ackq_once(n, k, kind == "tso")
            out[n] = min(out.get(n, float("inf")), r["us_per_ack"])
            calls[n] = r["calls"]
    return out, calls


# --- reporting -------------------------------------------------------------------------------

def _ratio_line(label: str, per: dict, calls: dict | None = None) -> str:
    sizes = sorted(per)
    base = per[sizes[0]]
    cells = "  ".join(f"{sz:>6}: {per[sz]:7.2f} us (x{per[sz] / base:4.2f})" for sz in sizes)
    line = f"  {label:<34} {cells}"
    if calls:
        cb = calls[sizes[0]]
        cells = "  ".join(f"{sz:>6}: {calls[sz]:7.0f} calls (x{calls[sz] / cb:4.2f})"
                          for sz in sizes)
        line += f"\n  {'  function calls per op':<34} {cells}"
    return line


def _verdict(per: dict, calls: dict) -> str:
    """Time and call-count ratios, largest size over smallest, and what they say."""
    lo, hi = min(per), max(per)
    t = per[hi] / per[lo]
    c = calls[hi] / calls[lo]
    word = "flat (O(1) per op)" if c < 1.2 else f"GROWS with size ({hi / lo:.0f}x size)"
    return f"; ratio largest/smallest: time {t:.2f}, calls {c:.2f} -> {word}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 10 s in all)")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions, best taken: 3 (quick 2) for bulk and 3a, at most 2 for "
                         "small writes and 3b, 1 for 3c/3d")
    ap.add_argument("--only", default="bulk,small,queue,ackq,sackq",
                    help="comma-separated subset of bulk,small,queue,ackq,sackq (sackq: 3c+3d)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the figures, cProfile one bulk transfer and print the top")
    ap.add_argument("--top", type=int, default=20, help="rows per --profile listing")
    args = ap.parse_args(argv)
    q = args.quick
    reps = args.reps or (2 if q else 3)
    bulk_bytes = (5 if q else 20) * 1_000_000
    small_n = 2_000 if q else 20_000
    qsizes = (1_000, 5_000) if q else (1_000, 10_000, 50_000)
    qbatch = 500 if q else 1_000
    asizes = (1_000, 5_000) if q else (1_000, 10_000, 50_000)
    nacks = 500 if q else 1_000
    sack_n = 100
    spaced_n = small_n // 20
    small_reps = min(reps, 2)

    if args.profile:
        return profile_bulk(bulk_bytes, args.top)

    only = set(args.only.split(","))
    t_all = time.perf_counter()
    print(f"sendlab core benchmark ({'quick' if q else 'full'}; best of {reps} for bulk and 3a, "
          f"{min(reps, 2)} for small writes and 3b, 1 for 3c/3d; Python {sys.version.split()[0]})")
    finals = []

    if "bulk" in only:
        r = bench_bulk(bulk_bytes, reps)
        print(f"\n[1] bulk: {bulk_bytes / 1e6:.0f} MB, 10 Gbit/s, 50 us one way, 1 MB send() calls")
        print(f"  wall {r['wall']:.3f} s   data segments {r['data_segs']}   GSO skbs sent "
              f"{r['skbs_sent']}   ACKs back {r['acks']}   retrans {r['retrans']}   "
              f"final cwnd {r['cwnd']}")
        print(f"  {r['us_per_seg']:.1f} us wall per data segment (incl. its share of ACKs)")
        finals.append(f"bulk: {r['segs_per_s']:,.0f} data segments/s wall, "
                      f"{r['mb_per_s']:.2f} MB/s simulated payload per wall second, "
                      f"virtual goodput {r['goodput_gbit']:.2f} Gbit/s")

    if "small" in only:
        rows = bench_small((1, 100, 1000), small_n, small_reps)
        rows += bench_small((1, 100, 1000), spaced_n, small_reps, gap=SMALL_GAP)
        print(f"\n[2] small writes: send() calls back to back ({small_n}) or "
              f"{SMALL_GAP * 1e6:.0f} us apart in virtual time ({spaced_n}); whole "
              f"transfer timed (segments, ACKs, recv, close)")
        print(f"  {'size':>5} {'nodelay':>7} {'pattern':>8} {'us/write':>9} {'segs/write':>10} "
              f"{'GSO skbs':>8} {'ACKs':>6} {'wall s':>7}")
        for r in rows:
            print(f"  {r['size']:>5} {('on' if r['nodelay'] else 'off'):>7} "
                  f"{('spaced' if r['gap'] else 'loop'):>8} "
                  f"{r['us_per_write']:>9.2f} {r['segs_per_write']:>10.3f} {r['skbs']:>8} "
                  f"{r['acks']:>6} {r['wall']:>7.3f}")
        for gap, label in ((0.0, "back to back"), (SMALL_GAP, "spaced")):
            cells = ", ".join(f"{r['size']}B/{'nodelay' if r['nodelay'] else 'nagle'} "
                              f"{r['us_per_write']:.1f}" for r in rows if r["gap"] == gap)
            finals.append(f"small writes ({label}): us wall per send(): {cells}")

    if "queue" in only:
        print(f"\n[3a] send() cost with a long write queue (MSG_EOR 100-byte writes, one skb "
              f"each; best {CHUNK}-write stretch of the {qbatch} writes ending at each queue "
              f"length)")
        for mode, label in (("cwnd", "cwnd-limited (path drops all)"),
                            ("rwnd", "peer window closed")):
            r = bench_queue(qsizes, qbatch, reps, mode)
            print(_ratio_line(label, r["per_op_us"], r["calls"]))
            finals.append(f"write queue ({mode}): "
                          + ", ".join(f"{s // 1000}k skbs {r['per_op_us'][s]:.2f} us/write"
                                      for s in qsizes)
                          + _verdict(r["per_op_us"], r["calls"]))

    if "ackq" in only:
        print(f"\n[3b] cumulative ACK cost with a long retransmit queue (each ACK covers one "
              f"MSS; best {CHUNK}-ACK stretch of the first {nacks} ACKs)")
        for kind, label in (("eor", "one skb per segment"), ("tso", "64 KB TSO skbs")):
            # Two rounds: loading 50k segments costs far more than the timed ACKs.
            per, calls = bench_rtxq(asizes, nacks, min(reps, 2), kind)
            print(_ratio_line(label, per, calls))
            finals.append(f"ACK, rtx queue ({label}): "
                          + ", ".join(f"{s // 1000}k segs {per[s]:.2f} us/ACK" for s in asizes)
                          + _verdict(per, calls))

    if "sackq" in only or "ackq" in only:
        _warm()

    if "sackq" in only:
        print(f"\n[3c] dup ACK + SACK cost in loss recovery (head lost, each ACK SACKs one more "
              f"segment; best {SACK_CHUNK}-ACK stretch of the first {sack_n} ACKs)")
        for kind, label in (("sack", "RACK (tcp_recovery=1)"),
                            ("sack_norack", "dupthresh (tcp_recovery=0)")):
            per, calls = bench_rtxq(asizes, sack_n, 1, kind)   # the call counts settle it
            print(_ratio_line(label, per, calls))
            finals.append(f"SACK ACK, rtx queue, {label}: "
                          + ", ".join(f"{s // 1000}k segs {per[s]:.2f} us/ACK" for s in asizes)
                          + _verdict(per, calls))

    if "sackq" in only:
        window = 100
        marks_at = (500, 1_000) if q else (500, 1_000, 2_000, 3_000)
        r = sackm_once(marks_at, window)
        print(f"\n[3d] SACK scoreboard walk (tcp_recovery=0, {max(marks_at) + 1000} segments out, "
              f"head lost; best {SACK_CHUNK}-ACK stretch of the {window} ACKs ending when m "
              f"segments are SACKed)")
        print(_ratio_line("m SACKed above the hole", r["per"], r["calls"]))
        finals.append("SACK ACK vs SACKed count m (dupthresh): "
                      + ", ".join(f"m={m} {r['per'][m]:.0f} us/ACK" for m in marks_at)
                      + _verdict(r["per"], r["calls"]))

    print()
    for line in finals:
        print("RESULT " + line)
    print(f"(total {time.perf_counter() - t_all:.1f} s)")
    return 0


def profile_bulk(nbytes: int, top: int) -> int:
    import cProfile
    import io
    import pstats
    bulk_once(nbytes // 8)          # warm imports
    prof = cProfile.Profile()
    prof.enable()
    r = bulk_once(nbytes)
    prof.disable()
    print(f"cProfile of one bulk transfer: {nbytes / 1e6:.0f} MB, {r['data_segs']} data segments, "
          f"{r['acks']} ACKs, wall {r['wall']:.2f} s under the profiler")
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.strip_dirs().sort_stats(key).print_stats(top)
        text = buf.getvalue()
        print(f"\n--- top {top} by {key} ---")
        print(text[text.index("   ncalls"):].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
