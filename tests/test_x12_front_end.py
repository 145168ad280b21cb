"""The X12 front end: envelope reading, pyx12 validation as 999 results, and our 999 / TA1 writers.

Every interchange is assembled here from small helpers; the data is invented (no real patients or payers).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import datetime

import pytest
import pyx12.params
import pyx12.x12n_document

from engine.formats.x12_ack import Envelope, build_999, build_ta1
from engine.formats.x12_envelope import EnvelopeProblem, Interchange, guide_for, read_interchanges
from engine.formats.x12_validate import validate

AT = datetime(2024, 5, 6, 7, 8)
SECRET = "ZEBEDIAH"  # a stand-in patient name: it must never reach a problem text, an ack or a log

CLEAN_835 = [
    "ST*835*{ctl}*005010X221A1",
    "BPR*I*150*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999988880*DA*98765*20240105",
    "TRN*1*12345*1512345678",
    "DTM*405*20240102",
    "N1*PR*EXAMPLE PAYER",
    "N3*1 PAYER WAY",
    "N4*ANYTOWN*CA*90001",
    "PER*BL*CLAIMS*TE*8005551212",
    "N1*PE*EXAMPLE CLINIC*XX*1234567893",
    "LX*1",
    "CLP*CLAIM1*1*200*150**12*ABC123",
    f"NM1*QC*1*{SECRET}*JANE****MI*W123",
    "SVC*HC:99213*200*150**1",
    "DTM*472*20240101",
    "CAS*CO*45*50",
    "AMT*B6*150",
    "SE*{count}*{ctl}",
]

CLEAN_837P = [
    "ST*837*{ctl}*005010X222A2",
    "BHT*0019*00*BATCH1*20240101*1200*CH",
    "NM1*41*2*SUBMITTER CLINIC*****46*S12345",
    "PER*IC*BILLING*TE*5555551212",
    "NM1*40*2*EXAMPLE PAYER*****46*P99999",
    "HL*1**20*1",
    "NM1*85*2*EXAMPLE CLINIC*****XX*1234567893",
    "N3*1 MAIN ST",
    "N4*ANYTOWN*CA*900011234",
    "REF*EI*123456789",
    "HL*2*1*22*0",
    "SBR*P*18*******CI",
    f"NM1*IL*1*{SECRET}*JOHN****MI*M123456",
    "NM1*PR*2*EXAMPLE PAYER*****PI*P99999",
    "CLM*PCN1*100***11:B:1*Y*A*Y*Y",
    "HI*ABK:J069",
    "LX*1",
    "SV1*HC:99213*100*UN*1***1",
    "DTP*472*D8*20240101",
    "SE*{count}*{ctl}",
]


def transaction(
    template: list[str],
    ctl: str = "0001",
    *,
    count: int | None = None,
    drop: str = "",
    swap: dict[str, str] | None = None,
) -> list[str]:
    """A transaction set from a template: drop segments starting with drop, replace those starting with a swap key
    (e.g. 'DTM*405'), and set SE01 to the real count unless count says otherwise."""
    segs = [s for s in template if not drop or not (s + "*").startswith(drop + "*")]
    for key, new in (swap or {}).items():
        segs = [new if (s + "*").startswith(key + "*") else s for s in segs]
    n = len(segs) if count is None else count
    return [s.replace("{ctl}", ctl).replace("{count}", str(n)) for s in segs]


def isa(control: str = "000000101", *, version: str = "00501", rep: str = "^", usage: str = "T") -> str:
    el = ["00", " " * 10, "00", " " * 10, "ZZ", "SUBMITTER".ljust(15), "ZZ", "RECEIVER".ljust(15), "240101", "1200"]
    return "ISA*" + "*".join([*el, rep, version, control, "1", usage, ":"])


def group(txs: list[list[str]], control: str = "7", fid: str = "HP", version: str = "005010X221A1") -> list[str]:
    segs = [f"GS*{fid}*SENDERAPP*RECEIVERAPP*20240101*1200*{control}*X*{version}"]
    for tx in txs:
        segs += tx
    return segs + [f"GE*{len(txs)}*{control}"]


def interchange(*groups: list[str], control: str = "000000101", iea: str | None = None, **isa_kw: str) -> list[str]:
    segs = [isa(control, **isa_kw)]
    for g in groups:
        segs += g
    return segs + [iea or f"IEA*{len(groups)}*{control}"]


def render(segs: list[str], *, el: str = "*", comp: str = ":", term: str = "~", eol: str = "\n") -> bytes:
    """Join segments; other delimiters are swapped in (the helpers write '*', ':' and '~')."""
    out = []
    for s in segs:
        if el != "*" or comp != ":":
            s = s.translate(str.maketrans({"*": el, ":": comp}))
        out.append(s + term + eol)
    return "".join(out).encode("latin-1")


def read_one(data: bytes) -> Interchange:
    ics, stray = read_interchanges(data)
    assert stray == [] and len(ics) == 1
    return ics[0]


def pyx12_accepts(text: str) -> bool:
    """pyx12's own full validation (map chosen by GS08, so 005010X231A1 for our 999s)."""
    return pyx12.x12n_document.x12n_document(pyx12.params.params(), io.StringIO(text), None, None)


