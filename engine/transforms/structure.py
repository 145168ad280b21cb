"""Expressions that follow the message's structure: a group's own segments, a group's number,
and a field decoded by its HL7 data type. Compiled by :mod:`engine.transforms.expressions`::

    notes:      {concat: [{own: "NTE[*]-3[*]"}], separator: "\\n"}   # this group's NTE only
    seq:        {ordinal: OBX}                                      # 1, 2, ... within its OBR (or SPM)
    occurrence: {ordinal: OBR, per: [OBR-3.1, OBR-4.1]}             # among OBRs of the same order and test
    value_code: {typed: OBX-5, type: OBX-2, part: code}             # see engine.transforms.datatypes
    values:     {typed: OBX-5, type: OBX-2}                         # every repetition, as JSON

``own`` reads a path in the innermost ``for_each`` group only, and only the segments that
belong to that group itself (:meth:`engine.formats.hl7.Message.members`): an OBR's own notes,
not its results' notes, never an enclosing group's or the message's. ``ordinal`` is the
1-based number of the current ``segment`` group among the groups of its kind in the enclosing
group (the message for the outermost), as ``for_each`` walks them; with ``per``, among those
whose values of the ``per`` expressions equal the current one's. It is computed once per
enclosing group and message, so numbering every OBX of a message costs linear time. In a FHIR
mapping ``segment`` is a ``for_each`` FHIRPath as written (``{ordinal: component}``).
``typed`` decodes a whole field by its data type (a name such as ``CWE`` or an expression such
as ``OBX-2``): with ``part``, one part of it (None when the type has none: a row rewritten
with a value of another type keeps nothing of the old one); without, every repetition as a
JSON list. Date/times without an offset are read in the message's time zone. It reads the
whole field, or for a named type only the components its part is made of (``{typed: PID-11,
type: XAD, part: street}`` reads PID-11.1), as the unmapped-data report counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from engine.formats.hl7 import Path, Segment, values_in
from engine.transforms.datatypes import COMPONENTS, as_json, decode, part
from engine.transforms.report import position
from engine.transforms.values import MISSING

Fn = Callable[[Any, tuple], Any]


def own(p: Path) -> tuple[Fn, Fn | None]:
    """(first value, every value for a ``[*]`` path) of ``p`` in the innermost group's own segments."""
    pos = position(p)

    def segments(m, s: tuple) -> list[Segment]:
        msg = m.msg
        if not s:
            return msg.find_segments(p)
        found = msg.members(p.segment, s[-1])
        if p.occurrence != 0:
            k = (p.occurrence or 1) - 1
            found = found[k : k + 1]
        return [msg.segments[i] for i in found]

    def values(m, s: tuple) -> list[str | None]:
        m.read.add(pos)
        return values_in(segments(m, s), p, m.delimiters)

    def one(m, s: tuple) -> Any:
        null = False
        for v in values(m, s):
            if v:
                return v
            if v is None:
                null = True
        return None if null else MISSING

    return one, (values if p.many else None)


def ordinal(segment: str, per: list[Fn]) -> Fn:
    """The current ``segment`` group's number (see the module docstring); MISSING outside one."""
    token = object()  # this expression's entries in the per-message memo

    def number(m, s: tuple) -> Any:
        i = len(s) - 1
        while i >= 0 and m.scope_name(s[i]) != segment:
            i -= 1
        if i < 0:
            return MISSING
        parent = s[i - 1] if i else None
        key = (token, parent)
        numbers: dict[Any, int] | None = m.memo.get(key)  # group (a scope handle) -> its number
        if numbers is None:
            numbers = {}
            seen: dict[tuple, int] = {}
            for group in m.groups(segment, parent):
                values = tuple(fn(m, s[:i] + (group,)) for fn in per)  # () without per: one count
                seen[values] = numbers[group] = seen.get(values, 0) + 1
            m.memo[key] = numbers
        return numbers.get(s[i], MISSING)

    return number


def typed(
    p: Path, type_of: Fn | str, type_source: str, name: str | None, default_zone: tzinfo, read: Callable[..., str]
) -> Fn:
    """Field ``p`` decoded by its data type: one part (``name``) or every repetition as JSON.

    ``type_of`` is a data type's name or the expression giving it (``type_source`` its text).
    The columns of one record read the same field in turn: its decoding is kept and reused
    while the field, the record's scopes and the type's expression stay the same. ``read`` reads
    the field (:func:`engine.transforms.reader.field_reader`).
    """
    parts = COMPONENTS.get((type_of, name or "")) if isinstance(type_of, str) else None
    reads = {f"{p.segment}-{p.field}.{c}" for c in parts} if parts else {position(p)}

    def value(m, s: tuple) -> Any:
        raw = read(m, s, reads)
        if not raw:
            return MISSING
        if raw == '""':
            return None
        zone = m.zone or default_zone
        cached = m.memo.get("typed")
        if (
            cached is not None
            and cached[0] is raw
            and cached[1] is s
            and cached[2] == type_source
            and cached[3] is zone
        ):
            t, items = cached[4], cached[5]
        else:
            t = type_of if isinstance(type_of, str) else type_of(m, s)
            t = t.strip().upper() if isinstance(t, str) else ""
            items = decode(raw, t, m.delimiters, zone)
            m.memo["typed"] = (raw, s, type_source, zone, t, items)
        return as_json(items, t) if name is None else part(items, t, name)

    return value
