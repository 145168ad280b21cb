"""An 835 with 10,000 claim payments, validated, acknowledged and posted end to end.

Generates a balanced 835 (``tests/fixtures/x12/_generate.py``: 3 service lines and 2
adjustments per line for each claim), starts the embedded engine in this process on a config
holding the sample ``remittance-835`` channel (SQLite in a temporary folder), drops the file in
its inbox and follows it: taken from the inbox (read, validated by pyx12, committed), the 999 in
the outbox, every claim payment posted in the PM store. Prints the wall times, claims posted per
second, the CPU per claim (this process's CPU clock: the engine runs here), and, in the same run,
pyx12's bare validation of the same file (its reader and map walker alone) as the anchor.

    python bench/remit_835.py [--claims 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from x12bench import channel_config, engine_folder, generator  # noqa: E402


def _children_cpu() -> float:
    """CPU seconds of this process's live children (the validation workers), from /proc."""
    total, me, tick = 0.0, str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def bar(label: str, done: bool, t: float) -> None:
    print(f"  [{'#' * 20 if done else '.' * 20}] {label:<34} {t:7.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", type=int, default=10_000)
    args = ap.parse_args()
    folder = engine_folder("bench-835-")

    gen = generator()
    t = time.perf_counter()
    text = gen.many_claims_835(args.claims)
    data = text.encode()
    segments = text.count("~")
    print(
        f"835: {args.claims:,} claim payments, {segments:,} segments, {len(data) / 1e6:.1f} MB "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )

    from sqlalchemy import create_engine
    from sqlalchemy import text as sql

    from engine.config import load_config

    # the anchor: pyx12's own checking of the same file in one piece on one core, nothing else
    from engine.formats import x12_envelope, x12_parallel, x12_validate
    from engine.runtime import Runtime

    ic = x12_envelope.read_interchanges(data)[0][0]
    threshold, x12_parallel.THRESHOLD = x12_parallel.THRESHOLD, 10**12
    c0, w0 = time.process_time(), time.perf_counter()
    results = x12_validate.validate(ic)
    bare_cpu, bare_wall = time.process_time() - c0, time.perf_counter() - w0
    x12_parallel.THRESHOLD = threshold
    assert [g.status for g in results] == ["A"], "the generated 835 must validate clean"

    rt = Runtime(load_config(channel_config(folder, "remittance-835")))
    rt.prepare_schemas()
    rt.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(rt.start_sources(), loop).result(30)
    inbox = folder / "x12/remittance/inbox"
    pm = create_engine(f"sqlite:///{folder}/pm.db")
    print("posting:")
    cpu0, wall0 = time.process_time() + _children_cpu(), time.perf_counter()
    (inbox / ".remit.835.part").write_bytes(data)
    os.replace(inbox / ".remit.835.part", inbox / "remit.835")
    taken = acked = posted = None
    while posted is None:
        now = time.perf_counter() - wall0
        if taken is None and (folder / "x12/remittance/processed/remit.835").exists():
            taken = now
            bar("read, validated, committed", True, now)
        if acked is None and list((folder / "x12/remittance/outbox").glob("remit.*.999")):
            acked = now
            bar("999 written", True, now)
        if taken is not None:
            with pm.connect() as conn:
                n = conn.execute(sql("SELECT count(*) FROM claim_payment")).scalar_one()
            if n >= args.claims:
                posted = now
                bar(f"{n:,} claim payments posted", True, now)
        time.sleep(0.05)
    cpu = time.process_time() + _children_cpu() - cpu0
    with pm.connect() as conn:
        rows = {
            t: conn.execute(sql(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("service_payment", "adjustment")
        }
    print()
    print(f"validated, acknowledged and posted in {posted:.1f} s (target: under 20 s)")
    print(f"  999 written after {acked:.1f} s; posting {args.claims / (posted - (taken or 0)):,.0f} claims/s after it")
    print(
        f"  rows: {args.claims:,} claim payments, {rows['service_payment']:,} lines, {rows['adjustment']:,} adjustments"
    )
    print(
        f"  CPU {cpu:.1f} s in all, {cpu / args.claims * 1000:.2f} ms per claim "
        f"(this process, the whole engine, and its {x12_parallel.workers()} validation workers)"
    )
    print(
        f"anchor: pyx12's bare validation of the same file, whole on one core: {bare_wall:.1f} s wall, "
        f"{bare_cpu:.1f} s CPU ({segments / bare_wall:,.0f} segments/s)"
    )
    asyncio.run_coroutine_threadsafe(rt.stop_sources(), loop).result(30)
    rt.stop()


if __name__ == "__main__":
    main()
