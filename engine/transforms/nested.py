"""Expressions that build nested JSON, for FHIR resources (``target: fhir.<ResourceType>``).

The forms, compiled by :mod:`engine.transforms.expressions` (any expression may stand inside
them, and they inside any other)::

    # an object of sub-expressions: absent values (and HL7 nulls) are left out; an object left
    # with nothing, or with fixed values ({literal: ...}) only while what it reads is absent,
    # is absent itself (an object of fixed values only is a constant, and stays)
    maritalStatus: {object: {coding: [{object: {system: ..., code: PID-16.1}}], text: PID-16.2}}

    # a list: each item an expression; absent items are left out, an empty list is absent;
    # an item that is an `each` (or a [*] path) adds all of its values
    given: [PID-5.2, PID-5.3]

    # a list built per repetition of a field: inside `item`, a path to that field without a
    # repetition (PID-3.1, PID-3.4.1) reads the current repetition; other paths read as usual
    identifier:
      each: PID-3
      where: {path: PID-3.1, exists: true}          # optional: which repetitions
      item:
        object:
          system: {table: issuer_system, value: {coalesce: [PID-3.4.1, PID-3.4.2]}}
          value: PID-3.1

    # ... or per group of a segment: inside `item`, paths read that group (OBX-3 its OBX), as
    # in for_each; the groups are those in the rule's innermost for_each group (the OBX of
    # this OBR), or the message's without for_each. In a FHIR mapping `each` takes a FHIRPath.
    result: {each: OBX, item: {reference: [Observation, OBR-3.1, {ordinal: OBX}]}}

    # deterministic ids and references (engine.formats.fhir_bundle.resource_id): the resource
    # type, then the natural key's parts, each an expression; a part absent -> no id
    id:      {fhir_id: [Patient, {use: mrn}, {use: mrn_issuer}]}
    subject: {reference: [Patient, {use: mrn}, {use: mrn_issuer}]}   # {"reference": "Patient/<id>"}

    # a value the mapping has no place for: the element is left out with a warning (the reason)
    valueString: {unplaced: "OBX-5 of this data type has no place", when: {path: OBX-2, in: [ED, RP]}}

An ``each`` inside another ``each``'s item gives a list per item (lists are not flattened).
Every value is made JSON-ready (:func:`engine.transforms.fhir_out.to_json`): dates as
``1958-07-22``, date/times in UTC ``2024-03-14T15:05:00Z``. A part that cannot be read (an
impossible date) makes the whole expression unreadable: the element is left out with a
warning (see :mod:`engine.transforms.mapping`), never silently.
"""

from __future__ import annotations

from typing import Any

from engine.formats.fhir_bundle import resource_id
from engine.formats.hl7 import Path, parse_path
from engine.transforms.fhir_out import to_json
from engine.transforms.values import MISSING


class Repetition:
    """A reader in which paths to field ``field`` without a repetition read repetition ``n``."""

    __slots__ = ("_at", "_inner", "_n", "_paths")

    def __init__(self, inner: Any, field: Path, n: int, paths: dict):
        self._inner, self._at, self._n, self._paths = inner, field, n, paths

    def __getattr__(self, name: str) -> Any:  # read, memo, msg, delimiters, zone, groups ...
        return getattr(self._inner, name)

    def _mine(self, p: Path) -> bool:
        at = self._at
        return (
            p.segment == at.segment
            and p.field == at.field
            and p.repetition is None
            and (p.occurrence or 1) == (at.occurrence or 1)
        )

    def values(self, p: Path, scopes: tuple = ()) -> list:
        if not self._mine(p):
            return self._inner.values(p, scopes)
        key = (p.text, self._n)
        at = self._paths.get(key)
        if at is None:  # parse_path caches: one Path object per text, as the Reader's cache wants
            occ = f"[{p.occurrence}]" if p.occurrence else ""
            rest = "".join(f".{c}" for c in (p.component, p.subcomponent) if c is not None)
            at = self._paths[key] = parse_path(f"{p.segment}{occ}-{p.field}[{self._n}]{rest}")
        return self._inner.values(at, scopes)

    def raw_field(self, p: Path, scopes: tuple, reads: Any) -> str:
        raw = self._inner.raw_field(p, scopes, reads)
        if not self._mine(p) or not raw:
            return raw
        reps = raw.split(self._inner.delimiters.repetition)
        return reps[self._n - 1] if self._n <= len(reps) else ""


def obj(parts: list[tuple[str, Any, bool]]):
    """``{object: {...}}``: (name, compiled fn, constant) -> a dict without absent values;
    absent when every member that reads the message is (its fixed values qualify data that is
    not there: ``{system: {literal: ...}, code: PV1-36.1}`` without a PV1-36)."""
    reads = any(not constant for _n, _f, constant in parts)

    def build(m, s):
        out, found = {}, not reads
        for name, fn, constant in parts:
            v = to_json(fn(m, s))
            if v is not MISSING:
                out[name] = v
                found = found or not constant
        return out if out and found else MISSING

    return build


def items(exprs: list[Any]):
    """A YAML list: each expression an item; one with ``many`` (``each``, a [*] path) adds all."""

    def build(m, s):
        out = []
        for e in exprs:
            for v in e.many(m, s) if e.many else (e.fn(m, s),):
                v = to_json(v)
                if v is not MISSING:
                    out.append(v)
        return out or MISSING

    return build


def each_repetition(field: Path, item, where):
    """``{each: PID-3, item: ...}``: the item built once per repetition of the field."""
    paths: dict = {}

    def build(m, s):
        raw = m.raw_field(field, s, ())
        if not raw or raw == '""':
            return []
        out = []
        for n in range(1, raw.count(m.delimiters.repetition) + 2):
            view = Repetition(m, field, n, paths)
            if where is not None and not where(view, s):
                continue
            v = to_json(item(view, s))
            if v is not MISSING:
                out.append(v)
        return out

    return build


def each_group(segment: Any, item, where):
    """``{each: OBX, item: ...}``: the item built once per group of the segment (or FHIR node)
    in the innermost scope (the message's without one)."""

    def build(m, s):
        out = []
        for group in m.groups(segment, s[-1] if s else None):
            here = s + (group,)
            if where is not None and not where(m, here):
                continue
            v = to_json(item(m, here))
            if v is not MISSING:
                out.append(v)
        return out

    return build


def fhir_id(resource_type: str, parts: list):
    """The resource's id from its natural key; MISSING when a part is absent."""

    def build(m, s):
        key = []
        for fn in parts:
            v = fn(m, s)
            if v is MISSING or v is None or v == "":
                return MISSING
            key.append(v)
        return resource_id(resource_type, *key)

    return build


def reference(resource_type: str, parts: list):
    """``{"reference": "Type/<id>"}``; MISSING when the id is."""
    ident = fhir_id(resource_type, parts)

    def build(m, s):
        rid = ident(m, s)
        return MISSING if rid is MISSING else {"reference": f"{resource_type}/{rid}"}

    return build
