"""``FhirDownstream``: a FHIR server for tests, standing for the system a ``fhir`` destination
POSTs transaction Bundles to. It records every request in arrival order and answers each with a
``transaction-response`` (every entry ``201 Created``) unless a script says otherwise, on as many
keep-alive connections as the client opens.

    with FhirDownstream() as down:                       # down.url: http://127.0.0.1:<port>/fhir
        down.script = lambda n, bundle: Answer(503) if n == 1 else None   # the first request: 503
        ...
        down.accepted()                                  # the Bundles answered 2xx, in arrival order
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    """What to answer one request: ``status``, a JSON ``body`` (None: a transaction-response for
    a 2xx, none otherwise), extra ``headers``, after ``delay`` seconds (a hang, for timeouts)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    """One request as it arrived: when, on which connection, its headers, its JSON body, and
    the status it was answered with."""

    at: float  # time.monotonic(), in seconds
    connection: int  # the client's port: one per connection
    path: str
    headers: dict[str, str]
    body: Any
    status: int


def outcome(code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def transaction_response(bundle: Any, status: str = "201 Created") -> dict[str, Any]:
    entries = bundle.get("entry", []) if isinstance(bundle, dict) else []
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"response": {"status": status, "location": e.get("request", {}).get("url", "") + "/_history/1"}}
            for e in entries
        ],
    }


class FhirDownstream:
    """A threaded HTTP/1.1 server on a free port of 127.0.0.1; one thread per connection."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        """``tls``: a server context: serve HTTPS (``url`` then names https://localhost)."""
        self.requests: list[Request] = []
        self.script: Callable[[int, Any], Answer | None] | None = None
        """``script(n, bundle)``: the Answer to the n-th request (1-based), or None for the default."""
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._count = 0
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self) -> None:
                downstream._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"https://localhost:{self.port}/fhir" if tls else f"http://127.0.0.1:{self.port}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fhir-downstream", daemon=True)
        self._thread.start()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("content-length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self._count += 1
            n = self._count
        answer = (self.script(n, body) if self.script else None) or Answer()
        payload = answer.body
        if payload is None and 200 <= answer.status < 300:
            payload = transaction_response(body)
        data = json.dumps(payload).encode() if payload is not None else b""
        with self._arrived:
            self.requests.append(
                Request(
                    time.monotonic(),
                    handler.client_address[1],
                    handler.path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    body,
                    answer.status,
                )
            )
            self._arrived.notify_all()
        if answer.delay:
            time.sleep(answer.delay)
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", "application/fhir+json")
            handler.send_header("Content-Length", str(len(data)))
            for k, v in answer.headers.items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up waiting (a hang)
            handler.close_connection = True

    # -- what arrived -------------------------------------------------------------------------------
    def accepted(self) -> list[Any]:
        """The Bundles answered 2xx, in arrival order."""
        with self._lock:
            return [r.body for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float = 30.0) -> bool:
        """Wait until ``predicate(requests)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not predicate(list(self.requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FhirDownstream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
