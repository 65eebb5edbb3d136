"""Shared fixtures: one stack Host driven directly, the way the packetdrill runner drives it.

``established`` performs a passive open against a fake peer and hands back a :class:`Peer`,
which unpacks as ``host, tp, send, out``:

- ``host``: the ``stack.Host`` under test (its device completes TX at once unless asked not to),
- ``tp``: the accepted connection's ``TcpSock``,
- ``send``: the peer's send function (``Peer.send``), which builds a ``Segment`` and delivers it,
- ``out``: every segment the host emitted after the handshake, in order.

Time only moves when a test says so (``peer.advance(dt)``); timers fire as the host's
``next_deadline()`` says, exactly as the packetdrill runner steps them.
"""

from __future__ import annotations

import pytest

from stack import Host, Segment, Socket, Sysctl
from stack.constants import SOL_TCP, TCP_CORK, TCP_NODELAY, TCPHDR_ACK, TCPHDR_SYN
from stack.device import NetDevice

LOCAL_IP = "192.168.0.1"
REMOTE_IP = "192.0.2.1"
LOCAL_PORT = 8080
REMOTE_PORT = 47123
PEER_ISN = 0x5EED0000
HANDSHAKE_RTT_S = 0.010

TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8


class Peer:
    """The remote end of one connection to ``host``: sends segments, records what comes back."""

    def __init__(self, host: Host, wscale: int | None, ts: bool) -> None:
        self.host = host
        self.wscale = wscale
        self.ts = ts
        self.now = 0.0
        self.out: list[Segment] = []        # everything the host emitted since the handshake
        self.times: list[float] = []        # when each of ``out`` left
        self.seq = PEER_ISN                 # the peer's next sequence number
        self.tsval = 1000
        self.last_tsval_seen = 0
        self.sock: Socket | None = None
        self.tp = None
        self.listener: Socket | None = None
        self._seen = 0

    # Unpacks as (host, tp, send, out).
    def __iter__(self):
        return iter((self.host, self.tp, self.send, self.out))

    # --- time ---------------------------------------------------------------------------

    def collect(self) -> None:
        for seg in self.host.take_frames():
            self.out.append(seg)
            self.times.append(self.now)
            for kind, value in seg.options:
                if kind == TCPOPT_TIMESTAMP:
                    self.last_tsval_seen = value[0]

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds pass, firing every host timer that falls due on the way."""
        self.run_until(self.now + dt)

    def run_until(self, t: float) -> None:
        host = self.host
        while True:
            d = host.next_deadline()
            if d is None or d > t + 1e-12:
                break
            self.now = max(self.now, d)
            host.handle_timer(self.now)
            self.collect()
        self.now = max(self.now, t)
        self.collect()

    # --- segments -----------------------------------------------------------------------

    def options(self) -> tuple:
        if not self.ts:
            return ()
        self.tsval += 1
        return ((TCPOPT_NOP, None), (TCPOPT_NOP, None),
                (TCPOPT_TIMESTAMP, (self.tsval, self.last_tsval_seen)))

    def send(self, flags: int = TCPHDR_ACK, data: bytes = b"", *, seq: int | None = None,
             ack: int | None = None, win: int | None = None, options: tuple | None = None,
             dt: float = 0.0, raw_window: int | None = None) -> list[Segment]:
        """Deliver one segment to the host after ``dt`` seconds; returns what the host emitted.

        ``ack`` defaults to everything the host sent (snd_nxt), ``win`` is in bytes and is
        scaled by the peer's window scale; ``raw_window`` puts a header value as is.
        """
        if dt:
            self.advance(dt)
        tp = self.tp
        if seq is None:
            seq = self.seq
        if ack is None:
            ack = tp.snd_nxt
        if raw_window is None:
            if win is None:
                win = 65535 << (self.wscale or 0)
            raw_window = min(win >> (self.wscale or 0), 0xFFFF)
        if options is None:
            options = self.options()
        seg = Segment(REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT, seq & 0xFFFFFFFF,
                      ack & 0xFFFFFFFF, flags, raw_window, options, bytes(data))
        if seq == self.seq:
            self.seq = seg.end_seq
        return self.deliver(seg)

    def deliver(self, seg: Segment) -> list[Segment]:
        before = len(self.out)
        self.host.receive(seg, self.now)
        self.collect()
        return self.out[before:]

    def ack(self, upto: int | None = None, win: int | None = None, dt: float = 0.0, **kw):
        """A pure ACK of the host's data up to ``upto`` (default: all of it)."""
        return self.send(TCPHDR_ACK, ack=upto, win=win, dt=dt, **kw)

    # --- the application on the host ----------------------------------------------------

    def call(self, op):
        """Run one socket call now; returns the op (``op.done``, ``op.result``, ``op.error``)."""
        op.step(self.now)
        self.collect()
        return op

    def write(self, data, flags: int = 0) -> int:
        """send() on the accepted socket; returns what it returned, or -errno."""
        op = self.call(self.sock.send(data, flags))
        if not op.done:
            return 0 if op.result is None else op.result
        return -op.error if op.error else op.result

    def setsockopt(self, level: int, name: int, value) -> int:
        op = self.call(self.sock.setsockopt(level, name, value))
        return -op.error if op.error else op.result

    def cork(self, on: bool = True) -> None:
        assert self.setsockopt(SOL_TCP, TCP_CORK, int(on)) == 0

    def nodelay(self, on: bool = True) -> None:
        assert self.setsockopt(SOL_TCP, TCP_NODELAY, int(on)) == 0

    # --- reading the output -------------------------------------------------------------

    def new(self) -> list[Segment]:
        """Segments emitted since the previous call to ``new``."""
        segs = self.out[self._seen:]
        self._seen = len(self.out)
        return segs

    def rel(self, seq: int) -> int:
        """A host sequence number relative to its ISN (first data byte is 0... after SYN, 1)."""
        return (seq - self.tp.iss) & 0xFFFFFFFF

    def data_segments(self, segs=None) -> list[Segment]:
        return [s for s in (self.out if segs is None else segs) if s.payload]


