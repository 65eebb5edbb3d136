"""Topologies: the YAML model, its validation, and what is derived from it.

A topology file (see ``topologies/README.md``) describes hosts, routers, switches, the links
between them, the traffic and the run's limits. :func:`load_topology` reads one, applies
``--set`` overrides, validates it with the pydantic models below and cross-checks it (names,
link ends, interfaces, addresses, routes, flows); any error is a :class:`TopologyError` that
prints on one line as ``FILE:LINE: PATH.TO.FIELD: what is wrong``.

A validated :class:`Topology` also carries what is derived from it, as pure functions of the
model: interface names (``<node>-eth<N>``, numbered in the order of ``links``), the subnets and
addresses (:func:`assign_addresses`), shortest-path routes (:func:`compute_routes`), and each
link direction's effective shaping (:meth:`Topology.shape`).
"""

from __future__ import annotations

import difflib
import re
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
    model_validator,
)

from stack.sysctl import KEYS as SYSCTL_KEYS
from stack.sysctl import Sysctl, SysctlError, field_to_key, key_to_field
from stack.tcp_cong import ALGORITHMS

from .yaml_errors import ConfigError, Source, describe_value, load_model, located

__all__ = [
    "TopologyError", "Topology", "LinkParams", "Loss", "Gilbert", "Link", "Host", "Router",
    "Switch", "SocketOptions", "StaticRoute", "Flow", "Bulk", "Writes", "RequestResponse",
    "RunLimits", "Shape", "Interface", "Segment", "AddressPlan", "Route", "load_topology",
    "assign_addresses", "compute_routes", "require_backend", "NODE_NAME_RE", "LINK_DEFAULTS",
]


class TopologyError(ConfigError):
    """A topology file is wrong; ``str()`` is ``FILE:LINE: PATH: message``."""


NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
"""Node names end up in interface names (``<node>-eth<N>``) and commands."""
FLOW_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOPOLOGY_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
CONGESTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")

LINK_DEFAULTS = {"mtu": 1500, "rate_mbit": None, "delay_ms": 0.0, "jitter_ms": 0.0,
                 "loss": 0.0, "queue_packets": 1000, "queue_bytes": None}
"""What a link gets when neither it nor ``defaults`` says (1000 packets: Linux txqueuelen)."""

FIRST_PORT = 5001
AUTO_SUBNETS = IPv4Network("10.0.0.0/8")
MIN_MTU = 68  # RFC 791: every IPv4 module must forward a 68-byte datagram
MAX_MTU = 65535

