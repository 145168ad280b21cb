"""835 remittances and 837 claims dropped into a running engine's inbox folders (issue 9).

Every test goes through the public interface a billing office uses: a file written into an
inbox of `engine run` on the sample config; what comes back is read where a user reads it: the
acknowledgment in the outbox (checked with pyx12 against 005010X231A1 by our validator), the
file moved to processed/ or error/, the rows of the PM store, the message store's statuses and
warnings, and `engine patient`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ROOT

from engine.formats.x12_envelope import read_interchanges
from engine.formats.x12_validate import validate

FIXTURES = ROOT / "tests" / "fixtures" / "x12"
FAST = {"ENGINE_X12_POLL_SECONDS": "0.1", "ENGINE_X12_STABLE_SECONDS": "0.2"}


def _generator():
    spec = importlib.util.spec_from_file_location("x12_generate", FIXTURES / "_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def folder(eng, channel: str, which: str) -> Path:
    names = {"remittance-835": "remittance", "claims-837-in": "claims-in", "acks-999-in": "acks-in"}
    return eng.data / "x12" / names[channel] / which


def drop(eng, channel: str, name: str, data: bytes | None = None) -> None:
    """Write a file into ``channel``'s inbox as a partner's upload ends: all at once, by rename."""
    inbox = folder(eng, channel, "inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data if data is not None else (FIXTURES / name).read_bytes())
    os.replace(tmp, inbox / name)


def taken(eng, channel: str, name: str, timeout: float = 20.0) -> str:
    """Wait until ``name`` left the inbox; 'processed' or 'error' (where it went)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for where in ("processed", "error"):
            if (folder(eng, channel, where) / name).exists():
                return where
        time.sleep(0.05)
    raise AssertionError(f"{name} was not taken from the inbox in {timeout} s")


def acks(eng, channel: str, stem: str) -> list[str]:
    out = folder(eng, channel, "outbox")
    return [p.read_text() for p in sorted(out.glob(f"{stem}.*"))] if out.exists() else []


def segments(text: str) -> list[list[str]]:
    """An acknowledgment's segments, split on its own delimiters."""
    element, term = text[3], text[105]
    return [s.strip().split(element) for s in text.split(term) if s.strip()]


def settle(eng, channel: str, timeout: float = 20.0) -> list[dict]:
    """Wait until no message of ``channel`` is pending; its messages, oldest first."""
    eng.wait_for(
        "messages",
        "SELECT count(*) AS n FROM messages WHERE channel = :c AND status IN ('RECEIVED','QUEUED','TRANSFORMED')",
        predicate=lambda rows: rows and rows[0]["n"] == 0,
        timeout=timeout,
        c=channel,
    )
    return eng.query("messages", "SELECT * FROM messages WHERE channel = :c ORDER BY id", c=channel)


def assert_clean_999(text: str) -> list[list[str]]:
    """``text`` is a 999 that pyx12 validates clean against 005010X231A1; its segments."""
    interchanges, problems = read_interchanges(text.encode())
    assert problems == [] and len(interchanges) == 1
    results = validate(interchanges[0])
    assert [(g.status, [t.status for t in g.transactions]) for g in results] == [("A", ["A"])]
    segs = segments(text)
    assert [s[0] for s in segs][:3] == ["ISA", "GS", "ST"] and segs[1][8] == "005010X231A1"
    return segs


def pm_rows(eng, sql: str, **params) -> list[dict]:
    return eng.query("pm", sql, **params)


def money(v) -> Decimal:
    return Decimal(str(v))


# -- posting ------------------------------------------------------------------------------------


