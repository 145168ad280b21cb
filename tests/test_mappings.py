"""The mapping language: every mapping test case, load-time rejection, conditions, dates, try."""

from __future__ import annotations

import textwrap
import timeit
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from engine.errors import ConfigError, MappingError
from engine.formats.hl7 import Message, parse_path
from engine.stores.schema import columns_of
from engine.transforms import compile_condition, load_mapping
from engine.transforms.reader import Reader
from engine.transforms.testing import discover, run_all, run_case, try_mapping
from engine.transforms.values import ValueProblem, to_date, to_datetime, zone

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"
CASES = discover(MAPPINGS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mapping_case(case):
    result = run_case(case)
    assert result.passed, f"{case.file}:{case.line}\n{result.diff}"


MAPPING_FILES = sorted(p for p in MAPPINGS.glob("*.yaml") if not p.stem.endswith("_test"))


def test_every_mapping_has_tests_and_they_cover_errors():
    tested = {c.file.name for c in CASES}
    assert len(MAPPING_FILES) >= 12  # ADT, ORU and the rest of a visit
    assert {f"{p.stem}_test.yaml" for p in MAPPING_FILES} <= tested
    assert sum(c.error is not None for c in CASES) >= 3


@pytest.mark.parametrize("path", MAPPING_FILES, ids=[p.stem for p in MAPPING_FILES])
def test_mappings_match_the_store_columns(path):
    store = "pm" if path.stem.endswith("_pm") else "clinical"  # <message>_<store>.yaml
    m = load_mapping(path, columns={store: columns_of(store)})
    assert m.name == path.stem and m.rules


def test_a_wrong_expectation_fails_with_a_readable_diff(tmp_path):
    for f in ("adt_clinical.yaml", "adt_clinical_test.yaml"):
        (tmp_path / f).write_text(
            (MAPPINGS / f).read_text().replace("family_name: QUILLFEATHER", "family_name: WRONG", 1)
        )
    (tmp_path / "tables").symlink_to(MAPPINGS / "tables")
    results = [run_case(c) for c in discover(tmp_path)]
    failed = [r for r in results if not r.passed]
    assert len(failed) == 1
    assert "-    family_name: WRONG" in failed[0].diff and "+    family_name: QUILLFEATHER" in failed[0].diff
    passed, report = run_all(tmp_path)
    assert not passed and "FAIL  adt_clinical_test.yaml::A01" in report and "1 failed" in report


def test_an_expected_error_that_does_not_happen_fails(tmp_path):
    (tmp_path / "adt_clinical.yaml").write_text((MAPPINGS / "adt_clinical.yaml").read_text())
    (tmp_path / "tables").symlink_to(MAPPINGS / "tables")
    (tmp_path / "adt_clinical_test.yaml").write_text(
        textwrap.dedent("""\
        cases:
          - name: expects an error that does not come
            message: |
              MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5
              PID|1||MRN1^^^X^MR||DOE^JANE||19800101|F
            error: {column: mrn}
        """)
    )
    [case] = discover(tmp_path)
    result = run_case(case)
    assert not result.passed and "-error: column mrn" in result.diff and "+clinical.patient upsert" in result.diff


# -- load-time rejection --------------------------------------------------------------------
BAD = """\
timezone: Mars/Olympus_Mons
applies_when: {path: MSH-9.1, equals: ADT}
define:
  mrn: PID-3.1
records:
  - target: clinical.patient
    key: [mrn]
    fields:
      mrn: {use: mrn}
      family_name: {uppercase: PID-5.1}
      given_name: PID-5..2
      shoe_size: PID-99
      sex: {table: no_such_table, value: PID-8}
      birth_date: {date: PID-7, format: ymd}
  - target: clinical.nowhere
    key: [x]
    fields: {x: PID-1}
    colour: blue
"""


def problems_of(tmp_path, text, **kw):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mapping(path, tables_dir=MAPPINGS / "tables", **kw)
    return {p.key: p for p in info.value.problems}, str(path)


def test_every_problem_is_reported_with_file_line_and_key(tmp_path):
    problems, file = problems_of(tmp_path, BAD, columns={"clinical": columns_of("clinical")})
    expected = {
        "timezone": (1, "unknown time zone"),
        "records[0].fields": (8, "mrn and mrn_issuer go together"),
        "records[0].fields.family_name": (10, "unknown function 'uppercase'"),
        "records[0].fields.given_name": (11, "malformed HL7 path"),
        "records[0].fields.shoe_size": (12, "unknown column 'shoe_size'"),
        "records[0].fields.sex.table": (13, "unknown table 'no_such_table'"),
        "records[0].fields.birth_date.format": (14, "unknown key 'format'"),
        "records[1].target": (15, "unknown table 'nowhere'"),
        "records[1].colour": (18, "unknown key 'colour'"),
    }
    for key, (line, text) in expected.items():
        assert key in problems, f"{key} not reported; got {sorted(problems)}"
        p = problems[key]
        assert (p.file, p.line) == (file, line) and text in p.message, p
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    "fields, key, text",
    [
        ("mrn: {pick: PID-3.1, component: 1}", "records[0].fields.mrn.pick", "without repetition or component"),
        ("mrn: {literal: x, when: {path: PID-3, contains: x}}", "records[0].fields.mrn.when.contains", "unknown key"),
        ("mrn: {concat: PID-3}", "records[0].fields.mrn.concat", "non-empty list"),
        ("mrn: {use: nothing}", "records[0].fields.mrn.use", "unknown value 'nothing'"),
        ("mrn: {path: PID-3, when: {path: MSH-12, equals: 2.10}}", "records[0].fields.mrn.when.equals", "in quotes"),
        ("mrn: {datetime: PV1-44, timezone: Nowhere/Land}", "records[0].fields.mrn.timezone", "unknown time zone"),
        ("mrn: 42", "records[0].fields.mrn", "{literal: ...}"),
        ("mrn: {typed: OBX-5, type: OBX-2, part: colour}", "records[0].fields.mrn.part", "unknown part 'colour'"),
        ("mrn: {typed: OBX-5.1, type: CWE}", "records[0].fields.mrn.typed", "without repetition or component"),
        ("mrn: {ordinal: OBX-1}", "records[0].fields.mrn.ordinal", "a segment of the rule's for_each"),
        ("mrn: {json_list: PID-5, from: 0, item: {a: 1}}", "records[0].fields.mrn.from", "repetition to start at"),
        ("mrn: {own: NTE--3}", "records[0].fields.mrn.own", "malformed HL7 path"),
    ],
)
def test_single_problems(tmp_path, fields, key, text):
    problems, _ = problems_of(
        tmp_path, f"records:\n  - target: clinical.patient\n    key: [mrn]\n    fields:\n      {fields}\n"
    )
    assert key in problems and text in problems[key].message, problems
    assert problems[key].line == 5


