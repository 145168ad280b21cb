"""``config/channels.yaml`` -> typed, validated configuration; every problem reported at once.

Shape (see the sample ``config/channels.yaml``)::

    stores:        name -> {url, kind}       kind: messages | clinical | pm (default: the name)
    queue:         {type: memory}            the in-process queue (scale-out adds redis)
    billing:       {submitter, receiver, billing_provider, interchange, claims_outbox ...}
                   optional: who we are on the 837P claims `engine claims build` writes
    console:       {host, port, first_admin_password, ...}   optional: the operator console
    mappings_dir:  ../mappings               relative to this file
    channels:      list of {name, source, filter?, validation?, ordering_key?, timezone?,
                   timezones?, retention_days?, error_retention_days?, destinations}

A channel's ``ordering_key`` is the patient's identity, read at receive: by default
``{identifier: PID-3, types: [MR, PI, PT], default_issuer: MSH-4.1}`` (the repetition the
mappings pick, as ``issuer|value``; see :mod:`engine.transforms.identifiers`), or a plain HL7 path.

Retention (:mod:`engine.stores.retention`): ``retention_days`` (days, fractions allowed; unset:
kept forever) prunes the channel's SENT and FILTERED messages once received (and last changed)
that long ago; ERROR messages stay until reprocessed, or ``error_retention_days`` if set. Pending
messages are never pruned. Each must be at least ``duplicate_window_hours``: a resend inside the
window whose original was pruned would be taken as new.

A source or destination is a tagged union on ``type``, resolved through the connector
registry. Strings may use ``${VAR}`` and ``${VAR:-default}``; secrets belong in the
environment, never in the file. :func:`load_config` raises ConfigError listing every problem
as file:line: key: message, the same report ``engine check`` prints and ``engine run``
refuses to start with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.channels import registry
from engine.errors import ConfigError, Problem
from engine.formats.hl7 import parse_path
from engine.formats.hl7_segments import unknown_segment
from engine.tls import ServerTls
from engine.transforms.identifiers import DEFAULT_TYPES, Identifier, IdentifierKey
from engine.transforms.values import zone
from engine.yamlfile import Located, load

STORE_KINDS = ("messages", "clinical", "pm")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Model):
    url: str
    kind: Literal["messages", "clinical", "pm"] | None = None


class QueueConfig(_Model):
    url: str = Field("memory://", pattern=r"^(memory://.*|process://.*|rediss?://.+|unix://.+)$")
    """``memory://`` (in-process, the embedded default), ``process://`` (a worker process that
    ``engine run`` starts and feeds over a pipe: a second core without a broker) or
    ``redis://host:port/db`` (dramatiq, ``engine worker`` processes)."""
    batch_size: int = Field(200, ge=1, le=10_000)
    """Most messages one worker step processes in one store transaction."""
    linger_ms: float = Field(20.0, ge=0, le=1000)
    """How long, in milliseconds, processing waits for a batch to fill before it starts with
    fewer: each batch costs a few commits whatever its size, so on a quiet connection a short
    wait saves most of the CPU per message, at the price of that much latency to the stores."""
    claim_seconds: float = Field(60.0, gt=0)
    """How long a worker's claim on a message holds; a dead worker's messages go again after it."""
    stuck_after_seconds: float = Field(120.0, gt=0)
    """A message pending (not claimed) this long is dispatched again (lost from the queue)."""
    sweep_seconds: float = Field(1.0, gt=0)
    """How often a processing process looks for due retries and stuck messages."""


class SubmitterConfig(_Model):
    """1000A: the submitter, as the receiver (the clearinghouse) knows it."""

    name: str = Field(min_length=1)
    id: str = Field(min_length=2, max_length=80)
    contact_name: str = Field(min_length=1)
    contact_phone: str = Field(pattern=r"^\D*(\d\D*){10}$")
    """10 digits; other characters (dashes, spaces) are dropped when written."""