def statuses(ic: Interchange) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    return [(g.status, [(t.status, t.codes) for t in g.transactions]) for g in validate(ic)]


# --- envelope -------------------------------------------------------------------------------------------------


def test_reads_clean_interchange_structure() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_835)]))))
    assert ic.problems == []
    assert (ic.delimiters.element, ic.delimiters.component, ic.delimiters.repetition, ic.delimiters.segment) == (
        "*",
        ":",
        "^",
        "~",
    )
    assert ic.isa[0] == "ISA" and len(ic.isa) == 17 and ic.isa[6] == "SUBMITTER      "
    assert (ic.sender_qualifier, ic.sender, ic.receiver, ic.control, ic.version) == (
        "ZZ",
        "SUBMITTER",
        "RECEIVER",
        "000000101",
        "00501",
    )
    assert (ic.date, ic.time, ic.ack_requested, ic.usage) == ("240101", "1200", "1", "T")
    (g,) = ic.groups
    assert (g.functional_id, g.control, g.version, g.ge_count, g.ge_control, g.codes) == (
        "HP",
        "7",
        "005010X221A1",
        "1",
        "7",
        [],
    )
    (tx,) = g.transactions
    assert (tx.st_id, tx.control, tx.reference, tx.position) == ("835", "0001", "005010X221A1", 3)
    assert tx.segments[0].startswith("ST*835") and tx.segments[-1] == "SE*17*0001" and len(tx.segments) == 17
    assert (tx.se_count, tx.se_control, tx.codes) == ("17", "0001", [])
    assert ic.text.startswith("ISA*") and ic.text.rstrip().endswith("IEA*1*000000101~")


@pytest.mark.parametrize(
    ("prefix", "eol", "encoding"),
    [(b"\xef\xbb\xbf", "\n", "ascii"), (b"", "\r\n", "ascii"), (b"", "", "ascii"), (b"", "\n", "latin-1")],
    ids=["bom", "crlf", "one-line", "latin-1"],
)
def test_tolerates_bom_line_breaks_and_latin1(prefix: bytes, eol: str, encoding: str) -> None:
    tx = transaction(CLEAN_835, swap={"N3": "N3*1 CAFÉ WAY"} if encoding == "latin-1" else {})
    ic = read_one(prefix + render(interchange(group([tx])), eol=eol))
    assert ic.problems == [] and len(ic.groups[0].transactions[0].segments) == 17
    assert not ic.text.startswith("\ufeff")
    if encoding == "latin-1":  # read unchanged; pyx12 then flags the character as outside the X12 character set
        assert "N3*1 CAFÉ WAY" in ic.groups[0].transactions[0].segments
        (gr,) = validate(ic)
        assert [(s.segment_id, [e.code for e in s.elements]) for s in gr.transactions[0].segments] == [("N3", ["6"])]
    else:
        assert statuses(ic) == [("A", [("A", [])])]


@pytest.mark.parametrize(
    ("el", "comp", "term", "eol"),
    [("|", ">", "!", ""), ("*", "^", "\n", ""), ("*", ":", "\r", "\n"), ("~", ">", "'", "\n")],
    ids=["pipe-bang", "newline-terminator", "cr-terminator", "tilde-element"],
)
def test_delimiters_come_from_the_isa(el: str, comp: str, term: str, eol: str) -> None:
    segs = interchange(group([transaction(CLEAN_835)]), rep="{" if "^" in (comp,) else "^")
    ic = read_one(render(segs, el=el, comp=comp, term=term, eol=eol))
    assert (ic.delimiters.element, ic.delimiters.component, ic.delimiters.segment) == (el, comp, term)
    assert ic.problems == []
    tx = ic.groups[0].transactions[0]
    assert tx.segments[-1] == f"SE{el}17{el}0001" and len(tx.segments) == 17
    assert statuses(ic) == [("A", [("A", [])])]


