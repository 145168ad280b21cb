"""The processing queue: message-store ids waiting for filter, mapping and delivery.

Only ids travel through the queue, never content (it may be PHI, and a queue broker's logs
print task arguments). The embedded default is :class:`MemoryQueue`: one worker thread in the
engine's process that takes ids in the order they were committed, so updates for one patient
apply in receive order. Nothing is lost if the process dies: the ids are re-read from the
message store's RECEIVED/QUEUED rows at the next start.

``process://`` (:class:`ProcessQueue`) keeps the embedded stores and needs no broker, but
processes in a worker process of its own that ``engine run`` starts and feeds over a pipe: the
listener and the processing each get an interpreter (and a core). ``redis://`` hands the ids to
any number of ``engine worker`` processes through dramatiq (:class:`RedisQueue`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

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
            # wake the worker only for what its waits look at: ids where there were none, a
            # full batch, an urgent one. A notify per id woke a lingering worker for nothing
            # each time: on one connection, every message (the process:// listener's outbox,
            # which works the same way, spent 0.02-0.03 ms of CPU per message on it)
            wake = not self._items or urgent
            self._items.extend((channel, i) for i in ids)
            self._urgent = self._urgent or urgent
            if wake or len(self._items) >= self._batch_size:
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


class ProcessQueue:
    """``process://``: the listener's side of a worker process it starts and feeds over a pipe.

    ``engine run`` starts ``engine worker --from-parent`` with the same configuration and
    environment, and writes each batch of ids to its standard input as a line of JSON
    (``["adt", [12, 13]]``: ids only). The worker processes them in its own
    :class:`MemoryQueue`, so its batching, ordering holds and retries are the embedded engine's.
    Why a pipe and not a library queue: ids only go one way, to one process that this one owns,
    and a closed pipe is how each side learns the other is gone. ``multiprocessing`` would fork
    this process's threads and database connections, or spawn with pickling; a broker is what
    this mode exists to do without.

    Nothing is lost when the worker dies: what it had in hand is still RECEIVED or QUEUED in the
    message store. Another worker is started after ``RESTART_SECONDS`` (doubling, up to
    ``RESTART_MAX_SECONDS``, while workers die young: a worker that cannot start is not
    restarted in a tight loop); it releases the dead one's claims, known dead because this
    process waited for it, and dispatches everything pending, as an embedded engine does at
    start. Ids written while no worker runs raise from :meth:`enqueue`, and the runtime keeps
    them for its sweeper. When ``engine run`` dies, even by SIGKILL, the worker reads the end
    of its input, finishes what it holds and exits; so the first worker of an engine does not
    release claims (its predecessor may still be finishing a batch): after a crash, what the
    last run held waits for its claims to run out (``queue.claim_seconds``).
    """

    RESTART_SECONDS = 1.0
    RESTART_MAX_SECONDS = 30.0
    YOUNG_SECONDS = 10.0
    """A worker that exits sooner than this after its start died young: the next waits longer."""

    def __init__(self, config: Path | None):
        self._config = config
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._watcher = Thread(target=self._watch, name="engine-workerwatch", daemon=True)

    def _spawn(self, *, release_claims: bool = False) -> subprocess.Popen:
        command = [sys.executable, "-m", "engine.cli", "worker", "--from-parent"]
        if self._config is not None:
            command += ["--config", str(self._config)]
        if release_claims:
            command.append("--release-claims")
        # its own process group: a Ctrl-C at the terminal stops engine run, which then closes
        # the pipe; the worker finishes what it holds instead of dying with it mid-batch
        return subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True)

    def start(self) -> None:
        self._proc = self._spawn()
        self._watcher.start()

    def _watch(self) -> None:
        """Start another worker when one exits while the engine runs."""
        delay = self.RESTART_SECONDS
        while True:
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._stopping:
                return
            young = time.monotonic() - started < self.YOUNG_SECONDS
            delay = min(delay * 2, self.RESTART_MAX_SECONDS) if young else self.RESTART_SECONDS
            log.error("worker process %d exited (%s); another starts in %.0f s", proc.pid, code, delay)
            time.sleep(delay)
            with self._lock:
                if self._stopping:
                    return
                self._proc = self._spawn(release_claims=True)

    def enqueue(self, channel: str, ids: list[int]) -> None:
        """Write the ids to the worker; raises OSError when it is gone (the caller keeps them)."""
        if not ids:
            return
        line = json.dumps([channel, list(ids)], separators=(",", ":")).encode() + b"\n"
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                raise BrokenPipeError("the worker process is not running")
            proc.stdin.write(line)
            proc.stdin.flush()

    def depth(self) -> int:
        return 0  # what the worker holds is its own; the message store counts what is pending

    def idle(self) -> bool:
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Close the pipe: the worker finishes what it holds (up to ``timeout`` seconds), then exits."""
        with self._lock:
            self._stopping = True
            proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # the worker is gone already
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("worker process %d did not finish in %.0f s; stopped", proc.pid, timeout)
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def feed_from_parent(queue: MemoryQueue, stream=None) -> None:
    """The worker's side of :class:`ProcessQueue`: hand each line's ids to ``queue`` until the
    parent closes the pipe (or dies). A line that is not ``[channel, [ids]]`` is logged and
    skipped: its messages stay pending in the store, and the sweeper dispatches them."""
    stream = stream if stream is not None else sys.stdin.buffer
    for line in stream:
        try:
            channel, ids = json.loads(line)
            if not isinstance(channel, str) or not all(type(i) is int for i in ids):
                raise ValueError("not [channel, [ids]]")
        except (ValueError, TypeError) as exc:
            log.error("worker process: unreadable line from engine run skipped (%s)", type(exc).__name__)
            continue
        queue.enqueue(channel, ids)


def make_queue(
    url: str,
    handler: Handler | None,
    *,
    batch_size: int = 200,
    threads: int = 4,
    linger_seconds: float = 0.02,
    config: Path | None = None,
):
    """The queue a URL names: ``memory://`` (in-process), ``process://`` (a worker process of
    ``engine run``'s own; ``config`` is the file it loads) or ``redis://host:port/db``.

    With ``process://``, the listener (no ``handler``) gets the pipe to its worker and the
    worker (a ``handler``) the in-process queue that the pipe feeds."""
    if url.startswith("memory:") or (url.startswith("process:") and handler is not None):
        if handler is None:
            raise ValueError("the in-process queue needs a handler: it processes in this process")
        return MemoryQueue(handler, batch_size=batch_size, linger_seconds=linger_seconds)
    if url.startswith("process:"):
        return ProcessQueue(config)
    if url.startswith(("redis:", "rediss:", "unix:")):
        return RedisQueue(url, handler, threads=threads)
    raise ValueError(f"unknown queue URL scheme in {url.split(':', 1)[0]!r} (memory://, process:// or redis://)")
