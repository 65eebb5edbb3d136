"""The emulated backend: ``sendlab run TOPOLOGY --backend mininet`` on real namespaces.

Built with ``testbed.netns`` (scoped namespaces and veths, every name under the run's prefix,
recorded for cleanup) rather than Mininet's ``Mininet``/``TCLink`` classes: Mininet's
``waitConnected`` polls OVSDB for seconds, its TCLink delay/loss silently do nothing on
kernels without netem, and its own cleanup command kills and deletes by broad names. The
pieces, per run:

- **hosts**: one namespace each (``<prefix>-<host>``), one interface named as the topology
  names it (``h1-eth0``) with a fixed MAC, IPv6 off, static ARP for every neighbour on its
  subnet (no ARP frame ever shifts a link's loss indices). ``stack: python`` hosts run
  sendlab's stack through AF_PACKET on an interface without a kernel address; ``stack:
  linux`` hosts get the address, the routes of ``Topology.route_tables()`` and run the
  kernel's TCP. Both are driven by ``testbed.emu_host``, one agent process per host.
- **routers**: Open vSwitch bridges (userspace datapath ``netdev``) in one private OVS
  instance (``testbed.ovs``, its own db/run/log directories) whose ovs-vswitchd runs in the
  run's core namespace (``<prefix>-c``), programmed by the os-ken app of ``controller/``
  started with ``controller.launcher`` in that namespace (OpenFlow on its loopback, REST on
  a Unix socket) from a config generated here: port addresses, MACs, egress MTUs, static
  neighbours, the routes the sim's routers get, ICMP policy, MSS clamp.
- **switches**: Linux bridges in the core namespace (no STP), with static FDB entries for
  every MAC behind each port.
- **links**: veth pairs with the link's MTU on both ends and ``tx off tso off gso off`` on
  every end (the ends facing OVS need valid checksums; the wire carries MTU-sized frames).
  A link with rate, delay, jitter or loss is shaped: with netem where ``tc qdisc ... netem``
  works (detected once), else by ``testbed.shaper``, a process in a middle namespace
  (``<prefix>-l<N>``) applying the same seeded ``LinkDirection`` as the ``sim`` backend; the
  shaper also writes the link's pcap. Unshaped links are captured with tcpdump.
  ``summary.json`` says per link direction which mechanism shaped it (``shaping``).

With ``part`` (``testbed.split.part_spec``), one worker's share of a topology split across
machines is built: its nodes, the links between them, and for each link that crosses to
another worker a middle namespace where the link's VXLAN device (made in this process's
namespace, where the underlay is, then moved in) stands for the far end, bridged to the
node's veth or behind a shaper for the direction leaving here. ``testbed.remote_part`` drives
such a part step by step (``start_agents``, ``go``, ``stop_agents``) for
``testbed.split_run``.

The run writes ``DIR/summary.json`` (the sim's fields, ``backend: "mininet"``),
``DIR/pcaps/link<N>_<a>-<b>.pcap`` per link, ``DIR/controller.log`` and ``DIR/logs/``; with
``trace``, ``DIR/trace_<flow>.jsonl`` per flow and ``held_s_by_reason`` in its summary: the
stack's decision trace for a python sender (written by its agent), for a linux sender the
timeline ``testbed.wire_trace`` builds from its writes and its access link's capture (reasons
``unknown``). Teardown
stops exactly what the run started (by PID, by control socket, by the names it recorded),
on success, error, SIGTERM and Ctrl-C; a record under the temporary directory lets
``python -m testbed.emulate clean`` remove what a killed run left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import netns as netns_mod
from . import ovs as ovs_mod
from .link_model import derive_seed
from .run import (
    SUMMARY_VERSION, _flow_specs, _longest_stall, _percentile, _tcp_payload_for, _write_latencies,
)
from .split import TunnelEnd
from .topology import Topology, require_backend
from .traffic import FlowRecord

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUE_PACKET_BYTES = 1514   # as testbed.sim: a queue in packets holds full-sized frames
OFP_PORT = 6653
READY_TIMEOUT_S = 30.0
RECEIVER_GRACE_S = 1.0      # after every sender is done, how long receivers get to see EOF

__all__ = ["EmulationError", "EmuOptions", "EmulatedNetwork", "available", "run_emulated",
           "direction_params", "link_is_shaped", "netem_available", "cleanup_record", "clean",
           "main"]


class EmulationError(RuntimeError):
    """The emulated network could not be built or run; the message says what failed."""


class _Interrupted(BaseException):
    """SIGTERM during a run: unwinds like Ctrl-C so teardown runs."""


@dataclass
class EmuOptions:
    vnet_hdr: bool = True           # python hosts hand the kernel GSO frames (virtio-net header)
    shaping: str = "auto"           # auto (netem if it works, else shaper) | shaper | netem
    spin_us: float = 0.0            # shaper: spin this long before a due time (costs a core)
    python: str = sys.executable    # interpreter for agents, shapers and the controller
    controller_python: str | None = None
    controller_verbose: bool = False  # the controller logs every decision (debug)
    keep_workdir: bool = False


# --- what a run needs, as pure functions of the topology ----------------------------------------

def available(topo: Topology | None = None) -> str | None:
    """None when this machine can run the emulated backend (for ``topo``), else why not."""
    reason = netns_mod.available()
    if reason:
        return reason
    if shutil.which("tc") is None and not os.path.exists("/usr/sbin/tc"):
        return "`tc` is not installed (iproute2)"
    if topo is None or topo.routers:
        reason = ovs_mod.available()
        if reason:
            return reason
        import importlib.util
        if not any(importlib.util.find_spec(n) for n in ("os_ken", "ryu")):
            return "no OpenFlow controller framework (scripts/install-emulation.sh installs os-ken)"
    return None


def direction_params(topo: Topology, index: int, src: str, seed: int) -> dict:
    """One link direction as ``testbed.shaper.direction_from_params`` takes it; the same
    LinkDirection ``testbed.sim`` builds for that direction (same seed, same queue)."""
    shape = topo.shape(index, src)
    loss = None
    if shape.loss.gilbert is not None:
        g = shape.loss.gilbert
        loss = {"gilbert": {"p": g.p, "r": g.r, "h": g.h, "k": g.k}}
    elif shape.loss.bernoulli:
        loss = {"bernoulli": shape.loss.bernoulli}
    queue = shape.queue_bytes
    if queue is None and shape.queue_packets is not None:
        queue = shape.queue_packets * QUEUE_PACKET_BYTES
    return {"rate_bps": shape.rate_mbit * 1e6 if shape.rate_mbit else None,
            "delay_s": shape.delay_ms / 1000, "jitter_s": shape.jitter_ms / 1000, "loss": loss,
            "queue_bytes": queue, "seed": derive_seed(seed, f"link{index}:{src}>{shape.dst}"),
            "mtu": shape.mtu}


def link_is_shaped(topo: Topology, index: int) -> bool:
    """A link needs shaping when a direction has a rate, delay, jitter or loss (without a rate
    there is no queue to limit)."""
    for src in topo.links[index].ends:
        s = topo.shape(index, src)
        if s.rate_mbit or s.delay_ms or s.jitter_ms or s.loss.gilbert is not None or \
                s.loss.bernoulli:
            return True
    return False


def interface_mac(link: int, end: int) -> str:
    """The fixed MAC of end ``end`` (0 or 1) of link ``link``: locally administered, unique."""
    return f"02:51:{link >> 8 & 0xFF:02x}:{link & 0xFF:02x}:{end:02x}:01"


def netem_args(params: dict, limit_packets: int) -> list[str]:
    """``tc qdisc ... netem`` arguments for one direction (when the kernel has netem)."""
    args = ["netem", "limit", str(max(1, limit_packets))]
    if params["delay_s"] or params["jitter_s"]:
        args += ["delay", f"{params['delay_s'] * 1e3:.3f}ms"]
        if params["jitter_s"]:
            args += [f"{params['jitter_s'] * 1e3:.3f}ms", "distribution", "normal"]
    loss = params["loss"]
    if loss and loss.get("gilbert"):
        g = loss["gilbert"]
        args += ["loss", "gemodel", f"{g['p'] * 100:g}%", f"{g['r'] * 100:g}%",
                 f"{(1 - g['h']) * 100:g}%", f"{(1 - g['k']) * 100:g}%"]
    elif loss and loss.get("bernoulli"):
        args += ["loss", "random", f"{loss['bernoulli'] * 100:g}%"]
    if params["rate_bps"]:
        args += ["rate", f"{params['rate_bps'] / 1e3:g}kbit"]
    return args


_NETEM: dict = {}


def netem_available(ns: "netns_mod.Namespace") -> bool:
    """Whether ``tc qdisc add ... netem`` works here: tried once per process, on the loopback
    of one of the run's own namespaces, and removed again."""
    if "ok" not in _NETEM:
        res = ns.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                     check=False)
        _NETEM["ok"] = res.returncode == 0
        _NETEM["why"] = res.stderr.strip()
        if res.returncode == 0:
            ns.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    return _NETEM["ok"]


