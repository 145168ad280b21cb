"""FHIR resources as mapping targets: ``target: fhir.<ResourceType>``, checked against R4B.

A record whose target is ``fhir.Patient`` builds one FHIR R4 resource: its fields are the
resource's top-level elements (``identifier``, ``birthDate``, ``deceasedDateTime``), its values
JSON-ready (text, numbers, true/false, objects and lists: see the ``object``, ``each``,
list, ``fhir_id`` and ``reference`` forms in :mod:`engine.transforms.expressions`), ``id``
required (the record's key). :func:`engine.formats.fhir_bundle.transaction` makes the records
of a message one transaction Bundle.

Checked when the mapping loads, each problem with file:line: the type is a resource of
``fhir.resources.R4B`` (that package's default module is R5; R4B's resources and elements are
R4's for everything these mappings build), every field an element of it, and every key of an
``object`` an element of the data type the enclosing element holds (``identifier: {each: PID-3,
item: {object: {sytem: ...}}}`` is an unknown element ``sytem`` of Identifier). A primitive
element given an ``object`` is a problem too. Only the names are checked here; the built
resources are validated as R4 by ``engine try``, ``engine test`` and the tests
(``tests/test_v2_to_fhir.py``): structure and data types by fhir.resources.R4B, the codes of
required bindings, which R4B's models list but do not enforce, by :func:`binding_problems`.

Values become JSON: a date ``1958-07-22``, a date/time in UTC ``2024-03-14T15:05:00Z``; an HL7
null (``""``), like an absent value, leaves the element out (FHIR has no null; a PUT without
the element clears it, as the null asks). Empty objects and lists are left out.
"""

from __future__ import annotations

import re
import typing
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

from engine.transforms.build import Build
from engine.transforms.values import MISSING
from engine.yamlfile import Key

TARGET = re.compile(r"^fhir\.[A-Z][A-Za-z]+$")
ELEMENT = re.compile(r"^[a-z][A-Za-z0-9]*$")
WRAPPERS = ("coalesce",)
"""Expression functions whose listed alternatives each give the element's value."""


@cache
def model(resource_type: str) -> Any:
    """The R4B model class of a resource or data type name; None when there is none."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, ImportError, AttributeError):
        return None


@cache
def elements(cls: Any) -> tuple[str, ...]:
    """The element names of an R4B model (choice elements by their typed names: ``valueQuantity``)."""
    return tuple(cls.elements_sequence())


@cache
def _by_alias(cls: Any) -> dict[str, Any]:
    """The model's fields by their JSON names (Python names dodge keywords: ``class_fhir`` is ``class``)."""
    return {(f.alias or n): f for n, f in cls.model_fields.items()}


def element_type(cls: Any, name: str) -> Any:
    """The model of element ``name`` of ``cls`` (a data type or backbone element), None for a
    primitive (string, code, dateTime ...)."""
    field = _by_alias(cls).get(name)
    if field is None:
        return None
    inner = field.annotation
    while typing.get_args(inner):
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        inner = args[0] if args else None
    get = getattr(inner, "get_model_klass", None)
    return get() if get is not None else None


def is_resource_type(name: Any) -> bool:
    """True for the name of an R4B resource type (``Patient``; not a data type such as ``HumanName``)."""
    from fhir.resources.R4B.resource import Resource

    cls = model(name) if isinstance(name, str) else None
    return cls is not None and issubclass(cls, Resource) and cls.get_resource_type() == name


def check_fields(b: Build, resource_type: str, fields: dict, key: Key) -> None:
    """Report an unknown type, and each field or ``object`` key that is no element where it stands."""
    cls = model(resource_type)
    if not is_resource_type(resource_type):
        b.problem(key + ("target",), f"unknown FHIR R4 resource type {resource_type!r} (fhir.resources.R4B)")
        return
    for name, spec in fields.items():
        _check_element(b, cls, name, spec, key + ("fields", name))


