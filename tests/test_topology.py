"""Topology files: the shipped ones load, what is derived from them, and one-line errors."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from testbed.topology import (
    Topology, TopologyError, assign_addresses, compute_routes, load_topology, require_backend,
)
from testbed.yaml_errors import (
    ConfigError, Source, apply_overrides, load_yaml_text, validation_errors,
)

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"

# A small valid topology; the line numbers matter to the error tests below.
BASE = """\
name: t
hosts:
  h1: {}
  h2: {}
routers:
  r1: {}
links:
  - ends: [h1, r1]
  - ends: [r1, h2]
    mtu: 1400
traffic:
  - name: bulk
    from: h1
    to: h2
    bulk: {bytes: 1000}
    sysctls:
      net.ipv4.tcp_autocorking: 0
"""


def load_text(tmp_path: Path, monkeypatch, text: str, overrides=()) -> Topology:
    monkeypatch.chdir(tmp_path)
    Path("t.yaml").write_text(text)
    return load_topology("t.yaml", overrides)


def error_of(tmp_path: Path, monkeypatch, text: str, overrides=()) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_text(tmp_path, monkeypatch, text, overrides)
    err = info.value
    assert "\n" not in str(err)
    return err


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --- shipped topologies ------------------------------------------------------------------------

def test_the_four_required_topologies_are_shipped():
    names = {p.stem for p in TOPOLOGIES.glob("*.yaml")}
    assert {"two_hosts", "dumbbell", "pmtu_blackhole", "pmtu_icmp"} <= names


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_topology_loads_and_runs_on_sim(path):
    topo = load_topology(path)
    assert topo.name == path.stem
    require_backend(topo, "sim")
    assert topo.run.stall_timeout_s > 0
    for flow in topo.traffic:  # every flow has a route both ways
        assert compute_routes(topo)[flow.from_]


def test_readme_example_loads(tmp_path, monkeypatch):
    text = (TOPOLOGIES / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    topo = load_text(tmp_path, monkeypatch, block)
    assert topo.hosts["h3"].stack == "linux"
    assert topo.shape(3, "r2").rate_mbit == 2.0 and topo.shape(3, "r1").rate_mbit == 10.0
    assert topo.shape(3, "r1").loss.gilbert.p == 0.01
    assert assign_addresses(topo).addr("h1") == IPv4Address("192.168.1.10")


def test_pmtu_blackhole_addresses_are_assigned_per_link_in_file_order():
    plan = assign_addresses(load_topology(TOPOLOGIES / "pmtu_blackhole.yaml"))
    got = {i.name: i.addr for ifaces in plan.interfaces.values() for i in ifaces}
    assert got == {
        "h1-eth0": IPv4Interface("10.0.1.2/24"), "r1-eth0": IPv4Interface("10.0.1.1/24"),
        "r1-eth1": IPv4Interface("10.0.2.1/24"), "r2-eth0": IPv4Interface("10.0.2.2/24"),
        "r2-eth1": IPv4Interface("10.0.3.1/24"), "h2-eth0": IPv4Interface("10.0.3.2/24"),
    }


def test_pmtu_blackhole_h1_reaches_h2_via_r1_then_r2():
    topo = load_topology(TOPOLOGIES / "pmtu_blackhole.yaml")
    routes = compute_routes(topo)
    h2_net = IPv4Network("10.0.3.0/24")

    def hop(node):
        return next(r for r in routes[node] if r.prefix == h2_net)

    def triple(node):
        route = hop(node)
        return route.dev, route.via, route.via_node

    assert triple("h1") == ("h1-eth0", IPv4Address("10.0.1.1"), "r1")
    assert triple("r1") == ("r1-eth1", IPv4Address("10.0.2.2"), "r2")
    assert (hop("r2").dev, hop("r2").via) == ("r2-eth1", None)  # connected
    back = next(r for r in routes["h2"] if r.prefix == IPv4Network("10.0.1.0/24"))
    assert back.via_node == "r2"


def test_pmtu_blackhole_and_pmtu_icmp_differ_only_in_r2s_icmp_policy():
    hole = load_topology(TOPOLOGIES / "pmtu_blackhole.yaml")
    icmp = load_topology(TOPOLOGIES / "pmtu_icmp.yaml")
    assert hole.routers["r2"].icmp == "suppress" and icmp.routers["r2"].icmp == "send"
    assert hole.shape(1, "r1").mtu == hole.shape(1, "r2").mtu == 1280
    assert hole.shape(0, "h1").mtu == 1500
    a = hole.model_dump(exclude={"name", "description", "routers"})
    b = icmp.model_dump(exclude={"name", "description", "routers"})
    assert a == b


def test_dumbbell_hosts_on_a_switch_share_one_subnet():
    topo = load_topology(TOPOLOGIES / "dumbbell.yaml")
    plan = assign_addresses(topo)
    lan = {plan.addr(n) for n in ("h1", "h2")} | {plan.interface("r1", 2).addr.ip}
    assert all(ip in IPv4Network("10.0.1.0/24") for ip in lan) and len(lan) == 3
    assert plan.interfaces["s1"][0].addr is None
    assert topo.shape(3, "r1").queue_packets == 100 and topo.shape(3, "r2").queue_packets == 1000


def test_link_direction_takes_defaults_then_link_then_from(tmp_path, monkeypatch):
    text = edit("name: t\n",
                "name: t\ndefaults: {delay_ms: 3, rate_mbit: 50, queue_bytes: 64KiB}\n")
    text = edit("    mtu: 1400\n",
                "    mtu: 1400\n    from: {h2: {delay_ms: 7, queue_packets: 10}}\n", text)
    topo = load_text(tmp_path, monkeypatch, text)
    fwd, rev = topo.shape(1, "r1"), topo.shape(1, "h2")
    def fields(shape):
        return shape.delay_ms, shape.rate_mbit, shape.mtu, shape.queue_bytes, shape.queue_packets

    assert fields(fwd) == (3, 50, 1400, 65536, None)
    assert fields(rev) == (7, 50, 1400, None, 10)
    assert fwd.queue_limit_bytes == 65536 and rev.queue_limit_bytes == 10 * (1400 + 14)
    assert topo.shape(0, "h1").mtu == 1500  # the built-in default


def test_explicit_address_fixes_its_subnet_and_automatic_ones_skip_it(tmp_path, monkeypatch):
    topo = load_text(tmp_path, monkeypatch, edit("  h1: {}", "  h1: {addr: 10.0.2.9/24}"))
    plan = assign_addresses(topo)
    assert plan.addr("h1") == IPv4Address("10.0.2.9")
    assert plan.interface("r1", 0).addr == IPv4Interface("10.0.2.1/24")
    assert plan.addr("h2") == IPv4Address("10.0.1.2")  # the first free automatic /24


def test_flows_get_names_and_free_ports_when_not_given(tmp_path, monkeypatch):
    text = BASE + "  - {from: h2, to: h1, writes: {count: 3, size: 10, msg_more: 2}}\n"
    text = edit("    to: h2\n", "    to: h2\n    port: 5001\n", text)
    topo = load_text(tmp_path, monkeypatch, text)
    flow = topo.traffic[1]
    assert (flow.name, flow.port) == ("flow2", 5002)
    assert [flow.writes.has_msg_more(i) for i in range(3)] == [True, False, True]


def test_loading_twice_gives_the_same_plan():
    a = load_topology(TOPOLOGIES / "dumbbell.yaml")
    b = load_topology(TOPOLOGIES / "dumbbell.yaml")
    assert assign_addresses(a) == assign_addresses(b) and compute_routes(a) == compute_routes(b)


def test_static_route_replaces_the_computed_one(tmp_path, monkeypatch):
    text = """\
