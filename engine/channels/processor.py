"""Processing: claim committed messages, filter, map, deliver, and record every outcome.

:class:`Processor` runs a batch of one channel's committed messages. It first claims them in
the message store (a :class:`~engine.stores.message_store.Lease`): a claim is taken only when
no earlier message of the same ordering key is still pending, which keeps one patient's
updates in receive order with any number of workers. :class:`ClaimKeeper` renews the claims
while the worker works, and every status the worker writes is fenced by the lease's token: a
worker that stalled past its lease (GC pause, a stopped process, a lost database) finds its
claim gone, delivers nothing more and writes nothing. Destinations that write in one
transaction (stores) take the whole batch; the others (MLLP senders, channel hops) get one
message at a time, in receive order, and each result is recorded as soon as it is known, so a
crash repeats at most the message in flight.
Nothing here logs message content.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import OperationalError

from engine.channels.base import Destination, Item
from engine.errors import Deferred, DeliveryError, MappingError, ParseError
from engine.formats import hl7, parse_text, x12
from engine.stores.message_store import (
    ERROR,
    FILTERED,
    QUEUED,
    RECEIVED,
    SENT,
    Lease,
    MessageStore,
    Outcome,
    now,
)
from engine.threads import Thread
from engine.transforms.report import RunReport, unmapped

log = logging.getLogger("engine.pipeline")

RECORD_PATIENCE = 5
"""How long (in claim lengths) a worker keeps trying to record what it delivered while the
message store is unreachable, before it gives up and the messages go again."""


class ClaimKeeper:
    """Renews the claims of the batches in hand, every quarter of the lease, on one thread."""

    def __init__(self, store: MessageStore, lease_seconds: float):
        self._store = store
        self._every = lease_seconds / 4
        self._held: set[int] = set()
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self._leases[id(lease)] = lease
            if self._thread is None:
                self._thread = Thread(target=self._run, name="engine-claims", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self._every):
            with self._lock:
                leases = list(self._leases.values())
            for lease in leases:
                try:
                    self._store.renew(lease)
                except Exception as exc:  # the store is away: the lease runs out and the worker stops
                    log.warning("could not renew a claim on %d message(s): %s", len(lease.ids), type(exc).__name__)
                if lease.lost:
                    log.warning("%d claimed message(s) were taken over by another worker", len(lease.lost))


class Processor:
    """Filter, map and deliver committed messages of one channel; record every outcome."""

    def __init__(
        self,
        store: MessageStore,
        channels: dict[str, Any],
        destinations: dict[str, list[Destination]],
        *,
        on_outcomes: Callable[[list[Outcome]], None] = lambda o: None,
        dispatch: Callable[[str, list[int]], None] = lambda c, i: None,
        lease_seconds: float = 60.0,
        paused: Callable[[str], bool] = lambda c: False,
    ):
        """``dispatch(channel, ids)`` hands on messages that waited for an earlier one of their
        ordering key; ``lease_seconds`` is how long a claim holds if this worker dies (renewed
        while it lives); ``paused(channel)`` holds a paused channel's messages where they are
        (``RECEIVED``, unclaimed: :mod:`engine.channel_state`)."""
        self._store = store
        self._paused = paused
        self._channels = channels
        self._destinations = destinations
        self._on_outcomes = on_outcomes
        self._dispatch = dispatch
        self._lease = lease_seconds
        self._keeper = ClaimKeeper(store, lease_seconds)

    def process(self, channel_name: str, ids: list[int]) -> list[Outcome]:
        """Process ``ids`` (already committed) in order; returns the outcomes it recorded."""
        if self._paused(channel_name):
            return []
        lease, rows = self._store.claim(ids, lease_seconds=self._lease)
        if not lease.ids:
            return []
        self._keeper.hold(lease)
        try:
            result, after = self._process(channel_name, rows, lease)
        finally:
            self._keeper.drop(lease)
        self._on_outcomes(result)
        if after:
            self._dispatch(channel_name, after)
        return result

    def _process(self, channel_name: str, rows: list[Any], lease: Lease) -> tuple[list[Outcome], list[int]]:
        """Returns the outcomes recorded and the messages next in line after these (to dispatch)."""
        hand_on = (channel_name, {r.ordering_key: r.id for r in rows if r.ordering_key})
        channel = self._channels.get(channel_name)
        if channel is None:
            failed = [Outcome(r.id, ERROR, f"channel {channel_name!r} is not configured") for r in rows]
            return self._store.record(failed, lease, hand_on=hand_on)
        dests = self._destinations[channel_name]
        outcomes: dict[int, Outcome] = {}
        pending: dict[str, list[Item]] = {d.name: [] for d in dests}
        prior: dict[int, dict] = {}
        for r in rows:
            prior[r.id] = r.deliveries
            outcome = self._prepare(channel, dests, r, pending)
            outcomes[r.id] = outcome
        keys = {r.id: r.ordering_key for r in rows}
        unfinished: set[int] = set()  # not delivered everywhere before the claim ran out
        for d in dests:
            items = pending[d.name]
            if not lease.valid():  # the claim may pass to another worker: it takes over from here
                unfinished.update(i.message_id for i in items)
            elif d.orders_its_batch:
                self._deliver_batch(channel_name, d, items, prior, outcomes)
            else:
                unfinished.update(self._deliver_each(d, items, prior, outcomes, keys, lease))
        for o in outcomes.values():
            if o.status == RECEIVED:
                o.status, o.error = _summarise(o.deliveries or [])
        self._keeper.drop(lease)  # recording releases the claims: nothing left to renew
        done = [o for o in outcomes.values() if o.message_id not in unfinished]
        return self._until_stored(lambda: self._store.record(done, lease, hand_on=hand_on), lease)

    def _until_stored(self, write: Callable[[], Any], lease: Lease) -> Any:
        """Run a status write, retrying while the message store is unreachable (up to
        ``RECORD_PATIENCE`` claim lengths). What was delivered must be recorded, or it is
        delivered again: the write is fenced by the claim's token, so retrying after the lease
        ran out is safe — if another worker took the messages over meanwhile, it is refused."""
        deadline = time.monotonic() + lease.seconds * RECORD_PATIENCE
        delay = 0.2
        while True:
            try:
                return write()
            except OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("message store unreachable while recording (%s); retrying", type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _prepare(self, channel, dests: list[Destination], r, pending: dict[str, list[Item]]) -> Outcome:
        """Parse, filter and map one message for each destination still to deliver."""
        try:
            msg: hl7.Message
            if x12.is_x12(r.content):  # one transaction set in its interchange (engine/channels/file_source.py)
                msg = x12.X12Message.from_text(r.content.decode(hl7.codec_for(r.charset, "utf-8")))
            elif r.content[:1] == b"{":  # a FHIR resource as JSON (engine/channels/fhir_source.py)
                msg = parse_text(r.content.decode("utf-8"))
            else:
                msg = hl7.Message(hl7.decode(r.content, hl7.codec_for(r.charset, "utf-8")))
            if channel.config.validation == "strict" and msg.format == "hl7v2":
                hl7.validate_strict(msg.text)
        except ParseError as exc:
            return Outcome(r.id, ERROR, f"parse: {exc}")
        if channel.filter is not None and not channel.filter(msg):
            return Outcome(r.id, FILTERED, "filtered by channel filter")
        results = []
        report = RunReport()
        warnings: list[str] = []
        retried = False  # some destination got this message in an earlier attempt
        for d in dests:
            done = r.deliveries.get(d.name)
            if done is not None and done.status in (SENT, FILTERED):
                retried = True
                continue
            found = RunReport(read=report.read)  # reads pooled: a position is mapped if any destination read it
            try:
                payload = d.prepare(msg, found)
            except MappingError as exc:
                results.append(_failed(d, done, f"mapping: {exc}"))
                continue
            except Exception as exc:  # a bug in a mapping must not stop the worker
                log.exception("channel=%s message=%s destination=%s prepare failed", channel.name, r.id, d.name)
                results.append(_failed(d, done, f"internal: {type(exc).__name__}"))
                continue
            finally:
                warnings.extend(f"{d.name}: {w}" for w in found.warnings)
            if payload is None:
                results.append(dict(destination=d.name, status=FILTERED, attempts=0, result="nothing to deliver"))
            else:
                seq = r.seq if r.seq is not None else r.id
                pending[d.name].append(Item(r.id, payload, r.content, r.ordering_key, seq))
        if msg.format == "fhir" and any(x["status"] == ERROR for x in results):
            # a FHIR request (a transaction Bundle, a resource) is all or nothing: what one
            # destination could not map, no other destination applies in part
            for d in dests:
                if pending[d.name] and pending[d.name][-1].message_id == r.id:
                    pending[d.name].pop()
                    why = "not applied: another destination could not map this FHIR request (all or nothing)"
                    results.append(_failed(d, r.deliveries.get(d.name), why))
        complete = not any(x["status"] == ERROR for x in results)  # a mapping that failed read only part
        left = unmapped(msg, [report]) if report.read and complete else None
        if retried:  # what the destinations done earlier noticed and read is in the stored lists
            warnings = list(dict.fromkeys([*json.loads(r.warnings or "[]"), *warnings]))
            left = json.loads(r.unmapped) if r.unmapped else left
        return Outcome(r.id, RECEIVED, None, results, warnings or None, left)

    def _deliver_batch(self, channel_name: str, d: Destination, items: list[Item], prior: dict, outcomes: dict) -> None:
        """A destination that writes the batch in one transaction and keeps per-key order in it."""
        if not items:
            return
        try:
            results = d.deliver(items)
        except Exception as exc:  # the whole batch failed (e.g. the store is down): retry each
            log.error(
                "channel=%s destination=%s batch of %d failed: %s", channel_name, d.name, len(items), type(exc).__name__
            )
            results = [exc] * len(items)
        for item, res in zip(items, results):
            outcomes[item.message_id].deliveries.append(_result(d, prior[item.message_id].get(d.name), res))

    def _deliver_each(
        self, d: Destination, items: list[Item], prior: dict, outcomes: dict, keys: dict, lease: Lease
    ) -> list[int]:
        """One message at a time, in receive order; each result recorded as soon as it is known.

        A message whose ordering key already failed here waits (QUEUED, no attempt used), so a
        later update never overtakes an earlier one that is being retried. Stops as soon as
        the claim may have passed to another worker, and returns the messages it left: they
        are the new owner's.
        """
        blocked: dict[str, int] = {}  # ordering key -> the message that failed for d
        for n, item in enumerate(items):
            key = keys.get(item.message_id)
            done = prior[item.message_id].get(d.name)
            if key in blocked:
                res: Exception | None = Deferred(blocked[key])
            elif not lease.valid(item.message_id):
                return [i.message_id for i in items[n:]]
            else:
                try:
                    res = d.deliver([item])[0]
                except Exception as exc:
                    res = exc
            delivery = _result(d, done, res)
            outcomes[item.message_id].deliveries.append(delivery)
            if res is not None and key:
                blocked.setdefault(key, item.message_id)
            if isinstance(res, Deferred):
                continue
            row = [(item.message_id, delivery)]
            if item.message_id not in self._until_stored(partial(self._store.record_deliveries, lease, row), lease):
                lease.lost.add(item.message_id)
        return []


def _result(d: Destination, done, res: Exception | None) -> dict[str, Any]:
    """The delivery row for one attempt's result (None: delivered)."""
    attempts = _attempts(done) + 1
    if res is None:
        return dict(destination=d.name, status=SENT, attempts=attempts, result="delivered")
    if isinstance(res, Deferred):  # not attempted: no attempt used up
        return dict(
            destination=d.name,
            status=QUEUED,
            attempts=attempts - 1,
            error=str(res),
            next_attempt_at=now() + timedelta(seconds=d.config.retry.delay(1)),
        )
    if (isinstance(res, DeliveryError) and not res.retryable) or attempts >= d.config.retry.max_attempts:
        return dict(destination=d.name, status=ERROR, attempts=attempts, error=_reason(res))
    delay = d.config.retry.delay(attempts)
    if isinstance(res, DeliveryError) and res.retry_after is not None:  # the receiver's Retry-After
        delay = max(delay, res.retry_after)
    return dict(
        destination=d.name,
        status=QUEUED,
        attempts=attempts,
        error=_reason(res),
        next_attempt_at=now() + timedelta(seconds=delay),
    )


def _failed(d: Destination, done, reason: str) -> dict[str, Any]:
    return dict(destination=d.name, status=ERROR, attempts=_attempts(done) + 1, error=reason)


def _attempts(done) -> int:
    return int(done.attempts) if done is not None else 0


def _reason(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, (DeliveryError, MappingError)) else type(exc).__name__
    return text[:2000]


def _summarise(deliveries: list[dict]) -> tuple[str, str | None]:
    statuses = [d["status"] for d in deliveries]
    errors = [
        f"{d['destination']}: {d['error']}" for d in deliveries if d["status"] in (ERROR, QUEUED) and d.get("error")
    ]
    if ERROR in statuses:
        return ERROR, "; ".join(errors)
    if QUEUED in statuses:
        return QUEUED, "; ".join(errors)
    if statuses and all(s == FILTERED for s in statuses):
        return FILTERED, "no destination had anything to deliver"
    return SENT, None
