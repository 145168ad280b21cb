"""One X12 transaction set as the mapping language reads it: paths, loops and scopes.

The front end (:mod:`engine.formats.x12_envelope`) splits a file into interchanges, groups and
transaction sets; each accepted transaction set is stored as one message whose content is a
self-contained interchange (ISA, GS, ST ... SE, GE, IEA). :class:`X12Message` reads that back
and offers the interface the mapping executor uses on an HL7 :class:`~engine.formats.hl7.Message`
(``find_segments``, ``values``, ``spans``, ``groups``, ``segments``, ``delimiters``), so one
mapping language, one executor, one ``engine try``/``engine test`` serve both formats.

Paths (:func:`parse_path`)::

    CLP-01         element 1 of the first CLP in scope (leading zeros optional: CLP-1)
    SVC-01.2       component 2 of element 1 (SVC01-2, the procedure code)
    DTM*405-02     element 2 of the DTM whose qualifier is 405 (the qualifier is element 1,
                   HL's is element 3: HL*22 is a subscriber level)
    CAS[*]-02      every CAS in scope; CAS[2]-02 the second
    HI-01[*].2     X12 repetitions (ISA11) as HL7 repetitions

Loops (why this is written here: pyx12 walks loops while validating, but gives no random-access
view a mapping can read by path, and its tree costs several times the parse). A loop is its
anchor segment and what follows it until a segment that closes it (:data:`LOOPS`): a CLP (2100)
runs until the next CLP, LX, PLB or SE and holds its SVC (2110) loops. Inside ``for_each`` a path
reads the innermost loop's *own* segments first (not those of loops nested in it: a claim's
``CAS`` is claim-level, its lines' CAS belong to each SVC), then the enclosing loops', then the
whole transaction set. An HL loop (837) also reads its parent HLs (HL02), so a claim under a
dependent (HL 23) reads the subscriber (HL 22) and the billing provider (HL 20).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

from engine.errors import ParseError
from engine.formats import hl7
from engine.formats.hl7 import Delimiters, Path, Segment, Span

_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{1,2})(?:\*(?P<qual>[A-Z0-9]{1,30}))?(?:\[(?P<occ>\*|\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\*|\d+)\])?(?:\.(?P<comp>\d+))?)?$"
)
QUALIFIER_ELEMENT = {"HL": 3}
"""Where a segment's qualifier is, when it is not element 1 (HL03: the hierarchical level code)."""

ENVELOPE = ("ISA", "GS", "ST", "SE", "GE", "IEA")


@dataclass(frozen=True)
class Loop:
    closers: frozenset[str]
    """Segments (by id, or id*qualifier) that end the loop; the anchor's own id always does."""
    nested: tuple[str, ...] = ()
    """Loops that sit inside this one: their segments are theirs, not this loop's own."""


def _loop(closers: str, nested: str = "") -> Loop:
    return Loop(frozenset(closers.split()), tuple(nested.split()))


# 835 (X221A1): 1000A/B payer and payee N1, 2000 LX, 2100 CLP, 2110 SVC, PLB after the last LX.
# 837 (X222A1/X223A2): 2000A/B/C HL, 2300 CLM, 2320 SBR (other subscriber), 2400 LX.
# 999 (X231A1): 2000 AK2, 2100 IK3.
LOOPS: dict[str, Loop] = {
    "N1": _loop("N1 LX CLP PLB SE"),
    "LX": _loop("LX CLM HL PLB SE", "CLP SV1 SV2"),
    "CLP": _loop("CLP LX PLB SE", "SVC"),
    "SVC": _loop("SVC CLP LX PLB SE"),
    "HL": _loop("HL SE", "CLM"),
    "CLM": _loop("CLM HL SE", "SBR LX"),
    "SBR": _loop("SBR LX CLM HL SE"),
    "AK2": _loop("AK2 AK9 SE", "IK3"),  # 999 2000: one transaction set's answer
    "IK3": _loop("IK3 IK5 AK2 AK9 SE"),  # 999 2100: one segment in error, its IK4s
}
"""Loop anchors by segment id; any other segment spans just itself (``for_each: CAS``)."""


def parse_path(text: str) -> Path:
    """Parse an X12 path (see the module docstring); raises ValueError naming what is wrong.

    The result is an :class:`~engine.formats.hl7.Path` whose ``segment`` is the id with its
    qualifier (``DTM*405``), so scoped reads find it like any segment name."""
    m = _PATH.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"malformed X12 path {text!r} (expected e.g. CLP-01, SVC-01.2, DTM*405-02, CAS[*]-02)")

    def num(s: str | None) -> int | None:
        return None if s is None else (0 if s == "*" else int(s))

    segment = m["seg"] + (f"*{m['qual']}" if m["qual"] else "")
    p = Path(text, segment, num(m["occ"]), num(m["field"]), num(m["rep"]), num(m["comp"]), None)
    for part, value in (("element", p.field), ("component", p.component)):
        if value is not None and value < 1:
            raise ValueError(f"malformed X12 path {text!r}: {part} numbers start at 1")
    if p.occurrence is not None and m["occ"] != "*" and p.occurrence < 1:
        raise ValueError(f"malformed X12 path {text!r}: occurrence numbers start at 1")
    return p


