"""A 100 MB 837P batch (one transaction set, one claim per subscriber) streamed through the engine.

Writes the batch piece by piece to a temporary folder (``tests/fixtures/x12/_generate.py``:
``write_professional_batch``), starts the embedded engine in this process on a config holding the
sample ``claims-837-in`` channel (SQLite in the same folder), drops the file in its inbox and
follows it: read in blocks, checked by pyx12 as read, cut into parts committed as processing keeps
up (engine/channels/file_source.py), every claim in the PM store. Prints the wall times, claims per
second, and this process's peak resident memory (VmHWM) before and after against the file's size.

    python bench/big_837.py [--megabytes 100]
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

BYTES_PER_SUBSCRIBER = 430  # the generator's subscriber loop with one claim of one line, about


def _vm() -> dict[str, float]:
    """This process's VmHWM (peak) and VmRSS, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024 / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megabytes", type=float, default=100)
    args = ap.parse_args()
    folder = engine_folder("bench-837-")

    gen = generator()
    subscribers = int(args.megabytes * 1e6 / BYTES_PER_SUBSCRIBER)
    t = time.perf_counter()
    source = folder / "batch.837.src"
    size = gen.write_professional_batch(source, subscribers, dependents_every=10)
    took = time.perf_counter() - t
    print(f"837P: {subscribers:,} claims in one transaction set, {size / 1e6:.1f} MB (written in {took:.1f} s)")

    from sqlalchemy import create_engine
    from sqlalchemy import text as sql

    from engine.config import load_config
    from engine.runtime import Runtime

    rt = Runtime(load_config(channel_config(folder, "claims-837-in")))
    rt.prepare_schemas()
    rt.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(rt.start_sources(), loop).result(30)
    inbox = folder / "x12/claims-in/inbox"
    pm = create_engine(f"sqlite:///{folder}/pm.db")
    before = _vm()
    print(f"engine started: VmHWM {before['VmHWM']:.1f} MB")
    wall0 = time.perf_counter()
    os.replace(source, inbox / "batch.837")
    first = acked = posted = None
    n = 0
    while posted is None:
        now = time.perf_counter() - wall0
        if first is None or n < subscribers:
            with pm.connect() as conn:
                n = conn.execute(sql("SELECT count(*) FROM claim")).scalar_one()
        if first is None and n:
            first = now
            print(f"  first claims posted after {now:7.1f} s (read and checked by pyx12 by then)", flush=True)
        if acked is None and list((folder / "x12/claims-in/outbox").glob("batch.*.999")):
            acked = now
            print(f"  999 written after        {now:7.1f} s", flush=True)
        if n >= subscribers and acked is not None:
            posted = now
        time.sleep(0.25)
    after = _vm()
    print()
    grew, mb = after["VmHWM"] - before["VmHWM"], size / 1e6
    overall, steady = subscribers / posted, subscribers / max(posted - (first or 0), 1e-3)
    print(f"{subscribers:,} claims posted in {posted:.1f} s: {overall:,.0f} claims/s overall, {steady:,.0f} once begun")
    print(f"peak RSS (VmHWM) {before['VmHWM']:.1f} -> {after['VmHWM']:.1f} MB: +{grew:.1f} MB for a {mb:.1f} MB file")
    asyncio.run_coroutine_threadsafe(rt.stop_sources(), loop).result(30)
    rt.stop()


if __name__ == "__main__":
    main()
