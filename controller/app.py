"""The SDN controller app: Open vSwitch bridges as IPv4 routers (os-ken, or ryu 4.34).

Each router is one OVS bridge (OpenFlow 1.3), described in a JSON file (see
:func:`parse_config`). The switch forwards what it can decide alone; everything else comes
to the controller as a packet-in and is decided by :class:`controller.router.Router`, the
same pure logic the ``sim`` backend runs, so both backends behave the same.

Tables (:func:`plan_static_flows`, :func:`plan_route_flows`):

0. classify: ARP -> controller (answered for the port addresses, neighbours learned);
   IPv4 in on port P addressed to P's MAC -> table 1; anything else dropped.
1. input: what only the controller decides -> controller: to a router address or a
   broadcast, martian addresses, TTL <= 1 (ICMP time exceeded), TCP SYNs when an MSS
   clamp is set; the rest -> table 2.
2. routes, longest prefix first (priority 100 + 2 * prefixlen, + 1 for configured routes so
   they win a tie, as in Router): rewrite the MACs, put the egress port in reg2, then
   ``check_pkt_larger(egress MTU + 14)->reg0[0]`` (OVS compares the L2 frame length, so
   14 for the Ethernet header) -> table 3. Neighbours on connected subnets get /32 flows;
   a route whose next hop has no known MAC, and the miss (no route), go to the controller.
3. egress: reg0[0] = 1 (too big) -> controller, which answers as Router.decide says
   (ICMP frag-needed with the egress MTU from the port address facing the source, fragments
   when DF is clear, nothing in a black hole); else dec_ttl, output reg2's port.

The packet reaches the controller before dec_ttl, so Router.decide sees it as received.
The ICMP policy lives in the Router and can change at run time (controller/rest.py).

Left out: neighbour entries never expire, and an unanswered ARP gives no ICMP host
unreachable (queued packets are dropped when the queue is full).
"""

from __future__ import annotations

import collections
import importlib
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from controller.nx_check_pkt_larger import action_class
from controller.router import (
    ICMP_POLICIES,
    IP_MIN_MTU,
    Drop,
    Forward,
    PortConfig,
    Route,
    Router,
    RouterConfig,
)
from stack.wire import (
    BROADCAST_MAC,
    ETH_P_ARP,
    ETH_P_IP,
    ARPOP_REPLY,
    ARPOP_REQUEST,
    MalformedPacket,
    build_arp_reply,
    build_arp_request,
    bytes_to_ip,
    bytes_to_mac,
    decode_arp,
    decode_ethernet,
    encode_ethernet,
    ip_to_bytes,
    mac_to_bytes,
)

log = logging.getLogger("sendlab.controller")

ETH_HLEN = 14  # check_pkt_larger compares the L2 frame length: Ethernet header, no FCS
TABLE_CLASSIFY, TABLE_INPUT, TABLE_ROUTE, TABLE_EGRESS = 0, 1, 2, 3
REG_TOO_BIG = "reg0"   # bit 0: check_pkt_larger's verdict
REG_EGRESS = "reg2"    # the egress OpenFlow port chosen in TABLE_ROUTE
PENDING_PER_NEIGHBOUR = 100  # packets held while ARP resolves (Linux unres_qlen is ~100)
ARP_RETRY_S = 1.0

# Counters the controller keeps beside the Router's (COUNTERS); REST shows both, flat.
CONTROLLER_COUNTERS = (
    "packet_in", "packet_out", "arp_requests_sent", "arp_replies_sent", "neighbours_learned",
    "neighbour_queue_dropped", "unknown_port", "switch_errors",
)


class ConfigError(ValueError):
    """A controller config is invalid; the message names the file and the field."""


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True, slots=True)
class PortSpec:
    ofport: int
    name: str
    ip: str
    prefixlen: int
    mac: str
    mtu: int
    neighbours: tuple[tuple[str, str], ...] = ()  # static (ip, mac)

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.ip}/{self.prefixlen}")


@dataclass(frozen=True, slots=True)
class RouterSpec:
    name: str
    dpid: int
    ports: tuple[PortSpec, ...]
    routes: tuple[Route, ...] = ()
    icmp_policy: str = "send"
    icmp_ratelimit_ms: int = 1000
    mss_clamp: int | None = None

    def router_config(self) -> RouterConfig:
        return RouterConfig(
            self.name, [PortConfig(p.name, p.ip, p.prefixlen, p.mtu) for p in self.ports],
            list(self.routes), icmp_policy=self.icmp_policy,
            icmp_ratelimit_ms=self.icmp_ratelimit_ms, mss_clamp=self.mss_clamp)

    def port(self, name: str) -> PortSpec:
        return next(p for p in self.ports if p.name == name)


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    routers: tuple[RouterSpec, ...]

    def by_dpid(self) -> dict[int, RouterSpec]:
        return {r.dpid: r for r in self.routers}


