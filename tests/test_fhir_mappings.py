"""FHIR R4 resources in the mapping language: FHIRPath paths, for_each over nodes, identity,
dates with offsets, the unmapped-data report, ``engine try``/``engine test`` on JSON.

The mappings' own cases are in ``mappings/fhir_*_test.yaml`` (run by ``engine test mappings``
and tests/test_mappings.py); here: what those cannot show (compile errors, validity of the
test messages, the reader's contracts).
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class

from engine.errors import ConfigError, MappingError, ParseError
from engine.formats import parse_text
from engine.formats.fhir import FhirMessage, compile_path
from engine.transforms.mapping import load_mapping
from engine.transforms.report import RunReport, unmapped
from engine.transforms.testing import discover, run_all, try_mapping
from engine.transforms.values import ValueProblem, to_date, to_datetime, zone

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"
FHIR_CASES = [c for c in discover(MAPPINGS) if yaml.safe_load(c.mapping_path.read_text()).get("format") == "fhir"]

PATIENT = {
    "resourceType": "Patient",
    "identifier": [
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999550101"},
        {"type": {"coding": [{"code": "MR"}]}, "system": "urn:oid:1.2.3", "value": "MRN1"},
    ],
    "name": [{"family": "Quillfeather", "given": ["Rosalind", "June"]}],
    "birthDate": "1977-02-03",
}


def _mapping(tmp_path: Path, text: str, name: str = "m"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_mapping(path)


def _bundle(*resources: dict) -> FhirMessage:
    entries = [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": r} for i, r in enumerate(resources)
    ]
    return FhirMessage({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# -- the test messages are FHIR ----------------------------------------------------------------
@pytest.mark.parametrize("case", FHIR_CASES, ids=lambda c: c.id)
def test_every_fhir_test_message_is_a_valid_r4b_resource(case):
    # fhir.resources ships R4B (4.3) and R5, not R4 (4.0.1). For what these mappings read
    # (Patient, Observation, Bundle, Identifier, HumanName, Address, ContactPoint, Quantity,
    # CodeableConcept, Reference) R4B changed nothing but the version; R4B's Observation adds
    # no element these messages use. A message valid here is valid R4 for these resources.
    data = json.loads(case.message)
    model = get_fhir_model_class(data["resourceType"])
    assert model.model_validate(data).get_resource_type() == data["resourceType"]


def test_there_are_fhir_cases_for_every_fhir_mapping():
    names = {c.mapping_path.name for c in FHIR_CASES}
    fhir = {p.name for p in MAPPINGS.glob("*.yaml") if yaml.safe_load(p.read_text()).get("format") == "fhir"}
    assert names == fhir and {"fhir_patient_clinical.yaml", "fhir_observation_clinical.yaml"} <= names


def test_engine_test_mappings_passes_every_case_hl7_x12_and_fhir():
    passed, report = run_all(MAPPINGS)
    assert passed, report
    assert "fhir_patient_clinical_test.yaml" in report and "remit835_pm_test.yaml" in report


# -- compiling --------------------------------------------------------------------------------
def test_a_bad_fhirpath_is_a_problem_with_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        _mapping(
            tmp_path,
            """\
            format: fhir
            applies_when: {path: "resourceType = ", equals: Patient}
            records:
              - target: clinical.patient
                for_each: "entry.resource.ofType(Patient"
                key: [mrn]
                fields:
                  mrn: Patient.identifier.where(system = 'x').value
                  family_name: Patient.name..family
                  given_name: Patient.name.given.frist()
                  city: "%patient.address.city"
                  state: {pick: Patient.address, component: 1}
            """,
        )
    problems = {p.key: p for p in info.value.problems}
    assert problems["applies_when.path"].line == 2
    assert problems["records[0].for_each"].line == 5 and "malformed FHIRPath" in problems["records[0].for_each"].message
    assert problems["records[0].fields.family_name"].line == 9
    assert "column" in problems["records[0].fields.family_name"].message
    assert "unknown function frist()" in problems["records[0].fields.given_name"].message
    assert "unknown %patient" in problems["records[0].fields.city"].message
    assert "reads HL7 v2 and X12 fields" in problems["records[0].fields.state.pick"].message
    assert "records[0].fields.mrn" not in problems
    assert all(p.file.endswith("m.yaml") for p in info.value.problems)


def test_a_path_is_compiled_once_per_text():
    assert compile_path("Patient.name.family") is compile_path("Patient.name.family")
    assert compile_path("Patient.name\n  .family").text == "Patient.name .family"


# -- reading ----------------------------------------------------------------------------------
def test_for_each_walks_a_bundles_entries_and_a_path_reads_the_current_one(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        records:
          - target: clinical.patient
            for_each: entry.resource.ofType(Patient)
            key: [mrn, mrn_issuer]
            fields:
              mrn: identifier.value.first()
              mrn_issuer: identifier.system.first()
              family_name: name.family
              city: "%resource.type"
        """,
    )
    other = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "2"}], "name": [{"family": "B"}]}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    records = m.run(_bundle({**PATIENT, "identifier": [{"system": "urn:x", "value": "1"}]}, obs, other))
    assert [(r.values["mrn"], r.values["family_name"], r.values["city"]) for r in records] == [
        ("1", "Quillfeather", "transaction"),
        ("2", "B", "transaction"),
    ]


