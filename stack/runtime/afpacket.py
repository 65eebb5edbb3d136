"""The real-time runtime: one Host on a Linux interface through an AF_PACKET socket.

The stack owns the interface: Ethernet in and out, ARP (``stack.arp``), IPv4 to
``Host.receive_ip``, the Host's frames encoded with ``stack.packet.segment_to_ip``.
The kernel of the namespace must stay out of the way, or it answers ARP for the
stack's address and resets its connections (INFRA-NOTES): the interface carries no
kernel IPv4 address (checked), IPv6 is disabled on it (done here) and it does not
forward (checked).

Two transmit paths:

- default: the Host's NetDevice cuts GSO skbs into MSS-sized frames (software GSO) and
  every frame is encoded and checksummed in Python;
- ``vnet_hdr=True``: the device leaves GSO skbs whole (``OffloadDevice``) and each goes
  to the kernel as one frame behind a ``struct virtio_net_hdr`` asking for TCPv4
  segmentation and checksumming (PACKET_VNET_HDR). The interface needs ``tx off tso off
  gso off`` so the kernel does it in software before the frame leaves.

Applications are the same generators as on the virtual clock (``stack.runtime.virtual``):
they yield socket operations or ``Sleep`` and are resumed when their socket is woken.
Time is ``time.monotonic()`` since the runtime was made; timers come from
``Host.next_deadline`` and ``ArpTable.next_deadline`` as ``select`` timeouts, with timer
slack set to 1 ns (select timeouts are the most precise here; poll/epoll round to ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import threading
import time

from ..arp import ArpParams, ArpTable
from ..device import NetDevice
from ..host import Host
from ..packet import segment_to_ip
from ..socket import Socket
from ..wire import (
    BROADCAST_MAC, ETH_P_ARP, ETH_P_IP, encode_ipv4, encode_tcp, internet_checksum,
    ip_to_bytes, pseudo_header_sum,
)
from ..wire.ipv4 import IPPROTO_TCP
from .apps import Process, Sleep, advance

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
PR_SET_TIMERSLACK = 29
SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFMTU = 0x8913, 0x8915, 0x8921
IFF_UP = 0x1

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
# struct virtio_net_hdr, little-endian on x86: flags, gso_type, hdr_len, gso_size,
# csum_start, csum_offset.
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
ETH_HLEN = 14
TCP_CSUM_OFFSET = 16
RX_BUF = VNET_HDR_LEN + ETH_HLEN + 65535 + 64
RX_BATCH = 256                     # frames read before timers and output get a turn
SOCK_BUF_BYTES = 8 * 1024 * 1024   # AF_PACKET rcvbuf: room for an ACK burst (drops are silent)


class InterfaceError(RuntimeError):
    """The interface cannot be given to the stack as it is; the message says what to fix."""


class Terminated(BaseException):
    """Raised by the SIGTERM handler so ``run`` stops (Python retries select after a signal).

    A BaseException, so an application's ``except Exception`` does not swallow it.
    """


# --- the device and the frames --------------------------------------------------------------

class OffloadDevice(NetDevice):
    """A NIC that segments in 'hardware': GSO skbs leave whole, the kernel cuts them."""

    def xmit(self, seg, now: float):
        if not self.instant:
            return super().xmit(seg, now)   # a modelled rate queues per frame: software GSO
        self.tx_packets += max(seg.gso_segs, 1)
        self.tx_bytes += len(seg.payload)
        return [seg], [seg]


def eth_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big")


def gso_ip_packet(seg) -> tuple[bytes, int]:
    """A GSO super-packet for the kernel to segment: (IPv4 bytes, TCP header length).

    The IPv4 header is whole (DF, total length of everything); the TCP checksum field
    holds the folded pseudo-header sum over the whole length, not complemented: the
    kernel's GSO adjusts it per segment and completes it (CHECKSUM_PARTIAL).
    """
    src, dst = ip_to_bytes(seg.saddr), ip_to_bytes(seg.daddr)
    tcp = bytearray(encode_tcp(src, dst, seg.sport, seg.dport, seg.seq, seg.ack_seq, seg.flags,
                               seg.window, seg.options, seg.payload, checksum=False))
    tcp[TCP_CSUM_OFFSET:TCP_CSUM_OFFSET + 2] = \
        pseudo_header_sum(src, dst, IPPROTO_TCP, len(tcp)).to_bytes(2, "big")
    ip = encode_ipv4(src, dst, IPPROTO_TCP, tcp, ttl=seg.ttl, tos=seg.tos, ident=seg.ip_id,
                     df=seg.df)
    return ip, (tcp[12] >> 4) * 4


def vnet_header(seg, ip_hlen: int, tcp_hlen: int) -> bytes:
    """NEEDS_CSUM + TCPV4 with the MSS as gso_size: the kernel gives segment k IP ID id+k."""
    csum_start = ETH_HLEN + ip_hlen
    return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                         csum_start + tcp_hlen, seg.gso_size, csum_start, TCP_CSUM_OFFSET)


def is_gso(seg) -> bool:
    return seg.gso_segs > 1 and seg.gso_size and len(seg.payload) > seg.gso_size


def encode_segment(seg, eth: bytes, vnet: bool) -> list:
    """The buffers of one frame for sendmsg: [virtio header,] Ethernet header, IPv4 packet."""
    if vnet and is_gso(seg):
        ip, tcp_hlen = gso_ip_packet(seg)
        return [vnet_header(seg, 20, tcp_hlen), eth, ip]
    ip = segment_to_ip(seg)
    return [ZERO_VNET_HDR, eth, ip] if vnet else [eth, ip]


def complete_checksum(frame: memoryview, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum in place, as the kernel's skb_checksum_help does."""
    at = csum_start + csum_offset
    if at + 2 > len(frame):
        return   # nonsense offsets: leave it, the IP/TCP decoders drop the frame
    csum = internet_checksum(frame[csum_start:])
    frame[at:at + 2] = csum.to_bytes(2, "big")


