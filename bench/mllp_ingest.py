"""MLLP ingest benchmark: ACK rate, end-to-end rate, ACK latency and CPU of ``engine run``,
beside same-run anchors that say what the absolute figures are worth on this machine.

    python bench/mllp_ingest.py [-n 5000] [--connections 1 8] [--patients many one] [--no-anchors] [--quick]
                                [--worker-process | --process-queue]

Each engine run starts a fresh ``engine run`` on the repo's config/channels.yaml (the ``adt``
and ``lab-results`` MLLP channels) with its three SQLite stores in a temporary folder and the
in-process queue, and sends N messages, half ADT (A01/A04/A08 with PID PV1 AL1 DG1 GT1 IN1),
half ORU (R01 with 4 OBX). Each connection sends a message and waits for its ACK before it
sends the next, as real senders do; a connection uses one socket per channel port. Runs form
the matrix connections x patients:

- ``many`` patients: MRNs drawn from N/4 patients, so per-patient ordering rarely makes a
  message wait for another;
- ``one`` patient: every message has the same MRN, so processing is serialised per patient
  (updates for one patient apply in receive order).

``--worker-process`` runs processing in one ``engine worker`` process instead of the engine's
own thread, on a redis-server of its own (the stores stay SQLite): what the listener alone does,
and what a second interpreter buys and costs. ``--process-queue`` does the same without a
broker: ``queue.url: process://``, the worker process that ``engine run`` starts and feeds
over a pipe.

Figures of an engine run:

ACK rate          messages / seconds from the first send to the last ACK. Every ACK is durable:
                  the message store commits the message (SQLite synchronous=FULL) before it answers.
end-to-end        messages / seconds from the first send until every message is in a final
                  status (SENT, FILTERED or ERROR) in the message store's ``messages`` table,
                  i.e. mapped into the clinical and PM stores.
ACK p50 / p99     time from writing a frame to reading its ACK, per message.
engine CPU        user + system CPU of the engine process(es) over the whole run (until end-to-end),
                  from /proc/<pid>/stat, per message.
client CPU        CPU of this load client (the bench process) while it sends, per message.
by thread         the engine CPU of each of the engine's threads (named for the kernel,
                  engine/threads.py: main = the asyncio loop with MLLP and ACKs, committer,
                  worker = processing ...), user + system and, in brackets, system, per message:
                  which part of the engine sets the rate.

Anchors, measured in the same invocation (``--no-anchors`` skips them):

fsync limit       a sequential loop of one small INSERT + COMMIT on a SQLite database with the
                  message store's pragmas (WAL, synchronous=FULL), in the same temp filesystem:
                  commits/s. One connection waits for each durable ACK, so the engine cannot
                  ACK one connection faster than this; with several connections it can, by
                  committing many messages per fsync. Measured before and after the engine runs
                  (the disk is shared, and its fsync rate drifts); the ratios use the mean of the two.
bare ACK server   an asyncio MLLP server in a subprocess that answers every frame with a fixed
                  minimal ACK (MSA|AA|<MSH-10>) and stores nothing, driven by the same client
                  code over the same connection counts: the ceiling of client + loopback.
parse rates       hl7apy (find_groups=True) and the engine's tokenizer on the same messages, one core.
floor             ``bench/floor.py``: the engine's durable work for the same mix done by hand in
                  plain Python and sqlite3 (receipt committed, claim, tokenize, the very rows the
                  engine writes into both stores, statuses; no mapping language, no checks), CPU
                  ms per message for one connection (each receipt committed alone) and for many
                  (receipts committed 20 together), processing in batches of 20 in both; plus the
                  bare server's CPU for the sockets: the least a Python engine can spend.

The ratios print each engine run's ACK rate as a % of the fsync limit and of the bare server
at the same connection count, and its CPU per message as a multiple of the floor (one or many
connections, plus the bare server's CPU at that connection count). A
markdown table for a README closes the output, with the command line, the date, the CPU count
and the Python version.

Figures are printed, never asserted: this machine is shared and they vary by a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from services import PrivateRedis, sample_ports  # noqa: E402

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
FINAL = "('SENT','FILTERED','ERROR')"

ADT = (
    "MSH|^~\\&|REG|NORTHCLINIC|ENGINE|HUB|{ts}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    "EVN|{trigger}|{ts}\r"
    "PID|1||{mrn}^^^NCH^MR~{ssn}^^^SSA^SS||{family}^{given}^Q||19{yy}0412|{sex}|||"
    "{num} Elm St^^Springfield^IL^62704^USA||(217)555-{phone}|||M||ACC{mrn}\r"
    "{pv1}\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives|20100101\r"
    "DG1|1||I10^Essential hypertension^I10||{ts}|A\r"
    "GT1|1||{family}^{given}||{num} Elm St^^Springfield^IL^62704|(217)555-{phone}|||||SEL\r"
    "{in1}\r"
)
ORU = (
    "MSH|^~\\&|LAB|NORTHLAB|ENGINE|HUB|{ts}||ORU^R01^ORU_R01|{cid}|P|2.5.1|||AL|NE\r"
    "PID|1||{mrn}^^^NCH^MR||{family}^{given}||19{yy}0412|{sex}\r"
    "ORC|RE|PO{cid}|FO{cid}\r"
    "OBR|1|PO{cid}|FO{cid}|24323-8^Comprehensive metabolic panel^LN|||{ts}|||||||||1234^Carter^Ann||||||{ts}|||F\r"
    "OBX|1|NM|2345-7^Glucose^LN||{glu}|mg/dL|70-99|{flag}|||F|||{ts}\r"
    "OBX|2|NM|2951-2^Sodium^LN||140|mmol/L|136-145|N|||F|||{ts}\r"
    "OBX|3|NM|2823-3^Potassium^LN||4.1|mmol/L|3.5-5.1|N|||F|||{ts}\r"
    "OBX|4|ST|8251-1^Comment^LN||Specimen slightly hemolyzed||||||F|||{ts}\r"
)
FAMILIES = ["Nguyen", "Garcia", "Smith", "Okafor", "Kowalski", "Haddad", "Larsen", "Moreau"]
GIVEN = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana"]
BARE_ACK = b"MSH|^~\\&|BARE|BENCH|||20260101000000||ACK|%s|P|2.5.1\rMSA|AA|%s\r"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}, so that field positions are explicit."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def make_message(i: int, rnd: random.Random, pool: int, patients: int | None = None) -> bytes:
    """Message number ``i`` (ORU when odd, ADT when even; control id ``B<i>``), its patient
    drawn from ``pool`` MRNs, folded onto ``patients`` MRNs when given."""
    pick = rnd.randrange(pool)
    # The draw is made either way, so that "one patient" messages differ from "many" only in the MRN.
    mrn = f"{100000 + (pick if patients is None else pick % patients):06d}"
    fields = dict(
        ts=f"2026{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}0930",
        cid=f"B{i:08d}",
        mrn=mrn,
        ssn=f"{rnd.randint(100, 999)}-55-{rnd.randint(1000, 9999)}",
        family=rnd.choice(FAMILIES),
        given=rnd.choice(GIVEN),
        yy=rnd.randint(40, 99),
        sex=rnd.choice("MF"),
        num=rnd.randint(1, 999),
        phone=f"{rnd.randint(0, 9999):04d}",
        trigger=rnd.choice(["A01", "A04", "A08", "A08"]),
        glu=rnd.randint(60, 200),
        flag="",
    )
    fields["flag"] = "H" if fields["glu"] > 99 else ("L" if fields["glu"] < 70 else "N")
    fields["pv1"] = segment(
        "PV1",
        {
            1: "1",
            2: "I",
            3: "4W^401^B^NCH",
            7: "1234^Carter^Ann^^^Dr",
            10: "MED",
            14: "1",
            17: "1234^Carter^Ann^^^Dr",
            18: "IN",
            19: f"V{mrn}{i % 3}^^^NCH^VN",
            20: "BC",
            39: "NCH",
            41: "A",
            44: fields["ts"],
        },
    )
    fields["in1"] = segment(
        "IN1",
        {
            1: "1",
            2: "BCBS01^PPO",
            3: "60054",
            4: "Blue Cross Blue Shield",
            5: "PO Box 1^^Chicago^IL^60601",
            8: f"GRP{fields['yy']}",
            9: "Acme Corp",
            12: "20240101",
            13: "20261231",
            16: f"{fields['family']}^{fields['given']}",
            17: "SEL",
            18: f"19{fields['yy']}0412",
            36: f"MEM{mrn}",
        },
    )
    template = ORU if i % 2 else ADT
    return template.format(**fields).encode()


def make_messages(n: int, seed: int = 7, patients: int | None = None) -> list[bytes]:
    """N messages, half ADT and half ORU; MRNs spread over N/4 patients, or over ``patients``."""
    rnd = random.Random(seed)
    return [make_message(i, rnd, n // 4 + 1, patients) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children, live or ended and waited
    for (the engine's FHIR check processes, say), from /proc (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return own + sum(_proc_cpu(c) for c in _children(pid))


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc; none elsewhere)."""
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _thread_cpu(pid: int, prefix: str = "") -> dict[str, list[float]]:
    """CPU seconds [user, system] of each live thread of process ``pid``, summed by the name the
    engine gives the kernel (engine/threads.py: ``committer``, ``worker``...); the main thread
    (the asyncio loop, MLLP and ACKs) is ``main``, unnamed threads are ``other``. Linux /proc."""
    out: dict[str, list[float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main" if task.name == str(pid) else ("other" if name.startswith("python") else name)
        cpu = out.setdefault(prefix + name, [0.0, 0.0])
        cpu[0] += int(fields[11]) / tick
        cpu[1] += int(fields[12]) / tick
    return out


def _per_message(before: dict[str, list[float]], after: dict[str, list[float]], n: int) -> dict[str, list[float]]:
    """ms per message [user + system, system] of each thread name between two readings."""
    out = {}
    for name, (user, system) in after.items():
        u0, s0 = before.get(name, [0.0, 0.0])
        out[name] = [(user - u0 + system - s0) * 1000 / n, (system - s0) * 1000 / n]
    return out


class Engine:
    """``engine run`` on the sample config (or ``config``); SQLite in a temporary folder unless
    ``env`` says otherwise, plus ``workers`` ``engine worker`` processes when the queue is Redis."""

    def __init__(
        self, env: dict[str, str] | None = None, workers: int = 0, threads: int = 1, *, config: Path | None = None
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        ports = sample_ports()  # every channel of the sample config on a free port
        self.lab, self.adt = int(ports["ENGINE_LAB_PORT"]), int(ports["ENGINE_ADT_PORT"])
        self.env = dict(
            os.environ,
            **ports,
            ENGINE_MESSAGE_STORE_URL=f"sqlite:///{self.dir}/messages.db",
            ENGINE_CLINICAL_STORE_URL=f"sqlite:///{self.dir}/clinical.db",
            ENGINE_PM_STORE_URL=f"sqlite:///{self.dir}/pm.db",
            ENGINE_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env or {})
        config_args = ["--config", str(config)] if config else []
        if workers:
            subprocess.run(
                [sys.executable, "-m", "engine.cli", "db", "upgrade", *config_args],
                cwd=ROOT,
                env=self.env,
                check=True,
                capture_output=True,
            )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", *config_args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "engine.log", "wb"),  # noqa: SIM115 - the child keeps it open
        )
        # measured from when every process has started: a worker's start-up (imports, mappings)
        # is seconds of CPU, not the messages'
        own_worker = self.env.get("ENGINE_QUEUE_URL", "").startswith("process:")
        started, worker_said = 0, not own_worker
        while started < 2 or not worker_said:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                log = (self.dir / "engine.log").read_text()
                shutil.rmtree(self.dir, ignore_errors=True)
                raise SystemExit(log)
            started += line.startswith(b"channel ")
            worker_said = worker_said or line.startswith(b"worker ")
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "worker", "--threads", str(threads), *config_args],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=open(self.dir / f"worker{k}.log", "wb"),  # noqa: SIM115 - the child keeps it open
            )
            for k in range(workers)
        ]
        for w in self.workers:
            if not w.stdout.readline().startswith(b"worker "):
                raise SystemExit(f"a worker did not start; see {self.dir}")
        self.db = create_engine(self.env["ENGINE_MESSAGE_STORE_URL"])

    def port_for(self, message: bytes) -> int:
        return self.lab if b"|ORU^" in message[:200] else self.adt

    def done_count(self) -> int:
        with self.db.connect() as c:
            return c.execute(text(f"select count(*) from messages where status in {FINAL}")).scalar()

    def error_count(self) -> int:
        with self.db.connect() as c:
            return c.execute(text("select count(*) from messages where status = 'ERROR'")).scalar()

    def cpu_seconds(self) -> float:
        """User + system CPU of the engine's processes so far (Linux /proc; 0 elsewhere)."""
        return sum(_proc_cpu(p.pid) for p in [self.proc, *self.workers])

    def thread_cpu(self) -> dict[str, list[float]]:
        """CPU seconds [user, system] per thread name of the engine's processes (a worker
        process's threads prefixed ``worker process:``)."""
        out = _thread_cpu(self.proc.pid)
        for k, w in enumerate(self.workers):
            out.update(_thread_cpu(w.pid, f"worker process {k}: "))
        for child in _children(self.proc.pid):  # process://: the worker engine run started
            out.update(_thread_cpu(child, "its worker process: "))
        return out

    def log_lines(self) -> int:
        """Lines the engine processes wrote to stderr (WARNING and above): counted, never shown."""
        return sum(len(f.read_bytes().splitlines()) for f in self.dir.glob("*.log"))

    def stop(self, keep: bool | None = None) -> None:
        """Stop the processes; remove the temporary folder unless ``keep`` (default: keep it
        when the engine logged something, so that the log can be read)."""
        for p in [self.proc, *self.workers]:
            p.terminate()
        for p in [self.proc, *self.workers]:
            p.wait(60)
        self.db.dispose()
        if keep is None:
            keep = self.log_lines() > 0
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


