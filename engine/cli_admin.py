"""``engine users`` and ``engine audit``: the console's users and the audit log from the command
line (the console's own API does the same over HTTP: engine/console/app.py)."""

from __future__ import annotations

import getpass
import json
import sys

from engine.cli import ROLES_HELP, _audit, _message_store


def _read_password() -> str | None:
    """A new password: asked twice on a terminal (None when the two differ), else one line of
    stdin (a script pipes it in). Never an argument: argv is visible to every local user."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        return first if getpass.getpass("password again: ") == first else None
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users(args) -> int:
    """Change or list console users; each change is an audit_log row (users.add, users.passwd,
    users.role, users.disable) naming the user. Exit 2 on an invalid name, role or password,
    1 for an unknown user."""
    from engine.stores.audit import ROLES
    from engine.stores.users import Users

    _cfg, store = _message_store(args)
    users = Users(store.engine)
    if args.action == "list":
        print(f"{'NAME':24} {'ROLE':9} {'CREATED':19}  DISABLED")
        for u in users.list():
            off = f"{u['disabled_at']:%Y-%m-%d %H:%M:%S}" if u["disabled_at"] else "-"
            print(f"{u['name']:24} {u['role']:9} {u['created_at']:%Y-%m-%d %H:%M:%S}  {off}")
        return 0
    role = getattr(args, "role", None)
    if role is not None and role not in ROLES:
        print(f"error: unknown role {role!r} (roles: {ROLES_HELP})", file=sys.stderr)
        return 2
    try:
        if args.action in ("add", "passwd"):
            password = _read_password()
            if not password:
                print("error: no password given (or the two entries differ)", file=sys.stderr)
                return 2
            if args.action == "add":
                users.add(args.name, args.role, password)
            else:
                users.set_password(args.name, password)
        elif args.action == "role":
            users.set_role(args.name, args.role)
        else:
            users.disable(args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    _audit(store, f"users.{args.action}", target=args.name, detail={"role": role} if role else None)
    print(f"user {args.name}: {args.action} done")
    return 0


def cmd_audit(args) -> int:
    """Print the audit log newest first; the read itself is recorded (audit.read) after it is taken."""
    from engine.stores.audit import AuditLog

    _cfg, store = _message_store(args)
    rows = AuditLog(store.engine).search(actor=args.actor, action=args.action, since=args.since, limit=args.limit)
    asked = {k: v for k, v in {"actor": args.actor, "action": args.action, "since": args.since}.items() if v}
    _audit(store, "audit.read", detail={**asked, "count": len(rows)})
    if args.json:
        print(json.dumps([{**r, "at": r["at"].isoformat()} for r in rows], indent=2))
        return 0
    print(f"{'AT':19}  {'ACTOR':16} {'ROLE':9} {'PEER':21} {'ACTION':20} {'TARGET':24} {'OUTCOME':9} PURPOSE")
    for r in rows:
        print(
            f"{r['at']:%Y-%m-%d %H:%M:%S}  {r['actor'][:16]:16} {r['role'] or '-':9} {r['peer'][:21]:21} "
            f"{r['action']:20} {r['target'][:24] or '-':24} {r['outcome']:9} {r['purpose']}".rstrip()
        )
    return 0