# --- the interface, as the kernel sees it ---------------------------------------------------

def _ifreq(ifname: str, request: int) -> bytes:
    req = struct.pack("16s24x", ifname.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), request, req)


def interface_mtu(ifname: str) -> int:
    try:
        return struct.unpack_from("i", _ifreq(ifname, SIOCGIFMTU), 16)[0]
    except OSError as exc:   # most often: no such interface in this thread's namespace
        raise InterfaceError(f"sendlab: interface {ifname}: {exc.strerror}") from None


def interface_ipv4(ifname: str) -> str | None:
    """The kernel's IPv4 address on the interface, or None."""
    try:
        res = _ifreq(ifname, SIOCGIFADDR)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return None
        raise
    return socket.inet_ntoa(res[20:24])


def _proc_sys(path: str) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        with open(path) as f:
            return f.read().strip()
    return None


def prepare_interface(ifname: str) -> int:
    """Check the kernel will not answer for the stack, disable IPv6; returns the MTU.

    Runs in the calling thread's network namespace (/proc/sys/net follows the thread).
    """
    mtu = interface_mtu(ifname)
    flags = struct.unpack_from("H", _ifreq(ifname, SIOCGIFFLAGS), 16)[0]
    if not flags & IFF_UP:
        raise InterfaceError(f"sendlab: interface {ifname} is down (ip link set {ifname} up)")
    addr = interface_ipv4(ifname)
    if addr is not None:
        raise InterfaceError(
            f"sendlab: interface {ifname} has kernel IPv4 address {addr}: the kernel would reset "
            f"the stack's connections; remove it (ip -4 addr flush dev {ifname})")
    if _proc_sys(f"/proc/sys/net/ipv4/conf/{ifname}/forwarding") == "1":
        raise InterfaceError(
            f"sendlab: interface {ifname} forwards IPv4: the kernel would answer the stack's "
            f"packets with ICMP; set net.ipv4.conf.{ifname}.forwarding=0")
    v6 = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    if _proc_sys(v6) == "0":
        with open(v6, "w") as f:
            f.write("1")
    return mtu


