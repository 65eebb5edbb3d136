"""What the decision trace costs: the core with tracing off against the same core without hooks.

One run measures, side by side and interleaved (A B C, B C A, C A B, ... so drift and other
load on a shared machine hit every variant alike):

- ``no hooks``    : a copy of ``stack/`` with every trace hook removed (an AST pass deletes the
                    ``if ... tracer is not None:`` blocks, ``tracer = tp.host.tracer`` and any
                    ``host.trace_*()`` call), imported as the package ``stack_nohooks``: the
                    core as it would be had the trace never existed;
- ``tracing off`` : ``stack/`` as it is, no tracer attached (the default);
- ``tracing on``  : ``stack/`` with a ``stack.trace.Tracer`` on both hosts.

Workloads, timed by the CPU time of this process (time.process_time: on a shared machine the
time spent descheduled does not count) and by the wall clock; best and median of N:

- bulk  : 2 hosts, 10 Gbit/s, 50 us one way, 1 MB send() calls, SO_SNDBUF 1 MB (as bench_core [1]);
- small : 100-byte writes 20 us apart with Nagle on (every write runs tcp_sendmsg, tcp_push and
          a tcp_write_xmit decision, most of them holds: the paths with the most hook sites).

Next to the timings, two counts that do not depend on machine load, on one smaller run of each
workload: the Python and builtin function calls (sys.setprofile), which with tracing off must
equal the no-hooks copy's exactly since a disabled hook is an attribute test and no call; and
the bytecode instructions executed (sys.settrace with opcode events), whose difference is
exactly what the disabled hooks cost.

    PYTHONPATH=. python3 benchmarks/bench_trace.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

A_ADDR, B_ADDR, PORT = "10.0.0.1", "10.0.0.2", 5000
RATE = 10e9
DELAY = 50e-6


# --- the copy without hooks ------------------------------------------------------------------

def _is_tracer_test(node) -> bool:
    """``X.tracer is not None`` or ``tracer is not None``."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and
            isinstance(node.ops[0], ast.IsNot) and isinstance(node.comparators[0], ast.Constant)
            and node.comparators[0].value is None):
        return False
    left = node.left
    return (isinstance(left, ast.Name) and left.id == "tracer") or \
        (isinstance(left, ast.Attribute) and left.attr == "tracer")


class _StripHooks(ast.NodeTransformer):
    def __init__(self) -> None:
        self.removed = 0

    def _body(self, body):
        out = []
        for stmt in body:
            stmt = self.visit(stmt)
            if stmt is None:
                self.removed += 1
                continue
            out.append(stmt)
        return out or [ast.Pass()]

    def generic_visit(self, node):
        for field in ("body", "orelse", "finalbody"):
            value = getattr(node, field, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, self._body(value))
        if hasattr(node, "handlers"):
            node.handlers = [self.visit(h) for h in node.handlers]
        return node

    def visit_If(self, node):
        if _is_tracer_test(node.test) and not node.orelse:
            return None
        return self.generic_visit(node)

    def visit_Assign(self, node):
        if (len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and
                node.targets[0].id == "tracer" and isinstance(node.value, ast.Attribute) and
                node.value.attr == "tracer"):
            return None
        return node

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                call.func.attr.startswith("trace_"):
            return None
        return node


def build_nohooks_copy(dest: Path) -> tuple[str, int]:
    """Write stack/ without its trace hooks to dest/stack_nohooks; returns (name, hooks removed)."""
    src = ROOT / "stack"
    pkg = dest / "stack_nohooks"
    removed = 0
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if rel.parts[0] == "packetdrill":
            continue
        out = pkg / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        tree = ast.parse(path.read_text(), str(path))
        stripper = _StripHooks()
        tree = stripper.visit(tree)
        removed += stripper.removed
        out.write_text(ast.unparse(ast.fix_missing_locations(tree)) + "\n")
    return "stack_nohooks", removed


# --- workloads --------------------------------------------------------------------------------

def _pair(pkg, trace: bool):
    VirtualNetwork = pkg.runtime.VirtualNetwork
    net = VirtualNetwork(seed=1)
    a = net.add_host(A_ADDR, rate_bps=RATE)
    b = net.add_host(B_ADDR, rate_bps=RATE)
    net.connect(a, b, delay_s=DELAY)
    if trace:
        a.tracer = pkg.trace.Tracer()
        b.tracer = pkg.trace.Tracer()
    return net, a, b


def _server(net, b, c_pkg, st):
    s = net.socket(b)
    yield s.bind(("", PORT))
    yield s.listen()
    c = yield s.accept()
    total = 0
    while True:
        d = yield c.recv(1 << 20)
        if not d:
            break
        total += len(d)
    st["received"] = total
    yield c.close()


def bulk(pkg, nbytes: int, trace: bool = False) -> dict:
    const = pkg.constants
    net, a, b = _pair(pkg, trace)
    st: dict = {}

    def client():
        s = net.socket(a)
        yield s.setsockopt(const.SOL_SOCKET, const.SO_SNDBUFFORCE, 1 << 19)
        yield s.connect((B_ADDR, PORT))
        data = memoryview(bytes(1 << 20))
        left = nbytes
        while left:
            left -= (yield s.send(data[:min(left, 1 << 20)]))
        yield s.close()

    c0, t0 = time.process_time(), time.perf_counter()
    net.spawn(b, _server(net, b, pkg, st))
    net.spawn(a, client())
    net.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert st["received"] == nbytes
    return {"wall": wall, "cpu": cpu, "events": len(a.tracer.events) if trace else 0}