class ReceiverConfig(_Model):
    """1000B: the receiver of the claims (the clearinghouse or payer)."""

    name: str = Field(min_length=1)
    id: str = Field(min_length=2, max_length=80)


class AddressConfig(_Model):
    line1: str = Field(min_length=1)
    line2: str = ""
    city: str = Field(min_length=2)
    state: str = Field(pattern=r"^[A-Z]{2}$")
    zip: str = Field(pattern=r"^\d{5}-?\d{4}$")
    """The 9-digit ZIP (ZIP+4) that 2010AA requires; a dash is dropped."""


class BillingProviderConfig(_Model):
    """2010AA: the billing provider: its NPI is also the claims' ``billing_provider_id``."""

    name: str = Field(min_length=1)
    npi: str = Field(pattern=r"^\d{10}$")
    ein: str = Field(pattern=r"^\d{9}$")
    """The federal tax id (EIN), 9 digits without dash."""
    address: AddressConfig

    @field_validator("npi")
    @classmethod
    def _npi_check_digit(cls, npi: str) -> str:
        from engine.formats.x12_837 import npi_valid

        if not npi_valid(npi):
            raise ValueError("not a valid NPI (its check digit fails the Luhn check with prefix 80840)")
        return npi


class InterchangeConfig(_Model):
    """ISA05/06 (us) and ISA07/08 (the receiver); GS02/GS03 are the same ids. ``usage`` is ISA15."""

    sender_qualifier: str = Field("ZZ", pattern=r"^[A-Z0-9]{2}$")
    sender_id: str = Field(min_length=1, max_length=15)
    receiver_qualifier: str = Field("ZZ", pattern=r"^[A-Z0-9]{2}$")
    receiver_id: str = Field(min_length=1, max_length=15)
    usage: Literal["P", "T"] = "P"
    """P production, T test (until the partner says the test files passed)."""


class BillingConfig(_Model):
    """``billing:``: what ``engine claims build`` writes on the 837P files (:mod:`engine.billing`)."""

    submitter: SubmitterConfig
    receiver: ReceiverConfig
    billing_provider: BillingProviderConfig
    interchange: InterchangeConfig
    claims_outbox: str = Field(min_length=1)
    """Folder the 837P files are written to, ``<ISA13>.837`` (relative: to the working directory)."""
    place_of_service: str = Field("11", pattern=r"^\d{2}$")
    """CLM05-1, the CMS place of service code of the practice (11: office)."""
    claim_filing_indicator: str = Field("CI", pattern=r"^[A-Z0-9]{2}$")
    """SBR09 for every payer not in ``claim_filing_indicators`` (CI: commercial insurance)."""
    claim_filing_indicators: dict[str, Annotated[str, Field(pattern=r"^[A-Z0-9]{2}$")]] = {}
    """Per payer id (the coverage's payer_id), its SBR09: ``{MEDICARE01: MB, STATEMCD: MC}``."""


DEFAULT_ORDERING_KEY: dict[str, Any] = {
    "identifier": "PID-3",
    "types": list(DEFAULT_TYPES),
    "default_issuer": "MSH-4.1",
    "untyped": True,  # PID-3 is the patient identifier list: many feeds leave CX-5 empty there
}


class LiteralIssuer(_Model):
    literal: str = Field(min_length=1)


class IdentifierKeyConfig(_Model):
    """``ordering_key: {identifier: PID-3, types: [MR, PI], default_issuer: MSH-4.1}``."""

    identifier: str
    """The CX field (a field path without component: PID-3)."""
    types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES), min_length=1)
    """Identifier types (CX-5) in priority order; others are never taken."""
    default_issuer: str | LiteralIssuer | None = None
    """The issuer when the chosen repetition has no CX-4: an HL7 path, or {literal: text}."""
    untyped: bool = False
    """A repetition without a type is taken after every listed type."""


class ChannelConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    enabled: bool = True
    source: dict[str, Any]
    filter: Any = None
    validation: Literal["none", "strict"] = "none"
    ordering_key: str | dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_ORDERING_KEY))
    """What orders processing (updates for one patient apply in receive order): an identifier
    spec (``issuer|value`` of the chosen CX repetition, the default) or a plain HL7 path."""
    duplicate_window_hours: float = Field(24.0, ge=0)
    """A resend with the same MSH-4, MSH-10 and content within this window is not applied twice."""
    timezone: str | None = None
    """IANA zone of the senders' clocks, for date/times sent without an offset (default: each
    mapping's ``timezone:``)."""
    timezones: dict[str, str] = {}
    """Per sending facility, ``{MSH-4 value: IANA zone}``, overriding ``timezone``; a key matches
    MSH-4.1 (namespace id), MSH-4.2 (universal id, such as a CLIA number) or the whole MSH-4."""
    retention_days: float | None = Field(None, gt=0)
    """Days a SENT or FILTERED message is kept after it was received (and last changed); None:
    forever. The running engine prunes older ones every few minutes; ``engine prune`` on demand."""
    error_retention_days: float | None = Field(None, gt=0)
    """Days an ERROR message is kept; None (the default): until it is reprocessed."""
    destinations: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            zone(name)  # ValueError names the problem
        return name

    @field_validator("timezones")
    @classmethod
    def _known_zones(cls, zones: dict[str, str]) -> dict[str, str]:
        for name in zones.values():
            zone(name)
        return zones

    def clock(self, sending_facility: str, component: str = "^") -> tzinfo | None:
        """The zone for a message from ``sending_facility`` (MSH-4 as sent, ``component`` its
        separator): its ``timezones`` entry, else ``timezone``, else None (the mapping's own)."""
        if self.timezones:
            parts = sending_facility.split(component)
            for candidate in (parts[0], parts[1] if len(parts) > 1 else "", sending_facility):
                if candidate and candidate in self.timezones:
                    return zone(self.timezones[candidate])
        return zone(self.timezone) if self.timezone else None


class ConsoleConfig(_Model):
    """The operator console (:mod:`engine.console`): admin API, dashboard and /metrics on one port."""

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    session_idle_minutes: float = Field(30, gt=0)
    session_absolute_hours: float = Field(12, gt=0)
    first_admin: str = "admin"
    first_admin_password: str | None = None
    """Creates ``first_admin`` when the store has no user yet (the sample: ``ENGINE_ADMIN_PASSWORD``)."""
    initial_password_file: str | None = None
    """Without a first admin password and with no user yet: a new random password is written here
    (owner-only), never printed; by default beside an SQLite message store."""
    metrics_public: bool = True
    """GET /metrics without signing in (Prometheus scrapes; it carries no patient data)."""
    tls: ServerTls | None = None


class _Top(_Model):
    stores: dict[str, StoreConfig]
    queue: QueueConfig = QueueConfig()
    billing: BillingConfig | None = None
    console: ConsoleConfig | None = None
    mappings_dir: str = "../mappings"
    channels: list[dict[str, Any]] = Field(min_length=1)


@dataclass
class Channel:
    """One validated channel: its config and its built source/destination configs."""

    config: ChannelConfig
    source: registry.ConnectorConfig
    destinations: list[registry.ConnectorConfig]
    filter: Any = None  # compiled condition, callable(Message) -> bool
    ordering: str | IdentifierKey | None = None  # the compiled ordering_key (a path's text, or an identifier)
    destination_index: list[int] = field(default_factory=list)  # position of each in the file

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Config:
    file: Path
    stores: dict[str, StoreConfig]
    queue: QueueConfig
    mappings_dir: Path
    channels: list[Channel]
    located: Located | None = field(default=None, repr=False)
    billing: BillingConfig | None = None
    console: ConsoleConfig | None = None

    def store_kind(self, name: str) -> str:
        s = self.stores[name]
        return s.kind or name

    @property
    def message_store_url(self) -> str:
        for name, s in self.stores.items():
            if (s.kind or name) == "messages":
                return s.url
        raise KeyError("messages")

    def channel(self, name: str) -> Channel:
        for ch in self.channels:
            if ch.name == name:
                return ch
        raise KeyError(name)

    def mapping_path(self, name: str) -> Path:
        p = Path(name)
        if p.suffix not in (".yaml", ".yml"):
            p = p.with_suffix(".yaml")
        return p if p.is_absolute() else self.mappings_dir / p


