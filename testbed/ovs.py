"""A private Open vSwitch for one run: its own database, daemons, sockets and logs.

Nothing is shared with a system OVS: ``OVS_RUNDIR``, ``OVS_LOGDIR`` and ``OVS_DBDIR`` point
into a run-private directory, the database is made with ``ovsdb-tool create``, and both
daemons run with ``--pidfile --detach --log-file`` there. Bridges use the userspace
datapath (``datapath_type=netdev``), which needs no kernel module. ``stop`` asks each daemon
to exit through its own control socket (``ovs-appctl exit``) and falls back to signalling
the PID from its pidfile; nothing is matched by process name.

``env`` holds the three variables, so any ``ovs-*`` tool (or Mininet) run with it talks to
this instance. With ``netns`` set, ovs-vswitchd runs inside that (existing) network
namespace, so the bridges and their ports live there and not in the root namespace.

    with OvsInstance() as ovs:
        ovs.add_bridge("sl1a2b-r1", dpid=1, controller="tcp:127.0.0.1:6653")
        ovs.add_port("sl1a2b-r1", "sl1a2bv0b", ofport=1)
        print(ovs.dump_flows("sl1a2b-r1"))
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time

log = logging.getLogger(__name__)

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
_TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class OvsError(RuntimeError):
    """An OVS command failed; the message holds the command, its stderr and the log tail."""


def which(tool: str) -> str | None:
    """The path of an OVS tool; /usr/sbin is searched even when not on PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
    return shutil.which(tool, path=path)


