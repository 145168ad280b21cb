"""FHIR ingest benchmark: transaction Bundles of Observations into the clinical store through the
``fhir`` source of a real ``engine run``, beside the bare fhir.resources validation rate of the
same Bundles.

    python bench/fhir_ingest.py [--bundles 3000] [--connections 8] [--observations 20]
                                [--patients N] [--warmup 200] [--store-url URL]
                                [--profile [--profile-raw PATH] [--top 25]]

The engine runs a channel like the sample FHIR channel (config/channels.yaml): a ``fhir`` source,
Patient and Observation mapped into the clinical store by fhir_patient_clinical and
fhir_observation_clinical. Stores are the embedded default (SQLite files in a temporary folder,
the in-process queue) unless ``--store-url`` names a PostgreSQL database: the message and
clinical stores then live in a schema of their own there (``engine db upgrade``), dropped after.

Each Bundle is one patient's panel: ``--observations`` lab Observations (each with an
identifier, LOINC code, subject.identifier, a dateTime with offset, a Quantity, an
interpretation and a reference range), patients drawn from ``--patients`` (default: one per two
Bundles). Each connection is an HTTP/1.1 keep-alive connection that sends a Bundle and waits
for its answer before it sends the next, as FHIR clients do; the answer waits until the Bundle
is committed and mapped, so a 200 means its rows are in the clinical store. ``--warmup`` Bundles
go first, untimed.

Figures:

Bundles/s, resources/s   Bundles (Observations) answered 200 / seconds from the first send to
                         the last answer; the Observation rows in the clinical store are counted
                         at the end and must be every one sent (warm-up included).
latency p50 / p99        from writing a request to reading its whole answer, per Bundle.
engine CPU               user + system CPU of the engine processes (listener, workers) over the timed part
                         (/proc/<pid>/stat), per Observation: stable on a shared machine where
                         wall-clock rates are not.
client CPU               CPU of this process while it sends, per Observation.
bare validation          fhir.resources' R4B models on one core, in this process, on the same
                         Bundles: the whole Bundle (Bundle.model_validate of the parsed JSON), and
                         the Observations one by one; Observations/s.

``--profile`` then runs the same load on a fresh engine with py-spy (``pip install py-spy``; on
PATH, or ``--py-spy PATH``) sampling the thread that holds the GIL in the engine process over the
timed part (``--gil --nonblocking``), and prints the functions with the most time, inclusive
(cumulative) and self, and self time per package. The samples give each function's share; its
ms per Observation is that share of the profiled run's engine CPU from /proc (py-spy also counts
a GIL holder the OS has taken off the CPU, so raw sample time overstates on a shared machine).
``--profile-raw PATH`` keeps the collapsed stacks for a flame graph. py-spy slows the engine a
little: the profiled run's own rate is printed beside.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from mllp_ingest import _proc_cpu, machine, pct  # noqa: E402
from services import PrivateRedis, free_port  # noqa: E402

from engine.channels.fhir_source import token_hash  # noqa: E402

MRN_SYSTEM = "https://northclinic.example.org/mrn"  # NORTHCLINIC (mappings/tables/identifier_system.yaml)
OBS_SYSTEM = "https://northclinic.example.org/obs"
PANEL = [  # LOINC, display, unit, low, high
    ("2345-7", "Glucose", "mg/dL", 70, 99),
    ("2951-2", "Sodium", "mmol/L", 136, 145),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1),
    ("2075-0", "Chloride", "mmol/L", 98, 107),
    ("2028-9", "Carbon dioxide", "mmol/L", 22, 29),
    ("3094-0", "Urea nitrogen", "mg/dL", 7, 20),
    ("2160-0", "Creatinine", "mg/dL", 0.6, 1.2),
    ("17861-6", "Calcium", "mg/dL", 8.6, 10.3),
    ("2885-2", "Protein", "g/dL", 6.0, 8.3),
    ("1751-7", "Albumin", "g/dL", 3.5, 5.0),
    ("1975-2", "Bilirubin", "mg/dL", 0.1, 1.2),
    ("6768-6", "Alkaline phosphatase", "U/L", 44, 147),
    ("1742-6", "ALT", "U/L", 7, 56),
    ("1920-8", "AST", "U/L", 10, 40),
    ("6690-2", "Leukocytes", "10*3/uL", 4.5, 11.0),
    ("789-8", "Erythrocytes", "10*6/uL", 4.2, 5.9),
    ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5),
    ("4544-3", "Hematocrit", "%", 36, 50),
    ("777-3", "Platelets", "10*3/uL", 150, 400),
    ("4548-4", "Hemoglobin A1c", "%", 4.0, 5.6),
]
TARGET = 2500  # resources/s stored: the Performance section
CONFIG = """\
stores:
  messages: {{url: "{url_messages}"}}
  clinical: {{url: "{url_clinical}"}}
{queue}mappings_dir: {mappings}
channels:
  - name: fhir-in
    source:
      type: fhir
      port: {port}
      tokens: "bench:{digest}"
      resources: [Patient, Observation]
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: [fhir_patient_clinical, fhir_observation_clinical]}}
"""


# -- the load --------------------------------------------------------------------------------------


def make_bundle(i: int, patient: int, observations: int, rnd: random.Random) -> dict:
    """Bundle ``i``: ``observations`` results of patient ``patient`` (MRN B<patient>), new rows each."""
    entries = []
    for k in range(observations):
        code, display, unit, low, high = PANEL[k % len(PANEL)]
        value = round(rnd.uniform(low * 0.8, high * 1.2), 1)
        flag = "H" if value > high else ("L" if value < low else "N")
        obs = {
            "resourceType": "Observation",
            "identifier": [{"system": OBS_SYSTEM, "value": f"BENCH-{i:07d}-{k:02d}"}],
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
            "subject": {"identifier": {"system": MRN_SYSTEM, "value": f"B{patient:07d}"}},
            "effectiveDateTime": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T09:{k % 60:02d}:00-07:00",
            "issued": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T11:00:00-07:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "interpretation": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}
                    ]
                }
            ],
            "referenceRange": [{"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}],
        }
        entries.append({"fullUrl": f"urn:uuid:{uuid.UUID(int=rnd.getrandbits(128))}", "resource": obs,
                        "request": {"method": "POST", "url": "Observation"}})  # fmt: skip
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def make_bundles(n: int, observations: int, patients: int, start: int = 0, seed: int = 11) -> list[bytes]:
    rnd = random.Random(seed + start)
    return [
        json.dumps(make_bundle(i, rnd.randrange(patients), observations, rnd), separators=(",", ":")).encode()
        for i in range(start, start + n)
    ]


def request_bytes(port: int, token: str, body: bytes) -> bytes:
    head = (
        f"POST /fhir HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/fhir+json\r\nAccept: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def connection(port: int, requests: list[bytes], latencies: list[float], statuses: Counter) -> None:
    """One keep-alive HTTP/1.1 connection: each request, then its whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in requests:
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[int(head[9:12])] += 1
    finally:
        writer.close()