name: t
hosts: {h1: {}, h2: {}}
routers: {r1: {}, r2: {}, r3: {}}
links: [h1:r1, r1:r2, r1:r3, r2:h2]
routes:
  r1:
    - {to: default, via: r3}
"""
    topo = load_text(tmp_path, monkeypatch, text)
    r1 = {r.prefix: r for r in compute_routes(topo)["r1"]}
    assert r1[IPv4Network("0.0.0.0/0")].via_node == "r3" and r1[IPv4Network("0.0.0.0/0")].static
    assert r1[IPv4Network("10.0.4.0/24")].via_node == "r2"


# --- errors: one line, FILE:LINE: PATH: message -------------------------------------------------

def test_unknown_key_is_reported_at_its_line_with_a_suggestion(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("    mtu: 1400", "    mtuu: 1400"))
    assert str(err) == "t.yaml:10: links[1].mtuu: unknown field 'mtuu'; did you mean 'mtu'?"
    assert (err.file, err.line, err.path) == ("t.yaml", 10, "links[1].mtuu")


def test_router_knobs_nothing_implements_are_unknown_fields(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  r1: {}", "  r1: {icmp: send, df: clear}"))
    assert str(err) == ("t.yaml:6: routers.r1.df: unknown field 'df'; "
                        "expected one of: icmp, icmp_ratelimit_ms, mss_clamp")


def test_unknown_top_level_key(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("traffic:", "trafic:"))
    assert str(err) == "t.yaml:11: trafic: unknown field 'trafic'; did you mean 'traffic'?"


def test_mtu_below_68(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("mtu: 1400", "mtu: 40"))
    assert str(err) == "t.yaml:10: links[1].mtu: mtu 40 is below 68, the smallest MTU IPv4 allows"


def test_unknown_link_endpoint(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("[r1, h2]", "[r1, h3]"))
    assert str(err) == ("t.yaml:9: links[1].ends[1]: unknown node 'h3'; did you mean 'h2'? "
                        "nodes are: h1, h2, r1")


def test_bad_sysctl_name(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("tcp_autocorking: 0", "tcp_autocork: 0"))
    assert str(err) == ("t.yaml:17: traffic[0].sysctls.net.ipv4.tcp_autocork: unknown sysctl "
                        "'net.ipv4.tcp_autocork'; did you mean net.ipv4.tcp_autocorking?")


def test_bad_sysctl_value(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("tcp_autocorking: 0", "tcp_autocorking: lots"))
    assert str(err) == ("t.yaml:17: traffic[0].sysctls.net.ipv4.tcp_autocorking: expected a "
                        "whole number, got 'lots'")


def test_invalid_node_name(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  r1: {}", "  Router1: {}"))
    assert str(err) == ("t.yaml:6: routers.Router1: 'Router1' is not a valid node name: 1 to 8 "
                        "lowercase letters or digits, starting with a letter (it becomes part of "
                        "interface names like h1-eth0)")


def test_duplicate_node_name_across_kinds(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  r1: {}", "  r1: {}\n  h2: {}"))
    assert str(err) == ("t.yaml:7: routers.h2: the name 'h2' is already used by hosts.h2 (line 4); "
                        "node names are unique")


def test_yaml_syntax_error(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  h2: {}", "  h2: {}}"))
    assert str(err) == ("t.yaml:4: YAML syntax error: expected <block end>, but found '}' at "
                        "column 9 (while parsing a block mapping that starts at line 3); check "
                        "the indentation")
    assert err.path == ""


def test_tab_indentation(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  h2: {}", "\th2: {}"))
    assert str(err) == ("t.yaml:4: YAML syntax error: found character '\\t' that cannot start any "
                        "token at column 1; indent with spaces, not tabs")


def test_duplicate_yaml_key_is_an_error(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  h2: {}", "  h2: {}\n  h2: {stack: linux}"))
    assert str(err) == "t.yaml:5: hosts.h2: given twice (first at line 4); remove one"


def test_loss_above_one(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("    mtu: 1400", "    mtu: 1400\n    loss: 1.5"))
    assert str(err) == ("t.yaml:11: links[1].loss: loss 1.5 is above 1; it is a probability "
                        "(write 1.5% for a percentage)")


def test_gilbert_parameter_out_of_range(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch,
                   edit("    mtu: 1400", "    mtu: 1400\n    loss:\n      gilbert: {p: 0.1, r: 2}"))
    assert str(err) == "t.yaml:12: links[1].loss.gilbert.r: 2 is above the maximum, 1"


def test_missing_required_field_reports_the_parents_line(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("bulk: {bytes: 1000}", "bulk: {}"))
    assert str(err) == "t.yaml:15: traffic[0].bulk.bytes: required field is missing"
    err = error_of(tmp_path, monkeypatch, edit("    from: h1\n", ""))
    assert str(err) == "t.yaml:12: traffic[0].from: required field is missing"


def test_missing_top_level_field_reports_line_1(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("name: t\n", ""))
    assert str(err) == "t.yaml:1: name: required field is missing"


def test_literal_choice(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("  h1: {}", "  h1: {stack: pyhton}"))
    assert str(err) == ("t.yaml:3: hosts.h1.stack: 'pyhton' is not allowed; "
                        "expected 'python' or 'linux'")


def test_flow_to_a_router(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("    to: h2", "    to: r1"))
    assert str(err) == "t.yaml:14: traffic[0].to: 'r1' is a router; flows run between hosts"


def test_flow_needs_exactly_one_kind(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("    bulk: {bytes: 1000}\n", ""))
    assert str(err) == ("t.yaml:12: traffic[0]: give exactly one of bulk, writes, request_response "
                        "(got none)")


def test_host_with_two_links(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, edit("    mtu: 1400\n", "    mtu: 1400\n  - h1:h2\n"))
    assert str(err) == ("t.yaml:11: links[2].ends: host h1 is already linked by links[0]; "
                        "a host has one interface (its links: links[0], links[2]); "
                        "put a switch in between for a LAN")


def test_switch_loop(tmp_path, monkeypatch):
    text = ("name: t\nhosts: {h1: {}}\nswitches: {s1: {}, s2: {}}\n"
            "links:\n  - h1:s1\n  - s1:s2\n  - s2:s1\n")
    err = error_of(tmp_path, monkeypatch, text)
    assert str(err) == ("t.yaml:7: links[2]: this link closes a loop of switches through "
                        "s2 and s1; "
                        "plain switches have no spanning tree")


def test_unreachable_destination(tmp_path, monkeypatch):
    text = edit("  - ends: [r1, h2]\n    mtu: 1400\n", "  - ends: [h2, r2]\n")
    text = edit("  r1: {}", "  r1: {}\n  r2: {}", text)
    err = error_of(tmp_path, monkeypatch, text)
    assert str(err) == ("t.yaml:14: traffic[0].to: h2 cannot be reached from h1: "
                        "h1 has no route to 10.0.2.2")


def test_static_route_loop(tmp_path, monkeypatch):
    text = """\