def available() -> str | None:
    """None when a private userspace OVS can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (ovs-vswitchd opens raw sockets on the bridge ports)"
    missing = [t for t in _TOOLS if which(t) is None]
    if missing:
        return (f"Open vSwitch tools missing: {', '.join(missing)} "
                "(scripts/install-emulation.sh installs openvswitch-switch)")
    if not os.path.exists(SCHEMA):
        return f"OVS schema {SCHEMA} missing"
    return None


class OvsInstance:
    """ovsdb-server + ovs-vswitchd private to one run (a context manager)."""

    def __init__(self, workdir: str | None = None, *, netns: str | None = None,
                 keep_dir: bool = False) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="sendlab-ovs-")
        self.netns = netns
        self.keep_dir = keep_dir
        self.rundir = os.path.join(self.workdir, "run")
        self.logdir = os.path.join(self.workdir, "log")
        self.dbdir = os.path.join(self.workdir, "db")
        self.env = {**os.environ, "OVS_RUNDIR": self.rundir, "OVS_LOGDIR": self.logdir,
                    "OVS_DBDIR": self.dbdir}
        self.env["PATH"] = self.env.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
        self.bridges: list[str] = []
        self.pids: dict[str, int] = {}   # daemon -> PID read from its pidfile
        self._started = False

    # --- life cycle -------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> "OvsInstance":
        reason = available()
        if reason:
            raise OvsError(f"cannot start OVS: {reason}")
        for d in (self.rundir, self.logdir, self.dbdir):
            os.makedirs(d, exist_ok=True)
        db = os.path.join(self.dbdir, "conf.db")
        if not os.path.exists(db):
            self._run(["ovsdb-tool", "create", db, SCHEMA])
        self._started = True   # from here on stop() has something to undo
        self._run(["ovsdb-server", db, f"--remote=punix:{self.rundir}/db.sock",
                   "--pidfile", "--detach", "--log-file"])
        self.pids["ovsdb-server"] = self._read_pid("ovsdb-server", timeout_s)
        self._run(["ovs-vsctl", "--no-wait", "init"])
        cmd = ["ovs-vswitchd", "--pidfile", "--detach", "--log-file"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self._run(cmd, timeout_s=timeout_s)
        self.pids["ovs-vswitchd"] = self._read_pid("ovs-vswitchd", timeout_s)
        # `ovs-vsctl` without --no-wait returns once ovs-vswitchd has applied the database.
        self.vsctl("--timeout", str(int(timeout_s)), "show")
        log.info("OVS started in %s (pids %s)", self.workdir, self.pids)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both daemons of this instance (and only them); safe to repeat."""
        if not self._started:
            return
        for br in list(reversed(self.bridges)):
            with contextlib.suppress(OvsError, subprocess.SubprocessError):
                self.vsctl("--timeout", "5", "--if-exists", "del-br", br)
        self.bridges.clear()
        for daemon, extra in (("ovs-vswitchd", ["--cleanup"]), ("ovsdb-server", [])):
            pid = self.pids.get(daemon) or self._pid_from_file(daemon)
            if pid is None:
                continue
            res = subprocess.run(["ovs-appctl", "-t", self._ctl_target(daemon, pid), "exit",
                                  *extra], env=self.env, capture_output=True, text=True,
                                 timeout=timeout_s + 5, check=False)
            if not _wait_gone(pid, timeout_s):
                log.warning("%s (pid %d) ignored `ovs-appctl exit` (%s); sending SIGTERM",
                            daemon, pid, res.stderr.strip())
                _signal_own(pid, signal.SIGTERM, daemon)
                if not _wait_gone(pid, timeout_s):
                    _signal_own(pid, signal.SIGKILL, daemon)
                    _wait_gone(pid, timeout_s)
            self.pids.pop(daemon, None)
        self._started = False
        if self._own_dir and not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "OvsInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- configuration ----------------------------------------------------------------

    def add_bridge(self, name: str, *, dpid: int | None = None, controller: str | None = None,
                   protocols: str = "OpenFlow13", fail_mode: str = "secure") -> None:
        """A userspace bridge; ``controller`` like "tcp:127.0.0.1:6653" or "unix:/path".

        fail_mode secure: no NORMAL flows while the controller is away. In-band control is
        off, so OVS adds no hidden flows of its own.
        """
        if len(name) > 15:
            raise ValueError(f"bridge name {name!r} is longer than 15 characters")
        self.bridges.append(name)
        args = ["--", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
                f"protocols={protocols}", f"fail_mode={fail_mode}",
                "other_config:disable-in-band=true"]
        if dpid is not None:
            args.append(f"other_config:datapath-id={dpid:016x}")
        if controller:
            args += ["--", "set-controller", name, controller]
        self.vsctl(*args)

    def add_port(self, bridge: str, ifname: str, ofport: int | None = None) -> int:
        """Attach an existing interface (in the daemon's namespace); returns its OF port."""
        args = ["--", "add-port", bridge, ifname]
        if ofport is not None:
            args += ["--", "set", "interface", ifname, f"ofport_request={ofport}"]
        self.vsctl(*args)
        got = int(self.vsctl("get", "interface", ifname, "ofport").strip())
        if got < 0:
            raise OvsError(f"port {ifname} on {bridge} has no OpenFlow port: "
                           f"{self.vsctl('get', 'interface', ifname, 'error').strip()}")
        if ofport is not None and got != ofport:
            raise OvsError(f"port {ifname}: asked for ofport {ofport}, got {got}")
        return got

    def dump_flows(self, bridge: str, *args: str) -> str:
        return self.ofctl("dump-flows", bridge, *args)

    def wait_for_flows(self, bridge: str, min_flows: int = 1, timeout_s: float = 10.0) -> str:
        """Poll the flow table until it holds ``min_flows`` flows: the controller is there."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.dump_flows(bridge, "--no-stats")
            if len([ln for ln in out.splitlines() if ln.strip()]) >= min_flows:
                return out
            if time.monotonic() > deadline:
                raise OvsError(f"bridge {bridge}: fewer than {min_flows} flows after "
                               f"{timeout_s} s; controller status: "
                               f"{self.vsctl('list', 'controller').strip()}")
            time.sleep(0.05)

    # --- tools ------------------------------------------------------------------------

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", *args]).stdout

    def ofctl(self, *args: str, version: str = "OpenFlow13") -> str:
        return self._run(["ovs-ofctl", "-O", version, *args]).stdout

    def appctl(self, *args: str, target: str = "ovs-vswitchd") -> str:
        return self._run(["ovs-appctl", "-t", target, *args]).stdout

    def log_tail(self, daemon: str = "ovs-vswitchd", lines: int = 20) -> str:
        try:
            with open(os.path.join(self.logdir, f"{daemon}.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _run(self, cmd: list, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                             timeout=timeout_s, check=False)
        if res.returncode != 0:
            tail = self.log_tail(cmd[0]) if cmd[0].startswith("ovs") else ""
            raise OvsError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}"
                           + (f"\n{cmd[0]} log tail:\n{tail}" if tail else ""))
        return res

    def _pid_from_file(self, daemon: str) -> int | None:
        try:
            with open(os.path.join(self.rundir, f"{daemon}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _read_pid(self, daemon: str, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (pid := self._pid_from_file(daemon)) is None:
            if time.monotonic() > deadline:
                raise OvsError(f"{daemon} wrote no pidfile in {self.rundir}:\n"
                               f"{self.log_tail(daemon)}")
            time.sleep(0.02)
        return pid

    def _ctl_target(self, daemon: str, pid: int) -> str:
        # The control socket by full path: exactly this instance's daemon.
        return os.path.join(self.rundir, f"{daemon}.{pid}.ctl")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal_own(pid: int, sig: int, daemon: str) -> None:
    """Signal ``pid`` only if it still runs ``daemon`` (a PID can be reused)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != daemon[:15]:
                return
        os.kill(pid, sig)
    except (OSError, ProcessLookupError):
        pass


__all__ = ["OvsInstance", "OvsError", "available", "which", "SCHEMA"]
