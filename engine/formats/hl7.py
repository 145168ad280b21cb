"""HL7 v2: read the header, tokenize a message, address values by path, split batches.

Why a hand-written tokenizer rather than hl7apy on the hot path: as measured in
``bench/mllp_ingest.py`` (it prints the bare hl7apy parse rate beside the engine's), hl7apy
1.3.5 parses roughly a hundred ADT messages a second on one core, and on real feeds it rejects
LF-separated messages, the 2.7+ truncation character in MSH-2 (``^~\\&#``) and several
versions; with ``find_groups=True`` it drops Z-segments and segments newer than the declared
version. This module only splits on the delimiters the message itself declares in MSH-1/MSH-2,
keeps every segment in order (so nothing is ever lost on the way through) and decodes escape
sequences when a value is read. hl7apy is still used where its knowledge of message structures
pays: optional strict validation per channel (:func:`validate_strict`). The tests run this
tokenizer and hl7apy over the same fixtures and compare the values.

Paths (used by mappings, filters and ordering keys)::

    PID-5.1         first PID, field 5, first repetition, component 1
    PID-3[*].1      component 1 of every repetition of PID-3
    PID-3[2].4.1    second repetition, component 4, sub-component 1
    OBX[*]-5        field 5 of every OBX in scope
    OBX             the segment itself (for iteration and "exists" conditions)

Numbers are 1-based, as in the standard. MSH-1 is the field separator and MSH-2 the encoding
characters, so MSH-9.2 is the trigger event, as everywhere in HL7 documentation.
"""

from __future__ import annotations

import codecs
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from engine.errors import ParseError

SUPPORTED_VERSIONS = (
    "2.1",
    "2.2",
    "2.3",
    "2.3.1",
    "2.4",
    "2.5",
    "2.5.1",
    "2.6",
    "2.7",
    "2.7.1",
    "2.8",
    "2.8.1",
    "2.8.2",
)
_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")

# MSH-18 character set names (HL7 table 0211) to Python codecs.
CHARSETS = {
    "": None,
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "ISO IR6": "ascii",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


def codec_for(charset: str | None, default: str = "utf-8") -> str:
    """The Python codec for an MSH-18 value (first repetition), or for a Python codec name
    (a channel's ``charset``); ``default`` when empty or unknown."""
    raw = (charset or "").split("~", 1)[0].strip()
    if raw.upper() in CHARSETS:
        return CHARSETS[raw.upper()] or default
    try:
        return codecs.lookup(raw).name
    except LookupError:
        return default


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, segment: str) -> Delimiters:
        if len(segment) < 8 or not segment.startswith(("MSH", "FHS", "BHS")):
            raise ParseError("message does not start with an MSH segment", code=100, field=None)
        f = segment[3]
        enc = segment[4:].split(f, 1)[0]
        if len(enc) < 2 or f.isalnum():
            raise ParseError("MSH-1/MSH-2 do not declare usable delimiters", code=102, field=2)
        # MSH-2 may carry a fifth character (truncation, v2.7+): accepted and ignored.
        return cls(
            f,
            enc[0],
            enc[1] if len(enc) > 1 else "~",
            enc[2] if len(enc) > 2 else "\\",
            enc[3] if len(enc) > 3 else "&",
        )


_ESCAPE_HIGHLIGHT = {"H", "N"}


def unescape(value: str, d: Delimiters) -> str:
    """Decode HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\; \\H\\ and \\N\\ dropped)."""
    esc = d.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # a lone escape character: keep it as text
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        if seq == "F":
            out.append(d.field)
        elif seq == "S":
            out.append(d.component)
        elif seq == "T":
            out.append(d.subcomponent)
        elif seq == "R":
            out.append(d.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq == ".br":
            out.append("\n")
        elif seq in _ESCAPE_HIGHLIGHT:
            pass
        elif seq[:1] == "X" and len(seq) > 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
            except ValueError:
                out.append(value[i : end + 1])
        else:  # unknown escape (\Cxxyy\, \Mxxyyzz\, \Zxx\ ...): kept verbatim, never dropped
            out.append(value[i : end + 1])
        i = end + 1
    return "".join(out)


class Segment:
    """One segment; fields are split on first access. ``fields[n]`` is field n (1-based)."""

    __slots__ = ("_d", "_fields", "name", "text")

    def __init__(self, text: str, d: Delimiters):
        self.text = text
        self.name = text[:3]
        self._fields: list[str] | None = None
        self._d = d

    @property
    def fields(self) -> list[str]:
        if self._fields is None:
            parts = self.text.split(self._d.field)
            if self.name in ("MSH", "FHS", "BHS"):
                parts.insert(1, self._d.field)
            self._fields = parts
        return self._fields

    def field(self, n: int) -> str:
        f = self.fields
        return f[n] if n < len(f) else ""

    def __repr__(self) -> str:  # never the content: it may be PHI
        return f"<Segment {self.name} fields={len(self.fields) - 1}>"


_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\*|\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\*|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)


