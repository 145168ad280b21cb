"""Field expressions of the mapping language, compiled once into closures.

A field's value is a string (an HL7 path, the common case) or a mapping with exactly one
function key plus that function's options and the common modifiers::

    family_name: PID-5.1.1                                     # path shorthand
    mrn:         {identifier: PID-3, types: [MR, PI, PT], default_issuer: MSH-4.1}    # CX-1 of the chosen repetition
    mrn_issuer:  {identifier: PID-3, types: [MR, PI, PT], default_issuer: MSH-4.1, part: issuer}
    account:     {pick: PID-18, where: {component: 5, equals: AN}, component: 1}
    other_ids:   {json_list: PID-3, where: {component: 5, not_equals: MR}, item: {id: 1, authority: "4.1", type: 5}}
    status:      {literal: final}
    name:        {concat: [PID-5.2, PID-5.1.1], separator: " "}   # empties skipped
    phone:       {coalesce: [PID-13.1, PID-14.1]}                  # first non-empty
    sex:         {table: sex, value: PID-8}                        # mappings/tables/sex.yaml
    birth_date:  {date: PID-7}                                     # the calendar date as written
    admit_at:    {datetime: PV1-44, timezone: America/Chicago}     # UTC-normalised; absent without a time of day
    aliases:     {json_list: PID-5, from: 2, item: {family: "1.1", given: 2}}   # repetitions 2, 3, ...
    notes:       {concat: [{own: "NTE[*]-3[*]"}], separator: "\\n"}  # this group's own NTE (structure.py)
    seq:         {ordinal: OBX}                                    # the OBX's number in its group
    value_code:  {typed: OBX-5, type: OBX-2, part: code}           # by data type (datatypes.py)
    result:      {number: OBX-5, when: {path: OBX-2, equals: NM}}
    priority:    {integer: IN1-1}
    mrn_again:   {use: mrn}                                        # a value under define:
    content:     {join: "OBX-5[*]", where: {path: OBX-2, in: [TX, FT]}}   # each OBX's lines, one text
    modifiers:   {list: "FT1-26[*].1"}                             # every value, as a JSON list
    diagnoses:   {list: DG1-3.1, within: message, order_by: {integer: DG1-15}}
    amount:      {decimal: FT1-11.1.1}                             # exact money, as sent (text)
    through:     {date: {split: DTP*434-03, separator: "-", index: 2}}   # X12 RD8 20241001-20241003
    deceased:    {boolean: Patient.deceasedBoolean}                # FHIR/JSON true, false (HL7 Y/N: a table)

For FHIR resources (``target: fhir.<ResourceType>``) these forms, described with examples
in :mod:`engine.transforms.nested`::

    maritalStatus: {object: {coding: [{object: {system: ..., code: PID-16.1}}], text: PID-16.2}}
    given:         [PID-5.2, PID-5.3]                                # a JSON list of the values
    identifier:    {each: PID-3, item: {object: {system: PID-3.4.1, value: PID-3.1}}}  # per repetition
    result:        {each: OBX, item: {reference: [Observation, OBR-3.1, {ordinal: OBX}]}}  # per group
    id:            {fhir_id: [Patient, {use: mrn}, {use: mrn_issuer}]}   # resource_id(type, key...)
    subject:       {reference: [Patient, {use: mrn}, {use: mrn_issuer}]}  # {"reference": "Patient/<id>"}
    valueString:   {unplaced: "OBX-5 of this type has no place", when: ...}   # left out, with a warning

``identifier`` picks the patient's identifier from a CX list (see
:mod:`engine.transforms.identifiers`): the repetition whose type (CX-5) comes first in
``types`` (default MR, PI, PT; other types never), its value (``part: value``, the default) or
its issuer (``part: issuer``: CX-4.1, else CX-4.2, else ``default_issuer``, an expression such
as ``MSH-4.1`` or ``{literal: NORTH}``). An empty field is absent; a field with no acceptable
repetition, or whose chosen one has no issuer, fails the record with the reason.

``join`` and ``list`` gather a field over every group of its segment (``Compiler._gather``):
the rule's own group of that segment when it walks one (``for_each: FT1`` and ``FT1-26``), else
each one inside the rule's innermost group, or the message's without ``for_each``; ``within:
message`` takes every one in the message whatever the rule walks (DG1 read from a DFT's FT1
loop: the engine's FT1 groups reach to the next FT1, so the last one would hold them all).
``where`` keeps the groups whose condition holds, read in that group (``OBX-2`` is that OBX's).
``join`` gives one text: each value a line (a ``[*]`` path: each repetition), a group whose
field is empty an empty line, kept between lines and trimmed at both ends (a note's blank line
stays; escape sequences are decoded, ``\\.br\\`` a line break). ``list`` gives the non-empty
values as a JSON list of text, in message order or ascending by ``order_by`` (an expression
read in each group; groups without one, or with an unreadable one, last, in message order).
``decimal`` checks an HL7 NM and keeps its text, so money stays exact (a float would not); one
that is not a number is unreadable.

In a FHIR mapping ``date`` and ``datetime`` read FHIR's date, dateTime and instant
(``2024-03-14``, ``2024-03-14T09:30:00-05:00``, ``2024-03-14T09:30:00.123Z``), never HL7's.
A ``datetime`` without an offset is read in the sender's time zone: the expression's own
``timezone:``, else the message's (a channel's ``timezone``/``timezones`` per sending facility),
else the mapping's ``timezone:``. A value without a time of day (``20240314``) is a date, not an
instant: ``datetime`` leaves it absent (never local midnight) and ``date`` gives it.

Modifiers on any expression: ``when`` (a condition; false -> absent), ``default`` (used when
the value is absent), ``required: true`` (absent or HL7 null -> MappingError; ``required: <text>``
gives that text as the reason, e.g. ``"the subject names no patient identifier"``). Function
arguments are expressions themselves (a string is a path). A compiled :class:`Expr` is
``fn(reader, scopes) -> value | MISSING`` raising ValueProblem; ``source`` says where it reads.
Each read adds its position to ``reader.read`` (see :mod:`engine.transforms.report`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from engine.errors import ConfigError
from engine.formats.hl7 import values_in
from engine.transforms import nested, structure
from engine.transforms.build import SCOPED, Build, component_spec
from engine.transforms.conditions import REPETITION, compile_condition, component_getter
from engine.transforms.datatypes import PARTS, TYPES
from engine.transforms.fhir_out import ELEMENT, is_resource_type
from engine.transforms.identifiers import DEFAULT_TYPES, Identifier
from engine.transforms.reader import Reader, field_reader, own_group
from engine.transforms.report import position
from engine.transforms.tables import Tables
from engine.transforms.values import (
    MISSING,
    ValueProblem,
    has_time,
    to_boolean,
    to_date,
    to_datetime,
    to_integer,
    to_number,
    zone,
)
from engine.yamlfile import Key

FUNCTIONS: dict[str, tuple[str, ...]] = {
    "path": (),
    "literal": (),
    "use": (),
    "concat": ("separator",),
    "coalesce": (),
    "table": ("value",),
    "date": (),
    "datetime": ("timezone",),
    "number": (),
    "integer": (),
    "pick": ("where", "component", "fallback"),
    "json_list": ("where", "item", "from"),
    "own": (),
    "ordinal": ("per",),
    "typed": ("type", "part"),
    "identifier": ("types", "default_issuer", "untyped", "part"),
    "join": ("where", "within", "separator"),
    "list": ("where", "within", "order_by"),
    "decimal": (),
    "split": ("separator", "index"),
    "boolean": (),
    "object": (),
    "each": ("item", "where"),
    "fhir_id": (),
    "reference": (),
    "unplaced": (),
}
MODIFIERS = ("when", "default", "required")
GROUP_FUNCTIONS = ("own", "ordinal", "join", "list", "each")
"""Functions that read the groups a rule walks, not only fields: a value using them may differ
from one group to the next however its paths lie (see Compiler.define)."""
HL7_ONLY = {
    "pick": "in a FHIR mapping write a FHIRPath, e.g. identifier.where(system = '...').value",
    "identifier": "in a FHIR mapping choose the identifier with a FHIRPath (see mappings/fhir_patient_clinical.yaml)",
    "json_list": "in a FHIR mapping list values with {list: <FHIRPath>}",
    "own": "in a FHIR mapping a path already reads the innermost for_each node",
    "typed": "in a FHIR mapping name the element's part (valueQuantity.value, valueCodeableConcept.coding.code)",
}
"""Functions that take HL7 fields apart, with what a FHIR mapping writes instead."""


class Expr:
    """A compiled expression: ``fn(msg, scopes)``; ``many`` lists every value of a ``[*]`` path
    (or of an ``each``); ``constant``: it reads nothing (a ``literal``, an ``object`` or list of them)."""

    __slots__ = ("constant", "fn", "many", "source")

    def __init__(self, fn: Callable, source: str, many: Callable | None = None, constant: bool = False):
        self.fn, self.source, self.many, self.constant = fn, source, many, constant


_BAD = Expr(lambda m, s: MISSING, "<invalid>")
_UNSET = object()
_KEPT = (str, int, float, bool, type(None), date, datetime, Decimal)
"""Values a memo may hand out again: nobody changes them in place (a FHIR object may be)."""


def _once_per_message(e: Expr, segments: frozenset[str]) -> Expr:
    """``e`` worked out once per mapping run wherever its ``segments`` read the same in the
    current groups as in the whole message (:meth:`Reader.same_everywhere`), and kept in the
    reader's memo; elsewhere (its segment is the group's, or inside a repetition of an ``each``,
    whose reader reads another repetition) worked out each time. A ValueProblem is not kept:
    it is raised again, as before, on each use."""
    fn, token = e.fn, object()

    def once(m, s):
        if type(m) is not Reader or not m.same_everywhere(segments, s):
            return fn(m, s)
        v = m.memo.get(token, _UNSET)
        if v is _UNSET:
            v = fn(m, s)
            if v is MISSING or type(v) in _KEPT:
                m.memo[token] = v
        return v

    return Expr(once, e.source, e.many, e.constant)


def _anchored(p: Any, n: int, k: int, one: Callable) -> Callable:
    """A path to the segment of one of the rule's own groups (``OBX-5`` in ``for_each: [OBR,
    OBX]``), scope ``k`` of ``n``: :func:`engine.transforms.reader.values_reader` with the first
    value taken in the same function. Written out, not built on values_reader: one call less on
    the commonest read of a result's mapping (1.3% of parse and mapping's instructions,
    bench/mapping_instructions.py). ``one``, the general read, wherever the scopes or the
    reader are not the rule's own."""
    pos = position(p)

    def anchored(m, s):
        if len(s) != n or type(m) is not Reader:
            return one(m, s)
        m.read.add(pos)
        null = False
        for v in values_in([m.msg.segments[s[k][0]]], p, m.delimiters):
            if v:
                return v
            if v is None:
                null = True
        return None if null else MISSING

    return anchored