def test_merge_records_must_be_mrn_and_old_mrn(tmp_path):
    problems, _ = problems_of(
        tmp_path, "records:\n  - target: clinical.patient\n    op: merge\n    fields: {mrn: PID-3.1}\n"
    )
    assert "records[0].fields" in problems


# -- conditions (shared with channel filters) -----------------------------------------------
ADT = Message((FIXTURES / "adt_a01.hl7").read_text(encoding="latin-1"))


@pytest.mark.parametrize(
    "spec, result",
    [
        ({"path": "MSH-9.1", "equals": "ADT"}, True),
        ({"path": "MSH-9.2", "in": ["A04", "A08"]}, False),
        ({"path": "MSH-9.2", "not_in": ["A04", "A08"]}, True),
        ({"path": "PID-3[*].5", "equals": "JHN"}, True),
        ({"path": "PID-3[*].5", "not_equals": "SS"}, True),
        ({"path": "MRG-1", "exists": True}, False),
        ({"path": "MRG-1", "exists": False}, True),
        ({"path": "PV1-19.1", "matches": "V[0-9]{6}-[0-9]{4}"}, True),
        ({"path": "PV1-19.1", "matches": "V[0-9]{6}"}, False),  # the whole value must match
        ({"all": [{"path": "MSH-9.1", "equals": "ADT"}, {"not": {"path": "MSH-9.2", "equals": "A40"}}]}, True),
        ({"any": [{"path": "MSH-9.1", "equals": "ORU"}, {"path": "PID-8", "equals": "M"}]}, False),
    ],
)
def test_conditions(spec, result):
    assert compile_condition(spec)(ADT) is result