def test_repetition_separator_is_none_for_4010_and_alphanumeric() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_835)]), rep="U", version="00401")))
    assert ic.delimiters.repetition is None and ic.problems == []


def test_an_isa_off_its_fixed_widths_is_read_but_gets_a_ta1_naming_the_element() -> None:
    segs = interchange(group([transaction(CLEAN_835)]))
    segs[0] = segs[0].replace("SUBMITTER      ", "SUBMITTER")  # ISA06 not padded to 15
    ic = read_one(render(segs))
    assert ic.sender == "SUBMITTER" and ic.delimiters.segment == "~"  # its delimiters are still clear
    assert [p.code for p in ic.problems] == ["006"]  # but the envelope is rejected (TA1 R 006)
    assert "ISA06" in ic.problems[0].text


@pytest.mark.parametrize(
    ("broken", "code"),
    [
        (lambda s: s[:-1] + "A", "027"),  # ISA16 alphanumeric
        (lambda s: s.replace("*00501", ""), "022"),  # an ISA element missing: only 15 separators before the break
        (lambda s: "ISA\t" + s[4:], "026"),  # element separator is a tab
    ],
    ids=["component", "fifteen-elements", "element-separator"],
)
def test_broken_isa_gives_a_problem_not_an_exception(broken: Callable[[str], str], code: str) -> None:
    segs = interchange(group([transaction(CLEAN_835)]))
    segs[0] = broken(segs[0])
    ics, stray = read_interchanges(render(segs))
    assert ics == [] and stray[0].code == code
    assert all(p.code == "022" for p in stray[1:])  # the rest of the data belongs to no interchange


def test_ambiguous_terminator_is_004() -> None:
    data = render(interchange(group([transaction(CLEAN_835)])), eol="").replace(b":~", b"::", 1)
    ics, stray = read_interchanges(data)
    assert ics == [] and [p.code for p in stray] == ["004", "022"]


def test_structure_outside_groups_is_024() -> None:
    segs = interchange(group([transaction(CLEAN_835)]))
    segs.insert(1, "REF*XX*1")
    segs[-1:-1] = transaction(CLEAN_835, "0002")  # an ST/SE after GE, outside any group
    ic = read_one(render(segs))
    assert [p.code for p in ic.problems] == ["024"] and len(ic.groups[0].transactions) == 1
    assert all("XX" not in p.text for p in ic.problems)


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "023"), (b"   \r\n", "023"), (b"hello there, this is not X12", "022"), (b"\x00\xff\xfe", "022")],
)
def test_unreadable_data_is_a_stray_problem(data: bytes, code: str) -> None:
    ics, stray = read_interchanges(data)
    assert ics == [] and [p.code for p in stray] == [code]
    assert stray[0].text in ("The data is empty", "No ISA segment was found")


def test_junk_before_and_after_interchanges() -> None:
    body = render(interchange(group([transaction(CLEAN_835)])))
    ics, stray = read_interchanges(b"garbage" + body + b"more garbage")
    assert len(ics) == 1 and ics[0].problems == []
    assert [p.code for p in stray] == ["022", "022"]


def test_several_interchanges_and_groups() -> None:
    one = interchange(
        group([transaction(CLEAN_835), transaction(CLEAN_835, "0002")]), group([transaction(CLEAN_835)], "8")
    )
    two = interchange(group([transaction(CLEAN_837P)], fid="HC", version="005010X222A2"), control="000000102")
    ics, stray = read_interchanges(render(one) + render(two, term="!", eol="\r\n"))
    assert stray == [] and [ic.control for ic in ics] == ["000000101", "000000102"]
    assert [len(g.transactions) for g in ics[0].groups] == [2, 1] and ics[1].delimiters.segment == "!"
    assert [t.position for t in ics[0].groups[0].transactions] == [3, 20]
    assert ics[0].groups[1].transactions[0].position == 39
    assert all(ic.problems == [] for ic in ics)


