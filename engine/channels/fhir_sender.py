"""Destination ``fhir``: each message as one FHIR R4 transaction Bundle, POSTed to a FHIR server.

``prepare`` runs the destination's mappings (targets ``fhir.<ResourceType>``) like a store
destination does, and makes their records one transaction Bundle of PUTs with deterministic ids
(:func:`engine.formats.fhir_bundle.transaction`): a resend or a retry updates the same resources,
never creates a second one. A message no mapping applies to has nothing for this destination
(FILTERED for it). ``deliver`` POSTs the Bundle to ``base_url`` (``Content-Type:
application/fhir+json``, ``Authorization: Bearer <token>``) on a pooled keep-alive connection
(at most ``max_connections``; processing threads share the pool).

The server's answer decides:

- 2xx with a ``transaction-response`` whose every entry is 2xx (or 202, accepted for
  processing): delivered;
- 5xx, 408, 429, a connection failure or a timeout: retried with the destination's backoff, and
  no sooner than a ``Retry-After`` the server sent (at most :data:`MAX_RETRY_AFTER_SECONDS`);
- any other answer (4xx, a redirect, a 2xx that is not a successful transaction-response): final,
  the message goes to ERROR for this destination.

The OperationOutcome a server answers with is kept in the delivery's error text (``deliveries``
and the message's ``error`` in the message store, what ``engine messages`` shows), never logged,
and without its free text: each issue's severity, code, coded details and location
(``expression``, ``location``) are kept, its ``diagnostics`` and ``details.text`` are not, because
another server's words may quote what was sent (patient values), and error texts are shown to
operators without the audit a message's content needs. The location says what to fix.
Log lines name the destination, message id and HTTP status only;
the token is never in a log line or an error text (the URL in them is scheme, host and port).

Per-patient order: the processor hands this destination one message at a time in receive order
and holds back a patient's later messages while an earlier one is being retried
(``orders_its_batch`` is False).
"""

from __future__ import annotations

import json
import logging
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.errors import ConfigError, DeliveryError, MappingError, Problem
from engine.formats.fhir_bundle import transaction
from engine.formats.fhir_outcome import FHIR_JSON
from engine.formats.hl7 import Message
from engine.tls import ClientTls
from engine.transforms.report import RunReport

log = logging.getLogger("engine.fhir")

MAX_RETRY_AFTER_SECONDS = 3600.0
"""The longest ``Retry-After`` honoured, in seconds (a server asking for more gets this)."""
MAX_OUTCOME_CHARS = 1500
"""Most characters of a server's OperationOutcome kept in an error text (whole issues only)."""
RETRYABLE_4XX = (408, 429)


