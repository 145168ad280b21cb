"""Console users, sessions and the audit log (issue 11): ``engine users``, ``engine audit``, the
audited CLI reads, owner-only SQLite files, and the Users / AuditLog API the console uses.

CLI tests run ``engine`` as a process on a temporary data directory; the database tests run on
SQLite and on PostgreSQL (a fresh schema of the machine's test database, through ``pg_url``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select as os_select
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ROOT, config_file
from sqlalchemy import delete, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from engine.stores import migrate
from engine.stores.audit import AuditLog, os_user
from engine.stores.console_tables import audit_log, metadata, sessions
from engine.stores.db import write_transaction
from engine.stores.message_store import Inbound, MessageStore
from engine.stores.users import Users

PASSWORD = "correct horse battery"
CONSOLE_TABLES = {"users", "sessions", "audit_log", "channel_state"}


@pytest.fixture
def cfg(tmp_path) -> Path:
    """A config whose stores live in ``tmp_path/data`` (not there yet: the CLI creates it)."""
    data = tmp_path / "data"
    return config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{data}/messages.db"}}
  clinical: {{url: "sqlite:///{data}/clinical.db"}}
mappings_dir: MAPPINGS
channels:
  - name: adt
    source: {{type: mllp, port: 7001}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
""",
    )


def engine(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """``engine ARGS --config CFG`` as an operator runs it; stdin is a pipe (never a terminal).
    ENGINE_USER is set to show that no environment variable names the actor."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args, "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "ENGINE_USER": "mallory"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def audit_rows(cfg: Path, *args: str) -> list[dict]:
    out = engine(cfg, "audit", "--json", "--limit", "500", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def store(cfg):
    s = MessageStore(f"sqlite:///{cfg.parent}/data/messages.db")
    s.upgrade()
    yield s
    s.engine.dispose()
    s.status_engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request, tmp_path):
    """A migrated message store on SQLite or on a fresh PostgreSQL schema."""
    url = f"sqlite:///{tmp_path}/m.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = MessageStore(url)
    s.upgrade()
    yield s
    s.engine.dispose()
    s.status_engine.dispose()


# -- engine users ---------------------------------------------------------------------------------
def test_users_added_changed_and_disabled_from_the_cli_are_audited_under_the_os_account(cfg, store):
    out = engine(cfg, "users", "add", "alice", "--role", "analyst", stdin=PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    users = Users(store.engine)
    assert users.verify("alice", PASSWORD) == {"name": "alice", "role": "analyst"}
    assert users.verify("alice", PASSWORD + "x") is None and users.verify("bob", PASSWORD) is None
    with store.engine.connect() as conn:
        (hashed,) = conn.execute(text("SELECT password_hash FROM users WHERE name = 'alice'")).one()
    assert hashed.startswith("$argon2id$") and "horse" not in hashed

    listed = engine(cfg, "users", "list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["alice", "analyst"]
    assert listed.stdout.splitlines()[1].endswith("-")  # not disabled

    assert engine(cfg, "users", "role", "alice", "viewer").returncode == 0
    assert users.verify("alice", PASSWORD) == {"name": "alice", "role": "viewer"}
    assert engine(cfg, "users", "passwd", "alice", stdin="another long secret\n").returncode == 0
    assert users.verify("alice", PASSWORD) is None and users.verify("alice", "another long secret") is not None
    assert engine(cfg, "users", "disable", "alice").returncode == 0
    assert users.verify("alice", "another long secret") is None
    assert "alice" in engine(cfg, "users", "list").stdout and users.list()[0]["disabled_at"] is not None

    rows = audit_rows(cfg)
    assert [(r["action"], r["target"], r["actor"]) for r in reversed(rows)] == [
        (action, "alice", os_user()) for action in ("users.add", "users.role", "users.passwd", "users.disable")
    ]
    assert rows[-1]["detail"] == {"role": "analyst"} and rows[-2]["detail"] == {"role": "viewer"}
    assert os_user() != "mallory" and all(PASSWORD not in json.dumps(r) for r in rows)


def on_a_terminal(cfg: Path, *args: str, answers: list[str]) -> tuple[int, str]:
    """``engine ARGS --config CFG`` with a pseudo-terminal as its terminal, typing the next of
    ``answers`` at each prompt; returns the exit code and what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child becomes engine, the pty its controlling terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "engine.cli", *args, "--config", str(cfg)])
    shown, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        if not os_select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child has closed the terminal
            break
        shown += chunk
        if answers and shown.endswith(b": "):  # a prompt, printed after getpass turned echo off
            os.write(fd, answers.pop(0).encode() + b"\n")
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), shown.decode(errors="replace")


