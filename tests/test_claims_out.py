"""`engine claims build` end to end: the PM store filled by a real `engine run` on the sample config
from HL7 (ADT^A04 with IN1 coverage, DFT^P03 charges, a credit), then claims built by the CLI as an
operator runs it, the 837P read back with our X12 front end and checked by pyx12 (005010X222A1).

Every charge is billed once: a second run, a concurrent run and a run that loses a race to
another bill nothing twice; charges without a registration or coverage, or reversed, are left
unbilled with their reasons; `--resend ISA13` writes the same file again.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from conftest import FIXTURES, ROOT, engine_check, send_and_settle
from sqlalchemy import text

from engine import billing
from engine.config import load_config
from engine.formats.x12_envelope import read_interchanges
from engine.formats.x12_validate import validate
from engine.stores.db import make_engine
from engine.stores.records_store import RecordStore

VISIT = FIXTURES / "visit"
OKAFOR = "1750000055^OKAFOR^NNEKA^^^DR^^^^^^^NPI"
AT = datetime(2024, 6, 14, 8, 30)


def pid(mrn: str, family: str, given: str, dob: str, sex: str) -> str:
    return (
        f"PID|1||{mrn}^^^NORTHCLINIC^MR||{family}^{given}||{dob}|{sex}|||48 SPRUCE CT^^MAPLETON^OR^97453^USA^H"
        f"||^PRN^PH^^1^541^5550190|||||ACC-{mrn}^^^NORTHCLINIC^AN"
    )


def pv1(visit: str) -> str:
    return f"PV1|1|O|FAMMED^3^^NORTHCLINIC||||{OKAFOR}|||FAM|||||||||{visit}^^^NORTHCLINIC^VN"


def adt(control: str, patient: str, visit: str, in1: str = "") -> bytes:
    msh = f"MSH|^~\\&|PMREG|NORTHCLINIC|HIE_ENGINE|NORTHCLINIC|20240610091500||ADT^A04^ADT_A01|{control}|P|2.5.1"
    segs = [msh, "EVN|A04|20240610091500", patient, pv1(visit)] + ([in1] if in1 else [])
    return ("\r".join(segs) + "\r").encode()


def ft1(n: int, txn: str, kind: str, day: str, amount: str, dx: list[str], cpt: str, mods: tuple = ()) -> str:
    codes = "~".join(f"{d}^^I10" for d in dx)
    modifiers = "~".join(f"{m}^^C4" for m in mods)
    return (
        f"FT1|{n}|{txn}|B{day}|{day}0930|{day}1700|{kind}|CDM-{cpt}^^CDM|||1|{amount}&USD||||||||{codes}"
        f"|{OKAFOR}|{OKAFOR}||||{cpt}^^C4|{modifiers}"
    )


def dft(control: str, patient: str, visit: str, *lines: str) -> bytes:
    msh = f"MSH|^~\\&|CHARGECAP|NORTHCLINIC|HIE_ENGINE|NORTHCLINIC|20240612170000||DFT^P03^DFT_P03|{control}|P|2.5.1"
    return ("\r".join([msh, "EVN|P03|20240612170000", patient, pv1(visit), *lines]) + "\r").encode()


ROWAN = pid("MRN900101", "TEAGARDEN", "ROWAN", "19810923", "M")  # the visit fixtures' patient
ASH = pid("MRN900404", "TEAGARDEN", "ASH", "20150102", "F")  # his child, on his policy
ALDER = pid("MRN900202", "QUILLON", "ALDER", "19700101", "M")  # registered, no coverage
WREN = pid("MRN900909", "MARSH", "WREN", "19900505", "F")  # never registered
CHILD_IN1 = (
    "IN1|1|PPO01^Cascade Preferred PPO^HL70072|CASC01^^^^NIIP|CASCADE HEALTH MUTUAL||||GRP-4410|||||||PPO"
    "|TEAGARDEN^ROWAN^J|CHD^Child^HL70063|19810923||||||||||||||||||POL-900101"
)
SECOND_VISIT = dft(
    "NC-DFT-0002",
    ROWAN,
    "V900102",
    ft1(1, "TXN-900201", "CG", "20240611", "150.00", ["J06.9", "R05.9"], "99214", ("25",)),
    ft1(2, "TXN-900202", "CG", "20240611", "38.00", ["J06.9"], "87880", ("QW", "59")),
    ft1(3, "TXN-900203", "CG", "20240611", "18.50", ["R05.9"], "36415"),
)
REVERSAL = dft("NC-DFT-0003", ROWAN, "V900102", ft1(1, "TXN-900203", "CD", "20240611", "-18.50", ["R05.9"], "36415"))
CHILD_VISIT = dft("NC-DFT-0004", ASH, "V900401", ft1(1, "TXN-900401", "CG", "20240612", "140.00", ["Z00.129"], "99392"))
UNCOVERED = dft("NC-DFT-0005", ALDER, "V900201", ft1(1, "TXN-900301", "CG", "20240612", "95.00", ["I10"], "99213"))
UNREGISTERED = dft("NC-DFT-0006", WREN, "V900901", ft1(1, "TXN-900901", "CG", "20240612", "95.00", ["I10"], "99213"))


def post(eng, *messages: tuple[str, bytes, str]) -> None:
    """Send (port variable, message, control id) each and wait until it is SENT."""
    for port, data, control in messages:
        send_and_settle(eng, int(eng.env[port]), data, control)


def build(eng, *args: str) -> subprocess.CompletedProcess:
    out = eng.cli("claims", "build", "--config", str(eng.config), *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def outbox(eng) -> Path:
    return eng.data / "x12" / "claims-out" / "outbox"


def segments(text: str) -> list[list[str]]:
    return [s.strip().split("*") for s in text.split("~") if s.strip()]


def assert_valid(path: Path) -> list[list[str]]:
    """The file's segments, after checking that it is one interchange pyx12 accepts without a finding."""
    interchanges, stray = read_interchanges(path.read_bytes())
    assert not stray and len(interchanges) == 1 and not interchanges[0].problems
    [group] = validate(interchanges[0])
    assert group.status == "A", [s.text for t in group.transactions for s in t.segments]
    assert [(t.status, t.segments) for t in group.transactions] == [("A", [])]
    return segments(path.read_text())


