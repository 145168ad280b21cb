"""5010 implementation-guide validation of an :class:`Interchange`, through pyx12, as 999 results.

:func:`validate` answers every functional group. For each group the transactions are bucketed by the pyx12 map
:func:`~engine.formats.x12_envelope.guide_for` names (ST03, else GS08); each bucket is fed to pyx12 as a text
stream holding a clean fixed-width ISA, the GS, the bucket's transaction sets as received, GE and IEA. GS08 and
ST03 are relabelled to the guide the map expects (an X222A2 file is validated with the X222A1 map). pyx12's
reader, map walker and segment validator run with our own error handler, which keeps the map node of every
segment error (for the IK303 loop id) and logs nothing: pyx12's own handler logs bad element values, which can be
patient data. pyx12's interchange, group and ST/SE findings are not used: the envelope reader already counted
trailers and control numbers (:attr:`Transaction.codes`, :attr:`Group.codes`).

Decisions, following X231A1: any IK3/IK4 syntax error rejects the transaction set (IK501 'R', IK502 '5'); the
notes pyx12 adds on top of X12 syntax (HL01/HL02 and LX01 numbering, trailing separators, a "not used" segment or
element present) accept it with errors ('E', 'I5'). A transaction set labelled with a guide pyx12 has no map for
is rejected with IK502 'I6' (implementation convention not supported), or '1' when no map exists for its ST01.
AK901 is 'A' when every set is accepted, 'E' when all are accepted and some with errors, 'P' when some are
rejected, 'R' when all are, or when the group trailer is wrong (AK905 '3', '4', '5', '19').
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyx12.error_handler
import pyx12.map_if
import pyx12.params
import pyx12.x12file
from pyx12.map_if._segment import apply_segment_errors
from pyx12.map_walker import apply_walk_errors, walk_tree

from engine.formats import x12_parallel
from engine.formats.x12_envelope import PYX12_LABELS, Delimiters, Group, Interchange, Transaction, guide_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ElementError:
    position: int
    component: int | None
    repeat: int | None
    element_ref: str | None
    code: str
    text: str


@dataclass(frozen=True)
class SegmentError:
    segment_id: str
    position: int
    loop_id: str | None
    code: str | None
    text: str
    elements: list[ElementError]


@dataclass
class TransactionResult:
    transaction: Transaction
    status: str
    codes: list[str]
    segments: list[SegmentError]


@dataclass
class GroupResult:
    group: Group
    status: str
    codes: list[str]
    transactions: list[TransactionResult]


SEGMENT_CODES = {
    "1": "unrecognized segment ID",
    "2": "unexpected segment",
    "3": "required segment missing",
    "4": "loop occurs over maximum times",
    "5": "segment exceeds maximum use",
    "8": "segment has data element errors",
    "I4": "implementation 'not used' segment present",
}
ELEMENT_CODES = {
    "1": "required data element missing",
    "2": "conditional required data element missing",
    "3": "too many data elements",
    "4": "data element too short",
    "5": "data element too long",
    "6": "invalid character in data element",
    "7": "invalid code value",
    "8": "invalid date",
    "9": "invalid time",
    "10": "exclusion condition violated",
    "I10": "implementation 'not used' data element present",
    "I12": "implementation pattern match failure",
}
_NOTE_SEGMENT_CODES = {"HL1": ("HL", 1, "628"), "HL2": ("HL", 2, "734"), "LX": ("LX", 1, "554")}
_WARNINGS = {"I4", "I10", "I12", "SEG1"}  # accepted with errors
_ENVELOPE_IDS = {"ISA", "IEA", "GS", "GE", "ST", "SE"}
_WRAPPERS = {"HEADER", "DETAIL", "FOOTER", "ST_LOOP", "GS_LOOP", "ISA_LOOP"}
_MAPS: dict[str, Any] = {}
_MAPS_LOCK = threading.Lock()


def _load_map(map_file: str) -> Any:
    """pyx12 maps are read-only while validating (counts live in the walker), so each is parsed once."""
    with _MAPS_LOCK:
        if map_file not in _MAPS:
            _MAPS[map_file] = pyx12.map_if.load_map_file(map_file, pyx12.params.params())
        return _MAPS[map_file]


def _loop_id(node: Any) -> str | None:
    while node is not None and not node.is_map_root():
        if node.is_loop() and node.id not in _WRAPPERS:
            return str(node.id)
        node = node.parent
    return None


class _Errors(pyx12.error_handler.err_handler):
    """pyx12's error tree, without its logging (it logs element values), with IK303 loop ids and ST order."""

    def isa_error(self, err_cde: str, err_str: str) -> None:
        self.cur_isa_node.add_error(err_cde, "")

    def gs_error(self, err_cde: str, err_str: str) -> None:
        self.cur_gs_node.add_error(err_cde, "")

    def st_error(self, err_cde: str, err_str: str) -> None:
        if self.cur_st_node is not None:
            self.cur_st_node.add_error(err_cde, "")

    def seg_error(self, err_cde: str, err_str: str, err_value: str | None = None, src_line: int | None = None) -> None:
        if self.cur_seg_node is not None and self.cur_seg_node.id == "SEG" and self.cur_st_node is not None:
            self._add_cur_seg()
            self.cur_seg_node.add_error(err_cde, "", None)

    def ele_error(self, err_cde: str, err_str: str, bad_value: str | None, refdes: str | None = None) -> None:
        self._add_cur_ele()
        self.cur_ele_node.add_error(err_cde, "", None)

    def add_st_loop(self, seg_data: Any, src: Any) -> None:
        super().add_st_loop(seg_data, src)
        self.cur_st_node.index = self.st_index

    def add_seg(self, map_node: Any, seg_data: Any, seg_count: int, cur_line: int, ls_id: str | None) -> None:
        super().add_seg(map_node, seg_data, seg_count, cur_line, ls_id)
        self.cur_seg_node.loop_id = _loop_id(map_node)

    st_index = -1