def test_nested_for_each_reads_the_innermost_node_then_parent_and_owner(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        records:
          - target: clinical.observation
            for_each: [entry.resource.ofType(Observation), component]
            key: [filler_order_number, seq]
            fields:
              filler_order_number: "%parent.id"
              seq: {ordinal: component}
              code: code.text
              value_numeric: {number: value.ofType(Quantity).value}
              status: "%owner.status"
        """,
    )
    bp = {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": {"text": "BP"},
        "component": [
            {"code": {"text": "sys"}, "valueQuantity": {"value": 120.5}},
            {"code": {"text": "dia"}, "valueQuantity": {"value": 80}},
        ],
    }
    other = {**bp, "id": "bp2", "component": [{"code": {"text": "sys"}, "valueQuantity": {"value": 110}}]}
    got = [
        (r.values["filler_order_number"], r.values["seq"], r.values["code"], r.values["value_numeric"])
        for r in m.run(_bundle(bp, other))
    ]
    assert got == [("bp", 1, "sys", 120.5), ("bp", 2, "dia", 80.0), ("bp2", 1, "sys", 110.0)]


def test_values_are_text_decimals_exact_booleans_true_false():
    msg = FhirMessage.from_text(
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        ' "valueQuantity": {"value": 5.40}, "component": [{"code": {"text": "y"}, "valueBoolean": false}]}'
    )
    assert msg.values(compile_path("valueQuantity.value")) == ["5.40"]
    assert msg.values(compile_path("component.value.ofType(boolean)")) == ["false"]
    assert msg.values(compile_path("component.exists()")) == ["true"]


def test_a_complex_element_is_an_error_in_a_field_and_present_in_a_condition(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        applies_when: {path: Patient.name, exists: true}
        records:
          - target: clinical.patient
            key: [mrn]
            fields:
              mrn: identifier.value.first()
              family_name: Patient.name
        """,
    )
    msg = FhirMessage(PATIENT)
    assert m.applies(msg)
    with pytest.raises(MappingError) as info:
        m.run(msg)
    assert "selects an element with parts" in str(info.value) and info.value.field == "family_name"
    assert "Quillfeather" not in str(info.value)


