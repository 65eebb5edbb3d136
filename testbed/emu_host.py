"""The per-host agent of the emulated backend: one process in a host's network namespace.

It runs the flows of the topology that start or end at its host, with the same application
generators as the ``sim`` backend (``testbed.traffic.sender`` and ``receive``):

- ``stack: python``: sendlab's stack on the host's interface through AF_PACKET
  (``stack.runtime.afpacket``), static ARP entries for its neighbours, the host's sysctls on
  the stack's ``Sysctl``;
- ``stack: linux``: the kernel's TCP. :class:`KernelRuntime` drives the same generators over
  non-blocking kernel sockets, so the write pattern, socket options and flags (MSG_MORE,
  TCP_CORK, TCP_NODELAY...) are those of the python runs call for call. The host's sysctls are
  written to /proc/sys in this namespace; TCP_CONGESTION is set per socket (cubic unless the
  topology names another), as root may even where the namespace's allowed list lacks it, and
  the algorithm that actually ran is read back and recorded.

Protocol with the orchestrator (``testbed.emulate``), JSON lines on stdout and commands on
stdin: the agent prints ``{"event": "ready"}`` once its listeners are open; ``go T0`` (a
CLOCK_MONOTONIC time, shared by every process on the machine) starts the senders at T0, and
all times the agent records are seconds since T0; it prints ``{"event": "senders_done"}``
when each flow it sends has completed, stalled (``run.stall_timeout_s`` without new data
acknowledged, the sim's rule) or failed, and ``{"event": "receivers_done"}`` when each flow
it receives has seen its end; ``stop`` (or EOF) makes it write its results (JSON, the path in
the job) and exit. With ``"trace": true`` in the job, a python host attaches a
``stack.trace.Tracer`` and writes each flow it sends as ``trace_<flow>.jsonl`` in
``trace_dir``, with ``held_s_by_reason`` in the flow's result (kernel senders' timelines are
built from the capture by the orchestrator).

    python -m testbed.emu_host JOB.json
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import resource
import select
import socket
import struct
import sys
import time
import traceback

from stack.constants import SOL_TCP, TCP_CONGESTION
from stack.runtime.apps import Process, Sleep, advance

from .traffic import FlowRecord, FlowSpec, SocketOptions, _apply_options, receive, sender

log = logging.getLogger(__name__)

CHUNK_S = 0.02              # how often the agent looks at its control pipe and the stall rule
TCP_INFO_POLL_S = 0.0005    # kernel senders: how often bytes_acked is sampled (the ACK curve)

__all__ = ["KernelRuntime", "KSocket", "kernel_tcp_info", "read_nstat", "run_agent", "main"]


# --- struct tcp_info (include/uapi/linux/tcp.h) ------------------------------------------------

_TCP_INFO_LEN = 256
_TI_U32 = {"rto": 8, "snd_mss": 16, "rcv_mss": 20, "unacked": 24, "lost": 32, "retrans": 36,
           "pmtu": 56, "rtt": 64, "rttvar": 68, "snd_ssthresh": 72, "snd_cwnd": 76,
           "advmss": 80, "total_retrans": 100, "segs_out": 136, "segs_in": 140,
           "data_segs_out": 156, "delivered": 192}
_TI_U64 = {"bytes_acked": 120, "bytes_received": 128, "bytes_sent": 200, "bytes_retrans": 208}


def kernel_tcp_info(sock: socket.socket) -> dict:
    """The fields of the kernel's TCP_INFO that the summary uses (tcpi_ names without tcpi_)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    out = {"state": raw[0], "ca_state": raw[1]}
    for name, off in _TI_U32.items():
        if off + 4 <= len(raw):
            out[name] = struct.unpack_from("<I", raw, off)[0]
    for name, off in _TI_U64.items():
        if off + 8 <= len(raw):
            out[name] = struct.unpack_from("<Q", raw, off)[0]
    return out


