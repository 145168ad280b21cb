"""A mapping file compiled into a :class:`Mapping`: which messages it applies to, which records it emits.

File shape (``mappings/<name>.yaml``; the mapping's name is the file name)::

    description: ADT -> clinical store
    timezone: America/New_York        # for date/times sent without offset (default UTC)
    applies_when: {all: [{path: MSH-9.1, equals: ADT}, {path: MSH-9.2, in: [A01, A04]}]}
    define:                           # named values, used in fields as {use: mrn}
      mrn: {identifier: PID-3, types: [MR, PI], default_issuer: MSH-4.1}
      mrn_issuer: {identifier: PID-3, types: [MR, PI], default_issuer: MSH-4.1, part: issuer}
    records:
      - target: clinical.patient      # store.table
        key: [mrn, mrn_issuer]        # the columns the store upserts on (always required)
        when: {path: MSH-9.2, not_equals: A40}
        fields:
          mrn: {use: mrn}
          mrn_issuer: {use: mrn_issuer}
          family_name: PID-5.1.1
      - target: clinical.observation
        for_each: [OBR, OBX]          # each OBX within each OBR (scopes nest)
        key: [filler_order_number, seq]
        on_error: skip                # an OBX that cannot be mapped is left out, with a warning
        fields: {filler_order_number: OBR-3.1, seq: {ordinal: OBX}, value: OBX-5}
      - target: clinical.patient
        op: merge                     # A40: the survivor's mrn and mrn_issuer, old_mrn and old_mrn_issuer
        for_each: PID                 # each PID/MRG pair
        fields: {mrn: {use: mrn}, mrn_issuer: {use: mrn_issuer}, old_mrn: ..., old_mrn_issuer: ...}

``for_each`` walks the groups as the message structure nests them
(:meth:`engine.formats.hl7.Message.groups`): ``[OBR, OBX]`` is each result of each OBR, and
not the OBX under the OBR's SPM, which ``[OBR, SPM, OBX]`` walks as the specimen's. Inside
``for_each`` a path reads the innermost segment group that has its segment, then the
enclosing ones (``OBX-5`` the current OBX, ``OBR-3`` its OBR, ``PID-3`` the message's PID).
``format: x12`` reads X12 paths and loops (:mod:`engine.formats.x12`); ``format: fhir`` reads
a FHIR resource with FHIRPath (:mod:`engine.formats.fhir`): ``for_each`` lists FHIRPaths, each
selecting nodes in the one before (``[entry.resource.ofType(Observation), component]``), and a
path reads the innermost node (``%parent`` the enclosing one, ``%resource`` the whole resource).
A YAML merge key copies a mapping written elsewhere (``fields: {<<: *observation, kind: ...}``).
``on_error`` says what a record that cannot be built does (a required value missing, a code
a table with ``on_unknown: error`` does not list, an unreadable date or number): ``fail`` (the
default) fails the whole message with a MappingError; ``skip`` leaves that record out — in a
``for_each`` rule that one item — and adds a warning (``pm.coverage.member_id: reason``, where
and from which path; never the value) to the run's :class:`~engine.transforms.report.RunReport`;
the message's other records go on. A merge always fails: a merge left out would keep two
patients apart without anyone deciding it.

A record whose target is ``fhir.<ResourceType>`` builds a FHIR R4 resource (HL7 v2 -> FHIR,
``mappings/adt_fhir.yaml``): its fields are the resource's elements, checked at load time
against fhir.resources.R4B (:mod:`engine.transforms.fhir_out`), ``id`` is required and is the
record's key (leave ``key`` out), ``op`` is always upsert (a PUT); values are JSON, nested ones
built with ``object``, lists and ``each`` (:mod:`engine.transforms.nested`). The records of one
message become a transaction Bundle (:func:`engine.formats.fhir_bundle.transaction`)::

      - target: fhir.Patient
        fields:
          id: {fhir_id: [Patient, {use: mrn}, {use: mrn_issuer}]}
          identifier: {each: PID-3, item: {object: {system: PID-3.4.1, value: PID-3.1}}}
          birthDate: {date: PID-7}

Such a mapping needs no store ``columns`` to load.

Expressions are described in :mod:`engine.transforms.expressions`, conditions in
:mod:`engine.transforms.conditions`, tables in :mod:`engine.transforms.tables`; what a run
records as read, and what counts as unmapped, in :mod:`engine.transforms.report`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MappingError
from engine.formats.hl7 import Message
from engine.records import Record
from engine.transforms.build import Build
from engine.transforms.conditions import compile_condition
from engine.transforms.expressions import Compiler, Expr
from engine.transforms.fhir_out import ELEMENT, check_fields, to_json
from engine.transforms.fhir_out import TARGET as FHIR_TARGET
from engine.transforms.reader import Reader
from engine.transforms.report import RunReport
from engine.transforms.tables import Tables
from engine.transforms.values import MISSING, ValueProblem, zone
from engine.yamlfile import Key, load

TOP_KEYS = ("description", "format", "timezone", "applies_when", "define", "checks", "records")
FORMATS = ("hl7v2", "x12", "fhir")
RECORD_KEYS = ("description", "target", "op", "key", "when", "for_each", "on_error", "fields")
ON_ERROR = ("fail", "skip")
_TARGET = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_X12_SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{1,2}(\*[A-Z0-9]{1,30})?$")  # CLP, N1, HL*22
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")
MERGE_FIELDS = ("mrn", "mrn_issuer", "old_mrn", "old_mrn_issuer")
IDENTITY = ("mrn", "mrn_issuer")  # a patient is the pair (issuer, value), in every store
WARNINGS_PER_RULE = 10
SOURCE_CHARS = 120
"""A warning about a FHIR element names at most this much of where its value is read from (a
nested ``object`` describes every path it reads)."""
"""Skipped records a rule lists one by one per message; the rest are counted in one more line
(a 16,000-OBX result whose every OBX fails keeps a short warning list)."""


class _Field:
    __slots__ = ("column", "default", "fn", "required", "source")

    def __init__(self, column: str, expr: Expr, default: Any, required: bool):
        self.column, self.fn, self.source = column, expr.fn, expr.source
        self.default, self.required = default, required


class RecordRule:
    """One ``records:`` entry: emits zero or more records per message."""

    def __init__(
        self,
        mapping: str,
        index: int,
        target: str,
        op: str,
        key: tuple[str, ...],
        fields: list[_Field],
        when=None,
        for_each: tuple = (),
        on_error: str = "fail",
    ):
        self.mapping, self.index, self.target, self.op, self.key = mapping, index, target, op, key
        self.fields, self.when, self.for_each = fields, when, for_each
        self.skip = on_error == "skip"
        """``for_each`` holds segment names, or compiled FHIRPaths for a FHIR mapping."""
        self.fhir = target.startswith("fhir.")
        """A FHIR resource (:mod:`engine.transforms.fhir_out`): values as JSON, nulls left out."""

    def scopes(self, msg: Reader) -> Iterator[tuple[tuple, str]]:
        """Each (scopes, where) this rule runs in; ``where`` names the group for errors (``OBR 2/OBX 3``)."""
        if not self.for_each:
            yield (), ""
            return

        yield from self._walk(msg, 0, None, (), "")

    def _walk(self, msg: Reader, level: int, within, scopes: tuple, where: str) -> Iterator[tuple[tuple, str]]:
        # A method, not a function nested in scopes(): a nested function that calls itself is a
        # reference cycle, which would hold each message and all it cached until the cyclic
        # garbage collector ran (on a FHIR Bundle load, a tenth of the engine's CPU went to it).
        seg = self.for_each[level]
        try:
            found = msg.groups(seg, within)
        except ValueProblem as exc:  # a FHIRPath that cannot be evaluated in this message
            text = f"{self.target}: for_each: {exc.reason} (mapping {self.mapping}, records[{self.index}])"
            raise MappingError(text, mapping=self.mapping) from None
        for n, span in enumerate(found, 1):
            here = f"{where}/{seg} {n}" if where else f"{seg} {n}"
            at = msg.location(span)  # a FHIR resource: where it stands in the request
            here = f"{here} ({at})" if at else here
            if level + 1 == len(self.for_each):
                yield scopes + (span,), here
            else:
                yield from self._walk(msg, level + 1, span, scopes + (span,), here)

    def emit(self, msg: Reader, out: list[Record], report: RunReport) -> None:
        """Append this rule's records to ``out``; a record skipped under ``on_error: skip``
        adds one line to ``report.warnings`` instead (at most WARNINGS_PER_RULE, then one line
        counting the rest), and a FHIR resource skipped whose id was built goes to
        ``report.left_out``. Raises MappingError (``on_error: fail``)."""
        warnings = report.warnings
        skipped = 0
        left: list[str] = []  # values left out of otherwise good records
        for scopes, where in self.scopes(msg):
            try:
                if self.when is not None and not self.when(msg, scopes):
                    continue
            except ValueProblem as exc:  # a FHIRPath that cannot be evaluated in this message
                at = f" in {where}" if where else ""
                text = f"{self.target}: when: {exc.reason} (mapping {self.mapping}, records[{self.index}]{at})"
                raise MappingError(text, mapping=self.mapping) from None
            try:
                out.append(self._record(msg, scopes, where, left))
            except _Unbuilt as exc:
                if not self.skip:
                    raise self._error(exc.field, exc.reason, where) from None
                skipped += 1
                if self.fhir and isinstance(exc.values.get("id"), str):
                    report.left_out.add(f"{self.target.split('.', 1)[1]}/{exc.values['id']}")
                if skipped <= WARNINGS_PER_RULE:
                    warnings.append(self._text(exc.field, exc.reason, where, "record skipped"))
        warnings.extend(left[:WARNINGS_PER_RULE])
        if len(left) > WARNINGS_PER_RULE:
            more = f"{len(left) - WARNINGS_PER_RULE} more value(s) left out"
            warnings.append(f"{self.target}: {more} (mapping {self.mapping}, records[{self.index}])")
        if skipped > WARNINGS_PER_RULE:
            more = f"{skipped - WARNINGS_PER_RULE} more record(s) skipped"
            warnings.append(f"{self.target}: {more} (mapping {self.mapping}, records[{self.index}])")

    def _record(self, msg: Reader, scopes: tuple, where: str = "", left: list[str] | None = None) -> Record:
        """One record. A value that cannot be read (an impossible date, a number that is text)
        in a field that is neither required nor part of the key is left out — the stored value
        stays — and noted in ``left`` as a warning; in a required or key field it fails the
        record (:class:`_Unbuilt`)."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        unread: dict[str, list[_Field]] = {}  # reason -> the fields it cost (one source value, many parts)
        for f in self.fields:
            try:
                v = f.fn(msg, scopes)
            except ValueProblem as exc:
                if f.required or f.column in self.key or left is None or not exc.unreadable:
                    raise _Unbuilt(f, exc.reason, values) from None
                unread.setdefault(exc.reason, []).append(f)
                continue
            source = f.source
            if v is MISSING:
                if f.default is not MISSING:
                    v, source = f.default, "default"
                elif f.required:
                    raise _Unbuilt(f, "required value is missing", values)
                else:
                    continue
            elif v is None and f.required:
                raise _Unbuilt(f, 'required value is an HL7 null ("")', values)
            if self.fhir:
                v = to_json(v)
                if v is MISSING:
                    if f.required:
                        raise _Unbuilt(f, "required value is missing", values)
                    continue
            values[f.column] = v
            sources[f.column] = source
        for reason, cost in unread.items():
            others = f" with {', '.join(g.column for g in cost[1:])}" if len(cost) > 1 else ""
            left.append(self._text(cost[0], reason, where, f"value left out{others}"))  # type: ignore[union-attr]
        return Record(self.target, self.key, values, self.op, sources)

    def _text(self, f: _Field, reason: str, where: str, outcome: str = "") -> str:
        """``target.column: reason (...)``: column and reason first, as an ACK's MSA-3 keeps
        only the first 80 characters. Paths and places only, never a value."""
        at = f" in {where}" if where else ""
        done = f"; {outcome}" if outcome else ""
        long = self.fhir and len(f.source) > SOURCE_CHARS
        source = f.source[: SOURCE_CHARS - 3] + "..." if long else f.source
        place = f"mapping {self.mapping}, records[{self.index}], from {source}{at}"
        return f"{self.target}.{f.column}: {reason}{done} ({place})"

    def _error(self, f: _Field, reason: str, where: str) -> MappingError:
        return MappingError(self._text(f, reason, where), mapping=self.mapping, field=f.column, path=f.source)