def test_on_a_terminal_the_password_is_asked_twice_without_echo(cfg, store):
    code, shown = on_a_terminal(cfg, "users", "add", "dora", "--role", "operator", answers=[PASSWORD, PASSWORD + "!"])
    assert code == 2 and "differ" in shown and Users(store.engine).count() == 0
    code, shown = on_a_terminal(cfg, "users", "add", "dora", "--role", "operator", answers=[PASSWORD, PASSWORD])
    assert code == 0 and shown.count("password") == 2 and PASSWORD not in shown
    assert Users(store.engine).verify("dora", PASSWORD) == {"name": "dora", "role": "operator"}


def test_engine_users_refuses_bad_names_roles_passwords_and_unknown_users(cfg, store):
    def add(name: str, role: str, password: str) -> subprocess.CompletedProcess:
        return engine(cfg, "users", "add", name, "--role", role, stdin=password + "\n")

    for name, role, password, words in (
        ("bob", "admin", "short", "12 to 1024 characters"),
        ("bob", "root", PASSWORD, "unknown role 'root'"),
        ("bob smith", "admin", PASSWORD, "user name"),
        ("bob", "admin", "", "no password"),
    ):
        out = add(name, role, password)
        assert out.returncode == 2 and words in out.stderr, out.stderr
    assert Users(store.engine).count() == 0
    assert add("bob", "admin", PASSWORD).returncode == 0
    out = add("bob", "viewer", PASSWORD)
    assert out.returncode == 2 and "already exists" in out.stderr
    for args in (("disable", "nobody"), ("role", "nobody", "viewer")):
        out = engine(cfg, "users", *args)
        assert out.returncode == 1 and "no user 'nobody'" in out.stderr
    out = engine(cfg, "users", "add", "carol", "--role", "admin", "--password", PASSWORD)
    assert out.returncode == 2  # never on the command line, where every local user can read it
    assert [r["action"] for r in audit_rows(cfg)] == ["users.add"]


def test_sqlite_store_files_are_owner_only_and_a_loose_one_is_narrowed_with_a_warning(cfg, tmp_path):
    data = tmp_path / "data"
    old = os.umask(0o022)  # what a default shell gives; the files must be 0600 regardless
    try:
        assert engine(cfg, "users", "add", "alice", "--role", "admin", stdin=PASSWORD).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = list(data.glob("messages.db*"))
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)

    (data / "messages.db").chmod(0o644)
    out = engine(cfg, "users", "list")
    assert out.returncode == 0 and stat.S_IMODE((data / "messages.db").stat().st_mode) == 0o600
    assert f"{data / 'messages.db'} was readable by group or others" in out.stderr


