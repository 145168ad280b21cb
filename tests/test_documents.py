"""Clinical documents (MDM) end to end: a real ``engine run`` with the ``documents`` channel, the
fixtures of ``tests/fixtures/hl7v2/documents/`` sent over MLLP, each document read back from the
clinical store column by column.

A document is one row per unique document number (TXA-12 and namespace): the note's TX lines in
order with its blank line, an FT's \\.br\\ breaks and escapes decoded; an edit (T08) replaces the
content, a status change (T03/T04) the status, a cancel (T11) keeps the row as cancelled; a PDF
sent as ED is stored as sent, base64, its type saying so; a resend or reprocess changes nothing;
what cannot be placed is a warning (where, never what); other message types are filtered.
"""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime

import pytest
from conftest import (
    FIXTURES,
    ROOT,
    config_file,
    engine_check,
    operator_messages,
    sample_channel,
    send_and_settle,
)
from services import free_port

from engine.stores.clinical import document as DOCUMENT
from engine.stores.records_store import RecordStore
from engine.stores.schema import columns_of
from engine.transforms import load_mapping

# The channel(s) as config/channels.yaml has them.
CHANNEL = sample_channel("documents")
CONFIG = (
    """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
"""
    + CHANNEL
)
MANAGED = ("id", "updated_at", "last_message_id", "last_seq")
EMPTY = {c.name: None for c in DOCUMENT.columns if c.name not in MANAGED}  # every column, none set

NOTE_LINES = [
    "SUBJECTIVE: Follow-up of type 2 diabetes and hypertension.",
    "Home fasting glucose 110-140; no hypoglycemia reported.",
    "Taking metformin 1000 mg twice daily and lisinopril 10 mg daily.",
    "OBJECTIVE: BP 132/84, HR 72, weight 81.4 kg.",
    "Feet: monofilament sensation intact bilaterally.",
    "A1c 7.1 % (3 months ago 7.6 %).",
    "",
    "ASSESSMENT: Diabetes improving; blood pressure at goal.",
    "PLAN: Continue current medications.",
    "Repeat A1c and urine albumin/creatinine ratio before next visit.",
    "Diabetic eye exam referral placed.",
    "Return in 3 months, sooner if symptoms.  ",
]
OKONJO = {"id": "1710000011", "name": "OKONJO, ADAEZE"}
PROGRESS_NOTE = {
    **EMPTY,
    "document_number": "DOC860001",
    "document_namespace": "EHR_NOTES",
    "mrn": "MRN860001",
    "mrn_issuer": "SUNRISE_GH",
    "visit_number": "V240515-0001",
    "document_type_code": "PN",
    "status": "final",
    "event": "T02",
    "completion_status": "AU",
    "availability_status": "AV",
    "confidentiality": "U",
    "storage_status": "AC",
    "activity_at": datetime(2024, 5, 15, 21, 5, tzinfo=UTC),  # 14:05 Pacific (PDT), sent without offset
    "activity_date": date(2024, 5, 15),
    "originated_at": datetime(2024, 5, 15, 21, 10, tzinfo=UTC),
    "transcribed_at": datetime(2024, 5, 15, 21, 25, tzinfo=UTC),
    "provider": OKONJO["id"],
    "provider_name": OKONJO["name"],
    "author": OKONJO["id"],
    "author_name": OKONJO["name"],
    "authenticator": OKONJO["id"],
    "authenticator_name": OKONJO["name"],
    "placer_order_number": "ORD860001",
    "placer_order_namespace": "EHR",
    "filler_order_number": "FIL860001",
    "filler_order_namespace": "TRANSCRIBE",
    "file_name": "PN_860001.txt",
    "content_presentation": "TX",
    "content": "\n".join(NOTE_LINES),
    "content_type": "text/plain",
}
CONSULT = {
    **EMPTY,
    "document_number": "CC-DOC-0007",
    "document_namespace": "DICTA",
    "mrn": "CC860002",
    "mrn_issuer": "CEDAR_CLINIC",  # a bare PID-3: the sending facility issues it
    "visit_number": "CV240516-0002",
    "document_type_code": "CN",
    "status": "preliminary",
    "event": "T02",
    "completion_status": "DI",
    "availability_status": "UN",
    "confidentiality": "R",
    "storage_status": "AC",
    "activity_at": datetime(2024, 5, 16, 16, 15, tzinfo=UTC),
    "activity_date": date(2024, 5, 16),
    "originated_at": datetime(2024, 5, 16, 16, 0, tzinfo=UTC),
    "transcribed_at": datetime(2024, 5, 16, 16, 30, tzinfo=UTC),
    "provider": "1720000022",
    "provider_name": "BRANDT, SOLVEIG",
    "author": "1720000022",
    "author_name": "BRANDT, SOLVEIG",
    "authenticator": "1790000099",  # assigned (TXA-10); the attending who later signs (TXA-22)
    "authenticator_name": "HOLLIS, AUGUST",
    "file_name": "DICTA\\2024\\cn_0007.rtf",  # \E\ decoded
    "content_presentation": "FT",
    "content": (
        "CARDIOLOGY CONSULTATION\n"
        "\n"
        "Reason: chest pain & dyspnea on exertion for 2 weeks.\n"
        "Exam: BMI 31 kg/m^2; BP 142/88 | 138/84 on repeat; regular rhythm, no murmur.\n"
        "Plan: ECG & echocardiogram; stress test if normal."
    ),
    "content_type": "text/plain",
}
EDITED = CONSULT["content"].replace("for 2 weeks", "for 3 weeks") + "\nAddendum: aspirin 81 mg daily started."


