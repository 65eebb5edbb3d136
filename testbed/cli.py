"""The ``sendlab`` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_conform(args) -> int:
    from .conform import conform
    return conform(args.scripts, tolerance_usecs=args.tolerance_usecs)


def _cmd_run(args) -> int:
    from .run import format_table, run_sim
    from .topology import load_topology, require_backend
    from .yaml_errors import ConfigError
    try:
        topo = load_topology(args.topology, args.set or [])
        require_backend(topo, args.backend)
    except ConfigError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2
    if args.backend != "sim":
        print("sendlab: the mininet backend is not available yet", file=sys.stderr)
        return 2
    out = args.out or f"results/{topo.name}"
    summary = run_sim(topo, out, seed=args.seed)
    print(format_table(summary))
    print(f"sendlab: wrote {out}/summary.json and one pcap per link")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import sweep
    from .yaml_errors import ConfigError
    try:
        rc = sweep(args.experiment, args.out or _default_out(args.experiment), jobs=args.jobs,
                   retry_failed=args.retry_failed, backend=args.backend)
    except ConfigError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2
    out = args.out or _default_out(args.experiment)
    print(f"sendlab: results in {out}/results.db; `sendlab report {out}` writes the report")
    return rc


def _default_out(experiment: str) -> str:
    from pathlib import Path
    return f"results/{Path(experiment).stem}"


def _cmd_results(args) -> int:
    from .sweep import export
    if not (args.csv or args.parquet):
        print("sendlab: say where: --csv FILE and/or --parquet FILE", file=sys.stderr)
        return 2
    n = export(args.dir, csv_path=args.csv, parquet_path=args.parquet)
    print(f"sendlab: wrote {n} rows")
    return 0


def _cmd_report(args) -> int:
    from .report import write_report
    path = write_report(args.dir)
    print(f"sendlab: report in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("conform", help="run packetdrill scripts against the stack")
    p.add_argument("scripts", nargs="+", help="packetdrill .pkt files")
    p.add_argument("--tolerance-usecs", type=int, default=4000,
                   help="timing tolerance, as packetdrill's --tolerance_usecs (default 4000)")
    p.set_defaults(fn=_cmd_conform)

    p = sub.add_parser("run", help="run a topology's traffic")
    p.add_argument("topology", help="topology YAML file")
    p.add_argument("--backend", default="sim", help="sim (default) or mininet")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a field, e.g. links.1.mtu=1400 (repeatable)")
    p.add_argument("--out", help="output folder (default results/<topology name>)")
    p.add_argument("--seed", type=int, help="override the topology's seed")
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("sweep", help="run every cell of an experiment (resumable)")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--backend", choices=["sim", "mininet"], help="override the experiment's")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (sim: processes)")
    p.add_argument("--out", help="results folder (default results/<experiment file name>)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.set_defaults(fn=_cmd_sweep)

    p = sub.add_parser("results", help="export a sweep's tidy table")
    p.add_argument("dir")
    p.add_argument("--csv", metavar="FILE")
    p.add_argument("--parquet", metavar="FILE")
    p.set_defaults(fn=_cmd_results)

    p = sub.add_parser("report", help="write DIR/report.html with plots from a sweep")
    p.add_argument("dir")
    p.set_defaults(fn=_cmd_report)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="sendlab: %(message)s")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("sendlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
