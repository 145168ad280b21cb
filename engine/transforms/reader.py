"""A per-message read cache in front of :class:`engine.formats.hl7.Message`, used while a mapping runs.

A mapping reads some fifty paths per message, many of them several times (the MRN, MSH-9.2)
and, inside ``for_each``, once per group (PID-3 for each of thousands of OBX). :class:`Reader`
remembers each message-level value list, so such a path costs one lookup, and answers a group's
own anchor (``OBX-5`` inside the OBX loop) without a search. It offers the part of Message's
interface that compiled mappings and conditions use (``values``, ``find_segments``, ``spans``,
``delimiters``), with identical results: other scoped reads are delegated to the Message
unchanged, and the tests compare both over the fixtures. No read scans the message (each is
O(log n) in its n segments once the per-scope lists are built), so a mapping's cost grows
linearly with the message: ``tests/test_mapping_scale.py`` counts it.

Every :meth:`Reader.values` call also adds the position it reads (``PID-5.1``, see
:func:`engine.transforms.report.position`) to ``read``: one dict lookup and one set add. Reads
that go through :meth:`Reader.find_segments` (``pick``, ``json_list``) add their precise
components themselves.

A FHIR resource (:class:`engine.formats.fhir.FhirMessage`) caches its own results: its reads
are passed through, with the element paths a FHIRPath reads added to ``read`` and a path that
cannot give a value raised as a ValueProblem. Whatever the format, the executor never looks
inside a scope: :meth:`Reader.scope_name` says which ``for_each`` entry made it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from engine.formats.fhir import EvaluationError
from engine.formats.hl7 import Message, Path, Segment, Span, values_in
from engine.transforms.report import position
from engine.transforms.values import ValueProblem

_POSITIONS: dict[str, str] = {}
_QUALIFIERS: dict[str, str] = {}


def _qualifier_position(segment: str) -> str:
    """``DTM*405`` -> ``DTM-1``, ``HL*22`` -> ``HL-3``: where an X12 path's qualifier is read."""
    pos = _QUALIFIERS.get(segment)
    if pos is None:
        from engine.formats.x12 import QUALIFIER_ELEMENT

        name = segment.split("*", 1)[0]
        pos = _QUALIFIERS[segment] = f"{name}-{QUALIFIER_ELEMENT.get(name, 1)}"
    return pos  # path text -> position; as many entries as distinct paths in mappings