def test_a_bad_filter_raises_config_error_with_relative_keys():
    with pytest.raises(ConfigError) as info:
        compile_condition({"all": [{"path": "MSH-9.1", "equals": "ADT"}, {"path": "MSH-9..2", "in": []}]})
    keys = {p.key for p in info.value.problems}
    assert keys == {"all[1].path", "all[1].in"}


# -- values ---------------------------------------------------------------------------------
def test_dates_and_times():
    ny = zone("America/New_York")
    assert to_date("19580722") == date(1958, 7, 22)
    assert to_date("195807221030-0500") == date(1958, 7, 22)
    assert to_datetime("20240314083000", ny) == datetime(2024, 3, 14, 12, 30, tzinfo=UTC)  # EDT
    assert to_datetime("20240114083000", ny) == datetime(2024, 1, 14, 13, 30, tzinfo=UTC)  # EST
    assert to_datetime("20240314083000.1234+0100", ny) == datetime(2024, 3, 14, 7, 30, 0, 123400, tzinfo=UTC)
    assert to_datetime("202403", ny) == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)
    for bad in ("20241301", "2024-03-14", "2024031", "20240230", "20240314250000", "20240314+9900"):
        with pytest.raises(ValueProblem) as info:
            to_datetime(bad, ny)
        assert bad not in str(info.value)


def test_an_unreadable_value_is_left_out_with_a_warning_naming_mapping_column_and_path_never_the_value():
    from engine.transforms.report import RunReport

    m = load_mapping(MAPPINGS / "adt_clinical.yaml")
    text = (FIXTURES / "adt_a01.hl7").read_text(encoding="latin-1").replace("|19580722|", "|19581372|")
    report = RunReport()
    patient = m.run(Message(text), report)[0]
    assert patient.table == "patient" and "birth_date" not in patient.values  # the stored one stays
    [warning] = [w for w in report.warnings if "birth_date" in w]
    assert "adt_clinical" in warning and "date(PID-7)" in warning and "value left out" in warning
    assert "19581372" not in warning


def test_mapping_errors_name_mapping_column_and_path_never_the_value():
    m = load_mapping(MAPPINGS / "adt_clinical.yaml")
    text = (FIXTURES / "adt_a01.hl7").read_text(encoding="latin-1")
    text = text.replace("MRN100001^^^SUNRISE_GH^MR~", "").replace("HCN5550001^^^ORHCN^JHN", "HCN5550001^^^ORHCN^SS")
    with pytest.raises(MappingError) as info:
        m.run(Message(text))
    e = info.value
    assert (e.mapping, e.field) == ("adt_clinical", "mrn") and "PID-3" in e.path
    assert "adt_clinical" in str(e) and "mrn" in str(e) and "HCN5550001" not in str(e)


def test_records_carry_sources():
    m = load_mapping(MAPPINGS / "adt_clinical.yaml")
    patient = m.run(ADT)[0]
    assert patient.sources["family_name"] == "PID-5.1.1"
    assert patient.sources["sex"] == "table sex(PID-8)"
    assert patient.sources["phone_home"] == "coalesce(concat(PID-13.6, PID-13.7), PID-13.1)"


