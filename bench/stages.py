"""Where processing's CPU goes: the stages of one batch, timed in process.

Builds the embedded runtime on the sample config (SQLite in a temporary folder), commits the
same ADT/ORU messages as ``mllp_ingest.py`` and processes them in batches of ``--batch``,
timing with the process's CPU clock: receive-side decoding, the commit, and within processing
the claim (with load), parse + mapping + unmapped report, both stores' writes and the statuses.
No sockets: this is the processing half alone; ``mllp_ingest.py`` measures the whole engine.

    python bench/stages.py [-n 2000] [--batch 1 20 200]
    python bench/stages.py -n 200 --batch 20 --instructions   # counted under valgrind instead

``--instructions`` runs the same under ``valgrind --tool=callgrind`` for ``-n`` messages and for
none, and prints the difference per message: the receive side's decoding and commit and the
whole processing, in instructions, a figure this shared machine's load does not move (timings
of the same code differ by up to 30% from one run to the next). One batch size; a few minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllp_ingest import make_messages  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 20, 200])
    ap.add_argument("--instructions", action="store_true", help="count instructions under valgrind (one batch size)")
    args = ap.parse_args()
    if args.instructions:
        from mapping_instructions import instructions

        size = args.batch[0]
        base, total = (instructions([__file__, "-n", str(n), "--batch", str(size)]) for n in (0, args.n))
        print(f"{args.n} messages in batches of {size} (half ADT, half ORU), receive and processing:")
        print(f"  {(total - base) / args.n / 1e6:.3f} million instructions per message")
        return
    folder = tempfile.mkdtemp(prefix="bench-stages-")
    for store in ("MESSAGE", "CLINICAL", "PM"):
        os.environ[f"ENGINE_{store}_STORE_URL"] = f"sqlite:///{folder}/{store.lower()}.db"

    from engine.channels import processor
    from engine.channels.pipeline import inbound, key_of
    from engine.config import load_config
    from engine.formats import hl7
    from engine.runtime import Runtime
    from engine.stores import message_store, records_store

    spent: dict[str, float] = {}

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - t

        setattr(owner, name, wrapper)

    timed(message_store.MessageStore, "claim", "claim and load")
    timed(processor.Processor, "_prepare", "parse, map, unmapped report")
    timed(records_store.RecordStore, "apply_batch", "both stores' writes")
    timed(message_store.MessageStore, "record", "statuses and hand-on")

    cfg = load_config(ROOT / "config" / "channels.yaml")
    rt = Runtime(cfg)
    rt.prepare_schemas()
    channels = {c.name: c for c in cfg.channels}
    python = sys.version.split()[0]
    print(f"{args.n} messages per batch size (half ADT, half ORU), {os.cpu_count()} CPUs, Python {python}")
    for size in args.batch:
        spent.clear()
        messages = [m.replace(b"|B0", f"|S{size}X".encode()) for m in make_messages(max(args.n, 2))[: args.n]]
        if not messages:  # the start-up alone (--instructions takes it away)
            continue
        t = time.process_time()
        items = []
        for raw in messages:
            ch = channels["lab-results" if b"|ORU^" in raw[:200] else "adt"]
            header = hl7.read_header(raw)
            msg = hl7.Message(hl7.decode(raw, "utf-8", charset=header.charset))
            key = key_of(msg, ch.ordering)
            items.append(inbound(ch.name, raw, header, ordering_key=key, duplicate_window=timedelta(hours=24)))
        decode = time.process_time() - t
        t = time.process_time()
        stored = []
        for k in range(0, len(items), size):
            stored += rt.message_store.insert_received(items[k : k + size])
        commit = time.process_time() - t
        ids: dict[str, list[int]] = {}
        for item, s in zip(items, stored):
            ids.setdefault(item.channel, []).append(s.id)
        t = time.process_time()
        for channel, found in ids.items():
            for k in range(0, len(found), size):
                rt.processor.process(channel, found[k : k + size])
        total = time.process_time() - t
        per = 1000 / len(messages)
        print(f"\nbatches of {size}: processing {total * per:.3f} ms CPU per message")
        print(f"  {'receive: decode, header, ordering key':40} {decode * per:.3f}")
        print(f"  {'receive: commit':40} {commit * per:.3f}")
        for label, seconds in spent.items():
            print(f"  {label:40} {seconds * per:.3f}")


if __name__ == "__main__":
    main()
