"""The processing queue: message-store ids waiting for filter, mapping and delivery.

Only ids travel through the queue, never content (it may be PHI, and a queue broker's logs
print task arguments). The embedded default is :class:`MemoryQueue`: one worker thread in the
engine's process that takes ids in the order they were committed, so updates for one patient
apply in receive order. Nothing is lost if the process dies: the ids are re-read from the
message store's RECEIVED/QUEUED rows at the next start.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from engine.stores.db import pinned_connections
from engine.threads import Thread

log = logging.getLogger("engine.queue")

Handler = Callable[[str, list[int]], None]
"""Processes a batch of message ids of one channel, in order; must not raise."""


class MemoryQueue:
    """In-process FIFO with one worker thread that hands the handler batches per channel."""

    def __init__(self, handler: Handler, *, batch_size: int = 200, linger_seconds: float = 0.02):
        """``linger_seconds``: how long a worker with fewer than ``batch_size`` ids waits for
        more before it starts (each batch costs a few commits, so fuller batches go faster)."""
        self._handler = handler
        self._batch_size = batch_size
        self._linger = linger_seconds
        self._items: collections.deque[tuple[str, int]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._urgent = False
        self._thread = Thread(target=self._run, name="engine-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, channel: str, ids: list[int], *, urgent: bool = False) -> None:
        """``urgent``: a sender waits for these ids' outcome (an after_processing ACK), so the
        worker stops lingering for a fuller batch."""
        if not ids:
            return
        with self._cond:
            self._items.extend((channel, i) for i in ids)
            self._urgent = self._urgent or urgent
            self._cond.notify()

    def depth(self) -> int:
        return len(self._items)

    def idle(self) -> bool:
        with self._cond:
            return not self._items and not self._busy

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued (up to ``timeout`` seconds), then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        with pinned_connections():  # this thread writes all the time: one connection per store
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items and self._stopping:
                    return
                # linger until the batch is full or the time is up (a notify for each new id
                # must not end the wait: batches of one or two cost several commits each)
                deadline = time.monotonic() + self._linger
                while len(self._items) < self._batch_size and not self._stopping and not self._urgent:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = [self._items.popleft() for _ in range(min(self._batch_size, len(self._items)))]
                self._urgent = False
                self._busy = True
            try:
                # one call per channel, each in its own receive order (channels are independent,
                # as in every engine: order is promised within a channel, not across channels)
                by_channel: dict[str, list[int]] = {}
                for channel, mid in batch:
                    by_channel.setdefault(channel, []).append(mid)
                for channel, ids in by_channel.items():
                    self._handler(channel, ids)
            except Exception:  # the handler must not raise; if it does, the sweeper retries
                log.exception("worker batch failed; messages stay pending for re-dispatch")
            finally:
                with self._cond:
                    self._busy = False


class RedisQueue:
    """dramatiq on Redis: listeners enqueue, ``engine worker`` processes consume.

    One actor, ``engine.process(channel, ids)``, carries ids only (dramatiq prints actor
    arguments in its logs; ids are not PHI). It never retries by itself (``max_retries=0``):
    retries, backoff and the error queue live in the message store, where operators see them.
    If Redis is unreachable, :meth:`enqueue` raises and the caller keeps the ids for later;
    if Redis loses what it held, the sweeper finds the messages still pending in the store.
    """

    QUEUE = "engine"

    def __init__(self, url: str, handler: Handler | None = None, *, threads: int = 4):
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

        # the default middleware minus Prometheus (it binds a port per process)
        self.broker = RedisBroker(
            url=url,
            middleware=[
                AgeLimit(),
                TimeLimit(),
                ShutdownNotifications(),
                Callbacks(),
                Pipelines(),
                Retries(max_retries=0),
            ],
        )
        self._handler = handler
        self._threads = threads
        self._worker: dramatiq.Worker | None = None

        def process(channel: str, ids: list[int]) -> None:
            if self._handler is not None:
                self._handler(channel, ids)

        self.actor = dramatiq.actor(
            actor_name="engine.process",
            queue_name=self.QUEUE,
            broker=self.broker,
            max_retries=0,
            time_limit=10 * 60 * 1000,
        )(process)

    def start(self) -> None:
        """Start consuming (workers only; a listener process only enqueues)."""
        import dramatiq

        if self._handler is None:
            return
        self._worker = dramatiq.Worker(
            self.broker, queues={self.QUEUE}, worker_threads=self._threads, worker_timeout=200
        )
        self._worker.start()

    def enqueue(self, channel: str, ids: list[int]) -> None:
        if ids:
            self.actor.send(channel, list(ids))

    def depth(self) -> int:
        """Messages waiting in Redis (each carries a batch of ids)."""
        client = self.broker.client
        return int(client.llen(f"{self.broker.namespace}:{self.QUEUE}") or 0) + int(
            client.zcard(f"{self.broker.namespace}:{self.QUEUE}.DQ") or 0
        )

    def idle(self) -> bool:
        try:
            return self.depth() == 0
        except Exception:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the messages in hand, then stop (dramatiq's graceful shutdown)."""
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout * 1000))
        self.broker.close()


def make_queue(
    url: str, handler: Handler | None, *, batch_size: int = 200, threads: int = 4, linger_seconds: float = 0.02
):
    """The queue a URL names: ``memory://`` (in-process) or ``redis://host:port/db``."""
    if url.startswith("memory:"):
        if handler is None:
            raise ValueError("the in-process queue needs a handler: it processes in this process")
        return MemoryQueue(handler, batch_size=batch_size, linger_seconds=linger_seconds)
    if url.startswith(("redis:", "rediss:", "unix:")):
        return RedisQueue(url, handler, threads=threads)
    raise ValueError(f"unknown queue URL scheme in {url.split(':', 1)[0]!r} (memory:// or redis://)")