@dataclass(frozen=True)
class Path:
    """A parsed HL7 path; ``None`` occurrence/repetition means the first, ``0`` means all (``*``)."""

    text: str
    segment: str
    occurrence: int | None
    field: int | None
    repetition: int | None
    component: int | None
    subcomponent: int | None

    @property
    def many(self) -> bool:
        return self.occurrence == 0 or self.repetition == 0


_path_cache: dict[str, Path] = {}


def parse_path(text: str) -> Path:
    """Parse ``SEG[occ]-FIELD[rep].COMP.SUB``; raises ValueError naming what is wrong."""
    cached = _path_cache.get(text)
    if cached:
        return cached
    m = _PATH.match(text.strip())
    if not m:
        raise ValueError(f"malformed HL7 path {text!r} (expected e.g. PID-5.1, PID-3[*].1, OBX-5)")

    def num(s: str | None) -> int | None:
        return None if s is None else (0 if s == "*" else int(s))

    p = Path(text, m["seg"], num(m["occ"]), num(m["field"]), num(m["rep"]), num(m["comp"]), num(m["sub"]))
    for part, value in (
        ("field", p.field),
        ("component", p.component),
        ("sub-component", p.subcomponent),
        ("occurrence", p.occurrence if m["occ"] != "*" else 1),
        ("repetition", p.repetition if m["rep"] != "*" else 1),
    ):
        if value is not None and value < 1 and not (part == "field" and p.segment == "MSH" and value == 0):
            raise ValueError(f"malformed HL7 path {text!r}: {part} numbers start at 1")
    _path_cache[text] = p
    return p


Span = tuple[int, int]  # [start, end) indexes into Message.segments

# Segments that may follow a group's anchor inside its group, across v2.3-v2.8 (ORU_R01,
# OML/ORM, ADT_A01, DFT). A span of one of these anchors ends at the first segment not listed.
_OBSERVATION = {"OBX", "NTE", "PRT", "TCD", "SID", "TQ1", "TQ2", "CTD", "CTI", "FT1", "SPM", "ROL", "DG1"}
GROUP_CHILDREN: dict[str, frozenset[str]] = {
    "ORC": frozenset(
        {
            "OBR",
            "TQ1",
            "TQ2",
            "RQD",
            "RXO",
            "RXE",
            "RXA",
            "RXD",  # RDS^O13: the dispense of this order
            "RXG",  # RGV^O15: the give of this order
            "RXR",
            "RXC",
            "ODS",
            "ODT",
            "CTD",
            "NTE",
            "PRT",
            "FT1",
            "CTI",
            "BLG",
            "DG1",
            "OBX",
            "SPM",
            "SAC",
            "TCD",
            "SID",
        }
    ),
    "OBR": frozenset(_OBSERVATION),
    "OBX": frozenset({"NTE", "PRT"}),
    "SPM": frozenset({"OBX", "NTE", "SAC"}),
    "IN1": frozenset({"IN2", "IN3", "ROL", "AUT", "RF1"}),
    "NK1": frozenset(),
    "AL1": frozenset(),
    "DG1": frozenset(),
    "PR1": frozenset({"ROL"}),
    "FT1": frozenset({"PR1", "ROL", "NTE", "PRT"}),  # DFT_P03: a charge line and its procedures
    "GT1": frozenset(),
}

_NESTED: dict[tuple[str, str], tuple[str, ...]] = {}


def nested_anchors(parent: str, segment: str) -> tuple[str, ...]:
    """The group anchors that may sit inside a ``parent`` group and hold ``segment`` in groups
    of their own: an OBR's SPM holds OBX and NTE, its OBX hold NTE; an ORC's OBR holds OBX.

    A ``segment`` inside such a nested group belongs to that group, not to ``parent`` itself.
    """
    key = (parent, segment)
    found = _NESTED.get(key)
    if found is None:
        found = tuple(
            sorted(
                a
                for a in GROUP_CHILDREN.get(parent, ())
                if a != segment and segment in GROUP_CHILDREN.get(a, frozenset())
            )
        )
        _NESTED[key] = found
    return found


