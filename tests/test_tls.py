"""MLLP over TLS (``tls:`` on an ``mllp`` source and destination, :mod:`engine.tls`), against a
real ``engine run`` listening with a throwaway CA's certificate made by the ``openssl`` CLI."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import EngineProcess, config_file, engine_check, send_and_settle
from pki import make_pki
from services import free_port

from engine.channels.base import Item
from engine.channels.mllp_sender import MllpSender, MllpSenderConfig
from engine.errors import DeliveryError
from engine.tls import ClientTls, ServerTls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def message(control_id: str) -> bytes:
    """A synthetic ADT (no patient data) with MSH-10 ``control_id``."""
    return (
        f"MSH|^~\\&|SEND|FAC|ENGINE|HUB|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A08|20260101120000\rPID|1||T0001^^^NORTH^MR||Tester^Tls\r"
    ).encode()


def tls_config(tmp_path: Path, port: int, pki: Path, extra: str = "") -> Path:
    return config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/data/messages.db"}}
channels:
  - name: secure
    source:
      type: mllp
      port: {port}
      tls:
        cert_file: {pki}/server.pem
        key_file: {pki}/server.key
{extra}
    destinations:
      - {{name: archive, type: file, folder: {tmp_path}/out, file_name: "{{id}}.hl7"}}
""",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory, pki):
    """``engine run`` with one MLLP channel that speaks TLS only."""
    tmp = tmp_path_factory.mktemp("engine")
    port = free_port()
    eng = EngineProcess(tmp, config=tls_config(tmp, port, pki)).start()
    eng.port = port
    yield eng
    eng.stop()


def sender(port: int, **tls) -> MllpSender:
    config = MllpSenderConfig(type="mllp", name="secure", host="127.0.0.1", port=port, timeout_seconds=5, tls=tls)
    return MllpSender(config, None)


def stored(eng: EngineProcess, control_id: str) -> int:
    return eng.query("messages", "SELECT count(*) AS n FROM messages WHERE control_id = :c", c=control_id)[0]["n"]


def test_an_mllp_round_trip_over_tls_gets_its_ack_and_the_message_is_stored(secure, pki):
    assert f"channel secure: mllp 127.0.0.1:{secure.port} (TLS) -> archive" in secure.lines
    dest = sender(secure.port, ca_file=str(pki / "ca.pem"))
    try:
        for n in range(3):  # the pooled TLS connection carries the next messages too
            assert dest.deliver_one(Item(n, None, message(f"TLS-{n}"))) is None
    finally:
        dest.close()
    assert [stored(secure, f"TLS-{n}") for n in range(3)] == [1, 1, 1]


def test_a_plaintext_client_is_refused_cleanly_and_the_listener_keeps_serving(secure, pki):
    with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as plain:
        plain.sendall(b"\x0b" + message("PLAIN-1") + b"\x1c\r")
        answer = b""
        try:
            while chunk := plain.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"MSA" not in answer  # no ACK: the bytes were never read as MLLP
    assert stored(secure, "PLAIN-1") == 0
    dest = sender(secure.port, ca_file=str(pki / "ca.pem"))
    try:
        assert dest.deliver_one(Item(1, None, message("AFTER-PLAIN"))) is None
    finally:
        dest.close()
    assert "Traceback" not in (secure.workdir / "engine.log").read_text()


def test_a_client_that_does_not_trust_the_ca_fails_the_handshake_and_may_retry(secure, tmp_path):
    other = make_pki(tmp_path / "other", "other-ca")
    for tls in ({}, {"ca_file": str(other / "other-ca.pem")}):  # the system's CAs; another CA
        dest = sender(secure.port, **tls)
        try:
            res = dest.deliver_one(Item(1, None, message("UNTRUSTED")))
        finally:
            dest.close()
        assert isinstance(res, DeliveryError) and res.retryable, res
        assert "SSLCertVerificationError" in str(res)
    assert stored(secure, "UNTRUSTED") == 0