def open_packet_socket(ifname: str, vnet_hdr: bool) -> socket.socket:
    # Protocol 0 until bound: no frames of other interfaces slip in before bind().
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        # Else the socket reads back every frame it sends.
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if vnet_hdr:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCK_BUF_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCK_BUF_BYTES)
        sock.bind((ifname, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def set_timer_slack_ns(ns: int = 1) -> None:
    """Wake select() timeouts on time rather than up to 50 us late (this thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_TIMERSLACK) failed: %s", os.strerror(ctypes.get_errno()))


# --- applications ---------------------------------------------------------------------------

# --- the runtime ----------------------------------------------------------------------------

class AfPacketRuntime:
    """Runs ``host`` on ``ifname`` (opened in the calling thread's network namespace)."""

    def __init__(self, host: Host, ifname: str, *, vnet_hdr: bool = False, prefix_len: int = 24,
                 gateway: str | None = None, arp_params: ArpParams | None = None,
                 capture=None) -> None:
        self.host = host
        self.ifname = ifname
        self.vnet_hdr = vnet_hdr
        self.network = ipaddress.ip_network(f"{host.addr}/{prefix_len}", strict=False)
        self.gateway = gateway
        self.capture = capture          # fn(direction "in"|"out", now, Ethernet frame bytes)
        mtu = prepare_interface(ifname)
        if host.device.mtu > mtu:
            raise InterfaceError(f"sendlab: host {host.name} has MTU {host.device.mtu} but "
                                 f"{ifname} has MTU {mtu}")
        self.sock = open_packet_socket(ifname, vnet_hdr)
        self.mac = bytes(self.sock.getsockname()[4][:6])
        self.arp = ArpTable(self.mac, host.addr, arp_params)
        self.t0 = time.monotonic()
        self._rx = bytearray(RX_BUF)
        self._procs: list[Process] = []
        self._next_pid = 1
        self._eth_cache: dict = {}
        self.stats = {"frames_in": 0, "frames_out": 0, "wire_segs_out": 0, "bytes_out": 0,
                      "send_dropped": 0, "rx_ignored": 0, "kernel_rx_packets": 0,
                      "kernel_rx_dropped": 0}

    @classmethod
    def for_interface(cls, ifname: str, addr: str, *, vnet_hdr: bool = False, sysctl=None,
                      seed: int = 0, name: str = "", tracer=None, **kw) -> "AfPacketRuntime":
        """A Host sized to the interface's MTU, with the device that fits the transmit path."""
        mtu = interface_mtu(ifname)
        device = OffloadDevice(mtu=mtu) if vnet_hdr else NetDevice(mtu=mtu)
        host = Host(addr, name=name, sysctl=sysctl, seed=seed, device=device, tracer=tracer)
        return cls(host, ifname, vnet_hdr=vnet_hdr, **kw)

    @property
    def now(self) -> float:
        return time.monotonic() - self.t0

    def socket(self) -> Socket:
        return Socket(self.host)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._read_kernel_stats()
            self.sock.close()

    def __enter__(self) -> "AfPacketRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- applications ---------------------------------------------------------------------

    def spawn(self, gen, name: str = "") -> Process:
        proc = Process(self._next_pid, gen, name)
        self._next_pid += 1
        self._procs.append(proc)
        now = self.now
        self._advance(proc, None, None, now)
        self._flush(now)
        return proc

    def _resume(self, proc: Process, now: float) -> None:
        op = proc.op
        if op.step(now):
            proc.op = None
            self._advance(proc, None if op.error else op.result, op if op.error else None, now)

    def _advance(self, proc: Process, value, failed, now: float) -> None:
        """Run the application until it waits on a socket or a Sleep (as the virtual runtime)."""
        try:
            waiting = advance(proc, value, failed, now)
        finally:
            if proc.done:
                self._procs.remove(proc)
        if isinstance(waiting, Sleep):
            proc.wake_at = now + max(waiting.seconds, 0.0)

    # --- the loop -------------------------------------------------------------------------

    def run(self, until: float | None = None, *, timeout_s: float | None = None) -> float:
        """Run until every application has finished, or until runtime time ``until``.

        ``timeout_s`` bounds the wait for the applications (TimeoutError). Returns the time.
        """
        give_up = None if timeout_s is None else self.now + timeout_s
        set_timer_slack_ns(1)
        with self._sigterm_raises():
            while True:
                now = self.now
                if (until is not None and now >= until) or (until is None and not self._procs):
                    return now
                if give_up is not None and now >= give_up:
                    names = [p.name or f"pid {p.pid}" for p in self._procs]
                    raise TimeoutError(f"applications still running after {timeout_s} s: {names}")
                self._poll_once(_earliest(until, give_up))

    def _poll_once(self, limit: float | None) -> None:
        wake = _earliest(self._next_deadline(), limit)
        timeout = None if wake is None else max(0.0, wake - self.now)
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if readable:
            self._drain()
        now = self.now
        self._timers(now)
        self._flush(now)

    def _next_deadline(self) -> float | None:
        best = _earliest(self.host.next_deadline(), self.arp.next_deadline())
        for proc in self._procs:
            best = _earliest(best, proc.wake_at)
        return best

    def _timers(self, now: float) -> None:
        d = self.host.next_deadline()
        if d is not None and d <= now:
            self.host.handle_timer(now)
        d = self.arp.next_deadline()
        if d is not None and d <= now:
            self.arp.handle_timer(now)
        for proc in list(self._procs):
            if proc.wake_at is not None and proc.wake_at <= now:
                proc.wake_at = None
                self._advance(proc, None, None, now)

    @contextlib.contextmanager
    def _sigterm_raises(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigterm(signum, frame):
            raise Terminated("SIGTERM")

        old = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)

    # --- input ----------------------------------------------------------------------------

    def _drain(self) -> None:
        view = memoryview(self._rx)
        for _ in range(RX_BATCH):
            try:
                n = self.sock.recv_into(self._rx, RX_BUF, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            now = self.now
            self._on_frame(view[:n], now)
            # What the frame triggered (an ACK, new data) leaves now, not after the batch:
            # holding it would add the batch's processing time to every RTT sample.
            self._flush(now)

    def _on_frame(self, frame: memoryview, now: float) -> None:
        if self.vnet_hdr:
            flags, _, _, _, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
            frame = frame[VNET_HDR_LEN:]
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                complete_checksum(frame, csum_start, csum_offset)   # a peer with tx on
        if len(frame) < ETH_HLEN or (frame[:6] != self.mac and frame[:6] != BROADCAST_MAC):
            self.stats["rx_ignored"] += 1
            return
        self.stats["frames_in"] += 1
        if self.capture is not None:
            self.capture("in", now, bytes(frame))
        ethertype = frame[12] << 8 | frame[13]
        if ethertype == ETH_P_IP:
            # A copy: the receive buffer is reused for the next frame.
            self.host.receive_ip(bytes(frame[ETH_HLEN:]), now)
        elif ethertype == ETH_P_ARP:
            self.arp.receive(bytes(frame[ETH_HLEN:]), now)
        else:
            self.stats["rx_ignored"] += 1

    # --- output ---------------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        """Put the Host's and ARP's frames on the wire; resume applications the Host woke."""
        for _ in range(1000):
            for seg in self.host.take_frames():
                mac = self.arp.resolve(self._next_hop(seg.daddr), seg, now)
                if mac is not None:
                    self._send_segment(seg, mac, now)
            for dst, ethertype, item in self.arp.take_frames():
                if ethertype == ETH_P_IP:
                    self._send_segment(item, dst, now)
                else:
                    self._send_frame([eth_header(dst, self.mac, ethertype), item], 1, now)
            if not self.host.woken:
                return
            woken, self.host.woken = self.host.woken, set()
            for proc in list(self._procs):
                if proc.op is not None and proc.op.sock.tp in woken:
                    self._resume(proc, now)

    def _next_hop(self, daddr: str) -> str:
        if self.gateway is None or ipaddress.ip_address(daddr) in self.network:
            return daddr
        return self.gateway

    def _send_segment(self, seg, mac: bytes, now: float) -> None:
        eth = self._eth_cache.get(mac)
        if eth is None:
            eth = self._eth_cache[mac] = eth_header(mac, self.mac, ETH_P_IP)
        buffers = encode_segment(seg, eth, self.vnet_hdr)
        self._send_frame(buffers, max(seg.gso_segs, 1), now)

    def _send_frame(self, buffers: list, segs: int, now: float) -> None:
        if self.vnet_hdr and len(buffers) == 2:
            buffers = [ZERO_VNET_HDR, *buffers]
        try:
            n = self.sock.sendmsg(buffers)
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            # A full queue below us: the frame is lost like on a wire; TCP retransmits it.
            self.stats["send_dropped"] += 1
            return
        self.stats["frames_out"] += 1
        self.stats["wire_segs_out"] += segs
        self.stats["bytes_out"] += n
        if self.capture is not None:
            skip = VNET_HDR_LEN if self.vnet_hdr else 0
            self.capture("out", now, b"".join(buffers)[skip:])

    # --- counters -------------------------------------------------------------------------

    def _read_kernel_stats(self) -> None:
        # PACKET_STATISTICS resets on read: accumulate. Drops mean the loop fell behind.
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        self.stats["kernel_rx_packets"] += packets
        self.stats["kernel_rx_dropped"] += drops

    def kernel_stats(self) -> dict:
        if self.sock.fileno() >= 0:
            self._read_kernel_stats()
        return {k: self.stats[k] for k in ("kernel_rx_packets", "kernel_rx_dropped")}


def _earliest(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a if a < b else b


__all__ = [
    "AfPacketRuntime", "InterfaceError", "OffloadDevice", "Process", "Sleep", "Terminated",
    "complete_checksum", "encode_segment", "gso_ip_packet", "interface_ipv4", "interface_mtu",
    "prepare_interface", "vnet_header",
]