class Reader:
    """Read-only view of one message; build one per ``Mapping.run`` call, then drop it."""

    __slots__ = ("_cache", "_fhir", "_loops", "_outside", "_same", "delimiters", "memo", "msg", "read", "zone")

    def __init__(self, msg: Message, read: set[str] | None = None, zone: tzinfo | None = None):
        """``read`` collects the positions read (a new set when not given); ``zone`` is the
        sender's clock for date/times without an offset (None: each mapping's own default)."""
        self.msg = msg
        self.read: set[str] = set() if read is None else read
        self.zone = zone
        self.memo: dict[Any, Any] = {}
        """Per-message results of expressions that look beyond their own group (``ordinal``)."""
        self.delimiters = msg.delimiters
        # message-level value lists by id(path), and a group anchor's own by (id(path), its
        # position): kept on an HL7 message, so its other mappings read them too (paths are
        # parsed once per text, engine.formats.hl7.parse_path, so one text is one id)
        cache = getattr(msg, "read_cache", None)
        self._cache: dict[Any, list] = {} if cache is None else cache
        self._outside: dict[tuple[str, str], bool] = {}
        self._same: dict[tuple[frozenset[str], str], bool] = {}
        self._loops = getattr(msg, "format", "") == "x12"
        """X12 loops read their own segments first (engine.formats.x12): scoped reads go there."""
        self._fhir = getattr(msg, "format", "") == "fhir"
        """A FHIR resource answers FHIRPaths itself (engine.formats.fhir)."""

    def scope_name(self, scope: Any) -> str:
        """What ``for_each`` walked to make ``scope``: its segment (``OBX``, X12 ``CLP``) or, in a
        FHIR resource, the FHIRPath's text (``component``)."""
        if self._fhir:
            return self.msg.scope_name(scope)  # type: ignore[attr-defined]
        return self.msg.segments[scope[0]].name

    def _message_level(self, segment: str, scopes: tuple[Span, ...]) -> bool:
        """True when a scoped read of ``segment`` gives what an unscoped read gives.

        That holds when no ``segment`` lies inside any group of the outermost scope's kind
        (PID, PV1, MSH read from inside an OBR or AL1 loop): the scope walk then finds
        nothing in the scopes and everything at message level. Decided once per
        (segment, anchor), by a binary search of the groups for each ``segment``.
        """
        anchor = self.msg.segments[scopes[0][0]].name
        key = (segment, anchor)
        outside = self._outside.get(key)
        if outside is None:
            spans = self.msg.spans(anchor)
            starts = [a for a, _ in spans]
            outside = True
            for p in self.msg.positions(segment):
                k = bisect_right(starts, p) - 1
                if k >= 0 and p < spans[k][1]:
                    outside = False
                    break
            self._outside[key] = outside
        return outside

    def same_everywhere(self, segments: frozenset[str], scopes: tuple[Span, ...]) -> bool:
        """True when every read of ``segments`` gives in ``scopes`` what it gives in the whole
        message: no scopes, or none of ``segments`` inside a group of the outermost scope's kind
        (see :meth:`_message_level`). HL7 v2 only: False for X12 loops and FHIR. Decided once
        per (segments, the outermost scope's segment)."""
        if not scopes:
            return not (self._loops or self._fhir)
        key = (segments, self.msg.segments[scopes[0][0]].name)
        same = self._same.get(key)
        if same is None:
            same = not (self._loops or self._fhir) and all(self._message_level(seg, scopes) for seg in segments)
            self._same[key] = same
        return same

    def spans(self, segment: str, within: Span | None = None) -> list[Span]:
        return self.groups(segment, within) if self._fhir else self.msg.spans(segment, within)

    def groups(self, segment: Any, within: Any = None) -> list:
        """The groups (HL7, X12: spans) or FHIR nodes (int handles) ``segment`` walks in ``within``;
        ValueProblem when a FHIRPath cannot be evaluated."""
        if self._fhir:
            try:
                return self.msg.groups(segment, within)
            except EvaluationError as exc:
                raise ValueProblem(str(exc)) from None
        return self.msg.groups(segment, within)

    def location(self, span: Any) -> str | None:
        """Where a FHIR scope stands in the request (``Bundle.entry[2].resource``), for the
        texts of errors and warnings; None for HL7 and X12 (their groups are named by count)."""
        return getattr(self.msg, "location")(span) if self._fhir else None  # noqa: B009  (FhirMessage only)

    def find_segments(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[Segment]:
        if scopes and self._loops:
            return self.msg.find_segments(path, scopes)
        if scopes:
            own = self._own(path, scopes)
            if own is not None:
                return own
            if not self._message_level(path.segment, scopes):
                return self.msg.find_segments(path, scopes)
        return self.msg.find_segments(path)

    def raw_field(self, path: Path, scopes: tuple[Span, ...], reads: set[str]) -> str:
        """The whole field ``path`` names, undecoded, in its first segment in scope ("" when
        absent), noting ``reads`` as the positions read: for expressions that take a field
        apart themselves (pick, identifier, json_list, typed)."""
        self.read.update(reads)
        segs = self.find_segments(path, scopes)
        return segs[0].field(path.field) if segs and path.field is not None else ""

    def values(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[str | None]:
        """As :meth:`Message.values` (``path`` already parsed); records the position in ``read``.
        ValueProblem when a FHIRPath cannot give a value (see :mod:`engine.formats.fhir`)."""
        if self._fhir:
            self.read.update(self.msg.reads(path, scopes))  # type: ignore[attr-defined]
            try:
                return self.msg.values(path, scopes)
            except EvaluationError as exc:
                raise ValueProblem(str(exc)) from None
        pos = _POSITIONS.get(path.text)
        if pos is None:
            pos = _POSITIONS[path.text] = position(path)
        self.read.add(pos)
        if self._loops:
            if "*" in path.segment:  # DTM*405-02 reads the qualifier too
                self.read.add(_qualifier_position(path.segment))
            if scopes:
                return values_in(self.msg.find_segments(path, scopes), path, self.delimiters)
        if scopes:
            anchor = self._anchor(path, scopes)
            if anchor is not None:
                key = (id(path), anchor)
                cached = self._cache.get(key)
                if cached is None:
                    cached = self._cache[key] = values_in(self._anchored(anchor, path), path, self.delimiters)
                return cached
            if not self._message_level(path.segment, scopes):
                return self.msg.values(path, scopes)
        cached = self._cache.get(id(path))
        if cached is None:
            cached = self._cache[id(path)] = values_in(self.msg.find_segments(path), path, self.delimiters)
        return cached

    def _own(self, path: Path, scopes: tuple[Span, ...]) -> list[Segment] | None:
        """The segment of the group whose anchor ``path`` names (``AL1-3`` inside the AL1 loop,
        ``OBR-2`` inside an OBR's OBX loop), else None; see :meth:`_anchor`."""
        anchor = self._anchor(path, scopes)
        return None if anchor is None else self._anchored(anchor, path)

    def _anchored(self, anchor: int, path: Path) -> list[Segment]:
        """What ``path`` finds in the group anchored at ``anchor``: its anchor (for occurrence 1
        or all), never a later occurrence (the group has no other segment of that kind)."""
        return [self.msg.segments[anchor]] if path.occurrence in (None, 0, 1) else []

    def _anchor(self, path: Path, scopes: tuple[Span, ...]) -> int | None:
        """The position of the innermost scope anchored on ``path``'s segment, else None.

        A span holds exactly one segment of its anchor's kind, at its start, and the scopes
        inside it lie after that start: the scope walk would find no such segment in them, and
        then just that one (for occurrence 1 or all; none for a later occurrence).
        """
        segments = self.msg.segments
        for lo, _hi in reversed(scopes):
            if segments[lo].name == path.segment:
                return lo
        return None


# -- reads of a rule's own groups ------------------------------------------------------------
# A rule that walks ``for_each: [OBR, OBX]`` calls its expressions with one scope per entry, the
# OBR group's span then the OBX group's. A path to OBX there reads the OBX group's anchor (what
# Reader.values and Reader.find_segments find, see Reader._anchor), so the expressions compiled
# for the rule read it straight, without the search and the cache: about a fifth of a result's
# mapping. Only with the rule's own scopes and the message's reader; with other scopes (an
# ``each`` adds one) or another reader (an ``each`` over repetitions) they read as usual.


def own_group(path: Path, walks: tuple[str, ...]) -> int | None:
    """Which of a rule's scopes (``walks``: its HL7 ``for_each`` segments) holds the segment
    ``path`` reads as its group's anchor: the innermost of that segment; None when none does,
    or ``path`` names another occurrence than the first."""
    if not walks or path.segment not in walks or path.occurrence not in (None, 1):
        return None
    return len(walks) - 1 - walks[::-1].index(path.segment)


def values_reader(path: Path, walks: tuple[str, ...]) -> Callable:
    """``fn(reader, scopes)`` giving what ``reader.values(path, scopes)`` gives: the rule's own
    group read straight where ``path`` names one (see own_group), else that call."""
    k = own_group(path, walks)
    if k is None:
        return lambda m, s: m.values(path, s)
    n, pos = len(walks), position(path)

    def values(m: Any, s: tuple) -> list[str | None]:
        if len(s) != n or type(m) is not Reader:
            return m.values(path, s)
        m.read.add(pos)
        return values_in([m.msg.segments[s[k][0]]], path, m.delimiters)

    return values


def field_reader(path: Path, walks: tuple[str, ...]) -> Callable:
    """``fn(reader, scopes, reads)`` giving what ``reader.raw_field(path, scopes, reads)`` gives:
    the rule's own group read straight where ``path`` names one (see own_group), else that call."""
    k = own_group(path, walks)
    if k is None or path.field is None:
        return lambda m, s, reads: m.raw_field(path, s, reads)
    n, field = len(walks), path.field

    def raw(m: Any, s: tuple, reads: Any) -> str:
        if len(s) != n or type(m) is not Reader:
            return m.raw_field(path, s, reads)
        m.read.update(reads)
        return m.msg.segments[s[k][0]].field(field)

    return raw
