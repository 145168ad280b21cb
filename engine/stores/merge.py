"""ADT A40 patient merge inside one store, and the patient resolution that follows it.

A patient is the pair (issuer, mrn) — :data:`Patient` — in every table: ``mrn_issuer`` and
``mrn`` columns, ``merged_into_issuer`` and ``merged_into`` on the identity table. The same
value from two authorities is two patients, and a merge names both pairs.

:func:`apply_merge` moves everything known under the old patient to the survivor, in the
caller's transaction (the writer runs it inside the message's SAVEPOINT):

1. Both patients are first resolved through ``merged_into`` (chains are kept one hop deep, so a
   merge of an already merged patient lands on its current survivor). If they resolve to the
   same patient, nothing moves: re-applying a merge is harmless.
2. The identity row (patient / registration): the survivor is created from the old row's data
   when it does not exist yet; the old row stays, marked merged into the survivor; rows that
   pointed at the old patient now point at the survivor.
3. Every other table with an ``mrn`` column is repointed. Where the natural key contains
   ``mrn`` (allergy, coverage) and the survivor already has a row with the same key, the
   survivor's row wins and the old row is deleted.
4. One audit row per (old patient, survivor, message_id) in the merge audit table.

A merge whose survivor is currently merged into the old patient (a reversal) resolves to the
same patient and is a no-op: unmerging (A37) is out of scope.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, exists, insert, select, update

from engine.formats.fhir_bundle import row_id
from engine.stores.columns import MANAGED, StoreSpec
from engine.stores.prepared import prepared

Patient = tuple[str, str]
"""(issuer, mrn): the issuer is '' where none is known."""

_IDENTITY = ("mrn", "mrn_issuer", "merged_into", "merged_into_issuer")
_COPY_SKIP = frozenset({"id", "fhir_id", *_IDENTITY, *MANAGED})


def _served(spec: StoreSpec, patient: Patient) -> dict[str, Any]:
    """The ``fhir_id`` of a patient row a merge inserts, where the identity table has one."""
    if "fhir_id" not in spec.tables[spec.identity].c:
        return {}
    return {"fhir_id": row_id(spec.kind, spec.identity, (patient[1], patient[0]))}


def _is(t: Any, patient: Patient, mrn: str = "mrn", issuer: str = "mrn_issuer"):
    """The SQL condition "row ``t`` names ``patient``" (on ``mrn``/``mrn_issuer`` or other columns)."""
    return and_(t.c[issuer] == patient[0], t.c[mrn] == patient[1])


_RESOLUTION: dict[str, Any] = {}  # identity table name -> its statement, built once


def load_resolution(conn: Connection, spec: StoreSpec, patients: set[Patient]) -> dict[Patient, Patient]:
    """{patient: survivor} for those of ``patients`` that were merged away (one query per 500)."""
    ident = spec.tables[spec.identity]
    wanted = {p for p in patients if p[1]}
    mrns = sorted({p[1] for p in wanted})
    # by mrn alone, the leading column of the identity's unique index, and the pairs matched
    # here: SQLite does not use an index for a row-value IN over (issuer, mrn)
    q = _RESOLUTION.get(ident.name)
    if q is None:
        q = _RESOLUTION[ident.name] = select(
            ident.c.mrn_issuer, ident.c.mrn, ident.c.merged_into_issuer, ident.c.merged_into
        ).where(ident.c.mrn.in_(bindparam("mrns", expanding=True)), ident.c.merged_into.is_not(None))
    out: dict[Patient, Patient] = {}
    for i in range(0, len(mrns), 500):
        for r in prepared(q, conn.dialect).all(conn, {"mrns": mrns[i : i + 500]}):
            if (r[0] or "", r[1]) in wanted:
                out[(r[0] or "", r[1])] = (r[2] or "", r[3])
    return out


def apply_merge(
    conn: Connection,
    spec: StoreSpec,
    old_patient: Patient,
    new_patient: Patient,
    *,
    message_id: int | None,
    seq: int | None = None,
    now: datetime,
    resolve: Callable[[Patient], Patient],
) -> dict[Patient, Patient]:
    """Merge ``old_patient`` into ``new_patient`` (see the module docstring); returns the
    resolution entries ({patient: survivor}) the caller adds to its cache once the savepoint
    is released.

    ``seq`` is the merge message's place in receive order (default: ``message_id``). Every row
    the merge touches, the survivor's identity row included, counts as written by the merge
    from then on (its ``last_seq`` never goes down), so an older update for either patient that
    is reprocessed or arrives late cannot overwrite the survivor's data."""
    seq = seq if seq is not None else message_id
    stamp = {"updated_at": now, "last_message_id": message_id, "last_seq": seq}

    def moved(t):  # stamp for rows the merge updates: last_seq only moves forward
        return {**stamp, "last_seq": case((t.c.last_seq > seq, t.c.last_seq), else_=seq)} if seq else stamp

    audit = spec.tables[spec.merge_audit]
    exists_audit = conn.execute(
        select(audit.c.id).where(
            _is(audit, old_patient, "old_mrn", "old_mrn_issuer"),
            _is(audit, new_patient, "new_mrn", "new_mrn_issuer"),
            audit.c.message_id.is_(None) if message_id is None else audit.c.message_id == message_id,
        )
    ).first()
    if exists_audit is None:
        names = {"old_mrn_issuer": old_patient[0], "old_mrn": old_patient[1]}
        names |= {"new_mrn_issuer": new_patient[0], "new_mrn": new_patient[1]}
        conn.execute(insert(audit).values(**names, merged_at=now, message_id=message_id, **stamp))

    old, new = resolve(old_patient), resolve(new_patient)
    if old == new:
        return {old_patient: new} if old_patient != new else {}

    ident = spec.tables[spec.identity]
    survivor = {"mrn_issuer": new[0], "mrn": new[1]}
    points_at_new = {"merged_into_issuer": new[0], "merged_into": new[1]}
    old_row = conn.execute(select(ident).where(_is(ident, old))).mappings().first()
    if conn.execute(select(ident.c.id).where(_is(ident, new))).first() is None:
        data = {k: v for k, v in old_row.items() if k not in _COPY_SKIP} if old_row else {}
        conn.execute(insert(ident).values(**survivor, merged_into=None, **data, **_served(spec, new), **stamp))
    else:  # the survivor's row is the merge's to speak for from now on
        conn.execute(update(ident).where(_is(ident, new)).values(**moved(ident)))
    # Everything that pointed at the old patient (incl. earlier merges into it) now points at the survivor.
    earlier = _is(ident, old, "merged_into", "merged_into_issuer")
    conn.execute(update(ident).where(earlier).values(**points_at_new, **moved(ident)))
    if old_row is not None:
        conn.execute(update(ident).where(_is(ident, old)).values(**points_at_new, **moved(ident)))
    else:  # a stub, so later records for the old patient still resolve to the survivor
        stub = {"mrn_issuer": old[0], "mrn": old[1], **points_at_new, **_served(spec, old)}
        conn.execute(insert(ident).values(**stub, **stamp))

    for name, t in spec.tables.items():
        if name in (spec.identity, spec.merge_audit) or "mrn" not in t.c:
            continue
        key = spec.keys[name]
        if "mrn" in key:
            s = t.alias("survivor")
            others = [s.c[k] == t.c[k] for k in key if k not in ("mrn", "mrn_issuer")]
            clash = exists(select(s.c.id).where(_is(s, new), *others))
            conn.execute(delete(t).where(_is(t, old), clash))
        conn.execute(update(t).where(_is(t, old)).values(**survivor, **moved(t)))

    changes = {old: new, old_patient: new}
    changes.pop(new, None)
    return changes