def read_nstat() -> dict[str, int]:
    """This namespace's SNMP counters under nstat's names (/proc/net/snmp, /proc/net/netstat)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, names = head.split(":", 1)
            _, values = vals.split(":", 1)
            for name, value in zip(names.split(), values.split()):
                try:
                    out[prefix + name] = int(value)
                except ValueError:
                    pass
    return out


# --- the kernel runtime --------------------------------------------------------------------------

class KOp:
    """A socket call on a kernel socket in progress (the shape of ``stack.socket.Op``)."""

    __slots__ = ("sock", "done", "result", "error", "wait")

    def __init__(self, sock: "KSocket") -> None:
        self.sock = sock
        self.done = False
        self.result = None
        self.error = 0
        self.wait = None            # "r" or "w": what the call waits for on the socket

    def step(self, now: float) -> bool:
        raise NotImplementedError

    def _finish(self, value) -> bool:
        self.done, self.result, self.wait = True, value, None
        return True

    def _fail(self, err: int) -> bool:
        self.done, self.error, self.wait = True, err or errno.EIO, None
        return True

    def raise_error(self) -> None:
        if self.error:
            raise OSError(self.error, os.strerror(self.error))


class _Immediate(KOp):
    __slots__ = ("fn",)

    def __init__(self, sock, fn) -> None:
        super().__init__(sock)
        self.fn = fn

    def step(self, now: float) -> bool:
        try:
            return self._finish(self.fn())
        except OSError as exc:
            return self._fail(exc.errno)


class _Send(KOp):
    """Blocking send semantics: done when every byte is in the socket's send queue."""

    __slots__ = ("data", "flags", "sent")

    def __init__(self, sock, data, flags: int) -> None:
        super().__init__(sock)
        self.data = memoryview(bytes(data))
        self.flags = flags
        self.sent = 0

    def step(self, now: float) -> bool:
        s = self.sock.s
        while self.sent < len(self.data):
            try:
                self.sent += s.send(self.data[self.sent:], self.flags)
            except BlockingIOError:
                self.wait = "w"
                return False
            except OSError as exc:
                if self.sent:
                    return self._finish(self.sent)
                return self._fail(exc.errno)
        return self._finish(self.sent)


class _Recv(KOp):
    __slots__ = ("size", "flags")

    def __init__(self, sock, size: int, flags: int) -> None:
        super().__init__(sock)
        self.size = size
        self.flags = flags

    def step(self, now: float) -> bool:
        try:
            return self._finish(self.sock.s.recv(self.size, self.flags))
        except BlockingIOError:
            self.wait = "r"
            return False
        except OSError as exc:
            return self._fail(exc.errno)


class _Connect(KOp):
    __slots__ = ("addr", "started")

    def __init__(self, sock, addr) -> None:
        super().__init__(sock)
        self.addr = addr
        self.started = False

    def step(self, now: float) -> bool:
        s = self.sock.s
        if not self.started:
            self.started = True
            err = s.connect_ex(self.addr)
            if err in (errno.EINPROGRESS, errno.EALREADY):
                self.wait = "w"
                return False
            return self._fail(err) if err else self._connected()
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return self._fail(err) if err else self._connected()

    def _connected(self) -> bool:
        self.sock._learn_names()
        return self._finish(0)


class _Accept(KOp):
    def step(self, now: float) -> bool:
        try:
            conn, _ = self.sock.s.accept()
        except BlockingIOError:
            self.wait = "r"
            return False
        except OSError as exc:
            return self._fail(exc.errno)
        child = KSocket(self.sock.rt, conn)
        child._learn_names()
        return self._finish(child)


class _TpView:
    """What the apps and the agent read off ``sock.tp`` (the python stack's TcpSock)."""

    def __init__(self, ks: "KSocket") -> None:
        self._ks = ks
        self.saddr = self.daddr = ""
        self.sport = self.dport = 0

    @property
    def mss_cache(self) -> int:
        return self._ks.info().get("snd_mss", 0)