async def send_all(port: int, requests: list[bytes], connections: int) -> tuple[float, list[float], Counter]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    t0 = time.perf_counter()
    lanes = [requests[k::connections] for k in range(connections)]
    await asyncio.gather(*(connection(port, lane, latencies, statuses) for lane in lanes if lane))
    return time.perf_counter() - t0, latencies, statuses


# -- the engine ------------------------------------------------------------------------------------


class Engine:
    """``engine run`` on a one-channel config in a temporary folder (SQLite there, or a fresh
    schema of ``store_url``)."""

    def __init__(self, store_url: str | None, workers: int = 0):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-fhir-"))
        self.redis = PrivateRedis().start() if workers else None  # an empty queue of its own
        self.workers: list[subprocess.Popen] = []
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.schema = None
        if store_url:
            self.schema = f"bench_fhir_{uuid.uuid4().hex[:10]}"
            self.admin = create_engine(store_url)
            with self.admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            sep = "&" if "?" in store_url else "?"
            messages = clinical = f"{store_url}{sep}options=-csearch_path%3D{self.schema}"
        else:
            messages, clinical = f"sqlite:///{self.dir}/messages.db", f"sqlite:///{self.dir}/clinical.db"
        self.config = self.dir / "channels.yaml"
        self.config.write_text(
            CONFIG.format(
                url_messages=messages,
                url_clinical=clinical,
                mappings=ROOT / "mappings",
                port=self.port,
                digest=token_hash(self.token),
                queue=f"queue: {{url: {json.dumps(self.redis.url)}}}\n" if self.redis else "",
            )
        )
        env = dict(os.environ, ENGINE_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        cli = [sys.executable, "-m", "engine.cli"]
        if store_url:
            subprocess.run([*cli, "db", "upgrade", "--config", str(self.config)], cwd=ROOT, env=env, check=True,
                           capture_output=True)  # fmt: skip
        self.log = open(self.dir / "engine.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [*cli, "run", "--config", str(self.config)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log
        )
        line = self.proc.stdout.readline()
        if not line.startswith(b"channel "):
            self.proc.wait(30)
            raise SystemExit((self.dir / "engine.log").read_text()[-3000:])
        for _ in range(workers):  # scale-out: the listener answers, these map and store
            worker = [*cli, "worker", "--config", str(self.config), "--threads", "2"]
            self.workers.append(subprocess.Popen(worker, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log))
        self.clinical = create_engine(clinical)
        self.messages = create_engine(messages)

    def cpu_seconds(self) -> float:
        """The listener's and the workers' CPU (not redis-server's)."""
        return _proc_cpu(self.proc.pid) + sum(_proc_cpu(w.pid) for w in self.workers)

    def observation_rows(self) -> int:
        with self.clinical.connect() as c:
            return c.execute(text("SELECT count(*) FROM observation")).scalar()

    def statuses(self) -> dict[str, int]:
        with self.messages.connect() as c:
            return dict(c.execute(text("SELECT status, count(*) FROM messages GROUP BY status")).all())

    def log_lines(self) -> int:
        return len((self.dir / "engine.log").read_bytes().splitlines())

    def stop(self) -> None:
        for proc in (self.proc, *self.workers):
            proc.send_signal(signal.SIGTERM)
        for proc in (self.proc, *self.workers):
            proc.wait(60)
        if self.redis is not None:
            self.redis.close()
        self.log.close()
        self.clinical.dispose()
        self.messages.dispose()
        if self.schema:
            with self.admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.admin.dispose()
        if not self.log_lines():
            shutil.rmtree(self.dir, ignore_errors=True)


def run_once(args, warm: list[bytes], timed: list[bytes], py_spy: str | None = None) -> dict:
    """Warm-up, then the timed load on a fresh engine; with ``py_spy``, sampled over the timed part."""
    eng = Engine(args.store_url, args.workers)
    spy = None
    try:
        asyncio.run(send_all(eng.port, [request_bytes(eng.port, eng.token, b) for b in warm], args.connections))
        requests = [request_bytes(eng.port, eng.token, b) for b in timed]
        if py_spy:
            raw = eng.dir / "profile.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(eng.proc.pid), "--rate", str(args.rate), "--format", "raw",
                 "--function", "--gil", "--full-filenames", "--nonblocking", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
        cpu0, client0 = eng.cpu_seconds(), time.process_time()
        seconds, lat, statuses = asyncio.run(send_all(eng.port, requests, args.connections))
        cpu, client = eng.cpu_seconds() - cpu0, time.process_time() - client0
        profile = None
        if spy:
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=120)
            if raw.exists():
                profile = read_profile(raw)
                if args.profile_raw:
                    shutil.copyfile(raw, args.profile_raw)
            else:
                profile = err.decode()
        resources = len(timed) * args.observations
        return {
            "seconds": seconds,
            "bundles_s": statuses[200] / seconds,
            "resources_s": statuses[200] * args.observations / seconds,
            "p50": pct(lat, 0.5),
            "p99": pct(lat, 0.99),
            "statuses": dict(statuses),
            "cpu_ms": cpu * 1000 / resources,
            "cpu_cores": cpu / seconds,
            "client_cpu_ms": client * 1000 / resources,
            "rows": eng.observation_rows(),
            "expected_rows": (len(warm) + len(timed)) * args.observations,
            "messages": eng.statuses(),
            "log_lines": eng.log_lines(),
            "dir": str(eng.dir),
            "profile": profile,
        }
    finally:
        if spy and spy.poll() is None:
            spy.kill()
        eng.stop()


