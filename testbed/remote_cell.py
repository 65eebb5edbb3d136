"""The worker side of a sweep over SSH: ``python -m testbed.remote_cell``.

The coordinator (:mod:`testbed.remote`) runs nothing on a worker but this module, started from
the worker's sendlab checkout with every argument shell-quoted. Cells travel as data (JSON on
the agent's standard input), never as words of a shell command. Four ways to run it:

``--info``
    One JSON line: sendlab's version and commit, Python, kernel, whether we are root, and
    which kernel features the backends need (netem, the Open vSwitch module, vxlan).

``--serve WORK_DIR``
    An agent that runs cells one at a time for one coordinator slot. It makes its own
    directory under WORK_DIR, says hello, then reads JSON lines on stdin:

    - ``{"op": "run", "cell": {...}, "max_s": S}``: run the cell in a forked child; answers
      ``{"event": "started", ...}`` then ``{"event": "finished", "status": "done"|"failed",
      "error", "wall_s", "out"}``. ``out`` holds summary.json and the pcaps.
    - ``{"op": "clean", "cell_id": ID}``: remove that cell's directory (after the copy-back).

    When stdin closes (the coordinator went away, timed the cell out, or its connection
    broke) the agent kills the running cell, removes its directory and exits: a lost cell
    leaves nothing running behind on the worker.

``--part WORK_DIR``
    This worker's share of a topology split across machines, built with the emulated backend
    and driven step by step by ``sendlab run --workers`` (protocol in
    :mod:`testbed.remote_part`); it tears down when its stdin closes.

``CELL_JSON OUT_DIR``
    Run one cell described by a JSON file (the ``cell`` object above) into OUT_DIR, by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

PROTOCOL = 1
ROOT = Path(__file__).resolve().parents[1]
_CELL_ID = re.compile(r"^[0-9a-f]{8,64}$")
_TOPO_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
IDLE_S = 3600.0          # an agent that hears nothing for this long exits


# --- who we are ------------------------------------------------------------------------------

def sendlab_version() -> str:
    try:
        from importlib.metadata import version
        return version("sendlab")
    except Exception:  # not installed: read the checkout's pyproject
        try:
            import tomllib
            with open(ROOT / "pyproject.toml", "rb") as fh:
                return str(tomllib.load(fh)["project"]["version"])
        except Exception:
            return "unknown"


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's HEAD commit, read from .git without running git (None if not a clone)."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").exists():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None


def git_dirty(root: Path = ROOT) -> bool | None:
    """Uncommitted changes to tracked files; None when git is not there to say."""
    if not shutil.which("git"):
        return None
    try:
        res = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                              "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(res.stdout.strip()) if res.returncode == 0 else None


def kernel_module(name: str) -> str:
    """'loaded' (or built in), 'available' (modprobe could load it), 'missing' or 'unknown'."""
    if Path("/sys/module", name).exists():
        return "loaded"
    modprobe = shutil.which("modprobe") or next(
        (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.access(p, os.X_OK)), None)
    if modprobe is None:
        return "unknown"
    try:
        res = subprocess.run([modprobe, "-n", "-q", name], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "available" if res.returncode == 0 else "missing"


def identity() -> dict:
    """What the coordinator compares with its own: version, commit, Python."""
    return {"version": sendlab_version(), "commit": git_commit(),
            "python": platform.python_version(), "path": str(ROOT)}


def info() -> dict:
    ovs_bin = shutil.which("ovs-vswitchd") or next(
        (p for p in ("/usr/sbin/ovs-vswitchd",) if os.access(p, os.X_OK)), None)
    return {**identity(), "protocol": PROTOCOL, "dirty": git_dirty(),
            "hostname": platform.node(), "kernel": platform.release(),
            "root": os.geteuid() == 0, "cpus": os.cpu_count(),
            "netem": kernel_module("sch_netem"), "ovs": kernel_module("openvswitch"),
            "ovs_userspace": ovs_bin is not None, "vxlan": kernel_module("vxlan")}


# --- one cell ----------------------------------------------------------------------------------

class CellSpecError(ValueError):
    pass


def parse_cell(data: dict):
    """The cell description the coordinator sends -> (Cell, topology name, YAML text, backend)."""
    from .experiment import Cell
    try:
        cell_id = str(data["cell_id"])
        if not _CELL_ID.match(cell_id):
            raise CellSpecError(f"bad cell_id {cell_id!r}")
        name = str(data["topology_name"])
        if not _TOPO_NAME.match(name):
            raise CellSpecError(f"bad topology_name {name!r}")
        cell = Cell(cell_id, str(data["mode"]), dict(data["params"]),
                    tuple(str(o) for o in data["overrides"]), int(data["rep"]), int(data["seed"]))
        return cell, name, str(data["topology_yaml"]), str(data["backend"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CellSpecError):
            raise
        raise CellSpecError(f"bad cell description: {type(exc).__name__}: {exc}") from None


def run_one(data: dict, cell_dir: Path, out_dir: Path) -> dict:
    """Run one cell: the topology text goes to a file in ``cell_dir``, results to ``out_dir``."""
    from .sweep import run_cell
    cell, name, text, backend = parse_cell(data)
    topo_dir = cell_dir / "topology"
    topo_dir.mkdir(parents=True, exist_ok=True)
    topo_file = topo_dir / name
    topo_file.write_text(text)
    summary = run_cell(str(topo_file), cell, str(out_dir), backend)
    if not (out_dir / "summary.json").exists():   # run_sim writes it; other backends may not
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def parse_request(line: str, send) -> dict | None:
    """A JSON request with an "op"; None (after telling the coordinator) if it is not one."""
    try:
        req = json.loads(line)
        req["op"]
    except (ValueError, KeyError, TypeError) as exc:
        send({"event": "error", "message": f"bad request: {exc}"})
        return None
    return req


def _describe(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}\n" + "".join(tb[-3:])


def _child(data: dict, cell_dir: Path, out_dir: Path) -> None:
    """In the forked child: run the cell, write result.json, never return."""
    code = 0
    try:
        os.dup2(2, 1)   # stdout is the agent's protocol channel: the cell must not write to it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            run_one(data, cell_dir, out_dir)
            result = {"status": "done", "error": None}
        except BaseException as exc:  # a cell's failure is data, as in a local sweep
            result = {"status": "failed", "error": _describe(exc)}
        tmp = cell_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, cell_dir / "result.json")
    except BaseException:
        code = 1
    finally:
        os._exit(code)


# --- the agent ---------------------------------------------------------------------------------

class Agent:
    """Runs cells for one coordinator slot until its stdin closes."""

    def __init__(self, work_dir: str, out=None) -> None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="agent-", dir=work_dir))
        self.out = out or sys.stdout
        self.requests: queue.Queue = queue.Queue()
        self.eof_r, self.eof_w = os.pipe()
        self.child: int | None = None

    def send(self, event: dict) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def _reader(self, stream) -> None:
        for line in stream:
            self.requests.put(line)
        self.requests.put(None)
        os.write(self.eof_w, b"x")

    def serve(self, stream=None) -> int:
        # Import the heavy modules once, here, so every forked cell starts warm.
        from . import run, sweep  # noqa: F401
        threading.Thread(target=self._reader, args=(stream or sys.stdin,), daemon=True).start()
        self.send({"event": "hello", "protocol": PROTOCOL, "pid": os.getpid(),
                   "dir": str(self.dir), **identity()})
        try:
            while True:
                try:
                    line = self.requests.get(timeout=IDLE_S)
                except queue.Empty:
                    log.warning("no request for %s s; exiting", IDLE_S)
                    return 0
                if line is None:
                    return 0
                if not line.strip():
                    continue
                if not self.handle(line):
                    return 0
        finally:
            self.stop_child()
            shutil.rmtree(self.dir, ignore_errors=True)

    def handle(self, line: str) -> bool:
        """One request; False when the coordinator has gone (stop serving)."""
        req = parse_request(line, self.send)
        if req is None:
            return True
        op = req["op"]
        if op == "clean":
            cell_id = str(req.get("cell_id", ""))
            if _CELL_ID.match(cell_id):
                shutil.rmtree(self.dir / cell_id, ignore_errors=True)
            return True
        if op != "run":
            self.send({"event": "error", "message": f"unknown op {op!r}"})
            return True
        data = req.get("cell") or {}
        try:
            cell, *_ = parse_cell(data)
        except CellSpecError as exc:
            self.send({"event": "error", "message": str(exc)})
            return True
        return self.run(data, cell.cell_id, float(req.get("max_s") or 24 * 3600))

    def run(self, data: dict, cell_id: str, max_s: float) -> bool:
        cell_dir = self.dir / cell_id
        shutil.rmtree(cell_dir, ignore_errors=True)
        out_dir = cell_dir / "out"
        out_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(data, cell_dir, out_dir)
        self.child = pid
        self.send({"event": "started", "cell_id": cell_id, "pid": pid})
        pidfd = os.pidfd_open(pid)
        try:
            deadline = t0 + max_s
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.stop_child()
                    self.send({"event": "finished", "cell_id": cell_id, "status": "failed",
                               "error": f"timed out on the worker after {max_s:.0f} s",
                               "wall_s": time.perf_counter() - t0, "out": str(out_dir)})
                    return True
                ready, _, _ = select.select([pidfd, self.eof_r], [], [], min(left, 60))
                if pidfd in ready:
                    break
                if self.eof_r in ready:    # the coordinator is gone: stop the cell, leave
                    self.stop_child()
                    return False
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.child = None
        wall_s = time.perf_counter() - t0
        try:
            result = json.loads((cell_dir / "result.json").read_text())
        except (OSError, ValueError):
            why = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.waitstatus_to_exitcode(status)}")
            result = {"status": "failed", "error": f"the cell's process died ({why})"}
        self.send({"event": "finished", "cell_id": cell_id, "status": result["status"],
                   "error": result.get("error"), "wall_s": wall_s, "out": str(out_dir)})
        return True

    def stop_child(self, grace_s: float = 2.0) -> None:
        """SIGTERM the running cell (our own child, by PID), SIGKILL after ``grace_s``."""
        pid, self.child = self.child, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.remote_cell", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--info", action="store_true", help="print this worker's facts as JSON")
    parser.add_argument("--serve", metavar="WORK_DIR", help="run cells sent on stdin")
    parser.add_argument("--part", metavar="WORK_DIR",
                        help="build and run this worker's part of a split topology "
                             "(testbed.remote_part)")
    parser.add_argument("cell_json", nargs="?", help="a cell description (JSON file)")
    parser.add_argument("out_dir", nargs="?", help="where summary.json and the pcaps go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sendlab worker: %(message)s",
                        stream=sys.stderr)
    if args.info:
        print(json.dumps(info()), flush=True)
        return 0
    if args.serve:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: clean up
        return Agent(args.serve).serve()
    if args.part:
        from . import remote_part   # the emulated backend: loaded only where it is used
        return remote_part.serve(args.part)
    if args.cell_json and args.out_dir:
        data = json.loads(Path(args.cell_json).read_text())
        out = Path(args.out_dir)
        run_one(data, out, out)
        return 0
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