def claims_in(segs: list[list[str]]) -> dict[str, dict]:
    """CLM01 -> {total: CLM02, lines: [SV1 ...], hi: [HI codes], dependent: under a 2000C}."""
    out: dict[str, dict] = {}
    current: dict = {}
    dependent = False
    for s in segs:
        if s[0] == "HL":
            dependent = s[3] == "23"
        elif s[0] == "CLM":
            current = out[s[1]] = {"total": Decimal(s[2]), "lines": [], "hi": [], "dependent": dependent}
        elif s[0] == "HI":
            current["hi"] = s[1:]
        elif s[0] == "SV1":
            current["lines"].append(s)
    return out


def pm_rows(eng, sql: str, **params) -> list[dict]:
    return eng.query("pm", sql, **params)


def test_charges_become_one_valid_837p_claim_per_visit_billed_once_and_resent_identically(fresh_engine):
    eng = fresh_engine()
    post(
        eng,
        ("ENGINE_ADT_PORT", (VISIT / "2_adt_a04_arrival.hl7").read_bytes(), "NC-ADT-0001"),
        ("ENGINE_ADT_PORT", adt("NC-ADT-0404", ASH, "V900401", CHILD_IN1), "NC-ADT-0404"),
        ("ENGINE_ADT_PORT", adt("NC-ADT-0202", ALDER, "V900201"), "NC-ADT-0202"),
        ("ENGINE_CHARGES_PORT", (VISIT / "8_dft_p03_charges.hl7").read_bytes(), "NC-DFT-0001"),
        ("ENGINE_CHARGES_PORT", SECOND_VISIT, "NC-DFT-0002"),
        ("ENGINE_CHARGES_PORT", REVERSAL, "NC-DFT-0003"),
        ("ENGINE_CHARGES_PORT", CHILD_VISIT, "NC-DFT-0004"),
        ("ENGINE_CHARGES_PORT", UNCOVERED, "NC-DFT-0005"),
        ("ENGINE_CHARGES_PORT", UNREGISTERED, "NC-DFT-0006"),
    )
    eng.stop()

    dry = build(eng, "--dry-run")
    assert "would bill 3 claim(s), 6 line(s)" in dry.stdout
    assert not outbox(eng).exists() and pm_rows(eng, "select * from claim") == []

    out = build(eng)
    for name in ("TEAGARDEN", "QUILLON", "MARSH", "MRN900", "ROWAN"):  # no patient data on the console
        assert name not in out.stdout + out.stderr
    assert "skipped charge TXN-900203 (CHARGECAP): reversed by credit TXN-900203" in out.stdout
    assert "skipped charge TXN-900301 (CHARGECAP): patient has no coverage in effect on the service date" in out.stdout
    assert "skipped charge TXN-900901 (CHARGECAP): patient has no registration in the PM store" in out.stdout
    assert "billed 3 claim(s), 6 line(s), total 494.50" in out.stdout
    [first] = sorted(outbox(eng).iterdir())
    segs = assert_valid(first)
    isa13 = segs[0][13]
    assert first.name == f"{isa13}.837" and segs[-1] == ["IEA", "1", isa13]

    built = claims_in(segs)
    assert len(built) == 3
    charges = pm_rows(eng, "select transaction_id, amount, claimed_in, claimed_by, visit_number from charge")
    for pcn, claim in built.items():  # CLM02 = the lines' SV102 = the charges it bills
        mine = [c for c in charges if c["claimed_in"] == pcn]
        assert (
            claim["total"] == sum(Decimal(s[2]) for s in claim["lines"]) == sum(Decimal(str(c["amount"])) for c in mine)
        )
        assert {c["claimed_by"] for c in mine} == {"1847000316"}
        assert len({c["visit_number"] for c in mine}) == 1 and len(mine) == len(claim["lines"])  # one claim per visit
    by_visit = {c["visit_number"]: built[c["claimed_in"]] for c in charges if c["claimed_in"]}
    assert set(by_visit) == {"V900101", "V900102", "V900401"}
    assert by_visit["V900101"]["hi"] == ["ABK:E119", "ABF:Z23"]
    assert [s[1] for s in by_visit["V900101"]["lines"]] == ["HC:99213", "HC:90686", "HC:83036"]
    assert [s[7] for s in by_visit["V900101"]["lines"]] == ["1", "2", "1"]
    assert by_visit["V900102"]["hi"] == ["ABK:J069", "ABF:R059"]  # the reversed line's own code stays pointed at
    assert [s[1] for s in by_visit["V900102"]["lines"]] == ["HC:99214:25", "HC:87880:QW:59"]
    assert by_visit["V900401"]["dependent"] and not by_visit["V900101"]["dependent"]
    assert ["PAT", "19"] in segs
    unbilled = {c["transaction_id"] for c in charges if c["claimed_in"] is None}
    assert unbilled == {"TXN-900203", "TXN-900301", "TXN-900901"}  # and the CD credit, not a CG
    stored = pm_rows(eng, "select patient_control_number, total_charge, interchange_control, origin from claim")
    assert {r["patient_control_number"] for r in stored} == set(built)
    assert {(r["interchange_control"], r["origin"]) for r in stored} == {(isa13, "built")}

    again = build(eng)  # nothing left to bill: no file, nothing twice
    assert "billed 0 claim(s)" in again.stdout and "no file written" in again.stdout
    assert sorted(outbox(eng).iterdir()) == [first]
    assert len(pm_rows(eng, "select id from claim_line")) == 6

    original = first.read_bytes()
    first.rename(first.with_suffix(".sent"))  # as a transmitter would take it away
    resent = build(eng, "--resend", str(int(isa13)))
    assert f"interchange {isa13}: {first}" in resent.stdout
    assert first.read_bytes() == original
    with eng.db("pm").begin() as conn:  # the file's dates come from the stored claims too, never the clock
        conn.execute(text("update claim set submitted_at = '202401020304'"))
    build(eng, "--resend", isa13)
    stamp = f"{segs[1][4]}*{segs[1][5]}*"
    expected = original.decode().replace(f"*{stamp[2:]}", "*240102*0304*", 1).replace(f"*{stamp}", "*20240102*0304*")
    assert first.read_text() == expected and expected != original.decode()

    later = fresh_engine()  # the same stores, a day later: one more visit
    one_more = dft("NC-DFT-0007", ROWAN, "V900103", ft1(1, "TXN-900501", "CG", "20240613", "75.00", ["E11.9"], "99212"))
    post(later, ("ENGINE_CHARGES_PORT", one_more, "NC-DFT-0007"))
    later.stop()
    build(later)
    [second] = [p for p in outbox(eng).iterdir() if p.suffix == ".837" and p != first]
    new = claims_in(assert_valid(second))
    assert int(second.stem) > int(isa13) and min(new) > max(built)  # control numbers only go up
    assert len(pm_rows(eng, "select id from claim")) == 4