def _pydantic_problems(src: Located, base: tuple, exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        key = base + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(src.problem(key, msg))
    return out


def load_config(path: str | Path, *, check_mappings: bool = True) -> Config:
    """Load and validate the whole configuration; raise ConfigError with every problem."""
    registry.discover()
    path = Path(path)
    src = load(path, interpolate=True)
    problems: list[Problem] = list(src.problems)
    if not isinstance(src.data, dict):
        raise ConfigError([src.problem((), "expected a mapping with stores and channels")])
    try:
        top = _Top.model_validate(src.data)
    except ValidationError as exc:
        raise ConfigError(problems + _pydantic_problems(src, (), exc)) from None

    for name, store in top.stores.items():
        kind = store.kind or name
        if kind not in STORE_KINDS:
            problems.append(
                src.problem(("stores", name), f"unknown store kind {kind!r}; set kind: one of {', '.join(STORE_KINDS)}")
            )
    if not any((s.kind or n) == "messages" for n, s in top.stores.items()):
        problems.append(
            src.problem(("stores",), "no message store: add a store named 'messages' (or with kind: messages)")
        )

    cfg = Config(
        path, dict(top.stores), top.queue, (path.parent / top.mappings_dir).resolve(), [], src, top.billing, top.console
    )
    if top.console is not None and top.console.tls is not None:
        problems.extend(top.console.tls.check(src, ("console", "tls")))
    names: dict[str, int] = {}
    for i, raw in enumerate(top.channels):
        base = ("channels", i)
        try:
            ch = ChannelConfig.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(src, base, exc))
            continue
        if ch.name in names:
            problems.append(
                src.problem(base + ("name",), f"duplicate channel name {ch.name!r} (also channels[{names[ch.name]}])")
            )
        names.setdefault(ch.name, i)
        source = _connector(src, base + ("source",), ch.source, registry.SOURCES, "source", problems)
        dests, index = [], []
        dest_names: set[str] = set()
        for j, d in enumerate(ch.destinations):
            dc = _connector(src, base + ("destinations", j), d, registry.DESTINATIONS, "destination", problems)
            if dc is not None:
                if dc.name in dest_names:
                    problems.append(
                        src.problem(base + ("destinations", j, "name"), f"duplicate destination name {dc.name!r}")
                    )
                dest_names.add(dc.name)
                dests.append(dc)
                index.append(j)
        cfg.channels.append(Channel(ch, source, dests, destination_index=index))

    problems.extend(_check_graph(cfg, src, check_mappings))
    if problems:
        raise ConfigError(problems)
    return cfg


def _connector(src: Located, key: tuple, raw: dict, table: dict, what: str, problems: list[Problem]):
    type_name = raw.get("type") if isinstance(raw, dict) else None
    if type_name not in table:
        known = ", ".join(sorted(table))
        problems.append(src.problem(key + ("type",), f"unknown {what} type {type_name!r} (known: {known})"))
        return None
    try:
        return table[type_name].config.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(src, key, exc))
        return None


