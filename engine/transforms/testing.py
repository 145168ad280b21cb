"""Mapping tests (``mappings/<name>_test.yaml`` beside each mapping) and ``engine try``.

Test file shape::

    mapping: adt_clinical            # optional: defaults to the file name without _test
    cases:
      - name: A01 admits a patient
        message: |                   # the HL7 message, one segment per line
          MSH|^~\\&|...
          PID|...
        records:                     # every record expected, in order ([] = nothing / not applicable)
          - target: clinical.patient
            op: upsert               # optional (default upsert)
            key: [mrn]               # optional (compared when given)
            values: {mrn: MRN100001, birth_date: 1958-07-22, ...}   # exactly these columns
      - name: no MRN is an error
        message: |
          ...
        error: {column: mrn, contains: required}     # a MappingError for this column
      - name: an A01 as FHIR (a mapping whose targets are fhir.<ResourceType>)
        message: |
          ...
        resources:                   # every resource of the Bundle, in order; only the elements
          - resourceType: Patient    # listed are compared (exactly), the others are not
            gender: female
            identifier: [{system: SUNRISE_GH, value: MRN100001, type: {coding: [...]}}]
          - resourceType: Encounter
            status: in-progress
      - name: a self-pay IN1 without a member id is skipped (on_error: skip)
        message: |
          ...
        records: [...]               # the records that were built
        warnings:                    # one entry per warning, in order; each is contained in it
          - "pm.coverage.member_id: required value is missing; record skipped"

A mapping whose targets are ``fhir.<ResourceType>`` (HL7 v2 -> FHIR) makes one transaction
Bundle per message (:func:`engine.formats.fhir_bundle.transaction`): a case states its
resources with ``resources:`` (or its records with ``records:``, values as JSON; an element
expected absent as ``(absent)``), and fails when the Bundle does not validate as R4
(fhir.resources.R4B), listing each element at fault.

A case of a FHIR mapping (``format: fhir``) holds the resource's JSON (a Bundle included) in
``message:``; one of an X12 mapping the interchange, one segment per line.

Values compare as text: dates ISO (``1958-07-22``), date/times in UTC as
``2024-03-14T15:05:00Z``, numbers without a trailing ``.0``, ``true``/``false``, ``null``
(HL7 ``""``). A case without ``warnings:`` expects none. A failing case shows a unified
diff of expected against actual records and warnings.

``engine try`` prints, per message, the records with the source of every value, the warnings,
and the positions the mapping left unmapped (:mod:`engine.transforms.report`); for fhir.*
targets the sources of each resource's elements, then the Bundle as JSON and whether it is
valid R4.
"""

from __future__ import annotations

import difflib
import json
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, MappingError, ParseError
from engine.formats import fhir, parse_text, x12
from engine.formats.fhir_bundle import transaction
from engine.formats.fhir_outcome import Refused, check_resource
from engine.formats.hl7 import decode, split_batch
from engine.records import Record
from engine.transforms.build import Build
from engine.transforms.fhir_out import binding_problems
from engine.transforms.mapping import Mapping, load_mapping
from engine.transforms.report import RunReport, unmapped
from engine.yamlfile import load

CASE_KEYS = ("name", "message", "records", "resources", "error", "warnings")
RECORD_KEYS = ("target", "op", "key", "values")
ERROR_KEYS = ("column", "contains")


@dataclass
class TestCase:
    __test__ = False  # not a pytest class

    file: Path
    index: int
    line: int | None
    name: str
    mapping_path: Path
    message: str
    records: list[dict] | None = None
    error: dict | None = None
    warnings: list[str] = field(default_factory=list)
    resources: list[dict] | None = None

    @property
    def id(self) -> str:
        return f"{self.file.name}::{self.name}"


@dataclass
class CaseResult:
    case: TestCase
    passed: bool
    diff: str = ""
    actual: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover(mappings_dir: str | Path) -> list[TestCase]:
    """Every case of every ``*_test.yaml`` in ``mappings_dir``; ConfigError lists malformed ones."""
    cases: list[TestCase] = []
    problems = []
    for file in sorted(Path(mappings_dir).glob("*_test.yaml")):
        try:
            cases.extend(_cases(file))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return cases


