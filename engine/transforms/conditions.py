"""The condition language shared by mappings (``applies_when``, ``when``, ``where``) and channel filters.

A condition is a YAML mapping, either a test or a combinator::

    {path: MSH-9.1, equals: ADT}                  # one test: a subject and one operator
    {path: MSH-9.2, in: [A01, A04, A08]}
    {path: PV1-19, exists: true}                  # exists: false tests for absence
    {path: PID-3[*].5, not_in: [SS]}
    {path: OBX-3.1, matches: "2[0-9]{3}-[0-9]"}   # the whole value must match (Python regex)
    {all: [<condition>, ...]}   {any: [<condition>, ...]}   {not: <condition>}

The subject is ``path`` (an HL7 path, resolved in the current scopes; in an X12 or FHIR
mapping, a path of that format) or, inside a ``where`` that picks a repetition, ``component``
(``5`` or ``"4.1"`` of that repetition). A FHIRPath subject that selects a complex element
(``{path: Patient.address, exists: true}``) is present and equals nothing.

Semantics, with the subject's values (a path with ``[*]`` has several; empty ones are not
values; an HL7 null ``""`` is a value that equals nothing):

- ``equals`` / ``in`` / ``matches``: true when ANY value qualifies;
- ``not_equals`` / ``not_in``: true when NO value is equal / listed (an absent field passes);
- ``exists: true``: some value is non-empty; ``exists: false``: none is.

Comparison values are text: write numbers with decimals in quotes (``"2.10"``).

A compiled condition is a callable ``(msg, scopes=()) -> bool`` (a channel filter calls it
with the message only); for ``component`` subjects ``(repetition_text, delimiters) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol, cast

from engine.errors import ConfigError
from engine.formats.hl7 import Delimiters, unescape
from engine.transforms.build import Build, component_spec
from engine.transforms.reader import values_reader
from engine.yamlfile import Key


class Condition(Protocol):
    """A compiled condition: called with (message or repetition, scope); ``text`` reads it back."""

    text: str

    def __call__(self, *args: Any) -> bool: ...


OPERATORS = ("equals", "not_equals", "in", "not_in", "exists", "matches")
COMBINATORS = ("all", "any", "not")
MESSAGE, REPETITION = "message", "repetition"


def compile_condition(spec: Any, *, build: Build | None = None, key: Key = (), context: str = MESSAGE) -> Condition:
    """Compile ``spec`` once into a predicate.

    With ``build`` the problems are collected there (keys under ``key``) and a false
    placeholder is returned for a faulty spec; without it, ConfigError is raised listing
    every problem with keys relative to ``spec`` (``all[1].path``).
    """
    own = build is None
    b = build or Build()
    cond = _compile(spec, b, tuple(key), context)
    if own and b.problems:
        raise ConfigError(b.problems)
    return cond


def _false(*_a) -> bool:
    return False


def _compile(spec: Any, b: Build, key: Key, context: str) -> Condition:
    if not isinstance(spec, dict) or not spec:
        b.problem(key, "expected a condition such as {path: MSH-9.1, equals: ADT} or {all: [...]}")
        return _never
    combinators = [k for k in spec if k in COMBINATORS]
    if combinators:
        if len(spec) != 1:
            b.problem(key, f"{combinators[0]!r} must be alone in its condition; nest the others inside it")
            return _never
        name = combinators[0]
        arg = spec[name]
        if name == "not":
            inner = _compile(arg, b, key + ("not",), context)
            return _text(lambda a, s=(): not inner(a, s), f"not ({inner.text})")
        if not isinstance(arg, list) or not arg:
            b.problem(key + (name,), f"{name!r} takes a non-empty list of conditions")
            return _never
        parts = tuple(_compile(c, b, key + (name, i), context) for i, c in enumerate(arg))
        joiner = " and " if name == "all" else " or "
        text = joiner.join(f"({p.text})" for p in parts)
        if name == "all":
            return _text(lambda a, s=(): all(p(a, s) for p in parts), text)
        return _text(lambda a, s=(): any(p(a, s) for p in parts), text)
    return _leaf(spec, b, key, context)


def _leaf(spec: dict, b: Build, key: Key, context: str) -> Condition:
    subject = "path" if context == MESSAGE else "component"
    ok = b.keys(spec, key, (subject, *OPERATORS), "a condition")
    ops = [k for k in spec if k in OPERATORS]
    if subject not in spec:
        b.problem(key, f"a condition needs {subject!r} (what to test) and one of: {', '.join(OPERATORS)}")
        return _never
    if len(ops) != 1:
        if ok or ops:  # an unknown operator key was reported already
            b.problem(key, f"a condition needs exactly one operator (one of: {', '.join(OPERATORS)})")
        return _never
    getter, subject_text = _getter(spec[subject], b, key + (subject,), context)
    test = _operator(ops[0], spec[ops[0]], b, key + (ops[0],))
    if getter is None or test is None or not ok:
        return _never
    return _text(lambda a, s=(): test(getter(a, s)), f"{subject_text} {test.text}")


def _getter(value: Any, b: Build, key: Key, context: str):
    if context == MESSAGE:
        path = b.path(value, key, test=True)
        if path is None:
            return None, ""
        return values_reader(path, b.walks), path.text  # a rule's own group read straight
    comp = component_spec(value)
    if comp is None:
        b.problem(key, 'expected a component number such as 5 or "4.1"')
        return None, ""
    get = component_getter(*comp)

    def values(rep: str, d: Delimiters) -> list:
        v = get(rep, d)
        return [] if v == "" else [v]

    return values, ".".join(str(c) for c in comp if c)


def component_getter(comp: int, sub: int | None) -> Callable[[str, Delimiters], str | None]:
    """``(repetition_text, delimiters) -> value``: ``""`` when empty, None for HL7 null."""

    def get(rep: str, d: Delimiters) -> str | None:
        parts = rep.split(d.component)
        v = parts[comp - 1] if comp <= len(parts) else ""
        if sub is not None:
            subs = v.split(d.subcomponent)
            v = subs[sub - 1] if sub <= len(subs) else ""
        if v == '""':
            return None
        return unescape(v, d) if v else ""

    return get


def _operator(op: str, arg: Any, b: Build, key: Key):
    if op == "exists":
        if not isinstance(arg, bool):
            b.problem(key, "exists takes true or false")
            return None
        if arg:
            return _text(lambda vals: any(vals), "exists")  # noqa: PLW0108 - _text sets .text on the function
        return _text(lambda vals: not any(vals), "is absent")
    if op == "matches":
        if not isinstance(arg, str):
            b.problem(key, "matches takes a regular expression in quotes")
            return None
        try:
            rx = re.compile(arg)
        except re.error as exc:
            b.problem(key, f"invalid regular expression: {exc}")
            return None
        return _text(lambda vals: any(isinstance(v, str) and rx.fullmatch(v) for v in vals), f"matches {arg!r}")
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            b.problem(key, f"{op} takes a non-empty list of values, e.g. [A01, A04]")
            return None
        items = [b.scalar(v, key + (i,)) for i, v in enumerate(arg)]
        if any(v is None for v in items):
            return None
        allowed = frozenset(items)
        listed = f"[{', '.join(str(i) for i in items)}]"
        if op == "in":
            return _text(lambda vals: any(v in allowed for v in vals), f"in {listed}")
        return _text(lambda vals: not any(v in allowed for v in vals), f"not in {listed}")
    want = b.scalar(arg, key)
    if want is None:
        return None
    if op == "equals":
        return _text(lambda vals: want in vals, f"= {want}")
    return _text(lambda vals: want not in vals, f"!= {want}")


def _text(fn: Callable[..., bool], text: str) -> Condition:
    fn.text = text  # type: ignore[attr-defined]
    return cast(Condition, fn)


_never = _text(_false, "<invalid>")
