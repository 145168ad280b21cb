"""The HL7 v2 tokenizer (engine/formats/hl7.py) on the project's fixtures, checked against hl7apy.

Where hl7apy 1.3.5 fails on what real feeds send (measured on these fixtures; see
test_hl7apy_rejects_or_misreads_what_real_feeds_send for the executable version):

- CRLF separators (adt_a01_crlf.hl7, raw):   InvalidName "Invalid name for Segment: "
  (its parser splits on CR only, so every segment after MSH is named "\\nXX").
- LF separators (oru_r01_lf.hl7, raw):        no error at all, but ONE segment: everything after
  MSH-17 is folded into the MSH, 14 segments silently lost.
- MSH-12 9.9 (bad_version.hl7):              UnsupportedVersion "The version 9.9 is not supported";
  the same for 2.7.1, which the engine supports.
- MSH-2 "^~\\&#" below v2.7:                 InvalidEncodingChars "Invalid encoding chars: Found 5
  encoding chars" (accepted from 2.7 on, so oru_r01_v28.hl7 parses).
- FHS/BHS batches (batch_adt.hl7, bad_batch.hl7) and no_msh.hl7:  ParserError "Invalid message".
- find_groups=True drops Z-segments: adt_a01.hl7 comes back with 14 segments, ZPI gone.
- and hl7apy accepts what it should not: bad_segment_id.hl7 parses, "pv1" upper-cased to PV1 and
  "Z#1" kept as a segment; the tokenizer rejects it.

So the comparison normalises separators to CR first and compares per message of a batch.
"""

from __future__ import annotations

import contextlib
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy import exceptions as apy_exc
from hl7apy.parser import parse_message

from engine.errors import ParseError
from engine.formats import hl7, mllp
from engine.formats.hl7 import Delimiters, Message, check_header, decode, read_header, split_batch, unescape
from engine.formats.hl7_ack import ACK_ACCEPT, ACK_ERROR, ACK_REJECT, build_ack
from engine.formats.mllp import iter_frames

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hl7v2"
LINES = re.compile(r"\r\n|\r|\n")

SINGLE = [
    "adt_a01.hl7",
    "adt_a03.hl7",
    "adt_a04.hl7",
    "adt_a08.hl7",
    "adt_a40.hl7",
    "oru_r01.hl7",
    "oru_r01_lf.hl7",
    "oru_r01_v28.hl7",
    "adt_a01_crlf.hl7",
    "adt_a01_latin1.hl7",
    "adt_a01_utf8.hl7",
    "bad_version.hl7",
    "empty_control_id.hl7",
    "truncated.hl7",
]
MULTI = ["batch_adt.hl7", "many_messages.hl7"]
UNREADABLE = ["garbage.bin", "no_msh.hl7", "bad_segment_id.hl7", "bad_batch.hl7"]
ALL = SINGLE + MULTI + UNREADABLE


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def text(name: str) -> str:
    return decode(raw(name))


def msg(name: str) -> Message:
    return Message(text(name))


def raw_segments(t: str) -> list[str]:
    return [s for s in LINES.split(t) if s.strip()]


def test_every_fixture_named_in_the_readme_exists_and_nothing_else_is_unaccounted_for():
    on_disk = {p.name for p in FIXTURES.iterdir() if p.suffix in (".hl7", ".bin")}
    assert on_disk == set(ALL)
    readme = (FIXTURES.parent / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in ALL)


# -- nothing lost -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SINGLE)
def test_every_segment_of_a_message_comes_out_in_order(name):
    t = text(name)
    m = Message(t)
    assert [s.name for s in m.segments] == [s[:3] for s in raw_segments(t)]
    assert [s.text for s in m.segments] == raw_segments(t)


@pytest.mark.parametrize("name, count", [("batch_adt.hl7", 3), ("many_messages.hl7", 25)])
def test_every_segment_of_a_file_lands_in_exactly_one_message(name, count):
    t = text(name)
    messages = [Message(m) for m in split_batch(t)]
    assert len(messages) == count
    envelopes = [s for s in raw_segments(t) if s[:3] in ("FHS", "BHS", "BTS", "FTS")]
    assert sum(len(m.segments) for m in messages) + len(envelopes) == len(raw_segments(t))
    assert [s.name for m in messages for s in m.segments] == [
        s[:3] for s in raw_segments(t) if s[:3] not in ("FHS", "BHS", "BTS", "FTS")
    ]


