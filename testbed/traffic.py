"""Traffic patterns as applications on the stack's socket API (generators the runtime drives).

Each flow has a sender app (on the ``from`` host) and a receiver app (on the
``to`` host). Apps record what the measurements need: when each write
happened and how far the stream had got (``FlowRecord``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stack import MSG_MORE, SO_SNDBUF, SOL_SOCKET, SOL_TCP, TCP_CONGESTION, TCP_CORK, \
    TCP_NODELAY, TCP_NOTSENT_LOWAT
from stack.runtime import Sleep


@dataclass
class SocketOptions:
    nodelay: bool = False
    cork: bool = False
    sndbuf: int | None = None
    congestion: str | None = None
    notsent_lowat: int | None = None


@dataclass
class FlowSpec:
    """What one flow does, independent of the YAML that described it."""

    name: str
    src: str                  # host names
    dst: str
    dst_addr: str
    port: int
    kind: str                 # "bulk" | "writes" | "request_response"
    bytes: int = 0            # bulk
    count: int = 0            # writes / request_response
    size: int = 0             # writes
    interval_s: float = 0.0   # writes
    msg_more_every: int = 0   # writes: MSG_MORE on all writes but every n-th (0: never)
    request_bytes: int = 0
    response_bytes: int = 0
    think_s: float = 0.0
    start_s: float = 0.0
    options: SocketOptions = field(default_factory=SocketOptions)

    @property
    def bytes_requested(self) -> int:
        if self.kind == "bulk":
            return self.bytes
        if self.kind == "writes":
            return self.count * self.size
        return self.count * self.request_bytes


@dataclass
class FlowRecord:
    spec: FlowSpec
    sock: object = None                 # the sender's Socket once connected
    sock_pending: object = None         # the sender's Socket from connect() on
    connected_at: float | None = None
    writes: list = field(default_factory=list)       # (time, stream offset after the write)
    acks: list = field(default_factory=list)         # (time, bytes acked) as snd_una advances
    finished_at: float | None = None    # receiver saw everything (or the sender's last response)
    received: int = 0
    intact: bool = True
    error: str | None = None
    mss_initial: int = 0
    responses: list = field(default_factory=list)    # request/response round-trip times


def pattern(offset: int, n: int) -> bytes:
    """A position-dependent byte pattern, so the receiver can check the stream end to end."""
    base = bytes(range(256))
    start = offset % 256
    reps = (start + n) // 256 + 1
    return (base * reps)[start:start + n]


def _apply_options(sock, opts: SocketOptions):
    if opts.sndbuf:
        yield sock.setsockopt(SOL_SOCKET, SO_SNDBUF, opts.sndbuf)
    if opts.nodelay:
        yield sock.setsockopt(SOL_TCP, TCP_NODELAY, 1)
    if opts.congestion:
        yield sock.setsockopt(SOL_TCP, TCP_CONGESTION, opts.congestion)
    if opts.notsent_lowat:
        yield sock.setsockopt(SOL_TCP, TCP_NOTSENT_LOWAT, opts.notsent_lowat)


def sender(net, host, rec: FlowRecord):
    spec = rec.spec
    if spec.start_s > 0:
        yield Sleep(spec.start_s)
    sock = net.socket(host)
    rec.sock_pending = sock
    yield from _apply_options(sock, spec.options)
    try:
        yield sock.connect((spec.dst_addr, spec.port))
    except OSError as exc:
        rec.error = f"connect: {exc.strerror}"
        return
    rec.sock = sock
    rec.connected_at = net.now
    rec.mss_initial = sock.tp.mss_cache
    if spec.options.cork:
        yield sock.setsockopt(SOL_TCP, TCP_CORK, 1)
    try:
        if spec.kind == "bulk":
            yield from _send_all(net, sock, rec, spec.bytes, 0)
        elif spec.kind == "writes":
            for i in range(spec.count):
                flags = MSG_MORE if spec.msg_more_every and (i + 1) % spec.msg_more_every else 0
                yield from _send_all(net, sock, rec, spec.size, flags)
                if spec.interval_s and i + 1 < spec.count:
                    yield Sleep(spec.interval_s)
        else:
            yield from _request_response(net, sock, rec)
        if spec.options.cork:
            yield sock.setsockopt(SOL_TCP, TCP_CORK, 0)
        yield sock.shutdown(1)
        while True:   # wait for the peer's FIN so the close is orderly
            data = yield sock.recv(65536)
            if not data:
                break
    except OSError as exc:
        rec.error = f"send: {exc.strerror}"
    yield sock.close()


def _send_all(net, sock, rec: FlowRecord, n: int, flags: int):
    offset = rec.writes[-1][1] if rec.writes else 0
    data = pattern(offset, n)
    sent = yield sock.send(data, flags)
    rec.writes.append((net.now, offset + sent))


def _request_response(net, sock, rec: FlowRecord):
    spec = rec.spec
    for _ in range(spec.count):
        t0 = net.now
        yield from _send_all(net, sock, rec, spec.request_bytes, 0)
        got = 0
        while got < spec.response_bytes:
            data = yield sock.recv(spec.response_bytes - got)
            if not data:
                raise OSError(104, "connection closed during a response")
            got += len(data)
        rec.responses.append(net.now - t0)
        if spec.think_s:
            yield Sleep(spec.think_s)
    rec.finished_at = net.now


def receive(net, conn, rec: FlowRecord):
    """The receiving side of one flow: check the stream, answer requests, close at EOF."""
    spec = rec.spec
    offset = 0
    pending_request = 0
    try:
        while True:
            data = yield conn.recv(1 << 20)
            if not data:
                break
            if rec.intact and data != pattern(offset, len(data)):
                rec.intact = False
            offset += len(data)
            rec.received = offset
            if spec.kind == "request_response":
                pending_request += len(data)
                while pending_request >= spec.request_bytes:
                    pending_request -= spec.request_bytes
                    yield conn.send(bytes(spec.response_bytes))
    except OSError as exc:
        rec.error = rec.error or f"receive: {exc.strerror}"
    if spec.kind != "request_response" and offset >= spec.bytes_requested:
        rec.finished_at = net.now
    yield conn.close()


def serve(net, host, port: int, records: list):
    """Accept connections on ``port`` and hand each to the flow whose sender it comes from."""
    sock = net.socket(host)
    yield sock.bind(("", port))
    yield sock.listen(128)
    while True:
        conn = yield sock.accept()
        peer = (conn.tp.daddr, conn.tp.dport)
        for rec in records:
            s = rec.sock_pending or rec.sock
            if s is not None and (s.tp.saddr, s.tp.sport) == peer:
                net.spawn(host, receive(net, conn, rec))
                break
        else:
            yield conn.close()


def listen(net, host, port: int):
    sock = net.socket(host)
    yield sock.bind(("", port))
    yield sock.listen(128)
    return sock