class _Unbuilt(Exception):
    """A record of one scope could not be built: which field, and why (no value in it); the
    values built before it (a FHIR resource's id, when it came first)."""

    def __init__(self, f: _Field, reason: str, values: dict[str, Any]):
        super().__init__(reason)
        self.field, self.reason, self.values = f, reason, values


class Mapping:
    """A compiled mapping. ``applies(msg)`` decides; ``run(msg)`` builds the records."""

    def __init__(
        self,
        name: str,
        path: Path,
        rules: list[RecordRule],
        applies_when=None,
        description: str = "",
        format: str = "hl7v2",
    ):
        self.name, self.path, self.rules, self.format = name, path, rules, format
        self.checks: list = []
        """Checks run after the records are built (``checks:``, :mod:`engine.transforms.checks`)."""
        self._applies = applies_when
        self.description = description

    @property
    def applies_text(self) -> str:
        """The ``applies_when`` condition in words (``engine try`` prints it)."""
        return "always" if self._applies is None else self._applies.text

    def applies(self, msg: Message) -> bool:
        """True when the mapping's ``applies_when`` holds (always, without one) and the message
        is in the mapping's format (an X12 mapping never runs on an HL7 message, nor back).
        MappingError when a FHIRPath of the condition cannot be evaluated in this message."""
        if getattr(msg, "format", "hl7v2") != self.format:
            return False
        try:
            return self._applies is None or bool(self._applies(msg, ()))
        except ValueProblem as exc:  # a FHIRPath that cannot be evaluated in this message
            raise MappingError(f"applies_when: {exc.reason} (mapping {self.name})", mapping=self.name) from None

    def run(self, msg: Message, report: RunReport | None = None, zone: tzinfo | None = None) -> list[Record]:
        """Every record for ``msg``, in rule order; raises MappingError (no patient values in it).

        Does not test ``applies``: callers ask that first. ``report`` collects the warnings of
        records skipped under ``on_error: skip`` and the positions read (see
        :mod:`engine.transforms.report`); what it collected stays when MappingError is raised.
        ``zone`` is the sender's clock for date/times without an offset (a channel's
        ``timezone``/``timezones``); None leaves the mapping's ``timezone:``.
        """
        out: list[Record] = []
        if report is None:
            report = RunReport()
        reader = Reader(msg, report.read, zone)
        for rule in self.rules:
            rule.emit(reader, out, report)
        return out

    def __repr__(self) -> str:
        return f"<Mapping {self.name} records={len(self.rules)}>"


