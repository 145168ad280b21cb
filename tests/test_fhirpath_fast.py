"""The fast FHIRPath evaluator (engine/formats/fhirpath_fast.py) gives what fhirpathpy gives: every
path of every FHIR mapping, on every resource (and component) of every FHIR fixture, evaluated
both ways in the same scopes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from engine.formats.fhir import FhirMessage, FhirPath, compile_path

FHIR_FILES = sorted((ROOT / "tests" / "fixtures" / "fhir").rglob("*.json"))


def mapping_paths() -> list[str]:
    """Every text of the FHIR mappings that compiles as FHIRPath (keys and comments aside)."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            try:
                compile_path(node)
                found.add(node)
            except ValueError:
                pass

    for f in sorted((ROOT / "mappings").glob("fhir_*.yaml")):
        data = yaml.safe_load(f.read_text())
        if isinstance(data, dict) and data.get("format") == "fhir":
            walk(data)
    return sorted(found)


def resources(path: Path) -> FhirMessage | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"), parse_float=Decimal)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # the malformed fixtures that are not JSON
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        return None
    return FhirMessage(data)


FIXTURES = [f for f in FHIR_FILES if resources(f) is not None]  # the malformed ones that are not JSON aside


def test_the_fixtures_are_read():
    assert len(FIXTURES) >= 20 and len(FHIR_FILES) - len(FIXTURES) <= 6


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_the_fast_path_gives_what_fhirpathpy_gives(fixture):
    msg = resources(fixture)
    assert msg is not None
    own = msg.groups("(entry.resource | %context)")
    scopes = [(), *((s,) for s in own), *((s, c) for s in own for c in msg.groups("component", s))]
    compared = fast_ones = 0
    for text in mapping_paths():
        fast = compile_path(text)
        slow = FhirPath(text)
        slow.fast = None
        for scope in scopes:
            try:
                want = msg.values(slow, scope)
            except ValueError as exc:  # fhirpathpy cannot evaluate it here: neither may the fast path
                with pytest.raises(ValueError):
                    msg.values(fast, scope)
                assert type(exc).__name__
                continue
            msg._values.clear()
            got = msg.values(fast, scope)
            msg._values.clear()
            assert got == want, f"{text} in scope {scope}"
            compared += 1
            fast_ones += fast.fast is not None
    assert compared > 100 and fast_ones > compared / 2  # most paths took the fast path, and were compared
