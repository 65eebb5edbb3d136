"""The simulated backend end to end: shipped topologies, PMTU black holes, loss, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from testbed.cli import main
from testbed.run import run_sim
from testbed.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def _run(tmp_path, name: str, *overrides: str, seed=None) -> dict:
    topo = load_topology(TOPOLOGIES / f"{name}.yaml", list(overrides))
    return run_sim(topo, tmp_path, seed=seed)


@pytest.mark.parametrize("name", sorted(p.stem for p in TOPOLOGIES.glob("*.yaml")))
def test_every_shipped_topology_runs_in_sim(tmp_path, name):
    summary = _run(tmp_path, name, "run.stall_timeout_s=2", "run.duration_s=20")
    assert summary["flows"], "a shipped topology has traffic"
    assert (tmp_path / "summary.json").exists()
    assert list(tmp_path.glob("pcaps/*.pcap")), "one pcap per link"
    for flow in summary["flows"]:
        # A flow either completed intact or is reported as stalled: never silently half done.
        assert flow["completed"] or flow["stalled"] or flow["error"], flow


def test_blackhole_stalls_without_probing(tmp_path):
    flow = _run(tmp_path, "pmtu_blackhole", "traffic.0.sysctls.net.ipv4.tcp_mtu_probing=0",
                "run.stall_timeout_s=3")["flows"][0]
    assert flow["stalled"] and not flow["completed"]
    assert flow["bytes_acked"] == 0
    assert flow["mss_final"] == flow["mss_initial"] == 1448


@pytest.mark.parametrize("mode", [1, 2])
def test_blackhole_recovers_with_probing(tmp_path, mode):
    flow = _run(tmp_path, "pmtu_blackhole", f"traffic.0.sysctls.net.ipv4.tcp_mtu_probing={mode}",
                "run.stall_timeout_s=20")["flows"][0]
    assert flow["completed"] and flow["intact"]
    # The probe search ends within tcp_probe_threshold (8 bytes) of the 1280-byte path MTU.
    assert 1280 - 40 - 12 - 8 <= flow["mss_final"] <= 1280 - 40 - 12
    if mode == 1:
        # Mode 1 reacts only after tcp_retries1 RTOs: about 3 s of nothing first.
        assert flow["duration_s"] > 3.0
    else:
        # Mode 2 starts at tcp_base_mss and never sends a segment the path cannot carry.
        assert flow["mss_initial"] == 1024
        assert flow["duration_s"] < 1.0


def test_frag_needed_drops_mss_within_one_rtt(tmp_path):
    summary = _run(tmp_path, "pmtu_icmp")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    assert flow["mss_final"] == 1280 - 40 - 12
    assert flow["icmp_frag_needed_received"] >= 1
    assert summary["routers"]["r2"]["icmp_frag_needed_sent"] >= 1
    # Only the first window was sent oversized: the retransmissions are that window, no more.
    assert flow["retransmits"] <= 20


def test_same_seed_gives_identical_summary_and_pcaps(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, "dumbbell", "links.2.loss=0.01", "run.duration_s=5")
    _run(b, "dumbbell", "links.2.loss=0.01", "run.duration_s=5")
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    assert list(a.glob("pcaps/*.pcap"))
    for pcap in a.glob("pcaps/*.pcap"):
        assert hashlib.sha256(pcap.read_bytes()).digest() == \
            hashlib.sha256((b / "pcaps" / pcap.name).read_bytes()).digest(), pcap.name


def test_different_seed_changes_a_lossy_run(tmp_path):
    s1 = _run(tmp_path / "a", "two_hosts", "links.0.loss=0.05", seed=1)
    s2 = _run(tmp_path / "b", "two_hosts", "links.0.loss=0.05", seed=2)
    assert json.dumps(s1["links"]) != json.dumps(s2["links"])


@pytest.mark.parametrize("loss", [0.001, 0.01, 0.05, 0.10])
@pytest.mark.parametrize("direction", ["data", "acks"])
def test_transfer_completes_intact_under_loss(tmp_path, loss, direction):
    # Loss on one direction only: where the data flows, or where the ACKs come back.
    side = "h1" if direction == "data" else "h2"
    flow = _run(tmp_path, "two_hosts", f"links.0.from.{side}.loss={loss}",
                "traffic.0.bulk.bytes=300000", "run.stall_timeout_s=30",
                "run.duration_s=120", _bulk_only())["flows"][0]
    assert flow["completed"], flow
    assert flow["intact"] and flow["bytes_received"] == 300000


def _bulk_only() -> str:
    return "traffic.0.writes=null"


def test_linux_host_is_refused_by_sim_with_a_clear_error(tmp_path, capsys):
    rc = main(["run", str(TOPOLOGIES / "two_hosts.yaml"), "--set", "hosts.h1.stack=linux",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "stack linux" in err and "mininet" in err
    assert not (tmp_path / "summary.json").exists()


def test_bad_yaml_exits_2_with_file_line_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nhosts:\n  h1: {}\n  h2: {}\nlinks:\n  - ends: [h1, h2]\n    mtuu: 1500\n")
    rc = main(["run", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"sendlab: {bad}:7: links[0].mtuu:"), err
    assert "Traceback" not in err
