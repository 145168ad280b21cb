"""A large 835 is checked by pyx12 in chunks on every core: the findings must be exactly those of
the check in one piece, at the same positions, whatever the cut (engine/formats/x12_parallel.py)."""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import ROOT

from engine.formats import x12_envelope, x12_parallel, x12_validate

spec = importlib.util.spec_from_file_location("x12_generate", ROOT / "tests/fixtures/x12/_generate.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def findings(results):
    return [
        (
            g.status,
            [
                (
                    t.status,
                    t.codes,
                    [(s.segment_id, s.position, s.loop_id, s.code, s.text, s.elements) for s in t.segments],
                )
                for t in g.transactions
            ],
        )
        for g in results
    ]


def header_date(segs):
    i = next(k for k, s in enumerate(segs) if s.strip().startswith("DTM*405"))
    segs[i] = re.sub(r"\d{8}", "20241399", segs[i])  # in the header every chunk repeats


def claim_status_at_a_cut(segs):
    claims = [i for i, s in enumerate(segs) if s.strip().startswith("CLP")]
    k = claims[len(claims) // 4]  # the first claim of the second chunk
    segs[k] = segs[k].replace("*1*", "*9*", 1)


def line_date_deep_inside(segs):
    claims = [i for i, s in enumerate(segs) if s.strip().startswith("CLP")]
    k = claims[700] + 1
    while not segs[k].strip().startswith("DTM"):
        k += 1
    segs[k] = re.sub(r"\d{8}", "20241341", segs[k])


def segment_missing(segs):
    claims = [i for i, s in enumerate(segs) if s.strip().startswith("CLP")]
    del segs[claims[len(claims) // 2] + 1]


@pytest.mark.parametrize("damage", [None, header_date, claim_status_at_a_cut, line_date_deep_inside, segment_missing])
def test_a_large_835_checked_in_chunks_reports_what_the_whole_check_reports(monkeypatch, damage):
    if x12_parallel.workers() < 2:
        pytest.skip("one core: every set is checked whole")
    segs = gen.many_claims_835(1200).split("~")
    if damage is not None:
        damage(segs)
    (ic,), _ = x12_envelope.read_interchanges("~".join(segs).encode())
    assert x12_parallel.chunks(ic.groups[0].transactions[0].segments, "*", 4) is not None
    monkeypatch.setattr(x12_parallel, "THRESHOLD", 10**9)
    whole = findings(x12_validate.validate(ic))
    monkeypatch.setattr(x12_parallel, "THRESHOLD", 1000)
    calls = []
    check = x12_parallel.check_chunks
    monkeypatch.setattr(x12_parallel, "check_chunks", lambda parts, m: calls.append(len(parts)) or check(parts, m))
    chunked = findings(x12_validate.validate(ic))
    assert calls == [4]  # checked in 4 chunks, none of which fell back to the whole check
    assert chunked == whole
    assert (whole[0][0] == "A") == (damage is None)
