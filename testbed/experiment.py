"""Experiment specs (``experiments/*.yaml``): a topology, a grid of parameters, repetitions,
and what the report shows. Validated like topologies: one-line errors with file, line, field.

Every grid key is a field path of the topology, exactly as ``sendlab run --set`` takes it
(``traffic.0.socket.nodelay``, ``links.1.loss``, ``hosts.h1.sysctls.net.ipv4.tcp_autocorking``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .topology import Topology, TopologyError, load_topology, require_backend
from .yaml_errors import ConfigError, Source, load_model

# Metrics a flow row can have (computed in testbed.metrics from summary.json).
FLOW_METRICS = (
    "completed", "stalled", "duration_s", "goodput_mbit", "bytes_acked", "data_segments",
    "segments_per_kb", "tinygram_share", "retransmits", "mss_initial", "mss_final",
    "write_latency_p50_ms", "write_latency_p99_ms", "response_p50_ms", "response_p99_ms",
    "time_to_first_byte_s", "stall_s", "mtu_probes", "icmp_frag_needed_received",
    "autocorked",
)


class ExperimentError(ConfigError):
    pass


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Plot(_Model):
    """One figure: ``y`` against ``x`` (a grid key or 'mode'), one line per value of ``by``."""

    x: str
    y: str
    by: str = "mode"
    kind: Literal["line", "bar", "hist"] = "line"
    title: str = ""

    @field_validator("y")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in FLOW_METRICS and value != "segment_sizes":
            raise ValueError(f"unknown metric {value!r}; known: {', '.join(FLOW_METRICS)}")
        return value


class Experiment(_Model):
    name: str
    description: str = ""
    topology: str
    backend: Literal["sim", "mininet"] = "sim"
    set: dict[str, Any] = Field(default_factory=dict)
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    repetitions: int = Field(default=1, ge=1, le=1000)
    seed: int = Field(default=1, ge=0)
    metrics: list[str] = Field(default_factory=lambda: ["completed", "goodput_mbit"])
    plots: list[Plot] = Field(default_factory=list)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        for m in value:
            if m not in FLOW_METRICS:
                raise ValueError(f"unknown metric {m!r}; known: {', '.join(FLOW_METRICS)}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: a grid axis needs at least one value")
        return value


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: the overrides it applies, its mode and repetition, its seed."""

    cell_id: str
    mode: str
    params: dict          # grid key -> value (without the mode's fixed overrides)
    overrides: tuple      # every PATH=VALUE applied to the topology, in order
    rep: int
    seed: int


def load_experiment(path: str | Path) -> tuple[Experiment, Source]:
    exp, source = load_model(path, Experiment, (), cls=ExperimentError, what="experiment",
                             free_keys=("set", "grid", "modes"))
    return exp, source


def topology_path(exp: Experiment, exp_path: str | Path) -> Path:
    return (Path(exp_path).resolve().parent / exp.topology).resolve()


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def expand(exp: Experiment, topo_file: Path) -> list[Cell]:
    """Every cell: modes x grid x repetitions, each with a stable id (a hash of what it runs)."""
    topo_hash = hashlib.sha256(topo_file.read_bytes()).hexdigest()[:16]
    modes = exp.modes or {"": {}}
    keys = list(exp.grid)
    cells = []
    for mode, fixed in modes.items():
        for values in itertools.product(*(exp.grid[k] for k in keys)):
            params = dict(zip(keys, values))
            overrides = tuple(_override(k, v) for k, v in {**exp.set, **fixed, **params}.items())
            for rep in range(exp.repetitions):
                seed = exp.seed + rep
                ident = json.dumps({"topology": topo_hash, "backend": exp.backend,
                                    "overrides": overrides, "seed": seed}, sort_keys=True)
                cell_id = hashlib.sha256(ident.encode()).hexdigest()[:16]
                cells.append(Cell(cell_id, mode, params, overrides, rep, seed))
    return cells


def check_cells(exp: Experiment, source: Source, topo_file: Path, cells: list[Cell],
                backend: str) -> None:
    """Validate every distinct override before anything runs; errors point into the experiment."""
    seen: dict = {}
    for cell in cells:
        if cell.overrides in seen:
            continue
        seen[cell.overrides] = True
        try:
            require_backend(load_topology(topo_file, list(cell.overrides)), backend)
        except TopologyError as err:
            raise _blame(exp, source, cell, err) from None


def _blame(exp: Experiment, source: Source, cell: Cell, err: TopologyError) -> ExperimentError:
    """Point a topology error caused by an override at the experiment line that set it."""
    text = str(err)
    for section, mapping in (("grid", exp.grid), ("set", exp.set)):
        for key in mapping:
            if key in text or (err.path and (err.path.startswith(key) or key.startswith(err.path))):
                return source.error((section, key), err.message, ExperimentError)
    for mode, fixed in exp.modes.items():
        for key in fixed:
            if key in text:
                return source.error(("modes", mode, key), err.message, ExperimentError)
    return source.error(("topology",), text, ExperimentError)


def load_cells(path: str | Path, backend: str | None = None
               ) -> tuple[Experiment, Path, list[Cell]]:
    exp, source = load_experiment(path)
    if backend:
        exp = exp.model_copy(update={"backend": backend})
    topo_file = topology_path(exp, path)
    if not topo_file.exists():
        raise source.error(("topology",), f"no such file: {topo_file}", ExperimentError)
    cells = expand(exp, topo_file)
    check_cells(exp, source, topo_file, cells, exp.backend)
    return exp, topo_file, cells


def cell_topology(topo_file: Path, cell: Cell) -> Topology:
    return load_topology(topo_file, list(cell.overrides))
