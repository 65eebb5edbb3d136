"""The worker side of one topology split across machines: ``remote_cell --part WORK_DIR``.

The coordinator (:mod:`testbed.split_run`) starts this over SSH, one per worker that builds a
part, and drives it with JSON lines on stdin; it answers with JSON lines on stdout:

- ``{"op": "underlay", "peers": {WORKER: ADDRESS}}``: how this machine reaches each peer
  (``ip route get``): ``{"event": "underlay", "routes": {WORKER: {"address", "dev", "mtu"}}}``.
- ``{"op": "build", "topology": {"name", "text", "overrides"}, "part": PART, "seed": N,
  "trace": BOOL}``: build this worker's nodes, local links and VXLAN tunnel ends with the
  emulated backend (``testbed.emulate.EmulatedNetwork`` with ``part``): ``{"event": "built",
  "prefix", "mechanism", "timings"}``.
- ``{"op": "start"}``: start the hosts' agents: ``{"event": "ready", "hosts": [...]}``.
- ``{"op": "go", "in_s": S}``: flows start S seconds from now on this machine's clock:
  ``{"event": "going", "t0_wall"}``, then ``{"event": "host", "host", "what"}`` for each
  ``senders_done``/``receivers_done`` an agent reports.
- ``{"op": "stop"}``: stop the agents and captures; ``DIR/part.json`` holds the agents'
  results, the links' counters and the routers' status, beside the pcaps, logs and traces:
  ``{"event": "stopped", "out": DIR}``.
- ``{"op": "close"}``, or stdin closing (the coordinator was interrupted, killed, or lost its
  connection): tear down everything the part made, answer ``{"event": "closed", "errors"}``
  and exit. SIGTERM does the same.

A failure answers ``{"event": "error", "message"}``; what was built stays until the close.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .emulate import EmulatedNetwork, EmulationError, EmuOptions
from .netns import run_here
from .remote_cell import PROTOCOL, _describe, identity, parse_request
from .topology import load_topology

log = logging.getLogger(__name__)

_TOPO_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
IDLE_S = 3600.0          # a part that hears nothing for this long tears down and exits


class _Closed(BaseException):
    """stdin closed, or SIGTERM: tear down and leave."""


class PartAgent:
    def __init__(self, work_dir: str, out=None) -> None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="part-", dir=work_dir))
        self.out = out or sys.stdout
        self.buf = b""
        self.net = None
        self.going = False

    def send(self, event: dict) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    # --- the loop --------------------------------------------------------------------------

    def serve(self, fd: int = 0) -> int:
        self.fd = fd
        self.send({"event": "hello", "protocol": PROTOCOL, "role": "part", "pid": os.getpid(),
                   "dir": str(self.dir), **identity()})
        errors: list[str] = []
        try:
            while True:
                line = self._next_request()
                if line is None:
                    break
                if not self.handle(line):
                    break
        except _Closed:
            pass
        finally:
            errors = self._teardown()
            try:
                self.send({"event": "closed", "errors": errors})
            except (OSError, ValueError):
                pass   # nobody is listening any more
            shutil.rmtree(self.dir, ignore_errors=True)
        return 1 if errors else 0

    def _next_request(self) -> str | None:
        """The next line on stdin; meanwhile, forward what the agents say (once going)."""
        last = time.monotonic()
        while b"\n" not in self.buf:
            fds = [self.fd]
            watching = self.going and self.net is not None and self.net.agents
            if watching:
                live = [a for a in self.net.agents.values() if not a.closed]
                fds += live
            ready, _, _ = select.select(fds, [], [], 0.5)
            if self.fd in ready:
                data = os.read(self.fd, 65536)
                if not data:
                    raise _Closed()
                self.buf += data
                last = time.monotonic()
            elif watching and ready:
                self._forward(0.0)
            if time.monotonic() - last > IDLE_S:
                log.warning("no request for %s s; tearing down", IDLE_S)
                raise _Closed()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def _forward(self, timeout_s: float) -> None:
        try:
            for host, ev in self.net.poll_agents(timeout_s):
                if ev.get("event") in ("senders_done", "receivers_done"):
                    self.send({"event": "host", "host": host, "what": ev["event"]})
        except EmulationError as exc:
            self.going = False
            self.send({"event": "error", "message": str(exc)})

    def handle(self, line: str) -> bool:
        """One request; False after a close."""
        req = parse_request(line, self.send)
        if req is None:
            return True
        op = req["op"]
        if op == "close":
            return False
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            self.send({"event": "error", "message": f"unknown op {op!r}"})
            return True
        try:
            self.send(handler(req))
        except (EmulationError, OSError, ValueError, KeyError, TypeError) as exc:
            self.send({"event": "error", "op": op, "message": f"{type(exc).__name__}: {exc}"
                       if not isinstance(exc, EmulationError) else str(exc)})
        except Exception as exc:  # anything else: said, with where, and the part stays up
            self.send({"event": "error", "op": op, "message": _describe(exc)})
        return True

    # --- the operations ----------------------------------------------------------------------

    def op_underlay(self, req: dict) -> dict:
        return {"event": "underlay",
                "routes": {str(w): underlay_to(str(a)) for w, a in dict(req["peers"]).items()}}

    def op_build(self, req: dict) -> dict:
        if self.net is not None:
            raise ValueError("this part is built already")
        t = req["topology"]
        name = str(t["name"])
        if not _TOPO_NAME.match(name):
            raise ValueError(f"bad topology name {name!r}")
        path = self.dir / "topology" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(str(t["text"]))
        topo = load_topology(path, [str(o) for o in t.get("overrides", [])])
        part = dict(req["part"])
        shaping = str(req.get("shaping", "auto"))
        if shaping not in ("auto", "shaper", "netem"):
            raise ValueError(f"bad shaping {shaping!r}")
        self.net = EmulatedNetwork(topo, self.dir / "out", seed=int(req["seed"]),
                                   options=EmuOptions(shaping=shaping),
                                   trace=bool(req.get("trace")), part=part)
        self.net.build()
        return {"event": "built", "prefix": self.net.run_prefix,
                "mechanism": self.net.mechanism, "timings": self.net.timings}

    def op_start(self, req: dict) -> dict:
        self._need_net()
        self.net.start_agents()
        return {"event": "ready", "hosts": sorted(self.net.agents)}

    def op_go(self, req: dict) -> dict:
        self._need_net()
        self.net.go(time.monotonic() + float(req.get("in_s", 0.2)))
        self.going = True
        return {"event": "going", "t0_wall": self.net.t0_wall}

    def op_stop(self, req: dict) -> dict:
        self._need_net()
        self.going = False
        net = self.net
        if net.t0 is not None:
            net.timings["traffic_s"] = round(time.monotonic() - net.t0, 3)
        net.stop_agents()
        out = net.out
        doc = {"prefix": net.run_prefix, "mechanism": net.mechanism, "timings": net.timings,
               "t0_wall": net.t0_wall, "agent_results": net.agent_results,
               "router_status": net.router_status,
               "links": [{"index": lb.index, "local": lb.local, "shaping": lb.shaping,
                          "stats": lb.stats, "pcap": os.path.relpath(lb.pcap, out)}
                         for lb in net.links]}
        (out / "part.json").write_text(json.dumps(doc))
        return {"event": "stopped", "out": str(out)}

    def _need_net(self) -> None:
        if self.net is None:
            raise ValueError("build the part first")

    def _teardown(self) -> list[str]:
        if self.net is None:
            return []
        try:
            self.net.close()
        except EmulationError as exc:
            return [str(exc)]
        except KeyboardInterrupt:   # SIGTERM arrived during the teardown, which still finished
            pass
        return []


def underlay_to(address: str) -> dict:
    """How this machine reaches ``address``: the source address, device and its MTU."""
    res = run_here(["ip", "-j", "route", "get", address], check=False)
    if res.returncode != 0:
        raise ValueError(f"no route to {address} here: {res.stderr.strip()}")
    route = json.loads(res.stdout)[0]
    dev, src = route.get("dev"), route.get("prefsrc")
    if not dev or not src:
        raise ValueError(f"`ip route get {address}` names no device and source: {res.stdout}")
    link = json.loads(run_here(["ip", "-j", "link", "show", "dev", dev]).stdout)[0]
    return {"address": src, "dev": dev, "mtu": int(link["mtu"])}


def serve(work_dir: str) -> int:
    def on_sigterm(signum, frame):
        raise _Closed()
    signal.signal(signal.SIGTERM, on_sigterm)
    return PartAgent(work_dir).serve()
