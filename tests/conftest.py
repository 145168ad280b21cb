"""Shared test harness: a real engine process, real sockets, real SQLite files in tmp dirs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from downstream import Downstream
from services import PrivatePostgres, PrivateRedis, ServiceUnavailable, sample_ports
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def config_file(tmp_path: Path, text: str, name: str = "channels.yaml") -> Path:
    """Write a test's channels.yaml, with MAPPINGS standing for the project's mappings folder."""
    path = tmp_path / name
    path.write_text(text.replace("MAPPINGS", str(ROOT / "mappings")))
    return path


def fhir_config(token: str, *, name: str = "ehr-test", source: str = "") -> str:
    """The text of a channels.yaml with one `fhir` channel like the sample's: Patient and
    Observation into the clinical store by the sample mappings, ``token`` allowed under ``name``;
    ``source``: more keys of the source block, one per line (``check_processes: 0``)."""
    from engine.channels.fhir_source import token_hash

    more = "".join(f"\n      {line}" for line in source.splitlines() if line.strip())
    return f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
  clinical: {{url: "${{ENGINE_CLINICAL_STORE_URL}}"}}
mappings_dir: MAPPINGS
channels:
  - name: fhir-in
    source:
      type: fhir
      port: ${{ENGINE_FHIR_PORT}}
      tokens: "{name}:{token_hash(token)}"
      resources: [Patient, Observation]{more}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: [fhir_patient_clinical, fhir_observation_clinical]}}
"""


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


SAMPLE_API_TOKEN = "sample-api-token-for-tests-3f9a1c"
"""ENGINE_API_TOKEN of an engine on the sample config: its FHIR API's token, and the one its
adt-to-fhir channel sends there (a test may give another)."""


SAMPLE_ADMIN_PASSWORD = "console-admin-secret-for-tests"
"""ENGINE_ADMIN_PASSWORD of an engine on the sample config: its console's first admin ``admin``."""


