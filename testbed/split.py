"""One topology across machines: placement, the partition, and the VXLAN/MTU plan.

A topology may say which worker builds each node (``placement: {node: worker}``); the worker
names must be those of the workers file given with ``--workers``. :func:`place` completes the
placement (a node left out goes where most of its links already go, greedily, so that few
links cross; with no placement at all everything goes to the first worker), :func:`partition`
splits the nodes and links per worker and lists the links that cross, and :func:`plan_vxlan`
turns each crossing link into a VXLAN tunnel between the two workers' underlay addresses::

    ip link add NAME type vxlan id VNI local A remote B dstport 4789 dev UNDERLAY

made in the worker's (root or machine) namespace and attached to the crossing link's endpoint
as a local link's peer would be. The endpoints keep the link's configured MTU; the tunnel adds
50 bytes (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8), so each worker's underlay must carry
MTU + 50; :func:`plan_vxlan` raises :class:`UnderlayMtuError` saying so when it cannot.

Everything here is pure (no commands are run); :meth:`TunnelEnd.commands` and
:meth:`TunnelEnd.teardown` give the argv lists a worker runs (lists, never shell strings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from .topology import NODE_NAME_RE, Topology, TopologyError

__all__ = ["VXLAN_OVERHEAD", "VXLAN_PORT", "UnderlayMtuError", "Crossing", "Partition",
           "Underlay", "TunnelEnd", "Tunnel", "place", "partition", "vni_base_for",
           "plan_vxlan", "part_spec"]

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_PORT = 4789  # IANA
MAX_VNI = (1 << 24) - 1
LINKS_PER_RUN = 256  # VNIs a run may use: vni_base .. vni_base + 255


class UnderlayMtuError(ValueError):
    """A worker's underlay cannot carry a crossing link's MTU plus the VXLAN overhead."""


# --- placement ---------------------------------------------------------------------------------

def place(topo: Topology, workers: Sequence[str]) -> dict[str, str]:
    """Every node's worker: the topology's ``placement``, completed.

    Raises :class:`TopologyError` (at ``placement.NODE``) for a worker that is not in
    ``workers``. A node not placed goes to the worker of the nearest placed nodes (regions grow
    one hop at a time from every placed node; a node reached by several goes where most of its
    links lead, ties to the earlier worker), which cuts few links (a heuristic, not an optimal
    minimum cut); a node connected to nothing placed goes to the first worker.
    """
    workers = list(workers)
    if not workers:
        raise TopologyError("--workers", None, "", "the workers file lists no workers")
    for node, worker in topo.placement.items():
        if worker not in workers:
            raise topo.error(("placement", node),
                             f"unknown worker {worker!r}; the workers file has "
                             f"{', '.join(workers)}")
    out = dict(topo.placement)
    if not out:
        return {node: workers[0] for node in topo.nodes}
    rank = {w: k for k, w in enumerate(workers)}
    pending = [n for n in topo.nodes if n not in out]
    while pending:
        # One breadth-first layer from every placed node at once: each region grows by one hop.
        layer = {}
        for node in pending:
            votes: dict[str, int] = {}
            for i in topo.links_of(node):
                other = topo.links[i].other(node)
                if other in out:
                    votes[out[other]] = votes.get(out[other], 0) + 1
            if votes:
                layer[node] = min(votes, key=lambda w: (-votes[w], rank[w]))
        if not layer:  # what is left touches nothing placed
            layer = {pending[0]: workers[0]}
        out.update(layer)
        pending = [n for n in pending if n not in layer]
    return {node: out[node] for node in topo.nodes}


# --- the partition -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Crossing:
    """A link whose ends are on two workers."""

    link: int
    label: str
    ends: tuple[tuple[str, str], tuple[str, str]]  # ((node, worker), (node, worker))
    mtu: int  # the larger of its two directions' MTU: what the tunnel must carry


@dataclass(frozen=True)
class Partition:
    assignment: dict[str, str]  # node -> worker
    parts: dict[str, tuple[str, ...]]  # worker -> its nodes, in topology order
    local_links: dict[str, tuple[int, ...]]  # worker -> links with both ends there
    crossing: tuple[Crossing, ...]

    @property
    def cut(self) -> int:
        return len(self.crossing)


def partition(topo: Topology, workers: Sequence[str]) -> Partition:
    """Split ``topo`` over ``workers`` (see :func:`place`): nodes and links per worker, and the
    links that cross."""
    assignment = place(topo, workers)
    parts = {w: tuple(n for n in topo.nodes if assignment[n] == w) for w in workers}
    local: dict[str, list[int]] = {w: [] for w in workers}
    crossing = []
    for i, link in enumerate(topo.links):
        a, b = link.ends
        wa, wb = assignment[a], assignment[b]
        if wa == wb:
            local[wa].append(i)
        else:
            mtu = max(topo.shape(i, a).mtu, topo.shape(i, b).mtu)
            crossing.append(Crossing(link=i, label=link.label, ends=((a, wa), (b, wb)), mtu=mtu))
    return Partition(assignment=assignment, parts={w: p for w, p in parts.items() if p},
                     local_links={w: tuple(v) for w, v in local.items() if v},
                     crossing=tuple(crossing))


# --- the VXLAN plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Underlay:
    """Where a worker's tunnels leave from: its underlay address, device and that device's MTU."""

    address: str
    dev: str
    mtu: int


@dataclass(frozen=True)
class TunnelEnd:
    worker: str
    node: str
    ifname: str  # the node's interface on the crossing link (``<node>-eth<N>``)
    device: str  # the VXLAN device on the worker
    vni: int
    local: str
    remote: str
    underlay_dev: str
    mtu: int  # what the endpoint sees: the link's MTU

    def commands(self) -> list[list[str]]:
        """argv lists that make and raise the VXLAN device (run in the worker's namespace)."""
        return [
            ["ip", "link", "add", self.device, "type", "vxlan", "id", str(self.vni),
             "local", self.local, "remote", self.remote, "dstport", str(VXLAN_PORT),
             "dev", self.underlay_dev],
            ["ip", "link", "set", "dev", self.device, "mtu", str(self.mtu)],
            ["ip", "link", "set", "dev", self.device, "up"],
        ]

    def teardown(self) -> list[list[str]]:
        return [["ip", "link", "del", self.device]]


@dataclass(frozen=True)
class Tunnel:
    link: int
    label: str
    vni: int
    mtu: int
    underlay_mtu: int  # the least underlay MTU it needs: mtu + 50
    ends: tuple[TunnelEnd, TunnelEnd]


def vni_base_for(prefix: str) -> int:
    """A run's first VNI from its ``slXXXX`` prefix: 256 VNIs per run, never 0, within 24 bits,
    so that two runs between the same workers do not share a VNI."""
    digits = prefix[2:] if prefix.startswith("sl") else prefix
    try:
        n = int(digits, 16)
    except ValueError:
        n = sum(prefix.encode())
    return (n % ((MAX_VNI + 1) // LINKS_PER_RUN - 1) + 1) * LINKS_PER_RUN


def plan_vxlan(topo: Topology, part: Partition, underlays: dict, *,
               prefix: str = "sl0000", vni_base: int | None = None) -> list[Tunnel]:
    """A VXLAN tunnel per crossing link: device names ``<prefix>x<link>``, VNIs
    ``vni_base + link``; raises :class:`UnderlayMtuError` (every problem, one per line) when an
    underlay MTU is below a crossing link's MTU + 50.

    ``underlays`` maps a worker to its :class:`Underlay`, or ``(worker, peer)`` to the one it
    reaches that peer by (a machine may reach different peers over different devices)."""
    if not NODE_NAME_RE.match(prefix) or len(prefix) > 10:
        raise ValueError(f"{prefix!r} is not a run prefix like sl1a2b")
    base = vni_base_for(prefix) if vni_base is None else vni_base
    plan = topo.address_plan()
    problems = []
    tunnels = []
    for c in part.crossing:
        if c.link >= LINKS_PER_RUN:
            raise ValueError(f"links[{c.link}] crosses workers; only the first {LINKS_PER_RUN} "
                             "links of a topology may")
        vni = base + c.link
        if not 1 <= vni <= MAX_VNI:
            raise ValueError(f"VNI {vni} is outside 1..{MAX_VNI}")
        need = c.mtu + VXLAN_OVERHEAD
        (_, wa), (_, wb) = c.ends
        for node, worker in c.ends:
            u = _underlay(underlays, worker, wb if worker == wa else wa)
            if u.mtu < need:
                problems.append(
                    f"links[{c.link}] ({c.label}) crosses from {c.ends[0][1]} to {c.ends[1][1]} "
                    f"with mtu {c.mtu}, so its VXLAN tunnel needs an underlay MTU of at least "
                    f"{need} (the link's MTU + {VXLAN_OVERHEAD} bytes of outer Ethernet, IPv4, "
                    f"UDP and VXLAN headers), but worker {worker}'s underlay {u.dev} "
                    f"({u.address}) has MTU {u.mtu}: raise that to {need} or more, or give the "
                    f"link mtu: {u.mtu - VXLAN_OVERHEAD} or less")
        ends = []
        for (node, worker), (_, other) in zip(c.ends, reversed(c.ends)):
            u, peer = _underlay(underlays, worker, other), _underlay(underlays, other, worker)
            ends.append(TunnelEnd(worker=worker, node=node,
                                  ifname=plan.interface(node, c.link).name,
                                  device=f"{prefix}x{c.link}", vni=vni, local=u.address,
                                  remote=peer.address, underlay_dev=u.dev, mtu=c.mtu))
        tunnels.append(Tunnel(link=c.link, label=c.label, vni=vni, mtu=c.mtu,
                              underlay_mtu=need, ends=(ends[0], ends[1])))
    if problems:
        raise UnderlayMtuError("\n".join(problems))
    return tunnels


def _underlay(underlays: dict, worker: str, peer: str) -> Underlay:
    u = underlays.get((worker, peer)) or underlays.get(worker)
    if u is None:
        raise ValueError(f"no underlay given for worker {worker!r}")
    return u


def part_spec(part: Partition, tunnels: Sequence[Tunnel], worker: str) -> dict:
    """What one worker builds, as JSON-able data (sent as data, never as a shell string)."""
    return {
        "worker": worker,
        "nodes": list(part.parts.get(worker, ())),
        "links": list(part.local_links.get(worker, ())),
        "tunnels": [{**asdict(end), "link": t.link}
                    for t in tunnels for end in t.ends if end.worker == worker],
    }