def _cases(file: Path) -> list[TestCase]:
    src = load(file)
    b = Build(src)
    data = src.data if isinstance(src.data, dict) else {}
    b.keys(data, (), ("mapping", "cases"), "a mapping test file")
    name = data.get("mapping") or file.name[: -len("_test.yaml")]
    mapping_path = file.parent / f"{name}.yaml"
    if not mapping_path.is_file():
        b.problem(("mapping",), f"mapping file not found: {mapping_path.name}")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        b.problem(("cases",), "expected a non-empty list of cases")
        raw_cases = []
    out = []
    for i, c in enumerate(raw_cases):
        key = ("cases", i)
        if not isinstance(c, dict):
            b.problem(key, "expected a case with name:, message: and records: or error:")
            continue
        b.keys(c, key, CASE_KEYS, "a test case")
        if not isinstance(c.get("name"), str) or not isinstance(c.get("message"), str):
            b.problem(key, "a case needs name: and message: (the message as a block scalar)")
            continue
        if [k in c for k in ("records", "resources", "error")].count(True) != 1:
            b.problem(
                key,
                "a case states exactly one of records: (expected records), resources: (expected FHIR "
                "resources) or error: (expected error)",
            )
            continue
        resources = c.get("resources")
        if resources is not None and (
            not isinstance(resources, list)
            or not all(isinstance(r, dict) and isinstance(r.get("resourceType"), str) for r in resources)
        ):
            b.problem(key + ("resources",), "expected a list of resources, each {resourceType: ..., <element>: ...}")
            continue
        records, error = c.get("records"), c.get("error")
        if records is not None:
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                b.problem(key + ("records",), "expected a list of {target, op?, key?, values}")
                continue
            for j, r in enumerate(records):
                b.keys(r, key + ("records", j), RECORD_KEYS, "an expected record")
                if not isinstance(r.get("values"), dict) or "target" not in r:
                    b.problem(key + ("records", j), "an expected record needs target: and values:")
        if error is not None and (
            not isinstance(error, dict) or not b.keys(error, key + ("error",), ERROR_KEYS, "an expected error")
        ):
            b.problem(key + ("error",), "expected {column: <column>, contains: <text>} (both optional)")
        warnings = c.get("warnings", [])
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            b.problem(key + ("warnings",), "expected a list of texts, each contained in one warning, in order")
            warnings = []
        elif warnings and error is not None:
            b.problem(key + ("warnings",), "warnings: go with records: (a failed message keeps no records)")
        line = src.line(key)
        out.append(TestCase(file, i, line, c["name"], mapping_path, c["message"], records, error, warnings, resources))
    if b.problems:
        raise ConfigError(b.problems)
    return out


_loaded: dict[tuple[str, int], Mapping] = {}


def _mapping(path: Path) -> Mapping:
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _loaded:
        _loaded[key] = load_mapping(path)
    return _loaded[key]


