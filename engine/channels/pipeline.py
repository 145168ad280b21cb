"""The data's way: receive -> commit -> ACK -> queue -> filter -> map -> deliver -> statuses.

:class:`Committer` is the receive path's only writer: sources hand it inbound messages, it
commits whatever has arrived meanwhile in one transaction (group commit), then dispatches the
new ids to the queue in commit order. :class:`Receiver` turns raw bytes into an ACK for a
source. The processing half (claim, filter, map, deliver, record) is
:mod:`engine.channels.processor`. Nothing here logs message content.
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

from engine.errors import ParseError, StoreUnavailable
from engine.formats import hl7, hl7_ack
from engine.stores.db import pinned_connections
from engine.stores.message_store import ERROR, FILTERED, RECEIVED, SENT, Inbound, MessageStore, Outcome, Stored
from engine.threads import Thread
from engine.transforms.identifiers import IdentifierKey

log = logging.getLogger("engine.pipeline")


class Committer:
    """Group commit: one thread commits queued inbound messages in batches of up to ``max_batch``.

    ``submit`` is called from the event loop and resolves once the message is on disk. After
    each commit the new RECEIVED ids go to ``dispatch(channel, ids)`` in commit order.
    """

    def __init__(self, store: MessageStore, dispatch: Callable[..., None], *, max_batch: int = 500):
        """``dispatch(channel, ids, urgent=False)`` hands committed ids to processing."""
        self._store = self.store = store
        self._dispatch = dispatch
        self._max_batch = max_batch
        self._q: _queue.SimpleQueue = _queue.SimpleQueue()
        self._thread = Thread(target=self._run, name="engine-committer", daemon=True)
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(10)

    def submit(
        self, item: Inbound, *, want_result: bool = False, urgent: bool = False
    ) -> tuple[asyncio.Future, asyncio.Future | None]:
        """Queue ``item``; returns (committed future -> Stored, processed future -> Outcome | None).

        ``urgent``: the sender waits for the outcome (after_processing), so processing starts
        without lingering for a fuller batch (``want_result`` implies it)."""
        loop = asyncio.get_running_loop()
        committed, processed = loop.create_future(), (loop.create_future() if want_result else None)
        self._q.put((item, loop, committed, processed, urgent or want_result))
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
        final = [o for o in outcomes if o.status in (SENT, FILTERED, ERROR)]  # QUEUED: not yet
        with self._lock:
            found = [(self._waiters.pop(o.message_id), o) for o in final if o.message_id in self._waiters]
        for (loop, fut), outcome in found:
            loop.call_soon_threadsafe(_set, fut, outcome)

    def _dispatch_stored(self, items: list[Inbound], stored: list[Stored], urgent: set[str] | None = None) -> None:
        """Dispatch the RECEIVED ones per channel; ``urgent``: channels where a sender waits."""
        by_channel: dict[str, list[int]] = {}
        for item, s in zip(items, stored):
            if s.status == RECEIVED:
                by_channel.setdefault(item.channel, []).append(s.id)
        for channel, ids in by_channel.items():
            if urgent and channel in urgent:
                self._dispatch(channel, ids, urgent=True)
            else:
                self._dispatch(channel, ids)

    def _run(self) -> None:
        with pinned_connections():  # this thread writes all the time: one connection per store
            self._loop()

    def _loop(self) -> None:
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
                for _item, loop, committed, _p, _u in batch:
                    loop.call_soon_threadsafe(_set_exc, committed, err)
                continue
            with self._lock:
                for (_i, loop, _c, processed, _u), s in zip(batch, stored):
                    if processed is not None and s.status == RECEIVED:
                        self._waiters[s.id] = (loop, processed)
            for (_i, loop, committed, _p, _u), s in zip(batch, stored):
                loop.call_soon_threadsafe(_set, committed, s)
            self._dispatch_stored(items, stored, {b[0].channel for b in batch if b[4]})


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
        self._committer = self.committer = committer
        self.config: Any = None
        """The engine's whole config, for sources that need more than their own block."""
        self.record_store: Any = None
        """``record_store(name)``: a record store by its config name, for sources that read the
        stores (the FHIR API); set by the runtime."""
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
        """Commit ``raw`` for ``channel`` and return the ACK (AA, AE or AR). Never raises.

        The message is decoded here, once (its ordering key is read now): bytes its character
        set cannot read are stored as ERROR and answered AE (table 0008: an error in the
        message itself, for the sender to correct) with an ERR naming the byte offset; a
        segment without a valid id is stored as ERROR and answered AR with ERR 100 and its
        sequence (the message can never be read as sent).
        ``charset``: the channel's codec for messages whose MSH-18 is empty.
        """
        header, problem, msg = None, None, None
        try:
            header = hl7.read_header(raw)
            hl7.check_header(header)
            # the segments are split once here: a malformed one is answered now, not after an AA
            msg = hl7.Message(hl7.decode(raw, charset, charset=header.charset))
        except ParseError as exc:
            problem = exc
        except Exception as exc:  # unreadable in a way the parser did not foresee: still answered
            problem = ParseError(f"unreadable message: {type(exc).__name__}", code=207)
        cfg = channel.config
        item = inbound(
            cfg.name,
            raw,
            header,
            peer=peer,
            charset=(header.charset if header and header.charset else charset),
            error=str(problem) if problem else None,
            ordering_key=None if problem or msg is None else key_of(msg, channel.ordering),
            duplicate_window=timedelta(hours=cfg.duplicate_window_hours) if cfg.duplicate_window_hours else None,
        )
        want = ack_mode == "after_processing" and problem is None and not self._poll
        try:
            committed, processed = self._committer.submit(item, want_result=want, urgent=ack_mode == "after_processing")
            stored: Stored = await committed
        except StoreUnavailable as exc:
            return self._ack(header, hl7_ack.ACK_ERROR, ParseError(str(exc), code=207, reject=False))
        if stored.status != RECEIVED:
            log.info("channel=%s message=%s status=%s", cfg.name, stored.id, stored.status)
        if stored.error is not None:  # stored raw: the store could not take its header fields
            return self._ack(header, hl7_ack.ACK_REJECT, ParseError(stored.error, code=207, reject=True))
        if problem is not None:
            return self._ack(header, hl7_ack.ACK_REJECT if problem.reject else hl7_ack.ACK_ERROR, problem)
        if ack_mode == "after_processing":
            if stored.duplicate_of is not None:  # a resend: it gets the original's result, not a blind AA
                processed = asyncio.ensure_future(self._committer.poll_outcome(stored.duplicate_of))
            elif self._poll and stored.status == RECEIVED:
                processed = asyncio.ensure_future(self._committer.poll_outcome(stored.id))
        if processed is not None:
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


