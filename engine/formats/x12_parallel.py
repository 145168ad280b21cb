"""A large 835 checked by pyx12 on every core: its claim payments in chunks, positions mapped back.

pyx12 walks a transaction set segment by segment on one core (about 14,000 segments a second
here), so a payer's 835 of 10,000 claims (200,000 segments) takes 14 s to check before a
single payment can post. Nothing in a 2100 claim loop depends on another claim loop, so the set
is cut between claim loops into chunks that pyx12 checks as transaction sets of their own, in
worker processes: each chunk is the set's header (ST, BPR, TRN ... the 1000A/B payer and payee
loops), the 2000 LX header its first claim sits under, its claim loops, and for the last chunk
the PLB trailer; an SE closes each with its own count. A finding's position in a chunk maps back
to its position in the set; a finding in the repeated header is reported once. The set's own
SE count and control number are checked on the whole by the front end, as for any set.

Worker processes are started with ``spawn`` (the engine has threads; a forked child would
inherit their locks), once, and kept for later files. A set below ``THRESHOLD`` segments, or a
machine with one core, is checked in one piece as before.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

THRESHOLD = 20_000
"""Segments from which an 835 transaction set is checked in chunks."""
_TRAILER = ("PLB", "SE")

_pool: ProcessPoolExecutor | None = None


def workers() -> int:
    return min(os.cpu_count() or 1, 8)


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(workers(), mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown, cancel_futures=True)
    return _pool


def chunks(segments: list[str], element: str, parts: int) -> list[tuple[list[str], list[int]]] | None:
    """``parts`` chunks of an 835 set (segment texts ST .. SE), each with the set position (from
    1) of each of its segments, the closing SE excepted; None when it cannot be cut (no claims,
    or a structure the cut does not know: then it is checked whole)."""
    ids = [s.split(element, 1)[0] for s in segments]
    if ids[0] != "ST" or ids[-1] != "SE" or "LX" not in ids:
        return None
    first_lx = ids.index("LX")
    end = len(ids) - 1
    while end > first_lx and ids[end - 1] in _TRAILER:
        end -= 1
    claims = [i for i in range(first_lx, end) if ids[i] == "CLP"]
    if len(claims) < parts * 2:
        return None
    header = list(range(0, first_lx))
    control = segments[0].split(element)[2] if len(segments[0].split(element)) > 2 else ""
    step = len(claims) // parts
    begins: list[int] = [first_lx]
    prefixes: list[list[int]] = [[]]
    for k in range(1, parts):
        start = claims[k * step]
        lx = max(i for i in range(first_lx, start + 1) if ids[i] == "LX")  # the 2000 loop it sits in
        first_claim = next(i for i in range(lx, len(ids)) if ids[i] == "CLP")
        if first_claim == start:  # the chunk starts with its 2000 loop
            begins.append(lx)
            prefixes.append([])
        else:  # inside a 2000 loop: its LX (and TS3/TS2) head the chunk again
            begins.append(start)
            prefixes.append(list(range(lx, first_claim)))
    out = []
    for k, begin in enumerate(begins):
        stop = begins[k + 1] if k + 1 < len(begins) else len(ids) - 1
        picked = header + prefixes[k] + list(range(begin, stop))
        texts = [segments[i] for i in picked]
        texts.append(element.join(["SE", str(len(texts) + 1), control]))
        out.append((texts, [i + 1 for i in picked]))
    return out


def check_chunks(parts: list[tuple[str, list[int]]], map_file: str) -> list[tuple[list[Any], bool] | None]:
    """Each chunk's (segment errors, any hard error) with set positions, checked in parallel; None
    for a chunk pyx12 could not walk."""
    futures = [_executor().submit(_check_one, text, positions, map_file) for text, positions in parts]
    return [f.result() for f in futures]


def _check_one(text: str, positions: list[int], map_file: str) -> tuple[list[Any], bool] | None:
    """In a worker: pyx12 over one chunk (a whole interchange text), findings with set positions."""
    from dataclasses import replace

    from engine.formats import x12_validate

    try:
        (node, *_rest) = x12_validate._run_pyx12(text, map_file)
    except Exception:
        return None
    found, hard = x12_validate._segment_errors(node)
    mapped = []
    for seg in found:
        if 1 <= seg.position <= len(positions):
            where = positions[seg.position - 1]
            text_ = seg.text.replace(f"at position {seg.position}", f"at position {where}", 1)
            mapped.append(replace(seg, position=where, text=text_))
    return mapped, hard