def small(pkg, nwrites: int, trace: bool = False) -> dict:
    net, a, b = _pair(pkg, trace)
    Sleep = pkg.runtime.Sleep
    st: dict = {}

    def client():
        s = net.socket(a)
        yield s.connect((B_ADDR, PORT))
        data = bytes(100)
        for _ in range(nwrites):
            yield s.send(data)
            yield Sleep(20e-6)
        yield s.close()

    c0, t0 = time.process_time(), time.perf_counter()
    net.spawn(b, _server(net, b, pkg, st))
    net.spawn(a, client())
    net.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert st["received"] == nwrites * 100
    return {"wall": wall, "cpu": cpu, "events": len(a.tracer.events) if trace else 0}


class _Calls:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, frame, event, arg) -> None:
        if event == "call" or event == "c_call":
            self.n += 1


def count_calls(fn) -> int:
    counter = _Calls()
    sys.setprofile(counter)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counter.n


def count_opcodes(fn) -> int:
    """Bytecode instructions executed by fn() (every Python frame, generators included)."""
    n = 0

    def trace(frame, event, arg):
        nonlocal n
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            n += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


# --- main -------------------------------------------------------------------------------------

def _hooks_left(pkg_dir: Path) -> int:
    """Tracer tests still in the no-hooks copy (0 when the strip worked)."""
    n = 0
    for path in pkg_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and _is_tracer_test(node.test):
                n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads, fewer repetitions")
    ap.add_argument("--reps", type=int, help="repetitions per variant (default 15, quick 3)")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 15)
    bulk_bytes = (1 if args.quick else 4) << 20
    nsmall = 500 if args.quick else 3000

    tmp = Path(tempfile.mkdtemp(prefix="sendlab-bench-trace-"))
    try:
        name, removed = build_nohooks_copy(tmp)
        sys.path.insert(0, str(tmp))
        import stack
        import stack.runtime
        import stack.trace
        nohooks = importlib.import_module(name)
        for sub in ("runtime", "trace", "constants"):
            importlib.import_module(f"{name}.{sub}")
        variants = [("no hooks", nohooks, False), ("tracing off", stack, False),
                    ("tracing on", stack, True)]
        workloads = [("bulk", f"{bulk_bytes >> 20} MB in 1 MB send()s, 10 Gbit/s, 50 us",
                      lambda pkg, tr: bulk(pkg, bulk_bytes, tr),
                      lambda pkg, tr: bulk(pkg, 256 << 10, tr)),
                     ("small", f"{nsmall} x 100 B writes 20 us apart, Nagle on",
                      lambda pkg, tr: small(pkg, nsmall, tr),
                      lambda pkg, tr: small(pkg, 200, tr))]
        print(f"sendlab trace overhead (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}; best and median of {reps}, interleaved)")
        print(f"  no-hooks copy: {removed} hook statements removed from stack/, "
              f"{_hooks_left(tmp / name)} tracer tests left")
        summary = []
        for wname, desc, fn, small_fn in workloads:
            for _, pkg, tr in variants:      # warm up imports and caches
                fn(pkg, tr)
            cpu = {v[0]: [] for v in variants}
            wall = {v[0]: [] for v in variants}
            events = 0
            for r in range(reps):
                order = variants[r % 3:] + variants[:r % 3]
                for vname, pkg, tr in order:
                    gc.collect()
                    res = fn(pkg, tr)
                    cpu[vname].append(res["cpu"])
                    wall[vname].append(res["wall"])
                    events = max(events, res["events"])
            calls = {vname: count_calls(lambda p=pkg, t=tr: small_fn(p, t))
                     for vname, pkg, tr in variants}
            ops = {vname: count_opcodes(lambda p=pkg, t=tr: small_fn(p, t))
                   for vname, pkg, tr in variants}
            print(f"\n[{wname}] {desc}")
            print(f"  {'variant':<12}{'cpu best':>10}{'median':>9}{'wall best':>11}"
                  f"{'vs no hooks: cpu best':>23}{'median':>9}{'wall best':>11}")
            b_cpu, m_cpu, b_wall = min(cpu["no hooks"]), statistics.median(cpu["no hooks"]), \
                min(wall["no hooks"])
            for vname, _, _ in variants:
                bc, mc, bw = min(cpu[vname]), statistics.median(cpu[vname]), min(wall[vname])
                print(f"  {vname:<12}{bc:>10.4f}{mc:>9.4f}{bw:>11.4f}"
                      f"{(bc / b_cpu - 1) * 100:>+22.2f}%{(mc / m_cpu - 1) * 100:>+8.2f}%"
                      f"{(bw / b_wall - 1) * 100:>+10.2f}%")
            print(f"  counted on a smaller run: {'variant':<12}{'calls':>10}{'bytecodes':>12}"
                  f"{'vs no hooks':>13}")
            for vname, _, _ in variants:
                print(f"  {'':<26}{vname:<12}{calls[vname]:>10}{ops[vname]:>12}"
                      f"{(ops[vname] / ops['no hooks'] - 1) * 100:>+12.3f}%")
            print(f"  tracing on recorded {events} events on the sender")
            summary.append((wname, (min(cpu["tracing off"]) / b_cpu - 1) * 100,
                            (ops["tracing off"] / ops["no hooks"] - 1) * 100,
                            calls["tracing off"] - calls["no hooks"]))
        print("\noverhead of the disabled trace (target: within 3 %):")
        for wname, cpu_pct, op_pct, dcalls in summary:
            print(f"  {wname:<6} cpu time {cpu_pct:+.2f} %   bytecodes {op_pct:+.3f} %   "
                  f"extra function calls {dcalls}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
