"""A patient is (assigning authority, identifier value), chosen by identifier type, never by position.

Through a real ``engine run`` over MLLP: two authorities' same number stay two patients; an SSN
listed first is neither the key nor the order; a specimen id alone is an error with its reason;
a multi-pair A40 merges every pair and writes the survivors' demographics; an empty field keeps
the stored value and ``""`` clears it. Through ``RecordStore`` on SQLite and PostgreSQL: merges,
resolution and the owner check compare the pair; migrations keep existing rows (issuer '').
Through ``engine check``: a faulty identifier spec or ordering key is named with file and line.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime

import pytest
from conftest import ROOT, MllpConnection, ack_fields, adt_config, config_file, engine_check
from sqlalchemy import bindparam, text

from engine.errors import DeliveryError, MappingError
from engine.formats.hl7 import Message
from engine.records import Record
from engine.stores import migrate
from engine.stores.db import UTCDateTime
from engine.stores.records_store import RecordStore
from engine.transforms import load_mapping

REASON = "no identifier of type MR/PI/PT/untyped in PID-3"


def segment(name: str, fields: dict[int, str]) -> str:
    """``name|f1|f2|...`` with the given fields (HL7 numbering) and the others empty."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def message(kind: str, control_id: str, facility: str, *segments: str) -> bytes:
    msh = f"MSH|^~\\&|SENDER|{facility}|ENGINE|HUB|20260301120000||{kind}|{control_id}|P|2.5.1"
    return ("\r".join((msh, *segments)) + "\r").encode()


def send(port: int, *messages: bytes) -> None:
    conn = MllpConnection(port)
    try:
        for m in messages:
            assert ack_fields(conn.send(m))["MSA"][1] == "AA"
    finally:
        conn.close()


def settle(eng, *control_ids: str) -> dict[str, dict]:
    """Wait until every message is SENT or ERROR; {control id: status, error, ordering_key}."""
    rows = eng.wait_for(
        "messages",
        "select control_id, status, error, ordering_key from messages where status in ('SENT', 'ERROR')",
        lambda r: set(control_ids) <= {x["control_id"] for x in r},
        timeout=20,
    )
    return {r["control_id"]: r for r in rows if r["control_id"] in control_ids}


def store(eng, kind: str) -> RecordStore:
    return RecordStore(f"sqlite:///{eng.data}/{kind}.db", kind)


def rows(s: RecordStore, table: str, *columns: str, **where) -> list[tuple]:
    return [tuple(r[c] for c in columns) for r in s.rows(table, **where)]


# -- through MLLP ---------------------------------------------------------------------------------
def test_the_same_identifier_from_two_authorities_is_two_patients_and_a_result_never_overwrites_the_other(
    fresh_engine,
):
    eng = fresh_engine()  # the sample config: lab-results (ORU -> clinical) and adt (ADT -> clinical, pm)
    a01 = message(
        "ADT^A01^ADT_A01",
        "TWO-A",
        "SUNRISE_GH",
        "EVN|A01|20260301115900",
        segment("PID", {1: "1", 3: "X100^^^SUNRISE_GH^MR", 5: "ASHDOWN^MAREN", 7: "19700101", 8: "F"}),
        segment("PV1", {1: "1", 2: "O", 19: "V-TWO-A^^^SUNRISE_GH^VN"}),
    )
    oru = message(
        "ORU^R01^ORU_R01",
        "TWO-B",
        "NORTHLAB",
        segment("PID", {1: "1", 3: "X100^^^NORTHLAB^MR", 5: "BRANDT^OSKAR", 7: "19551111", 8: "M"}),
        "OBR|1|ORD-TWO|LAB-TWO|2345-7^Glucose^LN|||20260301080000",
        "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||F",
    )
    send(eng.adt_port, a01)
    send(eng.lab_port, oru)
    done = settle(eng, "TWO-A", "TWO-B")
    assert [done[c]["status"] for c in ("TWO-A", "TWO-B")] == ["SENT", "SENT"], done
    clinical, pm = store(eng, "clinical"), store(eng, "pm")
    columns = ("mrn_issuer", "mrn", "family_name", "given_name", "birth_date", "sex")
    assert sorted(rows(clinical, "patient", *columns)) == [
        ("NORTHLAB", "X100", "BRANDT", "OSKAR", date(1955, 11, 11), "male"),
        ("SUNRISE_GH", "X100", "ASHDOWN", "MAREN", date(1970, 1, 1), "female"),
    ]
    assert rows(clinical, "diagnostic_report", "mrn_issuer", "mrn") == [("NORTHLAB", "X100")]
    assert rows(clinical, "encounter", "visit_number", "mrn_issuer", "mrn") == [("V-TWO-A", "SUNRISE_GH", "X100")]
    assert rows(pm, "registration", "mrn_issuer", "mrn", "family_name") == [("SUNRISE_GH", "X100", "ASHDOWN")]
    assert done["TWO-A"]["ordering_key"] == "SUNRISE_GH|X100" and done["TWO-B"]["ordering_key"] == "NORTHLAB|X100"