def test_z_segments_newer_segments_and_notes_after_observations_are_kept():
    assert msg("adt_a01.hl7").segment_names() == [
        "MSH",
        "EVN",
        "PID",
        "PD1",
        "NK1",
        "PV1",
        "PV2",
        "AL1",
        "AL1",
        "DG1",
        "DG1",
        "GT1",
        "IN1",
        "IN2",
        "ZPI",
    ]
    assert msg("oru_r01_v28.hl7").segment_names()[5] == "PRT"
    names = msg("oru_r01.hl7").segment_names()
    assert names[names.index("NTE") - 1] == "OBX"
    assert names.count("OBX") == 8 and names.count("OBR") == 2


def test_crlf_and_lf_separators_leave_no_stray_line_ends_in_values():
    for name in ("adt_a01_crlf.hl7", "oru_r01_lf.hl7"):
        m = msg(name)
        assert all("\r" not in s.text and "\n" not in s.text for s in m.segments)
    assert msg("adt_a01_crlf.hl7").value("DG1-6.1") == "A"
    assert msg("oru_r01_lf.hl7").values("OBX[*]-11") == ["F"] * 8


# -- against hl7apy ------------------------------------------------------------------------------
def _apy_fields(segment) -> dict[int, str]:
    """hl7apy's fields of one segment by number; repetitions are separate children: re-joined."""
    out: dict[int, list[str]] = {}
    for field in segment.children:
        out.setdefault(int(field.name.rsplit("_", 1)[1]), []).append(field.to_er7())
    return {n: "~".join(reps) for n, reps in out.items()}


def _er7(value: str, trunc: str) -> str:
    r"""hl7apy's to_er7 re-escapes what it does not recognise on the way out: a backslash not in
    \F\ \S\ \T\ \R\ \E\ \H\ \N\ becomes \E\ (so \.br\ comes back as \E\.br\E\), and from v2.7 a
    literal truncation character becomes \L\. Both sides are put through this same fold, which
    only merges \E\ with \ and \L\ with the truncation character: any misplaced split still fails."""
    value = value.replace("\\E\\", "\\")
    return value.replace("\\L\\", trunc) if trunc else value


def _messages_for_comparison(name: str) -> list[str]:
    t = text(name)
    return split_batch(t) if name in MULTI else [t]


HL7APY_READABLE = [
    "adt_a01.hl7",
    "adt_a03.hl7",
    "adt_a04.hl7",
    "adt_a08.hl7",
    "adt_a40.hl7",
    "oru_r01.hl7",
    "oru_r01_lf.hl7",
    "oru_r01_v28.hl7",
    "adt_a01_crlf.hl7",
    "adt_a01_latin1.hl7",
    "adt_a01_utf8.hl7",
    "empty_control_id.hl7",
    "truncated.hl7",
    "batch_adt.hl7",
    "many_messages.hl7",
]


@pytest.mark.parametrize("name", HL7APY_READABLE)
def test_every_field_of_every_segment_equals_what_hl7apy_reads(name):
    compared = 0
    for t in _messages_for_comparison(name):
        normalised = "\r".join(raw_segments(t))
        ours = Message(t)
        theirs = parse_message(normalised, find_groups=False)
        assert [s.name for s in ours.segments] == [s.name for s in theirs.children]
        enc = ours.header().encoding_chars
        trunc = enc[4] if len(enc) > 4 else ""
        for seg, apy_seg in zip(ours.segments, theirs.children):
            apy = _apy_fields(apy_seg)
            assert max(apy) == len(seg.fields) - 1, seg.name  # same last non-empty field
            for n in range(1, len(seg.fields)):
                assert _er7(seg.fields[n], trunc) == _er7(apy.get(n, ""), trunc), f"{seg.name}-{n}"
                compared += 1
    assert compared >= 30  # the smallest fixture (the A40) has 40 fields


def test_the_comparison_with_hl7apy_would_catch_a_field_split_in_the_wrong_place():
    t = text("adt_a01.hl7")
    theirs = _apy_fields(parse_message(t.strip("\r"), find_groups=False).children[2])
    wrong = Message(t.replace("|19580722|F|", "|19580722^F|", 1)).segments[2]
    assert any(_er7(wrong.field(n), "") != _er7(theirs.get(n, ""), "") for n in range(1, 24))


