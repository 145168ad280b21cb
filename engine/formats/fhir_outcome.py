"""FHIR R4 answers the engine gives: OperationOutcome for every problem, resources checked with
fhir.resources (its R4B module: fhir.resources' default is R5).

R4 and R4B: R4B (4.3) keeps R4's (4.0.1) resources and JSON for everything this engine takes
and gives (Patient, Encounter, Observation, DiagnosticReport, Condition, AllergyIntolerance,
Coverage, Appointment, Procedure, Bundle, OperationOutcome, CapabilityStatement); it changed
medication definitions and subscriptions, which the engine does not use. So R4 clients are
checked with R4B's models, and what the engine answers is valid R4.

An issue's ``expression`` is the FHIRPath of the element at fault (``Patient.birthDate``,
``Patient.name[0].family``); its ``diagnostics`` say what is wrong, never the value sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"


@dataclass
class Issue:
    code: str  # IssueType: structure, invalid, required, value, security, not-found, not-supported, conflict,
    # processing, exception, transient
    diagnostics: str
    expression: list[str] = field(default_factory=list)
    severity: str = "error"


def outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource (JSON) carrying ``issues``."""
    out = []
    for i in issues:
        item: dict[str, Any] = {"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics}
        if i.expression:
            item["expression"] = i.expression
        out.append(item)
    return {"resourceType": "OperationOutcome", "issue": out}


class Refused(Exception):
    """A request the engine answers with ``status`` and an OperationOutcome."""

    def __init__(self, status: int, issues: list[Issue], headers: dict[str, str] | None = None):
        super().__init__(issues[0].diagnostics if issues else str(status))
        self.status, self.issues, self.headers = status, issues, headers or {}


def parse_json(body: bytes) -> Any:
    """The request body as JSON; Refused 400 (structure) when it is not UTF-8 JSON (a byte order
    mark is allowed: RFC 8259 lets a parser skip it; UTF-16 and Latin-1 are not FHIR JSON), nests
    deeper than Python can read, or holds a null (FHIR JSON has none), located."""
    data = read_json(body)
    check_nulls(data)
    return data


def read_json(body: bytes) -> Any:
    """:func:`parse_json` without looking for nulls (:func:`check_nulls`)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Refused(400, [Issue("structure", f"the body is not UTF-8 (byte {exc.start + 1})")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f" at line {exc.lineno} column {exc.colno}"
        raise Refused(400, [Issue("structure", f"the body is not JSON{where}")]) from None
    except RecursionError:
        raise Refused(400, [Issue("structure", "the body nests deeper than any FHIR resource")]) from None
    return data


def check_nulls(data: Any) -> None:
    """Refused 400 (structure) at the first JSON null in ``data``: FHIR JSON has none."""
    null = _first_null(data, str(data.get("resourceType", "")) if isinstance(data, dict) else "")
    if null is not None:
        raise Refused(400, [Issue("structure", "null is not a FHIR JSON value: leave the element out", [null])])


def _first_null(data: Any, at: str) -> str | None:
    """The FHIRPath-like location of the first JSON null in ``data`` (None: there is none).
    ``_x: [null, ...]`` (a primitive list's extension placeholders) is FHIR's one use of null."""
    if isinstance(data, dict):
        for key, value in data.items():
            if value is None:
                return f"{at}.{key}" if at else key
            if isinstance(value, (dict, list)) and not (key.startswith("_") and isinstance(value, list)):
                found = _first_null(value, f"{at}.{key}" if at else key)
                if found is not None:
                    return found
    elif isinstance(data, list):
        for n, value in enumerate(data):
            if value is None:
                return f"{at}[{n}]"
            if isinstance(value, (dict, list)):
                found = _first_null(value, f"{at}[{n}]")
                if found is not None:
                    return found
    return None


def _location(resource_type: str, loc: tuple) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-") and part != "__root__":
            out += f".{part}"
    return out


def check_resource(data: Any, expected_type: str | None = None, where: str = "") -> str:
    """Check ``data`` as an R4 resource (with the R4B models); its resourceType. Refused 400 listing
    every element at fault (located under ``where``, the resource's own path in a Bundle, e.g.
    ``Bundle.entry[1].resource``; else its type), 404 when the type is not one FHIR defines."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise Refused(400, [Issue("structure", "expected a FHIR resource: a JSON object with resourceType")])
    rtype = data["resourceType"]
    if expected_type is not None and rtype != expected_type:
        raise Refused(400, [Issue("invalid", f"resourceType {rtype} does not match the URL's {expected_type}")])
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        raise Refused(404, [Issue("not-supported", f"{rtype} is not a FHIR R4 resource type")]) from None
    try:
        model.model_validate(data)
    except ValidationError as exc:
        issues = [
            Issue(
                "structure" if e["type"] == "extra_forbidden" else "value",
                e["msg"],
                [_location(where or rtype, e["loc"])],
            )
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise Refused(400, issues[:50]) from None
    return rtype
