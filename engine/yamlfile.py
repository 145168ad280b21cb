"""YAML with line numbers: every problem in a config or mapping file is reported as file:line:key.

PyYAML's composer already knows where each node starts; this keeps that knowledge beside
the plain Python data so that a validation error found later (by pydantic, by the mapping
compiler) can name the line of the key at fault.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError, Problem

Key = tuple[Any, ...]


class Located:
    """Plain data from a YAML file plus the line of every key and list item (1-based)."""

    def __init__(self, file: str, data: Any, lines: dict[Key, int], problems: list[Problem] | None = None):
        self.file = file
        self.data = data
        self.lines = lines
        self.problems = problems or []
        """Problems found while loading that do not stop validation (an unset ``${VAR}``)."""

    def line(self, key: Key) -> int | None:
        """The line of ``key`` or, failing that, of its nearest located parent."""
        key = tuple(key)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)

    def problem(self, key: Key, message: str) -> Problem:
        return Problem(self.file, self.line(key), dotted(key), message)


def dotted(key: Key) -> str:
    """``("channels", 0, "source", "port")`` -> ``channels[0].source.port``."""
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load(path: str | Path, *, interpolate: bool = False) -> Located:
    """Load one YAML file; raise ConfigError (with line) if it is not valid YAML or missing.

    Anchors, aliases and merge keys (``<<: *anchor``: the anchored mapping's keys, except those
    given beside it, in the anchor's order) work as in YAML 1.1.

    With ``interpolate``, ``${VAR}`` and ``${VAR:-default}`` in string values are replaced from
    the environment; an unset variable without default is a problem naming the key, kept in
    ``Located.problems`` so that validation goes on and reports everything at once.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        return _parse(file, text, interpolate)
    except RecursionError:  # PyYAML and the walk below recurse per level of nesting
        raise ConfigError([Problem(file, None, "", "nested too deeply to read")]) from None


def _parse(file: str, text: str, interpolate: bool) -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            [Problem(file, mark.line + 1 if mark else None, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from exc
    lines: dict[Key, int] = {(): 1}
    problems: list[Problem] = []
    soft: list[Problem] = []
    constructor = yaml.SafeLoader("")

    def walk(n: yaml.Node | None, key: Key) -> Any:
        if n is None:
            return None
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            explicit: set[Any] = set()
            for k, v in n.value:
                if k.tag == _MERGE:  # <<: *anchor — the anchored mapping's keys, unless given here
                    for src in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                        if not isinstance(src, yaml.MappingNode):
                            problems.append(Problem(file, k.start_mark.line + 1, dotted(key), "<< takes a mapping"))
                            continue
                        for name, value in walk(src, key).items():
                            if name not in explicit:
                                out[name] = value
                    continue
                name = constructor.construct_object(k, deep=True)
                lines[key + (name,)] = k.start_mark.line + 1
                if name in explicit:
                    problems.append(Problem(file, k.start_mark.line + 1, dotted(key + (name,)), "duplicate key"))
                explicit.add(name)
                out[name] = walk(v, key + (name,))
            return out
        if isinstance(n, yaml.SequenceNode):
            items = []
            for i, v in enumerate(n.value):
                lines[key + (i,)] = v.start_mark.line + 1
                items.append(walk(v, key + (i,)))
            return items
        value = constructor.construct_object(n, deep=True)
        if interpolate and isinstance(value, str) and "${" in value:
            value = _interpolate(value, lambda msg: soft.append(Problem(file, n.start_mark.line + 1, dotted(key), msg)))
        return value

    data = walk(node, ())
    if problems:
        raise ConfigError(problems)
    return Located(file, data, lines, soft)


_MERGE = "tag:yaml.org,2002:merge"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: str, report) -> str:
    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        report(f"environment variable {name} is not set and has no default (use ${{{name}:-default}})")
        return ""

    return _VAR.sub(sub, value)