# -- anchors and the profile -----------------------------------------------------------------------


def bare_validation(bundles: list[bytes], seconds: float = 3.0) -> dict[str, float]:
    """Observations/s of fhir.resources' R4B models on one core: whole Bundles, and one by one."""
    from fhir.resources.R4B import get_fhir_model_class

    bundle_model, obs_model = get_fhir_model_class("Bundle"), get_fhir_model_class("Observation")
    parsed = [json.loads(b) for b in bundles]

    def each(d: dict) -> None:
        for e in d["entry"]:
            obs_model.model_validate(e["resource"])

    out = {}
    for name, work in (
        ("R4B Bundle.model_validate, whole Bundle", bundle_model.model_validate),
        ("R4B Observation.model_validate, each entry", each),
        ("json.loads + whole Bundle", None),
    ):
        done, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds:
            for raw, d in zip(bundles, parsed, strict=True):
                if work is None:
                    bundle_model.model_validate(json.loads(raw))
                else:
                    work(d)
                done += len(d["entry"])
                if time.process_time() - t0 >= seconds:
                    break
        out[name] = done / (time.process_time() - t0)
    return out


def read_profile(path: Path) -> dict:
    """py-spy's raw (collapsed) stacks -> samples per function: self (the leaf) and inclusive."""
    own: Counter = Counter()
    incl: Counter = Counter()
    package: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        total += n
        if frames:
            own[frames[-1]] += n
            package[_package(frames[-1])] += n
            for f in set(frames):
                incl[f] += n
    return {"total": total, "self": own, "inclusive": incl, "package": package}


