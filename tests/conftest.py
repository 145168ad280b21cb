"""Shared test harness: a real engine process, real sockets, real SQLite files in tmp dirs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_file(tmp_path: Path, text: str, name: str = "channels.yaml") -> Path:
    """Write a test's channels.yaml, with MAPPINGS standing for the project's mappings folder."""
    path = tmp_path / name
    path.write_text(text.replace("MAPPINGS", str(ROOT / "mappings")))
    return path


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class MllpConnection:
    """A minimal raw MLLP peer for tests: send bytes, read one framed answer."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(VT + message + FS + CR)
        return self.read_frame()

    def read_frame(self) -> bytes:
        while FS not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        start = self.buf.index(VT)
        end = self.buf.index(FS)
        frame, self.buf = self.buf[start + 1 : end], self.buf[end + 2 :]
        return frame

    def close(self) -> None:
        self.sock.close()


def ack_fields(ack: bytes) -> dict[str, list[str]]:
    """{segment name: fields} of an ACK (first occurrence), fields 1-based like HL7."""
    out = {}
    text = ack.decode("latin-1").strip("\r")
    sep = text[3] if len(text) > 3 else "|"  # the ACK answers in the sender's own delimiters
    for seg in text.split("\r"):
        parts = seg.split(sep)
        if parts[0] == "MSH":
            parts.insert(1, "|")
        out.setdefault(parts[0], parts)
    return out


class EngineProcess:
    """``engine run`` in a subprocess, on the sample config unless told otherwise."""

    def __init__(self, workdir: Path, config: Path | None = None, env: dict | None = None):
        self.workdir = workdir
        self.data = workdir / "data"
        self.lab_port, self.adt_port = free_port(), free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "ENGINE_MESSAGE_STORE_URL": f"sqlite:///{self.data}/messages.db",
                "ENGINE_CLINICAL_STORE_URL": f"sqlite:///{self.data}/clinical.db",
                "ENGINE_PM_STORE_URL": f"sqlite:///{self.data}/pm.db",
                "ENGINE_LAB_PORT": str(self.lab_port),
                "ENGINE_ADT_PORT": str(self.adt_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env or {})
        self.config = config or ROOT / "config" / "channels.yaml"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> EngineProcess:
        self.log = open(self.workdir / "engine.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        expected = self._channel_count()
        deadline = time.monotonic() + 30
        while len(self.lines) < expected:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"engine exited: {(self.workdir / 'engine.log').read_text()[-3000:]}")
            if line.startswith("channel "):
                self.lines.append(line.strip())
            if time.monotonic() > deadline:
                raise RuntimeError("engine did not start in 30 s")
        return self

    def _channel_count(self) -> int:
        import yaml

        return len(yaml.safe_load(Path(self.config).read_text())["channels"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def db(self, name: str):
        return create_engine(f"sqlite:///{self.data}/{name}.db")

    def query(self, name: str, sql: str, **params) -> list[dict]:
        eng = self.db(name)
        try:
            with eng.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(sql), params)]
        finally:
            eng.dispose()

    def wait_for(self, name: str, sql: str, predicate=bool, timeout: float = 10.0, **params):
        deadline = time.monotonic() + timeout
        rows = []
        while time.monotonic() < deadline:
            try:
                rows = self.query(name, sql, **params)
            except Exception:
                rows = []
            if predicate(rows):
                return rows
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting on {name}: {sql} -> {rows}")

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc = EngineProcess(tmp_path_factory.mktemp("engine")).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_engine(tmp_path):
    procs = []

    def start(config: Path | None = None, **env) -> EngineProcess:
        p = EngineProcess(tmp_path, config=config, env=env).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def services_required() -> bool:
    """In CI a missing PostgreSQL/Redis is a failure, never a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