def test_hl7apy_rejects_or_misreads_what_real_feeds_send_and_the_tokenizer_reads_it():
    crlf, lf = text("adt_a01_crlf.hl7"), text("oru_r01_lf.hl7")
    with pytest.raises(apy_exc.InvalidName):
        parse_message(crlf, find_groups=False)
    assert len(Message(crlf).segments) == 6

    assert len(parse_message(lf, find_groups=False).children) == 1  # silently one MSH
    assert len(Message(lf).segments) == 15

    with pytest.raises(apy_exc.UnsupportedVersion):
        parse_message(text("bad_version.hl7"), find_groups=False)
    v271 = text("oru_r01.hl7").replace("|2.5.1|", "|2.7.1|", 1)
    with pytest.raises(apy_exc.UnsupportedVersion):
        parse_message(v271, find_groups=False)
    check_header(Message(v271).header())

    trunc_251 = text("adt_a01.hl7").replace("MSH|^~\\&|", "MSH|^~\\&#|", 1)
    with pytest.raises(apy_exc.InvalidEncodingChars):
        parse_message(trunc_251, find_groups=False)
    assert Message(trunc_251).value("PID-3.1") == "MRN100001"

    for name in ("batch_adt.hl7", "bad_batch.hl7", "no_msh.hl7"):
        with pytest.raises(apy_exc.ParserError):
            parse_message(text(name), find_groups=False)

    grouped = parse_message(text("adt_a01.hl7"), find_groups=True).to_er7()
    assert "ZPI" not in grouped and "ZPI" in msg("adt_a01.hl7").segment_names()

    assert [s.name for s in parse_message(text("bad_segment_id.hl7"), find_groups=False).children][3] == "PV1"
    with pytest.raises(ParseError):
        msg("bad_segment_id.hl7")


# -- paths ----------------------------------------------------------------------------------------
def test_paths_address_fields_components_repetitions_and_subcomponents():
    m = msg("adt_a01.hl7")
    assert m.value("MSH-1") == "|" and m.value("MSH-2") == "^~\\&"
    assert (m.value("MSH-9.1"), m.value("MSH-9.2"), m.value("MSH-9.3")) == ("ADT", "A01", "ADT_A01")
    assert m.value("PID-3.1") == "MRN100001"
    assert m.value("PID-3") == "MRN100001^^^SUNRISE_GH^MR"
    assert m.values("PID-3[*].1") == ["MRN100001", "HCN5550001"]
    assert m.values("PID-3[*].5") == ["MR", "JHN"]
    assert m.value("PID-3[2].4") == "ORHCN"
    assert m.value("PID-3.4.1") == "SUNRISE_GH"
    assert m.value("PID-13[2].4") == "margaret.hartwell@example.org"
    assert m.value("PID-18.1") == "ACC2024031400017"
    assert m.value("PV1-19.1") == "V240314-0042"
    assert m.value("PV1-44") == "20240314080500"
    assert m.values("AL1[*]-3.2") == ["Penicillin G", "Peanut"]
    assert m.value("AL1[2]-5") == "Lip swelling"
    assert m.values("AL1-5[*]") == ["Hives", "Wheezing"]
    assert m.values("DG1[*]-3.1") == ["I20.9", "E11.9"]
    assert m.value("ZPI-2.1") == "PREFERS_TEXT"
    assert m.value("IN1-36") == "POL-88231007"
    assert m.value("OBX-5") is None and m.values("OBX[*]-5") == []
    assert m.value("AL1[3]-3") is None and m.value("PID-3[3]") is None and m.value("PID-99") is None
    assert m.values("PID-12[*]") == [""]  # an empty field under [*] keeps its place
    assert m.value("PID").startswith("PID|1||MRN100001")


@pytest.mark.parametrize("bad", ["PID-0", "pid-3", "PID-3.0", "PID-3[0]", "PID-", "PID-3..1", "OBX[x]-5"])
def test_malformed_paths_are_refused_with_a_value_error(bad):
    with pytest.raises(ValueError):
        hl7.parse_path(bad)


def test_hl7_null_is_none_and_escapes_are_decoded_when_read():
    m = msg("adt_a08.hl7")
    assert m.values("PID-16") == [None] and m.value("PID-16") is None
    assert m.values("PID-14") == [None]
    assert m.values("PID-12") == []  # merely empty is not null
    assert m.value("PID-11.1") == "77 BRIDGE & MILL LN"
    assert m.segments[2].field(11).startswith("77 BRIDGE \\T\\ MILL LN")  # raw stays raw
    assert m.value("PID-9.1") == "HARTWELL&CARVER"
    note = msg("oru_r01.hl7").value("NTE-3")
    assert note == "Specimen slightly hemolyzed.\nResult confirmed by repeat analysis."


@pytest.mark.parametrize(
    "raw_value, expected",
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\X41\\", "A"),
        ("caf\\XE9\\", "café"),
        ("\\X4142\\C", "ABC"),
        ("\\H\\bold\\N\\ text", "bold text"),
        ("keep \\Zabc\\ it", "keep \\Zabc\\ it"),
        ("\\Xzz\\", "\\Xzz\\"),
        ("lone \\ escape", "lone \\ escape"),
        ("trailing\\", "trailing\\"),
        ("plain", "plain"),
    ],
)
def test_escape_sequences_decode(raw_value, expected):
    assert unescape(raw_value, Delimiters()) == expected


