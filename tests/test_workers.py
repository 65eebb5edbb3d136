"""Sweeps over SSH workers: the workers file, host keys, quoting, the agent, the dispatcher, and
(as root) a lab of "machines" = network namespaces on a veth underlay, each with its own sshd.

The lab: a coordinator namespace holds a bridge; every machine namespace has a veth into it
and runs ``sshd -D`` with a private config (its own host key, PidFile, AuthorizedKeysFile,
ListenAddress inside the namespace). Keys are made for the test. The coordinator's side of
every test runs in a child process entered into the coordinator namespace, so all SSH traffic
stays on the underlay. Every worker runs this checkout (namespaces share the filesystem), each
with its own work_dir.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import select
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from testbed import netns
from testbed.experiment import load_cells
from testbed.remote import (CellTimeout, Dispatcher, HostKeyError, KnownHosts, cell_payload,
                            remote_command)
from testbed.remote_cell import identity
from testbed.sweep import run_cell, sweep, tidy_rows
from testbed.workers import WorkersError, load_workers

from sshlab import Lab, _children, emulation

ROOT = Path(__file__).resolve().parents[1]
TOPO = ROOT / "topologies" / "pmtu_blackhole.yaml"

SMALL = """name: small
topology: TOPO
set:
  traffic.0.bulk.bytes: 50kB
  run.stall_timeout_s: 2
grid:
  routers.r2.icmp: [send, suppress]
  traffic.0.sysctls.net.ipv4.tcp_mtu_probing: [0, 2]
repetitions: 2
metrics: [completed, stalled, duration_s]
"""

ROWS = "SELECT cell_id, scope, entity, metric, value, text FROM rows ORDER BY 1, 2, 3, 4"


def _exp(tmp_path: Path, text: str = SMALL, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("TOPO", str(TOPO)))
    return path


def _cells_by(out: Path, worker: str) -> int:
    """Cells recorded for ``worker`` so far (0 while the sweep is still making its database)."""
    try:
        return _db(out, "SELECT count(*) FROM cells WHERE worker = ?", (worker,))[0][0]
    except sqlite3.OperationalError:
        return 0


def _db(out: Path, query: str, args=()) -> list:
    db = sqlite3.connect(out / "results.db")
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


# --- the workers file (no root) ----------------------------------------------------------------

WORKERS = """defaults:
  key: keys/id_ed25519
  sendlab_path: /opt/sendlab
workers:
  - name: w1
    address: 192.0.2.11
    slots: 2
  - name: w2
    address: 192.0.2.12
    port: 2222
    user: lab
    known_hosts: /etc/sendlab/known_hosts
    work_dir: /scratch/sendlab
