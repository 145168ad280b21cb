"""The data's way: receive -> commit -> ACK -> queue -> filter -> map -> deliver -> statuses.

:class:`Committer` is the receive path's only writer: sources hand it inbound messages, it
commits whatever has arrived meanwhile in one transaction (group commit), then dispatches the
new ids to the queue in commit order. :class:`Receiver` turns raw bytes into an ACK for a
source. :class:`Processor` runs a batch of committed messages through filter, mappings and
destinations and records every outcome. Nothing here logs message content.
"""

from __future__ import annotations

import asyncio
import logging
import queue as _queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from engine.channels.base import Deferred, Destination, Item
from engine.errors import DeliveryError, MappingError, ParseError, StoreUnavailable
from engine.formats import hl7, hl7_ack
from engine.stores.message_store import (
    ERROR,
    FILTERED,
    PENDING,
    QUEUED,
    RECEIVED,
    SENT,
    Inbound,
    MessageStore,
    Outcome,
    Stored,
    now,
)

log = logging.getLogger("engine.pipeline")


class Committer:
    """Group commit: one thread commits queued inbound messages in batches of up to ``max_batch``.

    ``submit`` is called from the event loop and resolves once the message is on disk. After
    each commit the new RECEIVED ids go to ``dispatch(channel, ids)`` in commit order.
    """

    def __init__(self, store: MessageStore, dispatch: Callable[[str, list[int]], None], *, max_batch: int = 500):
        self._store = store
        self._dispatch = dispatch
        self._max_batch = max_batch
        self._q: _queue.SimpleQueue = _queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-committer", daemon=True)
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(10)

    def submit(self, item: Inbound, *, want_result: bool = False) -> tuple[asyncio.Future, asyncio.Future | None]:
        """Queue ``item``; returns (committed future -> Stored, processed future -> Outcome | None)."""
        loop = asyncio.get_running_loop()
        committed, processed = loop.create_future(), (loop.create_future() if want_result else None)
        self._q.put((item, loop, committed, processed))
        return committed, processed

    def submit_sync(self, items: list[Inbound]) -> list[Stored]:
        """Commit from a non-async caller (a channel destination, the CLI) and dispatch."""
        stored = self._store.insert_received(items)
        self._dispatch_stored(items, stored)
        return stored

    async def poll_outcome(self, message_id: int, every: float = 0.02) -> Outcome:
        """Wait for a message processed elsewhere to reach a final status (SENT, FILTERED, ERROR)."""
        while True:
            row = await asyncio.to_thread(self._store.status_of, message_id)
            if row is not None and row[0] in (SENT, FILTERED, ERROR):
                return Outcome(message_id, row[0], row[1])
            await asyncio.sleep(every)

    def notify(self, outcomes: list[Outcome]) -> None:
        """Resolve after_processing waiters for these outcomes."""
        with self._lock:
            found = [(self._waiters.pop(o.message_id), o) for o in outcomes if o.message_id in self._waiters]
        for (loop, fut), outcome in found:
            loop.call_soon_threadsafe(_set, fut, outcome)

    def _dispatch_stored(self, items: list[Inbound], stored: list[Stored]) -> None:
        by_channel: dict[str, list[int]] = {}
        for item, s in zip(items, stored):
            if s.status == RECEIVED:
                by_channel.setdefault(item.channel, []).append(s.id)
        for channel, ids in by_channel.items():
            self._dispatch(channel, ids)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._q.get_nowait()
                except _queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            items = [b[0] for b in batch]
            try:
                stored = self._store.insert_received(items)
            except Exception as exc:  # the store could not commit: every sender gets AE, nothing is ACKed
                log.error("message store commit failed for %d message(s): %s", len(batch), type(exc).__name__)
                err = StoreUnavailable(f"message store unavailable: {type(exc).__name__}")
                for _item, loop, committed, _p in batch:
                    loop.call_soon_threadsafe(_set_exc, committed, err)
                continue
            with self._lock:
                for (_i, loop, _c, processed), s in zip(batch, stored):
                    if processed is not None and s.status == RECEIVED:
                        self._waiters[s.id] = (loop, processed)
            for (_i, loop, committed, _p), s in zip(batch, stored):
                loop.call_soon_threadsafe(_set, committed, s)
            self._dispatch_stored(items, stored)


