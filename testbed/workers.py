"""The workers file (``workers.yaml``) and ``sendlab workers check``.

A workers file lists the machines a sweep may fan out to::

    defaults:                       # optional: any worker field, for every worker
      user: root
      key: ~/.ssh/sendlab_ed25519   # private key (key authentication only)
      known_hosts: ~/.ssh/known_hosts
      sendlab_path: /opt/sendlab    # the sendlab checkout there, with its .venv
    workers:
      - name: w1
        address: 192.0.2.11
        slots: 2                    # cells it runs at once
      - name: w2
        address: lab2.example.org
        port: 2222
        work_dir: /scratch/sendlab  # where its cells' results wait for the copy-back
        compression: true           # zlib on the SSH link: pcaps shrink 10-30x; for slow links

It is validated like topologies and experiments (errors on one line: ``FILE:LINE: FIELD:
message``). Local paths (``key``, ``known_hosts``) are relative to the workers file and may
start with ``~``; remote paths (``sendlab_path``, ``python``, ``work_dir``) must be absolute,
and they only ever reach a remote shell quoted (see :mod:`testbed.remote`).
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .yaml_errors import ConfigError, load_model, located

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
DEFAULT_WORK_DIR = "/tmp/sendlab-worker"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class WorkersError(ConfigError):
    pass


def _remote_path(value: str | None) -> str | None:
    if value is None:
        return value
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path on the worker (start with /)")
    if any(ch in value for ch in "\0\n\r"):
        raise ValueError("a path cannot hold a NUL or a line break")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerFields(_Model):
    """Fields a worker may set and ``defaults`` may give for all of them."""

    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    slots: int | None = Field(default=None, ge=1, le=256)
    sendlab_path: str | None = None
    python: str | None = None
    work_dir: str | None = None
    connect_timeout_s: float | None = Field(default=None, gt=0, le=600)
    compression: bool | None = None

    @field_validator("user")
    @classmethod
    def _user(cls, value):
        if value is not None and not _USER.match(value):
            raise ValueError(f"{value!r} is not a user name")
        return value

    @field_validator("sendlab_path", "python", "work_dir")
    @classmethod
    def _paths(cls, value):
        return _remote_path(value)

    @field_validator("key", "known_hosts")
    @classmethod
    def _local(cls, value):
        if value is not None and (not value.strip() or "\0" in value):
            raise ValueError("give a file path")
        return value


class WorkerEntry(WorkerFields):
    name: str
    address: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-' (up to 64), "
                             "starting with a letter or digit")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value


class WorkersFile(_Model):
    defaults: WorkerFields = Field(default_factory=WorkerFields)
    workers: list[WorkerEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> "WorkersFile":
        errors = []
        seen: dict[str, int] = {}
        for i, w in enumerate(self.workers):
            if w.name in seen:
                errors.append((("workers", i, "name"),
                               f"{w.name!r} is already the name of workers[{seen[w.name]}]"))
            seen.setdefault(w.name, i)
            for field in ("key", "sendlab_path"):
                if getattr(w, field) is None and getattr(self.defaults, field) is None:
                    errors.append((("workers", i),
                                   f"worker {w.name!r} has no {field}: give it here or under "
                                   "defaults"))
        if errors:
            raise located(*errors)
        return self


@dataclass(frozen=True)
class Worker:
    """One machine, every field resolved: what :mod:`testbed.remote` connects to."""

    name: str
    address: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    slots: int
    sendlab_path: str
    python: str
    work_dir: str
    connect_timeout_s: float
    compression: bool = False

    @property
    def host_id(self) -> str:
        """The name of this host in known_hosts (``addr`` or ``[addr]:port``), as OpenSSH has it."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


