"""The ``sendlab`` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_conform(args) -> int:
    from .conform import conform
    return conform(args.scripts, tolerance_usecs=args.tolerance_usecs)


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.out, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("conform", help="run packetdrill scripts against the stack")
    p.add_argument("scripts", nargs="+", help="packetdrill .pkt files")
    p.add_argument("--tolerance-usecs", type=int, default=4000,
                   help="timing tolerance, as packetdrill's --tolerance_usecs (default 4000)")
    p.set_defaults(fn=_cmd_conform)

    p = sub.add_parser("demo", help="a simulated transfer with a small report")
    p.add_argument("--out", default="results/demo", help="output folder")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=_cmd_demo)
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
