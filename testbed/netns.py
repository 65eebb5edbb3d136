"""Network namespaces and veth pairs for one run, removed again by exactly the names created.

Every name starts with the run's prefix (``sl`` + 4 hex digits), everything created and
every process started is recorded (in memory and in a JSON file under the temporary
directory, so a crashed run can be cleaned up later with ``cleanup_record``), and
``cleanup`` is idempotent: it stops the recorded processes by PID, then deletes the
recorded links and namespaces by name. Nothing here matches names by pattern or kills
by process name.

    with NetnsRun() as run:
        a, b = run.add_namespace("a"), run.add_namespace("b")
        link = run.add_veth(a, b, mtu=1280)
        b.run(["ip", "addr", "add", "10.0.0.2/24", "dev", link.b_if])
        child = b.start(server_fn, port)      # a Python function inside namespace b
        with a.entered():                     # this thread inside namespace a
            ...
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
# tx off: the kernel computes checksums before the frame leaves, so a user-space peer (or an
# OVS userspace port) sees valid sums; tso/gso off: frames on the veth are <= MTU.
DEFAULT_OFFLOADS = {"tx": "off", "tso": "off", "gso": "off"}

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace operation failed; the message holds the command and its stderr."""


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd`` (os.setns is 3.12+)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, AF_PACKET)"
    for tool in ("ip", "ethtool"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]):
            return f"`{tool}` is not installed"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` is unavailable: {exc}"
    return None


def _run(cmd: list, *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def run_here(cmd: list, *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command in this process's own namespace (a worker's underlay is there)."""
    return _run(cmd, check=check, timeout=timeout)


def _child_main(ns_path: str, conn, fn, args, kwargs) -> None:
    """Body of a process started with Namespace.start: enter the namespace, run, report."""
    with open(ns_path) as f:
        setns(f.fileno())
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # hand every failure to the parent, which re-raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class Child:
    """A Python function running in a forked process inside a namespace."""

    def __init__(self, proc, conn, label: str) -> None:
        self.proc = proc
        self.conn = conn
        self.label = label

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self, timeout: float = 60.0):
        """The function's return value; raises NetnsError if it failed or timed out."""
        if not self.conn.poll(timeout):
            self.stop()
            raise NetnsError(f"{self.label}: no result after {timeout} s")
        status, value = self.conn.recv()
        self.proc.join(5)
        if status != "ok":
            raise NetnsError(f"{self.label} failed: {value}")
        return value

    def alive(self) -> bool:
        return self.proc.is_alive()

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; only this child's own PID."""
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(grace_s)


@dataclass
class Namespace:
    name: str
    run_: "NetnsRun"

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    def run(self, cmd: list, *, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command inside the namespace and wait for it."""
        return _run(["ip", "netns", "exec", self.name, *cmd], check=check, timeout=timeout)

    def popen(self, cmd: list, **kw) -> subprocess.Popen:
        """Start a command inside the namespace; it is recorded and stopped by cleanup."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.run_._add_process(proc.pid, proc)
        return proc

    def start(self, fn, *args, **kwargs) -> Child:
        """Run ``fn(*args, **kwargs)`` in a forked child that first enters this namespace."""
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(self.path, child, fn, args, kwargs),
                           daemon=True)
        proc.start()
        child.close()
        handle = Child(proc, parent, f"{getattr(fn, '__name__', fn)} in {self.name}")
        self.run_._add_process(proc.pid, handle)
        return handle

    def call(self, fn, *args, timeout: float = 60.0, **kwargs):
        """``fn(*args, **kwargs)`` inside the namespace, in a child; returns its result."""
        return self.start(fn, *args, **kwargs).result(timeout)

    @contextlib.contextmanager
    def entered(self):
        """Move this thread into the namespace for the block (sockets made there stay there)."""
        with open("/proc/thread-self/ns/net") as home, open(self.path) as target:
            setns(target.fileno())
            try:
                yield self
            finally:
                setns(home.fileno())

    def sysctl(self, key: str, value) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def disable_ipv6(self, ifname: str) -> None:
        # No router solicitations or DAD on the link: only the frames the test makes.
        probe = self.run(["test", "-e", f"/proc/sys/net/ipv6/conf/{ifname}"], check=False)
        if probe.returncode == 0:
            self.sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", 1)

    def addr_add(self, ifname: str, cidr: str) -> None:
        self.run(["ip", "addr", "add", cidr, "dev", ifname])


@dataclass
class Veth:
    a_ns: Namespace
    a_if: str
    b_ns: Namespace
    b_if: str


class NetnsRun:
    """The namespaces, links and processes of one run (a context manager)."""

    def __init__(self, prefix: str | None = None, record_dir: str | None = None) -> None:
        self.prefix = prefix or _unused_prefix()
        self.namespaces: list[str] = []
        self.links: list[str] = []          # one end's name per veth, as created in the root ns
        self.pids: list[int] = []
        self._procs: dict = {}              # pid -> Popen or Child, to stop only our own
        self.record_path = os.path.join(record_dir or tempfile.gettempdir(),
                                        f"sendlab-netns-{self.prefix}.json")
        self._closed = False
        atexit.register(self.cleanup)

    # --- creation ---------------------------------------------------------------------

    def add_namespace(self, short: str) -> Namespace:
        name = f"{self.prefix}-{short}"
        # Recorded only once made: if `add` fails (the name exists), it is someone else's.
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self._save()
        ns = Namespace(name, self)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def add_veth(self, a: Namespace, b: Namespace, *, mtu: int | tuple[int, int] = 1500,
                 offloads: dict | None = None, disable_ipv6: bool = True,
                 up: bool = True) -> Veth:
        """A veth pair with one end in ``a`` and one in ``b``; ``mtu`` per end as (a, b)."""
        idx = len(self.links)
        a_if, b_if = f"{self.prefix}v{idx}a", f"{self.prefix}v{idx}b"
        _run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth",
              "peer", "name", b_if, "netns", b.name])
        self.links.append(a_if)
        self._save()
        mtu_a, mtu_b = (mtu, mtu) if isinstance(mtu, int) else mtu
        offloads = DEFAULT_OFFLOADS if offloads is None else offloads
        for ns, ifname, m in ((a, a_if, mtu_a), (b, b_if, mtu_b)):
            self._configure(ns, ifname, m, offloads, disable_ipv6, up)
        return Veth(a, a_if, b, b_if)

    def adopt_link(self, name: str) -> None:
        """Record a link made elsewhere (in this process's namespace) as this run's, so that
        cleanup deletes it if it is still there."""
        self.links.append(name)
        self._save()

    def _configure(self, ns: Namespace, ifname: str, mtu: int, offloads: dict,
                   disable_ipv6: bool, up: bool) -> None:
        ns.run(["ip", "link", "set", "dev", ifname, "mtu", str(mtu)])
        if offloads:
            args = [x for kv in offloads.items() for x in kv]
            ns.run(["ethtool", "-K", ifname, *args])
        if disable_ipv6:
            ns.disable_ipv6(ifname)   # before `up`, so no DAD or solicitation is ever sent
        if up:
            ns.run(["ip", "link", "set", "dev", ifname, "up"])

    def _add_process(self, pid: int, handle) -> None:
        self.pids.append(pid)
        self._procs[pid] = handle
        self._save()

    # --- cleanup ----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop recorded processes, delete recorded links and namespaces; safe to repeat."""
        if self._closed:
            return
        for pid in self.pids:
            _stop(self._procs.get(pid))
        for name in self.links:
            # A veth inside a namespace goes with it; one left in the root ns is deleted here.
            _run(["ip", "link", "del", name], check=False)
        for name in self.namespaces:
            if os.path.exists(os.path.join(NETNS_DIR, name)):
                _run(["ip", "netns", "del", name], check=False)
        leftovers = [n for n in self.namespaces if os.path.exists(os.path.join(NETNS_DIR, n))]
        if leftovers:
            log.warning("namespaces still present after cleanup: %s", leftovers)
            return
        self._closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)
        atexit.unregister(self.cleanup)

    def _save(self) -> None:
        record = {"prefix": self.prefix, "namespaces": self.namespaces, "links": self.links,
                  "pids": self.pids}
        tmp = self.record_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.record_path)

    def __enter__(self) -> "NetnsRun":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _unused_prefix() -> str:
    """'sl' + 4 hex digits that no namespace, root-namespace link or record uses yet.

    Other runs on the machine use the same scheme; a clash would make cleanup delete theirs.
    """
    names = _run(["ip", "netns", "list"], check=False).stdout
    names += _run(["ip", "-o", "link", "show"], check=False).stdout
    for _ in range(100):
        prefix = "sl" + secrets.token_hex(2)
        record = os.path.join(tempfile.gettempdir(), f"sendlab-netns-{prefix}.json")
        if prefix not in names and not os.path.exists(record):
            return prefix
    raise NetnsError("no unused run prefix found")


def _stop(handle, grace_s: float = 2.0) -> None:
    if isinstance(handle, Child):
        handle.stop(grace_s)
    elif isinstance(handle, subprocess.Popen) and handle.poll() is None:
        handle.terminate()
        try:
            handle.wait(grace_s)
        except subprocess.TimeoutExpired:
            handle.kill()
            handle.wait(grace_s)


def cleanup_record(path: str, grace_s: float = 2.0) -> None:
    """Clean up after a run that died: the namespaces, links and PIDs its record names.

    A recorded PID is signalled only if it still runs inside one of the recorded namespaces,
    so a reused PID of some other process is left alone.
    """
    with open(path) as f:
        record = json.load(f)
    for pid in record.get("pids", []):
        if _pid_in_namespaces(pid, record.get("namespaces", [])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    time.sleep(grace_s if record.get("pids") else 0)
    for name in record.get("links", []):
        _run(["ip", "link", "del", name], check=False)
    for name in record.get("namespaces", []):
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            _run(["ip", "netns", "del", name], check=False)
    os.unlink(path)


def _pid_in_namespaces(pid: int, names: list) -> bool:
    try:
        own = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(NETNS_DIR, name))
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                return True
    return False


__all__ = ["NetnsRun", "Namespace", "Veth", "Child", "NetnsError", "available", "setns", "run_here",
           "cleanup_record", "DEFAULT_OFFLOADS"]
