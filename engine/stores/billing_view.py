"""A patient's claims with what was paid on them, and the balance: the billing part of ``engine patient``.

A claim (``pm.claim``) is found by the patient's identity; its payments by the patient control
number the payer returns in CLP01, paid to the claim's billing provider (an 835 whose payee
names no provider id matches any). Amounts are exact decimals. Each payment counts with its
sign, so a reversal (CLP02 22, negative amounts) cancels what it reverses and the corrected
payment that follows it stands. The balance of a claim:

- ``paid``: what payers paid (CLP04, summed);
- ``adjusted``: what payers adjusted off and the clinic may not bill the patient for (CAS group
  CO contractual, OA other, PI payer initiated, CR correction);
- ``patient``: what the patient owes (CAS group PR: deductible, coinsurance, co-payment);
- ``open``: the charge less all three: what no payer has adjudicated yet (the whole charge
  before the first 835; after a final one, zero unless the payer left part of it out).

Read-only; the caller (:mod:`engine.stores.patient_view`) audits the read.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from engine.stores.records_store import RecordStore

ADJUSTED_OFF = ("CO", "OA", "PI", "CR")


def _money(v: Any) -> Decimal:
    return Decimal(str(v)) if v not in (None, "") else Decimal(0)


CENT = Decimal("0.01")


def money(v: Any) -> str:
    """An amount as billing staff read it: ``8572.75`` (the store keeps four places: ``8572.7500``);
    one with more than cents (a unit price) keeps them."""
    if v in (None, ""):
        return "-"
    d = _money(v)
    return str(d.quantize(CENT)) if d == d.quantize(CENT) else str(d.normalize())


def claims_of(pm: RecordStore, claims: list[dict[str, Any]], plain) -> list[dict[str, Any]]:
    """Each claim (rows of ``pm.claim``, as :func:`plain` gives them) with its lines, its
    payments (each with its lines and adjustments) and its balance."""
    if not claims:
        return []
    numbers = sorted({c["patient_control_number"] for c in claims})
    names = ("claim_line", "claim_payment", "service_payment", "adjustment", "remittance", "acknowledgment")
    tables = {n: pm.table(n) for n in names}
    rows: dict[str, list[dict[str, Any]]] = {}
    with pm.engine.connect() as conn:
        for name in ("claim_line", "claim_payment", "service_payment", "adjustment"):
            t = tables[name]
            q = select(t).where(t.c.patient_control_number.in_(numbers)).order_by(t.c.id)
            rows[name] = [plain(t, dict(r)) for r in conn.execute(q).mappings()]
        t = tables["acknowledgment"]
        groups = sorted({c["group_control"] for c in claims if c.get("origin") == "built" and c.get("group_control")})
        q = select(t).where(t.c.acknowledged_group.in_(groups)).order_by(t.c.id)
        rows["acknowledgment"] = [plain(t, dict(r)) for r in conn.execute(q).mappings()] if groups else []
        traces = sorted({(p["payer_id"], p["trace_number"]) for p in rows["claim_payment"]})
        t = tables["remittance"]
        remits = {}
        for payer, trace in traces:
            r = conn.execute(select(t).where(t.c.payer_id == payer, t.c.trace_number == trace)).mappings().first()
            if r is not None:
                remits[(payer, trace)] = plain(t, dict(r))
    out = []
    for c in claims:
        pcn, provider = c["patient_control_number"], c.get("billing_provider_id") or ""
        lines = [r for r in rows["claim_line"] if _same_claim(r, pcn, provider)]
        payments = []
        for p in rows["claim_payment"]:
            if p["patient_control_number"] != pcn or (p.get("payee_id") and provider and p["payee_id"] != provider):
                continue
            key = _payment_key(p)
            payments.append(
                {
                    **p,
                    "remittance": remits.get((p["payer_id"], p["trace_number"])),
                    "lines": [s for s in rows["service_payment"] if _payment_key(s) == key],
                    "adjustments": [a for a in rows["adjustment"] if _payment_key(a) == key],
                }
            )
        acks = [
            a
            for a in rows["acknowledgment"]
            if c.get("origin") == "built"
            and a["acknowledged_group"] == c.get("group_control")
            and a["acknowledged_transaction"] == c.get("transaction_control")
        ]
        out.append(
            {**c, "lines": lines, "acknowledgment": acks[-1] if acks else None, "payments": payments}
            | {"balance": balance(c, payments)}
        )
    return out


def _same_claim(r: dict[str, Any], pcn: str, provider: str) -> bool:
    return r["patient_control_number"] == pcn and (r.get("billing_provider_id") or "") == provider


def _payment_key(r: dict[str, Any]) -> tuple:
    return (
        r["payer_id"],
        r["trace_number"],
        r["patient_control_number"],
        r.get("payer_claim_number") or "",
        r["status_code"],
    )


def balance(claim: dict[str, Any], payments: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The claim's balance in exact decimals, as text (see the module docstring)."""
    paid = adjusted = patient = Decimal(0)
    for p in payments:
        paid += _money(p.get("paid_amount"))
        for a in p["adjustments"]:
            if a.get("group_code") == "PR":
                patient += _money(a.get("amount"))
            elif a.get("group_code") in ADJUSTED_OFF:
                adjusted += _money(a.get("amount"))
    charge = _money(claim.get("total_charge"))
    return {
        "charge": money(charge),
        "paid": money(paid),
        "adjusted": money(adjusted),
        "patient": money(patient),
        "open": money(charge - paid - adjusted - patient),
    }