class KSocket:
    """A non-blocking kernel TCP socket with the python stack's Socket API (calls return ops)."""

    def __init__(self, rt: "KernelRuntime", sock: socket.socket | None = None) -> None:
        self.rt = rt
        self.s = sock if sock is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.setblocking(False)
        self.tp = _TpView(self)
        self.final_info: dict | None = None
        self.final_congestion: str | None = None
        self.congestion_error: str | None = None
        rt.sockets.append(self)

    def _learn_names(self) -> None:
        with _suppress_oserror():
            self.tp.saddr, self.tp.sport = self.s.getsockname()[:2]
        with _suppress_oserror():
            self.tp.daddr, self.tp.dport = self.s.getpeername()[:2]

    # calls that may wait
    def send(self, data, flags: int = 0) -> KOp:
        return _Send(self, data, flags)

    def sendmsg(self, buffers, flags: int = 0) -> KOp:
        return _Send(self, b"".join(bytes(b) for b in buffers), flags)

    def recv(self, size: int, flags: int = 0) -> KOp:
        return _Recv(self, size, flags)

    def connect(self, addr) -> KOp:
        return _Connect(self, tuple(addr))

    def accept(self) -> KOp:
        return _Accept(self)

    # calls that never wait
    def bind(self, addr) -> KOp:
        def do():
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.s.bind(tuple(addr))
            return 0
        return _Immediate(self, do)

    def listen(self, backlog: int = 128) -> KOp:
        return _Immediate(self, lambda: self.s.listen(backlog) or 0)

    def setsockopt(self, level: int, optname: int, value) -> KOp:
        def do():
            if level == SOL_TCP and optname == TCP_CONGESTION:
                # Where allowed: root may pick any available algorithm per socket. A refusal
                # is recorded, not fatal; the algorithm that ran is read back at the end.
                name = value.encode() if isinstance(value, str) else bytes(value)
                try:
                    self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name)
                except OSError as exc:
                    self.congestion_error = f"{name.decode()}: {exc.strerror}"
                return 0
            self.s.setsockopt(level, optname, value)
            return 0
        return _Immediate(self, do)

    def getsockopt(self, level: int, optname: int) -> KOp:
        return _Immediate(self, lambda: self.s.getsockopt(level, optname))

    def shutdown(self, how: int) -> KOp:
        return _Immediate(self, lambda: self.s.shutdown(how) or 0)

    def close(self) -> KOp:
        def do():
            self.snapshot()
            self.s.close()
            return 0
        return _Immediate(self, do)

    # observation
    def congestion(self) -> str | None:
        if self.s.fileno() < 0:
            return self.final_congestion
        try:
            raw = self.s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        except OSError:
            return self.final_congestion
        return raw.split(b"\0", 1)[0].decode()

    def info(self) -> dict:
        if self.s.fileno() < 0:
            return self.final_info or {}
        try:
            return kernel_tcp_info(self.s)
        except OSError:
            return self.final_info or {}

    def snapshot(self) -> None:
        """Keep tcp_info and the algorithm for after close (the summary reads them at the end)."""
        if self.s.fileno() >= 0:
            self.final_info = self.info()
            self.final_congestion = self.congestion()


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, OSError)


class KernelRuntime:
    """Drives the traffic generators over kernel sockets: ``net.socket``, ``net.spawn``,
    ``net.now`` as ``stack.runtime.VirtualNetwork`` offers them; time is seconds since ``t0``
    (CLOCK_MONOTONIC)."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.procs: list[Process] = []
        self.sockets: list[KSocket] = []
        self._pid = 0
        self.on_tick = None           # fn(now), called after every wake-up of the loop
        self.tick_s = None            # wake at least this often while anything runs

    @property
    def now(self) -> float:
        return time.monotonic() - self.t0

    def socket(self, host=None) -> KSocket:
        return KSocket(self)

    def spawn(self, host, gen, name: str = "") -> Process:
        self._pid += 1
        proc = Process(self._pid, gen, name)
        self.procs.append(proc)
        self._advance(proc, None, None, self.now)
        return proc

    def _advance(self, proc: Process, value, failed, now: float) -> None:
        try:
            waiting = advance(proc, value, failed, now)
        except Exception:  # an application failed: record it, keep the others
            log.error("%s failed: %s", proc.name, traceback.format_exc())
        if proc.done:
            proc.op = None
            self.procs.remove(proc)
        elif isinstance(waiting, Sleep):
            proc.wake_at = now + max(waiting.seconds, 0.0)

    def run(self, until: float) -> float:
        """Run the applications until ``until`` (seconds since t0)."""
        while True:
            now = self.now
            if now >= until:
                return now
            rl, wl, wake = [], [], until
            for p in self.procs:
                if p.op is not None:
                    (rl if p.op.wait == "r" else wl).append(p.op.sock.s)
                if p.wake_at is not None and p.wake_at < wake:
                    wake = p.wake_at
            if self.tick_s is not None and self.procs:
                wake = min(wake, now + self.tick_s)
            timeout = max(0.0, wake - now)
            try:
                readable, writable, _ = select.select(rl, wl, [], timeout)
            except OSError:       # a socket closed under us: step everything once
                readable, writable = rl, wl
            ready = {id(s) for s in readable} | {id(s) for s in writable}
            now = self.now
            for p in list(self.procs):
                if p.op is not None and id(p.op.sock.s) in ready:
                    op = p.op
                    if op.step(now):
                        p.op = None
                        self._advance(p, None if op.error else op.result,
                                      op if op.error else None, now)
                elif p.wake_at is not None and p.wake_at <= now:
                    p.wake_at = None
                    self._advance(p, None, None, now)
            if self.on_tick is not None:
                self.on_tick(now)


# --- the agent ------------------------------------------------------------------------------

class _PyNet:
    """The AF_PACKET runtime with the ``net`` interface the traffic apps use."""

    def __init__(self, rt) -> None:
        self.rt = rt

    @property
    def now(self) -> float:
        return self.rt.now

    def socket(self, host=None):
        return self.rt.socket()

    def spawn(self, host, gen, name: str = ""):
        return self.rt.spawn(gen, name)


def _serve_flow(net, host, port: int, rec: FlowRecord, peer: SocketOptions, state: dict):
    """The receiving side of one flow: listen on its port (unique on this host), accept one
    connection, apply the flow's ``peer_socket`` options, then ``traffic.receive``."""
    lsock = net.socket(host)
    if peer.congestion:             # on the listener, so the connection starts with it
        yield from _apply_options(lsock, SocketOptions(congestion=peer.congestion))
    yield lsock.bind(("", port))
    yield lsock.listen(16)
    conn = yield lsock.accept()
    state["conn"] = conn
    yield from _apply_options(conn, dataclasses.replace(peer, congestion=None))
    yield from receive(net, conn, rec)


