"""One FHIR R4 resource (JSON; a Bundle included) as the mapping language reads it: FHIRPath.

:class:`FhirMessage` is a read-only view of one resource that offers what the mapping executor
asks of a message (``format``, ``values``, ``groups``, ``scope_name``; see
:mod:`engine.transforms.reader`), so one mapping language, one executor, one ``engine
try``/``engine test`` serve HL7 v2, X12 and FHIR. A mapping says ``format: fhir``; its paths
are FHIRPath expressions (fhirpathpy, with the R4 model, so ``value.ofType(Quantity)`` and
``effective`` read choice elements)::

    family_name: Patient.name.where(use = 'official').family
    for_each: entry.resource.ofType(Observation)          # each Observation of a Bundle
    for_each: [entry.resource.ofType(Observation), component]   # each component of each

:func:`compile_path` compiles a path once (per text, for the process); a syntax error, an
unknown function, a wrong number of arguments or an unknown ``%constant`` is a ValueError
naming what is wrong, which the mapping compiler reports with file and line. A path is
evaluated against the innermost ``for_each`` node (the resource itself outside ``for_each``);
``%resource`` and ``%rootResource`` are the whole resource (the Bundle), ``%owner`` the
resource the node belongs to (the Observation at ``entry.resource.ofType(Observation)`` and at
its ``component``; the resource itself outside ``for_each``), ``%parent`` the node of the
enclosing ``for_each`` level (the resource at the first level), ``%context`` the node the path
is evaluated against.

Values (:meth:`FhirMessage.values`) are text, as the converters expect: strings and dates as
sent (``2024-03-14``, ``2024-03-14T09:30:00-05:00``), decimals exactly as sent (``5.40``),
integers, booleans as ``true``/``false``. A path that selects an element with parts (a
complex element: ``Patient.name``) is an :class:`EvaluationError` (a ValueProblem to the executor) at run
time, except in a condition, where such an element is present (``exists: true``) and equals
nothing. A path that cannot be evaluated (``single()`` of two items) is an EvaluationError whose
reason names the path, never a value. FHIR has no explicit null: a value is there or absent.

Scopes are opaque int handles (one per node a ``for_each`` walked, stable for the message).

Positions (the unmapped-data report, :mod:`engine.transforms.report`): a populated leaf is
named by its element path without indexes, from its resource's type (``Patient.name.given``,
``Observation.valueQuantity.value``; a Bundle's resources by their own type). The Bundle's
own elements (``type``, ``entry.fullUrl``, ``entry.request``) are the envelope and ``meta``
and ``text`` (narrative) of any resource are never reported. What a path reads is an
approximation from its member names, worked out once per path and context type: every
member chain the path ends with or hands to an operator or function argument is read
(``Patient.name.where(use = 'official').family`` reads ``Patient.name.use`` and
``Patient.name.family``), a read element covers its parts, ``ofType(Quantity)`` after
``value`` reads ``valueQuantity`` and ``effective`` covers ``effectiveDateTime``. Paths the
approximation cannot follow (``resolve()``, variables other than the ones above) read nothing,
so their leaves may be reported although a rule read them.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as _fp_compile
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse as _fp_parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from engine.errors import ParseError
from engine.formats.fhirpath_fast import compile_fast

MODEL = models["r4"]
CONSTANTS = ("resource", "rootResource", "owner", "parent", "context", "ucum")
"""The ``%`` names a path may use (see the module docstring; ``%ucum`` is UCUM's system URI)."""
HIDDEN = ("meta", "text")
"""Elements of every resource the unmapped-data report leaves out (bookkeeping, narrative)."""
_CHOICE = re.compile(
    r"^([a-z][A-Za-z]*?)(Boolean|Integer|Decimal|String|Uri|Url|Canonical|Code|Id|Markdown|Instant|DateTime|Date|"
    r"Time|Quantity|CodeableConcept|Coding|Range|Ratio|Period|SampledData|Attachment|Reference|Identifier|Age|"
    r"Duration|Annotation|Timing|UnsignedInt|PositiveInt|Base64Binary|Oid|Uuid|Money|HumanName|Address|"
    r"ContactPoint|Signature|Dosage|Meta|Expression)$"
)


class _Element:
    """A complex element read by a condition: present, equal to no text."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "<element>"


ELEMENT = _Element()


class _Node(ResourceNode):
    """A node paths are evaluated against. fhirpathpy filters a type (``Patient.name``) by
    subscripting the node (``node["resourceType"]``) and knows a node's type (``ofType()``) only
    when it is a ResourceNode: this is both."""

    def __getitem__(self, key: str) -> Any:
        if isinstance(self.data, dict) and "resourceType" in self.data:
            return self.data[key]
        raise TypeError("not a resource")  # what fhirpathpy expects of an element


class EvaluationError(ValueError):
    """A path could not give a value in this message; the text names the path, never a value
    (the mapping executor turns it into a ValueProblem, which fails the record)."""


class FhirPath:
    """A compiled FHIRPath: ``text`` as written; ``test`` when a condition reads it (see ELEMENT).

    ``many`` is always true: a FHIRPath gives a collection (``concat`` joins every item; write
    ``.first()`` for one)."""

    __slots__ = ("ast", "fast", "fn", "nodes", "test", "text")
    many = True

    def __init__(self, text: str, test: bool = False):
        self.text, self.test = " ".join(text.split()), test  # one line, however the YAML wrapped it
        self.fn = _fp_compile(text, MODEL)
        self.nodes = _fp_compile(text, MODEL, {"returnRawData": True})
        self.ast = _fp_parse(text)["children"][0]
        self.fast = compile_fast(self.ast)  # the common paths, on the JSON itself (engine/formats/fhirpath_fast.py)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<FhirPath {self.text}>"


class _Raise(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        if " expecting {" in msg and len(msg) > 100:  # antlr lists every token it would take
            msg = msg.split(" expecting {", 1)[0]
        raise ValueError(f"column {column + 1}: {msg}")


@lru_cache(maxsize=4096)
def compile_path(text: str, test: bool = False) -> FhirPath:
    """Compile a FHIRPath once; ValueError (``malformed FHIRPath ...: why``) when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a FHIRPath such as Patient.name.family")
    try:
        lexer = FHIRPathLexer(InputStream(text))
        lexer.removeErrorListeners()
        lexer.addErrorListener(_Raise())
        parser = FHIRPathParser(CommonTokenStream(lexer))
        parser.removeErrorListeners()
        parser.addErrorListener(_Raise())
        parser.entireExpression()
        path = FhirPath(text, test)
    except ValueError as exc:
        raise ValueError(f"malformed FHIRPath {text!r}: {exc}") from None
    except Exception as exc:  # the lexer raises its own errors on characters it cannot read
        raise ValueError(f"malformed FHIRPath {text!r}: {type(exc).__name__}") from None
    _check_names(path.ast, text)
    return path


def _check_names(node: dict, text: str) -> None:
    """Unknown functions, wrong argument counts and unknown %constants, found before any message."""
    kind, kids = node.get("type"), node.get("children", [])
    if kind == "Functn":
        name = kids[0]["text"]
        params = len(kids[1].get("children", [])) if len(kids) > 1 else 0
        spec = cast("dict[str, Any] | None", invocation_registry.get(name))
        if spec is None:
            raise ValueError(f"FHIRPath {text!r}: unknown function {name}()")
        if "variadic" not in spec and params not in spec.get("arity", {0: ()}):
            raise ValueError(f"FHIRPath {text!r}: {name}() does not take {params} argument(s)")
    if kind == "ExternalConstant":
        name = kids[0].get("text", "").strip("`'") if kids else ""
        if name not in CONSTANTS:
            raise ValueError(f"FHIRPath {text!r}: unknown %{name} (known: {', '.join(CONSTANTS)})")
    for k in kids:
        _check_names(k, text)


def is_fhir(content: bytes) -> bool:
    """True when stored ``content`` is a FHIR resource in JSON (it starts with ``{``)."""
    return content.lstrip(b"\xef\xbb\xbf \r\n\t")[:1] == b"{"


class FhirMessage:
    """One FHIR resource, read-only, for mappings (see the module docstring).

    ``resource`` is the parsed JSON (decimals as :class:`~decimal.Decimal`, exactly as sent);
    ``resource_type`` its ``resourceType``.
    """

    format = "fhir"
    delimiters = None  # no HL7 delimiters: HL7-only expressions are refused at compile time

    def __init__(self, resource: dict):
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ParseError("a FHIR resource is a JSON object with a resourceType", code=100, segment="")
        self.resource = resource
        self.resource_type: str = resource["resourceType"]
        self._root = _Node(resource, None)
        self._nodes: list[tuple[Any, str, int | None, str]] = []  # (node, for_each text, parent, type)
        self._groups: dict[tuple[str, int | None], list[int]] = {}
        self._values: dict[tuple[int, int | None], list] = {}
        self._reads: dict[tuple[int, str, str, str], frozenset[str]] = {}
        self._types: dict[int | None, tuple[str, str, str]] = {}
        self._raw: dict[int | None, dict] = {}

    @classmethod
    def from_text(cls, text: str) -> FhirMessage:
        """Read a resource from its JSON text; ParseError when it is not JSON or not a resource."""
        try:
            data = json.loads(text.lstrip("\ufeff"), parse_float=Decimal)
        except ValueError as exc:
            line = getattr(exc, "lineno", None)
            where = f" (line {line}, column {getattr(exc, 'colno', '?')})" if line else ""
            raise ParseError(f"not a FHIR resource: invalid JSON{where}", code=100, segment="") from None
        return cls(data)

    @property
    def title(self) -> str:
        """``Patient id p1`` or ``Bundle transaction, 3 entries`` (no patient data; for ``engine try``)."""
        r = self.resource
        if self.resource_type == "Bundle":
            return f"Bundle {r.get('type', '')}, {len(r.get('entry') or [])} entries"
        return f"{self.resource_type}" + (f" id {r['id']}" if isinstance(r.get("id"), str) else "")

    # -- scopes ---------------------------------------------------------------------------------
    def _node(self, scope: int | None) -> Any:
        return self._root if scope is None else self._nodes[scope][0]

    def _type(self, scope: int | None) -> str:
        return self.resource_type if scope is None else self._nodes[scope][3]

    def _owner(self, scope: int | None) -> int | None:
        """The innermost scope (from ``scope`` outwards) that is a resource; None: the root."""
        while scope is not None:
            data = self._nodes[scope][0].data
            if isinstance(data, dict) and "resourceType" in data:
                return scope
            scope = self._nodes[scope][2]
        return None

    def _vars(self, scope: int | None) -> dict:
        parent = None if scope is None else self._nodes[scope][2]
        root, owner = self._root, self._node(self._owner(scope))
        return {"resource": root, "rootResource": root, "owner": owner, "parent": self._node(parent)}

    def location(self, scope: int) -> str | None:
        """Where the resource at ``scope`` stands in the request: ``Bundle.entry[2].resource``, or
        the resource's type for the resource itself; None for a node inside a resource."""
        data = self._nodes[scope][0].data
        if data is self.resource:
            return self.resource_type
        if self.resource_type == "Bundle":
            for n, entry in enumerate(self.resource.get("entry") or []):
                if isinstance(entry, dict) and entry.get("resource") is data:
                    return f"Bundle.entry[{n}].resource"
        return None

    def _raw_vars(self, scope: int | None) -> dict:
        """:meth:`_vars` as JSON data, for the fast path (once per scope)."""
        found = self._raw.get(scope)
        if found is None:
            parent = None if scope is None else self._nodes[scope][2]
            root = self.resource
            found = self._raw[scope] = {
                "resource": root,
                "rootResource": root,
                "owner": self._node(self._owner(scope)).data,
                "parent": self._node(parent).data,
            }
        return found

    def scope_name(self, scope: int) -> str:
        """The ``for_each`` text that walked to ``scope`` (``component``)."""
        return self._nodes[scope][1]

    def groups(self, path: FhirPath | str, within: int | None = None) -> list[int]:
        """One handle per node ``path`` selects in ``within`` (the resource when None), in order;
        the same call gives the same handles."""
        if isinstance(path, str):
            path = compile_path(path)
        key = (path.text, within)
        found = self._groups.get(key)
        if found is None:
            kind = min(self._analyse(path, within)[0], default=self._type(within))
            found = []
            for node in self._resources(path, within) or self._found(path, within):
                data = node.data
                own = data.get("resourceType") if isinstance(data, dict) else None
                self._nodes.append((node, path.text, within, own if isinstance(own, str) else kind))
                found.append(len(self._nodes) - 1)
            self._groups[key] = found
        return found

    spans = groups

    def _resources(self, path: FhirPath, within: int | None) -> list[_Node] | None:
        """The nodes ``path`` selects by the fast path, when they are all resources (each knows
        its own type, so fhirpathpy reads them as it reads the root); else None."""
        if path.fast is None:
            return None
        try:
            items = path.fast([self._node(within).data], self._raw_vars(within))
        except Exception:  # Fallback, or data the fast path did not foresee
            return None
        if not items or not all(isinstance(i, dict) and isinstance(i.get("resourceType"), str) for i in items):
            return None
        return [_Node(i, None) for i in items]

    def _found(self, path: FhirPath, within: int | None) -> list[_Node]:
        out = []
        for found_node in self._evaluate(path, path.nodes, within):
            if isinstance(found_node, ResourceNode):
                n = found_node
                out.append(_Node(n.data, n.path, n._data, n.propName, n.index))
            else:  # a value fhirpathpy made (a string, a number)
                out.append(_Node(found_node, None))
        return out

    # -- values ---------------------------------------------------------------------------------
    def _evaluate(self, path: FhirPath, fn, scope: int | None) -> list:
        try:
            return fn(self._node(scope), self._vars(scope))
        except Exception as exc:  # fhirpathpy raises plain Exceptions whose text may quote values
            raise EvaluationError(f"FHIRPath {path.text} could not be evaluated ({type(exc).__name__})") from None

    def values(self, path: FhirPath | str, scopes: tuple = ()) -> list:
        """Each item ``path`` gives in the innermost scope, as text (see the module docstring)."""
        if isinstance(path, str):
            path = compile_path(path)
        scope = scopes[-1] if scopes else None
        key = (id(path), scope)
        out = self._values.get(key)
        if out is None:
            found = None
            if path.fast is not None:
                try:
                    found = path.fast([self._node(scope).data], self._raw_vars(scope))
                except Exception:  # Fallback, or data the fast path did not foresee: fhirpathpy decides
                    found = None
            if found is None:
                found = self._evaluate(path, path.fn, scope)
            out = [t for t in (_text(v, path) for v in found) if t != ""]
            self._values[key] = out
        return out

    # -- positions ------------------------------------------------------------------------------
    def _analyse(self, path: FhirPath, scope: int | None) -> tuple[set[str], set[str]]:
        """(the element paths ``path`` results in, those it reads) from ``scope``'s type."""
        base = self._type(scope)
        parent = self._type(None if scope is None else self._nodes[scope][2])
        root, owner = {self.resource_type}, {self._type(self._owner(scope))}
        env = {"resource": root, "rootResource": root, "owner": owner, "parent": {parent}, "context": {base}}
        read: set[str] = set()
        return _walk(path.ast, {base}, env, read), read

    def reads(self, path: FhirPath, scopes: tuple = ()) -> frozenset[str]:
        """The element paths ``path`` reads in these scopes (an approximation: module docstring)."""
        scope = scopes[-1] if scopes else None
        types = self._types.get(scope)
        if types is None:  # the types around the scope: the same for each Observation of a Bundle
            outer = None if scope is None else self._nodes[scope][2]
            types = self._types[scope] = (self._type(scope), self._type(outer), self._type(self._owner(scope)))
        key = (id(path), *types)
        found = self._reads.get(key)
        if found is None:
            found = self._reads[key] = frozenset(self._analyse(path, scope)[1])
        return found

    def populated(self) -> list[str]:
        """Every populated leaf's element path, in document order without repeats."""
        out: dict[str, None] = {}
        _leaves(self.resource, "", out)
        return list(out)

    def unmapped(self, read: set[str]) -> list[str]:
        """Populated leaves no read position covers (a read element covers its parts; ``effective``
        covers ``effectiveDateTime``). Positions only, never values."""
        left = []
        for leaf in self.populated():
            parts = leaf.split(".")
            covered = False
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                choice = _CHOICE.match(parts[i - 1])
                if prefix in read or (choice and ".".join([*parts[: i - 1], choice.group(1)]) in read):
                    covered = True
                    break
            if not covered:
                left.append(leaf)
        return left


def _text(v: Any, path: FhirPath) -> Any:
    """One FHIRPath result item as text; a complex element fails (or is ELEMENT in a condition)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, Decimal):
        return format(v, "f") if "E" in str(v) else str(v)
    if isinstance(v, (int, float)):
        return str(v)
    if v is None:
        return ""
    if isinstance(v, list):  # fhirpathpy's single() of several items, for one
        raise EvaluationError(f"FHIRPath {path.text} gives a list inside its result, not a value")
    if isinstance(v, dict):
        if path.test:
            return ELEMENT
        raise EvaluationError(f"FHIRPath {path.text} selects an element with parts, not a value: name one of its parts")
    return str(v)  # fhirpathpy's date/time and quantity values print as FHIR text


def _leaves(data: Any, prefix: str, out: dict[str, None]) -> None:
    if isinstance(data, list):
        for item in data:
            _leaves(item, prefix, out)
        return
    if not isinstance(data, dict):
        if data is not None and data != "" and not prefix.startswith("Bundle."):
            out[prefix] = None
        return
    kind = data.get("resourceType")
    if isinstance(kind, str):
        prefix = kind
    for k, v in data.items():
        if k == "resourceType" or k.startswith("_") or (isinstance(kind, str) and k in HIDDEN):
            continue
        _leaves(v, f"{prefix}.{k}", out)


# -- what a path reads: a walk of fhirpathpy's syntax tree --------------------------------------
_TEST = {"exists", "empty", "count", "hasValue", "all", "allTrue", "anyTrue", "allFalse", "anyFalse", "not"}


def _walk(node: dict, bases: set[str], env: dict[str, set[str]], out: set[str], top: bool = True) -> set[str]:
    """The element paths ``node`` results in (from ``bases``); what it consumes goes to ``out``."""
    found = _result(node, bases, env, out)
    if top:
        out |= found
    return found


def _result(node: dict, bases: set[str], env: dict[str, set[str]], out: set[str]) -> set[str]:
    kind, kids = node.get("type"), node.get("children", [])
    if kind == "InvocationExpression":
        return _invoke(kids[1], _result(kids[0], bases, env, out), env, out)
    if kind in ("TermExpression", "ParenthesizedTerm"):
        return _result(kids[0], bases, env, out)
    if kind == "InvocationTerm":
        return _invoke(kids[0], bases, env, out)
    if kind == "ExternalConstantTerm":
        name = kids[0]["children"][0].get("text", "").strip("`'")
        return set(env.get(name, set()))
    if kind == "UnionExpression":
        return _result(kids[0], bases, env, out) | _result(kids[1], bases, env, out)
    if kind == "IndexerExpression":
        _walk(kids[1], bases, env, out)
        return _result(kids[0], bases, env, out)
    if kind == "TypeExpression" and kids:  # x as Quantity
        return _result(kids[0], bases, env, out)
    for k in kids:  # operators (=, and, +, in ...): their operands are read
        _walk(k, bases, env, out)
    return set()


def _invoke(node: dict, bases: set[str], env: dict[str, set[str]], out: set[str]) -> set[str]:
    kind, kids = node.get("type"), node.get("children", [])
    if kind == "MemberInvocation":
        name = kids[0]["text"].strip("`")
        return {b if b == name else f"{b}.{name}" for b in bases}  # Patient.name: Patient filters the type
    if kind == "ThisInvocation":
        return set(bases)
    if kind != "FunctionInvocation":
        return set()
    functn = kids[0]["children"]
    name = functn[0]["text"]
    params = functn[1].get("children", []) if len(functn) > 1 else []
    if name in ("ofType", "as") and params:
        t = params[0].get("text", "").split(".")[-1]
        return {t if b.endswith((".resource", ".contained")) or b == t else b + t[:1].upper() + t[1:] for b in bases}
    if name == "select" and params:
        return _walk(params[0], bases, env, out, top=False)
    if name == "iif" and params:
        _walk(params[0], bases, env, out)
        return set().union(*(_walk(p, bases, env, out, top=False) for p in params[1:]))
    for p in params:
        _walk(p, bases, env, out)
    if name in _TEST:
        out |= bases
        return set()
    return set(bases)  # where(), first() ...; and values made from the input (substring(), join())
