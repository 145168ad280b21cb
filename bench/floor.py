"""The floor: the engine's durable work for the same messages, by hand, in plain Python and sqlite3.

What is the least CPU a Python process can spend per message on what the engine does, durably,
on SQLite? This answers it for the sample ADT/ORU mix of ``mllp_ingest.py``, without sockets
(the bare ACK server anchor there measures those), one thread, timed with the process's CPU clock:

- receive: the MSH fields the receive path needs (one split), the content's SHA-256, one INSERT
  of the message row on the engine's own ``messages`` table, COMMIT with synchronous=FULL (the
  receipt is durable before the ACK; one commit per message for one connection, one per 20
  for many, as the engine's committer groups many connections' messages), and the ACK's text;
- claim: one UPDATE of the batch's rows and one SELECT of their content (synchronous=NORMAL, as
  the engine's bookkeeping);
- tokenize: every segment, field and component split once, the least any mapping reads;
- write: the very rows the engine writes (the sample mappings' records, checked by the engine's
  planner before timing starts, their values already converted for the driver), one
  ``executemany`` of the engine's own upsert SQL per table shape, into the clinical and PM
  files, each transaction committed with synchronous=FULL;
- status: one UPDATE per message to SENT, committed (NORMAL).

Left out, so this is below what any engine doing the same can reach: the mapping language (a
rule's reads, types, warnings, the unmapped report), checking records against the schema,
converting values, duplicate detection, claims' leases and fencing, deliveries rows, ordering
holds, metrics. Modes (``--modes``): ``one`` connection (each receipt its own commit, processing
in batches of 20, as the engine's worker gathers them), ``many`` connections (receipts committed
20 together too) and ``each`` (every message alone, receipt and processing).

    python bench/floor.py [-n 2000] [--modes one many each] [--json]

``--json`` prints one line, {mode: CPU ms per message} (``mllp_ingest.py``'s anchor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllp_ingest import make_messages  # noqa: E402

RECEIVE_SQL = (
    "INSERT INTO messages (channel, received_at, content, charset, content_hash, message_type, trigger,"
    " control_id, sending_app, sending_facility, version, ordering_key, status, flags, peer, updated_at)"
    " VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, 'RECEIVED', '', '127.0.0.1', ?) RETURNING id"
)
CLAIM_SQL = "UPDATE messages SET claim_until = ?, claim_token = 'floor' WHERE id IN ({})"
LOAD_SQL = "SELECT id, content FROM messages WHERE id IN ({})"
STATUS_SQL = "UPDATE messages SET status = 'SENT', updated_at = ?, claim_until = NULL WHERE id = ?"


def engine_rows(folder: str, messages: list[bytes]) -> tuple[list[list[tuple[str, str, tuple]]], list[str]]:
    """For each message, the upserts the engine writes (store, SQL, driver values), built by the
    engine itself outside the timing; and each message's channel."""
    for store in ("MESSAGE", "CLINICAL", "PM"):
        os.environ[f"ENGINE_{store}_STORE_URL"] = f"sqlite:///{folder}/{store.lower()}.db"
    from engine.config import load_config
    from engine.formats import hl7
    from engine.runtime import Runtime
    from engine.stores.prepared import prepared
    from engine.transforms.report import RunReport

    cfg = load_config(ROOT / "config" / "channels.yaml")
    rt = Runtime(cfg)
    rt.prepare_schemas()
    stamp = datetime.now(UTC)
    out, channels = [], []
    for number, raw in enumerate(messages, 1):
        channel = "lab-results" if b"|ORU^" in raw[:200] else "adt"
        msg = hl7.Message(hl7.decode(raw, "utf-8"))
        rows = []
        for d in rt.destinations[channel]:
            store = getattr(d, "store", None)
            records = d.prepare(msg, RunReport()) if store is not None else None
            for record in records or []:
                op = store._plan(record)
                params = {**op.params, "updated_at": stamp, "last_message_id": number, "last_seq": number}
                stmt = prepared(store._planner.statement(op.shape), store.engine.dialect)
                form, values = stmt._bound(params)
                rows.append((store.schema, form.sql, values))
        out.append(rows)
        channels.append(channel)
    for d in (d for dests in rt.destinations.values() for d in dests):
        if getattr(d, "store", None) is not None:
            d.store.dispose()
    rt.message_store.engine.dispose()
    return out, channels