def _remark_codes(payment: dict[str, Any]) -> list[str]:
    """The payment's remark codes (MOA) and its lines' (LQ), in order, each once."""
    codes: list[str] = []
    for source in (payment, *payment.get("lines", [])):
        found = source.get("remark_codes")
        if isinstance(found, list):
            codes.extend(str(c) for c in found)
    return list(dict.fromkeys(codes))


def describe_remarks(story: dict[str, Any], describe) -> None:
    """Put each payment's remark codes with their descriptions (``describe(code) -> text``: the
    RARC table of mappings/tables/rarc.yaml) under ``remarks``, for text and JSON alike."""
    for claim in story.get("claims", []):
        for p in claim["payments"]:
            p["remarks"] = {code: describe(code) for code in _remark_codes(p)}


def render_claims(claims: list[dict[str, Any]]) -> list[str]:
    """Text lines for ``engine patient``: each claim, its payments, its balance."""
    lines: list[str] = []
    for c in claims:
        lines.append("")
        kind = {"P": "837P", "I": "837I"}.get(c.get("claim_type") or "", "837")
        origin = f" ({c['origin']})" if c.get("origin") else ""
        lines.append(
            " ".join(
                x
                for x in (
                    f"CLAIM {c['patient_control_number']} {kind}{origin}",
                    f"to {c.get('payer_name') or c.get('payer_id') or '(no payer)'}",
                    f"member {c['member_id']}" if c.get("member_id") else "",
                    f"charged {money(c.get('total_charge'))}",
                    f"interchange {c['interchange_control']}" if c.get("interchange_control") else "",
                )
                if x
            )
        )
        ack = c.get("acknowledgment")
        if ack:
            why = f" (codes {', '.join(ack['codes'])})" if isinstance(ack.get("codes"), list) and ack["codes"] else ""
            lines.append(f"  999 from {ack['partner_id']}: {ack.get('status_text') or ack['status']}{why}")
        elif c.get("origin") == "built":
            lines.append("  999: none received yet")
        for ln in c["lines"]:
            code = ln.get("procedure_code") or ln.get("revenue_code") or ""
            mods = ln.get("modifiers")
            if isinstance(mods, list) and mods:
                code += "-" + "-".join(map(str, mods))
            when = ln.get("service_date") or ""
            lines.append(f"  line {ln['line_number']}: {code} {money(ln.get('charge'))} {when}".rstrip())
        for p in c["payments"]:
            r = p.get("remittance") or {}
            how = " ".join(x for x in (r.get("method"), p["trace_number"], r.get("payment_date")) if x)
            lines.append(
                f"  payment: {p.get('status') or p['status_code']}: paid {money(p.get('paid_amount'))}"
                f" of {money(p.get('charge_amount'))}, patient {money(p.get('patient_responsibility') or 0)}"
                f" ({r.get('payer_name') or p['payer_id']}, {how})"
            )
            for a in p["adjustments"]:
                where = "claim" if not a.get("line_number") else f"line {a['line_number']}"
                adj = f"{a.get('group_code')}-{a.get('reason_code')} {money(a.get('amount'))}"
                lines.append(f"    {adj} ({where}): {a.get('reason')}")
            described = p.get("remarks") or {}
            for code in _remark_codes(p):
                text = described.get(code)
                lines.append(f"    remark {code}" + (f": {text}" if text else ""))
        b = c["balance"]
        lines.append(
            f"  balance: charged {b['charge']}, paid {b['paid']}, adjusted off {b['adjusted']}, "
            f"patient owes {b['patient']}, open {b['open']}"
        )
    return lines
