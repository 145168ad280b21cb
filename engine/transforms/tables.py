"""Value tables: ``mappings/tables/<name>.yaml`` translate codes (HL7 sex ``F`` -> ``female``).

File shape (the table's name is the file name without ``.yaml``)::

    description: HL7 table 0001 administrative sex -> store codes
    values:                  # code as sent -> value stored (text, number, true/false or null)
      F: female
      M: male
    on_unknown: default      # error | omit | keep | default   (what a code not listed does)
    default: unknown         # the value stored when on_unknown is default

``on_unknown``: ``error`` fails the message (MappingError, naming the table, never the code),
``omit`` leaves the column out (the store keeps what it has), ``keep`` stores the code as
sent, ``default`` stores ``default``. Codes are matched exactly, after trimming spaces.
An empty value is not looked up (the column stays absent), an HL7 null stays null.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.transforms.build import Build
from engine.transforms.values import MISSING, ValueProblem
from engine.yamlfile import load

POLICIES = ("error", "omit", "keep", "default")


@dataclass(frozen=True)
class Table:
    name: str
    values: dict[str, Any]
    on_unknown: str = "error"
    default: Any = None

    def lookup(self, code: Any) -> Any:
        """Translate one code; MISSING/None pass through; the unknown policy applies otherwise."""
        if code is MISSING or code is None:
            return code
        code = code.strip() if isinstance(code, str) else str(code)
        found = self.values.get(code, MISSING)
        if found is not MISSING:
            return found
        policy = self.on_unknown
        if policy == "omit":
            return MISSING
        if policy == "keep":
            return code
        if policy == "default":
            return self.default
        raise ValueProblem(f"code not in table {self.name!r} (its on_unknown is error)")


def load_table(path: Path) -> Table:
    """Load and check one table file; ConfigError listing every problem."""
    src = load(path)
    b = Build(src)
    data = src.data
    if not isinstance(data, dict):
        b.problem((), "expected a table with values:, on_unknown: and (for on_unknown: default) default:")
        raise ConfigError(b.problems)
    b.keys(data, (), ("description", "values", "on_unknown", "default"), "a table")
    values: dict[str, Any] = {}
    raw = data.get("values")
    if not isinstance(raw, dict) or not raw:
        b.problem(("values",), "expected a non-empty mapping of code: value")
        raw = {}
    for code, value in raw.items():
        if isinstance(code, (bool, float)) or code is None:
            b.problem(("values", code), f"write the code {code!r} in quotes (YAML reads it as {type(code).__name__})")
            continue
        if isinstance(value, (dict, list)):
            b.problem(("values", code), "a table value must be text, a number, true/false or null")
            continue
        values[str(code)] = value
    policy = data.get("on_unknown", "error")
    if policy not in POLICIES:
        b.problem(("on_unknown",), f"on_unknown must be one of: {', '.join(POLICIES)}")
    if policy == "default" and "default" not in data:
        b.problem(("on_unknown",), "on_unknown: default needs a default: value")
    if policy != "default" and "default" in data:
        b.problem(("default",), "default: is used only with on_unknown: default")
    if b.problems:
        raise ConfigError(b.problems)
    return Table(path.stem, values, policy, data.get("default"))


class Tables:
    """The tables of one directory, each loaded on first use and kept."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self._loaded: dict[str, Table] = {}

    def get(self, name: str) -> Table:
        """The table ``name``; KeyError when no such file, ConfigError when it is invalid."""
        if name in self._loaded:
            return self._loaded[name]
        if self.directory is None:
            raise KeyError(name)
        path = self.directory / f"{name}.yaml"
        if not name.replace("_", "").replace("-", "").isalnum() or not path.is_file():
            raise KeyError(name)
        table = load_table(path)
        self._loaded[name] = table
        return table

    def known(self) -> list[str]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.yaml"))
