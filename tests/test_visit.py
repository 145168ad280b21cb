"""One visit, end to end, on the sample channels (config/channels.yaml): the README's tour.

The PM system books the appointment and registers the visit, the EHR orders an A1c and the lab
returns it, the doctor signs a note, prescribes and gives a flu shot, and charge capture posts
the charges. Each message goes in over MLLP on its own channel's port; the lab and the pharmacy
are test listeners that count what the engine forwards. At the end `engine patient` tells the
visit's story from both stores.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from conftest import FIXTURES, MllpConnection, ack_fields
from downstream import Downstream

VISIT = FIXTURES / "visit"
STEPS = [  # fixture, the channel's port variable, the answer the sender gets
    ("1_siu_s12_booking.hl7", "ENGINE_SCHEDULING_PORT", "ACK^S12^ACK"),
    ("2_adt_a04_arrival.hl7", "ENGINE_ADT_PORT", "ACK^A04^ACK"),
    ("3_oml_o21_order.hl7", "ENGINE_ORDERS_PORT", "ORL^O22^ORL_O22"),
    ("4_oru_r01_result.hl7", "ENGINE_LAB_PORT", "ACK^R01^ACK"),
    ("5_mdm_t02_note.hl7", "ENGINE_DOCUMENTS_PORT", "ACK^T02^ACK"),
    ("6_rde_o11_prescription.hl7", "ENGINE_PHARMACY_ORDERS_PORT", "RRE^O12^RRE_O12"),
    ("7_vxu_v04_flu_shot.hl7", "ENGINE_IMMUNIZATION_PORT", "ACK^V04^ACK"),
    ("8_dft_p03_charges.hl7", "ENGINE_CHARGES_PORT", "ACK^P03^ACK"),
]


@pytest.fixture
def lab_and_pharmacy():
    with Downstream() as lab, Downstream() as pharmacy:
        yield lab, pharmacy


def test_one_visit_goes_through_both_stores_from_appointment_to_charges(fresh_engine, lab_and_pharmacy):
    lab, pharmacy = lab_and_pharmacy
    eng = fresh_engine(ENGINE_LAB_OUT_PORT=str(lab.port), ENGINE_PHARMACY_OUT_PORT=str(pharmacy.port))
    for name, port, answer in STEPS:
        conn = MllpConnection(int(eng.env[port]))
        try:
            ack = ack_fields(conn.send((VISIT / name).read_bytes()))
        finally:
            conn.close()
        assert (ack["MSH"][9], ack["MSA"][1]) == (answer, "AA"), name
    rows = eng.wait_for(
        "messages",
        "select channel, status, warnings from messages order by id",
        lambda r: len(r) == len(STEPS) and all(m["status"] == "SENT" for m in r),
        timeout=30,
    )
    assert [m["warnings"] for m in rows] == [None] * len(STEPS)  # every value of the visit found its place
    assert lab.wait_for(["NC-OML-0001"]) and pharmacy.wait_for(["NC-RDE-0001"])
    assert lab.counts() == {"NC-OML-0001": 1} and pharmacy.counts() == {"NC-RDE-0001": 1}

    out = eng.cli("patient", "MRN900101", "--issuer", "NORTHCLINIC", "--purpose", "test: the tour", "--json")
    assert out.returncode == 0, out.stderr
    story = json.loads(out.stdout)
    [visit] = [v for v in story["visits"] if v.get("visit_number") == "V900101"]
    [appointment] = visit["appointments"]  # the same appointment, as each store knows it
    assert appointment["clinical"]["status"] == appointment["pm"]["status"] == "booked"
    [order] = visit["orders"]
    assert (order["order"]["code"], order["order"]["status"]) == ("4548-4", "completed")
    assert [o["value_numeric"] for r in order["reports"] for o in r["observations"]] == [7.2]
    [note] = visit["documents"]
    assert note["status"] and "flu vaccine given & tolerated" in note["content"]
    [rx] = visit["medications"]
    assert rx["order"]["medication_code"] == "861004" and "twice daily" in rx["order"]["instructions"]
    [shot] = visit["immunizations"]
    assert shot["vaccine_code"] == "150"
    charges = visit["charges"]
    assert sorted((c["procedure_code"], Decimal(c["amount"]), c["diagnoses"]) for c in charges) == [
        ("83036", Decimal("32.50"), ["E11.9"]),
        ("90686", Decimal("24.00"), ["Z23"]),
        ("99213", Decimal("110.00"), ["E11.9"]),
    ]

    text = eng.cli("patient", "MRN900101", "--issuer", "NORTHCLINIC", "--purpose", "test: the tour").stdout
    for word in ("appointment", "order", "document", "medication", "immunization", "charge"):
        assert word in text, word