class FhirSenderConfig(DestinationConfig):
    type: Literal["fhir"]
    base_url: str = Field(pattern=r"^https?://[^/\s]+")
    """The FHIR server's base (``https://ehr.example.org/fhir``): transactions are POSTed there."""
    token: SecretStr | None = None
    """The bearer token itself (from the environment: ``${ENGINE_FHIR_OUT_TOKEN:-}``); empty or
    unset with no ``token_file``: no Authorization header."""
    token_file: str | None = None
    """A file holding the bearer token (surrounding whitespace dropped), read at start."""
    mapping: str | list[str]
    """Mapping file(s), relative to ``mappings_dir``, whose records target ``fhir.<ResourceType>``;
    the records of all that apply to a message are one transaction Bundle."""
    timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait, in seconds, to connect, for a free pooled connection, and between bytes of
    the answer."""
    max_connections: int = Field(4, ge=1, le=64)
    """Most connections open at once to this server."""
    respond_async: bool = False
    """Send ``Prefer: respond-async``: the server answers 202 once it has stored the Bundle, before
    it is applied. For this engine's own FHIR API (the sample's adt-to-fhir): its answer must not
    wait for the processing this very destination holds up. An error of the receiver's processing
    is then the receiver's to show, not this destination's."""
    tls: ClientTls | None = None
    """Whom to trust for an ``https`` base_url (``ca_file``; default: the system's CAs), and a
    client certificate if the server asks for one."""

    @property
    def mappings(self) -> list[str]:
        return [self.mapping] if isinstance(self.mapping, str) else list(self.mapping)

    def check(self, cfg, key, src, *, check_mappings: bool = True) -> list[Problem]:
        problems = []
        if self.token is not None and self.token.get_secret_value() and self.token_file:
            problems.append(src.problem(key + ("token_file",), "give token or token_file, not both"))
        if self.token_file:
            path = Path(self.token_file)
            try:
                if not path.read_text().strip():
                    problems.append(src.problem(key + ("token_file",), f"the file is empty: {path}"))
            except OSError as exc:
                problems.append(src.problem(key + ("token_file",), f"cannot read {path}: {exc.strerror}"))
        if self.tls is not None:
            problems.extend(self.tls.check(src, key + ("tls",)))
        if not self.mappings:
            return problems + [src.problem(key + ("mapping",), "name at least one mapping")]
        missing = [cfg.mapping_path(n) for n in self.mappings if not cfg.mapping_path(n).exists()]
        problems.extend(src.problem(key + ("mapping",), f"mapping file not found: {p}") for p in missing)
        if check_mappings and not missing:
            try:
                load_for(cfg, self)
            except ConfigError as exc:
                problems.extend(
                    p if p.file != str(cfg.file) else src.problem(key + ("mapping",), p.message) for p in exc.problems
                )
        return problems


def load_for(cfg, dest: FhirSenderConfig) -> list:
    """``dest``'s mappings, each of whose records must target ``fhir.<ResourceType>``;
    ConfigError lists every problem of every one."""
    from engine.transforms import load_mapping

    out, problems = [], []
    for name in dest.mappings:
        path = cfg.mapping_path(name)
        try:
            mapping = load_mapping(path, tables_dir=cfg.mappings_dir / "tables")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for n, rule in enumerate(mapping.rules):
            if not rule.target.startswith("fhir."):
                problems.append(
                    Problem(
                        str(cfg.file),
                        None,
                        "",
                        f"mapping {mapping.name}: records[{n}] targets {rule.target}; a fhir destination "
                        "sends fhir.<ResourceType> records only",
                    )
                )
        out.append(mapping)
    if problems:
        raise ConfigError(problems)
    return out


@registry.destination("fhir", FhirSenderConfig)
class FhirSender(Destination):
    """Maps each message into FHIR resources and POSTs them as one transaction Bundle."""

    config: FhirSenderConfig

    def __init__(self, config: FhirSenderConfig, context):
        super().__init__(config, context)
        self.mappings = load_for(context.config, config) if context is not None else []
        url = httpx.URL(config.base_url)
        self.where = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        """The server as error texts name it: no path, no credentials."""
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        token = read_token(config)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        size = config.max_connections
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            verify=(config.tls or ClientTls()).context(),  # default: the system's CAs, as MLLP over TLS
            follow_redirects=False,
            trust_env=False,  # the config says where and how to connect, not the environment
        )

    def prepare(self, message: Message, report: RunReport | None = None) -> dict[str, Any] | None:
        applying = [m for m in self.mappings if m.applies(message)]
        if not applying:
            return None
        zone = self.sender_clock(message)
        records = []
        for mapping in applying:  # a MappingError in any fails the message for this destination
            records.extend(mapping.run(message, report, zone))
        if not records:
            return None
        try:
            if report is None:
                return transaction(records)
            return transaction(records, report.left_out, report.warnings)
        except ValueError as exc:  # a record without an id: the mapping's fault, named without values
            raise MappingError(str(exc)) from None

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        """POST each item's Bundle, in order; one result per item (None: delivered)."""
        return [self._post(item) for item in items]

    def _post(self, item: Item) -> Exception | None:
        body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            headers = {"Prefer": "respond-async"} if self.config.respond_async else None
            response = self.client.post(self.config.base_url, content=body, headers=headers)
        except httpx.RequestError as exc:  # connect, TLS, timeouts, a dropped connection, a garbled answer
            return DeliveryError(f"{self.where}: {type(exc).__name__}", retryable=True)
        status = response.status_code
        found = _json(response)
        outcome = _outcome(found)
        if 200 <= status < 300:
            problem, entry_outcome = (None, None) if status == 202 else _failed_entries(found, item.payload)
            if problem is None:
                return None
            text = f"{self.where} answered {status} but {problem}"
            retryable = False
            outcome = outcome or _outcome(entry_outcome)
        elif status >= 500 or status in RETRYABLE_4XX:
            text, retryable = f"{self.where} answered {status}", True
        elif 300 <= status < 400:
            text, retryable = f"{self.where} answered {status} (a redirect; base_url should name the server)", False
        else:
            text, retryable = f"{self.where} answered {status}", False
        if not retryable:
            log.warning(
                "destination=%s message=%s: HTTP %d from %s; not retried",
                self.name,
                item.message_id,
                status,
                self.where,
            )
        if outcome:
            text += f": OperationOutcome {outcome}"
        return DeliveryError(text, retryable=retryable, retry_after=_retry_after(response) if retryable else None)

    def close(self) -> None:
        self.client.close()


def read_token(config: FhirSenderConfig) -> str:
    """The bearer token (``token``, else ``token_file``'s content); '' for none."""
    if config.token is not None and config.token.get_secret_value():
        return config.token.get_secret_value().strip()
    if config.token_file:
        return Path(config.token_file).read_text().strip()
    return ""


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _outcome(found: Any) -> str:
    """The OperationOutcome in an answer, as compact JSON of whole issues up to
    MAX_OUTCOME_CHARS (a count of the rest after them), free text left out (module docstring);
    '' when the answer holds none."""
    if not isinstance(found, dict) or found.get("resourceType") != "OperationOutcome":
        return ""
    issues = [_coded(i) for i in _list(found.get("issue")) if isinstance(i, dict)]
    found = {"resourceType": "OperationOutcome"}
    kept = dict(found, issue=[])
    for n, issue in enumerate(issues):
        trial = dict(kept, issue=[*kept["issue"], issue])
        if len(_compact(trial)) > MAX_OUTCOME_CHARS and kept["issue"]:
            return f"{_compact(kept)} (+{len(issues) - n} more issue(s))"
        kept = trial
    text = _compact(kept)
    return text if len(text) <= MAX_OUTCOME_CHARS else text[:MAX_OUTCOME_CHARS] + "..."


def _coded(issue: dict[str, Any]) -> dict[str, Any]:
    """An issue without its free text: severity, code, details' codings, expression, location."""
    out: dict[str, Any] = {k: issue[k] for k in ("severity", "code", "expression", "location") if k in issue}
    details = issue.get("details")
    codings = [
        {k: c[k] for k in ("system", "code") if k in c}
        for c in _list(details.get("coding") if isinstance(details, dict) else None)
        if isinstance(c, dict)
    ]
    if codings:
        out["details"] = {"coding": codings}
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _failed_entries(found: Any, sent: dict[str, Any]) -> tuple[str | None, Any]:
    """What is wrong with a 2xx answer to a transaction (None when every entry succeeded), and
    the first failed entry's outcome."""
    if not isinstance(found, dict) or found.get("resourceType") != "Bundle":
        return "without a transaction-response Bundle", None
    if found.get("type") != "transaction-response":
        return f"with a Bundle of type {str(found.get('type'))[:40]!r}, not transaction-response", None
    entries = _list(found.get("entry"))
    if len(entries) != len(sent.get("entry") or []):
        return f"with {len(entries)} entries for {len(sent.get('entry') or [])} sent", None
    bad, outcome = [], None
    for n, entry in enumerate(entries):
        response = entry.get("response") if isinstance(entry, dict) else None
        status = str(response.get("status", "")) if isinstance(response, dict) else ""
        if status[:1] != "2":
            bad.append(f"entry[{n}] {status[:3] or 'without status'}")
            if outcome is None and isinstance(response, dict):
                outcome = response.get("outcome")
    return ("with failed entries: " + ", ".join(bad[:10]) if bad else None), outcome


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds a ``Retry-After`` header (seconds, or an HTTP date) asks to wait; None without one."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
