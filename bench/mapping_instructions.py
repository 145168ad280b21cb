"""Instructions per message of parsing and mapping, counted by valgrind: a figure the machine's
load does not move, for telling two versions of the mapping code apart.

On this shared machine two runs of the same timing benchmark differ by 10-15%, more than most
single changes to the interpreter gain. ``valgrind --tool=callgrind`` counts the instructions
the process runs instead: the same code on the same messages gives the same count within a
fraction of a percent. This runs, under valgrind, the tokenizer and the sample mappings the MLLP
benchmark's messages meet (``adt_clinical``, ``adt_pm``, ``oru_clinical``, and the unmapped report)
on ``-n`` messages of ``mllp_ingest.py``'s mix, and once on none, and prints the difference per
message. ``--root`` runs another checkout's engine and mappings (a ``git worktree`` of the commit
to compare with). About a minute per run; valgrind must be installed (Debian: ``valgrind``).

    python bench/mapping_instructions.py [-n 200] [--root ../other-checkout] [--mapping oru_clinical]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAPPINGS = ("adt_clinical", "adt_pm", "oru_clinical")


def inner(n: int, root: Path, names: list[str]) -> None:
    """The counted part: parse and map ``n`` messages (imports and loading are the same for 0)."""
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(HERE))
    from mllp_ingest import make_messages

    from engine.formats import hl7
    from engine.transforms.mapping import load_mapping
    from engine.transforms.report import RunReport, unmapped

    mappings = [load_mapping(root / "mappings" / f"{name}.yaml") for name in names]
    for raw in make_messages(max(n, 2))[:n]:
        msg = hl7.Message(hl7.decode(raw, "utf-8"))
        report = RunReport()
        for mapping in mappings:
            if mapping.applies(msg):
                mapping.run(msg, RunReport(read=report.read))
        unmapped(msg, [report])


def instructions(argv: list[str]) -> int:
    """Instructions ``python <argv>`` runs, counted by valgrind (callgrind), with one hash seed:
    str hashes move dict and set layouts, and with them about 1% of the count."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def counted(n: int, root: Path, names: list[str]) -> int:
    return instructions([__file__, "--inner", str(n), "--root", str(root), "--mapping", *names])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose engine and mappings run")
    ap.add_argument("--mapping", nargs="+", default=list(MAPPINGS))
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.root.resolve()
    if args.inner is not None:
        inner(args.inner, root, args.mapping)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    base, total = counted(0, root, args.mapping), counted(args.n, root, args.mapping)
    per = (total - base) / args.n
    print(f"{root}: {', '.join(args.mapping)} on {args.n} messages (half ADT, half ORU)")
    print(f"  {per / 1e6:.3f} million instructions per message (parse, map, unmapped report)")


if __name__ == "__main__":
    main()