# --- small value types -------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def _parse_bytes(value: Any) -> Any:
    """A byte count: 1000, or a string with a unit: 64KiB, 10MB, 1.5GB (kB = 1000, KiB = 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of bytes, got {describe_value(value)}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; write bytes (1448) or a number with "
                             "B, kB, MB, GB, KiB, MiB or GiB (64KiB, 10MB)")
        total = float(m.group(1)) * _SIZE_UNITS[unit]
        if not total.is_integer():
            raise ValueError(f"{value!r} is not a whole number of bytes")
        return int(total)
    return value


Bytes = Annotated[int, BeforeValidator(_parse_bytes)]


def _parse_mtu(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < MIN_MTU:
            raise ValueError(f"mtu {value} is below {MIN_MTU}, the smallest MTU IPv4 allows")
        if value > MAX_MTU:
            raise ValueError(f"mtu {value} is above {MAX_MTU}, the largest IPv4 packet")
    return value


Mtu = Annotated[int, BeforeValidator(_parse_mtu)]


def _none_to_empty(value: Any) -> Any:
    return {} if value is None else value


def _none_values_to_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return {} if value is None else value


def _none_values_to_list(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ([] if v is None else v) for k, v in value.items()}
    return {} if value is None else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- links -------------------------------------------------------------------------------------

class Gilbert(_Model):
    """Gilbert-Elliott bursty loss (the four parameters of netem's ``loss gemodel``).

    p: probability of moving from the good state to the bad one, per packet; r: from bad back
    to good; h: probability a packet gets through in the bad state (0: every packet is lost
    there); k: probability a packet gets through in the good state (1: none is lost there).
    """

    p: float = Field(ge=0, le=1)
    r: float = Field(ge=0, le=1)
    h: float = Field(default=0.0, ge=0, le=1)
    k: float = Field(default=1.0, ge=0, le=1)


class Loss(_Model):
    """Packet loss: ``bernoulli`` (independent, probability per packet) or ``gilbert`` bursts."""

    bernoulli: float | None = Field(default=None, ge=0, le=1)
    gilbert: Gilbert | None = None

    @model_validator(mode="after")
    def _one_model(self) -> "Loss":
        if (self.bernoulli is None) == (self.gilbert is None):
            raise located(((), "give a probability (0.01 or 1%) or {gilbert: {p: ..., r: ...}}"))
        return self

    @property
    def model(self) -> str:
        return "bernoulli" if self.gilbert is None else "gilbert"


def _parse_loss(value: Any) -> Any:
    """``0.01`` or ``"1%"`` is Bernoulli loss; a mapping is ``{gilbert: {...}}``."""
    if value is None or isinstance(value, (dict, Loss)):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a probability like 0.01 or 1%, got {describe_value(value)}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)
        if not m:
            raise ValueError(f"{value!r} is not a loss; write a probability (0.01), a percentage "
                             "(1%) or {gilbert: {p: ..., r: ...}}")
        pct = float(m.group(1))
        if pct > 100:
            raise ValueError(f"{value} is above 100%")
        return {"bernoulli": pct / 100}
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"loss {value} is negative")
        if value > 1:
            raise ValueError(f"loss {value} is above 1; it is a probability "
                             f"(write {value}% for a percentage)")
        return {"bernoulli": float(value)}
    raise ValueError(f"expected a probability like 0.01 or 1%, got {describe_value(value)}")


LossField = Annotated[Loss | None, BeforeValidator(_parse_loss)]


class LinkParams(_Model):
    """How a link (or one direction of it) behaves; every field may be left to the defaults."""

    mtu: Mtu | None = None
    rate_mbit: float | None = Field(default=None, ge=0)  # 0: not rate-limited
    delay_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    loss: LossField = None
    queue_packets: int | None = Field(default=None, ge=1)
    queue_bytes: Bytes | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_queue_limit(self) -> "LinkParams":
        if self.queue_packets is not None and self.queue_bytes is not None:
            raise located((("queue_bytes",), "give queue_packets or queue_bytes, not both"))
        return self


def _parse_ends(value: Any) -> Any:
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"{value!r} is not two node names; write h1:r1 or [h1, r1]")
        return [p.strip() for p in parts]
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"a link has two ends, got {len(value)}; write [h1, r1]")
        return list(value)
    raise ValueError(f"expected two node names like [h1, r1] or h1:r1, got {describe_value(value)}")


class Link(LinkParams):
    """A link between two nodes: ``ends``, its parameters, and per-direction overrides.

    ``from: {r1: {...}}`` overrides the direction in which ``r1`` sends. In the file a link
    is either a mapping with ``ends: [h1, r1]`` (or ``ends: h1:r1``) or, when it needs
    nothing but the defaults, just ``h1:r1`` or ``[h1, r1]``.
    """

    ends: Annotated[tuple[str, str], BeforeValidator(_parse_ends)]
    from_: Annotated[dict[str, LinkParams], BeforeValidator(_none_values_to_empty)] = Field(
        default_factory=dict, alias="from")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"ends": data} if isinstance(data, (str, list)) else data

    @property
    def label(self) -> str:
        return f"{self.ends[0]}-{self.ends[1]}"

    def other(self, node: str) -> str:
        return self.ends[1] if node == self.ends[0] else self.ends[0]


@dataclass(frozen=True)
class Shape:
    """One direction of a link with everything resolved: defaults < link < ``from.<src>``."""

    src: str
    dst: str
    mtu: int
    rate_mbit: float | None  # None: not rate-limited
    delay_ms: float
    jitter_ms: float
    loss: Loss
    queue_packets: int | None
    queue_bytes: int | None

    @property
    def queue_limit_bytes(self) -> int:
        """The limit for a byte-counting queue: ``queue_bytes``, or ``queue_packets`` full-sized
        Ethernet frames (mtu + 14 bytes each)."""
        if self.queue_bytes is not None:
            return self.queue_bytes
        return (self.queue_packets or 0) * (self.mtu + 14)


# --- nodes -------------------------------------------------------------------------------------

class SocketOptions(_Model):
    """Socket options; unset fields keep the stack's default (or the host's, for a flow)."""

    nodelay: bool | None = None  # TCP_NODELAY
    cork: bool | None = None  # TCP_CORK
    sndbuf: Bytes | None = Field(default=None, ge=1)  # SO_SNDBUF
    rcvbuf: Bytes | None = Field(default=None, ge=1)  # SO_RCVBUF
    congestion: str | None = None  # TCP_CONGESTION
    notsent_lowat: Bytes | None = Field(default=None, ge=0)  # TCP_NOTSENT_LOWAT
    maxseg: int | None = Field(default=None, ge=88, le=32767)  # TCP_MAXSEG (Linux's bounds)

    @field_validator("congestion")
    @classmethod
    def _congestion_name(cls, value: str | None) -> str | None:
        if value is not None and not CONGESTION_RE.match(value):
            raise ValueError(f"{value!r} is not a congestion control name like cubic or reno")
        return value

    def over(self, base: "SocketOptions") -> "SocketOptions":
        """These options on top of ``base`` (fields set here win)."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


_BOOLEAN_SYSCTLS = {"tcp_autocorking", "tcp_timestamps", "tcp_sack", "tcp_dsack",
                    "tcp_window_scaling", "tcp_slow_start_after_idle", "tcp_moderate_rcvbuf",
                    "tcp_workaround_signed_windows"}
_SYSCTL_RANGES = {"tcp_mtu_probing": (0, 2), "ip_no_pmtu_disc": (0, 3), "tcp_ecn": (0, 2),
                  "tcp_frto": (0, 2), "tcp_base_mss": (48, 65535), "tcp_min_snd_mss": (48, 65535),
                  "tcp_mtu_probe_floor": (48, 65535), "tcp_init_cwnd": (1, 65535)}