def _set(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future, exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


@dataclass(frozen=True)
class Ack:
    code: str
    text: str  # the ACK message


class Receiver:
    """Turns one inbound HL7 message into a committed row and the ACK to send back."""

    def __init__(self, committer: Committer, *, app: str = "ENGINE", facility: str = "", poll_results: bool = False):
        """``poll_results``: processing happens in other processes (workers), so an
        after_processing ACK waits by reading the message's status from the store."""
        self._committer = committer
        self._app = app
        self._facility = facility
        self._poll = poll_results

    async def receive(
        self,
        channel,
        raw: bytes,
        *,
        peer: str = "",
        charset: str = "utf-8",
        ack_mode: str = "on_receive",
        result_timeout: float = 30.0,
    ) -> Ack:
        """Commit ``raw`` for ``channel`` and return the ACK (AA, AE or AR). Never raises."""
        header, problem = None, None
        try:
            header = hl7.read_header(raw)
            hl7.check_header(header)
        except ParseError as exc:
            problem = exc
        except Exception as exc:  # unreadable in a way the parser did not foresee: still answered
            problem = ParseError(f"unreadable message: {type(exc).__name__}", code=207)
        cfg = channel.config
        item = Inbound(
            channel=cfg.name,
            content=raw,
            peer=peer,
            charset=(header.charset if header and header.charset else charset),
            message_type=header.message_type if header else "",
            trigger=header.trigger if header else "",
            control_id=header.control_id if header else "",
            sending_app=header.sending_app if header else "",
            sending_facility=header.sending_facility if header else "",
            version=header.version if header else "",
            error=str(problem) if problem else None,
            ordering_key=None if problem else ordering_key(raw, cfg.ordering_key, charset, header.charset),
            duplicate_window=timedelta(hours=cfg.duplicate_window_hours) if cfg.duplicate_window_hours else None,
        )
        want = ack_mode == "after_processing" and problem is None and not self._poll
        try:
            committed, processed = self._committer.submit(item, want_result=want)
            stored: Stored = await committed
        except StoreUnavailable as exc:
            return self._ack(header, hl7_ack.ACK_ERROR, ParseError(str(exc), code=207, reject=False))
        if stored.status != RECEIVED:
            log.info("channel=%s message=%s status=%s", cfg.name, stored.id, stored.status)
        if problem is not None:
            return self._ack(header, hl7_ack.ACK_REJECT if problem.reject else hl7_ack.ACK_ERROR, problem)
        if self._poll and ack_mode == "after_processing" and stored.status == RECEIVED:
            processed = asyncio.ensure_future(self._committer.poll_outcome(stored.id))
        if processed is not None and stored.status == RECEIVED:
            try:
                outcome: Outcome = await asyncio.wait_for(processed, result_timeout)
            except TimeoutError:
                return self._ack(
                    header,
                    hl7_ack.ACK_ERROR,
                    ParseError("stored, but processing did not finish in time; it continues", code=207, reject=False),
                )
            if outcome.status == ERROR:
                return self._ack(header, hl7_ack.ACK_ERROR, _error_for(outcome.error or "processing failed"))
        return self._ack(header, hl7_ack.ACK_ACCEPT, None)

    def _ack(self, header, code: str, error: ParseError | None) -> Ack:
        return Ack(code, hl7_ack.build_ack(header, code, error=error, app=self._app, facility=self._facility))


def ordering_key(raw: bytes, path: str, default_charset: str = "utf-8", charset: str | None = None) -> str | None:
    """The value at the channel's ordering path (default PID-3.1, the patient's id), or None.

    Read at receive time, because a later message of the same key must see it before this one
    is processed. Only the segment named by the path is split; an unreadable message has none.
    """
    try:
        value = hl7.Message(hl7.decode(raw, default_charset, charset=charset)).value(path)
    except (ParseError, ValueError, IndexError):
        return None
    return value[:200] if value else None


def _error_for(reason: str) -> ParseError:
    code = 101 if "required" in reason else 207
    return ParseError(reason, code=code, reject=False)


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
    ):
        """``dispatch(channel, ids)`` hands on messages that waited for an earlier one of their
        ordering key; ``lease_seconds`` is how long a claim holds if this worker dies."""
        self._store = store
        self._channels = channels
        self._destinations = destinations
        self._on_outcomes = on_outcomes
        self._dispatch = dispatch
        self._lease = lease_seconds

    def process(self, channel_name: str, ids: list[int]) -> list[Outcome]:
        """Process ``ids`` (already committed) in order; returns and records their outcomes."""
        channel = self._channels.get(channel_name)
        claimed = self._store.claim(ids, lease_seconds=self._lease)
        rows = [r for r in self._store.load(claimed) if r.status in PENDING]
        if channel is None:
            outcomes = [Outcome(r.id, ERROR, f"channel {channel_name!r} is not configured") for r in rows]
            self._store.record(outcomes)
            return outcomes
        dests = self._destinations[channel_name]
        outcomes: dict[int, Outcome] = {}
        pending: dict[str, list[Item]] = {d.name: [] for d in dests}
        prior: dict[int, dict] = {}
        for r in rows:
            prior[r.id] = r.deliveries
            try:
                msg = hl7.Message(hl7.decode(r.content, hl7.codec_for(r.charset, "utf-8")))
                if channel.config.validation == "strict":
                    hl7.validate_strict(msg.text)
            except ParseError as exc:
                outcomes[r.id] = Outcome(r.id, ERROR, f"parse: {exc}")
                continue
            if channel.filter is not None and not channel.filter(msg):
                outcomes[r.id] = Outcome(r.id, FILTERED, "filtered by channel filter")
                continue
            results = []
            for d in dests:
                done = r.deliveries.get(d.name)
                if done is not None and done.status in (SENT, FILTERED):
                    continue
                try:
                    payload = d.prepare(msg)
                except MappingError as exc:
                    results.append(
                        dict(destination=d.name, status=ERROR, attempts=_attempts(done) + 1, error=f"mapping: {exc}")
                    )
                    continue
                except Exception as exc:  # a bug in a mapping must not stop the worker
                    log.exception("channel=%s message=%s destination=%s prepare failed", channel_name, r.id, d.name)
                    results.append(
                        dict(
                            destination=d.name,
                            status=ERROR,
                            attempts=_attempts(done) + 1,
                            error=f"internal: {type(exc).__name__}",
                        )
                    )
                    continue
                if payload is None:
                    results.append(dict(destination=d.name, status=FILTERED, attempts=0, result="nothing to deliver"))
                else:
                    pending[d.name].append(Item(r.id, payload, r.content, r.ordering_key))
            outcomes[r.id] = Outcome(r.id, RECEIVED, None, results)

        keys = {r.id: r.ordering_key for r in rows}
        for d in dests:
            blocked: dict[str, int] = {}  # ordering key -> the message that failed for d
            batches = [pending[d.name]] if d.orders_its_batch else _waves(pending[d.name], keys)
            for wave in batches:
                go = [i for i in wave if keys.get(i.message_id) not in blocked]
                for item in wave:
                    if keys.get(item.message_id) in blocked:  # an earlier one of its key must go first
                        done = prior[item.message_id].get(d.name)
                        outcomes[item.message_id].deliveries.append(
                            dict(
                                destination=d.name,
                                status=QUEUED,
                                attempts=_attempts(done),
                                error=f"waits for message {blocked[keys[item.message_id]]} (same ordering key)",
                                next_attempt_at=now() + timedelta(seconds=d.config.retry.delay(1)),
                            )
                        )
                if go:
                    self._deliver(channel_name, d, go, prior, outcomes, keys, blocked)
        for o in outcomes.values():
            if o.status == RECEIVED:
                o.status, o.error = _summarise(o.deliveries or [])
        result = list(outcomes.values())
        self._store.record(result)
        self._on_outcomes(result)
        done = {r.ordering_key: r.id for r in rows if r.ordering_key}
        if done:
            self._dispatch(channel_name, self._store.next_in_line(channel_name, done))
        return result

    def _deliver(
        self,
        channel_name: str,
        d: Destination,
        items: list[Item],
        prior: dict,
        outcomes: dict,
        keys: dict[int, str | None],
        blocked: dict[str, int],
    ) -> None:
        """Deliver ``items`` to ``d``; add each result to its outcome; note failed keys in ``blocked``."""
        try:
            results = d.deliver(items)
        except Exception as exc:  # the whole batch failed (e.g. the store is down): retry each
            log.error(
                "channel=%s destination=%s batch of %d failed: %s", channel_name, d.name, len(items), type(exc).__name__
            )
            results = [exc] * len(items)
        for item, res in zip(items, results):
            done = prior[item.message_id].get(d.name)
            attempts = _attempts(done) + 1
            o = outcomes[item.message_id]
            if res is None:
                o.deliveries.append(dict(destination=d.name, status=SENT, attempts=attempts, result="delivered"))
                continue
            if isinstance(res, Deferred):  # not attempted: no attempt used up
                o.deliveries.append(
                    dict(
                        destination=d.name,
                        status=QUEUED,
                        attempts=attempts - 1,
                        error=str(res),
                        next_attempt_at=now() + timedelta(seconds=d.config.retry.delay(1)),
                    )
                )
                continue
            if keys.get(item.message_id):
                blocked.setdefault(keys[item.message_id], item.message_id)
            if (isinstance(res, DeliveryError) and not res.retryable) or attempts >= d.config.retry.max_attempts:
                o.deliveries.append(dict(destination=d.name, status=ERROR, attempts=attempts, error=_reason(res)))
            else:
                o.deliveries.append(
                    dict(
                        destination=d.name,
                        status=QUEUED,
                        attempts=attempts,
                        error=_reason(res),
                        next_attempt_at=now() + timedelta(seconds=d.config.retry.delay(attempts)),
                    )
                )


def _waves(items: list[Item], keys: dict[int, str | None]) -> list[list[Item]]:
    """Split a batch so that no wave holds two messages of one ordering key: wave k holds the
    k-th message of each key (messages without a key all go in the first wave). A destination
    then never receives a later update for a patient in the same call as an earlier one that
    may fail."""
    seen: dict[str, int] = {}
    waves: list[list[Item]] = []
    for item in items:
        key = keys.get(item.message_id)
        n = seen.get(key, 0) if key else 0
        if key:
            seen[key] = n + 1
        while len(waves) <= n:
            waves.append([])
        waves[n].append(item)
    return waves


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
