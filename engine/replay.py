"""``engine replay``: what a changed mapping would do to messages a channel already received, before it is deployed.

Each stored message of the channel (received in the window, oldest first) is mapped twice, by
the mapping the channel runs now and by the new one, exactly as the destination maps it:
the message decoded with its stored charset, parsed as the processor parses it (strict
validation and the channel filter included), the destination's mappings that apply, the
sender's clock (the channel's ``timezone``/``timezones``), the mappings' ``checks:``. The two
sets of records are compared record by record and field by field. Nothing is written: no
store is opened but the message store, and that one is only read.

Records are matched by (target table, op, key values); the n-th record of one identity in a
message is compared with the n-th of the same identity. A record only the new mapping builds
is *added*, one only the current mapping builds is *removed*, one both build with other values
is *changed*. A field a record does not set (the store keeps what it has) is not the same as a
field set to null (the store clears it): in :meth:`ReplayResult.to_dict` a side that does not
set the field has no ``old``/``new`` key, and ``render_text`` says ``(not set)``.

A failing mapping is a result, not a crash: ``broken`` counts the messages the new mapping
fails on where the current one did not (``engine replay`` exits 1 then), ``fixed`` the other
way round. Checks that read a store (``x12_835_claims``) say nothing here, on both sides.

Replay reads message content: the caller audits it (``on_read`` gets the ids of every batch
read; the CLI writes one ``audit_log`` entry with its ``--purpose``). Output shows values;
nothing is logged.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from engine.channels import fhir_sender, store_destination
from engine.channels.base import Context, Destination
from engine.channels.store_destination import StoreDestination
from engine.errors import ConfigError, EngineError, MappingError, ParseError, Problem
from engine.formats import hl7, parse_text, x12
from engine.records import Record
from engine.stores.message_tables import FILTERED, messages
from engine.transforms.report import RunReport, unmapped
from engine.transforms.testing import render
from engine.transforms.values import MISSING

BATCH = 200
"""Messages read (content included) per round trip to the message store."""
LOADERS: dict[str, Callable[[Any, Any], list]] = {"store": store_destination.load_for, "fhir": fhir_sender.load_for}
"""The destination types that map, and how each loads and checks its mappings."""
POSTED = "posted mapping"
"""How problems of a mapping given as text (the dashboard) name their file."""
SHOWN_CHARS = 200
"""Longest value ``render_text`` prints whole; longer ones are cut (``to_dict`` keeps them)."""


@dataclass
class FieldChange:
    """One column of one record; ``old``/``new`` are MISSING where that side does not set it."""

    field: str
    old: Any = MISSING
    new: Any = MISSING
    old_source: str = ""
    new_source: str = ""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"field": self.field}
        if self.old is not MISSING:
            out["old"], out["old_source"] = _plain(self.old), self.old_source
        if self.new is not MISSING:
            out["new"], out["new_source"] = _plain(self.new), self.new_source
        return out


@dataclass
class RecordChange:
    """A record added, removed or changed: ``fields`` are the changed columns, or every column
    but the key's of a record added or removed."""

    target: str
    op: str
    key: dict[str, Any]
    change: str  # added | removed | changed
    fields: list[FieldChange]

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "op": self.op,
            "key": {k: _plain(v) for k, v in self.key.items()},
            "change": self.change,
            "fields": [f.to_dict() for f in self.fields],
        }


@dataclass
class MessageChange:
    """What differs for one stored message."""

    id: int
    control_id: str
    received_at: datetime
    message_type: str
    records: list[RecordChange] = field(default_factory=list)
    warnings_added: list[str] = field(default_factory=list)
    warnings_removed: list[str] = field(default_factory=list)
    old_error: str | None = None
    new_error: str | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "control_id": self.control_id,
            "received_at": self.received_at.isoformat(),
            "message_type": self.message_type,
            "records": [r.to_dict() for r in self.records],
            "warnings_added": self.warnings_added,
            "warnings_removed": self.warnings_removed,
            "old_error": self.old_error,
            "new_error": self.new_error,
        }