def _spec_from(d: dict) -> FlowSpec:
    d = dict(d)
    d["options"] = SocketOptions(**d.get("options", {}))
    return FlowSpec(**d)


def _apply_kernel_sysctls(sysctls: dict) -> tuple[dict, dict]:
    """Write the host's sysctls to this namespace's /proc/sys; (applied, failed with why)."""
    applied, failed = {}, {}
    for key, value in sysctls.items():
        text = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(text)
            applied[key] = text
        except FileNotFoundError:
            failed[key] = "no such sysctl in this kernel (namespace)"
        except OSError as exc:
            failed[key] = exc.strerror or str(exc)
    return applied, failed


class _Control:
    """Commands from the orchestrator on a file descriptor, one per line."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = fd is None

    def poll(self, timeout: float = 0.0) -> list[str]:
        if self.fd is None or self.eof:
            return []
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return []
        data = os.read(self.fd, 4096)
        if not data:
            self.eof = True
            return ["stop"]
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode().strip() for ln in lines if ln.strip()]


class _Sender:
    """One flow this host sends: its record and the progress the stall rule watches."""

    def __init__(self, rec: FlowRecord) -> None:
        self.rec = rec
        self.last_acked = 0
        self.last_progress = rec.spec.start_s
        self.stalled_at = None
        self.done_at = None
        self.proc = None

    def acked(self) -> int:
        sock = self.rec.sock
        if sock is None:
            return 0
        if isinstance(sock, KSocket):
            got = sock.info().get("bytes_acked", 0)
            return max(0, min(got - 1, self.rec.spec.bytes_requested))   # -1: the SYN
        tp = sock.tp
        return min((tp.snd_una - tp.iss - 1) & 0xFFFFFFFF, self.rec.spec.bytes_requested)

    def note(self, now: float) -> None:
        acked = self.acked()
        if acked > self.last_acked:
            self.last_acked = acked
            self.last_progress = now
            self.rec.acks.append((now, acked))

    def done(self) -> bool:
        rec = self.rec
        return rec.error is not None or self.stalled_at is not None or (
            rec.finished_at is not None if rec.spec.kind == "request_response"
            else self.last_acked >= rec.spec.bytes_requested)


def run_agent(job: dict, *, control_fd: int | None = 0, announce=None) -> dict:
    """Run one host's flows as the job says; returns (and writes) the results."""
    say = announce or (lambda msg: None)
    stack_kind = job["stack"]
    senders = [_Sender(FlowRecord(_spec_from(f))) for f in job.get("send", [])]
    receivers = [(FlowRecord(_spec_from(f["spec"])), SocketOptions(**f.get("peer_options", {})))
                 for f in job.get("receive", [])]
    result: dict = {"host": job["host"], "stack": stack_kind}
    control = _Control(control_fd)

    rt = host = tracer = None
    if stack_kind == "python":
        from stack.arp import REACHABLE, ArpParams, Neighbour
        from stack.runtime.afpacket import AfPacketRuntime
        from stack.sysctl import Sysctl
        sysctl = Sysctl()
        for key, value in job.get("sysctls", {}).items():
            sysctl.set(key, value)
        result["sysctls_applied"] = {k: str(v) for k, v in job.get("sysctls", {}).items()}
        result["sysctls_failed"] = {}
        if job.get("trace"):
            from stack.trace import Tracer
            tracer = Tracer()
        # Static neighbours that never go stale: no ARP frame shifts the links' loss indices.
        rt = AfPacketRuntime.for_interface(
            job["ifname"], job["addr"], vnet_hdr=bool(job.get("vnet_hdr", True)), sysctl=sysctl,
            seed=int(job.get("seed", 0)), name=job["host"], prefix_len=int(job["prefixlen"]),
            gateway=job.get("gateway"), arp_params=ArpParams(reachable_time_s=1e12),
            tracer=tracer)
        for ip, mac in job.get("neighbours", {}).items():
            rt.arp.neighbours[ip] = Neighbour(ip, REACHABLE, confirmed=0.0,
                                              mac=bytes.fromhex(mac.replace(":", "")))
        host = rt.host
        net = _PyNet(rt)
        nstat0 = None
    else:
        applied, failed = _apply_kernel_sysctls(job.get("sysctls", {}))
        result["sysctls_applied"], result["sysctls_failed"] = applied, failed
        rt = KernelRuntime()
        net = rt
        nstat0 = read_nstat()

    states = []
    procs = []
    for rec, peer in receivers:
        state: dict = {}
        states.append(state)
        procs.append(net.spawn(host, _serve_flow(net, host, rec.spec.port, rec, peer, state),
                               f"receive {rec.spec.name}"))
    say({"event": "ready"})

    # Wait for "go T0"; the python stack keeps its interface served meanwhile.
    t0 = None
    stop = False
    while t0 is None and not stop:
        for cmd in control.poll(0.0):
            if cmd.startswith("go"):
                t0 = float(cmd.split()[1])
            elif cmd == "stop":
                stop = True
        if t0 is None and not stop:
            rt.run(until=rt.now + CHUNK_S)
    if t0 is not None:
        while time.monotonic() < t0:
            if stack_kind == "python":
                rt.run(until=rt.now + min(CHUNK_S, max(0.0, t0 - time.monotonic())))
            else:
                time.sleep(max(0.0, min(CHUNK_S, t0 - time.monotonic())))
        rt.t0 = t0            # from here on, every recorded time is seconds since T0
        if tracer is not None:
            tracer.last_t = 0.0   # the trace's clock restarts at T0 too

    duration_s = float(job["duration_s"])
    stall_s = float(job["stall_timeout_s"])
    if stack_kind == "python":
        by_tp = {}

        def after_input(tp, now: float) -> None:   # testbed.run's ACK watcher, per socket
            s = by_tp.get(id(tp))
            if s is None:
                for snd in senders:
                    sock = snd.rec.sock
                    if sock is not None and sock.tp is tp:
                        by_tp[id(tp)] = s = snd
                        break
                else:
                    return
            s.note(now)

        host.after_input = after_input
    else:
        def on_tick(now: float) -> None:   # the kernel's ACK curve, sampled from TCP_INFO
            active = False
            for s in senders:
                if s.done_at is None:
                    active = True
                    if s.rec.sock is not None:
                        s.note(now)
            if not active:
                rt.tick_s = None
        rt.on_tick = on_tick
        rt.tick_s = TCP_INFO_POLL_S if senders else None

    if not stop:
        for s in senders:
            s.proc = net.spawn(host, sender(net, host, s.rec), f"send {s.rec.spec.name}")
    senders_reported = not senders
    receivers_reported = not receivers
    if senders_reported:
        say({"event": "senders_done"})
    if receivers_reported:
        say({"event": "receivers_done"})
    while not stop:
        now = rt.run(until=rt.now + CHUNK_S)
        for cmd in control.poll(0.0):
            if cmd == "stop":
                stop = True
        for s in senders:
            if s.done_at is not None:
                continue
            s.note(now)
            rec = s.rec
            if rec.connected_at is not None and s.last_progress < rec.connected_at:
                s.last_progress = rec.connected_at
            if rec.error is None and s.proc is not None and s.proc.done and s.proc.error:
                rec.error = f"{type(s.proc.error).__name__}: {s.proc.error}"
            if not s.done() and now - s.last_progress >= stall_s and now >= rec.spec.start_s:
                s.stalled_at = s.last_progress
            if s.done():
                s.done_at = now
        if not senders_reported and all(s.done_at is not None for s in senders):
            senders_reported = True
            say({"event": "senders_done", "t": round(now, 6)})
        if not receivers_reported and all(p.done for p in procs):
            receivers_reported = True
            say({"event": "receivers_done", "t": round(now, 6)})
        if now >= duration_s + 5.0:    # the orchestrator stops us long before this
            break
    end = rt.now if t0 is not None else 0.0

    # --- results ---
    flows = []
    for s in senders:
        flows.append(_sender_result(s, stack_kind, host))
        if tracer is not None:
            flows[-1]["held_s_by_reason"] = _write_trace(tracer, s.rec, job["trace_dir"], end)
    for (rec, _), state, proc in zip(receivers, states, procs):
        err = rec.error
        if err is None and proc.done and proc.error is not None:
            err = f"{type(proc.error).__name__}: {proc.error}"
        conn = state.get("conn")
        flows.append({"name": rec.spec.name, "role": "receiver", "received": rec.received,
                      "intact": rec.intact, "finished_at": rec.finished_at, "error": err,
                      "eof": proc.done,
                      "congestion": _congestion_of(conn)})
    result["flows"] = flows
    result["end_s"] = round(end, 6)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 3)
    if stack_kind == "python":
        result["counters"] = {k: v for k, v in sorted(host.mib.snapshot().items()) if v}
        result["runtime"] = dict(rt.stats, **rt.kernel_stats())
        rt.close()
    else:
        now_stat = read_nstat()
        result["counters"] = {k: now_stat[k] - nstat0.get(k, 0) for k in sorted(now_stat)
                              if now_stat[k] - nstat0.get(k, 0) and not k.startswith("IcmpMsg")}
        for ks in rt.sockets:
            with _suppress_oserror():
                ks.s.close()
    for f in flows:
        if f["role"] == "sender":
            f["counters"] = result["counters"]
            f["icmp_frag_needed_received"] = result["counters"].get("IcmpInDestUnreachs", 0)
    if job.get("result"):
        tmp = job["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        os.replace(tmp, job["result"])
    return result


def _write_trace(tracer, rec: FlowRecord, trace_dir: str, end: float) -> dict:
    """A python sender's decision trace as ``trace_<flow>.jsonl`` in the run's directory (as
    ``testbed.run`` writes the sim's); returns its ``held_s_by_reason``."""
    from stack.trace import held_s_by_reason, write_jsonl
    sock = rec.sock if rec.sock is not None else rec.sock_pending
    events = tracer.for_sock(sock.tp) if sock is not None else []
    write_jsonl(os.path.join(trace_dir, f"trace_{rec.spec.name}.jsonl"), events)
    return held_s_by_reason(events, end)


def _congestion_of(sock) -> str | None:
    if sock is None:
        return None
    if isinstance(sock, KSocket):
        return sock.congestion()
    ops = getattr(sock.tp, "ca_ops", None)
    return getattr(ops, "name", None)


def _sender_result(s: _Sender, stack_kind: str, host) -> dict:
    rec = s.rec
    sock = rec.sock if rec.sock is not None else rec.sock_pending
    out = {"name": rec.spec.name, "role": "sender", "connected_at": rec.connected_at,
           "writes": rec.writes, "acks": rec.acks, "responses": rec.responses,
           "finished_at": rec.finished_at, "error": rec.error, "mss_initial": rec.mss_initial,
           "last_acked": s.last_acked, "last_progress": round(s.last_progress, 6),
           "stalled_at": s.stalled_at, "done_at": s.done_at, "sport": None,
           "congestion": _congestion_of(sock), "congestion_error": None}
    if sock is None:
        out.update(mss_final=0, retransmits=0)
        return out
    if isinstance(sock, KSocket):
        info = sock.info()
        out.update(mss_final=info.get("snd_mss", 0), retransmits=info.get("total_retrans", 0),
                   sport=sock.tp.sport or None, congestion_error=sock.congestion_error,
                   tcp_info=info)
    else:
        tp = sock.tp
        out.update(mss_final=tp.mss_cache, retransmits=tp.total_retrans, sport=tp.sport or None)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m testbed.emu_host JOB.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="emu_host: %(levelname)s %(message)s")
    with open(args[0]) as f:
        job = json.load(f)

    def announce(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    run_agent(job, control_fd=0, announce=announce)
    announce({"event": "exit"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
