"""What real feeds carry is stored where it stands and as what it is (issue 7).

Messages go over MLLP into a real ``engine run``; the rows are read back through the stores.
Fixtures: ``tests/fixtures/hl7v2/structure/`` (README.md there says what each one exercises).
The lab channel reads a Central-time lab's clock by its sending facility (``timezones``); the
mappings' own zone (America/Los_Angeles) stays the default for everyone else.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, date, datetime

import pytest
from conftest import EngineProcess, MllpConnection, ack_fields, config_file, engine_check, fixture_bytes

from engine.stores.records_store import RecordStore

CONFIG = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: lab-results
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    timezones: {PRAIRIE_LAB: America/Chicago}     # a reference lab in Wichita, KS
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: oru_clinical}
  - name: adt
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
      - {name: pm, type: store, store: pm, mapping: adt_pm}
"""
LAB = ("oru_r01_elr_central.hl7", "oru_r01_v23_types.hl7", "oru_r01_v28_micro.hl7")
ADT = ("adt_a01_details.hl7", "adt_a04_v23_dates.hl7")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def send(eng: EngineProcess, port: int, *messages: bytes) -> None:
    """Send each message, expect AA, and wait until the engine has processed it (SENT)."""
    conn = MllpConnection(port)
    try:
        ids = [ack_fields(conn.send(m))["MSA"] for m in messages]
    finally:
        conn.close()
    assert [a[1] for a in ids] == ["AA"] * len(messages), ids
    eng.wait_for(
        "messages",
        "select count(*) as n from messages where status = 'SENT' and control_id in ({})".format(
            ", ".join(f"'{a[2]}'" for a in ids)
        ),
        lambda r: r[0]["n"] == len(ids),
    )


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("structure")
    proc = EngineProcess(tmp, config=config_file(tmp, CONFIG)).start()
    send(proc, proc.lab_port, *(fixture_bytes(f"structure/{f}") for f in LAB))
    send(proc, proc.adt_port, *(fixture_bytes(f"structure/{f}") for f in ADT))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def clinical(eng):
    store = RecordStore(f"sqlite:///{eng.data}/clinical.db", "clinical")
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def pm(eng):
    store = RecordStore(f"sqlite:///{eng.data}/pm.db", "pm")
    yield store
    store.dispose()


def pick(row: dict, *columns: str) -> dict:
    return {c: row[c] for c in columns}


def observations(store: RecordStore, filler: str) -> dict[tuple, dict]:
    """{(report code, report occurrence, specimen_seq, seq): row} of one filler order."""
    return {
        (r["report_code"], r["report_occurrence"], r["specimen_seq"], r["seq"]): r
        for r in store.rows("observation", filler_order_number=filler)
    }


VALUE = (
    "value_type",
    "value_numeric",
    "value_comparator",
    "value_separator",
    "value_numeric2",
    "value_string",
    "value_code",
    "value_code_text",
    "value_code_system",
    "value_date",
    "value_datetime",
    "value_id",
    "value_issuer",
    "value_reference",
    "value_data_type",
    "value_data_subtype",
)


def value(row: dict) -> dict:
    """The value columns that are set, and every repetition as the JSON list holds it."""
    out = {c: row[c] for c in VALUE if row[c] is not None}
    out["list"] = json.loads(row["value_list"])
    return out


# -- keys follow the message structure ---------------------------------------------------------------
def test_an_obx_under_spm_and_an_obx_under_the_obr_with_the_same_set_id_are_two_rows_each_its_own(clinical):
    rows = observations(clinical, "PLAB-7781")
    result, specimen = rows[("94500-6", 1, 0, 1)], rows[("94500-6", 1, 1, 1)]
    assert (result["set_id"], specimen["set_id"]) == ("1", "1")
    assert pick(result, "kind", "code", "code_text", "units", "abnormal_flag", "status") == {
        "kind": "result",
        "code": "94500-6",
        "code_text": "SARS-CoV-2 RNA Resp Ql NAA+probe",
        "units": None,
        "abnormal_flag": "abnormal",  # from A^Abnormal^HL70078^^^^2.7: the code, through the table
        "status": "final",
    }
    assert value(result) == {
        "value_type": "CWE",
        "value_code": "260373001",
        "value_code_text": "Detected",
        "value_code_system": "SCT",
        "list": [{"code": "260373001", "system": "SCT", "text": "Detected"}],
    }
    assert pick(specimen, "kind", "code", "code_text", "units", "abnormal_flag", "status") == {
        "kind": "specimen",
        "code": "35659-2",
        "code_text": "Age at specimen collection",
        "units": "a",
        "abnormal_flag": None,
        "status": "final",
    }
    assert value(specimen) == {"value_type": "SN", "value_numeric": 41.0, "list": [{"number": 41}]}
    assert (result["mrn"], specimen["mrn"]) == ("MRN810001", "MRN810001")


