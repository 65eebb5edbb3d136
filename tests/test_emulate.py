"""The emulated backend (``--backend mininet``): its pure parts, and whole runs as root.

Without root: the shaper's link directions are the sim's (same seed, same queue), the shaper
core keeps each direction in order and drops over-MTU frames, the controller config follows
the topology, and the kernel runtime drives the traffic generators over loopback sockets.

With root (``emulation``): real runs of the shipped topologies, each checked for what it must
show and for leaving nothing behind (namespaces, processes, OVS daemons, records).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import emulate
from testbed.emu_host import KernelRuntime
from testbed.link_model import LinkDirection
from testbed.run import run_sim
from testbed.shaper import DirectionState, ShaperCore, direction_from_params
from testbed.sim import SimNetwork
from testbed.topology import load_topology
from testbed.traffic import FlowRecord, FlowSpec, SocketOptions, receive, sender

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"


def topo(name: str, *overrides: str):
    return load_topology(TOPOLOGIES / f"{name}.yaml", list(overrides))


# --- pure parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides", [
    ("pmtu_icmp", ()), ("dumbbell", ()),
    ("two_hosts", ("links.0.loss={gilbert: {p: 0.01, r: 0.3}}", "links.0.jitter_ms=1",
                   "links.0.queue_bytes=64KiB")),
])
def test_shaper_directions_are_the_sims_link_models(name, overrides):
    t = topo(name, *overrides)
    sim = SimNetwork(t)
    for wires in sim.link_wires.values():
        for w in wires:
            params = emulate.direction_params(t, w.link, w.src, t.seed)
            assert repr(direction_from_params(params)) == repr(w.model)
            assert params["mtu"] == w.mtu


def _frame(n: int, tag: int) -> bytes:
    return bytes([tag]) * n


def test_shaper_core_keeps_order_and_drops_over_mtu():
    ab = DirectionState("a>b", LinkDirection(rate_bps=1e6, delay_s=0.01, seed=1), mtu=1500)
    ba = DirectionState("b>a", LinkDirection(rate_bps=None, delay_s=0.002, seed=2), mtu=576)
    core = ShaperCore(ab, ba)
    for k in range(5):
        core.offer(0, _frame(1514, k), now=0.0)
    assert core.offer(1, _frame(14 + 577, 9), now=0.0) is None   # over b>a's MTU
    core.offer(1, _frame(60, 7), now=0.0)
    out = list(core.pop_due(1.0))
    assert [f[0] for d, f, _ in out if d == 0] == [0, 1, 2, 3, 4]          # FIFO
    dues = [due for d, _, due in out if d == 0]
    assert dues == sorted(dues)
    # serialization at 1 Mbit/s: 1514 bytes take 12.112 ms each, then 10 ms of delay
    assert dues[0] == pytest.approx(0.012112 + 0.01)
    assert dues[4] - dues[0] == pytest.approx(4 * 0.012112)
    assert [due for d, _, due in out if d == 1] == [pytest.approx(0.002)]
    assert ba.dropped_oversize == 1 and ba.model.offered == 1
    assert ab.stats()["delivered"] == 5 and core.pending() == 0


def test_only_links_with_rate_delay_jitter_or_loss_are_shaped():
    t = topo("two_hosts")
    assert emulate.link_is_shaped(t, 0)
    t = topo("two_hosts", "defaults.rate_mbit=0", "defaults.delay_ms=0")
    assert not emulate.link_is_shaped(t, 0)
    assert emulate.link_is_shaped(topo("two_hosts", "defaults.rate_mbit=0",
                                       "defaults.delay_ms=0", "links.0.loss=1%"), 0)


def test_netem_arguments_mirror_the_link_model():
    t = topo("two_hosts", "links.0.jitter_ms=2", "links.0.loss=1%")
    args = emulate.netem_args(emulate.direction_params(t, 0, "h1", 1), 1000)
    assert args == ["netem", "limit", "1000", "delay", "5.000ms", "2.000ms", "distribution",
                    "normal", "loss", "random", "1%", "rate", "100000kbit"]


def test_controller_config_follows_the_topology(tmp_path):
    t = topo("pmtu_blackhole")
    net = emulate.EmulatedNetwork(t, tmp_path)
    cfg = net.controller_config()
    r1, r2 = cfg["routers"]
    assert (r2["name"], r2["dpid"], r2["icmp_policy"]) == ("r2", 2, "suppress")
    # r2-eth0 faces the 1280-byte link, r2-eth1 the host; ofport = interface index + 1
    assert r2["ports"]["1"]["name"] == "r2-eth0" and r2["ports"]["1"]["mtu"] == 1280
    assert r2["ports"]["2"]["mtu"] == 1500 and r2["ports"]["2"]["ip"] == "10.0.3.1/24"
    # static neighbours: h2 behind r2-eth1, with the MAC its interface gets
    assert r2["ports"]["2"]["neighbours"] == {"10.0.3.2": emulate.interface_mac(2, 1)}
    assert {"prefix": "10.0.1.0/24", "port": "r2-eth0", "via": "10.0.2.1"} in r2["routes"]
    from controller.app import parse_config
    parse_config(cfg)   # the controller accepts it


def _run_loopback(spec: FlowSpec, peer: SocketOptions | None = None):
    rt = KernelRuntime()
    snd, rcv = FlowRecord(spec), FlowRecord(spec)

    def serve():
        lsock = rt.socket()
        yield lsock.bind(("127.0.0.1", 0))
        yield lsock.listen(4)
        snd.spec.port = rcv.spec.port = lsock.s.getsockname()[1]
        rt.spawn(None, sender(rt, None, snd))
        conn = yield lsock.accept()
        yield from receive(rt, conn, rcv)

    proc = rt.spawn(None, serve())
    while not proc.done and rt.now < 10:
        rt.run(rt.now + 0.05)
    rt.run(rt.now + 0.05)
    return snd, rcv


@pytest.mark.parametrize("kind", ["bulk", "writes", "request_response"])
def test_kernel_runtime_drives_the_same_generators(kind):
    spec = FlowSpec(name="f", src="a", dst="b", dst_addr="127.0.0.1", port=0, kind=kind,
                    options=SocketOptions(nodelay=True))
    if kind == "bulk":
        spec.bytes = 3_000_000
    elif kind == "writes":
        spec.count, spec.size, spec.interval_s, spec.msg_more_every = 50, 300, 0.001, 2
    else:
        spec.count, spec.request_bytes, spec.response_bytes = 20, 100, 5000
    snd, rcv = _run_loopback(spec)
    assert snd.error is None and rcv.error is None
    assert snd.connected_at is not None and snd.mss_initial > 0
    if kind == "request_response":
        assert len(snd.responses) == 20 and snd.finished_at is not None
    else:
        assert rcv.received == spec.bytes_requested and rcv.intact
        assert rcv.finished_at is not None
    assert snd.writes[-1][1] == spec.bytes_requested


# --- emulation ---------------------------------------------------------------------------------

def _emulation_unavailable() -> str | None:
    reason = emulate.available()
    if reason:
        return reason
    if importlib.util.find_spec("mininet") is None:
        return "Mininet is not installed (scripts/install-emulation.sh)"
    return None


NO_EMULATION = _emulation_unavailable()


def emulation(fn):
    fn = pytest.mark.skipif(NO_EMULATION is not None, reason=f"emulation: {NO_EMULATION}")(fn)
    return pytest.mark.emulation(fn)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_nothing_left(net: emulate.EmulatedNetwork) -> None:
    prefix = net.run.prefix
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed, listed
    for pid in net.run.pids:
        assert not _alive(pid), f"pid {pid} of the run still runs"
    for pid in (net.ovs.pids.values() if net.ovs else ()):
        assert not os.path.exists(f"/proc/{pid}"), f"OVS daemon {pid} still there"
    assert net.controller is None or net.controller.poll() is not None
    assert not os.path.exists(net.record_path)
    assert not os.path.exists(net.run.record_path)
    assert not os.path.exists(net.workdir)


def run_emulated(tmp_path, name: str, *overrides: str, trace: bool = False) -> dict:
    t = topo(name, *overrides)
    net = emulate.EmulatedNetwork(t, tmp_path, trace=trace)
    try:
        with net:
            net.build()
            summary = net.run_traffic()
    finally:
        if net.run is not None:
            assert_nothing_left(net)
    return summary


@emulation
def test_two_hosts_runs_with_the_sims_summary_fields(tmp_path):
    t0 = time.monotonic()
    summary = run_emulated(tmp_path / "emu", "two_hosts")
    assert time.monotonic() - t0 < 30
    sim = run_sim(topo("two_hosts"), tmp_path / "sim")
    assert set(sim) <= set(summary)
    assert summary["backend"] == "mininet" and summary["topology"] == "two_hosts"
    flow, sim_flow = summary["flows"][0], sim["flows"][0]
    assert set(sim_flow) <= set(flow)
    assert set(sim_flow["write_latency_ms"]) == set(flow["write_latency_ms"])
    assert set(summary["links"]) == set(sim["links"])
    for key, link in summary["links"].items():
        assert set(sim["links"][key]) <= set(link)
        assert link["shaping"] in ("shaper", "netem")
    assert flow["completed"] and flow["intact"] and flow["stack"] == "python"
    assert flow["bytes_received"] == flow["bytes_acked"] == 20000
    # Nagle coalesces the 100-byte writes as in the sim: far fewer segments than writes.
    assert 10 < flow["data_segments"] < 60
    assert flow["write_latency_ms"]["p50"] > 10    # an RTT of 10 ms at least
    assert (tmp_path / "emu" / "pcaps" / "link0_h1-h2.pcap").stat().st_size > 24


@emulation
def test_pmtu_icmp_frag_needed_from_controller_drops_mss(tmp_path):
    summary = run_emulated(tmp_path, "pmtu_icmp")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    assert (flow["mss_initial"], flow["mss_final"]) == (1448, 1228)
    assert flow["icmp_frag_needed_received"] > 0
    assert summary["routers"]["r2"]["icmp_frag_needed_sent"] > 0
    assert summary["links"]["link1:r2>r1"]["mtu"] == 1280
    assert (tmp_path / "controller.log").exists()


@emulation
@pytest.mark.parametrize("probing", [0, 2])
def test_pmtu_blackhole_stalls_without_probing_and_completes_with_it(tmp_path, probing):
    summary = run_emulated(tmp_path, "pmtu_blackhole",
                           f"traffic.0.sysctls.net.ipv4.tcp_mtu_probing={probing}",
                           "run.stall_timeout_s=3")
    flow = summary["flows"][0]
    assert summary["routers"]["r2"]["icmp_frag_needed_sent"] == 0
    if probing == 0:
        assert flow["stalled"] and not flow["completed"] and flow["bytes_acked"] == 0
        assert summary["routers"]["r2"]["dropped_oversize"] > 0
    else:
        assert flow["completed"] and flow["intact"]
        assert flow["mss_initial"] == 1024 and 1220 <= flow["mss_final"] <= 1228


@emulation
def test_kernel_sender_completes_and_says_so(tmp_path):
    summary = run_emulated(tmp_path, "two_hosts", "hosts.h1.stack=linux")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"] and flow["stack"] == "linux"
    assert flow["congestion"] == "cubic"           # per socket, though bbr is the default
    assert flow["mss_initial"] == flow["mss_final"] == 1448
    assert flow["counters"].get("TcpActiveOpens") == 1
    assert 10 < flow["data_segments"] < 60


@emulation
@pytest.mark.parametrize("stack", ["python", "linux"])
def test_rate_limited_link_gives_goodput_near_the_rate(tmp_path, stack):
    summary = run_emulated(tmp_path, "two_hosts", f"hosts.h1.stack={stack}",
                           "defaults.rate_mbit=10", "defaults.queue_packets=100",
                           "traffic.0.writes.count=2000", "traffic.0.writes.size=1000",
                           "traffic.0.writes.interval_ms=0")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    assert abs(flow["goodput_mbit"] - 10) / 10 < 0.15, flow["goodput_mbit"]
    assert summary["links"]["link0:h1>h2"].get("kernel_dropped", 0) == 0


@emulation
def test_lossy_link_still_delivers_intact(tmp_path):
    summary = run_emulated(tmp_path, "two_hosts", "links.0.loss=2%",
                           "traffic.0.writes.count=500", "traffic.0.writes.size=1000",
                           "traffic.0.writes.interval_ms=0")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"] and flow["bytes_received"] == 500_000
    link = summary["links"]["link0:h1>h2"]
    assert link["dropped_loss"] > 0 and flow["retransmits"] > 0
    assert link["offered"] == link["delivered"] + link["dropped_loss"] + link["dropped_queue"]


@emulation
def test_cli_runs_mininet_backend_and_prints_the_table(tmp_path, capsys):
    from testbed.cli import main
    assert main(["run", str(TOPOLOGIES / "two_hosts.yaml"), "--backend", "mininet",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "small-writes" in out and "completed" in out
    assert json.loads((tmp_path / "summary.json").read_text())["backend"] == "mininet"


def _records() -> set[str]:
    import glob
    import tempfile
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "sendlab-emu-sl*.json")))


@emulation
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_leaves_nothing(tmp_path, sig):
    """SIGTERM: the run tears itself down (exit 130). SIGKILL: agents and shapers exit when
    their stdin closes; `python -m testbed.emulate clean` removes the rest by the record."""
    before = _records()
    cmd = [sys.executable, "-m", "testbed.cli", "run", str(TOPOLOGIES / "pmtu_blackhole.yaml"),
           "--backend", "mininet", "--out", str(tmp_path)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    record = None
    while record is None:
        mine = _records() - before
        if mine:
            (record,) = mine
            break
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()
        time.sleep(0.05)
    prefix = Path(record).stem.rsplit("-", 1)[1]
    time.sleep(3.0)                   # built and into the traffic (the flow stalls for 5 s)
    with open(record) as f:
        rec = json.load(f)
    pids = [*rec["pids"], *(rec["ovs"] or {}).get("pids", {}).values(), rec["controller_pid"]]
    assert rec["ovs"] and rec["controller_pid"], rec
    p.send_signal(sig)
    p.wait(20)
    out = p.stdout.read().decode()
    p.stdout.close()
    if sig == signal.SIGTERM:
        assert p.returncode == 130, out
    else:
        assert os.path.exists(record)
        assert emulate.main(["clean", record]) == 0
    assert not os.path.exists(record)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{prefix}-" not in listed, listed
    time.sleep(0.5)
    for pid in pids:
        assert pid is None or not _alive(pid), f"pid {pid} still runs"


@emulation
def test_unshaped_link_is_captured_by_tcpdump(tmp_path):
    summary = run_emulated(tmp_path, "two_hosts", "defaults.rate_mbit=0", "defaults.delay_ms=0",
                           "hosts.h2.stack=linux")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    ab = summary["links"]["link0:h1>h2"]
    assert ab["shaping"] == "none" and ab["offered"] >= flow["data_segments"] > 0


@emulation
def test_dumbbell_switches_and_routers_carry_both_flows(tmp_path):
    summary = run_emulated(tmp_path, "dumbbell", "traffic.0.bulk.bytes=300kB",
                           "traffic.1.writes.count=20", "traffic.1.start_ms=0")
    assert [f["completed"] and f["intact"] for f in summary["flows"]] == [True, True]
    # Static ARP and FDB entries: no ARP, no flooding, only the flows' own frames on h2's link.
    link = summary["links"]["link1:h2>s1"]
    assert link["offered"] < 60
    assert summary["links"]["link3:r1>r2"]["offered"] > 200


def _prefix_leftovers(prefix: str) -> dict:
    """What of run ``prefix`` exists: namespaces, record files, processes inside them."""
    import glob
    import tempfile
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    spaces = [ln.split()[0] for ln in listed.splitlines() if ln.startswith(f"{prefix}-")]
    records = glob.glob(os.path.join(tempfile.gettempdir(), f"sendlab-*-{prefix}.json"))
    workdirs = glob.glob(os.path.join(tempfile.gettempdir(), f"sendlab-emu-{prefix}-*"))
    return {"namespaces": spaces, "records": records, "workdirs": workdirs}


@emulation
@pytest.mark.parametrize("name, wait_s", [("two_hosts", 0.3), ("pmtu_blackhole", 2.0)])
def test_sendlab_clean_removes_a_sigkilled_run(tmp_path, name, wait_s):
    """SIGKILL a `sendlab run --backend mininet` once its namespaces exist; `sendlab clean`
    removes every namespace, process, OVS daemon and record of its prefix."""
    before = _records()
    cmd = [sys.executable, "-m", "testbed.cli", "run", str(TOPOLOGIES / f"{name}.yaml"),
           "--backend", "mininet", "--out", str(tmp_path), "--set", "run.duration_s=30",
           "--set", "traffic.0.writes.count=20000" if name == "two_hosts" else
           "run.stall_timeout_s=20"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        mine = _records() - before
        if mine:
            (record,) = mine
            prefix = Path(record).stem.rsplit("-", 1)[1]
            if _prefix_leftovers(prefix)["namespaces"]:
                break
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()
        time.sleep(0.02)
    time.sleep(wait_s)
    with open(record) as f:
        rec = json.load(f)
    p.kill()
    p.wait(10)
    p.stdout.close()
    left = _prefix_leftovers(prefix)
    assert left["namespaces"] and record in left["records"], left
    with open(record) as f:
        rec = json.load(f)
    pids = [*rec["pids"], *((rec["ovs"] or {}).get("pids") or {}).values()]
    if name == "pmtu_blackhole":
        assert rec["ovs"] and rec["ovs"]["pids"], rec
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "clean", "--prefix", prefix],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "deleted namespaces" in res.stdout and record in res.stdout
    left = _prefix_leftovers(prefix)
    assert left == {"namespaces": [], "records": [], "workdirs": []}, left
    time.sleep(0.3)
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still runs"
    if rec["ovs"]:
        for pid in rec["ovs"]["pids"].values():
            assert not os.path.exists(f"/proc/{pid}") or not _alive(pid)


# --- integration: stacks, PMTU, shaping ------------------------------------------------------

def _frames(pcap: Path):
    import dpkt
    with open(pcap, "rb") as f:
        for ts, frame in dpkt.pcap.Reader(f):
            if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                yield ts, bytes(frame[14:])


def _syn_mss(pcap: Path) -> dict[str, int]:
    """Source address -> the MSS option of its SYN (or SYN-ACK) in a capture."""
    out = {}
    for _, ip in _frames(pcap):
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or not ip[ihl + 13] & 0x02:
            continue
        off = (ip[ihl + 12] >> 4) * 4
        opts, i = ip[ihl + 20:ihl + off], 0
        while i < len(opts) and opts[i] != 0:
            if opts[i] == 1:
                i += 1
                continue
            if opts[i] == 2:
                out[".".join(map(str, ip[12:16]))] = int.from_bytes(opts[i + 2:i + 4], "big")
            i += max(2, opts[i + 1])
    return out


H1, H2 = "10.0.1.2", "10.0.3.2"


@emulation
@pytest.mark.parametrize("mtu", [1500, 9000, 1280])
@pytest.mark.parametrize("sender", ["python", "linux"])
def test_python_and_kernel_interoperate_across_two_routers(tmp_path, sender, mtu):
    """h2 sends 2 MB to h1 through r2 and r1, every link at ``mtu``: one end the python
    stack, the other the kernel; the stream arrives intact and both SYNs say MTU - 40."""
    receiver = "linux" if sender == "python" else "python"
    summary = run_emulated(tmp_path, "pmtu_icmp", *(f"links.{i}.mtu={mtu}" for i in range(3)),
                           f"hosts.h2.stack={sender}", f"hosts.h1.stack={receiver}",
                           "traffic.0.bulk.bytes=2MB")
    flow = summary["flows"][0]
    assert flow["stack"] == sender
    assert flow["completed"] and flow["intact"], flow
    assert flow["bytes_received"] == flow["bytes_acked"] == 2_000_000
    mss = _syn_mss(tmp_path / "pcaps" / "link0_h1-r1.pcap")
    assert mss == {H1: mtu - 40, H2: mtu - 40}, mss        # what each side announced
    assert flow["mss_initial"] == flow["mss_final"] == mtu - 52   # minus timestamps
    assert max(int(k) for k in flow["segment_sizes"]) == mtu - 52
    print(f"\nsender {sender} -> receiver {receiver}, mtu {mtu}: MSS announced {mss}, "
          f"used {flow['mss_initial']}, {flow['goodput_mbit']} Mbit/s")


def _frag_needed(pcap: Path) -> list[tuple[int, bytes]]:
    """(next-hop MTU, quoted IP bytes) of every ICMP frag-needed in a capture."""
    out = []
    for _, ip in _frames(pcap):
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] == 1 and ip[ihl] == 3 and ip[ihl + 1] == 4:
            out.append((int.from_bytes(ip[ihl + 6:ihl + 8], "big"), ip[ihl + 8:]))
    return out


@emulation
@pytest.mark.parametrize("sender", ["python", "linux"])
def test_pmtu_icmp_frag_needed_quotes_the_senders_header(tmp_path, sender):
    summary = run_emulated(tmp_path, "pmtu_icmp", f"hosts.h2.stack={sender}",
                           "hosts.h1.stack=linux" if sender == "python" else
                           "hosts.h1.stack=python")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"] and flow["bytes_received"] == 1_000_000
    assert (flow["mss_initial"], flow["mss_final"]) == (1448, 1228)
    pcap = tmp_path / "pcaps" / "link2_r2-h2.pcap"
    icmps = _frag_needed(pcap)
    assert icmps and all(m == 1280 for m, _ in icmps)
    sent = {ip[:20] for _, ip in _frames(pcap) if ip[12:16] == bytes([10, 0, 3, 2])}
    for _, quote in icmps:
        # the header as h2 sent it (TTL not yet lowered), its TCP ports, on the h2 link
        assert quote[12:16] == bytes([10, 0, 3, 2]) and quote[16:20] == bytes([10, 0, 1, 2])
        assert quote[9] == 6 and int.from_bytes(quote[2:4], "big") > 1280
        assert quote[6] & 0x40                                  # DF
        assert quote[:20] in sent
        ihl = (quote[0] & 0x0F) * 4
        assert int.from_bytes(quote[ihl + 2:ihl + 4], "big") == 5001 or \
            int.from_bytes(quote[ihl + 2:ihl + 4], "big") == summary["flows"][0].get("port", 5001)
    assert summary["routers"]["r2"]["icmp_frag_needed_sent"] == len(icmps)
    log_text = (tmp_path / "controller.log").read_text()
    lines = [ln for ln in log_text.splitlines() if "frag-needed sent" in ln]
    assert len(lines) == len(icmps) and "mtu 1280" in lines[0] and "10.0.3.2 > 10.0.1.2" in \
        lines[0], lines[:3]


@emulation
@pytest.mark.parametrize("probing", [0, 1])
def test_pmtu_blackhole_python_and_kernel_side_by_side(tmp_path, probing):
    """Both senders stall with tcp_mtu_probing=0 and recover with 1 (after RTOs)."""
    rows = {}
    for sender in ("python", "linux"):
        summary = run_emulated(tmp_path / sender, "pmtu_blackhole", f"hosts.h2.stack={sender}",
                               f"traffic.0.sysctls.net.ipv4.tcp_mtu_probing={probing}",
                               "traffic.0.bulk.bytes=300kB",
                               # probing starts after the RTOs reach tcp_retries1 (~3.7 s)
                               f"run.stall_timeout_s={3 if probing == 0 else 8}",
                               "run.duration_s=25")
        flow = summary["flows"][0]
        rows[sender] = flow
        assert summary["routers"]["r2"]["icmp_frag_needed_sent"] == 0
        assert summary["routers"]["r2"]["dropped_oversize"] > 0
        assert "black-hole drop" in (tmp_path / sender / "controller.log").read_text()
        if probing == 0:
            assert flow["stalled"] and not flow["completed"] and flow["bytes_acked"] == 0, flow
        else:
            assert flow["completed"] and flow["intact"], flow
            assert flow["mss_final"] <= 1228
    print(f"\ntcp_mtu_probing={probing}:  sender  completed  recovery(first byte acked) s  "
          "duration s  mss initial->final")
    for sender, f in rows.items():
        print(f"  {sender:>6}  {f['completed']!s:>9}  {f['time_to_first_byte_s']!s:>26}  "
              f"{f['duration_s']:>10}  {f['mss_initial']}->{f['mss_final']}")


def _binom_interval(n: int, p: float, conf: float = 0.99) -> tuple[int, int]:
    """The central ``conf`` interval of Binomial(n, p), exactly."""
    import math
    lo_tail, cdf, lo, hi = (1 - conf) / 2, 0.0, None, n
    for k in range(n + 1):
        cdf += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if lo is None and cdf > lo_tail:
            lo = k
        if cdf >= 1 - lo_tail:
            hi = k
            break
    return lo, hi


@emulation
def test_one_percent_loss_is_within_the_binomial_interval(tmp_path):
    summary = run_emulated(tmp_path, "two_hosts", "links.0.loss=1%", "traffic.0.writes.count=3000",
                           "traffic.0.writes.size=1000", "traffic.0.writes.interval_ms=0")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    for key in ("link0:h1>h2", "link0:h2>h1"):
        link = summary["links"][key]
        n, lost = link["offered"], link["dropped_loss"]
        lo, hi = _binom_interval(n, 0.01)
        print(f"\n{key}: {lost} of {n} frames lost ({lost / n:.2%}); 99 % interval [{lo}, {hi}]")
        assert link.get("kernel_dropped", 0) == 0
        assert lo <= lost <= hi
    # the pcap the shaper writes has every frame offered, lost ones included
    n_pcap = sum(1 for _ in _frames(tmp_path / "pcaps" / "link0_h1-h2.pcap"))
    assert n_pcap >= summary["links"]["link0:h1>h2"]["delivered"]


@emulation
def test_delay_of_20ms_each_way_gives_an_rtt_of_40ms(tmp_path):
    t = topo("two_hosts", "defaults.delay_ms=20", "hosts.h1.stack=linux",
             "hosts.h2.stack=linux", "traffic.0.writes.count=10")
    net = emulate.EmulatedNetwork(t, tmp_path)
    try:
        with net:
            net.build()
            res = net.ns["h1"].run(["ping", "-n", "-c", "100", "-i", "0.02",
                                    str(net.plan.addr("h2").ip if hasattr(net.plan.addr("h2"), "ip")
                                        else net.plan.addr("h2"))], timeout=30, check=False)
            out = res.stdout
            net.run_traffic()
    finally:
        if net.run is not None:
            assert_nothing_left(net)
    import re
    rtts = sorted(float(m) for m in re.findall(r"time=([\d.]+) ms", out))
    assert len(rtts) >= 95, res.stdout + res.stderr
    p50, p99 = rtts[len(rtts) // 2], rtts[int(len(rtts) * 0.99) - 1]
    print(f"\nping RTT over 20 ms + 20 ms: p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
          f"min {rtts[0]:.3f}, max {rtts[-1]:.3f} ({len(rtts)} replies)")
    assert abs(p50 - 40.0) <= 1.0


@emulation
@pytest.mark.parametrize("stack", ["python", "linux"])
def test_rate_of_10mbit_gives_the_goodput_the_headers_allow(tmp_path, stack):
    """Ideal goodput = payload / (payload + headers) x rate, with the shaper's rate counting
    every byte of the Ethernet frame (no preamble or FCS): 1448 / (1448 + 14 + 20 + 32) x 10
    = 9.564 Mbit/s for full segments with timestamps."""
    summary = run_emulated(tmp_path, "two_hosts", f"hosts.h1.stack={stack}",
                           "defaults.rate_mbit=10", "defaults.delay_ms=2",
                           "defaults.queue_packets=100", "traffic.0.writes.count=4000",
                           "traffic.0.writes.size=1000", "traffic.0.writes.interval_ms=0")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    payload = flow["mss_final"]
    ideal = payload / (payload + 14 + 20 + 32) * 10
    print(f"\n{stack}: goodput {flow['goodput_mbit']} Mbit/s, ideal {ideal:.3f} "
          f"({flow['goodput_mbit'] / ideal:.1%})")
    assert abs(flow["goodput_mbit"] - ideal) / ideal < 0.05
    assert summary["links"]["link0:h1>h2"].get("kernel_dropped", 0) == 0


RYU_PYTHON = REPO / ".venv-ryu" / "bin" / "python"


@emulation
@pytest.mark.skipif(not RYU_PYTHON.exists(),
                    reason="no .venv-ryu (scripts/install-emulation.sh makes it)")
def test_controller_routes_under_ryu_434(tmp_path, monkeypatch):
    """The same app on ryu 4.34 (SENDLAB_CONTROLLER_PYTHON=.venv-ryu/bin/python): the routers
    come up, route, and send frag-needed."""
    monkeypatch.setenv("SENDLAB_CONTROLLER_PYTHON", str(RYU_PYTHON))
    summary = run_emulated(tmp_path, "pmtu_icmp", "traffic.0.bulk.bytes=300kB")
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"] and flow["mss_final"] == 1228
    assert summary["routers"]["r2"]["icmp_frag_needed_sent"] > 0
    log_text = (tmp_path / "controller.log").read_text()
    assert "ryu" in log_text.lower() and "frag-needed sent" in log_text, log_text[-2000:]


# --- --trace ------------------------------------------------------------------------------------

@emulation
def test_trace_of_a_python_sender_has_the_stacks_reasons(tmp_path):
    from stack.trace import REASONS, read_jsonl
    summary = run_emulated(tmp_path, "two_hosts", trace=True)
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"]
    events = read_jsonl(tmp_path / "trace_small-writes.jsonl")
    holds = [ev for ev in events if ev["kind"] == "hold"]
    assert holds and {ev["reason"] for ev in holds} <= set(REASONS)
    assert any(ev["reason"] == "nagle" for ev in holds)   # 100-byte writes, Nagle on
    assert all(ev["cwnd"] is not None for ev in events)
    assert sum(ev.get("size", 0) for ev in events if ev.get("call") == "tcp_sendmsg") == 20000
    # times are seconds since T0, as the flow's other times
    assert 0 <= events[0]["t"] <= flow["time_to_first_byte_s"] + flow["duration_s"] + 1
    held = flow["held_s_by_reason"]
    assert set(held) == set(REASONS) and held["nagle"] > 0


@emulation
def test_trace_of_a_linux_sender_is_built_from_the_wire(tmp_path):
    from stack.trace import read_jsonl
    summary = run_emulated(tmp_path, "two_hosts", "hosts.h1.stack=linux", trace=True)
    flow = summary["flows"][0]
    assert flow["completed"] and flow["intact"] and flow["stack"] == "linux"
    events = read_jsonl(tmp_path / "trace_small-writes.jsonl")
    assert events and all(ev["cwnd"] is None for ev in events)
    holds = [ev for ev in events if ev["kind"] == "hold"]
    assert holds and {ev["reason"] for ev in holds} == {"unknown"}
    xmits = [ev for ev in events if ev["kind"] == "xmit" and ev["len"] > 0]
    assert abs(len(xmits) - flow["data_segments"]) <= 3
    calls = [ev for ev in events if ev["kind"] == "call"]
    assert len(calls) == 200 and calls[-1]["write_seq"] == 20001
    # the writes' clock (since T0) and the capture's line up: no byte leaves before its write
    first_left = {}
    for ev in xmits:
        first_left.setdefault(ev["seq"], ev["t"])
    for ev in calls[:5]:
        assert first_left.get(ev["seq"], ev["t"]) >= ev["t"] - 1e-3
    held = flow["held_s_by_reason"]
    assert set(held) == {"unknown"} and 0 < held["unknown"] <= flow["duration_s"] + 1

