"""ADT A40 patient merge inside one store, and the MRN resolution that follows it.

:func:`apply_merge` moves everything known under the old MRN to the survivor, in the caller's
transaction (the writer runs it inside the message's SAVEPOINT):

1. Both MRNs are first resolved through ``merged_into`` (chains are kept one hop deep, so a
   merge of an already merged MRN lands on its current survivor). If they resolve to the same
   patient, nothing moves: re-applying a merge is harmless.
2. The identity row (patient / registration): the survivor is created from the old row's data
   when it does not exist yet; the old row stays, marked ``merged_into = survivor``; rows that
   pointed at the old MRN now point at the survivor.
3. Every other table with an ``mrn`` column is repointed. Where the natural key contains
   ``mrn`` (allergy, coverage) and the survivor already has a row with the same key, the
   survivor's row wins and the old row is deleted.
4. One audit row per (old_mrn, new_mrn, message_id) in the merge audit table.

A merge whose survivor is currently merged into the old MRN (a reversal) resolves to the same
patient and is a no-op: unmerging (A37) is out of scope.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, case, delete, exists, insert, select, update

from engine.stores.columns import MANAGED, StoreSpec

_COPY_SKIP = frozenset({"id", "mrn", "merged_into", *MANAGED})


def load_resolution(conn: Connection, spec: StoreSpec, mrns: set[str]) -> dict[str, str]:
    """{mrn: survivor mrn} for those of ``mrns`` that were merged away (one query per 500)."""
    ident = spec.tables[spec.identity]
    out: dict[str, str] = {}
    todo = sorted(m for m in mrns if m)
    for i in range(0, len(todo), 500):
        rows = conn.execute(
            select(ident.c.mrn, ident.c.merged_into).where(
                ident.c.mrn.in_(todo[i : i + 500]), ident.c.merged_into.is_not(None)
            )
        )
        out.update({r.mrn: r.merged_into for r in rows})
    return out


def apply_merge(
    conn: Connection,
    spec: StoreSpec,
    old_mrn: str,
    new_mrn: str,
    *,
    message_id: int | None,
    seq: int | None = None,
    now: datetime,
    resolve: Callable[[str], str],
) -> dict[str, str]:
    """Merge ``old_mrn`` into ``new_mrn`` (see the module docstring); returns the resolution
    entries ({mrn: survivor}) the caller adds to its cache once the savepoint is released.

    ``seq`` is the merge message's place in receive order (default: ``message_id``). Every row
    the merge touches, the survivor's identity row included, counts as written by the merge
    from then on (its ``last_seq`` never goes down), so an older update for either MRN that is
    reprocessed or arrives late cannot overwrite the survivor's data."""
    seq = seq if seq is not None else message_id
    stamp = {"updated_at": now, "last_message_id": message_id, "last_seq": seq}

    def moved(t):  # stamp for rows the merge updates: last_seq only moves forward
        return {**stamp, "last_seq": case((t.c.last_seq > seq, t.c.last_seq), else_=seq)} if seq else stamp

    audit = spec.tables[spec.merge_audit]
    exists_audit = conn.execute(
        select(audit.c.id).where(
            audit.c.old_mrn == old_mrn,
            audit.c.new_mrn == new_mrn,
            audit.c.message_id.is_(None) if message_id is None else audit.c.message_id == message_id,
        )
    ).first()
    if exists_audit is None:
        conn.execute(
            insert(audit).values(old_mrn=old_mrn, new_mrn=new_mrn, merged_at=now, message_id=message_id, **stamp)
        )

    old, new = resolve(old_mrn), resolve(new_mrn)
    if old == new:
        return {old_mrn: new} if old_mrn != new else {}

    ident = spec.tables[spec.identity]
    old_row = conn.execute(select(ident).where(ident.c.mrn == old)).mappings().first()
    if conn.execute(select(ident.c.id).where(ident.c.mrn == new)).first() is None:
        data = {k: v for k, v in old_row.items() if k not in _COPY_SKIP} if old_row else {}
        conn.execute(insert(ident).values(mrn=new, merged_into=None, **data, **stamp))
    else:  # the survivor's row is the merge's to speak for from now on
        conn.execute(update(ident).where(ident.c.mrn == new).values(**moved(ident)))
    # Everything that pointed at the old MRN (incl. earlier merges into it) now points at the survivor.
    conn.execute(update(ident).where(ident.c.merged_into == old).values(merged_into=new, **moved(ident)))
    if old_row is not None:
        conn.execute(update(ident).where(ident.c.mrn == old).values(merged_into=new, **moved(ident)))
    else:  # a stub, so later records for the old MRN still resolve to the survivor
        conn.execute(insert(ident).values(mrn=old, merged_into=new, **stamp))

    for name, t in spec.tables.items():
        if name in (spec.identity, spec.merge_audit) or "mrn" not in t.c:
            continue
        key = spec.keys[name]
        if "mrn" in key:
            s = t.alias("survivor")
            clash = exists(select(s.c.id).where(s.c.mrn == new, *[s.c[k] == t.c[k] for k in key if k != "mrn"]))
            conn.execute(delete(t).where(t.c.mrn == old, clash))
        conn.execute(update(t).where(t.c.mrn == old).values(mrn=new, **moved(t)))

    changes = {old: new, old_mrn: new}
    changes.pop(new, None)
    return changes