def test_a_path_that_cannot_be_evaluated_fails_the_record_naming_the_path_never_a_value(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        records:
          - target: clinical.patient
            key: [mrn]
            fields: {mrn: "identifier.value.first() + 1"}
        """,
    )
    with pytest.raises(MappingError) as info:
        m.run(FhirMessage(PATIENT))
    assert "identifier.value.first() + 1 could not be evaluated" in str(info.value)
    assert "MRN1" not in str(info.value) and "999550101" not in str(info.value)


def test_an_hl7_mapping_never_runs_on_a_fhir_resource_nor_back():
    adt = load_mapping(MAPPINGS / "adt_clinical.yaml")
    patient = load_mapping(MAPPINGS / "fhir_patient_clinical.yaml")
    assert not adt.applies(FhirMessage(PATIENT))
    assert patient.applies(FhirMessage(PATIENT))
    hl7 = parse_text("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||X^^^Y^MR\r")
    assert not patient.applies(hl7)


# -- identity ---------------------------------------------------------------------------------
def test_identity_is_the_mr_identifier_else_the_first_with_a_system():
    m = load_mapping(MAPPINGS / "fhir_patient_clinical.yaml")
    [r] = m.run(FhirMessage(PATIENT))
    assert (r.values["mrn"], r.values["mrn_issuer"]) == ("MRN1", "urn:oid:1.2.3")  # not the SSN listed first
    first = {
        **PATIENT,
        "identifier": [{"value": "LOCAL"}, {"system": "urn:a", "value": "A1"}, {"system": "urn:b", "value": "B1"}],
    }
    [r] = m.run(FhirMessage(first))
    assert (r.values["mrn"], r.values["mrn_issuer"]) == ("A1", "urn:a")


def test_an_identifier_without_a_system_fails_with_the_reason():
    m = load_mapping(MAPPINGS / "fhir_patient_clinical.yaml")
    no_system = {**PATIENT, "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN1"}]}
    with pytest.raises(MappingError) as info:
        m.run(FhirMessage(no_system))
    assert info.value.field == "mrn_issuer" and "has no system" in str(info.value) and "MRN1" not in str(info.value)


def test_an_observation_whose_subject_names_no_patient_fails_with_the_reason():
    m = load_mapping(MAPPINGS / "fhir_observation_clinical.yaml")
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/9"},
    }
    with pytest.raises(MappingError) as err:  # the request gets 422; a transaction holding it applies nothing
        m.run(FhirMessage(obs), RunReport())
    assert str(err.value).startswith("clinical.observation.mrn: the subject names no patient")


# -- dates ------------------------------------------------------------------------------------
def test_fhir_dates_and_instants_with_offsets():
    ny = zone("America/New_York")
    assert to_date("2024-03-14", fhir=True) == date(2024, 3, 14)
    assert to_date("2024-03-14T23:30:00-05:00", fhir=True) == date(2024, 3, 14)  # the date as written
    assert to_datetime("2024-03-14T09:30:00-05:00", ny, fhir=True) == datetime(2024, 3, 14, 14, 30, tzinfo=UTC)
    assert to_datetime("2024-03-14T09:30:00.123Z", ny, fhir=True) == datetime(2024, 3, 14, 9, 30, 0, 123000, tzinfo=UTC)
    # no offset: the zone
    assert to_datetime("2024-03-14T09:30:00", ny, fhir=True) == datetime(2024, 3, 14, 13, 30, tzinfo=UTC)
    for bad in ("2024-02-30", "20240314", "2024-03-14T09:30:00+15:00", "2024-3-14"):
        with pytest.raises(ValueProblem) as info:
            to_datetime(bad, ny, fhir=True)
        assert bad not in str(info.value) and "FHIR" in str(info.value)
    with pytest.raises(ValueProblem):  # an HL7 mapping keeps reading HL7 dates only
        to_date("2024-03-14")


def test_a_date_without_a_time_is_no_instant_in_a_fhir_mapping(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        timezone: America/Chicago
        records:
          - target: clinical.patient
            key: [mrn]
            fields:
              mrn: identifier.value.first()
              deceased_at: {datetime: deceased.ofType(dateTime)}
              deceased_date: {date: deceased.ofType(dateTime)}
        """,
    )
    [r] = m.run(FhirMessage({**PATIENT, "deceasedDateTime": "2024-03-14"}))
    assert r.values["deceased_date"] == date(2024, 3, 14) and "deceased_at" not in r.values
    [r] = m.run(FhirMessage({**PATIENT, "deceasedDateTime": "2024-03-14T23:30:00"}))  # read in the mapping's zone
    assert r.values["deceased_at"] == datetime(2024, 3, 15, 4, 30, tzinfo=UTC)


# -- the unmapped-data report ------------------------------------------------------------------
def test_unmapped_names_populated_leaves_no_path_read():
    m = load_mapping(MAPPINGS / "fhir_patient_clinical.yaml")
    extra = {**PATIENT, "id": "p1", "active": True, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    msg = FhirMessage(extra)
    report = RunReport()
    m.run(msg, report)
    assert unmapped(msg, [report]) == ["Patient.active"]  # meta is never reported; the id is read (fhir_id)
    assert "Patient.name.family" in report.read and "Patient.identifier.type.coding.code" in report.read


def test_a_where_reads_the_members_it_tests_and_a_choice_covers_its_typed_names():
    msg = FhirMessage(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-03-14"}
    )
    reads = msg.reads(compile_path("Observation.code.where(text = 'x').coding.code"))
    assert reads == {"Observation.code.text", "Observation.code.coding.code"}
    assert "Observation.effectiveDateTime" not in msg.unmapped({"Observation.effective"})
    assert msg.unmapped(set()) == ["Observation.status", "Observation.code.text", "Observation.effectiveDateTime"]


def test_the_bundle_envelope_is_not_reported():
    msg = _bundle({"resourceType": "Patient", "gender": "female"})
    assert msg.populated() == ["Patient.gender"]


# -- text in, text out ------------------------------------------------------------------------
def test_parse_text_reads_json_as_a_fhir_resource():
    assert parse_text('  {"resourceType": "Patient"}').format == "fhir"
    with pytest.raises(ParseError):
        parse_text('{"resourceType": "Patient",')
    with pytest.raises(ParseError):
        parse_text('{"name": "no resource type"}')


def test_engine_try_prints_the_records_and_what_was_left_unmapped(tmp_path):
    path = tmp_path / "patient.json"
    path.write_text(json.dumps({**PATIENT, "id": "p1", "gender": "female", "active": True}))
    out = try_mapping(MAPPINGS / "fhir_patient_clinical.yaml", path)
    assert "message 1: Patient id p1" in out
    assert "mrn                 = MRN1" in out and "sex                 = female" in out
    assert "unmapped (1): Patient.active" in out