name: t
hosts: {h1: {}, h2: {}}
routers: {r1: {}, r2: {}, r3: {}}
links: [h1:r1, r1:r2, r2:r3, r3:h2]
routes:
  r2:
    - {to: h2, via: r1}
traffic:
  - {from: h1, to: h2, bulk: {bytes: 1000}}
"""
    err = error_of(tmp_path, monkeypatch, text)
    assert str(err) == ("t.yaml:9: traffic[0].to: h2 cannot be reached from h1: routing loop "
                        "h1 -> r1 -> r2 -> r1")


def test_all_errors_are_collected_one_line_each(tmp_path, monkeypatch):
    text = edit("  h1: {}", "  h1: {stak: python}", edit("    mtu: 1400", "    mtu: 40"))
    err = error_of(tmp_path, monkeypatch, text)
    assert [str(e) for e in err.errors] == [
        "t.yaml:3: hosts.h1.stak: unknown field 'stak'; did you mean 'stack'?",
        "t.yaml:10: links[1].mtu: mtu 40 is below 68, the smallest MTU IPv4 allows",
    ]


# --- overrides ---------------------------------------------------------------------------------

def test_set_overrides_fields_before_validation(tmp_path, monkeypatch):
    topo = load_text(tmp_path, monkeypatch, BASE, [
        "links.1.mtu=1280", "links[0].loss=1%", "routers.r1.icmp=suppress",
        "traffic.0.sysctls.net.ipv4.tcp_mtu_probing=1", "hosts.h2.stack=linux"])
    assert topo.shape(1, "r1").mtu == 1280 and topo.shape(0, "h1").loss.bernoulli == 0.01
    assert topo.routers["r1"].icmp == "suppress"
    assert topo.traffic[0].sysctls == {"net.ipv4.tcp_autocorking": 0, "net.ipv4.tcp_mtu_probing": 1}
    with pytest.raises(TopologyError) as info:
        require_backend(topo, "sim")
    assert str(info.value) == ("--set hosts.h2.stack=linux: hosts.h2.stack: stack linux (the "
                               "kernel's TCP) needs the emulated backend (--backend mininet); the "
                               "sim backend runs only stack python")


def test_sim_backend_refuses_linux_hosts_at_their_line(tmp_path, monkeypatch):
    topo = load_text(tmp_path, monkeypatch, edit("  h2: {}", "  h2: {stack: linux}"))
    with pytest.raises(TopologyError) as info:
        require_backend(topo, "sim")
    assert str(info.value).startswith("t.yaml:4: hosts.h2.stack: stack linux (the kernel's TCP) "
                                      "needs the emulated backend")
    require_backend(topo, "mininet")


def test_set_of_an_unknown_field_names_the_override(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, BASE, ["hosts.h1.stak=linux"])
    assert str(err) == ("--set hosts.h1.stak=linux: hosts.h1.stak: unknown field 'stak'; "
                        "did you mean 'stack'?")


def test_set_of_a_bad_value_names_the_override(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, BASE, ["links.1.mtu=40"])
    assert str(err) == ("--set links.1.mtu=40: links[1].mtu: mtu 40 is below 68, "
                        "the smallest MTU IPv4 allows")


def test_set_with_a_bad_path(tmp_path, monkeypatch):
    err = error_of(tmp_path, monkeypatch, BASE, ["links.7.mtu=1400"])
    assert str(err) == "--set links.7.mtu=1400: links[7]: links has 2 item(s), numbered from 0"
    err = error_of(tmp_path, monkeypatch, BASE, ["links.1.mtu"])
    assert str(err) == "--set links.1.mtu: expected PATH=VALUE, e.g. links.0.mtu=1280"


def test_set_reaches_into_link_shorthands(tmp_path, monkeypatch):
    text = edit("  - ends: [h1, r1]", "  - h1:r1")
    topo = load_text(tmp_path, monkeypatch, text, ["links.0.mtu=9000"])
    assert topo.shape(0, "r1").mtu == 9000


# --- yaml_errors on its own (reused by experiments) ---------------------------------------------

def test_load_yaml_records_the_line_of_every_key_and_item():
    data, lines = load_yaml_text("a:\n  b: 1\n  c:\n    - x\n    - {d: 2}\n", "f.yaml")
    assert data == {"a": {"b": 1, "c": ["x", {"d": 2}]}}
    assert lines[("a",)] == 1 and lines[("a", "b")] == 2 and lines[("a", "c")] == 3
    assert lines[("a", "c", 0)] == 4 and lines[("a", "c", 1, "d")] == 5


def test_merge_keys_work_and_own_keys_override_merged_ones():
    data, lines = load_yaml_text("x: &x {a: 1, b: 2}\ny:\n  <<: *x\n  b: 3\n", "m.yaml")
    assert data["y"] == {"a": 1, "b": 3}
    assert lines[("y", "b")] == 4 and lines[("y", "a")] == 1


def test_validation_errors_map_to_nearest_line_for_any_model():
    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int

    class Outer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[Inner]

    text = "items:\n  - {size: 1}\n  - {}\n  - {size: 2, colour: red}\n"
    data, lines = load_yaml_text(text, "e.yaml")
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    got = [str(e) for e in validation_errors(info.value, Source("e.yaml", lines), Outer)]
    assert got == ["e.yaml:3: items[1].size: required field is missing",
                   "e.yaml:4: items[2].colour: unknown field 'colour'; expected one of: size"]


def test_overrides_are_blamed_for_their_values():
    data, lines = load_yaml_text("a:\n  b: 1\n", "f.yaml")
    source = Source("f.yaml", lines)
    data = apply_overrides(data, source, ["a.c.d=[1, 2]"])
    assert data == {"a": {"b": 1, "c": {"d": [1, 2]}}}
    assert source.origin(("a", "c", "d", 0)) == ("--set a.c.d=[1, 2]", None)
    assert source.origin(("a", "b")) == ("f.yaml", 2)
    assert isinstance(source.error(("a", "b"), "bad"), ConfigError)
