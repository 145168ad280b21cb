"""The mapping interpreter's two shortcuts change nothing a mapping gives.

A ``define`` that cannot differ from group to group is worked out once per run
(``Compiler.define``), and a path to the segment of one of the rule's own groups, in a field
or a condition, reads that group's anchor straight (``engine.transforms.reader.values_reader``).
Every mapping of HL7 v2 runs here on every HL7 v2 fixture (the messy ones included) twice,
once compiled with the shortcuts and once without: the records, their sources, the warnings,
the positions read and the errors must be the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from engine.errors import MappingError, ParseError
from engine.formats.hl7 import Message, decode, split_batch
from engine.transforms import expressions, load_mapping
from engine.transforms.build import Build
from engine.transforms.report import RunReport

MAPPINGS = sorted(p for p in (ROOT / "mappings").glob("*.yaml") if not p.stem.endswith("_test"))


def fixture_messages() -> list[tuple[str, str]]:
    """Each message of each HL7 v2 fixture that parses (the rest are there to be refused)."""
    out = []
    for path in sorted(FIXTURES.rglob("*.hl7")):
        try:
            texts = split_batch(decode(path.read_bytes(), "latin-1"))
            for n, text in enumerate(texts, 1):
                Message(text)
                out.append((f"{path.relative_to(FIXTURES)}#{n}", text))
        except ParseError:
            continue
    return out


MESSAGES = fixture_messages()


def outcome(mapping, text: str) -> tuple:
    report = RunReport()
    try:
        records = mapping.run(Message(text), report)
    except MappingError as exc:
        return ("error", str(exc), sorted(report.warnings), sorted(report.read))
    rows = [(r.target, r.key, r.op, r.values, r.sources) for r in records]
    return ("records", rows, report.warnings, sorted(report.read), sorted(report.left_out))


def hl7_mappings() -> list[Path]:
    return [p for p in MAPPINGS if "format: x12" not in p.read_text() and "format: fhir" not in p.read_text()]


@pytest.mark.parametrize("path", hl7_mappings(), ids=lambda p: p.stem)
def test_a_mapping_gives_the_same_with_and_without_its_shortcuts(path, monkeypatch):
    fast = load_mapping(path)
    monkeypatch.setattr(expressions, "_once_per_message", lambda e, segments: e)
    monkeypatch.setattr(Build, "walks", property(lambda self: (), lambda self, walks: None), raising=False)
    plain = load_mapping(path)
    applied = 0
    for name, text in MESSAGES:
        msg = Message(text)
        if not fast.applies(msg):
            continue
        applied += 1
        assert outcome(fast, text) == outcome(plain, text), name
    assert applied or path.stem in {"ack999_pm", "claim837_pm", "remit835_pm"}, "no fixture exercises it"
