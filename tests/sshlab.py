"""A lab of "machines" for tests that need several: network namespaces on a veth underlay,
each running its own sshd (private config, host key, PidFile, AuthorizedKeysFile, ListenAddress
inside the namespace), with keys made for the test.

A coordinator namespace holds a bridge; every machine namespace has a veth into it (MTU
``mtu``, the underlay's). Tests run their coordinator side in a child entered into the
coordinator namespace, so all SSH traffic stays on the underlay. Every machine runs this
checkout (namespaces share the filesystem). Used by tests/test_workers.py,
tests/test_split_run.py and benchmarks/bench_workers.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import netns

ROOT = Path(__file__).resolve().parents[1]

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SUBNET = "10.213.0"


def _lab_unavailable() -> str | None:
    reason = netns.available()
    if reason:
        return reason
    if not os.access(SSHD, os.X_OK):
        return "sshd is not installed (apt-get install openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    return None


NO_LAB = _lab_unavailable()


def emulation(fn):
    """Needs root, namespaces and sshd; skipped, saying why, where they are missing."""
    fn = pytest.mark.skipif(NO_LAB is not None, reason=f"emulation: {NO_LAB}")(fn)
    return pytest.mark.emulation(fn)


@dataclass
class Machine:
    name: str
    ns: netns.Namespace
    address: str
    dir: Path
    sshd: subprocess.Popen | None = None

    @property
    def host_key_line(self) -> str:
        return (self.dir / "host_key.pub").read_text().split()[:2]


class Lab:
    def __init__(self, base: Path, names: list[str], *, mtu: int = 1500) -> None:
        self.base = base
        self.mtu = mtu
        base.mkdir(parents=True, exist_ok=True)
        self.run = netns.NetnsRun()
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        self.coord = self.run.add_namespace("c")
        self.coord.run(["ip", "link", "add", "br0", "type", "bridge"])
        self.coord.run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", "br0"])
        self.coord.run(["ip", "link", "set", "br0", "up"])
        self.key = self.base / "client_key"
        _keygen(self.key)
        (self.base / "authorized_keys").write_text((self.base / "client_key.pub").read_text())
        # sshd's privilege-separation directory, which the openssh-server package expects and
        # systemd would make at boot. Made if missing and left: another lab's sshd may use it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.machines: dict[str, Machine] = {}
        for i, name in enumerate(names):
            ns = self.run.add_namespace(name)
            link = self.run.add_veth(self.coord, ns, mtu=self.mtu)
            self.coord.run(["ip", "link", "set", link.a_if, "master", "br0"])
            address = f"{SUBNET}.{11 + i}"
            ns.addr_add(link.b_if, f"{address}/24")
            d = self.base / name
            d.mkdir()
            _keygen(d / "host_key")
            m = Machine(name, ns, address, d)
            self.machines[name] = m
            self.start_sshd(m)
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.write_text("".join(
            f"{m.address} {' '.join(m.host_key_line)}\n" for m in self.machines.values()))

    def start_sshd(self, m: Machine) -> None:
        config = m.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {m.address}:22", f"HostKey {m.dir / 'host_key'}",
            f"PidFile {m.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "StrictModes no", "UseDNS no", "PrintMotd no",
            "Subsystem sftp internal-sftp", "MaxStartups 50", ""]))
        pidfile = m.dir / "sshd.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        m.sshd = m.ns.popen([SSHD, "-D", "-f", str(config), "-E", str(m.dir / "sshd.log")])
        end = time.monotonic() + 10
        while not pidfile.exists():
            if m.sshd.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"sshd in {m.name} did not start: "
                                   f"{(m.dir / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.02)

    def kill_sshd(self, m: Machine) -> None:
        """The machine dies: its sshd (by the PID we started) and every process under it."""
        _kill_tree(m.sshd.pid)
        m.sshd.wait(5)

    def freeze(self, m: Machine, on: bool = True) -> None:
        """The machine hangs (SIGSTOP to its sshd and everything under it), or thaws."""
        _kill_tree(m.sshd.pid, signal.SIGSTOP if on else signal.SIGCONT)

    def ensure_up(self) -> None:
        for m in self.machines.values():
            if m.sshd is None or m.sshd.poll() is not None:
                self.start_sshd(m)

    def workers_file(self, path: Path, names: list[str], *, slots: int = 1,
                     known_hosts: Path | None = None, **extra) -> Path:
        lines = ["defaults:", f"  key: {json.dumps(str(self.key))}",
                 f"  known_hosts: {json.dumps(str(known_hosts or self.known_hosts))}",
                 f"  sendlab_path: {json.dumps(str(extra.pop('sendlab_path', ROOT)))}",
                 f"  python: {json.dumps(extra.pop('python', sys.executable))}",
                 "  connect_timeout_s: 3", f"  slots: {slots}",
                 f"  compression: {json.dumps(bool(extra.pop('compression', False)))}",
                 "workers:"]
        work = extra.pop("work_dir", None)
        for name in names:
            m = self.machines[name]
            lines += [f"  - name: {name}", f"    address: {m.address}",
                      f"    work_dir: {json.dumps(str(work or (path.parent / ('work-' + name))))}"]
        path.write_text("\n".join(lines) + "\n")
        return path

    def close(self) -> None:
        for m in getattr(self, "machines", {}).values():
            if m.sshd is not None and m.sshd.poll() is None:
                _kill_tree(m.sshd.pid)
                m.sshd.wait(5)
        self.run.cleanup()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sendlab-test", "-f",
                    str(path)], check=True, capture_output=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` (a process this test started) and its descendants, listener first."""
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


