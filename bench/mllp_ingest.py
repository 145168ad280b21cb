"""MLLP ingest benchmark: ACK rate, end-to-end rate and ACK latency of ``engine run``.

Starts the engine on its embedded default (SQLite files in a temporary folder, in-process
queue, the sample channels), sends N ADT and ORU messages over 1 and over 8 connections, and
prints: ACKed messages per second, end-to-end messages per second until every message is
mapped into both stores, ACK latency p50/p99, and, in the same run on the same messages, the
bare parse rates of hl7apy and of the engine's tokenizer.

    python bench/mllp_ingest.py [-n 5000] [--connections 1 8]

Figures are printed, never asserted: this machine is shared and they vary by a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

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


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}, so that field positions are explicit."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def make_messages(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        mrn = f"{100000 + rnd.randrange(n // 4 + 1):06d}"
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
        out.append(template.format(**fields).encode())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """``engine run`` on the sample config; SQLite in a temporary folder unless ``env`` says
    otherwise, plus ``workers`` ``engine worker`` processes when the queue is Redis."""

    def __init__(self, env: dict[str, str] | None = None, workers: int = 0, threads: int = 1):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        self.lab, self.adt = free_port(), free_port()
        self.env = dict(
            os.environ,
            ENGINE_MESSAGE_STORE_URL=f"sqlite:///{self.dir}/messages.db",
            ENGINE_CLINICAL_STORE_URL=f"sqlite:///{self.dir}/clinical.db",
            ENGINE_PM_STORE_URL=f"sqlite:///{self.dir}/pm.db",
            ENGINE_LAB_PORT=str(self.lab),
            ENGINE_ADT_PORT=str(self.adt),
            ENGINE_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env or {})
        if workers:
            subprocess.run(
                [sys.executable, "-m", "engine.cli", "db", "upgrade"],
                cwd=ROOT,
                env=self.env,
                check=True,
                capture_output=True,
            )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "engine.log", "wb"),  # noqa: SIM115 - the child keeps it open
        )
        started = 0
        while started < 2:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit((self.dir / "engine.log").read_text())
            started += line.startswith(b"channel ")
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "worker", "--threads", str(threads)],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=open(self.dir / f"worker{k}.log", "wb"),  # noqa: SIM115 - the child keeps it open
            )
            for k in range(workers)
        ]
        self.db = create_engine(self.env["ENGINE_MESSAGE_STORE_URL"])

    def done_count(self) -> int:
        with self.db.connect() as c:
            return c.execute(text("select count(*) from messages where status in ('SENT','FILTERED','ERROR')")).scalar()

    def error_count(self) -> int:
        with self.db.connect() as c:
            return c.execute(text("select count(*) from messages where status = 'ERROR'")).scalar()

    def cpu_seconds(self) -> float:
        """User + system CPU of the engine's processes so far (Linux /proc; 0 elsewhere)."""
        return sum(_proc_cpu(p.pid) for p in [self.proc, *self.workers])

    def stop(self):
        for p in [self.proc, *self.workers]:
            p.terminate()
        for p in [self.proc, *self.workers]:
            p.wait(60)
        self.db.dispose()


def run_once(
    messages: list[bytes], connections: int, env: dict[str, str] | None = None, workers: int = 0, threads: int = 1
) -> dict[str, float]:
    """One benchmark run on a fresh engine: ACK rate, end-to-end rate, latency percentiles."""
    eng = Engine(env, workers, threads)
    try:
        port_for = lambda m: eng.lab if b"|ORU^" in m[:200] else eng.adt
        cpu0, client0 = eng.cpu_seconds(), time.process_time()
        t_start = time.perf_counter()
        seconds, lat, bad = asyncio.run(send_all(port_for, messages, connections))
        while eng.done_count() < len(messages):
            time.sleep(0.02)
        end_to_end = time.perf_counter() - t_start
        cpu, client = eng.cpu_seconds() - cpu0, time.process_time() - client0
        errors = eng.error_count()
    finally:
        eng.stop()
    return {
        "acked": len(messages) / seconds,
        "e2e": len(messages) / end_to_end,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "bad": bad,
        "errors": errors,
        "cpu_ms": cpu * 1000 / len(messages),
        "client_cpu_ms": client * 1000 / len(messages),
    }


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send_all(port_for, messages: list[bytes], connections: int) -> tuple[float, list[float], int]:
    """Send over ``connections`` connections; returns (seconds, per-message ACK latencies, non-AA count)."""
    latencies: list[float] = []
    bad = 0
    chunks = [messages[k::connections] for k in range(connections)]

    async def run(chunk):
        nonlocal bad
        if not chunk:
            return
        _reader, writer = await asyncio.open_connection("127.0.0.1", port_for(chunk[0]))
        writers = {}
        for m in chunk:
            port = port_for(m)
            if port not in writers:
                writers[port] = await asyncio.open_connection("127.0.0.1", port)
            r, w = writers[port]
            t0 = time.perf_counter()
            w.write(VT + m + FS + CR)
            ack = await r.readuntil(FS + CR)
            latencies.append(time.perf_counter() - t0)
            if b"MSA|AA|" not in ack:
                bad += 1
        for _r, w in writers.values():
            w.close()
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in chunks))
    return time.perf_counter() - t0, latencies, bad


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


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(int(len(values) * p), len(values) - 1)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="messages per run (half ADT, half ORU)")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    messages = make_messages(args.n)
    print(
        f"{args.n} messages (ADT A01/A04/A08 with PID PV1 AL1 DG1 GT1 IN1; ORU with 4 OBX), "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    for conns in args.connections:
        r = run_once(messages, conns)
        print(f"\n{conns} connection(s):")
        print(f"  ACKed (durable)   {r['acked']:8.0f} msg/s   ({r['bad']} not AA)")
        print(f"  end-to-end        {r['e2e']:8.0f} msg/s   (mapped into both stores; {r['errors']} ERROR)")
        print(f"  ACK latency       p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms")
        print(f"  engine CPU        {r['cpu_ms']:8.2f} ms/msg   (load client: {r['client_cpu_ms']:.2f} ms/msg)")
    rates = parse_rates(messages)
    print("\nbare parse rate, one core, same messages:")
    for k, v in rates.items():
        print(f"  {k:28} {v:8.0f} msg/s")


if __name__ == "__main__":
    main()