"""


def test_workers_file_fills_defaults_and_resolves_local_paths(tmp_path):
    path = tmp_path / "workers.yaml"
    path.write_text(WORKERS)
    w1, w2 = load_workers(path)
    assert (w1.name, w1.port, w1.user, w1.slots) == ("w1", 22, "root", 2)
    assert w1.key == tmp_path / "keys" / "id_ed25519", "relative to the workers file"
    assert w1.python == "/opt/sendlab/.venv/bin/python"
    assert w1.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert w1.host_id == "192.0.2.11" and w2.host_id == "[192.0.2.12]:2222"
    assert (w2.user, w2.work_dir, w2.slots) == ("lab", "/scratch/sendlab", 1)


@pytest.mark.parametrize("change, where", [
    (("    slots: 2\n", "    slots: 0\n"), ":7: workers[0].slots: 0 is below the minimum, 1"),
    (("    port: 2222\n", "    prot: 2222\n"), ":10: workers[1].prot: unknown field 'prot'; "
                                                 "did you mean 'port'?"),
    (("  sendlab_path: /opt/sendlab\n", "  sendlab_path: opt/sendlab\n"),
     ":3: defaults.sendlab_path: 'opt/sendlab' must be an absolute path"),
    (("  key: keys/id_ed25519\n", ""), ":4: workers[0]: worker 'w1' has no key"),
    (("name: w2", "name: w1"), ":8: workers[1].name: 'w1' is already the name of workers[0]"),
    (("address: 192.0.2.11", "address: '192.0.2.11; reboot'"),
     ":6: workers[0].address: '192.0.2.11; reboot' is not a host name"),
])
def test_workers_file_errors_name_file_line_and_field(tmp_path, change, where):
    path = tmp_path / "workers.yaml"
    path.write_text(WORKERS.replace(*change))
    with pytest.raises(WorkersError) as err:
        load_workers(path)
    assert str(err.value).startswith(f"{path}{where}"), str(err.value)


def test_remote_command_quotes_every_word():
    path = Path("/tmp") / "w.yaml"
    hostile = "/srv/x; touch /tmp/pwned $(reboot) `id` 'q'"
    from testbed.workers import Worker
    w = Worker("w1", "192.0.2.1", 22, "root", path, path, 1, hostile, hostile + "/py",
               hostile + "/work", 10.0)
    cmd = remote_command(w, "--serve", w.work_dir)
    assert shlex.split(cmd) == ["cd", hostile, "&&", "exec", hostile + "/py", "-m",
                                "testbed.remote_cell", "--serve", hostile + "/work"]


# --- host keys (no root) -------------------------------------------------------------------

def _worker(tmp_path, known_hosts: Path, port: int = 22):
    from testbed.workers import Worker
    return Worker("w1", "192.0.2.11", port, "root", tmp_path / "k", known_hosts, 1, "/opt/s",
                  "/opt/s/.venv/bin/python", "/tmp/w", 10.0)


def test_unknown_host_key_refused_then_accepted_once(tmp_path):
    kh = tmp_path / "known_hosts"
    w = _worker(tmp_path, kh, port=2222)
    key = paramiko.RSAKey.generate(1024)
    store = KnownHosts(kh)
    with pytest.raises(HostKeyError, match=r"unknown host key for \[192.0.2.11\]:2222.*"
                                           r"--accept-new-host-keys"):
        store.verify(w, key, accept_new=False)
    assert not kh.exists(), "nothing written without the flag"
    assert store.verify(w, key, accept_new=True) == "added"
    assert kh.read_text().startswith("[192.0.2.11]:2222 ssh-rsa ")
    assert store.verify(w, key, accept_new=False) == "known", "accepted once, then verified"


def test_changed_host_key_refused_even_with_accept_new(tmp_path):
    kh = tmp_path / "known_hosts"
    w = _worker(tmp_path, kh)
    old, new = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    kh.write_text(f"# a comment\n192.0.2.11 ssh-rsa {old.get_base64()}\n")
    with pytest.raises(HostKeyError) as err:
        KnownHosts(kh).verify(w, new, accept_new=True)
    assert f"HOST KEY CHANGED for 192.0.2.11: {kh}:2 " in str(err.value)
    assert "ssh-keygen -f" in str(err.value)
    assert kh.read_text().count("ssh-rsa") == 1, "the file is left as it was"


# --- the dispatcher and the timeout (no root) ---------------------------------------------

def _cells(n: int):
    from testbed.experiment import Cell
    return [Cell(f"{i:016x}", "", {}, (), 0, i) for i in range(n)]


def test_lost_cell_goes_to_another_worker_first():
    d = Dispatcher(_cells(2), ["w1", "w2"])
    a = d.take("w1")
    assert d.lost(a, "w1", "connection broke")
    assert d.take("w1").cell_id != a.cell_id, "w1 gets the other cell, not the one it lost"
    assert d.take("w2").cell_id == a.cell_id


def test_cell_lost_on_every_worker_up_may_return_and_is_given_up_after_max_attempts():
    d = Dispatcher(_cells(1), ["w1", "w2"], max_attempts=3)
    s = d.take("w1")
    assert d.lost(s, "w1", "x")
    d.worker_down("w2", "refused")
    assert d.take("w1", timeout=0.1) is s, "no other worker is up: back to w1"
    assert d.lost(s, "w1", "y")
    assert d.take("w1", timeout=0.1) is s
    assert not d.lost(s, "w1", "z"), "third loss: given up"
    assert d.complete()


def test_cells_queued_when_no_worker_is_left_are_stranded():
    d = Dispatcher(_cells(3), ["w1"])
    s = d.take("w1")
    d.worker_down("w1", "gone")
    d.lost(s, "w1", "gone")
    assert d.take("w1", timeout=0.1) is None
    assert len(d.stranded()) == 3


def test_cell_timeout_is_ten_times_the_longest_cell_with_a_floor():
    t = CellTimeout()
    assert t.current() == 600.0
    t.seen(1.0)
    assert t.current() == 30.0
    t.seen(7.0)
    assert t.current() == 70.0
    assert CellTimeout(5.0).current() == 5.0


# --- the worker-side agent over pipes (no root, no SSH) ------------------------------------------

def _agent(work: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "testbed.remote_cell", "--serve", str(work)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read(proc, timeout: float = 60.0) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the agent said nothing"
    return json.loads(proc.stdout.readline())


def test_agent_runs_a_cell_like_a_local_run_and_cleans_up_when_stdin_closes(tmp_path):
    _, topo_file, cells = load_cells(_exp(tmp_path))
    cell = cells[0]
    proc = _agent(tmp_path / "work")
    try:
        hello = _read(proc)
        assert hello["event"] == "hello" and hello["commit"] == identity()["commit"]
        proc.stdin.write(json.dumps({"op": "run", "cell": cell_payload(
            cell, topo_file.name, topo_file.read_text(), "sim")}) + "\n")
        proc.stdin.flush()
        assert _read(proc)["event"] == "started"
        done = _read(proc)
        assert done["status"] == "done", done
        remote = json.loads((Path(done["out"]) / "summary.json").read_text())
        local = run_cell(str(topo_file), cell, str(tmp_path / "local"), "sim")
        assert sorted(tidy_rows(cell, remote), key=str) == sorted(tidy_rows(cell, local), key=str)
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((tmp_path / "work").iterdir()) == [], "the agent removed its directory"


def test_agent_kills_the_running_cell_when_its_coordinator_goes(tmp_path):
    _, topo_file, cells = load_cells(_exp(tmp_path, SMALL.replace("50kB", "50MB")))
    proc = _agent(tmp_path / "work")
    try:
        _read(proc)
        proc.stdin.write(json.dumps({"op": "run", "cell": cell_payload(
            cells[0], topo_file.name, topo_file.read_text(), "sim")}) + "\n")
        proc.stdin.flush()
        started = _read(proc)
        child = started["pid"]
        proc.stdin.close()        # what a broken SSH channel looks like from the worker
        assert proc.wait(10) == 0
        assert not Path(f"/proc/{child}").exists(), "the cell's process was stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((tmp_path / "work").iterdir()) == []


def test_agent_refuses_a_malformed_cell_without_running_anything(tmp_path):
    proc = _agent(tmp_path / "work")
    try:
        _read(proc)
        proc.stdin.write(json.dumps({"op": "run", "cell": {"cell_id": "../../etc"}}) + "\n")
        proc.stdin.write(json.dumps({"op": "clean", "cell_id": "../.."}) + "\n")
        proc.stdin.flush()
        err = _read(proc)
        assert err["event"] == "error" and "cell_id" in err["message"]
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "work").exists()


# --- the lab (tests/sshlab.py) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"), ["w1", "w2", "w3"])
    try:
        yield lab
    finally:
        lab.close()
        assert not Path(netns.NETNS_DIR, lab.coord.name).exists()


@pytest.fixture
def up(lab):
    lab.ensure_up()
    return lab


def _in_coord(lab: Lab, fn, *args, timeout: float = 120.0, **kwargs):
    return lab.coord.call(fn, *args, timeout=timeout, **kwargs)


def _captured(fn, *args, **kwargs):
    """Run fn with stdout, stderr and sendlab's log captured; (result, text)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("sendlab: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            result = fn(*args, **kwargs)
    finally:
        root.removeHandler(handler)
    return result, buf.getvalue()


