"""Two hosts over a VirtualNetwork link: whole transfers, determinism, loss recovery,
blocking and non-blocking sends, refused connects, goodput on a rate-limited link.

Applications are generators yielding socket operations, as the runtime runs them.
"""

from __future__ import annotations

import errno

import pytest

from stack import Socket
from stack.constants import SO_SNDBUF, SOL_SOCKET
from stack.runtime import Sleep, VirtualNetwork

A_IP, B_IP = "10.0.0.1", "10.0.0.2"
PORT = 5001


def pattern(n: int) -> bytes:
    """n bytes where every 4-byte word is its own index: a reorder or a gap cannot hide."""
    words = (n + 3) // 4
    return b"".join(i.to_bytes(4, "big") for i in range(words))[:n]


def server(host, result: dict, read_size: int = 65536, read_pause_s: float = 0.0):
    sock = Socket(host)
    yield sock.bind(("", PORT))
    yield sock.listen(8)
    conn = yield sock.accept()
    buf = bytearray()
    while True:
        data = yield conn.recv(read_size)
        if not data:
            break
        buf += data
        result["last_byte_at"] = result["net"].now
        if read_pause_s:
            yield Sleep(read_pause_s)
    yield conn.close()
    result["data"] = bytes(buf)


def client(host, data: bytes, result: dict, chunk: int = 65536, sndbuf: int | None = None):
    sock = Socket(host)
    if sndbuf is not None:
        yield sock.setsockopt(SOL_SOCKET, SO_SNDBUF, sndbuf)
    yield sock.connect((B_IP, PORT))
    result["connected_at"] = result["net"].now
    sent = 0
    while sent < len(data):
        sent += yield sock.send(data[sent:sent + chunk])
    result["sent_at"] = result["net"].now
    yield sock.close()
    result["sock"] = sock


def transfer(n: int, *, seed: int = 1, delay_s: float = 0.005, loss: float = 0.0,
             rate_bps: float | None = None, capture: list | None = None, chunk: int = 65536,
             sndbuf: int | None = None, read_pause_s: float = 0.0, until: float = 120.0):
    net = VirtualNetwork(seed=seed)
    a = net.add_host(A_IP, rate_bps=rate_bps)
    b = net.add_host(B_IP, rate_bps=rate_bps)
    link = net.connect(a, b, delay_s=delay_s, loss=loss, capture=capture)
    data = pattern(n)
    srv = {"net": net}
    cli = {"net": net}
    net.spawn(b, server(b, srv, read_pause_s=read_pause_s), name="server")
    net.spawn(a, client(a, data, cli, chunk=chunk, sndbuf=sndbuf), name="client")
    net.run(until=until)
    return net, a, b, link, data, srv, cli


def trace_of(capture) -> list:
    return [(round(t, 9), s.saddr, s.seq, s.ack_seq, s.flags, s.window, len(s.payload),
             s.options) for t, s in capture]


# --- whole transfers ---------------------------------------------------------------------------

def test_bulk_transfer_arrives_intact_and_in_order():
    net, a, b, link, data, srv, cli = transfer(300_000)
    assert srv["data"] == data
    assert cli["sent_at"] is not None
    assert cli["sock"].closed                        # FIN exchanged, TIME_WAIT (60 s) over
    assert a.mib["TcpRetransSegs"] == 0


def test_same_seed_gives_identical_segment_traces():
    first, second = [], []
    transfer(100_000, seed=7, loss=0.02, capture=first)
    transfer(100_000, seed=7, loss=0.02, capture=second)
    assert len(first) > 100
    assert trace_of(first) == trace_of(second)


def test_different_seed_with_loss_gives_different_traces():
    first, second = [], []
    transfer(100_000, seed=7, loss=0.02, capture=first)
    transfer(100_000, seed=8, loss=0.02, capture=second)
    assert trace_of(first) != trace_of(second)


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_transfer_completes_under_loss(loss):
    capture = []
    net, a, b, link, data, srv, cli = transfer(200_000, seed=3, loss=loss, capture=capture)
    assert link.dropped > 0
    assert srv["data"] == data
    assert cli["sock"].closed
    # The sender repaired the drops with retransmissions, and counted each one it put on
    # the wire: a data frame from A that starts at an already sent sequence number.
    seen, resent = set(), 0
    for _, seg in capture:
        if seg.saddr == A_IP and seg.payload:
            resent += seg.seq in seen
            seen.add(seg.seq)
    assert resent > 0
    assert a.mib["TcpRetransSegs"] == resent


