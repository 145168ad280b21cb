"""Soak: one engine, a long stream of messages, progress as it goes: is the end as fast as the start?

    python bench/soak.py [-n 1000000] [--connections 8] [--every 50000] [--retention-days D] [--keep]

Starts one ``engine run`` as bench/mllp_ingest.py does (config/channels.yaml, SQLite stores in a
temporary folder, in-process queue) and streams N messages (half ADT, half ORU, MRNs drawn from
N/4 patients, unique control ids) over ``--connections`` connections. Messages are generated
as they are sent, never held all at once. Each connection sends a message and waits for its
ACK before it sends the next.

A progress line every ``--every`` messages ACKed (default 5% of N), then, once all are ACKed,
every ``--every`` processed until all are in a final status:

ACKed / ACK/s       messages ACKed so far, and ACKed per second over the interval;
processed / e2e/s   messages in a final status (SENT, FILTERED or ERROR) in the message store,
                    and per second over the interval. Counted as max(id) minus the pending rows
                    (RECEIVED, TRANSFORMED, QUEUED; an index range), which stays cheap at a
                    million rows where a count of the final ones scans the whole index. It
                    assumes one row per message (no routing between channels, no deletion of the
                    newest rows), which holds for this config;
backlog             ACKed minus processed;
p99                 ACK latency p99 over the interval;
CPU ms/msg          engine CPU (/proc/<pid>/stat) over the interval per message, a message counting
                    half when ACKed and half when processed, so that it holds while the backlog
                    grows or drains;
sizes               messages.db and its WAL, clinical.db and pm.db (each with its WAL), in MB.

At the end: per decile of the run (by ACK order for ACKs, by processed count for end-to-end)
the ACK rate, the end-to-end rate and the ACK latency p50/p99, then the first 10% against the
last 10%, with the ratio (the target is last >= 90% of first). The end-to-end last decile
includes the drain after the last ACK, when processing no longer shares the CPU with intake.

``--retention-days D`` runs the engine on a temporary copy of config/channels.yaml with
``retention_days: D`` on every channel (an engine that does not know the key refuses to start,
and this says so). Every message is received now, so retention of days prunes nothing here:
the option shows that the engine runs with it.

Figures are printed, never asserted. A million messages take half an hour or more on two cores,
and about 2 GB of temporary disk (removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllp_ingest import ROOT, Engine, machine, make_message, send_stream

from engine.stores.message_store import PENDING

DECILES = 10


def stream(k: int, connections: int, n: int, seed: int) -> Iterator[bytes]:
    """Connection ``k``'s share of the N messages (every ``connections``-th), made as they are sent."""
    rnd = random.Random(f"{seed}-{k}")
    for i in range(k, n, connections):
        yield make_message(i, rnd, n // 4 + 1)


def config_with_retention(days: float, folder: Path) -> Path:
    """A copy of config/channels.yaml with ``retention_days`` on every channel, in ``folder``."""
    src = ROOT / "config" / "channels.yaml"
    data = yaml.safe_load(src.read_text())
    # The copy lives elsewhere: a relative mappings_dir would resolve against the wrong folder.
    mappings = Path(data.get("mappings_dir", "../mappings"))
    data["mappings_dir"] = str(mappings if mappings.is_absolute() else (src.parent / mappings).resolve())
    for channel in data["channels"]:
        channel["retention_days"] = int(days) if float(days).is_integer() else days
    out = folder / "channels.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def store_sizes(folder: Path) -> tuple[float, float, float, float]:
    """MB of messages.db, its WAL, clinical.db + WAL, pm.db + WAL."""

    def mb(*names: str) -> float:
        return sum((folder / f).stat().st_size for f in names if (folder / f).exists()) / 1e6

    return (
        mb("messages.db"),
        mb("messages.db-wal"),
        mb("clinical.db", "clinical.db-wal"),
        mb("pm.db", "pm.db-wal"),
    )


def pct(values, p: float) -> float:
    """The ``p`` quantile of ``values`` (seconds), in ms; 0 when empty."""
    values = sorted(values)
    return values[min(int(len(values) * p), len(values) - 1)] * 1000 if values else 0.0


def crossing(samples: list[tuple[float, int]], target: int) -> float:
    """When the processed count reached ``target``, interpolated between two polls."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if c1 >= target:
            return t1 if c1 == c0 else t0 + (t1 - t0) * (target - c0) / (c1 - c0)
    return samples[-1][0]


HEADER = (
    f"{'elapsed':>8} {'ACKed':>10} {'ACK/s':>7} {'processed':>10} {'e2e/s':>7} {'backlog':>8} {'p99 ms':>7} "
    f"{'CPU ms/msg':>10}   {'messages.db':>11} {'wal':>6} {'clinical':>8} {'pm':>6}"
)


async def soak(eng: Engine, n: int, connections: int, every: int, seed: int, stall_seconds: float) -> dict:
    latencies = array("d", bytes(8 * n))
    bounds = [n * k // DECILES for k in range(DECILES + 1)]
    ack_at: list[float] = [0.0] * (DECILES + 1)
    acked = bad = 0
    next_bound = 1

    def on_ack(seconds: float, ok: bool) -> None:
        nonlocal acked, bad, next_bound
        latencies[acked] = seconds
        acked += 1
        bad += not ok
        while next_bound <= DECILES and acked >= bounds[next_bound]:
            ack_at[next_bound] = time.perf_counter()
            next_bound += 1

    db = sqlite3.connect(f"file:{eng.dir / 'messages.db'}?mode=ro", uri=True, check_same_thread=False)
    pending = ",".join(f"'{s}'" for s in PENDING)
    query = (
        f"select (select coalesce(max(id), 0) from messages),"
        f" (select count(*) from messages where status in ({pending}))"
    )

    def processed_now() -> int:
        top, waiting = db.execute(query).fetchone()
        return top - waiting

    t0 = ack_at[0] = time.perf_counter()
    cpu0, client0 = eng.cpu_seconds(), time.process_time()
    senders = asyncio.gather(
        *(send_stream(eng.port_for, stream(k, connections, n, seed), on_ack) for k in range(connections))
    )
    samples = [(t0, 0)]
    last = dict(t=t0, acked=0, processed=0, cpu=cpu0)
    next_mark, draining, stalled_since = every, False, None
    poll, query_seconds = 0.25, 0.0
    print(HEADER, flush=True)
    while True:
        await asyncio.sleep(poll)
        q0 = time.perf_counter()
        processed = await asyncio.to_thread(processed_now)
        spent = time.perf_counter() - q0
        query_seconds += spent
        poll = max(0.25, 20 * spent)  # the poll costs at most ~5% of a core, however large the backlog
        now = time.perf_counter()
        samples.append((now, processed))
        all_acked = senders.done() and not draining
        if senders.done():
            senders.result()  # a connection that failed ends the soak with its exception
            draining = True
        key = processed if draining else acked
        finished = draining and processed >= n
        if key >= next_mark or finished or all_acked:
            next_mark = (key // every + 1) * every
            cpu = eng.cpu_seconds()
            dt = now - last["t"]
            half_messages = (acked - last["acked"] + processed - last["processed"]) / 2
            sizes = store_sizes(eng.dir)
            print(
                f"{now - t0:7.0f}s {acked:>10,} {(acked - last['acked']) / dt:7.0f} {processed:>10,} "
                f"{(processed - last['processed']) / dt:7.0f} {max(acked - processed, 0):>8,} "
                f"{pct(latencies[last['acked'] : acked], 0.99):7.1f} "
                f"{(cpu - last['cpu']) * 1000 / half_messages if half_messages else 0:10.2f}   "
                f"{sizes[0]:11.1f} {sizes[1]:6.1f} {sizes[2]:8.1f} {sizes[3]:6.1f}",
                flush=True,
            )
            last = dict(t=now, acked=acked, processed=processed, cpu=cpu)
        if finished:
            break
        if draining:
            if samples[-2][1] != processed:
                stalled_since = None
            elif stalled_since is None:
                stalled_since = now
            elif now - stalled_since > stall_seconds:
                print(f"!! no progress for {stall_seconds:.0f} s: {n - processed:,} message(s) not in a final status")
                break
    t_end = time.perf_counter()
    errors = db.execute("select count(*) from messages where status = 'ERROR'").fetchone()[0]
    db.close()
    return dict(
        seconds=t_end - t0,
        ack_seconds=ack_at[-1] - t0 if next_bound > DECILES else t_end - t0,
        acked=acked,
        processed=processed,
        bad=bad,
        errors=errors,
        cpu_ms=(eng.cpu_seconds() - cpu0) * 1000 / n,
        client_cpu_ms=(time.process_time() - client0) * 1000 / n,
        poll_ms=query_seconds * 1000 / max(len(samples) - 1, 1),
        polls=len(samples) - 1,
        latencies=latencies,
        bounds=bounds,
        ack_at=ack_at,
        e2e_at=[t0] + [crossing(samples, b) for b in bounds[1:]],
        sizes=store_sizes(eng.dir),
    )


def report(r: dict, n: int) -> None:
    bounds, ack_at, e2e_at, lat = r["bounds"], r["ack_at"], r["e2e_at"], r["latencies"]
    print(
        f"\n{n:,} messages: ACKed in {r['ack_seconds']:.0f} s ({r['acked'] / r['ack_seconds']:.0f} msg/s, "
        f"{r['bad']} not AA), all processed in {r['seconds']:.0f} s "
        f"({r['processed'] / r['seconds']:.0f} msg/s end-to-end, "
        f"{r['errors']} ERROR)"
    )
    print(
        f"engine CPU {r['cpu_ms']:.2f} ms/msg, "
        f"load client (generation, sending, polling) {r['client_cpu_ms']:.2f} ms/msg; "
        f"{r['polls']} polls of the processed count, {r['poll_ms']:.2f} ms each on average"
    )
    s = r["sizes"]
    print(f"stores at the end: messages.db {s[0]:.1f} MB (WAL {s[1]:.1f} MB), clinical {s[2]:.1f} MB, pm {s[3]:.1f} MB")
    print(f"\n{'decile':>7} {'messages':>19} {'ACK msg/s':>10} {'e2e msg/s':>10} {'ACK p50 ms':>11} {'ACK p99 ms':>11}")
    rates = []
    for k in range(1, DECILES + 1):
        size = bounds[k] - bounds[k - 1]
        ack = size / (ack_at[k] - ack_at[k - 1]) if ack_at[k] > ack_at[k - 1] else 0.0
        e2e = size / (e2e_at[k] - e2e_at[k - 1]) if e2e_at[k] > e2e_at[k - 1] else 0.0
        rates.append((ack, e2e))
        part = lat[bounds[k - 1] : bounds[k]]
        print(
            f"{k:>7} {bounds[k - 1] + 1:>9,}-{bounds[k]:<9,} {ack:10.0f} {e2e:10.0f} {pct(part, 0.5):11.2f} "
            f"{pct(part, 0.99):11.2f}"
        )
    (ack_first, e2e_first), (ack_last, e2e_last) = rates[0], rates[-1]
    print("\nlast 10% against first 10% (target: at least 90%):")
    for name, first, final in (("ACK", ack_first, ack_last), ("end-to-end", e2e_first, e2e_last)):
        ratio = 100 * final / first if first else 0.0
        print(f"  {name:11} {first:8.0f} -> {final:8.0f} msg/s   {ratio:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages (default 1,000,000)")
    ap.add_argument("--connections", type=int, default=8, help="default 8")
    ap.add_argument("--every", type=int, default=None, help="progress every this many messages (default 5%% of n)")
    ap.add_argument("--retention-days", type=float, default=None, help="retention_days on every channel")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stall-seconds", type=float, default=300, help="give up after this long without progress")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores")
    args = ap.parse_args()
    n, every = args.n, args.every or max(args.n // 20, 1)
    command = shlex.join(["python", "bench/soak.py", *sys.argv[1:]])
    print(f"{command}\n{time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}, {machine()}")
    print(
        f"{n:,} messages (half ADT, half ORU) from {n // 4 + 1:,} patients over {args.connections} connection(s), "
        f"SQLite stores, in-process queue"
        + (f", retention_days {args.retention_days:g}" if args.retention_days is not None else "")
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        config = None
        if args.retention_days is not None:
            config = config_with_retention(args.retention_days, folder)
        try:
            eng = Engine(config=config)
        except SystemExit as exc:
            if config is None:
                raise
            raise SystemExit(f"engine run refused the config with retention_days ({config}):\n{exc}") from None
        print(f"stores in {eng.dir}\n")
        try:
            r = asyncio.run(soak(eng, n, args.connections, every, args.seed, args.stall_seconds))
        finally:
            eng.stop(keep=True)
            logged = eng.log_lines()
            if not args.keep:
                for f in eng.dir.iterdir():
                    if f.suffix != ".log":
                        f.unlink()
                if not logged:
                    shutil.rmtree(eng.dir, ignore_errors=True)
            if logged:
                print(f"!! the engine logged {logged} line(s): {eng.dir}")
        report(r, n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