def _run_pyx12(text: str, map_file: str) -> list[Any]:
    """Validate one ISA/GS/.../GE/IEA text with one map; the pyx12 err_st nodes, each with .index (ST order)."""
    return _run_pyx12_stream(io.StringIO(text), map_file)


class _Pieces(io.TextIOBase):
    """A read-only text stream over an iterator of text pieces: what pyx12's reader reads a feed from
    without the feed ever being one string (it reads 106 characters, then blocks of 8 KiB)."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self._it, self._buf = iter(pieces), ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        want = None if size is None or size < 0 else size
        while want is None or len(self._buf) < want:
            piece = next(self._it, None)
            if piece is None:
                break
            self._buf += piece
        out = self._buf if want is None else self._buf[:want]
        self._buf = self._buf[len(out) :]
        return out


def _run_pyx12_stream(stream: Any, map_file: str) -> list[Any]:
    """:func:`_run_pyx12` over a text stream; pyx12 keeps the error nodes only, so memory does not grow
    with the stream."""
    src = pyx12.x12file.X12Reader(stream)
    errh = _Errors()
    control = _load_map("x12.control.00501.xml")
    tx_map = _load_map(map_file)
    src.check_837_lx = tx_map.id == "837"
    walker = walk_tree()
    node = control.getnodebypath("/ISA_LOOP/ISA")
    handlers = {"ISA": errh.add_isa_loop, "GS": errh.add_gs_loop, "ST": errh.add_st_loop}
    closers = {"IEA": errh.close_isa_loop, "GE": errh.close_gs_loop, "SE": errh.close_st_loop}
    for seg in src:
        orig_node, sid = node, seg.get_seg_id()
        if sid == "ISA":
            node = control.getnodebypath("/ISA_LOOP/ISA")
            walker.forceWalkCounterToLoopStart("/ISA_LOOP", "/ISA_LOOP/ISA")
        elif sid == "GS":
            node = tx_map.getnodebypath("/ISA_LOOP/GS_LOOP/GS")
            walker.forceWalkCounterToLoopStart("/ISA_LOOP/GS_LOOP", "/ISA_LOOP/GS_LOOP/GS")
        else:
            node, _pop, _push, walk_errors = walker.walk_errors(
                node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id()
            )
            apply_walk_errors(errh, walk_errors)
        if sid == "ST":
            errh.st_index += 1  # counted even when pyx12 cannot place the ST, to keep ST order aligned
        if node is None:
            node = orig_node
            continue
        if sid in handlers:
            handlers[sid](seg, src)
            errh.handle_errors(src.pop_errors())
        elif sid in closers:
            errh.handle_errors(src.pop_errors())
            closers[sid](node, seg, src)
        else:
            errh.add_seg(node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id())
            errh.handle_errors(src.pop_errors())
        try:
            apply_segment_errors(node, seg, errh)
        except IndexError:  # pyx12 4.0 indexes past a composite's map with too many components
            errh.seg_error("8", "")
    src.cleanup()
    errh.handle_errors(src.pop_errors())
    return [st for isa in errh.children for gs in isa.children for st in gs.children]


def _feed(interchange: Interchange, group: Group, txs: list[Transaction], label: str) -> str:
    segments = (s for tx in txs for s in tx.segments)
    return "".join(_feed_pieces(interchange.delimiters, group, segments, len(txs), label))


def _feed_pieces(d: Delimiters, group: Group, segments: Iterable[str], count: int, label: str) -> Iterator[str]:
    """What pyx12 is fed, segment by segment: a clean fixed-width ISA, the GS, ``segments`` (``count``
    transaction sets, ST .. SE each) with GS08 and ST03 relabelled to the map's ``label``, GE and IEA."""
    e, rep = d.element, d.repetition
    if rep is None:
        rep = next(c for c in "^{}`|!~\x1f" if c not in (e, d.component, d.segment))
    isa = ["00", " " * 10, "00", " " * 10, "ZZ", "SENDER".ljust(15), "ZZ", "RECEIVER".ljust(15), "010101", "0000"]
    isa += [rep, "00501", "000000001", "0", "P", d.component]
    gs = [group.functional_id, group.sender, group.receiver, group.date, group.time, group.control, "X", label]
    sep = d.segment if d.segment in "\r\n" else d.segment + "\n"
    yield "ISA" + e + e.join(isa) + sep
    yield "GS" + e + e.join(gs) + sep
    for seg in segments:
        if seg[:2] == "ST" and seg.split(e, 1)[0].strip() == "ST":
            st = seg.split(e)
            if len(st) > 3:
                st[3] = label
            seg = e.join(st)
        yield seg + sep
    yield f"GE{e}{count}{e}{group.control}{sep}IEA{e}1{e}000000001{sep}"


