"""The socket API applications use, as resumable operations a runtime drives.

Each call (``send``, ``recv``, ``connect``, ``accept``...) returns an operation.
A runtime ``step``s it with the current time: it either finishes (``done``,
with ``result`` or ``error``) or waits until the socket is woken, then is
stepped again, exactly where a blocking kernel call would sleep and resume.
Non-blocking sockets and MSG_DONTWAIT finish at once with EAGAIN instead.
"""

from __future__ import annotations

import errno as _errno

from .constants import (
    EAGAIN, EINPROGRESS, EINVAL, ENOTCONN, MSG_DONTWAIT, SOL_SOCKET, SOL_TCP, TCP_CLOSE,
    TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_SENT, POLLERR, POLLHUP,
)
from .sock import TcpSock
from .tcp import (
    SendOp, getsockopt, setsockopt, tcp_close, tcp_poll, tcp_recvmsg, tcp_sendmsg, tcp_shutdown,
)
from .tcp_ipv4 import inet_listen, tcp_v4_connect


class Op:
    """A socket call in progress."""

    __slots__ = ("sock", "done", "result", "error")

    def __init__(self, sock: "Socket") -> None:
        self.sock = sock
        self.done = False
        self.result = None
        self.error = 0

    def step(self, now: float) -> bool:
        raise NotImplementedError

    def _finish(self, value) -> bool:
        self.done = True
        if isinstance(value, int) and value < 0:
            self.error = -value
        else:
            self.result = value
        return True

    def sockets(self) -> list:
        """The sockets whose wake-ups may let the call proceed."""
        return [self.sock]

    def raise_error(self) -> None:
        if self.error:
            raise OSError(self.error, _errno.errorcode.get(self.error, str(self.error)))


class SendCall(Op):
    __slots__ = ("op",)

    def __init__(self, sock: "Socket", data, flags: int) -> None:
        super().__init__(sock)
        self.op = SendOp(data, flags, sock.nonblock)

    def step(self, now: float) -> bool:
        tcp_sendmsg(self.sock.tp, self.op, now)
        if self.op.result is not None:
            return self._finish(self.op.result)
        return False


class RecvCall(Op):
    __slots__ = ("size", "flags")

    def __init__(self, sock: "Socket", size: int, flags: int) -> None:
        super().__init__(sock)
        self.size = size
        self.flags = flags

    def step(self, now: float) -> bool:
        res = tcp_recvmsg(self.sock.tp, self.size, self.flags, now)
        if res == -EAGAIN and not (self.sock.nonblock or self.flags & MSG_DONTWAIT):
            return False
        return self._finish(res)


class ConnectCall(Op):
    __slots__ = ("addr", "started")

    def __init__(self, sock: "Socket", addr: tuple) -> None:
        super().__init__(sock)
        self.addr = addr
        self.started = False

    def step(self, now: float) -> bool:
        tp = self.sock.tp
        if not self.started:
            self.started = True
            err = tcp_v4_connect(tp, self.addr[0], self.addr[1], now)
            if err:
                return self._finish(err)
            if self.sock.nonblock:
                return self._finish(-EINPROGRESS)
            return False
        if tp.state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
            return self._finish(0)
        if tp.state == TCP_SYN_SENT:
            return False
        err = tp.sk_err or _errno.ECONNREFUSED
        tp.sk_err = 0
        return self._finish(-err)


class AcceptCall(Op):
    __slots__ = ()

    def step(self, now: float) -> bool:
        tp = self.sock.tp
        if tp.state != TCP_LISTEN:
            return self._finish(-EINVAL)
        if tp.accept_queue:
            child = tp.accept_queue.popleft()
            return self._finish(Socket(self.sock.host, child))
        if self.sock.nonblock:
            return self._finish(-EAGAIN)
        return False


class Immediate(Op):
    """A call that never waits (setsockopt, listen, shutdown, close...)."""

    __slots__ = ("fn",)

    def __init__(self, sock: "Socket", fn) -> None:
        super().__init__(sock)
        self.fn = fn

    def step(self, now: float) -> bool:
        return self._finish(self.fn(now))