def _check_sysctls(value: Any) -> dict[str, Any]:
    """Kernel-named sysctls, checked with ``stack.sysctl.Sysctl``; keys become full names."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of sysctl names to values, got "
                         f"{describe_value(value)}")
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    errors = []
    probe = Sysctl()
    for name, val in value.items():
        if not isinstance(name, str):
            errors.append(((name,), f"{describe_value(name)} is not a sysctl name"))
            continue
        try:
            attr = key_to_field(name)
        except SysctlError:
            hint = difflib.get_close_matches(name, list(SYSCTL_KEYS), n=1, cutoff=0.6)
            errors.append(((name,), f"unknown sysctl {name!r}" +
                           (f"; did you mean {hint[0]}?" if hint else "")))
            continue
        full = field_to_key(attr)
        if full in given:
            errors.append(((name,), f"given twice (also as {given[full]})"))
            continue
        given[full] = name
        current = getattr(probe, attr)
        try:
            if val is None or isinstance(val, dict) or (
                    isinstance(val, list) and not isinstance(current, tuple)):
                raise SysctlError(name)
            probe.set(full, val)
        except SysctlError:
            want = ("three numbers like '4096 16384 4194304'" if isinstance(current, tuple)
                    else "a name" if isinstance(current, str) else "a whole number")
            errors.append(((name,), f"expected {want}, got {describe_value(val)}"))
            continue
        parsed = probe.get(full)
        if isinstance(parsed, int):
            lo, hi = (0, 1) if attr in _BOOLEAN_SYSCTLS else _SYSCTL_RANGES.get(attr, (0, None))
            if parsed < lo or (hi is not None and parsed > hi):
                span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                errors.append(((name,), f"{parsed} is out of range ({span})"))
                continue
        out[full] = parsed
    if errors:
        raise located(*errors)
    return out


Sysctls = Annotated[dict[str, Any], BeforeValidator(_check_sysctls)]


def _parse_addr(value: Any) -> Any:
    if value is None or isinstance(value, IPv4Interface):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an address like 10.0.1.2/24, got {describe_value(value)}")
    text = value.strip() if "/" in value else value.strip() + "/24"
    try:
        iface = IPv4Interface(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address like 10.0.1.2/24") from None
    net = iface.network
    if net.prefixlen > 30:
        raise ValueError(f"{value}: use a prefix of /30 or shorter")
    if iface.ip in (net.network_address, net.broadcast_address):
        which = "network" if iface.ip == net.network_address else "broadcast"
        raise ValueError(f"{value} is the {which} address of {net}; pick a host address")
    ip = iface.ip
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        raise ValueError(f"{value} is not a unicast address a host can use")
    return iface


class Host(_Model):
    """An end host: which TCP it runs, its address, sysctls and socket defaults."""

    stack: Literal["python", "linux"] = "python"
    addr: Annotated[IPv4Interface | None, BeforeValidator(_parse_addr)] = None
    sysctls: Sysctls = Field(default_factory=dict)
    socket: Annotated[SocketOptions, BeforeValidator(_none_to_empty)] = Field(
        default_factory=SocketOptions)


class Router(_Model):
    """An IPv4 router (``controller/router.py``): forwards, decrements TTL, answers oversized DF
    packets with ICMP fragmentation-needed and fragments the others, as its ICMP policy says."""

    icmp: Literal["send", "suppress", "ratelimit"] = "send"
    icmp_ratelimit_ms: int | None = Field(default=None, ge=1)
    mss_clamp: int | None = Field(default=None, ge=88, le=65495)  # rewrite the MSS of SYNs

    @model_validator(mode="after")
    def _ratelimit_needs_policy(self) -> "Router":
        if self.icmp_ratelimit_ms is not None and self.icmp != "ratelimit":
            raise located((("icmp_ratelimit_ms",), "only applies with icmp: ratelimit "
                                                   f"(this router has icmp: {self.icmp})"))
        return self

    @property
    def ratelimit_ms(self) -> int | None:
        """Minimum interval between ICMP errors; Linux's net.ipv4.icmp_ratelimit default, 1000."""
        if self.icmp != "ratelimit":
            return None
        return self.icmp_ratelimit_ms if self.icmp_ratelimit_ms is not None else 1000


class Switch(_Model):
    """A plain learning L2 switch (no spanning tree: switches must not form a loop)."""


class StaticRoute(_Model):
    """``to`` (a prefix, ``default`` or a node name) via a neighbouring router."""

    to: str
    via: str

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        if value == "default" or NODE_NAME_RE.match(value):
            return value
        try:
            IPv4Network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a prefix like 10.0.3.0/24, default, "
                             "or a node name") from None
        return value

    def prefixes(self, plan: "AddressPlan") -> list[IPv4Network]:
        if self.to == "default":
            return [IPv4Network("0.0.0.0/0")]
        if NODE_NAME_RE.match(self.to):
            return [i.addr.network for i in plan.interfaces.get(self.to, ()) if i.addr is not None]
        return [IPv4Network(self.to)]


# --- traffic -----------------------------------------------------------------------------------

class Bulk(_Model):
    """Send ``bytes`` as fast as the socket takes them."""

    bytes: Bytes = Field(ge=1)


def _parse_msg_more(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value < 2:
            raise ValueError(f"msg_more {value}: give true, false, or a group size of 2 or more")
        return value
    raise ValueError(f"expected true, false or a group size, got {describe_value(value)}")


class Writes(_Model):
    """``count`` writes of ``size`` bytes, one every ``interval_ms`` (0: back to back).

    ``msg_more``: false: no flag; true: MSG_MORE on every write (the last one too); N: writes
    go in groups of N, MSG_MORE on all but the last of each group (2: header, then body).
    """

    count: int = Field(ge=1)
    size: Bytes = Field(ge=1)
    interval_ms: float = Field(default=0.0, ge=0)
    msg_more: Annotated[bool | int, BeforeValidator(_parse_msg_more)] = False

    def has_msg_more(self, i: int) -> bool:
        """Whether write ``i`` (0-based) carries MSG_MORE."""
        if isinstance(self.msg_more, bool):
            return self.msg_more
        return (i + 1) % self.msg_more != 0


class RequestResponse(_Model):
    """``count`` exchanges: ``from`` writes a request, ``to`` answers; ``think_ms`` between."""

    count: int = Field(ge=1)
    request_bytes: Bytes = Field(ge=1)
    response_bytes: Bytes = Field(ge=1)
    think_ms: float = Field(default=0.0, ge=0)


_KINDS = ("bulk", "writes", "request_response")


class Flow(_Model):
    """A TCP connection from ``from`` (it connects and sends) to ``to`` (it listens on port)."""

    name: str
    from_: str = Field(alias="from")
    to: str
    port: int = Field(ge=1, le=65535)
    start_ms: float = Field(default=0.0, ge=0)
    bulk: Bulk | None = None
    writes: Writes | None = None
    request_response: RequestResponse | None = None
    socket: Annotated[SocketOptions, BeforeValidator(_none_to_empty)] = Field(
        default_factory=SocketOptions)
    peer_socket: Annotated[SocketOptions, BeforeValidator(_none_to_empty)] = Field(
        default_factory=SocketOptions)
    sysctls: Sysctls = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FLOW_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid flow name: up to 32 lowercase letters, "
                             "digits, '-' or '_', starting with a letter")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "Flow":
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise located(((given[1],) if len(given) > 1 else (),
                           f"give exactly one of bulk, writes, request_response (got {what})"))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    @property
    def pattern(self) -> Bulk | Writes | RequestResponse:
        return getattr(self, self.kind)


