"""Shared load-time helpers: collect every problem of a mapping file with its line and key.

A :class:`Build` walks plain YAML data (from :func:`engine.yamlfile.load`) and records each
problem as a :class:`~engine.errors.Problem` located by file, line and dotted key; the caller
raises one ConfigError listing all of them at the end. Compiled pieces that had a problem are
replaced by harmless placeholders, so compilation continues and finds the next problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.errors import Problem
from engine.formats import fhir, x12
from engine.formats.hl7 import parse_path
from engine.formats.hl7_segments import unknown_segment
from engine.yamlfile import Key, Located, dotted

SCOPED = "<groups>"
"""In :attr:`Build.reading`: the expression reads the rule's groups themselves."""


class Build:
    """Problem collector for one file (``src`` may be None for a spec that is not from a file)."""

    def __init__(self, src: Located | None = None, file: str = ""):
        self.src = src
        self.file = src.file if src is not None else file
        self.problems: list[Problem] = []
        self.format = "hl7v2"
        """What paths read: ``hl7v2`` (PID-5.1), ``x12`` (CLP-01, DTM*405-02) or ``fhir`` (a FHIRPath,
        ``Patient.name.family``: :mod:`engine.formats.fhir`); a mapping's ``format:``."""
        self.walks: tuple[str, ...] = ()
        """The ``for_each`` segments of the HL7 v2 rule whose fields and conditions compile now:
        their paths to those segments read the rule's own groups straight
        (:func:`engine.transforms.reader.values_reader`)."""
        self.reading: list[set[str]] = []
        """While a ``define`` compiles, what it reads: the segments of its HL7 paths, and SCOPED
        when it reads its groups (an ordinal, ``own``): see Compiler.define."""

    def problem(self, key: Key, message: str) -> None:
        if self.src is not None:
            self.problems.append(self.src.problem(key, message))
        else:
            self.problems.append(Problem(self.file, None, dotted(key), message))

    def keys(self, spec: dict, key: Key, allowed: Iterable[str], what: str) -> bool:
        """Report every key of ``spec`` not in ``allowed``; True when there was none."""
        allowed = tuple(allowed)
        ok = True
        for k in spec:
            if k not in allowed:
                self.problem(key + (k,), f"unknown key {k!r} in {what} (allowed: {', '.join(allowed)})")
                ok = False
        return ok

    def path(self, text: Any, key: Key, test: bool = False) -> Any:
        """Parse a path in the mapping's format: an HL7 :class:`Path`, an X12 one, or a compiled
        :class:`~engine.formats.fhir.FhirPath` (``test``: for a condition, which may test a complex
        element's presence). A problem (and None) when it is not a string, malformed, names a
        segment no HL7 v2 version defines (Z-segments excepted), or is not FHIRPath."""
        if self.format == "fhir":
            try:
                return fhir.compile_path(text, test) if isinstance(text, str) else fhir.compile_path("")
            except ValueError as exc:
                self.problem(key, str(exc))
                return None
        if self.format == "x12":
            try:
                return x12.parse_path(text)
            except ValueError as exc:
                self.problem(key, str(exc))
                return None
        if not isinstance(text, str):
            self.problem(key, f"expected an HL7 path such as PID-5.1, got {type(text).__name__}")
            return None
        try:
            path = parse_path(text)
        except ValueError as exc:
            self.problem(key, str(exc))
            return None
        unknown = unknown_segment(path.segment)
        if unknown:
            self.problem(key, unknown)
            return None
        for reads in self.reading:
            reads.add(path.segment)
        return path

    @contextmanager
    def walking(self, segments: Iterable[str]) -> Iterator[None]:
        """While a rule's ``when`` and fields compile: its HL7 ``for_each`` segments (``walks``)."""
        self.walks = tuple(segments) if self.format == "hl7v2" else ()
        try:
            yield
        finally:
            self.walks = ()

    def scoped(self) -> None:
        """What compiles now reads the groups a rule walks, not only fields (see ``reading``)."""
        for reads in self.reading:
            reads.add(SCOPED)

    def scalar(self, value: Any, key: Key) -> str | None:
        """A comparison value as text: strings and integers; floats and booleans are refused.

        YAML reads ``2.10`` as the float 2.1 and ``yes`` as True, silently changing what an
        analyst wrote; quoting them keeps the text.
        """
        if isinstance(value, (bool, float)):
            self.problem(key, f"write {value!r} in quotes: YAML would read it as a {type(value).__name__}")
            return None
        if isinstance(value, (str, int)):
            return str(value)
        self.problem(key, f"expected a text value, got {type(value).__name__}")
        return None


def component_spec(value: Any) -> tuple[int, int | None] | None:
    """``5`` -> (5, None); ``"4.1"`` -> (4, 1); None when malformed (numbers start at 1)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, None) if value >= 1 else None
    if isinstance(value, (str, float)):
        parts = str(value).split(".")
        if len(parts) in (1, 2) and all(p.isdigit() and int(p) >= 1 for p in parts):
            return int(parts[0]), (int(parts[1]) if len(parts) == 2 else None)
    return None
