"""The mapping functions ``join``, ``list`` and ``decimal`` (engine/transforms/expressions.py):
a note sent as many OBX as one text, repeated codes as a JSON list (in rank order when asked),
money kept exact; their load-time problems (file:line:key) and what ``engine try`` shows."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.formats.hl7 import Message
from engine.transforms import load_mapping
from engine.transforms.report import RunReport
from engine.transforms.testing import try_mapping

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "mappings" / "tables"
FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"


def mapping(tmp_path: Path, fields: str, for_each: str | None = None, target: str = "clinical.document"):
    """A one-rule mapping with ``fields`` (YAML, indented by the caller as one block)."""
    loop = f"    for_each: {for_each}\n" if for_each else ""
    text = f"records:\n  - target: {target}\n    key: [k]\n{loop}    fields:\n      k: {{literal: x}}\n"
    text += textwrap.indent(textwrap.dedent(fields), "      ")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return load_mapping(path, tables_dir=TABLES)


def run(m, *segments: str, report: RunReport | None = None) -> list[dict]:
    msg = Message("\r".join(["MSH|^~\\&|APP|FAC|||20240501120000||MDM^T02|C1|P|2.5", *segments]))
    return [r.values for r in m.run(msg, report)]


NOTE = (
    "OBX|1|TX|11506-3^Progress note^LN||First line.||||||F",
    "OBX|2|TX|11506-3^Progress note^LN||||||||F",  # an empty OBX-5: a blank line of the note
    "OBX|3|CE|8716-3^Vital signs^LN||N^Normal^L||||||F",  # not text: not part of the note
    "OBX|4|TX|11506-3^Progress note^LN||Second line~Third line (a repetition)||||||F",
    "OBX|5|FT|11506-3^Progress note^LN||Formatted\\.br\\with a break \\T\\ an escape||||||F",
    "OBX|6|TX|11506-3^Progress note^LN||||||||F",  # trailing blank lines are trimmed
)
TEXT_ONLY = "{join: 'OBX-5[*]', where: {path: OBX-2, in: [TX, FT, ST]}}"


# -- join --------------------------------------------------------------------------------------------
def test_join_gives_every_text_obx_in_order_one_line_each_blank_lines_kept_between_and_trimmed_at_the_ends(
    tmp_path,
):
    m = mapping(tmp_path, f"content: {TEXT_ONLY}\n")
    [values] = run(m, "OBX|1|TX|11506-3^Progress note^LN||||||||F", *NOTE)  # a leading blank line too
    assert values["content"] == (
        "First line.\n\nSecond line\nThird line (a repetition)\nFormatted\nwith a break & an escape"
    )


def test_join_without_where_takes_every_group_and_a_separator_may_be_given(tmp_path):
    m = mapping(tmp_path, "content: {join: OBX-3.1, separator: ' | '}\n")
    [values] = run(m, *NOTE)
    assert values["content"] == "11506-3 | 11506-3 | 8716-3 | 11506-3 | 11506-3 | 11506-3"


def test_join_of_nothing_is_absent_and_of_hl7_nulls_only_is_null(tmp_path):
    m = mapping(tmp_path, f"content: {TEXT_ONLY}\n")
    assert "content" not in run(m, "TXA|1|PN")[0]  # no OBX: the stored content stays
    assert "content" not in run(m, "OBX|1|TX|X||||||||F")[0]  # only blank lines: nothing to store
    assert run(m, 'OBX|1|TX|X||""||||||F')[0]["content"] is None  # "": the sender clears it


def test_join_in_a_for_each_reads_only_the_rules_own_group(tmp_path):
    """Inside ``for_each: OBR`` each report's own OBX; inside ``[OBR, OBX]`` each result's own NTE."""
    segments = (
        "OBR|1||F1|A^Panel A",
        "OBX|1|TX|A1||a one||||||F",
        "NTE|1||note of a one",
        "OBX|2|TX|A2||a two||||||F",
        "OBR|2||F2|B^Panel B",
        "OBX|1|TX|B1||b one||||||F",
        "NTE|1||note of b one~and its second line",
    )
    m = mapping(tmp_path, "content: {join: 'OBX-5[*]'}\n", for_each="OBR")
    assert [v["content"] for v in run(m, *segments)] == ["a one\na two", "b one"]
    m = mapping(tmp_path, "content: {join: 'NTE-3[*]'}\n", for_each="[OBR, OBX]")
    assert [v.get("content") for v in run(m, *segments)] == [
        "note of a one",
        None,  # no NTE of its own: never the next result's
        "note of b one\nand its second line",
    ]


def test_join_records_what_it_read_and_says_where_in_try(tmp_path):
    m = mapping(tmp_path, f"content: {TEXT_ONLY}\n")
    report = RunReport()
    msg = Message("\r".join(["MSH|^~\\&|APP|FAC|||20240501120000||MDM^T02|C1|P|2.5", *NOTE]))
    [record] = m.run(msg, report)
    assert {"OBX-5", "OBX-2"} <= report.read and "OBX-3" not in report.read
    assert record.sources["content"] == "join(OBX-5[*] where OBX-2 in [TX, FT, ST])"
    out = try_mapping(ROOT / "mappings" / "mdm_clinical.yaml", FIXTURES / "documents" / "mdm_t02_v25_progress_note.hl7")
    assert "<- coalesce(join(OBX-5[*] where OBX-2 in [TX, FT, ST]), OBX-5.5)" in out


# -- list --------------------------------------------------------------------------------------------
DFT = (
    "PID|1||M1^^^FAC^MR",
    "FT1|1|T1||20240501||CG|A|||1|10.00||||||||E11.9^Diabetes^I10~I10^Hypertension^I10||||||99213|25^E/M^C4~59",
    "FT1|2|T2||20240501||CG|B|||1|5.00",
    "PR1|1|C4|36415^Venipuncture^C4|||||||||||||RT~LT",
    "DG1|1||R53.83^Fatigue^I10||||||||||||10",
    "DG1|2||Z00.00^Exam^I10",
    "DG1|3||D64.9^Anemia^I10||||||||||||2",
    "DG1|4||E55.9^Vit D deficiency^I10||||||||||||P",
)


def test_list_gives_the_values_of_the_rules_own_group_as_json_in_order(tmp_path):
    m = mapping(
        tmp_path,
        """\
        diagnoses: {list: 'FT1-19[*].1'}
        modifiers: {coalesce: [{list: 'FT1-26[*].1'}, {list: 'PR1-16[*].1'}]}
        """,
        for_each="FT1",
        target="pm.charge",
    )
    first, second = run(m, *DFT)
    assert json.loads(first["diagnoses"]) == ["E11.9", "I10"] and json.loads(first["modifiers"]) == ["25", "59"]
    assert "diagnoses" not in second  # nothing of its own: absent, never a sibling's
    assert json.loads(second["modifiers"]) == ["RT", "LT"]  # the PR1 under this FT1


def test_list_within_message_in_rank_order_numbers_before_text_unranked_and_unreadable_last(tmp_path):
    """DG1 follow the last FT1, inside its group as the engine walks it: ``within: message`` gives
    every FT1 the message's DG1. Ranks compare as numbers (2 before 10); a DG1 without a rank,
    or with one ``integer`` cannot read (P), comes last, in message order."""
    m = mapping(
        tmp_path,
        "diagnoses: {list: DG1-3.1, within: message, order_by: {integer: DG1-15}}\n",
        for_each="FT1",
        target="pm.charge",
    )
    first, second = run(m, *DFT)
    assert json.loads(first["diagnoses"]) == ["D64.9", "R53.83", "Z00.00", "E55.9"]
    assert second["diagnoses"] == first["diagnoses"]
    m = mapping(tmp_path, "diagnoses: {list: DG1-3.1, order_by: DG1-15}\n", target="pm.charge")  # text ranks
    assert json.loads(run(m, *DFT)[0]["diagnoses"]) == ["R53.83", "D64.9", "E55.9", "Z00.00"]


def test_list_of_an_hl7_null_is_null_and_of_nothing_absent(tmp_path):
    m = mapping(tmp_path, "modifiers: {list: 'FT1-26[*].1'}\n", for_each="FT1", target="pm.charge")
    assert run(m, 'FT1|1|T1||||CG||||||||||||||||||||""')[0]["modifiers"] is None
    assert "modifiers" not in run(m, "FT1|1|T1||||CG")[0]


# -- decimal -----------------------------------------------------------------------------------------
def test_decimal_keeps_the_amount_as_sent_and_leaves_out_a_non_number_with_a_warning(tmp_path):
    m = mapping(tmp_path, "amount: {decimal: FT1-11.1.1}\n", for_each="FT1", target="pm.charge")
    report = RunReport()
    values = run(
        m, "FT1|1|T1||||CG|||||0.10&USD", "FT1|2|T2||||CG|||||-1250.005", "FT1|3|T3||||CG|||||1,250.00", report=report
    )
    assert [v.get("amount") for v in values] == ["0.10", "-1250.005", None]  # text: never 0.1 as a float
    [warning] = report.warnings
    assert warning.startswith("pm.charge.amount: not a number") and "value left out" in warning
    assert "in FT1 3" in warning and "1,250" not in warning  # where, never the value


# -- load-time problems ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, key, text",
    [
        ("{join: OBX}", "join", "a field path without a segment occurrence"),
        ("{join: 'OBX[2]-5'}", "join", "a field path without a segment occurrence"),
        ("{join: OBX-5, separator: 3}", "separator", "separator must be text"),
        ("{join: OBX-5, within: everywhere}", "within", "within takes group"),
        ("{join: OBX-5, where: {path: OBX-2, like: TX}}", "where.like", "unknown key"),
        ("{join: OBX-5, colour: red}", "colour", "unknown key 'colour'"),
        ("{list: DG1-3.1, order_by: {integer: DG1--15}}", "order_by.integer", "malformed HL7 path"),
        ("{decimal: FT1-11..1}", "decimal", "malformed HL7 path"),
    ],
)
def test_problems_are_reported_with_file_line_and_key(tmp_path, field, key, text):
    path = tmp_path / "bad.yaml"
    path.write_text(f"records:\n  - target: clinical.document\n    key: [k]\n    fields:\n      k: {field}\n")
    with pytest.raises(ConfigError) as info:
        load_mapping(path, tables_dir=TABLES)
    problems = {p.key: p for p in info.value.problems}
    full = f"records[0].fields.k.{key}"
    assert full in problems and text in problems[full].message, problems
    assert (problems[full].file, problems[full].line) == (str(path), 5)
