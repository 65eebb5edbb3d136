"""``sendlab sweep``: run every cell of an experiment, store each result as it finishes, resume.

Results live in ``DIR/results.db`` (SQLite): one row per cell in ``cells`` and the cell's
summary.json flattened into tidy ``rows`` (cell, scope, entity, metric, value). Each cell
is committed in one transaction, so an interrupted sweep loses nothing that finished and a
rerun skips what is done. Each cell's summary.json and pcaps are in ``DIR/cells/<id>/``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from .experiment import Cell, Experiment, cell_topology, load_cells
from .metrics import flow_metrics

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, mode TEXT NOT NULL,
    params TEXT NOT NULL, overrides TEXT NOT NULL, rep INTEGER NOT NULL, seed INTEGER NOT NULL,
    backend TEXT NOT NULL, status TEXT NOT NULL, error TEXT, wall_s REAL, finished_at REAL,
    worker TEXT
);
CREATE TABLE IF NOT EXISTS rows (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), scope TEXT NOT NULL, entity TEXT NOT NULL,
    metric TEXT NOT NULL, value REAL, text TEXT
);
CREATE INDEX IF NOT EXISTS rows_cell ON rows(cell_id);
CREATE TABLE IF NOT EXISTS attempts (
    cell_id TEXT NOT NULL, worker TEXT NOT NULL, outcome TEXT NOT NULL, error TEXT,
    wall_s REAL, at REAL NOT NULL
);
"""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def done_cells(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT cell_id, status FROM cells"))


def record(db: sqlite3.Connection, exp: Experiment, cell: Cell, status: str, *, summary=None,
           error: str | None = None, wall_s: float = 0.0, worker: str = "local") -> None:
    """Write one cell and its rows in a single transaction (all or nothing)."""
    with db:
        db.execute("DELETE FROM rows WHERE cell_id = ?", (cell.cell_id,))
        db.execute("INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (cell.cell_id, exp.name, cell.mode, json.dumps(cell.params, sort_keys=True),
                    json.dumps(cell.overrides), cell.rep, cell.seed, exp.backend, status, error,
                    wall_s, time.time(), worker))
        if summary is not None:
            db.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?)", list(tidy_rows(cell, summary)))


def tidy_rows(cell: Cell, summary: dict):
    for flow in summary["flows"]:
        for metric, value in flow_metrics(flow).items():
            yield _row(cell, "flow", flow["name"], metric, value)
        for size, count in flow.get("segment_sizes", {}).items():
            yield (cell.cell_id, "segment_size", flow["name"], str(size), float(count), None)
        for metric in ("stack", "congestion"):
            if flow.get(metric) is not None:
                yield (cell.cell_id, "flow", flow["name"], metric, None, str(flow[metric]))
        for reason, seconds in (flow.get("held_s_by_reason") or {}).items():
            yield _row(cell, "held_s", flow["name"], reason, seconds)
    for name, router in summary.get("routers", {}).items():
        for metric, value in router.get("counters", {}).items():
            yield _row(cell, "router", name, metric, value)
    for name, link in summary.get("links", {}).items():
        for metric, value in _flat(link):
            yield _row(cell, "link", name, metric, value)


def _flat(mapping: dict, prefix: str = ""):
    """(dotted key, scalar) pairs of a nested summary object; lists are left out."""
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif not isinstance(value, (list, tuple)):
            yield f"{prefix}{key}", value


def _row(cell: Cell, scope: str, entity: str, metric: str, value):
    """A tidy row: numbers in ``value``, anything else as ``text``."""
    if value is None or isinstance(value, (bool, int, float)):
        return (cell.cell_id, scope, entity, metric, _num(value), None)
    return (cell.cell_id, scope, entity, metric, None, str(value))