# -- audited reads ----------------------------------------------------------------------------------
def test_messages_json_leaves_the_patient_identity_out_unless_asked_for_with_a_purpose(cfg, store):
    (stored,) = store.insert_received([Inbound("adt", b"MSH|^~\\&|A|NORTH", control_id="C1", ordering_key="NORTH|M1")])

    out = engine(cfg, "messages", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["control_id"] == "C1" and "ordering_key" not in row and "M1" not in out.stdout
    table = engine(cfg, "messages")
    assert "C1" in table.stdout and "M1" not in table.stdout
    for args in (
        ("--json", "--identifiers"),
        ("--json", "--identifiers", "--purpose", " "),
        ("--identifiers", "--purpose", "x"),
    ):
        refused = engine(cfg, "messages", *args)
        assert refused.returncode == 2 and "--purpose" in refused.stderr and refused.stdout == ""
    assert audit_rows(cfg, "--action", "messages.identifiers") == []

    out = engine(cfg, "messages", "--json", "--identifiers", "--purpose", "ticket 9")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["ordering_key"] == "NORTH|M1"
    out = engine(cfg, "messages", "--content", str(stored.id), "--purpose", "ticket 9")
    assert out.returncode == 0 and out.stdout.startswith("MSH|")
    rows = audit_rows(cfg)
    assert [(r["action"], r["purpose"], r["actor"]) for r in rows if r["action"] != "audit.read"] == [
        ("message.content", "ticket 9", os_user()),
        ("messages.identifiers", "ticket 9", os_user()),
    ]
    assert rows[0]["target"] == str(stored.id) and rows[1]["detail"] == {"count": 1}
    assert "M1" not in json.dumps(rows)


def test_engine_patient_and_engine_audit_record_themselves_without_the_identifier(cfg, store):
    out = engine(cfg, "patient", "NOPE123", "--purpose", "complaint 4")
    assert out.returncode == 1, out.stderr
    listing = engine(cfg, "audit")
    assert listing.returncode == 0 and "NOPE123" not in listing.stdout
    (line,) = listing.stdout.splitlines()[1:]  # the listing itself is recorded after it is taken
    assert line.split()[2:] == [os_user(), "-", f"cli@{os.uname().nodename}", "patient.read"] + line.split()[6:]
    assert line.split()[7:] == ["not-found", "complaint", "4"]
    read, patient = audit_rows(cfg, "--since", "1h")
    assert (read["action"], read["actor"], read["detail"]) == ("audit.read", os_user(), {"count": 1})
    assert (patient["outcome"], patient["purpose"]) == ("not-found", "complaint 4")
    assert len(patient["target"]) == 32  # the access id of the stores' own record_access rows
    mine = audit_rows(cfg, "--actor", os_user(), "--action", "audit.read")
    assert [r["detail"]["count"] for r in mine] == [2, 1] and "since" in mine[0]["detail"]


# -- the Python API the console uses ---------------------------------------------------------------
def test_a_session_keeps_only_the_tokens_hash_follows_the_users_role_and_ends(db):
    users = Users(db.engine)
    assert users.ensure_first_admin("admin", PASSWORD) is True
    assert users.ensure_first_admin("other", "") is False and users.count() == 1
    token = users.open_session("admin", "10.0.0.7")
    with db.engine.connect() as conn:
        row = conn.execute(select(sessions)).mappings().one()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest() and token not in json.dumps(
        dict(row), default=str
    )
    assert row["expires_at"] - row["created_at"] == timedelta(hours=12) and row["peer"] == "10.0.0.7"
    seen = users.session(token)
    assert seen is not None and (seen["name"], seen["role"]) == ("admin", "admin")
    users.set_role("admin", "operator")
    assert (users.session(token) or {}).get("role") == "operator"
    assert users.session(token + "x") is None
    users.close_session(token)
    assert users.session(token) is None
    with pytest.raises(LookupError):
        users.open_session("nobody", "")


def _age(db, token: str, **columns) -> None:
    key = hashlib.sha256(token.encode()).hexdigest()
    with write_transaction(db.engine) as conn:
        conn.execute(update(sessions).where(sessions.c.token_hash == key).values(**columns))


def test_a_session_ends_when_idle_too_long_at_its_absolute_end_or_when_its_user_goes(db):
    users = Users(db.engine)
    users.add("ann", "viewer", PASSWORD)
    now = datetime.now(UTC)
    idle, used, old = (users.open_session("ann", "", idle_minutes=30) for _ in range(3))
    _age(db, idle, last_seen_at=now - timedelta(minutes=31))
    _age(db, used, last_seen_at=now - timedelta(minutes=29))
    _age(db, old, expires_at=now - timedelta(seconds=1))
    assert users.session(idle) is None and users.session(old) is None
    assert users.session(used) is not None
    with db.engine.connect() as conn:  # that use restarted its idle clock
        key = hashlib.sha256(used.encode()).hexdigest()
        seen = conn.execute(select(sessions.c.last_seen_at).where(sessions.c.token_hash == key)).scalar_one()
    assert seen >= now
    quick = users.open_session("ann", "", idle_minutes=0.01)
    assert users.session(quick) is not None
    _age(db, quick, last_seen_at=now - timedelta(seconds=2))
    assert users.session(quick) is None
    users.set_password("ann", "a different long secret")
    assert users.session(used) is None  # a password change ends every session of the user
    users.add("ben", "analyst", PASSWORD)
    ben = users.open_session("ben", "")
    users.disable("ben")
    assert users.session(ben) is None and users.verify("ben", PASSWORD) is None
    with pytest.raises(LookupError):
        users.open_session("ben", "")
    with db.engine.connect() as conn:
        assert conn.execute(select(sessions.c.user_name).where(sessions.c.user_name == "ben")).all() == []
    for bad in (
        ("ann", "viewer", PASSWORD),
        ("x", "boss", PASSWORD),
        ("x", "viewer", "11 chars..."),
        ("", "viewer", PASSWORD),
    ):
        with pytest.raises(ValueError):
            users.add(*bad)
    assert [u["name"] for u in users.list()] == ["ann", "ben"] and "password_hash" not in users.list()[0]


def test_the_audit_log_is_searched_newest_first_and_refuses_update_and_delete(db):
    log = AuditLog(db.engine)
    for i in range(5):
        log.record(actor="ann" if i % 2 else "ben", action=f"act.{i % 3}", target=str(i), purpose="p" * 300)
    rows = log.search()
    assert [r["target"] for r in rows] == ["4", "3", "2", "1", "0"] and len(rows[0]["purpose"]) == 200
    assert [r["target"] for r in log.search(actor="ann")] == ["3", "1"]
    assert [r["target"] for r in log.search(action="act.0")] == ["3", "0"]
    page = log.search(limit=2)
    assert [r["target"] for r in log.search(before_id=page[-1]["id"], limit=2)] == ["2", "1"]
    assert log.search(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(log.search(until=datetime.now(UTC) + timedelta(minutes=1))) == 5
    log.record(actor="ann", action="login", outcome="refused", detail={"reason": "password"})
    assert log.search(limit=1)[0]["detail"] == {"reason": "password"} and rows[0]["detail"] == {}

    for statement in (update(audit_log).values(actor="nobody"), delete(audit_log)):
        with pytest.raises(DBAPIError, match="append-only"), write_transaction(db.engine) as conn:
            conn.execute(statement)
    assert len(log.search()) == 6 and {r["actor"] for r in log.search()} == {"ann", "ben"}


def test_the_console_migration_matches_the_model_and_goes_back_to_messages_0007(db):
    def diff() -> list:
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "version_table": migrate.version_table("messages"),
                    "include_name": lambda name, type_, _parent: type_ != "table" or name in metadata.tables,
                },
            )
            return list(compare_metadata(ctx, metadata))

    assert migrate.is_current(db.url, "messages", engine=db.engine) and diff() == []
    AuditLog(db.engine).record(actor="ann", action="login")
    with write_transaction(db.engine) as conn:
        command.downgrade(migrate.config(db.url, "messages", conn), "messages_0007")
    assert not CONSOLE_TABLES & set(inspect(db.engine).get_table_names())
    db.upgrade()
    assert set(inspect(db.engine).get_table_names()) >= CONSOLE_TABLES and diff() == []
    AuditLog(db.engine).record(actor="ann", action="login")
    with pytest.raises(DBAPIError, match="append-only"), write_transaction(db.engine) as conn:
        conn.execute(delete(audit_log))
