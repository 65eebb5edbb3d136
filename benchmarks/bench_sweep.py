"""Cells per minute of the shipped Nagle/cork/autocork grid on the simulated backend, and the
speed-up of --jobs 2 over --jobs 1, measured side by side in one run.

Usage: python benchmarks/bench_sweep.py [--quick]   (--quick: the first 32 cells)
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from testbed import experiment, sweep as sweep_mod  # noqa: E402

EXP = Path(__file__).resolve().parents[1] / "experiments" / "nagle_cork_autocork.yaml"


def timed_sweep(jobs: int, limit: int | None, backend: str | None = None) -> tuple[int, float]:
    real = experiment.expand

    def first(exp, topo_file):
        cells = real(exp, topo_file)
        return cells[:limit] if limit else cells

    experiment.expand = first
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            sweep_mod.sweep(str(EXP), out, jobs=jobs, backend=backend,
                            console=Console(file=io.StringIO()))
            wall = time.perf_counter() - t0
            n = len(sweep_mod.done_cells(sweep_mod.open_db(Path(out) / "results.db")))
    finally:
        experiment.expand = real
    return n, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    limit = 32 if args.quick else None
    results = {}
    for jobs in (1, 2):
        n, wall = timed_sweep(jobs, limit)
        results[jobs] = (n, wall)
        print(f"sim, --jobs {jobs}: {n} cells in {wall:.1f} s = {n / wall * 60:.0f} cells/min")
    speedup = results[1][1] / results[2][1]
    from testbed.emulate import available
    reason = available()
    if reason:
        print(f"emulated backend: not measured here ({reason})")
    else:
        n, wall = timed_sweep(1, 8 if args.quick else 24, backend="mininet")
        print(f"mininet, cells one after another: {n} cells in {wall:.1f} s = "
              f"{n / wall * 60:.0f} cells/min")
        print(f"RESULT nagle_cork_autocork grid on mininet: {n / wall * 60:.0f} cells/min "
              f"(first {n} cells)")
    print(f"RESULT nagle_cork_autocork grid on sim: {results[1][0] / results[1][1] * 60:.0f} "
          f"cells/min with --jobs 1, {results[2][0] / results[2][1] * 60:.0f} with --jobs 2 "
          f"(speed-up x{speedup:.2f} on {__import__('os').cpu_count()} cores)")


if __name__ == "__main__":
    main()
