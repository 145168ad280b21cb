"""The unmapped-data report: populated positions no mapping read, per message and per channel.

Through the CLI (``engine try``, ``engine unmapped``, ``engine messages --json``) and a real engine
fed over MLLP. Positions only: no value of a message ever appears in these reports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import FIXTURES, ROOT, MllpConnection, ack_fields, fixture_bytes


def engine_try(mapping: str, fixture: str) -> list[str]:
    """The positions ``engine try`` reports unmapped for the (single) message in ``fixture``."""
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "try", f"mappings/{mapping}.yaml", str(FIXTURES / fixture)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout.split("  unmapped (", 1)[1]
    count, listed = text.split("): ", 1)
    positions = [p.strip() for p in listed.replace("\n", " ").split(",")]
    assert len(positions) == int(count)
    return positions


def send(eng, port: int, *fixtures: str) -> None:
    conn = MllpConnection(port)
    try:
        for f in fixtures:
            assert ack_fields(conn.send(fixture_bytes(f)))["MSA"][1] == "AA"
    finally:
        conn.close()


def settled(eng, n: int) -> None:
    eng.wait_for(
        "messages",
        "select count(*) as n from messages where status in ('SENT', 'ERROR')",
        lambda r: r[0]["n"] == n,
    )


def test_try_shows_the_populated_positions_the_mapping_does_not_read():
    positions = engine_try("oru_clinical", "gaps/oru_r01_sn_text.hl7")
    assert {"NTE-2", "ORC-1", "OBR-16.9", "OBX-6.3", "PID-11.1"} <= set(positions)  # note source, order control, ...
    mapped = {"OBX-5", "OBX-3.1", "OBX-23.1", "OBR-3.1", "PID-5.1", "PID-3.1", "NTE-3", "OBR-16.1"}
    assert not mapped & set(positions)  # results, the notes (NTE-3) and the ordering provider (OBR-16.1)
    assert not [p for p in positions if p.startswith("MSH")]  # the header is the engine's own
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]{2}-\d+(\.\d+)?", p) for p in positions), positions


def test_a_field_sent_without_components_is_mapped_by_a_rule_that_reads_its_first_component():
    # adt_a04_selfpay sends PID-18 bare (v2.3); adt_pm reads PID-18.1, adt_clinical does not read it
    assert "PID-18" not in engine_try("adt_pm", "gaps/adt_a04_selfpay.hl7")
    clinical = engine_try("adt_clinical", "gaps/adt_a04_selfpay.hl7")
    assert "PID-18" in clinical
    # IN1-3 is bare in the self-pay IN1 and has components in the HMO one: one name for both
    assert "IN1-3.1" in clinical and "IN1-3" not in clinical


def test_unmapped_summarises_each_channel_most_frequent_first_and_json_carries_the_lists(fresh_engine):
    eng = fresh_engine()
    send(eng, eng.adt_port, "gaps/adt_a04_selfpay.hl7", "gaps/adt_a01_no_visit.hl7")
    send(eng, eng.lab_port, "gaps/oru_r01_sn_text.hl7")
    settled(eng, 3)

    top = eng.cli("unmapped", "--config", str(eng.config), "--limit", "3")
    assert re.search(r"^  \.\.\. \d+ more position\(s\)", top.stdout, re.M)
    out = eng.cli("unmapped", "--config", str(eng.config), "--limit", "500")
    assert out.returncode == 0, out.stderr
    sections = dict(re.findall(r"channel (\S+): (\d+) message\(s\)", out.stdout))
    assert sections == {"adt": "2", "lab-results": "1"}
    adt = out.stdout.split("channel adt:")[1].split("channel ")[0]
    counts = {pos: int(n) for pos, n in re.findall(r"^  ([A-Z][A-Z0-9]{2}-[\d.]+) +(\d+)$", adt, re.M)}
    assert counts["EVN-2"] == 2 and counts["PID-1"] == 2  # populated in both, read by neither mapping
    assert counts["ZPV-1"] == 1 and counts["DG1-6.2"] == 1  # only the self-pay A04 / the A01 has it
    assert "PID-18" not in counts  # the pm mapping reads it: mapped on the channel, whatever clinical does
    values = list(counts.values())
    assert values == sorted(values, reverse=True)
    for secret in ("MRN500", "HALVORSEN", "OYELARAN", "test", "SELF PAY", "Platelet"):
        assert secret not in out.stdout

    lab = eng.cli("unmapped", "--config", str(eng.config), "--channel", "lab-results", "--since", "1h")
    assert "channel lab-results: 1 message(s)" in lab.stdout and "channel adt" not in lab.stdout
    assert re.search(r"^  NTE-2 +1$", lab.stdout, re.M)
    later = eng.cli("unmapped", "--config", str(eng.config), "--since", "2999-01-01")
    assert later.returncode == 0 and "no message with unmapped positions" in later.stdout
    bad = eng.cli("unmapped", "--config", str(eng.config), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr

    rows = json.loads(eng.cli("messages", "--config", str(eng.config), "--json").stdout)
    by_id = {r["control_id"]: r for r in rows}
    left = set(by_id["SN-R01-0001"]["unmapped"])
    assert "NTE-2" in left and not {"OBX-5", "NTE-3"} & left
    assert len(by_id["SN-R01-0001"]["warnings"]) == 1
    assert "ZPV-1" in by_id["SP-A04-0001"]["unmapped"]
    assert all(isinstance(r["unmapped"], list) and isinstance(r["warnings"], list) for r in rows)