async def send_stream(
    port_for: Callable[[bytes], int], stream: Iterable[bytes], on_ack: Callable[[float, bool], None]
) -> None:
    """One sending connection: each message, then wait for its ACK; ``on_ack(seconds, is_AA)``.

    A "connection" keeps one socket per port it sends to (the ADT and the lab channel)."""
    sockets: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    try:
        for m in stream:
            port = port_for(m)
            if port not in sockets:
                sockets[port] = await asyncio.open_connection("127.0.0.1", port)
            r, w = sockets[port]
            t0 = time.perf_counter()
            w.write(VT + m + FS + CR)
            ack = await r.readuntil(FS + CR)
            on_ack(time.perf_counter() - t0, b"MSA|AA|" in ack)
    finally:
        for _r, w in sockets.values():
            w.close()


async def send_all(port_for, messages: list[bytes], connections: int) -> tuple[float, list[float], int]:
    """Send over ``connections`` connections; returns (seconds, per-message ACK latencies, non-AA count)."""
    latencies: list[float] = []
    bad = 0

    def on_ack(seconds: float, ok: bool) -> None:
        nonlocal bad
        latencies.append(seconds)
        bad += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(send_stream(port_for, messages[k::connections], on_ack) for k in range(connections)))
    return time.perf_counter() - t0, latencies, bad


