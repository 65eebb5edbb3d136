"""YAML that remembers where everything came from, and configuration errors on one line.

Every configuration error sendlab reports reads::

    FILE:LINE: PATH.TO.FIELD: what is wrong

(the CLI prints it after ``sendlab: `` and exits with status 2). To get there:

- :func:`load_yaml` parses a file with PyYAML's safe loader and records, for every mapping key
  and every sequence item, the line it starts on, in a side table keyed by its path tuple
  (``("links", 1, "mtu") -> 14``). Duplicate keys are errors (PyYAML would keep the last one).
- :func:`apply_overrides` applies ``--set PATH=VALUE`` strings; values that came from an override
  are blamed on it (``--set links.1.mtu=40: links[1].mtu: ...``), not on a line of the file.
- :func:`validation_errors` turns a pydantic ``ValidationError`` into :class:`ConfigError` lines,
  each at the line of its field, or of the nearest ancestor that exists in the file (a missing
  field is reported at the line of the mapping that lacks it).
- :func:`located` lets a validator report an error deeper than the field it validates (a bad
  key inside a dict, or many cross-checks at once), with exact paths.
- :func:`load_model` does all of the above for any pydantic model (topologies, experiments).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple  # a path into the data: ("links", 1, "mtu")

__all__ = [
    "ConfigError", "Source", "Loc", "load_yaml", "load_yaml_text", "apply_overrides",
    "validation_errors", "raise_validation_error", "located", "load_model", "format_path",
    "describe_value",
]


class ConfigError(Exception):
    """One configuration error: ``str(err) == f"{file}:{line}: {path}: {message}"``.

    ``line`` is None when the value came from a ``--set`` override (``file`` then names the
    override) or when the file could not be read; ``path`` is empty for errors about the file as
    a whole (YAML syntax). ``errors`` lists every error found, this one first, for callers that
    want to print them all (one line each).
    """

    def __init__(self, file: str, line: int | None, path: str, message: str,
                 errors: list["ConfigError"] | None = None) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.message = " ".join(str(message).split("\n"))
        self.errors: list[ConfigError] = errors if errors is not None else [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.path, self.message) if part)


# --- paths --------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$")


def format_path(loc: Iterable) -> str:
    """``("links", 1, "mtu") -> "links[1].mtu"``; dict keys with dots (sysctls) stay as they are."""
    out = ""
    for part in loc:
        if isinstance(part, bool):
            part = "true" if part else "false"
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not _PLAIN_KEY.match(text):
                text = repr(text)
            out += ("." if out else "") + text
    return out


def describe_value(value: Any) -> str:
    """A value as a user wrote it in YAML, for messages: 'abc', 40, true, a list, a mapping."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value)


# --- where things came from ---------------------------------------------------------------------

@dataclass
class Source:
    """The file a configuration came from, the line of every path in it, and the overrides."""

    file: str
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)

    def origin(self, loc: Iterable) -> tuple[str, int | None]:
        """(file, line) of ``loc``, or of its nearest ancestor known; an override's own name."""
        loc = tuple(loc)
        for i in range(len(loc), -1, -1):
            prefix = loc[:i]
            if prefix in self.overrides:
                return f"--set {self.overrides[prefix]}", None
            if prefix in self.lines:
                return self.file, self.lines[prefix]
        return self.file, None

    def line_of(self, loc: Iterable) -> int | None:
        return self.origin(loc)[1]

    def error(self, loc: Iterable, message: str,
              cls: type[ConfigError] = ConfigError) -> ConfigError:
        file, line = self.origin(loc)
        return cls(file, line, format_path(loc), message)


# --- loading ------------------------------------------------------------------------------------

_MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(path: str | Path, cls: type[ConfigError] = ConfigError) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file; return ``(data, lines)`` where ``lines[path_tuple]`` is a 1-based line.

    Raises ``cls`` (a :class:`ConfigError`) for unreadable files, YAML syntax errors and
    duplicate keys, each as one line with the line number from the YAML mark.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise cls(file, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise cls(file, None, "", f"cannot read it: {exc}") from None
    return load_yaml_text(text, file, cls)


def load_yaml_text(text: str, file: str = "<string>",
                   cls: type[ConfigError] = ConfigError) -> tuple[Any, dict[Loc, int]]:
    """As :func:`load_yaml`, from a string; ``file`` is the name used in errors."""
    loader = yaml.SafeLoader(text)
    lines: dict[Loc, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): 1}
        lines[()] = node.start_mark.line + 1
        data = _build(loader, node, (), lines, file, cls, 0)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file, cls) from None
    except yaml.YAMLError as exc:
        raise cls(file, None, "", f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Loc, lines: dict, file: str,
           cls: type[ConfigError], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise cls(file, node.start_mark.line + 1, format_path(path[:2]),
                  f"nested more than {_MAX_DEPTH} levels deep (a recursive alias?)")
    if isinstance(node, yaml.MappingNode):
        # YAML merge keys (<<: *anchor): flatten_mapping puts the merged pairs first, in place;
        # remember which keys the mapping has of its own (an alias visits it again, flattened).
        own_keys = loader.__dict__.setdefault("_sendlab_own_keys", {})
        if id(node) not in own_keys:
            own_keys[id(node)] = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
        own = own_keys[id(node)]
        loader.flatten_mapping(node)
        out: dict = {}
        merged: set = set()
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise cls(file, line, format_path(path),
                          "a key must be a plain name, not a list or mapping")
            key = loader.construct_object(key_node, deep=True)
            sub = path + (key,)
            if key in out and id(key_node) in own and key not in merged:
                raise cls(file, line, format_path(sub),
                          f"given twice (first at line {lines[sub]}); remove one")
            if key in out:  # later pairs override merged ones, as PyYAML orders them
                for known in [k for k in lines if k[:len(sub)] == sub]:
                    del lines[known]
            if id(key_node) in own:
                merged.discard(key)
            else:
                merged.add(key)
            lines[sub] = line
            out[key] = _build(loader, value_node, sub, lines, file, cls, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = path + (i,)
            lines[sub] = item.start_mark.line + 1
            items.append(_build(loader, item, sub, lines, file, cls, depth + 1))
        return items
    return loader.construct_object(node, deep=True)


def _syntax_error(exc: yaml.MarkedYAMLError, file: str, cls: type[ConfigError]) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    problem = (exc.problem or exc.context or "cannot parse").strip()
    message = f"YAML syntax error: {problem}"
    if mark:
        message += f" at column {mark.column + 1}"
    if exc.context and exc.problem and exc.context_mark and exc.context_mark.line + 1 != line:
        message += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    if "expected <block end>" in problem:
        message += "; check the indentation"
    if "'\\t'" in problem:
        message += "; indent with spaces, not tabs"
    return cls(file, line, "", message)


# --- overrides (--set PATH=VALUE) ---------------------------------------------------------------

def apply_overrides(data: Any, source: Source, overrides: Sequence[str],
                    free_keys: Iterable[str] = ("sysctls",),
                    cls: type[ConfigError] = ConfigError) -> Any:
    """Apply ``PATH=VALUE`` overrides to parsed data; return the (possibly new) root.

    PATH is dotted: ``links.1.mtu``, ``links[1].mtu`` or ``hosts.h1.stack``; under a key in
    ``free_keys`` the rest of the path is one key, so sysctl names keep their dots
    (``hosts.h1.sysctls.net.ipv4.tcp_autocorking=0``). VALUE is parsed as YAML (``1280``,
    ``true``, ``linux``, ``[h1, r1]``). Missing mappings on the way are created; errors name the
    override. Values set here are blamed on the override in later validation errors.
    """
    free = set(free_keys)
    for text in overrides:
        where = f"--set {text}"
        if "=" not in text:
            raise cls(where, None, "", "expected PATH=VALUE, e.g. links.0.mtu=1280")
        path_text, value_text = text.split("=", 1)
        parts = re.sub(r"\[(\d+)\]", r".\1", path_text.strip()).split(".")
        if not path_text.strip() or any(not p for p in parts):
            raise cls(where, None, "", f"{path_text.strip()!r} is not a path like links.0.mtu")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise cls(where, None, path_text.strip(),
                      f"cannot parse the value: {problem}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise cls(where, None, "", "the file does not hold a mapping to set fields in")
        loc = _set_path(data, parts, value, free, where, cls)
        n = len(loc)
        for known in [k for k in source.lines if len(k) > n and k[:n] == loc]:
            del source.lines[known]
        for known in [k for k in source.overrides if len(k) > n and k[:n] == loc]:
            del source.overrides[known]
        source.overrides[loc] = text
    return data


def _set_path(root: dict, parts: list[str], value: Any, free: set, where: str,
              cls: type[ConfigError]) -> Loc:
    node: Any = root
    loc: list = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if loc and loc[-1] in free and isinstance(node, dict):
            part = ".".join(parts[i:])
            i = len(parts) - 1
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise cls(where, None, format_path(loc),
                          f"this is a list; give an item number, e.g. {format_path(loc)}.0")
            key: Any = int(part)
            if key >= len(node):
                raise cls(where, None, format_path(loc + [key]),
                          f"{format_path(loc)} has {len(node)} item(s), numbered from 0")
        elif isinstance(node, dict):
            key = part
        else:
            raise cls(where, None, format_path(loc),
                      f"this is {describe_value(node)}, which has no field {part!r}")
        loc.append(key)
        if last:
            node[key] = value
        else:
            child = node[key] if (isinstance(node, list) or key in node) else None
            if child is None:
                child = {}
                node[key] = child
            node = child
        i += 1
    return tuple(loc)


# --- pydantic errors -> lines ------------------------------------------------------------------

_LOCATED = "located"


def located(*errors: tuple[Loc, str]) -> PydanticCustomError:
    """An error for a validator to raise, placed below the field being validated.

    Each ``(sub_loc, message)`` is reported at the validated value's path + ``sub_loc``, so a
    validator of ``sysctls`` can blame one key, and a model validator can report many
    cross-checks at once (``raise located((("links", 2, "ends", 1), "unknown node 'h3'"), ...)``).
    """
    errs = [(tuple(loc), str(msg)) for loc, msg in errors]
    return PydanticCustomError(_LOCATED, "{summary}",
                               {"errors": errs, "summary": "; ".join(m for _, m in errs)})


_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "text", "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)", "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list", "tuple_type": "a list",
}


def _translate(err: dict, model: type | None) -> list[tuple[Loc, str]]:
    kind = err["type"]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == _LOCATED:
        return [(loc + tuple(sub), msg) for sub, msg in ctx["errors"]]
    if loc and loc[-1] == "[key]":
        return [(loc[:-2] + (value,), f"the name {describe_value(value)} must be text; quote it")]
    if kind == "missing":
        return [(loc, "required field is missing")]
    if kind == "extra_forbidden":
        return [(loc, _unknown_field(loc, model))]
    if kind == "literal_error":
        return [(loc, f"{describe_value(value)} is not allowed; expected {ctx.get('expected')}")]
    if kind == "greater_than_equal":
        return [(loc, f"{describe_value(value)} is below the minimum, {_num(ctx.get('ge'))}")]
    if kind == "less_than_equal":
        return [(loc, f"{describe_value(value)} is above the maximum, {_num(ctx.get('le'))}")]
    if kind == "greater_than":
        return [(loc, f"{describe_value(value)} must be greater than {_num(ctx.get('gt'))}")]
    if kind == "less_than":
        return [(loc, f"{describe_value(value)} must be less than {_num(ctx.get('lt'))}")]
    if kind in _TYPE_WORDS:
        return [(loc, f"expected {_TYPE_WORDS[kind]}, got {describe_value(value)}")]
    msg = err.get("msg", "invalid")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return [(loc, msg)]


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _unknown_field(loc: Loc, model: type | None) -> str:
    name = str(loc[-1]) if loc else "?"
    allowed = _fields_at(model, loc[:-1]) if model is not None else None
    if not allowed:
        return f"unknown field {name!r}"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    return f"unknown field {name!r}; expected one of: {', '.join(allowed)}"


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            pick = [a for a in args if _is_model(_unwrap(a)) or typing.get_origin(_unwrap(a)) in
                    (dict, list, tuple)]
            tp = pick[0] if pick else args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _fields_at(model: Any, loc: Loc) -> list[str] | None:
    """The keys a model accepts at ``loc`` (by alias), walking models, dicts and lists."""
    tp = model
    for part in loc:
        tp = _unwrap(tp)
        if _is_model(tp):
            found = None
            for name, info in tp.model_fields.items():
                if part in (name, info.alias):
                    found = info.annotation
            if found is None:
                return None
            tp = found
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    if not _is_model(tp):
        return None
    return [info.alias or name for name, info in tp.model_fields.items()]


def validation_errors(exc: ValidationError, source: Source, model: type | None = None,
                      cls: type[ConfigError] = ConfigError) -> list[ConfigError]:
    """One :class:`ConfigError` per problem in ``exc``, sorted by line (overrides first)."""
    out: list[ConfigError] = []
    for err in exc.errors(include_url=False):
        for loc, msg in _translate(err, model):
            out.append(source.error(loc, msg, cls))
    out.sort(key=lambda e: (e.line is not None, e.line or 0))
    return out


def raise_validation_error(exc: ValidationError, source: Source, model: type | None = None,
                           cls: type[ConfigError] = ConfigError) -> typing.NoReturn:
    errors = validation_errors(exc, source, model, cls)
    if not errors:  # cannot happen; keep the message rather than lose it
        errors = [cls(source.file, None, "", str(exc).splitlines()[0])]
    first = errors[0]
    first.errors = errors
    raise first from None


def load_model(path: str | Path, model: type[BaseModel], overrides: Sequence[str] = (), *,
               cls: type[ConfigError] = ConfigError, free_keys: Iterable[str] = ("sysctls",),
               what: str = "configuration",
               prepare: typing.Callable[[Any], Any] | None = None) -> tuple[Any, Source]:
    """Load ``path``, apply ``overrides``, validate as ``model``; return ``(instance, source)``.

    ``prepare`` may rewrite the parsed data before the overrides (expand shorthands, so that
    ``--set`` can reach into them); it must keep the paths the line table knows.

    The model's validators receive ``{"source": source}`` as validation context, so they can
    mention the line of another field in a message. Every error is a ``cls`` on one line.
    """
    data, lines = load_yaml(path, cls)
    source = Source(str(path), lines)
    if prepare is not None:
        data = prepare(data)
    data = apply_overrides(data, source, overrides, free_keys, cls)
    if data is None:
        raise cls(source.file, 1, "", f"the file is empty; it should hold a {what}")
    if not isinstance(data, dict):
        raise source.error((), "expected a mapping of fields at the top, got "
                           f"{describe_value(data)}", cls)
    try:
        obj = model.model_validate(data, context={"source": source})
    except ValidationError as exc:
        raise_validation_error(exc, source, model, cls)
    return obj, source