def test_an_ssn_listed_first_is_neither_the_patient_nor_the_order_and_a_plain_path_key_still_works(
    tmp_path, fresh_engine
):
    cfg = config_file(
        tmp_path,
        """
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: adt                          # the default ordering key: the patient's identity
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
      - {name: pm, type: store, store: pm, mapping: adt_pm}
  - name: legacy
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    ordering_key: PID-3.1
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
""",
    )
    eng = fresh_engine(cfg)

    def a08(control_id: str, ssn: str, given: str) -> bytes:
        pid = {1: "1", 3: f"{ssn}^^^SSA^SS~P301^^^NORTH^MR", 5: f"TESTER^{given}", 7: "19800101", 8: "F"}
        return message("ADT^A08^ADT_A01", control_id, "NORTH", "EVN|A08|20260301115900", segment("PID", pid))

    # the same patient, her SSN mistyped in the second update: one patient, one order
    send(eng.adt_port, a08("SSN-1", "999-00-0301", "FIRST"), a08("SSN-2", "999-00-0399", "SECOND"))
    send(eng.lab_port, a08("SSN-3", "999-00-0301", "SECOND"))
    done = settle(eng, "SSN-1", "SSN-2", "SSN-3")
    assert {c: (r["status"], r["ordering_key"]) for c, r in done.items()} == {
        "SSN-1": ("SENT", "NORTH|P301"),
        "SSN-2": ("SENT", "NORTH|P301"),
        "SSN-3": ("SENT", "999-00-0301"),  # ordering_key: PID-3.1, the plain path, as before
    }
    clinical, pm = store(eng, "clinical"), store(eng, "pm")
    patient = ("mrn_issuer", "mrn", "given_name", "other_ids")
    assert rows(clinical, "patient", *patient) == [
        ("NORTH", "P301", "SECOND", '[{"authority":"SSA","id":"999-00-0301","type":"SS"}]')
    ]
    assert rows(pm, "registration", "mrn_issuer", "mrn", "given_name") == [("NORTH", "P301", "SECOND")]


def test_a_result_identified_only_by_a_specimen_id_is_an_error_naming_why_and_stores_nothing(fresh_engine):
    eng = fresh_engine()
    oru = message(
        "ORU^R01^ORU_R01",
        "SID-1",
        "STATE_PHL",
        segment("PID", {1: "1", 3: "SPC-2026-0042^^^STATE_PHL^SID", 5: "NAKASHIMA^RIKU", 7: "20010405", 8: "M"}),
        "OBR|1|ORD-SID|LAB-SID|94500-6^SARS-CoV-2 RNA^LN|||20260301080000",
        "OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260415000^Not detected^SCT||||||F",
    )
    send(eng.lab_port, oru)
    row = settle(eng, "SID-1")["SID-1"]
    assert row["status"] == "ERROR" and REASON in row["error"]
    assert "SPC-2026-0042" not in row["error"] and "NAKASHIMA" not in row["error"]
    assert row["ordering_key"] is None  # no identity, no order to keep
    clinical = store(eng, "clinical")
    assert clinical.rows("patient") == [] and clinical.rows("diagnostic_report") == []


