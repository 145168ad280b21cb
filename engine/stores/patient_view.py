"""One patient's visit story across the clinical and PM stores (``engine patient``), and the
audit of every such read.

A patient is the pair (issuer, mrn). Given a bare identifier, :meth:`PatientView.read` looks
it up under every issuer either store knows it by: one issuer is that patient; several are
listed as candidates for the caller to choose from (never a guess); none is not found. A
patient merged away (ADT A40) is followed to its survivor in each store, and the story says so.

Reading a patient's record is audited: each read — a record shown, candidates listed, nothing
found — writes one row to the ``record_access`` table of every store it read
(``StoreSpec.access_audit``: ``record_access`` in the clinical store, ``pm_record_access`` in
the PM store; one ``access_id`` for both), with who, when (UTC) and why, before anything is
returned. A read whose audit cannot be written returns nothing. The message store's
``content_access`` is not used: it audits messages (its ``message_id`` is required), and a
patient read needs no message store.

The story (:meth:`PatientView.story`, JSON-ready) holds the demographics, the PM registration
and coverage, allergies, then the patient's visits in time order, each with its encounter
(clinical) and visit (PM), diagnoses, appointments (both stores'), orders with their results,
documents, medications (orders with their dispenses and administrations), immunizations and
charges; what names no visit number is grouped last, as visit ``None``. :func:`render` prints
it as text, one time-ordered line per event. Nothing here logs patient values.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, insert, select

from engine.stores.billing_view import claims_of, money, render_claims
from engine.stores.columns import JSONText
from engine.stores.db import write_transaction
from engine.stores.merge import Patient
from engine.stores.records_store import RecordStore

MAX_PURPOSE = 200
"""Characters a purpose may have (the audit column's size)."""

_HIDDEN = frozenset({"id", "updated_at", "last_seq", "mrn", "mrn_issuer"})
_SUB = " " * 22  # an event's own lines (results, dispenses ...): under its text, indented


@dataclass
class Reading:
    """What one audited read found: a ``story``, or the ``candidates`` (issuers) of an
    ambiguous bare identifier, or neither (not found). ``access_id`` names its audit rows."""

    access_id: str
    story: dict[str, Any] | None = None
    candidates: list[str] = field(default_factory=list)


class PatientView:
    """Reads one patient across a clinical and a PM :class:`RecordStore` (either may be None)."""

    def __init__(self, clinical: RecordStore | None, pm: RecordStore | None):
        if clinical is None and pm is None:
            raise ValueError("a patient view needs a clinical or a PM store")
        self.stores = {k: s for k, s in (("clinical", clinical), ("pm", pm)) if s is not None}

    # -- the audited read ------------------------------------------------------------------------
    def read(self, mrn: str, issuer: str | None, *, who: str, purpose: str) -> Reading:
        """Find the patient (``issuer`` None: under whichever issuer has ``mrn``, if only one
        does), audit the read in every store, then return the story. ``purpose`` is required."""
        purpose = purpose.strip()
        if not purpose:
            raise ValueError("a read of a patient's record needs a purpose")
        if len(purpose) > MAX_PURPOSE:
            raise ValueError(f"a purpose has at most {MAX_PURPOSE} characters")
        reading = Reading(access_id=uuid.uuid4().hex)
        issuers = self.issuers(mrn)
        if issuer is None and len(issuers) > 1:
            reading.candidates = issuers
            self._audit(reading.access_id, who, purpose, "candidates", mrn, None)
            return reading
        if issuer is None and issuers:
            issuer = issuers[0]
        if issuer is None or issuer not in issuers:
            self._audit(reading.access_id, who, purpose, "not-found", mrn, issuer)
            return reading
        story = self.story((issuer, mrn))
        self._audit(reading.access_id, who, purpose, "view", mrn, issuer)
        reading.story = story
        return reading

    def _audit(self, access_id: str, who: str, purpose: str, action: str, mrn: str, issuer: str | None) -> None:
        now = datetime.now(UTC)
        row = {
            "access_id": access_id,
            "accessed_by": who[:200],
            "accessed_at": now,
            "purpose": purpose,
            "action": action,
            "patient_mrn": mrn,
            "patient_mrn_issuer": issuer,
            "updated_at": now,
            "last_message_id": None,
            "last_seq": None,
        }
        for store in self.stores.values():
            audit = _audit_table(store)
            with write_transaction(store.engine) as conn:
                conn.execute(insert(audit).values(**row))

    def access_log(self, kind: str) -> list[dict[str, Any]]:
        """The read audit of the ``clinical`` or ``pm`` store, oldest first."""
        store = self.stores[kind]
        audit = _audit_table(store)
        with store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit).order_by(audit.c.id)).mappings()]

    # -- finding the patient -----------------------------------------------------------------------
    def issuers(self, mrn: str) -> list[str]:
        """Every issuer under which either store has rows for identifier ``mrn`` (sorted; ''
        for none known)."""
        found: set[str] = set()
        for store in self.stores.values():
            with store.engine.connect() as conn:
                for name, t in store.spec.tables.items():
                    if name == store.spec.merge_audit or "mrn" not in t.c:
                        continue
                    q = select(t.c.mrn_issuer).where(t.c.mrn == mrn).distinct()
                    found.update(r[0] or "" for r in conn.execute(q))
        return sorted(found)

    def _resolve(self, store: RecordStore, patient: Patient) -> Patient:
        """``patient``'s survivor in ``store`` if an A40 merged it away, else ``patient``."""
        ident = store.spec.tables[store.spec.identity]
        q = select(ident.c.merged_into_issuer, ident.c.merged_into).where(
            ident.c.mrn == patient[1], ident.c.mrn_issuer == patient[0]
        )
        with store.engine.connect() as conn:
            row = conn.execute(q).first()
        return (row[0] or "", row[1]) if row is not None and row[1] else patient

    # -- the story -------------------------------------------------------------------------------
    def story(self, patient: Patient) -> dict[str, Any]:
        """Everything both stores hold for ``patient`` (issuer, mrn), JSON-ready (dates and
        datetimes as ISO text, amounts as decimal text, JSON columns parsed), grouped by visit."""
        out: dict[str, Any] = {"patient": {"mrn_issuer": patient[0], "mrn": patient[1]}, "merged_into": {}}
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for kind, store in self.stores.items():
            here = self._resolve(store, patient)
            if here != patient:
                out["merged_into"][kind] = {"mrn_issuer": here[0], "mrn": here[1]}
            rows[kind] = {
                name: [_plain(t, r) for r in store.rows(name, mrn=here[1], mrn_issuer=here[0])]
                for name, t in store.spec.tables.items()
                if name != store.spec.merge_audit and "mrn" in t.c
            }
        clinical, pm = rows.get("clinical", {}), rows.get("pm", {})
        out["demographics"] = _first(clinical.get("patient")) or _first(pm.get("registration"))
        out["registration"] = _first(pm.get("registration"))
        out["coverage"] = sorted(pm.get("coverage", []), key=lambda r: (r.get("priority") is None, r.get("priority")))
        out["allergies"] = clinical.get("allergy", [])
        out["visits"] = _visits(clinical, pm)
        out["claims"] = claims_of(self.stores["pm"], pm.get("claim", []), _plain) if "pm" in self.stores else []
        return out


