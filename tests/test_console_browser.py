"""The operator console in a real browser: headless Chromium (the system's, never a downloaded
one) through Playwright, on a real ``engine run`` of the sample config with real MLLP traffic.
What an admin, an operator and a viewer see, and what their clicks do to the engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_ADMIN_PASSWORD, EngineProcess, MllpConnection, fixture_bytes, send_and_settle

CHROMIUM = Path("/usr/bin/chromium")
PASSWORDS = {"vera": "viewer-password-0001", "otto": "operator-password-01"}
ROLES = {"vera": "viewer", "otto": "operator"}
WAIT_MS = 10_000  # longest wait for something the page shows (its overview refreshes every 5 s)
ADT = (
    ("adt_a01.hl7", "SGH-A01-000101"),
    ("adt_a04.hl7", "NPC-A04-33017"),
    ("adt_a08.hl7", "SGH-A08-000133"),
    ("gaps/adt_a04_selfpay.hl7", "SP-A04-0001"),  # SENT with a warning: its self-pay coverage left out
)
MDM_WITHOUT_NUMBER = (
    b"MSH|^~\\&|EHR_NOTES|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240520090000||MDM^T02|CON-ERR-1|P|2.5\r"
    b"PID|1||MRN860001^^^SUNRISE_GH^MR\r"
    b"TXA|1|PN|TX|20240520083000|||||||||||||AU\r"
    b"OBX|1|TX|11506-3^Progress note^LN||Seen for a cough.||||||F\r"
)
"""A note without its document number: the documents channel takes it and fails it (ERROR)."""
MARKUP_ID = "<b>CON-X1</b>"
"""A control id that is markup: the page must show it as text."""


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is absent: the console's browser tests use the system Chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """The sample engine with its console, a viewer and an operator, and some traffic: four ADT
    (SENT, one with a warning), a note that fails (ERROR), an ADT on the lab port (FILTERED)."""
    eng = EngineProcess(tmp_path_factory.mktemp("console")).start()
    try:
        for name, password in PASSWORDS.items():
            out = subprocess.run(
                [sys.executable, "-m", "engine.cli", "users", "add", name, "--role", ROLES[name]]
                + ["--config", str(eng.config)],
                input=password + "\n",
                cwd=ROOT,
                env=eng.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
        for fixture, control_id in ADT:
            send_and_settle(eng, eng.adt_port, fixture_bytes(fixture), control_id)
        send_and_settle(eng, int(eng.env["ENGINE_DOCUMENTS_PORT"]), MDM_WITHOUT_NUMBER, "CON-ERR-1", final="ERROR")
        adt_on_lab = f"MSH|^~\\&|REG|NORTH|||20240520090000||ADT^A08|{MARKUP_ID}|P|2.5\rPID|1||M1^^^NORTH^MR\r"
        send_and_settle(eng, eng.lab_port, adt_on_lab.encode(), MARKUP_ID, final="FILTERED")
        yield eng
    finally:
        eng.stop()


@pytest.fixture
def page(browser, console):
    """A fresh browser context (no cookie) on the console's page."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(console.console_url)
    yield pg
    context.close()
    assert not errors, f"the page raised: {errors}"


def sign_in(page, name: str, password: str) -> None:
    page.fill("#login input[name=name]", name)
    page.fill("#login input[name=password]", password)
    page.click("#login button[type=submit]")


def expect(target):
    """Playwright's expect, waiting up to WAIT_MS (its own default, 5 s, is the overview's refresh period)."""
    from playwright.sync_api import expect as pw_expect

    pw_expect.set_options(timeout=WAIT_MS)
    return pw_expect(target)


def cell(page, channel: str, column: str):
    return page.locator(f'#channels tr[data-channel="{channel}"] td[data-col="{column}"]')


def bar_total(page, chart: str) -> int:
    return page.eval_on_selector_all(
        f"#svg-{chart} rect.bar", "bars => bars.reduce((n, b) => n + Number(b.dataset.value), 0)"
    )


def stored(console, sql: str, **params) -> list[dict]:
    return console.query("messages", sql, **params)


