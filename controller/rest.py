"""A small HTTP/JSON endpoint for the running controller: read counters, set ICMP policy.

Standard library only (``http.server``), one request at a time, on TCP or on a Unix socket
(a Unix socket is reachable from every network namespace, and no TCP port is taken):

    GET  /routers                        every router: dpid, connected, icmp_policy, counters
    GET  /routers/NAME                   one router
    GET  /routers/NAME/counters          its counters only
    PUT  /routers/NAME/icmp_policy       body {"policy": "send" | "suppress" | "ratelimit"}
                                         (POST is accepted too); answers with the router

Errors answer {"error": "..."} with 400 (bad request or policy) or 404 (no such router).
Addresses are written ``tcp:HOST:PORT`` or ``unix:PATH``; :func:`request` is the matching
client, used by the tests and usable from a shell:

    python -m controller.rest unix:/tmp/x/rest.sock GET /routers
    python -m controller.rest unix:/tmp/x/rest.sock PUT /routers/r1/icmp_policy '{"policy":"suppress"}'
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable, Protocol

log = logging.getLogger("sendlab.controller.rest")

MAX_BODY = 64 * 1024


class RouterApi(Protocol):
    """What the endpoint needs from the controller (the app implements it, thread-safely)."""

    def router_names(self) -> list[str]: ...

    def router_status(self, name: str) -> dict: ...       # KeyError: no such router

    def set_icmp_policy(self, name: str, policy: str) -> dict: ...  # ValueError: bad policy


@dataclass(frozen=True)
class Address:
    kind: str        # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``tcp:HOST:PORT`` (port 0 = any free port) or ``unix:PATH``."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return Address("unix", path=rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and int(port) <= 0xFFFF:
            return Address("tcp", host=host.strip("[]"), port=int(port))
    raise ValueError(f"REST address {text!r}: expected tcp:HOST:PORT or unix:PATH")


class _Handler(BaseHTTPRequestHandler):
    server_version = "sendlab-controller"
    api: RouterApi  # set on the subclass made by make_server

    def address_string(self) -> str:  # a Unix peer has no (host, port)
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, fmt, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _parts(self) -> list[str]:
        return [p for p in self.path.split("?", 1)[0].split("/") if p]

    def do_GET(self) -> None:
        parts = self._parts()
        try:
            if parts == ["routers"]:
                return self._reply(200, {n: self.api.router_status(n)
                                         for n in self.api.router_names()})
            if len(parts) == 2 and parts[0] == "routers":
                return self._reply(200, self.api.router_status(parts[1]))
            if len(parts) == 3 and parts[0] == "routers" and parts[2] == "counters":
                return self._reply(200, self.api.router_status(parts[1])["counters"])
        except KeyError:
            return self._reply(404, {"error": f"no router named {parts[1]!r}"})
        self._reply(404, {"error": f"no resource {self.path}"})

    def do_PUT(self) -> None:
        parts = self._parts()
        if not (len(parts) == 3 and parts[0] == "routers" and parts[2] == "icmp_policy"):
            return self._reply(404, {"error": f"no resource {self.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._reply(400, {"error": f"body longer than {MAX_BODY} bytes"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            policy = body["policy"] if isinstance(body, dict) else None
            if not isinstance(policy, str):
                raise ValueError('expected a JSON object {"policy": "send|suppress|ratelimit"}')
            self._reply(200, self.api.set_icmp_policy(parts[1], policy))
        except KeyError:
            if parts[1] in self.api.router_names():
                self._reply(400, {"error": 'body lacks "policy"'})
            else:
                self._reply(404, {"error": f"no router named {parts[1]!r}"})
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self._reply(400, {"error": str(exc)})

    do_POST = do_PUT


class _UnixHTTPServer(socketserver.UnixStreamServer):
    allow_reuse_address = False

    def server_bind(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(self.server_address) and not _socket_in_use(self.server_address):
                os.unlink(self.server_address)  # a stale socket of a dead run
        super().server_bind()
        self.server_name, self.server_port = "localhost", 0


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


class RestServer:
    """The endpoint, serving in a thread (or a green thread, with ``spawn``) until close()."""

    def __init__(self, api: RouterApi, address: str | Address) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        handler = type("Handler", (_Handler,), {"api": api})
        if self.address.kind == "unix":
            self.httpd = _UnixHTTPServer(self.address.path, handler)
        else:
            self.httpd = HTTPServer((self.address.host, self.address.port), handler)
            host, port = self.httpd.server_address[:2]
            self.address = Address("tcp", host=host, port=port)  # the real port if 0 was asked
        self.httpd.timeout = 0.5
        self._thread = None
        self._green = False

    def start(self, spawn: Callable | None = None) -> "RestServer":
        """Serve; ``spawn(fn)`` (e.g. an eventlet hub's) instead of a daemon thread if given."""
        if spawn is not None:
            self._green = True
            self._thread = spawn(self.httpd.serve_forever)
        else:
            self._thread = threading.Thread(target=self.httpd.serve_forever,
                                            name="sendlab-rest", daemon=True)
            self._thread.start()
        log.info("REST endpoint on %s", self.address)
        return self

    def close(self) -> None:
        # shutdown() waits for serve_forever to finish. A green thread cannot run while this
        # OS thread blocks on that wait (ryu's eventlet hub): there, only close the socket.
        if self._thread is not None and not self._green:
            self.httpd.shutdown()
        self._thread = None
        self.httpd.server_close()
        if self.address.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class RestError(RuntimeError):
    def __init__(self, status: int, body) -> None:
        msg = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {msg}")
        self.status = status
        self.body = body


def request(address: str | Address, method: str, path: str, body=None,
            timeout: float = 5.0):
    """One request to the endpoint; returns the decoded JSON or raises RestError."""
    addr = parse_address(address) if isinstance(address, str) else address
    conn = (_UnixConnection(addr.path, timeout) if addr.kind == "unix"
            else http.client.HTTPConnection(addr.host, addr.port, timeout=timeout))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    if resp.status >= 400:
        raise RestError(resp.status, decoded)
    return decoded


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    body = json.loads(args[3]) if len(args) == 4 else None
    try:
        print(json.dumps(request(args[0], args[1].upper(), args[2], body), indent=1))
    except (RestError, OSError) as exc:
        print(f"sendlab: {args[0]}{args[2]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Address", "RestError", "RestServer", "RouterApi", "parse_address", "request"]
