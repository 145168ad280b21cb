"""A Bundle POSTed to the FHIR endpoint is checked in a child process of the engine when it is
large (``check_processes``; engine/formats/fhir_checker.py). Against two real `engine run`s, one
checking in that child and one with ``check_processes: 0`` (all in its own process):

- every Bundle, good or with its first fault in any place, gets the same answer from both;
- the child did the checking (its CPU time grows by what a large Bundle costs);
- a killed child costs nothing but speed: the next Bundle is checked in the engine, answered
  alike, and a new child starts;
- the child ends with the engine, even a SIGKILLed one."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import EngineProcess, config_file, fhir_config

TOKEN = "checker-fhir-test-token-51a9e0c4"
SYSTEM = "https://northclinic.example.org/mrn"


def observation(mrn: str, n: int) -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "https://northclinic.example.org/obs", "value": f"OBS-{mrn}-{n}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"identifier": {"system": SYSTEM, "value": mrn}},
        "effectiveDateTime": "2026-11-30T08:15:00+01:00",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }


def bundle(mrn: str, entries: int = 6, kind: str = "transaction") -> dict:
    patient = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}], "name": [{"family": "Ck"}]}
    resources = [patient] + [observation(mrn, n) for n in range(1, entries)]
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources],
    }


def faulty() -> dict[str, tuple[int, object]]:
    """name -> (the status owed, the body: a Bundle of 6 entries, or another JSON value)."""
    out: dict[str, tuple[int, object]] = {}

    def case(name: str, status: int, change) -> None:
        b = bundle(f"MRN-CK-{name.upper()}")
        change(b)
        out[name] = (status, b)

    case("null-deep", 400, lambda b: b["entry"][3]["resource"]["valueQuantity"].update(value=None))
    case("collection", 400, lambda b: b.update(type="collection"))
    case("unknown-element", 400, lambda b: b.update(colour="teal"))
    case("no-resource", 400, lambda b: b["entry"][2].pop("resource"))
    case("bad-date", 400, lambda b: b["entry"][4]["resource"].update(effectiveDateTime="2026-13-01"))
    case("unsupported", 404, lambda b: b["entry"][2]["resource"].update(resourceType="Condition"))

    # the first fault wins, whichever kind each is
    def entries(b: dict, **changes: dict) -> None:
        for at, change in changes.items():
            b["entry"][int(at[1:])]["resource"].update(change)

    bad, other = {"effectiveDateTime": "2026-13-01"}, {"resourceType": "Condition"}
    case("bad-then-unsupported", 400, lambda b: entries(b, e1=bad, e4=other))
    case("unsupported-then-bad", 404, lambda b: entries(b, e1=other, e4=bad))
    case("entry-not-object", 400, lambda b: b["entry"].__setitem__(3, "an entry"))
    case("entry-not-list", 400, lambda b: b.update(entry={"resource": b["entry"][0]["resource"]}))
    out["array"] = (400, [bundle("MRN-CK-ARRAY")])
    return out


class Api:
    def __init__(self, eng: EngineProcess):
        self.eng = eng
        self.base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}

    def post(self, body: object) -> httpx.Response:
        return httpx.post(self.base, content=json.dumps(body).encode(), headers=self.headers, timeout=60)

    def children(self) -> list[int]:
        """The engine's check processes (not multiprocessing's resource tracker beside them)."""
        pid = self.eng.proc.pid
        kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
        return [k for k in kids if b"spawn_main" in _cmdline(k)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_for(condition, seconds: float = 30.0, what: str = ""):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def engine(tmp: Path, processes: int) -> Api:
    text = fhir_config(TOKEN, source=f"check_processes: {processes}")
    return Api(EngineProcess(tmp, config=config_file(tmp, text)).start())


def ready_child(api: Api) -> int:
    """The check process, once it has started and checks Bundles: its CPU time grows by what a
    200-entry Bundle costs to check while the engine answers it."""
    assert api.post(bundle("MRN-CK-WARM")).status_code == 200  # the first large Bundle starts it
    (child,) = wait_for(api.children, what="the check process starts")

    def checks_here() -> bool:
        before = cpu_ticks(child)
        time.sleep(0.3)
        if cpu_ticks(child) != before:
            return False  # still importing
        assert api.post(bundle("MRN-CK-BIG", entries=200)).status_code == 200
        return cpu_ticks(child) - before >= 2  # 20 ms at least: checking 200 resources costs more

    wait_for(checks_here, what="the check process checks a Bundle")
    return child


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    child_api = engine(tmp_path_factory.mktemp("fhir-checker-child"), 1)
    local_api = engine(tmp_path_factory.mktemp("fhir-checker-local"), 0)
    yield child_api, local_api
    child_api.eng.stop()
    local_api.eng.stop()


def answer(r: httpx.Response) -> tuple[int, object]:
    return r.status_code, r.json()


def test_every_bundle_gets_the_same_answer_from_the_check_process_as_without_it(pair):
    child_api, local_api = pair
    ready_child(child_api)
    assert local_api.children() == []  # check_processes: 0 starts none
    for name, (status, body) in faulty().items():
        got = answer(child_api.post(body))
        assert got == answer(local_api.post(body)), name
        assert got[0] == status and got[1]["resourceType"] == "OperationOutcome", (name, got)
        assert "MRN-CK" not in json.dumps(got[1]), name  # what was sent is not echoed
    for kind in ("transaction", "batch"):
        good = bundle(f"MRN-CK-GOOD-{kind.upper()}", kind=kind)
        assert child_api.post(good).status_code == local_api.post(copy.deepcopy(good)).status_code == 200
    rows = "SELECT count(*) AS n FROM observation WHERE filler_order_number LIKE 'OBS-MRN-CK-GOOD-%'"
    assert child_api.eng.query("clinical", rows)[0]["n"] == local_api.eng.query("clinical", rows)[0]["n"] == 10


def test_a_killed_check_process_costs_only_speed(pair):
    child_api, _ = pair
    child = ready_child(child_api)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: child not in child_api.children(), what="the killed child is reaped")
    status, body = faulty()["bad-date"]
    r = child_api.post(body)
    assert r.status_code == status and r.json()["issue"][0]["expression"] == [
        "Bundle.entry[4].resource.effectiveDateTime"
    ]
    assert child_api.post(bundle("MRN-CK-AFTER-KILL")).status_code == 200
    wait_for(lambda: [c for c in child_api.children() if c != child], what="a new check process starts")
    assert ready_child(child_api) != child


def test_the_check_process_ends_with_the_engine(tmp_path):
    api = engine(tmp_path, 1)
    try:
        child = ready_child(api)
    finally:
        api.eng.stop(signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2],
             seconds=15, what="the check process ends when its engine is killed")  # fmt: skip