def _remote_sweep(exp: str, out: str, workers: str, **kw):
    from rich.console import Console
    return _captured(sweep, exp, out, workers=workers, console=Console(file=io.StringIO()),
                     **kw)


def _cli(argv: list[str]):
    from testbed.cli import main
    os.environ["COLUMNS"] = "200"
    return _captured(main, argv)


@emulation
def test_sweep_over_two_workers_gives_the_local_rows_and_names_the_workers(up, tmp_path):
    exp = _exp(tmp_path)
    sweep(str(exp), str(tmp_path / "local"))
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"], slots=2, compression=True)
    t0 = time.perf_counter()
    rc, logs = _in_coord(up, _remote_sweep, str(exp), str(tmp_path / "remote"), str(wf))
    wall = time.perf_counter() - t0
    assert rc == 0, logs
    assert _db(tmp_path / "remote", ROWS) == _db(tmp_path / "local", ROWS)
    workers = dict(_db(tmp_path / "remote", "SELECT cell_id, worker FROM cells"))
    assert len(workers) == 8 and set(workers.values()) == {"w1", "w2"}, workers
    for cell_id in workers:
        got = sorted(p.name for p in (tmp_path / "remote" / "cells" / cell_id).iterdir())
        want = sorted(p.name for p in (tmp_path / "local" / "cells" / cell_id).iterdir())
        assert got == want, "summary.json and every pcap came back"
    meta = dict(_db(tmp_path / "remote", "SELECT key, value FROM meta"))
    assert "--workers" in meta["command"] and json.loads(meta["worker.w1"])["commit"]
    print(f"8 cells over 2 workers x 2 slots in {wall:.1f} s")
    for name in ("w1", "w2"):
        assert list((tmp_path / f"work-{name}").iterdir()) == [], "each agent cleaned up"
    # A rerun resumes: nothing is left to run, and nothing runs.
    rc, _ = _in_coord(up, _remote_sweep, str(exp), str(tmp_path / "remote"), str(wf))
    assert rc == 0
    assert len(_db(tmp_path / "remote", "SELECT * FROM attempts")) == 8