def test_escapes_follow_the_delimiters_the_message_declares():
    d = Delimiters.from_msh("MSH#$*!%#APP")
    assert (d.field, d.component, d.repetition, d.escape, d.subcomponent) == ("#", "$", "*", "!", "%")
    assert unescape("a!F!b!S!c!R!d!T!e!E!f", d) == "a#b$c*d%e!f"
    m = Message("MSH#$*!%#APP#FAC#####ADT$A01#C1#P#2.5\rPID#1##X1$$$H$MR*Y2$$$H$SS##O!S!BRIEN$ANN\r")
    assert m.values("PID-3[*].1") == ["X1", "Y2"] and m.value("PID-5.1") == "O$BRIEN"
    assert m.header().control_id == "C1" and m.header().trigger == "A01"


# -- spans ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["oru_r01.hl7", "oru_r01_lf.hl7", "oru_r01_v28.hl7"])
def test_each_obx_is_read_within_its_own_obr(name):
    m = msg(name)
    obrs = m.spans("OBR")
    assert len(obrs) == 2 and obrs[1][1] == len(m.segments)
    assert [len(m.spans("OBX", within=obr)) for obr in obrs] == [5, 3]
    first, second = obrs
    assert m.values("OBX[*]-5", scopes=(first,)) == [
        "182",
        "3.1",
        "139",
        "Slightly hemolyzed",
        "OPOS^O Rh(D) positive^L",
    ]
    assert m.values("OBX[*]-5.2", scopes=(first,)) == ["", "", "", "", "O Rh(D) positive"]
    assert m.values("OBX[*]-5", scopes=(second,)) == ["11.8", "10.9", "254"]
    assert m.values("OBX[*]-8", scopes=(first,)) == ["H", "L", "N", "", ""]
    assert m.values("OBX[*]-6.1", scopes=(second,)) == ["10*3/uL", "g/dL", "10*3/uL"]
    assert m.value("OBX-7", scopes=(first,)) == "70-99"
    assert [m.value("OBX-2", scopes=(first, obx)) for obx in m.spans("OBX", within=first)] == [
        "NM",
        "NM",
        "NM",
        "ST",
        "CWE",
    ]
    assert m.value("OBR-4.1", scopes=(second,)) == "58410-2"
    obx2 = m.spans("OBX", within=first)[1]
    assert [s.name for s in m.segments[obx2[0] : obx2[1]]] == ["OBX", "NTE"]
    assert m.value("NTE-3", scopes=(first, obx2)).startswith("Specimen slightly hemolyzed.\n")
    assert m.value("PID-3.1", scopes=(first, obx2)).startswith("MRN2")  # outside every scope: whole message
    if name == "oru_r01_v28.hl7":
        assert m.value("PRT-4.1", scopes=(first,)) == "OP"


def test_a_segment_missing_from_its_own_group_is_not_borrowed_from_a_sibling_group():
    m = msg("oru_r01_v28.hl7")
    first, second = m.spans("OBR")
    obx1 = m.spans("OBX", within=first)[0]
    assert m.values("NTE-3", scopes=(first, obx1)) == []
    assert m.values("PRT-4", scopes=(second,)) == []


# -- character sets -------------------------------------------------------------------------------
def test_latin1_and_utf8_messages_decode_as_msh_18_says():
    latin = raw("adt_a01_latin1.hl7")
    with pytest.raises(UnicodeDecodeError):
        latin.decode("utf-8")
    assert Message(decode(latin)).value("PID-5.1") == "MUÑOZ"
    assert Message(decode(latin)).value("PID-5.3") == "ANDRÉS"
    utf8 = raw("adt_a01_utf8.hl7")
    assert Message(decode(utf8, default_charset="latin-1")).value("PID-5") == "ŁUKASZEWSKA^ZOË^MAŁGORZATA"
    assert read_header(utf8).charset == "UNICODE UTF-8" and read_header(latin).charset == "8859/1"


def test_bytes_that_do_not_match_their_declared_or_default_charset_are_a_parse_error():
    undeclared = raw("adt_a01_latin1.hl7").replace(b"|8859/1", b"|", 1)
    with pytest.raises(ParseError) as exc:
        decode(undeclared)
    assert exc.value.code == 102 and exc.value.field == 18
    assert Message(decode(undeclared, default_charset="latin-1")).value("PID-5.1") == "MUÑOZ"


def test_a_utf16_message_header_is_read():
    data = raw("adt_a04.hl7").decode("ascii").encode("utf-16")
    assert read_header(data).control_id == "NPC-A04-33017"
    assert read_header(raw("adt_a04.hl7").decode("ascii").encode("utf-16-le")).version == "2.3"


