"""The processing queue: message-store ids waiting for filter, mapping and delivery.

Only ids travel through the queue, never content (it may be PHI, and a queue broker's logs
print task arguments). The embedded default is :class:`MemoryQueue`: worker threads in the
engine's process, each channel's ids taken by one of them at a time in the order they were
committed, so updates for one patient apply in receive order. Nothing is lost if the process
dies: the ids are re-read from the message store's RECEIVED/QUEUED rows at the next start.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("engine.queue")

Handler = Callable[[str, list[int]], None]
"""Processes a batch of message ids of one channel, in order; must not raise."""


class MemoryQueue:
    """In-process queue: ids per channel, in commit order, handed to ``threads`` worker threads.

    A channel is processed by one thread at a time, in the order its ids were committed, so a
    patient's updates apply in receive order; different channels run side by side (order is
    promised within a channel, not across channels, as in every engine and as the Redis queue
    does). Side by side matters when one channel's destination waits on another channel of
    the same engine: the sample's ``adt-to-fhir`` posts to this engine's own FHIR API, whose
    answer waits for ``fhir-inbound`` to be processed.
    """

    def __init__(self, handler: Handler, *, batch_size: int = 200, linger_seconds: float = 0.02, threads: int = 4):
        """``linger_seconds``: how long a worker with fewer than ``batch_size`` ids of a channel
        waits for more before it starts (each batch costs a few commits, so fuller batches go
        faster). ``threads``: how many channels are processed at once."""
        self._handler = handler
        self._batch_size = batch_size
        self._linger = linger_seconds
        self._queues: dict[str, collections.deque[int]] = {}
        self._ready: collections.deque[str] = collections.deque()  # channels waiting for a worker
        self._busy: set[str] = set()  # channels a worker holds (lingering or processing)
        self._urgent: set[str] = set()
        self._last: dict[str, int] = {}  # channel -> the worker that took it last
        self._working: dict[int, str | None] = {}  # worker -> the channel it holds now
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"engine-worker-{n}", daemon=True)
            for n in range(max(1, threads))
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def enqueue(self, channel: str, ids: list[int], *, urgent: bool = False) -> None:
        """``urgent``: a sender waits for these ids' outcome (an after_processing ACK), so the
        worker stops lingering for a fuller batch."""
        if not ids:
            return
        with self._cond:
            self._queues.setdefault(channel, collections.deque()).extend(ids)
            if urgent:
                self._urgent.add(channel)
            if channel not in self._busy and channel not in self._ready:
                self._ready.append(channel)
            self._cond.notify_all()  # the worker lingering on this channel, or an idle one

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not any(self._queues.values())

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued (up to ``timeout`` seconds), then stop the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def _pick(self, n: int) -> str | None:
        """The next channel worker ``n`` takes: one that was its own last time, or whose worker
        is busy with another channel, or nobody's yet. A channel stays with one worker while that
        worker is free for it: its memory (the allocator's arena per thread, SQLite's cache per
        connection) is not built up again by every worker in turn."""
        for channel in self._ready:
            owner = self._last.get(channel)
            if owner is None or owner == n or self._working.get(owner) is not None or self._stopping:
                self._ready.remove(channel)
                return channel
        return None

    def _run(self, n: int) -> None:
        while True:
            with self._cond:
                channel = self._pick(n)
                while channel is None and not (self._stopping and not self._busy and not self._ready):
                    self._cond.wait()
                    channel = self._pick(n)
                if channel is None:  # stopping, and nothing left that another worker will hand back
                    return
                self._busy.add(channel)
                self._last[channel] = n
                self._working[n] = channel
                queue = self._queues[channel]
                # linger until the batch is full or the time is up (a notify for each new id
                # must not end the wait: batches of one or two cost several commits each)
                deadline = time.monotonic() + self._linger
                while len(queue) < self._batch_size and not self._stopping and channel not in self._urgent:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                ids = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
                self._urgent.discard(channel)
            try:
                if ids:
                    self._handler(channel, ids)
            except Exception:  # the handler must not raise; if it does, the sweeper retries
                log.exception("worker batch failed; messages stay pending for re-dispatch")
            finally:
                with self._cond:
                    self._busy.discard(channel)
                    self._working[n] = None
                    if queue:
                        self._ready.append(channel)
                    self._cond.notify_all()


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
        return MemoryQueue(handler, batch_size=batch_size, linger_seconds=linger_seconds, threads=threads)
    if url.startswith(("redis:", "rediss:", "unix:")):
        return RedisQueue(url, handler, threads=threads)
    raise ValueError(f"unknown queue URL scheme in {url.split(':', 1)[0]!r} (memory:// or redis://)")