_ROUTER_KEYS = {"name", "dpid", "ports", "routes", "icmp_policy", "icmp_ratelimit_ms",
                "mss_clamp"}
_PORT_KEYS = {"name", "ip", "mac", "mtu", "neighbours"}
_ROUTE_KEYS = {"prefix", "port", "via"}


def _no_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ConfigError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def load_config(path: str) -> ControllerConfig:
    """Read and validate a controller config file (JSON)."""
    try:
        with open(path) as f:
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
    except OSError as exc:
        raise ConfigError(f"sendlab: {path}: {exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"sendlab: {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"sendlab: {path}:{exc.lineno}: {exc.msg}") from None
    return parse_config(data, source=path)


def parse_config(data, source: str = "<config>") -> ControllerConfig:
    """Validate a decoded config; errors read ``sendlab: FILE: routers[0].ports.1.mtu: ...``.

    ::

        {"routers": [{
            "name": "r1", "dpid": 1,                 # int, or hex string "0x1" / "000...01"
            "ports": {"1": {"name": "r1-eth1",       # key: the OpenFlow port number
                            "ip": "10.0.1.1/24", "mac": "02:00:00:00:01:01", "mtu": 1500,
                            "neighbours": {"10.0.1.2": "02:00:00:00:00:02"}}},  # optional
            "routes": [{"prefix": "10.9.0.0/16", "port": "r1-eth2", "via": "10.0.2.2"}],
            "icmp_policy": "send", "icmp_ratelimit_ms": 1000, "mss_clamp": null}]}

    ``mac`` defaults to 02:5e:<dpid low 16 bits>:<ofport 16 bits>, ``mtu`` to 1500,
    ``icmp_policy`` to "send" (or "suppress": the PMTU black hole, or "ratelimit").
    """
    def fail(where: str, msg: str):
        raise ConfigError(f"sendlab: {source}: {where}: {msg}")

    if not isinstance(data, dict) or set(data) != {"routers"}:
        fail("top level", 'expected an object with one key, "routers"')
    if not isinstance(data["routers"], list) or not data["routers"]:
        fail("routers", "expected a non-empty list")
    routers, names, dpids = [], set(), set()
    for i, r in enumerate(data["routers"]):
        where = f"routers[{i}]"
        spec = _parse_router(r, where, fail)
        if spec.name in names:
            fail(f"{where}.name", f"router {spec.name!r} appears twice")
        if spec.dpid in dpids:
            fail(f"{where}.dpid", f"datapath id {spec.dpid:#x} appears twice")
        names.add(spec.name)
        dpids.add(spec.dpid)
        routers.append(spec)
    return ControllerConfig(tuple(routers))


def _check_keys(obj, allowed: set, where: str, fail, required=()) -> None:
    if not isinstance(obj, dict):
        fail(where, "expected an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj:
            fail(where, f"missing {key!r}")


def _int(value, where: str, fail, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        fail(where, f"{value} is not in {lo}..{hi}")
    return value


def _parse_dpid(value, where: str, fail) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 16)
        except ValueError:
            fail(where, f"expected an integer or a hex string, got {value!r}")
    return _int(value, where, fail, 0, (1 << 64) - 1)


def _parse_router(r, where: str, fail) -> RouterSpec:
    _check_keys(r, _ROUTER_KEYS, where, fail, required=("name", "dpid", "ports"))
    name = r["name"]
    if not isinstance(name, str) or not name:
        fail(f"{where}.name", "expected a non-empty string")
    dpid = _parse_dpid(r["dpid"], f"{where}.dpid", fail)
    if not isinstance(r["ports"], dict) or not r["ports"]:
        fail(f"{where}.ports", "expected a non-empty object {ofport: port}")
    ports = []
    for key, p in r["ports"].items():
        pwhere = f"{where}.ports.{key}"
        if not key.isdigit() or not 1 <= int(key) <= 0xFFFFFEFF:  # OFPP_MAX
            fail(pwhere, f"OpenFlow port {key!r} is not a number in 1..{0xFFFFFEFF}")
        ports.append(_parse_port(int(key), p, dpid, pwhere, fail))
    seen = set()
    for p in ports:
        if p.name in seen:
            fail(f"{where}.ports", f"port name {p.name!r} appears twice")
        seen.add(p.name)
    routes = []
    for j, rt in enumerate(r.get("routes") or []):
        rwhere = f"{where}.routes[{j}]"
        _check_keys(rt, _ROUTE_KEYS, rwhere, fail, required=("prefix", "port"))
        try:
            routes.append(Route(str(rt["prefix"]), str(rt["port"]),
                                None if rt.get("via") is None else str(rt["via"])))
        except ValueError as exc:
            fail(rwhere, str(exc))
    policy = r.get("icmp_policy", "send")
    if policy not in ICMP_POLICIES:
        fail(f"{where}.icmp_policy", f"{policy!r} is not one of {', '.join(ICMP_POLICIES)}")
    ratelimit = _int(r.get("icmp_ratelimit_ms", 1000), f"{where}.icmp_ratelimit_ms", fail,
                     0, 1 << 31)
    clamp = r.get("mss_clamp")
    if clamp is not None:
        clamp = _int(clamp, f"{where}.mss_clamp", fail, 1, 0xFFFF)
    spec = RouterSpec(name, dpid, tuple(sorted(ports, key=lambda p: p.ofport)), tuple(routes),
                      policy, ratelimit, clamp)
    try:
        spec.router_config()  # RouterConfig's own checks: route ports, duplicates, ...
    except ValueError as exc:
        fail(where, str(exc))
    return spec


def _parse_port(ofport: int, p, dpid: int, where: str, fail) -> PortSpec:
    _check_keys(p, _PORT_KEYS, where, fail, required=("name", "ip"))
    name = p["name"]
    if not isinstance(name, str) or not name:
        fail(f"{where}.name", "expected a non-empty string")
    try:
        iface = ipaddress.IPv4Interface(p["ip"])
    except (ValueError, TypeError) as exc:
        fail(f"{where}.ip", f"expected ADDRESS/PREFIXLEN: {exc}")
    if "/" not in str(p["ip"]):
        fail(f"{where}.ip", f"{p['ip']!r} has no /prefixlen")
    mac = p.get("mac", f"02:5e:{dpid >> 8 & 0xFF:02x}:{dpid & 0xFF:02x}:"
                       f"{ofport >> 8 & 0xFF:02x}:{ofport & 0xFF:02x}")
    try:
        mac_b = mac_to_bytes(mac)
    except (ValueError, AttributeError):
        fail(f"{where}.mac", f"invalid MAC address {mac!r}")
    if mac_b[0] & 1:
        fail(f"{where}.mac", f"{mac} is a multicast address")
    mtu = _int(p.get("mtu", 1500), f"{where}.mtu", fail, IP_MIN_MTU, 0xFFFF - ETH_HLEN)
    neighbours = []
    for ip, nmac in (p.get("neighbours") or {}).items():
        nwhere = f"{where}.neighbours.{ip}"
        try:
            addr = ipaddress.IPv4Address(ip)
            nmac = bytes_to_mac(mac_to_bytes(nmac))
        except (ValueError, AttributeError) as exc:
            fail(nwhere, str(exc))
        if addr not in iface.network or addr == iface.ip:
            fail(nwhere, f"not a neighbour on {iface.network}")
        neighbours.append((str(addr), nmac))
    return PortSpec(ofport, name, str(iface.ip), iface.network.prefixlen, bytes_to_mac(mac_b),
                    mtu, tuple(neighbours))


# ----------------------------------------------------------------------------- the flow plan

@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry, independent of the framework.

    ``match``: OFPMatch keyword arguments as sorted (name, value) pairs. ``actions``: tuples
    ("controller",), ("output", ofport), ("in_port",), ("dec_ttl",),
    ("set_field", field, value), ("check_pkt_larger", pkt_len, reg, bit); ``goto`` a table.
    """

    table: int
    priority: int
    match: tuple
    actions: tuple = ()
    goto: int | None = None

    @property
    def key(self) -> tuple:
        return self.table, self.priority, self.match


def _flow(table, priority, actions=(), goto=None, **match) -> Flow:
    return Flow(table, priority, tuple(sorted(match.items())), tuple(actions), goto)


TO_CONTROLLER = (("controller",),)
# Field order in a match: each field after the fields it depends on (OVS checks in order).
_PREREQ_RANK = {"in_port": 0, "eth_dst": 1, "eth_src": 1, "eth_type": 2, "ip_proto": 3,
                "ipv4_src": 4, "ipv4_dst": 4, "nw_ttl": 5, "tcp_flags_nxm": 6}


@dataclass(frozen=True, slots=True)
class FibEntry:
    """One route as Router sees it: ``next_hop`` None = connected."""

    network: ipaddress.IPv4Network
    port: str
    next_hop: str | None
    configured: bool

    @property
    def priority(self) -> int:
        return 100 + 2 * self.network.prefixlen + self.configured


def build_fib(spec: RouterSpec) -> list[FibEntry]:
    """Configured routes, then connected subnets, longest prefix first (as Router builds it).

    Where two entries have the same prefix the first wins, as in Router's linear lookup.
    """
    entries, seen = [], set()
    for route in spec.routes:
        entries.append(FibEntry(ipaddress.IPv4Network(route.prefix), route.port,
                                route.next_hop, True))
    for p in spec.ports:
        entries.append(FibEntry(p.interface.network, p.name, None, False))
    entries.sort(key=lambda e: -e.network.prefixlen)
    unique = []
    for e in entries:
        if e.network not in seen:
            seen.add(e.network)
            unique.append(e)
    return unique


def lookup(fib: list[FibEntry], ip: str) -> FibEntry | None:
    addr = ipaddress.IPv4Address(ip)
    return next((e for e in fib if addr in e.network), None)


def _masked(net: ipaddress.IPv4Network) -> tuple[str, str]:
    return str(net.network_address), str(net.netmask)


def plan_static_flows(spec: RouterSpec) -> list[Flow]:
    """Tables 0, 1 and 3, and table 2's miss: they depend on the config alone."""
    flows = [
        _flow(TABLE_CLASSIFY, 1000, TO_CONTROLLER, eth_type=ETH_P_ARP),
        _flow(TABLE_CLASSIFY, 0),  # drop the rest
    ]
    for p in spec.ports:
        flows.append(_flow(TABLE_CLASSIFY, 100, goto=TABLE_INPUT, in_port=p.ofport,
                           eth_dst=p.mac, eth_type=ETH_P_IP))
    # Table 1: what Router.decide must see. Martians (as Router's _is_martian_*), our own
    # addresses as source or destination, broadcasts.
    to_ctl = []
    for net in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32"):
        to_ctl.append({"ipv4_src": _masked(ipaddress.IPv4Network(net))})
    for net in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32"):
        to_ctl.append({"ipv4_dst": _masked(ipaddress.IPv4Network(net))})
    for p in spec.ports:
        to_ctl.append({"ipv4_src": p.ip})
        to_ctl.append({"ipv4_dst": p.ip})
        if p.prefixlen <= 30:
            to_ctl.append({"ipv4_dst": str(p.interface.network.broadcast_address)})
    for m in to_ctl:
        flows.append(_flow(TABLE_INPUT, 900, TO_CONTROLLER, eth_type=ETH_P_IP, **m))
    for ttl in (0, 1):  # Router answers with ICMP time exceeded
        flows.append(_flow(TABLE_INPUT, 800, TO_CONTROLLER, eth_type=ETH_P_IP, nw_ttl=ttl))
    if spec.mss_clamp is not None:  # Router rewrites the MSS option of SYNs
        flows.append(_flow(TABLE_INPUT, 700, TO_CONTROLLER, eth_type=ETH_P_IP, ip_proto=6,
                           tcp_flags_nxm=(0x002, 0x002)))
    flows.append(_flow(TABLE_INPUT, 0, goto=TABLE_ROUTE))
    flows.append(_flow(TABLE_ROUTE, 0, TO_CONTROLLER))  # no route: ICMP net unreachable
    flows.append(_flow(TABLE_EGRESS, 1000, TO_CONTROLLER, **{REG_TOO_BIG: (1, 1)}))
    for p in spec.ports:
        # OpenFlow never outputs to the ingress port unless told so with IN_PORT.
        flows.append(_flow(TABLE_EGRESS, 200, (("dec_ttl",), ("in_port",)), in_port=p.ofport,
                           eth_type=ETH_P_IP, **{REG_EGRESS: p.ofport}))
        flows.append(_flow(TABLE_EGRESS, 100, (("dec_ttl",), ("output", p.ofport)),
                           eth_type=ETH_P_IP, **{REG_EGRESS: p.ofport}))
    flows.append(_flow(TABLE_EGRESS, 0))
    return flows


def _to_neighbour(port: PortSpec, mac: str) -> tuple:
    return (("set_field", "eth_src", port.mac), ("set_field", "eth_dst", mac),
            ("set_field", REG_EGRESS, port.ofport),
            ("check_pkt_larger", port.mtu + ETH_HLEN, REG_TOO_BIG, 0))


def plan_route_flows(spec: RouterSpec, neighbours: dict[str, tuple[str, str]]) -> list[Flow]:
    """Table 2 for the neighbours known now: ``neighbours`` maps ip -> (port name, mac)."""
    fib = build_fib(spec)
    ports = {p.name: p for p in spec.ports}
    flows = []
    for e in fib:
        nh = neighbours.get(e.next_hop) if e.next_hop else None
        if nh is not None and nh[0] == e.port:
            actions = _to_neighbour(ports[e.port], nh[1])
            flows.append(_flow(TABLE_ROUTE, e.priority, actions, goto=TABLE_EGRESS,
                               eth_type=ETH_P_IP, ipv4_dst=_masked(e.network)))
        else:  # connected subnet (hosts get /32s below) or unresolved next hop: ARP first
            flows.append(_flow(TABLE_ROUTE, e.priority, TO_CONTROLLER,
                               eth_type=ETH_P_IP, ipv4_dst=_masked(e.network)))
    for ip, (port_name, mac) in sorted(neighbours.items()):
        e = lookup(fib, ip)
        if e is None or e.next_hop is not None or e.port != port_name:
            continue  # a more specific configured route wins over the connected subnet
        prio = 100 + 2 * 32  # a configured /32 route (+1) still wins, as in Router
        flows.append(_flow(TABLE_ROUTE, prio, _to_neighbour(ports[port_name], mac),
                           goto=TABLE_EGRESS, eth_type=ETH_P_IP, ipv4_dst=ip))
    return flows


def static_neighbours(spec: RouterSpec) -> dict[str, tuple[str, str]]:
    return {ip: (p.name, mac) for p in spec.ports for ip, mac in p.neighbours}


# ----------------------------------------------------------------------------- per-router state

@dataclass
class RouterState:
    """A router's controller-side state: the pure Router, neighbours, held packets."""

    spec: RouterSpec
    router: Router
    neighbours: dict[str, tuple[str, str]]             # ip -> (port name, mac)
    installed: dict[tuple, Flow] = field(default_factory=dict)   # table 2 only
    pending: dict[str, collections.deque] = field(default_factory=dict)
    arp_sent: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        CONTROLLER_COUNTERS, 0))
    datapath: object = None
    ready: bool = False

    @classmethod
    def from_spec(cls, spec: RouterSpec) -> "RouterState":
        return cls(spec, Router(spec.router_config()), static_neighbours(spec))

    def status(self) -> dict:
        return {"name": self.spec.name, "dpid": f"{self.spec.dpid:016x}",
                "connected": self.datapath is not None, "ready": self.ready,
                "icmp_policy": self.router.icmp_policy,
                "counters": {**self.router.counters, **self.counters},
                "neighbours": {ip: mac for ip, (_, mac) in sorted(self.neighbours.items())}}


