"""Mapping scale benchmark: does the cost of one ORU^R01 grow linearly with its OBX count?

Builds one ORU^R01 (MSH, PID, PV1, ORC, one OBR, then N OBX) per size and prints, for each,
the time of the receive path's reads (MSH header and the ordering key PID-3.1 from the raw
bytes), of parsing (decode + tokenize, as the processor does) and of running
``mappings/oru_clinical.yaml`` on it: wall seconds and process CPU seconds, one run each.

    python bench/mapping_scale.py [--sizes 1000 4000 8000 16000]

Figures are printed, never asserted: this machine is shared. Linear means the per-OBX cost
(last column, in microseconds) stays about the same from row to row.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.channels.pipeline import ordering_key  # noqa: E402
from engine.formats import hl7  # noqa: E402
from engine.transforms import load_mapping  # noqa: E402

HEAD = (
    "MSH|^~\\&|SUNLAB|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240314093512||ORU^R01^ORU_R01|BENCH-{n}|P|2.5.1|||AL|NE\r"
    "PID|1||MRN{n}^^^SUNRISE_GH^MR||BRANNIGAN^LUCILLE^MAE||19660115|F\r"
    "PV1|1|E|ED^07^^SUNRISE_GH||||||||MED|||||||||V{n}^^^SUNRISE_GH^VN\r"
    "ORC|RE|ORD{n}^EHR|LAB{n}^SUNLAB||CM\r"
    "OBR|1|ORD{n}^EHR|LAB{n}^SUNLAB|ADMLAB^Admission panel^L|||20240314071500|||||||||||||||20240314093000|||F\r"
)
OBX = "OBX|{i}|NM|2345-7^Glucose^LN||{value}|mg/dL|70-99|N|||F\r"  # no OBX-14: effective_at reads OBR-7


def oru(n: int) -> bytes:
    """One ORU^R01 with one OBR and ``n`` OBX (set ids 1..n, values 1.0..n.0), CR-separated."""
    body = "".join(OBX.format(i=i, value=f"{i}.0") for i in range(1, n + 1))
    return (HEAD.format(n=n) + body).encode("ascii")


def receive(raw: bytes) -> None:
    """What the MLLP receive path reads before the commit: MSH and the ordering key."""
    hl7.read_header(raw)
    ordering_key(raw, "PID-3.1")


def parse(raw: bytes) -> hl7.Message:
    """What the processor does before mapping: decode (MSH-18) and tokenize."""
    return hl7.Message(hl7.decode(raw))


def timed(fn, *args):
    """``(result, wall seconds, process CPU seconds)`` of one call ``fn(*args)``, after a full GC."""
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000, 16000], help="OBX counts")
    args = ap.parse_args(argv)
    mapping = load_mapping(ROOT / "mappings" / "oru_clinical.yaml")
    print(
        f"{'OBX':>6} {'KB':>6} | {'receive wall/cpu s':>18} | {'parse wall/cpu s':>16} | {'map wall/cpu s':>15} "
        f"| {'records':>7} | {'map us/OBX':>10}"
    )
    for n in args.sizes:
        raw = oru(n)
        _, rw, rc = timed(receive, raw)
        msg, pw, pc = timed(parse, raw)
        records, mw, mc = timed(mapping.run, msg)
        print(
            f"{n:>6} {len(raw) / 1024:>6.0f} | {rw:>8.3f} / {rc:>7.3f} | {pw:>7.3f} / {pc:>6.3f} | "
            f"{mw:>6.2f} / {mc:>6.2f} | {len(records):>7} | {mw / n * 1e6:>10.1f}"
        )


if __name__ == "__main__":
    main()