def wait_until_done(count: Callable[[], int], n: int, stall_seconds: float = 120.0) -> int:
    """Poll ``count()`` until it reaches ``n`` or makes no progress for ``stall_seconds``; the last count."""
    last, since = -1, time.monotonic()
    while True:
        done = count()
        if done >= n:
            return done
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > stall_seconds:
            return done
        time.sleep(0.02)


def run_once(
    messages: list[bytes],
    connections: int,
    env: dict[str, str] | None = None,
    workers: int = 0,
    threads: int = 1,
    *,
    config: Path | None = None,
) -> dict[str, float]:
    """One benchmark run on a fresh engine: ACK rate, end-to-end rate, latency percentiles, CPU."""
    eng = Engine(env, workers, threads, config=config)
    keep = None
    try:
        cpu0, threads0 = eng.cpu_seconds(), eng.thread_cpu()
        t_start = time.perf_counter()
        client0 = time.process_time()
        seconds, lat, bad = asyncio.run(send_all(eng.port_for, messages, connections))
        client = time.process_time() - client0
        done = wait_until_done(eng.done_count, len(messages))
        end_to_end = time.perf_counter() - t_start
        cpu = eng.cpu_seconds() - cpu0
        threads = _per_message(threads0, eng.thread_cpu(), len(messages))
        errors = eng.error_count()
        log_lines = eng.log_lines()
        keep = bool(log_lines or errors or bad or done < len(messages))
    finally:
        eng.stop(keep)
    return {
        "acked": len(messages) / seconds,
        "e2e": done / end_to_end,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "bad": bad,
        "errors": errors,
        "cpu_ms": cpu * 1000 / len(messages),
        "threads": threads,
        "client_cpu_ms": client * 1000 / len(messages),
        "unfinished": len(messages) - done,
        "log_lines": log_lines,
        "dir": str(eng.dir) if keep else "",
    }


