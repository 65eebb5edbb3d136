"""The simulated backend: a validated topology on the virtual clock.

Hosts run sendlab's stack (stack.Host) with a device whose queue is the link's
own (so TX completion, TSQ and autocorking follow the link's serialization);
routers run controller.router's pure decisions; links run testbed.link_model.
Everything crossing a link is real IPv4 bytes, captured for the link's pcap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from controller.router import Forward, PortConfig, Route as RouterRoute, Router, RouterConfig
from stack.device import NetDevice, gso_segment
from stack.host import Host
from stack.packet import segment_to_ip
from stack.runtime import VirtualNetwork
from stack.sysctl import Sysctl

from .link_model import Bernoulli, GilbertElliott, LinkDirection, derive_seed
from .topology import Topology, require_backend

log = logging.getLogger(__name__)

_ETH_HLEN = 14
_QUEUE_PACKET_BYTES = 1514   # a queue given in packets holds that many full-sized frames


@dataclass
class Wire:
    """One direction of one link, as the simulator uses it."""

    link: int
    src: str
    dst: str
    src_iface: str
    dst_iface: str
    mtu: int
    model: LinkDirection
    capture: list = field(default_factory=list)   # (time, ip bytes) as the frame entered the link
    dropped_oversize: int = 0


class SimDevice(NetDevice):
    """A host's NIC whose transmit queue is the attached link's queue.

    A frame is complete (its memory released, as tcp_wfree does) when its last
    bit has left the link's transmitter, so TSQ and autocorking see the real backlog.
    """

    def __init__(self, sim: "SimNetwork", host_name: str, mtu: int) -> None:
        super().__init__(name=f"{host_name}-eth0", mtu=mtu, rate_bps=1.0)
        self.sim = sim
        self.host_name = host_name

    def xmit(self, seg, now: float):
        done_at = now
        for frame in gso_segment(seg):
            self.tx_packets += 1
            self.tx_bytes += len(frame.payload)
            t = self.sim.host_output(self.host_name, frame, now)
            done_at = max(done_at, t)
        if done_at <= now:
            return [], [seg]
        self._completions.append((done_at, seg))
        return [], []


class SimNetwork:
    def __init__(self, topo: Topology, *, seed: int | None = None) -> None:
        require_backend(topo, "sim")
        self.topo = topo
        self.seed = topo.seed if seed is None else seed
        self.net = VirtualNetwork(seed=self.seed)
        self.plan = topo.address_plan()
        self.routes = topo.route_tables()
        self.hosts: dict[str, Host] = {}
        self.routers: dict[str, Router] = {}
        self.wires: dict[tuple[str, str], Wire] = {}    # (node, iface name) -> outgoing wire
        self.addr_owner: dict[str, tuple[str, str]] = {}  # ip -> (node, iface)
        self.link_wires: dict[int, list[Wire]] = {}
        self._ports: dict = {}
        self._hops: dict = {}
        self._build()

    # --- building -----------------------------------------------------------------------

    def _build(self) -> None:
        for node, ifaces in self.plan.interfaces.items():
            for iface in ifaces:
                if iface.addr is not None:
                    self.addr_owner[str(iface.addr.ip)] = (node, iface.name)
        for i, link in enumerate(self.topo.links):
            a, b = link.ends
            for src, dst in ((a, b), (b, a)):
                self._add_wire(i, src, dst)
        for name in self.topo.routers:
            self.routers[name] = self._make_router(name)
        for name in self.topo.hosts:
            self._make_host(name)

    def _add_wire(self, index: int, src: str, dst: str) -> None:
        shape = self.topo.shape(index, src)
        loss = None
        if shape.loss.gilbert is not None:
            g = shape.loss.gilbert
            loss = GilbertElliott(g.p, g.r, g.h, g.k)
        elif shape.loss.bernoulli:
            loss = Bernoulli(shape.loss.bernoulli)
        queue = shape.queue_bytes
        if queue is None and shape.queue_packets is not None:
            queue = shape.queue_packets * _QUEUE_PACKET_BYTES
        model = LinkDirection(
            rate_bps=shape.rate_mbit * 1e6 if shape.rate_mbit else None,
            delay_s=shape.delay_ms / 1000, jitter_s=shape.jitter_ms / 1000, loss=loss,
            queue_bytes=queue, seed=derive_seed(self.seed, f"link{index}:{src}>{dst}"))
        src_if = self.plan.interface(src, index)
        dst_if = self.plan.interface(dst, index)
        wire = Wire(index, src, dst, src_if.name, dst_if.name, shape.mtu, model)
        self.wires[(src, src_if.name)] = wire
        self.link_wires.setdefault(index, []).append(wire)

    def _make_router(self, name: str) -> Router:
        cfg = self.topo.routers[name]
        ports = []
        for iface in self.plan.interfaces[name]:
            wire = self.wires[(name, iface.name)]
            if iface.addr is None:
                continue
            ports.append(PortConfig(iface.name, str(iface.addr.ip), iface.addr.network.prefixlen,
                                    wire.mtu))
        routes = [RouterRoute(str(r.prefix), r.dev, str(r.via) if r.via else None)
                  for r in self.routes.get(name, [])]
        clamp = cfg.mss_clamp if isinstance(cfg.mss_clamp, int) else None
        kwargs = {}
        if cfg.ratelimit_ms is not None:
            kwargs["icmp_ratelimit_ms"] = cfg.ratelimit_ms
        return Router(RouterConfig(name, ports, routes, icmp_policy=cfg.icmp, mss_clamp=clamp,
                                   **kwargs))

    def _make_host(self, name: str) -> None:
        ifaces = self.plan.interfaces[name]
        iface = ifaces[0]
        wire = self.wires[(name, iface.name)]
        sysctl = Sysctl()
        for key, value in self.topo.host_sysctls(name).items():
            sysctl.set(key, value)
        host = Host(str(iface.addr.ip), name=name, sysctl=sysctl,
                    seed=derive_seed(self.seed, f"host:{name}"),
                    device=SimDevice(self, name, wire.mtu))
        self.net.add_existing_host(host)
        self.hosts[name] = host

    # --- moving packets -----------------------------------------------------------------

    def _next_hop(self, node: str, dst: str) -> tuple[str, str] | None:
        """(out interface, next-hop address) from the node's route table (static: cached)."""
        key = (node, dst)
        if key not in self._hops:
            self._hops[key] = self._lookup_route(node, dst)
        return self._hops[key]

    def _lookup_route(self, node: str, dst: str) -> tuple[str, str] | None:
        ip = IPv4Address(dst)
        best = None
        for r in self.routes.get(node, []):
            if ip in r.prefix and (best is None or r.prefix.prefixlen > best.prefix.prefixlen):
                best = r
        if best is None:
            return None
        return best.dev, str(best.via) if best.via else dst

    def host_output(self, name: str, frame, now: float) -> float:
        """Put one frame of a host on its link; returns when it has left the transmitter."""
        hop = self._next_hop(name, frame.daddr)
        if hop is None:
            return now
        dev, next_hop = hop
        return self.transmit(name, dev, next_hop, segment_to_ip(frame), now)

    def transmit(self, node: str, dev: str, next_hop: str, packet: bytes, now: float) -> float:
        """Offer an IPv4 packet to the wire out of ``node``'s ``dev`` toward ``next_hop``."""
        wire = self.wires[(node, dev)]
        wire.capture.append((now, packet, next_hop))
        if len(packet) > wire.mtu:
            # The receiving NIC drops frames over its MTU silently (veth does the same).
            wire.dropped_oversize += 1
            return now
        due = wire.model.offer(len(packet) + _ETH_HLEN, now)
        departed = wire.model.busy_until if wire.model.rate_bps else now
        if due is not None:
            self.net.at(due, self._arrive, wire, packet, next_hop)
        return max(departed, now)

    def _arrive(self, wire: Wire, packet: bytes, next_hop: str) -> None:
        now = self.net.now
        dst = wire.dst
        if dst in self.topo.switches:
            self._switch(dst, wire, packet, next_hop)
        elif dst in self.hosts:
            self.net.deliver_ip(self.hosts[dst], packet)
        elif dst in self.routers:
            for action in self.routers[dst].decide(packet, wire.dst_iface, now):
                if isinstance(action, Forward):
                    self.transmit(dst, action.port, action.next_hop_ip, action.packet, now)

    def _switch(self, name: str, wire: Wire, packet: bytes, next_hop: str) -> None:
        """A plain L2 switch: send the frame out of the port that leads to the next hop."""
        owner = self.addr_owner.get(next_hop)
        if owner is None:
            return
        port = self._switch_port(name, owner[0], exclude=wire.dst_iface)
        if port is not None:
            self.transmit(name, port, next_hop, packet, self.net.now)

    def _switch_port(self, switch: str, target: str, exclude: str):
        """The port of ``switch`` whose side of the LAN holds ``target`` (switches form a tree)."""
        key = (switch, target, exclude)
        if key not in self._ports:
            self._ports[key] = self._find_switch_port(switch, target, exclude)
        return self._ports[key]

    def _find_switch_port(self, switch: str, target: str, exclude: str):
        for iface in self.plan.interfaces[switch]:
            if iface.name == exclude:
                continue
            if self._reaches(iface.peer, target, came_from=switch):
                return iface.name
        return None

    def _reaches(self, node: str, target: str, came_from: str) -> bool:
        if node == target:
            return True
        if node not in self.topo.switches:
            return False
        return any(self._reaches(i.peer, target, node) for i in self.plan.interfaces[node]
                   if i.peer != came_from)


__all__ = ["SimNetwork", "SimDevice", "Wire"]