# ----------------------------------------------------------------------------- the framework

def load_framework(name: str | None = None) -> SimpleNamespace:
    """os-ken (preferred) or ryu: the modules the app and the launcher use.

    ``name`` or $SENDLAB_OF_FRAMEWORK picks one ("os_ken" or "ryu"); the launcher sets the
    variable so this module binds to the framework it runs.
    """
    name = name or os.environ.get("SENDLAB_OF_FRAMEWORK") or None
    errors = []
    for fw in ([name] if name else ["os_ken", "ryu"]):
        try:
            if fw == "ryu":
                _guard_ryu_wsgi()
            app_manager = importlib.import_module(f"{fw}.base.app_manager")
            ns = SimpleNamespace(
                name=fw, app_manager=app_manager,
                App=getattr(app_manager, "OSKenApp", None) or app_manager.RyuApp,
                cfg=importlib.import_module(f"{fw}.cfg"),
                hub=importlib.import_module(f"{fw}.lib.hub"),
                ofp_event=importlib.import_module(f"{fw}.controller.ofp_event"),
                handler=importlib.import_module(f"{fw}.controller.handler"),
                ofproto_v1_3=importlib.import_module(f"{fw}.ofproto.ofproto_v1_3"))
            return ns
        except ImportError as exc:
            errors.append(f"{fw}: {exc}")
    raise ImportError("no OpenFlow controller framework: " + "; ".join(errors)
                      + " (scripts/install-emulation.sh installs os-ken)")