def test_ask_at_order_answers_are_kept_as_order_answers_never_as_results(clinical):
    rows = observations(clinical, "PLAB-7781")
    first, onset = rows[("94500-6", 1, 0, 2)], rows[("94500-6", 1, 0, 3)]
    assert pick(first, "kind", "code", "set_id") == {"kind": "order-answer", "code": "95417-2", "set_id": "2"}
    assert value(first) == {
        "value_type": "CWE",
        "value_code": "N",
        "value_code_text": "No",
        "value_code_system": "HL70136",
        "list": [{"code": "N", "system": "HL70136", "text": "No"}],
    }
    assert pick(onset, "kind", "code") == {"kind": "order-answer", "code": "65222-2"}
    assert value(onset) == {"value_type": "DT", "value_date": date(2024, 3, 5), "list": ["2024-03-05"]}
    results = [r for r in clinical.rows("observation", filler_order_number="PLAB-7781") if r["kind"] == "result"]
    assert sorted((r["report_code"], r["code"]) for r in results) == [("92142-9", "92142-9"), ("94500-6", "94500-6")]


def test_two_tests_of_one_order_and_one_test_sent_twice_are_separate_reports_with_their_own_results(clinical):
    reports = {
        (r["code"], r["occurrence"]): r for r in clinical.rows("diagnostic_report", filler_order_number="PLAB-7781")
    }
    assert set(reports) == {("94500-6", 1), ("92142-9", 1)}
    flu = observations(clinical, "PLAB-7781")[("92142-9", 1, 0, 1)]
    assert (flu["value_code_text"], flu["abnormal_flag"]) == ("Not detected", "normal")

    micro = {
        (r["code"], r["occurrence"]): r for r in clinical.rows("diagnostic_report", filler_order_number="MIC810003")
    }
    assert set(micro) == {("600-7", 1), ("29576-6", 1), ("29576-6", 2)}  # a susceptibility panel per organism
    rows = observations(clinical, "MIC810003")
    panels = {k: value(r) for k, r in rows.items() if k[0] == "29576-6"}
    assert panels == {
        ("29576-6", 1, 0, 1): {
            "value_type": "SN",
            "value_comparator": "<=",
            "value_numeric": 1.0,
            "list": [{"comparator": "<=", "number": 1}],
        },
        ("29576-6", 2, 0, 1): {
            "value_type": "SN",
            "value_comparator": ">=",
            "value_numeric": 32.0,
            "list": [{"comparator": ">=", "number": 32}],
        },
    }
    assert (rows[("29576-6", 1, 0, 1)]["abnormal_flag"], rows[("29576-6", 2, 0, 1)]["abnormal_flag"]) == (
        "susceptible",
        "resistant",
    )