@dataclass
class TableSummary:
    added: int = 0
    removed: int = 0
    changed: int = 0
    fields: Counter = field(default_factory=Counter)
    """Per column: how many changed records change it."""


@dataclass
class ReplayResult:
    """What the new mapping would change for the messages read, against the channel's current mapping."""

    channel: str
    mapping: str
    """The new mapping as given: its file, or ``posted mapping``."""
    destination: str
    compared_with: str
    """The name of the channel's current mapping it replaces in ``destination``."""
    since: datetime | None
    until: datetime | None
    limit: int
    messages_read: int = 0
    truncated: bool = False
    """``limit`` messages were read and more were received in the window."""
    outcomes: Counter = field(default_factory=Counter)
    """broken (new fails, current did not), fixed (the reverse), failing (both fail), unreadable
    (the stored message does not parse), filtered (the channel filter drops it now)."""
    summary: dict[str, TableSummary] = field(default_factory=dict)
    """Per target table."""
    no_longer_read: Counter = field(default_factory=Counter)
    """Populated positions the current mapping reads and the new one leaves unmapped: in how many messages."""
    newly_read: Counter = field(default_factory=Counter)
    messages: list[MessageChange] = field(default_factory=list)
    """The messages with a difference, oldest first; the others are only counted."""

    @property
    def messages_changed(self) -> int:
        return len(self.messages)

    def to_dict(self) -> dict:
        """JSON-able: datetimes ISO, dates and decimals as text."""
        return {
            "channel": self.channel,
            "mapping": self.mapping,
            "destination": self.destination,
            "compared_with": self.compared_with,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "limit": self.limit,
            "truncated": self.truncated,
            "messages_read": self.messages_read,
            "messages_changed": self.messages_changed,
            "outcomes": {k: self.outcomes[k] for k in OUTCOMES},
            "summary": {
                t: {
                    "added": s.added,
                    "removed": s.removed,
                    "changed": s.changed,
                    "fields": dict(sorted(s.fields.items())),
                }
                for t, s in sorted(self.summary.items())
            },
            "positions": {"no_longer_read": dict(self.no_longer_read), "newly_read": dict(self.newly_read)},
            "messages": [m.to_dict() for m in self.messages],
        }


OUTCOMES = ("broken", "fixed", "failing", "unreadable", "filtered")


class _MappingStep(StoreDestination):
    """A destination's mapping step and nothing else: :meth:`StoreDestination.prepare` (the
    mappings that apply, the sender's clock, the checks) over the mappings given, with no store
    behind it (so checks that read one say nothing, and nothing can be written)."""

    def __init__(self, config, channel, mappings: list):
        Destination.__init__(self, config, Context(None, _no_store, _no_store, channel))
        self.mappings = mappings
        self.store = None

    def outcome(self, message) -> tuple[list[Record] | None, RunReport, str | None]:
        """(records or None when nothing applies, the run's report, the error text or None)."""
        report = RunReport()
        try:
            return self.prepare(message, report), report, None
        except MappingError as exc:
            return None, report, str(exc)
        except Exception as exc:  # as the processor: a bug in a mapping fails the message, not the run
            return None, report, f"internal: {type(exc).__name__}"


def _no_store(*_args) -> None:
    raise EngineError("replay writes nothing")