def load_mapping(
    path: str | Path, *, tables_dir: str | Path | None = None, columns: dict[str, dict[str, set[str]]] | None = None
) -> Mapping:
    """Load and compile a mapping file; raise ConfigError listing every problem found.

    ``tables_dir`` defaults to ``tables/`` beside the mapping. With ``columns``
    (``{store: {table: {column, ...}}}``) targets and columns are checked against it.
    """
    path = Path(path)
    src = load(path)
    b = Build(src)
    data = src.data
    if not isinstance(data, dict):
        b.problem((), "expected a mapping with records: (and optionally applies_when:, define:, timezone:)")
        raise ConfigError(b.problems)
    b.keys(data, (), TOP_KEYS, "a mapping")
    fmt = data.get("format", "hl7v2")
    if fmt not in FORMATS:
        b.problem(("format",), f"format must be one of {', '.join(FORMATS)}")
    else:
        b.format = fmt
    tz = zone("UTC")
    if "timezone" in data:
        try:
            tz = zone(str(data["timezone"]))
        except ValueError as exc:
            b.problem(("timezone",), str(exc))
    tables = Tables(Path(tables_dir) if tables_dir is not None else path.parent / "tables")
    c = Compiler(b, tables, tz)
    applies = (
        compile_condition(data["applies_when"], build=b, key=("applies_when",)) if "applies_when" in data else None
    )
    defines = data.get("define") or {}
    if not isinstance(defines, dict):
        b.problem(("define",), "expected name: expression pairs")
        defines = {}
    for name, spec in defines.items():
        c.define(name, spec, ("define", name))
    from engine.transforms.checks import CHECKS

    checks = data.get("checks") or []
    if not isinstance(checks, list) or not all(isinstance(c, str) and c in CHECKS for c in checks):
        b.problem(("checks",), f"checks lists checks by name (known: {', '.join(sorted(CHECKS))})")
        checks = []
    records = data.get("records")
    rules: list[RecordRule] = []
    if not isinstance(records, list) or not records:
        b.problem(("records",), "expected a non-empty list of records")
        records = []
    for i, spec in enumerate(records):
        rule = _record(spec, ("records", i), i, path.stem, c, b, columns)
        if rule is not None:
            rules.append(rule)
    if b.problems:
        raise ConfigError(b.problems)
    mapping = Mapping(path.stem, path, rules, applies, str(data.get("description") or ""), b.format)
    mapping.checks = [CHECKS[c] for c in checks]
    return mapping