def test_an_a40_with_two_pairs_merges_both_and_writes_each_survivors_demographics(tmp_path, fresh_engine):
    eng = fresh_engine(adt_config(tmp_path))
    pv1 = lambda visit: segment("PV1", {1: "1", 2: "O", 19: f"{visit}^^^NORTH^VN"})
    evn = "EVN|A01|20260301115900"
    a01 = lambda cid, pid, *more: message("ADT^A01^ADT_A01", cid, "NORTH", evn, segment("PID", pid), *more)
    send(
        eng.adt_port,
        a01("M-S1", {1: "1", 3: "S1^^^NORTH^MR", 5: "SURVIVOR^SOL", 7: "19800101", 8: "F"}, pv1("V-S1")),
        a01(
            "M-OLD1",
            {1: "1", 3: "OLD1^^^NORTH^MR", 5: "OLDNAME^ONE", 7: "19800101", 8: "F"},
            pv1("V-OLD1"),
            "AL1|1|DA^Drug allergy^HL70127|7980^Penicillin G^RXNORM|SV^Severe^HL70128|Hives",
        ),
        a01(
            "M-OLD2",
            {1: "1", 3: "OLD2^^^NORTH^MR", 5: "OLDNAME^TWO", 7: "19650505", 8: "M", 13: "^PRN^PH^^1^541^5550177"},
            pv1("V-OLD2"),
        ),
    )
    settle(eng, "M-S1", "M-OLD1", "M-OLD2")
    a40 = message(  # S2 is new: its row is made from OLD2's and the A40's PID, never a stub
        "ADT^A40^ADT_A39",
        "M-A40",
        "NORTH",
        "EVN|A40|20260301120000",
        segment("PID", {1: "1", 3: "S1^^^NORTH^MR", 5: "SURVIVOR^SOLVEIG", 7: "19800101", 8: "F"}),
        "MRG|OLD1^^^NORTH^MR",
        segment(
            "PID",
            {
                1: "2",
                3: "S2^^^NORTH^MR",
                5: "NEWCOMB^TOVE^A",
                7: "19650505",
                8: "M",
                11: "9 ASPEN WAY^^MAPLETON^OR^97453",
            },
        ),
        "MRG|999-00-0777^^^SSA^SS~OLD2^^^NORTH^MR",
    )
    send(eng.adt_port, a40)
    assert settle(eng, "M-A40")["M-A40"]["status"] == "SENT"
    for kind, identity, visit in (("clinical", "patient", "encounter"), ("pm", "registration", "visit")):
        s = store(eng, kind)
        by = {r["mrn"]: r for r in s.rows(identity)}
        assert set(by) == {"S1", "OLD1", "OLD2", "S2"}, kind
        merged = {m: (by[m]["merged_into_issuer"], by[m]["merged_into"]) for m in by}
        assert merged == {"S1": (None, None), "S2": (None, None), "OLD1": ("NORTH", "S1"), "OLD2": ("NORTH", "S2")}
        assert (by["S1"]["family_name"], by["S1"]["given_name"]) == ("SURVIVOR", "SOLVEIG")
        s2 = by["S2"]
        assert (s2["mrn_issuer"], s2["family_name"], s2["given_name"], s2["middle_name"]) == (
            "NORTH",
            "NEWCOMB",
            "TOVE",
            "A",
        )
        assert (s2["birth_date"], s2["sex"], s2["address_line1"], s2["city"], s2["postal_code"]) == (
            date(1965, 5, 5),
            "male",
            "9 ASPEN WAY",
            "MAPLETON",
            "97453",
        )
        assert s2["phone_home"] == "5415550177"  # the old record's, which the A40 does not carry
        visits = {r["visit_number"]: (r["mrn_issuer"], r["mrn"]) for r in s.rows(visit)}
        assert visits == {"V-S1": ("NORTH", "S1"), "V-OLD1": ("NORTH", "S1"), "V-OLD2": ("NORTH", "S2")}
        audit = rows(s, "patient_merge", "old_mrn_issuer", "old_mrn", "new_mrn_issuer", "new_mrn")
        assert audit == [("NORTH", "OLD1", "NORTH", "S1"), ("NORTH", "OLD2", "NORTH", "S2")], kind
    allergies = rows(store(eng, "clinical"), "allergy", "mrn_issuer", "mrn", "allergen_code")
    assert allergies == [("NORTH", "S1", "7980")]


