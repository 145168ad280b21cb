"""Source ``fhir``: a FHIR R4 REST endpoint (FastAPI, served by uvicorn inside ``engine run``).

- ``POST /fhir/{type}`` creates, ``PUT /fhir/{type}/{id}`` updates, ``POST /fhir`` takes a
  transaction or batch Bundle, ``GET /fhir/metadata`` says what is supported.
- Every request needs ``Authorization: Bearer <token>``. Tokens are held as SHA-256 hashes
  (``tokens``: ``name:hexdigest`` pairs, from the environment or a file, never the tokens
  themselves); a token is random and long (``engine fhir-token NAME`` makes one), so a fast hash
  is enough (argon2 is for passwords people choose). A missing or wrong token gets 401. The
  token's name is the message's sender: who wrote what.
- A resource is checked against R4 (fhir.resources' R4B models: see
  :mod:`engine.formats.fhir_outcome`), then committed to the message store like every message,
  then processed by the channel's destinations (its mappings); the answer waits for the
  outcome: 201 (created) or 200 (updated) when applied, 422 with the mapping's reason when it
  cannot be, 400 when the resource is not valid FHIR (each element at fault located), 404 for
  a type FHIR does not define, 503 with Retry-After while the store cannot commit (the
  back-pressure MLLP gives with AE). A transaction Bundle is one message: all of it is applied
  or none. A batch Bundle's entries are messages of their own, each with its own answer.
- Nothing is logged of a request's content; access lines (uvicorn's) are off: a URL carries ids.

uvicorn runs in a thread of its own (:mod:`engine.http_server`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.channels import fhir_entries, fhir_references, registry
from engine.channels.fhir_conditional import Finder, Found, criteria, etag, if_match
from engine.channels.registry import ConnectorConfig
from engine.errors import StoreUnavailable
from engine.formats.fhir_checker import Checker, not_taken, warm
from engine.formats.fhir_outcome import FHIR_JSON, Issue, Refused, check_resource, outcome, parse_json, read_json
from engine.formats.fhir_patient import ordering_key, resource_identifier
from engine.http_server import ThreadedServer
from engine.stores.message_store import ERROR, FILTERED, Inbound
from engine.tls import ServerTls
from engine.transforms.tables import load_table

log = logging.getLogger("engine.fhir")


class FhirSourceConfig(ConnectorConfig):
    type: Literal["fhir"]
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tokens: str = ""
    """``name:sha256hex`` pairs, comma-separated (the hashes of the bearer tokens allowed)."""
    token_env: str | None = None
    """The name of an environment variable holding one token itself (``ENGINE_API_TOKEN`` in the
    sample): hashed as it is read, named ``token_env_name``; unset or empty, it allows nothing.
    Its one token serves a client of this engine that needs it in clear (the sample's
    ``adt-to-fhir`` destination sends it to this very API)."""
    token_env_name: str = "api"
    tokens_file: str | None = None
    """A file of ``name sha256hex`` lines, read at start (``#`` starts a comment)."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body, in bytes (413 beyond it)."""
    result_timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for the outcome before answering 202 (stored, still processing)."""
    retry_after_seconds: int = Field(5, ge=1)
    """Retry-After of a 503 while the store cannot commit."""
    resources: list[str] = Field(default_factory=lambda: ["Patient", "Observation"], min_length=1)
    """The resource types this endpoint takes (what its mappings map); another type gets 404."""
    tls: ServerTls | None = None
    """Serve HTTPS with this certificate (and client certificates, for mutual TLS)."""
    check_processes: int | None = Field(None, ge=0, le=64)
    """Child processes that check a Bundle against R4, beside the one that serves HTTP, maps and
    writes (0: all in that one; :mod:`engine.formats.fhir_checker`). Unset: 1 when this process
    may run on two cores or more, else 0 (a second process on one core only adds its cost)."""
    read_stores: dict[str, str] = Field(default_factory=dict)
    """The stores the read API serves, by kind (``{clinical: clinical, pm: pm}``: store names
    under ``stores:``); empty: this endpoint takes writes only (:mod:`engine.channels.fhir_read`)."""

    def check(self, cfg, key, src) -> list:
        problems = self.tls.check(src, key + ("tls",)) if self.tls is not None else []
        for kind, name in self.read_stores.items():
            at = key + ("read_stores", kind)
            if kind not in ("clinical", "pm"):
                problems.append(src.problem(at, "read_stores names a clinical and/or a pm store"))
            elif name not in cfg.stores:
                problems.append(src.problem(at, f"unknown store {name!r} (known: {', '.join(cfg.stores)})"))
            elif cfg.store_kind(name) != kind:
                problems.append(src.problem(at, f"store {name!r} is a {cfg.store_kind(name)} store, not {kind}"))
        return problems


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(config: FhirSourceConfig) -> dict[str, str]:
    """hash -> name, from ``tokens`` and ``tokens_file``."""
    pairs = [p.strip() for p in config.tokens.split(",") if p.strip()]
    if config.tokens_file:
        for line in Path(config.tokens_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                pairs.append(":".join(line.split(None, 1)))
    out = {}
    for pair in pairs:
        name, _, digest = pair.partition(":")
        if len(digest) != 64 or not name:
            raise ValueError("a FHIR token entry is name:sha256hex (64 hex digits)")
        out[digest.lower()] = name
    if config.token_env and os.environ.get(config.token_env, "").strip():
        out[token_hash(os.environ[config.token_env].strip())] = config.token_env_name
    return out


@registry.source("fhir", FhirSourceConfig)
class FhirSource:
    """FHIR R4 create, update and transaction over HTTP; each request committed, then applied."""

    def __init__(self, channel, config: FhirSourceConfig, receiver):
        self.channel = channel
        self.config = config
        self.committer = receiver.committer
        self.poll = getattr(receiver, "_poll", False)
        self.tokens = load_tokens(config)
        self._record_store = getattr(receiver, "record_store", None)
        self.issuer_of = _lookup(getattr(receiver, "config", None), "identifier_system")
        self.system_of = _lookup(getattr(receiver, "config", None), "issuer_system")
        self.finder = Finder(self, self.issuer_of)
        cfg = getattr(receiver, "config", None)  # the read API's code tables (engine/channels/fhir_read.py)
        self.tables_dir = Path(cfg.mappings_dir) / "tables" if cfg is not None else None
        self._server: ThreadedServer | None = None
        self.port = config.port
        self.checker = Checker(config.check_processes, config.resources)

    def store(self, kind: str):
        """The record store the API reads for ``kind`` (``clinical``, ``pm``: ``read_stores``);
        None when it reads none of that kind."""
        name = self.config.read_stores.get(kind)
        if name is None or self._record_store is None:
            return None
        return self._record_store(name)

    # -- serving ----------------------------------------------------------------------------------
    async def start(self) -> str:
        warm(self.config.resources)
        self._server = ThreadedServer(
            self.app(), host=self.config.host, port=self.config.port, name="engine-fhir", tls=self.config.tls
        )
        await self._server.start()
        self.port = self._server.port
        return f"fhir {self._server.scheme}://{self.config.host}:{self.port}/fhir"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        self.checker.stop()

    # -- the API ----------------------------------------------------------------------------------
    def app(self) -> FastAPI:
        app = FastAPI(title="engine FHIR R4", docs_url=None, redoc_url=None, openapi_url=None)

        def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
            return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)

        @app.exception_handler(Refused)
        async def refused(_request: Request, exc: Refused) -> JSONResponse:
            return answer(exc.status, outcome(exc.issues), exc.headers)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
            code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
            return answer(exc.status_code, outcome([Issue(code, str(exc.detail))]))

        @app.get("/fhir/metadata")
        async def metadata() -> JSONResponse:
            return answer(200, self.capability())

        if self.config.read_stores:  # GET routes: before the write routes, after metadata
            from engine.channels import fhir_read

            fhir_read.mount(app, self, answer)

        @app.post("/fhir/{rtype}")
        async def create(rtype: str, request: Request) -> JSONResponse:
            who = self.authorise(request)
            raw = await self.body(request)
            data = parse_json(raw)
            self.supported(rtype)
            check_resource(data, rtype)
            condition = request.headers.get("if-none-exist")
            return await self.create_one(rtype, data, who, condition, raw=raw, respond_async=_async(request))

        @app.put("/fhir/{rtype}")
        async def conditional_update(rtype: str, request: Request) -> JSONResponse:
            who = self.authorise(request)
            data = parse_json(await self.body(request))
            self.supported(rtype)
            check_resource(data, rtype)
            if not request.url.query:
                raise Refused(405, [Issue("not-supported", "PUT needs an id (/fhir/<Type>/<id>) or a condition")])
            return await self.update_conditional(rtype, request.url.query, data, who, respond_async=_async(request))

        @app.put("/fhir/{rtype}/{rid}")
        async def update(rtype: str, rid: str, request: Request) -> JSONResponse:
            who = self.authorise(request)
            raw = await self.body(request)
            data = parse_json(raw)
            self.supported(rtype)
            check_resource(data, rtype)
            match = request.headers.get("if-match")
            return await self.update_one(rtype, rid, data, who, match, raw=raw, respond_async=_async(request))

        @app.post("/fhir")
        @app.post("/fhir/")  # a client's base URL may end with a slash
        async def bundle(request: Request) -> JSONResponse:
            who = self.authorise(request)
            raw = await self.body(request)
            data = read_json(raw)
            await self.checker.bundle(raw, data)
            entries = data.get("entry") or []
            if data["type"] == "transaction":  # all or nothing: every resource was checked above
                planned = await fhir_entries.plan(self, entries, who)  # every entry's request, before storing
                responses = [{"response": {"status": p.status, "location": p.location}} for p in planned]
                kept = fhir_entries.repoint(entries, planned)
                if not kept:  # every entry was a conditional create of a resource stored already
                    return answer(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses})
                as_sent = len(kept) == len(entries) and not any(p.given_id for p in planned)
                return await self.apply(
                    data if as_sent else dict(data, entry=kept),
                    who,
                    "transaction",
                    200,
                    raw=raw if as_sent else None,
                    respond_async=_async(request),
                    responses=responses,
                )
            results = []
            for n, e in enumerate(entries):
                results.append(await self.batch_entry(e, n, who))
            return answer(200, {"resourceType": "Bundle", "type": "batch-response", "entry": results})

        self._answer = answer
        return app

    async def body(self, request) -> bytes:
        """The request body; Refused 413 beyond ``max_body_bytes``, told by Content-Length before
        anything is read when the client sends it."""
        too_big = Refused(413, [Issue("too-costly", f"the body is larger than {self.config.max_body_bytes} bytes")])
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise too_big
        body = await request.body()
        if len(body) > self.config.max_body_bytes:
            raise too_big
        return body

    def supported(self, rtype: Any, where: str = "") -> None:
        not_taken(rtype, self.config.resources, where)

    def authorise(self, request) -> str:
        """The token's name; Refused 401 without a known bearer token (compared in constant time)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            digest = token_hash(token.strip())
            for known, name in self.tokens.items():
                if hmac.compare_digest(known, digest):
                    return name
        raise Refused(
            401,
            [Issue("security", "a valid bearer token is required")],
            {"WWW-Authenticate": 'Bearer realm="fhir"'},
        )

    async def apply(
        self,
        data: dict[str, Any],
        who: str,
        interaction: str,
        ok: int,
        stored_as: str | None = None,
        *,
        raw: bytes | None = None,
        respond_async: bool = False,
        responses: list[dict[str, Any]] | None = None,
    ):
        """Commit ``data`` as one message, wait for its outcome, answer. ``raw``: the body as
        received, stored as it is unless the engine added to it (an id, a resolved reference)."""
        rtype = data["resourceType"]
        if interaction != "transaction" and not data.get("id"):  # a create: the id it is stored under
            rid, stored = await asyncio.to_thread(self.new_id, data, who)
            data, ok, raw = dict(data, id=rid), 200 if stored else ok, None
        rid = data.get("id") or uuid.uuid4().hex
        clinical = self.store("clinical")  # Patient/<id> of a patient stored here: its identifier beside it
        resolved = 0
        if clinical is not None and next(fhir_references.references(data), None) is not None:  # a read, off the loop
            resolved = await asyncio.to_thread(fhir_references.resolve, data, clinical, self.system_of)
        raw = None if resolved else raw
        item = Inbound(
            channel=self.channel.name,
            content=raw.removeprefix(b"\xef\xbb\xbf") if raw is not None else _json(data),
            charset="utf-8",
            message_type=rtype[:20],
            trigger=interaction,
            control_id=f"{rtype}/{rid}"[:200] if interaction != "transaction" else f"Bundle/{uuid.uuid4().hex}",
            sending_app=who[:200],
            sending_facility=who[:200],
            version="4.0.1",
            ordering_key=ordering_key(data, self.issuer_of),
            duplicate_window=None,
        )
        try:
            committed, processed = self.committer.submit(item, want_result=not self.poll, urgent=True)
            stored = await committed
        except StoreUnavailable:
            raise Refused(
                503,
                [Issue("transient", "the message store cannot commit now; nothing was stored")],
                {"Retry-After": str(self.config.retry_after_seconds)},
            ) from None
        if respond_async:  # Prefer: respond-async: stored is the answer; applied after it
            text = "stored; it is applied in receive order after this answer (Prefer: respond-async)"
            note = outcome([Issue("informational", text, severity="information")])
            located = {"Location": f"/fhir/{rtype}/{rid}"} if interaction != "transaction" else None
            return self._answer(202, note, located)
        if self.poll:
            processed = asyncio.ensure_future(self.committer.poll_outcome(stored.id))
        try:
            result = await asyncio.wait_for(processed, self.config.result_timeout_seconds)
        except TimeoutError:
            return self._answer(
                202, outcome([Issue("informational", "stored; still processing", severity="information")])
            )
        if result.status == ERROR:
            reason = result.error or "processing failed"
            where = sorted(set(_AT.findall(reason)))  # the resources at fault, named by the mapping
            raise Refused(422, [Issue("processing", reason, where)])
        if result.status == FILTERED:
            raise Refused(422, [Issue("not-supported", f"nothing in this engine takes {rtype}: {result.error or ''}")])
        if interaction == "transaction":  # responses: one per entry the request held (fhir_entries.plan)
            return self._answer(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses})
        if stored_as is not None and stored_as != rid:  # the resource was known here under another id
            text = f"stored as {rtype}/{stored_as}: this {rtype} was known here under that id, which never changes"
            note = outcome([Issue("informational", text, severity="information")])
            return self._answer(ok, note, {"Location": f"/fhir/{rtype}/{stored_as}"})
        body = dict(data, id=rid)
        return self._answer(ok, body, {"Location": f"/fhir/{rtype}/{rid}"})

    # -- conditional operations and ids (engine/channels/fhir_conditional.py) ----------------------
    async def lookup(self, rtype: str, name: str, value: str, *, who: str) -> Found | None:
        """The one resource a condition names, or None; Refused 412 when it names several."""
        found = await asyncio.to_thread(self.finder.find, rtype, name, value)
        if len(found) > 1:
            raise Refused(412, [Issue("multiple-matches", f"the condition matches more than one {rtype}")])
        await asyncio.to_thread(self.finder.audit, rtype, found, who, "FHIR conditional operation")
        return found[0] if found else None

    def new_id(self, data: dict[str, Any], who: str) -> tuple[str, bool]:
        """The id a resource created without one is stored under, and whether it is stored
        already: the id of the stored resource its identifier names, else the id its row will
        get (:func:`~engine.formats.fhir_bundle.row_id`), else a new UUID (a type without an
        identifier rule: a create is a new resource)."""
        rtype = data["resourceType"]
        identifier = resource_identifier(data)
        if identifier is None or not self.finder.available(rtype):
            return str(uuid.uuid4()), False
        found, rid = self.finder.id_for(rtype, identifier)
        if found is not None:
            self.finder.audit(rtype, [found], who, "FHIR create")
        return rid, found is not None

    async def check_update(
        self, rtype: str, rid: str, data: dict[str, Any], match: str | None, who: str
    ) -> tuple[int, str | None]:
        """(200 for an update or 201 for a create, the id the resource is stored under) for
        ``PUT <rtype>/<rid>``. Identity is the identifier: a resource this engine knows under
        another id is updated there (ids never change), and the answer says where. Refused 412
        when ``If-Match`` names another version, 409 when ``<rtype>/<rid>`` is a resource the
        identifier does not name (another patient). Without a store to read: 200, and If-Match
        is refused."""
        if not self.finder.available(rtype):
            if match:
                raise Refused(400, [Issue("not-supported", f"this endpoint keeps no versions of {rtype}")])
            return 200, None

        def check() -> tuple[int, str | None]:
            row = self.finder.by_id(rtype, rid)
            if match and (row is None or if_match(match) != row.version):
                raise Refused(412, [Issue("conflict", f"{rtype}/{rid} is not at the version If-Match names")])
            identifier = resource_identifier(data)
            other = self.finder.id_for(rtype, identifier)[0] if identifier else None
            self.finder.audit(rtype, [f for f in (row, other) if f is not None], who, "FHIR update")
            if row is not None and identifier is not None and (other is None or other.fhir_id != rid):
                text = f"{rtype}/{rid} is another {rtype} than the one this identifier names"
                raise Refused(409, [Issue("conflict", text, [f"{rtype}.identifier"])])
            if other is not None:
                return 200, other.fhir_id
            return (200 if row is not None else 201), None

        return await asyncio.to_thread(check)

    async def batch_entry(self, entry: dict[str, Any], n: int, who: str) -> dict[str, Any]:
        """One entry of a batch: applied on its own, as its ``request`` asks
        (:mod:`engine.channels.fhir_entries`); its response (or OperationOutcome) in the entry."""
        resource = entry["resource"]
        rtype = str(resource.get("resourceType"))
        try:
            try:
                self.supported(rtype)
                check_resource(resource)
                req = fhir_entries.request_of(entry, n)
            except Refused as exc:
                raise fhir_entries.located(exc, n, rtype) from None
            if req.method == "POST":
                answer = await self.create_one(rtype, resource, who, req.condition)
            elif req.condition:
                answer = await self.update_conditional(rtype, req.condition, resource, who)
            else:
                answer = await self.update_one(rtype, str(req.rid), resource, who, req.if_match)
            return {"response": {"status": f"{answer.status_code}", "location": answer.headers.get("location", "")}}
        except Refused as exc:
            return {"response": {"status": str(exc.status), "outcome": outcome(exc.issues)}}

    # -- the interactions, for the endpoints and a batch's entries ---------------------------------
    async def create_one(
        self, rtype: str, data: dict, who: str, condition: str | None, *, raw: bytes | None = None, respond_async=False
    ) -> JSONResponse:
        if condition:  # conditional create: nothing stored when the resource exists
            found = await self.lookup(rtype, *criteria(condition, rtype), who=who)
            if found:
                return self._answer(200, _stored_already(), _where(rtype, found))
        return await self.apply(data, who, "create", 201, raw=raw, respond_async=respond_async)

    async def update_conditional(
        self, rtype: str, query: str, data: dict, who: str, *, respond_async=False
    ) -> JSONResponse:
        found = await self.lookup(rtype, *criteria(query, rtype), who=who)
        if found is None:  # no match: a create, under the client's id if it gave one
            return await self.apply(data, who, "create", 201, respond_async=respond_async)
        if data.get("id") not in (None, found.fhir_id):
            where = [f"{rtype}.id"]
            raise Refused(400, [Issue("invalid", f"the resource's id is not that of the {rtype} found", where)])
        return await self.apply(dict(data, id=found.fhir_id), who, "update", 200, respond_async=respond_async)

    async def update_one(
        self, rtype: str, rid: str, data: dict, who: str, match: str | None, *, raw=None, respond_async=False
    ) -> JSONResponse:
        if data.get("id") != rid:
            raise Refused(400, [Issue("invalid", "the resource's id must be the id in the URL", [f"{rtype}.id"])])
        status, stored_as = await self.check_update(rtype, rid, data, match, who)
        return await self.apply(data, who, "update", status, stored_as, raw=raw, respond_async=respond_async)

    def capability(self) -> dict[str, Any]:
        """What this endpoint does, truthfully: create and update of the ``resources`` it takes,
        transaction and batch Bundles of them; read and search of what ``read_stores`` serve."""
        from engine.channels import fhir_read

        resources = fhir_read.describe(self.config.resources, self.config.read_stores)
        for entry in resources:
            if entry["type"] in self.config.resources:
                entry["updateCreate"] = True  # PUT <Type>/<id> of an id not stored yet creates it
            if entry["type"] in self.config.resources and self.finder.available(entry["type"]):
                entry.update(conditionalCreate=True, conditionalUpdate=True, versioning="versioned-update")
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-30",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "software": {"name": "engine"},
            "rest": [
                {
                    "mode": "server",
                    "security": {  # not SMART on FHIR: a bearer token the engine's operator issues
                        "description": "Authorization: Bearer <token>; tokens are issued by the engine's operator",
                    },
                    "resource": resources,
                    "interaction": [{"code": "transaction"}, {"code": "batch"}],
                }
            ],
        }


def _lookup(cfg, name: str) -> Callable[[str], str]:
    """FHIR system -> the HL7 issuer (``identifier_system``, as the FHIR mappings read it), or
    back (``issuer_system``): mappings/tables/<name>.yaml; the value itself without the table."""
    path = None if cfg is None else Path(cfg.mappings_dir) / "tables" / f"{name}.yaml"
    if path is None or not path.exists():
        return lambda system: system
    table = load_table(path)
    return lambda system: str(table.lookup(system))


_AT = re.compile(r"\((Bundle\.entry\[\d+\]\.resource)\)")
"""A FHIR resource's place in a mapping's error text (engine.transforms.mapping: ``... (Bundle.entry[2].resource)``)."""


def _async(request: Request) -> bool:
    """The client asked for FHIR's asynchronous pattern: 202 once stored (``Prefer: respond-async``)."""
    return "respond-async" in request.headers.get("prefer", "").lower()


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _stored_already() -> dict[str, Any]:
    return outcome([Issue("informational", "stored already: nothing was created", severity="information")])


def _where(rtype: str, found: Found) -> dict[str, str]:
    return {"Location": f"/fhir/{rtype}/{found.fhir_id}", "ETag": etag(found.version)}
