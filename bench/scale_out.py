"""Scale-out benchmark: end-to-end messages/s with 1, 2 and 4 ``engine worker`` processes on
Redis + PostgreSQL, and the CPU each role spends per message.

Two cases, each on services of its own (a PostgreSQL cluster from initdb and a redis-server,
both on free ports in temporary directories; the machine's own services are never touched):

- ``io``: one channel, MLLP in, one ``type: mllp`` destination to a downstream test listener
  (tests/downstream.py, in a process of its own) that holds each ACK back ``--delay-ms``. Each
  worker runs one thread, so one worker can deliver at most 1000 / delay-ms messages a second:
  this is the case where more workers must mean more throughput on a small machine.
- ``cpu``: the sample channels of config/channels.yaml, mapped into the clinical and PM stores
  (messages, clinical and pm are three databases of the private cluster): bound by CPU, so on a
  2-core machine more workers cannot add much.

Each run: a fresh database and Redis, ``engine db upgrade``, ``engine run`` (the listener) and
N ``engine worker --threads 1``; the client sends the same N ADT/ORU messages (over n/4
patients, one patient always on the same connection) on ``--connections`` connections, waiting
for each ACK, and the run ends when every message is in a final status (SENT, FILTERED, ERROR)
in the message store. CPU is read from /proc before and after: the listener, the workers, every
process of the PostgreSQL cluster (the postmaster's own, its live backends', and its reaped
children's), and redis-server.

    python bench/scale_out.py [-n 4000] [--workers 1 2 4] [--connections 8] [--delay-ms 5] [--case both]

Figures are printed, never asserted. The machine may be shared: each run prints how many cores
it kept busy and how many the machine's other processes did meanwhile, since a run that finds
both cores taken measures the neighbours more than the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import PrivatePostgres, PrivateRedis, ServiceUnavailable, free_port, sample_ports  # noqa: E402

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
FINAL = ("SENT", "FILTERED", "ERROR")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STALL_SECONDS = 60.0  # no message reached a final status for this long: report what was done and go on

# -- messages ----------------------------------------------------------------------------------------

ADT = (
    "MSH|^~\\&|REG|NORTHCLINIC|ENGINE|HUB|{ts}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1|||AL|NE\r"
    "EVN|{trigger}|{ts}\r"
    "PID|1||{mrn}^^^NCH^MR||{family}^{given}^Q||19{yy}0412|{sex}|||{num} Elm St^^Springfield^IL^62704^USA"
    "||(217)555-{phone}|||M||ACC{mrn}\r"
    "PV1|1|I|4W^401^B^NCH|||||1234^Carter^Ann^^^Dr||MED||||1|||1234^Carter^Ann^^^Dr|IN|V{mrn}{visit}^^^NCH^VN"
    "|BC|||||||||||||||||||NCH||A|||{ts}\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives|20100101\r"
    "DG1|1||I10^Essential hypertension^I10||{ts}|A\r"
    "GT1|1||{family}^{given}||{num} Elm St^^Springfield^IL^62704|(217)555-{phone}|||||SEL\r"
    "IN1|1|BCBS01^PPO|60054|Blue Cross Blue Shield|PO Box 1^^Chicago^IL^60601|||GRP{yy}|Acme Corp|||20240101"
    "|20261231|||{family}^{given}|SEL|19{yy}0412||||||||||||||||||MEM{mrn}\r"
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


@dataclass(frozen=True)
class Msg:
    control_id: str
    patient: int
    oru: bool
    raw: bytes


def make_messages(n: int, patients: int, seed: int = 7) -> list[Msg]:
    """``n`` synthetic messages, ADT and ORU alternating, each for one of ``patients`` patients
    drawn at random (so one patient's messages are sometimes close together, as in a real feed)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        p = rnd.randrange(patients)
        glu = rnd.randint(60, 200)
        f = dict(
            ts=f"2026{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}0930",
            cid=f"B{i:08d}",
            mrn=f"{100000 + p:06d}",
            visit=i % 3,
            family=rnd.choice(FAMILIES),
            given=rnd.choice(GIVEN),
            yy=rnd.randint(40, 99),
            sex=rnd.choice("MF"),
            num=rnd.randint(1, 999),
            phone=f"{rnd.randint(0, 9999):04d}",
            trigger=rnd.choice(["A01", "A04", "A08", "A08"]),
            glu=glu,
            flag="H" if glu > 99 else ("L" if glu < 70 else "N"),
        )
        oru = bool(i % 2)
        out.append(Msg(f["cid"], p, oru, (ORU if oru else ADT).format(**f).encode()))
    return out


async def send_all(messages: list[Msg], connections: int, port_for) -> tuple[float, int]:
    """Send over ``connections`` lanes, each waiting for every ACK; one patient always on the same
    lane (as a real feed keeps one patient in order). Returns (seconds, answers other than AA)."""
    lanes: list[list[Msg]] = [[] for _ in range(connections)]
    for m in messages:
        lanes[m.patient % connections].append(m)
    bad = 0

    async def lane(chunk: list[Msg]) -> None:
        nonlocal bad
        conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        try:
            for m in chunk:
                port = port_for(m)
                if port not in conns:
                    conns[port] = await asyncio.open_connection("127.0.0.1", port)
                r, w = conns[port]
                w.write(VT + m.raw + FS + CR)
                ack = await r.readuntil(FS + CR)
                bad += b"MSA|AA|" not in ack
        finally:
            for _r, w in conns.values():
                w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(c) for c in lanes if c))
    return time.perf_counter() - t0, bad


