"""The console's HTTP API (FastAPI; OpenAPI at ``/api/openapi.json``, read at ``/api/docs``), the
dashboard's static files and ``/metrics``. Roles: :data:`engine.console.ROLE_CAN`.

- Sign-in gives a session cookie (``engine_session``: HttpOnly, SameSite=Strict, Secure under
  TLS); the store keeps only its hash; it ends after ``session_idle_minutes`` idle or
  ``session_absolute_hours``. Five failed sign-ins for a name or from an address within five
  minutes get 429 until the window passes; every failure is audited.
- A request that changes anything must carry ``X-Requested-With: engine-console``: a page of
  another site cannot add it without the browser asking us first (CORS), and we never agree.
- Audited (who, when, from where, what, the stated purpose): every read of message content,
  mapping output or patient identifiers, every reprocess, pause and resume, user change, replay,
  failed sign-in and read of the audit log itself.
- Endpoints are plain ``def``: FastAPI runs them in its thread pool, where store calls may block.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and
# ``Me`` below is local to create_app, where postponed (string) annotations would not find it.
import json
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import select

from engine.console import ROLE_CAN, Console, log
from engine.errors import ConfigError, EngineError
from engine.stores.db import aware
from engine.stores.message_tables import PENDING, messages

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "engine_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "engine-console"
MAX_PURPOSE = 200
LOGIN_WINDOW_SECONDS = 300.0
LOGIN_FAILURES = 5  # per name; per address four times as many (an office may share one address)
MAX_REPROCESS = 10_000
Id = Annotated[int, FastPath(ge=1, le=2**63 - 1)]
"""A message id: what a BIGINT holds (larger would not even reach the store)."""


class Login(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: str
    password: str = Field(min_length=1, max_length=1000)


class RoleChange(BaseModel):
    role: str


class PasswordChange(BaseModel):
    password: str = Field(min_length=1, max_length=1000)


class Search(BaseModel):
    channel: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None
    control_id: str | None = None
    patient: str | None = None
    message_type: str | None = None
    purpose: str = ""


class Replay(BaseModel):
    channel: str
    mapping: str = Field(min_length=1, max_length=1_000_000)
    destination: str | None = None
    since: str = "24h"
    until: str | None = None
    limit: int = Field(1000, ge=1, le=10_000)
    purpose: str = Field(min_length=1, max_length=MAX_PURPOSE)


class Throttle:
    """Failed sign-ins per key (a name, an address) in a sliding window; ``limits``: key -> most."""

    def __init__(self, window: float = LOGIN_WINDOW_SECONDS):
        self.window = window
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, limits: dict[str, int]) -> float:
        """Seconds until every key may try again (0: now)."""
        t = time.monotonic()
        with self._lock:
            longest = 0.0
            for k, most in limits.items():
                q = self._fails.get(k)
                while q and t - q[0] > self.window:
                    q.popleft()
                if q and len(q) >= most:
                    longest = max(longest, self.window - (t - q[-most]))
            return longest

    def fail(self, limits: dict[str, int]) -> None:
        t = time.monotonic()
        with self._lock:
            for k, most in limits.items():
                self._fails.setdefault(k, deque(maxlen=most)).append(t)
            if len(self._fails) > 100_000:  # names tried once long ago: forget them
                self._fails = {k: q for k, q in self._fails.items() if q and t - q[-1] <= self.window}


def create_app(console: Console) -> FastAPI:
    app = FastAPI(
        title="engine console",
        description="Admin API of the integration engine: channels, messages, reprocessing, audit, users.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    settings = console.settings
    throttle = Throttle()
    store = console.store
    audit = console.audit

    # -- plumbing -----------------------------------------------------------------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS") and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            return JSONResponse({"detail": f"missing header X-Requested-With: {CSRF_VALUE}"}, status_code=403)
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug must not answer with a trace, nor log one: it may quote values
            log.error("console: %s on %s %s", type(exc).__name__, request.method, request.url.path)
            response = JSONResponse({"detail": "internal error; the engine's log names it"}, status_code=500)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        elif request.url.path.startswith("/static/"):  # revalidated (ETag): an upgrade shows at once
            response.headers["Cache-Control"] = "no-cache"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # where and what, never the value sent back (a password, an identifier)
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, exc: EngineError) -> JSONResponse:
        if isinstance(exc, ConfigError):
            return JSONResponse({"detail": "invalid mapping", "problems": [str(p) for p in exc.problems]}, 400)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def peer(request: Request) -> str:
        return request.client.host if request.client else ""

    def user(request: Request) -> dict:
        token = request.cookies.get(COOKIE)
        found = console.users.session(token) if token else None
        if found is None:
            raise HTTPException(401, "sign in (or your session has expired)")
        found["peer"] = peer(request)
        return found

    Me = Annotated[dict, Depends(user)]

    def need(me: dict, what: str) -> None:
        if what not in ROLE_CAN.get(me["role"], ()):
            raise HTTPException(403, f"the {me['role']} role may not do this")

    def record(me: dict, action: str, target: str = "", purpose: str = "", **detail: Any) -> None:
        audit.record(
            actor=me["name"],
            role=me["role"],
            peer=me["peer"],
            action=action,
            target=target,
            purpose=purpose,
            detail=detail or None,
        )

    def purpose_of(text: str | None) -> str:
        p = (text or "").strip()
        if not p or len(p) > MAX_PURPOSE:
            raise HTTPException(400, f"state the purpose of this read (1 to {MAX_PURPOSE} characters)")
        return p

    def channel_of(name: str):
        try:
            return console.cfg.channel(name)
        except KeyError:
            raise HTTPException(404, f"no channel {name!r}") from None

    # -- sign-in --------------------------------------------------------------------------------------
    @app.post("/api/login", tags=["session"])
    def login(body: Login, request: Request, response: Response) -> dict:
        """Sign in; sets the session cookie."""
        where = peer(request)
        keys = {f"name:{body.name.lower()}": LOGIN_FAILURES, f"peer:{where}": 4 * LOGIN_FAILURES}
        wait = throttle.wait(keys)
        if wait > 0:
            audit.record(actor=body.name[:100], peer=where, action="login", outcome="throttled")
            raise HTTPException(429, "too many failed sign-ins; try again later", {"Retry-After": str(int(wait) + 1)})
        found = console.users.verify(body.name, body.password)
        if found is None:
            throttle.fail(keys)
            audit.record(actor=body.name[:100], peer=where, action="login", outcome="failed")
            raise HTTPException(401, "wrong name or password")
        token = console.users.open_session(
            found["name"],
            where,
            idle_minutes=settings.session_idle_minutes,
            absolute_hours=settings.session_absolute_hours,
        )
        session = console.users.session(token) or {}
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(settings.session_absolute_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=settings.tls is not None,
            path="/",
        )
        audit.record(actor=found["name"], role=found["role"], peer=where, action="login")
        return {"name": found["name"], "role": found["role"], "expires_at": _iso(session.get("expires_at"))}

    @app.post("/api/logout", tags=["session"])
    def logout(request: Request, response: Response) -> dict:
        token = request.cookies.get(COOKIE)
        found = console.users.session(token) if token else None
        if token:
            console.users.close_session(token)
        if found:
            audit.record(actor=found["name"], role=found["role"], peer=peer(request), action="logout")
        response.delete_cookie(COOKIE, path="/")
        return {}

    @app.get("/api/me", tags=["session"])
    def me_(me: Me) -> dict:
        return {"name": me["name"], "role": me["role"], "can": sorted(ROLE_CAN.get(me["role"], ()))}

    # -- channels -------------------------------------------------------------------------------------
    def channel_entries(names: list[str] | None = None) -> list[dict]:
        from engine import metrics
        from engine.stores.message_search import channel_stats

        stats = channel_stats(store.engine)
        states = console.states.states()
        now = datetime.now(UTC)
        out = []
        for ch in console.cfg.channels:
            if names is not None and ch.name not in names:
                continue
            s = stats.get(ch.name) or {}
            counts = s.get("counts") or {}
            oldest = s.get("oldest_queued_at")
            out.append(
                {
                    "name": ch.name,
                    "source": ch.source.type,
                    "destinations": [getattr(d, "name", d.type) for d in ch.destinations],
                    "enabled": ch.config.enabled,
                    "paused": bool((states.get(ch.name) or {}).get("paused")),
                    "counts": counts,
                    "total": s.get("total", 0),
                    "warnings": s.get("warnings", 0),
                    "errors": counts.get("ERROR", 0),
                    "queued": sum(counts.get(k, 0) for k in PENDING),
                    "last_minute": s.get("last_minute") or {"received": 0, "errors": 0},
                    "ack_latency_ms": metrics.ack_latency(ch.name),
                    "oldest_queued_seconds": (now - aware(oldest)).total_seconds() if oldest else None,
                }
            )
        return out

    @app.get("/api/channels", tags=["channels"])
    def channels(me: Me) -> list[dict]:
        """Every channel: state, counts per status, last minute, ACK latency, oldest queued."""
        need(me, "stats")
        return channel_entries()

    def hold(name: str, me: dict, purpose: str, paused: bool) -> dict:
        need(me, "pause")
        channel_of(name)
        if console.states.set(name, paused, me["name"]):
            record(me, "channel.pause" if paused else "channel.resume", name, purpose)
            if not paused:
                console.runtime.hand_on_pending(name)
        return channel_entries([name])[0]

    @app.post("/api/channels/{name}/pause", tags=["channels"])
    def pause(name: str, me: Me, purpose: str = "") -> dict:
        """Hold the channel's processing: it keeps receiving and acknowledging; messages wait."""
        return hold(name, me, purpose, True)

    @app.post("/api/channels/{name}/resume", tags=["channels"])
    def resume(name: str, me: Me, purpose: str = "") -> dict:
        """Process again; what waited is handed on in receive order."""
        return hold(name, me, purpose, False)

    @app.get("/api/stats/series", tags=["channels"])
    def stats_series(me: Me, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict:
        """Received and ERROR per channel per minute, oldest first (charts)."""
        from engine.stores.message_search import series

        need(me, "stats")
        return series(store.engine, minutes=minutes)

    # -- messages -------------------------------------------------------------------------------------
    def filters_of(q: Search, me: dict):
        from engine.stores.message_search import Filters

        if q.patient and "content" not in ROLE_CAN[me["role"]]:
            raise HTTPException(403, f"the {me['role']} role may not search by patient identifier")
        return Filters(
            channel=q.channel or None,
            status=(q.status or "").upper() or None,
            since=_when(q.since),
            until=_when(q.until, end=True),
            control_id=q.control_id or None,
            patient=q.patient or None,
            message_type=q.message_type or None,
        )

    def item(row: dict, me: dict) -> dict:
        out = {
            k: row.get(k)
            for k in (
                "id",
                "channel",
                "message_type",
                "trigger",
                "control_id",
                "status",
                "error",
                "sending_app",
                "sending_facility",
            )
        }
        out["received_at"] = _iso(row.get("received_at"))
        w = row.get("warnings") or []
        out["warnings"] = len(json.loads(w) if isinstance(w, str) else w)
        if "content" in ROLE_CAN[me["role"]]:
            out["patient"] = row.get("ordering_key")
        return out

    @app.get("/api/messages", tags=["messages"])
    def search_messages(
        me: Me,
        q: Annotated[Search, Depends()],
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict:
        """Message metadata, newest first; page with ``before`` = the last page's ``next_before``."""
        from engine.stores.message_search import search

        need(me, "messages")
        f = filters_of(q, me)
        rows = search(store.engine, f, before_id=before, limit=limit)
        if f.patient:
            record(me, "messages.search", "patient identifier", q.purpose, patient=f.patient, found=len(rows))
        items = [item(r, me) for r in rows]
        return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}

    def message_row(mid: int) -> dict:
        cols = [c for c in messages.c if c.name != "content"]
        with store.engine.connect() as conn:
            row = conn.execute(select(*cols).where(messages.c.id == mid)).first()
        if row is None:
            raise HTTPException(404, f"no message {mid}")
        return dict(row._mapping)

    @app.get("/api/messages/{mid}", tags=["messages"])
    def message_detail(mid: Id, me: Me) -> dict:
        """One message's metadata, deliveries (attempts, responses), warnings and unmapped positions."""
        need(me, "messages")
        row = message_row(mid)
        out = item(row, me)
        out["warnings"] = json.loads(row["warnings"]) if row.get("warnings") else []
        out["unmapped"] = json.loads(row["unmapped"]) if row.get("unmapped") else []
        out["updated_at"] = _iso(row.get("updated_at"))
        out["peer"] = row.get("peer")
        out["duplicate_of"] = row.get("duplicate_of")
        out["source_message_id"] = row.get("source_message_id")
        out["deliveries"] = [
            {
                "destination": d.destination,
                "status": d.status,
                "attempts": d.attempts,
                "result": d.result,
                "error": d.error,
                "updated_at": _iso(d.updated_at),
            }
            for d in store.deliveries_of(mid)
        ]
        return out

    @app.get("/api/messages/{mid}/content", tags=["messages"])
    def message_content(mid: Id, me: Me, purpose: str = "") -> dict:
        """The message as received (audited: give ``purpose``)."""
        need(me, "content")
        why = purpose_of(purpose)
        row = message_row(mid)
        raw = store.read_content(mid, who=me["name"], purpose=why)
        record(me, "message.content", f"message {mid}", why)
        text = (raw or b"").decode(_codec(row.get("charset")), errors="replace")
        return {"id": mid, "content": text.replace("\r\n", "\n").replace("\r", "\n")}

    @app.get("/api/messages/{mid}/mapped", tags=["messages"])
    def message_mapped(mid: Id, me: Me, purpose: str = "") -> dict:
        """What each destination's mapping makes of the message now (nothing written; audited)."""
        from engine.replay import mapped

        need(me, "content")
        why = purpose_of(purpose)
        row = message_row(mid)
        channel_of(row["channel"])
        raw = store.read_content(mid, who=me["name"], purpose=why)
        record(me, "message.mapped", f"message {mid}", why)
        return {"destinations": mapped(console.cfg, row["channel"], {**row, "content": raw})}

    def reprocess_ids(found: list[tuple[int, str]], me: dict, what: str, purpose: str) -> dict:
        ids = [i for i, _ in found]
        reset = store.reset_for_reprocess(ids) if ids else []
        by: dict[str, list[int]] = {}
        for i, ch in reset:
            by.setdefault(ch, []).append(i)
        for ch, batch in by.items():
            console.runtime.hand_on(ch, batch)
        record(me, what, ",".join(sorted(by)) or "-", purpose, count=len(reset), ids=ids[:50])
        return {"count": len(reset)}

    @app.post("/api/messages/{mid}/reprocess", tags=["messages"])
    def reprocess_one(mid: Id, me: Me, purpose: str = "") -> dict:
        """Process the message again (a row a newer message wrote is never rolled back)."""
        need(me, "reprocess")
        row = message_row(mid)
        return reprocess_ids([(mid, row["channel"])], me, "message.reprocess", purpose)

    @app.post("/api/messages/reprocess", tags=["messages"])
    def reprocess_search(body: Search, me: Me) -> dict:
        """Process again every message a search finds (at most 10,000, oldest first)."""
        from engine.stores.message_search import ids

        need(me, "reprocess")
        f = filters_of(body, me)
        if not any((f.channel, f.status, f.since, f.until, f.control_id, f.patient, f.message_type)):
            raise HTTPException(400, "narrow the search first: reprocessing everything is not one click")
        return reprocess_ids(ids(store.engine, f, limit=MAX_REPROCESS), me, "messages.reprocess", body.purpose)

    # -- replay ---------------------------------------------------------------------------------------
    @app.post("/api/replay", tags=["mappings"])
    def replay_(body: Replay, me: Me) -> dict:
        """What a changed mapping would do to stored messages, field by field; nothing written."""
        from engine.replay import replay

        need(me, "replay")
        channel_of(body.channel)
        read: list[int] = []
        try:
            result = replay(
                console.cfg,
                store,
                channel=body.channel,
                mapping_text=body.mapping,
                since=_when(body.since),
                until=_when(body.until, end=True),
                destination=body.destination,
                limit=body.limit,
                on_read=read.extend,
            )
        finally:
            if read:
                record(me, "replay", f"channel {body.channel}", body.purpose.strip(), messages=len(read))
        return result.to_dict()

    # -- administration -------------------------------------------------------------------------------
    @app.get("/api/audit", tags=["administration"])
    def audit_log(
        me: Me,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict:
        """The audit log, newest first (reading it is recorded too)."""
        need(me, "audit")
        record(me, "audit.read", actor or action or "")
        items = audit.search(
            actor=actor or None,
            action=action or None,
            since=_when(since),
            until=_when(until, end=True),
            before_id=before,
            limit=limit,
        )
        for it in items:
            it["at"] = _iso(it.get("at"))
        return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}

    @app.get("/api/users", tags=["administration"])
    def users(me: Me) -> list[dict]:
        need(me, "users")
        return [{k: _iso(v) if isinstance(v, datetime) else v for k, v in u.items()} for u in console.users.list()]

    @app.post("/api/users", tags=["administration"])
    def add_user(body: NewUser, me: Me) -> dict:
        need(me, "users")
        if any(u["name"] == body.name for u in console.users.list()):
            raise HTTPException(409, f"user {body.name!r} exists")
        try:
            console.users.add(body.name, body.role, body.password)
        except ValueError as exc:  # a bad name, role or password (or taken meanwhile)
            raise HTTPException(400, str(exc)) from None
        record(me, "users.add", body.name, role_given=body.role)
        return {"name": body.name, "role": body.role}

    def change_user(name: str, me: dict, action: str, change, **detail: Any) -> None:
        """Apply ``change()`` to another user (an admin never changes their own account here, so
        no admin locks the last one out); a bad role or password is a 400."""
        need(me, "users")
        if name == me["name"]:
            raise HTTPException(400, "not on yourself: another admin does that (no admin locks the last one out)")
        if not any(u["name"] == name for u in console.users.list()):
            raise HTTPException(404, f"no user {name!r}")
        try:
            change()
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        record(me, action, name, **detail)

    @app.post("/api/users/{name}/disable", tags=["administration"])
    def disable_user(name: str, me: Me) -> dict:
        """Disable a user; their sessions end."""
        change_user(name, me, "users.disable", lambda: console.users.disable(name))
        return {"name": name, "disabled": True}

    @app.post("/api/users/{name}/role", tags=["administration"])
    def set_role(name: str, body: RoleChange, me: Me) -> dict:
        """Change a user's role; their open sessions have it at their next request."""
        change_user(name, me, "users.role", lambda: console.users.set_role(name, body.role), role_given=body.role)
        return {"name": name, "role": body.role}

    @app.post("/api/users/{name}/password", tags=["administration"])
    def set_password(name: str, body: PasswordChange, me: Me) -> dict:
        """Give a user a new password; their sessions end."""
        change_user(name, me, "users.passwd", lambda: console.users.set_password(name, body.password))
        return {"name": name}

    # -- metrics, docs, dashboard ---------------------------------------------------------------------
    @app.get("/metrics", tags=["metrics"], include_in_schema=False)
    def metrics_(request: Request) -> Response:
        from engine import metrics

        if not settings.metrics_public:
            need(user(request), "stats")
        body, ctype = metrics.render(store.engine)
        return Response(body, media_type=ctype)

    @app.get("/api/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return aware(value).isoformat() if isinstance(value, datetime) else str(value)


_AGO = re.compile(r"(\d+)\s*([mhd])")


def _when(text: str | None, *, end: bool = False) -> datetime | None:
    """``30m``/``24h``/``7d`` ago, or an ISO date or date-time (UTC unless it says); a date
    alone as ``until`` means the end of that day."""
    if not text or not text.strip():
        return None
    t = text.strip()
    m = _AGO.fullmatch(t)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(m[1])})
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise HTTPException(400, f"expected 30m, 24h, 7d or an ISO date/time, got {t[:40]!r}") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if end and len(t) == 10:
        when += timedelta(days=1) - timedelta(microseconds=1)
    return when


def _codec(charset: str | None) -> str:
    import codecs

    try:
        return codecs.lookup(charset or "utf-8").name
    except LookupError:
        return "latin-1"
