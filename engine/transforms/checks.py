"""Checks a mapping names under ``checks:``: what a field-by-field mapping cannot say.

A check runs after its mapping, in the store destination, with the message, the records the
mapping built and the destination's store; it returns warnings, which go on the message like
every other warning (``engine messages``, ``engine try``). It never changes a record: what
is wrong is reported, and what was sent is posted as sent. Warnings name places (CLP 2,
SVC 1), amounts' differences and codes, never a patient's name or identifier.

- ``x12_835_balance``: the 835's own arithmetic, which pyx12 does not check (005010X221A1
  section 1.10.2): BPR02 equals the claim payments (CLP04) less the provider adjustments
  (PLB); each claim's charge (CLP03) less its payment equals its adjustments, claim and line
  level; its lines' payments (SVC03) add up to its payment; each line's charge (SVC02) less its
  payment equals its own adjustments. Checked in exact decimals. A message holding one part of a
  set cut into several (a big file, :func:`engine.formats.x12_stream.part_number`) holds whole
  claims but not all of them: its claims are checked, BPR02 against the claims is not.
- ``x12_835_claims``: each claim payment's patient control number (CLP01) names a claim in the
  PM store (``pm.claim``, an 837 we built or received) paid to this payee. A payment that
  matches none is posted all the same (billing staff post it by hand) and reported here.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select

from engine.formats.x12_stream import part_number
from engine.records import Record

Check = Callable[[Any, list[Record], Any], list[str]]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def wrap(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return wrap


def _money(value: str | None) -> Decimal:
    """An amount as sent; empty is zero. Unreadable amounts are pyx12's to reject (R5 type)."""
    if not value:
        return Decimal(0)
    try:
        return Decimal(value)
    except InvalidOperation:
        return Decimal(0)


def _cas_total(msg, scopes: tuple) -> Decimal:
    """The amounts of every CAS triplet in ``scopes``' own loop (CAS03, 06, 09 ... 18)."""
    total = Decimal(0)
    for span in msg.groups("CAS", scopes[-1]):
        seg = msg.segments[span[0]]
        for k in range(3, 19, 3):
            total += _money(seg.field(k))
    return total


@check("x12_835_balance")
def balance_835(msg, records: list[Record], store: Any = None) -> list[str]:
    out: list[str] = []
    claims_paid = Decimal(0)
    for n, clp in enumerate(msg.groups("CLP"), 1):
        seg = msg.segments[clp[0]]
        charge, paid = _money(seg.field(3)), _money(seg.field(4))
        claims_paid += paid
        adjusted = _cas_total(msg, (clp,))
        lines = msg.groups("SVC", clp)
        lines_paid = Decimal(0)
        for k, svc in enumerate(lines, 1):
            line = msg.segments[svc[0]]
            line_charge, line_paid = _money(line.field(2)), _money(line.field(3))
            lines_paid += line_paid
            line_adjusted = _cas_total(msg, (clp, svc))
            adjusted += line_adjusted
            if line_charge - line_paid != line_adjusted:
                out.append(
                    f"835 balance: CLP {n}/SVC {k}: charge less payment ({line_charge - line_paid}) is not its "
                    f"adjustments ({line_adjusted})"
                )
        if charge - paid != adjusted:
            out.append(
                f"835 balance: CLP {n}: charge less payment ({charge - paid}) is not its adjustments ({adjusted})"
            )
        if lines and lines_paid != paid:
            out.append(f"835 balance: CLP {n}: its lines paid {lines_paid}, the claim {paid}")
    plb = Decimal(0)
    for span in msg.groups("PLB"):
        seg = msg.segments[span[0]]
        for k in range(4, 15, 2):
            plb += _money(seg.field(k))
    if part_number(msg) is not None:
        return out  # one part of a set: BPR02 pays every part's claims
    bpr = _money(msg.value("BPR-02"))
    if msg.value("BPR-03") == "D":  # a debit: the payee owes the payer
        bpr = -bpr
    if bpr != claims_paid - plb:
        out.append(
            f"835 balance: BPR02 {bpr} is not the claims' payments {claims_paid} less provider adjustments {plb}"
        )
    return out


@check("x12_835_claims")
def match_claims(msg, records: list[Record], store: Any = None) -> list[str]:
    payments = [r for r in records if r.target.endswith(".claim_payment")]
    if store is None or not payments:
        return []
    wanted = sorted({str(r.values.get("patient_control_number")) for r in payments})
    t = store.table("claim")
    with store.engine.connect() as conn:
        found = conn.execute(
            select(t.c.patient_control_number, t.c.billing_provider_id).where(t.c.patient_control_number.in_(wanted))
        ).all()
    known: dict[str, set[str]] = {}
    for pcn, provider in found:
        known.setdefault(pcn, set()).add(provider or "")
    out = []
    for n, r in enumerate(payments, 1):
        pcn, payee = str(r.values.get("patient_control_number")), r.values.get("payee_id") or ""
        providers = known.get(pcn)
        if not providers:
            out.append(f"835 claim payment {n} (CLP 01): no claim in pm.claim has this patient control number")
        elif payee and payee not in providers and "" not in providers:
            out.append(f"835 claim payment {n} (CLP 01): the claim was billed by another provider than the payee")
    return out