# -- CPU accounting ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system, all threads) of ``pid``; with ``children`` also those of its
    children it has waited for (a PostgreSQL backend that ended during the run is counted there)."""
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` (with its reaped children) and of every live descendant."""
    if not root:
        return 0.0  # not running: pid 0 would make every process of the machine a descendant
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))) is not None:
            parent[int(entry.name)] = int(f[1])
    total = proc_cpu(root, children=True)
    for pid in parent:
        p, depth = parent.get(pid), 0
        while p and p != root and depth < 8:
            p, depth = parent.get(p), depth + 1
        if p == root:
            total += proc_cpu(pid, children=True)
    return total


def machine_busy() -> float:
    """CPU seconds all processes of the machine have spent (every core), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


ROLES = ("listener", "workers", "postgresql", "redis")


# -- the downstream MLLP receiver, in a process of its own ---------------------------------------------


def _downstream_main(conn, delay: float) -> None:
    """Serve a tests/downstream.py Downstream until told to stop; answer "counts" requests.

    A process of its own: in the benchmark's process the load client would hold the GIL for up
    to the 5 ms switch interval while an ACK is due, adding its own delay to every delivery."""
    from downstream import Downstream

    with Downstream(ack_delay_seconds=delay) as down:
        conn.send(down.port)
        while (cmd := conn.recv()) != "stop":
            if cmd == "counts":
                conn.send(dict(down.counts()))
    conn.send("stopped")


class DownstreamProcess:
    def __init__(self, delay: float):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_downstream_main, args=(child, delay), daemon=True)
        self.proc.start()
        self.port = self._conn.recv()

    def counts(self) -> dict[str, int]:
        self._conn.send("counts")
        return self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("stop")
            self._conn.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# -- one run ---------------------------------------------------------------------------------------


IO_CONFIG = """\
stores:
  messages: {{url: {messages}}}
queue:
  url: {queue}
mappings_dir: {mappings}
channels:
  - name: forward
    source: {{type: mllp, host: 127.0.0.1, port: {port}}}
    destinations:
      - name: down
        type: mllp
        host: 127.0.0.1
        port: {down_port}