def test_a_remittance_is_acknowledged_and_posted_against_the_claim_it_pays(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "claims-837-in", "837P_single.837")  # the claim PCN-2001, billed by NPI 1628403978
    assert taken(eng, "claims-837-in", "837P_single.837") == "processed"
    settle(eng, "claims-837-in")
    drop(eng, "remittance-835", "835_unmatched.835")  # pays PCN-2001, and PCN-9999 which we never billed
    assert taken(eng, "remittance-835", "835_unmatched.835") == "processed"
    (message,) = settle(eng, "remittance-835")

    (ack,) = acks(eng, "remittance-835", "835_unmatched")
    segs = assert_clean_999(ack)
    inbound = read_interchanges((FIXTURES / "835_unmatched.835").read_bytes())[0][0]
    ak1 = next(s for s in segs if s[0] == "AK1")
    assert ak1[1:3] == ["HP", inbound.groups[0].control]
    assert next(s for s in segs if s[0] == "IK5")[1] == "A"
    assert segs[0][6].strip() == inbound.receiver and segs[0][8].strip() == inbound.sender  # answered back

    assert message["status"] == "SENT" and message["message_type"] == "835"
    assert message["control_id"] == f"{inbound.control}/{inbound.groups[0].control}/0001"
    warnings = json.loads(message["warnings"])
    assert warnings == ["pm: 835 claim payment 2 (CLP 01): no claim in pm.claim has this patient control number"]
    assert "PCN-9999" not in message["warnings"]  # places, never identifiers

    (remit,) = pm_rows(eng, "SELECT * FROM remittance")
    assert money(remit["amount"]) == Decimal("221.90") and remit["method"] in ("CHK", "ACH")
    paid = {r["patient_control_number"]: r for r in pm_rows(eng, "SELECT * FROM claim_payment")}
    assert set(paid) == {"PCN-2001", "PCN-9999"}  # the unmatched payment is posted too, for billing staff
    p = paid["PCN-2001"]
    assert (money(p["charge_amount"]), money(p["paid_amount"]), money(p["patient_responsibility"])) == (
        Decimal("272.00"),
        Decimal("140.10"),
        Decimal("30.00"),
    )
    assert p["status"] == "processed as primary" and p["payee_id"] == "1628403978"
    lines = pm_rows(eng, "SELECT * FROM service_payment WHERE patient_control_number = 'PCN-2001' ORDER BY line_number")
    assert [r["line_control_number"] for r in lines] == ["PCN-2001-1", "PCN-2001-2", "PCN-2001-3"]
    assert sum(money(r["paid_amount"]) for r in lines) == Decimal("140.10")
    adjustments = pm_rows(eng, "SELECT * FROM adjustment WHERE patient_control_number = 'PCN-2001'")
    assert sum(money(a["amount"]) for a in adjustments) == Decimal("272.00") - Decimal("140.10")
    assert all(a["reason"] and a["group_code"] in ("CO", "PR", "OA", "PI") for a in adjustments)
    pr = sum(money(a["amount"]) for a in adjustments if a["group_code"] == "PR")
    assert pr == Decimal("30.00")  # the patient's share is the PR adjustments, as CLP05 says