def _check_element(b: Build, cls: Any, name: Any, spec: Any, key: Key) -> None:
    what = cls.get_resource_type()
    if not isinstance(name, str) or name not in elements(cls):
        near = [e for e in elements(cls) if isinstance(name, str) and e.lower().startswith(name.lower()[:4])]
        hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
        b.problem(key, f"{name!r} is not an element of {what}{hint}")
        return
    _check_value(b, element_type(cls, name), f"{what}.{name}", spec, key)


def _check_value(b: Build, inner: Any, where: str, spec: Any, key: Key) -> None:
    """Walk an element's expression: lists, ``each`` items, ``coalesce`` alternatives, ``object``s."""
    if isinstance(spec, list):
        for i, item in enumerate(spec):
            _check_value(b, inner, where, item, key + (i,))
        return
    if not isinstance(spec, dict):
        return
    if "each" in spec and "item" in spec:
        _check_value(b, inner, where, spec["item"], key + ("item",))
    for tag in WRAPPERS:
        if isinstance(spec.get(tag), list):
            for i, alt in enumerate(spec[tag]):
                _check_value(b, inner, where, alt, key + (tag, i))
    obj = spec.get("object")
    if isinstance(obj, dict):
        if inner is None:
            b.problem(key + ("object",), f"{where} is a primitive element (a single value), not an object")
            return
        for name, sub in obj.items():
            _check_element(b, inner, name, sub, key + ("object", name))
    if "reference" in spec and inner is not None and "reference" not in elements(inner):
        b.problem(key + ("reference",), f"{where} is not a Reference; reference builds {{reference: Type/id}}")


def to_json(value: Any) -> Any:
    """A value as FHIR JSON holds it; MISSING for what leaves the element out (absent, HL7
    null, empty text, an empty object or list)."""
    if value is MISSING or value is None or value == "":
        return MISSING
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        out = {k: j for k, v in value.items() if (j := to_json(v)) is not MISSING}
        return out or MISSING
    if isinstance(value, list):
        items = [j for v in value if (j := to_json(v)) is not MISSING]
        return items or MISSING
    return value


def binding_problems(resource: dict[str, Any]) -> list[str]:
    """Codes outside a required binding (``gender: woman``), as ``location: what``.

    fhir.resources.R4B checks structure and data types but not the codes of required bindings
    (its models list them as ``enum_values`` without enforcing them); a receiver does check them.
    Only complete lists are checked: a list the model ends with ``+`` (Encounter.status, whose
    codes run on past ``cancelled``) is a summary. Nested resources (a Bundle's entries) are
    checked by their own type."""
    out: list[str] = []
    _bindings(resource, model(resource.get("resourceType", "")), str(resource.get("resourceType", "")), out)
    return out


def _bindings(value: Any, cls: Any, where: str, out: list[str]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _bindings(item, cls, f"{where}[{i}]", out)
        return
    if not isinstance(value, dict):
        return
    if isinstance(value.get("resourceType"), str):
        cls = model(value["resourceType"])
    if cls is None:
        return
    fields = _by_alias(cls)
    for name, v in value.items():
        field = fields.get(name)
        if field is None:
            continue
        allowed = (field.json_schema_extra or {}).get("enum_values")
        if allowed and "+" not in allowed:
            for code in v if isinstance(v, list) else [v]:
                if isinstance(code, str) and code not in allowed:
                    out.append(f"{where}.{name}: code not in the required binding ({', '.join(allowed)})")
        elif not allowed:
            _bindings(v, element_type(cls, name) or _any_resource(v), f"{where}.{name}", out)


def _any_resource(value: Any) -> Any:
    """A resource held by a Bundle entry or ``contained``: its own model (else nothing to check)."""
    rtype = value.get("resourceType") if isinstance(value, dict) else None
    return model(rtype) if isinstance(rtype, str) else None