class EngineProcess:
    """``engine run`` in a subprocess, on the sample config unless told otherwise."""

    def __init__(self, workdir: Path, config: Path | None = None, env: dict | None = None):
        self.workdir = workdir
        self.data = workdir / "data"
        ports = sample_ports()
        self.lab_port, self.adt_port = int(ports["ENGINE_LAB_PORT"]), int(ports["ENGINE_ADT_PORT"])
        self.env = dict(os.environ, **ports)
        self.env.update(
            {
                "ENGINE_MESSAGE_STORE_URL": f"sqlite:///{self.data}/messages.db",
                "ENGINE_CLINICAL_STORE_URL": f"sqlite:///{self.data}/clinical.db",
                "ENGINE_PM_STORE_URL": f"sqlite:///{self.data}/pm.db",
                "ENGINE_X12_DIR": str(self.data / "x12"),
                "ENGINE_API_TOKEN": SAMPLE_API_TOKEN,  # the sample's adt-to-fhir sends it to fhir-inbound
                "ENGINE_ADMIN_PASSWORD": SAMPLE_ADMIN_PASSWORD,  # the console's first admin
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env or {})
        self.config = config or ROOT / "config" / "channels.yaml"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.console_url: str | None = None
        """``http://host:port/`` of the operator console, when the config has one."""

    def start(self) -> EngineProcess:
        self.log = open(self.workdir / "engine.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        expected, console = self._expected()
        deadline = time.monotonic() + 30
        while len(self.lines) < expected or (console and self.console_url is None):
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"engine exited: {(self.workdir / 'engine.log').read_text()[-3000:]}")
            if line.startswith("channel "):
                self.lines.append(line.strip())
            elif line.startswith("console "):
                self.console_url = line.split()[1]
            if time.monotonic() > deadline:
                raise RuntimeError("engine did not start in 30 s")
        return self

    def _expected(self) -> tuple[int, bool]:
        """How many channel lines the engine prints, and whether it prints a console line."""
        import yaml

        top = yaml.safe_load(Path(self.config).read_text())
        return len(top["channels"]), bool(top.get("console"))

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


def sample_channel(*names: str) -> str:
    """The blocks of ``names`` under ``channels:`` in config/channels.yaml, as written there: a
    test of one channel runs exactly what the sample config (and the README's tour) runs."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (ROOT / "config" / "channels.yaml").read_text().splitlines():
        if line.startswith("  - name: "):
            current = blocks.setdefault(line.split("name:", 1)[1].split("#")[0].strip(), [])
        elif line.startswith("  # --") or (line and not line.startswith(" ")):
            current = None
        if current is not None:
            current.append(line)
    return "".join("\n".join(blocks[n]).rstrip() + "\n\n" for n in names)


def send_and_settle(
    eng: EngineProcess, port: int, data: bytes, control_id: str, final: str = "SENT", code: str = "AA"
) -> dict:
    """Send one message over MLLP, check that the ACK is ``code`` for ``control_id``, and wait
    until the message is ``final`` in the message store; returns the ACK's fields."""
    conn = MllpConnection(port)
    try:
        ack = ack_fields(conn.send(data))
    finally:
        conn.close()
    assert ack["MSA"][1] == code and ack["MSA"][2] == control_id, ack
    eng.wait_for(
        "messages",
        "select status from messages where control_id = :c order by id desc",
        lambda r: bool(r) and r[0]["status"] == final,
        c=control_id,
    )
    return ack


def operator_messages(eng: EngineProcess) -> list[dict]:
    """``engine messages --json`` as an operator reads it, newest first."""
    out = eng.cli("messages", "--config", str(eng.config), "--json", "--limit", "500")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def engine_check(config: Path) -> subprocess.CompletedProcess:
    """``engine check --config <config>`` as a user runs it (exit 2 and file:line problems on stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


PG_URL = os.environ.get("ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    """A fresh schema (search_path) on the machine's PostgreSQL test database, dropped afterwards;
    the server itself is only used, never stopped or flushed."""
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.connect():
            pass
    except Exception as exc:
        if services_required():
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable under CI=true: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({type(exc).__name__}); set CI=true to make this fail")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def services_required() -> bool:
    """In CI a missing PostgreSQL/Redis is a failure, never a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def adt_config(tmp_path: Path, mappings: Path = ROOT / "mappings", *, ack_mode: str = "on_receive") -> Path:
    """The sample ADT channel into the clinical and PM stores (SQLite, under the engine's data dir)."""
    return config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
  clinical: {{url: "${{ENGINE_CLINICAL_STORE_URL}}"}}
  pm: {{url: "${{ENGINE_PM_STORE_URL}}"}}
mappings_dir: {mappings}
channels:
  - name: adt
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}", ack_mode: {ack_mode}, result_timeout_seconds: 10}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
      - {{name: pm, type: store, store: pm, mapping: adt_pm}}
""",
    )


# -- private services and a distributed engine on them ----------------------------------------------


def _private(factory):
    try:
        service = factory()
    except ServiceUnavailable as exc:
        if services_required():
            pytest.fail(f"{exc} (CI=true: a missing service is a failure)")
        pytest.skip(str(exc))
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def private_redis():
    """A Redis of this test's own on a free port, no persistence; gone after the test."""
    yield from _private(lambda: PrivateRedis().start())


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own on a free port; gone after the test."""
    yield from _private(lambda: PrivatePostgres().start())


ADT_DISTRIBUTED = """\
stores:
  messages:
    url: ${ENGINE_MESSAGE_STORE_URL}
  clinical:
    url: ${ENGINE_CLINICAL_STORE_URL}
  pm:
    url: ${ENGINE_PM_STORE_URL}

queue:
  url: ${ENGINE_QUEUE_URL}
  claim_seconds: ${ENGINE_CLAIM_SECONDS:-60}
  stuck_after_seconds: ${ENGINE_STUCK_AFTER_SECONDS:-120}

mappings_dir: MAPPINGS