def replay(
    cfg,
    message_store,
    *,
    channel: str,
    mapping_path: str | Path | None = None,
    mapping_text: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    destination: str | None = None,
    limit: int = 1000,
    on_read: Callable[[list[int]], None] | None = None,
) -> ReplayResult:
    """Map the channel's stored messages received in [since, until] (oldest first, at most
    ``limit``; duplicates and FILTERED ones left out) with the new mapping and with the one it
    replaces; never writes to any store.

    The mapping replaced is one of the channel's destinations that map (``store``, ``fhir``):
    of ``destination`` when given; among several, the one named like the new file (its stem),
    else the one whose store the new mapping's targets name.

    ``on_read(ids)`` is called with each batch of message ids before their content is used.
    Raises ConfigError (file:line problems) for an invalid new mapping, EngineError when the
    channel is unknown or the mapping to compare with cannot be told.
    """
    if (mapping_path is None) == (mapping_text is None):
        raise EngineError("give the new mapping as a file or as text, not both")
    if limit < 1:
        raise EngineError("limit must be at least 1")
    shown = POSTED if mapping_path is None else str(mapping_path)
    text = mapping_text if mapping_text is not None else _read(Path(str(mapping_path)))
    try:
        ch = cfg.channel(channel)
    except KeyError:
        known = ", ".join(c.name for c in cfg.channels)
        raise EngineError(f"no channel {channel!r} (known: {known})") from None
    dest, old_name = _compared(cfg, ch, destination, Path(str(mapping_path)).stem if mapping_path else None, text)
    current = _MappingStep(dest, ch.config, LOADERS[dest.type](cfg, dest))
    new = _MappingStep(dest, ch.config, _load_new(cfg, dest, old_name, text, shown))
    result = ReplayResult(channel, shown, dest.name, Path(old_name).stem, since, until, limit)
    q = select(
        messages.c.id,
        messages.c.received_at,
        messages.c.content,
        messages.c.charset,
        messages.c.control_id,
        messages.c.message_type,
        messages.c.trigger,
    ).where(messages.c.channel == channel, messages.c.duplicate_of.is_(None), messages.c.status != FILTERED)
    if since is not None:
        q = q.where(messages.c.received_at >= since)
    if until is not None:
        q = q.where(messages.c.received_at <= until)
    q = q.order_by(messages.c.received_at, messages.c.id).limit(limit + 1)
    with message_store.engine.connect() as conn:
        for batch in conn.execution_options(yield_per=BATCH).execute(q).partitions():
            rows = batch[: limit - result.messages_read]
            result.truncated = len(rows) < len(batch)
            if rows and on_read is not None:
                on_read([r.id for r in rows])
            for row in rows:
                _compare(result, ch, current, new, row)
            result.messages_read += len(rows)
            if result.truncated:
                break
    return result


def mapped(cfg, channel: str, message: dict) -> list[dict]:
    """What each destination of ``channel`` that maps makes of one stored message now (the
    console's "mapped" view): ``[{destination, mapping, records: [{target, op, key, fields}],
    warnings, error}]``, values as :meth:`ReplayResult.to_dict` gives them. ``message`` holds the
    row's ``content`` and ``charset``. Nothing is written; the caller audits the read."""
    ch = cfg.channel(channel)
    out = []
    for d in ch.destinations:
        if d.type not in LOADERS:
            continue
        entry: dict[str, Any] = {"destination": d.name, "mapping": ", ".join(Path(n).stem for n in d.mappings)}
        try:
            msg = _parse(message["content"], message.get("charset"), ch)
        except (ParseError, UnicodeDecodeError) as exc:
            out.append({**entry, "records": [], "warnings": [], "error": f"parse: {exc}"})
            continue
        if ch.filter is not None and not ch.filter(msg):
            out.append({**entry, "records": [], "warnings": ["the channel filter drops this message"], "error": None})
            continue
        records, report, error = _MappingStep(d, ch.config, LOADERS[d.type](cfg, d)).outcome(msg)
        shown = [
            {
                "target": r.target,
                "op": r.op,
                "key": {k: _plain(r.values.get(k)) for k in r.key},
                "fields": {k: _plain(v) for k, v in r.values.items()},
            }
            for r in records or []
        ]
        out.append({**entry, "records": shown, "warnings": report.warnings, "error": error})
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read file: {exc}")]) from exc


