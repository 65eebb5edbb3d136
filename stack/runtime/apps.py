"""Applications as generators, and the one loop every runtime drives them with.

An application yields socket operations (``n = yield sock.send(data)``) or ``Sleep``.
``advance`` runs it until it has to wait and says on what; each runtime decides how
to wait (a virtual-clock event, a select() timeout, a wake-up from the socket).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sleep:
    seconds: float


class Process:
    """One application; ``done``, ``result`` and ``error`` tell how it ended."""

    __slots__ = ("pid", "host", "gen", "op", "wake_at", "done", "result", "error", "name")

    def __init__(self, pid: int, gen, name: str = "", host=None) -> None:
        self.pid = pid
        self.host = host
        self.gen = gen
        self.op = None
        self.wake_at = None
        self.done = False
        self.result = None
        self.error = None
        self.name = name


def advance(proc: Process, value, failed, now: float):
    """Run ``proc`` until it waits. Returns the pending operation, a ``Sleep``, or None when
    the application ended (``proc.done``). An application's own exception is recorded in
    ``proc.error`` and raised again; the caller decides whether that stops the runtime.

    ``failed`` is an operation that finished with an error: it is thrown into the
    application as OSError, the way a blocking call would have raised it.
    """
    while True:
        try:
            if failed is not None:
                try:
                    failed.raise_error()
                except OSError as exc:
                    item = proc.gen.throw(exc)
                failed = None
            else:
                item = proc.gen.send(value)
        except StopIteration as stop:
            proc.done, proc.result, proc.op = True, stop.value, None
            return None
        except Exception as exc:
            proc.done, proc.error, proc.op = True, exc, None
            raise
        value = None
        if isinstance(item, Sleep):
            return item
        if not hasattr(item, "step"):
            exc = TypeError(f"application yielded {item!r}; expected a socket operation or Sleep")
            proc.done, proc.error = True, exc
            raise exc
        if not item.step(now):
            proc.op = item
            return item
        if item.error:
            failed = item
        else:
            value = item.result
