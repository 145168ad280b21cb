"""MLLP delivery by distributed workers, on private PostgreSQL and Redis: what the receiver
answers is what the message store records, and a claim that outlives its lease does not
deliver a batch twice. The receiver is a test listener (tests/downstream.py) that counts
every frame it gets.

Skipped with the reason where redis-server or PostgreSQL's programs are absent; under CI=true
that is a failure.
"""

from __future__ import annotations

import time

import pytest
from conftest import CR, FS, VT, MllpConnection, Sender, ack_fields, adt_distributed_config, adt_update, adt_updates

pytestmark = pytest.mark.services


def test_a_rejected_message_is_never_recorded_as_sent(tmp_path, downstream, cluster):
    updates = adt_updates(400, patients=20)
    odd = {cid for cid, _key, _msg in updates if int(cid[1:]) % 2}
    downstream.answer("AR", odd)
    c = cluster(adt_distributed_config(tmp_path, downstream.port), threads=4).start(workers=1)
    sender = Sender(c.port, updates).run()
    assert sender.sent == 400
    counts = c.wait_settled(400)
    assert counts == {"SENT": 200, "ERROR": 200}, counts  # none stalled: nothing left pending
    rows = c.query(
        "select m.control_id, m.status, d.status as down from messages m "
        "left join deliveries d on d.message_id = m.id and d.destination = 'down'"
    )
    want = {cid: ("ERROR", "ERROR") if cid in odd else ("SENT", "SENT") for cid, _key, _msg in updates}
    wrong = [r for r in rows if (r["status"], r["down"]) != want[r["control_id"]]]
    assert not wrong, f"{len(wrong)} message(s) recorded unlike their ACK: {wrong[:10]}"
    downstream.assert_exactly_once_in_order(sender.acked)  # an AR is final: never sent again


def test_an_expired_claim_does_not_deliver_a_batch_twice(tmp_path, downstream, cluster):
    downstream.ack_delay_seconds = 1.0  # a batch of 8 takes ~8 s to deliver: 4 leases of 2 s
    c = cluster(adt_distributed_config(tmp_path, downstream.port), claim_seconds=2, stuck_after_seconds=1)
    c.start(workers=2)
    # all 8 in one write: the listener commits them together and queues them as one batch
    seqs = [(seq, 1 + seq % 2) for seq in range(1, 9)]
    conn = MllpConnection(c.port, timeout=30)
    conn.send_raw(b"".join(VT + adt_update(seq, patient) + FS + CR for seq, patient in seqs))
    acks = [ack_fields(conn.read_frame()) for _ in seqs]
    conn.close()
    assert [a["MSA"][1:3] for a in acks] == [["AA", f"F{seq:06d}"] for seq, _p in seqs]
    expected: dict[str, list[str]] = {}
    for seq, patient in seqs:
        expected.setdefault(f"P{patient:04d}", []).append(f"F{seq:06d}")
    assert c.wait_settled(8, timeout=90) == {"SENT": 8}
    time.sleep(3)  # longer than a lease: a second claimer still delivering would show by now
    assert len(downstream.frames) == 8, downstream.counts()
    downstream.assert_exactly_once_in_order(expected)