def _record(
    spec: Any, key: Key, index: int, name: str, c: Compiler, b: Build, columns: dict | None
) -> RecordRule | None:
    if not isinstance(spec, dict):
        b.problem(key, "expected a record with target:, key: and fields:")
        return None
    b.keys(spec, key, RECORD_KEYS, "a record")
    target = spec.get("target")
    fhir = isinstance(target, str) and target.startswith("fhir.")
    if not isinstance(target, str) or not (FHIR_TARGET.match(target) if fhir else _TARGET.match(target)):
        b.problem(
            key + ("target",), "target must be store.table (clinical.patient) or fhir.<ResourceType> (fhir.Patient)"
        )
        target = None
    op = spec.get("op", "upsert")
    if op not in ("upsert", "merge"):
        b.problem(key + ("op",), "op must be upsert or merge")
    fields_spec = spec.get("fields")
    if not isinstance(fields_spec, dict) or not fields_spec:
        b.problem(key + ("fields",), "expected column: expression pairs")
        fields_spec = {}
    if fhir:
        keys = _fhir_key(spec, fields_spec, op, key, b)
        if target is not None:
            check_fields(b, target.split(".", 1)[1], fields_spec, key)
    elif op == "merge":
        keys = tuple(spec.get("key", IDENTITY)) if isinstance(spec.get("key", []), list) else ()
        if set(keys) != set(IDENTITY) or len(keys) != 2:
            b.problem(key + ("key",), "a merge record's key is [mrn, mrn_issuer]")
        if set(fields_spec) != set(MERGE_FIELDS):
            b.problem(
                key + ("fields",),
                "a merge record has exactly the fields mrn and mrn_issuer (the survivor), old_mrn and old_mrn_issuer",
            )
    else:
        listed = spec.get("key")
        if not isinstance(listed, list) or not listed or not all(isinstance(k, str) for k in listed):
            b.problem(key + ("key",), "key must list the columns to upsert on, e.g. [mrn]")
            listed = []
        keys = tuple(listed)
        for k in keys:
            if k not in fields_spec:
                b.problem(key + ("key",), f"key column {k!r} has no field")
    _check_target(target, op, fields_spec, key, b, columns)
    on_error = spec.get("on_error", "fail")
    if on_error not in ON_ERROR:
        b.problem(key + ("on_error",), "on_error must be fail (the message fails) or skip (the record is left out)")
        on_error = "fail"
    elif on_error == "skip" and op == "merge":
        b.problem(key + ("on_error",), "a merge cannot be skipped: a merge that cannot be built fails the message")
    for_each = spec.get("for_each", [])
    for_each = [for_each] if isinstance(for_each, str) else for_each
    segment = _X12_SEGMENT if b.format == "x12" else _SEGMENT
    if b.format == "fhir":
        if not isinstance(for_each, list) or not all(isinstance(s, str) for s in for_each):
            b.problem(
                key + ("for_each",), "for_each takes a FHIRPath or a list of nested ones ([entry.resource, component])"
            )
            for_each = []
        else:
            at = (key + ("for_each",)) if isinstance(spec.get("for_each"), str) else None
            paths = [b.path(s, at or key + ("for_each", i)) for i, s in enumerate(for_each)]
            for_each = [p for p in paths if p is not None]
    elif not isinstance(for_each, list) or not all(isinstance(s, str) and segment.match(s) for s in for_each):
        b.problem(key + ("for_each",), "for_each takes a segment (OBR) or a list of nested segments ([OBR, OBX])")
        for_each = []
    fields = []
    with b.walking(for_each):  # reads of the rule's own groups compile to straight reads
        when = compile_condition(spec["when"], build=b, key=key + ("when",)) if "when" in spec else None
        for column, fspec in fields_spec.items():
            fkey = key + ("fields", column)
            if not isinstance(column, str) or not (ELEMENT if fhir else _COLUMN).match(column):
                if not fhir:  # a FHIR element's name is checked against its resource (check_fields)
                    b.problem(fkey, "a column name is lower_case_with_underscores")
                continue
            if not fhir and (isinstance(fspec, list) or (isinstance(fspec, dict) and {"object", "each"} & set(fspec))):
                b.problem(fkey, "object, each and lists build FHIR elements (target: fhir.<Type>), not a column")
                continue
            expr, default, required = c.field(fspec, fkey)
            fields.append(_Field(column, expr, default, required or column in keys or op == "merge"))
    return RecordRule(name, index, target or "", op, keys, fields, when, tuple(for_each), on_error)


