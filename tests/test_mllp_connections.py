"""Listener connection hygiene over real sockets: full listeners, tricklers, per-peer caps, log volume."""

from __future__ import annotations

import itertools
import select
import socket
import time

import pytest
from conftest import EngineProcess, MllpConnection, ack_fields, config_file, fixture_bytes
from services import free_port

PORTS = ("PORT_FULL", "PORT_TRICKLE", "PORT_JUNK", "PORT_PEER")

CONFIG = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: full
    source: {type: mllp, port: "${PORT_FULL}", max_connections: 4}
    destinations: [{name: clinical, type: store, store: clinical, mapping: adt_clinical}]
  - name: trickle
    source: {type: mllp, port: "${PORT_TRICKLE}", frame_timeout_seconds: 1}
    destinations: [{name: clinical, type: store, store: clinical, mapping: adt_clinical}]
  - name: junk
    source: {type: mllp, port: "${PORT_JUNK}", idle_timeout_seconds: 1}
    destinations: [{name: clinical, type: store, store: clinical, mapping: adt_clinical}]
  - name: peer
    source: {type: mllp, port: "${PORT_PEER}", max_connections_per_peer: 2}
    destinations: [{name: clinical, type: store, store: clinical, mapping: adt_clinical}]
"""

FLOOD = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: flood
    source: {type: mllp, port: "${ENGINE_ADT_PORT}", max_connections: 2}
    destinations: [{name: clinical, type: store, store: clinical, mapping: adt_clinical}]
"""

MESSAGE = fixture_bytes("adt_a04.hl7")
PARTIAL_FRAME = b"\x0b" + MESSAGE[:20]  # a frame begun and not ended: the connection is busy


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("connections")
    proc = EngineProcess(workdir, config_file(workdir, CONFIG), env={p: str(free_port()) for p in PORTS}).start()
    yield proc
    proc.stop()


def port(eng: EngineProcess, name: str) -> int:
    return int(eng.env[name])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the engine closes ``sock`` within ``seconds`` without writing anything to it."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False


def trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[float | None, bytes]:
    """Send ``data`` a byte every ``every`` seconds (cycling) until the engine closes ``sock``.

    Returns (seconds until closed, or None if still open after ``limit`` seconds; bytes received).
    """
    started = time.monotonic()
    got = b""
    for i in itertools.count():
        elapsed = time.monotonic() - started
        if elapsed > limit:
            return None, got
        try:
            sock.sendall(data[i % len(data) : i % len(data) + 1])
            readable, _, _ = select.select([sock], [], [], every)
            chunk = sock.recv(65536) if readable else None
        except OSError:
            return elapsed, got
        if chunk == b"":
            return elapsed, got
        got += chunk or b""
    raise AssertionError("unreachable")


def stored(eng: EngineProcess, channel: str) -> int:
    return eng.query("messages", "select count(*) as n from messages where channel = :c", c=channel)[0]["n"]


def with_control_id(control_id: str) -> bytes:
    head, rest = MESSAGE.split(b"\r", 1)
    fields = head.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


def test_a_full_listener_closes_its_longest_idle_connection_and_acks_a_real_sender(eng):
    idle = []
    for _ in range(4):
        idle.append(connect(port(eng, "PORT_FULL")))
        time.sleep(0.1)  # the engine sees them in this order: the first is the longest idle
    sender = MllpConnection(port(eng, "PORT_FULL"))
    assert ack_fields(sender.send(with_control_id("FULL-1")))["MSA"][1:3] == ["AA", "FULL-1"]
    sender.close()
    assert closed_within(idle[0], 5)
    assert all(still_open(s) for s in idle[1:])
    for s in idle:
        s.close()


def test_a_client_trickling_a_frame_is_cut_after_the_frame_timeout_and_nothing_is_stored_or_acked(eng):
    sock = connect(port(eng, "PORT_TRICKLE"))
    closed_after, got = trickle(sock, b"\x0b" + MESSAGE, every=0.2, limit=8)
    sock.close()
    assert closed_after is not None  # frame_timeout_seconds is 1; idle_timeout_seconds is 300
    assert got == b""
    assert stored(eng, "trickle") == 0


def test_junk_trickled_outside_frames_does_not_hold_a_connection_past_the_idle_timeout(eng):
    sock = connect(port(eng, "PORT_JUNK"))
    closed_after, got = trickle(sock, b"junk", every=0.2, limit=8)
    sock.close()
    assert closed_after is not None  # idle_timeout_seconds is 1
    assert got == b""


def test_a_peer_at_its_cap_loses_its_longest_idle_connection_and_is_refused_once_all_are_busy(eng):
    p = port(eng, "PORT_PEER")
    idle = connect(p)
    time.sleep(0.1)
    busy = connect(p)
    busy.sendall(PARTIAL_FRAME)
    time.sleep(0.5)  # the engine has read the VT: this connection is mid-frame
    newcomer = MllpConnection(p)
    assert ack_fields(newcomer.send(with_control_id("PEER-1")))["MSA"][1] == "AA"
    assert closed_within(idle, 5)
    assert still_open(busy)
    newcomer.send_raw(PARTIAL_FRAME)  # now both of the peer's connections are mid-frame
    time.sleep(0.5)
    refused = connect(p)
    assert closed_within(refused, 5)
    assert still_open(busy) and still_open(newcomer.sock)
    for s in (idle, busy, newcomer.sock, refused):
        s.close()


def test_two_hundred_refused_connections_log_one_warning_line_and_one_count(fresh_engine, tmp_path):
    eng = fresh_engine(config_file(tmp_path, FLOOD))
    holders = [connect(eng.adt_port) for _ in range(2)]
    for h in holders:
        h.sendall(PARTIAL_FRAME)
    time.sleep(0.5)
    refused = 0
    for _ in range(200):
        s = connect(eng.adt_port)
        refused += closed_within(s, 5)
        s.close()
    assert refused == 200
    assert all(still_open(h) for h in holders)
    eng.stop()  # the count of lines held back is logged at stop, not 10 s later
    lines = [x for x in (tmp_path / "engine.log").read_text().splitlines() if "channel=flood refused" in x]
    assert len(lines) == 2, lines
    assert "199 more" in lines[1]
    for h in holders:
        h.close()
