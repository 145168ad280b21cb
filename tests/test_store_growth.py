"""No statement of the hot path reads a whole table: its cost must not grow with the store.

Three such reads were found by measuring: the duplicate lookup and the patient resolution used
row-value INs that SQLite does not match to an index, and the claim walked a patient's whole
history. Each was one full scan per batch, invisible on a small store and the whole cost on a
large one. This test runs messages through a real runtime on SQLite (receive, claim, map,
write both stores, record, hand on, an A40 merge, the sweeper's look for stuck messages), keeps
every statement the stores executed, and asks SQLite for each one's plan: none may SCAN a
table that grows with the traffic, nor search one by a channel alone (every row of a channel is
most of the table), and the claim and the hand-on read pending messages only
(through an index whose matching rows are the pending ones), not the patient's history.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT, adt_update
from sqlalchemy import event

from engine.channels.pipeline import inbound, key_of
from engine.config import load_config
from engine.formats import hl7
from engine.runtime import Runtime

GROWING = {
    "messages",
    "deliveries",
    "patient",
    "encounter",
    "observation",
    "diagnostic_report",
    "allergy",
    "diagnosis",
    "registration",
    "coverage",
    "visit",
}

FEW_VALUES = {"channel", "sending_facility", "message_type", "trigger"}
"""Columns with a handful of values: an index search bound by these alone reads, say, every
message of a channel, which grows with the store as a scan does. (The duplicate lookup did so
once the console's (channel, id) index let SQLite skip its ORDER BY through it.)"""

ORU = (
    "MSH|^~\\&|LAB|NORTH|ENGINE|HUB|20260301083000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||{mrn}^^^NORTH^MR||Doe^Jane||19800101|F\r"
    "ORC|RE|PO{cid}|FO{cid}\r"
    "OBR|1|PO{cid}|FO{cid}|24323-8^Metabolic panel^LN|||20260301083000|||||||||||||||20260301083000|||F\r"
    "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||F\r"
)
A40 = (
    "MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260301090000||ADT^A40^ADT_A39|MERGE1|P|2.5.1\r"
    "EVN|A40|20260301090000\r"
    "PID|1||{new}^^^NORTH^MR||Doe^Jane||19800101|F\r"
    "MRG|{old}^^^NORTH^MR\r"
)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch):
    for name in ("MESSAGE", "CLINICAL", "PM"):
        monkeypatch.setenv(f"ENGINE_{name}_STORE_URL", f"sqlite:///{tmp_path}/{name.lower()}.db")
    rt = Runtime(load_config(ROOT / "config" / "channels.yaml"))
    rt.prepare_schemas()
    yield rt
    for _name, store in rt._all_stores():
        store.engine.dispose()
    rt.message_store.status_engine.dispose()


def _capture(rt: Runtime) -> list[tuple[object, str, object]]:
    seen: list[tuple[object, str, object]] = []
    engines = [rt.message_store.engine, rt.message_store.status_engine] + [
        s.engine for n, s in rt._all_stores() if n != "messages"
    ]
    for eng in engines:
        event.listen(
            eng, "before_cursor_execute", lambda c, cur, sql, params, ctx, many, e=eng: seen.append((e, sql, params))
        )
    return seen


def _run(rt: Runtime, raws: list[bytes]) -> None:
    channels = {c.name: c for c in rt.cfg.channels}
    items = []
    for raw in raws:
        ch = channels["lab-results" if b"|ORU^" in raw[:200] else "adt"]
        header = hl7.read_header(raw)
        msg = hl7.Message(hl7.decode(raw, "utf-8", charset=header.charset))
        items.append(
            inbound(ch.name, raw, header, ordering_key=key_of(msg, ch.ordering), duplicate_window=timedelta(hours=24))
        )
    stored = rt.message_store.insert_received(items)
    by_channel: dict[str, list[int]] = {}
    for item, s in zip(items, stored):
        if s.status == "RECEIVED":  # a resend is FILTERED as a duplicate of its original
            by_channel.setdefault(item.channel, []).append(s.id)
    for channel, ids in by_channel.items():
        outcomes = rt.process_now(channel, ids)
        assert [o.status for o in outcomes] == ["SENT"] * len(ids)


def test_no_hot_path_statement_scans_a_table_that_grows(runtime):
    seen = _capture(runtime)
    _run(runtime, [adt_update(1, 1), adt_update(2, 2), adt_update(3, 1)])
    _run(runtime, [ORU.format(cid=f"L{i}", mrn=f"P000{i % 2 + 1}").encode() for i in range(3)])
    _run(runtime, [adt_update(1, 1)])  # a resend: the duplicate lookup finds its original
    _run(runtime, [A40.format(new="P0001", old="P0002").encode()])
    _run(runtime, [ORU.format(cid="L9", mrn="P0002").encode()])  # resolved to the survivor
    runtime.message_store.pending(older_than=timedelta(seconds=120))

    scans: dict[str, list[str]] = {}
    checked = 0
    for eng, sql, params in seen:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")):
            continue
        rows = params[0] if isinstance(params, list) and params and isinstance(params[0], (tuple, dict)) else params
        with eng.connect() as conn:
            plan = conn.connection.dbapi_connection.execute("EXPLAIN QUERY PLAN " + sql, rows).fetchall()
        checked += 1
        hand_on = "ordering_key =" in sql or "ordering_key IN" in sql  # the claim and the hand-on
        pending_only = ("ix_messages_pending", "ix_messages_status (status=")  # indexes that hold few rows
        if hand_on and not any(i in step[3] for step in plan for i in pending_only):
            scans.setdefault(" ".join(sql.split())[:160], []).append(f"not through ix_messages_pending: {plan}")
        for step in plan:
            words = step[3].split()
            if words[:1] == ["SCAN"] and words[1] in GROWING and "COVERING" not in words:
                scans.setdefault(" ".join(sql.split())[:160], []).append(step[3])
            bound = set(re.findall(r"(\w+)\s*(?:=|>|<|IN\b)", step[3].partition("(")[2]))
            if words[:1] == ["SEARCH"] and words[1] in GROWING and bound and bound <= FEW_VALUES:
                scans.setdefault(" ".join(sql.split())[:160], []).append(f"all of a channel's rows: {step[3]}")
    assert checked > 20  # the flow above really ran the stores' statements
    assert not scans, "statements that read a whole growing table:\n" + "\n".join(f"{s}: {p}" for s, p in scans.items())


def test_under_a_backlog_the_sweeper_looks_up_only_due_retries_not_every_queued_message(runtime):
    """A message pending past ``stuck_after_seconds`` counts as lost only when the queue is empty
    (``stuck=True``): under a backlog every queued message is that old, and fetching them all each
    second grew with the backlog and slowed its draining."""
    from sqlalchemy import update

    from engine.stores.message_store import messages, now

    _run(runtime, [adt_update(1, 1)])
    [stored] = runtime.message_store.insert_received(
        [inbound("adt", adt_update(2, 1), hl7.read_header(adt_update(2, 1)), ordering_key="NORTH|P0001")]
    )
    with runtime.message_store.engine.begin() as conn:  # received (and queued) ten minutes ago
        conn.execute(
            update(messages).where(messages.c.id == stored.id).values(updated_at=now() - timedelta(minutes=10))
        )
    older = timedelta(seconds=120)
    assert runtime.message_store.pending(older_than=older, stuck=True) == [(stored.id, "adt")]
    assert runtime.message_store.pending(older_than=older, stuck=False) == []