def _compared(cfg, ch, destination: str | None, stem: str | None, text: str) -> tuple[Any, str]:
    """The channel's destination and mapping name the new mapping replaces (see :func:`replay`)."""
    pairs = [(d, name) for d in ch.destinations if d.type in LOADERS for name in d.mappings]
    named = ", ".join(f"{d.name} ({name})" for d, name in pairs)
    if not pairs:
        raise EngineError(f"channel {ch.name} has no destination that runs a mapping")
    if destination is not None:
        pairs = [p for p in pairs if p[0].name == destination]
        if not pairs:
            raise EngineError(f"channel {ch.name} has no mapping destination {destination!r} (it has: {named})")
    stores = _target_stores(text)
    for keep in (
        lambda d, name: Path(name).stem == stem,
        lambda d, name: bool(stores) and stores <= {"fhir" if d.type == "fhir" else d.store},
    ):
        if len(pairs) > 1:
            pairs = [p for p in pairs if keep(*p)] or pairs
    if len(pairs) != 1:
        _load_plain(cfg, text)  # an invalid mapping says so before the question which one it replaces
        which = ", ".join(f"{d.name} ({name})" for d, name in pairs)
        raise EngineError(
            f"cannot tell which mapping of channel {ch.name} this one replaces: {which}; "
            "name the file like the mapping it replaces, or give the destination"
        )
    return pairs[0]


def _target_stores(text: str) -> set[str]:
    """The stores a mapping's records target (``clinical`` of ``clinical.patient``); empty when unreadable."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # the loader says what is wrong with it
        return set()
    records = data.get("records") if isinstance(data, dict) else None
    targets = [r.get("target") for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    return {t.split(".", 1)[0] for t in targets if isinstance(t, str) and "." in t}


def _load_new(cfg, dest, old_name: str, text: str, shown: str) -> list:
    """``dest``'s mappings with ``old_name`` replaced by ``text``, loaded and checked as the
    destination loads its own. The text is written, for as long as loading takes, to a private
    temporary directory under the replaced mapping's name, so that its warnings name the
    mapping as the current one's do; problems name ``shown`` as their file."""
    with tempfile.TemporaryDirectory(prefix="engine-replay-") as tmp:
        path = Path(tmp) / f"{Path(old_name).stem}.yaml"
        path.write_text(text, encoding="utf-8")
        changed = dest.model_copy(update={"mapping": [str(path) if n == old_name else n for n in dest.mappings]})
        try:
            return LOADERS[dest.type](cfg, changed)
        except ConfigError as exc:
            raise ConfigError([replace(p, file=shown) if p.file == str(path) else p for p in exc.problems]) from None


def _load_plain(cfg, text: str) -> None:
    """Raise ConfigError (file ``posted mapping``) when ``text`` is not a valid mapping on its own."""
    from engine.transforms import load_mapping

    with tempfile.TemporaryDirectory(prefix="engine-replay-") as tmp:
        path = Path(tmp) / "mapping.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_mapping(path, tables_dir=cfg.mappings_dir / "tables")
        except ConfigError as exc:
            raise ConfigError([replace(p, file=POSTED) if p.file == str(path) else p for p in exc.problems]) from None


def _parse(content: bytes, charset: str | None, ch):
    """A stored message as the processor parses it (engine/channels/processor.py ``_prepare``).
    Raises ParseError (or UnicodeDecodeError for X12 and FHIR content)."""
    codec = hl7.codec_for(charset, "utf-8")
    if x12.is_x12(content):
        text = content.decode(codec)
    elif content[:1] == b"{":
        text = content.decode("utf-8")
    else:
        text = hl7.decode(content, codec)
    msg = parse_text(text)
    if ch.config.validation == "strict" and msg.format == "hl7v2":
        hl7.validate_strict(msg.text)
    return msg


