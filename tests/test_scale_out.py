"""Scale-out against the machine's real Redis and PostgreSQL, with real processes killed and
services restarted mid-stream. Each test proves: every ACKed message is applied exactly once
in effect, and updates for one patient were applied in the order they were received.

Skipped with a reason where Redis or PostgreSQL is absent; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, EngineProcess, MllpConnection, services_required

PG_ADMIN = os.environ.get("ENGINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ENGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]

pytestmark = pytest.mark.services


def _services_or_skip() -> None:
    problems = []
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        problems.append(f"PostgreSQL at {PG_ADMIN}: {type(exc).__name__}")
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis at {REDIS_URL}: {type(exc).__name__}")
    if problems:
        reason = "needs real services: " + "; ".join(problems)
        if services_required():
            pytest.fail(reason + " (CI=true: a missing service is a failure)")
        pytest.skip(reason)


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    _services_or_skip()
    import psycopg

    name = f"engine_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    _wait_for_postgres()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _wait_for_postgres(timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psycopg.connect(PG_ADMIN, connect_timeout=2).close()
            return
        except Exception:
            time.sleep(0.5)


class Cluster:
    """``engine run`` (listeners) and N ``engine worker`` processes on Redis + PostgreSQL."""

    def __init__(self, tmp: Path, db_url: str, workers: int = 2):
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        self.env = {
            "ENGINE_MESSAGE_STORE_URL": db_url,
            "ENGINE_CLINICAL_STORE_URL": db_url,
            "ENGINE_PM_STORE_URL": db_url,
            "ENGINE_QUEUE_URL": REDIS_URL,
            "ENGINE_CLAIM_SECONDS": "3",
            "ENGINE_STUCK_AFTER_SECONDS": "3",
        }
        self.tmp = tmp
        self.listener = EngineProcess(tmp, env=self.env)
        self.listener.env.update(self.env)
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "db", "upgrade"],
            cwd=ROOT,
            env=self.listener.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        self.listener.start()
        self.workers = [self.start_worker() for _ in range(workers)]
        self.db_url = db_url

    def start_worker(self) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{time.monotonic_ns()}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker", "--threads", "2"],
            cwd=ROOT,
            env=self.listener.env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdout.readline().startswith(b"worker ")
        return proc

    def stop(self) -> None:
        self.listener.stop()
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()

    def query(self, sql: str, **params) -> list[dict]:
        from sqlalchemy import create_engine, text

        eng = create_engine(self.db_url)
        try:
            with eng.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(sql), params)]
        finally:
            eng.dispose()


def adt_update(seq: int, patient: int) -> bytes:
    """An A08 for patient ``patient`` carrying ``seq`` in its address and its own visit number."""
    return (
        f"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^A08^ADT_A01|F{seq:06d}|P|2.5.1\r"
        f"EVN|A08|20260101120000\r"
        f"PID|1||P{patient:04d}^^^NORTH^MR||Tester^Pat{patient}||19800101|F|||SEQ {seq:06d}^^Town^OR^97000\r"
        f"PV1|1|O|CLINIC||||||||||||||||V{seq:06d}^^^NORTH^VN\r"
    ).encode()


class Sender:
    """Sends messages in order over ``connections`` connections (each patient always on the same
    one, as a real feed keeps one patient's messages on one connection) and resends on AE or a
    lost connection, as real senders do. Records which messages were ACKed AA."""

    def __init__(self, port: int, messages: list[tuple[int, int, bytes]], connections: int = 4):
        self.port = port
        self.acked: dict[int, int] = {}  # seq -> patient
        self.nacks = 0
        self.lanes = [[m for m in messages if m[1] % connections == k] for k in range(connections)]
        self.sent = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._lane, args=(lane,)) for lane in self.lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)

    def _lane(self, lane) -> None:
        conn = None
        for seq, patient, msg in lane:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    conn = conn or MllpConnection(self.port, timeout=30)
                    ack = conn.send(msg)
                except OSError:
                    conn = None
                    time.sleep(0.2)
                    continue
                if b"MSA|AA|" in ack:
                    with self.lock:
                        self.acked[seq] = patient
                        self.sent += 1
                    break
                with self.lock:
                    self.nacks += 1
                time.sleep(0.2)  # AE: the engine could not store it; send again shortly
        if conn:
            conn.close()


def messages(n: int, patients: int = 40) -> list[tuple[int, int, bytes]]:
    return [(seq, seq % patients, adt_update(seq, seq % patients)) for seq in range(1, n + 1)]


def assert_applied_exactly_once_in_order(cluster: Cluster, sender: Sender, timeout: float = 120) -> None:
    expected = len(sender.acked)
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = cluster.query("select count(*) as n from messages where channel = 'adt' and status = 'SENT'")[0]["n"]
        if done >= expected:
            break
        time.sleep(0.5)
    stuck = cluster.query("select status, count(*) as n from messages group by status")
    assert done >= expected, f"only {done} of {expected} ACKed messages processed: {stuck}"
    # exactly once in effect: every ACKed message's own encounter, no more, no fewer
    visits = {r["visit_number"] for r in cluster.query("select visit_number from encounter")}
    assert visits == {f"V{seq:06d}" for seq in sender.acked}
    errors = cluster.query("select count(*) as n from messages where status = 'ERROR'")[0]["n"]
    assert errors == 0
    # per-patient order: the last update received is the one the patient shows
    last: dict[int, int] = {}
    for seq, patient in sender.acked.items():
        last[patient] = max(last.get(patient, 0), seq)
    rows = {r["mrn"]: r for r in cluster.query("select mrn, address_line1 from patient")}
    for patient, seq in last.items():
        assert rows[f"P{patient:04d}"]["address_line1"] == f"SEQ {seq:06d}", (patient, seq)


def run_with_fault(cluster: Cluster, n: int, fault, at: float = 0.3) -> Sender:
    sender = Sender(cluster.listener.adt_port, messages(n))
    t = threading.Thread(target=sender.run)
    t.start()
    while sender.sent < n * at and t.is_alive():
        time.sleep(0.05)
    fault()
    t.join(600)
    assert len(sender.acked) == n, f"{n - len(sender.acked)} message(s) never ACKed"
    return sender


def test_a_worker_killed_mid_stream_loses_nothing_and_order_holds(tmp_path, pg_database):
    cluster = Cluster(tmp_path, pg_database, workers=2)
    try:

        def kill_one():
            cluster.workers[0].send_signal(signal.SIGKILL)
            cluster.workers[0].wait()

        sender = run_with_fault(cluster, 2000, kill_one)
        assert_applied_exactly_once_in_order(cluster, sender)
    finally:
        cluster.stop()


def test_a_redis_restart_mid_stream_loses_nothing_and_order_holds(tmp_path, pg_database):
    cluster = Cluster(tmp_path, pg_database, workers=2)
    try:

        def restart_redis():
            import redis

            subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True)
            time.sleep(2)  # listeners keep ACKing into PostgreSQL meanwhile
            os.makedirs("/var/lib/redis", exist_ok=True)
            os.makedirs("/var/log/redis", exist_ok=True)
            subprocess.run(REDIS_START, check=True, capture_output=True)
            for _ in range(50):
                try:
                    redis.Redis.from_url(REDIS_URL).ping()
                    return
                except Exception:
                    time.sleep(0.1)

        sender = run_with_fault(cluster, 2000, restart_redis)
        assert_applied_exactly_once_in_order(cluster, sender)
    finally:
        cluster.stop()


def test_postgresql_stopped_mid_stream_gets_ae_not_aa_and_loses_nothing(tmp_path, pg_database):
    version = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else None
    if version is None:
        if services_required():
            pytest.fail("cannot stop PostgreSQL here: no /etc/postgresql cluster")
        pytest.skip("cannot stop PostgreSQL here: no /etc/postgresql cluster")
    cluster = Cluster(tmp_path, pg_database, workers=2)
    try:

        def stop_postgres():
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast"],
                check=True,
                capture_output=True,
            )
            time.sleep(4)
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                check=True,
                capture_output=True,
            )
            _wait_for_postgres()

        sender = run_with_fault(cluster, 1500, stop_postgres)
        assert sender.nacks > 0  # the outage was answered AE, never AA
        assert_applied_exactly_once_in_order(cluster, sender)
    finally:
        _wait_for_postgres()
        cluster.stop()


def test_engine_status_shows_queue_and_workers(tmp_path, pg_database):
    cluster = Cluster(tmp_path, pg_database, workers=1)
    try:
        sender = Sender(cluster.listener.adt_port, messages(50), connections=1)
        sender.run()
        time.sleep(2.5)
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "status"],
            cwd=ROOT,
            env=cluster.listener.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "queue: redis" in out.stdout
        assert "worker" in out.stdout and "listener" in out.stdout
        assert "adt" in out.stdout
    finally:
        cluster.stop()


def test_sigterm_lets_a_worker_finish_its_batch_and_exit_cleanly(tmp_path, pg_database):
    cluster = Cluster(tmp_path, pg_database, workers=1)
    try:

        def stop_and_replace():
            w = cluster.workers[0]
            w.send_signal(signal.SIGTERM)
            assert w.wait(30) == 0
            cluster.workers.append(cluster.start_worker())

        sender = run_with_fault(cluster, 1000, stop_and_replace, at=0.5)
        assert_applied_exactly_once_in_order(cluster, sender)
    finally:
        cluster.stop()