def _check_graph(cfg: Config, src: Located, check_mappings: bool) -> list[Problem]:
    """Checks across channels: port clashes, destinations naming stores/channels/mappings.

    Each connector config may define ``check(cfg, key, src) -> list[Problem]`` for its own
    cross-references (a store that must exist, a mapping that must compile).
    """
    problems: list[Problem] = []
    listeners: dict[tuple, str] = {}
    for i, ch in enumerate(cfg.channels):
        base = ("channels", i)
        if ch.source is not None:
            addr = getattr(ch.source, "listen_address", None)
            if addr is not None and ch.config.enabled:
                if addr in listeners:
                    problems.append(
                        src.problem(
                            base + ("source", "port"), f"port {addr[1]} already used by channel {listeners[addr]!r}"
                        )
                    )
                listeners.setdefault(addr, ch.name)
            if hasattr(ch.source, "check"):
                problems.extend(ch.source.check(cfg, base + ("source",), src))
        if ch.config.filter is not None:
            from engine.transforms.conditions import compile_condition

            try:
                ch.filter = compile_condition(ch.config.filter)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(src.problem(base + ("filter",), str(exc)))
            except ConfigError as exc:
                problems.extend(
                    src.problem(base + ("filter",) + tuple(_split_key(p.key)), p.message) for p in exc.problems
                )
        problems.extend(_retention_problems(ch.config, src, base))
        ch.ordering, found = _ordering_key(ch.config.ordering_key)
        problems.extend(src.problem(base + ("ordering_key", *k), p) for k, p in found)
        for j, d in zip(ch.destination_index, ch.destinations):
            if hasattr(d, "check"):
                problems.extend(d.check(cfg, base + ("destinations", j), src, check_mappings=check_mappings))
    return problems


def _retention_problems(ch: ChannelConfig, src: Located, base: tuple) -> list[Problem]:
    """A retention shorter than the duplicate window: pruning an original would make its resend
    inside the window look new (applied twice, or processed again)."""
    out = []
    for key in ("retention_days", "error_retention_days"):
        days = getattr(ch, key)
        if days is not None and days * 24 < ch.duplicate_window_hours:
            out.append(
                src.problem(
                    base + (key,),
                    f"{days:g} day(s) is shorter than duplicate_window_hours ({ch.duplicate_window_hours:g}): "
                    "a resend inside the window would look new once its original is pruned; keep messages "
                    "at least as long as the window, or shorten duplicate_window_hours",
                )
            )
    return out


def _ordering_key(raw: str | dict[str, Any]) -> tuple[str | IdentifierKey | None, list[tuple[tuple, str]]]:
    """The compiled ordering key, and its problems as (key below ordering_key, message)."""
    if isinstance(raw, str):
        problem = _path_problem(raw)
        return (None, [((), problem)]) if problem else (raw, [])
    try:
        spec = IdentifierKeyConfig.model_validate(raw)
    except ValidationError as exc:
        return None, [
            (tuple(e["loc"]), "unknown key" if e["type"] == "extra_forbidden" else e["msg"]) for e in exc.errors()
        ]
    found: list[tuple[tuple, str]] = []
    cx = None
    try:
        cx = parse_path(spec.identifier)
        problem = unknown_segment(cx.segment) or (
            None
            if cx.field is not None and cx.component is None and cx.repetition is None
            else "identifier takes a field without repetition or component, e.g. PID-3"
        )
    except ValueError as exc:
        problem = str(exc)
    if problem:
        found.append((("identifier",), problem))
    issuer_path, literal = None, None
    if isinstance(spec.default_issuer, str):
        problem = _path_problem(spec.default_issuer)
        if problem:
            found.append((("default_issuer",), problem + " (a fixed issuer is written {literal: ...})"))
        else:
            issuer_path = parse_path(spec.default_issuer)
    elif spec.default_issuer is not None:
        literal = spec.default_issuer.literal
    types = tuple(t.strip() for t in spec.types)
    if not all(types):
        found.append((("types",), "an identifier type is a code such as MR, never empty"))
    if found or cx is None:
        return None, found
    return IdentifierKey(cx, Identifier(types, spec.untyped), issuer_path, literal), []


def _path_problem(text: str) -> str | None:
    """What is wrong with an HL7 path (malformed, or a segment no HL7 v2 version has), or None."""
    try:
        return unknown_segment(parse_path(text).segment)
    except ValueError as exc:
        return str(exc)


def _split_key(key: str) -> list:
    """``all[1].path`` -> ``["all", 1, "path"]``: list positions as numbers, as the YAML lines are keyed."""
    return [int(k) if k.isdigit() else k for k in key.replace("[", ".").replace("]", "").split(".") if k]