def _compare(result: ReplayResult, ch, current: _MappingStep, new: _MappingStep, row) -> None:
    try:
        msg = _parse(row.content, row.charset, ch)
    except (ParseError, UnicodeDecodeError):
        result.outcomes["unreadable"] += 1
        return
    if ch.filter is not None and not ch.filter(msg):
        result.outcomes["filtered"] += 1
        return
    old, old_report, old_error = current.outcome(msg)
    fresh, new_report, new_error = new.outcome(msg)
    if old_error and new_error:
        result.outcomes["failing"] += 1
    elif new_error:
        result.outcomes["broken"] += 1
    elif old_error:
        result.outcomes["fixed"] += 1
    else:
        before, after = set(unmapped(msg, [old_report])), set(unmapped(msg, [new_report]))
        result.no_longer_read.update(after - before)
        result.newly_read.update(before - after)
    received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
    kind = f"{row.message_type}^{row.trigger}" if row.trigger else row.message_type
    change = MessageChange(row.id, row.control_id, received, kind, old_error=old_error, new_error=new_error)
    change.records = _diff(old or [], fresh or [])  # a failing side writes nothing
    old_w, new_w = Counter(old_report.warnings), Counter(new_report.warnings)
    change.warnings_added = list((new_w - old_w).elements())
    change.warnings_removed = list((old_w - new_w).elements())
    if change.records or change.warnings_added or change.warnings_removed or old_error != new_error:
        result.messages.append(change)
    for rc in change.records:
        s = result.summary.setdefault(rc.target, TableSummary())
        if rc.change == "changed":
            s.changed += 1
            s.fields.update(f.field for f in rc.fields)
        elif rc.change == "added":
            s.added += 1
        else:
            s.removed += 1


def _identity(r: Record) -> tuple:
    return (r.target, r.op, tuple(render(r.values.get(k)) for k in r.key))


def _diff(old: list[Record], new: list[Record]) -> list[RecordChange]:
    """Records added, removed and changed, in the order the mappings build them (old first)."""
    left: dict[tuple, list[Record]] = {}
    for r in old:
        left.setdefault(_identity(r), []).append(r)
    right: dict[tuple, list[Record]] = {}
    for r in new:
        right.setdefault(_identity(r), []).append(r)
    out: list[RecordChange] = []
    for ident in dict.fromkeys([*left, *right]):
        a, b = left.get(ident, []), right.get(ident, [])
        for n in range(max(len(a), len(b))):
            o = a[n] if n < len(a) else None
            w = b[n] if n < len(b) else None
            base = o if o is not None else w
            if base is None:
                continue
            key = {k: base.values.get(k) for k in base.key}
            fields = _fields(o, w, skip=set(base.key))
            if o is None or w is None:
                out.append(RecordChange(base.target, base.op, key, "removed" if w is None else "added", fields))
            elif fields:
                out.append(RecordChange(base.target, base.op, key, "changed", fields))
    return out


def _fields(old: Record | None, new: Record | None, skip: set[str]) -> list[FieldChange]:
    ov = old.values if old else {}
    nv = new.values if new else {}
    out = []
    for col in dict.fromkeys([*ov, *nv]):
        if col in skip:
            continue
        a, b = ov.get(col, MISSING), nv.get(col, MISSING)
        if _same(a, b):
            continue
        out.append(
            FieldChange(
                col,
                a,
                b,
                old.sources.get(col, "") if old and a is not MISSING else "",
                new.sources.get(col, "") if new and b is not MISSING else "",
            )
        )
    return out


