"""``queue.url: process://``: ``engine run`` processes in a worker process of its own, fed over a
pipe, on the embedded SQLite stores and without a broker (engine/queue.py, ProcessQueue).

The ``adt`` channel maps into the clinical and PM stores and forwards every message over MLLP
to a test listener (Downstream). Proved for every message the engine ACKed AA: applied once in
effect (its own encounter and visit rows, written by that message), the patient's last update
shows, and the downstream got it exactly once and per patient in order; with the worker killed
mid-stream, or the whole engine killed and started again, the downstream gets at least once in
order, a repeat only of the one message in flight. And no worker outlives its engine, even one
killed by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import EngineProcess, Sender, adt_distributed_config, adt_updates
from downstream import Downstream

FAST = {"ENGINE_QUEUE_URL": "process://", "ENGINE_CLAIM_SECONDS": "3", "ENGINE_STUCK_AFTER_SECONDS": "3"}


def start(tmp_path: Path, downstream, **env: str) -> EngineProcess:
    config = adt_distributed_config(tmp_path, downstream.port)
    return EngineProcess(tmp_path, config=config, env={**FAST, **env}).start()


def workers_of(eng: EngineProcess) -> list[int]:
    """The engine's live child processes that are its process:// worker (Linux /proc)."""
    pid = eng.proc.pid
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return [c for c in children if b"--from-parent" in Path(f"/proc/{c}/cmdline").read_bytes()]