# -- every value decoded and typed -------------------------------------------------------------------
def test_every_obx_value_type_is_stored_typed_in_its_own_columns(clinical):
    v23 = {k[3]: value(r) for k, r in observations(clinical, "LAB810002").items()}
    assert v23 == {
        1: {"value_type": "NM", "value_numeric": 27.0, "list": [27, 25]},  # 27~25: both kept
        2: {
            "value_type": "SN",
            "value_comparator": "=",
            "value_numeric": 1.0,
            "value_separator": ":",
            "value_numeric2": 640.0,
            "list": [{"comparator": "=", "number": 1, "number2": 640, "separator": ":"}],
        },
        3: {  # CE sent with its alternate triple only
            "value_type": "CE",
            "value_code": "OPOS",
            "value_code_text": "O Rh(D) positive",
            "value_code_system": "L",
            "list": [{"code": "OPOS", "system": "L", "text": "O Rh(D) positive"}],
        },
        4: {
            "value_type": "TX",
            "value_string": "Hemolysis noted.\nRepeat collection advised.",
            "list": ["Hemolysis noted.", "Repeat collection advised."],
        },
        5: {
            "value_type": "FT",
            "value_string": "GROSS: Two fragments.\nMICRO: Benign.",
            "list": ["GROSS: Two fragments.\nMICRO: Benign."],
        },
        6: {  # the hospital lab's own clock: Pacific (PDT), the mapping's zone
            "value_type": "TS",
            "value_date": date(2024, 3, 15),
            "value_datetime": utc(2024, 3, 15, 13, 30),
            "list": ["2024-03-15T13:30:00Z"],
        },
        7: {"value_type": "DT", "value_date": date(2024, 9, 1), "list": ["2024-09-01"]},
        8: {"value_type": "ST", "value_string": "Ratio 3^1 as ordered", "list": ["Ratio 3^1 as ordered"]},
    }
    v28 = {k[3]: value(r) for k, r in observations(clinical, "MIC810003").items() if k[0] == "600-7"}
    assert v28 == {
        1: {
            "value_type": "CWE",
            "value_code": "3092008",
            "value_code_text": "Staphylococcus aureus",
            "value_code_system": "SCT",
            "list": [
                {"code": "3092008", "system": "SCT", "text": "Staphylococcus aureus"},
                {"code": "112283007", "system": "SCT", "text": "Escherichia coli"},
            ],
        },
        2: {
            "value_type": "CX",
            "value_id": "BC-55102",
            "value_issuer": "SUNLAB",
            "list": [{"id": "BC-55102", "issuer": "SUNLAB", "type": "SID"}],
        },
        3: {
            "value_type": "RP",
            "value_reference": "reports/MIC810003.pdf",
            "value_data_type": "AP",
            "value_data_subtype": "PDF",
            "list": [
                {
                    "application": "SUNLAB_DOCS",
                    "data_type": "AP",
                    "reference": "reports/MIC810003.pdf",
                    "subtype": "PDF",
                }
            ],
        },
        4: {  # the document itself (ED-5) is never copied into the store
            "value_type": "ED",
            "value_data_type": "AP",
            "value_data_subtype": "PDF",
            "list": [{"application": "SUNLAB", "data_type": "AP", "encoding": "Base64", "subtype": "PDF"}],
        },
        5: {
            "value_type": "DTM",
            "value_date": date(2024, 3, 17),
            "value_datetime": utc(2024, 3, 17, 21, 30),
            "list": ["2024-03-17T21:30:00Z"],
        },
    }
    assert "JVBERi0" not in json.dumps([r["value_list"] for r in clinical.rows("observation")])


def test_a_row_rewritten_with_a_value_of_another_type_keeps_nothing_of_the_old_value(eng, clinical):
    head = (
        "MSH|^~\\&|SUNLAB|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240320080000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
        "PID|1||MRN810004^^^SUNRISE_GH^MR||ANSEL^MARIT||19900101|F\r"
        "OBR|1|ORD810004|LAB810004|2823-3^Potassium^LN|||20240320070000|||||||||||||||20240320075500|||{status}\r"
    )
    first = head.format(cid="SL-R01-2501", status="P") + "OBX|1|NM|2823-3^Potassium^LN||6.8|mmol/L|3.5-5.1|HH|||P\r"
    fixed = (
        head.format(cid="SL-R01-2502", status="C") + "OBX|1|ST|2823-3^Potassium^LN||Hemolyzed, not reportable||||||C\r"
    )
    send(eng, eng.lab_port, first.encode(), fixed.encode())
    [row] = clinical.rows("observation", filler_order_number="LAB810004")
    assert value(row) == {
        "value_type": "ST",
        "value_string": "Hemolyzed, not reportable",
        "list": ["Hemolyzed, not reportable"],
    }
    assert (row["seq"], row["status"]) == (1, "corrected")


# -- time zones per sending facility; dates stay dates ---------------------------------------------------
def test_a_central_time_labs_times_are_right_in_utc_by_its_sending_facilitys_zone(clinical):
    report = clinical.rows("diagnostic_report", filler_order_number="PLAB-7781", code="94500-6")[0]
    assert pick(report, "observed_at", "issued_at", "specimen_collected_at", "specimen_received_at") == {
        "observed_at": utc(2024, 3, 12, 13, 30),  # 08:30 CDT; Pacific would have made it 15:30
        "issued_at": utc(2024, 3, 12, 15, 15),  # sent with -0500: its own offset
        "specimen_collected_at": utc(2024, 3, 12, 13, 15),
        "specimen_received_at": utc(2024, 3, 12, 15, 10),
    }
    rows = observations(clinical, "PLAB-7781")
    assert rows[("94500-6", 1, 0, 1)]["effective_at"] == utc(2024, 3, 12, 13, 30)
    assert rows[("94500-6", 1, 1, 1)]["effective_at"] == utc(2024, 3, 12, 13, 15)
    # the hospital's own lab on the same channel keeps the mapping's zone (Pacific)
    [hospital] = clinical.rows("diagnostic_report", filler_order_number="LAB810002")
    assert hospital["observed_at"] == utc(2024, 3, 15, 13, 30)


