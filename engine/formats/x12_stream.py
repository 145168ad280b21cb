"""X12 read from a file in blocks: segments one at a time, and big transaction sets cut into parts.

:class:`StreamReader` walks a file the way :func:`~engine.formats.x12_envelope.read_interchanges` walks bytes,
with the same decoding (a UTF-8 BOM dropped; UTF-8 when the whole file is valid UTF-8, else latin-1:
:func:`encoding_of` decides in a pass of its own), the same ISA rules and the same envelope bookkeeping (its
``_Reader``, fed one segment at a time), so the problems are the same: TA1 note codes on the interchange,
AK905 codes on the group, IK502 codes on the transaction set. What it keeps is the bookkeeping: each
:class:`~engine.formats.x12_envelope.Transaction` counts its segments instead of holding them, and
``Interchange.text`` stays empty. Memory holds one block of text (``block_bytes``) and the segment being read.

:func:`parts` cuts each transaction set, as it streams past, into self-contained interchanges of about
``max_bytes`` each, readable by :class:`~engine.formats.x12.X12Message` and mapped to the same records as
the whole set:

- 837: between 2000B subscriber loops. A part is the header (ST, BHT, the 1000A/B loops), the 2000A billing
  provider loop its subscribers sit under (repeated at the top of a part that starts inside it; HL ids kept
  as sent, so HL02 still finds the parent), then whole subscriber loops with their dependents and claims.
- 835: between 2100 claim payment loops. A part is the header (ST, BPR, TRN ... the 1000A/B payer and payee
  loops), the 2000 LX header its claims sit under, then claims; the PLB trailer falls in the last part.

Each part of a cut set gets an SE with its own count and carries ``PART <n>`` as IEA03, in the interchange
trailer the engine writes for every stored message (never in the transaction set): :func:`part_number` reads
it back (checks that need the whole set, such as BPR02 against the claims, skip parts). A set that fits, or
that has no place to cut, is one message exactly as :func:`~engine.formats.x12_envelope.single` writes it
(only 835 and 837 sets are cut: a big set of another kind, an 834 say, is held whole while it is read).
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.formats import x12_validate
from engine.formats.x12_envelope import (
    _BLANK,
    ISA_WIDTHS,
    EnvelopeProblem,
    Interchange,
    Transaction,
    _is_delim,
    _open,
    _parse_isa,
    single,
)

BLOCK_BYTES = 1 << 20
"""Bytes read from the file at a time."""
_ISA_WINDOW = 300  # _parse_isa looks at most 262 characters past the ISA


def encoding_of(path: Path, block_bytes: int = BLOCK_BYTES) -> str:
    """'utf-8' when the whole file (a leading BOM aside) is valid UTF-8, else 'latin-1' (no byte is lost)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        try:
            while block := f.read(block_bytes):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


class _Text:
    """The decoded text of a binary file, held as a window: absolute character offsets, older text dropped."""

    def __init__(self, f: Any, encoding: str, block_bytes: int) -> None:
        self._f, self._block = f, block_bytes
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self.buf, self.base, self.eof = "", 0, False
        self._first, self._lead = True, True

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def more(self) -> bool:
        """Read one more block; False at the end of the file."""
        if self.eof:
            return False
        data = self._f.read(self._block)
        if self._first and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        self._first = False
        self.eof = not data
        chunk = self._decoder.decode(data, final=self.eof)
        if self._lead and chunk:
            chunk = chunk.lstrip("\ufeff")
            self._lead = not chunk
        self.buf += chunk
        return True

    def fill(self, upto: int) -> None:
        while self.end < upto and self.more():
            pass

    def find(self, sub: str, start: int) -> int:
        """Absolute offset of ``sub`` at or after ``start``, reading on as needed; -1 if it never comes."""
        at = start
        while True:
            i = self.buf.find(sub, at - self.base)
            if i != -1:
                return self.base + i
            at = max(start, self.end - len(sub) + 1)
            if not self.more():
                return -1

    def text(self, a: int, b: int) -> str:
        self.fill(b)
        return self.buf[a - self.base : b - self.base]

    def drop(self, before: int) -> None:
        if before - self.base > self._block:
            self.buf, self.base = self.buf[before - self.base :], before

    def find_isa(self, start: int) -> tuple[int, bool]:
        """(offset of the next ISA followed by a delimiter or -1, whether non-blank text lies before it)."""
        k = start
        while True:
            k = self.find("ISA", k)
            if k != -1:
                self.fill(k + 4)
                if k + 3 < self.end and not _is_delim(self.buf[k + 3 - self.base]):
                    k += 1
                    continue
            stop = self.end if k == -1 else k
            dirty = bool(self.buf[start - self.base : stop - self.base].strip(_BLANK))
            return k, dirty