# -- batches --------------------------------------------------------------------------------------
def test_a_batch_splits_into_its_messages_without_the_envelope():
    messages = split_batch(text("batch_adt.hl7"))
    assert [Message(m).header().control_id for m in messages] == [
        "SGH-BATCH-0321-01",
        "SGH-BATCH-0321-02",
        "SGH-BATCH-0321-03",
    ]
    assert all(m.startswith("MSH|") and m.endswith("\r") for m in messages)
    assert not any(re.search(r"(^|\r)(FHS|BHS|BTS|FTS)\|", m) for m in messages)
    assert [Message(m).value("PID-3.1") for m in messages] == ["MRN100021", "MRN100022", "MRN100023"]


def test_a_file_of_back_to_back_messages_splits_into_each_with_distinct_control_ids():
    messages = [Message(m) for m in split_batch(text("many_messages.hl7"))]
    ids = [m.header().control_id for m in messages]
    assert ids == [f"MANY-{k:04d}" for k in range(1, 26)]
    assert [m.header().message_type for m in messages] == ["ADT", "ORU"] * 12 + ["ADT"]
    assert len({m.value("PID-3.1") for m in messages}) == 25


def test_mllp_framed_and_lf_separated_files_split_too():
    a, b = text("adt_a04.hl7"), text("oru_r01_lf.hl7")
    framed = (mllp.frame(a) + mllp.frame(b)).decode()
    out = split_batch(framed)
    assert len(out) == 2 and Message(out[1]).header().control_id == "SLAB-R01-500002"
    assert len(Message(out[1]).segments) == 15
    assert split_batch(a) == [a]


def test_segments_before_the_first_msh_make_the_batch_a_parse_error():
    with pytest.raises(ParseError) as exc:
        split_batch(text("bad_batch.hl7"))
    assert exc.value.code == 100 and exc.value.segment == "EVN"


# -- headers --------------------------------------------------------------------------------------
HEADERS = {
    "adt_a01.hl7": ("ADT", "A01", "ADT_A01", "SGH-A01-000101", "2.5.1", ""),
    "adt_a03.hl7": ("ADT", "A03", "ADT_A03", "SGH-A03-000207", "2.5.1", ""),
    "adt_a04.hl7": ("ADT", "A04", "", "NPC-A04-33017", "2.3", ""),
    "adt_a08.hl7": ("ADT", "A08", "ADT_A01", "SGH-A08-000133", "2.4", ""),
    "adt_a40.hl7": ("ADT", "A40", "ADT_A39", "SGH-A40-000019", "2.5", ""),
    "oru_r01.hl7": ("ORU", "R01", "ORU_R01", "SLAB-R01-500001", "2.5.1", ""),
    "oru_r01_lf.hl7": ("ORU", "R01", "ORU_R01", "SLAB-R01-500002", "2.6", ""),
    "oru_r01_v28.hl7": ("ORU", "R01", "ORU_R01", "SLAB-R01-500003", "2.8", ""),
    "adt_a01_crlf.hl7": ("ADT", "A01", "ADT_A01", "SGH-A01-000111", "2.5.1", ""),
    "adt_a01_latin1.hl7": ("ADT", "A01", "ADT_A01", "SGH-A01-000112", "2.5.1", "8859/1"),
    "adt_a01_utf8.hl7": ("ADT", "A01", "ADT_A01", "SGH-A01-000113", "2.5.1", "UNICODE UTF-8"),
    "bad_version.hl7": ("ADT", "A04", "ADT_A01", "SGH-A04-BADV-1", "9.9", ""),
    "empty_control_id.hl7": ("ADT", "A04", "ADT_A01", "", "2.5", ""),
    "truncated.hl7": ("ORU", "R01", "ORU_R01", "SLAB-R01-500009", "2.5.1", ""),
    "bad_segment_id.hl7": ("ADT", "A04", "ADT_A01", "SGH-A04-BADSEG-1", "2.5", ""),
    "many_messages.hl7": ("ADT", "A01", "ADT_A01", "MANY-0001", "2.5.1", ""),
}


@pytest.mark.parametrize("name", ALL)
def test_read_header_reads_msh_from_raw_bytes_or_raises_parse_error(name):
    data = raw(name)
    if name not in HEADERS:  # no MSH first: garbage, PID first, FHS/BHS envelopes
        with pytest.raises(ParseError) as exc:
            read_header(data)
        assert exc.value.code == 100
        return
    h = read_header(data)
    assert (h.message_type, h.trigger, h.structure, h.control_id, h.version, h.charset) == HEADERS[name]
    assert h.processing_id == "P" and h.field_sep == "|"
    assert read_header(mllp.VT + data + mllp.FS + mllp.CR) == h  # MLLP framing around it is fine
    if name not in UNREADABLE:
        assert Message(decode(data)).header() == h  # same answer as the full tokenizer


