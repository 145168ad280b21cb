"""``engine replay``: a changed mapping run over a channel's stored messages, compared field by
field with the channel's current mapping, writing nothing.

The store is a real one: an engine on the sample ADT channel receives the fixtures over MLLP
and is stopped; each test then replays a changed copy of mappings/adt_clinical.yaml.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, EngineProcess, fixture_bytes, send_and_settle
from sqlalchemy import create_engine, inspect, text

from engine.config import load_config
from engine.errors import ConfigError, EngineError
from engine.replay import mapped, render_text, replay
from engine.stores.message_store import MessageStore

SENT = [  # (fixture, control id): five patients' worth of ADT, one of them Latin-1
    ("adt_a01.hl7", "SGH-A01-000101"),
    ("adt_a03.hl7", "SGH-A03-000207"),
    ("adt_a04.hl7", "NPC-A04-33017"),
    ("adt_a08.hl7", "SGH-A08-000133"),
    ("adt_a40.hl7", "SGH-A40-000019"),
    ("adt_a01_latin1.hl7", "SGH-A01-000112"),
]

CONFIG = """
stores:
  messages: {{url: "sqlite:///{data}/messages.db"}}
  clinical: {{url: "sqlite:///{data}/clinical.db"}}
  pm: {{url: "sqlite:///{data}/pm.db"}}