def _guard_ryu_wsgi() -> None:
    """ryu 4.34's app_manager imports ryu.app.wsgi, which imports eventlet.wsgi's
    ALREADY_HANDLED; newer eventlet lacks it. Only ryu's own REST apps (unused here) need
    the value, so a sentinel lets the import succeed."""
    try:
        import eventlet.wsgi
    except ImportError:
        return  # ryu's import then fails with its own, clearer, error
    if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
        eventlet.wsgi.ALREADY_HANDLED = object()


def register_options(cfg) -> None:
    """The app's options, group [sendlab]: set by the launcher, or in a --config-file."""
    cfg.CONF.register_opts([
        cfg.StrOpt("config", default=None, help="controller JSON config (routers)"),
        cfg.StrOpt("rest", default=None, help="REST endpoint, tcp:HOST:PORT or unix:PATH"),
    ], group="sendlab")


try:
    _fw = load_framework()
except ImportError as _exc:  # the pure parts above stay importable (tests, tools)
    _fw = None
    FRAMEWORK_ERROR = str(_exc)
else:
    FRAMEWORK_ERROR = None
    register_options(_fw.cfg)
FRAMEWORK = _fw  # the framework this module bound to, or None (see FRAMEWORK_ERROR)

_apps: list = []  # running app instances, for the launcher's shutdown