def test_two_builds_at_once_bill_each_charge_exactly_once(fresh_engine):
    eng = fresh_engine()
    post(eng, ("ENGINE_ADT_PORT", (VISIT / "2_adt_a04_arrival.hl7").read_bytes(), "NC-ADT-0001"))
    for v in range(1, 9):  # 8 visits, 3 lines each
        lines = [
            ft1(k, f"TXN-{v}{k}", "CG", f"202406{v + 10}", f"{10 * v + k}.25", ["E11.9"], "99213") for k in (1, 2, 3)
        ]
        post(eng, ("ENGINE_CHARGES_PORT", dft(f"C-DFT-{v}", ROWAN, f"V9100{v}", *lines), f"C-DFT-{v}"))
    eng.stop()

    command = [sys.executable, "-m", "engine.cli", "claims", "build", "--config", str(eng.config)]
    runs = [
        subprocess.Popen(command, cwd=ROOT, env=eng.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in (1, 2)
    ]
    outs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [e[-2000:] for _o, e in outs]

    files = sorted(outbox(eng).glob("*.837"))
    in_files = [pcn for f in files for pcn in claims_in(assert_valid(f))]
    assert len(in_files) == len(set(in_files)) == 8  # no claim in two files
    lines = pm_rows(eng, "select patient_control_number, line_number from claim_line")
    charges = pm_rows(eng, "select claimed_in from charge where transaction_type = 'CG'")
    assert len(lines) == len(charges) == 24 and all(c["claimed_in"] for c in charges)
    assert {c["claimed_in"] for c in charges} == {r["patient_control_number"] for r in lines} == set(in_files)


def test_a_build_that_loses_the_race_for_its_charges_bills_none_of_them_again(fresh_engine, monkeypatch):
    """Run B bills everything between run A's read and A's commit: A's conditional update
    (claimed_in IS NULL, checked by row count) rolls back, A reads again and finds nothing."""
    eng = fresh_engine()
    post(
        eng,
        ("ENGINE_ADT_PORT", (VISIT / "2_adt_a04_arrival.hl7").read_bytes(), "NC-ADT-0001"),
        ("ENGINE_CHARGES_PORT", (VISIT / "8_dft_p03_charges.hl7").read_bytes(), "NC-DFT-0001"),
    )
    eng.stop()
    cfg = load_config(eng.config, check_mappings=False)
    pm = RecordStore(f"sqlite:///{eng.data}/pm.db", "pm")
    messages = make_engine(f"sqlite:///{eng.data}/messages.db")
    box = eng.data / "race"
    commit, raced = billing._commit, []

    def commit_after_another_run(*args, **kwargs):
        if not raced:  # the first commit (run A's) lets run B go first, from read to file
            raced.append(None)
            monkeypatch.setattr(billing, "_commit", commit)
            raced[0] = billing.build_claims(pm, messages, cfg.billing, box, at=AT)
        return commit(*args, **kwargs)

    monkeypatch.setattr(billing, "_commit", commit_after_another_run)
    try:
        late = billing.build_claims(pm, messages, cfg.billing, box, at=AT)
    finally:
        pm.dispose()
        messages.dispose()
    assert raced[0].claims == 1 and raced[0].file is not None
    assert (late.claims, late.file) == (0, None)
    assert sorted(box.iterdir()) == [raced[0].file]
    assert len(pm_rows(eng, "select id from claim_line")) == 3 and len(pm_rows(eng, "select id from claim")) == 1


def test_the_billing_section_is_checked_like_the_others(tmp_path):
    text = (ROOT / "config" / "channels.yaml").read_text()
    bad = text.replace("    contact_name:", "    contact_nmae:").replace("1847000316}", "1847000317}")
    path = tmp_path / "channels.yaml"
    path.write_text(bad.replace("mappings_dir: ../mappings", f"mappings_dir: {ROOT / 'mappings'}"))
    out = engine_check(path)
    assert out.returncode == 2
    line = next(n for n, s in enumerate(bad.splitlines(), 1) if "contact_nmae" in s)
    assert f"channels.yaml:{line}: billing.submitter.contact_nmae: unknown key" in out.stderr
    assert "billing.billing_provider.npi" in out.stderr and "check digit" in out.stderr
