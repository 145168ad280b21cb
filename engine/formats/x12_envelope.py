"""X12 front end: split raw bytes into interchanges, functional groups and transaction sets.

:func:`read_interchanges` never raises on input. It decodes the bytes (a UTF-8 BOM is dropped; UTF-8 when
valid, latin-1 otherwise, so no byte is lost), takes the delimiters from each ISA (element separator at
ISA position 4, ISA11 repetition separator in 5010, ISA16 component separator, the segment terminator right
after ISA16; CR/LF after a terminator is ignored, and a terminator may itself be a line break) and walks the
ISA/GS/ST ... SE/GE/IEA envelopes. Interchange-level faults become :class:`EnvelopeProblem` s carrying the
TA1-05 note code (X12 table I18) on the interchange; group and transaction trailer faults are recorded on
:class:`Group` (AK905 codes) and :class:`Transaction` (IK502 codes) for the 999. Problem texts name segment
ids, positions and codes, never data values.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
"""Fixed widths of ISA01..ISA16; with 'ISA', 16 separators and the terminator the ISA is 106 characters."""
_SEP_AT = tuple(3 + sum(ISA_WIDTHS[:i]) + i for i in range(16))  # offsets of the 16 element separators
_BLANK = " \t\r\n\x00\x1a"  # whitespace, NUL and Ctrl-Z padding tolerated between segments and interchanges
_CONTROL = frozenset({"ISA", "IEA", "GS", "GE", "ST", "SE", "TA1"})

# Implementation guide label (GS08 / ST03) -> (ST01, label of the pyx12 map, pyx12 map file).
# pyx12 4.0 ships 5010 maps for X221A1 (835), X222A1 (837P) and X223A2 (837I, in a file named ...X223.A1.xml
# that its maps.xml registers for 005010X223A2). The errata guides partners label their files with
# (X222A2/X222A3, X223A3) and the base releases only correct the IG text and code lists, not the loop and
# segment structure, so they are validated with the map pyx12 has.
_GUIDES: dict[str, tuple[str, str, str]] = {
    **dict.fromkeys(("005010X221", "005010X221A1"), ("835", "005010X221A1", "835.5010.X221.A1.xml")),
    **dict.fromkeys(
        ("005010X222", "005010X222A1", "005010X222A2", "005010X222A3"), ("837", "005010X222A1", "837.5010.X222.A1.xml")
    ),
    **dict.fromkeys(
        ("005010X223", "005010X223A1", "005010X223A2", "005010X223A3"),
        ("837", "005010X223A2", "837Q3.I.5010.X223.A1.xml"),
    ),
    "005010X231A1": ("999", "005010X231A1", "999.5010X231.A1.xml"),
    "005010X231": ("999", "005010X231", "999.5010.xml"),
    "005010X220A1": ("834", "005010X220A1", "834.5010.X220.A1.xml"),
    "005010X218": ("820", "005010X218", "820.5010.X218.xml"),
    "005010X214": ("277", "005010X214", "277.5010.X214.xml"),
}
PYX12_LABELS: dict[str, str] = {map_file: label for _st, label, map_file in _GUIDES.values()}
"""pyx12 map file -> the GS08/ST03 label that map expects."""


def guide_for(version_or_reference: str, st_id: str) -> str | None:
    """The pyx12 map file to validate an ST01 transaction labelled with this ST03/GS08, or None if pyx12 has none."""
    entry = _GUIDES.get(version_or_reference.strip().upper())
    return entry[2] if entry and entry[0] == st_id.strip() else None


@dataclass(frozen=True)
class Delimiters:
    element: str
    component: str
    repetition: str | None
    segment: str


@dataclass(frozen=True)
class EnvelopeProblem:
    code: str  # TA1-05 interchange note code (X12 table I18)
    text: str  # plain English, no data values


@dataclass
class Transaction:
    st_id: str
    control: str
    reference: str
    segments: list[str]
    position: int
    se_count: str = ""
    se_control: str = ""
    codes: list[str] = field(default_factory=list)  # IK502 codes the envelope already shows (2, 3, 4, 6, 7, 23)


@dataclass
class Group:
    functional_id: str
    sender: str
    receiver: str
    date: str
    time: str
    control: str
    agency: str
    version: str
    transactions: list[Transaction] = field(default_factory=list)
    ge_count: str = ""
    ge_control: str = ""
    codes: list[str] = field(default_factory=list)  # AK905 codes the envelope already shows (3, 4, 5, 19)


@dataclass
class Interchange:
    delimiters: Delimiters
    isa: list[str]
    groups: list[Group]
    problems: list[EnvelopeProblem]
    text: str
    iea_count: str = ""
    iea_control: str = ""

    def _isa(self, n: int) -> str:
        return self.isa[n].strip() if len(self.isa) > n else ""

    @property
    def sender_qualifier(self) -> str:
        return self._isa(5)

    @property
    def sender(self) -> str:
        return self._isa(6)

    @property
    def receiver_qualifier(self) -> str:
        return self._isa(7)

    @property
    def receiver(self) -> str:
        return self._isa(8)

    @property
    def date(self) -> str:
        return self._isa(9)

    @property
    def time(self) -> str:
        return self._isa(10)

    @property
    def version(self) -> str:
        return self._isa(12)

    @property
    def control(self) -> str:
        return self._isa(13)

    @property
    def ack_requested(self) -> str:
        return self._isa(14)

    @property
    def usage(self) -> str:
        return self._isa(15)


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.lstrip("\ufeff")


def _is_delim(ch: str) -> bool:
    return len(ch) == 1 and not ch.isalnum() and ch != " "


def _parse_isa(text: str, p: int) -> tuple[list[str], Delimiters, int] | EnvelopeProblem:
    """Read the ISA at offset p: (['ISA', ISA01..ISA16], delimiters, offset after the terminator) or a problem."""
    if len(text) < p + 4:
        return EnvelopeProblem("023", "The data ends inside the ISA segment")
    sep = text[p + 3]
    if not _is_delim(sep) or sep in "\r\n\t":
        return EnvelopeProblem("026", "The ISA element separator (ISA position 4) is invalid")
    if len(text) >= p + 106 and all(text[p + i] == sep for i in _SEP_AT) and text[p + 105] != sep:
        stops = [p + i for i in _SEP_AT]
    else:  # not fixed-width: accept only if 16 separators are found before a line break
        stops, i = [], p + 3
        while len(stops) < 16 and i < min(len(text), p + 260) and text[i] not in "\r\n":
            if text[i] == sep:
                stops.append(i)
            i += 1
        if len(stops) < 16:
            if i >= len(text):
                return EnvelopeProblem("023", "The data ends inside the ISA segment")
            return EnvelopeProblem("022", "The ISA segment does not have 16 elements")
    last = stops[15]
    if len(text) < last + 3:
        return EnvelopeProblem("023", "The data ends inside the ISA segment")
    component, term = text[last + 1], text[last + 2]
    if not _is_delim(component) or component == sep:
        return EnvelopeProblem("027", "The ISA16 component element separator is invalid")
    if term in (sep, component) or not (_is_delim(term) or term in "\r\n"):
        return EnvelopeProblem("004", "The segment terminator after ISA16 is invalid")
    isa = ["ISA", *(text[a + 1 : b] for a, b in itertools.pairwise(stops)), component]
    rep = isa[11] if isa[12].strip() >= "00501" and len(isa[11]) == 1 and _is_delim(isa[11]) else None
    if rep in (sep, component, term):
        rep = None
    return isa, Delimiters(sep, component, rep, term), last + 3


def _isa_value_problems(isa: list[str]) -> list[EnvelopeProblem]:
    v = [e.strip() for e in isa]
    checks = [
        ("010", "ISA01", v[1] in ("00", "01", "02", "03", "04", "05", "06")),
        ("012", "ISA03", v[3] in ("00", "01")),
        ("005", "ISA05", len(v[5]) == 2 and v[5].isalnum()),
        ("006", "ISA06", v[6] != ""),
        ("007", "ISA07", len(v[7]) == 2 and v[7].isalnum()),
        ("008", "ISA08", v[8] != ""),
        ("014", "ISA09", len(v[9]) == 6 and v[9].isdigit() and "01" <= v[9][2:4] <= "12" and "01" <= v[9][4:] <= "31"),
        ("015", "ISA10", len(v[10]) == 4 and v[10].isdigit() and v[10][:2] <= "23" and v[10][2:] <= "59"),
        ("017", "ISA12", len(v[12]) == 5 and v[12].isdigit()),
        ("018", "ISA13", 0 < len(v[13]) <= 9 and v[13].isdigit()),
        ("019", "ISA14", v[14] in ("0", "1")),
        ("020", "ISA15", v[15] in ("P", "T", "I")),
    ]
    return [EnvelopeProblem(code, f"{name} is missing or invalid") for code, name, ok in checks if not ok]


_WIDTH_CODES = ("010", "011", "012", "013", "005", "006", "007", "008", "014", "015", "016", "017", "018", "019", "020")


def _isa_width_problems(isa: list[str]) -> list[EnvelopeProblem]:
    """ISA01-ISA15 not at their fixed widths: the ISA is still read (its delimiters are clear),
    but the interchange is rejected with the note code of the first such element. The ISA is
    fixed-length by definition; posting from a malformed envelope would accept what a
    clearinghouse rejects, and the partner would never learn to fix it."""
    for n, (value, width, code) in enumerate(zip(isa[1:16], ISA_WIDTHS, _WIDTH_CODES), 1):
        if len(value) != width:
            return [EnvelopeProblem(code, f"ISA{n:02d} is {len(value)} characters wide, not its fixed {width}")]
    return []


def _count_ok(count: str, actual: int) -> bool:
    return count.strip().isdigit() and int(count) == actual


class _Reader:
    """Walks the segments of one interchange, building groups and transactions."""

    def __init__(self, isa: list[str], delims: Delimiters) -> None:
        self.d = delims
        self.ic = Interchange(delims, isa, [], _isa_value_problems(isa) + _isa_width_problems(isa), "")
        self.group: Group | None = None
        self.tx: Transaction | None = None
        self.n = 1  # segments read, ISA = 1
        self.done = False

    def problem(self, code: str, text: str) -> None:
        if all(p.code != code for p in self.ic.problems):  # the first of each kind is enough for a TA1
            self.ic.problems.append(EnvelopeProblem(code, text))

    def close_tx(self, se: bool = False) -> None:
        tx, self.tx = self.tx, None
        if tx is None:
            return
        if not se:
            tx.codes.append("2")
        else:
            if tx.se_control.strip() != tx.control.strip():
                tx.codes.append("3")
            if not _count_ok(tx.se_count, len(tx.segments)):
                tx.codes.append("4")

    def close_group(self, ge: list[str] | None) -> None:
        self.close_tx()
        g, self.group = self.group, None
        if g is None:
            return
        if ge is None:
            g.codes.append("3")
            return
        g.ge_count, g.ge_control = (ge + ["", ""])[1:3]
        if g.ge_control.strip() != g.control.strip():
            g.codes.append("4")
        if not _count_ok(g.ge_count, len(g.transactions)):
            g.codes.append("5")

    def segment(self, seg: str) -> None:
        self.n += 1
        el = seg.split(self.d.element)
        sid = el[0].strip()

        def get(i: int) -> str:
            return el[i] if len(el) > i else ""

        if sid == "GS":
            if self.group is not None:
                self.close_group(None)
            self.group = Group(get(1), get(2), get(3), get(4), get(5), get(6), get(7), get(8))
            if get(6).strip() in {g.control.strip() for g in self.ic.groups}:
                self.group.codes.append("19")
            self.ic.groups.append(self.group)
        elif sid == "GE":
            if self.group is None:
                self.problem("024", f"GE segment at position {self.n} has no matching GS")
            else:
                self.close_group(el)
        elif sid == "ST":
            self.close_tx()
            if self.group is None:
                self.problem("024", f"ST segment at position {self.n} is outside a functional group")
                return
            self.tx = Transaction(get(1), get(2), get(3), [seg], self.n)
            if not get(1).strip():
                self.tx.codes.append("6")
            if not get(2).strip():
                self.tx.codes.append("7")
            elif get(2).strip() in {t.control.strip() for t in self.group.transactions}:
                self.tx.codes.append("23")
            self.group.transactions.append(self.tx)
        elif sid == "IEA":
            if self.group is not None:
                self.close_group(None)
            self.ic.iea_count, self.ic.iea_control = get(1), get(2)
            if self.ic.iea_control.strip() != self.ic.control:
                self.problem("001", "IEA02 does not match ISA13")
            if not _count_ok(self.ic.iea_count, len(self.ic.groups)):
                self.problem("021", "IEA01 does not match the number of functional groups")
            self.done = True
        elif self.tx is not None:
            self.tx.segments.append(seg)
            if sid == "SE":
                self.tx.se_count, self.tx.se_control = get(1), get(2)
                self.close_tx(se=True)
        elif sid != "TA1" or self.group is not None:
            name = sid if re.fullmatch(r"[A-Z][A-Z0-9]{1,2}", sid) else "An unrecognised"
            where = "inside" if self.group else "outside"
            self.problem("024", f"{name} segment at position {self.n} is outside a transaction set, {where} a group")

    def finish(self) -> None:
        if not self.done:
            if self.group is not None:
                self.close_group(None)
            self.problem("023", "The interchange ends without an IEA segment")


def _open(isa: list[str], delims: Delimiters, seen: set[str]) -> _Reader:
    """The reader of an interchange just found; ``seen``: the control numbers of the data's
    interchanges before it (a repeat is TA1 025)."""
    reader = _Reader(isa, delims)
    if reader.ic.control in seen:
        reader.problem("025", "ISA13 repeats the control number of an earlier interchange in this data")
    seen.add(reader.ic.control)
    return reader


def _find_isa(text: str, start: int) -> int:
    k = text.find("ISA", start)
    while k != -1 and k + 3 < len(text) and not _is_delim(text[k + 3]):
        k = text.find("ISA", k + 1)
    return k


def read_interchanges(data: bytes) -> tuple[list[Interchange], list[EnvelopeProblem]]:
    """Read every interchange in data; the second list holds problems no interchange can carry."""
    text = _decode(data)
    out: list[Interchange] = []
    stray: list[EnvelopeProblem] = []
    if not text.strip(_BLANK):
        return out, [EnvelopeProblem("023", "The data is empty")]
    pos, seen = 0, set[str]()
    while True:
        k = _find_isa(text, pos)
        gap = text[pos : len(text) if k == -1 else k].strip(_BLANK)
        if k == -1 and not out and not stray:
            return out, [EnvelopeProblem("022", "No ISA segment was found")]
        if gap:
            where = "before the first ISA" if not out and not stray else "outside any interchange"
            stray.append(EnvelopeProblem("022", f"Text that is not an interchange was found {where}"))
        if k == -1:
            return out, stray
        parsed = _parse_isa(text, k)
        if isinstance(parsed, EnvelopeProblem):
            stray.append(parsed)
            pos = k + 3
            continue
        isa, delims, p = parsed
        reader = _open(isa, delims, seen)
        strip = "".join(c for c in _BLANK if c not in (delims.element, delims.component, delims.segment))
        end = p
        while not reader.done:
            j = text.find(delims.segment, p)
            raw = text[p:] if j == -1 else text[p:j]
            seg = raw.strip(strip)
            if seg.startswith("ISA") and len(seg) > 3 and _is_delim(seg[3]):
                break  # a new interchange starts before this one's IEA
            if seg:
                reader.segment(seg)
                end = len(text) if j == -1 else j + 1
            p = len(text) if j == -1 else j + 1
            if j == -1:
                break
        reader.finish()
        fixed = "ISA" + "".join(delims.element + e.ljust(w)[:w] for e, w in zip(isa[1:], ISA_WIDTHS))
        reader.ic.text = fixed + delims.segment + text[parsed[2] : end]
        out.append(reader.ic)
        pos = end


def single(ic: Interchange, group: Group, tr: Transaction) -> str:
    """A self-contained interchange holding just ``tr``: the ISA and GS as sent, with trailers
    that count one group and one transaction set. This is how the engine stores a transaction
    set as a message, readable alone (:class:`engine.formats.x12.X12Message`)."""
    e, term = ic.delimiters.element, ic.delimiters.segment
    gs = [group.functional_id, group.sender, group.receiver, group.date, group.time, group.control]
    parts = [
        e.join(ic.isa),
        e.join(["GS", *gs, group.agency, group.version]),
        *tr.segments,
        e.join(["GE", "1", group.control]),
        e.join(["IEA", "1", ic.isa[13]]),
    ]
    return term.join(parts) + term