class Compiler:
    """Compiles expressions of one mapping file (problems go to ``build``)."""

    def __init__(self, build: Build, tables: Tables, default_zone: tzinfo):
        self.b = build
        self.tables = tables
        self.zone = default_zone
        self.defines: dict[str, Expr] = {}
        self._define_reads: dict[str, set[str]] = {}

    def define(self, name: str, spec: Any, key: Key) -> None:
        """Compile a ``define:`` entry under ``name``.

        In an HL7 v2 mapping, a value whose paths all read segments outside the groups a rule
        walks (the patient's identifier, PID-3 and MSH-4, read from an OBX loop) is the same in
        every group, so it is worked out once per message (:func:`_once_per_message`): an ORU's
        ``{use: mrn}`` was built again for every record and every result, about a tenth of its
        mapping's time. A value using a group function (GROUP_FUNCTIONS) is always worked out.
        """
        reads: set[str] = set()
        self.b.reading.append(reads)
        try:
            e = self.expr(spec, key)
        finally:
            self.b.reading.pop()
        self._define_reads[name] = reads
        if self.b.format == "hl7v2" and SCOPED not in reads and e is not _BAD:
            e = _once_per_message(e, frozenset(reads))
        self.defines[name] = e

    def field(self, spec: Any, key: Key) -> tuple[Expr, Any, bool]:
        """A field's expression without its top-level ``default``/``required``, and those two."""
        default, required = MISSING, False
        if isinstance(spec, dict):
            spec = dict(spec)
            if "default" in spec:
                default = self._literal(spec.pop("default"), key + ("default",))
            if "required" in spec:
                required = spec.pop("required")
                if isinstance(required, str) and required.strip():  # the reason, said in the error
                    return self._required(self.expr(spec, key), required, key + ("required",)), default, True
                if not isinstance(required, bool):
                    self.b.problem(key + ("required",), "required takes true, false or the reason (text)")
                    required = False
        return self.expr(spec, key), default, required

    def expr(self, spec: Any, key: Key) -> Expr:
        if isinstance(spec, str):
            return self._path(spec, key)
        if isinstance(spec, list):
            return self._items(spec, key)
        if not isinstance(spec, dict):
            self.b.problem(
                key,
                "expected an HL7 path (PID-5.1) or a function such as {literal: ...}; "
                "write fixed values as {literal: ...}",
            )
            return _BAD
        tags = [k for k in spec if k in FUNCTIONS]
        if len(tags) != 1:
            unknown = [k for k in spec if k not in MODIFIERS and k not in FUNCTIONS]
            if tags:
                self.b.problem(key, f"one function per expression, found {', '.join(tags)}")
            elif unknown:
                self.b.problem(key, f"unknown function {unknown[0]!r} (known: {', '.join(FUNCTIONS)})")
            else:
                self.b.problem(key, f"no function given (one of: {', '.join(FUNCTIONS)})")
            return _BAD
        tag = tags[0]
        if tag in GROUP_FUNCTIONS:
            self.b.scoped()
        if self.b.format == "fhir" and tag in HL7_ONLY:
            self.b.problem(key + (tag,), f"{tag} reads HL7 v2 and X12 fields; {HL7_ONLY[tag]}")
            return _BAD
        self.b.keys(spec, key, (tag, *FUNCTIONS[tag], *MODIFIERS), f"a {tag} expression")
        e = getattr(self, "_f_" + tag)(spec, key)
        if "required" in spec:
            e = self._required(e, spec["required"], key + ("required",))
        if "default" in spec:
            e = self._default(e, self._literal(spec["default"], key + ("default",)))
        if "when" in spec:
            e = self._when(e, spec["when"], key + ("when",))
        return e

    # -- modifiers ----------------------------------------------------------------------------
    def _when(self, e: Expr, spec: Any, key: Key) -> Expr:
        cond = compile_condition(spec, build=self.b, key=key)
        fn, many = e.fn, e.many
        return Expr(
            lambda m, s: fn(m, s) if cond(m, s) else MISSING,
            e.source,
            (lambda m, s: many(m, s) if cond(m, s) else []) if many else None,
        )

    def _default(self, e: Expr, default: Any) -> Expr:
        fn = e.fn

        def with_default(m, s):
            v = fn(m, s)
            return default if v is MISSING else v

        return Expr(with_default, e.source)

    def _required(self, e: Expr, flag: Any, key: Key) -> Expr:
        """``required: true`` (the reason names the path) or ``required: <reason>`` (said instead:
        ``the subject names no patient``); never a value in either."""
        reason = flag.strip() if isinstance(flag, str) and flag.strip() else None
        if not isinstance(flag, bool) and reason is None:
            self.b.problem(key, "required takes true, false or the reason (text)")
            return e
        if not flag:
            return e
        fn = e.fn

        def required(m, s):
            v = fn(m, s)
            if v is MISSING or v is None:
                if reason:
                    raise ValueProblem(reason)
                raise ValueProblem(f"required value is {'missing' if v is MISSING else 'HL7 null'} at {e.source}")
            return v

        return Expr(required, e.source)

    def _literal(self, value: Any, key: Key) -> Any:
        if isinstance(value, (dict, list)):
            self.b.problem(key, "expected a single value (text, number, true/false, a date or null)")
            return None
        return value

    # -- functions ----------------------------------------------------------------------------
    def _path(self, text: Any, key: Key) -> Expr:
        p = self.b.path(text, key)
        if p is None:
            return _BAD

        def one(m, s):
            null = False
            for v in m.values(p, s):
                if v:
                    return v
                if v is None:
                    null = True
            return None if null else MISSING

        k = None if p.many else own_group(p, self.b.walks)
        if k is not None:
            return Expr(_anchored(p, len(self.b.walks), k, one), p.text)
        return Expr(one, p.text, (lambda m, s: m.values(p, s)) if p.many else None)

    def _f_path(self, spec: dict, key: Key) -> Expr:
        return self._path(spec["path"], key + ("path",))

    def _f_literal(self, spec: dict, key: Key) -> Expr:
        value = self._literal(spec["literal"], key + ("literal",))
        return Expr(lambda m, s: value, "literal", constant=True)

    def _f_use(self, spec: dict, key: Key) -> Expr:
        name = spec["use"]
        if name not in self.defines:
            known = ", ".join(self.defines) or "none defined"
            self.b.problem(key + ("use",), f"unknown value {name!r} (define it under define:; known: {known})")
            return _BAD
        for reads in self.b.reading:  # a define using another reads what that one reads
            reads.update(self._define_reads[name])
        return self.defines[name]

    def _list(self, spec: dict, tag: str, key: Key) -> list[Expr]:
        items = spec[tag]
        if not isinstance(items, list) or not items:
            self.b.problem(key + (tag,), f"{tag} takes a non-empty list of expressions")
            return []
        return [self.expr(item, key + (tag, i)) for i, item in enumerate(items)]

    def _f_concat(self, spec: dict, key: Key) -> Expr:
        items = self._list(spec, "concat", key)
        sep = spec.get("separator", " ")
        if not isinstance(sep, str):
            self.b.problem(key + ("separator",), "separator must be text (quote it)")
            sep = " "

        def concat(m, s):
            parts, null = [], False
            for e in items:
                for v in e.many(m, s) if e.many else (e.fn(m, s),):
                    if v is None:
                        null = True
                    elif v is not MISSING and v != "":
                        parts.append(v if isinstance(v, str) else str(v))
            if parts:
                return sep.join(parts)
            return None if null else MISSING

        return Expr(concat, f"concat({', '.join(e.source for e in items)})")

    def _f_coalesce(self, spec: dict, key: Key) -> Expr:
        items = self._list(spec, "coalesce", key)

        def coalesce(m, s):
            null = False
            for e in items:
                v = e.fn(m, s)
                if v is None:
                    null = True
                elif v is not MISSING and v != "":
                    return v
            return None if null else MISSING

        return Expr(coalesce, f"coalesce({', '.join(e.source for e in items)})")

    def _f_table(self, spec: dict, key: Key) -> Expr:
        name = spec["table"]
        if "value" not in spec:
            self.b.problem(key, "table needs value: (the code to translate, e.g. value: PID-8)")
            return _BAD
        inner = self.expr(spec["value"], key + ("value",))
        try:
            table = self.tables.get(str(name))
        except KeyError:
            self.b.problem(
                key + ("table",), f"unknown table {name!r} (known: {', '.join(self.tables.known()) or 'none'})"
            )
            return _BAD
        except ConfigError as exc:
            self.b.problems.extend(exc.problems)
            return _BAD
        fn, lookup = inner.fn, table.lookup
        return Expr(lambda m, s: lookup(fn(m, s)), f"table {table.name}({inner.source})")

    def _convert(self, spec: dict, tag: str, key: Key, convert: Callable) -> Expr:
        inner = self.expr(spec[tag], key + (tag,))
        fn = inner.fn

        def converted(m, s):
            v = fn(m, s)
            if v is MISSING or v is None:
                return v
            return convert(v if isinstance(v, str) else str(v))

        return Expr(converted, f"{tag}({inner.source})")

    def _f_date(self, spec: dict, key: Key) -> Expr:
        fhir = self.b.format == "fhir"  # 2024-03-14 in FHIR, 20240314 in HL7 v2 and X12
        return self._convert(spec, "date", key, lambda text: to_date(text, fhir))

    def _f_datetime(self, spec: dict, key: Key) -> Expr:
        fixed, default = None, self.zone
        if "timezone" in spec:
            try:
                fixed = zone(str(spec["timezone"]))
            except ValueError as exc:
                self.b.problem(key + ("timezone",), str(exc))
        inner = self.expr(spec["datetime"], key + ("datetime",))
        fn, fhir = inner.fn, self.b.format == "fhir"

        def converted(m, s):
            v = fn(m, s)
            if v is MISSING or v is None:
                return v
            v = v if isinstance(v, str) else str(v)
            if not has_time(v, fhir):
                return MISSING  # a date: never an instant at local midnight
            return to_datetime(v, fixed or getattr(m, "zone", None) or default, fhir)

        return Expr(converted, f"datetime({inner.source})")

    # -- structure (engine.transforms.structure) ---------------------------------------------
    def _f_own(self, spec: dict, key: Key) -> Expr:
        p = self.b.path(spec["own"], key + ("own",))
        if p is None:
            return _BAD
        one, many = structure.own(p)
        return Expr(one, f"own({p.text})", many)

    def _f_ordinal(self, spec: dict, key: Key) -> Expr:
        found = self.b.path(spec["ordinal"], key + ("ordinal",))
        if self.b.format == "fhir":  # a for_each FHIRPath, as written
            if found is None:
                return _BAD
            segment = found.text
        elif found is None or found.field is not None or found.occurrence is not None:
            if found is not None:
                self.b.problem(key + ("ordinal",), "ordinal takes a segment of the rule's for_each, e.g. OBX")
            return _BAD
        else:
            segment = found.segment
        per = spec.get("per", [])
        if not isinstance(per, list):
            self.b.problem(key + ("per",), "per takes a list of expressions, e.g. [OBR-3.1, OBR-4.1]")
            per = []
        exprs = [self.expr(e, key + ("per", i)) for i, e in enumerate(per)]
        where = f" per {', '.join(e.source for e in exprs)}" if exprs else ""
        return Expr(structure.ordinal(segment, [e.fn for e in exprs]), f"ordinal({segment}{where})")

    def _f_typed(self, spec: dict, key: Key) -> Expr:
        p = self._field_path(spec, "typed", key)
        if "type" not in spec:
            self.b.problem(key, "typed needs type: a data type (CWE, XAD) or where to read it (OBX-2)")
            return _BAD
        raw_type = spec["type"]
        type_of: Any = raw_type if isinstance(raw_type, str) and raw_type in TYPES else None
        type_source = str(raw_type)
        if type_of is None:
            type_expr = self.expr(raw_type, key + ("type",))
            type_of, type_source = type_expr.fn, type_expr.source
        name = spec.get("part")
        if name is not None and name not in PARTS:
            self.b.problem(key + ("part",), f"unknown part {name!r} (known: {', '.join(sorted(PARTS))})")
            return _BAD
        if p is None:
            return _BAD
        shown = raw_type if isinstance(raw_type, str) else "..."
        return Expr(
            structure.typed(p, type_of, type_source, name, self.zone, field_reader(p, self.b.walks)),
            f"typed({p.text} as {shown}){'.' + name if name else ''}",
        )

    def _f_boolean(self, spec: dict, key: Key) -> Expr:
        return self._convert(spec, "boolean", key, to_boolean)

    def _f_number(self, spec: dict, key: Key) -> Expr:
        return self._convert(spec, "number", key, to_number)

    def _f_integer(self, spec: dict, key: Key) -> Expr:
        return self._convert(spec, "integer", key, to_integer)

    def _field_path(self, spec: dict, tag: str, key: Key):
        p = self.b.path(spec[tag], key + (tag,))
        if p is not None and (
            p.field is None or p.component is not None or p.repetition is not None or p.occurrence == 0
        ):
            self.b.problem(key + (tag,), f"{tag} takes a field without repetition or component, e.g. PID-3")
            return None
        return p

    def _where(self, spec: dict, key: Key):
        if "where" not in spec:
            return None
        return compile_condition(spec["where"], build=self.b, key=key + ("where",), context=REPETITION)

    def _f_pick(self, spec: dict, key: Key) -> Expr:
        p = self._field_path(spec, "pick", key)
        where = self._where(spec, key)
        comp = component_spec(spec.get("component"))
        if comp is None:
            self.b.problem(key + ("component",), 'pick needs component: the component to take (1, or "4.1")')
        fallback = spec.get("fallback", "none")
        if fallback not in ("first", "none"):
            self.b.problem(key + ("fallback",), "fallback must be first or none")
        if p is None or comp is None or (where is None and "where" in spec):
            return _BAD
        get, first = component_getter(*comp), fallback == "first"
        reads = _reads(p, {comp[0]} | _components(spec.get("where")))
        read = field_reader(p, self.b.walks)

        def pick(m, s):
            raw = read(m, s, reads)
            if not raw:
                return MISSING
            d = m.delimiters
            reps = raw.split(d.repetition)
            chosen = reps[0] if where is None else next((r for r in reps if where(r, d)), None)
            if chosen is None:
                if not first:
                    return MISSING
                chosen = reps[0]
            v = get(chosen, d)
            return MISSING if v == "" else v

        cond = "" if where is None else f"{where.text}{', else first' if first else ''}"
        return Expr(pick, f"{p.text}[{cond or 'first'}].{'.'.join(str(c) for c in comp if c)}")

    def _f_identifier(self, spec: dict, key: Key) -> Expr:
        p = self._field_path(spec, "identifier", key)
        rule = self._identifier_rule(spec, key)
        part = spec.get("part", "value")
        if part not in ("value", "issuer"):
            self.b.problem(key + ("part",), "part must be value (CX-1) or issuer (CX-4, else default_issuer)")
        default = self.expr(spec["default_issuer"], key + ("default_issuer",)) if "default_issuer" in spec else None
        if p is None or rule is None:
            return _BAD
        reads, field, issuer = _reads(p, {1, 4, 5}), p.text, part == "issuer"
        read = field_reader(p, self.b.walks)

        def identifier(m, s):
            raw = read(m, s, reads)
            if not raw:
                return MISSING
            chosen = rule.choose(raw, m.delimiters)
            if chosen is None:
                raise ValueProblem(rule.missing(field))
            found = chosen.issuer
            if not found and default is not None:
                v = default.fn(m, s)
                found = "" if v is MISSING or v is None else str(v).strip()
            if not found:
                raise ValueProblem(rule.no_issuer(chosen, field))
            return found if issuer else chosen.value

        return Expr(identifier, f"identifier({field}: {rule.listed}){'.issuer' if issuer else ''}")

    def _identifier_rule(self, spec: dict, key: Key) -> Identifier | None:
        """The ``types``/``untyped`` of an identifier spec; None (and problems) when invalid."""
        types = spec.get("types", list(DEFAULT_TYPES))
        if not isinstance(types, list) or not types:
            self.b.problem(key + ("types",), "types takes a non-empty list of identifier types, e.g. [MR, PI]")
            return None
        listed = [self.b.scalar(t, key + ("types", i)) for i, t in enumerate(types)]
        if any(t is None or not t.strip() for t in listed):
            if all(t is not None for t in listed):
                self.b.problem(key + ("types",), "an identifier type is a code such as MR, never empty")
            return None
        untyped = spec.get("untyped", False)
        if not isinstance(untyped, bool):
            self.b.problem(key + ("untyped",), "untyped takes true or false")
            return None
        return Identifier(tuple(t.strip() for t in listed if t), untyped)

    def _f_json_list(self, spec: dict, key: Key) -> Expr:
        p = self._field_path(spec, "json_list", key)
        where = self._where(spec, key)
        item = spec.get("item")
        start = spec.get("from", 1)
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            self.b.problem(key + ("from",), "from takes the repetition to start at (1, 2, ...)")
            start = 1
        getters: list[tuple[str, Callable]] = []
        used: list[tuple[int, int | None]] = []
        if not isinstance(item, dict) or not item:
            self.b.problem(key + ("item",), "json_list needs item: {name: component, ...}, e.g. {id: 1, type: 5}")
        else:
            for name, c in item.items():
                comp = component_spec(c)
                if comp is None:
                    self.b.problem(key + ("item", name), 'expected a component number such as 5 or "4.1"')
                else:
                    getters.append((str(name), component_getter(*comp)))
                    used.append(comp)
        if p is None or not getters:
            return _BAD
        reads = _reads(p, {c for c, _sub in used} | _components(spec.get("where")))
        read = field_reader(p, self.b.walks)

        def json_list(m, s):
            raw = read(m, s, reads)
            if not raw:
                return MISSING
            if raw == '""':
                return None
            d = m.delimiters
            out = []
            reps = raw.split(d.repetition)[start - 1 :]
            if not reps:
                return MISSING  # no repetition from there on: the message has none
            for rep in reps:
                if where is not None and not where(rep, d):
                    continue
                entry = {name: v for name, get in getters if (v := get(rep, d))}
                if entry:
                    out.append(entry)
            return json.dumps(out, sort_keys=True, separators=(",", ":"))

        names = ", ".join(f"{n}={c}" for n, c in (item or {}).items())
        cond = f"[{where.text}]" if where is not None else ""
        cond += f"[from {start}]" if start > 1 else ""
        return Expr(json_list, f"json_list({p.text}{cond}: {names})")

    # -- nested JSON for FHIR resources (engine.transforms.nested) -----------------------------
    def _items(self, spec: list, key: Key) -> Expr:
        if not spec:
            self.b.problem(key, "a list needs at least one item (leave the element out instead)")
            return _BAD
        exprs = [self.expr(item, key + (i,)) for i, item in enumerate(spec)]
        constant = all(e.constant for e in exprs)
        return Expr(nested.items(exprs), f"[{', '.join(e.source for e in exprs)}]", constant=constant)

    def _f_object(self, spec: dict, key: Key) -> Expr:
        body = spec["object"]
        if not isinstance(body, dict) or not body:
            self.b.problem(key + ("object",), "object takes element: expression pairs, e.g. {system: ..., value: ...}")
            return _BAD
        parts, sources = [], []
        for name, sub in body.items():
            if not isinstance(name, str) or not ELEMENT.match(name):
                self.b.problem(key + ("object", name), "an element name is camelCase, e.g. birthDate")
                continue
            e = self.expr(sub, key + ("object", name))
            parts.append((name, e.fn, e.constant))
            sources.append(f"{name}: {e.source}")
        constant = all(c for _n, _f, c in parts)
        return Expr(nested.obj(parts), "{" + ", ".join(sources) + "}", constant=constant)

    def _f_each(self, spec: dict, key: Key) -> Expr:
        if "item" not in spec:
            self.b.problem(key, "each needs item: the expression built per repetition or group")
            return _BAD
        p = self.b.path(spec["each"], key + ("each",))
        where = None
        if "where" in spec:
            where = compile_condition(spec["where"], build=self.b, key=key + ("where",))
        item = self.expr(spec["item"], key + ("item",))
        if p is None:
            return _BAD
        if self.b.format == "fhir" or p.field is None:
            if self.b.format != "fhir" and p.occurrence is not None:
                self.b.problem(key + ("each",), "each takes a segment (OBX) or a field (PID-3), without [n]")
                return _BAD
            fn = nested.each_group(p if self.b.format == "fhir" else p.segment, item.fn, where)
        elif p.component is not None or p.repetition is not None:
            self.b.problem(key + ("each",), "each takes a field without repetition or component, e.g. PID-3")
            return _BAD
        else:
            fn = nested.each_repetition(p, item.fn, where)
        return Expr(fn, f"each({p.text}: {item.source})", fn)

    def _key_parts(self, spec: dict, tag: str, key: Key) -> tuple[str, list] | None:
        """``[Type, part, ...]`` of a ``fhir_id``/``reference``: the type and the compiled parts."""
        parts = spec[tag]
        if not isinstance(parts, list) or len(parts) < 2 or not is_resource_type(parts[0]):
            example = "[Patient, {use: mrn}, {use: mrn_issuer}]"
            self.b.problem(key + (tag,), f"{tag} takes [ResourceType, key part, ...], e.g. {example}")
            return None
        return parts[0], [self.expr(e, key + (tag, i)).fn for i, e in enumerate(parts[1:], 1)]

    def _f_unplaced(self, spec: dict, key: Key) -> Expr:
        """``{unplaced: <reason>, when: ...}``: a value the mapping has no place for; the element
        is left out with a warning giving the reason (never silently)."""
        reason = spec["unplaced"]
        if not isinstance(reason, str) or not reason.strip():
            self.b.problem(key + ("unplaced",), 'unplaced takes the reason, e.g. "OBX-5 of type ED has no place"')
            return _BAD

        def unplaced(m, s):
            raise ValueProblem(reason.strip(), unreadable=True)

        return Expr(unplaced, "unplaced")

    def _f_fhir_id(self, spec: dict, key: Key) -> Expr:
        found = self._key_parts(spec, "fhir_id", key)
        return _BAD if found is None else Expr(nested.fhir_id(*found), f"fhir_id({found[0]})")

    def _f_reference(self, spec: dict, key: Key) -> Expr:
        found = self._key_parts(spec, "reference", key)
        return _BAD if found is None else Expr(nested.reference(*found), f"reference({found[0]})")

    # -- gathering over groups: join, list; exact money: decimal -----------------------------
    def _gather(self, spec: dict, tag: str, key: Key) -> tuple[Callable | None, str]:
        """``(groups(m, s), text)`` for a ``join``/``list`` (see the module docstring): groups
        yields ``(scopes, values)`` for each group of the path's segment that ``where`` keeps,
        ``scopes`` being the rule's scopes down to that group, ``values`` the path's values in it."""
        if self.b.format == "fhir":
            return self._gather_fhir(spec, tag, key)
        texts = spec[tag] if isinstance(spec[tag], list) and spec[tag] else [spec[tag]]
        paths = [self.b.path(t, key + (tag,)) for t in texts]
        if any(q is not None and (q.field is None or q.occurrence is not None) for q in paths):
            self.b.problem(
                key + (tag,), f"{tag} takes a field path without a segment occurrence, e.g. OBX-5[*] or DG1-3.1"
            )
            paths = [None]
        elif len({q.segment for q in paths if q is not None}) > 1:
            self.b.problem(key + (tag,), f"the paths a {tag} lists read one segment (HI-01.2, HI-02.2 ...)")
            paths = [None]
        p = None if any(q is None for q in paths) else paths[0]
        within = spec.get("within", "group")
        if within not in ("group", "message"):
            self.b.problem(
                key + ("within",), "within takes group (the rule's own groups, the default) or message (all of them)"
            )
        where = compile_condition(spec["where"], build=self.b, key=key + ("where",)) if "where" in spec else None
        if p is None:
            return None, ""
        segment, everywhere = p.segment, within == "message"
        several = [q for q in paths if q is not None]

        def groups(m, s: tuple):
            if everywhere:
                outer, spans = (), m.groups(segment, None)
            else:
                mine = [i for i, span in enumerate(s) if m.scope_name(span) == segment]
                if mine:  # the rule walks this segment: its own group (the innermost one of it)
                    outer, spans = s[: mine[-1]], [s[mine[-1]]]
                else:
                    outer, spans = s, m.groups(segment, s[-1] if s else None)
            for span in spans:
                scopes = outer + (span,)
                if where is None or where(m, scopes):
                    yield scopes, [v for q in several for v in m.values(q, scopes)]

        text = ", ".join(q.text for q in several) + (f" where {where.text}" if where is not None else "")
        return groups, text + (" within message" if everywhere else "")

    def _gather_fhir(self, spec: dict, tag: str, key: Key) -> tuple[Callable | None, str]:
        """A FHIR ``join``/``list``: every item the FHIRPath gives, as one group (a FHIRPath
        selects and filters itself: ``within`` and ``where`` are refused)."""
        for option in ("within", "where", "order_by"):
            if option in spec:
                self.b.problem(
                    key + (option,), f"{option} is for HL7 and X12 groups; in a FHIR mapping filter in the FHIRPath"
                )
        p = self.b.path(spec[tag], key + (tag,))
        if p is None or any(o in spec for o in ("within", "where", "order_by")):
            return None, ""
        return (lambda m, s: [(s, m.values(p, s))]), p.text

    def _f_join(self, spec: dict, key: Key) -> Expr:
        """``{join: "OBX-5[*]", where: {path: OBX-2, in: [TX, FT, ST]}}``: a note sent as one OBX
        per line (or one FT with ``\\.br\\``) as one text, blank lines kept between lines."""
        groups, text = self._gather(spec, "join", key)
        sep = spec.get("separator", "\n")
        if not isinstance(sep, str):
            self.b.problem(key + ("separator",), "separator must be text (quote it)")
        if groups is None or not isinstance(sep, str):
            return _BAD

        def join(m, s):
            lines, null = [], False
            for _scopes, values in groups(m, s):
                for v in values or [""]:  # an empty field (a blank line of a note) is an empty line
                    null = null or v is None
                    lines.append(v or "")
            start, end = 0, len(lines)
            while start < end and not lines[start].strip():
                start += 1
            while end > start and not lines[end - 1].strip():
                end -= 1
            if start == end:
                return None if null else MISSING
            return sep.join(lines[start:end])

        return Expr(join, f"join({text})")

    def _f_list(self, spec: dict, key: Key) -> Expr:
        """``{list: "FT1-26[*].1"}``: every modifier of the line, ``["25","59"]``; with
        ``order_by: {integer: DG1-15}``, diagnoses in priority order."""
        groups, text = self._gather(spec, "list", key)
        order = self.expr(spec["order_by"], key + ("order_by",)) if "order_by" in spec else None
        if groups is None:
            return _BAD
        rank = order.fn if order is not None else None

        def as_list(m, s):
            found, null = [], False  # (rank place, group number, value)
            for n, (scopes, values) in enumerate(groups(m, s)):
                try:
                    r = MISSING if rank is None else rank(m, scopes)
                except ValueProblem:  # an unreadable rank (a priority sent as text) orders last
                    r = MISSING
                # numbers before text, so that 2 < 10; groups without a rank last, in message order
                place = (1, 0, "") if r is MISSING or r is None else (0, 0, r) if _is_number(r) else (0, 1, str(r))
                for v in values:
                    null = null or v is None
                    if v:
                        found.append((place, n, v))
            if rank is not None:
                found.sort(key=lambda f: (f[0], f[1]))
            if not found:
                return None if null else MISSING
            return json.dumps([v for _p, _n, v in found], separators=(",", ":"), ensure_ascii=False)

        by = f" by {order.source}" if order is not None else ""
        return Expr(as_list, f"list({text}{by})")

    def _f_split(self, spec: dict, key: Key) -> Expr:
        """``{split: DTP*434-03, separator: "-", index: 2}``: the index-th part (from 1) of a
        value its sender joined (an X12 date range ``20241001-20241003``); absent past the end."""
        inner = self.expr(spec["split"], key + ("split",))
        sep, index = spec.get("separator"), spec.get("index", 1)
        if not isinstance(sep, str) or not sep:
            self.b.problem(key + ("separator",), "split needs separator: the text between the parts (quote it)")
            return _BAD
        if not isinstance(index, int) or isinstance(index, bool) or index < 1:
            self.b.problem(key + ("index",), "index is the part's place, from 1")
            return _BAD
        fn = inner.fn

        def part(m, s):
            v = fn(m, s)
            if v is MISSING or v is None:
                return v
            parts = str(v).split(sep)
            return parts[index - 1] if index <= len(parts) and parts[index - 1] != "" else MISSING

        return Expr(part, f"split({inner.source}, {sep!r}, {index})")

    def _f_decimal(self, spec: dict, key: Key) -> Expr:
        """``{decimal: FT1-11.1.1}``: ``125.10`` stays the text ``125.10`` (an exact amount for
        an ``Amount`` column), checked as an HL7 NM; ``12,50`` or ``$5`` is unreadable."""
        return self._convert(spec, "decimal", key, _decimal)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _decimal(text: str) -> str:
    to_number(text)  # the same check as number (ValueProblem, unreadable); the text is kept
    return text.strip()


def _components(where: Any) -> set[int]:
    """The component numbers a ``where`` condition tests (``{component: "4.1", ...}`` -> {4})."""
    if isinstance(where, list):
        return {c for w in where for c in _components(w)}
    if not isinstance(where, dict):
        return set()
    found = {c for v in where.values() for c in _components(v)}
    comp = component_spec(where.get("component"))
    return (found | {comp[0]}) if comp else found


def _reads(p: Any, components: set[int]) -> frozenset[str]:
    """The positions a ``pick``/``json_list`` of field ``p`` reads (see engine.transforms.report)."""
    return frozenset(f"{p.segment}-{p.field}.{c}" for c in components)