class RunLimits(_Model):
    """When a run ends: after ``duration_s``, or when a flow makes no progress (no new data
    acknowledged while it has data to send) for ``stall_timeout_s``."""

    duration_s: float = Field(default=60.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)


# --- derived: interfaces, addresses, routes ----------------------------------------------------

@dataclass(frozen=True)
class Interface:
    node: str
    index: int  # N in <node>-eth<N>: the node's links in the order of ``links``
    name: str
    link: int  # index into Topology.links
    peer: str  # the node at the other end of the link
    addr: IPv4Interface | None  # None on switch ports
    segment: int  # index into AddressPlan.segments


@dataclass(frozen=True)
class Segment:
    """One IPv4 subnet: a link between two routers/hosts, or a LAN of switches and what hangs
    off them."""

    index: int
    subnet: IPv4Network | None  # None for a LAN with nothing but switches
    links: tuple[int, ...]
    members: tuple[tuple[str, str], ...]  # (node, interface name) of hosts and routers on it


@dataclass(frozen=True)
class AddressPlan:
    interfaces: dict[str, tuple[Interface, ...]]
    segments: tuple[Segment, ...]

    def addr(self, node: str) -> IPv4Address:
        """The node's first address (a host has exactly one)."""
        for iface in self.interfaces[node]:
            if iface.addr is not None:
                return iface.addr.ip
        raise KeyError(f"{node} has no address")

    def interface(self, node: str, link: int) -> Interface:
        return next(i for i in self.interfaces[node] if i.link == link)


@dataclass(frozen=True)
class Route:
    prefix: IPv4Network
    dev: str  # out interface name
    via: IPv4Address | None  # None: directly connected
    via_node: str | None = None
    static: bool = False  # given in the file's ``routes``

    def __str__(self) -> str:
        via = f" via {self.via} ({self.via_node})" if self.via else ""
        return f"{self.prefix} dev {self.dev}{via}"


def assign_addresses(topo: "Topology") -> AddressPlan:
    """Interfaces and addresses of a validated topology (see the README for the rules)."""
    return topo.address_plan()


def compute_routes(topo: "Topology") -> dict[str, list[Route]]:
    """Per host and router: connected, shortest-path and static routes (see the README)."""
    return topo.route_tables()


# --- the topology ------------------------------------------------------------------------------

