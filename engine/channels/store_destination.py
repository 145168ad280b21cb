"""Destination ``store``: map each message with a mapping file and upsert into a record store.

The mapping runs in ``prepare`` (a mapping error fails this destination for this message
only), on the clock of the message's sender (its channel's ``timezone``/``timezones``);
``deliver`` writes a whole batch of messages in one transaction with one savepoint per
message, so one bad message cannot cost the others their write.
"""

from __future__ import annotations

from typing import Literal

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.errors import ConfigError, Problem
from engine.formats.hl7 import Message
from engine.transforms.report import RunReport


class StoreDestinationConfig(DestinationConfig):
    type: Literal["store"]
    store: str
    """A store named under ``stores:`` (kind clinical or pm)."""
    mapping: str | list[str]
    """Mapping file, relative to ``mappings_dir`` (``.yaml`` may be left off); or several, whose
    records for one message are written together, all or none (a FHIR transaction Bundle holding
    a Patient and its Observations: one mapping per resource type, one transaction)."""

    @property
    def mappings(self) -> list[str]:
        return [self.mapping] if isinstance(self.mapping, str) else list(self.mapping)

    def check(self, cfg, key, src, *, check_mappings: bool = True) -> list[Problem]:
        problems = []
        if self.store not in cfg.stores:
            return [src.problem(key + ("store",), f"unknown store {self.store!r} (known: {', '.join(cfg.stores)})")]
        kind = cfg.store_kind(self.store)
        if kind == "messages":
            return [src.problem(key + ("store",), "the message store cannot be a destination")]
        if not self.mappings:
            return [src.problem(key + ("mapping",), "name at least one mapping")]
        for name in self.mappings:
            path = cfg.mapping_path(name)
            if not path.exists():
                problems.append(src.problem(key + ("mapping",), f"mapping file not found: {path}"))
        if check_mappings and not problems:
            try:
                load_for(cfg, self)
            except ConfigError as exc:
                problems.extend(exc.problems)
        return problems


def load_for(cfg, dest: StoreDestinationConfig) -> list:
    """Load ``dest``'s mappings, checking their targets against the store's tables and columns;
    ConfigError lists every problem of every one."""
    from engine.stores.schema import columns_of
    from engine.transforms import load_mapping

    kind = cfg.store_kind(dest.store)
    columns = {dest.store: columns_of(kind)}
    out, problems = [], []
    for name in dest.mappings:
        try:
            out.append(load_mapping(cfg.mapping_path(name), tables_dir=cfg.mappings_dir / "tables", columns=columns))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


@registry.destination("store", StoreDestinationConfig)
class StoreDestination(Destination):
    """Maps each message into records and upserts them into a clinical or PM store."""

    def __init__(self, config: StoreDestinationConfig, context):
        super().__init__(config, context)
        self.mappings = load_for(context.config, config)
        self.store = context.record_store(config.store)

    def prepare(self, message: Message, report: RunReport | None = None):
        applying = [m for m in self.mappings if m.applies(message)]
        if not applying:
            return None
        zone = self.sender_clock(message)
        records = []
        for mapping in applying:  # a MappingError in any fails the message for this destination: none is written
            built = mapping.run(message, report, zone)
            if report is not None:
                for check in mapping.checks:
                    report.warnings.extend(check(message, built, self.store))
            records.extend(built)
        return records or None

    orders_its_batch = True  # one transaction; a message after a failed one of its key is Deferred

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        return self.store.apply_batch(
            [(i.message_id, i.payload) for i in items],
            keys=[i.ordering_key for i in items],
            seqs=[i.seq for i in items],
        )