def _same(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    return type(a) is type(b) and a == b


def _plain(value: Any) -> Any:
    """A record's value as JSON holds it: dates and datetimes ISO, decimals as text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- text ---------------------------------------------------------------------------------------


def render_text(result: ReplayResult) -> str:
    """The summary (per table and column: how many records change), then each message's changes
    field by field, values shown. Messages without a difference are counted, not listed."""
    r = result
    window = f"{_when(r.since) if r.since else 'the first message'} .. {_when(r.until) if r.until else 'now'}"
    out = [
        f"replay of channel {r.channel}: {r.mapping} in place of mapping {r.compared_with} "
        f"(destination {r.destination}); nothing was written",
        f"received {window}: {r.messages_read} message(s) read, {r.messages_changed} with changes, "
        f"{r.messages_read - r.messages_changed} without",
    ]
    if r.truncated:
        out.append(f"  stopped at --limit {r.limit}: later messages of the window were not read")
    said = {
        "broken": "the new mapping FAILS where the current one does not",
        "fixed": "the new mapping maps where the current one fails",
        "failing": "both mappings fail",
        "unreadable": "the stored message cannot be parsed (not compared)",
        "filtered": "the channel filter drops it now (not compared)",
    }
    out += [f"  {r.outcomes[k]} message(s): {said[k]}" for k in OUTCOMES if r.outcomes[k]]
    if r.summary:
        out += ["", f"  {'TABLE / COLUMN':40} {'ADDED':>7} {'REMOVED':>7} {'CHANGED':>7}"]
        for target, s in sorted(r.summary.items()):
            out.append(f"  {target:40} {s.added:>7} {s.removed:>7} {s.changed:>7}")
            out += [f"    {col:38} {'':>7} {'':>7} {n:>7}" for col, n in sorted(s.fields.items())]
    elif not r.messages:
        out += ["", "no record, warning or error differs"]
    for title, counted in (
        ("read by the current mapping only", r.no_longer_read),
        ("read by the new mapping only", r.newly_read),
    ):
        if counted:
            shown = ", ".join(f"{p} ({n})" for p, n in sorted(counted.items()))
            out += ["", f"populated positions {title} (messages): {shown}"]
    for m in r.messages:
        out += ["", f"message {m.id}  {m.message_type}  control id {m.control_id}  received {_when(m.received_at)}"]
        if m.old_error != m.new_error:
            out.append(f"  error with the current mapping: {m.old_error or '(none)'}")
            out.append(f"  error with the new mapping:     {m.new_error or '(none)'}")
        if m.new_error and not m.old_error:  # what it no longer writes is the current mapping's whole output
            out.append(f"  none of the current mapping's {len(m.records)} record(s) would be written")
        else:
            for rc in m.records:
                out += _record_lines(rc)
        out += [f"  warning only with the new mapping: {w}" for w in m.warnings_added]
        out += [f"  warning only with the current mapping: {w}" for w in m.warnings_removed]
    return "\n".join(out) + "\n"


def _record_lines(rc: RecordChange) -> list[str]:
    head = f"{rc.target} [{', '.join(_short(v) for v in rc.key.values())}]" + (f" {rc.op}" if rc.op != "upsert" else "")
    if rc.change == "changed":
        lines = []
        for f in rc.fields:
            moved = f"   ({f.old_source} -> {f.new_source})" if f.old_source and f.new_source else ""
            moved = "" if f.old_source == f.new_source else moved or f"   (from {f.old_source or f.new_source})"
            lines.append(f"  {head} {f.field}: {_shown(f.old)} -> {_shown(f.new)}{moved}")
        return lines
    sign, side = ("+", "new") if rc.change == "added" else ("-", "old")
    lines = [f"  {sign} {head} {rc.change}"]
    lines += [f"      {f.field}: {_shown(getattr(f, side))}" for f in rc.fields]
    return lines


def _shown(value: Any) -> str:
    if value is MISSING:
        return "(not set)"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else render(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _short(value: Any) -> str:
    return "null" if value is None else render(value)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- command line -------------------------------------------------------------------------------


def cmd_replay(args) -> int:
    """0 shown; 1 the new mapping fails on a message the current one maps; 2 no (or too long a) purpose.

    The audit entry (actor: the OS account) is written after the messages were read and before
    anything is shown, whether the replay finished or not."""
    from engine.cli import _message_store
    from engine.stores.audit import AuditLog, os_user
    from engine.stores.patient_view import MAX_PURPOSE

    purpose = args.purpose.strip()
    if not purpose or len(purpose) > MAX_PURPOSE:
        print(
            f"error: replay reads message content, which is audited: give --purpose (1 to {MAX_PURPOSE} characters)",
            file=sys.stderr,
        )
        return 2
    cfg, store = _message_store(args)
    read: list[int] = []
    finished = False
    try:
        result = replay(
            cfg,
            store,
            channel=args.channel,
            mapping_path=args.mapping,
            since=args.since,
            until=args.until,
            destination=args.destination,
            limit=args.limit,
            on_read=read.extend,
        )
        finished = True
    finally:
        if read:
            AuditLog(store.engine).record(
                actor=os_user(),
                action="replay",
                target=f"channel {args.channel}",
                purpose=purpose,
                outcome="ok" if finished else "error",
                detail={"messages": len(read), "mapping": args.mapping},
            )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_text(result))
    return 1 if result.outcomes["broken"] else 0