class _Tally(list):
    """Stands in for ``Transaction.segments``: counts what is appended, keeps nothing."""

    def __init__(self, n: int = 1) -> None:
        super().__init__()
        self.n = n

    def append(self, item: Any) -> None:
        self.n += 1

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class Seg:
    """One segment as read: its text and where it is."""

    text: str
    position: int
    """In its interchange, the ISA being 1 (the position the envelope problems name)."""
    interchange: int
    """Index of its interchange in the file, from 0."""
    group: int
    """Index in the interchange of the last functional group begun (-1 before the first GS)."""
    transaction: int
    """Index of its transaction set (ST .. SE) in that group; -1 for a segment outside one."""


class StreamReader:
    """Iterates a file's segments (:class:`Seg`); once exhausted, ``interchanges`` and ``stray`` hold
    what :func:`~engine.formats.x12_envelope.read_interchanges` returns for the same bytes, without
    segment texts. ``interchanges`` grows as the file is read (an interchange appears at its ISA)."""

    def __init__(self, path: Path, encoding: str | None = None, block_bytes: int = BLOCK_BYTES) -> None:
        self.path, self.block_bytes = path, block_bytes
        self.encoding = encoding or encoding_of(path, block_bytes)
        self.interchanges: list[Interchange] = []
        self.stray: list[EnvelopeProblem] = []

    def __iter__(self) -> Iterator[Seg]:
        with open(self.path, "rb") as f:
            yield from self._walk(_Text(f, self.encoding, self.block_bytes))

    def _walk(self, t: _Text) -> Iterator[Seg]:
        out, stray, pos, seen = self.interchanges, self.stray, 0, set[str]()
        while True:
            k, dirty = t.find_isa(pos)
            if k == -1 and not out and not stray:
                stray.append(EnvelopeProblem("022", "No ISA segment was found") if dirty else
                             EnvelopeProblem("023", "The data is empty"))  # fmt: skip
                return
            if dirty:
                where = "before the first ISA" if not out and not stray else "outside any interchange"
                stray.append(EnvelopeProblem("022", f"Text that is not an interchange was found {where}"))
            if k == -1:
                return
            parsed = _parse_isa(t.text(k, k + _ISA_WINDOW), 0)
            if isinstance(parsed, EnvelopeProblem):
                stray.append(parsed)
                pos = k + 3
                continue
            isa, delims, after = parsed
            reader = _open(isa, delims, seen)
            out.append(reader.ic)
            n = len(out) - 1
            fixed = "ISA" + "".join(delims.element + e.ljust(w)[:w] for e, w in zip(isa[1:], ISA_WIDTHS))
            yield Seg(fixed, 1, n, -1, -1)
            strip = "".join(c for c in _BLANK if c not in (delims.element, delims.component, delims.segment))
            p = end = k + after
            while not reader.done:
                j = t.find(delims.segment, p)
                stop = t.end if j == -1 else j
                seg = t.text(p, stop).strip(strip)
                if seg.startswith("ISA") and len(seg) > 3 and _is_delim(seg[3]):
                    break  # a new interchange starts before this one's IEA
                if seg:
                    before = reader.tx
                    reader.segment(seg)
                    tx = reader.tx
                    if tx is not None and tx is not before:
                        tx.segments = _Tally(len(tx.segments))
                    elif tx is None and before is not None and seg.split(delims.element, 1)[0].strip() == "SE":
                        tx = before  # the SE that closed it
                    group = len(reader.ic.groups) - 1
                    at = -1 if tx is None else _index(reader.ic.groups[group].transactions, tx)
                    yield Seg(seg, reader.n, n, group, at)
                    end = stop if j == -1 else j + 1
                p = t.end if j == -1 else j + 1
                t.drop(end)  # text after ``end`` may yet be a gap the next search reports
                if j == -1:
                    break
            reader.finish()
            pos = end