channels:
  - name: adt
    source:
      type: mllp
      host: 127.0.0.1
      port: ${ENGINE_ADT_PORT}
    filter:
      path: MSH-9.1
      equals: ADT
    destinations:
      - name: clinical
        type: store
        store: clinical
        mapping: adt_clinical
      - name: pm
        type: store
        store: pm
        mapping: adt_pm
      - name: down
        type: mllp
        host: 127.0.0.1
        port: DOWNSTREAM_PORT
        retry: {max_attempts: 50, backoff_seconds: 0.2, max_backoff_seconds: 1}
"""


def adt_distributed_config(tmp_path: Path, downstream_port: int) -> Path:
    """The sample's stores, queue and ``adt`` channel, plus an ``mllp`` destination ``down``
    forwarding every message to a test listener on ``downstream_port``."""
    return config_file(tmp_path, ADT_DISTRIBUTED.replace("DOWNSTREAM_PORT", str(downstream_port)))


def adt_update(seq: int, patient: int) -> bytes:
    """An A08 for patient ``patient`` (PID-3.1 ``P0007``) with control id ``F000123`` for
    ``seq`` 123, ``seq`` in its address and its own visit number ``V000123``."""
    return (
        f"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^A08^ADT_A01|F{seq:06d}|P|2.5.1\r"
        f"EVN|A08|20260101120000\r"
        f"PID|1||P{patient:04d}^^^NORTH^MR||Tester^Pat{patient}||19800101|F|||SEQ {seq:06d}^^Town^OR^97000\r"
        f"PV1|1|O|CLINIC||||||||||||||||V{seq:06d}^^^NORTH^VN\r"
    ).encode()


def adt_updates(n: int, patients: int) -> list[tuple[str, str, bytes]]:
    """``n`` updates round-robin over ``patients``: (control id, ordering key, message)."""
    return [(f"F{seq:06d}", f"P{seq % patients:04d}", adt_update(seq, seq % patients)) for seq in range(1, n + 1)]


class Sender:
    """Sends messages as a real feed does: one ordering key always on the same connection, in
    order, each after the previous one's ACK; resends after a non-AA answer or a lost connection.
    A connection whose message is not ACKed AA within ``give_up_after`` seconds stops there.

    ``acked``: ordering key -> control ids answered AA, in order; ``nacks``: answers other than AA.
    """

    def __init__(
        self, port: int, messages: list[tuple[str, str, bytes]], connections: int = 4, give_up_after: float = 120
    ):
        self.port = port
        self.acked: dict[str, list[str]] = {}
        self.nacks = 0
        self.give_up_after = give_up_after
        lane_of: dict[str, int] = {}
        self.lanes: list[list[tuple[str, str, bytes]]] = [[] for _ in range(connections)]
        for m in messages:
            self.lanes[lane_of.setdefault(m[1], len(lane_of) % connections)].append(m)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def sent(self) -> int:
        """Messages ACKed AA so far."""
        with self._lock:
            return sum(map(len, self.acked.values()))

    def start(self) -> Sender:
        self._threads = [threading.Thread(target=self._lane, args=(lane,), daemon=True) for lane in self.lanes]
        for t in self._threads:
            t.start()
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float = 300) -> Sender:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        return self

    def stop(self) -> None:
        """Stop sending (each connection after its current message) and wait for that."""
        self._stop.set()
        self.join(60)

    def run(self) -> Sender:
        """Send everything; returns when done (or given up)."""
        try:
            return self.start().join()
        finally:
            self.stop()

    def _lane(self, lane) -> None:
        conn = None
        try:
            for control_id, key, msg in lane:
                deadline = time.monotonic() + self.give_up_after
                while True:
                    if self._stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        conn = conn or MllpConnection(self.port, timeout=30)
                        answer = conn.send(msg)
                    except OSError:
                        if conn:
                            conn.close()
                        conn = None
                        time.sleep(0.2)
                        continue
                    if ack_fields(answer).get("MSA", ["", ""])[1] == "AA":
                        with self._lock:
                            self.acked.setdefault(key, []).append(control_id)
                        break
                    with self._lock:
                        self.nacks += 1
                    time.sleep(0.2)  # AE: the engine could not store it; send again shortly
        finally:
            if conn:
                conn.close()


FINAL = ("SENT", "FILTERED", "ERROR")


class Cluster:
    """``engine run`` (the listener) and ``engine worker`` processes on a private PostgreSQL
    (all three stores in its ``postgres`` database) and a private Redis."""

    def __init__(
        self,
        tmp: Path,
        config: Path,
        postgres: PrivatePostgres,
        redis: PrivateRedis,
        *,
        threads: int = 4,
        claim_seconds: float = 3,
        stuck_after_seconds: float = 3,
    ):
        self.tmp, self.threads, self.db_url = tmp, threads, postgres.url
        env = {
            "ENGINE_MESSAGE_STORE_URL": postgres.url,
            "ENGINE_CLINICAL_STORE_URL": postgres.url,
            "ENGINE_PM_STORE_URL": postgres.url,
            "ENGINE_QUEUE_URL": redis.url,
            "ENGINE_CLAIM_SECONDS": str(claim_seconds),
            "ENGINE_STUCK_AFTER_SECONDS": str(stuck_after_seconds),
        }
        self.listener = EngineProcess(tmp, config=config, env=env)
        self.config = config
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []
        out = self.listener.cli("db", "upgrade", "--config", str(config))
        assert out.returncode == 0, out.stderr[-3000:]

    @property
    def env(self) -> dict:
        return self.listener.env

    @property
    def port(self) -> int:
        return self.listener.adt_port

    def start(self, workers: int = 2) -> Cluster:
        self.listener.start()
        self.start_workers(workers)
        return self

    def start_workers(self, n: int) -> list[subprocess.Popen]:
        """Start ``n`` worker processes; returns once each says it consumes the queue."""
        started = []
        for _ in range(n):
            log = open(self.tmp / f"worker-{len(self.workers) + 1}.log", "wb")
            self._logs.append(log)
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "engine.cli", "worker", "--config", str(self.config)]
                    + ["--threads", str(self.threads)],
                    cwd=ROOT,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
            self.workers.append(started[-1])
        for w in started:
            line = w.stdout.readline()
            assert line.startswith(b"worker "), f"worker did not start: {line!r}; see {self.tmp}/worker-*.log"
        return started

    def kill_worker(self, index: int = 0) -> None:
        self.workers[index].send_signal(signal.SIGKILL)
        self.workers[index].wait(30)

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 30 s); safe to call twice."""
        try:
            if self.listener.proc is not None:
                self.listener.stop()
        finally:
            for w in self.workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in self.workers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
                if w.stdout:
                    w.stdout.close()
            for log in self._logs:
                log.close()

    def query(self, sql: str, **params) -> list[dict]:
        eng = create_engine(self.db_url)
        try:
            with eng.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(sql), params)]
        finally:
            eng.dispose()

    def statuses(self) -> dict[str, int]:
        rows = self.query("select status, count(*) as n from messages where channel = 'adt' group by status")
        return {r["status"]: r["n"] for r in rows}

    def wait_settled(self, done: int, timeout: float = 120) -> dict[str, int]:
        """Wait until nothing is pending and at least ``done`` messages are SENT or ERROR;
        returns the count per status. Store outages while waiting are waited out."""
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            try:
                counts = self.statuses()
            except Exception:
                time.sleep(0.5)
                continue
            pending = sum(n for s, n in counts.items() if s not in FINAL)
            if not pending and counts.get("SENT", 0) + counts.get("ERROR", 0) >= done:
                return counts
            time.sleep(0.3)
        raise AssertionError(f"not settled in {timeout} s: {counts} (want {done} SENT or ERROR, none pending)")


@pytest.fixture
def downstream():
    """A :class:`~downstream.Downstream` MLLP listener, closed after the test."""
    with Downstream() as down:
        yield down


@pytest.fixture
def cluster(tmp_path, private_postgres, private_redis):
    """Builds :class:`Cluster` s on this test's private services; stops them all afterwards."""
    made: list[Cluster] = []

    def build(config: Path, **kwargs) -> Cluster:
        c = Cluster(tmp_path, config, private_postgres, private_redis, **kwargs)
        made.append(c)
        return c

    yield build
    for c in made:
        c.stop()