def test_observations_read_their_own_obx_and_the_enclosing_obr():
    m = load_mapping(MAPPINGS / "oru_clinical.yaml")
    msg = Message((FIXTURES / "oru_r01.hl7").read_text(encoding="latin-1"))
    obs = [r for r in m.run(msg) if r.table == "observation"]
    assert [(o.values["filler_order_number"], o.values["set_id"]) for o in obs] == [
        ("LAB448812", "1"),
        ("LAB448812", "2"),
        ("LAB448812", "3"),
        ("LAB448812", "4"),
        ("LAB448812", "5"),
        ("LAB448812-2", "1"),
        ("LAB448812-2", "2"),
        ("LAB448812-2", "3"),
    ]
    assert obs[0].values["value_numeric"] == 182.0 and obs[4].values["value_code"] == "OPOS"


# -- the read cache gives what Message gives --------------------------------------------------
PATHS = [
    "MSH-9.2",
    "PID-3[*].1",
    "PID-3[2].4",
    "PID-5.1.1",
    "PID-13",
    "OBX-5",
    "OBX[*]-5",
    "OBR-3.1",
    "OBR[2]-3.1",
    "OBR[*]-2.1",
    "SPM-2",
    "NTE-3",
    "IN2-1",
    "AL1-5[*]",
    "PV1-44",
    "ZPI-2.2",
    "MRG-1.1",
    "OBX[2]-3.1",
    "PID",
]


@pytest.mark.parametrize(
    "fixture", ["adt_a01.hl7", "oru_r01.hl7", "oru_r01_v28.hl7", "adt_a40.hl7", "structure/oru_r01_elr_central.hl7"]
)
def test_reader_equals_message(fixture):
    msg = Message((FIXTURES / fixture).read_text(encoding="latin-1"))
    scopes_list = [()]
    for a in msg.spans("OBR"):
        scopes_list.append((a,))
        scopes_list.extend((a, b) for b in msg.spans("OBX", a))
        scopes_list.extend((a, b) for b in msg.spans("SPM", a))
        scopes_list.extend((a, b, c) for b in msg.spans("SPM", a) for c in msg.groups("OBX", b))
    scopes_list.extend((s,) for name in ("AL1", "IN1", "DG1") for s in msg.spans(name))
    # twice: the second pass reads what the first kept on the message, by a new reader (as the
    # message's next mapping does), and must still give what Message gives
    for reader in (Reader(msg), Reader(msg)):
        for scopes in scopes_list:
            for text in PATHS:
                p = parse_path(text)
                assert reader.values(p, scopes) == msg.values(p, scopes), (text, scopes)
                assert reader.find_segments(p, scopes) == msg.find_segments(p, scopes), (text, scopes)


# -- engine try ------------------------------------------------------------------------------
def test_try_mapping_reports_each_message_record_and_source():
    out = try_mapping(MAPPINGS / "adt_clinical", FIXTURES / "batch_adt.hl7")
    assert out.startswith("mapping adt_clinical")
    assert out.count("\nmessage ") >= 2
    assert "clinical.patient upsert key=[mrn, mrn_issuer]" in out
    assert "<- PID-5.1.1" in out and "<- table sex(PID-8)" in out


def test_try_mapping_says_when_a_mapping_does_not_apply():
    out = try_mapping(MAPPINGS / "oru_clinical.yaml", FIXTURES / "adt_a01.hl7")
    assert "does not apply" in out and "MSH-9.1 = ORU" in out


def test_mapping_speed():
    """Loose guard (the target is ~100-150 us per ADT message per mapping on one core)."""
    m = load_mapping(MAPPINGS / "adt_clinical.yaml")
    text = (FIXTURES / "adt_a01.hl7").read_text(encoding="latin-1")
    per = timeit.timeit(lambda: m.run(Message(text)), number=300) / 300
    assert per < 0.002
