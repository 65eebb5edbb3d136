"""One topology across machines (``sendlab run --backend mininet --workers``), end to end.

The lab of tests/sshlab.py, with an underlay of exactly 1550 bytes (a 1500-byte link + the 50
bytes of VXLAN): each "machine" builds its part of the topology with the emulated backend (its
own namespaces, private OVS and controller) from its own sshd session; crossing links are
VXLAN tunnels between the machines' underlay addresses.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from testbed import netns
from testbed.emulate import available, interface_mac

from sshlab import NO_LAB, ROOT, Lab

TOPOLOGIES = ROOT / "topologies"
UNDERLAY_MTU = 1550
NO_SPLIT = NO_LAB or available()


def emulation(fn):
    """Needs root, namespaces, sshd and the emulated backend; skipped, saying why, without."""
    fn = pytest.mark.skipif(NO_SPLIT is not None, reason=f"emulation: {NO_SPLIT}")(fn)
    return pytest.mark.emulation(fn)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("splitlab"), ["w1", "w2", "w3"], mtu=UNDERLAY_MTU)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def up(lab):
    lab.ensure_up()
    before = _namespaces()
    yield lab
    # Whatever a test did, the workers' parts leave nothing behind.
    deadline = time.monotonic() + 30
    while _namespaces() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _namespaces() - before, "a part left namespaces behind"


def _namespaces() -> set[str]:
    return set(os.listdir(netns.NETNS_DIR)) if os.path.isdir(netns.NETNS_DIR) else set()


def _topology(tmp_path: Path, src: str, placement: dict[str, str], edit=None) -> Path:
    text = (TOPOLOGIES / src).read_text()
    if edit:
        text = edit(text)
    text += "\nplacement:\n" + "".join(f"  {n}: {w}\n" for n, w in placement.items())
    path = tmp_path / src
    path.write_text(text)
    return path


def _cli(argv: list[str]):
    """``sendlab ARGV`` in this process: (exit status, everything it printed)."""
    from testbed.cli import main
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(handler)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
    return rc, buf.getvalue()


def _run(lab: Lab, argv: list[str], timeout: float = 240.0):
    return lab.coord.call(_cli, argv, timeout=timeout)


def _frames(pcap: Path) -> list[bytes]:
    with open(pcap, "rb") as f:
        return [bytes(frame) for _, frame in dpkt.pcap.Reader(f)]


BULK = ["--set", "traffic.0.bulk.bytes=1MB"]


def _bulk_two_hosts(text: str) -> str:
    return text.replace("""    writes:
      count: 200
      size: 100             # bytes per write
      interval_ms: 1        # one write per millisecond: much less than an RTT apart