def test_read_header_gives_sender_receiver_and_the_v28_encoding_characters():
    h = read_header(raw("oru_r01_v28.hl7"))
    assert h.encoding_chars == "^~\\&#"
    assert (h.sending_app, h.sending_facility, h.receiving_app, h.receiving_facility) == (
        "SUNLAB",
        "SUNRISE_GH",
        "HIE_ENGINE",
        "SUNRISE_GH",
    )


@pytest.mark.parametrize("name, code, field", [("bad_version.hl7", 203, 12), ("empty_control_id.hl7", 101, 10)])
def test_check_header_rejects_with_the_table_0357_code(name, code, field):
    with pytest.raises(ParseError) as exc:
        check_header(read_header(raw(name)))
    assert (exc.value.code, exc.value.field, exc.value.segment) == (code, field, "MSH")


@pytest.mark.parametrize("name", [n for n in HEADERS if n not in ("bad_version.hl7", "empty_control_id.hl7")])
def test_check_header_accepts_every_well_formed_fixture(name):
    check_header(read_header(raw(name)))


def test_check_header_honours_a_channel_s_own_version_list():
    with pytest.raises(ParseError) as exc:
        check_header(read_header(raw("adt_a04.hl7")), versions=("2.5", "2.5.1"))
    assert exc.value.code == 203


# -- malformed input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", UNREADABLE + ["batch_adt.hl7"])
def test_malformed_input_raises_parse_error_and_nothing_else(name):
    with pytest.raises(ParseError):
        Message(decode(raw(name), default_charset="latin-1"))


def test_a_file_of_several_messages_is_one_message_to_the_tokenizer_until_split():
    # Message does not split: a listener hands it one frame. Files go through split_batch.
    m = msg("many_messages.hl7")
    assert m.segment_names().count("MSH") == 25 and m.header().control_id == "MANY-0001"


def test_garbage_bytes_are_rejected_as_bytes_and_as_text():
    with pytest.raises(ParseError):
        decode(raw("garbage.bin"))
    with pytest.raises(ParseError):
        Message(raw("garbage.bin").decode("latin-1"))


def test_binary_junk_with_nul_bytes_is_a_parse_error_not_a_unicode_error():
    for junk in (b"\x00\x01\x02", b"MSH\x00|^~\\&|x", b"\xff\xfeM\x00S\x00H", b"\x00" * 9):
        with pytest.raises(ParseError):
            read_header(junk)
        with contextlib.suppress(ParseError):
            decode(junk)


def test_a_bad_segment_id_is_located_in_the_error():
    with pytest.raises(ParseError) as exc:
        msg("bad_segment_id.hl7")
    assert (exc.value.code, exc.value.sequence) == (100, 4)


def test_a_truncated_message_still_tokenizes_up_to_the_cut():
    m = msg("truncated.hl7")
    assert m.segment_names()[-1] == "OBX" and m.segments[-1].text.endswith("^Sodi")
    assert m.values("OBX[*]-1") == ["1", "2", "3"]


@pytest.mark.parametrize("bad", ["", "MSH", "MSH|", "MSH|^|x", "MSH^^~\\&^A", "MSHX^~\\&|", "\x0b\x1c\r\n"])
def test_headers_too_short_or_without_delimiters_are_parse_errors(bad):
    with pytest.raises(ParseError):
        Message(bad)
    with pytest.raises(ParseError):
        read_header(bad.encode())


# -- ACKs -----------------------------------------------------------------------------------------
NOW = datetime(2024, 3, 14, 9, 0, 0, tzinfo=UTC)