def test_interchange_trailer_problems() -> None:
    segs = interchange(group([transaction(CLEAN_835)]), iea="IEA*2*000000999")
    assert [p.code for p in read_one(render(segs)).problems] == ["001", "021"]
    ic = read_one(render(interchange(group([transaction(CLEAN_835)]))[:-1]))  # cut short: no IEA
    assert [p.code for p in ic.problems] == ["023"]
    ics, _ = read_interchanges(
        render(interchange(group([transaction(CLEAN_835)]))[:-1] + interchange(control="000000102"))
    )
    assert [[p.code for p in ic.problems] for ic in ics] == [["023"], []]
    again = render(interchange(group([transaction(CLEAN_835)])))
    assert [p.code for p in read_interchanges(again + again)[0][1].problems] == ["025"]


def test_group_and_transaction_trailer_problems_are_recorded_for_the_999() -> None:
    second = transaction(CLEAN_835, "0002")
    second[-1] = "SE*17*0009"
    g = group([transaction(CLEAN_835, count=9), second, transaction(CLEAN_835, "0002")])
    g[-1] = "GE*2*70"
    ic = read_one(render(interchange(g)))
    (grp,) = ic.groups
    assert (grp.codes, grp.ge_count, grp.ge_control) == (["4", "5"], "2", "70")
    assert [t.codes for t in grp.transactions] == [["4"], ["3"], ["23"]]
    assert ic.problems == []
    missing = group([transaction(CLEAN_835)[:-1]])[:-1]  # no SE, no GE
    ic = read_one(render(interchange(missing)))
    assert ic.groups[0].codes == ["3"] and ic.groups[0].transactions[0].codes == ["2"]
    assert ic.groups[0].transactions[0].se_count == "" and ic.problems == []


def test_guide_for_maps_errata_labels_to_the_maps_pyx12_ships() -> None:
    assert guide_for("005010X221A1", "835") == "835.5010.X221.A1.xml"
    assert guide_for("005010X222A1", "837") == guide_for("005010X222A2", "837") == "837.5010.X222.A1.xml"
    assert guide_for("005010X222A3", "837") == "837.5010.X222.A1.xml"
    assert guide_for("005010X223A3", "837") == guide_for("005010X223A2", "837") == "837Q3.I.5010.X223.A1.xml"
    assert guide_for("005010X231A1", "999") == "999.5010X231.A1.xml"
    assert guide_for("005010X224A2", "837") is None and guide_for("005010X221A1", "837") is None
    assert guide_for("004010X098A1", "837") is None


# --- validation ------------------------------------------------------------------------------------------------


def test_clean_835_is_accepted() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_835)]))))
    (gr,) = validate(ic)
    assert (gr.status, gr.codes) == ("A", [])
    assert [(t.status, t.codes, t.segments) for t in gr.transactions] == [("A", [], [])]


def test_errata_labelled_837p_is_validated_with_the_x222a1_map() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_837P)], fid="HC", version="005010X222A2"))))
    assert statuses(ic) == [("A", [("A", [])])]


def test_missing_required_segment_rejects_with_loop_id() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_835, drop="PER")]))))
    (gr,) = validate(ic)
    (tr,) = gr.transactions
    assert (gr.status, tr.status, tr.codes) == ("R", "R", ["5"])
    (seg,) = tr.segments
    assert (seg.segment_id, seg.code, seg.loop_id, seg.position) == ("PER", "3", "1000A", 8)


def test_bad_element_rejects_with_ik4_details_and_no_values() -> None:
    bad = transaction(CLEAN_835, swap={"DTM*405": "DTM*405*20241399", "CLP": "CLP*CLAIM1*XX*200*150**12*ABC123"})
    (gr,) = validate(read_one(render(interchange(group([bad])))))
    (tr,) = gr.transactions
    assert tr.status == "R" and tr.codes == ["5"]
    found = {(s.segment_id, s.loop_id, e.position, e.element_ref, e.code) for s in tr.segments for e in s.elements}
    assert ("DTM", None, 2, "373", "8") in found  # invalid date
    assert ("CLP", "2100", 2, "1029", "7") in found  # invalid code value
    assert all(s.code is None for s in tr.segments)
    texts = " ".join([s.text for s in tr.segments] + [e.text for s in tr.segments for e in s.elements])
    assert "20241399" not in texts and "XX" not in texts.replace("XX*", "")