def render(value: Any) -> str:
    """A value as the tests compare it (see the module docstring)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _plain(value: Any) -> Any:
    """Nested values as JSON compares them: dates as text, 2.0 as 2 (YAML and JSON agree)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (date, datetime)):
        return render(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _lines(target: str, op: str, key: Any, values: dict) -> list[str]:
    head = f"{target} {op}" + (f" key=[{', '.join(key)}]" if key else "")
    return [head] + [f"    {col}: {render(values[col])}" for col in sorted(values)]


def _actual_lines(records: list[Record]) -> list[str]:
    return [line for r in records for line in _lines(r.target, r.op, r.key, r.values)]


def run_case(case: TestCase) -> CaseResult:
    """Run one case; ``passed`` and, when it failed, a unified ``diff`` (expected -> actual)."""
    report = RunReport()
    try:
        mapping = _mapping(case.mapping_path)
        msg = parse_text(case.message)
        records = mapping.run(msg, report) if mapping.applies(msg) else []
        for check in mapping.checks if records else ():
            report.warnings.extend(check(msg, records, None))  # checks that need a store say nothing here
        outcome: MappingError | None = None
    except MappingError as exc:
        records, outcome = [], exc
    except (ConfigError, ParseError) as exc:
        return CaseResult(case, False, f"cannot run: {type(exc).__name__}: {exc}")
    actual = [f"error: column {outcome.field}: {outcome}"] if outcome else _actual_lines(records)
    bundle = _bundle(records, report)
    if bundle is not None:
        invalid = [f"invalid: {p}" for p in bundle_problems(bundle)]
        if case.resources is not None:
            actual = _resource_lines(bundle, case.resources)
        actual += invalid
    if case.resources is not None and outcome is None:
        expected = [line for r in case.resources for line in _expected_resource(r)]
        actual += [f"warning: {w}" for w in report.warnings]
        expected += _expected_warnings(case.warnings, report.warnings)
        passed = expected == actual
    elif case.error is not None:
        want_col, want_text = case.error.get("column"), case.error.get("contains")
        passed = (
            outcome is not None
            and (want_col is None or outcome.field == want_col)
            and (want_text is None or str(want_text) in str(outcome))
        )
        expected = [f"error: column {want_col or '*'}: ...{want_text or ''}..."]
    else:
        expected = []
        for i, r in enumerate(case.records or []):
            key = r.get("key", list(records[i].key) if i < len(records) else None)
            expected += _lines(r.get("target", "?"), r.get("op", "upsert"), key, r.get("values") or {})
        if outcome is None:
            actual += [f"warning: {w}" for w in report.warnings]
            expected += _expected_warnings(case.warnings, report.warnings)
        passed = outcome is None and expected == actual
    diff = "" if passed else "\n".join(difflib.unified_diff(expected, actual, "expected", "actual", lineterm="", n=2))
    return CaseResult(case, passed, diff, records, report.warnings)


def _bundle(records: list[Record], report: RunReport) -> dict | None:
    """The transaction Bundle of a run whose records are FHIR resources (None otherwise), as the
    ``fhir`` destination builds it (its warnings go to ``report``)."""
    if not records or not all(r.target.startswith("fhir.") for r in records):
        return None
    return transaction(records, report.left_out, report.warnings)


def bundle_problems(bundle: dict) -> list[str]:
    """Each element of ``bundle`` at fault as R4: ``location: what``; [] when valid. Structure
    and data types by fhir.resources.R4B, codes of required bindings by
    :func:`engine.transforms.fhir_out.binding_problems` (which R4B's models do not enforce)."""
    try:
        check_resource(bundle)
        problems = []
    except Refused as exc:
        problems = [f"{', '.join(i.expression) or 'Bundle'}: {i.diagnostics}" for i in exc.issues]
    return problems + binding_problems(bundle)


def _resource_lines(bundle: dict, wanted: list[dict]) -> list[str]:
    """The Bundle's resources as lines: each one's type, then the elements the case names for
    the resource at its place (others are not compared)."""
    out = []
    for n, entry in enumerate(bundle["entry"]):
        res = entry["resource"]
        out.append(res["resourceType"])
        names = [k for k in wanted[n] if k != "resourceType"] if n < len(wanted) else []
        out += [f"    {k}: {render(res[k]) if k in res else '(absent)'}" for k in names]
    return out


def _expected_resource(r: dict) -> list[str]:
    return [r["resourceType"]] + [f"    {k}: {render(v)}" for k, v in r.items() if k != "resourceType"]


def _expected_warnings(wanted: list[str], got: list[str]) -> list[str]:
    """Expected warning lines: the actual warning where the expected text is contained in it
    (so a passing entry shows no difference), else the expected text itself."""
    return [
        f"warning: {got[i]}" if i < len(got) and want in got[i] else f"warning: ...{want}..."
        for i, want in enumerate(wanted)
    ]


def run_all(mappings_dir: str | Path) -> tuple[bool, str]:
    """Run every case in ``mappings_dir``: (all passed, a readable report)."""
    try:
        cases = discover(mappings_dir)
    except ConfigError as exc:
        return False, f"invalid mapping test files:\n{exc}"
    lines, failed = [], 0
    for case in cases:
        result = run_case(case)
        lines.append(f"{'PASS' if result.passed else 'FAIL'}  {case.id}")
        if not result.passed:
            failed += 1
            lines.append(f"      ({case.file}:{case.line})")
            lines.extend("      " + d for d in result.diff.splitlines())
    lines.append(
        f"{len(cases) - failed} passed, {failed} failed" if cases else f"no *_test.yaml cases in {mappings_dir}"
    )
    return failed == 0 and bool(cases), "\n".join(lines)


def try_mapping(mapping_path: str | Path, message_path: str | Path) -> str:
    """Every record ``mapping_path`` produces for each message in ``message_path``, with sources.

    The file may hold several messages or a batch (FHS/BHS); it is decoded as MSH-18 says. An
    X12 file is each of its transaction sets; a JSON file (it starts with ``{``) one FHIR
    resource, in UTF-8. ConfigError when the mapping is invalid; problems with single messages
    are reported inline.
    """
    path = Path(mapping_path)
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    mapping = load_mapping(path)
    out = [f"mapping {mapping.name} ({path})"]
    raw = Path(message_path).read_bytes()
    if x12.is_x12(raw):
        messages, problems = _x12_messages(raw)
        out.extend(f"cannot read part of {message_path}: TA1 {p.code}: {p.text}" for p in problems)
    elif fhir.is_fhir(raw):
        messages = [(raw.decode("utf-8", errors="replace"), None)]
    else:
        try:
            messages = [(text, None) for text in split_batch(decode(raw))]
        except ParseError as exc:
            return "\n".join(out + [f"cannot read {message_path}: {exc}"])
    for n, (text, title) in enumerate(messages, 1):
        try:
            msg = parse_text(text)
            if isinstance(msg, fhir.FhirMessage):
                title = msg.title
            elif title is None:
                h = msg.header()
                title = f"{h.message_type}^{h.trigger} control id {h.control_id} (v{h.version})"
        except ParseError as exc:
            out.append(f"\nmessage {n}: cannot parse: {exc}")
            continue
        out.append(f"\nmessage {n}: {title}")
        if not mapping.applies(msg):
            out.append(f"  does not apply (applies_when: {mapping.applies_text})")
            continue
        report = RunReport()
        try:
            records = mapping.run(msg, report)
        except MappingError as exc:
            records = []
            out.append(f"  ERROR {exc}")
        else:
            if not records:
                out.append("  no records")
        bundle = _bundle(records, report)
        for i, r in enumerate(records, 1):
            out.append(f"  record {i}: {r.target} {r.op} key=[{', '.join(r.key)}]")
            width = max((len(c) for c in r.values), default=0)
            for col, value in r.values.items():
                shown = "" if bundle is not None else f"= {render(value):<30} "  # values: in the Bundle
                out.append(f"    {col.ljust(width)} {shown}<- {r.sources.get(col, '?')}")
        if bundle is not None:
            out.append("  bundle:")
            out.extend("    " + line for line in json.dumps(bundle, indent=2, ensure_ascii=False).splitlines())
            problems = bundle_problems(bundle)
            out.append("  R4: valid (fhir.resources.R4B)" if not problems else "  R4: INVALID (fhir.resources.R4B)")
            out.extend(f"    invalid: {p}" for p in problems)
        for check in mapping.checks if records else ():
            report.warnings.extend(check(msg, records, None))
        out.extend(f"  warning: {w}" for w in report.warnings)
        out.extend(_unmapped_lines(unmapped(msg, [report])))
    return "\n".join(out)


def _x12_messages(raw: bytes) -> tuple[list[tuple[str, str | None]], list]:
    """Each transaction set of an X12 file as the engine stores it, titled like an HL7 message."""
    from engine.formats import x12_envelope

    interchanges, problems = x12_envelope.read_interchanges(raw)
    out: list[tuple[str, str | None]] = []
    for ic in interchanges:
        problems.extend(ic.problems)
        for g in ic.groups:
            for tr in g.transactions:
                title = f"{tr.st_id} {tr.reference or g.version} control {ic.control}/{g.control}/{tr.control}"
                out.append((x12_envelope.single(ic, g, tr), title))
    return out, problems


def _unmapped_lines(positions: list[str]) -> list[str]:
    """``unmapped (n): A, B, ...`` wrapped to about 100 characters; positions only, never values."""
    if not positions:
        return ["  unmapped: none (every populated position was read)"]
    head = f"  unmapped ({len(positions)}): "
    text = ", ".join(positions)
    return textwrap.wrap(text, 100, initial_indent=head, subsequent_indent="    ", break_on_hyphens=False)