def _local_path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def load_workers(path: str | Path) -> list[Worker]:
    """Read and validate a workers file; raise :class:`WorkersError` (one line) on a problem."""
    model, _source = load_model(path, WorkersFile, (), cls=WorkersError, what="workers file",
                                free_keys=())
    base = Path(path).resolve().parent
    d = model.defaults
    out = []
    for w in model.workers:
        def pick(field, default=None, w=w):
            value = getattr(w, field)
            if value is None:
                value = getattr(d, field)
            return default if value is None else value
        sendlab_path = pick("sendlab_path").rstrip("/") or "/"
        out.append(Worker(
            name=w.name, address=w.address, port=pick("port", 22), user=pick("user", "root"),
            key=_local_path(pick("key"), base),
            known_hosts=_local_path(pick("known_hosts", DEFAULT_KNOWN_HOSTS), base),
            slots=pick("slots", 1), sendlab_path=sendlab_path,
            python=pick("python", f"{sendlab_path}/.venv/bin/python"),
            work_dir=pick("work_dir", DEFAULT_WORK_DIR),
            connect_timeout_s=float(pick("connect_timeout_s", 10.0)),
            compression=bool(pick("compression", False))))
    return out


# --- sendlab workers check --------------------------------------------------------------------

def check_one(worker: Worker, local: dict, accept_new: bool) -> dict:
    """Connect, run ``remote_cell --info``; a row for the table (``error`` set on failure)."""
    from .remote import RemoteError, connect, remote_info
    row = {"worker": worker, "error": None, "info": None, "connect_s": None}
    try:
        conn = connect(worker, accept_new=accept_new)
    except RemoteError as exc:
        row["error"] = str(exc)
        return row
    try:
        row["connect_s"] = conn.connect_s
        row["info"] = remote_info(conn)
    except RemoteError as exc:
        row["error"] = str(exc)
    finally:
        conn.close()
    return row


def check(path: str | Path, *, accept_new: bool = False, console=None) -> int:
    """``sendlab workers check``: a table of every worker; 0 when every worker is usable."""
    from rich.console import Console
    from rich.table import Table

    from .remote_cell import identity
    console = console or Console()
    workers = load_workers(path)
    local = identity()
    with ThreadPoolExecutor(max_workers=min(16, len(workers))) as pool:
        rows = list(pool.map(lambda w: check_one(w, local, accept_new), workers))
    table = Table(title=f"sendlab workers ({path})")
    for col in ("worker", "address", "status", "sendlab", "commit", "root", "netem", "OVS",
                "vxlan", "slots"):
        table.add_column(col)
    bad = 0
    for row in rows:
        w, info = row["worker"], row["info"]
        if row["error"] or info is None:
            bad += 1
            table.add_row(w.name, w.where, "[red]unusable[/red]", "", "", "", "", "", "",
                          str(w.slots))
            continue
        same_version = info.get("version") == local["version"]
        same_commit = info.get("commit") == local["commit"]
        version = info.get("version", "?")
        version = version if same_version else f"[red]{version} (here {local['version']})[/red]"
        commit = (info.get("commit") or "?")[:10]
        if info.get("dirty"):
            commit += "+changes"
        commit = (f"[green]{commit} same[/green]" if same_commit
                  else f"[yellow]{commit} (here {(local['commit'] or '?')[:10]})[/yellow]")
        ovs = info.get("ovs", "?") + (", userspace" if info.get("ovs_userspace") else "")
        table.add_row(w.name, w.where, f"[green]ok[/green] {row['connect_s'] * 1000:.0f} ms",
                      version, commit, "yes" if info.get("root") else "[yellow]no[/yellow]",
                      _feature(info.get("netem")), _feature(ovs), _feature(info.get("vxlan")),
                      str(w.slots))
        if not same_version:
            bad += 1
    console.print(table)
    for row in rows:
        if row["error"]:
            console.print(f"sendlab: worker {row['worker'].name}: {row['error']}",
                          soft_wrap=True, highlight=False, markup=False)
    return 1 if bad else 0


def _feature(value: str | None) -> str:
    value = value or "?"
    if value.startswith(("loaded", "available")):
        return f"[green]{value}[/green]"
    if value.startswith("missing"):
        return f"[yellow]{value}[/yellow]"
    return value


__all__ = ["Worker", "WorkersError", "WorkersFile", "load_workers", "check", "check_one"]
