"""Checking a Bundle POSTed to the FHIR endpoint, in a process of its own when it is large.

fhir.resources' models (pydantic) hold the GIL while they validate, and they are the largest
single cost of a FHIR request: about a quarter of the engine's CPU for a Bundle of lab results
(``bench/fhir_ingest.py --profile``). In the engine's one process they run on the core that also
serves HTTP, maps and writes. A Bundle is therefore checked (:func:`check_bundle`: nulls, the
Bundle, each resource) in a child process (``check_processes`` on the ``fhir`` source), which
gives the check a core of its own; the request waits for the answer, so nothing is committed
before all of it has been checked, as before. The child is sent the body's bytes (cheaper to pass
than the parsed structure) and gives back the first problem's status and issues.

- The pool starts in the background at the first Bundle that is worth it (``MIN_ENTRIES``): an
  engine that never takes one spawns nothing, and until the child is ready (a second or so of
  imports) Bundles are checked in the request's own process, as everything smaller always is.
- A child that dies (killed, out of memory) costs nothing but speed: the Bundle is checked here,
  and a new pool is started.
- The answer is the same wherever the check ran: one function, the same first problem.

The standard library's ProcessPoolExecutor does the work (spawned, not forked: the engine runs
threads, and a fork copies their locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from engine.formats.fhir_outcome import Issue, Refused, check_nulls, check_resource, read_json
from engine.threads import Thread

log = logging.getLogger("engine.fhir")

MIN_ENTRIES = 4
"""Bundles with fewer entries are checked in-process: passing them costs about what checking does."""

Fault = tuple[int, list[tuple[str, str, list[str], str]]]
"""(status, issues as (code, diagnostics, expression, severity)): a Refused, in a form that
passes between processes."""


def not_taken(rtype: Any, types: list[str], where: str = "") -> None:
    """Refused 404 when ``rtype`` is not one of the endpoint's ``types``."""
    if rtype not in types:
        raise Refused(404, [Issue("not-supported", f"this endpoint does not take {rtype}", [where] if where else [])])


def check_bundle(data: Any, types: list[str]) -> None:
    """Refused for the first thing wrong with a Bundle POSTed to the endpoint (``data``: its
    JSON, read but not yet looked at), in this order: a null anywhere, the Bundle itself, its
    type (transaction or batch), an entry without a resource; and in a transaction, where
    all or nothing is stored, each entry's resource in turn: a type the endpoint does not
    take (``types``), or content that is not valid R4 (checked with the R4B models). A batch's
    entries are checked one by one as they are applied."""
    check_nulls(data)
    if not isinstance(data, dict) or not isinstance(data.get("entry", []), list):
        check_resource(data, "Bundle")  # refuses it, located
    entries = data.get("entry") or []
    bare = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in entries]
    check_resource(dict(data, entry=bare), "Bundle")  # the Bundle without its resources: each is checked on its own
    kind = data.get("type")
    if kind not in ("transaction", "batch"):
        raise Refused(400, [Issue("invalid", "POST /fhir takes a transaction or batch Bundle", ["Bundle.type"])])
    for n, e in enumerate(entries):
        if not isinstance(e.get("resource"), dict):
            raise Refused(400, [Issue("required", "each entry needs a resource", [f"Bundle.entry[{n}]"])])
    if kind == "transaction":
        for n, e in enumerate(entries):
            where = f"Bundle.entry[{n}].resource"
            not_taken(e["resource"].get("resourceType"), types, where)
            check_resource(e["resource"], where=where)


def bundle_fault(data: Any, types: list[str]) -> Fault | None:
    """:func:`check_bundle`'s refusal as a :data:`Fault`; None when the Bundle passes."""
    try:
        check_bundle(data, types)
    except Refused as exc:
        return exc.status, [(i.code, i.diagnostics, i.expression, i.severity) for i in exc.issues]
    return None


def raise_fault(fault: Fault | None) -> None:
    if fault is not None:
        status, issues = fault
        raise Refused(status, [Issue(*i) for i in issues])


def _in_child(body: bytes, types: list[str]) -> Fault | None:
    """Run in the child, on the body the request's own process read (it was JSON there)."""
    return bundle_fault(read_json(body), types)


def warm(types: list[str]) -> None:
    """Build the models' validators for ``types`` (they are built on first use) before any request."""
    for t in ["Bundle", *types]:
        with contextlib.suppress(Refused):  # a resource with required elements: refused, its model built
            check_resource({"resourceType": t, "id": "warm"})


def _child_start(types: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the engine, which stops its pool
    Thread(target=_end_with, args=(os.getppid(),), name="engine-check-parent", daemon=True).start()
    warm(types)


def _end_with(parent: int) -> None:
    """End this child when the engine has ended, however it ended: a SIGKILLed engine stops no
    pool, and the child would wait for work forever (it is then the child of another process)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> None:
    """A first call, answered once the child has started."""


class Checker:
    """Checks Bundles for an endpoint that takes ``types``, in up to ``processes`` child
    processes (0: in-process only; None: 1 when this process may run on two cores or more,
    else 0, since a second process on one core only adds its cost)."""

    def __init__(self, processes: int | None, types: list[str]):
        if processes is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            processes = 1 if cores >= 2 else 0
        self.processes = processes
        self.types = types
        self._pool: ProcessPoolExecutor | None = None  # set once its children answer
        self._starting: asyncio.Task | None = None

    async def bundle(self, body: bytes, data: Any) -> None:
        """:func:`check_bundle` on ``data``, read from ``body``: here, or in the child."""
        entries = data.get("entry") if isinstance(data, dict) else None
        if self.processes and isinstance(entries, list) and len(entries) >= MIN_ENTRIES:
            if self._pool is not None:
                pool = self._pool
                try:
                    fault = await asyncio.get_running_loop().run_in_executor(pool, _in_child, body, self.types)
                    return raise_fault(fault)
                except BrokenProcessPool:
                    log.warning("the FHIR check process stopped; checking here and starting another")
                    self._discard(pool)
            elif self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
        check_bundle(data, self.types)

    async def _start(self) -> None:
        pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(self.types,),
        )
        try:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.processes)))
        except (BrokenProcessPool, OSError) as exc:
            log.warning("the FHIR check process did not start (%s); checking in-process", type(exc).__name__)
            pool.shutdown(wait=False, cancel_futures=True)
            return  # _starting stays set: not tried again
        self._pool, self._starting = pool, None

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
