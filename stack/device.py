"""The NIC beneath the stack: a qdisc queue, a line rate, software GSO and TX completion.

The stack hands the device skbs of up to size_goal; the device cuts them into
MSS-sized frames (GSO), puts them on the wire at its rate, and reports each skb
complete when its last frame has left, plus ``tx_completion_delay_s``. That
completion is what releases ``sk_wmem_alloc`` and so drives TCP small queues
and autocorking, as in the kernel.
"""

from __future__ import annotations

from collections import deque

from .segment import Segment

_HEADERS = 14 + 20 + 20   # Ethernet + IPv4 + TCP without options, for serialization time


class NetDevice:
    def __init__(self, name: str = "eth0", mtu: int = 1500, rate_bps: float | None = None,
                 tx_completion_delay_s: float = 0.0, txqueuelen: int = 1000) -> None:
        self.name = name
        self.mtu = mtu
        self.rate_bps = rate_bps
        self.tx_completion_delay_s = tx_completion_delay_s
        self.txqueuelen = txqueuelen
        self.busy_until = 0.0
        self._frames: deque = deque()        # (due, Segment) in due order
        self._completions: deque = deque()   # (due, Segment) in due order
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_dropped = 0

    @property
    def instant(self) -> bool:
        return self.rate_bps is None and not self.tx_completion_delay_s

    def xmit(self, seg: Segment, now: float) -> tuple[list, list]:
        """Queue one (possibly GSO) segment.

        Returns (frames leaving now, segments completed now); later ones come
        out of ``poll``.
        """
        frames = gso_segment(seg)
        if self.instant:
            self._count(frames)
            return frames, [seg]
        if len(self._frames) >= self.txqueuelen:
            self.tx_dropped += 1
            return [], [seg]
        t = max(now, self.busy_until)
        for frame in frames:
            if self.rate_bps:
                t += (len(frame.payload) + _HEADERS + _opt_len(frame)) * 8 / self.rate_bps
            self._frames.append((t, frame))
        self.busy_until = t
        self._completions.append((t + self.tx_completion_delay_s, seg))
        return [], []

    def next_deadline(self):
        best = None
        if self._frames:
            best = self._frames[0][0]
        if self._completions:
            c = self._completions[0][0]
            best = c if best is None or c < best else best
        return best

    def poll(self, now: float) -> tuple[list, list]:
        frames = []
        while self._frames and self._frames[0][0] <= now:
            frames.append(self._frames.popleft()[1])
        done = []
        while self._completions and self._completions[0][0] <= now:
            done.append(self._completions.popleft()[1])
        self._count(frames)
        return frames, done

    def _count(self, frames) -> None:
        self.tx_packets += len(frames)
        for f in frames:
            self.tx_bytes += len(f.payload)


def _opt_len(seg: Segment) -> int:
    n = 0
    for kind, value in seg.options:
        if kind <= 1:
            n += 1
        elif kind == 2 or kind == 4:
            n += 4 if kind == 2 else 2
        elif kind == 3:
            n += 3
        elif kind == 8:
            n += 10
        elif kind == 5:
            n += 2 + 8 * len(value)
    return (n + 3) & ~3


def gso_segment(seg: Segment) -> list:
    """Cut a GSO segment into MSS-sized frames as the kernel's tcp_gso_segment does."""
    if seg.gso_segs <= 1 or not seg.gso_size or len(seg.payload) <= seg.gso_size:
        return [seg]
    mss = seg.gso_size
    payload = seg.payload
    n = len(payload)
    out = []
    flags = seg.flags
    last_flags = flags
    mid_flags = flags & ~(0x01 | 0x08)      # FIN and PSH only on the last frame
    first_extra = flags & 0x80              # CWR only on the first
    mid_flags &= ~0x80
    off = 0
    k = 0
    while off < n:
        part = payload[off:off + mss]
        f = seg.copy()
        f.payload = part
        f.seq = (seg.seq + off) & 0xFFFFFFFF
        f.ip_id = (seg.ip_id + k) & 0xFFFF
        f.gso_size = 0
        f.gso_segs = 1
        if off + mss >= n:
            f.flags = last_flags & ~0x80 if k else last_flags
        else:
            f.flags = mid_flags | (first_extra if k == 0 else 0)
        out.append(f)
        off += mss
        k += 1
    return out