@pytest.fixture
def docs(tmp_path, fresh_engine):
    """An engine with the documents channel only, on a free port (``docs.port``)."""
    port = free_port()
    eng = fresh_engine(config_file(tmp_path, CONFIG), ENGINE_DOCUMENTS_PORT=str(port))
    eng.port = port
    return eng


def send(eng, message: bytes | str, control_id: str, *, final: str = "SENT") -> dict[str, list[str]]:
    """Send a fixture (by name) or raw bytes, check the ACK (AA for this control id), wait until
    the message is ``final``; the ACK's fields."""
    data = (FIXTURES / "documents" / message).read_bytes() if isinstance(message, str) else message
    return send_and_settle(eng, eng.port, data, control_id, final)


def messages(eng) -> dict[str, dict]:
    """``engine messages --json`` as an operator reads it: {control id: newest row}."""
    rows: dict[str, dict] = {}
    for r in operator_messages(eng):  # newest first
        rows.setdefault(r["control_id"], r)
    return rows


def documents(eng, **where) -> list[dict]:
    store = RecordStore(f"sqlite:///{eng.data}/clinical.db", "clinical")
    try:
        return store.rows("document", **where)
    finally:
        store.dispose()


def columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in MANAGED}


def test_the_channel_and_the_mapping_pass_engine_check_against_the_store_columns(tmp_path):
    text = CONFIG
    for store in ("MESSAGE", "CLINICAL", "PM"):  # engine check runs without the engine's environment
        text = text.replace(f"${{ENGINE_{store}_STORE_URL}}", f"sqlite:///{tmp_path}/{store.lower()}.db")
    out = engine_check(config_file(tmp_path, text))
    assert out.returncode == 0, out.stderr
    mapping = load_mapping(ROOT / "mappings" / "mdm_clinical.yaml", columns={"clinical": columns_of("clinical")})
    assert mapping.name == "mdm_clinical"


def test_a_progress_note_is_one_row_with_its_lines_in_order_and_a_resend_or_reprocess_changes_nothing(docs):
    send(docs, "mdm_t02_v25_progress_note.hl7", "DOC-T02-0001")
    [row] = documents(docs)
    assert columns(row) == PROGRESS_NOTE
    assert row["content"].split("\n") == NOTE_LINES  # twelve OBX, one line each; OBX 7 the blank line
    info = messages(docs)["DOC-T02-0001"]
    assert (info["status"], info["channel"], info["warnings"], info["error"]) == ("SENT", "documents", [], None)

    # the same bytes again: acknowledged, dropped as a duplicate; the row untouched
    send(docs, "mdm_t02_v25_progress_note.hl7", "DOC-T02-0001", final="FILTERED")
    [again] = documents(docs)
    assert again == row

    # applied once more (reprocess): the same one row, the same values
    out = docs.cli("reprocess", "--config", str(docs.config), str(info["id"]))
    assert out.returncode == 0, out.stdout + out.stderr
    [after] = documents(docs)
    assert columns(after) == PROGRESS_NOTE and after["id"] == row["id"]


def test_an_edit_replaces_the_content_and_legal_authentication_makes_it_final_one_row_throughout(docs):
    send(docs, "mdm_t02_v23_ft_note.hl7", "CC-MDM-4101")
    [row] = documents(docs)
    assert columns(row) == CONSULT  # \.br\ line breaks (one empty line), \T\ \S\ \F\ decoded

    send(docs, "mdm_t08_v23_edit.hl7", "CC-MDM-4102")
    [edited] = documents(docs)
    assert edited["id"] == row["id"]
    assert columns(edited) == {
        **CONSULT,
        "event": "T08",
        "completion_status": "DO",
        "edited_at": datetime(2024, 5, 16, 18, 10, tzinfo=UTC),
        "change_reason": "Duration of symptoms corrected; addendum",
        "content": EDITED,
    }

    send(docs, "mdm_t04_v23_authenticated.hl7", "CC-MDM-4103")
    [final] = documents(docs)
    assert final["id"] == row["id"]
    assert columns(final) == {
        **CONSULT,
        "status": "final",
        "event": "T04",
        "completion_status": "LA",
        "availability_status": "AV",
        "edited_at": datetime(2024, 5, 16, 18, 10, tzinfo=UTC),
        "change_reason": "Duration of symptoms corrected; addendum",  # not sent again: kept
        "authenticator": "1790000099",  # who signed (TXA-22)
        "authenticator_name": "HOLLIS, AUGUST",
        "content": EDITED,
    }
    assert final["last_message_id"] == messages(docs)["CC-MDM-4103"]["id"]


