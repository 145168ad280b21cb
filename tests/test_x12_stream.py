"""Large X12 files stream: read in blocks, checked by pyx12 as read, big transaction sets stored in parts
(engine/formats/x12_stream.py, engine/channels/file_source.py). The streaming reader must find exactly what
the whole-file reader finds; the parts must map to exactly the records of the whole; and a big 837 dropped
into a running engine must be posted without the file ever sitting in the engine's memory."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ROOT
from test_remittance import FAST, acks, assert_clean_999, drop, folder, gen, pm_rows, settle, taken

from engine.formats import x12_envelope, x12_parallel, x12_stream, x12_validate
from engine.formats.x12 import X12Message
from engine.transforms.checks import balance_835
from engine.transforms.mapping import load_mapping

FIXTURES = ROOT / "tests" / "fixtures" / "x12"
FILES = sorted(p for p in FIXTURES.iterdir() if p.is_file() and not p.name.startswith("_") and p.suffix != ".md")


def envelope(interchanges, stray):
    """Everything the envelope reader decides, segment texts left out (the stream keeps none)."""
    return (
        [
            (
                ic.control,
                ic.isa,
                ic.delimiters,
                ic.problems,
                ic.iea_count,
                ic.iea_control,
                [
                    (
                        g.functional_id,
                        g.control,
                        g.version,
                        g.codes,
                        g.ge_count,
                        g.ge_control,
                        [
                            (t.st_id, t.control, t.reference, t.position, len(t.segments), t.se_count, t.codes)
                            for t in g.transactions
                        ],
                    )
                    for g in ic.groups
                ],
            )
            for ic in interchanges
        ],
        stray,
    )


def damaged(data: bytes) -> dict[str, bytes]:
    """Variants of one file as partners' uploads go wrong."""
    text = data.decode("latin-1")
    cut = text.rfind("IEA")
    return {
        "whole": data,
        "truncated in the middle": data[: len(data) // 2],
        "no IEA": text[:cut].encode("latin-1") if cut > 0 else data,
        "twice, back to back": data + data,
        "text between interchanges": data + b"\nHELLO\n" + data,
        "leading junk": b"JUNK~" + data,
        "empty segments": data.replace(b"~", b"~~", 3),
        "a latin-1 byte": data.replace(b"RIVERSIDE", b"RIV\xc9RSIDE", 1),
        "a BOM": b"\xef\xbb\xbf" + data,
        "SE count off": re.sub(rb"SE\*(\d+)", lambda m: b"SE*" + str(int(m[1]) + 1).encode(), data, count=1),
        "GE count off": re.sub(rb"GE\*(\d+)", lambda m: b"GE*" + str(int(m[1]) + 5).encode(), data, count=1),
        "second ISA before the IEA": text[:cut].encode("latin-1") + data if cut > 0 else data,
        "blank": b" \r\n\t ",
        "empty": b"",
    }


def cases() -> list:
    return [
        pytest.param(data, id=f"{path.name}-{what}")
        for path in FILES
        for what, data in damaged(path.read_bytes()).items()
    ]


@pytest.mark.parametrize("data", cases())
def test_the_streaming_reader_finds_what_the_whole_reader_finds(tmp_path, data):
    path = tmp_path / "in.x12"
    path.write_bytes(data)
    expected = envelope(*x12_envelope.read_interchanges(data))
    for block in (7, 106, 4096):  # blocks that end inside the ISA, inside segments, between them
        reader = x12_stream.StreamReader(path, block_bytes=block)
        segs = list(reader)
        assert envelope(reader.interchanges, reader.stray) == expected, block
        assert all(s.text for s in segs)
    assert envelope(*x12_stream.scan(path)) == expected


def findings(results):
    return [
        (
            g.status,
            g.codes,
            [
                (t.status, t.codes, [(s.segment_id, s.position, s.code, s.text, s.elements) for s in t.segments])
                for t in g.transactions
            ],
        )
        for g in results
    ]


CHECKED = ("whole", "twice, back to back", "empty segments", "a latin-1 byte", "SE count off", "GE count off")


@pytest.mark.parametrize("data", [c for c in cases() if c.id.rsplit("-", 1)[1] in CHECKED])
def test_validation_while_streaming_gives_the_verdicts_of_the_whole_check(tmp_path, monkeypatch, data):
    monkeypatch.setattr(x12_parallel, "THRESHOLD", 10**9)  # the whole check in one piece, as the stream does
    path = tmp_path / "in.x12"
    path.write_bytes(data)
    interchanges, _ = x12_envelope.read_interchanges(data)
    expected = {i: findings(x12_validate.validate(ic)) for i, ic in enumerate(interchanges) if not ic.problems}
    streamed, _ = x12_stream.scan(path)
    assert {i: findings(r) for i, r in x12_stream.validate(path, streamed).items()} == expected


def test_a_big_set_with_errors_deep_inside_is_judged_the_same_streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(x12_parallel, "THRESHOLD", 10**9)
    text = "".join(gen.professional_batch(400, dependents_every=4))
    text = text.replace("DTP*472*D8*20241005", "DTP*472*D8*20241399", 1).replace("SBR*P*18*", "SBR*Q*18*", 1)
    path = tmp_path / "bad.837"
    path.write_text(text)
    (ic,), _ = x12_envelope.read_interchanges(text.encode())
    whole = findings(x12_validate.validate(ic))
    assert whole[0][0] == "R"
    assert {0: whole} == {i: findings(r) for i, r in x12_stream.validate(path, x12_stream.scan(path)[0]).items()}


def records(mapping, content: str) -> list[tuple]:
    return [
        (r.target, tuple(sorted((k, str(v)) for k, v in r.values.items())))
        for r in mapping.run(X12Message.from_text(content))
    ]


def whole_and_parts(tmp_path: Path, text: str, max_bytes: int):
    path = tmp_path / "big.x12"
    path.write_text(text)
    (ic,), _ = x12_envelope.read_interchanges(text.encode())
    whole = x12_envelope.single(ic, ic.groups[0], ic.groups[0].transactions[0])
    interchanges, _ = x12_stream.scan(path)
    return whole, list(x12_stream.parts(path, interchanges, max_bytes)), ic


def test_the_parts_of_a_big_837_map_to_exactly_the_records_of_the_whole(tmp_path):
    mapping = load_mapping(ROOT / "mappings" / "claim837_pm.yaml")
    text = "".join(gen.professional_batch(500, dependents_every=3, lines_per_claim=2))
    whole, parts, ic = whole_and_parts(tmp_path, text, 16 * 1024)
    assert len(parts) > 5 and [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert all(p.of_many for p in parts)
    mapped = [r for p in parts for r in records(mapping, p.content)]
    assert sorted(mapped) == sorted(records(mapping, whole))  # every claim and line once, read the same
    seen: set[str] = set()
    for p in parts:  # each part a self-contained interchange of its own claims, with its billing provider
        (part_ic,), problems = x12_envelope.read_interchanges(p.content.encode())
        assert problems == [] and part_ic.problems == []
        (tx,) = part_ic.groups[0].transactions
        assert tx.codes == [] and tx.control == "0001" and part_ic.control == ic.control
        claims = set(re.findall(r"CLM\*(PCN-S\d+)", p.content))
        assert claims and not claims & seen
        seen |= claims
        assert "HL*1**20*1~" in p.content and x12_stream.part_number(X12Message.from_text(p.content)) == p.number
        (result,) = x12_validate.validate(part_ic)
        assert result.status in ("A", "E")  # E: HL ids kept as sent do not start at 1 (a note, never an error)
    assert len(seen) == 500


def test_the_parts_of_a_big_835_map_to_the_records_of_the_whole_and_balance_claim_by_claim(tmp_path):
    mapping = load_mapping(ROOT / "mappings" / "remit835_pm.yaml")
    text = gen.many_claims_835(300).replace("SE*", "PLB*1628403978*20241231*WO:X*10.00~\nSE*", 1)  # a recovery
    text = re.sub(r"SE\*(\d+)", lambda m: f"SE*{int(m[1]) + 1}", text)
    text = re.sub(r"BPR\*I\*([\d.]+)", lambda m: f"BPR*I*{Decimal(m[1]) - 10}", text)  # ... the payment less it
    whole, parts, _ic = whole_and_parts(tmp_path, text, 12 * 1024)
    assert len(parts) > 5
    assert balance_835(X12Message.from_text(whole), []) == []
    mapped = {r for p in parts for r in records(mapping, p.content)}  # the remittance repeats: one row by key
    assert mapped == set(records(mapping, whole))
    claims = [re.findall(r"CLP\*(PCN-B\d+)", p.content) for p in parts]
    assert sum(len(c) for c in claims) == 300 and len({c for cs in claims for c in cs}) == 300
    assert ["PLB" in p.content for p in parts] == [False] * (len(parts) - 1) + [True]
    for p in parts:  # each part's claims balance; BPR02 pays all parts', so it is not checked on one
        assert balance_835(X12Message.from_text(p.content), []) == []
        assert "BPR*I*" in p.content and "N1*PE*" in p.content and "LX*1~" in p.content


def test_a_set_that_fits_is_one_message_as_the_whole_reader_stores_it(tmp_path):
    for path in FILES:
        data = path.read_bytes()
        interchanges, _ = x12_envelope.read_interchanges(data)
        expected = [
            x12_envelope.single(ic, g, t)
            for ic in interchanges
            if not ic.problems
            for g in ic.groups
            for t in g.transactions
        ]
        streamed, _ = x12_stream.scan(path)
        skip = {i for i, ic in enumerate(streamed) if ic.problems}
        got = list(x12_stream.parts(path, streamed, 10**9, skip=skip))
        assert [p.content for p in got] == expected, path.name
        assert not any(p.of_many for p in got)
        assert all(x12_stream.part_number(X12Message.from_text(c)) is None for c in expected)


# -- in a running engine ------------------------------------------------------------------------------------


def _vm(pid: int) -> dict[str, int]:
    """VmHWM (peak) and VmRSS of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def test_a_big_835_in_parts_posts_once_even_when_dropped_twice(fresh_engine):
    small = {"ENGINE_X12_STREAM_ABOVE_BYTES": "50000", "ENGINE_X12_MAX_MESSAGE_BYTES": "16384"}
    eng = fresh_engine(**FAST, **small)
    text = gen.many_claims_835(400)
    drop(eng, "remittance-835", "big.835", text.encode())
    assert taken(eng, "remittance-835", "big.835", timeout=60) == "processed"
    first = settle(eng, "remittance-835", timeout=60)
    assert len(first) > 5 and {m["status"] for m in first} == {"SENT"}
    assert [m["control_id"].rsplit("/", 1)[1] for m in first] == [str(n) for n in range(1, len(first) + 1)]
    assert not [w for m in first for w in json.loads(m["warnings"] or "[]") if "balance" in w]
    (ack,) = acks(eng, "remittance-835", "big")
    assert_clean_999(ack)
    drop(eng, "remittance-835", "again.835", text.encode())
    assert taken(eng, "remittance-835", "again.835", timeout=60) == "processed"
    again = settle(eng, "remittance-835", timeout=60)[len(first) :]
    assert [m["duplicate_of"] for m in again] == [m["id"] for m in first]
    assert pm_rows(eng, "SELECT count(*) AS n FROM claim_payment")[0]["n"] == 400
    assert len(pm_rows(eng, "SELECT * FROM remittance")) == 1


BIG_SUBSCRIBERS = 46_500  # 20.0 MB
PINNED_CACHES = {"ENGINE_SQLITE_CACHE_KIB": "2048", "ENGINE_SQLITE_MMAP_BYTES": "0"}


def test_a_20_mb_837_is_posted_without_sitting_in_the_engines_memory(fresh_engine, tmp_path):
    """The engine's peak memory (VmHWM) must not follow the file: it levels off once parts flow, whatever the
    file's size. SQLite's page caches (64 MiB per connection by design, engine/stores/db.py) fill with the
    databases written, as they would for the same claims in many small files: they are pinned at 2 MiB here
    (ENGINE_SQLITE_CACHE_KIB, ENGINE_SQLITE_MMAP_BYTES) so that what is measured is the file's way through
    the engine."""
    path = tmp_path / "batch.837"
    size = gen.write_professional_batch(path, BIG_SUBSCRIBERS, dependents_every=10)
    assert size >= 20_000_000
    eng = fresh_engine(**FAST, ENGINE_X12_STREAM_ABOVE_BYTES="4000", **PINNED_CACHES)
    drop(eng, "claims-837-in", "837P_single.837")  # warm: pyx12's 837 map loaded, the mapping run, streamed
    assert taken(eng, "claims-837-in", "837P_single.837") == "processed"
    settle(eng, "claims-837-in")
    before = _vm(eng.proc.pid)
    started = time.monotonic()
    inbox = folder(eng, "claims-837-in", "inbox")
    path.replace(inbox / ".batch.837.part")
    (inbox / ".batch.837.part").replace(inbox / "batch.837")
    quarter = None
    while (posted := pm_rows(eng, "SELECT count(*) AS n FROM claim")[0]["n"] - 1) < BIG_SUBSCRIBERS:
        if quarter is None and posted >= BIG_SUBSCRIBERS // 4:
            quarter = _vm(eng.proc.pid)
        assert time.monotonic() - started < 600, posted
        time.sleep(0.5)
    took = time.monotonic() - started
    assert taken(eng, "claims-837-in", "batch.837") == "processed"
    (ack,) = acks(eng, "claims-837-in", "batch")
    assert_clean_999(ack)
    messages = settle(eng, "claims-837-in")
    after = _vm(eng.proc.pid)
    grew, late = after["VmHWM"] - before["VmHWM"], after["VmHWM"] - (quarter or after)["VmHWM"]
    print(
        f"\n837 of {size / 1e6:.1f} MB, {BIG_SUBSCRIBERS} claims in {len(messages) - 1} messages, posted in "
        f"{took:.1f} s; engine VmHWM {before['VmHWM'] / 1e6:.1f} MB before, {(quarter or after)['VmHWM'] / 1e6:.1f} "
        f"MB at a quarter posted, {after['VmHWM'] / 1e6:.1f} MB after (+{grew / 1e6:.1f} MB)"
    )
    assert {m["status"] for m in messages} == {"SENT"} and len(messages) > 100
    assert max(len(m["control_id"]) for m in messages) < 40
    n = pm_rows(eng, "SELECT count(*) AS n, count(DISTINCT patient_control_number) AS d FROM claim")[0]
    assert n == {"n": BIG_SUBSCRIBERS + 1, "d": BIG_SUBSCRIBERS + 1}  # with the warming claim: each once
    # flat while three quarters of the file went through: what still settles late is a few MB of SQLite's and
    # the allocator's working memory (1.8 to 2.6 MB in runs of 2026-11-30), where memory that followed the
    # file would grow by many times the 15 MB that went through
    assert late < size / 4
    assert grew < 2 * size  # with every part queued at once (no waiting on processing) it took 18 times its size
