"""The user-space link shaper: one process in the middle of a link, the link model on real frames.

Where the kernel has no netem (INFRA-NOTES), a shaped link ``a -- b`` is built as
``a -- [middle namespace] -- b``: two veth pairs, the middle ends (``if_a`` facing ``a``,
``if_b`` facing ``b``) in a namespace with no addresses. This process opens an AF_PACKET
socket on each middle end (``PACKET_IGNORE_OUTGOING``, so it never reads back what it sends),
hands every frame it reads to the direction's :class:`testbed.link_model.LinkDirection` (the
same seeded model the ``sim`` backend runs) and sends it out of the other end when its due
time comes: a heap of due times, ``select`` timeouts with timer slack set to 1 ns.

The pure part is :class:`ShaperCore` (frames and the time in, frames due out, counters);
:func:`run_shaper` is the I/O around it. The delay clock starts when Python reads the frame;
frames the loop could not read in time die in the socket's receive buffer, which
``PACKET_STATISTICS`` reports (``kernel_dropped``): that is overload, not configured loss.

Every frame offered to the link is captured (both directions, one pcap, Ethernet, wall-clock
nanosecond timestamps), as the ``sim`` backend captures frames as they enter a link.

    python -m testbed.shaper JOB.json      # run inside the middle namespace

JOB: ``{"if_a", "if_b", "a", "b", "pcap", "stats", "snaplen", "spin_us", "directions":
{"a>b": {...}, "b>a": {...}}}``, each direction the keyword arguments of
:func:`direction_from_params` plus ``mtu``; ``spin_us`` > 0 busy-polls that long before each
due time (select wakes ~80 us late on these VMs even with 1 ns timer slack). The process prints ``{"event": "ready"}`` once both sockets are open, runs until
``stop`` (or EOF) on stdin or SIGTERM, then writes the counters as JSON to ``stats``.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from .link_model import Bernoulli, GilbertElliott, LinkDirection

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCK_BUF_BYTES = 8 * 1024 * 1024
ETH_HLEN = 14
RX_BUF = 65535 + 64
RX_BATCH = 64                       # frames read from one socket before sending what is due

__all__ = ["ShaperCore", "DirectionState", "direction_from_params", "PcapWriter", "run_shaper",
           "main"]


class Terminated(BaseException):
    """Raised by the SIGTERM handler: Python retries select() after a signal otherwise."""


def direction_from_params(params: dict) -> LinkDirection:
    """A LinkDirection from JSON-able parameters (what testbed.emulate writes in the job).

    ``loss`` is ``None``, ``{"bernoulli": p}`` or ``{"gilbert": {"p", "r", "h", "k"}}``.
    """
    loss = params.get("loss")
    model = None
    if loss:
        if loss.get("gilbert"):
            g = loss["gilbert"]
            model = GilbertElliott(g["p"], g["r"], g.get("h", 0.0), g.get("k", 1.0))
        elif loss.get("bernoulli"):
            model = Bernoulli(loss["bernoulli"])
    return LinkDirection(
        rate_bps=params.get("rate_bps"), delay_s=params.get("delay_s", 0.0),
        jitter_s=params.get("jitter_s", 0.0), loss=model, queue_bytes=params.get("queue_bytes"),
        seed=int(params.get("seed", 0)), overhead_bytes=int(params.get("overhead_bytes", 0)),
        allow_reorder=bool(params.get("allow_reorder", False)),
        jitter_dist=params.get("jitter_dist", "normal"))


@dataclass
class DirectionState:
    """One direction: its model, MTU and what happened to its frames beyond the model's counts."""

    name: str
    model: LinkDirection
    mtu: int
    dropped_oversize: int = 0   # over the direction's MTU: dropped before the model, as in sim
    sent: int = 0               # handed to the far end's socket
    send_errors: int = 0        # the kernel refused the send (ENOBUFS, EMSGSIZE...)
    kernel_dropped: int = 0     # PACKET_STATISTICS drops on the socket reading this direction
    kernel_packets: int = 0
    late_s: list = field(default_factory=list)   # sampled lateness of sends (s), for accuracy

    def stats(self) -> dict:
        m = self.model
        late = sorted(self.late_s)

        def pct(q: float):
            if not late:
                return None
            return round(late[min(len(late) - 1, int(q * len(late)))] * 1e6, 1)

        return {"offered": m.offered, "delivered": m.delivered, "dropped_queue": m.dropped_queue,
                "dropped_loss": m.dropped_loss, "dropped_oversize": self.dropped_oversize,
                "mtu": self.mtu, "sent": self.sent, "send_errors": self.send_errors,
                "kernel_dropped": self.kernel_dropped, "kernel_packets": self.kernel_packets,
                "max_backlog_bytes": m.max_backlog_bytes,
                "late_us": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
                            "samples": len(late)}}