def test_an_empty_field_keeps_the_stored_value_and_an_hl7_null_clears_it(tmp_path, fresh_engine):
    eng = fresh_engine(adt_config(tmp_path))
    full = {
        "pid": {5: "LANG^IRIS^MAE", 7: "19750203", 8: "F", 13: "^PRN^PH^^1^541^5550101", 18: "ACC-U1", 30: "N"},
        "pv1": {3: "4E^401^A", 45: "20260302090000-0800"},
    }
    empty = {"pid": {5: "LANG^IRIS", 7: "", 8: "", 13: "", 18: "", 30: ""}, "pv1": {3: "", 45: ""}}
    null = {
        "pid": {5: 'LANG^IRIS^""', 7: '""', 8: '""', 13: '""', 18: '""', 30: '""'},
        "pv1": {3: '""', 45: '""'},
    }

    def a08(control_id: str, values: dict) -> bytes:
        pid = {1: "1", 3: "U1^^^NORTH^MR", **values["pid"]}
        pv1 = {1: "1", 2: "I", 19: "V-U1^^^NORTH^VN", 44: "20260301080000-0800", **values["pv1"]}
        evn = "EVN|A08|20260301115900"
        return message("ADT^A08^ADT_A01", control_id, "NORTH", evn, segment("PID", pid), segment("PV1", pv1))

    clinical, pm = store(eng, "clinical"), store(eng, "pm")

    def state() -> dict:
        [p] = clinical.rows("patient", mrn="U1")
        [e] = clinical.rows("encounter", visit_number="V-U1")
        [r] = pm.rows("registration", mrn="U1")
        [v] = pm.rows("visit", visit_number="V-U1")
        return {
            "patient": tuple(p[c] for c in ("middle_name", "birth_date", "sex", "phone_home", "deceased")),
            "encounter": (e["location"], e["admit_at"], e["discharge_at"]),
            "registration": tuple(r[c] for c in ("middle_name", "birth_date", "sex", "phone_home", "account_number")),
            "visit": (v["location"], v["discharge_at"]),
        }

    admit, discharge = datetime(2026, 3, 1, 16, 0, tzinfo=UTC), datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
    stored = {
        "patient": ("MAE", date(1975, 2, 3), "female", "5415550101", False),
        "encounter": ("4E-401-A", admit, discharge),
        "registration": ("MAE", date(1975, 2, 3), "female", "5415550101", "ACC-U1"),
        "visit": ("4E-401-A", discharge),
    }
    send(eng.adt_port, a08("U-FULL", full))
    settle(eng, "U-FULL")
    assert state() == stored
    send(eng.adt_port, a08("U-EMPTY", empty))  # empty: the sender says nothing about these
    assert settle(eng, "U-EMPTY")["U-EMPTY"]["status"] == "SENT"
    assert state() == stored
    send(eng.adt_port, a08("U-NULL", null))  # "": the sender says they are no longer known
    assert settle(eng, "U-NULL")["U-NULL"]["status"] == "SENT"
    assert state() == {
        "patient": (None, None, None, None, None),
        "encounter": (None, admit, None),
        "registration": (None, None, None, None, None),
        "visit": (None, None),
    }


