"""Make docs/console.png: the operator console's channel overview after some real traffic.

Starts ``engine run`` on the sample config in a temporary data dir (the test harness's
EngineProcess: free ports, SQLite), sends the visit's messages (tests/fixtures/hl7v2/visit) and a
few others in rounds a little apart, so that the per-minute charts have more than one bar: ADT
with a warning, a note that fails, orders and prescriptions that wait for a downstream nobody
listens to. The immunizations channel is paused before the last round (its VXU waits, as when
an operator holds a feed whose mapping is being fixed). Then it signs in with headless Chromium
and saves a 1440x900 picture.

    .venv/bin/python docs/make_screenshot.py            # about 4 minutes
    .venv/bin/python docs/make_screenshot.py --rounds 2 --interval 5 --out /tmp/console.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import FIXTURES, SAMPLE_ADMIN_PASSWORD, EngineProcess, MllpConnection  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")

TRAFFIC = [
    ("ENGINE_SCHEDULING_PORT", "visit/1_siu_s12_booking.hl7"),
    ("ENGINE_ADT_PORT", "visit/2_adt_a04_arrival.hl7"),
    ("ENGINE_ORDERS_PORT", "visit/3_oml_o21_order.hl7"),
    ("ENGINE_LAB_PORT", "visit/4_oru_r01_result.hl7"),
    ("ENGINE_DOCUMENTS_PORT", "visit/5_mdm_t02_note.hl7"),
    ("ENGINE_PHARMACY_ORDERS_PORT", "visit/6_rde_o11_prescription.hl7"),
    ("ENGINE_IMMUNIZATION_PORT", "visit/7_vxu_v04_flu_shot.hl7"),
    ("ENGINE_CHARGES_PORT", "visit/8_dft_p03_charges.hl7"),
    ("ENGINE_ADT_PORT", "adt_a01.hl7"),
    ("ENGINE_ADT_PORT", "adt_a08.hl7"),
    ("ENGINE_ADT_PORT", "gaps/adt_a04_selfpay.hl7"),  # SENT with a warning (a coverage left out)
    ("ENGINE_LAB_PORT", "oru_r01.hl7"),
]
"""(port variable, fixture): one round of traffic; later rounds send part of it again."""

FAILING_NOTE = (
    "MSH|^~\\&|EHR_NOTES|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240520090000||MDM^T02|{cid}|P|2.5\r"
    "PID|1||MRN860001^^^SUNRISE_GH^MR\r"
    "TXA|1|PN|TX|20240520083000|||||||||||||AU\r"
    "OBX|1|TX|11506-3^Progress note^LN||Seen for a cough.||||||F\r"
)
"""A note without its document number: the documents channel fails it (ERROR)."""


def with_control_id(message: bytes, control_id: str) -> bytes:
    """The message with MSH-10 replaced (each round's copy is a new message, not a resend)."""
    text = message.decode("latin-1")
    sep = "\r" if "\r" in text else "\n"
    first, _, rest = text.partition(sep)
    fields = first.split(first[3])
    fields[9] = control_id
    return (first[3].join(fields) + sep + rest).encode("latin-1")


def send(eng: EngineProcess, port_var: str, message: bytes) -> None:
    conn = MllpConnection(int(eng.env[port_var]))
    try:
        conn.send(message)
    finally:
        conn.close()


def send_round(eng: EngineProcess, n: int, rounds: int) -> None:
    """Round ``n`` (0-based): the whole traffic first, then a varying part of it, and a failing
    note every other round."""
    for i, (port_var, name) in enumerate(TRAFFIC):
        if n and (i + n) % 3 == 0:
            continue
        data = (FIXTURES / name).read_bytes()
        send(eng, port_var, with_control_id(data, f"R{n}-{i:02d}-{name.split('/')[-1][:12]}"))
    if n % 2 == 0 or n == rounds - 1:
        send(eng, "ENGINE_DOCUMENTS_PORT", FAILING_NOTE.format(cid=f"R{n}-NOTE").encode())


def screenshot(eng: EngineProcess, out: Path, *, pause: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(eng.console_url)
        page.fill("#login input[name=name]", "admin")
        page.fill("#login input[name=password]", SAMPLE_ADMIN_PASSWORD)
        page.click("#login button[type=submit]")
        expect(page.locator(f'#channels tr[data-channel="{pause}"] td[data-col="state"]')).to_have_text(
            "paused", timeout=15_000
        )
        page.wait_for_timeout(300)
        page.screenshot(path=str(out))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds of traffic (default %(default)s)")
    parser.add_argument("--interval", type=float, default=30, help="seconds between rounds (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    parser.add_argument("--pause", default="immunizations", help="channel paused before the last round")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is absent: the screenshot needs the system Chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="console-shot-") as tmp:
        eng = EngineProcess(Path(tmp)).start()
        try:
            for n in range(args.rounds):
                if n == args.rounds - 1:
                    pause_channel(eng, args.pause)
                send_round(eng, n, args.rounds)
                if n < args.rounds - 1:
                    time.sleep(args.interval)
            time.sleep(2)  # let the last round settle
            screenshot(eng, args.out, pause=args.pause)
        finally:
            eng.stop()
    print(f"wrote {args.out}")
    return 0


def pause_channel(eng: EngineProcess, channel: str) -> None:
    """Pause through the console's API, as an operator's click does."""
    import httpx

    with httpx.Client(base_url=eng.console_url, headers={"X-Requested-With": "engine-console"}) as client:
        client.post("/api/login", json={"name": "admin", "password": SAMPLE_ADMIN_PASSWORD}).raise_for_status()
        client.post(f"/api/channels/{channel}/pause").raise_for_status()


if __name__ == "__main__":
    sys.exit(main())
