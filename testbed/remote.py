"""Cells on SSH workers: connections, the remote agent, and a sweep fanned out over workers.

Security, all in this module:

- Key authentication only, with the worker's key file (no agent, no other keys, no password).
- The server's host key is checked against the worker's known_hosts file before anything is
  sent. An unknown key is refused unless the user passes ``--accept-new-host-keys``, which
  adds it (once: later runs verify it). A changed key is always refused; the message says
  how to remove the old one after checking.
- The only commands run remotely are ``python -m testbed.remote_cell --info`` and ``--serve
  WORK_DIR``, from the worker's sendlab checkout, built by :func:`remote_command`, which
  shell-quotes every word. Cells (overrides, topology text, names) travel as JSON on the
  agent's standard input, never on a command line.

The fan-out: every slot of every worker is a thread with its own SSH connection and agent
(:class:`Slot`); :class:`Dispatcher` (pure bookkeeping, no I/O) says which cell a slot runs
next; the caller's thread receives results and records them. A cell lost with its worker
(connection broken, agent gone, no result in time) goes back to the queue for another worker;
after ``max_attempts`` losses it is recorded as failed with the reasons.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import os
import queue
import shlex
import shutil
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paramiko

from .experiment import Cell
from .workers import Worker

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_ATTEMPTS = 3
TIMEOUT_FLOOR_S = 30.0        # the cell timeout is never shorter than this unless set by hand
TIMEOUT_FACTOR = 10.0         # ... and otherwise 10 x the longest cell seen so far
FIRST_TIMEOUT_S = 600.0       # before any cell has finished
HELLO_TIMEOUT_S = 60.0        # the agent's start (Python, imports) on a busy worker
SFTP_TIMEOUT_S = 60.0         # one SFTP operation


class RemoteError(RuntimeError):
    """A worker could not be used: connect, host key, authentication, agent."""


class HostKeyError(RemoteError):
    pass


class Lost(RuntimeError):
    """A cell's run ended without a result (the worker died, hung or the link broke)."""


