"""The receive path on PostgreSQL, where a refused value or a second listener process can
break what SQLite hides: one bad header must not fail the messages committed with it, and two
listeners must not both take a resend for an original.
"""

from __future__ import annotations

import threading

from conftest import ROOT, EngineProcess, MllpConnection, ack_fields, adt_distributed_config, adt_update, config_file
from downstream import CR, FS, VT


def frame(msg: bytes) -> bytes:
    return VT + msg + FS + CR


def test_one_header_the_store_refuses_does_not_fail_the_messages_committed_with_it(tmp_path, private_postgres):
    cfg = config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
  clinical: {{url: "${{ENGINE_CLINICAL_STORE_URL}}"}}
mappings_dir: {ROOT / "mappings"}
channels:
  - name: adt
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}"}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
""",
    )
    eng = EngineProcess(tmp_path, config=cfg, env={"ENGINE_MESSAGE_STORE_URL": private_postgres.url})
    out = eng.cli("db", "upgrade", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    eng.start()
    try:
        good = [adt_update(seq, seq) for seq in range(1, 21)]
        nul = adt_update(21, 21).replace(b"|F000021|", b"|F0\x0021|")  # PostgreSQL text cannot hold NUL
        long_charset = adt_update(22, 22).replace(b"|P|2.5.1\r", b"|P|2.5.1|||||" + b"X" * 60 + b"\r")
        batch = good[:10] + [nul] + good[10:] + [long_charset]
        conn = MllpConnection(eng.adt_port)
        conn.send_raw(b"".join(frame(m) for m in batch))  # one read: one group commit on the listener
        acks = [ack_fields(conn.read_frame()) for _ in batch]
        codes = {a["MSA"][2]: a["MSA"][1] for a in acks}
        assert all(codes[f"F{seq:06d}"] == "AA" for seq in range(1, 21)), codes
        assert codes["F0\x0021"] == "AR"  # refused for good, with its reason: the sender stops resending
        assert codes["F000022"] == "AA"  # the over-long MSH-18 no longer breaks the commit
        again = ack_fields(conn.send(nul))
        assert again["MSA"][1] == "AR"  # the resend gets the same clear answer, not AE forever
        conn.close()
        import sqlalchemy as sa

        pg = sa.create_engine(private_postgres.url)
        with pg.connect() as c:
            rows = c.execute(sa.text("select control_id, status, error from messages order by id")).mappings().all()
        pg.dispose()
        stored = {r["control_id"]: r for r in rows}
        assert {f"F{seq:06d}" for seq in range(1, 21)} <= set(stored)
        raw = [r for r in rows if r["control_id"] == ""]
        assert len(raw) == 2 and all(r["status"] == "ERROR" and "header" in r["error"] for r in raw)
        eng.wait_for(
            "clinical", "select count(*) as n from patient", lambda r: r and r[0]["n"] == 21, timeout=20
        )  # the 20 good ones and the long-charset one were applied
    finally:
        eng.stop()


def test_two_listener_processes_never_both_take_a_resend_for_an_original(tmp_path, cluster):
    c = cluster(adt_distributed_config(tmp_path, 9))  # no workers: only the receive path is under test
    c.listener.start()
    other = EngineProcess(
        tmp_path / "second", config=c.config, env={k: c.env[k] for k in c.env if k.startswith("ENGINE_")}
    )
    (tmp_path / "second").mkdir()
    other.env["ENGINE_ADT_PORT"] = str(other.adt_port)
    other.start()
    try:
        answers: list[str] = []
        lock = threading.Lock()

        def resend(port: int, msg: bytes, barrier: threading.Barrier) -> None:
            conn = MllpConnection(port)
            barrier.wait(10)
            code = ack_fields(conn.send(msg))["MSA"][1]
            conn.close()
            with lock:
                answers.append(code)

        for seq in range(1, 21):  # 200 sends: each message 10 times at once, half to each listener
            msg, barrier = adt_update(seq, seq), threading.Barrier(10)
            ports = [c.listener.adt_port, other.adt_port] * 5
            threads = [threading.Thread(target=resend, args=(port, msg, barrier)) for port in ports]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert answers.count("AA") == 200
        originals = c.query(
            "select control_id, count(*) as n from messages where duplicate_of is null group by control_id"
        )
        assert {r["control_id"]: r["n"] for r in originals} == {f"F{seq:06d}": 1 for seq in range(1, 21)}
        assert c.query("select count(*) as n from messages")[0]["n"] == 200
    finally:
        other.stop()
