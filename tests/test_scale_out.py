"""Scale-out on private services: ``engine run`` and two ``engine worker --threads 4`` processes
on a PostgreSQL and a Redis of each test's own (tests/services.py), with a worker killed, Redis
restarted or PostgreSQL stopped while messages stream in. The ``adt`` channel maps into the
clinical and PM stores and forwards every message over MLLP to a test listener (Downstream).

Each fault test proves, for every message the engine ACKed AA:
- it is applied once in effect: its own encounter and visit rows, written by that message;
- per patient, the stores show the last update (patient and registration rows were last
  written by the patient's last message);
- the downstream received it exactly once and per patient in order; after a SIGKILL, at least
  once in order, repeats only of the messages in flight when the worker died.

Skipped with the reason where redis-server or PostgreSQL's programs are absent; under CI=true
that is a failure. The machine's own PostgreSQL and Redis are never touched.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest
from conftest import Cluster, Sender, adt_distributed_config, adt_updates
from downstream import Downstream

pytestmark = pytest.mark.services

WORKERS, THREADS = 2, 4


def stream_with_fault(cluster: Cluster, n: int, fault, at: float = 0.3, patients: int = 40) -> Sender:
    """Send ``n`` updates over ``patients`` patients; call ``fault()`` once ``at`` of them are ACKed."""
    sender = Sender(cluster.port, adt_updates(n, patients)).start()
    try:
        while sender.sent < n * at and sender.alive():
            time.sleep(0.02)
        fault()
        sender.join(300)
    finally:
        sender.stop()
    assert sender.sent == n, f"{n - sender.sent} message(s) never ACKed AA"
    return sender


def assert_applied_once_in_order(cluster: Cluster, sender: Sender) -> None:
    """Every ACKed message applied once in effect, and per patient the last update shows."""
    acked = [cid for ids in sender.acked.values() for cid in ids]
    counts = cluster.wait_settled(len(acked))
    assert counts.get("ERROR", 0) == 0, counts
    assert counts.get("SENT", 0) == len(acked), counts  # resends the engine kept are FILTERED duplicates
    for table in ("encounter", "visit"):  # one row per message, written by that message
        rows = cluster.query(
            f"select t.visit_number, m.control_id from {table} t left join messages m on m.id = t.last_message_id"
        )
        assert len(rows) == len(acked), (table, len(rows), len(acked))
        assert {r["visit_number"]: r["control_id"] for r in rows} == {"V" + cid[1:]: cid for cid in acked}, table
    last = {key: ids[-1] for key, ids in sender.acked.items()}
    for table in ("patient", "registration"):  # the patient's last update is the one that shows
        rows = cluster.query(
            f"select t.mrn, m.control_id from {table} t left join messages m on m.id = t.last_message_id"
        )
        assert {r["mrn"]: r["control_id"] for r in rows} == last, table


def start(cluster_factory, tmp_path, downstream: Downstream, workers: int = WORKERS, **kwargs) -> Cluster:
    return cluster_factory(adt_distributed_config(tmp_path, downstream.port), threads=THREADS, **kwargs).start(workers)


def test_a_worker_killed_mid_stream_loses_nothing_and_repeats_only_what_was_in_flight(tmp_path, downstream, cluster):
    c = start(cluster, tmp_path, downstream)
    sender = stream_with_fault(c, 800, lambda: c.kill_worker(0))
    assert_applied_once_in_order(c, sender)
    # a message whose ACK came back but whose status was not yet recorded goes again: the same
    # bytes with the same MSH-10, so the receiver's duplicate check drops it
    downstream.assert_at_least_once_in_order(sender.acked, max_repeats=THREADS * 1)


def test_a_redis_restart_mid_stream_loses_nothing_and_delivers_exactly_once_in_order(
    tmp_path, downstream, cluster, private_redis
):
    c = start(cluster, tmp_path, downstream)

    def restart_redis():
        private_redis.kill()  # everything queued in Redis is lost
        time.sleep(2)  # the listener keeps ACKing into PostgreSQL meanwhile
        private_redis.start()

    sender = stream_with_fault(c, 800, restart_redis)
    assert_applied_once_in_order(c, sender)
    downstream.assert_exactly_once_in_order(sender.acked)


def test_postgresql_stopped_mid_stream_answers_ae_never_aa_and_delivers_exactly_once_in_order(
    tmp_path, downstream, cluster, private_postgres
):
    # exactly once holds for an outage shorter than the claim: a worker that delivered while the
    # store was away records it when the store is back, before its claim could pass to another
    c = start(cluster, tmp_path, downstream, claim_seconds=15)

    def stop_postgres():
        private_postgres.stop("fast")
        time.sleep(3)
        private_postgres.start()

    sender = stream_with_fault(c, 800, stop_postgres)
    assert sender.nacks > 0  # the outage was answered AE (senders resend), never AA
    assert_applied_once_in_order(c, sender)
    downstream.assert_exactly_once_in_order(sender.acked)


def test_sigterm_lets_a_worker_finish_its_batch_and_exit_cleanly(tmp_path, downstream, cluster):
    c = start(cluster, tmp_path, downstream, workers=1)

    def stop_and_replace():
        c.workers[0].send_signal(signal.SIGTERM)
        assert c.workers[0].wait(30) == 0
        c.start_workers(1)

    sender = stream_with_fault(c, 600, stop_and_replace, at=0.5)
    assert_applied_once_in_order(c, sender)
    downstream.assert_exactly_once_in_order(sender.acked)


def test_engine_status_shows_the_queue_and_the_processes_alive(tmp_path, downstream, cluster):
    c = start(cluster, tmp_path, downstream, workers=1)
    sender = Sender(c.port, adt_updates(50, 5), connections=1).run()
    assert sender.sent == 50
    c.wait_settled(50)
    time.sleep(2.5)  # every process has written its heartbeat (each sweep, once a second)
    out = c.listener.cli("status", "--config", str(c.config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["adt", "0", "0", "0", "0", "50", "0", "0", "-"], out.stdout
    assert "queue: redis, 0 batch(es) waiting" in lines, out.stdout
    assert "processes alive: 2" in lines, out.stdout
    host = socket.gethostname()
    alive = {tuple(line.split()[:2]) for line in lines if line.startswith("  ") and " seen " in line}
    assert alive == {(f"{host}:{c.listener.proc.pid}", "listener"), (f"{host}:{c.workers[0].pid}", "worker")}


def test_engine_status_says_the_queue_is_unreachable_while_redis_is_down(tmp_path, downstream, cluster, private_redis):
    c = cluster(adt_distributed_config(tmp_path, downstream.port))
    private_redis.kill()
    out = c.listener.cli("status", "--config", str(c.config))
    assert out.returncode == 0, out.stderr
    assert "queue: redis UNREACHABLE (ConnectionError)" in out.stdout.splitlines(), out.stdout