# -- RecordStore on SQLite and PostgreSQL -----------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request, tmp_path):
    """A fresh database: a SQLite file, or a PostgreSQL schema (search_path) dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    yield request.getfixturevalue("pg_url")


def patient(issuer: str, mrn: str, **values) -> Record:
    return Record("clinical.patient", ("mrn", "mrn_issuer"), {"mrn": mrn, "mrn_issuer": issuer, **values})


def encounter(issuer: str, mrn: str, visit: str) -> Record:
    return Record("clinical.encounter", ("visit_number",), {"visit_number": visit, "mrn": mrn, "mrn_issuer": issuer})


def allergy(issuer: str, mrn: str, code: str) -> Record:
    values = {"mrn": mrn, "mrn_issuer": issuer, "allergen_code": code}
    return Record("clinical.allergy", ("mrn", "mrn_issuer", "allergen_code"), values)


def merge(old: tuple[str, str], new: tuple[str, str]) -> Record:
    values = {"old_mrn_issuer": old[0], "old_mrn": old[1], "mrn_issuer": new[0], "mrn": new[1]}
    return Record("clinical.patient", ("mrn", "mrn_issuer"), values, op="merge")


def test_the_store_keeps_patients_apart_by_issuer_and_merges_resolves_and_guards_visits_by_the_pair(db_url):
    s = RecordStore(db_url, "clinical")
    s.upgrade()
    try:
        assert (
            s.apply_batch(
                [
                    (1, [patient("A", "X", family_name="Ash"), encounter("A", "X", "V1"), allergy("A", "X", "PEN")]),
                    (2, [patient("B", "X", family_name="Birch"), allergy("B", "X", "PEN")]),
                    (3, [patient("A", "OLD", family_name="Oldham"), encounter("A", "OLD", "V2")]),
                    (4, [patient("B", "OLD", family_name="Other"), encounter("B", "OLD", "V3")]),
                ]
            )
            == [None] * 4
        )
        # V1 is (A, X)'s: a message naming it for (B, X), the same value from another authority, fails
        (err,) = s.apply_batch([(5, [encounter("B", "X", "V1")])])
        assert isinstance(err, DeliveryError) and "already belongs to another patient" in str(err)
        assert "X" not in str(err).replace("clinical.encounter", "")
        assert s.apply_batch([(6, [merge(("A", "OLD"), ("A", "X"))])]) == [None]
        # later records for (A, OLD) land on (A, X); (B, OLD) is another patient and stays
        assert s.apply_batch([(7, [patient("A", "OLD", given_name="Later"), encounter("A", "OLD", "V2")])]) == [None]
        assert s.apply_batch([(8, [patient("B", "OLD", given_name="Own")])]) == [None]
        by = {(r["mrn_issuer"], r["mrn"]): r for r in s.rows("patient")}
        assert {k: (r["merged_into_issuer"], r["merged_into"]) for k, r in by.items()} == {
            ("A", "X"): (None, None),
            ("B", "X"): (None, None),
            ("A", "OLD"): ("A", "X"),
            ("B", "OLD"): (None, None),
        }
        assert (by[("A", "X")]["family_name"], by[("A", "X")]["given_name"]) == ("Ash", "Later")
        assert (by[("B", "OLD")]["family_name"], by[("B", "OLD")]["given_name"]) == ("Other", "Own")
        assert by[("B", "X")]["family_name"] == "Birch"
        visits = {r["visit_number"]: (r["mrn_issuer"], r["mrn"]) for r in s.rows("encounter")}
        assert visits == {"V1": ("A", "X"), "V2": ("A", "X"), "V3": ("B", "OLD")}
        allergies = sorted(rows(s, "allergy", "mrn_issuer", "mrn", "allergen_code"))
        assert allergies == [("A", "X", "PEN"), ("B", "X", "PEN")]
        audit = rows(s, "patient_merge", "old_mrn_issuer", "old_mrn", "new_mrn_issuer", "new_mrn", "message_id")
        assert audit == [("A", "OLD", "A", "X", 6)]
        # a record naming the patient by value alone is refused by name: the issuer is part of who it is
        alone = Record("clinical.encounter", ("visit_number",), {"visit_number": "V4", "mrn": "X"})
        (err,) = s.apply_batch([(9, [alone])])
        assert isinstance(err, DeliveryError) and not err.retryable and "mrn_issuer" in str(err)
    finally:
        s.dispose()


def test_migrations_keep_the_rows_written_before_them_with_an_empty_issuer(db_url):
    at = bindparam("at", type_=UTCDateTime())
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    legacy = {
        "clinical": [
            "INSERT INTO patient (mrn, family_name, updated_at, last_seq) VALUES ('L1', 'Legacy', :at, 1)",
            "INSERT INTO patient (mrn, merged_into, updated_at, last_seq) VALUES ('L0', 'L1', :at, 1)",
            "INSERT INTO allergy (mrn, allergen_code, updated_at) VALUES ('L1', 'PEN', :at)",
            "INSERT INTO encounter (visit_number, mrn, updated_at) VALUES ('VL', 'L1', :at)",
            "INSERT INTO patient_merge (old_mrn, new_mrn, merged_at, message_id, updated_at)"
            " VALUES ('L0', 'L1', :at, 1, :at)",
        ],
        "pm": [
            "INSERT INTO registration (mrn, family_name, updated_at, last_seq) VALUES ('L1', 'Legacy', :at, 1)",
            "INSERT INTO registration (mrn, merged_into, updated_at, last_seq) VALUES ('L0', 'L1', :at, 1)",
            "INSERT INTO coverage (mrn, payer_id, member_id, updated_at) VALUES ('L1', 'PAY', 'M-1', :at)",
            "INSERT INTO visit (visit_number, mrn, updated_at) VALUES ('VL', 'L1', :at)",
            "INSERT INTO pm_patient_merge (old_mrn, new_mrn, merged_at, message_id, updated_at)"
            " VALUES ('L0', 'L1', :at, 1, :at)",
        ],
    }
    for kind, identity in (("clinical", "patient"), ("pm", "registration")):
        s = RecordStore(db_url, kind)
        try:
            migrate.upgrade(db_url, kind, engine=s.engine, revision=f"{kind}_0003")
            with s.engine.begin() as conn:
                for sql in legacy[kind]:
                    conn.execute(text(sql).bindparams(at), {"at": now})
            s.upgrade()
            s.check_schema()
            by = {r["mrn"]: r for r in s.rows(identity)}
            assert {m: (r["mrn_issuer"], r["merged_into_issuer"], r["merged_into"]) for m, r in by.items()} == {
                "L1": ("", None, None),
                "L0": ("", "", "L1"),
            }
            assert by["L1"]["family_name"] == "Legacy"
            for table in ("allergy", "encounter") if kind == "clinical" else ("coverage", "visit"):
                assert rows(s, table, "mrn_issuer", "mrn") == [("", "L1")], table
            audit = rows(s, "patient_merge", "old_mrn_issuer", "old_mrn", "new_mrn_issuer", "new_mrn")
            assert audit == [("", "L0", "", "L1")]
            # an update naming the legacy merged-away patient (no issuer) lands on its survivor
            values = {"mrn": "L0", "mrn_issuer": "", "city": "Bend"}
            update = Record(f"{kind}.{identity}", ("mrn", "mrn_issuer"), values)
            assert s.apply_batch([(2, [update])]) == [None]
            assert [(r["mrn"], r["city"]) for r in s.rows(identity, city="Bend")] == [("L1", "Bend")]
        finally:
            s.dispose()


# -- the identifier expression, through load_mapping ----------------------------------------------
SPEC = """\
records:
  - target: clinical.patient
    key: [mrn, mrn_issuer]
    fields:
      mrn: {identifier: PID-3, types: [MR, PI], untyped: UNTYPED, default_issuer: {literal: NORTH}}
      mrn_issuer: {identifier: PID-3, types: [MR, PI], untyped: UNTYPED, default_issuer: {literal: NORTH}, part: issuer}
