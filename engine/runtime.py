"""The running engine: stores, queue, committer, processor, sources and destinations, wired
from a validated :class:`~engine.config.Config`. The CLI builds one; tests build one too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import make_url

from engine.channel_state import REFRESH_SECONDS, ChannelStates
from engine.channels import registry
from engine.channels.base import Context, Destination, Item
from engine.channels.pipeline import Committer, Receiver, inbound, ordering_key
from engine.channels.processor import Processor
from engine.config import Config
from engine.errors import ParseError
from engine.formats import hl7
from engine.queue import MemoryQueue, make_queue
from engine.stores.message_store import MessageStore, Outcome
from engine.threads import Thread

ALL, LISTENER, WORKER = "all", "listener", "worker"

log = logging.getLogger("engine.runtime")


def settle() -> None:
    """Take what start-up built (modules, FHIR and HL7 models, compiled mappings, SQL) out of the
    cyclic garbage collector's sight: it lives as long as the process, and the collector would
    otherwise walk all of it again each time its oldest generation is collected, every few
    hundred requests. Measured on a FHIR Bundle load (``bench/fhir_ingest.py``): the collector
    took about 15% of the engine's CPU before, half of that after."""
    gc.collect()
    gc.freeze()


class Runtime:
    """Everything one engine process runs. ``start()`` processing, then ``start_sources()``.

    ``role``: ``all`` (embedded: listeners and processing in this process, in-process
    queue), ``listener`` (``engine run`` with a Redis or process queue: receive, commit, ACK,
    enqueue) or ``worker`` (``engine worker``: consume the Redis queue, or the pipe from its
    ``engine run`` with ``process://``, and process).
    """

    def __init__(self, cfg: Config, *, role: str | None = None, threads: int = 4):
        self.cfg = cfg
        q = cfg.queue
        self.distributed = not q.url.startswith("memory:")
        self.role = role or (LISTENER if self.distributed else ALL)
        self.message_store = MessageStore(cfg.message_store_url)
        self._record_stores: dict[str, object] = {}
        self._inflight: set[int] = set()
        self._inflight_lock = threading.Lock()
        self._undispatched: dict[str, set[int]] = {}
        self._outbox: dict[str, list[int]] = {}
        self._outbox_count = 0  # ids in the outbox
        self._outbox_urgent = False
        self._outbox_ready = threading.Condition()
        self._outbox_thread = Thread(target=self._run_outbox, name="engine-dispatch", daemon=True)
        self.queue = make_queue(
            q.url,
            self._handle if self.role != LISTENER else None,
            batch_size=q.batch_size,
            threads=threads,
            linger_seconds=q.linger_ms / 1000,
            config=cfg.file,
        )
        # ids go through the outbox to a queue outside this process; a process:// worker's
        # queue is its own MemoryQueue, which it feeds directly (one linger, not two)
        self._outbox_used = self.distributed and not isinstance(self.queue, MemoryQueue)
        self.committer = Committer(self.message_store, self._dispatch)
        self.receiver = Receiver(self.committer, poll_results=self.distributed)
        self.receiver.config = cfg  # sources that read more than their own block (claims: billing:, stores:)
        self.receiver.record_store = self.record_store  # sources that read the stores (the FHIR API)
        self.destinations: dict[str, list[Destination]] = {
            ch.name: [
                registry.DESTINATIONS[d.type].factory(d, Context(cfg, self.record_store, self.route, ch.config))
                for d in ch.destinations
            ]
            for ch in cfg.channels
        }
        # a worker process reads the state for each batch: a pause written by the console (in
        # engine run) holds every batch it takes after it, as in the embedded engine
        refresh = 0.0 if self.role == WORKER else REFRESH_SECONDS
        self.channel_states = ChannelStates(self.message_store.engine, refresh_seconds=refresh)
        self.processor = Processor(
            self.message_store,
            {ch.name: ch for ch in cfg.channels},
            self.destinations,
            on_outcomes=self.committer.notify,
            dispatch=self._dispatch,
            lease_seconds=q.claim_seconds,
            paused=self.channel_states.paused,
        )
        self.sources: list = []
        self.console: Any = None
        self.processed = 0
        self._sweep_seconds = q.sweep_seconds
        self._stuck_after = timedelta(seconds=q.stuck_after_seconds)
        self._stop = threading.Event()
        self._sweeper = Thread(target=self._sweep, name="engine-sweeper", daemon=True)

    # -- stores -----------------------------------------------------------------------------------
    def record_store(self, name: str):
        if name not in self._record_stores:
            from engine.stores.records_store import RecordStore

            self._record_stores[name] = RecordStore(self.cfg.stores[name].url, self.cfg.store_kind(name))
        return self._record_stores[name]

    def _all_stores(self):
        yield "messages", self.message_store
        for name in self.cfg.stores:
            if self.cfg.store_kind(name) != "messages":
                yield name, self.record_store(name)

    def prepare_schemas(self, *, upgrade: bool | None = None) -> None:
        """Bring schemas up to date (``upgrade``), or refuse to run on a stale one.

        ``upgrade=None`` upgrades embedded SQLite stores automatically and only checks others.
        """
        from engine.stores import migrate

        for name, store in self._all_stores():
            kind = "messages" if name == "messages" else self.cfg.store_kind(name)
            auto = upgrade if upgrade is not None else make_url(store.url).get_backend_name() == "sqlite"
            if auto:
                migrate.upgrade(store.url, kind, engine=store.engine)
            else:
                migrate.check(store.url, kind, engine=store.engine, name=name)

    # -- processing -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start this role's threads; a processing role re-dispatches what was left pending."""
        self.committer.start()
        self.queue.start()
        if self._outbox_used:
            self._outbox_thread.start()
        if self.role == ALL:  # the only processor of these stores: nobody else holds a claim
            self.message_store.release_claims()
        if self.role != LISTENER:
            for channel, ids in _group(self.message_store.pending()):
                self._dispatch(channel, ids)
        self._sweeper.start()

    def _dispatch(self, channel: str, ids: list[int], *, urgent: bool = False) -> None:
        """Hand ids to the queue; if the queue is unreachable, keep them and retry each sweep.

        Ids gather for up to ``queue.linger_ms`` first (with Redis, here; in process, in the
        queue): a batch lets a worker claim, load and write many messages in a few round trips.
        ``urgent`` (a sender waits for the outcome: an after_processing ACK) ends the wait.
        """
        if self._outbox_used:
            with self._outbox_ready:
                wake = not self._outbox or urgent  # see MemoryQueue.enqueue: only a change the wait looks at
                self._outbox.setdefault(channel, []).extend(ids)
                self._outbox_count += len(ids)
                self._outbox_urgent = self._outbox_urgent or urgent
                if wake or self._outbox_count >= self.cfg.queue.batch_size:
                    self._outbox_ready.notify()
            return
        with self._inflight_lock:
            ids = [i for i in ids if i not in self._inflight]
            self._inflight.update(ids)
        self._enqueue(channel, ids, urgent=urgent)

    def _run_outbox(self) -> None:
        while True:
            with self._outbox_ready:
                while not self._outbox and not self._stop.is_set():
                    self._outbox_ready.wait(0.5)
                if self._stop.is_set() and not self._outbox:
                    return
                deadline = time.monotonic() + self.cfg.queue.linger_ms / 1000
                while (
                    self._outbox_count < self.cfg.queue.batch_size
                    and not self._stop.is_set()
                    and not self._outbox_urgent
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._outbox_ready.wait(left)
                out, self._outbox, self._outbox_urgent, self._outbox_count = self._outbox, {}, False, 0
            size = self.cfg.queue.batch_size
            for channel, ids in out.items():
                for k in range(0, len(ids), size):
                    self._enqueue(channel, ids[k : k + size])

    def _enqueue(self, channel: str, ids: list[int], *, urgent: bool = False) -> None:
        try:
            if urgent and isinstance(self.queue, MemoryQueue):
                self.queue.enqueue(channel, ids, urgent=True)
            else:
                self.queue.enqueue(channel, ids)
        except Exception as exc:  # Redis is down: the ids are safe in the store, dispatch later
            with self._inflight_lock:
                self._undispatched.setdefault(channel, set()).update(ids)
            log.warning(
                "channel=%s queue unreachable (%s); %d message(s) wait in the store",
                channel,
                type(exc).__name__,
                len(ids),
            )

    def _handle(self, channel: str, ids: list[int]) -> None:
        try:
            self.processor.process(channel, ids)
            self.processed += len(ids)
        except Exception as exc:  # e.g. the message store is down: ids stay pending, the sweeper retries
            log.error("channel=%s processing of %d message(s) failed: %s", channel, len(ids), type(exc).__name__)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(ids)

    def _sweep(self) -> None:
        """Every ``sweep_seconds``: retry dispatches the queue refused; in a processing role,
        re-dispatch retries that are due and messages stuck beyond ``stuck_after_seconds``
        (lost from Redis, or claimed by a worker that died); record a heartbeat.

        The embedded engine and the listener (never a worker) also prune old messages by each
        channel's retention: at start-up, then every ``retention.PRUNE_EVERY`` seconds, a couple
        of seconds per sweep at most (a large backlog goes over several sweeps)."""
        import os
        import socket

        from engine.stores import retention

        name = f"{socket.gethostname()}:{os.getpid()}"
        prune_at = 0.0 if self.role != WORKER and retention.plan(c.config for c in self.cfg.channels) else None
        while not self._stop.wait(self._sweep_seconds):
            with self._inflight_lock:
                waiting, self._undispatched = self._undispatched, {}
            for channel, held in waiting.items():
                self._enqueue(channel, sorted(held))
            try:
                self.message_store.heartbeat(name, self.role, self.processed)
                if self.role != LISTENER:
                    # A message pending past stuck_after_seconds is lost only if the queue has
                    # nothing left: under a backlog every queued message is that old, and looking
                    # them all up each second (and, with Redis, enqueueing them again) is work
                    # that grows with the backlog and slows its draining.
                    stuck = self.queue.idle()
                    found = self.message_store.pending(older_than=self._stuck_after, stuck=stuck)
                    for channel, ids in _group(found):
                        self._dispatch(channel, ids)
            except Exception as exc:
                log.warning("sweeper could not read the message store: %s", type(exc).__name__)
            if prune_at is not None and time.monotonic() >= prune_at:
                try:
                    done = retention.sweep(self.message_store, (c.config for c in self.cfg.channels))
                    prune_at = time.monotonic() + (retention.PRUNE_EVERY if done else 0.0)
                except Exception as exc:
                    prune_at = time.monotonic() + retention.RETRY_AFTER
                    log.warning(
                        "retention: pruning failed (%s); next try in %.0f s", type(exc).__name__, retention.RETRY_AFTER
                    )

    def hand_on(self, channel: str, ids: list[int]) -> None:
        """Queue ``ids`` of ``channel`` for processing (reprocess from the console)."""
        self._dispatch(channel, ids)

    def hand_on_pending(self, channel: str) -> None:
        """Queue what waits in ``channel`` (a resumed channel), oldest first."""
        for ch, ids in _group(self.message_store.pending(channel=channel)):
            self._dispatch(ch, ids)

    def process_now(self, channel: str, ids: list[int]) -> list[Outcome]:
        """Process synchronously in the caller's thread (``engine reprocess``)."""
        return self.processor.process(channel, ids)

    def route(self, channel: str, item: Item) -> None:
        """Commit ``item``'s message into ``channel`` (a channel destination) and dispatch it.

        The copy keeps the original's place in receive order (``seq``) and gets the ordering
        key the target channel reads, so per-patient order holds across the hop; a copy already
        made (the source delivered it, then died before recording that) is not made again.
        """
        ch = self.cfg.channel(channel)
        if self.message_store.copy_of(ch.name, item.message_id) is not None:
            return
        content = item.content
        try:
            h = hl7.read_header(content)
        except ParseError:
            h = None
        charset = getattr(ch.source, "charset", None) or "utf-8"
        copy = inbound(
            ch.name,
            content,
            h,
            source_message_id=item.message_id,
            seq=item.seq if item.seq is not None else item.message_id,
            ordering_key=ordering_key(content, ch.ordering, charset, h.charset) if h else None,
            duplicate_window=None,
        )
        self.committer.submit_sync([copy])

    # -- sources ----------------------------------------------------------------------------------
    async def start_sources(self) -> list[str]:
        """Start every enabled channel's source; returns one line per channel for the console."""
        lines = []
        for ch in self.cfg.channels:
            if not ch.config.enabled:
                lines.append(f"channel {ch.name}: disabled")
                continue
            src = registry.SOURCES[ch.source.type].factory(ch, ch.source, self.receiver)
            where = await src.start()
            self.sources.append(src)
            dests = ", ".join(getattr(d, "name", d.type) for d in ch.destinations)
            lines.append(f"channel {ch.name}: {where} -> {dests}")
        if self.cfg.console is not None and self.role != WORKER:
            from engine.console import Console

            self.console = Console(self.cfg, self)
            lines.append(await self.console.start())
        return lines

    async def stop_sources(self) -> None:
        stopping = [s.stop() for s in self.sources]
        if self.console is not None:
            stopping.append(self.console.stop())
        await asyncio.gather(*stopping, return_exceptions=True)
        self.sources.clear()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is drained; True if it was within ``timeout`` seconds.

        A listener only waits for nothing: its queue is drained by the workers."""
        if self.role == LISTENER:
            return True
        deadline = threading.Event()
        waited = 0.0
        while waited < timeout:
            if self.queue.idle() and not self._inflight:
                return True
            deadline.wait(0.02)
            waited += 0.02
        return False

    def stop(self) -> None:
        """Finish queued work, then stop every thread and close destinations."""
        self._stop.set()
        self.committer.stop()
        if self._outbox_thread.is_alive():
            with self._outbox_ready:
                self._outbox_ready.notify()
            self._outbox_thread.join(10)  # what the listener committed reaches the queue
        self.queue.stop()
        for dests in self.destinations.values():
            for d in dests:
                d.close()


def _group(pairs: list[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    out: dict[str, list[int]] = {}
    for mid, channel in pairs:
        out.setdefault(channel, []).append(mid)
    return list(out.items())
