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
    if args.workers and args.backend != "mininet":
        print("sendlab: --workers splits a topology over machines with --backend mininet; a "
              "sim run stays on this machine (a sweep's cells fan out with `sendlab sweep "
              "--workers`)", file=sys.stderr)
        return 2
    if args.workers:
        return _run_split(args, topo)
    if args.backend != "sim":
        return _run_emulated(args, topo)
    out = args.out or f"results/{topo.name}"
    summary = run_sim(topo, out, seed=args.seed, trace=args.trace)
    print(format_table(summary))
    traces = ", trace_<flow>.jsonl per flow" if args.trace else ""
    print(f"sendlab: wrote {out}/summary.json{traces} and one pcap per link")
    return 0


def _cmd_trace(args) -> int:
    from .trace_cli import run
    return run(args)


def _run_emulated(args, topo) -> int:
    """``--backend mininet``: namespaces, OVS routers, shaped links (testbed/emulate.py)."""
    from .emulate import EmulationError, available, run_emulated
    from .run import format_table
    reason = available(topo)
    if reason:
        print(f"sendlab: the mininet backend cannot run here: {reason}", file=sys.stderr)
        return 2
    out = args.out or f"results/{topo.name}"
    try:
        summary = run_emulated(topo, out, seed=args.seed, trace=args.trace)
    except EmulationError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 1
    print(format_table(summary))
    traces = ", trace_<flow>.jsonl per flow" if args.trace else ""
    print(f"sendlab: wrote {out}/summary.json{traces} and one pcap per link")
    return 0


def _run_split(args, topo) -> int:
    """``--backend mininet --workers FILE``: the topology split over SSH workers."""
    from .remote import RemoteError
    from .run import format_table
    from .split import UnderlayMtuError
    from .split_run import run_split
    from .emulate import EmulationError
    from .yaml_errors import ConfigError
    out = args.out or f"results/{topo.name}"
    try:
        summary = run_split(topo, args.topology, args.set or [], args.workers, out,
                            seed=args.seed, trace=args.trace,
                            accept_new=args.accept_new_host_keys,
                            say=lambda m: print(f"sendlab: {m}", file=sys.stderr))
    except ConfigError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2
    except UnderlayMtuError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2
    except (EmulationError, RemoteError) as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 1
    print(format_table(summary))
    traces = ", trace_<flow>.jsonl per flow" if args.trace else ""
    print(f"sendlab: wrote {out}/summary.json{traces}, one pcap per link and each worker's "
          f"files under {out}/parts/")
    return 0


def _cmd_clean(args) -> int:
    """Remove what killed ``--backend mininet`` runs left, by their records only."""
    from .emulate import clean
    return clean(args.records or None, prefix=args.prefix, force=args.force)


def _cmd_sweep(args) -> int:
    from .sweep import sweep
    from .yaml_errors import ConfigError
    if args.workers and args.jobs != 1:
        print("sendlab: --jobs is for local sweeps; with --workers each worker's slots say "
              "how many cells it runs at once", file=sys.stderr)
        return 2
    if args.cell_timeout is not None and args.cell_timeout <= 0:
        print("sendlab: --cell-timeout must be more than 0 seconds", file=sys.stderr)
        return 2
    if not args.workers and (args.cell_timeout is not None or args.accept_new_host_keys):
        print("sendlab: --cell-timeout and --accept-new-host-keys go with --workers",
              file=sys.stderr)
        return 2
    try:
        rc = sweep(args.experiment, args.out or _default_out(args.experiment), jobs=args.jobs,
                   retry_failed=args.retry_failed, backend=args.backend, workers=args.workers,
                   cell_timeout_s=args.cell_timeout,
                   accept_new_host_keys=args.accept_new_host_keys)
    except ConfigError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2
    out = args.out or _default_out(args.experiment)
    print(f"sendlab: results in {out}/results.db; `sendlab report {out}` writes the report")
    return rc


def _cmd_workers_check(args) -> int:
    from .workers import check
    from .yaml_errors import ConfigError
    try:
        return check(args.workers_file, accept_new=args.accept_new_host_keys)
    except ConfigError as err:
        print(f"sendlab: {err}", file=sys.stderr)
        return 2


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
    p.add_argument("--trace", action="store_true",
                   help="write each flow's send-path decision trace (trace_<flow>.jsonl) and "
                        "held_s_by_reason in summary.json")
    p.add_argument("--workers", metavar="FILE",
                   help="with --backend mininet: split the topology over the SSH workers this "
                        "YAML file lists (the topology's placement, completed to cut few "
                        "links; crossing links become VXLAN tunnels)")
    p.add_argument("--accept-new-host-keys", action="store_true",
                   help="with --workers: add unknown worker host keys to known_hosts (changed "
                        "keys are always refused)")
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("clean", help="remove the leftovers of killed emulated runs (by their "
                                     "records: namespaces, processes, OVS instances)")
    p.add_argument("records", nargs="*", help="record files (default: every stale record "
                                               "under the temporary directory)")
    p.add_argument("--prefix", help="only the run with this prefix (e.g. sl1a2b)")
    p.add_argument("--force", action="store_true",
                   help="also records whose run still seems to be running")
    p.set_defaults(fn=_cmd_clean)

    from .trace_cli import build_parser as _trace_parser
    p = _trace_parser(sub.add_parser("trace", help="print a decision trace as a timeline"))
    p.set_defaults(fn=_cmd_trace)

    p = sub.add_parser("sweep", help="run every cell of an experiment (resumable)")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--backend", choices=["sim", "mininet"], help="override the experiment's")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (sim: processes)")
    p.add_argument("--out", help="results folder (default results/<experiment file name>)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--workers", metavar="FILE",
                   help="run the cells on the SSH workers this YAML file lists")
    p.add_argument("--cell-timeout", type=float, metavar="S",
                   help="with --workers: a cell with no result after S seconds is lost and "
                        "runs again elsewhere (default 10 x the longest cell so far, >= 30 s)")
    p.add_argument("--accept-new-host-keys", action="store_true",
                   help="with --workers: add unknown worker host keys to known_hosts "
                        "(changed keys are still refused)")
    p.set_defaults(fn=_cmd_sweep)

    p = sub.add_parser("workers", help="SSH workers for sweeps")
    wsub = p.add_subparsers(dest="workers_command", required=True)
    w = wsub.add_parser("check", help="connect to every worker; print versions, kernel "
                                      "features, root")
    w.add_argument("workers_file", help="workers YAML file")
    w.add_argument("--accept-new-host-keys", action="store_true",
                   help="add unknown host keys to known_hosts (changed keys are still refused)")
    w.set_defaults(fn=_cmd_workers_check)

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
    if not args.verbose:  # paramiko logs every broken connection; ours say what it meant
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("sendlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