def _element_errors(seg_id: str, node: Any) -> list[ElementError]:
    out = []
    for ele in node.elements:
        for code, _text, _value in ele.errors:
            code = "I10" if code == "10" else code  # on an element, pyx12's 10 means a "not used" element is present
            where = f"{seg_id}{ele.ele_pos:02d}" + (f"-{ele.subele_pos}" if ele.subele_pos else "")
            text = f"{where}: {ELEMENT_CODES.get(code, 'element error ' + code)}"
            out.append(ElementError(ele.ele_pos, ele.subele_pos, ele.repeat_pos, ele.ele_ref_num, code, text))
    return out


def _segment_errors(st_node: Any) -> tuple[list[SegmentError], bool]:
    """The IK3/IK4 findings of one transaction set, and whether any of them is a syntax error (not a note)."""
    out: list[SegmentError] = []
    hard = False
    for seg in st_node.children:
        sid, pos, loop = str(seg.seg_id or "").strip(), int(seg.seg_count), getattr(seg, "loop_id", None)
        if sid in _ENVELOPE_IDS:
            continue  # trailer counts and control numbers come from the envelope reader
        elements = _element_errors(sid, seg)
        hard |= any(e.code not in _WARNINGS for e in elements)
        codes: list[str | None] = []
        for code, _text, _value in seg.errors:
            if code in _NOTE_SEGMENT_CODES:
                _sid, epos, ref = _NOTE_SEGMENT_CODES[code]
                text = f"{sid}{epos:02d}: numbering does not follow the implementation guide"
                elements.append(ElementError(epos, None, None, ref, "I12", text))
                continue
            code = "I4" if code == "2" else code  # pyx12 reports a "not used" segment present as 2
            hard |= code not in _WARNINGS
            if code not in codes:
                codes.append(code)
        if elements and not [c for c in codes if c != "SEG1"]:
            codes.append(None)  # element errors only: the 999 writes IK304 8
        last = [c for c in codes if c != "SEG1"][-1:]
        for code in codes:
            if code == "SEG1":
                out.append(SegmentError(sid, pos, loop, "8", f"{sid} at position {pos}: trailing separators", []))
                continue
            label = SEGMENT_CODES.get(code or "8", "segment error")
            here = elements if [code] == last else []
            out.append(SegmentError(sid, pos, loop, code, f"{sid} at position {pos}: {label}", here))
    return out, hard


def _transaction_result(
    tx: Transaction, st_node: Any | None, failure: str | None, found: tuple[list[SegmentError], bool] | None = None
) -> TransactionResult:
    """``found``: the findings already made (a set checked in chunks, engine/formats/x12_parallel.py)."""
    codes = list(tx.codes)
    if failure:
        return TransactionResult(tx, "R", list(dict.fromkeys(codes + [failure]))[:5], [])
    if found is None:
        found = _segment_errors(st_node) if st_node is not None else ([], False)
    segments, hard = found
    status = "R" if hard else "E" if segments else "A"
    if segments:
        codes.append("5" if hard else "I5")
    if tx.codes:
        status = "R"
    return TransactionResult(tx, status, list(dict.fromkeys(codes))[:5], segments)


