"""The FHIR read API of the ``fhir`` source: ``GET /fhir/<Type>/<id>`` and ``GET /fhir/<Type>?...``
over the clinical and PM stores (``read_stores``), each resource rendered from the row the
stores hold, whatever wrote it (:mod:`engine.stores.fhir_view`).

Search parameters (``SEARCH`` below; the CapabilityStatement lists the same):

- ``_id``; ``identifier=<system>|<value>`` (Patient, Observation, Condition, Procedure,
  Appointment: the system is the issuer or namespace through ``tables/identifier_system.yaml``,
  a system not listed the issuer as sent; ``|value`` the value without an issuer; a bare
  ``value`` under any issuer: each match carries its own);
- ``patient`` (``Patient/<id>`` or ``<id>``), ``subject`` where the element is ``subject``,
  ``beneficiary`` (Coverage), ``actor`` (Appointment);
- ``code`` (``system|code``, ``|code``, ``code``; comma: any of them);
- ``date`` with ``eq`` (default), ``ge``, ``le``, ``gt``, ``lt``; a date or a dateTime (without
  an offset: UTC), compared as ranges the FHIR way; a row's date is its type's main one
  (:data:`engine.stores.fhir_view.SERVED`), a stored date without a time of day is its UTC day;
- ``_count`` (default 50, at most 500; 0 gives the total only), ``_sort`` (``_id``, ``-_id``,
  ``date``, ``-date``; ties by ``_id``), ``_include=<Type>:patient`` (and the element's own
  name: ``Observation:subject``, ...): the matches' patients, ``search.mode`` include.

Searches use indexes: ``_id``, ``identifier`` and ``patient`` are indexed; ``code``, ``date``
and ``_sort=date`` are evaluated over one patient's rows, so they need ``patient`` (or ``_id``,
or ``identifier``); without one the answer is 400 too-costly.

Paging is keyset: ``next`` carries ``_after=<id of the page's last resource>``, ``previous``
``_before=<id of its first>``; a page starts strictly after (before) that resource in the
search's order, so resources written meanwhile never shift a page (no duplicates, no gaps).
Under ``_sort=_id`` the Conditions of the two tables (``condition`` first, then ``diagnosis``)
are one after the other. ``total`` counts every match.

Unknown parameters are ignored (and left out of the ``self`` link), unless the request says
``Prefer: handling=strict``: then 400 naming them. An unknown modifier or a bad value is 400
either way.

Every answer that carries patient data is audited first, in the store it read (``record_access``,
``pm_record_access``): one row per patient, ``accessed_by`` the token's name, ``purpose`` the
``X-Purpose-Of-Use`` header or "FHIR API read", action ``view``; a read that finds nothing
writes ``not-found``. The answer waits for the audit; an audit that cannot be written answers
503 and shows nothing. Store work runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from sqlalchemy import Date, and_, exists, false, func, insert, or_, select
from sqlalchemy.exc import SQLAlchemyError

from engine.formats.fhir_outcome import Issue, Refused
from engine.stores.db import write_transaction
from engine.stores.fhir_view import SERVED, Links, Served, Terms, patient_of, render
from engine.transforms.tables import load_table

log = logging.getLogger("engine.fhir")

DEFAULT_COUNT, MAX_COUNT = 50, 500
PURPOSE = "FHIR API read"
MAX_PURPOSE = 200
"""Characters of ``X-Purpose-Of-Use`` (the audit column's size)."""

COMMON = ("_id", "_count", "_sort", "_include", "_after", "_before")
IGNORED = ("_format", "_pretty", "_total")
"""Standard parameters taken and ignored: the answer is always JSON, with its total."""

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def search_params(rtype: str) -> dict[str, str]:
    """The search parameters of ``rtype`` (name -> FHIR search param type), as served."""
    served = [s for s in SERVED if s.rtype == rtype]
    out = {"_id": "token"}
    for s in served:
        if s.identifier:
            out["identifier"] = "token"
        if s.patient:
            out["patient"] = out[_element(s)] = "reference"
        if s.code:
            out["code"] = "token"
        if s.dates:
            out["date"] = "date"
    return out


def includes(rtype: str) -> list[str]:
    served = next((s for s in SERVED if s.rtype == rtype), None)
    if served is None or served.patient is None:
        return []
    return sorted({f"{rtype}:patient", f"{rtype}:{_element(served)}"})


def _element(s: Served) -> str:
    """The search parameter named after the patient element (Appointment's is ``actor``)."""
    return "actor" if s.rtype == "Appointment" else s.patient or "patient"


def mount(app, source, answer) -> None:
    """Add the GET routes to ``source``'s FastAPI ``app`` (after metadata, before the writes)."""
    api = ReadApi(source)

    @app.get("/fhir/{rtype}")
    async def search(rtype: str, request: Request):
        who = source.authorise(request)
        ask = _Asked(who, _purpose(request), _strict(request), f"{str(request.base_url).rstrip('/')}/fhir")
        bundle = await _off_loop(api.search, rtype, list(request.query_params.multi_items()), ask)
        return answer(200, bundle)

    @app.get("/fhir/{rtype}/{rid}")
    async def read(rtype: str, rid: str, request: Request):
        who = source.authorise(request)
        ask = _Asked(who, _purpose(request), False, "")
        resource = await _off_loop(api.read, rtype, rid, ask)
        return answer(200, resource, {"ETag": f'W/"{resource["meta"]["versionId"]}"'})


async def _off_loop(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except Refused:
        raise
    except SQLAlchemyError:  # the driver's text may quote values: never passed on, never logged
        raise Refused(503, [Issue("transient", "the record store cannot be read now; try again")]) from None
    except Exception as exc:  # a fault of ours: an OperationOutcome all the same, the log names its type only
        log.error("FHIR read failed: %s", type(exc).__name__)
        raise Refused(500, [Issue("exception", "the read failed inside the engine; nothing is shown")]) from None


@dataclass(frozen=True)
class _Asked:
    who: str
    purpose: str
    strict: bool
    base: str


def _purpose(request) -> str:
    purpose = (request.headers.get("x-purpose-of-use") or "").strip() or PURPOSE
    if len(purpose) > MAX_PURPOSE:
        raise Refused(400, [Issue("invalid", f"X-Purpose-Of-Use has at most {MAX_PURPOSE} characters")])
    return purpose


def _strict(request) -> bool:
    prefs = re.split(r"[,;]", request.headers.get("prefer", ""))
    return any(p.strip().replace(" ", "") == "handling=strict" for p in prefs)


@dataclass
class Query:
    """One search, parsed: what matches, in which order, which page."""

    rtype: str
    count: int = DEFAULT_COUNT
    sort: str = "_id"
    after: str | None = None
    before: str | None = None
    ids: list[str] | None = None
    patients: list[tuple[str, str]] | None = None  # (issuer, mrn); [] names nobody
    identifiers: list[tuple[str | None, str]] | None = None  # (issuer or None: any, mrn)
    codes: list[tuple[set[str] | None, str]] | None = None  # (stored systems or None: any, code)
    dates: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # (prefix, [lo, hi))
    include: bool = False
    canon: list[tuple[str, str]] = field(default_factory=list)  # the parameters the self link repeats


class ReadApi:
    """Reads and searches over a FHIR source's read stores (call from a worker thread)."""

    def __init__(self, source):
        self.source = source
        self.stores = {}
        for kind, name in source.config.read_stores.items():
            try:
                store = source.store(kind)
            except KeyError:
                raise RuntimeError(f"read_stores: {kind}: no store named {name!r} under stores:") from None
            if store is None or store.schema != kind:
                raise RuntimeError(f"read_stores: {kind}: the store {name!r} is not a {kind} store")
            self.stores[kind] = store
        self.types: dict[str, list[Served]] = {}
        for s in SERVED:
            if s.kind in self.stores:
                self.types.setdefault(s.rtype, []).append(s)
        folder = Path(getattr(source, "tables_dir", None) or Path(__file__).parents[2] / "mappings" / "tables")
        tables = {n: load_table(folder / f"{n}.yaml") for n in _TABLES}
        self.code_system = tables["fhir_out_code_system"]
        self.terms = Terms(
            tables["fhir_out_code_system"],
            tables["issuer_system"],
            tables["fhir_out_interpretation"],
            tables["fhir_out_appointment_status"],
            tables["fhir_out_encounter_class"],
        )
        self.issuer_of = tables["identifier_system"]

    # -- read ---------------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str, ask: _Asked) -> dict[str, Any]:
        for s in self._served(rtype):
            t = self._table(s)
            with self.stores[s.kind].engine.connect() as conn:
                row = conn.execute(select(t).where(t.c.fhir_id == rid)).mappings().first()
            if row is not None:
                resource = self._render([(s, dict(row))])[0]
                self._audit({s.kind: {patient_of(row)}}, ask)
                return resource
        self._audit({self._served(rtype)[0].kind: {None}}, ask, "not-found")
        raise Refused(404, [Issue("not-found", f"no {rtype} with this id here", [rtype])])

    # -- search -------------------------------------------------------------------------------------
    def search(self, rtype: str, params: list[tuple[str, str]], ask: _Asked) -> dict[str, Any]:
        served = self._served(rtype)
        q = self._parse(rtype, served, params, ask.strict)
        total = sum(self._count(s, q) for s in served)
        if q.count == 0:
            page, prev, more = [], False, False
        elif q.sort in ("_id", "-_id"):
            page, prev, more = self._page_by_id(served, q)
        else:
            page, prev, more = self._page_by_date(served, q)
        matches = self._render(page)
        found: dict[str, set[tuple[str, str] | None]] = {}  # store kind -> patients shown
        for s, row in page:
            found.setdefault(s.kind, set()).add(patient_of(row))
        included: list[dict[str, Any]] = []
        if q.include and page and "Patient" in self.types:
            shown = {patient_of(r) for s, r in page if s.rtype == "Patient"}
            rows = self._patients({p for _, r in page if (p := patient_of(r)) and p not in shown})
            included = self._render([(self.types["Patient"][0], r) for r in rows])
            found.setdefault("clinical", set()).update(patient_of(r) for r in rows)
        if found:
            self._audit(found, ask)
        elif q.patients is not None or (rtype == "Patient" and q.identifiers is not None):  # a patient, not found
            asked: set[tuple[str | None, str] | None] = {*(q.patients or [])}
            asked |= set(q.identifiers or []) if rtype == "Patient" else set()
            self._audit({served[0].kind: asked or {None}}, ask, "not-found")
        return self._bundle(q, ask.base, total, matches, included, page, prev, more)

    def _bundle(self, q: Query, base: str, total: int, matches, included, page, prev: bool, more: bool):
        def link(relation: str, extra: list[tuple[str, str]]) -> dict[str, str]:
            query = urlencode([*q.canon, ("_count", str(q.count)), *extra])
            return {"relation": relation, "url": f"{base}/{q.rtype}?{query}"}

        here = [("_after", q.after)] if q.after else [("_before", q.before)] if q.before else []
        links = [link("self", here)]
        if more:
            links.append(link("next", [("_after", page[-1][1]["fhir_id"])]))
        if prev:
            links.append(link("previous", [("_before", page[0][1]["fhir_id"])]))
        entries = [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
            for mode, group in (("match", matches), ("include", included))
            for r in group
        ]
        return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}

    # -- parameters -----------------------------------------------------------------------------------
    def _parse(self, rtype: str, served: list[Served], params: list[tuple[str, str]], strict: bool) -> Query:
        q = Query(rtype)
        known = search_params(rtype)
        unknown = []
        for raw, value in params:
            name, _, modifier = raw.partition(":")
            if name in IGNORED:
                continue
            if name not in known and name not in COMMON:
                unknown.append(raw)
                continue
            where = [f"{rtype}?{raw}"]
            if modifier and not (modifier == "Patient" and known.get(name) == "reference"):
                raise Refused(
                    400, [Issue("not-supported", f"the modifier :{modifier} of {name} is not supported", where)]
                )
            self._take(q, served, name, value, where)
            if name not in ("_count", "_after", "_before"):
                q.canon.append((raw, value))
        if unknown and strict:
            names = ", ".join(unknown)
            raise Refused(
                400,
                [Issue("not-supported", f"unknown search parameter(s): {names}", [f"{rtype}?{n}" for n in unknown])],
            )
        anchored = q.ids is not None or q.patients is not None or q.identifiers is not None
        costly = [n for n, given in (("code", q.codes), ("date", q.dates), ("_sort", q.sort.endswith("date"))) if given]
        if costly and not anchored:
            text = f"{', '.join(costly)} need patient (or _id, or identifier) to narrow the search"
            raise Refused(400, [Issue("too-costly", text, [f"{rtype}?{costly[0]}"])])
        if q.after and q.before:
            raise Refused(400, [Issue("invalid", "a page is either _after or _before a resource, not both")])
        return q

    def _take(self, q: Query, served: list[Served], name: str, value: str, where: list[str]) -> None:
        def bad(text: str) -> Refused:
            return Refused(400, [Issue("invalid", text, where)])

        items = [v.strip() for v in value.split(",") if v.strip()]
        if name == "_count":
            if not value.strip().isdigit():
                raise bad("_count is a whole number, 0 or more")
            q.count = min(int(value), MAX_COUNT)
        elif name == "_sort":
            allowed = ["_id", "-_id"] + (["date", "-date"] if served[0].dates else [])
            if value not in allowed:
                raise bad(f"_sort is one of {', '.join(allowed)}")
            q.sort = value
        elif name == "_include":
            if value not in includes(q.rtype):
                known = ", ".join(includes(q.rtype))
                text = f"_include is one of {known}" if known else f"{q.rtype} takes no _include"
                raise Refused(400, [Issue("not-supported", text, where)])
            q.include = True
        elif name in ("_after", "_before"):
            setattr(q, name[1:], value)
        elif name == "_id":
            q.ids = (q.ids or []) + items
        elif name == "identifier":
            q.identifiers = (q.identifiers or []) + [self._identifier(v) for v in items]
        elif name == "code":
            q.codes = (q.codes or []) + [self._code(v) for v in items]
        elif name == "date":
            q.dates.append(_date_param(value, bad))
        else:  # a patient reference: patient, subject, beneficiary, actor
            ids = []
            for v in items:
                kind, _, rid = v.rstrip("/").rpartition("/")
                if kind and not kind.endswith("Patient"):
                    raise bad(f"{name} names a Patient (Patient/<id>)")
                ids.append(rid)
            found = self._patient_keys(ids)
            q.patients = found if q.patients is None else [p for p in q.patients if p in found]

    def _identifier(self, token: str) -> tuple[str | None, str]:
        system, bar, value = token.rpartition("|")
        if not bar:
            return None, value
        return (str(self.issuer_of.lookup(system)) if system else ""), value

    def _code(self, token: str) -> tuple[set[str] | None, str]:
        system, bar, code = token.rpartition("|")
        if not bar:
            return None, code
        if not system:
            return set(), code
        stored = {k for k, v in self.code_system.values.items() if v == system}
        return stored | {system}, code

    # -- queries ----------------------------------------------------------------------------------------
    def _served(self, rtype: str) -> list[Served]:
        served = self.types.get(rtype)
        if not served:
            raise Refused(404, [Issue("not-supported", f"this endpoint serves no {rtype}", [rtype])])
        return served

    def _table(self, s: Served):
        return self.stores[s.kind].table(s.table)

    def _where(self, s: Served, q: Query) -> list[Any]:
        t = self._table(s)
        out: list[Any] = []
        if q.ids is not None:
            out.append(t.c.fhir_id.in_(q.ids))
        if q.patients is not None:
            out.append(or_(false(), *(and_(t.c.mrn_issuer == i, t.c.mrn == m) for i, m in q.patients)))
        if q.identifiers is not None:
            out.append(self._identified(s, t, q.identifiers))
        if q.codes is not None and s.code:
            code, system = (t.c[c] for c in s.code)
            out.append(or_(false(), *(and_(code == c, *_system_is(system, sys)) for sys, c in q.codes)))
        for prefix, lo, hi in q.dates:
            out.append(_date_clause(t, s.dates, prefix, lo, hi))
        if s.table == "diagnosis" and "condition" in self.stores["clinical"].spec.tables:
            other = self.stores["clinical"].table("condition")  # a Condition in both tables is served once
            out.append(~exists(select(other.c.id).where(other.c.fhir_id == t.c.fhir_id)))
        return out

    @staticmethod
    def _identified(s: Served, t, identifiers: list[tuple[str | None, str]]):
        """Rows with one of ``identifiers`` ((namespace or None: any, value)); none for a table
        without identifiers (a visit's diagnoses)."""
        if s.identifier is None:
            return false()
        value, namespace = (t.c[c] for c in s.identifier)
        fixed = []
        if s.table == "observation":  # an Observation sent over FHIR: its own row, not its components'
            fixed = [t.c.report_occurrence == 0, t.c.specimen_seq == 0, t.c.seq == 0]
        ors = (and_(value == v, *([namespace == ns] if ns is not None else [])) for ns, v in identifiers)
        return and_(or_(false(), *ors), *fixed)

    def _count(self, s: Served, q: Query) -> int:
        t = self._table(s)
        with self.stores[s.kind].engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(*self._where(s, q))).scalar_one())

    def _locate(self, served: list[Served], rid: str, param: str) -> tuple[Served, dict[str, Any]]:
        """The served table and row of the resource a page link names; 400 when none does."""
        for s in served:
            t = self._table(s)
            with self.stores[s.kind].engine.connect() as conn:
                row = conn.execute(select(t).where(t.c.fhir_id == rid)).mappings().first()
            if row is not None:
                return s, dict(row)
        raise Refused(400, [Issue("invalid", f"{param} names no resource here; search again", [param])])

    def _page_by_id(self, served: list[Served], q: Query):
        """A page in ``_id`` order (table after table), by SQL on the fhir_id index."""
        forward = q.before is None
        asc = (q.sort == "_id") == forward  # the direction this walk reads in
        order = served if q.sort == "_id" else served[::-1]
        order = order if forward else order[::-1]
        cursor = q.after or q.before
        start = order.index(self._locate(order, cursor, _cursor_name(q))[0]) if cursor else 0
        rows: list[tuple[Served, dict[str, Any]]] = []
        for n, s in enumerate(order[start:]):
            t = self._table(s)
            where = self._where(s, q)
            if cursor and n == 0:
                where.append(t.c.fhir_id > cursor if asc else t.c.fhir_id < cursor)
            stmt = select(t).where(*where).order_by(t.c.fhir_id if asc else t.c.fhir_id.desc())
            with self.stores[s.kind].engine.connect() as conn:
                got = conn.execute(stmt.limit(q.count + 1 - len(rows))).mappings().all()
            rows += [(s, dict(r)) for r in got]
            if len(rows) > q.count:
                break
        beyond = len(rows) > q.count
        rows = rows[: q.count]
        behind = cursor is not None and self._any_before(order, start, cursor, asc, q)
        if forward:
            return rows, behind, beyond
        return rows[::-1], beyond, behind

    def _any_before(self, order: list[Served], start: int, cursor: str, asc: bool, q: Query) -> bool:
        """Whether a match lies at or before ``cursor`` in the walk's order (a page back)."""
        for n, s in enumerate(order[: start + 1]):
            t = self._table(s)
            where = self._where(s, q)
            if n == start:
                where.append(t.c.fhir_id <= cursor if asc else t.c.fhir_id >= cursor)
            with self.stores[s.kind].engine.connect() as conn:
                if conn.execute(select(t.c.id).where(*where).limit(1)).first() is not None:
                    return True
        return False

    def _page_by_date(self, served: list[Served], q: Query):
        """A page in date order (ties by id; undated last): over one patient's matches, sorted here."""
        desc = q.sort == "-date"
        keyed: list[tuple[tuple, Served, str]] = []
        for s in served:
            t = self._table(s)
            stmt = select(t.c.fhir_id, *(t.c[c] for c in s.dates)).where(*self._where(s, q))
            with self.stores[s.kind].engine.connect() as conn:
                keyed += [(_order_key(r, s.dates, desc), s, r.fhir_id) for r in conn.execute(stmt).mappings()]
        keyed.sort(key=lambda k: k[0])
        keys = [k[0] for k in keyed]
        if q.after or q.before:
            s, row = self._locate(served, q.after or q.before or "", _cursor_name(q))
            mark = _order_key(row, s.dates, desc)
            if q.after:
                lo = bisect.bisect_right(keys, mark)
                hi = min(lo + q.count, len(keyed))
            else:
                hi = bisect.bisect_left(keys, mark)
                lo = max(hi - q.count, 0)
        else:
            lo, hi = 0, min(q.count, len(keyed))
        chosen = keyed[lo:hi]
        rows = self._rows_by_id([(s, fid) for _, s, fid in chosen])
        return rows, lo > 0, hi < len(keyed)

    def _rows_by_id(self, wanted: list[tuple[Served, str]]) -> list[tuple[Served, dict[str, Any]]]:
        by_table: dict[str, dict[str, dict[str, Any]]] = {}
        for s in {s for s, _ in wanted}:
            t = self._table(s)
            ids = [fid for w, fid in wanted if w is s]
            with self.stores[s.kind].engine.connect() as conn:
                by_table[s.table] = {
                    r["fhir_id"]: dict(r) for r in conn.execute(select(t).where(t.c.fhir_id.in_(ids))).mappings()
                }
        return [(s, by_table[s.table][fid]) for s, fid in wanted if fid in by_table[s.table]]

    def _patient_keys(self, ids: list[str]) -> list[tuple[str, str]]:
        """(issuer, mrn) of the Patients with these ids (clinical store)."""
        if "clinical" not in self.stores:
            raise Refused(
                400, [Issue("not-supported", "a patient search needs the clinical store (read_stores: clinical)")]
            )
        t = self.stores["clinical"].table("patient")
        with self.stores["clinical"].engine.connect() as conn:
            rows = conn.execute(select(t.c.mrn_issuer, t.c.mrn).where(t.c.fhir_id.in_(ids))).all()
        return [(r[0] or "", r[1]) for r in rows]

    def _patients(self, keys: set[tuple[str, str]]) -> list[dict[str, Any]]:
        """The clinical patient rows of these (issuer, mrn) pairs (the unique index on both)."""
        if not keys or "clinical" not in self.stores:
            return []
        t = self.stores["clinical"].table("patient")
        out: list[dict[str, Any]] = []
        pairs = sorted(keys)
        with self.stores["clinical"].engine.connect() as conn:
            for k in range(0, len(pairs), 200):
                cond = or_(*(and_(t.c.mrn_issuer == i, t.c.mrn == m) for i, m in pairs[k : k + 200]))
                out += [dict(r) for r in conn.execute(select(t).where(cond).order_by(t.c.fhir_id)).mappings()]
        return out

    # -- rendering and audit ------------------------------------------------------------------------------
    def _render(self, rows: list[tuple[Served, dict[str, Any]]]) -> list[dict[str, Any]]:
        links = self._links(rows)
        return [render(s, r, self.terms, links) for s, r in rows]

    def _links(self, rows: list[tuple[Served, dict[str, Any]]]) -> Links:
        """What ``rows`` refer to: patients' ids, encounters' ids, reports' observations."""
        links = Links()
        if "clinical" not in self.stores:
            return links
        patients = {p for _, r in rows if (p := patient_of(r))}
        patients |= {(r.get("merged_into_issuer") or "", r["merged_into"]) for _, r in rows if r.get("merged_into")}
        links.patients = {
            (r["mrn_issuer"] or "", r["mrn"]): r["fhir_id"] for r in self._patients(patients) if r["fhir_id"]
        }
        store = self.stores["clinical"]
        visits = sorted({r["visit_number"] for s, r in rows if s.kind == "clinical" and r.get("visit_number")})
        reports = [r for s, r in rows if s.table == "diagnostic_report"]
        with store.engine.connect() as conn:
            if visits:
                t = store.table("encounter")
                stmt = select(t.c.visit_number, t.c.fhir_id).where(t.c.visit_number.in_(visits))
                links.encounters = {v: f for v, f in conn.execute(stmt) if f}
            if reports:
                t = store.table("observation")
                key = (t.c.filler_order_number, t.c.report_code, t.c.report_occurrence)
                stmt = (
                    select(*key, t.c.fhir_id)
                    .where(t.c.filler_order_number.in_(sorted({r["filler_order_number"] for r in reports})))
                    .where(or_(t.c.kind.is_(None), t.c.kind != "order-answer"))
                    .order_by(*key, t.c.specimen_seq, t.c.seq)
                )
                for filler, code, occ, fid in conn.execute(stmt):
                    if fid:
                        links.results.setdefault((filler, code, occ), []).append(fid)
        return links

    def _audit(self, found: dict[str, Any], ask: _Asked, action: str = "view") -> None:
        """One access row per patient, in each store read; before anything is answered."""
        now = datetime.now(UTC)
        for kind, patients in found.items():
            store = self.stores[kind]
            rows = [
                {
                    "access_id": uuid.uuid4().hex,
                    "accessed_by": ask.who[:200],
                    "accessed_at": now,
                    "purpose": ask.purpose,
                    "action": action,
                    "patient_mrn": p[1] if p else None,
                    "patient_mrn_issuer": p[0] if p else None,
                    "updated_at": now,
                }
                for p in sorted(patients, key=lambda p: (p[0] or "", p[1]) if p else ("", ""))
            ]
            try:
                with write_transaction(store.engine) as conn:
                    conn.execute(insert(store.spec.access_audit), rows)
            except SQLAlchemyError:
                raise Refused(503, [Issue("transient", "the read could not be audited, so nothing is shown")]) from None


