"""The OpenFlow router controller: check_pkt_larger encoding, config, flow plan, REST, and
(as root) one OVS userspace bridge routing between two namespaces.

Without root: the NXAction bytes against ``ovs-ofctl parse-actions``, config validation,
the flow plan (pure), the REST endpoint over a Unix socket.

With root (``emulation``): a private OVS (its own db, rundir, logs) whose ovs-vswitchd runs
in a namespace of its own, one bridge as router r1 between h1 (10.0.1.2, MTU 1500) and h2
(10.0.2.2, MTU 1400), and the controller started by ``controller.launcher`` as its own
process in that namespace (OpenFlow on the namespace's loopback, REST on a Unix socket).
$SENDLAB_CONTROLLER_PYTHON picks the controller's interpreter (e.g. a venv with ryu 4.34).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from controller import rest
from controller.app import (
    ConfigError, ETH_HLEN, TABLE_EGRESS, TABLE_INPUT, TABLE_ROUTE, FRAMEWORK, RouterState,
    load_config, parse_config, plan_route_flows, plan_static_flows,
)
from controller.nx_check_pkt_larger import action_class, encode_check_pkt_larger
from testbed import netns, ovs as ovs_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVS_OFCTL = ovs_mod.which("ovs-ofctl")
needs_ofctl = pytest.mark.skipif(OVS_OFCTL is None,
                                 reason="ovs-ofctl missing (apt-get install openvswitch-common)")
needs_framework = pytest.mark.skipif(FRAMEWORK is None,
                                     reason="neither os-ken nor ryu is installed")


def parser_module():
    return importlib.import_module(f"{FRAMEWORK.name}.ofproto.ofproto_v1_3_parser")


def ofctl_parse_actions(hex_actions: list[str]) -> list[str]:
    """What ``ovs-ofctl parse-actions OpenFlow13`` prints for each hex string, one per line.

    It decodes the bytes, prints them as actions and re-encodes them; any difference
    between the re-encoding and the input is printed too, as extra lines.
    """
    res = subprocess.run([OVS_OFCTL, "parse-actions", "OpenFlow13"],
                         input="\n".join(hex_actions) + "\n", capture_output=True, text=True,
                         timeout=10)
    assert res.returncode == 0, res.stderr
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- check_pkt_larger

CASES = [(1514, 0, 0), (1414, 0, 0), (82, 3, 7), (9014, 15, 31)]


@needs_ofctl
def test_check_pkt_larger_encoding_is_what_ovs_ofctl_parses():
    out = ofctl_parse_actions([encode_check_pkt_larger(*c).hex() for c in CASES])
    # One line per action and nothing else: OVS re-encoded each to the very same bytes.
    assert out == [f"actions=check_pkt_larger({n})->NXM_NX_REG{r}[{b}]" for n, r, b in CASES]


@needs_framework
def test_check_pkt_larger_nxaction_serializes_like_ovs():
    ofp, parser = FRAMEWORK.ofproto_v1_3, parser_module()
    cls = action_class(ofp, parser)
    for n, r, b in CASES:
        buf = bytearray()
        cls(n, f"reg{r}", b).serialize(buf, 0)
        assert bytes(buf) == encode_check_pkt_larger(n, r, b)
        back = parser.OFPAction.parser(bytes(buf), 0)  # registered: decodes to our class
        assert (type(back), back.pkt_len, back.dst, back.ofs) == (cls, n, f"reg{r}", b)


@needs_framework
@needs_ofctl
def test_check_pkt_larger_nxaction_bytes_pass_ovs_ofctl():
    cls = action_class(FRAMEWORK.ofproto_v1_3, parser_module())
    buf = bytearray()
    cls(1414, "reg0", 0).serialize(buf, 0)
    assert ofctl_parse_actions([buf.hex()]) == ["actions=check_pkt_larger(1414)->NXM_NX_REG0[0]"]


def test_check_pkt_larger_rejects_out_of_range_fields():
    with pytest.raises(ValueError, match="register 16"):
        encode_check_pkt_larger(1514, 16, 0)
    with pytest.raises(ValueError, match="bit offset 32"):
        encode_check_pkt_larger(1514, 0, 32)
    with pytest.raises(ValueError, match="pkt_len 65536"):
        encode_check_pkt_larger(65536)


# ----------------------------------------------------------------------------- config

def router_doc(**over) -> dict:
    doc = {"name": "r1", "dpid": 1, "ports": {
        "2": {"name": "r1-eth2", "ip": "10.0.2.1/24", "mtu": 1400,
              "neighbours": {"10.0.2.2": "02:00:00:00:00:22"}},
        "1": {"name": "r1-eth1", "ip": "10.0.1.1/24", "mac": "02:00:00:00:01:01"}},
        "routes": [{"prefix": "10.9.0.0/16", "port": "r1-eth2", "via": "10.0.2.2"}]}
    doc.update(over)
    return doc


def test_config_parses_ports_routes_and_defaults():
    cfg = parse_config({"routers": [router_doc(dpid="0x0000000000000001",
                                               icmp_policy="suppress", mss_clamp=1360)]})
    (r,) = cfg.routers
    assert (r.name, r.dpid, r.icmp_policy, r.mss_clamp) == ("r1", 1, "suppress", 1360)
    assert [(p.ofport, p.name, p.ip, p.prefixlen, p.mtu) for p in r.ports] == [
        (1, "r1-eth1", "10.0.1.1", 24, 1500), (2, "r1-eth2", "10.0.2.1", 24, 1400)]
    assert r.ports[0].mac == "02:00:00:00:01:01"
    assert r.ports[1].mac == "02:5e:00:01:00:02"  # default: 02:5e:dpid:ofport
    assert r.ports[1].neighbours == (("10.0.2.2", "02:00:00:00:00:22"),)
    assert [(x.prefix, x.port, x.next_hop) for x in r.routes] == [
        ("10.9.0.0/16", "r1-eth2", "10.0.2.2")]
    router = RouterState.from_spec(r).router
    assert router.icmp_policy == "suppress" and router.config.mss_clamp == 1360
    assert cfg.by_dpid()[1] is r


@pytest.mark.parametrize("change, message", [
    (lambda d: d["ports"]["1"].update(mtu=40), r"routers\[0\]\.ports\.1\.mtu: 40 is not in 68"),
    (lambda d: d["ports"]["1"].update(ip="10.0.1.1"), r"ports\.1\.ip: '10\.0\.1\.1' has no /"),
    (lambda d: d["ports"]["1"].update(mac="01:00:5e:00:00:01"), r"ports\.1\.mac: .* multicast"),
    (lambda d: d["ports"]["1"].update(colour="red"), r"ports\.1: unknown key 'colour'"),
    (lambda d: d["ports"].update({"0": d["ports"]["1"]}), r"ports\.0: OpenFlow port '0'"),
    (lambda d: d["ports"]["2"]["neighbours"].update({"10.0.1.9": "02:00:00:00:00:01"}),
     r"neighbours\.10\.0\.1\.9: not a neighbour on 10\.0\.2\.0/24"),
    (lambda d: d["routes"].append({"prefix": "10.8.0.0/16", "port": "nope"}),
     r"routers\[0\]: router r1: route 10\.8\.0\.0/16 uses unknown port 'nope'"),
    (lambda d: d["routes"].append({"prefix": "10.8.0.1/16", "port": "r1-eth1"}),
     r"routes\[1\]: route 10\.8\.0\.1/16: .*host bits set"),
    (lambda d: d.update(icmp_policy="drop"), r"icmp_policy: 'drop' is not one of send"),
    (lambda d: d.update(dpid="xyz"), r"dpid: expected an integer or a hex string"),
    (lambda d: d.pop("ports"), r"routers\[0\]: missing 'ports'"),
], ids=lambda v: v.replace("\\", "").split(": ")[0] if isinstance(v, str) else "")
def test_config_error_names_the_field(change, message):
    doc = router_doc()
    change(doc)
    with pytest.raises(ConfigError, match=message) as exc:
        parse_config({"routers": [doc]}, source="ctl.json")
    assert str(exc.value).startswith("sendlab: ctl.json: ")


def test_config_rejects_duplicate_routers():
    with pytest.raises(ConfigError, match=r"routers\[1\]\.dpid: datapath id 0x1 appears twice"):
        parse_config({"routers": [router_doc(), router_doc(name="r2")]})
    with pytest.raises(ConfigError, match=r"routers\[1\]\.name: router 'r1' appears twice"):
        parse_config({"routers": [router_doc(), router_doc(dpid=2)]})


def test_config_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"routers": [\n  {"name": "r1",\n   "name": "r2"}]}')
    with pytest.raises(ConfigError, match=f"sendlab: {bad}: duplicate key 'name'"):
        load_config(str(bad))
    bad.write_text('{"routers": [\n  {"name": "r1",}]}')
    with pytest.raises(ConfigError, match=f"sendlab: {bad}:2: "):
        load_config(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"routers": [router_doc()]}))
    assert load_config(str(good)).routers[0].name == "r1"


# ----------------------------------------------------------------------------- flow plan

def spec(**over):
    return parse_config({"routers": [router_doc(**over)]}).routers[0]


def flows_in(flows, table):
    return [f for f in flows if f.table == table]


def test_egress_check_is_the_egress_mtu_plus_ethernet_header():
    flows = plan_route_flows(spec(), {"10.0.1.2": ("r1-eth1", "02:00:00:00:00:12"),
                                      "10.0.2.2": ("r1-eth2", "02:00:00:00:00:22")})
    checks = {dict(f.match)["ipv4_dst"]: a for f in flows for a in f.actions
              if a[0] == "check_pkt_larger"}
    assert checks["10.0.1.2"] == ("check_pkt_larger", 1500 + ETH_HLEN, "reg0", 0)
    assert checks["10.0.2.2"] == ("check_pkt_larger", 1400 + ETH_HLEN, "reg0", 0)
    assert checks[("10.9.0.0", "255.255.0.0")][1] == 1400 + ETH_HLEN  # via r1-eth2


def test_oversize_goes_to_controller_before_ttl_is_decremented():
    egress = flows_in(plan_static_flows(spec()), TABLE_EGRESS)
    too_big = max(egress, key=lambda f: f.priority)
    assert dict(too_big.match) == {"reg0": (1, 1)} and too_big.actions == (("controller",),)
    forwarding = [f for f in egress if f.actions and f.actions[0] == ("dec_ttl",)]
    assert forwarding and all(f.priority < too_big.priority for f in forwarding)


def test_route_priorities_follow_longest_prefix_and_configured_wins_ties():
    s = spec(routes=[{"prefix": "10.9.0.0/16", "port": "r1-eth2", "via": "10.0.2.2"},
                     {"prefix": "10.0.1.0/24", "port": "r1-eth2", "via": "10.0.2.2"},
                     {"prefix": "0.0.0.0/0", "port": "r1-eth2", "via": "10.0.2.2"}])
    prio = {}
    for f in flows_in(plan_route_flows(s, {}), TABLE_ROUTE):
        prio.setdefault(dict(f.match)["ipv4_dst"], []).append((f.priority, f.actions))
    assert prio[("10.9.0.0", "255.255.0.0")][0][0] > prio[("0.0.0.0", "0.0.0.0")][0][0]
    # 10.0.1.0/24 is both configured (via r1-eth2) and connected: one flow, the configured.
    assert len(prio[("10.0.1.0", "255.255.255.0")]) == 1


def test_unresolved_next_hop_goes_to_controller_and_resolved_rewrites_macs():
    s = spec()
    s = parse_config({"routers": [router_doc(ports={
        "1": {"name": "r1-eth1", "ip": "10.0.1.1/24"},
        "2": {"name": "r1-eth2", "ip": "10.0.2.1/24"}})]}).routers[0]
    route = ("10.9.0.0", "255.255.0.0")
    before = {dict(f.match)["ipv4_dst"]: f for f in plan_route_flows(s, {})}
    assert before[route].actions == (("controller",),) and before[route].goto is None
    after = {dict(f.match)["ipv4_dst"]: f
             for f in plan_route_flows(s, {"10.0.2.2": ("r1-eth2", "02:00:00:00:00:22")})}
    assert ("set_field", "eth_dst", "02:00:00:00:00:22") in after[route].actions
    assert ("set_field", "eth_src", s.port("r1-eth2").mac) in after[route].actions
    assert ("set_field", "reg2", 2) in after[route].actions and after[route].goto == TABLE_EGRESS
    assert after["10.0.2.2"].priority > after[route].priority  # the neighbour's /32


def test_neighbour_host_flow_yields_to_a_more_specific_configured_route():
    s = spec(routes=[{"prefix": "10.0.1.0/28", "port": "r1-eth2", "via": "10.0.2.2"}])
    flows = plan_route_flows(s, {"10.0.1.2": ("r1-eth1", "02:00:00:00:00:12")})
    assert "10.0.1.2" not in {dict(f.match)["ipv4_dst"] for f in flows}


def test_ttl_expiry_router_addresses_and_clamped_syns_go_to_controller():
    flows = flows_in(plan_static_flows(spec(mss_clamp=1360)), TABLE_INPUT)
    to_ctl = [dict(f.match) for f in flows if f.actions == (("controller",),)]
    assert {"eth_type": 0x0800, "nw_ttl": 1} in to_ctl
    assert {"eth_type": 0x0800, "nw_ttl": 0} in to_ctl
    assert {"eth_type": 0x0800, "ipv4_dst": "10.0.1.1"} in to_ctl
    assert {"eth_type": 0x0800, "ipv4_dst": "10.0.2.255"} in to_ctl  # subnet broadcast
    assert {"eth_type": 0x0800, "ip_proto": 6, "tcp_flags_nxm": (2, 2)} in to_ctl
    assert not any("tcp_flags_nxm" in m for m in
                   (dict(f.match) for f in plan_static_flows(spec())))


# ----------------------------------------------------------------------------- REST

class FakeApi:
    def __init__(self):
        self.state = RouterState.from_spec(spec())

    def router_names(self):
        return ["r1"]

    def router_status(self, name):
        if name != "r1":
            raise KeyError(name)
        return self.state.status()

    def set_icmp_policy(self, name, policy):
        self.router_status(name)
        self.state.router.set_icmp_policy(policy)
        return self.state.status()


def test_rest_reads_counters_and_sets_policy_over_unix_socket(tmp_path):
    api = FakeApi()
    api.state.router.counters["icmp_frag_needed_sent"] = 3
    addr = f"unix:{tmp_path}/rest.sock"
    server = rest.RestServer(api, addr).start()
    try:
        assert rest.request(addr, "GET", "/routers")["r1"]["icmp_policy"] == "send"
        assert rest.request(addr, "GET", "/routers/r1/counters")["icmp_frag_needed_sent"] == 3
        got = rest.request(addr, "PUT", "/routers/r1/icmp_policy", {"policy": "suppress"})
        assert got["icmp_policy"] == "suppress" and api.state.router.icmp_policy == "suppress"
        with pytest.raises(rest.RestError, match="HTTP 400: icmp policy 'drop' is not one"):
            rest.request(addr, "PUT", "/routers/r1/icmp_policy", {"policy": "drop"})
        with pytest.raises(rest.RestError, match="HTTP 404: no router named 'r9'"):
            rest.request(addr, "GET", "/routers/r9")
        with pytest.raises(rest.RestError, match="HTTP 404"):
            rest.request(addr, "PUT", "/routers/r9/icmp_policy", {"policy": "send"})
    finally:
        server.close()
    assert not os.path.exists(f"{tmp_path}/rest.sock")


def test_rest_address_forms():
    assert rest.parse_address("tcp:127.0.0.1:8081") == rest.Address("tcp", "127.0.0.1", 8081)
    assert rest.parse_address("unix:/tmp/x.sock").path == "/tmp/x.sock"
    with pytest.raises(ValueError, match="expected tcp:HOST:PORT or unix:PATH"):
        rest.parse_address("127.0.0.1:8081")


# ----------------------------------------------------------------------------- emulation

def _emulation_unavailable() -> str | None:
    reason = netns.available() or ovs_mod.available()
    if reason:
        return reason
    if not any(importlib.util.find_spec(n) for n in ("os_ken", "ryu")):
        return "no controller framework (scripts/install-emulation.sh installs os-ken)"
    if shutil.which("ping") is None:
        return "ping missing (apt-get install iputils-ping)"
    return None


NO_EMULATION = _emulation_unavailable()


def emulation(fn):
    """Marked for the emulation run; skipped, saying why, where it cannot run."""
    fn = pytest.mark.skipif(NO_EMULATION is not None, reason=f"emulation: {NO_EMULATION}")(fn)
    return pytest.mark.emulation(fn)


H1, H2, GW1, GW2, EGRESS_MTU = "10.0.1.2", "10.0.2.2", "10.0.1.1", "10.0.2.1", 1400
MSS_CLAMP = 1200
# The controller's interpreter: another venv's python runs it on ryu 4.34, for instance.
CONTROLLER_PYTHON = os.environ.get("SENDLAB_CONTROLLER_PYTHON") or sys.executable


class RoutedPair:
    """h1 -- [r1: OVS bridge + controller] -- h2, all in namespaces of one NetnsRun."""

    def __init__(self, run, h1, h2, sw, ovs, sock, ctl, log_path):
        self.run, self.h1, self.h2, self.sw = run, h1, h2, sw
        self.ovs, self.sock, self.ctl, self.log_path = ovs, sock, ctl, log_path

    def ping(self, *args: str) -> str:
        res = self.h1.run(["ping", "-n", "-c", "1", "-W", "1", *args], check=False)
        return res.stdout + res.stderr

    def counters(self) -> dict:
        return rest.request(self.sock, "GET", "/routers/r1/counters")

    def set_policy(self, policy: str) -> None:
        assert rest.request(self.sock, "PUT", "/routers/r1/icmp_policy",
                            {"policy": policy})["icmp_policy"] == policy

    def forget_pmtu(self) -> None:
        # The kernel keeps a learned path MTU for 10 minutes; later tests need a fresh path.
        self.h1.run(["ip", "route", "flush", "cache"])

    def controller_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]


@pytest.fixture(scope="module")
def routed_pair(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("ctl"))
    run = netns.NetnsRun(record_dir=work)
    ovs = None
    ctl = None
    log_path = os.path.join(work, "controller.log")
    try:
        sw, h1, h2 = (run.add_namespace(n) for n in ("sw", "h1", "h2"))
        # tx off (and tso/gso off) on every veth end: the ends facing OVS userspace ports
        # must hand it valid checksums and <= MTU frames (INFRA-NOTES).
        l1 = run.add_veth(h1, sw, mtu=1500)
        l2 = run.add_veth(h2, sw, mtu=EGRESS_MTU)
        for ns, link, cidr, gw in ((h1, l1, f"{H1}/24", GW1), (h2, l2, f"{H2}/24", GW2)):
            ns.addr_add(link.a_if, cidr)
            ns.run(["ip", "route", "add", "default", "via", gw])
        cfg = {"routers": [{"name": "r1", "dpid": 1, "ports": {
            "1": {"name": l1.b_if, "ip": f"{GW1}/24", "mac": "02:00:00:00:01:01", "mtu": 1500},
            "2": {"name": l2.b_if, "ip": f"{GW2}/24", "mac": "02:00:00:00:02:01",
                  "mtu": EGRESS_MTU}}, "mss_clamp": MSS_CLAMP}]}
        cfg_path = os.path.join(work, "controller.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        ovs = ovs_mod.OvsInstance(os.path.join(work, "ovs"), netns=sw.name).start()
        bridge = f"{run.prefix}-r1"
        ovs.add_bridge(bridge, dpid=1, controller="tcp:127.0.0.1:6653")
        ovs.add_port(bridge, l1.b_if, ofport=1)
        ovs.add_port(bridge, l2.b_if, ofport=2)
        sock = f"unix:{work}/rest.sock"
        with open(log_path, "w") as log:
            ctl = sw.popen([CONTROLLER_PYTHON, "-m", "controller.launcher", "--config", cfg_path,
                            "--ofp-listen-host", "127.0.0.1", "--ofp-port", "6653",
                            "--rest", sock], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        pair = RoutedPair(run, h1, h2, sw, ovs, sock, ctl, log_path)
        deadline = time.monotonic() + 20
        while True:  # ready = the switch acknowledged every flow (barrier reply)
            assert ctl.poll() is None, f"controller exited:\n{pair.controller_log()}"
            try:
                if rest.request(sock, "GET", "/routers/r1", timeout=1)["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"controller not ready:\n{pair.controller_log()}\n{ovs.log_tail()}")
            time.sleep(0.05)
        yield pair
        assert pair.counters()["switch_errors"] == 0, pair.controller_log()
    finally:
        try:
            if ctl is not None and ctl.poll() is None:
                ctl.send_signal(signal.SIGTERM)  # by its own PID; the launcher exits at once
                try:
                    ctl.wait(10)
                except subprocess.TimeoutExpired:
                    ctl.kill()
                    ctl.wait(5)
        finally:
            try:
                if ovs is not None:
                    ovs.stop()
            finally:
                run.cleanup()  # also stops the controller by PID if it still runs
    # Nothing left: the namespaces, the daemons and the controller are gone.
    assert not [n for n in run.namespaces if os.path.exists(f"/run/netns/{n}")]
    assert ctl is None or ctl.returncode == 0
    assert not os.path.exists(f"{work}/rest.sock")
    for pid in ovs.pids.values() if ovs else ():
        assert not ovs_mod._alive(pid)


@emulation
def test_ping_crosses_router_with_ttl_decremented(routed_pair):
    routed_pair.forget_pmtu()
    out = routed_pair.ping(H2)
    assert re.search(rf"bytes from {H2}: icmp_seq=1 ttl=63 ", out), out  # 64 - 1 hop
    # And back again from h2, through the flows the first ping installed.
    res = routed_pair.h2.run(["ping", "-n", "-c", "2", "-W", "1", H1], check=False)
    assert "2 received" in res.stdout and "ttl=63" in res.stdout, res.stdout
    flows = routed_pair.ovs.dump_flows(f"{routed_pair.run.prefix}-r1", "table=2")
    assert re.search(rf"n_packets=[1-9].*nw_dst={H2} .*check_pkt_larger\({EGRESS_MTU + 14}\)",
                     flows), flows


@emulation
def test_df_ping_over_egress_mtu_gets_frag_needed_with_mtu(routed_pair):
    routed_pair.forget_pmtu()
    routed_pair.set_policy("send")
    before = routed_pair.counters()
    out = routed_pair.ping("-M", "do", "-s", str(EGRESS_MTU), H2)  # 1428-byte datagram
    assert f"From {GW1} icmp_seq=1 Frag needed and DF set (mtu = {EGRESS_MTU})" in out, out
    after = routed_pair.counters()
    assert after["icmp_frag_needed_sent"] == before["icmp_frag_needed_sent"] + 1
    assert after["dropped_oversize"] == before["dropped_oversize"] + 1
    # h1's kernel took the MTU from the ICMP.
    route = routed_pair.h1.run(["ip", "route", "get", H2]).stdout
    assert f"mtu {EGRESS_MTU}" in route, route
    # Just below the MTU goes through (1400-byte datagram = 1372 bytes of ping data).
    assert "1 received" in routed_pair.ping("-M", "do", "-s", str(EGRESS_MTU - 28), H2)


@emulation
def test_suppress_policy_turns_router_into_pmtu_black_hole(routed_pair):
    routed_pair.forget_pmtu()
    before = routed_pair.counters()
    routed_pair.set_policy("suppress")
    try:
        out = routed_pair.ping("-M", "do", "-s", str(EGRESS_MTU), H2)
        assert "Frag needed" not in out and "100% packet loss" in out, out
        after = routed_pair.counters()
        assert after["icmp_frag_needed_sent"] == before["icmp_frag_needed_sent"]
        assert after["icmp_frag_needed_suppressed"] == before["icmp_frag_needed_suppressed"] + 1
        route = routed_pair.h1.run(["ip", "route", "get", H2]).stdout
        assert "mtu" not in route, route  # nothing learned: the black hole
    finally:
        routed_pair.set_policy("send")
    assert "Frag needed and DF set" in routed_pair.ping("-M", "do", "-s", str(EGRESS_MTU), H2)


@emulation
def test_ttl_expiry_gets_time_exceeded_from_router(routed_pair):
    before = routed_pair.counters()["icmp_time_exceeded_sent"]
    out = routed_pair.ping("-t", "1", H2)
    assert f"From {GW1} icmp_seq=1 Time to live exceeded" in out, out
    assert routed_pair.counters()["icmp_time_exceeded_sent"] == before + 1


@emulation
def test_df_clear_datagram_over_egress_mtu_is_fragmented_by_router(routed_pair):
    routed_pair.forget_pmtu()
    before = routed_pair.counters()
    # 3028 bytes leave h1 as 1500 + 1500 + 68-byte fragments (its MTU); the router splits
    # the two 1500-byte ones for the 1400-byte egress, h2 reassembles and replies.
    out = routed_pair.ping("-M", "dont", "-s", "3000", H2)
    assert "1 received" in out, out
    after = routed_pair.counters()
    assert after["fragmented"] == before["fragmented"] + 2
    assert after["fragments_sent"] == before["fragments_sent"] + 4


@emulation
def test_router_answers_ping_to_its_own_address(routed_pair):
    out = routed_pair.ping(GW2)  # the far port's address, through the near port
    assert re.search(rf"bytes from {GW2}: icmp_seq=1 ttl=64 ", out), out



def _tcp_server(port: int) -> tuple[int, int]:
    """In h2: accept one connection; its TCP_MAXSEG and the number of bytes received."""
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(10)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            total = 0
            while chunk := conn.recv(65536):
                total += len(chunk)
            return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), total


def _tcp_client(addr: str, port: int, nbytes: int) -> int:
    deadline = time.monotonic() + 5
    while True:  # the server may not listen yet
        try:
            sock = socket.create_connection((addr, port), timeout=5)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        sock.sendall(bytes(nbytes))
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


@emulation
def test_mss_clamp_rewrites_syns_and_tcp_flows_through(routed_pair):
    before = routed_pair.counters()["mss_clamped"]
    server = routed_pair.h2.start(_tcp_server, 5001)
    client_mss = routed_pair.h1.call(_tcp_client, H2, 5001, 200_000, timeout=20)
    server_mss, received = server.result(timeout=20)
    assert received == 200_000  # kernel TCP through OVS userspace: checksums good (tx off)
    # Both SYNs (h1's MSS 1460, h2's 1360) were clamped, so each side sends <= the clamp
    # (minus 12 bytes of timestamp option).
    assert client_mss <= MSS_CLAMP and server_mss <= MSS_CLAMP, (client_mss, server_mss)
    assert routed_pair.counters()["mss_clamped"] == before + 2