# --- processes we talk to over pipes -------------------------------------------------------------

class _Proc:
    """A child (agent, shaper) that prints JSON lines and takes commands on stdin."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: str) -> None:
        self.name = name
        self.p = popen
        self.log_path = log_path
        self.buf = b""
        self.events: list[dict] = []
        self.closed = False

    def fileno(self) -> int:
        return self.p.stdout.fileno()

    def read_events(self) -> list[dict]:
        try:
            data = os.read(self.p.stdout.fileno(), 65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return []
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        new = []
        for ln in lines:
            with contextlib.suppress(ValueError):
                new.append(json.loads(ln))
        self.events.extend(new)
        return new

    def has(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events)

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.p.stdin.write((line + "\n").encode())
            self.p.stdin.flush()

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Ask it to stop (stdin), wait; True if it exited by itself."""
        if self.p.poll() is None:
            self.send("stop")
            with contextlib.suppress(OSError, ValueError):
                self.p.stdin.close()
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
        return True


def _wait_for(procs: list[_Proc], event: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = [p for p in procs if not p.has(event)]
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(p.name for p in pending)
            raise EmulationError(f"no '{event}' from {names} after {timeout_s:.0f} s:\n"
                                 + "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in pending))
        readable, _, _ = select.select(pending, [], [], left)
        for p in readable:
            p.read_events()
            if p.closed and not p.has(event):
                p.p.wait(5)
                raise EmulationError(f"{p.name} exited with status {p.p.returncode} before "
                                     f"'{event}':\n{p.log_tail()}")
        pending = [p for p in pending if not p.has(event)]


# --- the network --------------------------------------------------------------------------------

@dataclass
class _LinkBuild:
    index: int
    a: str
    b: str
    if_a: str
    if_b: str
    ns_a: object
    ns_b: object
    shaping: str                    # "shaper" | "netem" | "none"
    pcap: str
    mid: object = None              # the shaper's namespace (a crossing link's bridge's too)
    local: str | None = None        # a link crossing to another worker: the end built here
    proc: _Proc | None = None       # the shaper
    tcpdump: subprocess.Popen | None = None
    stats: dict = field(default_factory=dict)


class EmulatedNetwork:
    """One run's network: build, run the traffic, tear down (a context manager)."""

    def __init__(self, topo: Topology, out_dir: str | Path, *, seed: int | None = None,
                 options: EmuOptions | None = None, trace: bool = False,
                 part: dict | None = None) -> None:
        """``part``: build only one worker's share (``testbed.split.part_spec``): its nodes,
        the links between them, and an end of a VXLAN tunnel for each link that crosses."""
        require_backend(topo, "mininet")
        self.trace = trace
        self.part = part
        self.here = set(part["nodes"]) if part else set(topo.nodes)
        self.topo = topo
        self.seed = topo.seed if seed is None else seed
        self.opts = options or EmuOptions()
        self.out = Path(out_dir)
        self.plan = topo.address_plan()
        self.routes = topo.route_tables()
        self.run: netns_mod.NetnsRun | None = None
        self.ovs: ovs_mod.OvsInstance | None = None
        self.controller: subprocess.Popen | None = None
        self.rest_addr: str | None = None
        self.workdir: str | None = None
        self.record_path: str | None = None
        self.ns: dict[str, object] = {}
        self.core = None
        self.links: list[_LinkBuild] = []
        self.agents: dict[str, _Proc] = {}
        self.agent_results: dict[str, dict] = {}
        self.router_status: dict = {}
        self.mechanism = "none"
        self.t0: float | None = None
        self.t0_wall: float | None = None   # the wall-clock time of T0 (pcap timestamps)
        self.t0_wall_of: dict[str, float] = {}  # per host, when parts on several machines ran
        self.run_prefix: str | None = None
        self.timings: dict[str, float] = {}
        self._t_build = 0.0
        self._closed = False
        self._jobs: dict[str, dict] = {}

    # --- names -------------------------------------------------------------------------

    def mac(self, node: str, link: int) -> str:
        return interface_mac(link, self.topo.links[link].ends.index(node))

    def _ns_of(self, node: str):
        return self.ns[node] if node in self.topo.hosts else self.core

    # --- building ------------------------------------------------------------------------

    def _links_here(self) -> list[int]:
        if self.part is None:
            return list(range(len(self.topo.links)))
        return list(self.part["links"])

    def build(self) -> None:
        self._t_build = t_start = time.monotonic()
        routers = [r for r in self.topo.routers if r in self.here]
        reason = available(self.topo if routers else None) if self.part else available(self.topo)
        if reason:
            raise EmulationError(f"the emulated backend cannot run here: {reason}")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "pcaps").mkdir(exist_ok=True)
        self.run = netns_mod.NetnsRun()
        prefix = self.run_prefix = self.run.prefix
        self.workdir = tempfile.mkdtemp(prefix=f"sendlab-emu-{prefix}-")
        self.record_path = os.path.join(tempfile.gettempdir(), f"sendlab-emu-{prefix}.json")
        self._save_record()
        for name in self.topo.hosts:
            if name in self.here:
                self.ns[name] = self.run.add_namespace(name)
        switches = [s for s in self.topo.switches if s in self.here]
        if routers or switches:
            # "_" cannot start a node name: no host's namespace can take these names.
            self.core = self.run.add_namespace("_core")
        probe_ns = self.core or next(iter(self.ns.values()))
        want = self.opts.shaping
        if want == "auto":
            self.mechanism = "netem" if netem_available(probe_ns) else "shaper"
        elif want == "netem":
            if not netem_available(probe_ns):
                raise EmulationError(f"netem is not available here: {_NETEM.get('why')}")
            self.mechanism = "netem"
        else:
            self.mechanism = "shaper"
        if routers:   # the controller boots while the rest is built
            self._start_ovs_and_controller()
        for i in self._links_here():
            self._build_link(i)
        for end in (self.part or {}).get("tunnels", []):
            self._build_crossing(end)
        for name in switches:
            self._build_switch(name)
        for name in self.ns:
            if self.topo.hosts[name].stack == "linux":
                self._configure_kernel_host(name)
        if routers:
            self._build_routers()
        self._start_captures()
        self.timings["build_s"] = round(time.monotonic() - t_start, 3)

    def _save_record(self) -> None:
        rec = {"prefix": self.run.prefix if self.run else None,
               "netns_record": self.run.record_path if self.run else None,
               "workdir": self.workdir,
               "ovs": ({"workdir": self.ovs.workdir, "rundir": self.ovs.rundir,
                        "pids": self.ovs.pids} if self.ovs else None),
               "controller_pid": self.controller.pid if self.controller else None,
               "pids": self.run.pids if self.run else [],
               "owner": {"pid": os.getpid(), "start": _start_time(os.getpid())}}
        tmp = self.record_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, self.record_path)

    def _popen(self, ns, cmd: list, log_name: str, *, stdio: bool) -> subprocess.Popen:
        log_path = str(self.out / "logs" / log_name)
        logf = open(log_path, "wb")
        try:
            kw = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE) if stdio else dict(
                stdin=subprocess.DEVNULL, stdout=logf)
            # Its own session: Ctrl-C reaches only the orchestrator, which stops everything
            # in order; a child whose stdin closes (the orchestrator died) exits by itself.
            p = ns.popen(cmd, cwd=REPO, stderr=logf, start_new_session=True, **kw)
        finally:
            logf.close()
        self._save_record()
        return p

    def _veth(self, ns_a, name_a: str, mac_a: str | None, mtu_a: int,
              ns_b, name_b: str, mac_b: str | None, mtu_b: int) -> None:
        v = self.run.add_veth(ns_a, ns_b, mtu=(mtu_a, mtu_b), up=False)
        for ns, old, new, mac in ((ns_a, v.a_if, name_a, mac_a), (ns_b, v.b_if, name_b, mac_b)):
            cmd = ["ip", "link", "set", "dev", old, "name", new]
            if mac:
                cmd += ["address", mac]
            ns.run(cmd)
            ns.run(["ip", "link", "set", "dev", new, "up"])

    def _build_link(self, i: int) -> None:
        link = self.topo.links[i]
        a, b = link.ends
        if_a, if_b = self.plan.interface(a, i).name, self.plan.interface(b, i).name
        ns_a, ns_b = self._ns_of(a), self._ns_of(b)
        mtu_a, mtu_b = self.topo.shape(i, a).mtu, self.topo.shape(i, b).mtu
        shaped = link_is_shaped(self.topo, i)
        shaping = self.mechanism if shaped else "none"
        pcap = str(self.out / "pcaps" / f"link{i}_{a}-{b}.pcap")
        lb = _LinkBuild(i, a, b, if_a, if_b, ns_a, ns_b, shaping, pcap)
        if shaping == "shaper":
            mid = self.run.add_namespace(f"_l{i}")
            lb.mid = mid
            big = max(mtu_a, mtu_b)   # the shaper reads what either end sends, checks MTUs itself
            self._veth(ns_a, if_a, self.mac(a, i), mtu_a, mid, f"to-{a}", None, big)
            self._veth(mid, f"to-{b}", None, big, ns_b, if_b, self.mac(b, i), mtu_b)
        else:
            self._veth(ns_a, if_a, self.mac(a, i), mtu_a, ns_b, if_b, self.mac(b, i), mtu_b)
            if shaping == "netem":
                for src, ns, ifname in ((a, ns_a, if_a), (b, ns_b, if_b)):
                    p = direction_params(self.topo, i, src, self.seed)
                    limit = max(1, (p["queue_bytes"] or 1000 * QUEUE_PACKET_BYTES)
                                // QUEUE_PACKET_BYTES)
                    ns.run(["tc", "qdisc", "replace", "dev", ifname, "root",
                            *netem_args(p, limit)])
        self.links.append(lb)

    def _build_crossing(self, end: dict) -> None:
        """This worker's end of a link to another worker: the node's interface (a veth, as on
        a local link) leads to a middle namespace where the link's VXLAN device stands in for
        the far end. The direction leaving here is shaped here (the far worker shapes the
        other), by a shaper between the two, or by netem on the node's interface; otherwise
        a bridge joins them."""
        i, near = int(end["link"]), end["node"]
        link = self.topo.links[i]
        far = link.other(near)
        a, b = link.ends
        shaping = self.mechanism if link_is_shaped(self.topo, i) else "none"
        mid = self.run.add_namespace(f"_l{i}")
        big = int(end["mtu"])
        ifname, ns = end["ifname"], self._ns_of(near)
        self._veth(ns, ifname, self.mac(near, i), self.topo.shape(i, near).mtu,
                   mid, f"to-{near}", None, big)
        self._tunnel_device(end, mid, f"to-{far}")
        if shaping != "shaper":
            mid.run(["ip", "link", "add", "name", "br", "type", "bridge", "stp_state", "0"])
            mid.disable_ipv6("br")
            for port in (f"to-{near}", f"to-{far}"):
                mid.run(["ip", "link", "set", "dev", port, "master", "br"])
            mid.run(["ip", "link", "set", "dev", "br", "up"])
        if shaping == "netem":
            p = direction_params(self.topo, i, near, self.seed)
            limit = max(1, (p["queue_bytes"] or 1000 * QUEUE_PACKET_BYTES) // QUEUE_PACKET_BYTES)
            ns.run(["tc", "qdisc", "replace", "dev", ifname, "root", *netem_args(p, limit)])
        pcap = str(self.out / "pcaps" / f"link{i}_{a}-{b}.pcap")
        ends = {near: (ns, ifname), far: (None, None)}
        self.links.append(_LinkBuild(i, a, b, ends[a][1], ends[b][1], ends[a][0], ends[b][0],
                                     shaping, pcap, mid=mid, local=near))

    def _tunnel_device(self, end: dict, ns, name: str) -> None:
        """The VXLAN device of ``end``, made where the underlay is (this process's namespace,
        so its UDP socket stays there) and moved into ``ns`` as ``name``."""
        te = TunnelEnd(**{k: v for k, v in end.items() if k != "link"})
        add, set_mtu, _up = te.commands()
        netns_mod.run_here(add)
        self.run.adopt_link(te.device)
        res = netns_mod.run_here(set_mtu, check=False)
        if res.returncode != 0:
            raise EmulationError(f"the VXLAN device of links[{end['link']}] cannot take MTU "
                                 f"{te.mtu} over {te.underlay_dev}: {res.stderr.strip()} (the "
                                 f"underlay must carry the link's MTU + 50 bytes)")
        netns_mod.run_here(["ip", "link", "set", "dev", te.device, "netns", ns.name])
        ns.run(["ip", "link", "set", "dev", te.device, "name", name])
        ns.disable_ipv6(name)
        ns.run(["ip", "link", "set", "dev", name, "up"])

    def _build_switch(self, name: str) -> None:
        br = f"br-{name}"
        core = self.core
        core.run(["ip", "link", "add", "name", br, "type", "bridge", "stp_state", "0"])
        core.disable_ipv6(br)
        for iface in self.plan.interfaces[name]:
            core.run(["ip", "link", "set", "dev", iface.name, "master", br])
            for mac in self._macs_behind(name, iface):
                core.run(["bridge", "fdb", "replace", mac, "dev", iface.name, "master",
                          "static"])
        core.run(["ip", "link", "set", "dev", br, "up"])

    def _macs_behind(self, switch: str, iface) -> list[str]:
        """The MACs of the hosts' and routers' interfaces reached through ``iface``."""
        out, stack = [], [(iface.peer, iface.link, switch)]
        while stack:
            node, link, came_from = stack.pop()
            if node not in self.topo.switches:
                out.append(self.mac(node, link))
                continue
            for i in self.plan.interfaces[node]:
                if i.link != link:
                    stack.append((i.peer, i.link, node))
        return out

    def _neighbours(self, node: str, iface) -> dict[str, str]:
        """Static ARP: every other host or router on ``iface``'s subnet, ip -> MAC."""
        out = {}
        seg = self.plan.segments[iface.segment]
        for other, ifname in seg.members:
            if other == node:
                continue
            oif = next(i for i in self.plan.interfaces[other] if i.name == ifname)
            out[str(oif.addr.ip)] = self.mac(other, oif.link)
        return out

    def _configure_kernel_host(self, name: str) -> None:
        ns = self.ns[name]
        iface = self.plan.interfaces[name][0]
        ns.run(["ip", "addr", "add", str(iface.addr), "dev", iface.name])
        for ip, mac in self._neighbours(name, iface).items():
            ns.run(["ip", "neigh", "replace", ip, "lladdr", mac, "dev", iface.name,
                    "nud", "permanent"])
        for r in self.routes[name]:
            if r.via is not None:
                ns.run(["ip", "route", "replace", str(r.prefix), "via", str(r.via), "dev",
                        r.dev])

    # --- routers -------------------------------------------------------------------------

    def controller_config(self) -> dict:
        routers = []
        for k, (name, cfg) in enumerate(self.topo.routers.items()):
            if name not in self.here:
                continue
            ports = {}
            for iface in self.plan.interfaces[name]:
                if iface.addr is None:
                    continue
                ports[str(iface.index + 1)] = {
                    "name": iface.name, "ip": str(iface.addr), "mac": self.mac(name, iface.link),
                    "mtu": self.topo.shape(iface.link, name).mtu,
                    "neighbours": self._neighbours(name, iface)}
            doc = {"name": name, "dpid": k + 1, "ports": ports, "icmp_policy": cfg.icmp,
                   "routes": [{"prefix": str(r.prefix), "port": r.dev,
                               "via": str(r.via) if r.via else None}
                              for r in self.routes.get(name, [])]}
            if cfg.ratelimit_ms is not None:
                doc["icmp_ratelimit_ms"] = cfg.ratelimit_ms
            if isinstance(cfg.mss_clamp, int):
                doc["mss_clamp"] = cfg.mss_clamp
            routers.append(doc)
        return {"routers": routers}

    def _start_ovs_and_controller(self) -> None:
        cfg_path = os.path.join(self.workdir, "controller.json")
        with open(cfg_path, "w") as f:
            json.dump(self.controller_config(), f, indent=1)
        shutil.copy(cfg_path, self.out / "controller.json")
        self.ovs = ovs_mod.OvsInstance(os.path.join(self.workdir, "ovs"), netns=self.core.name)
        # The daemons detach: as a child subreaper for that moment this process becomes their
        # parent, so teardown reaps them at once (init would, in its own time).
        with _child_subreaper():
            self.ovs.start()
        self._save_record()
        self.rest_addr = f"unix:{self.workdir}/rest.sock"
        py = self.opts.controller_python or os.environ.get("SENDLAB_CONTROLLER_PYTHON") \
            or self.opts.python
        self.controller = self._popen(
            self.core, [py, "-m", "controller.launcher", "--config", cfg_path,
                        "--ofp-listen-host", "127.0.0.1", "--ofp-port", str(OFP_PORT),
                        "--rest", self.rest_addr, "--log-file", str(self.out / "controller.log")]
            + (["--verbose"] if self.opts.controller_verbose else []),
            "controller.stderr", stdio=False)

    def _build_routers(self) -> None:
        from controller import rest
        bridges = []
        for k, name in enumerate(self.topo.routers):
            if name not in self.here:
                continue
            br = f"{self.run.prefix}-{name}"
            self.ovs.add_bridge(br, dpid=k + 1)   # fail_mode secure: drops until programmed
            for iface in self.plan.interfaces[name]:
                self.ovs.add_port(br, iface.name, ofport=iface.index + 1)
            bridges.append(br)
        # Point the bridges at the controller once it listens: a bridge that finds nobody
        # there retries only after OVS's backoff (a second or more).
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self._check_controller_alive()
            res = self.core.run(["ss", "-Hltn", f"sport = :{OFP_PORT}"], check=False)
            if res.stdout.strip():
                break
            if time.monotonic() > deadline:
                raise EmulationError(f"the controller does not listen on port {OFP_PORT} after "
                                     f"{READY_TIMEOUT_S:.0f} s:\n{self._controller_log()}")
            time.sleep(0.05)
        for br in bridges:
            self.ovs.vsctl("set-controller", br, f"tcp:127.0.0.1:{OFP_PORT}", "--", "set",
                           "controller", br, "max_backoff=1000")
        while True:
            self._check_controller_alive()
            try:
                status = rest.request(self.rest_addr, "GET", "/routers", timeout=1)
                if all(s.get("ready") for s in status.values()):
                    self.timings["routers_ready_s"] = round(time.monotonic() - self._t_build, 3)
                    break
            except (OSError, rest.RestError):
                pass
            if time.monotonic() > deadline:
                raise EmulationError(f"routers not ready after {READY_TIMEOUT_S:.0f} s:\n"
                                     f"{self._controller_log()}\n{self.ovs.log_tail()}")
            time.sleep(0.02)

    def _check_controller_alive(self) -> None:
        if self.controller.poll() is not None:
            raise EmulationError(f"the controller exited with status "
                                 f"{self.controller.returncode}:\n{self._controller_log()}")

    def _controller_log(self) -> str:
        text = ""
        for p in (self.out / "controller.log", self.out / "logs" / "controller.stderr"):
            with contextlib.suppress(OSError):
                text += p.read_text()[-3000:]
        return text

    # --- captures and shapers --------------------------------------------------------------

    def _start_captures(self) -> None:
        for lb in self.links:
            if lb.shaping == "shaper":
                stats = os.path.join(self.workdir, f"shaper{lb.index}.json")
                job = {"if_a": f"to-{lb.a}", "if_b": f"to-{lb.b}", "a": lb.a, "b": lb.b,
                       "pcap": lb.pcap, "stats": stats,
                       "spin_us": self.opts.spin_us,
                       "directions": {"a>b": self._shaped_here(lb, lb.a),
                                      "b>a": self._shaped_here(lb, lb.b)}}
                path = os.path.join(self.workdir, f"shaper{lb.index}.job.json")
                with open(path, "w") as f:
                    json.dump(job, f, indent=1)
                p = self._popen(lb.mid, [self.opts.python, "-m", "testbed.shaper", path],
                                f"shaper-link{lb.index}.log", stdio=True)
                lb.proc = _Proc(f"shaper of link{lb.index}", p,
                                str(self.out / "logs" / f"shaper-link{lb.index}.log"))
            else:
                lb.tcpdump = self._start_tcpdump(lb)
        _wait_for([lb.proc for lb in self.links if lb.proc], "ready", READY_TIMEOUT_S)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for lb in self.links:
            if lb.tcpdump is None:
                continue
            log_path = self.out / "logs" / f"tcpdump-link{lb.index}.log"
            while b"listening on" not in log_path.read_bytes():
                if lb.tcpdump.poll() is not None or time.monotonic() > deadline:
                    raise EmulationError(f"tcpdump on link{lb.index} did not start: "
                                         f"{log_path.read_text()[-500:]}")
                time.sleep(0.01)

    def _shaped_here(self, lb: _LinkBuild, src: str) -> dict:
        """The shaper's parameters for the direction leaving ``src``: the link's, unless
        ``src`` is the far end of a crossing link (shaped on its own worker: passed as is)."""
        params = direction_params(self.topo, lb.index, src, self.seed)
        if lb.local is None or lb.local == src:
            return params
        return {"rate_bps": None, "delay_s": 0.0, "jitter_s": 0.0, "loss": None,
                "queue_bytes": None, "seed": params["seed"], "mtu": params["mtu"]}

    def _start_tcpdump(self, lb: _LinkBuild) -> subprocess.Popen:
        log_path = self.out / "logs" / f"tcpdump-link{lb.index}.log"
        ns, ifname = (lb.ns_b, lb.if_b) if lb.local == lb.b else (lb.ns_a, lb.if_a)
        with open(log_path, "wb") as logf:
            # --immediate-mode: a frame is written as it comes, not when a 1 s block fills
            # (a short run would end with the block unread); -Z root: files stay root's.
            p = ns.popen(["tcpdump", "-i", ifname, "-n", "-s", "0", "-U", "--immediate-mode",
                               "-Z", "root", "-w", lb.pcap],
                              stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                              start_new_session=True)
        self._save_record()
        return p

    # --- traffic ---------------------------------------------------------------------------

    def agent_jobs(self) -> dict[str, dict]:
        topo = self.topo
        specs = _flow_specs(topo)
        jobs: dict[str, dict] = {}

        def job_for(host: str) -> dict:
            if host not in jobs:
                h = topo.hosts[host]
                iface = self.plan.interfaces[host][0]
                vias = [str(r.via) for r in self.routes[host] if r.via is not None]
                gateway = None
                if vias:
                    default = [str(r.via) for r in self.routes[host]
                               if r.via is not None and r.prefix.prefixlen == 0]
                    gateway = default[0] if default else Counter(vias).most_common(1)[0][0]
                    if len(set(vias)) > 1 and h.stack == "python":
                        log.warning("%s routes via several routers; the python stack uses %s "
                                    "for every off-subnet destination", host, gateway)
                jobs[host] = {
                    "host": host, "stack": h.stack, "ifname": iface.name,
                    "addr": str(iface.addr.ip), "prefixlen": iface.addr.network.prefixlen,
                    "gateway": gateway, "neighbours": self._neighbours(host, iface),
                    "sysctls": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in topo.host_sysctls(host).items()},
                    "seed": derive_seed(self.seed, f"host:{host}"), "vnet_hdr": self.opts.vnet_hdr,
                    "send": [], "receive": [], "duration_s": topo.run.duration_s,
                    "stall_timeout_s": topo.run.stall_timeout_s,
                    "result": os.path.join(self.workdir, f"agent-{host}.json"),
                    "trace": self.trace, "trace_dir": str(self.out.resolve())}
            return jobs[host]

        for flow, spec in zip(topo.traffic, specs):
            snd = job_for(flow.from_)
            d = dataclasses.asdict(spec)
            if topo.hosts[flow.from_].stack == "linux" and not d["options"]["congestion"]:
                d["options"]["congestion"] = _kernel_congestion(topo, flow.from_)
            snd["send"].append(d)
            peer = topo.socket_options(flow, "to")
            po = {"nodelay": bool(peer.nodelay), "cork": bool(peer.cork), "sndbuf": peer.sndbuf,
                  "congestion": peer.congestion, "notsent_lowat": peer.notsent_lowat}
            if topo.hosts[flow.to].stack == "linux" and not po["congestion"]:
                po["congestion"] = _kernel_congestion(topo, flow.to)
            job_for(flow.to)["receive"].append({"spec": dataclasses.asdict(spec),
                                                "peer_options": po})
        return jobs

    def run_traffic(self) -> dict:
        """Start the agents, run the flows, stop everything that runs; returns the summary."""
        self.start_agents()
        self.go(time.monotonic() + 0.05)
        stopped_at = self.wait_done()
        self.stop_agents()
        return self.summary(stopped_at)

    def start_agents(self) -> None:
        """One agent per host built here, each told its flows; returns when all are ready."""
        jobs = {h: j for h, j in self.agent_jobs().items() if h in self.ns}
        self._jobs = jobs
        for host, job in jobs.items():
            path = os.path.join(self.workdir, f"agent-{host}.job.json")
            with open(path, "w") as f:
                json.dump(job, f, indent=1)
            p = self._popen(self.ns[host], [self.opts.python, "-m", "testbed.emu_host", path],
                            f"agent-{host}.log", stdio=True)
            self.agents[host] = _Proc(f"agent of {host}", p,
                                      str(self.out / "logs" / f"agent-{host}.log"))
        t_start = time.monotonic()
        _wait_for(list(self.agents.values()), "ready", READY_TIMEOUT_S)
        self.timings["agents_ready_s"] = round(time.monotonic() - t_start, 3)

    def go(self, t0: float) -> None:
        """Every agent starts its flows' clocks at ``t0`` (this machine's monotonic time)."""
        self.t0 = t0
        self.t0_wall = time.time() - time.monotonic() + self.t0
        for a in self.agents.values():
            a.send(f"go {self.t0!r}")

    def poll_agents(self, timeout_s: float) -> list[tuple[str, dict]]:
        """(host, event) for what the agents said within ``timeout_s``; raises
        :class:`EmulationError` if one exited during the run."""
        live = [a for a in self.agents.values() if not a.closed]
        if not live:
            time.sleep(max(0.0, timeout_s))
            return []
        readable, _, _ = select.select(live, [], [], max(0.0, timeout_s))
        out = []
        for host, a in self.agents.items():
            if a not in readable:
                continue
            out += [(host, ev) for ev in a.read_events()]
            if a.closed and not a.has("exit"):
                raise EmulationError(f"{a.name} exited during the run (status "
                                     f"{a.p.wait(5)}):\n{a.log_tail()}")
        return out

    def wait_done(self) -> float:
        """Until every sender is done (then receivers, for a grace) or the run's duration is
        up; returns when it stopped, in seconds since T0."""
        agents = list(self.agents.values())
        deadline = self.t0 + self.topo.run.duration_s
        senders_done_at = None
        while True:
            now = time.monotonic()
            if all(a.has("senders_done") for a in agents):
                if senders_done_at is None:
                    senders_done_at = now
                if all(a.has("receivers_done") for a in agents) or \
                        now - senders_done_at >= RECEIVER_GRACE_S:
                    break
            if now >= deadline or all(a.closed for a in agents):
                break
            wake = min(deadline, senders_done_at + RECEIVER_GRACE_S) if senders_done_at \
                else deadline
            self.poll_agents(wake - now)
        stopped_at = time.monotonic() - self.t0
        self.timings["traffic_s"] = round(stopped_at, 3)
        return stopped_at

    def stop_agents(self) -> None:
        """Stop the agents and read their results, stop the captures, ask the routers for
        their counters."""
        t_stop = time.monotonic()
        for a in self.agents.values():
            a.send("stop")
        for host, a in self.agents.items():
            if not a.stop(15):
                raise EmulationError(f"{a.name} did not stop:\n{a.log_tail()}")
            try:
                with open(self._jobs[host]["result"]) as f:
                    self.agent_results[host] = json.load(f)
            except (OSError, ValueError) as exc:
                raise EmulationError(f"{a.name} wrote no results ({exc}):\n{a.log_tail()}")
        self._stop_captures()
        self.timings["stop_s"] = round(time.monotonic() - t_stop, 3)
        if self.controller is not None:
            from controller import rest
            with contextlib.suppress(OSError, rest.RestError):
                self.router_status = rest.request(self.rest_addr, "GET", "/routers", timeout=5)

    def _stop_captures(self) -> None:
        for lb in self.links:
            if lb.proc is not None:
                lb.proc.stop(10)
                path = os.path.join(self.workdir, f"shaper{lb.index}.json")
                with contextlib.suppress(OSError, ValueError):
                    with open(path) as f:
                        lb.stats = json.load(f)
            if lb.tcpdump is not None and lb.tcpdump.poll() is None:
                lb.tcpdump.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    lb.tcpdump.wait(5)
            if lb.shaping == "netem":
                for ns, ifname, src in ((lb.ns_a, lb.if_a, lb.a), (lb.ns_b, lb.if_b, lb.b)):
                    if ns is None:   # the far end of a crossing link
                        continue
                    res = ns.run(["tc", "-s", "qdisc", "show", "dev", ifname], check=False)
                    lb.stats[src] = _parse_tc_stats(res.stdout)

    # --- the summary -------------------------------------------------------------------------

    def summary(self, stopped_at: float) -> dict:
        topo = self.topo
        specs = _flow_specs(topo)
        senders, receivers = {}, {}
        for res in self.agent_results.values():
            for f in res["flows"]:
                (senders if f["role"] == "sender" else receivers)[f["name"]] = f
        done_times = [s["done_at"] for s in senders.values() if s.get("done_at") is not None]
        all_done = len(done_times) == len(specs)
        end = max(done_times) if all_done and done_times else stopped_at
        wire = self._wire_segments()
        flows = []
        for flow, spec in zip(topo.traffic, specs):
            flows.append(self._flow_summary(flow, spec, senders.get(spec.name, {}),
                                            receivers.get(spec.name, {}), end, wire))
            if self.trace:
                self._flow_trace(flow, spec, senders.get(spec.name, {}), flows[-1], end)
        routers = {}
        for name in topo.routers:
            counters = (self.router_status.get(name) or {}).get("counters", {})
            routers[name] = {"icmp_frag_needed_sent": counters.get("icmp_frag_needed_sent", 0),
                             "dropped_oversize": counters.get("dropped_oversize", 0),
                             "fragmented": counters.get("fragmented", 0),
                             "counters": dict(sorted(counters.items()))}
        return {"version": SUMMARY_VERSION, "topology": topo.name, "backend": "mininet",
                "seed": self.seed, "end_s": round(end, 6), "flows": flows, "routers": routers,
                "links": self._link_summary(),
                "emulation": {"prefix": self.run_prefix, "shaping": self.mechanism,
                              "netem_probe": _NETEM.get("why") or None,
                              "vnet_hdr": self.opts.vnet_hdr, "timings": self.timings,
                              "hosts": {h: {k: r.get(k) for k in ("stack", "sysctls_applied",
                                                                  "sysctls_failed", "runtime",
                                                                  "cpu_s")}
                                        for h, r in self.agent_results.items()},
                              "shaper_cpu_s": {f"link{lb.index}": lb.stats.get("cpu_s")
                                               for lb in self.links if lb.shaping == "shaper"}}}

    def _flow_summary(self, flow, spec, snd: dict, rcv: dict, end: float, wire: dict) -> dict:
        rec = FlowRecord(spec)
        rec.connected_at = snd.get("connected_at")
        rec.writes = [tuple(w) for w in snd.get("writes", [])]
        rec.acks = [tuple(a) for a in snd.get("acks", [])]
        rec.responses = list(snd.get("responses", []))
        rec.received = rcv.get("received", 0)
        rec.intact = rcv.get("intact", True)
        rec.finished_at = snd.get("finished_at") if spec.kind == "request_response" \
            else rcv.get("finished_at")
        rec.error = snd.get("error") or rcv.get("error")
        acked = snd.get("last_acked", 0)
        stalled = snd.get("stalled_at") is not None
        done = rec.error is not None or stalled or (
            rec.finished_at is not None and (spec.kind == "request_response"
                                             or acked >= spec.bytes_requested))
        completed = done and rec.error is None and not stalled and rec.intact
        start = rec.connected_at if rec.connected_at is not None else spec.start_s
        finish = rec.finished_at if completed else end
        duration = max(finish - start, 1e-9) if rec.connected_at is not None else 0.0
        lat = _write_latencies(rec)
        ttfb = None
        if rec.acks and rec.connected_at is not None:
            ttfb = round(rec.acks[0][0] - rec.connected_at, 6)
        sizes = wire.get((flow.from_, snd.get("sport"), spec.port), Counter())
        stack = self.topo.hosts[flow.from_].stack
        return {
            "name": spec.name, "sender": spec.src, "receiver": spec.dst, "stack": stack,
            "kind": spec.kind, "bytes_requested": spec.bytes_requested, "bytes_acked": acked,
            "bytes_received": rec.received, "intact": rec.intact, "completed": completed,
            "stalled": stalled, "last_progress_s": round(snd.get("last_progress", 0.0), 6),
            "error": rec.error, "duration_s": round(duration, 6),
            "goodput_mbit": round(acked * 8 / duration / 1e6, 3) if duration else 0.0,
            "data_segments": sum(sizes.values()),
            "retransmits": snd.get("retransmits", 0),
            "time_to_first_byte_s": ttfb,
            "longest_stall_s": _longest_stall(rec, end if not completed else finish),
            "mss_initial": snd.get("mss_initial", 0), "mss_final": snd.get("mss_final", 0),
            "icmp_frag_needed_received": snd.get("icmp_frag_needed_received", 0),
            "segment_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "write_latency_ms": {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99)},
            "response_time_ms": {"p50": _percentile([r * 1000 for r in rec.responses], 0.5),
                                 "p99": _percentile([r * 1000 for r in rec.responses], 0.99)},
            "counters": snd.get("counters", {}),
            "congestion": snd.get("congestion"),
            "receiver_congestion": rcv.get("congestion"),
        }

    def _flow_trace(self, flow, spec, snd: dict, summary: dict, end: float) -> None:
        """``held_s_by_reason`` of one flow; a linux sender's ``trace_<flow>.jsonl`` too (a
        python sender's agent wrote its own), built from its writes and the capture of its
        access link, the writes' clock (seconds since T0) mapped to the capture's (wall)."""
        if self.topo.hosts[flow.from_].stack == "python":
            summary["held_s_by_reason"] = snd.get("held_s_by_reason", {})
            return
        from stack.trace import write_jsonl
        from .wire_trace import UNKNOWN, held_by_reason, timeline_from_wire
        link = self.plan.interfaces[flow.from_][0].link
        lb = next(lb for lb in self.links if lb.index == link)
        events = []
        try:
            events = timeline_from_wire(lb.pcap, str(self.plan.addr(flow.from_)),
                                        snd.get("sport"), str(self.plan.addr(flow.to)),
                                        spec.port, snd.get("writes", []),
                                        t0=self.t0_wall_of.get(flow.from_, self.t0_wall))
        except (OSError, ValueError) as exc:   # no capture, or no SYN of the flow in it
            log.warning("trace of %s: %s", spec.name, exc)
        write_jsonl(self.out / f"trace_{spec.name}.jsonl", events)
        summary["held_s_by_reason"] = held_by_reason(events, end) if events else {UNKNOWN: 0.0}

    def _wire_segments(self) -> dict:
        """(sender host, sport, dport) -> Counter of TCP payload sizes the sender put on its
        link, from the link's capture (the sim's data_segments and segment_sizes)."""
        import dpkt
        out: dict = {}
        for lb in self.links:
            ends = [e for e in (lb.a, lb.b) if e in self.topo.hosts]
            if not ends or not os.path.exists(lb.pcap):
                continue
            addrs = {bytes(self.plan.addr(h).packed): h for h in ends}
            try:
                with open(lb.pcap, "rb") as f:
                    for _, frame in dpkt.pcap.Reader(f):
                        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                            continue
                        ip = frame[14:]
                        host = addrs.get(bytes(ip[12:16]))
                        if host is None or ip[9] != 6:
                            continue
                        ihl = (ip[0] & 0x0F) * 4
                        sport = int.from_bytes(ip[ihl:ihl + 2], "big")
                        dport = int.from_bytes(ip[ihl + 2:ihl + 4], "big")
                        size = _tcp_payload_for(bytes(ip), sport, dport)
                        if size > 0:
                            out.setdefault((host, sport, dport), Counter())[size] += 1
            except (ValueError, dpkt.dpkt.NeedData) as exc:
                log.warning("%s: %s", lb.pcap, exc)
        return out

    def _link_summary(self) -> dict:
        links = {}
        for lb in self.links:
            for src, dst, key in ((lb.a, lb.b, "a>b"), (lb.b, lb.a, "b>a")):
                mtu = self.topo.shape(lb.index, src).mtu
                entry = {"offered": 0, "delivered": 0, "dropped_queue": 0, "dropped_loss": 0,
                         "dropped_oversize": 0, "mtu": mtu, "shaping": lb.shaping}
                if lb.shaping == "shaper":
                    st = lb.stats.get(key, {})
                    for k in ("offered", "delivered", "dropped_queue", "dropped_loss",
                              "dropped_oversize", "kernel_dropped", "send_errors", "late_us"):
                        if k in st:
                            entry[k] = st[k]
                elif lb.shaping == "netem":
                    st = lb.stats.get(src, {})
                    entry.update(offered=st.get("sent", 0) + st.get("dropped", 0),
                                 delivered=st.get("sent", 0), dropped_queue=st.get("dropped", 0))
                else:
                    n, over = _count_frames(lb.pcap, self.mac(src, lb.index), mtu)
                    entry.update(offered=n, delivered=n - over, dropped_oversize=over)
                links[f"link{lb.index}:{src}>{dst}"] = entry
        return links

    # --- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop and remove everything this run made; safe to repeat and after any failure.

        Ctrl-C and SIGTERM wait until it is done (then raise KeyboardInterrupt): a teardown
        cut short would leave what it had not removed yet."""
        if self._closed:
            return
        with _signals_deferred():
            self._close()

    def _close(self) -> None:
        errors = []
        for a in self.agents.values():
            with contextlib.suppress(Exception):
                a.stop(3)
        for lb in self.links:
            if lb.proc is not None:
                with contextlib.suppress(Exception):
                    lb.proc.stop(3)
            if lb.tcpdump is not None and lb.tcpdump.poll() is None:
                lb.tcpdump.terminate()
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)   # by its own PID: exits at once
            try:
                self.controller.wait(10)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait(5)
        if self.ovs is not None:
            with contextlib.suppress(OSError):
                shutil.copy(os.path.join(self.ovs.logdir, "ovs-vswitchd.log"),
                            self.out / "logs" / "ovs-vswitchd.log")
            pids = list(self.ovs.pids.values())
            try:
                self.ovs.stop()
            except Exception as exc:   # keep going: the namespaces must go regardless
                errors.append(f"OVS: {exc}")
            _wait_reaped(pids, 3.0)
        if self.run is not None:
            self.run.cleanup()          # stops recorded PIDs, deletes links and namespaces
            left = [n for n in self.run.namespaces if os.path.exists(f"/run/netns/{n}")]
            if left:
                errors.append(f"namespaces left: {left}")
        if self.workdir and not self.opts.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not errors and self.record_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
        self._closed = True
        if errors:
            raise EmulationError("teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> "EmulatedNetwork":
        return self

    def __exit__(self, typ, exc, tb) -> None:
        try:
            self.close()
        except EmulationError:
            if typ is None:
                raise
            log.exception("teardown after an error")


PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM for the block; raise KeyboardInterrupt after it if one came."""
    if not _is_main_thread():
        yield
        return
    got = []

    def note(signum, frame):
        got.append(signum)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if got:
        raise KeyboardInterrupt(f"signal {got[0]} during teardown")


@contextlib.contextmanager
def _child_subreaper():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if ok:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _wait_reaped(pids: list[int], timeout_s: float) -> None:
    """Reap the stopped daemons (our children, see _child_subreaper); if they are not ours,
    wait for whoever is their parent, so a listing right after the run does not show them."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                if not os.path.exists(f"/proc/{pid}"):
                    break
            time.sleep(0.01)


def _kernel_congestion(topo: Topology, host: str) -> str:
    """The algorithm a linux host's sockets get: its sysctl if given, else cubic (the python
    stack's default), so the kernel and the stack run the same one."""
    return topo.host_sysctls(host).get("net.ipv4.tcp_congestion_control") or "cubic"


def _parse_tc_stats(text: str) -> dict:
    import re
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", text)
    if not m:
        return {}
    return {"bytes": int(m.group(1)), "sent": int(m.group(2)), "dropped": int(m.group(3))}


def _count_frames(path: str, src_mac: str, mtu: int) -> tuple[int, int]:
    """Frames from ``src_mac`` in a pcap, and how many of them were over ``mtu``."""
    import dpkt
    mac = bytes.fromhex(src_mac.replace(":", ""))
    n = over = 0
    with contextlib.suppress(OSError, ValueError):
        with open(path, "rb") as f:
            for _, frame in dpkt.pcap.Reader(f):
                if frame[6:12] == mac:
                    n += 1
                    over += len(frame) - 14 > mtu
    return n, over


# --- entry points ---------------------------------------------------------------------------------

def run_emulated(topo: Topology, out_dir: str | Path, *, seed: int | None = None,
                 options: EmuOptions | None = None, trace: bool = False) -> dict:
    """Build the topology, run its traffic, write ``summary.json`` and the pcaps, tear down;
    with ``trace``, also each flow's ``trace_<flow>.jsonl`` and ``held_s_by_reason``."""
    out = Path(out_dir)
    in_main = _is_main_thread()
    old = None
    if in_main:
        def on_sigterm(signum, frame):
            raise _Interrupted("SIGTERM")
        old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with EmulatedNetwork(topo, out, seed=seed, options=options, trace=trace) as net:
            net.build()
            summary = net.run_traffic()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary
    except _Interrupted:
        raise KeyboardInterrupt("SIGTERM") from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old)