def _package(frame: str) -> str:
    """Where a ``_short`` frame's self time goes: an engine module, a package, or the stdlib."""
    where = frame.partition(" (")[2].rsplit(":", 1)[0]
    if where.startswith("engine/"):
        return where
    return where.split("/", 1)[0]


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py:12)``; the stdlib's
    files as ``stdlib/json/decoder.py``, the engine's from the repository root."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif where.startswith(f"{ROOT}/"):
        where = where[len(str(ROOT)) + 1 :]
    elif (m := re.search(r"/python3\.\d+/(.*)", where)) is not None:
        where = f"stdlib/{m.group(1)}"
    return f"{name} ({where})" if where else name


def print_profile(profile: dict | str, rate: int, resources: int, top: int, cpu_ms: float) -> None:
    """The hot spots of a py-spy profile (``read_profile``), self and inclusive, per Observation."""
    if isinstance(profile, str):
        print(f"  py-spy wrote no profile: {profile.strip()[-500:]}")
        return
    # py-spy counts the GIL holder even while the OS has it off the CPU (2 shared cores), so the
    # samples give the shares; the ms are those shares of the engine CPU measured in /proc.
    total = profile["total"]
    ms = cpu_ms / total
    print(f"  {total} samples of the thread holding the GIL ({rate} Hz) over {resources} Observations; "
          f"ms per Observation = share of samples x the run's engine CPU ({cpu_ms:.3f} ms/Observation)")  # fmt: skip
    for title, key in (("inclusive (cumulative)", "inclusive"), ("self", "self"), ("self, per package", "package")):
        print(f"\n  top {top} by {title} time, ms per Observation (share of samples):")
        for frame, n in profile[key].most_common(top):
            print(f"    {n * ms:7.3f} ms  {100 * n / total:5.1f}%  {frame}")