def make_host(*, sysctl: Sysctl | None = None, mtu: int = 1500,
              tx_completion_delay_s: float = 0.0, rate_bps: float | None = None,
              **sysctls) -> Host:
    sc = sysctl if sysctl is not None else Sysctl()
    for key, value in sysctls.items():
        setattr(sc, key, value)
    device = NetDevice(mtu=mtu, rate_bps=rate_bps, tx_completion_delay_s=tx_completion_delay_s)
    return Host(LOCAL_IP, name="sut", sysctl=sc, seed=1, device=device)


def open_connection(host: Host | None = None, *, mss: int | None = 1460, wscale: int | None = 7,
                    sack: bool = True, ts: bool = False, syn_window: int = 65535,
                    win: int = 128000, listener_opts=(), syn_options: tuple | None = None,
                    peer_isn: int = PEER_ISN, iss: int | None = None, **host_kw) -> Peer:
    """Passive open: listen on LOCAL_PORT, peer SYN, our SYN-ACK, peer ACK, accept().

    ``win`` is the window (bytes) the peer's handshake ACK offers; ``listener_opts`` are
    ``(level, name, value)`` set on the listener before the SYN arrives (children inherit).
    ``peer_isn``/``iss`` pick both initial sequence numbers (e.g. just below 2**32).
    """
    if host is None:
        host = make_host(**host_kw)
    if iss is not None:
        host.secure_tcp_seq = lambda: iss & 0xFFFFFFFF
    peer = Peer(host, wscale, ts)
    listener = Socket(host)
    peer.listener = listener
    for level, name, value in listener_opts:
        op = listener.setsockopt(level, name, value)
        op.step(0.0)
        assert not op.error, (level, name, value, op.error)
    for op in (listener.bind(("", LOCAL_PORT)), listener.listen(16)):
        op.step(0.0)
        assert not op.error
    if syn_options is None:
        opts = []
        if mss is not None:
            opts.append((TCPOPT_MSS, mss))
        if sack and ts:
            opts.append((TCPOPT_SACK_PERM, None))
        elif sack:
            opts += [(TCPOPT_NOP, None), (TCPOPT_NOP, None), (TCPOPT_SACK_PERM, None)]
        if ts:
            if not sack:
                opts += [(TCPOPT_NOP, None), (TCPOPT_NOP, None)]
            opts.append((TCPOPT_TIMESTAMP, (peer.tsval, 0)))
        if wscale is not None:
            opts += [(TCPOPT_NOP, None), (TCPOPT_WINDOW, wscale)]
        syn_options = tuple(opts)
    syn = Segment(REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT, peer_isn, 0, TCPHDR_SYN,
                  syn_window, syn_options)
    host.receive(syn, 0.0)
    peer.run_until(0.001)               # a rate-limited device needs a moment to send it
    frames, peer.out[:], peer.times[:] = list(peer.out), [], []
    assert len(frames) == 1 and frames[0].flags == TCPHDR_SYN | TCPHDR_ACK, frames
    synack = frames[0]
    for kind, value in synack.options:
        if kind == TCPOPT_TIMESTAMP:
            peer.last_tsval_seen = value[0]
    peer.seq = (peer_isn + 1) & 0xFFFFFFFF
    peer.now = HANDSHAKE_RTT_S
    ack = Segment(REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT, peer.seq,
                  (synack.seq + 1) & 0xFFFFFFFF, TCPHDR_ACK,
                  min(win >> (wscale or 0), 0xFFFF), peer.options())
    host.receive(ack, peer.now)
    peer.run_until(peer.now)
    assert peer.out == [], peer.out
    op = listener.accept()
    assert op.step(peer.now) and not op.error
    peer.sock = op.result
    peer.tp = peer.sock.tp
    peer.synack = synack
    return peer


@pytest.fixture
def established():
    """Factory: ``established(**kw)`` returns a Peer for a fresh passive-open connection."""
    return open_connection


@pytest.fixture
def conn() -> Peer:
    """One default connection; unpacks as ``host, tp, send, out``."""
    return open_connection()


__all__ = [
    "Peer", "make_host", "open_connection", "LOCAL_IP", "REMOTE_IP", "LOCAL_PORT", "REMOTE_PORT",
    "PEER_ISN",
]