class Topology(_Model):
    """A whole topology file. Validating one also cross-checks it and derives its address plan
    and routes; a ``Topology`` that exists is consistent."""

    name: str
    description: str = ""
    seed: int = Field(default=1, ge=0)
    defaults: Annotated[LinkParams, BeforeValidator(_none_to_empty)] = Field(
        default_factory=LinkParams)
    hosts: Annotated[dict[str, Host], BeforeValidator(_none_values_to_empty)]
    routers: Annotated[dict[str, Router], BeforeValidator(_none_values_to_empty)] = Field(
        default_factory=dict)
    switches: Annotated[dict[str, Switch], BeforeValidator(_none_values_to_empty)] = Field(
        default_factory=dict)
    links: list[Link]
    routes: Annotated[dict[str, list[StaticRoute]], BeforeValidator(_none_values_to_list)] = Field(
        default_factory=dict)
    traffic: list[Flow] = Field(default_factory=list)
    run: Annotated[RunLimits, BeforeValidator(_none_to_empty)] = Field(default_factory=RunLimits)
    # Which worker builds each node when the run is split over machines (``--workers``); the
    # worker names are checked against the workers file by ``testbed.split``.
    placement: Annotated[dict[str, str], BeforeValidator(_none_to_empty)] = Field(
        default_factory=dict)

    _plan: AddressPlan | None = PrivateAttr(default=None)
    _routes: dict[str, list[Route]] | None = PrivateAttr(default=None)
    _source: Source | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOPOLOGY_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid name: up to 40 lowercase letters, digits, "
                             "'-' or '_', starting with a letter")
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_flow_names_and_ports(cls, data: Any) -> Any:
        """Flows without a name are flow1, flow2...; without a port, the next free one from 5001."""
        if not isinstance(data, dict) or not isinstance(data.get("traffic"), list):
            return data
        flows = data["traffic"]
        taken = {f.get("port") for f in flows if isinstance(f, dict)}
        port = FIRST_PORT
        filled = []
        for i, flow in enumerate(flows):
            if isinstance(flow, dict):
                flow = dict(flow)
                flow.setdefault("name", f"flow{i + 1}")
                if "port" not in flow:
                    while port in taken:
                        port += 1
                    flow["port"] = port
                    taken.add(port)
            filled.append(flow)
        return {**data, "traffic": filled}

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> "Topology":
        source = (info.context or {}).get("source") if info else None
        errors, plan, routes = _Checker(self, source).run()
        if errors:
            raise located(*errors)
        self._plan = plan
        self._routes = routes
        return self

    # --- lookups ---

    def kind(self, node: str) -> str:
        """'host', 'router' or 'switch'."""
        if node in self.hosts:
            return "host"
        if node in self.routers:
            return "router"
        if node in self.switches:
            return "switch"
        raise KeyError(node)

    @property
    def nodes(self) -> list[str]:
        return [*self.hosts, *self.routers, *self.switches]

    def links_of(self, node: str) -> list[int]:
        return [i for i, link in enumerate(self.links) if node in link.ends]

    def shape(self, link: int | Link, src: str) -> Shape:
        """The direction of ``link`` in which ``src`` sends: defaults < link < ``from.<src>``."""
        lk = self.links[link] if isinstance(link, int) else link
        if src not in lk.ends:
            raise ValueError(f"{src} is not an end of link {lk.label}")
        values = dict(LINK_DEFAULTS)
        for layer in (self.defaults, lk, lk.from_.get(src)):
            if layer is None:
                continue
            given = {k: getattr(layer, k) for k in LinkParams.model_fields
                     if getattr(layer, k) is not None}
            if "queue_packets" in given or "queue_bytes" in given:
                values["queue_packets"] = values["queue_bytes"] = None
            values.update(given)
        loss = values["loss"]
        if not isinstance(loss, Loss):
            loss = Loss(bernoulli=float(loss))
        rate = values["rate_mbit"]
        return Shape(src=src, dst=lk.other(src), mtu=values["mtu"],
                     rate_mbit=float(rate) if rate else None, delay_ms=float(values["delay_ms"]),
                     jitter_ms=float(values["jitter_ms"]), loss=loss,
                     queue_packets=values["queue_packets"], queue_bytes=values["queue_bytes"])

    def address_plan(self) -> AddressPlan:
        assert self._plan is not None, "a Topology is validated before use"
        return self._plan

    def route_tables(self) -> dict[str, list[Route]]:
        assert self._routes is not None, "a Topology is validated before use"
        return self._routes

    def socket_options(self, flow: Flow, side: Literal["from", "to"] = "from") -> SocketOptions:
        """The options a flow's socket gets: the host's defaults, then the flow's."""
        if side == "from":
            return flow.socket.over(self.hosts[flow.from_].socket)
        return flow.peer_socket.over(self.hosts[flow.to].socket)

    def host_sysctls(self, host: str) -> dict[str, Any]:
        """A host's sysctls: its own, then those of the flows it sends (they cannot conflict)."""
        out = dict(self.hosts[host].sysctls)
        for flow in self.traffic:
            if flow.from_ == host:
                out.update(flow.sysctls)
        return out

    def error(self, loc: Sequence, message: str) -> TopologyError:
        """A :class:`TopologyError` at ``loc``, with its line when the topology came from a file."""
        source = self._source or Source(f"<topology {self.name}>")
        return source.error(tuple(loc), message, TopologyError)


# --- cross-checks ------------------------------------------------------------------------------

_SECTIONS = (("hosts", "host"), ("routers", "router"), ("switches", "switch"))