# --- host keys ---------------------------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class KnownHosts:
    """One known_hosts file: verify a server key, add an accepted one. Thread-safe."""

    _registry: dict[Path, "KnownHosts"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    @classmethod
    def of(cls, path: Path) -> "KnownHosts":
        path = Path(path).resolve()
        with cls._registry_lock:
            if path not in cls._registry:
                cls._registry[path] = cls(path)
            return cls._registry[path]

    def _load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            try:
                keys.load(str(self.path))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise HostKeyError(f"cannot read known_hosts {self.path}: {exc}") from None
        return keys

    def known_types(self, host_id: str) -> list[str]:
        with self.lock:
            entry = self._load().lookup(host_id)
        return list(entry.keys()) if entry else []

    def verify(self, worker: Worker, key: paramiko.PKey, *, accept_new: bool) -> str:
        """'known', or 'added' (accepted now); raise :class:`HostKeyError` otherwise."""
        host_id = worker.host_id
        with self.lock:
            entry = self._load().lookup(host_id)
            if entry:
                known = entry.get(key.get_name())
                if known is not None and known == key:
                    return "known"
                old = known or next(iter(entry.values()))
                line = self._line_of(host_id, old)
                where = f"{self.path}:{line}" if line else str(self.path)
                raise HostKeyError(
                    f"HOST KEY CHANGED for {host_id}: {where} holds a {old.get_name()} key "
                    f"{fingerprint(old)}, the server offers {key.get_name()} {fingerprint(key)}."
                    " Refused: this can be an attack. If the worker was reinstalled and you "
                    "trust the new key, remove the old one (ssh-keygen -f "
                    f"{shlex.quote(str(self.path))} -R {shlex.quote(host_id)}) and run again "
                    "with --accept-new-host-keys")
            if not accept_new:
                raise HostKeyError(
                    f"unknown host key for {host_id}: not in {self.path}. The server offers "
                    f"{key.get_name()} {fingerprint(key)}; if that is the worker's key, run "
                    "again with --accept-new-host-keys to add it (once)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(f"{host_id} {key.get_name()} {key.get_base64()}\n")
            log.warning("worker %s: added host key %s %s for %s to %s", worker.name,
                        key.get_name(), fingerprint(key), host_id, self.path)
            return "added"

    def _line_of(self, host_id: str, key: paramiko.PKey) -> int | None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        for number, text in enumerate(lines, 1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(text, number)
            except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
                continue
            if entry is None or entry.key is None:
                continue
            names_match = any(h == host_id or (h.startswith("|1|") and
                                               paramiko.HostKeys.hash_host(host_id, h) == h)
                              for h in entry.hostnames)
            if names_match and entry.key == key:
                return number
        return None


# --- one connection ----------------------------------------------------------------------------

def remote_command(worker: Worker, *args: str) -> str:
    """``cd SENDLAB && exec PYTHON -m testbed.remote_cell ARGS``, every word shell-quoted."""
    argv = [worker.python, "-m", "testbed.remote_cell", *args]
    return f"cd {shlex.quote(worker.sendlab_path)} && exec " + " ".join(map(shlex.quote, argv))


def _load_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(path))
    except FileNotFoundError:
        raise RemoteError(f"key file {path} does not exist") from None
    except paramiko.PasswordRequiredException:
        raise RemoteError(f"key file {path} is encrypted; give a key without a passphrase "
                          "(sendlab does not prompt)") from None
    except (OSError, paramiko.SSHException, ValueError, TypeError) as exc:
        raise RemoteError(f"cannot read key file {path}: {exc}") from None


class Connection:
    """One authenticated SSH transport to a worker."""

    def __init__(self, worker: Worker, transport: paramiko.Transport, connect_s: float) -> None:
        self.worker = worker
        self.transport = transport
        self.connect_s = connect_s
        self._sftp: paramiko.SFTPClient | None = None

    def exec(self, command: str) -> paramiko.Channel:
        try:
            chan = self.transport.open_session(timeout=self.worker.connect_timeout_s)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Lost(f"cannot start a command: {exc or type(exc).__name__}") from None
        return chan

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise Lost(f"cannot open SFTP: {exc or type(exc).__name__}") from None
            self._sftp.get_channel().settimeout(SFTP_TIMEOUT_S)
        return self._sftp

    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # closing a broken SFTP session: nothing left to do
                pass
        self.transport.close()


def connect(worker: Worker, *, accept_new: bool = False) -> Connection:
    """Open, verify the host key, authenticate with the key; :class:`RemoteError` if not."""
    pkey = _load_key(worker.key)
    known = KnownHosts.of(worker.known_hosts)
    t0 = time.perf_counter()
    try:
        sock = socket.create_connection((worker.address, worker.port),
                                        timeout=worker.connect_timeout_s)
    except OSError as exc:
        raise RemoteError(f"cannot reach {worker.address}:{worker.port}: "
                          f"{exc.strerror or exc}") from None
    # Requests and SFTP round trips are small writes: Nagle would hold each for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    try:
        # Results are mostly pcaps, which zlib shrinks 10-30x: worth it on slow links; on a
        # LAN, compressing costs more time than the bytes it saves (off, as in OpenSSH).
        transport.use_compression(worker.compression)
        transport.banner_timeout = worker.connect_timeout_s
        transport.handshake_timeout = worker.connect_timeout_s
        types = known.known_types(worker.host_id)
        if types:  # ask for the key type we know first, as OpenSSH and SSHClient do
            opts = transport.get_security_options()
            opts.key_types = [t for t in types if t in opts.key_types] + [
                t for t in opts.key_types if t not in types]
        transport.start_client(timeout=worker.connect_timeout_s)
        known.verify(worker, transport.get_remote_server_key(), accept_new=accept_new)
        try:
            transport.auth_publickey(worker.user, pkey)
        except paramiko.AuthenticationException as exc:
            raise RemoteError(f"{worker.user}@{worker.address} refused the key {worker.key}: "
                              f"{exc}") from None
        if not transport.is_authenticated():
            raise RemoteError(f"{worker.user}@{worker.address}: key authentication failed")
        transport.set_keepalive(10)
    except RemoteError:   # host key refused, key refused
        transport.close()
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise RemoteError(f"SSH to {worker.address}:{worker.port} failed: "
                          f"{exc or type(exc).__name__}") from None
    return Connection(worker, transport, time.perf_counter() - t0)


class _Lines:
    """JSON lines from a channel's stdout, with a deadline; stderr kept as a short tail."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.buf = b""
        self.err = collections.deque(maxlen=40)
        chan.settimeout(0.2)

    def _drain_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            data = self.chan.recv_stderr(65536)
            if not data:
                break
            self.err.extend(data.decode(errors="replace").splitlines())

    def stderr_tail(self, n: int = 6) -> str:
        self._drain_stderr()
        return " | ".join(list(self.err)[-n:])

    def next(self, deadline: Callable[[], float], stop: threading.Event | None = None) -> dict:
        """The next JSON line; :class:`Lost` on EOF, past the deadline, or when stopped."""
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    return json.loads(line)
                except ValueError:
                    log.debug("not JSON from the agent: %r", line[:200])
                    continue
            self._drain_stderr()
            if stop is not None and stop.is_set():
                raise Lost("the sweep is stopping")
            left = deadline() - time.monotonic()
            if left <= 0:
                raise Lost("timed out")
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise Lost(f"connection broke: {exc or type(exc).__name__}") from None
            if not data:
                tail = self.stderr_tail()
                raise Lost("the worker's agent went away" + (f" ({tail})" if tail else ""))
            self.buf += data


def remote_info(conn: Connection, timeout_s: float = 60.0) -> dict:
    """``remote_cell --info`` on the worker, parsed."""
    try:
        chan = conn.exec(remote_command(conn.worker, "--info"))
    except Lost as exc:
        raise RemoteError(str(exc)) from None
    lines = _Lines(chan)
    end = time.monotonic() + timeout_s
    try:
        info = lines.next(lambda: end)
    except Lost as exc:
        raise RemoteError(f"`{remote_command(conn.worker, '--info')}` gave no answer: {exc}; "
                          f"is sendlab_path right? {lines.stderr_tail()}") from None
    finally:
        chan.close()
    return info


class Agent:
    """``remote_cell --serve`` on a worker: one slot's cells, one at a time; with ``part``,
    ``remote_cell --part``: the worker's share of a split topology (testbed.split_run)."""

    def __init__(self, conn: Connection, *, part: bool = False) -> None:
        self.conn = conn
        worker = conn.worker
        mode, role = ("--part", "part") if part else ("--serve", "cell")
        self.chan = conn.exec(remote_command(worker, mode, worker.work_dir))
        self.lines = _Lines(self.chan)
        end = time.monotonic() + HELLO_TIMEOUT_S
        try:
            self.hello = self.lines.next(lambda: end)
        except Lost as exc:
            self.chan.close()
            raise RemoteError(f"the sendlab agent did not start ({exc}); check sendlab_path "
                              f"{worker.sendlab_path} and python {worker.python}") from None
        if self.hello.get("event") != "hello" or self.hello.get("protocol") != PROTOCOL or \
                self.hello.get("role", "cell") != role:
            self.chan.close()
            raise RemoteError(f"the worker's sendlab speaks protocol "
                              f"{self.hello.get('protocol')!r} as {self.hello.get('role')!r}, "
                              f"not {PROTOCOL} as {role!r}; update it")

    def request(self, req: dict) -> None:
        try:
            self.chan.sendall((json.dumps(req) + "\n").encode())
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Lost(f"connection broke: {exc or type(exc).__name__}") from None

    def start(self, payload: dict, max_s: float) -> None:
        """Send one cell; the agent runs it when the one before (if any) is done."""
        self.request({"op": "run", "cell": payload, "max_s": max_s})

    def wait(self, cell_id: str, deadline: Callable[[], float],
             stop: threading.Event | None = None,
             on_started: Callable[[], None] | None = None) -> dict:
        """The cell's 'finished' event. :class:`Lost` if none comes in time."""
        while True:
            event = self.lines.next(deadline, stop)
            kind = event.get("event")
            if kind == "started" and on_started:
                on_started()
            elif kind == "finished" and event.get("cell_id") == cell_id:
                return event
            elif kind == "error":
                raise Lost(f"the agent refused the cell: {event.get('message')}")

    def fetch(self, remote_dir: str, local_dir: Path) -> None:
        """Copy ``remote_dir`` (summary.json, pcaps) into ``local_dir`` with SFTP."""
        sftp = self.conn.sftp()
        try:
            _get_tree(sftp, remote_dir, local_dir)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Lost(f"copying the results back failed: {exc or type(exc).__name__}") from None

    def clean(self, cell_id: str) -> None:
        self.request({"op": "clean", "cell_id": cell_id})

    def close(self) -> None:
        self.chan.close()


def _get_tree(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    for attr in sftp.listdir_attr(remote):
        name = attr.filename
        if name in (".", "..") or "/" in name or "\0" in name:
            continue
        mode = attr.st_mode or 0
        if stat.S_ISDIR(mode):
            _get_tree(sftp, f"{remote}/{name}", local / name)
        elif stat.S_ISREG(mode):
            sftp.get(f"{remote}/{name}", str(local / name))
        # symlinks and anything else stay on the worker


# --- which cell runs where ---------------------------------------------------------------------

@dataclass
class CellState:
    cell: Cell
    lost_on: list = field(default_factory=list)     # (worker, reason) per lost attempt

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id


class Dispatcher:
    """The queue of cells and the workers that are up. Thread-safe; no I/O.

    A slot takes the first queued cell not lost on its own worker before; a cell lost on
    every worker still up may go back to one of them. A cell lost ``max_attempts`` times is
    given up (the caller records it failed). When no worker is up, what is queued is stranded.
    """

    def __init__(self, cells: list[Cell], workers: list[str],
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.cv = threading.Condition()
        self.queue: collections.deque[CellState] = collections.deque(CellState(c) for c in cells)
        self.running: dict[str, tuple[CellState, str]] = {}
        self.up = set(workers)
        self.down: dict[str, str] = {}
        self.max_attempts = max_attempts
        self.stopped = False

    def take(self, worker: str, timeout: float | None = None) -> CellState | None:
        """The next cell for ``worker``, waiting while others may still lose theirs; None when
        there is nothing left for it (all done, worker down, or the sweep stopping)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while True:
                if self.stopped or worker not in self.up:
                    return None
                state = self._pick(worker)
                if state is not None:
                    self.queue.remove(state)
                    self.running[state.cell_id] = (state, worker)
                    return state
                if not self.queue and not self.running:
                    return None
                wait = None if end is None else end - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                self.cv.wait(wait if wait is not None else 1.0)

    def _pick(self, worker: str) -> CellState | None:
        others = self.up - {worker}
        fallback = None
        for state in self.queue:
            tried = {w for w, _ in state.lost_on}
            if worker not in tried:
                return state
            if fallback is None and others <= tried:
                fallback = state
        return fallback

    def finished(self, state: CellState) -> None:
        with self.cv:
            self.running.pop(state.cell_id, None)
            self.cv.notify_all()

    def unstarted(self, state: CellState) -> None:
        """Back to the front of the queue: it never ran (its slot could not connect)."""
        with self.cv:
            self.running.pop(state.cell_id, None)
            self.queue.appendleft(state)
            self.cv.notify_all()

    def lost(self, state: CellState, worker: str, reason: str) -> bool:
        """Record a lost attempt; True if the cell is queued again, False if given up."""
        with self.cv:
            self.running.pop(state.cell_id, None)
            state.lost_on.append((worker, reason))
            again = len(state.lost_on) < self.max_attempts
            if again:
                self.queue.appendleft(state)
            self.cv.notify_all()
            return again

    def worker_down(self, worker: str, reason: str) -> None:
        with self.cv:
            self.up.discard(worker)
            self.down.setdefault(worker, reason)
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify_all()

    def complete(self) -> bool:
        with self.cv:
            return not self.queue and not self.running

    def stranded(self) -> list[CellState]:
        """Cells that can no longer run: queued while no worker is up."""
        with self.cv:
            return list(self.queue) if not self.up and not self.running else []


class CellTimeout:
    """How long a cell may run: fixed (``--cell-timeout``), else 10 x the longest seen (>= 30 s)."""

    def __init__(self, fixed_s: float | None = None) -> None:
        self.fixed_s = fixed_s
        self.walls: list[float] = []
        self.lock = threading.Lock()

    def seen(self, wall_s: float) -> None:
        with self.lock:
            self.walls.append(wall_s)

    def current(self) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        with self.lock:
            if not self.walls:
                return FIRST_TIMEOUT_S
            return max(TIMEOUT_FLOOR_S, TIMEOUT_FACTOR * max(self.walls))



# --- the fan-out ----------------------------------------------------------------------------

@dataclass
class Outcome:
    """What a slot reports to the coordinating thread."""

    kind: str                       # started | result | lost | down | unstarted | hello
    worker: str
    state: CellState | None = None
    status: str | None = None       # result: done | failed
    error: str | None = None
    wall_s: float = 0.0
    summary: dict | None = None
    info: dict | None = None


def cell_payload(cell: Cell, topo_name: str, topo_text: str, backend: str) -> dict:
    return {"cell_id": cell.cell_id, "mode": cell.mode, "params": cell.params,
            "overrides": list(cell.overrides), "rep": cell.rep, "seed": cell.seed,
            "backend": backend, "topology_name": topo_name, "topology_yaml": topo_text}


@dataclass
class _Finished:
    """A cell the worker has finished whose results are not copied back yet."""

    state: CellState
    event: dict
    t0: float


class Slot(threading.Thread):
    """One of a worker's slots: its own connection and agent, cells one after another.

    The copy-back of a finished cell overlaps the next cell's run: the slot sends the next
    cell first, then fetches the previous one's results while the worker computes.
    """

    def __init__(self, worker: Worker, index: int, fanout: "FanOut") -> None:
        super().__init__(name=f"sendlab-{worker.name}-{index}", daemon=True)
        self.worker = worker
        self.fanout = fanout
        self.conn: Connection | None = None
        self.agent: Agent | None = None

    def _ensure_agent(self) -> None:
        if self.agent is not None and self.conn is not None and self.conn.alive():
            return
        self._drop()
        with self.fanout.connect_lock(self.worker.name):   # one handshake at a time per worker
            self.conn = connect(self.worker, accept_new=self.fanout.accept_new)
        self.agent = Agent(self.conn)
        self.fanout.events.put(Outcome("hello", self.worker.name, info=self.agent.hello))

    def _drop(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.conn is not None:
            self.conn.close()
        self.agent = self.conn = None

    def _lost(self, state: CellState, reason: str, t0: float) -> None:
        self.fanout.events.put(Outcome("lost", self.worker.name, state=state, error=reason,
                                       wall_s=time.monotonic() - t0))

    def run(self) -> None:
        fan, name = self.fanout, self.worker.name
        prev: _Finished | None = None
        try:
            while not fan.stop.is_set():
                # With results waiting to be copied, take only a cell that is there now.
                state = fan.dispatcher.take(name, timeout=0 if prev else None)
                if state is None and prev is None:
                    return
                t0 = time.monotonic()
                if state is not None:
                    try:
                        self._ensure_agent()
                    except (RemoteError, Lost) as exc:
                        fan.dispatcher.worker_down(name, str(exc))
                        fan.events.put(Outcome("down", name, error=str(exc)))
                        fan.events.put(Outcome("unstarted", name, state=state))
                        if prev is not None:
                            self._lost(prev.state, f"results not copied back: {exc}", prev.t0)
                        return
                    try:
                        self.agent.start(fan.payload(state.cell), max_s=self._max_s())
                    except Lost as exc:
                        self._drop()
                        self._lost(state, str(exc), t0)
                        if prev is not None:
                            self._lost(prev.state, str(exc), prev.t0)
                        prev = None
                        continue
                if prev is not None:
                    ok = self._copy_back(prev)
                    prev = None
                    if not ok:
                        if state is not None:
                            self._lost(state, "the connection broke during the copy-back", t0)
                        continue
                if state is not None:
                    prev = self._wait(state, t0)
        finally:
            self._drop()

    def _max_s(self) -> float:
        return self.fanout.timeout.current() * 2 + 60

    def _wait(self, state: CellState, t0: float) -> _Finished | None:
        """The cell's 'finished' event, or None (reported lost, connection dropped)."""
        fan, name = self.fanout, self.worker.name
        limit = fan.timeout.current()

        def deadline() -> float:
            return t0 + (fan.timeout.current() if fan.timeout.fixed_s is None else limit)

        try:
            event = self.agent.wait(state.cell_id, deadline, stop=fan.stop,
                                    on_started=lambda: fan.events.put(
                                        Outcome("started", name, state=state)))
        except Lost as exc:
            reason = str(exc)
            if reason == "timed out":
                reason = f"no result after {time.monotonic() - t0:.0f} s (cell timeout)"
            self._drop()     # the agent sees its stdin close and kills the cell
            self._lost(state, reason, t0)
            return None
        log.debug("%s: cell %s: ran %.3f s (%.3f s on the worker)", name, state.cell_id,
                  time.monotonic() - t0, event.get("wall_s") or 0.0)
        return _Finished(state, event, t0)

    def _copy_back(self, done: _Finished) -> bool:
        """SFTP the finished cell's out dir into DIR/cells/<id>/ and report the result."""
        fan, name, cell = self.fanout, self.worker.name, done.state.cell
        t1 = time.monotonic()
        local = fan.out_dir / "cells" / cell.cell_id
        incoming = fan.out_dir / "cells" / f".incoming-{cell.cell_id}-{name}"
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            self.agent.fetch(done.event["out"], incoming)
            self.agent.clean(cell.cell_id)
        except Lost as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            self._drop()
            self._lost(done.state, str(exc), done.t0)
            return False
        log.debug("%s: cell %s: copied back in %.3f s", name, cell.cell_id,
                  time.monotonic() - t1)
        event = done.event
        summary, status, error = None, event.get("status"), event.get("error")
        if status == "done":
            try:
                summary = json.loads((incoming / "summary.json").read_text())
            except (OSError, ValueError) as exc:
                status, error = "failed", f"no readable summary.json came back: {exc}"
        shutil.rmtree(local, ignore_errors=True)
        os.replace(incoming, local)
        fan.events.put(Outcome("result", name, state=done.state, status=status, error=error,
                               wall_s=float(event.get("wall_s") or 0.0), summary=summary))
        return True


class FanOut:
    """Run cells on workers; results reach ``on_result`` in the calling thread, one by one."""

    def __init__(self, workers: list[Worker], topo_file: Path, backend: str, out_dir: Path, *,
                 cell_timeout_s: float | None = None, accept_new: bool = False,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.workers = workers
        self.topo_name = topo_file.name
        self.topo_text = topo_file.read_text()
        self.backend = backend
        self.out_dir = out_dir
        self.timeout = CellTimeout(cell_timeout_s)
        self.accept_new = accept_new
        self.max_attempts = max_attempts
        self.events: queue.Queue[Outcome] = queue.Queue()
        self.stop = threading.Event()
        self._locks = {w.name: threading.Lock() for w in workers}
        self.dispatcher: Dispatcher | None = None
        self.hellos: dict[str, dict] = {}
        self.counts: dict[str, collections.Counter] = {}   # per worker: done, failed, lost

    def connect_lock(self, name: str) -> threading.Lock:
        return self._locks[name]

    def payload(self, cell: Cell) -> dict:
        return cell_payload(cell, self.topo_name, self.topo_text, self.backend)

    def run(self, cells: list[Cell], on_result: Callable, progress=None,
            on_attempt: Callable | None = None) -> list[Cell]:
        """Run ``cells``; return those left unrun because no worker was left.

        ``on_result(cell, status, summary=, error=, wall_s=, worker=)`` records one cell;
        ``on_attempt(cell, worker, outcome, error, wall_s)`` notes every attempt (lost ones too).
        """
        from .remote_cell import identity
        local = identity()
        self.dispatcher = disp = Dispatcher(cells, [w.name for w in self.workers],
                                            self.max_attempts)
        running = {w.name: 0 for w in self.workers}
        self.counts = counts = {w.name: collections.Counter() for w in self.workers}
        for w in self.workers:
            if progress is not None:
                progress.add_worker(w.name, f"{w.slots} slot(s), connecting")
        slots = [Slot(w, i, self) for w in self.workers for i in range(w.slots)]
        for slot in slots:
            slot.start()

        def note(name: str) -> None:
            if progress is None:
                return
            c = counts[name]
            if name in disp.down:
                text = f"[red]down[/red]: {disp.down[name][:60]}"
            else:
                text = f"{running[name]} running"
            extra = "".join(f", {c[k]} {k}" for k in ("failed", "lost") if c[k])
            progress.worker(name, c["done"] + c["failed"], f"{text}{extra}")

        try:
            while True:
                try:
                    ev = self.events.get(timeout=0.2)
                except queue.Empty:
                    ev = None
                if ev is not None:
                    self._handle(ev, local, running, counts, on_result, on_attempt)
                    note(ev.worker)
                if disp.complete() and self.events.empty():
                    return []
                if not disp.up and not disp.running and self.events.empty():
                    left = [s.cell for s in disp.queue]
                    log.error("no worker left: %d cell(s) not run (%s); rerun to resume",
                              len(left), "; ".join(f"{w}: {r}" for w, r in disp.down.items()))
                    return left
        finally:
            self.stop.set()
            disp.stop()
            _join_all(slots, 1.0)
            for slot in slots:   # a slot still blocked in I/O: closing its transport ends it
                if slot.is_alive():
                    slot._drop()
            _join_all(slots, 5.0)

    def _handle(self, ev: Outcome, local: dict, running: dict, counts: dict,
                on_result: Callable, on_attempt: Callable | None) -> None:
        disp = self.dispatcher
        name = ev.worker
        if ev.kind == "hello":
            if name not in self.hellos:
                self.hellos[name] = ev.info or {}
                info = ev.info or {}
                if info.get("version") != local["version"] or info.get("commit") != local["commit"]:
                    log.warning("worker %s runs sendlab %s at %s; here it is %s at %s: its "
                                "results may differ", name, info.get("version"),
                                (info.get("commit") or "?")[:10], local["version"],
                                (local["commit"] or "?")[:10])
        elif ev.kind == "started":
            running[name] += 1
        elif ev.kind == "down":   # shown on the worker's progress line; summed up at the end
            log.info("worker %s is down: %s; its cells go to the others", name, ev.error)
        elif ev.kind == "unstarted":
            disp.unstarted(ev.state)
        elif ev.kind == "result":
            running[name] = max(0, running[name] - 1)
            counts[name][ev.status] += 1
            self.timeout.seen(ev.wall_s)
            if on_attempt:
                on_attempt(ev.state.cell, name, ev.status, ev.error, ev.wall_s)
            on_result(ev.state.cell, ev.status, summary=ev.summary, error=ev.error,
                      wall_s=ev.wall_s, worker=name)
            disp.finished(ev.state)
        elif ev.kind == "lost":
            running[name] = max(0, running[name] - 1)
            counts[name]["lost"] += 1
            log.info("worker %s lost cell %s: %s", name, ev.state.cell_id, ev.error)
            if on_attempt:
                on_attempt(ev.state.cell, name, "lost", ev.error, ev.wall_s)
            if not disp.lost(ev.state, name, ev.error):
                why = "; ".join(f"{w}: {r}" for w, r in ev.state.lost_on)
                on_result(ev.state.cell, "failed", summary=None,
                          error=f"lost {len(ev.state.lost_on)} times: {why}",
                          wall_s=ev.wall_s, worker=name)
                disp.finished(ev.state)


def _join_all(threads: list[threading.Thread], total_s: float) -> None:
    end = time.monotonic() + total_s
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()))


__all__ = ["connect", "Connection", "Agent", "KnownHosts", "HostKeyError", "RemoteError", "Lost",
           "remote_command", "remote_info", "Dispatcher", "CellTimeout", "FanOut", "fingerprint"]