# -- anchors ------------------------------------------------------------------------------------


def fsync_limit(seconds: float = 2.0) -> dict[str, float]:
    """Sequential durable commits/s of SQLite with the message store's pragmas (engine/stores/db.py,
    durable=True), one small INSERT per transaction, in the temp filesystem the engine runs use."""
    folder = Path(tempfile.mkdtemp(prefix="bench-fsync-"))
    try:
        db = sqlite3.connect(folder / "fsync.db", isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("create table t (id integer primary key, v blob not null)")
        row = (b"x" * 64,)
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            db.execute("BEGIN IMMEDIATE")  # as the engine's write_transaction
            db.execute("insert into t (v) values (?)", row)
            db.execute("COMMIT")
            count += 1
        db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"commits": count / elapsed, "ms": elapsed * 1000 / count}


async def _bare_ack_server() -> None:
    """The bare server's body (``--bare-ack-server``): two ports, a fixed ACK per frame, nothing stored."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await reader.readuntil(FS + CR)
                msh = frame[frame.find(b"MSH") :].split(b"\r", 1)[0].split(b"|")
                cid = msh[9] if len(msh) > 9 else b""
                writer.write(VT + BARE_ACK % (cid, cid) + FS + CR)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(2)]
    print("bare", *(s.sockets[0].getsockname()[1] for s in servers), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


class BareServer:
    """The bare ACK-only MLLP server in a subprocess, so that it is measured as the engine is."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bare-ack-server"], stdout=subprocess.PIPE, env=dict(os.environ)
        )
        line = self.proc.stdout.readline().split()
        if not line or line[0] != b"bare":
            raise SystemExit("the bare ACK server did not start")
        self.adt, self.lab = int(line[1]), int(line[2])

    def port_for(self, message: bytes) -> int:
        return self.lab if b"|ORU^" in message[:200] else self.adt

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_bare(messages: list[bytes], connections: int) -> dict[str, float]:
    """ACKs/s of the bare server through the same client code, plus both sides' CPU per message."""
    srv = BareServer()
    try:
        cpu0, client0 = srv.cpu_seconds(), time.process_time()
        seconds, lat, bad = asyncio.run(send_all(srv.port_for, messages, connections))
        cpu, client = srv.cpu_seconds() - cpu0, time.process_time() - client0
    finally:
        srv.stop()
    return {
        "acked": len(messages) / seconds,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "bad": bad,
        "cpu_ms": cpu * 1000 / len(messages),
        "client_cpu_ms": client * 1000 / len(messages),
    }