def _fhir_key(spec: dict, fields_spec: dict, op: str, key: Key, b: Build) -> tuple[str, ...]:
    """A FHIR resource is upserted by its ``id`` (a PUT): ``key`` may be left out or be [id]."""
    if op != "upsert":
        b.problem(key + ("op",), "a FHIR resource is sent as a PUT of the whole resource: no op")
    if spec.get("key", ["id"]) != ["id"]:
        b.problem(key + ("key",), "a FHIR resource's key is its id: leave key out (or write [id])")
    if "id" not in fields_spec:
        b.problem(key + ("fields",), "a FHIR resource needs id: (e.g. {fhir_id: [Patient, {use: mrn}, ...]})")
    return ("id",)


def _check_target(target, op, fields_spec, key, b: Build, columns) -> None:
    if columns is None or target is None or target.startswith("fhir."):
        return
    store, table = target.split(".", 1)
    if store not in columns:
        b.problem(key + ("target",), f"unknown store {store!r} for this mapping (known: {', '.join(columns)})")
        return
    if table not in columns[store]:
        b.problem(
            key + ("target",),
            f"unknown table {table!r} in store {store!r} (known: {', '.join(sorted(columns[store]))})",
        )
        return
    if op == "merge":
        return
    known = columns[store][table]
    for column in fields_spec:
        if column not in known:
            b.problem(key + ("fields", column), f"unknown column {column!r} in {target}")
    if set(IDENTITY) <= known and len(set(IDENTITY) & set(fields_spec)) == 1:
        b.problem(key + ("fields",), "mrn and mrn_issuer go together: a patient is the pair (issuer, value)")