def find_py_spy(given: str | None) -> str | None:
    for candidate in (given, shutil.which("py-spy"), str(Path(sys.executable).with_name("py-spy"))):
        if candidate and Path(candidate).exists():
            return candidate
    return None


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", type=int, default=3000, help="timed Bundles (default 3000)")
    ap.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    ap.add_argument("--observations", type=int, default=20, help="Observations per Bundle (default 20)")
    ap.add_argument("--patients", type=int, default=None, help="patients the Bundles are drawn from (default N/2)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed Bundles first (default 200)")
    ap.add_argument("--store-url", default=None, help="a PostgreSQL URL (a fresh schema there); default SQLite")
    ap.add_argument("--workers", type=int, default=0, help="scale-out: N `engine worker` processes on Redis")
    ap.add_argument("--profile", action="store_true", help="then a second run, sampled by py-spy")
    ap.add_argument("--py-spy", default=None, help="the py-spy executable (default: on PATH or beside python)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    ap.add_argument("--profile-raw", default=None, help="keep py-spy's collapsed stacks here (for a flame graph)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per profile table (default 25)")
    args = ap.parse_args()
    patients = args.patients or max(args.bundles // 2, 1)
    argv = [re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", a) for a in sys.argv[1:]]  # a password stays unprinted
    command = shlex.join(["python", "bench/fhir_ingest.py", *argv])
    date = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    warm = make_bundles(args.warmup, args.observations, patients, start=0)
    timed = make_bundles(args.bundles, args.observations, patients, start=args.warmup)
    size = sum(map(len, timed)) / len(timed)
    store = "PostgreSQL (a fresh schema)" if args.store_url else "SQLite"
    store += f", {args.workers} engine worker(s) on Redis" if args.workers else ", in-process queue"
    print(f"{command}\n{date}, {machine()}")
    print(
        f"{args.bundles} transaction Bundles of {args.observations} Observations ({size / 1024:.1f} kB each) "
        f"from {patients} patients, after {args.warmup} warm-up Bundles; {args.connections} keep-alive "
        f"connections; stores: {store}"
    )

    py_spy = find_py_spy(args.py_spy) if args.profile else None
    if args.profile and not py_spy:
        print("!! --profile: py-spy not found (pip install py-spy, or --py-spy PATH); no profile")

    r = run_once(args, warm, timed)
    print("\nengine:")
    print(f"  stored            {r['bundles_s']:8.1f} Bundles/s   {r['resources_s']:8.0f} Observations/s   "
          f"({r['seconds']:.1f} s; answers {r['statuses']})")  # fmt: skip
    print(f"  latency           p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms")
    print(f"  engine CPU        {r['cpu_ms']:8.3f} ms/Observation   ({r['cpu_cores']:.2f} cores busy; "
          f"load client {r['client_cpu_ms']:.3f} ms/Observation)")  # fmt: skip
    print(f"  vs the target     {100 * r['resources_s'] / TARGET:.0f}% of {TARGET} Observations/s stored")
    ok = r["rows"] == r["expected_rows"]
    print(f"  rows              {r['rows']} Observation rows in the clinical store, "
          f"{'all' if ok else '!! not all'} of {r['expected_rows']} sent; messages {r['messages']}")  # fmt: skip
    if r["log_lines"]:
        print(f"  !! the engine logged {r['log_lines']} line(s): {r['dir']}")

    bare = bare_validation(timed[:200])
    print("\nbare validation, one core, in this process, same Bundles:")
    for name, rate in bare.items():
        print(f"  {name:48} {rate:8.0f} Observations/s")

    profiled = None
    if py_spy:
        profiled = run_once(args, warm, timed, py_spy)
        print(f"\nprofiled run (py-spy {args.rate} Hz, non-blocking): {profiled['resources_s']:.0f} Observations/s, "
              f"engine CPU {profiled['cpu_ms']:.3f} ms/Observation, answers {profiled['statuses']}")  # fmt: skip
        print_profile(profiled["profile"], args.rate, args.bundles * args.observations, args.top, profiled["cpu_ms"])

    print(f"\n`{command}` ({date}; {machine()})\n")
    print(
        "| run | Bundles/s | Observations/s | p50 ms | p99 ms | engine CPU ms/Observation | client CPU ms/Observation |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    print(f"| engine, {args.connections} conn, {store} | {r['bundles_s']:.1f} | {r['resources_s']:.0f} "
          f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['cpu_ms']:.3f} | {r['client_cpu_ms']:.3f} |")  # fmt: skip
    for name, rate in bare.items():
        print(f"| anchor: {name} | | {rate:.0f} | | | {1000 / rate:.3f} | |")


if __name__ == "__main__":
    main()