def wait_worker(eng: EngineProcess, other_than: int | None = None, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [w for w in workers_of(eng) if w != other_than]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no worker process")


def sent(eng: EngineProcess) -> int:
    return eng.query("messages", "select count(*) as n from messages where status = 'SENT'")[0]["n"]


def claimed(eng: EngineProcess) -> int:
    return eng.query("messages", "select count(*) as n from messages where claim_until is not null")[0]["n"]


def settled(eng: EngineProcess, done: int, timeout: float = 60) -> dict[str, int]:
    """Wait until nothing is pending and ``done`` messages are final; the count per status."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = eng.query("messages", "select status, count(*) as n from messages group by status")
        counts = {r["status"]: r["n"] for r in rows}
        if sum(counts.values()) >= done and set(counts) <= {"SENT", "FILTERED", "ERROR"}:
            return counts
        time.sleep(0.2)
    raise AssertionError(f"not settled in {timeout} s: {counts}")


def assert_applied_once(eng: EngineProcess, sender: Sender, timeout: float = 60) -> None:
    acked = [cid for ids in sender.acked.values() for cid in ids]
    counts = settled(eng, len(acked), timeout)
    assert counts == {"SENT": len(acked)}, counts
    control = {r["id"]: r["control_id"] for r in eng.query("messages", "select id, control_id from messages")}
    for store, table in (("clinical", "encounter"), ("pm", "visit")):  # one row per message, by that message
        rows = eng.query(store, f"select visit_number, last_message_id from {table}")
        assert len(rows) == len(acked), (table, len(rows), len(acked))
        assert {r["visit_number"]: control[r["last_message_id"]] for r in rows} == {"V" + c[1:]: c for c in acked}
    last = {key: ids[-1] for key, ids in sender.acked.items()}
    for store, table in (("clinical", "patient"), ("pm", "registration")):  # the last update shows
        rows = eng.query(store, f"select mrn, last_message_id from {table}")
        assert {r["mrn"]: control[r["last_message_id"]] for r in rows} == last, table


def test_a_worker_process_applies_every_message_once_and_in_order(tmp_path, downstream):
    eng = start(tmp_path, downstream)
    try:
        worker = wait_worker(eng)
        assert worker != eng.proc.pid
        sender = Sender(eng.adt_port, adt_updates(400, 20)).run()
        assert sender.sent == 400
        assert_applied_once(eng, sender)
        downstream.wait_for([c for ids in sender.acked.values() for c in ids])
        downstream.assert_exactly_once_in_order(sender.acked)
        assert workers_of(eng) == [worker]  # the same worker did it all
        status = eng.cli("status", "--config", str(eng.config), check=True).stdout
        assert "queue: engine run's own worker process (process://)" in status
        roles = [line.split()[1] for line in status.splitlines() if line.startswith("  ") and " seen " in line]
        assert sorted(roles) == ["listener", "worker"], status  # both beat: the operator sees the worker
    finally:
        eng.stop()


def test_a_killed_worker_is_replaced_and_loses_nothing(tmp_path):
    # a downstream that takes 5 ms per ACK: the worker is killed holding claims on a batch.
    # Claims that hold a minute: the new worker takes the dead one's messages over at once (it
    # is the engine's only worker), not when their claims run out.
    with Downstream(ack_delay_seconds=0.005) as downstream:
        eng = start(tmp_path, downstream, ENGINE_CLAIM_SECONDS="60")
        try:
            killed_worker_is_replaced(tmp_path, eng, downstream)
        finally:
            eng.stop()


def killed_worker_is_replaced(tmp_path: Path, eng: EngineProcess, downstream: Downstream) -> None:
    first = wait_worker(eng)
    n = 600
    sender = Sender(eng.adt_port, adt_updates(n, 30)).start()
    while not (sent(eng) and claimed(eng)):  # mid-batch: its claims held, some of it delivered
        time.sleep(0.01)
    os.kill(first, signal.SIGKILL)
    second = wait_worker(eng, other_than=first)
    sender.join(300)
    sender.stop()
    assert sender.sent == n
    assert_applied_once(eng, sender, timeout=30)
    downstream.wait_for([c for ids in sender.acked.values() for c in ids])
    # a delivery done but not yet recorded when the worker died goes again (one at a time)
    downstream.assert_at_least_once_in_order(sender.acked, max_repeats=1)
    assert workers_of(eng) == [second]
    assert "exited" in (tmp_path / "engine.log").read_text()  # the operator is told


def test_no_worker_outlives_its_engine(tmp_path, downstream):
    eng = start(tmp_path, downstream)
    worker = wait_worker(eng)
    eng.stop(signal.SIGKILL)  # no chance to close the pipe itself: the kernel does
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.05)
    state = Path(f"/proc/{worker}/stat").read_text().split()[2] if Path(f"/proc/{worker}").exists() else "gone"
    assert state in ("gone", "Z"), f"worker {worker} still running ({state}) after its engine died"


def test_a_process_queue_worker_is_started_by_engine_run_only(tmp_path, downstream):
    eng = EngineProcess(tmp_path, config=adt_distributed_config(tmp_path, downstream.port), env=FAST)
    out = eng.cli("worker", "--config", str(eng.config))
    assert out.returncode == 2
    assert "engine run` starts its own worker process" in out.stderr
    eng.env["ENGINE_QUEUE_URL"] = "memory://"
    out = eng.cli("worker", "--config", str(eng.config))
    assert out.returncode == 2 and "in-process (memory://)" in out.stderr


def test_a_worker_skips_an_unreadable_line_and_goes_on(tmp_path, downstream):
    """What engine run writes is the only input, but a line that is not [channel, [ids]] must
    not stop the worker: it is logged (no content) and skipped."""
    import subprocess
    import sys

    from conftest import ROOT

    eng = EngineProcess(tmp_path, config=adt_distributed_config(tmp_path, downstream.port), env=FAST)
    assert eng.cli("db", "upgrade", "--config", str(eng.config)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "worker", "--from-parent", "--config", str(eng.config)],
        cwd=ROOT,
        env=eng.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().startswith(b"worker ")
        proc.stdin.write(b'not json\n["adt", ["x"]]\n["adt", [999]]\n')
        proc.stdin.close()  # the end of input: the worker finishes and exits
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert err.count("unreadable line from engine run skipped") == 2, err
        assert "not json" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_acked_messages_survive_a_killed_engine_and_are_applied_once_after_restart(tmp_path, downstream):
    """The engine SIGKILLed right after the last ACK: its worker finishes what it was handed and
    exits, the next engine's worker takes the rest; every ACKed message applied once, the
    patient's last update shows, the downstream got each in order (a repeat only of a delivery
    in flight)."""
    from conftest import MllpConnection, ack_fields, adt_update

    eng = start(tmp_path, downstream)
    orphan = wait_worker(eng)
    conn = MllpConnection(eng.adt_port)
    sent = [(f"F{seq:06d}", f"P{seq % 7:04d}", adt_update(seq, seq % 7)) for seq in range(1, 301)]
    for _cid, _key, msg in sent:
        assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    eng.stop(signal.SIGKILL)  # right after the last ACK: the worker is still mapping
    eng2 = start(tmp_path, downstream)  # the same folder: the same store files
    try:
        acked: dict[str, list[str]] = {}
        for cid, key, _msg in sent:
            acked.setdefault(key, []).append(cid)
        sender = Sender(eng2.adt_port, [])
        sender.acked = acked
        assert_applied_once(eng2, sender)
        assert not Path(f"/proc/{orphan}/cmdline").exists() or not Path(f"/proc/{orphan}/cmdline").read_bytes()
        downstream.wait_for([cid for cid, _k, _m in sent])
        downstream.assert_at_least_once_in_order(acked, max_repeats=1)
    finally:
        eng2.stop()


def test_after_processing_acks_come_from_the_worker_process(fresh_engine, tmp_path):
    """``ack_mode: after_processing``: the listener answers once its worker process recorded the
    outcome: AA with the patient already stored, AE naming what the mapping could not do."""
    from conftest import MllpConnection, ack_fields, adt_config, adt_update

    config = adt_config(tmp_path, ack_mode="after_processing")
    config.write_text(config.read_text() + 'queue: {url: "process://"}\n')
    eng = fresh_engine(config)
    wait_worker(eng)
    conn = MllpConnection(eng.adt_port, timeout=30)
    assert ack_fields(conn.send(adt_update(1, 7)))["MSA"][1] == "AA"
    assert eng.query("clinical", "select mrn from patient")[0]["mrn"] == "P0007"  # stored before the AA
    no_mrn = adt_update(2, 8).replace(b"P0008^^^NORTH^MR", b"")
    ack = ack_fields(conn.send(no_mrn))
    assert ack["MSA"][1] == "AE" and "mrn" in ack["MSA"][3].lower()
    conn.close()


def test_a_pause_holds_at_once_and_a_resume_hands_on_at_once_in_the_worker_process(tmp_path):
    """The console (in engine run) pauses and resumes; the worker process reads the channel's
    state from the store. Messages sent right after the pause are held; those handed on at the
    resume are processed then, though the worker read "paused" a moment before (not when the
    sweeper finds them stuck, minutes later)."""
    import httpx
    from conftest import SAMPLE_ADMIN_PASSWORD, MllpConnection, ack_fields, adt_update

    eng = EngineProcess(tmp_path, env={"ENGINE_QUEUE_URL": "process://"}).start()
    try:
        wait_worker(eng)
        admin = httpx.Client(base_url=eng.console_url, timeout=30, headers={"X-Requested-With": "engine-console"})
        assert admin.post("/api/login", json={"name": "admin", "password": SAMPLE_ADMIN_PASSWORD}).status_code == 200
        conn = MllpConnection(eng.adt_port)
        assert ack_fields(conn.send(adt_update(1, 1)))["MSA"][1] == "AA"  # the worker is up and processing
        eng.wait_for("messages", "select status from messages", lambda r: r and r[0]["status"] == "SENT", timeout=30)
        assert admin.post("/api/channels/adt/pause").json()["paused"] is True
        for seq in range(2, 5):  # at once: each handed to the worker, which finds the channel paused
            assert ack_fields(conn.send(adt_update(seq, 1)))["MSA"][1] == "AA"
        conn.close()
        time.sleep(0.5)
        held = eng.query("messages", "select status from messages where id > 1")
        assert [r["status"] for r in held] == ["RECEIVED"] * 3  # held, not taken
        # resumed well within a second of the worker's look at the state
        assert admin.post("/api/channels/adt/resume").json()["paused"] is False
        eng.wait_for(
            "messages",
            "select count(*) as n from messages where status = 'SENT'",
            lambda r: r[0]["n"] == 4,
            timeout=10,
        )
    finally:
        eng.stop()