def _audit_table(store: RecordStore) -> Table:
    audit = store.spec.access_audit
    if audit is None:  # every record store kind has one; a spec without is a programming error
        raise RuntimeError(f"{store.schema} store has no access audit table")
    return audit


def _first(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return rows[0] if rows else None


def _plain(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values, without the surrogate id, the patient and the bookkeeping
    (``last_message_id`` stays: it names the message that last wrote the row)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _HIDDEN:
            continue
        if isinstance(v, (datetime, date)):
            v = v.isoformat()
        elif isinstance(v, Decimal):
            v = str(v)
        elif isinstance(v, str) and isinstance(table.c[k].type, JSONText):
            with contextlib.suppress(ValueError):  # text that is not JSON is shown as it is
                v = json.loads(v)
        out[k] = v
    return out


def _instant(*values: Any) -> str | None:
    """The first present of ``values`` (ISO texts of UTC datetimes or of dates)."""
    return next((v for v in values if v), None)


def _sort_key(iso: str | None) -> tuple[bool, str]:
    """Events without a time last; a date sorts as its midnight UTC."""
    if iso is None:
        return (True, "")
    return (False, iso if "T" in iso else f"{iso}T00:00:00+00:00")


def _order(items: list[dict[str, Any]], when: Callable[[dict[str, Any]], str | None]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda r: _sort_key(when(r)))


def _ns(v: Any) -> str:
    return v or ""


def _link_reports(orders: list[dict[str, Any]], reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Orders, each with its results: a report belongs to the order with its placer number
    (and namespace, unless either side sent none) and test, else to the only order with that
    placer or filler number; a report matching no order, or several without its test, is an
    entry of its own (``order`` None)."""
    entries: list[dict[str, Any]] = [{"order": o, "reports": []} for o in orders]
    unlinked: list[dict[str, Any]] = []
    for rep in reports:
        number, ns = rep.get("placer_order_number"), _ns(rep.get("placer_order_namespace"))
        filler = rep.get("filler_order_number")
        candidates = []
        for e in entries:
            o = e["order"]
            other_ns = _ns(o["placer_order_namespace"])
            placed = bool(number) and o["placer_order_number"] == number and (not ns or not other_ns or ns == other_ns)
            if placed or (filler and o.get("filler_order_number") == filler):
                candidates.append(e)
        same_test = [e for e in candidates if e["order"].get("code") == rep.get("code")]
        chosen = same_test[0] if same_test else candidates[0] if len(candidates) == 1 else None
        if chosen is None:
            unlinked.append({"order": None, "reports": [rep]})
        else:
            chosen["reports"].append(rep)
    return entries + unlinked


def _visits(clinical: dict[str, list[dict[str, Any]]], pm: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The patient's rows grouped by visit number, each group's lists in time order, the
    groups in the order the visits began (the group without a visit number last)."""
    groups: dict[str | None, dict[str, Any]] = {}

    def group(visit: str | None) -> dict[str, Any]:
        g = groups.get(visit)
        if g is None:
            g = groups[visit] = {"visit_number": visit, "encounter": None, "visit": None, "diagnoses": []}
            for k in ("appointments", "orders", "documents", "medications", "immunizations", "charges"):
                g[k] = []
        return g

    for r in clinical.get("encounter", []):
        group(r["visit_number"])["encounter"] = r
    for r in pm.get("visit", []):
        group(r["visit_number"])["visit"] = r
    for r in clinical.get("diagnosis", []):
        group(r["visit_number"])["diagnoses"].append(r)

    appointments: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, source in (("clinical", clinical), ("pm", pm)):
        for r in source.get("appointment", []):
            key = (r["filler_appointment_id"], _ns(r["filler_appointment_namespace"]))
            entry = appointments.setdefault(key, {"clinical": None, "pm": None})
            entry[kind] = r
    for entry in appointments.values():
        row = entry["clinical"] or entry["pm"]
        group(row.get("visit_number") or (entry["pm"] or {}).get("visit_number"))["appointments"].append(entry)

    observations: dict[tuple, list[dict[str, Any]]] = {}
    for o in clinical.get("observation", []):
        observations.setdefault((o["filler_order_number"], o["report_code"], o["report_occurrence"]), []).append(o)
    reports = [
        {**r, "observations": observations.get((r["filler_order_number"], r["code"], r["occurrence"]), [])}
        for r in clinical.get("diagnostic_report", [])
    ]
    for entry in _link_reports(clinical.get("service_order", []), reports):
        row = entry["order"] or entry["reports"][0]
        group(row.get("visit_number"))["orders"].append(entry)

    meds: dict[tuple[str, str], dict[str, Any]] = {}
    for r in clinical.get("medication_order", []):
        meds[(r["placer_order_number"], _ns(r["placer_order_namespace"]))] = {
            "order": r,
            "dispenses": [],
            "administrations": [],
        }
    for table, k in (("medication_dispense", "dispenses"), ("medication_administration", "administrations")):
        for r in clinical.get(table, []):
            entry = meds.setdefault(
                (r["placer_order_number"], _ns(r["placer_order_namespace"])),
                {"order": None, "dispenses": [], "administrations": []},
            )
            entry[k].append(r)
    for entry in meds.values():
        row = entry["order"] or (entry["dispenses"] + entry["administrations"])[0]
        group(row.get("visit_number"))["medications"].append(entry)

    for table, k, source in (
        ("document", "documents", clinical),
        ("immunization", "immunizations", clinical),
        ("charge", "charges", pm),
    ):
        for r in source.get(table, []):
            group(r.get("visit_number"))[k].append(r)

    for g in groups.values():
        g["appointments"] = _order(g["appointments"], lambda e: _appointment_time(e["clinical"] or e["pm"]))
        g["orders"] = _order(g["orders"], _order_time)
        g["documents"] = _order(g["documents"], _document_time)
        g["medications"] = _order(g["medications"], _medication_time)
        g["immunizations"] = _order(
            g["immunizations"], lambda r: _instant(r["administered_at"], r["administered_date"])
        )
        g["charges"] = _order(g["charges"], lambda r: _instant(r["service_at"], r["service_date"], r["posted_at"]))
    return sorted(groups.values(), key=_visit_sort)


def _appointment_time(r: dict[str, Any]) -> str | None:
    return _instant(r.get("start_at"), r.get("start_date"))


def _order_time(e: dict[str, Any]) -> str | None:
    o = e["order"]
    if o is not None:
        return _instant(o.get("ordered_at"), o.get("requested_at"), o.get("requested_date"))
    r = e["reports"][0]
    return _instant(r.get("observed_at"), r.get("observed_date"), r.get("issued_at"))


def _document_time(r: dict[str, Any]) -> str | None:
    return _instant(r.get("activity_at"), r.get("activity_date"), r.get("originated_at"))


def _medication_time(e: dict[str, Any]) -> str | None:
    o = e["order"]
    if o is not None:
        return _instant(o.get("ordered_at"), o.get("start_at"), o.get("start_date"))
    first = (e["dispenses"] + e["administrations"])[0]
    return _instant(first.get("dispensed_at"), first.get("dispensed_date"), first.get("start_at"))


def _visit_start(g: dict[str, Any]) -> str | None:
    """When a visit began: its admission (encounter, else PM visit), else its first event."""
    for row in (g["encounter"], g["visit"]):
        if row and (t := _instant(row.get("admit_at"), row.get("admit_date"))):
            return t
    times = [when for _text, when in _events(g) if when is not None]
    return min(times, key=_sort_key) if times else None


def _visit_sort(g: dict[str, Any]) -> tuple:
    return (g["visit_number"] is None, *_sort_key(_visit_start(g)), g["visit_number"] or "")


# -- text --------------------------------------------------------------------------------------------
def _events(g: dict[str, Any]) -> Iterable[tuple[str, str | None]]:
    """(line, time) for every event of one visit group."""
    for e in g["appointments"]:
        yield _appointment_line(e), _appointment_time(e["clinical"] or e["pm"])
    for e in g["orders"]:
        yield _order_lines(e), _order_time(e)
    for r in g["documents"]:
        yield _document_line(r), _document_time(r)
    for e in g["medications"]:
        yield _medication_lines(e), _medication_time(e)
    for r in g["immunizations"]:
        yield _immunization_line(r), _instant(r["administered_at"], r["administered_date"])
    for r in g["charges"]:
        yield _charge_line(r), _instant(r["service_at"], r["service_date"], r["posted_at"])


def render(story: dict[str, Any]) -> str:
    """The story as text: the patient, then each visit and its events in time order."""
    p = story["patient"]
    lines = [f"PATIENT {_issuer(p['mrn_issuer'])} {p['mrn']}"]
    for kind, to in story["merged_into"].items():
        lines.append(f"  merged into {_issuer(to['mrn_issuer'])} {to['mrn']} ({kind} store): showing the survivor")
    d = story["demographics"]
    if d:
        name = ", ".join(x for x in (d.get("family_name"), d.get("given_name")) if x)
        lines.append("  " + _join(name or "(no name)", _opt("born", d.get("birth_date")), _opt("sex", d.get("sex"))))
    reg = story["registration"]
    if reg:
        lines.append(
            _join(
                "  registration (pm):",
                _opt("account", reg.get("account_number")),
                _opt("guarantor", reg.get("guarantor_name")),
            )
        )
    for c in story["coverage"]:
        lines.append(
            _join(
                "  coverage:",
                str(c.get("priority") or "-") + ".",
                c.get("payer_name") or c.get("payer_id"),
                _opt("member", c.get("member_id")),
                _opt("group", c.get("group_number")),
                _span(c.get("effective_date"), c.get("expiration_date")),
            )
        )
    for a in story["allergies"]:
        lines.append(_join("  allergy:", a.get("allergen_code"), a.get("allergen_text"), _paren(a.get("severity"))))
    for g in story["visits"]:
        lines.append("")
        lines.append(_visit_header(g))
        for dx in g["diagnoses"]:
            lines.append(_join("  diagnosis:", dx.get("code"), dx.get("description"), _paren(dx.get("diagnosis_type"))))
        events = sorted(_events(g), key=lambda e: _sort_key(e[1]))
        for text, when in events:
            lines.append(f"  {_stamp(when):17} {text}")
        if not events and not g["diagnoses"]:
            lines.append("  (nothing else recorded)")
    lines.extend(render_claims(story.get("claims", [])))
    return "\n".join(lines) + "\n"


def _visit_header(g: dict[str, Any]) -> str:
    if g["visit_number"] is None:
        return "NOT TIED TO A VISIT"
    enc, vis = g["encounter"] or {}, g["visit"] or {}
    return _join(
        f"VISIT {g['visit_number']}",
        enc.get("patient_class") or vis.get("patient_class"),
        _opt("admitted", _stamp(_visit_start(g)) if enc or vis else None),
        _opt(
            "discharged", _stamp(_instant(enc.get("discharge_at"), enc.get("discharge_date"), vis.get("discharge_at")))
        ),
        _opt("at", enc.get("location") or vis.get("location")),
        _opt("attending", enc.get("attending_name") or enc.get("attending") or vis.get("attending")),
        _opt("account", vis.get("account_number")),
        "" if enc else "(no encounter)",
        "" if vis else "(not in pm)",
    )


def _appointment_line(e: dict[str, Any]) -> str:
    r = e["clinical"] or e["pm"]
    stores = "+".join(k for k in ("clinical", "pm") if e[k])
    status = r.get("status") or "-"
    if e["clinical"] and e["pm"] and e["clinical"].get("status") != e["pm"].get("status"):
        status = f"{e['clinical'].get('status') or '-'} (pm: {e['pm'].get('status') or '-'})"
    return _join(
        f"appointment {r['filler_appointment_id']}:",
        status,
        r.get("appointment_type_text") or r.get("appointment_type_code") or r.get("service_text"),
        _opt("with", r.get("provider_name") or r.get("provider")),
        _opt("at", r.get("location")),
        _opt("reason", r.get("event_reason_text") or r.get("event_reason_code")),
        f"[{stores}]",
    )


def _order_lines(e: dict[str, Any]) -> str:
    o = e["order"]
    if o is not None:
        head = _join(
            f"order {o['placer_order_number']}:",
            o.get("code_text") or o.get("code"),
            o.get("status") or "-",
            _opt("by", o.get("ordering_provider_name") or o.get("ordering_provider")),
        )
    else:
        r = e["reports"][0]
        head = _join(
            "results without a known order",
            _opt("placer", r.get("placer_order_number")),
            _opt("filler", r.get("filler_order_number")),
        )
    out = [head]
    for r in e["reports"]:
        out.append(
            _join(
                f"{_SUB}result {r.get('code_text') or r.get('code')}:",
                r.get("status") or "-",
                _opt("filler", r.get("filler_order_number")),
            )
        )
        for obs in r["observations"]:
            value = _value(obs)
            out.append(
                _join(
                    f"{_SUB}  {obs.get('code_text') or obs.get('code') or '?'}",
                    value,
                    obs.get("units"),
                    _paren(obs.get("abnormal_flag")),
                )
            )
    return "\n".join(out)


def _value(obs: dict[str, Any]) -> str | None:
    for k in (
        "value_numeric",
        "value_code_text",
        "value_code",
        "value_string",
        "value_date",
        "value_datetime",
        "value_id",
    ):
        v = obs.get(k)
        if v is not None:
            if k == "value_numeric" and obs.get("value_comparator"):
                return f"{obs['value_comparator']}{v:g}"
            return f"{v:g}" if isinstance(v, float) else str(v)
    return None


def _document_line(r: dict[str, Any]) -> str:
    size = f"{len(r['content'])} characters" if r.get("content") else _opt("at", r.get("content_reference"))
    return _join(
        f"document {r['document_number']}:",
        r.get("document_type_text") or r.get("document_type_code"),
        r.get("status") or r.get("completion_status") or "-",
        _opt("by", r.get("author_name") or r.get("author")),
        _opt("replaces", r.get("parent_document_number")),
        size,
    )


def _medication_lines(e: dict[str, Any]) -> str:
    o = e["order"]
    if o is not None:
        head = _join(
            f"medication order {o['placer_order_number']}:",
            o.get("medication_text") or o.get("medication_code"),
            _dose(o.get("give_amount"), o.get("give_units_text") or o.get("give_units_code")),
            o.get("route_text") or o.get("route_code"),
            o.get("frequency"),
            o.get("status") or "-",
        )
    else:
        first = (e["dispenses"] + e["administrations"])[0]
        head = f"medication (order {first['placer_order_number']} not received)"
    out = [head]
    for d in e["dispenses"]:
        out.append(
            _join(
                f"{_SUB}dispensed #{d['dispense_seq']}",
                _stamp(_instant(d.get("dispensed_at"), d.get("dispensed_date"))),
                d.get("medication_text") or d.get("medication_code"),
                _dose(d.get("quantity"), d.get("quantity_units_text") or d.get("quantity_units_code")),
            )
        )
    for a in e["administrations"]:
        out.append(
            _join(
                f"{_SUB}given #{a['give_seq']}.{a['administration_seq']}",
                _stamp(_instant(a.get("start_at"), a.get("start_date"))),
                _dose(a.get("amount"), a.get("amount_units_text") or a.get("amount_units_code")),
                a.get("status") or a.get("completion_status"),
            )
        )
    return "\n".join(out)


def _immunization_line(r: dict[str, Any]) -> str:
    return _join(
        "immunization",
        r.get("vaccine_text") or r.get("vaccine_code"),
        _paren(r.get("vaccine_system")),
        _dose(r.get("dose_amount"), r.get("dose_units_text") or r.get("dose_units_code")),
        _opt("lot", r.get("lot_number")),
        r.get("status") or r.get("completion_status"),
    )


def _charge_line(r: dict[str, Any]) -> str:
    code = r.get("procedure_code") or r.get("charge_code")
    modifiers = r.get("modifiers")
    if isinstance(modifiers, list) and modifiers:
        code = f"{code}-{'-'.join(map(str, modifiers))}"
    return _join(
        f"charge {r['transaction_type']} {r['transaction_id']}:",
        code,
        r.get("procedure_text") or r.get("charge_text") or r.get("description"),
        _opt("x", _num(r.get("quantity"))),
        money(r["amount"]) if r.get("amount") is not None else None,
        r.get("currency"),
        _opt("by", r.get("rendering_provider_name") or r.get("rendering_provider")),
        _opt("reverses", r.get("reversal_of")),
    )


def _issuer(v: str) -> str:
    return v or "(no issuer)"


def _stamp(iso: str | None) -> str:
    """An ISO date/time as ``YYYY-MM-DD HH:MMZ`` (UTC), a date as ``YYYY-MM-DD``, none as ``-``."""
    if not iso:
        return "-"
    if "T" not in iso:
        return iso
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _num(v: Any) -> str | None:
    return None if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _dose(amount: Any, units: Any) -> str | None:
    n = _num(amount)
    return f"{n} {units}" if n and units else n


def _opt(label: str, v: Any) -> str | None:
    return f"{label} {v}" if v not in (None, "", "-") else None


def _paren(v: Any) -> str | None:
    return f"({v})" if v else None


def _span(start: Any, end: Any) -> str | None:
    return f"{start or '...'} to {end or '...'}" if start or end else None


def _join(*parts: Any) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))