def inbound(channel: str, raw: bytes, header: hl7.Header | None, **extra: Any) -> Inbound:
    """An Inbound for ``raw`` with the header fields the store indexes (empty without a header)."""
    h = header
    fields: dict[str, Any] = dict(
        charset=h.charset if h else "",
        message_type=h.message_type if h else "",
        trigger=h.trigger if h else "",
        control_id=h.control_id if h else "",
        sending_app=h.sending_app if h else "",
        sending_facility=h.sending_facility if h else "",
        version=h.version if h else "",
    )
    return Inbound(channel=channel, content=raw, **{**fields, **extra})


def ordering_key(
    raw: bytes, key: str | IdentifierKey | None, default_charset: str = "utf-8", charset: str | None = None
) -> str | None:
    """The channel's ordering key of ``raw`` (see :func:`key_of`), or None.

    Read at receive time, because a later message of the same key must see it before this one
    is processed. Bytes that do not decode have none (the Receiver decodes first and answers
    that as a problem; this is for a copy routed between channels, already received once).
    """
    try:
        msg = hl7.Message(hl7.decode(raw, default_charset, charset=charset))
    except ParseError:
        return None
    return key_of(msg, key)


def key_of(msg: hl7.Message, key: str | IdentifierKey | None) -> str | None:
    """The ordering key of ``msg``, at most 200 characters, or None (none there).

    ``key`` is the channel's compiled ``ordering_key``: an :class:`IdentifierKey` (the default:
    ``issuer|value`` of the patient identifier the mappings pick) or a plain path (its first
    value). Only the segments it names are split."""
    if key is None:
        return None
    try:
        value = msg.value(key) if isinstance(key, str) else key.read(msg)
    except (ParseError, ValueError, IndexError):
        return None
    return value[:200] if value else None


def _error_for(reason: str) -> ParseError:
    code = 101 if "required" in reason else 207
    return ParseError(reason, code=code, reject=False)