def _num(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


def run_cell(topo_file: str, cell: Cell, out_dir: str, backend: str) -> dict:
    """Run one cell (in a worker process); returns its summary."""
    topo = cell_topology(Path(topo_file), cell)
    if backend == "mininet":
        from .emulate import run_emulated
        return run_emulated(topo, out_dir, seed=cell.seed)
    from .run import run_sim
    # Repetition 0 of every cell keeps its decision trace, for the report's time-sequence graphs.
    return run_sim(topo, out_dir, seed=cell.seed, trace=cell.rep == 0)


def sweep(path: str, out: str, *, jobs: int = 1, retry_failed: bool = False,
          backend: str | None = None, console=None, workers: str | None = None,
          cell_timeout_s: float | None = None, accept_new_host_keys: bool = False) -> int:
    """Run the cells not done yet; locally (``jobs`` processes) or on the ``workers`` file's
    machines over SSH. Returns 0 when every cell is done, 1 otherwise."""
    exp, topo_file, cells = load_cells(path, backend)
    if exp.backend == "mininet" and workers is None:
        _require_emulation(exp)
        # Emulated cells share this machine's cores and clocks: one after another.
        jobs = 1
    machines = None
    if workers is not None:
        from .workers import load_workers
        machines = load_workers(workers)   # validated before anything is made or started
    out_dir = Path(out)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    db = open_db(out_dir / "results.db")
    _write_meta(db, exp, path, out, jobs, workers=workers, machines=machines)
    status = done_cells(db)
    todo = [c for c in cells if status.get(c.cell_id) != "done" and
            (retry_failed or status.get(c.cell_id) != "failed")]
    skipped = len(cells) - len(todo)
    progress = _Progress(console, len(cells), skipped, exp.name)
    unrun: list = []
    try:
        if machines is None:
            _run_all(db, exp, topo_file, todo, out_dir, jobs, progress)
        else:
            unrun = _run_on_workers(db, exp, topo_file, todo, out_dir, machines, progress,
                                    cell_timeout_s, accept_new_host_keys)
        ids = [c.cell_id for c in cells]
        failed = sum(1 for cid, st in done_cells(db).items() if st == "failed" and cid in ids)
    finally:
        progress.stop()
        db.close()
    # Failed cells (new or left from an earlier run) make the sweep's exit status non-zero,
    # and so do cells that no worker was left to run (a rerun runs them).
    return 1 if failed or unrun else 0


def _run_on_workers(db, exp, topo_file, todo, out_dir, machines, progress, cell_timeout_s,
                    accept_new) -> list:
    """Fan the cells out over SSH workers (testbed.remote); record each as it comes back."""
    from .remote import FanOut

    def on_result(cell, status, *, summary, error, wall_s, worker):
        record(db, exp, cell, status, summary=summary, error=error, wall_s=wall_s,
               worker=worker)
        progress.advance(failed=status != "done")

    def on_attempt(cell, worker, outcome, error, wall_s):
        with db:
            db.execute("INSERT INTO attempts VALUES (?,?,?,?,?,?)",
                       (cell.cell_id, worker, outcome, error, wall_s, time.time()))

    fan = FanOut(machines, Path(topo_file), exp.backend, out_dir, cell_timeout_s=cell_timeout_s,
                 accept_new=accept_new)
    unrun = fan.run(todo, on_result, progress, on_attempt)
    with db:
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [(f"worker.{name}", json.dumps(info, sort_keys=True))
                        for name, info in fan.hellos.items()])
    for name, counts in fan.counts.items():
        if counts["lost"]:
            log.warning("worker %s lost %d running cell(s); each went back to the queue", name,
                        counts["lost"])
    for name, reason in fan.dispatcher.down.items():
        log.warning("worker %s is down: %s", name, reason)
    if unrun:
        log.error("%d cell(s) not run: no worker left; run the sweep again to resume",
                  len(unrun))
    return unrun


def _require_emulation(exp: Experiment) -> None:
    from .emulate import available
    from .experiment import ExperimentError
    reason = available()
    if reason:
        raise ExperimentError("--backend", None, "backend",
                              f"the mininet backend cannot run here: {reason}")


def _run_all(db, exp, topo_file, todo, out_dir, jobs, progress) -> int:
    failed = 0
    if jobs <= 1:
        for cell in todo:
            failed += _one(db, exp, cell, progress, lambda c=cell: run_cell(
                str(topo_file), c, str(out_dir / "cells" / c.cell_id), exp.backend))
        return failed
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {}
        queue = list(todo)
        try:
            while queue or pending:
                while queue and len(pending) < jobs * 2:
                    cell = queue.pop(0)
                    fut = pool.submit(run_cell, str(topo_file), cell,
                                      str(out_dir / "cells" / cell.cell_id), exp.backend)
                    pending[fut] = (cell, time.perf_counter())
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    cell, t0 = pending.pop(fut)
                    failed += _store(db, exp, cell, progress, fut, t0)
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
    return failed


