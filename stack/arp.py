"""ARP for one Ethernet interface, sans-I/O: answer for our address, resolve next hops.

ARP packets and the time go in (``receive``, ``handle_timer``); what to put on the
wire comes out of ``take_frames`` as ``(dst_mac, ethertype, payload)``. For ARP the
payload is the encoded ARP packet; for IPv4 it is whatever the caller queued with
``resolve`` (bytes, or a runtime's own frame object), handed back untouched once the
next hop's MAC is known.

The states follow the kernel's neighbour table (``net/core/neighbour.c``), reduced to
what a host on one link needs:

- INCOMPLETE: requests broadcast every ``retrans_time_s``, packets queued (at most
  ``unres_qlen`` per neighbour; the oldest is dropped first, as ``__neigh_event_send``
  does); after ``mcast_solicit`` unanswered requests the entry fails and its queue is
  dropped.
- REACHABLE: confirmed less than ``reachable_time_s`` ago; used as is.
- STALE: still used, but the first use sends a unicast request (the kernel's
  DELAY/PROBE, without the separate DELAY wait); ``ucast_solicit`` unanswered probes
  delete the entry, so the next packet starts over with a broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire import (
    ARPOP_REPLY, ARPOP_REQUEST, BROADCAST_MAC, ETH_P_ARP, ETH_P_IP, MalformedPacket,
    build_arp_reply, build_arp_request, decode_arp, ip_to_bytes,
)

INCOMPLETE = "INCOMPLETE"
REACHABLE = "REACHABLE"
STALE = "STALE"
PROBE = "PROBE"


@dataclass
class ArpParams:
    """Defaults are the kernel's (``net.ipv4.neigh.default.*``)."""

    retrans_time_s: float = 1.0
    reachable_time_s: float = 30.0
    mcast_solicit: int = 3
    ucast_solicit: int = 3
    unres_qlen: int = 101


@dataclass
class Neighbour:
    ip: str
    state: str
    mac: bytes | None = None
    confirmed: float = 0.0
    probes: int = 0
    next_probe: float | None = None
    queue: list = field(default_factory=list)


class ArpTable:
    """The neighbour table of one interface with address ``addr`` and hardware address ``mac``."""

    def __init__(self, mac: bytes, addr: str, params: ArpParams | None = None) -> None:
        self.mac = bytes(mac)
        self.addr = addr
        self.addr_bytes = ip_to_bytes(addr)
        self.params = params or ArpParams()
        self.neighbours: dict[str, Neighbour] = {}
        self.out: list = []
        self.stats = {"requests_in": 0, "replies_out": 0, "requests_out": 0, "replies_in": 0,
                      "queued": 0, "queue_dropped": 0, "failed": 0, "malformed": 0}

    # --- output path ----------------------------------------------------------------

    def resolve(self, next_hop: str, item, now: float) -> bytes | None:
        """The MAC to send ``item`` to, or None: then ``item`` waits in the neighbour's queue."""
        n = self.neighbours.get(next_hop)
        if n is None:
            n = self.neighbours[next_hop] = Neighbour(next_hop, INCOMPLETE)
            self._solicit(n, now)
        elif n.state == REACHABLE and now - n.confirmed > self.params.reachable_time_s:
            n.state = STALE
        if n.state == STALE:
            # Use the old MAC but check it is still right, with unicast probes.
            n.state, n.probes = PROBE, 0
            self._solicit(n, now)
        if n.mac is not None:
            return n.mac
        self._enqueue(n, item)
        return None

    def lookup(self, ip: str) -> bytes | None:
        n = self.neighbours.get(ip)
        return n.mac if n is not None else None

    def _enqueue(self, n: Neighbour, item) -> None:
        if len(n.queue) >= self.params.unres_qlen:
            n.queue.pop(0)
            self.stats["queue_dropped"] += 1
        n.queue.append(item)
        self.stats["queued"] += 1

    def _solicit(self, n: Neighbour, now: float) -> None:
        # A probe of a known entry goes to its MAC; resolution is broadcast.
        dst = n.mac if n.state == PROBE else BROADCAST_MAC
        pkt = build_arp_request(self.mac, self.addr_bytes, ip_to_bytes(n.ip))
        self.out.append((dst, ETH_P_ARP, pkt))
        self.stats["requests_out"] += 1
        n.probes += 1
        n.next_probe = now + self.params.retrans_time_s

    # --- input path -----------------------------------------------------------------

    def receive(self, payload, now: float) -> None:
        """One ARP packet (the Ethernet payload)."""
        try:
            pkt = decode_arp(payload)
        except MalformedPacket:
            self.stats["malformed"] += 1
            return
        spa, tpa = _ip(pkt.spa), _ip(pkt.tpa)
        for_us = tpa == self.addr
        if spa == self.addr or pkt.sha == self.mac or spa == "0.0.0.0":
            return   # our own, or a duplicate-address probe: nothing to learn
        if pkt.op == ARPOP_REQUEST:
            self.stats["requests_in"] += 1
            if for_us:
                self.out.append((pkt.sha, ETH_P_ARP,
                                 build_arp_reply(self.mac, self.addr_bytes, pkt.sha, pkt.spa)))
                self.stats["replies_out"] += 1
        elif pkt.op == ARPOP_REPLY:
            self.stats["replies_in"] += 1
        # RFC 826: update an entry we have; create one only when the packet was for us.
        if spa in self.neighbours or for_us:
            self._learn(spa, bytes(pkt.sha), now)

    def _learn(self, ip: str, mac: bytes, now: float) -> None:
        n = self.neighbours.get(ip)
        if n is None:
            n = self.neighbours[ip] = Neighbour(ip, REACHABLE)
        n.mac, n.state, n.confirmed = mac, REACHABLE, now
        n.probes, n.next_probe = 0, None
        for item in n.queue:
            self.out.append((mac, ETH_P_IP, item))
        n.queue.clear()

    # --- time -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [n.next_probe for n in self.neighbours.values() if n.next_probe is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for n in list(self.neighbours.values()):
            if n.next_probe is not None and n.next_probe <= now:
                self._probe_timer(n, now)

    def _probe_timer(self, n: Neighbour, now: float) -> None:
        limit = self.params.mcast_solicit if n.state == INCOMPLETE else self.params.ucast_solicit
        if n.probes < limit:
            self._solicit(n, now)
            return
        # Unanswered: the kernel's NUD_FAILED; queued packets are lost (TCP will retransmit).
        self.stats["failed"] += 1
        self.stats["queue_dropped"] += len(n.queue)
        del self.neighbours[n.ip]

    def take_frames(self) -> list:
        out, self.out = self.out, []
        return out


def _ip(addr: bytes) -> str:
    return "{}.{}.{}.{}".format(*addr)


__all__ = ["ArpParams", "ArpTable", "Neighbour", "INCOMPLETE", "REACHABLE", "STALE", "PROBE"]