def _index(transactions: list[Transaction], tx: Transaction) -> int:
    for i in range(len(transactions) - 1, -1, -1):
        if transactions[i] is tx:
            return i
    return -1


def scan(path: Path, encoding: str | None = None) -> tuple[list[Interchange], list[EnvelopeProblem]]:
    """The envelope of every interchange in the file, like ``read_interchanges``, segments counted, not kept."""
    reader = StreamReader(path, encoding)
    for _seg in reader:
        pass
    return reader.interchanges, reader.stray


# -- validating as the file is read -----------------------------------------------------------------------


class _Cursor:
    """A segment iterator that can hand out one functional group's segments at a time, in file order."""

    def __init__(self, segs: Iterator[Seg]) -> None:
        self._segs = segs
        self._back: Seg | None = None

    def take(self, interchange: int, group: int) -> Iterator[Seg]:
        want = (interchange, group)
        while True:
            seg, self._back = self._back or next(self._segs, None), None
            if seg is None:
                return
            at = (seg.interchange, seg.group)
            if at > want:
                self._back = seg  # the next group's: kept for its own turn
                return
            if at == want:
                yield seg


def validate(
    path: Path, interchanges: list[Interchange], encoding: str | None = None
) -> dict[int, list[x12_validate.GroupResult]]:
    """pyx12's verdict (:func:`~engine.formats.x12_validate.validate_stream`) on every interchange of a
    :func:`scan` without envelope problems, by index, its sets fed to pyx12 as the file is read: one pass
    over the file, and one more for each group whose sets need more than one pyx12 map."""
    shared = _Cursor(iter(StreamReader(path, encoding)))
    begun: set[tuple[int, int]] = set()

    def segments(interchange: int, group: int, indexes: list[int]) -> Iterator[str]:
        fresh = (interchange, group) in begun  # a second map's sets of a group already read: read again
        begun.add((interchange, group))
        cursor = _Cursor(iter(StreamReader(path, encoding))) if fresh else shared
        wanted = set(indexes)
        for seg in cursor.take(interchange, group):
            if seg.transaction in wanted:
                yield seg.text

    return {
        i: x12_validate.validate_stream(ic, functools.partial(segments, i))
        for i, ic in enumerate(interchanges)
        if not ic.problems
    }


# -- cutting transaction sets into parts ------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One stored message's worth of a transaction set: ``number`` from 1; ``of_many`` when the set was cut."""

    interchange: int
    group: int
    transaction: int
    number: int
    of_many: bool
    content: str


def part_number(msg: Any) -> int | None:
    """The part number a stored message carries (IEA03 ``PART <n>``), or None when it holds a whole set."""
    for i in reversed(msg.positions("IEA")):
        mark = msg.segments[i].field(3)
        if mark.startswith("PART ") and mark[5:].isdigit():
            return int(mark[5:])
    return None


