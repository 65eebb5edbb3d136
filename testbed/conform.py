"""``sendlab conform``: run packetdrill scripts against the stack and report per script."""

from __future__ import annotations

import logging
import sys

from stack.packetdrill.runner import run_script

log = logging.getLogger(__name__)


def conform(paths: list[str], *, tolerance_usecs: int = 4000, verbose: bool = False,
            out=sys.stdout) -> int:
    """Returns the exit status: 0 only if every script passed."""
    passed = failed = 0
    for path in paths:
        result = run_script(path, tolerance_usecs=tolerance_usecs)
        if result.passed:
            passed += 1
            print(f"PASS {path}", file=out)
        else:
            failed += 1
            print(f"FAIL {path}", file=out)
            for line in result.failure.render().splitlines():
                print(f"    {line}", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return 0 if failed == 0 and passed > 0 else 1