@emulation
def test_killing_a_worker_mid_sweep_retries_its_cells_on_the_other(up, tmp_path):
    exp = _exp(tmp_path, SMALL.replace("50kB", "1MB"))
    out = tmp_path / "out"
    wf = up.workers_file(tmp_path / "workers.yaml", ["w2", "w3"])
    child = up.coord.start(_remote_sweep, str(exp), str(out), str(wf))
    victim = up.machines["w3"]
    end = time.monotonic() + 60
    while True:   # once w3 has finished a cell its slot has sent the next: kill the machine
        assert time.monotonic() < end and child.alive(), "w3 never got going"
        if _cells_by(out, "w3") >= 1:
            break
        time.sleep(0.02)
    up.kill_sshd(victim)
    rc, logs = child.result(timeout=90)
    assert rc == 0, logs
    status = _db(out, "SELECT status, count(*) FROM cells GROUP BY status")
    assert status == [("done", 8)], status
    lost = _db(out, "SELECT cell_id FROM attempts WHERE worker = 'w3' AND outcome = 'lost'")
    assert lost, f"w3 was running a cell when it died: {logs}"
    for (cell_id,) in lost:
        assert _db(out, "SELECT worker, status FROM cells WHERE cell_id = ?",
                   (cell_id,)) == [("w2", "done")]
    assert re.search(r"worker w3 lost \d+ running cell", logs) and "worker w3 is down" in logs, logs
    assert ("w2",) not in _db(out, "SELECT worker FROM attempts WHERE outcome = 'lost'")


@emulation
def test_a_hung_worker_times_out_and_its_cells_run_elsewhere(up, tmp_path):
    exp = _exp(tmp_path, SMALL.replace("50kB", "2MB"))
    out = tmp_path / "out"
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    child = up.coord.start(_remote_sweep, str(exp), str(out), str(wf), cell_timeout_s=3.0)
    victim = up.machines["w1"]
    end = time.monotonic() + 60
    while _cells_by(out, "w1") < 1:
        assert time.monotonic() < end and child.alive(), "w1 never got going"
        time.sleep(0.05)
    up.freeze(victim)
    try:
        rc, logs = child.result(timeout=90)
    finally:
        up.freeze(victim, False)
    assert rc == 0, logs
    assert _db(out, "SELECT status, count(*) FROM cells GROUP BY status") == [("done", 8)]
    lost = _db(out, "SELECT cell_id, error FROM attempts WHERE outcome = 'lost'")
    assert lost and all(e.startswith("no result after") for _, e in lost), lost
    for cell_id, _ in lost:
        assert _db(out, "SELECT worker FROM cells WHERE cell_id = ?", (cell_id,)) == [("w2",)]
    # Thawed, w1's agent finds its coordinator gone: it stops the cell and removes its files.
    end = time.monotonic() + 20
    while any((tmp_path / "work-w1").iterdir()):
        assert time.monotonic() < end, list((tmp_path / "work-w1").iterdir())
        time.sleep(0.1)


def _agents(lab: Lab) -> list[int]:
    """PIDs of remote_cell processes under our sshds."""
    found = []
    for m in lab.machines.values():
        todo = [m.sshd.pid] if m.sshd and m.sshd.poll() is None else []
        while todo:
            pid = todo.pop()
            todo += _children(pid)
            with contextlib.suppress(OSError):
                if b"testbed.remote_cell" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
    return found