class _Checker:
    """Cross-field checks, in stages: each stage runs only if the previous ones passed."""

    def __init__(self, topo: Topology, source: Source | None) -> None:
        self.t = topo
        self.source = source
        self.errors: list[tuple[tuple, str]] = []

    def err(self, loc: tuple, message: str) -> None:
        self.errors.append((loc, message))

    def at_line(self, loc: tuple) -> str:
        if self.source is None:
            return ""
        line = self.source.line_of(loc)
        return f" (line {line})" if line else ""

    def run(self):
        for stage in (self.names, self.references, self.wiring):
            stage()
            if self.errors:
                return self.errors, None, None
        plan = self.addresses()
        if self.errors:
            return self.errors, None, None
        routes = self.routing(plan)
        if self.errors:
            return self.errors, None, None
        self.flows(plan, routes)
        return self.errors, plan, routes

    # stage 1: names
    def names(self) -> None:
        seen: dict[str, str] = {}
        for section, kind in _SECTIONS:
            for name in getattr(self.t, section):
                loc = (section, name)
                if not NODE_NAME_RE.match(name):
                    self.err(loc, f"{name!r} is not a valid node name: 1 to 8 lowercase letters or "
                                  f"digits, starting with a letter (it becomes part of interface "
                                  f"names like h1-eth0)")
                elif name in seen:
                    self.err(loc, f"the name {name!r} is already used by {seen[name]}.{name}"
                                  f"{self.at_line((seen[name], name))}; node names are unique")
                else:
                    seen[name] = section
        if not self.t.hosts:
            self.err(("hosts",), "a topology needs at least one host")
        flow_names: dict[str, int] = {}
        for i, flow in enumerate(self.t.traffic):
            if flow.name in flow_names:
                j = flow_names[flow.name]
                self.err(("traffic", i, "name"), f"flow name {flow.name!r} is already used by "
                                                 f"traffic[{j}]{self.at_line(('traffic', j))}")
            flow_names[flow.name] = i

    def _unknown(self, name: str, pool: list[str], what: str) -> str:
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {what} {name!r}; {hint}{what}s are: {', '.join(sorted(pool)) or 'none'}"

    # stage 2: references to nodes
    def references(self) -> None:
        t = self.t
        nodes = t.nodes
        for i, link in enumerate(t.links):
            for j, end in enumerate(link.ends):
                if end not in nodes:
                    self.err(("links", i, "ends", j), self._unknown(end, nodes, "node"))
            if link.ends[0] == link.ends[1]:
                self.err(("links", i, "ends"),
                         f"both ends are {link.ends[0]}; a link joins two nodes")
            for node in link.from_:
                if node not in link.ends:
                    self.err(("links", i, "from", node),
                             f"{node!r} is not an end of this link "
                             f"({link.ends[0]}, {link.ends[1]})")
        for node, worker in t.placement.items():
            if node not in nodes:
                self.err(("placement", node), self._unknown(node, nodes, "node"))
            elif not isinstance(worker, str) or not re.fullmatch(
                    r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", worker):
                self.err(("placement", node), f"{worker!r} is not a worker name")
        l3 = [*t.hosts, *t.routers]
        for node, entries in t.routes.items():
            if node not in l3:
                what = ("a switch, which does not route" if node in t.switches
                        else "not a host or router")
                self.err(("routes", node), f"{node!r} is {what}" if node in nodes
                         else self._unknown(node, l3, "node"))
                continue
            for k, route in enumerate(entries):
                if NODE_NAME_RE.match(route.to) and route.to != "default" and route.to not in l3:
                    self.err(("routes", node, k, "to"), self._unknown(route.to, l3, "node"))
                if route.via not in t.routers:
                    if route.via in nodes:
                        what = (f"{route.via!r} is a {t.kind(route.via)}; "
                                "the next hop must be a router")
                    else:
                        what = self._unknown(route.via, list(t.routers), "router")
                    self.err(("routes", node, k, "via"), what)
        for i, flow in enumerate(t.traffic):
            for field, name in (("from", flow.from_), ("to", flow.to)):
                if name not in t.hosts:
                    msg = (f"{name!r} is a {t.kind(name)}; flows run between hosts" if name in nodes
                           else self._unknown(name, list(t.hosts), "host"))
                    self.err(("traffic", i, field), msg)
            if flow.from_ == flow.to:
                self.err(("traffic", i, "to"),
                         f"a flow needs two different hosts (both are {flow.to})")

    # stage 3: who is wired to what
    def wiring(self) -> None:
        t = self.t
        for section, kind in _SECTIONS:
            for name in getattr(t, section):
                links = t.links_of(name)
                if not links:
                    self.err((section, name), f"{name} is not connected to anything; add a link "
                                              f"or remove it")
                elif kind == "host" and len(links) > 1:
                    where = ", ".join(f"links[{i}]" for i in links)
                    self.err(("links", links[1], "ends"),
                             f"host {name} is already linked by links[{links[0]}]; a host has one "
                             f"interface (its links: {where}); put a switch in between for a LAN")
        # switches must not form a loop: union-find over switch-to-switch links
        parent = {s: s for s in t.switches}

        def find(s: str) -> str:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s

        for i, link in enumerate(t.links):
            a, b = link.ends
            if a in t.switches and b in t.switches:
                ra, rb = find(a), find(b)
                if ra == rb:
                    self.err(("links", i), f"this link closes a loop of switches through {a} and "
                                           f"{b}; plain switches have no spanning tree")
                else:
                    parent[ra] = rb

    # stage 4: segments and addresses
    def addresses(self) -> AddressPlan:
        t = self.t
        # Segments: links that share a switch are one LAN; any other link is its own subnet.
        group = list(range(len(t.links)))

        def find(i: int) -> int:
            while group[i] != i:
                group[i] = group[group[i]]
                i = group[i]
            return i

        by_switch: dict[str, int] = {}
        for i, link in enumerate(t.links):
            for end in link.ends:
                if end in t.switches:
                    if end in by_switch:
                        ra, rb = find(i), find(by_switch[end])
                        group[max(ra, rb)] = min(ra, rb)
                    else:
                        by_switch[end] = i
        seg_links: dict[int, list[int]] = {}
        for i in range(len(t.links)):
            seg_links.setdefault(find(i), []).append(i)
        segs = sorted(seg_links.values())
        seg_of_link = {i: n for n, links in enumerate(segs) for i in links}

        # Interface numbering: a node's links in file order.
        if_index: dict[tuple[str, int], int] = {}
        counters: dict[str, int] = {}
        for i, link in enumerate(t.links):
            for end in link.ends:
                if_index[(end, i)] = counters.get(end, 0)
                counters[end] = counters.get(end, 0) + 1

        # L3 members of each segment; a router may have only one interface per segment.
        members: list[list[tuple[str, int]]] = []
        for n, links in enumerate(segs):
            seen: dict[str, int] = {}
            mem = []
            for i in links:
                for end in t.links[i].ends:
                    if end in t.switches:
                        continue
                    if end in seen:
                        self.err(("links", i, "ends"),
                                 f"{end} already has an interface on this LAN (links[{seen[end]}])")
                        continue
                    seen[end] = i
                    mem.append((end, i))
            members.append(mem)
        if self.errors:
            return None  # type: ignore[return-value]

        # Explicit addresses fix their segment's subnet.
        explicit: dict[int, IPv4Network] = {}
        owner_of_net: dict[int, str] = {}
        used_ips: dict[IPv4Address, str] = {}
        for n, mem in enumerate(members):
            for node, i in mem:
                host = t.hosts.get(node)
                if host is None or host.addr is None:
                    continue
                loc = ("hosts", node, "addr")
                if host.addr.ip in used_ips:
                    self.err(loc, f"{host.addr.ip} is already the address of "
                                  f"{used_ips[host.addr.ip]}")
                    continue
                used_ips[host.addr.ip] = node
                if n in explicit and host.addr.network != explicit[n]:
                    self.err(loc, f"{host.addr} is not in {explicit[n]}, the subnet of "
                                  f"{owner_of_net[n]} on the same link or LAN")
                    continue
                if n not in explicit:
                    for m, net in explicit.items():
                        if net.overlaps(host.addr.network):
                            self.err(loc, f"{host.addr.network} overlaps {net}, the subnet of "
                                          f"{owner_of_net[m]}, which is on another link")
                            break
                    else:
                        explicit[n] = host.addr.network
                        owner_of_net[n] = node
        if self.errors:
            return None  # type: ignore[return-value]

        # Automatic /24s from 10.0.1.0 up, in segment order, skipping explicit subnets.
        candidates = AUTO_SUBNETS.subnets(new_prefix=24)
        next(candidates)  # 10.0.0.0/24 stays free: a net of its own looks like a typo
        subnets: list[IPv4Network | None] = []
        for n, mem in enumerate(members):
            if not mem:
                subnets.append(None)
            elif n in explicit:
                net = explicit[n]
                room = net.num_addresses - 2
                if len(mem) > room:
                    self.err(("hosts", owner_of_net[n], "addr"),
                             f"{net} has room for {room} addresses, but {len(mem)} nodes share it")
                subnets.append(net)
            else:
                for net in candidates:
                    if not any(net.overlaps(e) for e in explicit.values()):
                        subnets.append(net)
                        break
                else:
                    self.err(("links",), "ran out of automatic subnets in 10.0.0.0/8")
                    return None  # type: ignore[return-value]
        if self.errors:
            return None  # type: ignore[return-value]

        # Addresses in a segment: explicit first, then routers by name, then hosts by name.
        addr_of: dict[tuple[str, int], IPv4Interface] = {}
        for n, mem in enumerate(members):
            net = subnets[n]
            if net is None:
                continue
            taken = set()
            for node, i in mem:
                host = t.hosts.get(node)
                if host is not None and host.addr is not None:
                    addr_of[(node, i)] = host.addr
                    taken.add(host.addr.ip)
            order = sorted((m for m in mem if m not in addr_of),
                           key=lambda m: (m[0] not in t.routers, m[0]))
            free = (ip for ip in net.hosts() if ip not in taken)
            for node, i in order:
                addr_of[(node, i)] = IPv4Interface(f"{next(free)}/{net.prefixlen}")

        interfaces: dict[str, list[Interface]] = {name: [] for name in t.nodes}
        for i, link in enumerate(t.links):
            for end in link.ends:
                k = if_index[(end, i)]
                interfaces[end].append(Interface(
                    node=end, index=k, name=f"{end}-eth{k}", link=i, peer=link.other(end),
                    addr=addr_of.get((end, i)), segment=seg_of_link[i]))
        segments = tuple(
            Segment(index=n, subnet=subnets[n], links=tuple(segs[n]),
                    members=tuple((node, f"{node}-eth{if_index[(node, i)]}") for node, i in mem))
            for n, mem in enumerate(members))
        return AddressPlan(interfaces={k: tuple(v) for k, v in interfaces.items()},
                           segments=segments)

    # stage 5: routes
    def routing(self, plan: AddressPlan) -> dict[str, list[Route]]:
        t = self.t
        l3 = [*t.hosts, *t.routers]
        seg_ifaces: dict[int, list[Interface]] = {}
        for node in l3:
            for iface in plan.interfaces[node]:
                seg_ifaces.setdefault(iface.segment, []).append(iface)
        # Hop distance from every router to every segment, over routers only (hosts don't forward).
        dist: dict[int, dict[str, int]] = {}
        for seg in plan.segments:
            if seg.subnet is None:
                continue
            d: dict[str, int] = {}
            queue = deque()
            for iface in seg_ifaces.get(seg.index, []):
                if iface.node in t.routers:
                    d[iface.node] = 0
                    queue.append(iface.node)
            while queue:
                r = queue.popleft()
                for iface in plan.interfaces[r]:
                    for other in seg_ifaces.get(iface.segment, []):
                        if other.node in t.routers and other.node not in d:
                            d[other.node] = d[r] + 1
                            queue.append(other.node)
            dist[seg.index] = d

        routes: dict[str, list[Route]] = {}
        for node in l3:
            mine = [i for i in plan.interfaces[node] if i.addr is not None]
            attached = {i.segment for i in mine}
            table: dict[IPv4Network, Route] = {}
            for iface in mine:
                table[iface.addr.network] = Route(iface.addr.network, iface.name, None)
            for seg in plan.segments:
                if seg.subnet is None or seg.index in attached:
                    continue
                best = None
                for iface in mine:
                    for nb in seg_ifaces.get(iface.segment, []):
                        if nb.node == node or nb.node not in t.routers:
                            continue
                        hops = dist[seg.index].get(nb.node)
                        if hops is None:
                            continue
                        key = (hops, nb.node, iface.segment)
                        if best is None or key < best[0]:
                            best = (key, iface, nb)
                if best is not None:
                    _, iface, nb = best
                    table[seg.subnet] = Route(seg.subnet, iface.name, nb.addr.ip, nb.node)
            for k, static in enumerate(t.routes.get(node, [])):
                loc = ("routes", node, k)
                shared = [(iface, nb) for iface in mine for nb in seg_ifaces.get(iface.segment, [])
                          if nb.node == static.via]
                if not shared:
                    self.err(loc + ("via",), f"{static.via} is not a neighbour of {node} "
                                             "(they share no link or LAN)")
                    continue
                iface, nb = shared[0]
                prefixes = static.prefixes(plan)
                for prefix in prefixes:
                    if prefix in table and table[prefix].via is None:
                        self.err(loc + ("to",), f"{prefix} is directly connected to {node}; a "
                                                f"static route cannot replace it")
                        break
                    table[prefix] = Route(prefix, iface.name, nb.addr.ip, nb.node, static=True)
            connected = [r for r in table.values() if r.via is None]
            others = sorted((r for r in table.values() if r.via is not None),
                            key=lambda r: (int(r.prefix.network_address), r.prefix.prefixlen))
            routes[node] = connected + others
        return routes

    # stage 6: traffic
    def flows(self, plan: AddressPlan, routes: dict[str, list[Route]]) -> None:
        t = self.t
        ports: dict[tuple[str, int], int] = {}
        host_sysctls: dict[str, dict[str, tuple[int, Any]]] = {}
        for i, flow in enumerate(t.traffic):
            key = (flow.to, flow.port)
            if key in ports:
                j = ports[key]
                self.err(("traffic", i, "port"),
                         f"port {flow.port} on {flow.to} is already used by "
                         f"traffic[{j}] ({t.traffic[j].name})")
            ports[key] = i
            for a, b, field in ((flow.from_, flow.to, "to"), (flow.to, flow.from_, "to")):
                problem = _trace(t, plan, routes, a, plan.addr(b))
                if problem:
                    self.err(("traffic", i, field), f"{b} cannot be reached from {a}: {problem}")
                    break
            seen = host_sysctls.setdefault(flow.from_, {})
            for name, value in flow.sysctls.items():
                if name in seen and seen[name][1] != value:
                    j = seen[name][0]
                    self.err(("traffic", i, "sysctls", name),
                             f"traffic[{j}] ({t.traffic[j].name}) sets it to {seen[name][1]} "
                             f"on the same host {flow.from_}; sysctls apply to the whole host")
                seen.setdefault(name, (i, value))
        # Congestion control names the python stack knows.
        known = ", ".join(sorted(ALGORITHMS))
        for name, host in t.hosts.items():
            if host.stack != "python":
                continue
            cc = host.sysctls.get("net.ipv4.tcp_congestion_control")
            if cc is not None and cc not in ALGORITHMS:
                self.err(("hosts", name, "sysctls", "net.ipv4.tcp_congestion_control"),
                         f"the python stack has no {cc!r} (it has {known})")
            if host.socket.congestion and host.socket.congestion not in ALGORITHMS:
                self.err(("hosts", name, "socket", "congestion"),
                         f"the python stack has no {host.socket.congestion!r} (it has {known})")
        for i, flow in enumerate(t.traffic):
            for field, node, opts in (("socket", flow.from_, flow.socket),
                                      ("peer_socket", flow.to, flow.peer_socket)):
                cc = opts.congestion
                if t.hosts[node].stack == "python" and cc and cc not in ALGORITHMS:
                    self.err(("traffic", i, field, "congestion"),
                             f"{node} runs the python stack, which has no {opts.congestion!r} "
                             f"(it has {known})")
            cc = flow.sysctls.get("net.ipv4.tcp_congestion_control")
            if cc is not None and t.hosts[flow.from_].stack == "python" and cc not in ALGORITHMS:
                self.err(("traffic", i, "sysctls", "net.ipv4.tcp_congestion_control"),
                         f"the python stack has no {cc!r} (it has {known})")


def _lookup(table: list[Route], ip: IPv4Address) -> Route | None:
    best = None
    for route in table:
        if ip in route.prefix and (best is None or route.prefix.prefixlen > best.prefix.prefixlen):
            best = route
    return best


def _trace(t: Topology, plan: AddressPlan, routes: dict[str, list[Route]], src: str,
           dst: IPv4Address) -> str | None:
    """Follow the routing tables from ``src`` towards ``dst``; None if it arrives, else why not.

    Next hops are always routers (computed routes use routers only, static ones are checked),
    so a packet never transits a host.
    """
    node = src
    path = [src]
    while True:
        if any(i.addr is not None and i.addr.ip == dst for i in plan.interfaces[node]):
            return None
        route = _lookup(routes[node], dst)
        if route is None:
            return f"{node} has no route to {dst}"
        if route.via is None:  # connected: the destination is on that subnet (addresses are ours)
            return None
        node = route.via_node
        if node in path:
            return f"routing loop {' -> '.join(path + [node])}"
        path.append(node)


# --- loading and backends ----------------------------------------------------------------------

def load_topology(path: str | Path, overrides: Sequence[str] = ()) -> Topology:
    """Read, override (``PATH=VALUE`` strings, as ``--set``), validate and cross-check a topology.

    Raises :class:`TopologyError` (one line: ``FILE:LINE: PATH: message``; ``.errors`` has them
    all) before anything is started.
    """
    topo, source = load_model(path, Topology, overrides, cls=TopologyError, what="topology",
                              prepare=_expand_shorthands)
    topo._source = source
    return topo


def _expand_shorthands(data: Any) -> Any:
    """``- h1:r1`` -> ``- {ends: h1:r1}``, so that ``--set links.0.mtu=...`` can reach it."""
    if isinstance(data, dict) and isinstance(data.get("links"), list):
        data["links"] = [{"ends": item} if isinstance(item, (str, list)) else item
                         for item in data["links"]]
    return data


BACKENDS = ("sim", "mininet")


def require_backend(topo: Topology, backend: str) -> None:
    """Raise :class:`TopologyError` if ``backend`` cannot run this topology.

    The ``sim`` backend runs only sendlab's own stack: a host with ``stack: linux`` needs the
    kernel's TCP, which only the emulated (mininet) backend has.
    """
    if backend not in BACKENDS:
        raise TopologyError("--backend", None, "", f"unknown backend {backend!r}; "
                                                   f"use {' or '.join(BACKENDS)}")
    if backend == "sim":
        for name, host in topo.hosts.items():
            if host.stack == "linux":
                raise topo.error(("hosts", name, "stack"),
                                 "stack linux (the kernel's TCP) needs the emulated backend "
                                 "(--backend mininet); the sim backend runs only stack python")