class PollCall(Op):
    """poll() over several sockets: done when one is ready for what it asks (errors and hang-ups
    always count), or at ``deadline`` (None: never); the result is each socket's revents."""

    __slots__ = ("entries", "deadline")

    def __init__(self, entries: list, deadline: float | None) -> None:
        super().__init__(entries[0][0] if entries else None)
        self.entries = entries
        self.deadline = deadline

    def sockets(self) -> list:
        return [sock for sock, _ in self.entries]

    def revents(self) -> list[int]:
        return [tcp_poll(sock.tp) & (events | POLLERR | POLLHUP) for sock, events in self.entries]

    def step(self, now: float) -> bool:
        got = self.revents()
        if any(got) or (self.deadline is not None and now >= self.deadline):
            return self._finish(got)
        return False


class Socket:
    """A TCP socket of a sendlab host (SOCK_STREAM over IPv4)."""

    def __init__(self, host, tp: TcpSock | None = None) -> None:
        self.host = host
        if tp is None:
            tp = TcpSock(host)
            from .tcp_cong import ALGORITHMS, Cubic
            tp.ca_ops = ALGORITHMS.get(host.sysctl.tcp_congestion_control, Cubic)()
        self.tp = tp
        self.nonblock = False
        host.sockets.append(self)

    # Calls that may wait.
    def send(self, data, flags: int = 0) -> SendCall:
        return SendCall(self, data, flags)

    def sendmsg(self, buffers, flags: int = 0) -> SendCall:
        return SendCall(self, b"".join(bytes(b) for b in buffers), flags)

    def recv(self, size: int, flags: int = 0) -> RecvCall:
        return RecvCall(self, size, flags)

    def connect(self, addr: tuple) -> ConnectCall:
        return ConnectCall(self, addr)

    def accept(self) -> AcceptCall:
        return AcceptCall(self)

    def poll(self, events: int, timeout_s: float | None = 0.0, now: float = 0.0) -> PollCall:
        """Wait until the socket is ready for ``events`` (POLLIN, POLLOUT...) or ``timeout_s``
        has passed (None: no limit); the result is ``[revents]``."""
        deadline = None if timeout_s is None else now + timeout_s
        return PollCall([(self, events)], deadline)

    # Calls that never wait.
    def bind(self, addr: tuple) -> Immediate:
        def do(now: float) -> int:
            if self.tp.sport:
                return -EINVAL
            self.tp.sport = addr[1]
            return 0
        return Immediate(self, do)

    def listen(self, backlog: int = 128) -> Immediate:
        return Immediate(self, lambda now: inet_listen(self.tp, backlog))

    def setsockopt(self, level: int, optname: int, value) -> Immediate:
        return Immediate(self, lambda now: setsockopt(self.tp, level, optname, value, now))

    def getsockopt(self, level: int, optname: int) -> Immediate:
        return Immediate(self, lambda now: getsockopt(self.tp, level, optname))

    def setblocking(self, flag: bool) -> None:
        self.nonblock = not flag

    def shutdown(self, how: int) -> Immediate:
        return Immediate(self, lambda now: tcp_shutdown(self.tp, how, now))

    def close(self) -> Immediate:
        def do(now: float) -> int:
            if self in self.host.sockets:
                self.host.sockets.remove(self)
            return tcp_close(self.tp, now)
        return Immediate(self, do)

    # Observation.
    def tcp_info(self) -> dict:
        from .info import tcp_info
        return tcp_info(self.tp)

    @property
    def connected(self) -> bool:
        return self.tp.state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)

    @property
    def closed(self) -> bool:
        return self.tp.state == TCP_CLOSE


__all__ = ["Socket", "Op", "PollCall", "SendCall", "RecvCall", "ConnectCall", "AcceptCall", "Immediate",
           "SOL_SOCKET", "SOL_TCP", "ENOTCONN", "TCP_CLOSE"]