def test_date_only_values_stay_dates_and_never_become_local_midnight(clinical, pm):
    onset = observations(clinical, "PLAB-7781")[("94500-6", 1, 0, 3)]  # OBX-14 20240312
    assert pick(onset, "effective_at", "effective_date") == {"effective_at": None, "effective_date": date(2024, 3, 12)}
    report = clinical.rows("diagnostic_report", filler_order_number="PLAB-7781", code="94500-6")[0]
    assert pick(report, "observed_date", "specimen_collected_date") == {
        "observed_date": date(2024, 3, 12),
        "specimen_collected_date": date(2024, 3, 12),
    }
    [patient] = clinical.rows("patient", mrn="MRN810011")  # v2.3: PID-29 20240319, PID-30 Y
    assert pick(patient, "deceased", "deceased_at", "deceased_date") == {
        "deceased": True,
        "deceased_at": None,
        "deceased_date": date(2024, 3, 19),
    }
    [encounter] = clinical.rows("encounter", visit_number="V240319-0011")  # PV1-44 20240319
    assert pick(encounter, "admit_at", "admit_date") == {"admit_at": None, "admit_date": date(2024, 3, 19)}
    [visit] = pm.rows("visit", visit_number="V240319-0011")
    assert pick(visit, "admit_at", "admit_date") == {"admit_at": None, "admit_date": date(2024, 3, 19)}


# -- item 8: what real feeds carry -------------------------------------------------------------------
def test_notes_ordering_provider_specimen_method_device_and_performing_lab_are_stored(clinical):
    report = clinical.rows("diagnostic_report", filler_order_number="PLAB-7781", code="94500-6")[0]
    assert pick(
        report,
        "notes",
        "ordering_provider",
        "ordering_provider_name",
        "specimen_id",
        "specimen_type_code",
        "specimen_type_text",
        "specimen_type_system",
    ) == {
        "notes": "Specimen received at ambient temperature.",  # the order's note, not its result's
        "ordering_provider": "1710000001",
        "ordering_provider_name": "OKONJO, ADAEZE",
        "specimen_id": "PLAB-7781-1",
        "specimen_type_code": "258500001",
        "specimen_type_text": "Nasopharyngeal swab",
        "specimen_type_system": "SCT",
    }
    result = observations(clinical, "PLAB-7781")[("94500-6", 1, 0, 1)]
    assert pick(
        result,
        "notes",
        "method_code",
        "method_text",
        "equipment_id",
        "performing_lab_id",
        "performing_lab_name",
        "performer",
    ) == {
        "notes": "Positive result called to the ordering provider.",
        "method_code": None,
        "method_text": "Cepheid Xpert Xpress SARS-CoV-2 (EUA)",  # OBX-17 sent with its original text only
        "equipment_id": "CPH-GX-0042",
        "performing_lab_id": "45D0000001",
        "performing_lab_name": "Prairie Regional Laboratory",
        "performer": None,
    }
    flu = clinical.rows("diagnostic_report", filler_order_number="PLAB-7781", code="92142-9")[0]
    assert (flu["notes"], flu["specimen_id"]) == (None, None)  # the other test's SPM is not lent to it
    [v23] = clinical.rows("diagnostic_report", filler_order_number="LAB810002")
    assert pick(v23, "specimen_type_code", "specimen_type_text", "specimen_type_system", "specimen_received_at") == {
        "specimen_type_code": "SER",  # v2.3: OBR-15
        "specimen_type_text": "Serum",
        "specimen_type_system": "HL70070",
        "specimen_received_at": utc(2024, 3, 15, 14, 10),
    }


DEMOGRAPHICS = (
    "name_prefix",
    "name_suffix",
    "race_code",
    "race_text",
    "race_system",
    "ethnicity_code",
    "ethnicity_text",
    "ethnicity_system",
    "marital_status_code",
    "marital_status_text",
    "marital_status_system",
    "address_line1",
    "address_line2",
)
VISIT = (
    "location_point_of_care",
    "location_room",
    "location_bed",
    "location_facility",
    "location_building",
    "admit_type",
    "attending",
    "attending_name",
    "referring",
    "referring_name",
    "admitting",
    "admitting_name",
    "admit_at",
    "admit_date",
)


