"""HL7 v2 -> FHIR R4 as mappings: fhir.<ResourceType> targets, nested JSON (object, lists, each),
deterministic ids, and mappings/adt_fhir.yaml and oru_fhir.yaml over every ADT and ORU fixture.

Through the CLI (``engine try``, ``engine test mappings``) and the mapping API
(``load_mapping``, ``Mapping.run``, ``fhir_bundle.transaction``) as the ``fhir`` destination
calls it. The mappings' own cases are in ``mappings/*_fhir_test.yaml``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from engine.errors import ConfigError
from engine.formats import parse_text
from engine.formats.fhir_bundle import NAMESPACE, ROW_RESOURCES, resource_id, row_id, transaction
from engine.formats.hl7 import decode, split_batch
from engine.stores.clinical import SPEC as CLINICAL
from engine.stores.pm import SPEC as PM
from engine.transforms import load_mapping
from engine.transforms.fhir_out import binding_problems
from engine.transforms.report import RunReport, unmapped

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"
ADT = sorted(p for p in FIXTURES.rglob("*.hl7") if p.name.startswith("adt_") or p.name.endswith("_adt_a04_arrival.hl7"))
ORU = sorted(p for p in FIXTURES.rglob("*.hl7") if p.name.startswith("oru_") or p.name.endswith("_oru_r01_result.hl7"))
UNREADABLE = {"adt_a01_cp1252_undeclared.hl7", "adt_a01_declared_utf8_sent_latin1.hl7"}
"""Intake fixtures that are refused before any mapping runs (wrong charset): not converted."""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def messages(path: Path) -> list:
    return [parse_text(text) for text in split_batch(decode(path.read_bytes()))]


def convert(mapping, msg) -> tuple[dict, RunReport]:
    report = RunReport()
    return transaction(mapping.run(msg, report)), report


def resources(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


@pytest.fixture(scope="module")
def adt_fhir():
    return load_mapping(MAPPINGS / "adt_fhir.yaml", tables_dir=MAPPINGS / "tables")


@pytest.fixture(scope="module")
def oru_fhir():
    return load_mapping(MAPPINGS / "oru_fhir.yaml", tables_dir=MAPPINGS / "tables")


def _mapping(tmp_path: Path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return load_mapping(path, tables_dir=MAPPINGS / "tables")


# -- every fixture converts to a valid R4 Bundle ------------------------------------------------
@pytest.mark.parametrize(
    "fixture", [p for p in ADT + ORU if p.name not in UNREADABLE], ids=lambda p: str(p.relative_to(FIXTURES))
)
def test_every_adt_and_oru_fixture_converts_to_a_bundle_that_validates_as_r4(fixture, adt_fhir, oru_fhir):
    mapping = adt_fhir if fixture in ADT else oru_fhir
    converted = 0
    for msg in messages(fixture):
        assert mapping.applies(msg), fixture
        bundle, _report = convert(mapping, msg)
        Bundle.model_validate(bundle)  # fhir.resources.R4B: R4's resources and elements
        assert binding_problems(bundle) == []  # the codes of required bindings, which R4B leaves
        for entry in bundle["entry"]:
            res = entry["resource"]
            get_fhir_model_class(res["resourceType"]).model_validate(res)
            assert entry["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}
        types = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert types[:2] == ["MessageHeader", "Patient"]
        converted += 1
    assert converted


def test_the_unreadable_intake_fixtures_are_refused_before_any_mapping():
    for name in UNREADABLE:
        (path,) = FIXTURES.rglob(name)
        with pytest.raises(Exception, match="not valid"):
            messages(path)


# -- ids ----------------------------------------------------------------------------------------
def test_resource_ids_are_the_version_5_uuids_of_type_and_key_as_ever():
    """resource_id formats the SHA-1 itself: the ids it gives are uuid5's, for any key text,
    and the ones already given never change."""
    keys = [
        ("Patient", "NCH", "100001"),
        ("Observation", "FO1", "2345-7", 1, 0, 3),
        ("Condition", "diagnosis", "V1", None),
        ("Patient", "Ünïcødé ✓", "a\x1fb", ""),
        ("Encounter",),
    ]
    for key in keys:
        text = "\x1f".join("" if k is None else str(k) for k in key)
        assert resource_id(*key) == str(uuid.uuid5(NAMESPACE, text))
    assert resource_id("Patient", "NCH", "100001") == str(uuid.uuid5(NAMESPACE, "Patient\x1fNCH\x1f100001"))
    assert resource_id("Patient", "NCH", "100001") == "b71c374a-9633-56d1-80f9-a78ad154cb4d"


def test_the_same_message_converted_twice_gives_the_same_ids(adt_fhir, oru_fhir):
    for mapping, fixture in ((adt_fhir, "adt_a01.hl7"), (oru_fhir, "oru_r01.hl7")):
        first, _ = convert(mapping, messages(FIXTURES / fixture)[0])
        again = load_mapping(mapping.path)  # a fresh load, a fresh parse: nothing remembered
        second, _ = convert(again, messages(FIXTURES / fixture)[0])
        assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in second["entry"]]
        assert first == second


def test_later_messages_about_the_same_patient_and_visit_name_the_same_resources(adt_fhir):
    a01, _ = convert(adt_fhir, messages(FIXTURES / "adt_a01.hl7")[0])
    a08, _ = convert(adt_fhir, messages(FIXTURES / "adt_a08.hl7")[0])
    assert resources(a01, "Patient")[0]["id"] == resources(a08, "Patient")[0]["id"]
    assert resources(a01, "Encounter")[0]["id"] == resources(a08, "Encounter")[0]["id"]
    assert resources(a01, "MessageHeader")[0]["id"] != resources(a08, "MessageHeader")[0]["id"]
    assert resources(a01, "Patient")[0]["id"] == resource_id("Patient", "MRN100001", "SUNRISE_GH")


def _row_ids(mapping_name: str, spec, msg) -> dict[str, set[str]]:
    """Resource type -> the ids the FHIR API serves for the rows ``mapping_name`` writes from
    ``msg`` (the store sets fhir_id to row_id of the natural key, in the table's key order)."""
    out: dict[str, set[str]] = {}
    for r in load_mapping(MAPPINGS / f"{mapping_name}.yaml").run(msg):
        served = ROW_RESOURCES.get((spec.kind, r.table))
        if served is None or r.op != "upsert":
            continue
        rid = row_id(spec.kind, r.table, tuple(r.values[k] for k in spec.keys[r.table]))
        out.setdefault(served[0], set()).add(rid)
    return out


@pytest.mark.parametrize(
    "fixture",
    ["adt_a01.hl7", "adt_a03.hl7", "adt_a04.hl7", "structure/adt_a01_details.hl7", "gaps/adt_a04_selfpay.hl7"],
)
def test_adt_resource_ids_are_the_ids_of_the_rows_the_store_mappings_write(fixture, adt_fhir):
    msg = messages(FIXTURES / fixture)[0]
    bundle, _ = convert(adt_fhir, msg)
    rows = _row_ids("adt_clinical", CLINICAL, msg)
    for rtype, ids in _row_ids("adt_pm", PM, msg).items():
        rows.setdefault(rtype, set()).update(ids)
    for rtype in ("Patient", "Encounter", "AllergyIntolerance", "Condition", "Coverage"):
        assert {r["id"] for r in resources(bundle, rtype)} == rows.get(rtype, set()), rtype


@pytest.mark.parametrize(
    "fixture", ["oru_r01.hl7", "structure/oru_r01_elr_central.hl7", "structure/oru_r01_v28_micro.hl7"]
)
def test_oru_resource_ids_are_the_ids_of_the_rows_oru_clinical_writes(fixture, oru_fhir):
    msg = messages(FIXTURES / fixture)[0]
    bundle, _ = convert(oru_fhir, msg)
    rows = _row_ids("oru_clinical", CLINICAL, msg)
    for rtype in ("Patient", "DiagnosticReport", "Observation"):
        assert {r["id"] for r in resources(bundle, rtype)} == rows[rtype], rtype
    # references inside the Bundle point at resources of the Bundle
    ids = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    for report in resources(bundle, "DiagnosticReport"):
        assert {r["reference"] for r in report.get("result", [])} <= ids
        assert {r["reference"] for r in report.get("specimen", [])} <= ids


def test_a40_links_the_survivor_and_the_merged_patient_both_ways(adt_fhir):
    bundle, _ = convert(adt_fhir, messages(FIXTURES / "adt_a40.hl7")[0])
    survivor, merged = resources(bundle, "Patient")
    assert survivor["id"] == resource_id("Patient", "MRN100001", "SUNRISE_GH")
    assert merged["id"] == resource_id("Patient", "MRN100099", "SUNRISE_GH") and merged["active"] is False
    assert survivor["link"] == [{"other": {"reference": f"Patient/{merged['id']}"}, "type": "replaces"}]
    assert merged["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert not resources(bundle, "Encounter")


# -- identity round-trips through the engine's own FHIR mapping ---------------------------------
@pytest.mark.parametrize("fixture", ["adt_a01.hl7", "visit/2_adt_a04_arrival.hl7", "adt_a04.hl7"])
def test_a_converted_patient_posted_back_as_fhir_is_the_same_patient(fixture, adt_fhir):
    msg = messages(FIXTURES / fixture)[0]
    bundle, _ = convert(adt_fhir, msg)
    (patient,) = resources(bundle, "Patient")
    (hl7_row,) = [r for r in load_mapping(MAPPINGS / "adt_clinical.yaml").run(msg) if r.table == "patient"]
    back = load_mapping(MAPPINGS / "fhir_patient_clinical.yaml")
    fhir_msg = parse_text(json.dumps(patient))
    (fhir_row,) = back.run(fhir_msg)
    assert (fhir_row.values["mrn"], fhir_row.values["mrn_issuer"]) == (
        hl7_row.values["mrn"],
        hl7_row.values["mrn_issuer"],
    )
    assert patient["id"] == row_id("clinical", "patient", (fhir_row.values["mrn"], fhir_row.values["mrn_issuer"]))
    assert fhir_row.values["birth_date"] == hl7_row.values["birth_date"]


def test_an_issuer_listed_in_issuer_system_becomes_its_uri(adt_fhir):
    bundle, _ = convert(adt_fhir, messages(FIXTURES / "visit" / "2_adt_a04_arrival.hl7")[0])
    (patient,) = resources(bundle, "Patient")
    mrn = next(i for i in patient["identifier"] if i["type"]["coding"][0]["code"] == "MR")
    assert mrn["system"] == "https://northclinic.example.org/mrn"
    assert patient["id"] == resource_id("Patient", "MRN900101", "NORTHCLINIC")  # the issuer, not the URI


# -- warnings and the unmapped report -----------------------------------------------------------
def test_values_without_a_place_are_warnings_naming_no_patient_value(adt_fhir, oru_fhir):
    _bundle, report = convert(oru_fhir, messages(FIXTURES / "gaps" / "oru_r01_sn_text.hl7")[0])
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("fhir.Observation.valueQuantity: not a number")
    assert "in OBR 1/OBX 9" in report.warnings[0]
    _bundle, report = convert(oru_fhir, messages(FIXTURES / "structure" / "oru_r01_v28_micro.hl7")[0])
    assert [w.split(";")[0] for w in report.warnings] == [
        "fhir.Observation.valueString: OBX-5 of this data type (OBX-2) has no place in oru_fhir"
    ] * 3
    _bundle, report = convert(adt_fhir, messages(FIXTURES / "gaps" / "adt_a01_no_visit.hl7")[0])
    assert [w.split(";")[0] for w in report.warnings] == ["fhir.Condition.id: required value is missing"] * 2
    text = " ".join(report.warnings)
    for value in ("MRN500201", "OYELARAN", "I21.4", "SUNRISE_GH"):
        assert value not in text


def test_unmapped_positions_are_what_no_resource_reads(adt_fhir):
    msg = messages(FIXTURES / "adt_a01.hl7")[0]
    _bundle, report = convert(adt_fhir, msg)
    left = unmapped(msg, [report])
    assert {"GT1-3.1", "ZPI-1", "PID-10.1", "PID-18.1"} <= set(left)  # no resource takes them
    taken = ("PID-3", "PID-5", "PID-11", "PID-13", "AL1-3", "IN1-36")
    assert {p for p in left if p.startswith(taken)} == {"PID-13.5"}  # the country code: no place in the value


# -- the CLI ------------------------------------------------------------------------------------
def test_engine_try_shows_the_bundle_and_that_it_is_valid_r4():
    out = cli("try", "mappings/adt_fhir.yaml", str(FIXTURES / "adt_a01.hl7"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "record 2: fhir.Patient upsert key=[id]" in text
    assert "<- [each(PID-3: {type: {coding: [{system: literal, code: PID-3.5}]}" in text  # where each is read
    body = text.split("  bundle:\n", 1)[1].split("\n  R4:", 1)[0]
    bundle = json.loads(textwrap.dedent(body))
    assert bundle["type"] == "transaction" and len(bundle["entry"]) == 9
    assert "  R4: valid (fhir.resources.R4B)" in text
    assert "unmapped (" in text and "GT1-3.1" in text


def test_engine_test_mappings_runs_the_fhir_cases_and_shows_a_wrong_expectation(tmp_path):
    for name in ("adt_fhir.yaml", "adt_fhir_test.yaml", "oru_fhir.yaml", "oru_fhir_test.yaml"):
        shutil.copy(MAPPINGS / name, tmp_path / name)
    (tmp_path / "tables").symlink_to(MAPPINGS / "tables")
    out = cli("test", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS  adt_fhir_test.yaml::A40 - the survivor replaces the merged patient" in out.stdout
    assert "PASS  oru_fhir_test.yaml::a specimen (SPM)" in out.stdout
    test = tmp_path / "adt_fhir_test.yaml"
    test.write_text(test.read_text().replace("criticality: high", "criticality: low", 1))
    out = cli("test", str(tmp_path))
    assert out.returncode != 0
    assert "-    criticality: low" in out.stdout and "+    criticality: high" in out.stdout
    assert "1 failed" in out.stdout


def test_a_case_fails_when_its_bundle_is_not_valid_r4(tmp_path):
    (tmp_path / "m.yaml").write_text(
        textwrap.dedent(
            """\
            applies_when: {path: MSH-9.1, equals: ADT}
            records:
              - target: fhir.Patient
                fields:
                  id: {fhir_id: [Patient, PID-3.1]}
                  birthDate: PID-3.1
                  gender: {literal: woman}
            """
        )
    )
    (tmp_path / "m_test.yaml").write_text(
        textwrap.dedent(
            """\
            cases:
              - name: a birth date that is no date, a gender outside the binding
                message: |
                  MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5.1
                  PID|1||X1^^^B^MR
                resources:
                  - resourceType: Patient
                    birthDate: X1
            """
        )
    )
    out = cli("test", str(tmp_path))
    assert out.returncode != 0
    assert "+invalid: Bundle.entry[0].resource.birthDate" in out.stdout
    assert "+invalid: Bundle.entry[0].resource.gender: code not in the required binding (male, female" in out.stdout


# -- the mapping language -----------------------------------------------------------------------
def test_load_mapping_rejects_unknown_types_and_elements_with_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        _mapping(
            tmp_path,
            """\
            records:
              - target: fhir.Patient
                fields:
                  id: {fhir_id: [Patient, PID-3.1]}
                  birthdate: {date: PID-7}
                  name:
                    - object: {family: PID-5.1, givne: [PID-5.2]}
                  gender:
                    object: {code: PID-8}
              - target: fhir.Patients
                fields:
                  id: {fhir_id: [Pateint, PID-3.1]}
              - target: fhir.Encounter
                key: [visit]
                fields:
                  status: {literal: finished}
            """,
        )
    text = str(err.value)
    assert (
        "m.yaml:5: records[0].fields.birthdate: 'birthdate' is not an element of Patient (did you mean birthDate?)"
        in (text)
    )
    assert "m.yaml:7: records[0].fields.name[0].object.givne: 'givne' is not an element of HumanName" in text
    assert "m.yaml:9: records[0].fields.gender.object: Patient.gender is a primitive element" in text
    assert "m.yaml:10: records[1].target: unknown FHIR R4 resource type 'Patients'" in text
    assert "m.yaml:12: records[1].fields.id.fhir_id: fhir_id takes [ResourceType, key part, ...]" in text
    assert "m.yaml:14: records[2].key: a FHIR resource's key is its id" in text
    assert "records[2].fields: a FHIR resource needs id:" in text


def test_a_data_type_is_not_a_resource_target(tmp_path):
    with pytest.raises(ConfigError, match="unknown FHIR R4 resource type 'HumanName'"):
        _mapping(tmp_path, "records: [{target: fhir.HumanName, fields: {id: {literal: x}}}]")


MSG = (
    "MSH|^~\\&|A|FAC|C|D|20240101||ADT^A04|1|P|2.5.1\r"
    "PID|1||X1^^^FAC^MR~~X2^^^OTHER^PI||ONE^ANNA~TWO^BEA^C||19900101|F|||||^PRN^PH^^1^541^5550100\r"
    "OBX|1|NM|A^a||1\rOBX|2|NM|B^b||2\r"
)


def test_each_reads_every_repetition_with_paths_relative_to_it(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        records:
          - target: fhir.Patient
            fields:
              id: {fhir_id: [Patient, PID-3.1, PID-3.4.1]}
              identifier:
                each: PID-3
                where: {path: PID-3.1, exists: true}
                item: {object: {value: PID-3.1, system: PID-3.4.1, assigner: {object: {display: MSH-4.1}}}}
              name:
                - each: PID-5
                  where: {path: PID-5.1, not_equals: ONE}
                  item: {object: {family: PID-5.1, given: [PID-5.2, PID-5.3], text: "PID-5[1].1"}}
              telecom:
                - {object: {system: {literal: phone}, value: PID-13.7}}
                - {object: {system: {literal: fax}, value: PID-14.7}}
              contact:
                - object: {name: {object: {family: {each: OBX, item: OBX-5}}}}
        """,
    )
    (record,) = m.run(parse_text(MSG))
    values = record.values
    assert values["identifier"] == [  # the empty repetition is not kept (where)
        {"value": "X1", "system": "FAC", "assigner": {"display": "FAC"}},
        {"value": "X2", "system": "OTHER", "assigner": {"display": "FAC"}},
    ]
    assert values["name"] == [{"family": "TWO", "given": ["BEA", "C"], "text": "ONE"}]  # [1]: not relative
    assert values["telecom"] == [{"system": "phone", "value": "5550100"}]  # fixed values alone: absent
    assert values["contact"] == [{"name": {"family": ["1", "2"]}}]  # each group of a segment
    assert values["id"] == resource_id("Patient", "X1", "FAC")


def test_an_object_of_fixed_values_only_is_a_constant_and_stays(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        records:
          - target: fhir.Patient
            fields:
              id: {fhir_id: [Patient, PID-3.1]}
              active: {literal: true}
              maritalStatus: {object: {coding: [{object: {system: {literal: "urn:x"}, code: {literal: UNK}}}]}}
              gender: PID-99
        """,
    )
    (record,) = m.run(parse_text(MSG))
    assert record.values == {
        "id": resource_id("Patient", "X1"),
        "active": True,
        "maritalStatus": {"coding": [{"system": "urn:x", "code": "UNK"}]},
    }


def test_a_resource_without_its_id_fails_or_is_skipped_with_a_warning(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        records:
          - target: fhir.Encounter
            on_error: skip
            fields: {id: {fhir_id: [Encounter, PV1-19.1]}, status: {literal: unknown}}
        """,
    )
    report = RunReport()
    assert m.run(parse_text(MSG), report) == []
    assert report.warnings == [
        "fhir.Encounter.id: required value is missing; record skipped (mapping m, records[0], from fhir_id(Encounter))"
    ]


def test_a_reference_to_a_skipped_resource_is_left_out_of_the_bundle_with_a_warning(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        records:
          - target: fhir.DiagnosticReport
            fields:
              id: {fhir_id: [DiagnosticReport, MSH-10]}
              status: {literal: final}
              code: {object: {text: {literal: panel}}}
              result: [{each: OBX, item: {reference: [Observation, OBX-3.1]}}]
              specimen: [{each: OBX, item: {reference: [Observation, OBX-3.1]}}]
          - target: fhir.Observation
            for_each: OBX
            on_error: skip
            fields:
              id: {fhir_id: [Observation, OBX-3.1]}
              status: {literal: final}
              code: {object: {text: OBX-3.2}}
              valueString: {path: OBX-5, required: true}
        """,
    )
    msg = MSG.replace("OBX|2|NM|B^b||2", "OBX|2|NM|B^b||")  # the second OBX has no value: skipped
    report = RunReport()
    bundle = transaction(m.run(parse_text(msg), report), report.left_out, report.warnings)
    (kept,) = resources(bundle, "Observation")
    (dr,) = resources(bundle, "DiagnosticReport")
    assert [r["reference"] for r in dr["result"]] == [f"Observation/{kept['id']}"]
    assert report.left_out == {f"Observation/{resource_id('Observation', 'B')}"}
    assert report.warnings[1:] == [
        "DiagnosticReport.result: a reference to a resource the mapping skipped is left out",
        "DiagnosticReport.specimen: a reference to a resource the mapping skipped is left out",
    ]
    assert report.warnings[0].startswith("fhir.Observation.valueString: required value is missing; record skipped")
    assert transaction(m.run(parse_text(MSG), RunReport()))["entry"][0]["resource"]["result"][1]["reference"] == (
        f"Observation/{resource_id('Observation', 'B')}"
    )  # nothing skipped: both references stay


def test_in_a_fhir_mapping_each_walks_the_nodes_a_fhirpath_selects(tmp_path):
    m = _mapping(
        tmp_path,
        """\
        format: fhir
        records:
          - target: fhir.Patient
            fields:
              id: {fhir_id: [Patient, "identifier.first().value"]}
              identifier: {each: identifier, item: {object: {value: value, system: system}}}
        """,
    )
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:a", "value": "1"}, {"value": "2"}]}
    (record,) = m.run(parse_text(json.dumps(patient)))
    assert record.values["identifier"] == [{"value": "1", "system": "urn:a"}, {"value": "2"}]


def test_nested_forms_are_for_fhir_elements_never_for_a_store_column(tmp_path):
    with pytest.raises(ConfigError) as err:
        _mapping(
            tmp_path,
            """\
            records:
              - target: clinical.patient
                key: [mrn]
                fields:
                  mrn: PID-3.1
                  family_name: [PID-5.1]
                  given_name: {object: {a: PID-5.2}}
            """,
        )
    assert "m.yaml:6: records[0].fields.family_name: object, each and lists build FHIR elements" in str(err.value)
    assert "m.yaml:7: records[0].fields.given_name: object, each and lists" in str(err.value)