_TABLES = (
    "fhir_out_code_system",
    "fhir_out_interpretation",
    "fhir_out_appointment_status",
    "fhir_out_encounter_class",
    "issuer_system",
    "identifier_system",
)


def _cursor_name(q: Query) -> str:
    return "_after" if q.after else "_before"


def _system_is(column, systems: set[str] | None) -> list[Any]:
    if systems is None:
        return []
    if not systems:
        return [or_(column.is_(None), column == "")]
    return [column.in_(sorted(systems))]


def _date_param(value: str, bad) -> tuple[str, datetime, datetime]:
    """(prefix, lo, hi): the prefix and the UTC range ``[lo, hi)`` the value stands for."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    if prefix not in ("eq", "ge", "le", "gt", "lt"):
        raise Refused(400, [Issue("not-supported", f"the date prefix {prefix} is not supported (eq, ge, le, gt, lt)")])
    m = _DATE.match(text)
    if m is None:
        raise bad("date is YYYY, YYYY-MM, YYYY-MM-DD or a dateTime (YYYY-MM-DDThh:mm[:ss][Z|+hh:mm])")
    try:
        y, mo, d = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
        if m["H"] is None:
            lo = datetime(y, mo, d, tzinfo=UTC)
            if m["d"]:
                hi = lo + timedelta(days=1)
            elif m["m"]:
                hi = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=UTC)
            else:
                hi = datetime(y + 1, 1, 1, tzinfo=UTC)
            return prefix, lo, hi
        tz = UTC if m["tz"] in (None, "Z") else datetime.strptime(m["tz"].replace(":", ""), "%z").tzinfo
        frac = m["f"] or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        lo = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"] or 0), micro, tzinfo=tz).astimezone(UTC)
    except ValueError:
        raise bad("date is not a valid date") from None
    step = timedelta(minutes=1) if m["S"] is None else timedelta(seconds=1) if not frac else timedelta(microseconds=1)
    return prefix, lo, lo + step


def _date_clause(t, cols: tuple[str, ...], prefix: str, lo: datetime, hi: datetime):
    """Rows whose date (the first present of ``cols``) the FHIR way meets ``prefix`` and
    ``[lo, hi)``: a datetime is a point, a date its whole UTC day."""
    parts = []
    for n, name in enumerate(cols):
        col = t.c[name]
        if isinstance(col.type, Date):
            floor_lo, floor_hi = lo.date(), hi.date()
            ceil_lo = floor_lo if lo.timetz() == time(0, tzinfo=UTC) else floor_lo + timedelta(days=1)
            ceil_hi = floor_hi if hi.timetz() == time(0, tzinfo=UTC) else floor_hi + timedelta(days=1)
            cond = {
                "eq": and_(col >= ceil_lo, col < floor_hi),
                "ge": col >= floor_lo,
                "gt": col >= floor_hi,
                "le": col < ceil_hi,
                "lt": col < ceil_lo,
            }[prefix]
        else:
            cond = {"eq": and_(col >= lo, col < hi), "ge": col >= lo, "gt": col >= hi, "le": col < hi, "lt": col < lo}[
                prefix
            ]
        parts.append(and_(*(t.c[c].is_(None) for c in cols[:n]), col.is_not(None), cond))
    return or_(*parts)


def _order_key(row, cols: tuple[str, ...], desc: bool) -> tuple:
    """A row's place in date order: dated first (by the date, a date at its UTC midnight), then id."""
    when = next((row[c] for c in cols if row[c] is not None), None)
    if when is None:
        return (1, 0, row["fhir_id"])
    if not isinstance(when, datetime):
        when = datetime.combine(when, time(0), tzinfo=UTC) if isinstance(when, date) else None
    micros = (when - _EPOCH) // timedelta(microseconds=1) if when else 0
    return (0, -micros if desc else micros, row["fhir_id"])


def describe(writes: list[str], read_stores: dict[str, str]) -> list[dict[str, Any]]:
    """The CapabilityStatement's ``rest.resource``: create and update of the types in ``writes``,
    read and search of those served from the kinds of ``read_stores``, with their parameters."""
    served = list(dict.fromkeys(s.rtype for s in SERVED if s.kind in read_stores))
    out = []
    for rtype in list(dict.fromkeys([*writes, *served])):
        codes = (["read", "search-type"] if rtype in served else []) + (["create", "update"] if rtype in writes else [])
        entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": c} for c in codes]}
        if rtype in served:
            entry["searchInclude"] = includes(rtype)
            entry["searchParam"] = [{"name": n, "type": t} for n, t in search_params(rtype).items()]
        out.append(entry)
    return out
