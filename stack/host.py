"""One IPv4 host as a sans-I/O object: its interface, route/PMTU cache, sockets and timers.

Packets and the time go in (``receive``, ``receive_icmp``, ``handle_timer``);
frames to put on the wire and the next deadline come out (``take_frames``,
``next_deadline``). Application calls go through ``stack.socket``. Nothing in
here sleeps, reads a clock or touches a real socket.
"""

from __future__ import annotations

import random

from .constants import (
    TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCPHDR_ACK, TCPHDR_SYN,
)
from .device import NetDevice
from .mib import Mib
from .packet import IcmpDropped, ip_to_packet, segment_is_sane
from .segment import IcmpError, Segment
from .sysctl import Sysctl
from .tcp_ipv4 import tcp_v4_err, tcp_v4_rcv, tcp_v4_send_reset
from .tcp_timer import tcp_handle_timers, tcp_next_deadline
from .wire import MalformedPacket


class PmtuEntry:
    __slots__ = ("mtu", "expires", "locked")

    def __init__(self, mtu: int, expires: float, locked: bool) -> None:
        self.mtu = mtu
        self.expires = expires
        self.locked = locked


class Host:
    def __init__(self, addr: str, *, name: str = "", mtu: int = 1500, sysctl: Sysctl | None = None,
                 seed: int = 0, device: NetDevice | None = None, tracer=None) -> None:
        self.name = name or addr
        self.addr = addr
        self.sysctl = sysctl if sysctl is not None else Sysctl()
        self.device = device if device is not None else NetDevice(mtu=mtu)
        self.mib = Mib()
        self.rng = random.Random(seed)
        self.established: dict = {}     # (laddr, lport, raddr, rport) -> TcpSock
        self.listeners: dict = {}       # lport -> TcpSock
        self.pmtu: dict = {}            # daddr -> PmtuEntry (learned from ICMP)
        self.next_port = 32768 + self.rng.randrange(28232)
        self.out_frames: list = []
        self.woken: set = set()
        self._tsq: list = []
        self.tracer = tracer
        self.sockets: list = []
        self.now = 0.0

    # --- identities ---------------------------------------------------------------------

    def secure_tcp_seq(self) -> int:
        return self.rng.getrandbits(32)

    def ephemeral_port(self, daddr: str, dport: int) -> int:
        for _ in range(28232):
            port = self.next_port
            self.next_port = 32768 if self.next_port >= 60999 else self.next_port + 1
            if (self.addr, port, daddr, dport) not in self.established and port not in self.listeners:
                return port
        raise OSError("no free ephemeral port")

    # --- socket tables ------------------------------------------------------------------

    def hash_established(self, tp) -> bool:
        key = (tp.saddr, tp.sport, tp.daddr, tp.dport)
        if key in self.established:
            return False
        self.established[key] = tp
        return True

    def hash_listener(self, tp) -> bool:
        if tp.sport in self.listeners:
            return False
        self.listeners[tp.sport] = tp
        return True

    def unhash(self, tp) -> None:
        key = (tp.saddr, tp.sport, tp.daddr, tp.dport)
        if self.established.get(key) is tp:
            del self.established[key]
        if self.listeners.get(tp.sport) is tp:
            del self.listeners[tp.sport]

    def lookup_established(self, seg: Segment):
        return self.established.get((seg.daddr, seg.dport, seg.saddr, seg.sport))

    def lookup_listener(self, seg: Segment):
        tp = self.listeners.get(seg.dport)
        return tp if tp is not None and tp.state == TCP_LISTEN else None

    def lookup_by_ports(self, saddr: str, sport: int, daddr: str, dport: int):
        """The connection an ICMP error quotes: established (or SYN_RECV) sockets only."""
        return self.established.get((saddr, sport, daddr, dport))

    def count_syn_recv(self, listener) -> int:
        return sum(1 for tp in self.established.values()
                   if tp.parent is listener and tp.state == TCP_SYN_RECV)

    # --- routing and PMTU ---------------------------------------------------------------

    def route_mtu(self, daddr: str) -> int:
        entry = self.pmtu.get(daddr)
        if entry is not None:
            if entry.expires > self.now:
                return min(entry.mtu, self.device.mtu)
            del self.pmtu[daddr]
        return self.device.mtu

    def route_locked(self, daddr: str) -> bool:
        """True when ICMP pushed the route's MTU below min_pmtu: Linux then stops setting DF."""
        entry = self.pmtu.get(daddr)
        return entry is not None and entry.locked and entry.expires > self.now

    def dev_mtu(self, daddr: str) -> int:
        """The first hop's MTU: what the advertised MSS is computed from."""
        return self.device.mtu

    def update_pmtu(self, daddr: str, mtu: int, now: float):
        """Learn a smaller path MTU from ICMP; returns the route's MTU after the update."""
        old = self.route_mtu(daddr)
        if mtu >= old:
            return old
        locked = False
        if mtu < self.sysctl.route_min_pmtu:
            # Linux never goes below min_pmtu; it locks the route there and stops setting DF.
            locked = True
            mtu = min(old, self.sysctl.route_min_pmtu)
        self.pmtu[daddr] = PmtuEntry(mtu, now + self.sysctl.route_mtu_expires, locked)
        return mtu

    # --- input --------------------------------------------------------------------------

    def receive(self, seg: Segment, now: float) -> None:
        """One TCP segment addressed to this host."""
        self.now = now
        if seg.daddr != self.addr or not segment_is_sane(seg):
            self.mib["SendlabMalformedDropped"] += 1
            return
        tcp_v4_rcv(self, seg, now)
        self.run_softirq(now)

    def receive_ip(self, data, now: float) -> None:
        """One IPv4 packet as bytes: decoded, checked, then handed to TCP or ICMP handling."""
        self.mib["IpInReceives"] += 1
        try:
            pkt = ip_to_packet(data)
        except IcmpDropped as drop:
            for counter in drop.counters:
                self.mib[counter] += 1
            self.mib["SendlabMalformedDropped"] += 1
            return
        except MalformedPacket:
            self.mib["IpInHdrErrors"] += 1
            self.mib["SendlabMalformedDropped"] += 1
            return
        if isinstance(pkt, Segment):
            self.receive(pkt, now)
        elif isinstance(pkt, IcmpError):
            self.receive_icmp(pkt, now)

    def receive_icmp(self, err: IcmpError, now: float) -> None:
        self.now = now
        if not (isinstance(err.mtu, int) and 0 <= err.mtu <= 0xFFFF and 0 <= err.q_seq <= 0xFFFFFFFF):
            self.mib["SendlabMalformedDropped"] += 1
            return
        tcp_v4_err(self, err, now)
        self.run_softirq(now)

    def after_input(self, tp, now: float) -> None:
        """Hook after a segment was processed; the place the kernel runs tcp_release_cb."""

    # --- output -------------------------------------------------------------------------

    def ip_output(self, tp, seg: Segment, now: float) -> None:
        self.mib["IpOutRequests"] += 1
        if tp is None:
            seg.ip_id = 0
        if self.tracer is not None:
            self.tracer.segment(tp, seg, now)
        frames, done = self.device.xmit(seg, now)
        if frames:
            self.out_frames.extend(frames)
        for s in done:
            self.tx_complete(s, now)

    def tx_complete(self, seg: Segment, now: float) -> None:
        """The device is done with a segment: release its memory charge (tcp_wfree)."""
        owner = seg.owner
        if owner is not None:
            owner.clones -= 1
        tp = seg.sk
        if tp is None:
            return
        tp.wmem_alloc -= seg.skb_truesize
        if tp.tsq_throttled and not tp.tsq_queued:
            # TSQ or autocorking held data until this completion: push from "softirq".
            tp.tsq_throttled = False
            tp.tsq_queued = True
            self._tsq.append(tp)

    def run_softirq(self, now: float) -> None:
        """Run deferred TSQ work (tcp_tsq_handler) queued by TX completions."""
        while self._tsq:
            tp = self._tsq.pop(0)
            tp.tsq_queued = False
            if tp.state == TCP_CLOSE:
                continue
            if tp.lost_out > tp.retrans_out and tp.snd_cwnd > tp.packets_in_flight():
                _tcp_output.tcp_xmit_retransmit_queue(tp, now)
            _tcp_output.tcp_write_xmit(tp, _tcp_output.tcp_current_mss(tp), tp.nonagle, 0, now)

    def take_frames(self) -> list:
        frames = self.out_frames
        self.out_frames = []
        return frames

    def send_reset_for(self, seg: Segment, now: float) -> None:
        tcp_v4_send_reset(self, seg, now)

    # --- time ---------------------------------------------------------------------------

    def next_deadline(self):
        best = self.device.next_deadline()
        for tp in list(self.established.values()):
            t = tcp_next_deadline(tp)
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        self.now = now
        frames, done = self.device.poll(now)
        if frames:
            self.out_frames.extend(frames)
        for s in done:
            self.tx_complete(s, now)
        for tp in list(self.established.values()):
            t = tcp_next_deadline(tp)
            if t is not None and t <= now:
                tp.tcp_clock = now
                tcp_handle_timers(tp, now)
        self.run_softirq(now)

    # --- wake-ups and tracing -----------------------------------------------------------

    def wake(self, tp) -> None:
        self.woken.add(tp)

__all__ = ["Host", "PmtuEntry", "TCP_ESTABLISHED", "TCPHDR_ACK", "TCPHDR_SYN"]


# Imported last: these modules import this one, and are used only inside functions.
from . import tcp_output as _tcp_output  # noqa: E402