def _one(db, exp, cell, progress, fn) -> int:
    t0 = time.perf_counter()
    try:
        summary = fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a cell's failure is data: record it and go on
        record(db, exp, cell, "failed", error=_describe(exc), wall_s=time.perf_counter() - t0)
        progress.advance(failed=True)
        return 1
    return _record_done(db, exp, cell, progress, summary, t0)


def _record_done(db, exp, cell, progress, summary, t0) -> int:
    """Store a finished cell; a summary that cannot be stored makes the cell failed, not the
    sweep."""
    try:
        record(db, exp, cell, "done", summary=summary, wall_s=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - recorded with the cell
        record(db, exp, cell, "failed", error=f"storing the result: {_describe(exc)}",
               wall_s=time.perf_counter() - t0)
        progress.advance(failed=True)
        return 1
    progress.advance()
    return 0


def _store(db, exp, cell, progress, fut, t0) -> int:
    exc = fut.exception()
    if exc is not None:
        record(db, exp, cell, "failed", error=_describe(exc), wall_s=time.perf_counter() - t0)
        progress.advance(failed=True)
        return 1
    return _record_done(db, exp, cell, progress, fut.result(), t0)


def _describe(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}\n" + "".join(tb[-3:])


def _write_meta(db, exp: Experiment, path: str, out: str, jobs: int, *,
                workers: str | None = None, machines=None) -> None:
    where = f"--workers {workers}" if workers else f"--jobs {jobs}"
    meta = {
        "experiment": exp.name, "experiment_file": str(Path(path).resolve()),
        "command": f"sendlab sweep {path} --backend {exp.backend} {where} --out {out}",
        "machine": platform.node(), "kernel": platform.release(),
        "python": platform.python_version(), "cpus": str(os.cpu_count()),
        "backend": exp.backend, "shaping": "sendlab link model (virtual clock)"
        if exp.backend == "sim" else "netem or the sendlab user-space shaper",
        "spec": exp.model_dump_json(),
        "versions": _versions(),
    }
    with db:
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for dist in ("sendlab", "pydantic", "PyYAML", "dpkt", "matplotlib", "os-ken", "mininet"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


class _Progress:
    """A rich progress bar: cells done, failed, and the time left; with workers, one line
    under it per worker (cells it finished, what it runs now, whether it is down)."""

    def __init__(self, console, total: int, skipped: int, name: str) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.failed = 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[left]}"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=skipped,
                                           note="0 failed", left="left")
        self.workers: dict = {}

    def advance(self, failed: bool = False) -> None:
        if failed:
            self.failed += 1
        self.progress.update(self.task, advance=1, note=f"{self.failed} failed")

    def add_worker(self, name: str, note: str = "") -> None:
        self.workers[name] = self.progress.add_task(f"  {name}", total=None, note=note, left="")

    def worker(self, name: str, completed: int, note: str) -> None:
        self.progress.update(self.workers[name], completed=completed, note=note)

    def stop(self) -> None:
        self.progress.stop()


def export(out: str, *, csv_path: str | None = None, parquet_path: str | None = None) -> int:
    """The tidy table: one row per (cell, scope, entity, metric) with the cell's parameters."""
    db = open_db(Path(out) / "results.db")
    rows = db.execute(
        "SELECT c.cell_id, c.experiment, c.mode, c.params, c.rep, c.seed, c.backend, c.status, "
        "r.scope, r.entity, r.metric, r.value, r.text FROM rows r JOIN cells c USING (cell_id) "
        "ORDER BY c.cell_id, r.scope, r.entity, r.metric").fetchall()
    db.close()
    keys = sorted({k for row in rows for k in json.loads(row[3])})
    header = ["cell_id", "experiment", "mode", *keys, "rep", "seed", "backend", "status",
              "scope", "entity", "metric", "value", "text"]
    table = []
    for row in rows:
        params = json.loads(row[3])
        table.append([row[0], row[1], row[2], *(params.get(k) for k in keys), *row[4:]])
    if csv_path:
        import csv
        with open(csv_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(table)
    if parquet_path:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("sendlab: --parquet needs pyarrow (pip install pyarrow)") from None
        cols = {h: [r[i] for r in table] for i, h in enumerate(header)}
        pq.write_table(pa.table({k: [None if v is None else str(v) if not isinstance(
            v, (int, float)) else v for v in vals] for k, vals in cols.items()}), parquet_path)
    return len(table)
