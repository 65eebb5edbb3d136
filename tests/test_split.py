"""One topology across machines: placement, the partition, the VXLAN/MTU plan, and (as root)
one VXLAN link between two "machines" on a veth underlay carrying the configured MTU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testbed import netns
from testbed.split import (
    VXLAN_OVERHEAD, Underlay, UnderlayMtuError, part_spec, partition, place, plan_vxlan,
    vni_base_for,
)
from testbed.topology import TopologyError, load_topology

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
WORKERS = ["w1", "w2", "w3"]


def _dumbbell(tmp_path: Path, placement: str = "", extra: str = "") -> Path:
    text = (TOPOLOGIES / "dumbbell.yaml").read_text() + extra
    if placement:
        text += "\nplacement:\n" + "".join(f"  {line}\n" for line in placement.split(";"))
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def test_placement_is_optional_and_everything_goes_to_the_first_worker(tmp_path):
    topo = load_topology(_dumbbell(tmp_path))
    assert topo.placement == {}
    part = partition(topo, WORKERS)
    assert set(part.assignment.values()) == {"w1"}
    assert part.crossing == ()
    assert list(part.parts) == ["w1"]


def test_placement_naming_an_unknown_node_is_a_located_error(tmp_path):
    with pytest.raises(TopologyError) as err:
        load_topology(_dumbbell(tmp_path, "r9: w1"))
    assert re.search(r"t\.yaml:\d+: placement\.r9: unknown node 'r9'", str(err.value))


def test_placement_naming_a_worker_not_in_the_workers_file_is_a_located_error(tmp_path):
    topo = load_topology(_dumbbell(tmp_path, "r2: w9"))
    with pytest.raises(TopologyError) as err:
        place(topo, WORKERS)
    assert re.search(r"t\.yaml:\d+: placement\.r2: unknown worker 'w9'; the workers file has "
                     r"w1, w2, w3", str(err.value))


def test_unplaced_nodes_follow_their_neighbours_so_only_the_bottleneck_crosses(tmp_path):
    topo = load_topology(_dumbbell(tmp_path, "h1: w1;h4: w2"))
    part = partition(topo, WORKERS)
    assert part.assignment == {"h1": "w1", "h2": "w1", "h3": "w2", "h4": "w2", "r1": "w1",
                               "r2": "w2", "s1": "w1", "s2": "w2"} or part.cut == 1
    assert part.cut == 1
    (c,) = part.crossing
    assert c.label == "r1-r2"
    assert sorted(w for _, w in c.ends) == ["w1", "w2"]
    assert set(part.local_links) == {"w1", "w2"}
    assert sum(len(v) for v in part.local_links.values()) + part.cut == len(topo.links)


def test_explicit_placement_across_a_lan_makes_every_crossing_link_a_tunnel(tmp_path):
    topo = load_topology(_dumbbell(tmp_path, "h1: w1;h2: w2;s1: w1;r1: w1;r2: w1;s2: w1;"
                                             "h3: w1;h4: w1"))
    part = partition(topo, WORKERS)
    assert [c.label for c in part.crossing] == ["h2-s1"]
    u = {w: Underlay(f"10.9.0.{k + 1}", "eth0", 1550) for k, w in enumerate(WORKERS)}
    (t,) = plan_vxlan(topo, part, u, prefix="sl1a2b")
    assert t.vni == vni_base_for("sl1a2b") + t.link
    a, b = t.ends
    assert (a.node, a.worker, a.ifname) == ("h2", "w2", "h2-eth0")
    assert (b.node, b.worker, b.ifname) == ("s1", "w1", "s1-eth1")
    assert (a.local, a.remote, b.local, b.remote) == ("10.9.0.2", "10.9.0.1",
                                                      "10.9.0.1", "10.9.0.2")
    assert a.device == b.device == f"sl1a2bx{t.link}" and len(a.device) <= 15
    assert a.commands()[0] == ["ip", "link", "add", a.device, "type", "vxlan", "id", str(t.vni),
                               "local", "10.9.0.2", "remote", "10.9.0.1", "dstport", "4789",
                               "dev", "eth0"]
    spec = part_spec(part, [t], "w2")
    assert spec["nodes"] == ["h2"] and spec["links"] == []
    assert [e["node"] for e in spec["tunnels"]] == ["h2"]
    json.dumps(spec)


def test_vnis_are_distinct_per_run_and_within_24_bits():
    bases = {vni_base_for(f"sl{n:04x}") for n in range(0, 65536, 97)}
    assert len(bases) == len(range(0, 65536, 97))
    assert all(256 <= b and b + 255 < (1 << 24) for b in bases)
    assert vni_base_for("slffff") + 255 < (1 << 24)


def test_an_underlay_too_small_for_mtu_plus_50_is_a_clear_error(tmp_path):
    topo = load_topology(_dumbbell(tmp_path, "h1: w1;h4: w2"))
    part = partition(topo, WORKERS)
    ok = {"w1": Underlay("10.9.0.1", "eth0", 1550), "w2": Underlay("10.9.0.2", "eth0", 9000)}
    assert plan_vxlan(topo, part, ok)[0].underlay_mtu == 1500 + VXLAN_OVERHEAD
    small = {**ok, "w1": Underlay("10.9.0.1", "eth0", 1500)}
    with pytest.raises(UnderlayMtuError) as err:
        plan_vxlan(topo, part, small)
    msg = str(err.value)
    assert "links[3] (r1-r2) crosses from w1 to w2 with mtu 1500" in msg
    assert "needs an underlay MTU of at least 1550" in msg
    assert "worker w1's underlay eth0 (10.9.0.1) has MTU 1500" in msg
    assert "give the link mtu: 1450 or less" in msg
    assert "w2" not in msg.split("MTU 1500")[-1]


def test_a_per_direction_mtu_counts_the_larger_direction(tmp_path):
    topo = load_topology(_dumbbell(tmp_path, "h1: w1;h4: w2"),
                         ["links.3.from.r2.mtu=1600"])
    part = partition(topo, WORKERS)
    assert part.crossing[0].mtu == 1600
    u = {w: Underlay("10.9.0.1", "eth0", 1600) for w in WORKERS}
    with pytest.raises(UnderlayMtuError, match="at least 1650"):
        plan_vxlan(topo, part, u)


# --- live: one VXLAN link between two namespaces on a veth underlay ------------------------------

NO_NETNS = netns.available()


@pytest.mark.skipif(NO_NETNS is not None, reason=f"emulation: {NO_NETNS}")
@pytest.mark.emulation
def test_vxlan_link_carries_the_configured_mtu_between_two_machines(tmp_path):
    """Two "machines" (namespaces) on a veth underlay of MTU 1550; on each a node namespace
    whose link end is bridged to the VXLAN device the plan makes. A DF ping of exactly the link
    MTU crosses; one byte more is refused at the sender; tear-down removes the devices."""
    topo = load_topology(TOPOLOGIES / "two_hosts.yaml")
    nodes = [n for n in topo.nodes]
    placement = {nodes[0]: "w1", **{n: "w2" for n in nodes[1:]}}
    topo = topo.model_copy(update={"placement": placement})
    part = partition(topo, ["w1", "w2"])
    assert part.cut >= 1
    c = part.crossing[0]
    mtu = c.mtu
    with netns.NetnsRun(record_dir=str(tmp_path)) as run:
        w = {name: run.add_namespace(name) for name in ("w1", "w2")}
        under = run.add_veth(w["w1"], w["w2"], mtu=mtu + VXLAN_OVERHEAD)
        devs = {"w1": under.a_if, "w2": under.b_if}
        addrs = {"w1": "10.250.0.1", "w2": "10.250.0.2"}
        for name in w:
            w[name].addr_add(devs[name], f"{addrs[name]}/24")
        underlays = {name: Underlay(addrs[name], devs[name], mtu + VXLAN_OVERHEAD)
                     for name in w}
        (tunnel,) = [t for t in plan_vxlan(topo, part, underlays, prefix=run.prefix)
                     if t.link == c.link]
        node_ns = {}
        for k, end in enumerate(tunnel.ends):
            ws = w[end.worker]
            for argv in end.commands():
                ws.run(argv)
            # The node's end of the crossing link, bridged to the tunnel as a local link's peer.
            ns = run.add_namespace(f"n{k}")
            veth = run.add_veth(ns, ws, mtu=end.mtu)
            ns.addr_add(veth.a_if, f"10.251.0.{k + 1}/24")
            ws.run(["ip", "link", "add", "br0", "type", "bridge"])
            ws.run(["ip", "link", "set", veth.b_if, "master", "br0"])
            ws.run(["ip", "link", "set", end.device, "master", "br0"])
            ws.disable_ipv6("br0")
            ws.run(["ip", "link", "set", "br0", "up"])
            node_ns[k] = ns
            shown = ws.run(["ip", "-d", "link", "show", end.device]).stdout
            assert f"vxlan id {end.vni} remote {end.remote} local {end.local}" in shown
            assert f"mtu {mtu} " in shown
        payload = mtu - 28  # IPv4 20 + ICMP 8
        fits = node_ns[0].run(["ping", "-M", "do", "-c", "3", "-i", "0.2", "-W", "2",
                               "-s", str(payload), "10.251.0.2"], check=False, timeout=30)
        assert fits.returncode == 0, fits.stdout + fits.stderr
        assert "3 received" in fits.stdout
        too_big = node_ns[0].run(["ping", "-M", "do", "-c", "1", "-W", "1",
                                  "-s", str(payload + 1), "10.251.0.2"], check=False, timeout=30)
        assert too_big.returncode != 0
        assert re.search(r"message too long|mtu", too_big.stdout + too_big.stderr, re.I)
        # Tear-down: each worker removes its tunnel end.
        for end in tunnel.ends:
            for argv in end.teardown():
                w[end.worker].run(argv)
            gone = w[end.worker].run(["ip", "link", "show", end.device], check=False)
            assert gone.returncode != 0
        names = list(run.namespaces)
    assert not any(Path(netns.NETNS_DIR, n).exists() for n in names)