# --- application calls -------------------------------------------------------------------------

def _one_big_send(sndbuf: int):
    net = VirtualNetwork(seed=1)
    a = net.add_host(A_IP)
    b = net.add_host(B_IP)
    net.connect(a, b, delay_s=0.005)
    data = pattern(200_000)
    srv = {"net": net}
    log = {}

    def one_big_send(host):
        sock = Socket(host)
        yield sock.setsockopt(SOL_SOCKET, SO_SNDBUF, sndbuf)
        yield sock.connect((B_IP, PORT))
        log["start"] = net.now
        log["n"] = yield sock.send(data)
        log["end"] = net.now
        yield sock.close()

    net.spawn(b, server(b, srv), name="server")
    proc = net.spawn(a, one_big_send(a), name="client")
    net.run(until=60)
    assert proc.done and proc.error is None
    assert srv["data"] == data
    return log, a


def test_blocking_send_on_small_sndbuf_blocks_and_resumes():
    # One send() of 200 KB into the minimum send buffer sleeps in sk_stream_wait_memory()
    # and is resumed as ACKs free space; it returns the full length, several RTTs later.
    log, a = _one_big_send(1)
    assert log["n"] == 200_000
    assert log["end"] - log["start"] >= 3 * 0.010
    assert a.mib["TcpExtTCPSndbufLimited"] > 0
    # With room for all of it (2 * wmem_max > 200 KB + overhead) the same call returns at once.
    log, a = _one_big_send(1 << 20)
    assert log["n"] == 200_000
    assert log["end"] == log["start"]
    assert a.mib["TcpExtTCPSndbufLimited"] == 0


def test_nonblocking_send_returns_eagain():
    net = VirtualNetwork(seed=1)
    a = net.add_host(A_IP)
    b = net.add_host(B_IP)
    net.connect(a, b, delay_s=0.005)
    srv = {"net": net}
    log = {"accepted": 0}

    def flood(host):
        sock = Socket(host)
        yield sock.connect((B_IP, PORT))
        sock.setblocking(False)
        try:
            while True:
                log["accepted"] += yield sock.send(b"x" * 65536)
        except OSError as exc:
            tp = sock.tp
            log["errno"] = exc.errno
            log["full"] = tp.wmem_queued >= tp.sndbuf
            log["unsent"] = (tp.write_seq - tp.snd_nxt) & 0xFFFFFFFF
        yield sock.close()

    net.spawn(b, server(b, srv, read_pause_s=1.0), name="server")
    net.spawn(a, flood(a), name="client")
    net.run(until=0.5)
    assert log["errno"] == errno.EAGAIN
    assert log["accepted"] > 0
    # EAGAIN came because the send buffer was full, with data still waiting to leave.
    assert log["full"]
    assert log["unsent"] > 0


def test_connect_to_port_without_listener_is_refused():
    net = VirtualNetwork(seed=1)
    a = net.add_host(A_IP)
    b = net.add_host(B_IP)
    net.connect(a, b, delay_s=0.005)
    log = {}

    def dial(host):
        sock = Socket(host)
        try:
            yield sock.connect((B_IP, 9))
        except OSError as exc:
            log["errno"] = exc.errno
            log["at"] = net.now
            log["state"] = sock.tp.state

    net.spawn(a, dial(a), name="client")
    net.run(until=5)
    assert log["errno"] == errno.ECONNREFUSED
    assert log["at"] == pytest.approx(0.010)            # one round trip: SYN out, RST back
    assert log["state"] == 7                              # TCP_CLOSE
    assert b.mib["TcpOutRsts"] == 1


# --- goodput -------------------------------------------------------------------------------------

def test_goodput_on_10mbit_link_approaches_link_rate():
    rate = 10e6
    n = 2_500_000
    net, a, b, link, data, srv, cli = transfer(n, rate_bps=rate, delay_s=0.010)
    assert srv["data"] == data
    elapsed = srv["last_byte_at"] - cli["connected_at"]
    goodput_bps = n * 8 / elapsed
    # Headers cost ~3.6 % of a 1500-byte frame and slow start a few RTTs of 20 ms.
    assert goodput_bps > 0.85 * rate
    assert goodput_bps <= rate