def _is_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22): with the
    PID it names one process, not whoever reuses the PID later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(owner: dict | None) -> bool:
    if not owner or not owner.get("pid"):
        return False
    return ovs_mod._alive(owner["pid"]) and _start_time(owner["pid"]) == owner.get("start")


def _ns_inode(name: str):
    with contextlib.suppress(OSError):
        st = os.stat(os.path.join(netns_mod.NETNS_DIR, name))
        return st.st_dev, st.st_ino
    return None


def _pids_in(namespaces: list[str], pids: list[int]) -> list[int]:
    """Of ``pids``, those still running inside one of ``namespaces`` (a reused PID is not)."""
    inodes = {i for i in (_ns_inode(n) for n in namespaces) if i}
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/ns/net")
            if (st.st_dev, st.st_ino) in inodes and ovs_mod._alive(pid):
                out.append(pid)
    return out


def _clean_netns_record(path: str, say) -> None:
    """A testbed.netns record: its PIDs (only inside its namespaces; SIGTERM, then SIGKILL),
    its links and namespaces, by the names it lists."""
    with open(path) as f:
        rec = json.load(f)
    names = rec.get("namespaces", [])
    live = _pids_in(names, rec.get("pids", []))
    stopped = list(live)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if ovs_mod._alive(p)]
    for pid in _pids_in(names, live):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    existing = [n for n in names if os.path.exists(os.path.join(netns_mod.NETNS_DIR, n))]
    netns_mod.cleanup_record(path, grace_s=0)
    left = [n for n in existing if os.path.exists(os.path.join(netns_mod.NETNS_DIR, n))]
    if stopped:
        say(f"  stopped processes {stopped}")
    if existing:
        say(f"  deleted namespaces {[n for n in existing if n not in left]}")
    if left:
        say(f"  namespaces still present: {left}")
    say(f"  removed {path}")


