"""``sendlab report DIR``: a self-contained HTML report (plots embedded) plus PNG/SVG files.

Tables give the mean and a 95 % confidence interval (Student's t) over repetitions for each
metric, per mode; the plots follow the experiment's ``plots`` list; the header states the
machine, kernel, backend, shaping mechanism, versions and the command that reproduces it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sqlite3
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .experiment import Experiment  # noqa: E402

# Two-sided 95 % Student t quantiles for n-1 degrees of freedom (n = 2..30); normal beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval (0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = statistics.fmean(values)
    if n == 1:
        return m, 0.0
    t = _T95[n - 2] if n - 2 < len(_T95) else 1.96
    return m, t * statistics.stdev(values) / math.sqrt(n)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(params: dict, skip: set) -> str:
    parts = [f"{_short(k)}={json.dumps(v) if not isinstance(v, str) else v}"
             for k, v in sorted(params.items()) if k not in skip]
    return " ".join(parts) or "all"


class Results:
    def __init__(self, out: Path) -> None:
        db = sqlite3.connect(out / "results.db")
        self.meta = dict(db.execute("SELECT key, value FROM meta"))
        self.exp = Experiment.model_validate_json(self.meta["spec"])
        self.cells = {}
        for cid, mode, params, status, error in db.execute(
                "SELECT cell_id, mode, params, status, error FROM cells"):
            self.cells[cid] = {"mode": mode, "params": json.loads(params), "status": status,
                               "error": error}
        self.values: dict = defaultdict(dict)      # cell -> (entity, metric) -> value
        self.sizes: dict = defaultdict(lambda: defaultdict(float))
        for cid, scope, entity, metric, value in db.execute(
                "SELECT cell_id, scope, entity, metric, value FROM rows"):
            if scope == "flow" and value is not None:
                self.values[cid][(entity, metric)] = value
            elif scope == "segment_size":
                self.sizes[cid][int(metric)] += value
        db.close()

    def flows(self) -> list[str]:
        return sorted({e for v in self.values.values() for e, _ in v})

    def series(self, flow: str, metric: str, x: str, by: str):
        """{group label: {x value: [values over repetitions]}}."""
        out: dict = defaultdict(lambda: defaultdict(list))
        for cid, cell in self.cells.items():
            if cell["status"] != "done":
                continue
            value = self.values[cid].get((flow, metric))
            if value is None:
                continue
            params = {**cell["params"], "mode": cell["mode"] or "default"}
            xval = params.get(x, "all") if x != "mode" else _label(cell["params"], {by})
            if by == "mode":
                group = " ".join(p for p in (cell["mode"], _label(cell["params"], {x})) if p)
            else:
                group = str(params.get(by))
            out[group][json.dumps(xval) if not isinstance(xval, str) else xval].append(value)
        return out


def _figure_png_svg(fig, base: Path) -> str:
    fig.savefig(base.with_suffix(".png"), dpi=110, bbox_inches="tight")
    fig.savefig(base.with_suffix(".svg"), bbox_inches="tight")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plot(res: Results, plot, flow: str, base: Path) -> str | None:
    if plot.kind == "hist":
        return _plot_hist(res, flow, base, plot.title)
    series = res.series(flow, plot.y, plot.x, plot.by)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = sorted(series)
    xs = sorted({x for g in series.values() for x in g}, key=_sort_key)
    for i, group in enumerate(groups):
        pts = [(x, *mean_ci(series[group][x])) for x in xs if x in series[group]]
        if plot.kind == "bar":
            width = 0.8 / max(len(groups), 1)
            pos = [xs.index(x) + i * width for x, _, _ in pts]
            ax.bar(pos, [m for _, m, _ in pts], width, yerr=[c for _, _, c in pts],
                   label=group, capsize=3)
        else:
            ax.errorbar([xs.index(x) for x, _, _ in pts], [m for _, m, _ in pts],
                        yerr=[c for _, _, c in pts], marker="o", capsize=3, label=group)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, rotation=0 if len(xs) < 8 else 45)
    ax.set_xlabel(_short(plot.x))
    ax.set_ylabel(plot.y)
    ax.set_title(f"{plot.title or plot.y} — flow {flow}")
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=7, ncol=2 if len(groups) > 6 else 1)
    return _figure_png_svg(fig, base)


def _plot_hist(res: Results, flow: str, base: Path, title: str) -> str | None:
    by_mode: dict = defaultdict(lambda: defaultdict(float))
    x_keys = {p.x for p in res.exp.plots if p.kind != "hist"}
    for cid, cell in res.cells.items():
        if cell["status"] != "done":
            continue
        label = " ".join(p for p in (cell["mode"], _label(cell["params"], x_keys)) if p)
        for size, count in res.sizes.get(cid, {}).items():
            by_mode[label][size] += count
    if not by_mode:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, hist in sorted(by_mode.items()):
        sizes = sorted(hist)
        total = sum(hist.values()) or 1
        ax.step(sizes, [hist[s] / total for s in sizes], where="mid", label=label)
    ax.set_xlabel("segment payload bytes")
    ax.set_ylabel("share of data segments")
    ax.set_title(title or "Segment sizes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _figure_png_svg(fig, base)


def _sort_key(x: str):
    try:
        return (0, float(json.loads(x)))
    except (ValueError, TypeError):
        return (1, x)


def _table(res: Results, flow: str) -> str:
    metrics = res.exp.metrics
    groups: dict = defaultdict(lambda: defaultdict(list))
    for cid, cell in res.cells.items():
        if cell["status"] != "done":
            continue
        label = " ".join(p for p in (cell["mode"], _label(cell["params"], set())) if p)
        for m in metrics:
            v = res.values[cid].get((flow, m))
            if v is not None:
                groups[label][m].append(v)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for label in sorted(groups):
        cells = []
        for m in metrics:
            vals = groups[label][m]
            if not vals:
                cells.append("<td>–</td>")
                continue
            mean, ci = mean_ci(vals)
            cells.append(f"<td>{mean:.4g} ± {ci:.2g}</td>")
        body.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th>parameters</th>{head}</tr>{''.join(body)}</table>")


def _stack_key(res: Results) -> str | None:
    """The grid key that switches a host between the python stack and the kernel, if any."""
    for key in res.exp.grid:
        if key.startswith("hosts.") and key.endswith(".stack"):
            return key
    return None


def _fidelity_table(res: Results, flow: str, key: str) -> str:
    """Each metric with the python stack and with the kernel, side by side, and their ratio."""
    groups: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for cid, cell in res.cells.items():
        if cell["status"] != "done":
            continue
        stack = cell["params"].get(key)
        label = " ".join(p for p in (cell["mode"], _label(cell["params"], {key})) if p)
        for m in res.exp.metrics:
            v = res.values[cid].get((flow, m))
            if v is not None:
                groups[label][m][stack].append(v)
    rows = []
    for label in sorted(groups):
        for m in res.exp.metrics:
            py, lx = groups[label][m].get("python"), groups[label][m].get("linux")
            if not py or not lx:
                continue
            (mp, cp), (ml, cl) = mean_ci(py), mean_ci(lx)
            ratio = f"{mp / ml:.3f}" if ml else "–"
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(m)}</td>"
                        f"<td>{mp:.4g} ± {cp:.2g}</td><td>{ml:.4g} ± {cl:.2g}</td>"
                        f"<td>{ratio}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>parameters</th><th>metric</th><th>python stack</th>"
            "<th>Linux kernel</th><th>ratio python/linux</th></tr>" + "".join(rows) + "</table>")


def _order(value):
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _tsg_cells(res: Results, out: Path) -> list[tuple[str, str]]:
    """(label, cell id): one representative repetition-0 cell per mode that kept its trace.

    The modes are what the plots tell apart: with ``by: mode`` (the Nagle/cork/autocork
    sweep) every combination of the non-x parameters, shown at the lowest x (no loss);
    with ``by: <key>`` (the black hole) every bar, i.e. each (by, x) pair, shown at the
    lowest value of the other parameters (the smallest MTU: the black hole itself).
    """
    db = sqlite3.connect(out / "results.db")
    reps = dict(db.execute("SELECT cell_id, rep FROM cells"))
    db.close()
    plots = [p for p in res.exp.plots if p.kind != "hist"]
    x_keys = {p.x for p in plots if p.x != "mode"}
    by_keys = {p.by for p in plots if p.by != "mode"}
    groups: dict = defaultdict(list)
    for cid, cell in res.cells.items():
        if cell["status"] != "done" or reps.get(cid) != 0:
            continue
        if not any((out / "cells" / cid).glob("trace_*.jsonl")):
            continue
        params = cell["params"]
        keep = (x_keys | by_keys) if by_keys else set(params) - x_keys
        shown = {k: v for k, v in params.items() if k in keep}
        label = " ".join(p for p in (cell["mode"], _label(shown, set())) if p)
        rest = tuple((k, _order(v)) for k, v in sorted(params.items()) if k not in keep)
        groups[label].append((rest, cid))
    return [(label, min(cells)[1]) for label, cells in sorted(groups.items())]


def _tsg_section(res: Results, out: Path) -> list[str]:
    """Time-sequence graphs (PNG and SVG files, PNG embedded) of one repetition per mode."""
    from stack.trace import read_jsonl

    from .tsg import render
    parts = []
    for label, cid in _tsg_cells(res, out):
        cell_dir = out / "cells" / cid
        held = {}
        summary = cell_dir / "summary.json"
        if summary.exists():
            held = {f["name"]: f.get("held_s_by_reason") or {}
                    for f in json.loads(summary.read_text())["flows"]}
        for path in sorted(cell_dir.glob("trace_*.jsonl")):
            flow = path.stem[len("trace_"):]
            slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", label)
            png, _ = render(read_jsonl(path), out / f"tsg_{slug}_{flow}",
                            title=f"{label}: flow {flow} (repetition 0)")
            b64 = base64.b64encode(png.read_bytes()).decode()
            waited = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in
                               sorted(held.get(flow, {}).items()) if v) or "nothing held"
            parts.append(f"<h3>{html.escape(label)} (flow {html.escape(flow)})</h3>"
                         f"<p>Data held: {html.escape(waited)}. Cell <code>{cid}</code>.</p>"
                         f"<img alt='time-sequence graph {html.escape(label)} {html.escape(flow)}'"
                         f" src='data:image/png;base64,{b64}'>")
    if parts:
        parts.insert(0, "<h2>Time-sequence graphs: why bytes waited (one repetition per mode)"
                        "</h2><p>Sequence number against time; green ticks: application writes "
                        "on the write_seq line; bars: segments (red: retransmissions); step "
                        "lines: cumulative ACK and receive window edge; shaded: data held, by "
                        "reason.</p>")
    return parts


def write_report(out_dir: str) -> Path:
    out = Path(out_dir)
    res = Results(out)
    figs = []
    for flow in res.flows():
        for i, plot in enumerate(res.exp.plots):
            b64 = _plot(res, plot, flow, out / f"plot_{flow}_{i}")
            if b64:
                figs.append((plot.title or plot.y, flow, b64))
    failed = [(cid, c["error"]) for cid, c in res.cells.items() if c["status"] == "failed"]
    meta = res.meta
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sendlab report: {html.escape(res.exp.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:3px 6px}img{max-width:100%}code{background:#eee;padding:2px}</style>",
        "</head><body>",
        f"<h1>{html.escape(res.exp.name)}</h1><p>{html.escape(res.exp.description)}</p>",
        "<h2>How this was made</h2><ul>",
        *(f"<li>{html.escape(k)}: <code>{html.escape(meta.get(k, '?'))}</code></li>"
          for k in ("command", "backend", "shaping", "machine", "kernel", "python", "cpus",
                    "versions")),
        f"<li>sendlab: <code>{html.escape(_version())}</code></li>",
        f"<li>cells: {sum(c['status'] == 'done' for c in res.cells.values())} done, "
        f"{len(failed)} failed</li></ul>",
    ]
    for title, flow, b64 in figs:
        parts.append(f"<h3>{html.escape(title)} (flow {html.escape(flow)})</h3>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
    parts += _tsg_section(res, out)
    key = _stack_key(res)
    for flow in res.flows():
        if key:
            fidelity = _fidelity_table(res, flow, key)
            if fidelity:
                parts.append(f"<h2>Flow {html.escape(flow)}: python stack against the kernel "
                             "(the fidelity figure)</h2>")
                parts.append(fidelity)
        parts.append(f"<h2>Flow {html.escape(flow)}: mean ± 95 % interval</h2>")
        parts.append(_table(res, flow))
    if failed:
        parts.append("<h2>Failed cells</h2><ul>")
        parts += [f"<li><code>{cid}</code>: <pre>{html.escape(err or '')}</pre></li>"
                  for cid, err in failed]
        parts.append("</ul>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("sendlab")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "checkout"
