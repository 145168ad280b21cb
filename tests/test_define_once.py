"""A ``define`` read from inside a group: worked out once when it cannot differ from group to
group, and in each group when it can (its segment is the group's, lies inside the groups, or
it counts or gathers groups). The values are what a define worked out every time would give."""

from __future__ import annotations

import textwrap

from engine.formats import hl7
from engine.transforms import load_mapping

MESSAGE = (
    "MSH|^~\\&|LAB|NORTHLAB|ENGINE|HUB|20240314093512||ORU^R01^ORU_R01|C1|P|2.5.1\r"
    "PID|1||M1^^^NCH^MR~M2^^^OTHER^PI||DOE^JANE\r"
    "OBR|1|P1|F1|CBC^Blood count^L\r"
    "NTE|1||report note\r"
    "OBX|1|NM|A^First^L||1\r"
    "NTE|1||first note\r"
    "OBX|2|NM|B^Second^L||2\r"
    "OBR|2|P2|F2|BMP^Metabolic^L\r"
    "OBX|1|NM|C^Third^L||3\r"
    "NTE|1||third note\r"
)


def run(tmp_path, define: str, fields: str, for_each: str = "[OBR, OBX]", target: str = "clinical.observation"):
    """Run a mapping of ``define`` (lines ``name: expression``) and one rule over ``for_each``
    with ``fields`` (lines ``column: expression``) and ``seq: {ordinal: OBX}``."""
    text = (
        "define:\n"
        + textwrap.indent(define, "  ")
        + f"\nrecords:\n  - target: {target}\n    for_each: {for_each}\n"
        + ("" if target.startswith("fhir.") else "    key: [seq]\n")
        + "    fields:\n"
        + ("      seq: {ordinal: OBX}\n" if "OBX" in for_each else "")
        + textwrap.indent(fields, "      ")
        + "\n"
    )
    path = tmp_path / "defines.yaml"
    path.write_text(text)
    return [r.values for r in load_mapping(path).run(hl7.Message(hl7.decode(MESSAGE.encode())))]


def test_a_value_of_the_patient_is_the_same_in_every_group(tmp_path):
    rows = run(
        tmp_path,
        "mrn: {identifier: PID-3, default_issuer: MSH-4.1}\nsender: {coalesce: [MSH-4.1, MSH-3.1]}",
        "mrn: {use: mrn}\nsender: {use: sender}",
    )
    assert [(r["mrn"], r["sender"]) for r in rows] == [("M1", "NORTHLAB")] * 3


def test_a_value_of_the_group_s_own_segment_or_its_parent_differs_per_group(tmp_path):
    rows = run(tmp_path, "code: OBX-3.1\norder: OBR-3.1", "code: {use: code}\norder: {use: order}")
    assert [(r["code"], r["order"]) for r in rows] == [("A", "F1"), ("B", "F1"), ("C", "F2")]


def test_a_value_of_a_segment_inside_the_groups_is_each_group_s_own(tmp_path):
    """NTE lies inside the OBR groups: from an OBX, NTE-3 is that OBX's note, else its OBR's."""
    rows = run(tmp_path, "note: NTE-3", "note: {use: note}")
    assert [r["note"] for r in rows] == ["first note", "report note", "third note"]


def test_a_value_that_counts_or_gathers_groups_is_worked_out_in_each(tmp_path):
    rows = run(
        tmp_path,
        "place: {ordinal: OBX}\nnotes: {concat: [{own: NTE-3}]}\nplace_again: {use: place}",
        "place: {use: place}\nnotes: {use: notes}\nplace_again: {use: place_again}",
    )
    assert [(r["seq"], r["place"], r["place_again"], r.get("notes")) for r in rows] == [
        (1, 1, 1, "first note"),
        (2, 2, 2, None),
        (1, 1, 1, "third note"),
    ]


def test_a_value_that_gathers_groups_differs_between_rules_that_walk_and_rules_that_do_not(tmp_path):
    """``list`` gathers the groups inside the rule's innermost group, or the message's without
    ``for_each``: its value differs from rule to rule though PID lies outside every OBR."""
    path = tmp_path / "gather.yaml"
    path.write_text(
        "define:\n  names: {list: PID-5.1}\nrecords:\n"
        "  - {target: clinical.patient, key: [mrn], fields: {mrn: PID-3.1, names: {use: names}}}\n"
        "  - {target: clinical.observation, for_each: [OBR, OBX], key: [seq],"
        " fields: {seq: {ordinal: OBX}, names: {use: names}}}\n"
    )
    rows = [r.values for r in load_mapping(path).run(hl7.Message(hl7.decode(MESSAGE.encode())))]
    assert rows == [{"mrn": "M1", "names": '["DOE"]'}, {"seq": 1}, {"seq": 2}, {"seq": 1}]


def test_a_value_used_in_each_repetition_reads_that_repetition(tmp_path):
    """Inside ``each: PID-3`` a path to PID-3 reads the repetition at hand: a define of PID-3
    is worked out per repetition there, and once outside."""
    path = tmp_path / "each.yaml"
    path.write_text(
        "define:\n  id: PID-3.1\nrecords:\n  - target: fhir.Patient\n    fields:\n      id: {use: id}\n"
        "      identifier: {each: PID-3, item: {object: {value: {use: id}}}}\n"
    )
    rows = [r.values for r in load_mapping(path).run(hl7.Message(hl7.decode(MESSAGE.encode())))]
    assert rows == [{"id": "M1", "identifier": [{"value": "M1"}, {"value": "M2"}]}]