def parse_rates(messages: list[bytes], limit: int = 300) -> dict[str, float]:
    from hl7apy.parser import parse_message

    from engine.formats.hl7 import Message

    sample = [m.decode() for m in messages[:limit]]
    t0 = time.perf_counter()
    for m in sample:
        parse_message(m, find_groups=True)
    apy = len(sample) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for m in sample:
        msg = Message(m)
        for seg in msg.segments:
            _ = seg.fields
    own = len(sample) / (time.perf_counter() - t0)
    return {"hl7apy (find_groups=True)": apy, "engine tokenizer": own}


def floor_cpu(n: int) -> dict[str, float]:
    """``bench/floor.py --json`` in a subprocess (it sets its own stores' environment): CPU ms
    per message by hand, for one connection and for many."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("floor.py")), "-n", str(n), "--json"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return json.loads(out.strip().splitlines()[-1])


def floor_for(floor: dict[str, float], bare: dict, conns: int) -> float | None:
    """The floor's CPU per message for ``conns`` connections: stores by hand plus the sockets."""
    if not floor or conns not in bare:
        return None
    return floor["one" if conns == 1 else "many"] + bare[conns]["cpu_ms"]


def pct(values: list[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (seconds), in ms."""
    values = sorted(values)
    return values[min(int(len(values) * p), len(values) - 1)] * 1000


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = ", " + line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs{model}, Python {sys.version.split()[0]}"


def main() -> None:
    if sys.argv[1:] == ["--bare-ack-server"]:
        asyncio.run(_bare_ack_server())
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run, half ADT, half ORU (default 5000)")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8], help="default: 1 8")
    ap.add_argument("--patients", nargs="+", choices=["many", "one"], default=["many", "one"], help="default: both")
    ap.add_argument("--no-anchors", action="store_true", help="skip the fsync, bare-server and parse anchors")
    ap.add_argument("--quick", action="store_true", help="a smoke run: -n 1000, 1 s fsync loop, 100 parsed messages")
    ap.add_argument(
        "--worker-process", action="store_true", help="processing in an `engine worker` process (private redis-server)"
    )
    ap.add_argument(
        "--process-queue", action="store_true", help="queue.url process://: engine run's own worker process, no broker"
    )
    args = ap.parse_args()
    redis = PrivateRedis().start() if args.worker_process else None
    if redis:
        atexit.register(redis.close)
    queue = {"ENGINE_QUEUE_URL": redis.url} if redis else None
    engine = "engine + 1 worker process" if redis else "engine"
    if args.process_queue:
        queue, engine = {"ENGINE_QUEUE_URL": "process://"}, "engine, process://"
    n = args.n or (1000 if args.quick else 5000)
    command = shlex.join(["python", "bench/mllp_ingest.py", *sys.argv[1:]])
    date = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    sets = {"many": make_messages(n), "one": make_messages(n, patients=1)}
    print(f"{command}\n{date}, {machine()}")
    print(
        f"{n} messages per run (ADT A01/A04/A08 with PID PV1 AL1 DG1 GT1 IN1; ORU with 4 OBX), "
        f"many patients = {n // 4 + 1} MRNs, one patient = 1 MRN"
    )

    fsync_seconds = 1.0 if args.quick else 2.0
    fsync, fsync_before, bare, parse, floor = None, None, {}, {}, {}
    if not args.no_anchors:
        print("\nanchors:")
        fsync_before = fsync_limit(fsync_seconds)["commits"]
        print(f"  fsync limit (SQLite WAL, synchronous=FULL, 1 INSERT per COMMIT)  {fsync_before:8.0f} commits/s")
        for conns in args.connections:
            b = bare[conns] = run_bare(sets["many"], conns)
            print(
                f"  bare ACK server, {conns} connection(s)  {b['acked']:8.0f} ACKs/s   p50 {b['p50']:.2f} ms"
                f"   p99 {b['p99']:.2f} ms   server CPU {b['cpu_ms']:.3f} ms/msg"
                f"   client CPU {b['client_cpu_ms']:.3f} ms/msg   ({b['bad']} not AA)"
            )
        parse = parse_rates(sets["many"], 100 if args.quick else 300)
        for k, v in parse.items():
            print(f"  bare parse, one core, {k:28} {v:8.0f} msg/s")
        floor = floor_cpu(500 if args.quick else 2000)
        print(
            f"  floor (bench/floor.py, by hand: sqlite3, no mapping language)  {floor['one']:.3f} / "
            f"{floor['many']:.3f} ms CPU per message, one / many connections, without sockets"
        )

    results = []
    for who in args.patients:
        for conns in args.connections:
            r = run_once(sets[who], conns, queue, workers=1 if redis else 0)
            results.append((who, conns, r))
            print(f"\n{engine}, {conns} connection(s), {who} patient(s):")
            print(f"  ACKed (durable)   {r['acked']:8.0f} msg/s   ({r['bad']} not AA)")
            print(f"  end-to-end        {r['e2e']:8.0f} msg/s   (all SENT/FILTERED/ERROR; {r['errors']} ERROR)")
            print(f"  ACK latency       p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms")
            print(f"  engine CPU        {r['cpu_ms']:8.2f} ms/msg   (load client: {r['client_cpu_ms']:.2f} ms/msg)")
            print(f"  by thread         {_by_thread(r)}")
            ratios = []
            if fsync_before:
                ratios.append(f"{100 * r['acked'] / fsync_before:.0f}% of the fsync limit (measured before)")
            if conns in bare:
                ratios.append(f"{100 * r['acked'] / bare[conns]['acked']:.0f}% of the bare ACK server")
            if ratios:
                print(f"  ACK rate is       {', '.join(ratios)}")
            least = floor_for(floor, bare, conns)
            if least:
                print(f"  engine CPU is     {r['cpu_ms'] / least:.1f}x the floor ({least:.2f} ms/msg with the sockets)")
            if r["unfinished"]:
                print(f"  !! {r['unfinished']} message(s) not in a final status after 120 s without progress")
            if r["log_lines"]:
                print(f"  !! the engine logged {r['log_lines']} line(s): {r['dir']}")
    if fsync_before:
        fsync_after = fsync_limit(fsync_seconds)["commits"]
        fsync = (fsync_before + fsync_after) / 2
        print(
            f"\nfsync limit again, after the runs: {fsync_after:.0f} commits/s "
            f"(before: {fsync_before:.0f}; the table uses the mean, {fsync:.0f})"
        )

    print(f"\n`{command}` ({date}; {machine()})\n")
    print(
        "| run | ACK msg/s | end-to-end msg/s | ACK p50 ms | ACK p99 ms | engine CPU ms/msg | client CPU ms/msg "
        "| ACK vs fsync limit | ACK vs bare server | CPU vs floor |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for who, conns, r in results:
        vs_fsync = f"{100 * r['acked'] / fsync:.0f}%" if fsync else "-"
        vs_bare = f"{100 * r['acked'] / bare[conns]['acked']:.0f}%" if conns in bare else "-"
        least = floor_for(floor, bare, conns)
        vs_floor = f"{r['cpu_ms'] / least:.1f}x" if least else "-"
        print(
            f"| {engine}, {conns} conn, {who} patient{'s' if who == 'many' else ''} "
            f"| {r['acked']:.0f} | {r['e2e']:.0f} "
            f"| {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} "
            f"| {vs_fsync} | {vs_bare} | {vs_floor} |"
        )
    if fsync:
        print(
            f"| anchor: fsync limit (SQLite WAL, synchronous=FULL), before / after the runs "
            f"| {fsync_before:.0f} / {fsync_after:.0f} commits/s |" + " |" * 8
        )
    for conns, b in bare.items():
        print(
            f"| anchor: bare ACK server, {conns} conn | {b['acked']:.0f} | | {b['p50']:.2f} | {b['p99']:.2f} "
            f"| {b['cpu_ms']:.3f} | {b['client_cpu_ms']:.3f} | | | |"
        )
    for k, v in parse.items():
        print(f"| anchor: bare parse, {k} | {v:.0f} msg/s | | | | | | | | |")
    if floor:
        print(
            f"| anchor: floor by hand (bench/floor.py), one / many connections, no sockets | | | | "
            f"| {floor['one']:.3f} / {floor['many']:.3f} | | | | |"
        )
    print("\nEngine CPU ms per message by thread (of which system time):\n")
    for who, conns, r in results:
        print(f"- {engine}, {conns} conn, {who} patient{'s' if who == 'many' else ''}: {_by_thread(r)}")


def _by_thread(r: dict) -> str:
    """``main 0.52 (0.08), committer 0.80 (0.33), ...``: the threads that used 0.01 ms per message
    or more, busiest first, then what ended threads and child processes used."""
    busy = sorted(((v, k) for k, v in r["threads"].items() if v[0] >= 0.01), reverse=True)
    parts = [f"{k} {v[0]:.2f} ({v[1]:.2f})" for v, k in busy]
    rest = r["cpu_ms"] - sum(v[0] for v in r["threads"].values())
    if rest >= 0.01:
        parts.append(f"ended threads and child processes {rest:.2f}")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
