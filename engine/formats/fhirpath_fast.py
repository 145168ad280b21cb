"""A fast evaluator for the FHIRPath mappings use most, beside fhirpathpy for the rest.

fhirpathpy evaluates a path by walking its parse tree with type information for every node;
that is about 30 µs for ``code.coding.first().code`` and made FHIRPath 40 % of the CPU of a
FHIR Observation stored. Most mapping paths are member chains with a few functions, over plain
JSON: this module compiles those into Python closures over the same parse tree (parsed once by
fhirpathpy's own grammar), and evaluates them on the JSON itself.

What it evaluates (everything else is fhirpathpy's, whole path, at the first node it cannot
take, so an answer is always fhirpathpy's or the same as fhirpathpy's):

- member access, flattening lists (``name.given``); a choice element by its name (``value``,
  ``effective``: each ``valueQuantity``, ``valueString`` ... present) or typed
  (``value.ofType(Quantity)`` is ``valueQuantity``); ``ofType(<Resource>)`` keeps resources of
  that type;
- ``%resource``, ``%rootResource``, ``%owner``, ``%parent``, ``%context``, ``$this``;
- string, number and boolean literals; ``|`` (union, without repeats); ``=``, ``!=`` between
  single items; ``+`` and ``&`` of strings; ``and``, ``or``, ``not()``;
- ``first()``, ``last()``, ``tail()``, ``skip(n)``, ``take(n)``, ``exists()``,
  ``exists(criteria)``, ``empty()``, ``where(criteria)``, ``select(expr)``, ``count()``,
  ``matches('<regex>')``, ``iif(c, a[, b])`` (only the branch taken is evaluated).

Tested against fhirpathpy on every path of every FHIR mapping and every FHIR fixture
(``tests/test_fhirpath_fast.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhirpathpy.models import models

Env = dict[str, Any]
Fn = Callable[[list, Env], list]

TYPES = frozenset(
    [
        "Boolean",
        "Integer",
        "Decimal",
        "String",
        "Uri",
        "Url",
        "Canonical",
        "Code",
        "Id",
        "Markdown",
        "Instant",
        "DateTime",
        "Date",
        "Time",
        "Quantity",
        "CodeableConcept",
        "Coding",
        "Range",
        "Ratio",
        "Period",
        "SampledData",
        "Attachment",
        "Reference",
        "Identifier",
        "Age",
        "Duration",
        "Annotation",
        "Timing",
        "UnsignedInt",
        "PositiveInt",
        "Base64Binary",
        "Oid",
        "Uuid",
        "Money",
        "HumanName",
        "Address",
        "ContactPoint",
        "Signature",
        "Dosage",
        "Meta",
        "Expression",
        "Count",
        "Distance",
        "ContactDetail",
    ]
)
"""Type suffixes of choice elements (``value[x]``: ``valueQuantity``, ``valueDateTime`` ...)."""


_DATE = re.compile(r"^\d{4}(-\d\d)?(-\d\d)?(T|$)")


CHOICES = frozenset(path.rsplit(".", 1)[-1] for path in models["r4"]["choiceTypePaths"])
"""Names of R4's choice elements (``value``, ``effective``, ``onset`` ...): only these are looked
for under a type suffix when the name itself is absent (from fhirpathpy's R4 model)."""


class Fallback(Exception):
    """This path, on this data, is fhirpathpy's to evaluate."""


def compile_fast(ast: dict) -> Fn | None:
    """A closure ``fn(focus, env) -> items`` for the parse tree ``ast`` (fhirpathpy's
    ``parse(text)["children"][0]``); None when the tree holds nothing this module evaluates.
    ``env`` maps constant names (``owner``, ``resource`` ...) to JSON data."""
    try:
        return _compile(ast)
    except _Unknown:
        return None


class _Unknown(Exception):
    pass


def _fallback(_focus: list, _env: Env) -> list:
    raise Fallback


def _compile(node: dict) -> Fn:
    kind = node.get("type")
    kids = node.get("children", [])
    handler = _NODES.get(str(kind))
    if handler is None:
        return _fallback  # evaluated only if reached: iif's other branch may never be
    return handler(node, kids)


def _term(_node: dict, kids: list) -> Fn:
    return _compile(kids[0])


def _invocation_term(_node: dict, kids: list) -> Fn:
    step = _step(kids[0])
    return lambda focus, env: step(focus, env, focus)


def _invocation(_node: dict, kids: list) -> Fn:
    left, right = kids
    typed = _typed_member(left, right)
    if typed is not None:
        return typed
    head = _compile(left)
    step = _step(right)

    def run(focus: list, env: Env) -> list:
        return step(head(focus, env), env, focus)

    return run


def _step(node: dict) -> Callable[[list, Env, list], list]:
    """A member or function applied to ``items`` (``outer``: the focus of the whole
    expression, for arguments such as ``where``'s, which see each item as ``$this``)."""
    kind = node.get("type")
    kids = node.get("children", [])
    if kind == "MemberInvocation":
        name = _name(kids[0])
        if name[:1].isupper():  # a type name at the start: Patient.name
            return lambda items, env, outer: [i for i in items if isinstance(i, dict) and i.get("resourceType") == name]
        return lambda items, env, outer: _member(items, name)
    if kind == "FunctionInvocation":
        return _function(kids[0])
    if kind == "ThisInvocation":
        return lambda items, env, outer: items
    return lambda items, env, outer: _fallback(items, env)


def _typed_member(left: dict, right: dict) -> Fn | None:
    """``<member>.ofType(<Type>)`` as the one key of the choice (``valueQuantity``)."""
    if right.get("type") != "FunctionInvocation":
        return None
    fn = right["children"][0]
    parts = fn.get("children", [])
    if _name(parts[0]) != "ofType" or len(parts) < 2:
        return None
    arg = parts[1]["children"][0]
    type_name = _plain_name(arg)
    if type_name is None:
        raise _Unknown
    if type_name[:1].isupper() and type_name not in TYPES and type_name.lower() not in _PRIMITIVES:
        head = _compile(left)  # a resource type: keep those resources
        return lambda focus, env: [
            i for i in head(focus, env) if isinstance(i, dict) and i.get("resourceType") == type_name
        ]
    member, before = _last_member(left)
    if member is None:
        return _fallback
    key = member + type_name[:1].upper() + type_name[1:]
    prior = _compile(before) if before is not None else None

    def run(focus: list, env: Env) -> list:
        items = prior(focus, env) if prior is not None else focus
        for i in items:
            if isinstance(i, dict) and member in i:
                raise Fallback  # a plain element of that name: its type is the model's to tell
        return _member(items, key)

    return run


_PRIMITIVES = frozenset(
    [
        "boolean",
        "integer",
        "decimal",
        "string",
        "uri",
        "url",
        "canonical",
        "code",
        "id",
        "markdown",
        "instant",
        "datetime",
        "date",
        "time",
        "unsignedint",
        "positiveint",
        "base64binary",
        "oid",
        "uuid",
    ]
)


def _last_member(node: dict) -> tuple[str | None, dict | None]:
    """(member name, what it is taken of) when ``node`` ends with a member access: ``a.b`` ->
    ("b", a); ``value`` -> ("value", None)."""
    if node.get("type") == "TermExpression":
        inner = node["children"][0]
        if inner.get("type") == "InvocationTerm" and inner["children"][0].get("type") == "MemberInvocation":
            name = _name(inner["children"][0]["children"][0])
            return (None, None) if name[:1].isupper() else (name, None)
        return None, None
    if node.get("type") == "InvocationExpression":
        left, right = node["children"]
        if right.get("type") == "MemberInvocation":
            return _name(right["children"][0]), left
    return None, None


def _member(items: list, name: str) -> list:
    out: list = []
    for item in items:
        if not isinstance(item, dict):
            continue
        value = item.get(name)
        if value is None:
            if name not in CHOICES or name in item:
                continue
            for key, choice in item.items():  # a choice element by its name: value -> valueQuantity
                if key.startswith(name) and key[len(name) :] in TYPES:
                    _add(out, choice)
            continue
        _add(out, value)
    return out


def _add(out: list, value: Any) -> None:
    if isinstance(value, list):
        out.extend(v for v in value if v is not None)
    else:
        out.append(value)


def _function(node: dict) -> Callable[[list, Env, list], list]:
    parts = node.get("children", [])
    name = _name(parts[0])
    params = parts[1].get("children", []) if len(parts) > 1 else []
    if name in ("first", "last", "tail", "exists", "empty", "count", "not") and not params:
        simple = {
            "first": lambda items: items[:1],
            "last": lambda items: items[-1:],
            "tail": lambda items: items[1:],
            "exists": lambda items: [bool(items)],
            "empty": lambda items: [not items],
            "count": lambda items: [len(items)],
            "not": lambda items: [] if not items else [not _truth(items)],
        }[name]
        return lambda items, env, outer: simple(items)
    if name in ("skip", "take") and len(params) == 1:
        count = _integer(params[0])
        if name == "skip":
            return lambda items, env, outer: items[count:]
        return lambda items, env, outer: items[:count]
    if name in ("where", "exists") and len(params) == 1:
        crit = _compile(params[0])

        def where(items: list, env: Env, outer: list) -> list:
            kept = [i for i in items if _truth(crit([i], env))]
            return kept if name == "where" else [bool(kept)]

        return where
    if name == "select" and len(params) == 1:
        each = _compile(params[0])
        return lambda items, env, outer: [v for i in items for v in each([i], env)]
    if name == "matches" and len(params) == 1:
        pattern = _string_literal(params[0])

        def matches(items: list, env: Env, outer: list) -> list:
            if not items:
                return []
            if len(items) != 1 or not isinstance(items[0], str):
                raise Fallback
            return [pattern.search(items[0]) is not None]

        return matches
    if name == "iif" and len(params) in (2, 3):
        cond, yes = _compile(params[0]), _compile(params[1])
        no = _compile(params[2]) if len(params) == 3 else None

        def iif(items: list, env: Env, outer: list) -> list:
            if len(items) > 1:
                raise Fallback
            focus = items if items else outer
            if _truth(cond(focus, env)):
                return yes(focus, env)
            return no(focus, env) if no is not None else []

        return iif
    return lambda items, env, outer: _fallback(items, env)


def _string_literal(node: dict) -> re.Pattern:
    """A regular expression given as a string literal (``matches('^Patient/')``), compiled once."""
    if node.get("type") == "TermExpression":
        lit = node["children"][0]
        if lit.get("type") == "LiteralTerm" and lit["children"][0].get("type") == "StringLiteral":
            return re.compile(_unquote(lit["children"][0].get("text") or "''"), re.DOTALL)
    raise _Unknown


def _integer(node: dict) -> int:
    text = node.get("text") or ""
    if not text.isdigit():
        raise _Unknown
    return int(text)


def _truth(items: list) -> bool:
    """A collection as a condition: empty is false, one boolean is itself, one other item true."""
    if not items:
        return False
    if len(items) == 1 and isinstance(items[0], bool):
        return items[0]
    if len(items) == 1:
        return True
    raise Fallback  # several items as a condition: fhirpathpy says what that is


def _literal(node: dict, kids: list) -> Fn:
    lit = kids[0]
    kind, text = lit.get("type"), lit.get("text") or ""
    value: Any
    if kind == "StringLiteral":
        value = _unquote(text)
    elif kind == "BooleanLiteral":
        value = text == "true"
    elif kind == "NumberLiteral":
        value = int(text) if text.isdigit() else Decimal(text)
    else:
        return _fallback
    return lambda focus, env: [value]


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body
    try:
        return json.loads('"' + body.replace('"', '\\"').replace("\\'", "'") + '"')
    except ValueError:
        raise _Unknown from None


def _constant(_node: dict, kids: list) -> Fn:
    name = _name(kids[0]["children"][0]) if kids and kids[0].get("children") else ""
    if name == "context":
        return lambda focus, env: focus
    if name not in ("resource", "rootResource", "owner", "parent"):
        return _fallback

    def constant(focus: list, env: Env) -> list:
        value = env.get(name)
        return [] if value is None else [value]

    return constant


def _paren(_node: dict, kids: list) -> Fn:
    return _compile(kids[0])


def _union(_node: dict, kids: list) -> Fn:
    a, b = _compile(kids[0]), _compile(kids[1])

    def union(focus: list, env: Env) -> list:
        out: list = []
        for item in (*a(focus, env), *b(focus, env)):  # a few items: equality, not hashing JSON
            if not any(item is o or (type(item) is type(o) and item == o) for o in out):
                out.append(item)
        return out

    return union


def _equality(node: dict, kids: list) -> Fn:
    op = (node.get("terminalNodeText") or [""])[0]
    if op not in ("=", "!="):
        return _fallback
    a, b = _compile(kids[0]), _compile(kids[1])

    def equal(focus: list, env: Env) -> list:
        left, right = a(focus, env), b(focus, env)
        if not left or not right:
            return []
        if len(left) != 1 or len(right) != 1:
            raise Fallback
        x, y = left[0], right[0]
        if isinstance(x, (dict, list)) or isinstance(y, (dict, list)) or type(x) is not type(y):
            raise Fallback  # complex items, or a number beside a string: the model's equality
        if isinstance(x, str) and (_DATE.match(x) or _DATE.match(y)):
            raise Fallback  # dates compare by their precision in FHIRPath, not as text
        return [(x == y) == (op == "=")]

    return equal


def _additive(node: dict, kids: list) -> Fn:
    op = (node.get("terminalNodeText") or [""])[0]
    if op not in ("+", "&"):
        return _fallback
    a, b = _compile(kids[0]), _compile(kids[1])

    def concat(focus: list, env: Env) -> list:
        left, right = a(focus, env), b(focus, env)
        if len(left) > 1 or len(right) > 1 or not all(isinstance(v, str) for v in (*left, *right)):
            raise Fallback  # numbers, dates, several items: the model's arithmetic
        if op == "+" and (not left or not right):
            return []  # + of an empty collection is empty; & takes it as ''
        return [(left[0] if left else "") + (right[0] if right else "")]

    return concat


def _boolean(node: dict, kids: list) -> Fn:
    op = (node.get("terminalNodeText") or [""])[0]
    if op not in ("and", "or"):
        return _fallback
    a, b = _compile(kids[0]), _compile(kids[1])

    def logic(focus: list, env: Env) -> list:
        x, y = _logic_value(a(focus, env)), _logic_value(b(focus, env))
        if op == "and":
            if x is False or y is False:
                return [False]
            return [True] if x is True and y is True else []
        if x is True or y is True:
            return [True]
        return [False] if x is False and y is False else []

    return logic


def _logic_value(items: list) -> bool | None:
    if not items:
        return None
    return _truth(items)


def _name(node: dict) -> str:
    text = node.get("text") or ""
    return text[1:-1] if text.startswith("`") else text


def _plain_name(node: dict) -> str | None:
    """The identifier a type argument is (``Quantity`` in ``ofType(Quantity)``)."""
    if node.get("type") == "TermExpression":
        inner = node["children"][0]
        if inner.get("type") == "InvocationTerm" and inner["children"][0].get("type") == "MemberInvocation":
            return _name(inner["children"][0]["children"][0])
    return None


_NODES: dict[str, Callable[[dict, list], Fn]] = {
    "TermExpression": _term,
    "InvocationTerm": _invocation_term,
    "InvocationExpression": _invocation,
    "LiteralTerm": _literal,
    "ExternalConstantTerm": _constant,
    "ParenthesizedTerm": _paren,
    "UnionExpression": _union,
    "EqualityExpression": _equality,
    "AdditiveExpression": _additive,
    "AndExpression": _boolean,
    "OrExpression": _boolean,
}
