"""An ASGI app served by uvicorn in a thread of its own, inside ``engine run``.

The FHIR source and the operator console both serve HTTP beside the MLLP listeners. uvicorn
runs with its own event loop in its own thread: in the main thread it would take over the
signals the engine needs for an orderly stop. Access lines are off (a URL carries ids).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from engine.threads import Thread


class ThreadedServer:
    """``await start()`` returns once listening (``port`` is then the bound one); ``await stop()``."""

    def __init__(self, app: Any, *, host: str, port: int, name: str, tls: Any = None):
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.tls = tls
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    async def start(self) -> None:
        import uvicorn

        kwargs = self.tls.uvicorn_kwargs() if self.tls is not None else {}
        cfg = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False, **kwargs)
        self._server = uvicorn.Server(cfg)
        started = threading.Event()
        self._thread = Thread(target=self._serve, args=(started,), name=self.name, daemon=True)
        self._thread.start()
        await asyncio.to_thread(started.wait, 30)
        if not self._server.started:
            raise RuntimeError(f"{self.name} could not listen on {self.host}:{self.port}")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def _serve(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def run():
            task = asyncio.create_task(self._server.serve())
            while not self._server.started and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            await task

        try:
            loop.run_until_complete(run())
        finally:
            started.set()
            loop.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