@emulation
def test_interrupted_coordinator_stops_its_agents_and_a_rerun_resumes(up, tmp_path):
    exp = _exp(tmp_path, SMALL.replace("50kB", "1MB"))
    out = tmp_path / "out"
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2"])
    cmd = [sys.executable, "-m", "testbed.cli", "sweep", str(exp), "--out", str(out),
           "--workers", str(wf)]
    proc = up.coord.popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while _cells_by(out, "w1") + _cells_by(out, "w2") < 2:
        assert time.monotonic() < end and proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130
    finished = _db(out, "SELECT count(*) FROM cells")[0][0]
    assert 2 <= finished < 8
    end = time.monotonic() + 15
    while _agents(up) or any(any((tmp_path / f"work-{n}").iterdir()) for n in ("w1", "w2")):
        assert time.monotonic() < end, (f"agents left: {_agents(up)}", [
            list((tmp_path / f"work-{n}").rglob("*")) for n in ("w1", "w2")])
        time.sleep(0.1)
    rc, logs = _in_coord(up, _remote_sweep, str(exp), str(out), str(wf))
    assert rc == 0, logs
    assert _db(out, "SELECT count(*) FROM cells WHERE status = 'done'") == [(8,)]
    ran = _db(out, "SELECT count(*) FROM attempts WHERE outcome = 'done'")[0][0]
    assert ran == 8, "the rerun ran only the cells the first run had not finished"


@emulation
def test_unknown_host_key_is_refused_clearly_and_accepted_with_the_flag(up, tmp_path):
    exp = _exp(tmp_path)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1"], known_hosts=empty)
    rc, logs = _in_coord(up, _remote_sweep, str(exp), str(tmp_path / "out"), str(wf))
    assert rc == 1
    assert f"unknown host key for {up.machines['w1'].address}: not in {empty}" in logs, logs
    assert "--accept-new-host-keys" in logs
    assert _db(tmp_path / "out", "SELECT count(*) FROM cells") == [(0,)], "nothing ran"
    assert empty.read_text() == ""
    rc, logs = _in_coord(up, _remote_sweep, str(exp), str(tmp_path / "out"), str(wf),
                         accept_new_host_keys=True)
    assert rc == 0, logs
    assert empty.read_text().split()[1:] == up.machines["w1"].host_key_line
    # Accepted once: from now on the key is verified, without the flag.
    rc, text = _in_coord(up, _cli, ["workers", "check", str(wf)])
    assert rc == 0, text


@emulation
def test_changed_host_key_is_refused_even_with_the_flag(up, tmp_path):
    other = tmp_path / "known_hosts"
    w1, w2 = up.machines["w1"], up.machines["w2"]
    other.write_text(f"{w1.address} {' '.join(w2.host_key_line)}\n")   # w2's key for w1
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1"], known_hosts=other)
    rc, text = _in_coord(up, _cli, ["workers", "check", str(wf), "--accept-new-host-keys"])
    assert rc == 1
    assert f"HOST KEY CHANGED for {w1.address}: {other}:1" in text, text


@emulation
def test_shell_metacharacters_in_yaml_values_never_run(up, tmp_path):
    canary = tmp_path / "pwned"
    evil = f"; touch {canary} #"
    sub = f"$(touch {canary})"
    repo_link = Path(f"{tmp_path}/repo {evil}")    # the '/'s in it make directories
    repo_link.parent.mkdir(parents=True)
    repo_link.symlink_to(ROOT)
    exp = _exp(tmp_path, SMALL.replace("name: small", f"name: {json.dumps('x' + evil)}")
               .replace("repetitions: 2", "repetitions: 1")
               .replace("grid:", f"modes:\n  {json.dumps(sub + evil)}: {{}}\ngrid:"))
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1"], sendlab_path=repo_link,
                         python=str(repo_link / ".venv" / "bin" / "python")
                         if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable,
                         work_dir=tmp_path / f"work `touch {canary}` {sub} {evil}")
    out = tmp_path / f"out {evil} {sub}"
    rc, logs = _in_coord(up, _remote_sweep, str(exp), str(out), str(wf))
    assert rc == 0, logs
    assert _db(out, "SELECT count(*) FROM cells WHERE status = 'done'") == [(4,)]
    assert not canary.exists(), "a YAML value ran as a shell command"
    assert Path(f"{tmp_path}/work `touch {canary}` {sub} {evil}").is_dir(), \
        "the quoted work_dir reached the worker as one literal path"


@emulation
def test_workers_check_prints_a_table_with_each_worker(up, tmp_path):
    wf = up.workers_file(tmp_path / "workers.yaml", ["w1", "w2", "w3"])
    rc, text = _in_coord(up, _cli, ["workers", "check", str(wf)])
    assert rc == 0, text
    for m in up.machines.values():
        assert m.name in text and m.address in text
    local = identity()
    assert len(re.findall(re.escape(local["commit"][:10]) + r"(\+changes)? same", text)) == 3, text
    assert "root" in text and "netem" in text and "OVS" in text
