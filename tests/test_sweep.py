"""Sweeps: grid expansion, results stored per cell, resume after interruption, failed cells,
exports and the report."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from testbed import sweep as sweep_mod
from testbed.cli import main
from testbed.experiment import ExperimentError, load_cells
from testbed.report import mean_ci, write_report
from testbed.sweep import export, sweep

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "pmtu_blackhole_quick.yaml"


def _exp(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text.replace("TOPO", str(ROOT / "topologies" / "pmtu_blackhole.yaml")))
    return path


SMALL = """name: small
topology: TOPO
set:
  traffic.0.bulk.bytes: 50kB
  run.stall_timeout_s: 2
grid:
  routers.r2.icmp: [send, suppress]
  traffic.0.sysctls.net.ipv4.tcp_mtu_probing: [0, 2]
repetitions: 2
metrics: [completed, stalled, duration_s]
plots:
  - {x: traffic.0.sysctls.net.ipv4.tcp_mtu_probing, y: duration_s, by: routers.r2.icmp, kind: bar}
"""


def _statuses(out: Path) -> dict:
    db = sqlite3.connect(out / "results.db")
    try:
        return dict(db.execute("SELECT cell_id, status FROM cells"))
    finally:
        db.close()


def test_grid_expands_to_every_combination_times_repetitions(tmp_path):
    exp, _, cells = load_cells(_exp(tmp_path, SMALL))
    assert len(cells) == 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == len(cells), "every cell has its own id"
    assert {c.seed for c in cells} == {1, 2}


def test_sweep_stores_every_cell_and_black_hole_outcomes(tmp_path):
    out = tmp_path / "out"
    assert sweep(str(_exp(tmp_path, SMALL)), str(out)) == 0
    assert set(_statuses(out).values()) == {"done"} and len(_statuses(out)) == 8
    db = sqlite3.connect(out / "results.db")
    rows = db.execute(
        "SELECT c.params, r.value FROM rows r JOIN cells c USING (cell_id) "
        "WHERE r.metric = 'stalled' AND r.entity = 'bulk'").fetchall()
    db.close()
    stalled = {p for p, v in rows if v == 1.0}
    # Only the black hole without probing stalls.
    assert stalled == {'{"routers.r2.icmp": "suppress", '
                       '"traffic.0.sysctls.net.ipv4.tcp_mtu_probing": 0}'}
    assert list((out / "cells").glob("*/summary.json"))


def test_interrupted_sweep_resumes_without_rerunning_finished_cells(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = str(_exp(tmp_path, SMALL))
    real = sweep_mod.run_cell
    calls = []

    def crash_after_three(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[1].cell_id)
        return real(*args)

    monkeypatch.setattr(sweep_mod, "run_cell", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        sweep(path, str(out))
    assert len(_statuses(out)) == 3, "the finished cells were kept"
    monkeypatch.setattr(sweep_mod, "run_cell", lambda *a: calls.append(a[1].cell_id) or real(*a))
    assert sweep(path, str(out)) == 0
    assert len(calls) == 8, "the rerun ran only the five missing cells"
    assert len(set(calls)) == 8
    assert set(_statuses(out).values()) == {"done"}


def test_failed_cell_is_recorded_and_retried_on_request(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = str(_exp(tmp_path, SMALL))
    real = sweep_mod.run_cell
    boom = {"on": True}

    def flaky(topo_file, cell, *rest):
        if boom["on"] and cell.params["routers.r2.icmp"] == "suppress":
            raise RuntimeError("simulated worker failure")
        return real(topo_file, cell, *rest)

    monkeypatch.setattr(sweep_mod, "run_cell", flaky)
    assert sweep(path, str(out)) == 1
    st = _statuses(out)
    assert sorted(st.values()).count("failed") == 4
    db = sqlite3.connect(out / "results.db")
    errors = [e for (e,) in db.execute("SELECT error FROM cells WHERE status='failed'")]
    db.close()
    assert all("simulated worker failure" in e for e in errors)
    # Without --retry-failed, failed cells stay failed; with it they run again.
    assert sweep(path, str(out)) == 1
    boom["on"] = False
    assert sweep(path, str(out), retry_failed=True) == 0
    assert set(_statuses(out).values()) == {"done"}


def test_parallel_sweep_gives_the_same_results_as_serial(tmp_path):
    path = str(_exp(tmp_path, SMALL))
    a, b = tmp_path / "a", tmp_path / "b"
    sweep(path, str(a), jobs=1)
    sweep(path, str(b), jobs=2)
    q = "SELECT cell_id, scope, entity, metric, value FROM rows ORDER BY 1, 2, 3, 4"
    rows = []
    for out in (a, b):
        db = sqlite3.connect(out / "results.db")
        rows.append(db.execute(q).fetchall())
        db.close()
    assert rows[0] == rows[1]


def test_results_export_csv_is_tidy(tmp_path):
    out = tmp_path / "out"
    sweep(str(_exp(tmp_path, SMALL)), str(out))
    n = export(str(out), csv_path=str(tmp_path / "t.csv"))
    with open(tmp_path / "t.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n > 0
    assert {"cell_id", "routers.r2.icmp", "metric", "value"} <= set(rows[0])


def test_report_has_embedded_plots_tables_and_provenance(tmp_path):
    out = tmp_path / "out"
    sweep(str(_exp(tmp_path, SMALL)), str(out))
    html = write_report(str(out)).read_text()
    assert html.count("data:image/png;base64,") >= 1
    assert "sendlab sweep" in html and "kernel" in html and "± " in html
    png = next(out.glob("plot_*.png"))
    assert png.stat().st_size > 5000, "a plot with content, not an empty canvas"
    assert next(out.glob("plot_*.svg")).exists()


def test_mean_ci_uses_student_t():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-3)
    assert mean_ci([5.0]) == (5.0, 0.0)


def test_bad_grid_value_names_experiment_file_line_and_field(tmp_path, capsys):
    path = _exp(tmp_path, SMALL.replace("[send, suppress]", "[send, silent]"))
    with pytest.raises(ExperimentError) as err:
        load_cells(path)
    text = str(err.value)
    assert text.startswith(f"{path}:7: grid.routers.r2.icmp"), text
    rc = main(["sweep", str(path), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.startswith(f"sendlab: {path}:7:")
    assert not (tmp_path / "o").exists(), "nothing started"


def test_unknown_metric_is_an_error_at_its_line(tmp_path):
    path = _exp(tmp_path, SMALL.replace("metrics: [completed,", "metrics: [completd,"))
    with pytest.raises(ExperimentError) as err:
        load_cells(path)
    assert ":10: metrics" in str(err.value)


def test_shipped_experiments_validate():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        exp, _, cells = load_cells(path)
        assert cells, path


def test_sim_refuses_the_stack_vs_linux_experiment_clearly(tmp_path, capsys):
    rc = main(["sweep", str(ROOT / "experiments" / "stack_vs_linux.yaml"), "--backend", "sim",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "mininet" in capsys.readouterr().err


def _fake_flow(goodput: float, segments: int) -> dict:
    return {"name": "f", "bytes_requested": 102400, "completed": True, "stalled": False,
            "duration_s": 1.0, "goodput_mbit": goodput, "bytes_acked": 102400,
            "data_segments": segments, "segment_sizes": {"1448": segments}, "retransmits": 0,
            "mss_initial": 1448, "mss_final": 1448, "stack": "python"}


def test_report_puts_python_and_kernel_side_by_side_with_their_ratio(tmp_path):
    from testbed.experiment import Cell, Experiment
    from testbed.sweep import _write_meta, open_db, record
    exp = Experiment(name="fidelity", topology="t.yaml", backend="mininet",
                     grid={"hosts.h1.stack": ["python", "linux"]},
                     metrics=["goodput_mbit", "segments_per_kb"])
    db = open_db(tmp_path / "results.db")
    _write_meta(db, exp, "exp.yaml", str(tmp_path), 1)
    for stack, goodput, rep in (("python", 9.0, 0), ("python", 11.0, 1), ("linux", 20.0, 0),
                                ("linux", 20.0, 1)):
        cell = Cell(f"{stack}{rep}", "", {"hosts.h1.stack": stack}, (), rep, rep + 1)
        record(db, exp, cell, "done", summary={"flows": [_fake_flow(goodput, 100)]})
    db.close()
    html = write_report(str(tmp_path)).read_text()
    assert "the fidelity figure" in html
    # python mean 10, kernel 20: ratio 0.5 for goodput, 1.0 for segments per KB.
    assert "<td>goodput_mbit</td><td>10 ± 13</td><td>20 ± 0</td><td>0.500</td>" in html
    assert "<td>segments_per_kb</td>" in html and "<td>1.000</td>" in html