def cleanup_record(path: str, say=print) -> None:
    """Remove what a killed run left, by its record: the OVS daemons (through their own
    control sockets, then their PIDs if they still run OVS), the processes it started (only
    while inside its namespaces), its links and namespaces, its work directory, the record."""
    with open(path) as f:
        rec = json.load(f)
    ovs = rec.get("ovs") or {}
    for daemon in ("ovs-vswitchd", "ovsdb-server"):
        pid = (ovs.get("pids") or {}).get(daemon)
        if pid and ovs_mod._alive(pid):
            ctl = os.path.join(ovs["rundir"], f"{daemon}.{pid}.ctl")
            subprocess.run(["ovs-appctl", "-t", ctl, "exit"], capture_output=True, timeout=10,
                           check=False, env={**os.environ, "PATH": os.environ.get("PATH", "")
                                             + ":/usr/sbin:/sbin"})
            if not ovs_mod._wait_gone(pid, 5):
                ovs_mod._signal_own(pid, signal.SIGKILL, daemon)
                ovs_mod._wait_gone(pid, 2)
            say(f"  stopped {daemon} (pid {pid})")
    if rec.get("netns_record") and os.path.exists(rec["netns_record"]):
        _clean_netns_record(rec["netns_record"], say)
    d = rec.get("workdir")
    if d and os.path.isdir(d):
        shutil.rmtree(d, ignore_errors=True)
        say(f"  removed {d}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".tmp")
    os.unlink(path)
    say(f"  removed {path}")


STALE_NETNS_RECORD_S = 600.0


def clean(paths: list[str] | None = None, *, prefix: str | None = None, force: bool = False,
          say=print) -> int:
    """``sendlab clean``: remove the leftovers of killed runs, by their records only.

    Without ``paths``: every emulated-run record (``sendlab-emu-sl*.json``) whose run's
    process is gone, and every ``testbed.netns`` record (``sendlab-netns-sl*.json``) no such
    run names that has not changed for 10 minutes and whose processes are gone (those
    records say nothing of their owner: a younger one may belong to a running test).
    ``prefix`` limits it to one run; ``force`` cleans records of runs that look alive too.
    Returns 0, or 1 if a record could not be cleaned."""
    tmp = tempfile.gettempdir()
    if paths:
        emu = [p for p in paths if os.path.basename(p).startswith("sendlab-emu-")]
        nsr = [p for p in paths if p not in emu]
    else:
        pat = prefix or "sl*"
        emu = sorted(glob.glob(os.path.join(tmp, f"sendlab-emu-{pat}.json")))
        nsr = sorted(glob.glob(os.path.join(tmp, f"sendlab-netns-{pat}.json")))
    rc, named = 0, set()
    for path in emu:
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError) as exc:
            say(f"sendlab: skipped {path}: {exc}")
            continue
        if rec.get("netns_record"):
            named.add(rec["netns_record"])
        if not force and not paths and _owner_alive(rec.get("owner")):
            say(f"sendlab: skipped {path}: its run (pid {rec['owner']['pid']}) is still running")
            continue
        if not force and not paths and not rec.get("owner") and \
                time.time() - os.path.getmtime(path) < STALE_NETNS_RECORD_S:
            say(f"sendlab: skipped {path}: no owner recorded and younger than "
                f"{STALE_NETNS_RECORD_S:.0f} s (pass its path to clean it)")
            continue
        say(f"sendlab: cleaning up after {path}")
        try:
            cleanup_record(path, say)
        except Exception as exc:   # keep going with the other records
            say(f"sendlab: {path}: {type(exc).__name__}: {exc}")
            rc = 1
    for path in nsr:
        if path in named or not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                rec = json.load(f)
            if not force and not paths:
                live = _pids_in(rec.get("namespaces", []), rec.get("pids", []))
                if live or time.time() - os.path.getmtime(path) < STALE_NETNS_RECORD_S:
                    say(f"sendlab: skipped {path}: may belong to a running test "
                        f"(pass its path or --force to clean it)")
                    continue
            say(f"sendlab: cleaning up after {path}")
            _clean_netns_record(path, say)
        except Exception as exc:
            say(f"sendlab: {path}: {type(exc).__name__}: {exc}")
            rc = 1
    if not emu and not nsr:
        say("sendlab: nothing to clean")
    return rc


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.emulate clean [RECORD...]``: clean up after killed runs."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "clean":
        print("usage: python -m testbed.emulate clean [RECORD.json ...]", file=sys.stderr)
        return 2
    return clean(args[1:] or None)


if __name__ == "__main__":
    sys.exit(main())