"""


@dataclass
class Result:
    case: str
    workers: int
    n: int
    acked: float = 0.0  # msg/s the client got its ACKs at
    e2e: float = 0.0  # msg/s until every message was final
    statuses: dict[str, int] = field(default_factory=dict)
    not_aa: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds over the run
    downstream: tuple[int, int, int] | None = None  # (received, repeated, missing)
    stalled: bool = False
    seconds: float = 0.0  # the window CPU was read over: first message sent until the poll saw all final

    def ours(self) -> float:
        """Cores this run kept busy on average: the engine, its services, the client and downstream."""
        return sum(self.cpu.get(role, 0.0) for role in (*ROLES, "bench")) / self.seconds if self.seconds else 0.0

    def others(self) -> float:
        """Cores the machine's other processes kept busy meanwhile (it is shared: a busy
        neighbour slows the runs that need both cores most, the 4-worker ones)."""
        busy = self.cpu.get("machine", 0.0) / self.seconds if self.seconds else 0.0
        return max(busy - self.ours(), 0.0)

    def ms_per_msg(self, role: str) -> float:
        return self.cpu.get(role, 0.0) * 1000 / self.n


class Cluster:
    """Databases on the shared private PostgreSQL, a Redis of its own, ``engine run`` and workers."""

    def __init__(self, pg: PrivatePostgres, case: str, work: Path):
        self.pg, self.case, self.work = pg, case, work
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.listener: subprocess.Popen | None = None
        self.down: DownstreamProcess | None = None
        self.redis: PrivateRedis | None = None
        self.dbs = ["messages"] if case == "io" else ["messages", "clinical", "pm"]
        self._admin = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"

    def setup(self, delay: float) -> None:
        """Databases, Redis, the downstream (io) and the config; ``close()`` undoes what was done."""
        import psycopg

        pg, case, work = self.pg, self.case, self.work
        with psycopg.connect(self._admin, autocommit=True) as c:
            for db in self.dbs:
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                c.execute(f'CREATE DATABASE "{db}"')
        self.redis = PrivateRedis().start()  # an empty queue each run
        url = {db: f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/{db}" for db in self.dbs}
        self.env = dict(
            os.environ,
            ENGINE_QUEUE_URL=self.redis.url,
            ENGINE_LOG_LEVEL="WARNING",  # figures about the work, not about logging it
            PYTHONUNBUFFERED="1",
        )
        if case == "io":
            self.down = DownstreamProcess(delay)
            self.port = free_port()
            self.config = work / "io.yaml"
            self.config.write_text(
                IO_CONFIG.format(  # JSON strings are YAML strings: quoted whatever the paths hold
                    messages=json.dumps(url["messages"]),
                    queue=json.dumps(self.redis.url),
                    mappings=json.dumps(str(ROOT / "mappings")),
                    port=self.port,
                    down_port=self.down.port,
                )
            )
        else:
            self.config = ROOT / "config" / "channels.yaml"
            ports = sample_ports()
            self.lab, self.adt = int(ports["ENGINE_LAB_PORT"]), int(ports["ENGINE_ADT_PORT"])
            self.env.update(
                ports,
                ENGINE_MESSAGE_STORE_URL=url["messages"],
                ENGINE_CLINICAL_STORE_URL=url["clinical"],
                ENGINE_PM_STORE_URL=url["pm"],
            )
        out = self._engine("db", "upgrade", "--config", str(self.config))
        if out.returncode != 0:
            raise RuntimeError(f"engine db upgrade failed: {out.stderr[-2000:]}")

    def port_for(self, m: Msg) -> int:
        if self.case == "io":
            return self.port
        return self.lab if m.oru else self.adt

    def _engine(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "engine.cli", *args]
        return subprocess.run(cmd, check=False, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        p = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args, "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.procs.append(p)
        return p

    def start(self, workers: int) -> None:
        import yaml

        self.listener = self._spawn("listener", "run")
        channels = len(yaml.safe_load(self.config.read_text())["channels"])
        while channels:
            line = self.listener.stdout.readline()
            if not line:
                raise RuntimeError(f"engine run exited: {self._tail('listener')}")
            channels -= line.startswith(b"channel ")
        # --threads 1: one dramatiq worker thread per process, so each process works one batch
        # at a time (and holds one connection of its mllp destination's pool)
        self.workers = [self._spawn(f"worker{k}", "worker", "--threads", "1") for k in range(workers)]
        for k, w in enumerate(self.workers):
            if not w.stdout.readline().startswith(b"worker "):
                raise RuntimeError(f"engine worker did not start: {self._tail(f'worker{k}')}")

    def _tail(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")[-2000:]

    def cpu(self) -> dict[str, float]:
        return {
            "listener": proc_cpu(self.listener.pid),
            "workers": sum(proc_cpu(w.pid) for w in self.workers),
            "postgresql": tree_cpu(self.pg.postmaster_pid() or 0),
            "redis": proc_cpu(self.redis.proc.pid),
            "bench": time.process_time() + (proc_cpu(self.down.proc.pid) if self.down else 0.0),
            "machine": machine_busy(),
        }

    def progress(self, conn) -> tuple[int, dict[str, int], datetime | None]:
        """(messages in a final status, count per status, when the last one was written)."""
        rows = conn.execute("SELECT status, count(*), max(updated_at) FROM messages GROUP BY status").fetchall()
        statuses = {s: c for s, c, _ in rows}
        last = max((t for s, _, t in rows if s in FINAL and t is not None), default=None)
        return sum(c for s, c in statuses.items() if s in FINAL), statuses, last

    def close(self) -> None:
        import psycopg

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.down:
            self.down.close()
        if self.redis:
            self.redis.close()
        with psycopg.connect(self._admin, autocommit=True) as c:
            for db in self.dbs:
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def run_once(pg: PrivatePostgres, case: str, messages: list[Msg], workers: int, args) -> Result:
    import psycopg

    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{case}-"))
    res = Result(case, workers, len(messages))
    cluster = Cluster(pg, case, work)
    try:
        cluster.setup(args.delay_ms / 1000)
        cluster.start(workers)
        time.sleep(1.0)  # let the workers' first queue polls and pool connections settle
        db = f"host=127.0.0.1 port={pg.port} user=postgres dbname=messages"
        with psycopg.connect(db, autocommit=True) as conn:
            cpu0 = cluster.cpu()
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            seconds, res.not_aa = asyncio.run(send_all(messages, args.connections, cluster.port_for))
            res.acked = len(messages) / seconds
            done, last_change, seen = 0, time.monotonic(), -1
            # 0.2 s polls cost the store little; the end time comes from the rows, not the poll
            while True:
                done, res.statuses, last = cluster.progress(conn)
                if done >= len(messages):
                    break
                if done != seen:
                    seen, last_change = done, time.monotonic()
                elif time.monotonic() - last_change > STALL_SECONDS:
                    res.stalled = True
                    break
                time.sleep(0.2)
            cpu1 = cluster.cpu()
            polled = time.perf_counter() - t0
            elapsed = (last - started).total_seconds() if last and not res.stalled else polled
            res.e2e, res.seconds = done / elapsed, polled
        res.cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        if cluster.down:
            counts = cluster.down.counts()
            sent = {m.control_id for m in messages}
            res.downstream = (
                sum(counts.values()),
                sum(c - 1 for c in counts.values() if c > 1),
                len(sent - counts.keys()),
            )
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    return res


# -- report --------------------------------------------------------------------------------------------


def print_run(r: Result, base: Result | None) -> None:
    speed = f"{r.e2e / base.e2e:5.2f}x {base.workers} worker(s)" if base and base.e2e else "  -"
    others = {s: c for s, c in r.statuses.items() if s != "SENT"}
    line = (
        f"  {r.workers} worker(s): end-to-end {r.e2e:7.1f} msg/s  ({speed})   ACKed {r.acked:7.0f} msg/s"
        f"   statuses {others or 'all SENT'}"
    )
    if r.not_aa:
        line += f"   {r.not_aa} not AA"
    if r.downstream:
        got, repeated, missing = r.downstream
        line += f"   downstream: {got} received, {repeated} repeated, {missing} missing"
    if r.stalled:
        line += f"   STALLED ({STALL_SECONDS:.0f} s without progress)"
    print(line, flush=True)
    per = "  ".join(f"{role} {r.ms_per_msg(role):.2f}" for role in (*ROLES, "bench"))
    print(f"             CPU ms/msg: {per}", flush=True)
    print(
        f"             cores busy: this run {r.ours():.2f}, other processes {r.others():.2f}, of {os.cpu_count()}",
        flush=True,
    )


def print_table(results: list[Result]) -> None:
    label = {"io": "I/O-bound", "cpu": "CPU-bound"}
    head = [f"{label[r.case]}, {r.workers} worker{'s' if r.workers > 1 else ''}" for r in results]
    print("\nCPU ms per message, by role (the load client and the test downstream not included):\n")
    print("| role | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(results))
    names = {
        "listener": "listener (`engine run`)",
        "workers": "workers (`engine worker`, sum)",
        "postgresql": "PostgreSQL (all processes)",
        "redis": "redis-server",
    }
    for role in ROLES:
        print(f"| {names[role]} | " + " | ".join(f"{r.ms_per_msg(role):.2f}" for r in results) + " |")
    total = [sum(r.ms_per_msg(role) for role in ROLES) for r in results]
    print("| **total** | " + " | ".join(f"**{t:.2f}**" for t in total) + " |")
    print("| end-to-end msg/s | " + " | ".join(f"{r.e2e:.0f}" for r in results) + " |")
    first = {}
    for r in results:
        first.setdefault(r.case, r)
    speed = [f"{r.e2e / first[r.case].e2e:.2f}x" if first[r.case].e2e else "-" for r in results]
    print("| speed-up (vs the case's first run) | " + " | ".join(speed) + " |")
    print("| other processes (cores) | " + " | ".join(f"{r.others():.2f}" for r in results) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=4000, help="messages per run (half ADT, half ORU)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker processes per run")
    ap.add_argument("--connections", type=int, default=8, help="client connections (each waits for every ACK)")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="io case: the downstream's delay before each ACK")
    ap.add_argument("--patients", type=int, help="distinct patients (default n/4)")
    ap.add_argument("--case", choices=["io", "cpu", "both"], default="both")
    args = ap.parse_args()
    # SIGTERM as Ctrl-C: the finally blocks stop the engine processes and the private services
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    patients = args.patients or max(1, args.n // 4)

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"{args.n} messages (ADT/ORU alternating) over {patients} patients, {args.connections} client connections, "
        f"each waiting for its ACKs; every worker is one process with --threads 1 (--threads T runs T dramatiq "
        f"threads in one process, each working one batch at a time)"
    )
    messages = make_messages(args.n, patients)
    try:
        pg = PrivatePostgres().start()
    except ServiceUnavailable as exc:
        raise SystemExit(f"cannot run: {exc}") from None
    cases = ["io", "cpu"] if args.case == "both" else [args.case]
    results: list[Result] = []
    try:
        print(f"private PostgreSQL {pg.bin.parent.name} (fsync=off) and redis-server on free ports")
        for case in cases:
            if case == "io":
                ceiling = 1000 / args.delay_ms
                print(
                    f"\nI/O-bound: MLLP in -> one mllp destination, a downstream holding each ACK {args.delay_ms:g} ms "
                    f"(one worker thread: at most {ceiling:.0f} msg/s)"
                )
            else:
                print("\nCPU-bound: the sample channels (config/channels.yaml) mapped into the clinical and PM stores")
            base = None
            for w in args.workers:
                r = run_once(pg, case, messages, w, args)
                base = base or r
                results.append(r)
                print_run(r, base)
    finally:
        pg.close()
    print_table(results)


if __name__ == "__main__":
    main()