""", "    bulk: {bytes: 1MB}\n")


@emulation
@pytest.mark.parametrize("sender, receiver", [("python", "python"), ("python", "linux"),
                                              ("linux", "python")])
def test_a_link_split_over_two_workers_carries_full_sized_frames(up, tmp_path, sender,
                                                                 receiver):
    topo = _topology(tmp_path, "two_hosts.yaml", {"h1": "w1", "h2": "w2"}, _bulk_two_hosts)
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    out = tmp_path / "out"
    rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--workers", str(wf),
                         "--out", str(out), "--trace", "--set", f"hosts.h1.stack={sender}",
                         "--set", f"hosts.h2.stack={receiver}"])
    assert rc == 0, text
    s = json.loads((out / "summary.json").read_text())
    (flow,) = s["flows"]
    assert flow["completed"] and flow["intact"], flow
    assert s["emulation"]["hosts"]["h1"]["stack"] == sender     # what w1's agent ran
    assert s["emulation"]["hosts"]["h2"]["stack"] == receiver   # what w2's agent ran
    # The sender's timeline: a python sender's decision trace, written on w1 and copied back;
    # a linux sender's, built here from its writes and the merged capture of its link.
    events = [json.loads(line) for line in
              (out / "trace_small-writes.jsonl").read_text().splitlines()]
    sent = [e for e in events if e["kind"] == "xmit" and e.get("len", 0) > 0]
    assert sum(e["len"] for e in sent) >= 1_000_000, events[:5]
    assert flow["held_s_by_reason"]
    assert flow["bytes_received"] == 1_000_000
    (tunnel,) = s["emulation"]["tunnels"]
    assert tunnel["mtu"] == 1500 and tunnel["underlay_mtu_needed"] == UNDERLAY_MTU
    assert {e["worker"] for e in tunnel["ends"]} == {"w1", "w2"}
    assert s["emulation"]["workers"]["w1"]["nodes"] == ["h1"]
    assert s["emulation"]["workers"]["w2"]["nodes"] == ["h2"]
    # The endpoints see the link's MTU: full 1500-byte IP packets cross the 1550-byte underlay.
    frames = _frames(out / "pcaps" / "link0_h1-h2.pcap")
    h1, h2 = (bytes.fromhex(interface_mac(0, end).replace(":", "")) for end in (0, 1))
    sizes = [len(f) for f in frames if f[6:12] == h1]
    assert max(sizes) == 1514, sorted(set(sizes))[-5:]
    assert any(f[6:12] == h2 for f in frames), "the merged pcap lacks h2's ACKs"
    assert flow["segment_sizes"] and max(map(int, flow["segment_sizes"])) == flow["mss_final"]
    # Shaping on the crossing link: 100 Mbit/s and 5 ms each way.
    assert flow["goodput_mbit"] < 100
    # Each direction was delayed once, on the worker it left: a round trip takes 10 ms (with
    # one direction unshaped it would take 5).
    assert 0.0099 <= flow["time_to_first_byte_s"] < 0.05, flow["time_to_first_byte_s"]
    link = s["links"]["link0:h1>h2"]
    assert link["shaping"] == "shaper" and link["delivered"] >= len(sizes) > 600
    for name in ("w1", "w2"):
        assert (out / "parts" / name / "part.json").exists()


@emulation
def test_pmtu_blackhole_split_across_the_black_hole_link_behaves_as_on_one_machine(up, tmp_path):
    placement = {"h1": "w1", "r1": "w1", "r2": "w2", "h2": "w2"}
    topo = _topology(tmp_path, "pmtu_blackhole.yaml", placement)
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    probing = ["--set", "traffic.0.sysctls.net.ipv4.tcp_mtu_probing=1", "--set",
               "traffic.0.bulk.bytes=200kB"]
    results = {}
    for where, extra in (("split", ["--workers", str(wf)]), ("local", [])):
        out = tmp_path / where
        rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--out", str(out),
                             *probing, *extra])
        assert rc == 0, text
        results[where] = json.loads((out / "summary.json").read_text())
    split, local = results["split"], results["local"]
    (tunnel,) = split["emulation"]["tunnels"]
    assert tunnel["label"].startswith("r1") and tunnel["mtu"] == 1280
    for s in (split, local):
        (flow,) = s["flows"]
        assert flow["completed"] and flow["intact"], flow
        # Full-sized at first; at the end, segments that fit the 1280-byte link (1228 once
        # probing climbs back; lower if a loaded machine made it detect twice).
        assert flow["mss_initial"] == 1448 and flow["mss_final"] <= 1228, flow
        # No ICMP: the sender found the path MTU by black-hole detection (a second or more).
        assert flow["icmp_frag_needed_received"] == 0
        assert s["routers"]["r2"]["icmp_frag_needed_sent"] == 0
        assert s["routers"]["r2"]["dropped_oversize"] > 0
        assert flow["time_to_first_byte_s"] > 1.0
    fs, fl = split["flows"][0], local["flows"][0]
    assert abs(fs["time_to_first_byte_s"] - fl["time_to_first_byte_s"]) < 1.0, (fs, fl)


@emulation
def test_pmtu_blackhole_split_without_probing_stalls_as_on_one_machine(up, tmp_path):
    placement = {"h1": "w1", "r1": "w1", "r2": "w2", "h2": "w2"}
    topo = _topology(tmp_path, "pmtu_blackhole.yaml", placement)
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    out = tmp_path / "out"
    rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--workers", str(wf),
                         "--out", str(out), "--set", "run.stall_timeout_s=2"])
    assert rc == 0, text
    s = json.loads((out / "summary.json").read_text())
    (flow,) = s["flows"]
    assert flow["stalled"] and not flow["completed"]
    assert s["routers"]["r2"]["dropped_oversize"] > 0
    assert s["routers"]["r2"]["icmp_frag_needed_sent"] == 0


@emulation
def test_dumbbell_over_three_workers_with_switch_ends_on_its_crossing_links(up, tmp_path):
    """Senders and their switch on w1, the routers on w2, receivers and their switch on w3:
    two tunnels, each with a switch at one end (frames from many MACs cross it)."""
    topo = _topology(tmp_path, "dumbbell.yaml", {"s1": "w1", "r1": "w2", "r2": "w2",
                                                 "s2": "w3"})
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2", "w3"])
    out = tmp_path / "out"
    rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--workers", str(wf),
                         "--out", str(out), "--set", "traffic.0.bulk.bytes=300kB",
                         "--set", "traffic.1.start_ms=0", "--set", "traffic.1.writes.count=50"])
    assert rc == 0, text
    s = json.loads((out / "summary.json").read_text())
    workers = s["emulation"]["workers"]
    assert workers["w1"]["nodes"] == ["h1", "h2", "s1"]     # placement completed by neighbours
    assert workers["w3"]["nodes"] == ["h3", "h4", "s2"]
    assert sorted(t["label"] for t in s["emulation"]["tunnels"]) == ["r2-s2", "s1-r1"]
    assert len({t["vni"] for t in s["emulation"]["tunnels"]}) == 2
    for flow in s["flows"]:
        assert flow["completed"] and flow["intact"], flow
    # The s1-r1 capture: what crossed from w1 (both senders' frames, through the switch) and
    # what came back from r1, one file in time order.
    frames = _frames(out / "pcaps" / "link2_s1-r1.pcap")
    src = {f[6:12] for f in frames}
    h1, h2, r1 = (bytes.fromhex(interface_mac(link, end).replace(":", ""))
                  for link, end in ((0, 0), (1, 0), (2, 1)))
    assert {h1, h2, r1} <= src, src
    assert s["links"]["link2:s1>r1"]["delivered"] > 0
    assert s["links"]["link2:r1>s1"]["delivered"] > 0


@emulation
def test_without_placement_the_whole_topology_runs_on_the_first_worker(up, tmp_path):
    topo = tmp_path / "two_hosts.yaml"
    topo.write_text(_bulk_two_hosts((TOPOLOGIES / "two_hosts.yaml").read_text()))
    wf = up.workers_file(tmp_path / "workers.yaml", ["w2", "w1"])
    out = tmp_path / "out"
    rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--workers", str(wf),
                         "--out", str(out)])
    assert rc == 0, text
    s = json.loads((out / "summary.json").read_text())
    assert s["emulation"]["workers"] == {"w2": s["emulation"]["workers"]["w2"]}
    assert s["emulation"]["workers"]["w2"]["nodes"] == ["h1", "h2"]
    assert s["emulation"]["tunnels"] == []
    (flow,) = s["flows"]
    assert flow["completed"] and flow["intact"] and flow["bytes_received"] == 1_000_000


@emulation
def test_an_underlay_too_small_for_the_link_is_refused_before_anything_is_built(up, tmp_path):
    topo = _topology(tmp_path, "two_hosts.yaml", {"h1": "w1", "h2": "w2"})
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    rc, text = _run(up, ["run", str(topo), "--backend", "mininet", "--workers", str(wf),
                         "--out", str(tmp_path / "out"), "--set", "links.0.mtu=1501"])
    assert rc == 2, text
    assert "links[0]" in text and "1551" in text and f"MTU {UNDERLAY_MTU}" in text, text
    assert not (tmp_path / "out" / "summary.json").exists()


def test_placement_naming_a_worker_not_in_the_workers_file_is_a_located_error(tmp_path):
    topo = _topology(tmp_path, "two_hosts.yaml", {"h1": "w1", "h2": "w9"})
    key = tmp_path / "key"
    key.write_text("")
    wf = tmp_path / "workers.yaml"
    wf.write_text(f"defaults:\n  key: {key}\n  sendlab_path: /opt/sendlab\nworkers:\n"
                  "  - {name: w1, address: 192.0.2.1}\n  - {name: w2, address: 192.0.2.2}\n")
    rc, text = _cli(["run", str(topo), "--backend", "mininet", "--workers", str(wf)])
    assert rc == 2, text
    line = topo.read_text().splitlines().index("  h2: w9") + 1
    assert f"{topo}:{line}: placement.h2: unknown worker 'w9'" in text, text


def test_workers_with_the_sim_backend_is_refused(tmp_path):
    rc, text = _cli(["run", str(TOPOLOGIES / "two_hosts.yaml"), "--workers", "w.yaml"])
    assert rc == 2 and "--backend mininet" in text, text


@emulation
def test_a_worker_lost_mid_run_fails_the_run_naming_it_and_the_other_tears_down(up, tmp_path):
    """w2 dies mid-run (its sshd and everything under it): the coordinator says which worker
    it lost, w1 removes its part; what w2's part left (nobody was there to remove it) goes with
    `sendlab clean` on w2, by the records the part kept."""
    before = _namespaces()
    coord, log = _long_split_run(up, tmp_path)
    try:
        assert _wait_for(lambda: b"running" in log.read_bytes(), 120), log.read_text()
        made = _namespaces() - before
        up.kill_sshd(up.machines["w2"])
        assert coord.wait(90) == 1, log.read_text()
    finally:
        if coord.poll() is None:
            coord.kill()
            coord.wait(10)
    text = log.read_text()
    assert "worker w2 (10.213.0.12)" in text, text
    left = _namespaces() & made
    w2 = next(n.split("-", 1)[0] for n in made if n.endswith("-h2"))
    assert left and all(n.startswith(w2 + "-") for n in left), (left, made)
    up.ensure_up()
    cleaned = up.machines["w2"].ns.run([sys.executable, "-m", "testbed.cli", "clean"],
                                       check=False, timeout=120)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert _wait_for(lambda: not (_namespaces() & made), 30), _namespaces() & made


def _long_split_run(lab: Lab, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`sendlab run` of pmtu_blackhole split over w1 and w2, set to run for a minute, as a
    coordinator process of its own (so a test can kill it); its output goes to the log."""
    topo = _topology(tmp_path, "pmtu_blackhole.yaml",
                     {"h1": "w1", "r1": "w1", "r2": "w2", "h2": "w2"})
    wf = lab.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    log = tmp_path / "coordinator.log"
    argv = ["run", str(topo), "--backend", "mininet", "--workers", str(wf), "--out",
            str(tmp_path / "out"), "--set", "run.duration_s=60", "--set", "run.stall_timeout_s=60"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.coord.name, sys.executable, "-m",
                                 "testbed.cli", *argv], cwd=ROOT, stdout=f, stderr=f)
    return proc, log


def _wait_for(what, timeout: float, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


@emulation
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_coordinator_leaves_nothing_on_the_workers(up, tmp_path, how):
    """Mid-run, the coordinator is killed (its connections drop: each part sees its stdin
    close) or terminated (it closes the parts itself): either way every worker removes its
    namespaces, processes and tunnel devices."""
    before = _namespaces()
    coord, log = _long_split_run(up, tmp_path)
    try:
        assert _wait_for(lambda: b"running" in log.read_bytes(), 120), log.read_text()
        made = _namespaces() - before
        assert len(made) >= 6, made    # per worker: hosts, core, the crossing link's middle
        coord.send_signal(how)
        coord.wait(60)
    finally:
        if coord.poll() is None:
            coord.kill()
            coord.wait(10)
    assert _wait_for(lambda: not (_namespaces() & made), 60), _namespaces() & made
    for m in up.machines.values():
        links = m.ns.run(["ip", "-d", "-o", "link", "show"]).stdout
        assert "vxlan id" not in links, links
    if how == signal.SIGTERM:
        assert coord.returncode != 0
        assert not (tmp_path / "out" / "summary.json").exists()