def test_the_same_interchange_dropped_twice_is_posted_once(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "remittance-835", "835_paid.835")
    taken(eng, "remittance-835", "835_paid.835")
    settle(eng, "remittance-835")
    before = {t: pm_rows(eng, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ("claim_payment", "adjustment")}
    drop(eng, "remittance-835", "duplicate_of_paid.835")  # the same bytes under another name
    assert taken(eng, "remittance-835", "duplicate_of_paid.835") == "processed"
    first, second = settle(eng, "remittance-835")
    assert second["duplicate_of"] == first["id"] and second["status"] != "SENT"
    after = {t: pm_rows(eng, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ("claim_payment", "adjustment")}
    assert after == before == {"claim_payment": 3, "adjustment": before["adjustment"]}
    assert (
        len(pm_rows(eng, "SELECT * FROM adjustment WHERE last_message_id != :m", m=first["id"])) == 0
    )  # nothing was written by the resend
    (again,) = acks(eng, "remittance-835", "duplicate_of_paid")  # the sender still gets its 999
    assert_clean_999(again)


def test_a_reversal_undoes_the_payment_it_reverses(fresh_engine):
    eng = fresh_engine(**FAST)
    for name in ("835_paid.835", "835_reversal.835"):
        drop(eng, "remittance-835", name)
        taken(eng, "remittance-835", name)
        settle(eng, "remittance-835")
    rows = pm_rows(eng, "SELECT * FROM claim_payment WHERE patient_control_number = 'PCN-1001' ORDER BY id")
    assert [r["status_code"] for r in rows] == ["1", "22", "1"]  # paid, reversed, paid again
    assert sum(money(r["paid_amount"]) for r in rows) == Decimal("127.68")  # only the corrected payment stands
    pr = pm_rows(eng, "SELECT amount FROM adjustment WHERE patient_control_number = 'PCN-1001' AND group_code = 'PR'")
    assert sum(money(r["amount"]) for r in pr) == Decimal("31.92")


def test_a_remittance_that_does_not_balance_is_posted_as_sent_with_its_differences_as_warnings(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "remittance-835", "835_unbalanced.835")
    taken(eng, "remittance-835", "835_unbalanced.835")
    (message,) = settle(eng, "remittance-835")
    assert message["status"] == "SENT"
    warnings = [w for w in json.loads(message["warnings"]) if "balance" in w]
    assert warnings == [
        "pm: 835 balance: CLP 2: charge less payment (90.00) is not its adjustments (60.00)",
        "pm: 835 balance: BPR02 260.44 is not the claims' payments 235.44 less provider adjustments 0",
    ]
    assert len(pm_rows(eng, "SELECT * FROM claim_payment")) == 2


def test_provider_adjustments_are_posted_and_balance_the_payment(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "remittance-835", "835_plb.835")
    taken(eng, "remittance-835", "835_plb.835")
    (message,) = settle(eng, "remittance-835")
    assert not [w for w in json.loads(message["warnings"] or "[]") if "balance" in w]
    plb = pm_rows(eng, "SELECT * FROM provider_adjustment ORDER BY segment_number, slot")
    assert [(r["reason_code"], money(r["amount"])) for r in plb] == [
        ("WO", Decimal("150.00")),
        ("L6", Decimal("-3.42")),
    ]
    assert plb[0]["reason"] == "overpayment recovery" and plb[0]["reference"]  # the claim the recovery is for


@pytest.mark.parametrize(
    ("name", "paid"),
    [
        ("bom.835", "174.70"),  # a UTF-8 byte order mark
        ("unusual_delimiters.835", "174.70"),  # | elements, > components, a line break ends segments
        ("835_partial.835", "50.00"),  # CRLF after each segment
        ("835_denied.835", "187.30"),  # no line breaks at all
    ],
)
def test_real_files_mess_posts_like_any_other(fresh_engine, name, paid):
    eng = fresh_engine(**FAST)
    drop(eng, "remittance-835", name)
    assert taken(eng, "remittance-835", name) == "processed"
    (message,) = settle(eng, "remittance-835")
    assert message["status"] == "SENT"
    rows = pm_rows(eng, "SELECT paid_amount FROM claim_payment")
    assert sum(money(r["paid_amount"]) for r in rows) == Decimal(paid)
    (ack,) = acks(eng, "remittance-835", Path(name).stem)
    assert_clean_999(ack)


# -- what is refused ----------------------------------------------------------------------------

BROKEN = {
    # name: (acknowledgment, what it must say)
    "broken_bad_isa.x12": ("TA1", ["R", "006"]),  # ISA06 not at its fixed width
    "broken_no_isa.x12": ("TA1", ["R", "022"]),  # no interchange header at all
    "broken_isa_iea_mismatch.x12": ("TA1", ["R", "001"]),  # IEA02 is not ISA13
    "cut_short.835": ("TA1", ["R", "023"]),  # the file ends inside a claim
    "broken_se_count.835": ("999", {"IK5": ["R", "4"]}),  # SE01 counts wrong
    "broken_missing_segment.835": ("999", {"IK3": ["TRN", "3", None, "3"], "IK5": ["R", "5"]}),
    "broken_bad_element.835": ("999", {"IK3": ["DTM"], "IK4": ["2", "373", "8"], "IK5": ["R", "5"]}),
}


def test_every_broken_file_gets_a_precise_acknowledgment_and_nothing_is_posted(fresh_engine):
    eng = fresh_engine(**FAST)
    for name in BROKEN:
        drop(eng, "remittance-835", name)
    for name, (kind, expected) in BROKEN.items():
        assert taken(eng, "remittance-835", name) == "error", name
        reason = (folder(eng, "remittance-835", "error") / f"{name}.reason.txt").read_text()
        assert reason.strip(), name
        (ack,) = acks(eng, "remittance-835", Path(name).stem)
        segs = segments(ack)
        if kind == "TA1":
            ta1 = next(s for s in segs if s[0] == "TA1")
            assert ta1[4:6] == expected, (name, ta1)
            assert not any(s[0] == "GS" for s in segs)
        else:
            assert_999_structure(ack)
            for sid, values in expected.items():
                seg = next(s for s in segs if s[0] == sid)
                for k, v in enumerate(values, 1):
                    if v is not None:
                        assert seg[k] == v, (name, seg)
            assert next(s for s in segs if s[0] == "AK9")[1] == "R", name
    messages = settle(eng, "remittance-835")
    assert len(messages) == len(BROKEN)
    assert {m["status"] for m in messages} == {"ERROR"} and all(m["error"] for m in messages)
    for table in ("remittance", "claim_payment", "service_payment", "adjustment", "provider_adjustment"):
        assert pm_rows(eng, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0, table


def assert_999_structure(text: str) -> None:
    """A 999 that rejects is still a valid 999: pyx12 accepts it against 005010X231A1."""
    interchanges, problems = read_interchanges(text.encode())
    assert problems == []
    assert [g.status for g in validate(interchanges[0])] == ["A"]


def test_acknowledgment_control_numbers_increase_across_restarts(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "remittance-835", "835_paid.835")
    taken(eng, "remittance-835", "835_paid.835")
    eng.stop()
    eng = fresh_engine(**FAST)  # the same stores and folders
    drop(eng, "remittance-835", "835_denied.835")
    taken(eng, "remittance-835", "835_denied.835")
    first = segments(acks(eng, "remittance-835", "835_paid")[0])
    second = segments(acks(eng, "remittance-835", "835_denied")[0])
    assert int(second[0][13]) == int(first[0][13]) + 1  # ISA13, per partner pair, never from the clock
    assert int(second[1][6]) > int(first[1][6])  # GS06


# -- claims in ----------------------------------------------------------------------------------


def test_837_claims_from_a_clearinghouse_land_in_the_pm_store(fresh_engine):
    eng = fresh_engine(**FAST)
    for name in ("837P_single.837", "837P_dependent.837", "837I_inpatient.837i"):
        drop(eng, "claims-837-in", name)
        assert taken(eng, "claims-837-in", name) == "processed"
        (ack,) = acks(eng, "claims-837-in", Path(name).stem)
        assert_clean_999(ack)  # the A2-labelled 837P too: validated with the X222A1 map
    settle(eng, "claims-837-in")
    claims = {c["patient_control_number"]: c for c in pm_rows(eng, "SELECT * FROM claim")}
    assert set(claims) == {"PCN-2001", "PCN-2002", "PCN-2003", "PCN-3001"}
    single, dependent, inpatient = claims["PCN-2001"], claims["PCN-2002"], claims["PCN-3001"]
    assert single["claim_type"] == "P" and money(single["total_charge"]) == Decimal("272.00")
    assert json.loads(single["diagnoses"]) == ["J069", "R051", "J45909"]
    assert single["patient_name"] == single["subscriber_name"] == "PEMBERTON, ISOLDE"
    # a dependent's claim reads the dependent (HL 23) and its own subscriber, never another's
    assert dependent["patient_name"] == "HOLLOWAY, JUNE" and dependent["subscriber_name"] == "HOLLOWAY, GRANT"
    assert dependent["relationship"] == "19" and claims["PCN-2003"]["member_id"] == dependent["member_id"]
    assert inpatient["claim_type"] == "I" and inpatient["mrn"] == "MRN640112"
    assert (inpatient["statement_from"], inpatient["statement_to"]) == ("2024-10-21", "2024-10-24")
    lines = pm_rows(eng, "SELECT * FROM claim_line WHERE patient_control_number = 'PCN-2001' ORDER BY line_number")
    assert [(r["procedure_code"], json.loads(r["modifiers"] or "[]")) for r in lines] == [
        ("99214", ["25"]),
        ("87880", ["QW"]),
        ("J7613", []),
    ]
    assert sum(money(r["charge"]) for r in lines) == money(single["total_charge"])
    assert json.loads(lines[0]["diagnosis_pointers"]) == ["1", "2", "3"]
    inpatient_lines = pm_rows(eng, "SELECT * FROM claim_line WHERE patient_control_number = 'PCN-3001'")
    assert sum(money(r["charge"]) for r in inpatient_lines) == money(inpatient["total_charge"])
    assert {r["revenue_code"] for r in inpatient_lines} >= {"0120", "0250"}


def test_engine_patient_shows_claims_payments_and_balance(fresh_engine):
    eng = fresh_engine(**FAST)
    drop(eng, "claims-837-in", "837I_inpatient.837i")  # PCN-3001 for MRN640112, billed by NPI 1846205734
    taken(eng, "claims-837-in", "837I_inpatient.837i")
    settle(eng, "claims-837-in")
    claim = gen.ClaimPayment(
        "PCN-3001",
        gen.Person("WAINWRIGHT", "CORNELIUS", member_id="CMH552033987"),
        "CMH2433000001",
        total_charge=Decimal("8572.75"),
        adjustments=(
            gen.Adjustment("CO", "45", Decimal("3572.75")),
            gen.Adjustment("PR", "1", Decimal("1000.00")),
        ),
        moa_remarks=("MA01", "M127"),  # one RARC the table knows, one it does not (yet)
    )
    payee = dataclasses.replace(gen.RIVERSIDE, name="RIVERSIDE MEDICAL CENTER", npi="1846205734")
    text = gen.remittance_835([claim], payee=payee, envelope=gen.Interchange(control=777))
    drop(eng, "remittance-835", "inpatient.835", text.encode())
    taken(eng, "remittance-835", "inpatient.835")
    (message,) = settle(eng, "remittance-835")
    assert message["status"] == "SENT" and not [w for w in json.loads(message["warnings"] or "[]") if "claim" in w]
    out = eng.cli("patient", "MRN640112", "--purpose", "billing follow-up", "--config", str(eng.config))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "CLAIM PCN-3001 837I (inbound)" in text
    assert "paid 4000.00 of 8572.75" in text
    assert "CO-45 3572.75 (claim): Charge exceeds fee schedule" in text
    assert "balance: charged 8572.75, paid 4000.00, adjusted off 3572.75, patient owes 1000.00, open 0.00" in text
    assert "remark MA01: Alert - if you do not agree with what we approved you may request a review" in text
    assert "remark M127: not in mappings/tables/rarc.yaml" in text  # shown, never dropped