def test_an_accept_ack_swaps_sender_and_receiver_and_names_the_trigger():
    h = read_header(raw("adt_a01.hl7"))
    ack = Message(build_ack(h, now=NOW, control_id="ACK-1"))
    msh = ack.msh
    assert (msh.field(3), msh.field(4), msh.field(5), msh.field(6)) == (
        "HIE_ENGINE",
        "SUNRISE_GH",
        "REGADT",
        "SUNRISE_GH",
    )
    assert msh.field(7) == "20240314090000" and msh.field(9) == "ACK^A01^ACK"
    assert (msh.field(10), msh.field(11), msh.field(12)) == ("ACK-1", "P", "2.5.1")
    assert ack.segment_names() == ["MSH", "MSA"]
    assert (ack.value("MSA-1"), ack.value("MSA-2")) == ("AA", "SGH-A01-000101")
    check_header(ack.header())


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        ("ORM^O01^ORM_O01", "ORR^O02^ORR_O02"),
        ("OML^O21^OML_O21", "ORL^O22^ORL_O22"),
        ("RDE^O11^RDE_O11", "RRE^O12^RRE_O12"),
        ("RDE^O25^RDE_O11", "RRE^O26^RRE_O12"),
        ("RDS^O13^RDS_O13", "RRD^O14^RRD_O14"),
        ("RAS^O17^RAS_O17", "RRA^O18^RRA_O18"),
        ("VXU^V04^VXU_V04", "ACK^V04^ACK"),
        ("SIU^S12^SIU_S12", "ACK^S12^ACK"),
        ("DFT^P03^DFT_P03", "ACK^P03^ACK"),
    ],
)
def test_order_and_pharmacy_messages_get_their_application_acknowledgement(sent, answer):
    from hl7apy.parser import parse_message

    text = f"MSH|^~\\&|EHR|CLINIC|LAB|NORTH|20260301083000||{sent}|C1|P|2.6\rPID|1||P0001^^^CLINIC^MR||Doe^Jane\r"
    for code in (ACK_ACCEPT, "AE"):
        ack = build_ack(read_header(text.encode()), code, error=ParseError("bad", code=207), now=NOW)
        msg = Message(ack)
        assert msg.msh.field(9) == answer and msg.value("MSA-1") == code and msg.value("MSA-2") == "C1"
        parsed = parse_message(ack.replace("\n", "\r"), find_groups=True)  # a valid instance of its structure
        assert parsed.name == answer.split("^")[2] and parsed.msa.msa_1.value == code


def test_an_error_ack_on_a_v25_message_locates_the_fault_in_err_2_and_codes_it_in_err_3():
    h = read_header(raw("adt_a40.hl7"))
    err = ParseError("PID-3 has no MRN", code=101, segment="PID", sequence=1, field=3)
    ack = Message(build_ack(h, ACK_ERROR, error=err, now=NOW))
    assert ack.segment_names() == ["MSH", "MSA", "ERR"]
    assert ack.msh.field(9) == "ACK^A40^ACK"
    assert (ack.value("MSA-1"), ack.value("MSA-2"), ack.value("MSA-3")) == ("AE", "SGH-A40-000019", "PID-3 has no MRN")
    assert ack.value("ERR-1") is None
    assert ack.value("ERR-2") == "PID^1^3"
    assert ack.value("ERR-3") == "101^Required field missing^HL70357"
    assert ack.value("ERR-4") == "E" and ack.value("ERR-8") == "PID-3 has no MRN"


def test_a_reject_ack_for_an_unsupported_version_carries_code_203():
    h = read_header(raw("bad_version.hl7"))
    with pytest.raises(ParseError) as exc:
        check_header(h)
    ack = Message(build_ack(h, ACK_REJECT, error=exc.value, now=NOW))
    assert ack.value("MSA-1") == "AR" and ack.value("MSA-2") == "SGH-A04-BADV-1"
    assert ack.value("ERR-2") == "MSH^1^12" and ack.value("ERR-3.1") == "203"
    assert ack.value("ERR-3.2") == "Unsupported version id"


def test_an_error_ack_on_a_v23_message_uses_err_1_and_a_two_part_message_type():
    h = read_header(raw("adt_a04.hl7"))
    err = ParseError("PID-3 has no MRN", code=101, segment="PID", sequence=1, field=3)
    ack = Message(build_ack(h, ACK_ERROR, error=err, now=NOW))
    assert ack.msh.field(9) == "ACK^A04" and ack.msh.field(12) == "2.3"
    err_seg = ack.segments[2]
    assert err_seg.name == "ERR" and len(err_seg.fields) == 2
    assert ack.value("ERR-1") == "PID^1^3^101&Required field missing&HL70357"
    assert (ack.value("ERR-1.4.1"), ack.value("ERR-1.4.3")) == ("101", "HL70357")


def test_an_ack_without_a_readable_header_still_parses_and_codes_the_error():
    try:
        read_header(raw("garbage.bin"))
    except ParseError as exc:
        err = exc
    ack = Message(build_ack(None, ACK_REJECT, error=err, now=NOW))
    assert ack.value("MSA-1") == "AR" and ack.value("MSA-2") is None
    assert ack.value("ERR-3.1") == "100" and ack.header().version == "2.5"


def test_an_ack_echoes_the_character_set_and_escapes_delimiters_in_its_text():
    h = read_header(raw("adt_a01_latin1.hl7"))
    text_with_delims = "bad | field ^ comp & sub ~ rep \\ esc"
    ack_text = build_ack(h, ACK_ERROR, text=text_with_delims, now=NOW)
    ack = Message(ack_text)
    assert ack.header().charset == "8859/1"
    assert ack.value("MSA-3") == text_with_delims
    assert len(ack.segments[1].fields) == 4


def test_an_ack_text_cut_to_80_characters_never_ends_in_half_an_escape():
    h = read_header(raw("adt_a01.hl7"))
    long_text = "x" * 78 + "|abc" + "y" * 50
    ack = Message(build_ack(h, ACK_ERROR, text=long_text, now=NOW))
    assert ack.value("MSA-3") == long_text[:80]