def test_a_cancel_keeps_the_row_and_its_note_marked_cancelled(docs):
    send(docs, "mdm_t02_v25_progress_note.hl7", "DOC-T02-0001")
    send(docs, "mdm_t11_v25_cancel.hl7", "DOC-T11-0002")
    [row] = documents(docs)
    assert columns(row) == {
        **PROGRESS_NOTE,
        "status": "cancelled",
        "event": "T11",
        "availability_status": "CA",
        "change_reason": "Documented on the wrong encounter",
        "activity_at": datetime(2024, 5, 16, 15, 10, tzinfo=UTC),
        "activity_date": date(2024, 5, 16),
    }


def test_a_pdf_is_stored_as_sent_in_base64_and_a_status_change_without_content_keeps_it(docs):
    send(docs, "mdm_t02_v26_pdf.hl7", "SD-0000517")
    [row] = documents(docs)
    assert row["content_type"] == "application/pdf;base64" and row["content_presentation"] == "AP"
    pdf = base64.b64decode(row["content"], validate=True)
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.rstrip().endswith(b"%%EOF")
    sent = (FIXTURES / "documents" / "mdm_t02_v26_pdf.hl7").read_bytes()
    assert row["content"].encode() in sent  # the very bytes of ED-5: nothing dropped, nothing re-encoded
    assert (row["status"], row["completion_status"], row["file_name"]) == ("preliminary", "PA", "ds_000517.pdf")
    assert row["activity_at"] == datetime(2024, 5, 17, 0, 0, tzinfo=UTC)  # sent with -0700
    assert row["activity_date"] == date(2024, 5, 16)  # the day as written

    send(docs, "mdm_t03_v28_status.hl7", "SD-0000518")  # LF-separated, v2.8, no OBX
    [status] = documents(docs)
    assert status["id"] == row["id"] and status["content"] == row["content"]
    assert (status["status"], status["event"], status["completion_status"], status["availability_status"]) == (
        "final",
        "T03",
        "AU",
        "AV",
    )
    assert (status["authenticator"], status["authenticator_name"]) == ("1730000033", "FERREIRA, TOMAS")


MDM = (
    "MSH|^~\\&|EHR_NOTES|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240520090000||MDM^T02|{cid}|P|2.5\r"
    "PID|1||MRN860001^^^SUNRISE_GH^MR\r"
    "TXA|1|PN|TX|{when}||||||||{number}|||||AU\r"
    "OBX|1|TX|11506-3^Progress note^LN||Seen for a cough.||||||F\r"
)


def test_what_cannot_be_placed_is_a_warning_or_an_error_and_other_messages_are_filtered(docs):
    # an activity time that is not a date: left out with a warning, the document and its note kept
    send(docs, MDM.format(cid="W-1", when="2024-05-20 08:30", number="DOC860020^EHR_NOTES").encode(), "W-1")
    [row] = documents(docs, document_number="DOC860020")
    assert (row["activity_at"], row["activity_date"], row["content"]) == (None, None, "Seen for a cough.")
    # a document without its number cannot be found again: the message fails, with the reason
    send(docs, MDM.format(cid="W-2", when="20240520083000", number="").encode(), "W-2", final="ERROR")
    # an ADT on the documents port: filtered, nothing stored
    adt = b"MSH|^~\\&|REG|SUNRISE_GH|||20240520090000||ADT^A08|W-3|P|2.5\rPID|1||MRN860001^^^SUNRISE_GH^MR\r"
    send(docs, adt, "W-3", final="FILTERED")

    info = messages(docs)
    [warning] = info["W-1"]["warnings"]
    assert warning.startswith("clinical: clinical.document.activity_at: not a valid HL7 date/time")
    assert "value left out with activity_date" in warning and "2024-05-20 08:30" not in warning
    assert info["W-2"]["status"] == "ERROR" and "document_number: required value is missing" in info["W-2"]["error"]
    assert info["W-3"]["status"] == "FILTERED"
    assert [r["document_number"] for r in documents(docs)] == ["DOC860020"]
