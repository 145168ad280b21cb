"""Finding messages by their metadata for the operator console: filters, keyset pages, counts.

Nothing here reads ``content``. Each filter answers newest first through an index that holds
its rows in id order (migration messages_0009), so a page costs the same on the first day and
on a store of millions: a page of 50 reads about 50 index entries, and the next page starts
where the last one ended (``before_id``), never with an OFFSET. A patient is looked up channel
by channel in ix_messages_order and that patient's rows sorted: they are few.

A date range (``since``/``until``, on ``received_at``, either end open) is first turned into
id bounds: the smallest and the largest id received in the range. Every row in the range has
its id between them, so the bounds drop nothing, and the ``received_at`` conditions stay to drop
what lies between the bounds but outside the range (ids and receive times need not be in the
same order across processes). Bounds are exact or left out, never guessed: finding them reads
the range's entries of ix_messages_received_at (index entries only, whatever the messages'
size), and past :data:`BOUND_ROWS` entries (ten times that for a range with an ``until``) they
are not worth their cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.engine import Connection, Engine

from engine.stores.db import aware
from engine.stores.message_tables import ERROR, PENDING, messages, now

_m = messages.c
_COLUMNS = [c for c in messages.c if c.name not in ("content", "content_hash", "claim_until", "claim_token")]
"""What a search returns: metadata only (never the content, nor its hash, nor the claim's fencing)."""
_PARTNER_CHARS = 60
BOUND_ROWS = 100_000
"""Index entries read at most to turn a date range without ``until`` into id bounds (about
15 ms on SQLite, 25 ms on PostgreSQL); ten times that with an ``until``."""


@dataclass
class Filters:
    """What an operator narrows the messages to; None (or "") means no condition.

    ``message_type``: ``"ADT"`` (any trigger) or ``"ADT^A01"`` (MSH-9.1 and 9.2, exact).
    ``patient``: the ordering key, ``"issuer|value"``, exact. ``since``/``until``: on
    ``received_at``, both inclusive, timezone-aware.
    """

    channel: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    control_id: str | None = None
    patient: str | None = None
    message_type: str | None = None


def search(engine: Engine, filters: Filters, *, before_id: int | None = None, limit: int = 50) -> list[dict]:
    """Messages matching ``filters``, newest first, at most ``limit``; ``before_id`` continues a
    page (only ids below it). Each a dict of the metadata columns, ``warnings`` and
    ``unmapped`` parsed to lists; ``ordering_key`` is the patient identity (the caller decides
    who may see it)."""
    with engine.connect() as conn:
        where = _where(conn, filters)
        if where is None:
            return []
        if before_id is not None:
            where.append(_m.id < before_id)
        q = select(*_COLUMNS).where(*where).order_by(_m.id.desc()).limit(limit)
        return [_row(r._mapping) for r in conn.execute(q)]


def ids(engine: Engine, filters: Filters, *, limit: int = 10000) -> list[tuple[int, str]]:
    """(id, channel) of the messages matching ``filters``, oldest first, at most ``limit``: the
    order to process them again in."""
    with engine.connect() as conn:
        where = _where(conn, filters)
        if where is None:
            return []
        q = select(_m.id, _m.channel).where(*where).order_by(_m.id).limit(limit)
        return [(r[0], r[1]) for r in conn.execute(q)]


def _where(conn: Connection, f: Filters) -> list | None:
    """The conditions for ``f``; None when the date range holds no message at all."""
    where: list = []
    if f.channel:
        where.append(_m.channel == f.channel)
    if f.status:
        where.append(_m.status == f.status)
    if f.control_id:
        where.append(_m.control_id == f.control_id)
    if f.patient:
        # through ix_messages_order (channel, ordering_key, id), which the claims keep anyway:
        # one index less on every insert, for a few seeks more here
        if not f.channel:
            channels = _channels(conn)
            if not channels:
                return None
            where.append(_m.channel.in_(channels))
        where.append(_m.ordering_key == f.patient)
    if f.message_type:
        kind, _, trigger = f.message_type.strip().partition("^")
        where.append(_m.message_type == kind)
        if trigger:
            where.append(_m.trigger == trigger)
    dated = ([_m.received_at >= f.since] if f.since is not None else []) + (
        [_m.received_at <= f.until] if f.until is not None else []
    )
    if dated:
        # without ``until`` the range is the newest rows, which a scan newest first meets at once:
        # bounds are then worth only a short read; with ``until``, the upper bound is what spares
        # the scan every newer row, and worth a long one
        found, lo, hi = _bounds(conn, dated, BOUND_ROWS if f.until is None else BOUND_ROWS * 10)
        if not found:
            return None
        where += dated + ([_m.id >= lo, _m.id <= hi] if lo is not None else [])
    return where


def _channels(conn: Connection) -> list[str]:
    """Every channel with messages, one index seek each (a loose scan of ix_messages_channel_id)."""
    seen = select(func.min(_m.channel).label("name")).cte("seen", recursive=True)
    after = select(func.min(_m.channel)).where(_m.channel > seen.c.name).scalar_subquery()
    seen = seen.union_all(select(after).where(seen.c.name.is_not(None)))
    return [r[0] for r in conn.execute(select(seen.c.name).where(seen.c.name.is_not(None)))]


def _bounds(conn: Connection, dated: list, most: int) -> tuple[int, int | None, int | None]:
    """(rows in the date range, up to ``most``; its smallest id; its largest id), read from
    ix_messages_received_at; the ids are None when the range holds ``most`` rows or more."""
    near = select(_m.id).where(*dated).limit(most).subquery()
    found, lo, hi = conn.execute(select(func.count(), func.min(near.c.id), func.max(near.c.id))).one()
    return (found, lo, hi) if found < most else (found, None, None)


def _row(row) -> dict:
    out = dict(row)
    for name in ("warnings", "unmapped"):
        out[name] = json.loads(out[name]) if out[name] else []
    return out


def _pending():
    """``status IN ('RECEIVED', 'TRANSFORMED', 'QUEUED')`` with the values in the SQL text: the
    planners match it to the partial index ``ix_messages_pending`` only then."""
    return _m.status.in_([literal(s, literal_execute=True) for s in PENDING])


def channel_stats(engine: Engine) -> dict[str, dict[str, Any]]:
    """Per channel that has messages: ``counts`` per status, ``total``, ``warnings`` (messages
    with any), ``last_minute`` (``received`` and, of those, ``errors``) and ``oldest_queued_at``
    (receive time of the oldest message still in work, None when none is).

    Four statements, each on an index: the counts read every entry of ``ix_messages_status``
    (the one full pass, about 0.1 s per million messages), the others only their own rows (the
    warned ones, the last minute's, the pending ones)."""
    stamp = now()
    out: dict[str, dict[str, Any]] = {}

    def entry(channel: str) -> dict[str, Any]:
        if channel not in out:
            out[channel] = dict(
                counts={}, total=0, warnings=0, last_minute=dict(received=0, errors=0), oldest_queued_at=None
            )
        return out[channel]

    with engine.connect() as conn:
        # grouped in the index's own order (status, channel): no sort
        for status, channel, n in conn.execute(
            select(_m.status, _m.channel, func.count()).group_by(_m.status, _m.channel)
        ):
            e = entry(channel)
            e["counts"][status] = n
            e["total"] += n
        for channel, n in conn.execute(
            select(_m.channel, func.count()).where(_m.warnings.is_not(None)).group_by(_m.channel)
        ):
            entry(channel)["warnings"] = n
        # counted here, not by GROUP BY channel: grouped, SQLite's planner reads all of
        # ix_messages_received (channel, received_at) instead of the last minute of ix_messages_received_at
        recent = select(_m.channel, _m.status).where(_m.received_at >= stamp - timedelta(seconds=60))
        for channel, status in conn.execute(recent):
            last = entry(channel)["last_minute"]
            last["received"] += 1
            last["errors"] += status == ERROR
        oldest = select(_m.channel, func.min(_m.received_at)).where(_pending()).group_by(_m.channel)
        for channel, at in conn.execute(oldest):
            entry(channel)["oldest_queued_at"] = aware(at)
    return out


def series(engine: Engine, minutes: int = 60) -> dict[str, Any]:
    """Messages received per minute and per channel over the last ``minutes`` minutes (the
    current one last), and how many of them are in ERROR now; minutes without any are 0.

    ``{"minutes": [ISO start of each minute], "channels": {name: {"received": [n, ...],
    "errors": [n, ...]}}}``. Reads the range through ``ix_messages_received_at``."""
    minutes = max(1, min(int(minutes), 24 * 60))
    last = now().replace(second=0, microsecond=0)
    starts = [last - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    keys = {s.strftime("%Y-%m-%dT%H:%M"): i for i, s in enumerate(starts)}
    channels: dict[str, dict[str, list[int]]] = {}
    with engine.connect() as conn:
        bucket = _minute(conn)
        q = (
            select(bucket, _m.channel, func.count(), func.sum(case((_m.status == ERROR, 1), else_=0)))
            .where(_m.received_at >= starts[0])
            .group_by(bucket, _m.channel)
        )
        for key, channel, n, bad in conn.execute(q):
            i = keys.get(key)
            if i is None:  # received after this call began (a later minute)
                continue
            c = channels.setdefault(channel, dict(received=[0] * minutes, errors=[0] * minutes))
            c["received"][i] = n
            c["errors"][i] = int(bad or 0)
    return dict(minutes=[s.isoformat() for s in starts], channels=channels)


def _minute(conn: Connection):
    """``received_at`` cut to its minute as text ``YYYY-MM-DDTHH:MM`` (UTC), per dialect."""
    if conn.dialect.name == "postgresql":
        utc = func.timezone("UTC", _m.received_at)
        return func.to_char(func.date_trunc("minute", utc), 'YYYY-MM-DD"T"HH24:MI')
    return func.strftime("%Y-%m-%dT%H:%M", _m.received_at)  # SQLite keeps UTC text


def error_kinds(engine: Engine, *, per_channel: int = 20) -> dict[tuple[str, str], int]:
    """(channel, kind) -> messages in ERROR, where kind is the error text before its first ':'
    (at most 60 characters); per channel the ``per_channel`` commonest kinds, the rest counted
    as ``other``. Errors name positions and rules, never values, so kinds are few."""
    q = select(_m.channel, _m.error, func.count()).where(_m.status == ERROR).group_by(_m.channel, _m.error)
    kinds: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for channel, error, n in conn.execute(q):
            kind = (error or "").split(":", 1)[0].strip()[:60] or "unknown"
            per = kinds.setdefault(channel, {})
            per[kind] = per.get(kind, 0) + n
    out: dict[tuple[str, str], int] = {}
    for channel, per in kinds.items():
        ranked = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
        for kind, n in ranked[:per_channel]:
            out[(channel, kind)] = n
        rest = sum(n for _k, n in ranked[per_channel:])
        if rest:
            out[(channel, "other")] = out.get((channel, "other"), 0) + rest
    return out


def pending_by_partner(engine: Engine) -> dict[tuple[str, str], datetime]:
    """(channel, partner) -> receive time of the oldest message still in work, where partner is
    ``MSH-3/MSH-4`` (first component of each, at most 60 characters)."""
    q = (
        select(_m.channel, _m.sending_app, _m.sending_facility, func.min(_m.received_at))
        .where(_pending())
        .group_by(_m.channel, _m.sending_app, _m.sending_facility)
    )
    out: dict[tuple[str, str], datetime] = {}
    with engine.connect() as conn:
        for channel, app, facility, at in conn.execute(q):
            key = (channel, partner(app, facility))
            at = aware(at)
            if key not in out or at < out[key]:
                out[key] = at
    return out


def partner(app: str | None, facility: str | None) -> str:
    """``"APP/FACILITY"`` from MSH-3 and MSH-4 (their first components), at most 60 characters;
    "" when both are empty."""
    a, f = (app or "").split("^", 1)[0], (facility or "").split("^", 1)[0]
    return f"{a}/{f}"[:_PARTNER_CHARS] if a or f else ""
