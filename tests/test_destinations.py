"""Destinations other than stores: an MLLP sender with retries, and channel-to-channel routing."""

from __future__ import annotations

import socket
import threading

from conftest import MllpConnection, ack_fields, fixture_bytes
from services import free_port

CONFIG = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
channels:
  - name: inbound
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    destinations:
      - name: downstream
        type: mllp
        host: 127.0.0.1
        port: DOWNSTREAM
        timeout_seconds: 5
        retry: {max_attempts: 4, backoff_seconds: 0.2}
      - {name: copy, type: channel, channel: archive}
  - name: archive
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    destinations:
      - name: nowhere
        type: mllp
        host: 127.0.0.1
        port: CLOSED
        timeout_seconds: 1
        retry: {max_attempts: 2, backoff_seconds: 0.1}
"""


class FakeReceiver:
    """An MLLP peer that answers AE to the first ``fail_first`` messages, then AA."""

    def __init__(self, fail_first: int):
        self.port = free_port()
        self.fail_first = fail_first
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\x1c\r" in buf:
                frame, buf = buf.split(b"\x1c\r", 1)
                msg = frame.lstrip(b"\x0b")
                self.received.append(msg)
                code = "AE" if len(self.received) <= self.fail_first else "AA"
                cid = msg.split(b"\r")[0].split(b"|")[9].decode()
                ack = f"MSH|^~\\&|FAKE|X|ENGINE||20260101||ACK^A01^ACK|F{len(self.received)}|P|2.5\rMSA|{code}|{cid}\r"
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\r")


def test_a_downstream_ae_is_retried_with_backoff_until_aa_and_a_copy_goes_to_another_channel(fresh_engine, tmp_path):
    fake = FakeReceiver(fail_first=2)
    cfg = tmp_path / "dest.yaml"
    cfg.write_text(CONFIG.replace("DOWNSTREAM", str(fake.port)).replace("CLOSED", str(free_port())))
    eng = fresh_engine(cfg)
    msg = fixture_bytes("adt_a01.hl7")
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    rows = eng.wait_for(
        "messages",
        "select d.status, d.attempts from deliveries d join messages m on m.id = d.message_id "
        "where m.channel = 'inbound' and d.destination = 'downstream'",
        lambda r: r and r[0]["status"] == "SENT",
        timeout=15,
    )
    assert rows[0]["attempts"] == 3
    assert fake.received[-1] == msg  # byte for byte
    # the copy was committed under the archive channel, linked to its source, and failed visibly there
    arch = eng.wait_for(
        "messages",
        "select status, error, source_message_id from messages where channel = 'archive'",
        lambda r: r and r[0]["status"] == "ERROR",
        timeout=15,
    )
    assert arch[0]["source_message_id"] is not None
    assert "nowhere" in arch[0]["error"]


ORDERED = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
channels:
  - name: inbound
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    destinations:
      - name: downstream
        type: mllp
        host: 127.0.0.1
        port: DOWNSTREAM
        retry: {max_attempts: 5, backoff_seconds: 0.5}
  - name: unused
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    destinations: [{name: x, type: channel, channel: inbound}]
"""


def test_a_later_update_for_the_same_patient_waits_while_an_earlier_one_is_retried(fresh_engine, tmp_path):
    fake = FakeReceiver(fail_first=1)
    cfg = tmp_path / "ordered.yaml"
    cfg.write_text(ORDERED.replace("DOWNSTREAM", str(fake.port)))
    eng = fresh_engine(cfg)
    first = fixture_bytes("adt_a01.hl7")
    second = fixture_bytes("adt_a08.hl7")  # same patient (PID-3.1), a later update
    assert first.split(b"PID|1||")[1].split(b"^")[0] == second.split(b"PID|1||")[1].split(b"^")[0]
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(first))["MSA"][1] == "AA"
    assert ack_fields(conn.send(second))["MSA"][1] == "AA"
    conn.close()
    eng.wait_for("messages", "select status from messages where status = 'SENT'", lambda r: len(r) == 2, timeout=15)
    ids = [m.split(b"\r")[0].split(b"|")[9] for m in fake.received]
    cid = lambda m: m.split(b"\r")[0].split(b"|")[9]
    assert ids == [cid(first), cid(first), cid(second)]  # refused, retried, only then the later one