def test_a_tls_destination_delivers_to_a_tls_listener_inside_the_engine(tmp_path, pki):
    """Engine A forwards over MLLP+TLS to engine B's TLS listener; B stores it once."""
    b_port, a_port = free_port(), free_port()
    b_dir, a_dir = tmp_path / "b", tmp_path / "a"
    b_dir.mkdir()
    a_dir.mkdir()
    b = EngineProcess(b_dir, config=tls_config(b_dir, b_port, pki)).start()
    a_cfg = config_file(
        a_dir,
        f"""
stores:
  messages: {{url: "sqlite:///{a_dir}/data/messages.db"}}
channels:
  - name: plain-in
    source: {{type: mllp, port: {a_port}}}
    destinations:
      - name: secure-out
        type: mllp
        host: localhost
        port: {b_port}
        tls: {{ca_file: {pki}/ca.pem}}
        retry: {{max_attempts: 3, backoff_seconds: 0.2}}
""",
    )
    a = EngineProcess(a_dir, config=a_cfg).start()
    try:
        send_and_settle(a, a_port, message("HOP-1"), "HOP-1")
        b.wait_for("messages", "SELECT status FROM messages WHERE control_id = 'HOP-1'", lambda r: len(r) == 1)
        time.sleep(0.3)
        assert stored(b, "HOP-1") == 1
    finally:
        a.stop()
        b.stop()


def test_mutual_tls_refuses_a_silent_client_and_one_without_a_certificate_and_serves_one_with(tmp_path, pki):
    port = free_port()
    extra = f"        ca_file: {pki}/ca.pem\n        require_client_cert: true\n        handshake_timeout_seconds: 0.5"
    eng = EngineProcess(tmp_path, config=tls_config(tmp_path, port, pki, extra)).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:  # never starts a handshake
            started = time.monotonic()
            assert silent.recv(1) == b""  # closed by the listener
            assert time.monotonic() - started < 5
        anonymous = sender(port, ca_file=str(pki / "ca.pem"))
        known = sender(port, ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                       key_file=str(pki / "client.key"))  # fmt: skip
        try:
            refused = anonymous.deliver_one(Item(1, None, message("ANON-1")))
            assert isinstance(refused, DeliveryError) and refused.retryable
            assert known.deliver_one(Item(2, None, message("KNOWN-1"))) is None
        finally:
            anonymous.close()
            known.close()
        assert (stored(eng, "ANON-1"), stored(eng, "KNOWN-1")) == (0, 1)
    finally:
        eng.stop()


def test_tls_config_problems_are_reported_with_file_line_and_key(tmp_path, pki):
    bad_key = tmp_path / "not-a-key.pem"
    bad_key.write_text("not PEM at all\n")
    path = config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/messages.db"}}
channels:
  - name: secure
    source:
      type: mllp
      port: {free_port()}
      tls:
        cert_file: {tmp_path}/missing.pem
        key_file: {pki}/server.key
    destinations:
      - name: out
        type: mllp
        host: localhost
        port: 7001
        tls: {{ca_file: {tmp_path}/missing-ca.pem, verfy: false}}
  - name: mutual
    source:
      type: mllp
      port: {free_port()}
      tls: {{cert_file: {pki}/server.pem, key_file: {bad_key}, require_client_cert: true}}
    destinations:
      - name: out
        type: mllp
        host: localhost
        port: 7001
        tls: {{cert_file: {pki}/client.pem, key_file: {bad_key}}}
""",
    )
    out = engine_check(path)
    assert out.returncode != 0
    lines = out.stderr.splitlines()

    def reported(line: int, key: str, text: str) -> bool:
        return any(f"channels.yaml:{line}: {key}: " in x and text in x for x in lines)

    assert reported(10, "channels[0].source.tls.cert_file", "file not found"), out.stderr
    assert reported(17, "channels[0].destinations[0].tls.verfy", "unknown key"), out.stderr
    assert reported(22, "channels[1].source.tls.require_client_cert", "needs ca_file"), out.stderr
    assert reported(22, "channels[1].source.tls.key_file", "cannot load the certificate"), out.stderr
    assert reported(28, "channels[1].destinations[0].tls.key_file", "cannot load the certificate"), out.stderr


def test_the_uvicorn_settings_serve_https_with_mutual_tls(pki):
    """What the FHIR endpoint gives uvicorn from the same ``tls:`` block."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    tls = ServerTls(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"), ca_file=str(pki / "ca.pem"),
                    require_client_cert=True)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **tls.uvicorn_kwargs()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        url = f"https://localhost:{port}/"
        with_cert = ClientTls(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                              key_file=str(pki / "client.key"))  # fmt: skip
        assert httpx.get(url, verify=with_cert.context(), timeout=10).text == "ok"
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(url, verify=ClientTls(ca_file=str(pki / "ca.pem")).context(), timeout=10)
    finally:
        server.should_exit = True
        thread.join(10)
