"""The clinic's billing loop on the sample channels, through the running engine (the README's tour):

registration (ADT) -> charges (DFT) -> the scheduled claims channel bills them into an 837P in
the clearinghouse's outbox -> the clearinghouse's 999 comes back into acks-999-in -> the payer's
835 pays the claim into remittance-835 -> ``engine patient`` shows the claim with its 999, the
payment, its adjustments and the balance.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

from conftest import FIXTURES, send_and_settle
from test_remittance import FAST, drop, gen, settle, taken

from engine.formats import x12_envelope, x12_validate

VISIT = FIXTURES / "visit"
NPI = "1847000316"  # the sample config's billing provider (billing: in config/channels.yaml)


def outbox_files(eng) -> list:
    out = eng.data / "x12" / "claims-out" / "outbox"
    return sorted(out.glob("claims-*.837")) if out.exists() else []


def wait_for_files(eng, n: int = 1, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = outbox_files(eng)
        if len(files) >= n:
            return files
        time.sleep(0.1)
    raise AssertionError(f"no claims file in the outbox after {timeout} s")


def test_charges_are_billed_acknowledged_paid_and_shown_with_their_balance(fresh_engine):
    eng = fresh_engine(**FAST, ENGINE_CLAIMS_EVERY_SECONDS="1")
    send_and_settle(eng, int(eng.env["ENGINE_ADT_PORT"]), (VISIT / "2_adt_a04_arrival.hl7").read_bytes(), "NC-ADT-0001")
    send_and_settle(
        eng, int(eng.env["ENGINE_CHARGES_PORT"]), (VISIT / "8_dft_p03_charges.hl7").read_bytes(), "NC-DFT-0001"
    )

    # the scheduled channel bills the charges once: one 837P, valid, in the outbox
    (claims_file,) = wait_for_files(eng)
    sent = claims_file.read_bytes()
    (ic,), problems = x12_envelope.read_interchanges(sent)
    assert problems == [] and [g.status for g in x12_validate.validate(ic)] == ["A"]
    (claim,) = eng.query("pm", "SELECT * FROM claim")
    assert claim["origin"] == "built" and claim["mrn"] == "MRN900101" and claim["billing_provider_id"] == NPI
    charges = eng.query("pm", "SELECT amount, claimed_in FROM charge WHERE transaction_type = 'CG'")
    assert charges and {c["claimed_in"] for c in charges} == {claim["patient_control_number"]}
    assert sum(Decimal(str(c["amount"])) for c in charges) == Decimal(str(claim["total_charge"]))
    (message,) = settle(eng, "claims-837-out")
    assert message["status"] == "SENT" and message["message_type"] == "837"
    time.sleep(2.5)  # two more scheduled runs: nothing left to bill, no second file
    assert outbox_files(eng) == [claims_file]

    # the clearinghouse answers with a 999 accepting it (the README's file: our group 1, set 0001)
    assert (claim["interchange_control"], claim["group_control"], claim["transaction_control"]) == (
        "000000001",
        "1",
        "0001",
    )
    drop(eng, "acks-999-in", "tour_999.x12")
    assert taken(eng, "acks-999-in", "tour_999.x12") == "processed"
    settle(eng, "acks-999-in")
    assert not (eng.data / "x12" / "acks-in" / "outbox").exists()  # a 999 is never answered

    # the payer pays it: CO-45 10.00 and PR-2 5.00 on each line (the README's 835)
    lines = eng.query("pm", "SELECT * FROM claim_line ORDER BY line_number")
    assert [(r["procedure_code"], r["line_control_number"]) for r in lines] == [
        (code, f"C000000001-{n}") for n, (code, _charge) in enumerate(gen.TOUR_LINES, 1)
    ]
    drop(eng, "remittance-835", "tour_835.835")
    assert taken(eng, "remittance-835", "tour_835.835") == "processed"
    (posted,) = settle(eng, "remittance-835")
    assert posted["status"] == "SENT" and not json.loads(posted["warnings"] or "[]")  # matched, balanced

    out = eng.cli("patient", "MRN900101", "--issuer", "NORTHCLINIC", "--purpose", "test: the billing loop")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    pcn, n = claim["patient_control_number"], len(lines)
    charged = Decimal(str(claim["total_charge"]))
    assert f"CLAIM {pcn} 837P (built)" in text
    assert "999 from CASCADECH: accepted" in text
    paid = charged - 15 * n
    assert f"paid {paid:.2f} of {charged:.2f}" in text
    balance = f"charged {charged:.2f}, paid {paid:.2f}, adjusted off {10 * n:.2f}, patient owes {5 * n:.2f}"
    assert f"balance: {balance}, open 0.00" in text
