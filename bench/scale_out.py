"""Scale-out benchmark: end-to-end messages/s on Redis + PostgreSQL with 1, 2 and 4 workers,
beside the embedded default (SQLite, in-process queue) in the same run.

Each run starts a fresh engine (``engine run`` for the listeners plus N ``engine worker``
processes on a fresh PostgreSQL database and a redis-server of its own on a free port, never
the machine's), sends the same N ADT/ORU messages
over 8 connections, and times until every message is mapped into both stores.

    python bench/scale_out.py [-n 4000] [--workers 1 2 4] [--pg postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mllp_ingest import make_messages, run_once
from services import PrivateRedis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker process")
    ap.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin URL to create databases"
    )
    args = ap.parse_args()

    import psycopg

    messages = make_messages(args.n)
    print(f"{args.n} messages over {args.connections} connections, {os.cpu_count()} CPUs")
    r = run_once(messages, args.connections)
    print(f"\nembedded (SQLite, in-process queue):  end-to-end {r['e2e']:7.0f} msg/s   ACKed {r['acked']:7.0f} msg/s")
    base = None
    for n in args.workers:
        name = f"engine_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        queue = PrivateRedis().start()  # an empty queue each run, and the machine's Redis untouched
        url = f"postgresql+psycopg://{args.pg.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
        env = {
            "ENGINE_MESSAGE_STORE_URL": url,
            "ENGINE_CLINICAL_STORE_URL": url,
            "ENGINE_PM_STORE_URL": url,
            "ENGINE_QUEUE_URL": queue.url,
        }
        try:
            r = run_once(messages, args.connections, env=env, workers=n, threads=args.threads)
        finally:
            queue.close()
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        base = base or r["e2e"]
        print(
            f"redis + postgresql, {n} worker(s):    end-to-end {r['e2e']:7.0f} msg/s   ACKed {r['acked']:7.0f} msg/s"
            f"   ({r['e2e'] / base:.2f}x one worker, {r['errors']} ERROR)"
        )


if __name__ == "__main__":
    main()