class _Cutter:
    """Accumulates one transaction set's segments and cuts it at loop boundaries into parts of ~max_bytes."""

    def __init__(self, st: str, element: str, max_bytes: int) -> None:
        el = st.split(element)
        self.e, self.max = element, max_bytes
        self.kind = el[1].strip() if len(el) > 1 else ""
        self.control = el[2] if len(el) > 2 else ""
        self.header: list[str] | None = [st]  # None once the body has begun
        self.head: list[str] = []  # the 2000A (837) or LX (835) loop head the current segments sit under
        self.in_head = False
        self.part: list[str] = []
        self.size, self.units, self.cut = 0, 0, False
        self.header_len = self.header_size = 0  # of the header every part begins with

    def _role(self, seg: str) -> str:
        """'head' (a loop repeated atop a part starting inside it), 'unit' (a place to cut), or ''."""
        el = seg.split(self.e, 4)
        sid = el[0].strip()
        if self.kind == "837" and sid == "HL":
            level = el[3].strip() if len(el) > 3 else ""
            return "head" if level == "20" else "unit" if level == "22" else "other-hl"
        if self.kind == "835":
            return "head" if sid == "LX" else "unit" if sid == "CLP" else ""
        return ""

    def add(self, seg: str) -> list[str] | None:
        """Take the next segment (not the SE); returns a finished part's segments (no SE) when it cuts."""
        role = self._role(seg) if self.kind in ("835", "837") else ""
        if self.header is not None:
            if role not in ("head", "unit"):
                self.header.append(seg)
                return None
            self.part, self.size = list(self.header), sum(len(s) + 1 for s in self.header)
            self.header_len, self.header_size = len(self.part), self.size
            self.header = None
        done = None
        if role in ("head", "unit") and self.units and self.size >= self.max:
            done, self.cut = self.part, True
            self.part, self.size, self.units = self.part[: self.header_len], self.header_size, 0
            if role == "unit" and self.head:
                self.part += self.head
                self.size += sum(len(s) + 1 for s in self.head)
        if role == "head":
            self.head, self.in_head = [seg], True
        elif role:
            self.in_head = False
        elif self.in_head:
            self.head.append(seg)
        self.units += role == "unit"
        self.part.append(seg)
        self.size += len(seg) + 1
        return done

    def finish(self, se: str) -> list[str]:
        """The last part, closed by the SE as sent (a set never cut) or by an SE counting the part."""
        last = self.header if self.header is not None else self.part
        return last + [se] if not self.cut else self.close(last)

    def close(self, segs: list[str]) -> list[str]:
        return segs + [self.e.join(["SE", str(len(segs) + 1), self.control])]


def parts(
    path: Path, interchanges: list[Interchange], max_bytes: int, encoding: str | None = None, skip: Collection[int] = ()
) -> Iterator[Part]:
    """Every transaction set of the file (interchanges indexed as in ``interchanges``, a :func:`scan` of the same
    file; those in ``skip`` left out) as :class:`Part` s in file order. A set is held at most one part ahead."""
    cutters: dict[tuple[int, int, int], _Cutter] = {}
    held: dict[tuple[int, int, int], tuple[int, list[str]]] = {}

    def emit(key: tuple[int, int, int], number: int, segs: list[str], of_many: bool) -> Part:
        i, g, t = key
        ic = interchanges[i]
        group = ic.groups[g]
        text = single(ic, group, replace(group.transactions[t], segments=segs))
        if of_many:
            term = ic.delimiters.segment
            text = text[: -len(term)] + f"{ic.delimiters.element}PART {number}{term}"
        return Part(i, g, t, number, of_many, text)

    for seg in StreamReader(path, encoding):
        if seg.transaction < 0 or seg.interchange in skip:
            continue
        key = (seg.interchange, seg.group, seg.transaction)
        e = interchanges[seg.interchange].delimiters.element
        cutter = cutters.get(key)
        sid = seg.text.split(e, 1)[0].strip()
        if cutter is None:
            cutters[key] = _Cutter(seg.text, e, max_bytes)
            continue
        if sid == "SE":
            last = cutter.finish(seg.text)
            if key in held:
                number, segs = held.pop(key)
                yield emit(key, number, cutter.close(segs), True)
                yield emit(key, number + 1, last, True)
            else:
                yield emit(key, 1, last, False)
            del cutters[key]
            continue
        done = cutter.add(seg.text)
        if done is not None:
            number = 1
            if key in held:
                number, segs = held.pop(key)
                yield emit(key, number, cutter.close(segs), True)
                number += 1
            held[key] = (number, done)
    for key, cutter in cutters.items():  # a set the file ends inside (its interchange is rejected)
        last = cutter.header if cutter.header is not None else cutter.part
        if key in held:
            number, segs = held.pop(key)
            yield emit(key, number, cutter.close(segs), True)
            yield emit(key, number + 1, cutter.close(last), True)
        else:
            yield emit(key, 1, last, False)