def test_demographics_doctors_location_allergen_system_plan_type_and_in2_ids_are_stored(clinical, pm):
    expected = {
        "name_prefix": "DR",
        "name_suffix": "III",
        "race_code": "2054-5",
        "race_text": "Black or African American",
        "race_system": "CDCREC",
        "ethnicity_code": "N",
        "ethnicity_text": "Not Hispanic or Latino",
        "ethnicity_system": "HL70189",
        "marital_status_code": "M",
        "marital_status_text": "Married",
        "marital_status_system": "HL70002",
        "address_line1": "1000 Hospital Lane",  # sent as 1000&Hospital Lane (SAD sub-components)
        "address_line2": "Suite 5",
    }
    races = [
        {"code": "2054-5", "system": "CDCREC", "text": "Black or African American"},
        {"code": "2028-9", "system": "CDCREC", "text": "Asian"},
    ]
    aliases = [{"family": "COLE", "given": "WINNIE", "type": "A"}]
    [patient], [registration] = clinical.rows("patient", mrn="MRN810010"), pm.rows("registration", mrn="MRN810010")
    for row in (patient, registration):
        assert pick(row, *DEMOGRAPHICS) == expected
        assert (json.loads(row["races"]), json.loads(row["aliases"])) == (races, aliases)
    [v23] = clinical.rows("patient", mrn="MRN810011")  # v2.3: alias in PID-9; SAD street name and number
    assert (json.loads(v23["aliases"]), v23["address_line1"]) == (
        [{"family": "HALLORAN", "given": "PETER"}],
        "418 Juniper Hollow Rd",
    )

    visit = {
        "location_point_of_care": "4W",
        "location_room": "412",
        "location_bed": "B",
        "location_facility": "SUNRISE_GH",  # PL-4 is an HD: its namespace id
        "location_building": "EAST TOWER",
        "admit_type": "urgent",
        "attending": "4455667788",
        "attending_name": "ABARA, NNAMDI",
        "referring": "5566778899",
        "referring_name": "MORROW, TESSA",
        "admitting": "8899001122",
        "admitting_name": "OSEI, KWABENA",
        "admit_at": utc(2024, 3, 18, 14, 15),
        "admit_date": date(2024, 3, 18),
    }
    consulting = [
        {"family": "LINDQVIST", "given": "ANNA", "id": "6677889900"},
        {"family": "PATEL", "given": "RAVI", "id": "7788990011"},
    ]
    [encounter], [pm_visit] = (
        clinical.rows("encounter", visit_number="V240318-0010"),
        pm.rows("visit", visit_number="V240318-0010"),
    )
    for row in (encounter, pm_visit):
        assert pick(row, *VISIT) == visit
        assert json.loads(row["consulting"]) == consulting

    [allergy] = clinical.rows("allergy", mrn="MRN810010")
    assert pick(allergy, "allergen_code", "allergen_text", "allergen_system") == {
        "allergen_code": "7980",
        "allergen_text": "Penicillin G",
        "allergen_system": "RXNORM",
    }
    [coverage] = pm.rows("coverage", mrn="MRN810010")
    assert pick(
        coverage,
        "member_id",
        "plan_type",
        "plan_type_text",
        "insured_employee_id",
        "insured_ssn",
        "medicare_id",
        "medicaid_id",
    ) == {
        "member_id": "POL-810010",
        "plan_type": "HMO",  # never HMO^Health maintenance organization^HL70086
        "plan_type_text": "Health maintenance organization",
        "insured_employee_id": "EMP810010",
        "insured_ssn": "999-81-0010",
        "medicare_id": "1EG4TE5MK72",
        "medicaid_id": "OR-MCD-810010",
    }


# -- configuration ----------------------------------------------------------------------------------
def test_check_reports_a_channel_time_zone_that_is_no_iana_zone_with_file_line_and_key(tmp_path):
    cfg = config_file(
        tmp_path,
        textwrap.dedent(f"""\
        stores:
          messages: {{url: "sqlite:///{tmp_path}/m.db"}}
          clinical: {{url: "sqlite:///{tmp_path}/c.db"}}
        mappings_dir: MAPPINGS
        channels:
          - name: lab
            source: {{type: mllp, port: 7021}}
            timezone: Central
            timezones: {{PRAIRIE_LAB: America/Chicago, NORTH_LAB: US/Nowhere}}
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: oru_clinical}}
        """),
    )
    out = engine_check(cfg)
    assert out.returncode == 2
    assert f"{cfg}:8: channels[0].timezone: " in out.stderr and "unknown time zone 'Central'" in out.stderr
    assert f"{cfg}:9: channels[0].timezones: " in out.stderr and "'US/Nowhere'" in out.stderr