def test_wrong_se_count_and_se02_mismatch() -> None:
    (gr,) = validate(read_one(render(interchange(group([transaction(CLEAN_835, count=5)])))))
    assert (gr.status, gr.transactions[0].status, gr.transactions[0].codes) == ("R", "R", ["4"])
    tx = transaction(CLEAN_835)
    tx[-1] = "SE*17*0002"
    (gr,) = validate(read_one(render(interchange(group([tx])))))
    assert (gr.transactions[0].status, gr.transactions[0].codes) == ("R", ["3"])


def test_unsupported_guide_is_rejected_i6() -> None:
    dental = ["ST*837*0001*005010X224A2", "BHT*0019*00*X*20240101*1200*CH", "SE*3*0001"]
    ic = read_one(render(interchange(group([dental], fid="HC", version="005010X224A2"))))
    (gr,) = validate(ic)
    assert (gr.status, gr.transactions[0].status, gr.transactions[0].codes) == ("R", "R", ["I6"])
    eligibility = ["ST*270*0001*005010X279A1", "BHT*0022*13*X*20240101*1200", "SE*3*0001"]
    (gr,) = validate(read_one(render(interchange(group([eligibility], fid="HS", version="005010X279A1")))))
    assert gr.transactions[0].codes == ["1"]


def test_one_rejected_set_makes_the_group_partially_accepted() -> None:
    bad = transaction(CLEAN_835, "0002", drop="TRN")
    ic = read_one(render(interchange(group([transaction(CLEAN_835), bad]))))
    (gr,) = validate(ic)
    assert gr.status == "P" and [(t.status, t.codes) for t in gr.transactions] == [("A", []), ("R", ["5"])]
    assert gr.transactions[1].segments[0].segment_id == "TRN"


def test_group_trailer_errors_reject_the_group() -> None:
    g = group([transaction(CLEAN_835)])
    g[-1] = "GE*2*7"
    (gr,) = validate(read_one(render(interchange(g))))
    assert (gr.status, gr.codes, gr.transactions[0].status) == ("R", ["5"], "A")


def test_validation_logs_no_element_values(caplog: pytest.LogCaptureFixture) -> None:
    bad = transaction(CLEAN_835, swap={"NM1": f"NM1*QC*9*{SECRET}*JANE****MI*W123"})
    with caplog.at_level(logging.DEBUG):
        (gr,) = validate(read_one(render(interchange(group([bad])))))
    assert gr.transactions[0].status == "R"
    assert SECRET not in caplog.text and "W123" not in caplog.text
    assert all(SECRET not in s.text for s in gr.transactions[0].segments)


# --- acknowledgements ------------------------------------------------------------------------------------------


def make_999(segs: list[str]) -> tuple[Interchange, str]:
    ic = read_one(render(segs))
    return ic, build_999(ic, validate(ic), isa_control=42, gs_control=43, at=AT)


def check_999(text: str) -> Interchange:
    """A 999 we wrote: clean for pyx12 (005010X231A1 map) by both its own driver and ours, counts right."""
    assert pyx12_accepts(text)
    ack = read_one(text.encode())
    assert ack.problems == []
    results = validate(ack)
    assert [(g.status, [(t.status, t.segments) for t in g.transactions]) for g in results] == [
        ("A", [("A", [])] * len(ack.groups[0].transactions))
    ]
    return ack


def test_999_for_an_accepted_835() -> None:
    _ic, text = make_999(interchange(group([transaction(CLEAN_835)])))
    ack = check_999(text)
    assert (ack.sender, ack.receiver, ack.control, ack.usage) == ("RECEIVER", "SUBMITTER", "000000042", "T")
    assert ack.isa[14] == "0" and ack.isa[9] == "240506" and ack.isa[10] == "0708"
    (g,) = ack.groups
    assert (g.functional_id, g.sender, g.receiver, g.control, g.version) == (
        "FA",
        "RECEIVERAPP",
        "SENDERAPP",
        "43",
        "005010X231A1",
    )
    segs = g.transactions[0].segments
    assert segs == [
        "ST*999*0001*005010X231A1",
        "AK1*HP*7*005010X221A1",
        "AK2*835*0001*005010X221A1",
        "IK5*A",
        "AK9*A*1*1*1",
        "SE*6*0001",
    ]