def test_an_ack_for_a_v28_message_uses_four_encoding_characters_and_reparses():
    h = read_header(raw("oru_r01_v28.hl7"))
    ack = Message(build_ack(h, now=NOW))
    assert ack.msh.field(2) == "^~\\&" and ack.msh.field(9) == "ACK^R01^ACK"
    assert ack.value("MSA-2") == "SLAB-R01-500003"


# -- MLLP frames ----------------------------------------------------------------------------------
def test_complete_frames_are_split_and_consumed():
    a, b = raw("adt_a04.hl7"), raw("adt_a01_latin1.hl7")
    buf = bytearray(mllp.frame(a) + mllp.frame(b))
    assert list(iter_frames(buf)) == [a, b]  # byte for byte, latin-1 untouched
    assert buf == bytearray()


def test_a_partial_frame_stays_buffered_until_it_completes():
    a, b = raw("adt_a04.hl7"), raw("oru_r01.hl7")
    fb = mllp.frame(b)
    buf = bytearray(mllp.frame(a) + fb[:100])
    assert list(iter_frames(buf)) == [a]
    assert bytes(buf) == fb[:100]
    assert list(iter_frames(buf)) == []
    buf += fb[100:]
    assert list(iter_frames(buf)) == [b] and buf == bytearray()


def test_junk_before_a_frame_is_dropped():
    a = raw("adt_a04.hl7")
    buf = bytearray(b"hello\r\n\x00\xff" + mllp.frame(a))
    assert list(iter_frames(buf)) == [a]
    buf = bytearray(b"no frame here\x1c\r")
    assert list(iter_frames(buf)) == [] and buf == bytearray()
    buf = bytearray(b"junk" + mllp.VT + b"MSH|partial")
    assert list(iter_frames(buf)) == [] and bytes(buf) == mllp.VT + b"MSH|partial"


def test_a_frame_cut_off_by_a_new_start_block_is_dropped_and_the_new_one_read():
    a = raw("adt_a04.hl7")
    buf = bytearray(mllp.VT + raw("truncated.hl7") + mllp.frame(a))
    assert list(iter_frames(buf)) == [a]


# -- fuzz -----------------------------------------------------------------------------------------
_SPICE = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"#",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x0b",
    b"\x1c",
    b'""',
    b"MSH|",
    b"\xff\xfe",
    b"\xe9",
    b"\xc3",
    b"\\X4\\",
    b"\\.br\\",
    b"[",
    b"*",
    b" ",
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            del b[i : i + rng.randint(1, 40)]
        elif op == 2:
            b[i:i] = rng.choice(_SPICE)
        elif op == 3:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j) : max(i, j)][:60]
        elif op == 4:
            del b[i:]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


_FUZZ_PATHS = ["MSH-9.2", "PID-3[*].1", "PID-3[2].4.1", "OBX[*]-5", "PID-5.1", "NTE-3", "MSH-2", "ZPI"]


def test_random_mutations_of_the_fixtures_only_ever_raise_parse_error():
    rng = random.Random(20240314)
    seeds = [raw(n) for n in SINGLE + MULTI]
    outcomes = {"parsed": 0, "rejected": 0}
    for _k in range(300):
        data = _mutate(rng.choice(seeds), rng)
        try:
            h = read_header(data)
            build_ack(h, ACK_ERROR, error=ParseError("x", code=102, field=5), now=NOW)
            with contextlib.suppress(ParseError):
                check_header(h)
        except ParseError:
            h = None
        for t in (data.decode("latin-1"), None):
            try:
                t = t if t is not None else decode(data)
                m = Message(t)
            except ParseError:
                outcomes["rejected"] += 1
                continue
            outcomes["parsed"] += 1
            for seg in m.segments:
                assert seg.fields[0] == seg.name
            for path in _FUZZ_PATHS:
                m.values(path)
                m.value(path)
            for obr in m.spans("OBR"):
                for obx in m.spans("OBX", within=obr):
                    m.values("OBX[*]-5", scopes=(obr, obx))
            Message(build_ack(m.header(), ACK_ACCEPT, now=NOW))
            with contextlib.suppress(ParseError):
                split_batch(t)
        buf = bytearray(data)
        list(iter_frames(buf))
    assert outcomes["parsed"] > 50 and outcomes["rejected"] > 20, outcomes


def test_ack_control_ids_are_unique_and_fit_msh_10():
    h = read_header(raw("adt_a01.hl7"))
    ids = {Message(build_ack(h)).msh.field(10) for _ in range(500)}
    assert len(ids) == 500 and max(map(len, ids)) <= 20