mappings_dir: {mappings}
channels:
  - name: adt
    source: {{type: mllp, port: {port}}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
      - {{name: pm, type: store, store: pm, mapping: adt_pm}}
"""

DIAGNOSIS_FROM_PV2 = """
  - target: clinical.diagnosis         # the admit reason (PV2-3) as an admitting diagnosis
    key: [visit_number, code]
    when: {path: PV2-3.1, exists: true}
    fields:
      visit_number: {use: visit_number}
      code: PV2-3.1
      mrn: {use: mrn, required: true}
      mrn_issuer: {use: mrn_issuer, required: true}
      code_system: PV2-3.3
      description: PV2-3.2
      diagnosis_type: {literal: Admitting}
"""


def edit(text_: str, old: str, new: str) -> str:
    assert text_.count(old) == 1, f"mappings/adt_clinical.yaml no longer holds {old!r}"
    return text_.replace(old, new)


def changed_mapping() -> str:
    """mappings/adt_clinical.yaml with: the building read from PV1-3.9 instead of PV1-3.7, the
    allergy rule removed, a field added (the encounter's fhir_id) and a rule added (PV2-3)."""
    src = (ROOT / "mappings" / "adt_clinical.yaml").read_text()
    out = edit(src, "      location_building: PV1-3.7\n", "      location_building: PV1-3.9\n")
    start, end = out.index("  - target: clinical.allergy\n"), out.index("  - target: clinical.diagnosis\n")
    out = out[:start] + out[end:]
    out = edit(
        out,
        "      status: {table: encounter_status, value: MSH-9.2}\n",
        "      status: {table: encounter_status, value: MSH-9.2}\n"
        "      fhir_id: {fhir_id: [Encounter, {use: visit_number}]}\n",
    )
    return out + DIAGNOSIS_FROM_PV2


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An engine's stores after receiving SENT (and a resend of the A01), the engine stopped."""
    work = tmp_path_factory.mktemp("replay")
    eng = EngineProcess(work)
    config = work / "channels.yaml"
    config.write_text(CONFIG.format(data=eng.data, mappings=ROOT / "mappings", port=eng.adt_port))
    eng.config = config
    eng.start()
    try:
        for name, control_id in SENT:
            send_and_settle(eng, eng.adt_port, fixture_bytes(name), control_id)
        send_and_settle(eng, eng.adt_port, fixture_bytes("adt_a01.hl7"), "SGH-A01-000101", final="FILTERED")
    finally:
        eng.stop()
    return eng


@pytest.fixture
def store(stored):
    s = MessageStore(f"sqlite:///{stored.data}/messages.db")
    yield s
    s.engine.dispose()
    s.status_engine.dispose()


def snapshot(eng: EngineProcess) -> dict:
    """Every row of every table of the three stores."""
    out = {}
    for name in ("messages", "clinical", "pm"):
        db = create_engine(f"sqlite:///{eng.data}/{name}.db")
        try:
            with db.connect() as conn:
                for table in inspect(conn).get_table_names():
                    out[f"{name}.{table}"] = sorted(map(repr, conn.execute(text(f'select * from "{table}"'))))
        finally:
            db.dispose()
    return out


def replayed(eng: EngineProcess, store: MessageStore, **kwargs):
    return replay(load_config(eng.config), store, channel="adt", **kwargs)


def fields_of(result, control_id: str) -> list[tuple]:
    """(target, change, key, field, old, new) of each field change of one message, old/new as JSON holds them."""
    found = [m for m in result.to_dict()["messages"] if m["control_id"] == control_id]
    assert len(found) == 1, [m["control_id"] for m in result.to_dict()["messages"]]
    return [
        (r["target"], r["change"], r["key"], f["field"], f.get("old", "(not set)"), f.get("new", "(not set)"))
        for r in found[0]["records"]
        for f in r["fields"]
    ]


def test_a_changed_mapping_shows_each_changed_field_and_writes_nothing(stored, store, tmp_path):
    new = tmp_path / "adt_clinical.yaml"
    new.write_text(changed_mapping())
    before = snapshot(stored)
    read: list[list[int]] = []

    result = replayed(stored, store, mapping_path=new, on_read=read.append)

    assert snapshot(stored) == before
    assert (result.destination, result.compared_with) == ("clinical", "adt_clinical")
    assert result.messages_read == 6 and not result.truncated  # the resend of the A01 is not read
    assert result.messages_changed == 5  # the A40 builds no encounter, allergy or diagnosis: unchanged
    assert "SGH-A40-000019" not in [m.control_id for m in result.messages]
    d = result.to_dict()
    assert d["summary"] == {
        "clinical.allergy": {"added": 0, "removed": 3, "changed": 0, "fields": {}},
        "clinical.diagnosis": {"added": 1, "removed": 0, "changed": 0, "fields": {}},
        "clinical.encounter": {
            "added": 0,
            "removed": 0,
            "changed": 5,
            "fields": {"fhir_id": 5, "location_building": 3},
        },
    }
    assert d["outcomes"] == {"broken": 0, "fixed": 0, "failing": 0, "unreadable": 0, "filtered": 0}
    a01 = fields_of(result, "SGH-A01-000101")
    visit = {"visit_number": "V240314-0042"}
    assert ("clinical.encounter", "changed", visit, "location_building", "(not set)", "4 WEST") in a01
    fhir_id = [c for c in a01 if c[3] == "fhir_id"]
    assert len(fhir_id) == 1 and fhir_id[0][4] == "(not set)" and fhir_id[0][5]
    allergies = {c[2]["allergen_code"] for c in a01 if c[0] == "clinical.allergy"}
    assert allergies == {"7980", "256349002"}
    assert {c[1] for c in a01 if c[0] == "clinical.allergy"} == {"removed"}
    added = [c for c in a01 if c[1] == "added"]
    assert {c[2]["code"] for c in added} == {"R07.9"}
    assert ("clinical.diagnosis", "added", {"visit_number": "V240314-0042", "code": "R07.9"}, "description",
            "(not set)", "Chest pain, unspecified") in a01  # fmt: skip
    assert {c[3] for c in fields_of(result, "NPC-A04-33017")} == {"fhir_id"}  # PV1-3 has no 3.7 nor 3.9
    latin1 = fields_of(result, "SGH-A01-000112")
    assert {c[2]["allergen_code"] for c in latin1 if c[0] == "clinical.allergy"} == {"2670"}
    assert ("clinical.allergy", "removed", {"mrn": "MRN100012", "mrn_issuer": "SUNRISE_GH", "allergen_code": "2670"},
            "allergen_text", "Codeine", "(not set)") in latin1  # fmt: skip
    json.dumps(d)  # JSON-able as it is

    ids = [i for batch in read for i in batch]
    stored_ids = stored.query(
        "messages", "select id from messages where channel = 'adt' and duplicate_of is null order by id"
    )
    assert ids == [r["id"] for r in stored_ids]


def test_the_text_report_gives_the_summary_then_each_change_with_its_values(stored, store, tmp_path):
    new = tmp_path / "adt_clinical.yaml"
    new.write_text(changed_mapping())
    shown = render_text(replayed(stored, store, mapping_path=new))

    summary, _, detail = shown.partition("\nmessage ")
    assert "6 message(s) read, 5 with changes, 1 without" in summary
    assert [line.split() for line in summary.splitlines() if line.startswith("  clinical.")] == [
        ["clinical.allergy", "0", "3", "0"],
        ["clinical.diagnosis", "1", "0", "0"],
        ["clinical.encounter", "0", "0", "5"],
    ]
    assert "    location_building" in summary and "AL1-3.1" in summary  # positions the new mapping stops reading
    assert "  clinical.encounter [V240314-0042] location_building: (not set) -> '4 WEST'   (from PV1-3.9)" in detail
    assert "  - clinical.allergy [MRN100012, SUNRISE_GH, 2670] removed" in detail
    assert "  + clinical.diagnosis [V240314-0042, R07.9] added" in detail
    assert "SGH-A40-000019" not in shown


def test_a_mapping_given_as_text_is_compared_with_the_mapping_of_its_store(stored, store):
    result = replayed(stored, store, mapping_text=changed_mapping())  # no file name: its targets name clinical
    assert (result.mapping, result.destination, result.compared_with) == ("posted mapping", "clinical", "adt_clinical")
    assert result.messages_changed == 5


def test_a_new_mapping_that_fails_where_the_current_one_maps_is_a_result(stored, store):
    strict = edit(
        changed_mapping(), "      admitting: PV1-17.1\n", "      admitting: {coalesce: [PV1-17.1], required: true}\n"
    )
    result = replayed(stored, store, mapping_text=strict)

    assert result.outcomes["broken"] == 4  # only the A01 (admitting in PV1-17) and the A40 (no encounter) map
    failed = {m.control_id: m.new_error for m in result.messages if m.new_error}
    assert set(failed) == {"SGH-A03-000207", "NPC-A04-33017", "SGH-A08-000133", "SGH-A01-000112"}
    assert all("clinical.encounter.admitting: required value is missing" in e for e in failed.values())
    a03 = next(m for m in result.messages if m.control_id == "SGH-A03-000207")
    assert {(r.target, r.change) for r in a03.records} == {  # a failing mapping writes nothing
        ("clinical.patient", "removed"),
        ("clinical.encounter", "removed"),
        ("clinical.diagnosis", "removed"),
    }
    shown = render_text(result)
    assert "4 message(s): the new mapping FAILS where the current one does not" in shown
    assert "none of the current mapping's 3 record(s) would be written" in shown


def test_the_limit_stops_the_read_and_says_so(stored, store):
    read: list[int] = []
    result = replayed(stored, store, mapping_text=changed_mapping(), limit=2, on_read=read.extend)
    assert result.messages_read == 2 and result.truncated and len(read) == 2
    assert "stopped at --limit 2" in render_text(result)


def test_an_invalid_mapping_is_a_config_error_with_file_and_line(stored, store, tmp_path):
    bad = tmp_path / "adt_clinical.yaml"
    bad.write_text(edit(changed_mapping(), "      location_room: PV1-3.2\n", "      location_rooom: PV1-3.2\n"))
    line = bad.read_text().splitlines().index("      location_rooom: PV1-3.2") + 1
    with pytest.raises(ConfigError) as exc:
        replayed(stored, store, mapping_path=bad)
    assert [(p.file, p.line) for p in exc.value.problems] == [(str(bad), line)]
    assert "unknown column 'location_rooom' in clinical.encounter" in str(exc.value)

    with pytest.raises(ConfigError) as exc:
        replayed(stored, store, mapping_text="records:\n  - target: clinical.patient\n   key: [mrn]\n")
    assert [(p.file, p.line) for p in exc.value.problems] == [("posted mapping", 3)]
    assert "not valid YAML" in str(exc.value)


def test_which_mapping_to_compare_with_must_be_clear(stored, store):
    with pytest.raises(EngineError, match=r"no mapping destination 'nope' \(it has: clinical \(adt_clinical\), pm"):
        replayed(stored, store, mapping_text=changed_mapping(), destination="nope")
    both = changed_mapping() + "\n  - target: pm.registration\n    key: [mrn]\n    fields: {mrn: PID-3.1}\n"
    with pytest.raises(EngineError, match=r"replaces: clinical \(adt_clinical\), pm \(adt_pm\)"):
        replayed(stored, store, mapping_text=both)
    assert replayed(stored, store, mapping_text=changed_mapping(), destination="clinical").messages_changed == 5


def test_both_mappings_run_on_the_channel_clock_and_an_unchanged_mapping_changes_nothing(stored, store, tmp_path):
    eastern = tmp_path / "channels.yaml"  # the same stores; the senders' clocks now said to be New York's
    eastern.write_text(
        stored.config.read_text().replace("    destinations:", "    timezone: America/New_York\n    destinations:")
    )
    cfg = load_config(eastern)
    same = (ROOT / "mappings" / "adt_clinical.yaml").read_text()

    result = replay(cfg, store, channel="adt", mapping_text=same)
    assert (result.messages_read, result.messages_changed) == (6, 0)
    assert "no record, warning or error differs" in render_text(result)

    a01 = store.search(channel="adt", limit=100)[-1]
    assert a01.control_id == "SGH-A01-000101"
    content = stored.query("messages", "select content, charset from messages where id = :i", i=a01.id)[0]
    clinical = {d["destination"]: d for d in mapped(cfg, "adt", content)}["clinical"]
    encounter = next(r for r in clinical["records"] if r["target"] == "clinical.encounter")
    assert encounter["fields"]["admit_at"] == "2024-03-14T12:05:00+00:00"  # PV1-44 08:05 in New York (EDT)
    utc = {d["destination"]: d for d in mapped(load_config(stored.config), "adt", content)}["clinical"]
    assert next(r for r in utc["records"] if r["target"] == "clinical.encounter")["fields"]["admit_at"] == (
        "2024-03-14T15:05:00+00:00"  # the mapping's own zone, Los Angeles (PDT)
    )


def test_mapped_decodes_a_stored_message_with_its_charset(stored):
    row = stored.query(
        "messages", "select content, charset from messages where control_id = 'SGH-A01-000112' and duplicate_of is null"
    )[0]
    out = {d["destination"]: d for d in mapped(load_config(stored.config), "adt", row)}
    assert set(out) == {"clinical", "pm"} and out["clinical"]["mapping"] == "adt_clinical"
    patient = next(r for r in out["clinical"]["records"] if r["target"] == "clinical.patient")
    assert patient["key"] == {"mrn": "MRN100012", "mrn_issuer": "SUNRISE_GH"}
    assert (patient["fields"]["family_name"], patient["fields"]["given_name"]) == ("MU\u00d1OZ", "JOS\u00c9")
    assert out["clinical"]["error"] is None and out["clinical"]["warnings"] == []


# -- the command line (`engine replay`, registered in engine/cli.py) ---------------------------------


def test_engine_replay_prints_the_report_and_audits_the_read(stored, tmp_path):
    new = tmp_path / "adt_clinical.yaml"
    new.write_text(changed_mapping())
    args = ["replay", "--config", str(stored.config), "--mapping", str(new), "--channel", "adt", "--since", "7d"]

    refused = stored.cli(*args)
    assert refused.returncode == 2 and "--purpose" in refused.stderr

    out = stored.cli(*args, "--purpose", "ticket 4711")
    assert out.returncode == 0, out.stderr
    assert "6 message(s) read, 5 with changes, 1 without" in out.stdout
    assert "location_building: (not set) -> '4 WEST'" in out.stdout

    as_json = stored.cli(*args, "--purpose", "ticket 4711", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["summary"]["clinical.allergy"]["removed"] == 3

    audit = stored.query("messages", "select * from audit_log where purpose = 'ticket 4711' order by id")
    assert [(a["action"], a["target"], a["outcome"]) for a in audit] == [("replay", "channel adt", "ok")] * 2
    assert json.loads(audit[0]["detail"]) == {"messages": 6, "mapping": str(new)}


def test_engine_replay_exits_1_when_the_new_mapping_breaks_messages(stored, tmp_path):
    new = tmp_path / "adt_clinical.yaml"
    new.write_text(
        edit(
            changed_mapping(),
            "      admitting: PV1-17.1\n",
            "      admitting: {coalesce: [PV1-17.1], required: true}\n",
        )
    )
    out = stored.cli(
        "replay", "--config", str(stored.config), "--mapping", str(new), "--channel", "adt", "--purpose", "ticket 4712"
    )
    assert out.returncode == 1, out.stderr
    assert "FAILS where the current one does not" in out.stdout


def test_engine_replay_reports_an_invalid_mapping_with_file_and_line(stored, tmp_path):
    bad = tmp_path / "adt_clinical.yaml"
    bad.write_text(
        "records:\n  - target: clinical.patient\n    key: [mrn, mrn_issuer]\n"
        "    fields: {mrn: PID-3.1, mrn_issuer: PID-3.4, nme: PID-5}\n"
    )
    out = stored.cli(
        "replay", "--config", str(stored.config), "--mapping", str(bad), "--channel", "adt", "--purpose", "ticket 4713"
    )
    assert out.returncode == 2
    assert f"{bad}:4: records[0].fields.nme: unknown column 'nme' in clinical.patient" in out.stderr