class ShaperCore:
    """Two directions and one heap of due frames; no sockets, no clock.

    ``offer(d, frame, now)`` takes a frame read from direction ``d``'s input at ``now`` (0: a->b,
    1: b->a); ``pop_due(now)`` yields ``(d, frame, due)`` in due order (ties in arrival order,
    so a direction whose model never reorders is never reordered here either).
    """

    def __init__(self, ab: DirectionState, ba: DirectionState) -> None:
        self.dirs = (ab, ba)
        self._heap: list = []
        self._seq = 0

    def offer(self, d: int, frame: bytes, now: float) -> float | None:
        st = self.dirs[d]
        if len(frame) - ETH_HLEN > st.mtu:
            st.dropped_oversize += 1
            return None
        due = st.model.offer(len(frame), now)
        if due is not None:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, d, frame))
        return due

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float):
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, d, frame = heapq.heappop(heap)
            yield d, frame, due

    def pending(self) -> int:
        return len(self._heap)


class PcapWriter:
    """A nanosecond-resolution pcap (LINKTYPE_ETHERNET) written as frames come."""

    _REC = struct.Struct("<IIII")

    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self.snaplen = snaplen
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, 1))
        self.frames = 0

    def write(self, t_wall: float, frame: bytes) -> None:
        sec = int(t_wall)
        nsec = int((t_wall - sec) * 1e9)
        cap = frame if len(frame) <= self.snaplen else frame[:self.snaplen]
        self.f.write(self._REC.pack(sec, nsec, len(cap), len(frame)))
        self.f.write(cap)
        self.frames += 1

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCK_BUF_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCK_BUF_BYTES)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_packet_stats(sock: socket.socket, st: DirectionState) -> None:
    # PACKET_STATISTICS resets on read: accumulate.
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    st.kernel_packets += packets
    st.kernel_dropped += drops


def run_shaper(job: dict, *, control_fd: int | None = 0, announce=None) -> dict:
    """Shape frames between ``job['if_a']`` and ``job['if_b']`` (in this namespace) until told
    to stop; returns the counters. ``control_fd``: read ``stop``/EOF from it (None: only
    SIGTERM stops). ``announce(dict)``: called with ``{"event": "ready"}`` once listening."""
    from stack.runtime.afpacket import set_timer_slack_ns

    dirs = job["directions"]
    ab = DirectionState("a>b", direction_from_params(dirs["a>b"]), int(dirs["a>b"]["mtu"]))
    ba = DirectionState("b>a", direction_from_params(dirs["b>a"]), int(dirs["b>a"]["mtu"]))
    core = ShaperCore(ab, ba)
    sock_a = _open(job["if_a"])    # reads a->b, sends b->a
    sock_b = _open(job["if_b"])    # reads b->a, sends a->b
    out = (sock_b, sock_a)         # direction -> socket that sends it on
    inputs = {sock_a.fileno(): (0, sock_a), sock_b.fileno(): (1, sock_b)}
    pcap = PcapWriter(job["pcap"], int(job.get("snaplen", 65535))) if job.get("pcap") else None
    late_every = int(job.get("late_sample_every", 1))
    spin_s = float(job.get("spin_us", 0)) / 1e6
    rx = bytearray(RX_BUF)
    view = memoryview(rx)
    mono, wall0 = time.monotonic, time.time() - time.monotonic()
    rlist = [sock_a, sock_b] + ([control_fd] if control_fd is not None else [])
    for sock in (sock_a, sock_b):   # what arrived before we were ready is not ours to count
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)

    def on_sigterm(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_sigterm)
    set_timer_slack_ns(1)
    started = mono()
    n_sent = 0
    if announce is not None:
        announce({"event": "ready"})
    try:
        stop = False
        while not stop:
            nd = core.next_due()
            # Sleep in select until spin_s before the next due time, then poll (spin): select
            # wakes ~80 us late here even with 1 ns slack; spinning trades a core for that.
            timeout = None if nd is None else max(0.0, nd - mono() - spin_s)
            readable, _, _ = select.select(rlist, [], [], timeout)
            for r in readable:
                if r is control_fd:
                    data = os.read(control_fd, 4096)
                    if not data or b"stop" in data:
                        stop = True
                    continue
                d, sock = inputs[r.fileno()]
                for _ in range(RX_BATCH):
                    try:
                        n = sock.recv_into(rx, RX_BUF)
                    except BlockingIOError:
                        break
                    now = mono()
                    frame = bytes(view[:n])
                    if pcap is not None:
                        pcap.write(wall0 + now, frame)
                    core.offer(d, frame, now)
            now = mono()
            for d, frame, due in core.pop_due(now):
                st = core.dirs[d]
                try:
                    out[d].send(frame)
                    st.sent += 1
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.EMSGSIZE):
                        raise
                    st.send_errors += 1
                n_sent += 1
                if n_sent % late_every == 0 and len(st.late_s) < 200_000:
                    st.late_s.append(mono() - due)
    except Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        for sock, st in ((sock_a, ab), (sock_b, ba)):
            try:
                _read_packet_stats(sock, st)
            except OSError:
                pass
            sock.close()
        if pcap is not None:
            pcap.close()
    result = {"a>b": ab.stats(), "b>a": ba.stats(), "pending_at_stop": core.pending(),
              "frames_captured": pcap.frames if pcap else 0,
              "run_s": round(mono() - started, 3), "cpu_s": _cpu_s()}
    if job.get("stats"):
        tmp = job["stats"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        os.replace(tmp, job["stats"])
    return result


def _cpu_s() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round(ru.ru_utime + ru.ru_stime, 3)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m testbed.shaper JOB.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        job = json.load(f)

    def announce(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    run_shaper(job, control_fd=0, announce=announce)
    announce({"event": "exit"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