def test_an_admin_sees_each_channel_with_its_counts_and_charts_of_the_last_hour(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    expect(cell(page, "adt", "total")).to_have_text("4")
    expect(cell(page, "adt", "sent")).to_have_text("4")
    expect(cell(page, "adt", "warnings")).to_have_text("1")
    expect(cell(page, "adt", "state")).to_have_text("running")
    expect(cell(page, "documents", "errors")).to_have_text("1")
    expect(cell(page, "lab-results", "filtered")).to_have_text("1")
    expect(page.locator("#channels tbody tr")).to_have_count(len(console.lines))
    # every message of the store is one unit of a bar; each failed one also of the errors chart
    received = stored(console, "select count(*) as n from messages")[0]["n"]
    errors = stored(console, "select count(*) as n from messages where status = 'ERROR'")[0]["n"]
    assert bar_total(page, "received") == received >= 5
    assert bar_total(page, "errors") == errors >= 1
    assert page.locator('#svg-received rect.bar[data-channel="adt"]').count() >= 1
    expect(page.locator("#legend")).to_contain_text("documents")
    expect(page.locator('[data-kpi="errors"] .kpi-value')).to_have_text(str(errors))
    # the 5 s refresh updates the rows in place (no table rebuilt under the reader's eyes)
    page.eval_on_selector('#channels tr[data-channel="adt"]', "tr => { tr.dataset.mark = 'kept'; }")
    expect(page.locator("#refreshed")).not_to_have_text(page.inner_text("#refreshed"))
    expect(page.locator('#channels tr[data-channel="adt"]')).to_have_attribute("data-mark", "kept")
    # the signed-in admin sees every page of the console
    expect(page.locator("#nav a")).to_have_text(["Channels", "Messages", "Replay", "Audit", "Users"])


def test_an_admin_finds_a_message_reads_its_content_for_a_purpose_and_reprocesses_it(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.click('#nav a[data-nav="messages"]')
    page.select_option("#message-search select[name=channel]", "adt")
    page.fill("#message-search input[name=control_id]", "SGH-A08-000133")
    page.click("#message-search button[type=submit]")
    rows = page.locator("#messages tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator('td[data-col="control_id"]')).to_have_text("SGH-A08-000133")
    [row] = stored(console, "select id, updated_at from messages where control_id = 'SGH-A08-000133'")

    rows.first.click()
    expect(page).to_have_url(re.compile(f"#/message/{row['id']}$"))
    expect(page.locator('#meta dd[data-field="status"]')).to_have_text("SENT")
    expect(page.locator("#deliveries tbody tr")).to_have_count(2)  # clinical and pm

    page.click("#show-content")
    page.click("#dialog button[type=submit]")  # no purpose: the dialog stays
    expect(page.locator("#dialog")).to_be_visible()
    page.fill("#dialog input[name=purpose]", "ticket 4711")
    page.click("#dialog button[type=submit]")
    expect(page.locator("#content")).to_contain_text("MSH|^~\\&|REGADT|SUNRISE_GH")
    expect(page.locator("#content")).to_contain_text("SGH-A08-000133")
    reads = console.query(
        "messages",
        "select actor, purpose from audit_log where action = 'message.content' and target = :t",
        t=f"message {row['id']}",
    )
    assert reads == [{"actor": "admin", "purpose": "ticket 4711"}]

    page.click("#reprocess")
    page.click("#dialog button[type=submit]")
    expect(page.locator("#toasts")).to_contain_text(f"Message {row['id']} queued for reprocessing")
    console.wait_for(
        "messages",
        "select status, updated_at from messages where id = :i",
        lambda r: r[0]["status"] == "SENT" and r[0]["updated_at"] != row["updated_at"],
        i=row["id"],
    )
    expect(page.locator('#meta dd[data-field="status"]')).to_have_text("SENT")

    # the read and its purpose, as the admin finds them in the audit log
    page.goto(f"{console.console_url}#/audit?action=message.content")
    expect(page.locator("#audit tbody tr")).to_have_count(1)
    expect(page.locator("#audit tbody tr")).to_contain_text(f"message {row['id']}")
    expect(page.locator("#audit tbody tr")).to_contain_text("ticket 4711")


def test_the_message_list_pages_to_older_messages(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.goto(f"{console.console_url}#/messages?channel=adt&limit=3")
    ids = page.locator('#messages td[data-col="control_id"]')
    expect(ids).to_have_count(3)
    page.click("#older")
    expect(ids).to_have_count(len(ADT))
    expect(page.locator("#older")).to_be_hidden()
    newest_first = stored(console, "select control_id from messages where channel = 'adt' order by id desc")
    assert ids.all_inner_texts() == [r["control_id"] for r in newest_first]


def test_the_search_form_filters_by_time_type_and_status(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.click('#nav a[data-nav="messages"]')
    form = page.locator("#message-search")
    ids = page.locator('#messages td[data-col="control_id"]')
    local = lambda days: (datetime.now() + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")  # as typed

    form.locator("input[name=since]").fill(local(1))
    form.locator("button[type=submit]").click()
    expect(page.locator("#result-count")).to_have_text("no messages match")
    form.locator("input[name=since]").fill(local(-1))
    form.locator("input[name=until]").fill(local(1))
    form.locator("input[name=message_type]").fill("ADT^A04")
    form.locator("button[type=submit]").click()
    expect(ids).to_have_text(["SP-A04-0001", "NPC-A04-33017"])
    form.locator("input[name=message_type]").fill("")
    form.locator("select[name=status]").select_option("FILTERED")
    form.locator("button[type=submit]").click()
    expect(ids).to_have_text([MARKUP_ID])


def test_an_admin_reprocesses_what_a_search_finds_or_the_messages_selected(page, console):
    def reprocessed(action: str) -> list[dict]:
        return stored(console, "select purpose, detail from audit_log where action = :a order by id", a=action)

    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.goto(f"{console.console_url}#/messages?channel=documents&status=ERROR")
    expect(page.locator("#messages tbody tr")).to_have_count(1)
    page.click("#reprocess-all")
    expect(page.locator("#dialog")).to_contain_text("channel documents, status ERROR")
    page.fill("#dialog input[name=purpose]", "mapping fixed, ticket 99")
    page.click("#dialog button[type=submit]")
    expect(page.locator("#toasts")).to_contain_text("1 message queued for reprocessing")
    [entry] = reprocessed("messages.reprocess")
    assert entry["purpose"] == "mapping fixed, ticket 99" and json.loads(entry["detail"])["count"] == 1

    before = len(reprocessed("message.reprocess"))
    page.goto(f"{console.console_url}#/messages?channel=adt")
    boxes = page.locator("#messages tbody input[type=checkbox]")
    expect(boxes).to_have_count(len(ADT))
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("#reprocess-selected")
    page.click("#dialog button[type=submit]")
    expect(page.locator("#toasts")).to_contain_text("2 messages queued for reprocessing")
    assert len(reprocessed("message.reprocess")) == before + 2


def test_a_replay_shows_field_by_field_what_a_changed_mapping_would_write(page, console):
    changed = (ROOT / "mappings" / "adt_pm.yaml").read_text().replace("given_name: PID-5.2", "given_name: PID-5.3")
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.click('#nav a[data-nav="replay"]')
    page.select_option("#replay select[name=channel]", "adt")
    page.select_option("#replay select[name=destination]", "pm")
    page.fill("#replay textarea[name=mapping]", changed)
    page.fill("#replay input[name=purpose]", "ticket 5: given name from PID-5.3?")
    page.click("#replay button[type=submit]")
    expect(page.locator("#replay-summary")).to_contain_text(f"{len(ADT)} read")
    expect(page.locator("#replay-table")).to_contain_text("pm.registration")
    expect(page.locator("#replay-table")).to_contain_text("given_name")
    first = page.locator(".replay-message").first
    expect(first.locator("tbody tr").first.locator("td").nth(2)).to_have_text("given_name")
    assert stored(console, "select purpose from audit_log where action = 'replay'") == [
        {"purpose": "ticket 5: given name from PID-5.3?"}
    ]


def test_an_admin_adds_a_user_and_disables_them(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.click('#nav a[data-nav="users"]')
    page.fill("#add-user input[name=name]", "ana")
    page.select_option("#add-user select[name=role]", "analyst")
    page.fill("#add-user input[name=password]", "analyst-password-01")
    page.click("#add-user button[type=submit]")
    expect(page.locator('#users tr[data-user="ana"] td').nth(1)).to_have_text("analyst")
    page.click("#signout")

    sign_in(page, "ana", "analyst-password-01")
    expect(page.locator("#nav a")).to_have_text(["Channels", "Messages", "Replay"])
    page.click("#signout")

    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.click('#nav a[data-nav="users"]')
    page.locator('#users tr[data-user="ana"] button').click()
    page.click("#dialog button[type=submit]")
    expect(page.locator('#users tr[data-user="ana"] td').nth(4)).not_to_be_empty()
    page.click("#signout")
    sign_in(page, "ana", "analyst-password-01")
    expect(page.locator("#login-error")).to_have_text("Wrong name or password.")


def test_markup_in_a_message_is_shown_as_text(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    page.goto(f"{console.console_url}#/messages?channel=lab-results")
    cell_ = page.locator('#messages td[data-col="control_id"]')
    expect(cell_).to_have_text(MARKUP_ID)
    assert cell_.locator("b").count() == 0


def test_a_paused_channel_keeps_receiving_and_hands_on_at_resume(page, console):
    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    cell(page, "immunizations", "actions").get_by_role("button", name="Pause").click()
    expect(cell(page, "immunizations", "state")).to_have_text("paused")
    expect(page.locator("#toasts")).to_contain_text("immunizations paused")
    assert stored(console, "select paused from channel_state where channel = 'immunizations'") == [{"paused": 1}]

    conn = MllpConnection(int(console.env["ENGINE_IMMUNIZATION_PORT"]))
    try:
        conn.send(fixture_bytes("visit/7_vxu_v04_flu_shot.hl7"))
    finally:
        conn.close()
    expect(cell(page, "immunizations", "queued")).to_have_text("1")  # by the 5 s refresh
    assert stored(console, "select status from messages where control_id = 'NC-VXU-0001'") == [{"status": "RECEIVED"}]

    cell(page, "immunizations", "actions").get_by_role("button", name="Resume").click()
    expect(cell(page, "immunizations", "state")).to_have_text("running")
    console.wait_for(
        "messages",
        "select status from messages where control_id = 'NC-VXU-0001'",
        lambda r: r == [{"status": "SENT"}],
    )
    expect(cell(page, "immunizations", "sent")).to_have_text("1")
    expect(cell(page, "immunizations", "queued")).to_have_text("0")


def test_a_viewer_sees_channels_and_charts_but_no_message(page, console):
    sign_in(page, "vera", PASSWORDS["vera"])
    expect(cell(page, "adt", "total")).to_have_text("4")
    assert bar_total(page, "received") >= 5
    expect(page.locator("#nav a")).to_have_text(["Channels"])
    assert page.locator("#channels button").count() == 0  # no pause / resume
    page.goto(f"{console.console_url}#/messages")
    expect(page.locator(".not-allowed")).to_contain_text("Not allowed")
    assert page.locator("#messages").count() == 0


def test_an_operator_browses_messages_without_patient_identifiers_or_content(page, console):
    sign_in(page, "otto", PASSWORDS["otto"])
    expect(page.locator("#nav a")).to_have_text(["Channels", "Messages"])
    page.click('#nav a[data-nav="messages"]')
    expect(page.locator("#messages tbody tr")).to_have_count(len(stored(console, "select id from messages")))
    warned = page.locator('#messages tr:has(td[data-col="control_id"]:text-is("SP-A04-0001"))')
    expect(warned.locator('td[data-col="warnings"]')).to_have_text("1")
    assert page.locator("#message-search input[name=patient]").count() == 0
    assert "Patient" not in page.locator("#messages thead").inner_text()
    page.locator("#messages tbody tr").first.click()
    expect(page.locator("#reprocess")).to_be_visible()
    assert page.locator("#show-content").count() == 0 and page.locator("#show-mapped").count() == 0
    page.goto(f"{console.console_url}#/audit")
    expect(page.locator(".not-allowed")).to_contain_text("Not allowed")


def test_a_wrong_password_is_refused_and_an_ended_session_asks_to_sign_in_again(page, console):
    sign_in(page, "admin", "not-the-password")
    expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
    assert page.locator("#channels").count() == 0

    sign_in(page, "admin", SAMPLE_ADMIN_PASSWORD)
    expect(cell(page, "adt", "total")).to_have_text("4")
    page.context.clear_cookies()
    page.click('#nav a[data-nav="messages"]')
    expect(page.locator("#expired")).to_contain_text("session expired")
    expect(page.locator("#login")).to_be_visible()
