"""The AF_PACKET runtime against the Linux kernel's TCP, and its pure parts without root.

Emulation tests: two namespaces joined by a veth; namespace "a" runs the sendlab stack on an
interface without a kernel address, namespace "b" runs the kernel's TCP (plain Python sockets in
a forked child). Unit tests: stack.arp and the frame encoders, no root needed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time

import pytest

from stack.arp import INCOMPLETE, PROBE, REACHABLE, ArpParams, ArpTable
from stack.runtime.afpacket import (
    ETH_HLEN, VNET_HDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, complete_checksum,
    encode_segment, gso_ip_packet,
)
from stack.segment import Segment
from stack.wire import (
    ARPOP_REPLY, ARPOP_REQUEST, BROADCAST_MAC, ETH_P_ARP, ETH_P_IP, build_arp_reply,
    build_arp_request, decode_arp, decode_ipv4, decode_tcp, ip_to_bytes,
)
from testbed import netns

SL_IP, K_IP, PORT = "10.0.0.1", "10.0.0.2", 5001
MAC_A, MAC_B, MAC_C = bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), \
    bytes.fromhex("020000000003")
MB = 1 << 20
TCP_INFO_FMT = struct.Struct("8B24I")   # struct tcp_info up to tcpi_reordering


def pattern(n: int) -> bytes:
    """n bytes where every 4-byte word is its own index: a reorder or a gap cannot hide."""
    return b"".join(i.to_bytes(4, "big") for i in range((n + 3) // 4))[:n]


# --- stack.arp, no root -------------------------------------------------------------------------

def arp_request_for(tpa: str, sha: bytes = MAC_B, spa: str = K_IP) -> bytes:
    return build_arp_request(sha, ip_to_bytes(spa), ip_to_bytes(tpa))


def test_arp_answers_request_for_our_address_and_learns_sender():
    table = ArpTable(MAC_A, SL_IP)
    table.receive(arp_request_for(SL_IP), now=0.0)
    [(dst, ethertype, payload)] = table.take_frames()
    reply = decode_arp(payload)
    assert (dst, ethertype, reply.op) == (MAC_B, ETH_P_ARP, ARPOP_REPLY)
    assert (reply.sha, reply.spa, reply.tha, reply.tpa) == \
        (MAC_A, ip_to_bytes(SL_IP), MAC_B, ip_to_bytes(K_IP))
    assert table.lookup(K_IP) == MAC_B


def test_arp_ignores_request_for_another_address():
    table = ArpTable(MAC_A, SL_IP)
    table.receive(arp_request_for("10.0.0.9"), now=0.0)
    assert table.take_frames() == []
    assert table.lookup(K_IP) is None   # RFC 826: only update, or learn when it was for us


def test_arp_queues_packets_until_reply_then_releases_them_in_order():
    table = ArpTable(MAC_A, SL_IP)
    assert table.resolve(K_IP, "p1", now=0.0) is None
    assert table.resolve(K_IP, "p2", now=0.1) is None
    [(dst, ethertype, payload)] = table.take_frames()   # one request, not one per packet
    req = decode_arp(payload)
    assert (dst, ethertype, req.op, req.tpa) == (BROADCAST_MAC, ETH_P_ARP, ARPOP_REQUEST,
                                                 ip_to_bytes(K_IP))
    table.receive(build_arp_reply(MAC_B, ip_to_bytes(K_IP), MAC_A, ip_to_bytes(SL_IP)), now=0.2)
    assert table.take_frames() == [(MAC_B, ETH_P_IP, "p1"), (MAC_B, ETH_P_IP, "p2")]
    assert table.resolve(K_IP, "p3", now=0.3) == MAC_B
    assert table.neighbours[K_IP].state == REACHABLE


def test_arp_retries_then_fails_and_drops_queue():
    table = ArpTable(MAC_A, SL_IP, ArpParams(retrans_time_s=1.0, mcast_solicit=3))
    table.resolve(K_IP, "p1", now=0.0)
    assert table.next_deadline() == 1.0
    for t in (1.0, 2.0):
        table.handle_timer(t)
    assert len(table.take_frames()) == 3 and table.neighbours[K_IP].state == INCOMPLETE
    table.handle_timer(3.0)
    assert K_IP not in table.neighbours and table.stats["failed"] == 1
    assert table.stats["queue_dropped"] == 1 and table.next_deadline() is None


def test_arp_queue_drops_oldest_past_unres_qlen():
    table = ArpTable(MAC_A, SL_IP, ArpParams(unres_qlen=2))
    for i in range(3):
        table.resolve(K_IP, i, now=0.0)
    assert table.neighbours[K_IP].queue == [1, 2]


def test_arp_stale_entry_is_used_and_probed_by_unicast():
    table = ArpTable(MAC_A, SL_IP, ArpParams(reachable_time_s=30.0))
    table.receive(arp_request_for(SL_IP), now=0.0)
    table.take_frames()
    assert table.resolve(K_IP, "p", now=31.0) == MAC_B
    [(dst, _, payload)] = table.take_frames()
    assert dst == MAC_B and decode_arp(payload).op == ARPOP_REQUEST
    assert table.neighbours[K_IP].state == PROBE


def test_arp_unanswered_probes_delete_entry():
    table = ArpTable(MAC_A, SL_IP, ArpParams(ucast_solicit=2))
    table.receive(arp_request_for(SL_IP), now=0.0)
    table.resolve(K_IP, "p", now=40.0)
    table.handle_timer(41.0)
    table.handle_timer(42.0)
    assert table.lookup(K_IP) is None


def test_arp_reply_updates_changed_mac():
    table = ArpTable(MAC_A, SL_IP)
    table.receive(arp_request_for(SL_IP), now=0.0)
    table.receive(build_arp_reply(MAC_C, ip_to_bytes(K_IP), MAC_A, ip_to_bytes(SL_IP)), now=1.0)
    assert table.lookup(K_IP) == MAC_C


def test_arp_counts_malformed_packet():
    table = ArpTable(MAC_A, SL_IP)
    table.receive(b"\x00" * 10, now=0.0)
    assert table.stats["malformed"] == 1 and table.take_frames() == []


# --- frame encoders, no root --------------------------------------------------------------------

def gso_segment(mss: int = 1448, segs: int = 3) -> Segment:
    seg = Segment(SL_IP, K_IP, 40000, PORT, 1000, 2000, 0x18, 500,
                  ((1, None), (1, None), (8, (1, 2))), pattern(mss * segs - 100), ip_id=7)
    seg.gso_size, seg.gso_segs = mss, segs
    return seg


def test_gso_packet_checksum_completes_like_skb_checksum_help():
    ip, tcp_hlen = gso_ip_packet(gso_segment())
    frame = memoryview(bytearray(bytes(ETH_HLEN) + ip))
    complete_checksum(frame, ETH_HLEN + 20, 16)
    hdr, body = decode_ipv4(frame[ETH_HLEN:])       # verifies the IP header checksum
    th, payload = decode_tcp(body, hdr.src, hdr.dst, verify_checksum=True)
    assert hdr.df and hdr.ident == 7 and hdr.total_length == len(ip)
    assert tcp_hlen == 32 and bytes(payload) == pattern(1448 * 3 - 100)


def test_vnet_header_asks_kernel_for_tcpv4_segmentation():
    bufs = encode_segment(gso_segment(), bytes(14), vnet=True)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(bufs[0])
    assert (flags, gso_type) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (14 + 20 + 32, 1448, 34, 16)


def test_small_segment_gets_zero_vnet_header_and_full_checksum():
    seg = Segment(SL_IP, K_IP, 40000, PORT, 1, 2, 0x10, 500, (), b"hello")
    zero, _eth, ip = encode_segment(seg, bytes(14), vnet=True)
    hdr, body = decode_ipv4(ip)
    decode_tcp(body, hdr.src, hdr.dst, verify_checksum=True)
    assert zero == bytes(10)


# --- emulation: the kernel in namespace b -------------------------------------------------------

NO_NETNS = netns.available()


def emulation(fn):
    """Marked for the emulation run; skipped, saying why, where namespaces cannot be made."""
    fn = pytest.mark.skipif(NO_NETNS is not None, reason=f"emulation: {NO_NETNS}")(fn)
    return pytest.mark.emulation(fn)


def tcp_info(sock) -> dict:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_FMT.size)
    v = TCP_INFO_FMT.unpack(raw)[8:]
    return {"snd_mss": v[2], "rcv_mss": v[3], "advmss": v[19]}


def in_csum_errors() -> int:
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Tcp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["InCsumErrors"])


def kernel_sink(ready, reply_bytes: int = 0) -> dict:
    """Kernel listener: read until EOF, optionally answer with reply_bytes, report what it saw."""
    with socket.create_server((K_IP, PORT)) as srv:
        srv.settimeout(20)
        ready.set()
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(20)
        digest, got = hashlib.sha256(), 0
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            digest.update(data)
            got += len(data)
        if reply_bytes:
            conn.sendall(pattern(reply_bytes))
        info = tcp_info(conn)
    return {"bytes": got, "sha256": digest.hexdigest(), "info": info,
            "csum_errors": in_csum_errors()}


def kernel_source(nbytes: int) -> dict:
    """Kernel client: connect to the sendlab listener, send nbytes of the pattern, close."""
    with socket.create_connection((SL_IP, PORT), timeout=20) as conn:
        conn.sendall(pattern(nbytes))
        info = tcp_info(conn)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(20)
        while conn.recv(4096):
            pass
    return {"info": info, "csum_errors": in_csum_errors()}


@pytest.fixture
def link_pair():
    """Factory: (runtime side namespace, kernel side namespace, veth) with the kernel at K_IP."""
    runs = []

    def make(mtu: int = 1500):
        run = netns.NetnsRun()
        runs.append(run)
        a, b = run.add_namespace("a"), run.add_namespace("b")
        veth = run.add_veth(a, b, mtu=mtu)
        b.addr_add(veth.b_if, f"{K_IP}/24")
        return run, a, b, veth

    yield make
    for run in runs:
        run.cleanup()
        for name in run.namespaces:
            assert not os.path.exists(os.path.join(netns.NETNS_DIR, name)), name
        for pid in run.pids:
            assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"pid {pid} left"
        assert not os.path.exists(run.record_path)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_runtime(ns, veth, **kw):
    from stack.runtime.afpacket import AfPacketRuntime
    with ns.entered():
        return AfPacketRuntime.for_interface(veth.a_if, SL_IP, **kw)


def sendlab_client(rt, data: bytes, out: dict, read_reply: bool = False):
    sock = rt.socket()
    yield sock.connect((K_IP, PORT))
    sent = 0
    while sent < len(data):
        sent += yield sock.send(data[sent:sent + 65536])
    yield sock.shutdown(socket.SHUT_WR)
    buf = bytearray()
    while read_reply:
        chunk = yield sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    out["reply"] = bytes(buf)
    out["sock"] = sock          # tcp_info() after the run: everything acknowledged by then
    yield sock.close()


def sendlab_server(rt, out: dict):
    lsock = rt.socket()
    yield lsock.bind(("", PORT))
    yield lsock.listen(4)
    conn = yield lsock.accept()
    buf = bytearray()
    while True:
        chunk = yield conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    out["info"] = conn.tcp_info()
    out["data"] = bytes(buf)
    yield conn.close()
    yield lsock.close()


def run_client_against_kernel(link_pair, *, mtu=1500, nbytes=MB, reply=0, capture=None, **rt_kw):
    run, a, b, veth = link_pair(mtu)
    ready = multiprocessing.get_context("fork").Event()
    child = b.start(kernel_sink, ready, reply)
    assert ready.wait(10), "kernel listener did not start"
    out = {}
    with start_runtime(a, veth, capture=capture, **rt_kw) as rt:
        rt.spawn(sendlab_client(rt, pattern(nbytes), out, read_reply=bool(reply)), "client")
        rt.run(timeout_s=30)
        rt.run(until=rt.now + 0.2)          # let our last ACK and FIN exchange go out
        stats = dict(rt.stats, **rt.kernel_stats())
    out["info"] = out["sock"].tcp_info()
    return out, child.result(30), stats


@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["python-gso", "vnet-hdr"])
@emulation
def test_sendlab_client_transfers_1mb_to_kernel_listener(link_pair, vnet_hdr):
    out, kernel, stats = run_client_against_kernel(link_pair, vnet_hdr=vnet_hdr)
    assert kernel["bytes"] == MB
    assert kernel["sha256"] == hashlib.sha256(pattern(MB)).hexdigest()
    assert kernel["csum_errors"] == 0          # the kernel checked every segment we sent
    assert out["info"]["tcpi_bytes_acked"] >= MB
    assert stats["kernel_rx_dropped"] == 0
    if vnet_hdr:
        assert stats["wire_segs_out"] > 2 * stats["frames_out"]   # the kernel segmented


@emulation
def test_kernel_client_transfers_1mb_to_sendlab_listener(link_pair):
    run, a, b, veth = link_pair()
    out = {}
    with start_runtime(a, veth) as rt:
        rt.spawn(sendlab_server(rt, out), "server")   # listening before the kernel connects
        child = b.start(kernel_source, MB)
        rt.run(timeout_s=30)
        rt.run(until=rt.now + 0.2)
    kernel = child.result(30)
    assert out["data"] == pattern(MB)
    assert kernel["csum_errors"] == 0


@emulation
def test_mtu_1280_gives_mss_1240_both_ways(link_pair):
    sizes, syn_mss = {"in": 0, "out": 0}, {}

    def capture(direction, now, frame):
        if frame[12:14] != b"\x08\x00":
            return                      # ARP
        hdr, body = decode_ipv4(frame[ETH_HLEN:])
        th, payload = decode_tcp(body)
        sizes[direction] = max(sizes[direction], len(payload))
        if th.flags & 0x02:
            syn_mss[direction] = dict(th.options)[2]

    out, kernel, _ = run_client_against_kernel(link_pair, mtu=1280, nbytes=200_000,
                                               reply=200_000, capture=capture)
    assert out["reply"] == pattern(200_000)
    # The SYN and the SYN-ACK both offer 1280 - 40 = 1240; timestamps take 12 of it in
    # every segment, so full segments carry 1228 bytes each way.
    assert syn_mss == {"out": 1240, "in": 1240}
    assert out["info"]["tcpi_snd_mss"] == 1228 and kernel["info"]["snd_mss"] == 1228
    assert sizes == {"in": 1228, "out": 1228}


@emulation
def test_runtime_refuses_interface_with_kernel_address(link_pair):
    from stack.runtime.afpacket import InterfaceError
    run, a, b, veth = link_pair()
    a.addr_add(veth.a_if, f"{SL_IP}/24")
    with pytest.raises(InterfaceError, match="kernel IPv4 address"):
        start_runtime(a, veth)


@emulation
def test_runtime_disables_ipv6_on_its_interface(link_pair):
    run, a, b, veth = link_pair()
    a.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{veth.a_if}.disable_ipv6=0"])
    start_runtime(a, veth).close()
    res = a.run(["sysctl", "-n", f"net.ipv6.conf.{veth.a_if}.disable_ipv6"])
    assert res.stdout.strip() == "1"


@emulation
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="SIGTERM handling needs the main thread")
def test_sigterm_stops_run(link_pair):
    from stack.runtime import Sleep
    from stack.runtime.afpacket import Terminated
    run, a, b, veth = link_pair()

    def app():
        yield Sleep(0.05)   # inside run(): the handler is installed by now
        os.kill(os.getpid(), signal.SIGTERM)
        yield Sleep(30)

    before = signal.getsignal(signal.SIGTERM)
    with start_runtime(a, veth) as rt:
        rt.spawn(app(), "sleeper")
        t0 = time.monotonic()
        with pytest.raises(Terminated):
            rt.run(timeout_s=10)
    assert time.monotonic() - t0 < 2
    assert signal.getsignal(signal.SIGTERM) is before   # the old handler is back