def close_all() -> None:
    for app in list(_apps):
        app.close()


if _fw is not None:
    _set_ev_cls = _fw.handler.set_ev_cls
    _CONFIG, _MAIN, _DEAD = (_fw.handler.CONFIG_DISPATCHER, _fw.handler.MAIN_DISPATCHER,
                             _fw.handler.DEAD_DISPATCHER)
    _ev = _fw.ofp_event

    class SendlabRouterApp(_fw.App):
        """Programs each configured bridge as a router; see the module docstring."""

        OFP_VERSIONS = [_fw.ofproto_v1_3.OFP_VERSION]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            conf = _fw.cfg.CONF.sendlab
            if not conf.config:
                raise ConfigError("sendlab: no controller config given ([sendlab] config)")
            self.config = load_config(conf.config)
            self.routers: dict[int, RouterState] = {
                spec.dpid: RouterState.from_spec(spec) for spec in self.config.routers}
            self._by_name = {s.spec.name: s for s in self.routers.values()}
            self._lock = threading.RLock()
            self._rest = None
            if conf.rest:
                from controller.rest import RestServer
                native = getattr(_fw.hub, "HUB_TYPE", "eventlet") == "native"
                self._rest = RestServer(self, conf.rest).start(
                    spawn=None if native else _fw.hub.spawn)
            _apps.append(self)
            log.info("%s: routers %s", _fw.name,
                     ", ".join(f"{s.name} (dpid {s.dpid:#x})" for s in self.config.routers))

        def close(self):
            if self._rest is not None:
                self._rest.close()
                self._rest = None
            if self in _apps:
                _apps.remove(self)
            parent_close = getattr(super(), "close", None)
            if parent_close is not None:
                parent_close()

        # --- REST (controller.rest.RouterApi) ------------------------------------------

        def router_names(self) -> list[str]:
            return list(self._by_name)

        def router_status(self, name: str) -> dict:
            with self._lock:
                return self._by_name[name].status()

        def set_icmp_policy(self, name: str, policy: str) -> dict:
            with self._lock:
                state = self._by_name[name]
                state.router.set_icmp_policy(policy)  # ValueError for an unknown policy
                log.info("%s: icmp policy %s", name, policy)
                return state.status()

        # --- switch life cycle -------------------------------------------------------

        @_set_ev_cls(_ev.EventOFPSwitchFeatures, _CONFIG)
        def _switch_features(self, ev):
            dp = ev.msg.datapath
            dpid = ev.msg.datapath_id  # dp.id is set by ofp_handler, maybe after this runs
            with self._lock:
                state = self.routers.get(dpid)
                if state is None:
                    log.warning("datapath %016x is not in the config; ignored", dpid)
                    return
                state.datapath, state.ready = dp, False
                ofp, parser = dp.ofproto, dp.ofproto_parser
                dp.send_msg(parser.OFPFlowMod(
                    dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                    out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch()))
                dp.send_msg(parser.OFPSetConfig(dp, ofp.OFPC_FRAG_NORMAL, 0xFFFF))
                for flow in plan_static_flows(state.spec):
                    self._install(dp, flow)
                state.installed = {}
                self._sync_routes(state)
                dp.send_msg(parser.OFPPortDescStatsRequest(dp, 0))
                dp.send_msg(parser.OFPBarrierRequest(dp))
                log.info("%s: datapath %016x connected, flows sent", state.spec.name, dpid)

        @_set_ev_cls(_ev.EventOFPBarrierReply, _MAIN)
        def _barrier_reply(self, ev):
            with self._lock:
                state = self._state_of(ev.msg.datapath)
                if state is not None:
                    state.ready = True

        @_set_ev_cls(_ev.EventOFPPortDescStatsReply, _MAIN)
        def _port_desc(self, ev):
            state = self._state_of(ev.msg.datapath)
            if state is None:
                return
            have = {p.port_no: p.name.decode(errors="replace") if isinstance(p.name, bytes)
                    else p.name for p in ev.msg.body}
            for p in state.spec.ports:
                if p.ofport not in have:
                    log.warning("%s: OpenFlow port %d (%s) is not on the bridge yet",
                                state.spec.name, p.ofport, p.name)
                elif have[p.ofport] != p.name:
                    log.info("%s: OpenFlow port %d is interface %s (config calls it %s)",
                             state.spec.name, p.ofport, have[p.ofport], p.name)

        @_set_ev_cls(_ev.EventOFPErrorMsg, [_CONFIG, _MAIN])
        def _error(self, ev):
            msg = ev.msg
            state = self._state_of(msg.datapath)
            with self._lock:
                if state is not None:
                    state.counters["switch_errors"] += 1
            log.error("%s: switch error type %d code %d for: %s",
                      state.spec.name if state else "?", msg.type, msg.code,
                      bytes(msg.data[:64]).hex())

        @_set_ev_cls(_ev.EventOFPStateChange, [_DEAD])
        def _state_change(self, ev):
            with self._lock:
                state = self._state_of(ev.datapath)
                if state is not None:
                    state.datapath, state.ready = None, False
                    log.info("%s: datapath disconnected", state.spec.name)

        def _state_of(self, dp) -> RouterState | None:
            """The router this connection programs (None: unknown or superseded switch)."""
            return next((s for s in self.routers.values() if s.datapath is dp), None)

        # --- flows -------------------------------------------------------------------

        def _install(self, dp, flow: Flow) -> None:
            ofp, parser = dp.ofproto, dp.ofproto_parser
            actions = [self._action(dp, a) for a in flow.actions]
            inst = []
            if actions:
                inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
            if flow.goto is not None:
                inst.append(parser.OFPInstructionGotoTable(flow.goto))
            dp.send_msg(parser.OFPFlowMod(dp, table_id=flow.table, priority=flow.priority,
                                          match=self._match(parser, flow.match),
                                          instructions=inst))

        @staticmethod
        def _match(parser, fields: tuple):
            """OFPMatch with every field after its prerequisites, as OVS requires.

            The frameworks sort fields by OXM class, which puts Nicira fields (class 1:
            nw_ttl, tcp_flags_nxm, reg*) before eth_type (class 0x8000), and OVS then
            rejects nw_ttl with OFPBMC_BAD_PREREQ; reorder them.
            """
            m = parser.OFPMatch(**dict(fields))
            ordered = sorted(m._fields2, key=lambda kv: _PREREQ_RANK.get(kv[0], 9))
            return parser.OFPMatch(_ordered_fields=ordered)

        @staticmethod
        def _action(dp, a: tuple):
            ofp, parser = dp.ofproto, dp.ofproto_parser
            kind = a[0]
            if kind == "controller":
                return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
            if kind == "output":
                return parser.OFPActionOutput(a[1])
            if kind == "in_port":
                return parser.OFPActionOutput(ofp.OFPP_IN_PORT)
            if kind == "dec_ttl":
                return parser.OFPActionDecNwTtl()
            if kind == "set_field":
                return parser.OFPActionSetField(**{a[1]: a[2]})
            if kind == "check_pkt_larger":
                return action_class(ofp, parser)(a[1], a[2], a[3])
            raise ValueError(f"unknown action {a!r}")

        def _sync_routes(self, state: RouterState) -> None:
            """Install the table-2 flows that differ from what is installed."""
            dp = state.datapath
            if dp is None:
                return
            for flow in plan_route_flows(state.spec, state.neighbours):
                if state.installed.get(flow.key) != flow:
                    self._install(dp, flow)  # same match and priority: replaced
                    state.installed[flow.key] = flow

        # --- packets -----------------------------------------------------------------

        @_set_ev_cls(_ev.EventOFPPacketIn, _MAIN)
        def _packet_in(self, ev):
            msg = ev.msg
            with self._lock:
                state = self._state_of(msg.datapath)
                if state is None:
                    return
                state.counters["packet_in"] += 1
                in_port = msg.match["in_port"]
                port = next((p for p in state.spec.ports if p.ofport == in_port), None)
                if port is None:
                    state.counters["unknown_port"] += 1
                    return
                try:
                    frame = decode_ethernet(bytes(msg.data))
                    if frame.ethertype == ETH_P_ARP:
                        self._arp_in(state, port, decode_arp(frame.payload))
                    elif frame.ethertype == ETH_P_IP:
                        self._ip_in(state, port, frame.payload)
                except MalformedPacket as exc:
                    log.debug("%s: malformed packet-in on %s: %s", state.spec.name,
                              port.name, exc)

        def _ip_in(self, state: RouterState, port: PortSpec, packet: bytes) -> None:
            before = dict(state.router.counters)
            actions = state.router.decide(packet, port.name, time.monotonic())
            _log_decision(state, port, packet, actions, before)
            for action in actions:
                if isinstance(action, Forward):
                    self._send_ip(state, action)
                elif isinstance(action, Drop):
                    log.debug("%s: drop (%s) from %s", state.spec.name, action.reason,
                              port.name)

        def _send_ip(self, state: RouterState, fwd: Forward) -> None:
            port = state.spec.port(fwd.port)
            nh = state.neighbours.get(fwd.next_hop_ip)
            if nh is not None and nh[0] == port.name:
                self._packet_out(state, port, mac_to_bytes(nh[1]), ETH_P_IP, fwd.packet)
                return
            queue = state.pending.setdefault(
                fwd.next_hop_ip, collections.deque(maxlen=PENDING_PER_NEIGHBOUR))
            if len(queue) == queue.maxlen:
                state.counters["neighbour_queue_dropped"] += 1
            queue.append((port.name, fwd.packet))
            now = time.monotonic()
            if now - state.arp_sent.get(fwd.next_hop_ip, -1e9) >= ARP_RETRY_S:
                state.arp_sent[fwd.next_hop_ip] = now
                state.counters["arp_requests_sent"] += 1
                arp = build_arp_request(mac_to_bytes(port.mac), ip_to_bytes(port.ip),
                                        ip_to_bytes(fwd.next_hop_ip))
                self._packet_out(state, port, BROADCAST_MAC, ETH_P_ARP, arp)

        def _arp_in(self, state: RouterState, port: PortSpec, arp) -> None:
            spa, tpa = bytes_to_ip(arp.spa), bytes_to_ip(arp.tpa)
            iface = port.interface
            if (spa != port.ip and ipaddress.IPv4Address(spa) in iface.network
                    and not arp.sha[0] & 1):
                self._learn(state, port, spa, bytes_to_mac(arp.sha))
            if arp.op == ARPOP_REQUEST and tpa == port.ip:
                reply = build_arp_reply(mac_to_bytes(port.mac), arp.tpa, arp.sha, arp.spa)
                state.counters["arp_replies_sent"] += 1
                self._packet_out(state, port, arp.sha, ETH_P_ARP, reply)
            elif arp.op not in (ARPOP_REQUEST, ARPOP_REPLY):
                log.debug("%s: ARP op %d ignored", state.spec.name, arp.op)

        def _learn(self, state: RouterState, port: PortSpec, ip: str, mac: str) -> None:
            if state.neighbours.get(ip) == (port.name, mac):
                return
            state.neighbours[ip] = (port.name, mac)
            state.counters["neighbours_learned"] += 1
            log.info("%s: neighbour %s is %s on %s", state.spec.name, ip, mac, port.name)
            self._sync_routes(state)
            for port_name, packet in state.pending.pop(ip, ()):
                if port_name == port.name:
                    self._packet_out(state, port, mac_to_bytes(mac), ETH_P_IP, packet)
            state.arp_sent.pop(ip, None)

        def _packet_out(self, state: RouterState, port: PortSpec, dst_mac: bytes,
                        ethertype: int, payload: bytes) -> None:
            dp = state.datapath
            if dp is None:
                return
            ofp, parser = dp.ofproto, dp.ofproto_parser
            frame = encode_ethernet(dst_mac, mac_to_bytes(port.mac), ethertype, payload,
                                    pad=True)
            dp.send_msg(parser.OFPPacketOut(
                dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                actions=[parser.OFPActionOutput(port.ofport)], data=frame))
            state.counters["packet_out"] += 1