def is_x12(content: bytes) -> bool:
    """True when stored ``content`` is an X12 interchange (HL7 v2 starts with MSH, FHS or BHS)."""
    return content.lstrip(b"\xef\xbb\xbf \r\n\t")[:3] == b"ISA"


def delimiters(element: str, component: str, repetition: str | None) -> Delimiters:
    """X12 separators in the shape the mapping executor reads. X12 has no escape character and
    no sub-components: both are set to control characters no X12 text carries."""
    return Delimiters(element, component, repetition or "\x1e", "\x00", "\x1f")


class X12Message(hl7.Message):
    """One transaction set (with the ISA and GS it came in), read-only, for mappings.

    ``segments`` holds every segment from ISA to IEA; each segment's ``name`` is its id
    (``N1``, ``CLP``) and ``fields[n]`` its element n. The ISA's fixed-width elements are
    stripped of their padding.
    """

    __slots__ = ("_free", "_hl_parent", "_hl_spans", "_own")
    format = "x12"

    def __init__(self, segments: list[str], element: str, component: str, repetition: str | None):
        if not segments or not segments[0].startswith("ISA"):
            raise ParseError("an X12 message starts with an ISA segment", code=100, segment="ISA")
        self.delimiters = d = delimiters(element, component, repetition)
        first = element.join(e.strip() for e in segments[0].split(element))
        self.segments = [Segment(s, d) for s in [first, *segments[1:]]]
        for seg in self.segments:
            seg.name = seg.text.split(element, 1)[0]
        self.text = "\n".join(s.text for s in self.segments)
        self._names = [seg.name for seg in self.segments]
        self._positions: dict[str, list[int]] | None = None
        self._spans: dict[tuple[str, Span | None], list[Span]] = {}
        self._outside: dict = {}
        self._members: dict[tuple[str, Span], list[int]] = {}
        self._own: dict[tuple[str, Span], list[int]] = {}
        self._hl_parent: dict[int, int] | None = None
        self._free: dict[tuple[str, str], bool] = {}
        self._hl_spans: dict[int, Span] = {}

    @classmethod
    def from_text(cls, text: str) -> X12Message:
        """Read a stored single-transaction interchange (ISA ... IEA) back."""
        text = text.lstrip("\ufeff \r\n\t")
        if not text.startswith("ISA") or len(text) < 106:
            raise ParseError("an X12 message starts with a complete ISA segment", code=100, segment="ISA")
        element, component, terminator = text[3], text[104], text[105]
        parts = [s.strip("\r\n") for s in text.split(terminator)]
        segments = [s for s in parts if s.strip()]
        isa = segments[0].split(element)
        repetition = isa[11] if len(isa) > 11 and len(isa[11]) == 1 and not isa[11].isalnum() else None
        return cls(segments, element, component, repetition)

    # -- where segments are ------------------------------------------------------------------
    def positions(self, segment: str) -> list[int]:
        """Indexes of every ``segment``; ``ID*QUAL`` keeps those whose qualifier is QUAL."""
        if self._positions is None:
            index: dict[str, list[int]] = {}
            for i, name in enumerate(self._names):
                index.setdefault(name, []).append(i)
            self._positions = index
        found = self._positions.get(segment)
        if found is None and "*" in segment:
            name, qual = segment.split("*", 1)
            n = QUALIFIER_ELEMENT.get(name, 1)
            comp = self.delimiters.component  # HI*ABK: the qualifier is a composite's first component
            found = [i for i in self._positions.get(name, []) if self.segments[i].field(n).split(comp, 1)[0] == qual]
            self._positions[segment] = found
        return found or []

    def _closes(self, anchor: str, j: int) -> bool:
        loop = LOOPS[anchor]
        name = self._names[j]
        if name == anchor or name in loop.closers or name in ENVELOPE:
            return True
        return any(c.startswith(name + "*") and self.segments[j].field(1) == c[len(name) + 1 :] for c in loop.closers)

    def spans(self, segment: str, within: Span | None = None) -> list[Span]:
        """Each ``segment`` in ``within`` with its loop (:data:`LOOPS`); others span themselves."""
        key = (segment, within)
        cached = self._spans.get(key)
        if cached is not None:
            return cached
        lo, hi = within or (0, len(self.segments))
        starts = self.positions(segment)
        anchor = segment.split("*", 1)[0]
        out: list[Span] = []
        for i in starts[bisect_left(starts, lo) : bisect_left(starts, hi)]:
            j = i + 1
            if anchor in LOOPS:
                while j < hi and not self._closes(anchor, j):
                    j += 1
            out.append((i, j))
        self._spans[key] = out
        return out

    def own(self, segment: str, scope: Span) -> list[int]:
        """Positions of ``segment`` in the loop ``scope`` outside the loops nested in it (the
        anchor itself is the loop's own: ``CLP-01`` in a CLP loop is its CLP)."""
        key = (segment, scope)
        out = self._own.get(key)
        if out is None:
            lo, hi = scope
            positions = self.positions(segment)
            loop = LOOPS.get(self._names[lo])
            base = segment.split("*", 1)[0]
            nested = sorted(s for a in loop.nested if a != base for s in self.spans(a, (lo + 1, hi))) if loop else []
            out, g = [], 0
            for p in positions[bisect_left(positions, lo) : bisect_left(positions, hi)]:
                while g < len(nested) and nested[g][1] <= p:
                    g += 1
                if g == len(nested) or p < nested[g][0]:
                    out.append(p)
            self._own[key] = out
        return out

    def members(self, segment: str, within: Span) -> list[int]:
        return self.own(segment, within)

    def groups(self, segment: str, within: Span | None = None) -> list[Span]:
        """The ``segment`` loops of ``within`` itself (every one when ``within`` is None)."""
        spans = self.spans(segment, within)
        if within is None:
            return spans
        mine = set(self.own(segment, within))
        return [s for s in spans if s[0] in mine]

    def _chain(self, scopes: tuple[Span, ...]) -> list[Span]:
        """``scopes`` with each HL loop's parent HL loops before it (HL02 names the parent)."""
        if not any(self._names[s[0]] == "HL" for s in scopes):
            return list(scopes)
        if self._hl_parent is None:  # once per message: HL id -> its loop, and each loop's parent
            by_id = {self.segments[i].field(1): i for i in self.positions("HL")}
            self._hl_parent = {i: by_id.get(self.segments[i].field(2), -1) for i in self.positions("HL")}
            self._hl_spans = {s[0]: s for s in self.spans("HL")}
        spans = self._hl_spans
        out: list[Span] = []
        for s in scopes:
            if self._names[s[0]] == "HL":
                parents: list[Span] = []
                p = self._hl_parent.get(s[0], -1)
                while p >= 0 and p != s[0] and len(parents) < 20:  # a loop in HL02 ends the walk
                    parents.append(spans[p])
                    p = self._hl_parent.get(p, -1)
                out.extend(reversed(parents))
            out.append(s)
        return out

    def find_segments(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[Segment]:
        """Segments matching ``path``: the innermost loop's own, then outwards, then anywhere."""
        segment = path.segment
        if path.occurrence is None or path.occurrence == 1:
            for scope in reversed(scopes):  # CLP-01 in a CLP loop (or one nested in it): its anchor
                if self._names[scope[0]] == segment:
                    return [self.segments[scope[0]]]
        positions = self.positions(segment)
        if not positions:
            return []
        if scopes and self._outside_loops(segment, self._names[scopes[0][0]]):
            return self._pick(positions, path)  # TRN, BPR, N1*PE: never inside such a loop
        chain = self._chain(scopes)
        for scope in reversed(chain):
            found = self.own(path.segment, scope)
            if found:
                return self._pick(found, path)
        if not chain:
            return self._pick(self.positions(path.segment), path)
        # the transaction's own: never a sibling loop's (another claim's DTM, another line's CAS)
        return self._pick(self._outside_groups(path.segment, self._names[chain[0][0]], 0, len(self.segments)), path)

    def _outside_loops(self, segment: str, anchor: str) -> bool:
        """True when no ``segment`` lies inside any ``anchor`` loop: read from inside one, it is
        the transaction's own (decided once per pair, in one merge of two ascending lists)."""
        key = (segment, anchor)
        free = self._free.get(key)
        if free is None:
            outside = self._outside_groups(segment, anchor, 0, len(self.segments))
            free = self._free[key] = len(outside) == len(self.positions(segment))
        return free

    def _pick(self, found: list[int], path: Path) -> list[Segment]:
        if path.occurrence == 0:
            return [self.segments[i] for i in found]
        k = (path.occurrence or 1) - 1
        return [self.segments[found[k]]] if k < len(found) else []

    def values(self, path: Path | str, scopes: tuple[Span, ...] = ()) -> list[str | None]:
        """Every value at ``path`` (an X12 path or a parsed one) in scope; empty ones left out."""
        if isinstance(path, str):
            path = parse_path(path)
        return hl7.values_in(self.find_segments(path, scopes), path, self.delimiters)

    def header(self):
        raise AttributeError("an X12 message has no MSH header")