def connect(path: str, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", f"synchronous={sync}", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


MODES = {
    "one": (1, 20, "one connection: each receipt committed alone, processing in batches of 20"),
    "many": (20, 20, "many connections: receipts and processing in batches of 20"),
    "each": (1, 1, "each message alone: its receipt, then its processing"),
}
"""Mode -> (messages per receipt commit, messages per processing batch, what it stands for).
The engine's worker lingers for a fuller batch (engine/queue.py), so even one connection's
messages are processed in batches; ``each`` is what a worker that never waits would spend."""


def run(folder: str, messages: list[bytes], rows, channels, receipts: int, size: int) -> dict[str, float]:
    received = connect(f"{folder}/message.db", "FULL")
    bookkeeping = connect(f"{folder}/message.db", "NORMAL")
    stores = {"clinical": connect(f"{folder}/clinical.db", "FULL"), "pm": connect(f"{folder}/pm.db", "FULL")}
    spent = dict.fromkeys(("receive", "claim", "tokenize", "write", "status"), 0.0)
    clock = time.process_time
    before = os.times()
    for k in range(0, len(messages), size):
        batch = range(k, min(k + size, len(messages)))
        t = clock()
        ids = []
        for i in batch:  # one connection: each message committed and ACKed before the next
            raw = messages[i]
            msh = raw[: raw.index(b"\r")].decode().split("|")
            now = datetime.now(UTC).isoformat(" ")
            if (i - k) % receipts == 0:  # many connections: receipts share a commit, as the committer's
                received.execute("BEGIN IMMEDIATE")
            row = received.execute(
                RECEIVE_SQL,
                (
                    *(channels[i], now, raw, hashlib.sha256(raw).hexdigest()),
                    *msh[8].split("^")[:2],
                    *(msh[9], msh[2], msh[3], msh[11], msh[3] + "|" + msh[9], now),
                ),
            ).fetchone()
            if (i - k) % receipts == receipts - 1 or i == batch[-1]:
                received.execute("COMMIT")
            ids.append(row[0])
            _ack = f"MSH|^~\\&|{msh[4]}|{msh[5]}|{msh[2]}|{msh[3]}|{now}||ACK|{msh[9]}|P|2.5\rMSA|AA|{msh[9]}\r"
        spent["receive"] += clock() - t
        t = clock()
        marks = ",".join("?" * len(ids))
        bookkeeping.execute("BEGIN IMMEDIATE")
        bookkeeping.execute(CLAIM_SQL.format(marks), (datetime.now(UTC).isoformat(" "), *ids))
        contents = bookkeeping.execute(LOAD_SQL.format(marks), ids).fetchall()
        bookkeeping.execute("COMMIT")
        t2 = clock()
        spent["claim"] += t2 - t
        for _id, content in contents:
            text = content.decode()
            _tokens = [[f.split("^") for f in seg.split("|")] for seg in text.split("\r") if seg]
        t3 = clock()
        spent["tokenize"] += t3 - t2
        for name, conn in stores.items():
            shapes: dict[str, list[tuple]] = {}
            for i in batch:
                for store, sql, values in rows[i]:
                    if store == name:
                        shapes.setdefault(sql, []).append(values)
            if shapes:
                conn.execute("BEGIN IMMEDIATE")
                for sql, values in shapes.items():
                    conn.executemany(sql, values)
                conn.execute("COMMIT")
        t4 = clock()
        spent["write"] += t4 - t3
        now = datetime.now(UTC).isoformat(" ")
        bookkeeping.execute("BEGIN IMMEDIATE")
        bookkeeping.executemany(STATUS_SQL, [(now, i) for i in ids])
        bookkeeping.execute("COMMIT")
        spent["status"] += clock() - t4
    after = os.times()
    spent["of which system"] = after.system - before.system
    for conn in (received, bookkeeping, *stores.values()):
        conn.close()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["one", "many"])
    ap.add_argument("--json", action="store_true", help="one line of JSON: mode -> CPU ms per message")
    args = ap.parse_args()
    python = sys.version.split()[0]
    if not args.json:
        versions = f"Python {python}, SQLite {sqlite3.sqlite_version}"
        print(f"{args.n} messages (half ADT, half ORU), {os.cpu_count()} CPUs, {versions}")
    found: dict[str, float] = {}
    for mode in args.modes:
        receipts, size, meaning = MODES[mode]
        folder = tempfile.mkdtemp(prefix="bench-floor-")
        messages = [m.replace(b"|B0", f"|F{mode}X".encode()) for m in make_messages(args.n)]
        rows, channels = engine_rows(folder, messages)
        written = sum(len(r) for r in rows)
        spent = run(folder, messages, rows, channels, receipts, size)
        per = 1000 / args.n
        system = spent.pop("of which system")
        total = sum(spent.values())
        shutil.rmtree(folder, ignore_errors=True)
        found[mode] = total * per
        if args.json:
            continue
        print(f"\n{meaning}: {total * per:.3f} ms CPU per message ({written / args.n:.1f} rows each)")
        print(f"  (of which system time {system * per:.3f}: the fsyncs' share)")
        for label, seconds in spent.items():
            print(f"  {label:10} {seconds * per:.3f}")
    if args.json:
        print(json.dumps(found))


if __name__ == "__main__":
    main()
