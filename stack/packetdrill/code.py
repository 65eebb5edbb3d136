"""`%{ ... }%` code blocks: Python run against the socket's TCP_INFO at that moment.

packetdrill hands these snippets to a Python interpreter with every ``tcpi_*`` field of
``struct tcp_info`` bound as a variable (``%{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%``);
snippets share one namespace, so a variable one sets (``cwnd = 10``) is there for the next.
Here they run on the stack's ``tcp_info``, checked first against a small grammar: assertions,
assignments, arithmetic, comparisons, ``if``, and calls to a few harmless builtins. No
attributes, imports, lambdas or dunder names, so a script cannot reach beyond its numbers.
"""

from __future__ import annotations

import ast

from ..constants import TCP_INFINITE_SSTHRESH

__all__ = ["CodeError", "CodeRunner"]

# Names packetdrill's snippets may use besides the tcpi_* fields (include/uapi/linux/tcp.h).
CONSTANTS = {
    "TCP_CA_Open": 0, "TCP_CA_Disorder": 1, "TCP_CA_CWR": 2, "TCP_CA_Recovery": 3,
    "TCP_CA_Loss": 4, "TCP_INFINITE_SSTHRESH": TCP_INFINITE_SSTHRESH,
    "TCPI_OPT_TIMESTAMPS": 1, "TCPI_OPT_SACK": 2, "TCPI_OPT_WSCALE": 4, "TCPI_OPT_ECN": 8,
    "TCPI_OPT_ECN_SEEN": 16, "TCPI_OPT_SYN_DATA": 32, "True": True, "False": False,
    "None": None,
}

_CALLABLE = {"abs": abs, "min": min, "max": max, "len": len, "int": int, "float": float,
             "str": str, "round": round, "range": range, "bool": bool}

_NODES = (
    ast.Module, ast.Expr, ast.Assert, ast.Assign, ast.AugAssign, ast.If, ast.Pass,
    ast.Name, ast.Load, ast.Store, ast.Constant, ast.Compare, ast.BinOp, ast.BoolOp,
    ast.UnaryOp, ast.IfExp, ast.Call, ast.Tuple, ast.List, ast.Subscript, ast.Slice,
    ast.JoinedStr, ast.FormattedValue, ast.operator, ast.cmpop, ast.boolop, ast.unaryop,
    ast.expr_context,
)


class CodeError(Exception):
    """A snippet that is not allowed, does not compile, or fails; the message says which."""


def _check(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise CodeError(f"{type(node).__name__} is not allowed in a code block")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise CodeError(f"name {node.id!r} is not allowed in a code block")
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in _CALLABLE and name != "print":
                raise CodeError("only print() and simple builtins "
                                f"({', '.join(sorted(_CALLABLE))}) may be called")
            if node.keywords:
                raise CodeError("keyword arguments are not allowed in a code block")


class CodeRunner:
    """Runs a script's snippets in one shared namespace."""

    def __init__(self) -> None:
        self.namespace: dict = {}
        self.printed: list[str] = []

    def run(self, code: str, tcp_info: dict) -> None:
        source = _dedent(code)
        try:
            tree = ast.parse(source, mode="exec")
        except SyntaxError as exc:
            raise CodeError(f"Python syntax error: {exc.msg}") from None
        _check(tree)
        builtins = dict(_CALLABLE, print=self._print)
        self.namespace.update(CONSTANTS)
        self.namespace.update(tcp_info)
        try:
            exec(compile(tree, "<code block>", "exec"),  # noqa: S102 - checked grammar above
                 {"__builtins__": builtins}, self.namespace)
        except AssertionError as exc:
            raise CodeError(f"assertion failed: {source.strip()}"
                            + (f" ({exc})" if str(exc) else "")) from None
        except Exception as exc:  # NameError for an unknown tcpi_ field, ZeroDivisionError...
            raise CodeError(f"{type(exc).__name__}: {exc}") from None

    def _print(self, *args) -> None:
        self.printed.append(" ".join(str(a) for a in args))


def _dedent(code: str) -> str:
    lines = code.split("\n")
    body = [ln for ln in lines if ln.strip()]
    indent = min((len(ln) - len(ln.lstrip()) for ln in body), default=0)
    return "\n".join(ln[indent:] if ln.strip() else "" for ln in lines)