"""


@pytest.mark.parametrize(
    "pid3, untyped, chosen",
    [
        ("X1^^^A^PI~X2^^^B^MR~X3^^^C^MR", False, ("B", "X2")),  # the first of the best-ranked type
        ("999-00-0001^^^SSA^SS~X4^^^&2.16.840.1.113883.19.5&ISO^PI", False, ("2.16.840.1.113883.19.5", "X4")),
        ("^^^A^MR~X5^^^^PI", False, ("NORTH", "X5")),  # an MR without a value is no identifier
        ("X6^^^A~X7^^^B^SS", True, ("A", "X6")),  # untyped: only when told
        ("X8^^^A~X9^^^B^PI", True, ("B", "X9")),  # ... and after every listed type
        ("X6^^^A~X7^^^B^SS", False, None),
        ('""', False, None),
    ],
)
def test_the_identifier_expression_takes_the_best_typed_repetition_and_its_issuer_never_a_guess(
    tmp_path, pid3, untyped, chosen
):
    path = tmp_path / "ids.yaml"
    path.write_text(SPEC.replace("UNTYPED", str(untyped).lower()))
    mapping = load_mapping(path, tables_dir=ROOT / "mappings" / "tables")
    msg = Message(f"MSH|^~\\&|S|F|R|H|20260301||ADT^A08|1|P|2.5.1\rPID|1||{pid3}||DOE^JO\r")
    if chosen is None:
        with pytest.raises(MappingError, match="no identifier of type MR/PI") as info:
            mapping.run(msg)
        assert "X6" not in str(info.value) and "X7" not in str(info.value)
        return
    [record] = mapping.run(msg)
    assert (record.values["mrn_issuer"], record.values["mrn"]) == chosen


# -- engine check ---------------------------------------------------------------------------------
def test_check_names_each_faulty_identifier_spec_and_ordering_key_with_file_and_line(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "tables").symlink_to(ROOT / "mappings" / "tables")
    (mappings / "ids.yaml").write_text(
        textwrap.dedent("""\
        records:
          - target: clinical.patient
            key: [mrn, mrn_issuer]
            fields:
              mrn: {identifier: PID-3.1}
              mrn_issuer: {identifier: PID-3, types: MR, part: issuer}
              family_name: {identifier: PID-3, part: authority}
              given_name: {identifier: PID-3, untyped: sometimes}
              middle_name: {identifier: PID-3, default_issuer: MSH-4..1, fallback: first}
          - target: clinical.encounter
            key: [visit_number]
            fields: {visit_number: PV1-19.1, mrn: {identifier: PID-3}}
        """)
    )
    cfg = config_file(
        tmp_path,
        textwrap.dedent(f"""\
        stores:
          messages: {{url: "sqlite:///{tmp_path}/m.db"}}
          clinical: {{url: "sqlite:///{tmp_path}/c.db"}}
        mappings_dir: {mappings}
        channels:
          - name: one
            source: {{type: mllp, port: 7021}}
            ordering_key:
              identifier: PID-3
              types: []
              colour: blue
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: ids}}
          - name: two
            source: {{type: mllp, port: 7022}}
            ordering_key:
              identifier: PID-3.1
              default_issuer: NORTH
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: ids}}
        """),
    )
    out = engine_check(cfg)
    assert out.returncode == 2
    ids = mappings / "ids.yaml"
    expected = [
        f"{cfg}:10: channels[0].ordering_key.types: List should have at least 1 item",
        f"{cfg}:11: channels[0].ordering_key.colour: unknown key",
        f"{cfg}:17: channels[1].ordering_key.identifier: identifier takes a field without repetition or component",
        f"{cfg}:18: channels[1].ordering_key.default_issuer: malformed HL7 path",
        f"{ids}:5: records[0].fields.mrn.identifier: identifier takes a field without repetition or component",
        f"{ids}:6: records[0].fields.mrn_issuer.types: types takes a non-empty list",
        f"{ids}:7: records[0].fields.family_name.part: part must be value (CX-1) or issuer",
        f"{ids}:8: records[0].fields.given_name.untyped: untyped takes true or false",
        f"{ids}:9: records[0].fields.middle_name.default_issuer: malformed HL7 path",
        f"{ids}:9: records[0].fields.middle_name.fallback: unknown key 'fallback'",
        f"{ids}:12: records[1].fields: mrn and mrn_issuer go together",
    ]
    for line in expected:
        assert line in out.stderr, f"{line}\n--- got:\n{out.stderr}"
    assert "(a fixed issuer is written {literal: ...})" in out.stderr