Segments = Callable[[list[int]], Iterable[str]]
"""``segments(indexes)``: the segment texts (ST .. SE each) of those transaction sets of a group, in order."""


def _validate_group(interchange: Interchange, group: Group, segments: Segments | None = None) -> GroupResult:
    """``segments`` None: the sets' own ``segments`` are fed (and a large 835 checked in chunks)."""
    buckets: dict[str, list[int]] = {}
    failures: dict[int, str] = {}
    for i, tx in enumerate(group.transactions):
        map_file = guide_for(tx.reference or group.version, tx.st_id)
        if map_file is None:
            known = any(guide_for(label, tx.st_id) for label in PYX12_LABELS.values())
            failures[i] = "I6" if known else "1"
        else:
            buckets.setdefault(map_file, []).append(i)
    st_nodes: dict[int, Any] = {}
    found: dict[int, tuple[list[SegmentError], bool]] = {}
    for map_file, idx in buckets.items():
        if segments is None and map_file.startswith("835.") and x12_parallel.workers() > 1:
            for i in [i for i in idx if len(group.transactions[i].segments) >= x12_parallel.THRESHOLD]:
                chunked = _in_chunks(interchange, group, group.transactions[i], map_file)
                if chunked is not None:
                    found[i] = chunked
            idx = [i for i in idx if i not in found]
            if not idx:
                continue
        label = PYX12_LABELS[map_file]
        try:
            if segments is None:
                nodes = _run_pyx12(_feed(interchange, group, [group.transactions[i] for i in idx], label), map_file)
            else:
                feed = _feed_pieces(interchange.delimiters, group, segments(idx), len(idx), label)
                nodes = _run_pyx12_stream(_Pieces(feed), map_file)
        except Exception as exc:  # pyx12 can fail on input it does not expect; never let data reach the log
            log.warning("pyx12 failed on group %s with %s", group.control.strip(), type(exc).__name__)
            failures.update(dict.fromkeys(idx, "I5"))
            continue
        for node in nodes:
            if 0 <= node.index < len(idx):
                st_nodes[idx[node.index]] = node
    results = [
        _transaction_result(tx, st_nodes.get(i), failures.get(i), found.get(i))
        for i, tx in enumerate(group.transactions)
    ]
    accepted = sum(r.status in ("A", "E") for r in results)
    codes = list(dict.fromkeys(group.codes))[:5]
    if codes or not results or accepted == 0:
        status = "R"
    elif accepted < len(results):
        status = "P"
    else:
        status = "E" if any(r.status == "E" for r in results) else "A"
    return GroupResult(group, status, codes, results)


def _in_chunks(
    interchange: Interchange, group: Group, tx: Transaction, map_file: str
) -> tuple[list[SegmentError], bool] | None:
    """A large 835 checked in chunks on every core (:mod:`engine.formats.x12_parallel`); None when
    it cannot be cut or a chunk could not be walked (then it is checked whole)."""
    parts = x12_parallel.chunks(tx.segments, interchange.delimiters.element, x12_parallel.workers() * 2)
    if parts is None:
        return None
    label = PYX12_LABELS[map_file]
    texts = [(_feed(interchange, group, [replace(tx, segments=segs)], label), pos) for segs, pos in parts]
    try:
        checked = x12_parallel.check_chunks(texts, map_file)
    except Exception as exc:  # a worker could not start: checked whole, as before
        log.warning("chunked validation unavailable (%s); checking whole", type(exc).__name__)
        return None
    if any(c is None for c in checked):
        return None
    seen: dict[tuple, SegmentError] = {}
    for segments, _hard in checked:  # type: ignore[misc]
        for seg in segments:
            seen.setdefault((seg.position, seg.segment_id, seg.code, seg.text), seg)
    findings = sorted(seen.values(), key=lambda s: s.position)
    return findings, any(h for _s, h in checked)  # type: ignore[misc]


def validate(interchange: Interchange) -> list[GroupResult]:
    """One GroupResult per functional group of the interchange, one TransactionResult per transaction set."""
    return [_validate_group(interchange, g) for g in interchange.groups]


def validate_stream(interchange: Interchange, segments: Callable[[int, list[int]], Iterable[str]]) -> list[GroupResult]:
    """:func:`validate` for an interchange whose transaction sets are not held (a file read in blocks,
    :mod:`engine.formats.x12_stream`): ``segments(group index, set indexes)`` yields those sets' segment
    texts as they are read, and pyx12 checks them as they come. Same results as :func:`validate`."""
    return [_validate_group(interchange, g, functools.partial(segments, k)) for k, g in enumerate(interchange.groups)]