def test_999_for_a_rejected_835_has_loop_ids_and_no_ik404() -> None:
    bad = transaction(CLEAN_835, drop="PER", swap={"DTM*405": "DTM*405*20241399", "NM1": f"NM1*QC*9*{SECRET}*JANE"})
    _ic, text = make_999(interchange(group([bad])))
    ack = check_999(text)
    segs = ack.groups[0].transactions[0].segments
    ik3 = [s for s in segs if s.startswith("IK3")]
    assert "IK3*PER*8*1000*3" in ik3  # found missing at the next segment; 447 holds 4 characters: 1000A -> 1000
    assert any(s.startswith("IK3*NM1*") and s.split("*")[3] == "2100" for s in ik3)
    assert all(len(s.split("*")) == 4 for s in segs if s.startswith("IK4"))  # IK401..IK403, never IK404
    assert "IK5*R*5" in segs and "AK9*R*1*1*0" in segs
    assert SECRET not in text and "20241399" not in text


def test_999_for_a_partially_accepted_group_and_several_groups() -> None:
    bad = transaction(CLEAN_835, "0002", drop="TRN")
    p837 = group([transaction(CLEAN_837P, "0003")], "8", fid="HC", version="005010X222A2")
    _ic, text = make_999(interchange(group([transaction(CLEAN_835), bad]), p837))
    assert pyx12_accepts(text)
    ack = read_one(text.encode())
    assert [t.control for t in ack.groups[0].transactions] == ["0001", "0002"]
    first, second = (t.segments for t in ack.groups[0].transactions)
    assert first[1] == "AK1*HP*7*005010X221A1" and "AK9*P*2*2*1" in first
    assert [s for s in first if s.startswith(("AK2", "IK5"))] == [
        "AK2*835*0001*005010X221A1",
        "IK5*A",
        "AK2*835*0002*005010X221A1",
        "IK5*R*5",
    ]
    assert second[1] == "AK1*HC*8*005010X222A2" and "AK9*A*1*1*1" in second
    assert all(r.status == "A" for g in validate(ack) for r in g.transactions)
    assert ack.groups[0].ge_count == "2" and ack.iea_count == "1"


def test_999_keeps_unusual_delimiters() -> None:
    ic = read_one(render(interchange(group([transaction(CLEAN_835)])), el="|", comp=">", term="!", eol=""))
    text = build_999(ic, validate(ic), isa_control=1, gs_control=2, at=AT)
    ack = check_999(text)
    assert (ack.delimiters.element, ack.delimiters.component, ack.delimiters.segment) == ("|", ">", "!")


def test_ta1_is_well_formed_and_reads_back() -> None:
    segs = interchange(group([transaction(CLEAN_835)]), iea="IEA*1*000000999")
    ic = read_one(render(segs))
    text = build_ta1(ic, None, ic.problems[0], isa_control=77, at=AT)
    ta1 = read_one(text.encode())
    assert ta1.groups == [] and ta1.problems == [] and ta1.iea_count == "0" and ta1.control == "000000077"
    assert (ta1.sender, ta1.receiver) == ("RECEIVER", "SUBMITTER")
    assert "TA1*000000101*240101*1200*R*001~" in text
    assert pyx12_accepts(text)
    accepted = build_ta1(ic, None, EnvelopeProblem("000", "no error"), isa_control=78, at=AT, accepted=True)
    assert "TA1*000000101*240101*1200*A*000~" in accepted


def test_ta1_without_any_isa() -> None:
    ics, stray = read_interchanges(b"not x12 at all")
    assert ics == []
    text = build_ta1(None, None, stray[0], isa_control=5, at=AT, envelope=Envelope("ZZ", "US", "ZZ", "THEM"))
    ta1 = read_one(text.encode())
    assert ta1.groups == [] and ta1.problems == [] and (ta1.sender, ta1.receiver) == ("US", "THEM")
    assert "TA1*000000000*240506*0708*R*022~" in text
    bare = build_ta1(None, None, stray[0], isa_control=6, at=AT)
    assert read_one(bare.encode()).problems == []


def test_reader_and_validator_never_raise_on_cut_or_damaged_input() -> None:
    data = render(interchange(group([transaction(CLEAN_835), transaction(CLEAN_835, "0002")])))
    damaged = [data[:cut] for cut in range(0, len(data), 5)]
    damaged += [data[:i] + bytes([c]) + data[i + 1 :] for i in range(0, len(data), 11) for c in b"*~:\n"]
    for sample in damaged:
        ics, stray = read_interchanges(sample)
        assert ics or stray
        for ic in ics:
            for gr in validate(ic):
                assert gr.status in ("A", "E", "P", "R")