class Message:
    """A tokenized HL7 v2 message. Every segment is kept, in order, Z-segments included.

    Reading a path costs O(log n) in the number of segments n, plus the segments returned: the
    positions of each segment name are indexed once per message, and a scope's group spans
    and the segments outside its inner groups are computed once (in time proportional to the
    scope's length) and kept, so walking every group of a message costs O(n) in all.
    """

    __slots__ = (
        "_members",
        "_names",
        "_outside",
        "_positions",
        "_spans",
        "delimiters",
        "read_cache",
        "segments",
        "text",
    )
    format = "hl7v2"

    def __init__(self, text: str):
        text = text.strip("\x0b\x1c\r\n \t\ufeff")
        if not text.startswith("MSH"):
            raise ParseError("message does not start with an MSH segment", code=100, segment="MSH")
        lines = [s for s in _SEGMENT_SPLIT.split(text) if s.strip()]
        self.text = text
        self.delimiters = d = Delimiters.from_msh(lines[0])
        self.segments = [Segment(s.rstrip(), d) for s in lines]
        self._names = [seg.name for seg in self.segments]
        self._positions: dict[str, list[int]] | None = None
        self._spans: dict[tuple[str, Span | None], list[Span]] = {}
        self._outside: dict[tuple[str, str, int, int], list[int]] = {}
        self._members: dict[tuple[str, Span], list[int]] = {}
        self.read_cache: dict[Any, list[str | None]] = {}
        """Value lists the mappings' readers (engine.transforms.reader) computed for this message,
        kept with it so that every mapping of one message shares them (a message is never changed)."""
        for i, seg in enumerate(self.segments):
            if not _SEGMENT_NAME.match(seg.name) or (len(seg.text) > 3 and seg.text[3] != d.field):
                raise ParseError(
                    f"segment {i + 1} has no valid segment id",
                    code=100,
                    segment=seg.name if _SEGMENT_NAME.match(seg.name) else "",
                    sequence=i + 1,
                )

    # -- header shortcuts -------------------------------------------------------------------
    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def header(self) -> Header:
        return Header.from_segment(self.msh)

    # -- paths ------------------------------------------------------------------------------
    def positions(self, segment: str) -> list[int]:
        """Indexes into ``segments`` of every ``segment`` (ascending; read-only, shared).

        The index of all names is built on the first call, in one pass over the message.
        """
        if self._positions is None:
            index: dict[str, list[int]] = {}
            for i, name in enumerate(self._names):
                index.setdefault(name, []).append(i)
            self._positions = index
        return self._positions.get(segment, [])

    def spans(self, segment: str, within: Span | None = None) -> list[Span]:
        """Each occurrence of ``segment`` in ``within`` with the segments that belong to it.

        This is how repeating groups are walked. For the group anchors the standard defines
        (OBR, OBX, ORC, IN1, NK1, ...) a span covers the segments that may follow the anchor
        in its group (OBR: its OBX, NTE, PRT ...; IN1: IN2, IN3) and Z-segments, and ends at
        the first segment that cannot; any other anchor spans up to the next one of its kind.
        Computed once per (segment, within), in time proportional to the spans' length.
        """
        key = (segment, within)
        cached = self._spans.get(key)
        if cached is not None:
            return cached
        lo, hi = within or (0, len(self.segments))
        names = self._names
        starts = self.positions(segment)
        children = GROUP_CHILDREN.get(segment)
        out: list[Span] = []
        k, last = bisect_left(starts, lo), bisect_left(starts, hi)
        while k < last:
            i = starts[k]
            k += 1
            end = starts[k] if k < last else hi  # the next anchor closes any span
            j = i + 1
            if children is None:
                j = end
            else:
                while j < end and (names[j] in children or names[j][0] == "Z"):
                    j += 1
            out.append((i, j))
        self._spans[key] = out
        return out

    def members(self, segment: str, within: Span) -> list[int]:
        """Positions of ``segment`` in the group ``within`` that belong to that group itself.

        A ``segment`` inside a nested group of another kind that may hold it (see
        :func:`nested_anchors`) belongs to that nested group: in an OBR group, the OBX of its
        SPM groups are the specimen's, the NTE after an OBX are that result's notes. Computed
        once per (segment, group), in time proportional to the group's length.
        """
        key = (segment, within)
        out = self._members.get(key)
        if out is None:
            lo, hi = within
            positions = self.positions(segment)
            inside = positions[bisect_left(positions, lo) : bisect_left(positions, hi)]
            nested = sorted(s for a in nested_anchors(self._names[lo], segment) for s in self.spans(a, within))
            out, g = [], 0
            for p in inside:
                while g < len(nested) and nested[g][1] <= p:
                    g += 1
                if g == len(nested) or not nested[g][0] < p:
                    out.append(p)
            self._members[key] = out
        return out

    def groups(self, segment: str, within: Span | None = None) -> list[Span]:
        """The ``segment`` groups that belong to the group ``within`` itself (every one in the
        message when ``within`` is None): :meth:`spans` without those inside a nested group of
        another kind. In an OBR group, its OBX groups are its results; the OBX under its SPM
        are the specimen's groups, walked as ``spans("SPM", obr)`` then ``groups("OBX", spm)``.
        This is how a mapping's ``for_each`` walks the message.
        """
        spans = self.spans(segment, within)
        if within is None or not nested_anchors(self._names[within[0]], segment):
            return spans
        own = set(self.members(segment, within))
        return [s for s in spans if s[0] in own]

    def find_segments(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[Segment]:
        """Segments matching ``path``: in the innermost scope that has any, then outwards.

        An enclosing scope never lends a segment from a sibling group: inside the OBX loop,
        ``NTE-3`` is this OBX's note or the OBR's own note, never another OBX's.
        """
        positions = self.positions(path.segment)
        if not positions:
            return []
        inner: Span | None = None
        for lo, hi in (*reversed(scopes), (0, len(self.segments))):
            if inner is None:
                a, b = bisect_left(positions, lo), bisect_left(positions, hi)
            else:
                found = self._outside_groups(path.segment, self._names[inner[0]], lo, hi)
                a, b = 0, len(found)
            if a < b:
                seq = positions if inner is None else found
                if path.occurrence == 0:
                    return [self.segments[i] for i in seq[a:b]]
                k = a + (path.occurrence or 1) - 1
                return [self.segments[seq[k]]] if k < b else []
            inner = (lo, hi)
        return []

    def _outside_groups(self, segment: str, anchor: str, lo: int, hi: int) -> list[int]:
        """Positions of ``segment`` in ``[lo, hi)`` that lie in no ``anchor`` group within it.

        Computed once per (segment, anchor, scope) in one merge of two ascending lists.
        """
        key = (segment, anchor, lo, hi)
        out = self._outside.get(key)
        if out is None:
            positions = self.positions(segment)
            groups = self.spans(anchor, (lo, hi))
            out, g = [], 0
            for p in positions[bisect_left(positions, lo) : bisect_left(positions, hi)]:
                while g < len(groups) and groups[g][1] <= p:
                    g += 1
                if g == len(groups) or p < groups[g][0]:
                    out.append(p)
            self._outside[key] = out
        return out

    def values(self, path: Path | str, scopes: tuple[Span, ...] = ()) -> list[str | None]:
        """Every value at ``path`` (escape sequences decoded); ``None`` for an HL7 null (``""``)."""
        if isinstance(path, str):
            path = parse_path(path)
        return values_in(self.find_segments(path, scopes), path, self.delimiters)

    def value(self, path: Path | str, scopes: tuple[Span, ...] = ()) -> str | None:
        """The first non-empty value at ``path``, or ``None``."""
        for v in self.values(path, scopes):
            if v:
                return v
        return None

    def segment_names(self) -> list[str]:
        return list(self._names)


def values_in(segments: list[Segment], path: Path, d: Delimiters) -> list[str | None]:
    """The values ``path`` names in ``segments`` (already chosen by segment name and occurrence).

    Empty values are left out unless the path asks for every repetition (``[*]``), where they
    keep their place; an HL7 null (``""``) is ``None``; escape sequences are decoded.
    """
    out: list[str | None] = []
    for seg in segments:
        if path.field is None:
            out.append(seg.text)
            continue
        raw = seg.field(path.field)
        if seg.name == "MSH" and path.field <= 2:
            out.append(raw)
            continue
        if path.repetition is None:  # the first repetition, the commonest read: no list of them all
            reps = [raw.partition(d.repetition)[0]] if d.repetition else [raw]
        else:
            reps = raw.split(d.repetition) if raw else [""]
            if path.repetition:
                reps = [reps[path.repetition - 1]] if path.repetition <= len(reps) else []
        for rep in reps:
            value = rep
            if path.component is not None:
                comps = rep.split(d.component)
                value = comps[path.component - 1] if path.component <= len(comps) else ""
                if path.subcomponent is not None:
                    subs = value.split(d.subcomponent)
                    value = subs[path.subcomponent - 1] if path.subcomponent <= len(subs) else ""
            if value == '""':
                out.append(None)
            elif value:
                out.append(unescape(value, d))
            elif path.many:
                out.append("")
    return out


@dataclass(frozen=True)
class Header:
    """What the receive path needs from MSH, read without tokenizing the rest of the message."""

    field_sep: str
    encoding_chars: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    message_type: str
    trigger: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    charset: str

    @classmethod
    def from_segment(cls, msh: Segment) -> Header:
        d = msh._d
        f = msh.field

        def first(n: int) -> str:
            return f(n).split(d.repetition, 1)[0]

        msg_type = first(9).split(d.component)
        return cls(
            field_sep=d.field,
            encoding_chars=f(2),
            sending_app=first(3),
            sending_facility=first(4),
            receiving_app=first(5),
            receiving_facility=first(6),
            message_type=msg_type[0],
            trigger=msg_type[1] if len(msg_type) > 1 else "",
            structure=msg_type[2] if len(msg_type) > 2 else "",
            control_id=f(10),
            processing_id=first(11).split(d.component, 1)[0],
            version=first(12).split(d.component, 1)[0],
            charset=f(18),
        )


_BYTE_ORDER_MARKS = (  # UTF-32 LE first: its mark begins with UTF-16 LE's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_FRAMING = b"\x0b\x1c\r\n \t"  # MLLP framing bytes and blank space a sender may leave around a message


def byte_order_mark(data: bytes) -> tuple[int, int, str] | None:
    """The byte order mark at the start of ``data`` (after MLLP framing or blank space, if
    any): ``(offset, length in bytes, codec)``, or None. Editors on Windows save files with
    one; it is not part of the message, so every reader skips it (stored bytes keep it)."""
    start = len(data) - len(data.lstrip(_FRAMING))
    for mark, codec in _BYTE_ORDER_MARKS:
        if data.startswith(mark, start):
            return start, len(mark), codec
    return None


def read_header(raw: bytes) -> Header:
    """Read MSH from raw bytes without decoding the body; raises ParseError on a missing MSH.

    Header fields are ASCII in every character set HL7 allows except UTF-16/32, which a
    byte order mark or NUL bytes give away and which are decoded first. A UTF-8 byte order
    mark is skipped.
    """
    data = raw.strip(_FRAMING)
    mark = byte_order_mark(data)
    wide = mark[2] if mark and mark[2] != "utf-8" else ("utf-16" if b"\x00" in data[:8] else None)
    if wide:
        data = raw.lstrip(_FRAMING)  # not stripped at the end: a CR byte there is half a code unit
        data = data[: len(data) - len(data) % (4 if wide == "utf-32" else 2)]
        try:
            data = data.decode(wide).encode("utf-8")
        except UnicodeError as exc:  # NUL bytes but not UTF-16 (binary junk, odd length)
            raise ParseError("message bytes are neither ASCII-compatible nor UTF-16", code=100, segment="MSH") from exc
    elif mark:
        data = data[mark[1] :]
    if not data.startswith(b"MSH"):
        raise ParseError("message does not start with an MSH segment", code=100, segment="MSH")
    end = len(data)
    for sep in (b"\r", b"\n"):
        k = data.find(sep)
        if 0 <= k < end:
            end = k
    text = data[:end].decode("latin-1")
    d = Delimiters.from_msh(text)
    return Header.from_segment(Segment(text, d))


def check_header(h: Header, *, versions: tuple[str, ...] = SUPPORTED_VERSIONS) -> None:
    """Reject what no later stage can accept: raises ParseError with the table 0357 code."""
    if not h.message_type:
        raise ParseError("MSH-9 message type is empty", code=101, field=9)
    if not h.control_id:
        raise ParseError("MSH-10 message control id is empty", code=101, field=10)
    if not h.version:
        raise ParseError("MSH-12 version id is empty", code=101, field=12)
    if h.version not in versions:
        raise ParseError(f"unsupported HL7 version {h.version!r}", code=203, field=12)


def decode(raw: bytes, default_charset: str = "utf-8", *, charset: str | None = None) -> str:
    """Decode a message's bytes: with the codec MSH-18 names, else the one its byte order mark
    names, else ``default_charset`` (the channel's). A UTF-8 byte order mark is left out of
    the text; a UTF-16/32 one decides the codec, as no other can read those bytes.

    ``charset``: MSH-18 when the caller has already read the header (saves reading it again).
    Raises ParseError (code 102 at MSH-18, answered AE) naming the byte offset in ``raw`` of
    the first byte the codec cannot read and the field it lies in, never the content.
    """
    if charset is None:
        try:
            charset = read_header(raw).charset
        except ParseError:
            charset = ""
    mark = byte_order_mark(raw)
    if mark and mark[2] != "utf-8":
        codec, start = mark[2], mark[0]  # the codec reads (and drops) the mark: it tells the byte order
    else:
        codec = codec_for(charset, "utf-8" if mark else default_charset)
        start = mark[0] + mark[1] if mark else 0
    try:
        return raw[start:].decode(codec)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        where = "" if codec.startswith(("utf-16", "utf-32")) else _field_at(raw, offset)
        declared = charset.split("~", 1)[0].strip()
        if declared and codec_for(declared, ""):
            said = "the charset MSH-18 declares"
        else:
            said = "the charset its byte order mark declares" if mark else "the channel's charset"
            said += f" (MSH-18 {declared[:20]!r} is unknown)" if declared else " (MSH-18 is empty)"
        raise ParseError(
            f"byte {offset}{where} is not valid {codec}, {said}", code=102, field=18, reject=False
        ) from exc


def _field_at(data: bytes, offset: int) -> str:
    """`` (PID-5)``: where the byte at ``offset`` lies in ASCII-compatible ``data``, as an HL7
    path (``OBX[3]-5`` for the third OBX); empty when the segment has no valid name."""
    start = max(data.rfind(b"\r", 0, offset), data.rfind(b"\n", 0, offset)) + 1
    name = data[start : start + 3].decode("latin-1")
    msh = data.find(b"MSH")
    if not _SEGMENT_NAME.match(name) or msh < 0:
        return ""
    fs = data[msh + 3 : msh + 4]
    field = data.count(fs, start, offset) + (1 if name in ("MSH", "FHS", "BHS") else 0)
    lines = re.split(rb"\r\n|\r|\n", data[:start])
    earlier = sum(line.strip(_FRAMING).startswith(name.encode()) for line in lines)
    seg = f"{name}[{earlier + 1}]" if earlier else name
    return f" ({seg}-{field})" if field else f" ({seg})"


def split_batch(text: str) -> list[str]:
    """Split a file or batch (FHS/BHS ... BTS/FTS, MLLP-framed or bare) into message texts.

    Envelope segments are dropped; every other segment belongs to the MSH before it. Text
    before the first MSH that is not an envelope raises ParseError (a batch with a lost MSH).
    """
    messages: list[list[str]] = []
    stray: list[str] = []
    for line in _SEGMENT_SPLIT.split(text.replace("\x0b", "\n").replace("\x1c", "\n")):
        s = line.strip().lstrip("\ufeff")  # a byte order mark starts each file of a concatenation
        if not s:
            continue
        name = s[:3]
        if name in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if name == "MSH":
            messages.append([s])
        elif messages:
            messages[-1].append(s)
        else:
            stray.append(s)
    if stray:
        raise ParseError(f"{len(stray)} segment(s) before the first MSH in the batch", code=100, segment=stray[0][:3])
    return ["\r".join(m) + "\r" for m in messages]


def validate_strict(text: str) -> None:
    """Validate against the message structure with hl7apy (channels with ``validation: strict``).

    hl7apy knows every message structure and its cardinalities; it is slow (see the docstring
    above), so this runs only for channels that ask for it, after the message is committed.
    Raises ParseError with code 100/101/102 on a structural fault.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message as _  # noqa: F401  (import error surfaces clearly)
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    norm = "\r".join(s for s in _SEGMENT_SPLIT.split(text) if s.strip())
    try:
        msg = parse_message(norm, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()
    except HL7apyException as exc:
        raise ParseError(f"strict validation failed: {exc}", code=100, reject=False) from exc
    except Exception as exc:  # hl7apy raises plain errors on some inputs; never let them escape
        raise ParseError(f"strict validation failed: {type(exc).__name__}: {exc}", code=100, reject=False) from exc