def _log_decision(state, port, packet: bytes, actions: list, before: dict) -> None:
    """One INFO line per decision about an oversized or TTL-expiring packet (the run's
    controller.log): frag-needed sent, black-hole drop, fragmented, rate-limited."""
    after = state.router.counters
    diff = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    keys = ("icmp_frag_needed_sent", "icmp_frag_needed_suppressed", "fragmented",
            "icmp_ratelimited", "ttl_expired", "dropped_oversize")
    if not any(k in diff for k in keys):
        return
    p = bytes(packet)
    if len(p) < 20:
        return
    src = ".".join(map(str, p[12:16]))
    dst = ".".join(map(str, p[16:20]))
    what = (f"{src} > {dst} proto {p[9]} len {int.from_bytes(p[2:4], 'big')} "
            f"ttl {p[8]} id {int.from_bytes(p[4:6], 'big')} in {port.name}")
    name = state.spec.name
    if "icmp_frag_needed_sent" in diff:
        icmp = next((a.packet for a in actions if getattr(a, "originated", False)), b"")
        mtu = None
        if len(icmp) >= 28:
            ihl = (icmp[0] & 0x0F) * 4
            mtu = int.from_bytes(icmp[ihl + 6:ihl + 8], "big")
        log.info("%s: frag-needed sent to %s, mtu %s, quoting %s", name, src, mtu, what)
    elif "icmp_frag_needed_suppressed" in diff:
        log.info("%s: black-hole drop (frag-needed suppressed), oversized %s", name, what)
    elif "icmp_ratelimited" in diff and "dropped_oversize" in diff:
        log.info("%s: oversized drop, frag-needed rate-limited, %s", name, what)
    elif "fragmented" in diff:
        n = diff.get("fragments_sent", 0)
        log.info("%s: fragmented into %d, %s", name, n, what)
    elif "ttl_expired" in diff:
        if "icmp_time_exceeded_sent" in diff:
            how = "time exceeded sent"
        elif "icmp_ratelimited" in diff:
            how = "time exceeded rate-limited"
        elif "icmp_time_exceeded_suppressed" in diff:
            how = "time exceeded suppressed"
        else:
            how = "no ICMP allowed"
        log.info("%s: TTL expired, %s, %s", name, how, what)
    elif "dropped_oversize" in diff:
        log.info("%s: oversized drop, no ICMP allowed, %s", name, what)


__all__ = ["ConfigError", "ControllerConfig", "FibEntry", "Flow", "PortSpec", "RouterSpec",
           "RouterState", "build_fib", "close_all", "load_config", "load_framework",
           "lookup", "parse_config", "plan_route_flows", "plan_static_flows",
           "static_neighbours"]
