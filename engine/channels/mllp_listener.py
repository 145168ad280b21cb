"""Source ``mllp``: an asyncio MLLP listener (VT message FS CR), one ACK per message.

Every frame is committed to the message store before its ACK is written. A frame larger than
``max_message_bytes`` is refused with an AR NACK while the rest of it is read and dropped, so
the connection stays in step. Bytes outside a frame are dropped (counted, never stored).

Connection hygiene (nothing is stored or ACKed for a frame cut short: the sender still owns it):

- a frame that has started (VT seen) must end within ``frame_timeout_seconds``, however
  steadily its bytes trickle in;
- a connection with no finished exchange for ``idle_timeout_seconds`` is closed; bytes outside
  a frame do not count as activity;
- when ``max_connections`` (or a peer's ``max_connections_per_peer``) is reached, a new
  connection closes the longest-idle one (never one in a frame, a commit or an ACK) and is
  refused only if every connection is busy;
- warnings are rate-limited: at most one line per reason per channel every
  :data:`WARN_INTERVAL_SECONDS`, then one line with the count of those not logged.

TLS (``tls:``, :class:`engine.tls.ServerTls`): the listener speaks MLLP inside TLS only. A
client that does not finish the handshake in ``tls.handshake_timeout_seconds`` (a plaintext
client, one that does not trust our certificate, one without the client certificate mutual TLS
asks for) is closed before it counts as a connection; nothing of it is read or stored.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from engine import metrics
from engine.channels import registry
from engine.channels.registry import ConnectorConfig
from engine.errors import ParseError
from engine.formats import hl7, hl7_ack, mllp
from engine.tls import ServerTls

log = logging.getLogger("engine.mllp")

_HEAD_KEEP = 8192  # bytes kept of an oversized frame, enough to read its MSH for the NACK
WARN_INTERVAL_SECONDS = 10.0
"""At most one log line per reason per channel in this many seconds."""


class MllpListenerConfig(ConnectorConfig):
    type: Literal["mllp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    ack_mode: Literal["on_receive", "after_processing"] = "on_receive"
    """on_receive: ACK once stored; after_processing: the ACK reflects the processing result."""
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest accepted message, in bytes, excluding the MLLP framing."""
    idle_timeout_seconds: float = Field(300.0, gt=0)
    """Close a connection after this many seconds without a finished exchange (junk bytes
    outside a frame do not count), or without a byte while inside a frame."""
    frame_timeout_seconds: float = Field(60.0, gt=0)
    """A frame must end (FS) within this many seconds of its start (VT), else the connection is
    closed and nothing of that frame is stored or ACKed."""
    charset: str = "utf-8"
    """Python codec for messages whose MSH-18 is empty and that carry no byte order mark."""
    max_connections: int = Field(256, ge=1)
    """Connections open at once; beyond it a new one closes the longest-idle connection."""
    max_connections_per_peer: int = Field(32, ge=1)
    """Connections open at once from one peer IP address; beyond it, as for max_connections,
    but only that peer's own connections are closed to make room."""
    result_timeout_seconds: float = Field(30.0, gt=0)
    """after_processing only: longest wait for the result before answering AE."""

    tls: ServerTls | None = None
    """Serve MLLP over TLS with this certificate (and client certificates, for mutual TLS)."""

    @property
    def listen_address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def check(self, cfg, key, src) -> list:
        return self.tls.check(src, key + ("tls",)) if self.tls is not None else []


class RateLimitedLog:
    """Log lines for one channel, at most one per reason every ``interval`` seconds.

    The first event after a quiet spell is logged at once; later events within the interval
    are counted and logged as one line (``N more``) when the interval ends, or at ``flush``.
    Call from the event loop only.
    """

    def __init__(self, channel: str, interval: float = WARN_INTERVAL_SECONDS):
        self.channel, self.interval = channel, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._levels: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def note(self, reason: str, detail: str = "", level: int = logging.WARNING) -> None:
        """One event of ``reason`` (fixed text); ``detail`` (peer, counts: never content)."""
        loop = asyncio.get_running_loop()
        last = self._last.get(reason)
        if last is None or loop.time() - last >= self.interval:
            self._last[reason] = loop.time()
            log.log(level, "channel=%s %s%s", self.channel, reason, f" ({detail})" if detail else "")
            return
        self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
        self._levels[reason] = level
        if reason not in self._timers:
            self._timers[reason] = loop.call_at(last + self.interval, self._summarise, reason)

    def _summarise(self, reason: str) -> None:
        self._timers.pop(reason, None)
        n = self._suppressed.pop(reason, 0)
        if n:
            now = asyncio.get_running_loop().time()
            since, self._last[reason] = now - self._last.get(reason, now), now
            level = self._levels.get(reason, logging.WARNING)
            log.log(level, "channel=%s %s: %d more in the last %.0f s", self.channel, reason, n, since)

    def flush(self) -> None:
        """Log the pending counts now (at stop)."""
        for reason, timer in list(self._timers.items()):
            timer.cancel()
            self._summarise(reason)


@dataclass(eq=False)
class _Connection:
    peer_ip: str
    peer: str
    task: asyncio.Task
    idle_since: float
    """Event-loop time of the connection's start or of its last ACK written."""
    busy: bool = False
    """In a frame, a commit or an ACK: never closed to make room."""


@registry.source("mllp", MllpListenerConfig)
class MllpListener:
    """Listens for HL7 v2 over MLLP; commits each message, then answers with its ACK."""

    def __init__(self, channel, config: MllpListenerConfig, receiver):
        self.channel = channel
        self.config = config
        self.receiver = receiver
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._log = RateLimitedLog(channel.name)

    async def start(self) -> str:
        tls = self.config.tls
        self._server = await asyncio.start_server(
            self._handle,
            self.config.host,
            self.config.port,
            limit=2**20,
            reuse_address=True,
            ssl=tls.context() if tls is not None else None,
            ssl_handshake_timeout=tls.handshake_timeout_seconds if tls is not None else None,
        )
        port = self._server.sockets[0].getsockname()[1]
        return f"mllp {self.config.host}:{port}" + (" (TLS)" if tls is not None else "")

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server else self.config.port

    async def stop(self) -> None:
        """Stop accepting, then close every connection (a frame not yet ACKed stays the sender's)."""
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        tasks = [c.task for c in self._connections]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._log.flush()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection in a task of its own
        conn = _Connection(
            peer_ip=str(peer[0]) if peer else "",
            peer=f"{peer[0]}:{peer[1]}" if peer else "",
            task=task,
            idle_since=asyncio.get_running_loop().time(),
        )
        try:
            if self._admit(conn):
                await self._serve(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):  # the peer went, or broke TLS
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take the listener down
            log.exception("channel=%s connection from %s failed", self.channel.name, conn.peer)
        finally:
            self._connections.discard(conn)
            writer.close()

    def _admit(self, conn: _Connection) -> bool:
        """Register ``conn``, closing the longest-idle connection to make room; False if refused."""
        cfg = self.config
        same_peer = [c for c in self._connections if c.peer_ip == conn.peer_ip]
        if len(same_peer) >= cfg.max_connections_per_peer and not self._make_room(same_peer, "per-peer limit"):
            self._log.note("refused a connection: every connection from its peer is busy", conn.peer)
            return False
        if len(self._connections) >= cfg.max_connections and not self._make_room(self._connections, "listener full"):
            self._log.note("refused a connection: every connection is busy", conn.peer)
            return False
        self._connections.add(conn)
        return True

    def _make_room(self, among, why: str) -> bool:
        idle = [c for c in among if not c.busy]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._connections.discard(victim)
        victim.task.cancel()  # it waits for its next frame: nothing is lost
        self._log.note(f"closed the longest-idle connection to make room ({why})", victim.peer)
        return True

    async def _serve(self, reader, writer, conn: _Connection) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        peer = conn.peer
        buf = bytearray()
        in_frame = False
        oversized = False
        head = b""
        junk = 0
        frame_deadline = last_read = 0.0
        while True:
            if in_frame:
                deadline = min(frame_deadline, last_read + cfg.idle_timeout_seconds)
            else:
                deadline = conn.idle_since + cfg.idle_timeout_seconds
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for wraps each read in a
                # task of its own, a tenth of this thread's time per message
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(65536)
            except TimeoutError:
                if not in_frame:
                    detail = f"{peer}, {junk} byte(s) outside framing" if junk else peer
                    self._log.note("closed an idle connection", detail, level=logging.INFO)
                elif loop.time() >= frame_deadline:
                    self._log.note("closed a connection: frame not ended within frame_timeout_seconds", peer)
                else:
                    self._log.note("closed a connection silent mid-frame", peer)
                return
            last_read = loop.time()
            if not data:
                if in_frame or buf:
                    self._log.note("connection closed mid-frame; nothing stored or ACKed", peer)
                return
            buf += data
            answers: list[Any] = []  # frames complete in this read: committed together, ACKed in order
            while buf:
                if not in_frame:
                    start = buf.find(mllp.VT)
                    if start < 0:
                        junk += len(buf)
                        buf.clear()
                        break
                    junk += start
                    del buf[: start + 1]
                    in_frame, oversized, head = True, False, b""
                    frame_deadline = last_read + cfg.frame_timeout_seconds
                    conn.busy = True
                    if junk:
                        self._log.note("dropped bytes outside MLLP framing", f"{peer}, {junk} byte(s)")
                        junk = 0
                end = buf.find(mllp.FS)
                restart = buf.find(mllp.VT, 0, end if end >= 0 else len(buf))
                if restart >= 0 and not oversized:
                    # a new frame began before this one ended: the sender gave up on it (the
                    # frame deadline stands: restarting never buys more time)
                    self._log.note("dropped a truncated frame", peer)
                    del buf[: restart + 1]
                    continue
                if end < 0:
                    if len(buf) > cfg.max_message_bytes and not oversized:
                        oversized, head = True, bytes(buf[:_HEAD_KEEP])
                    if oversized:
                        buf.clear()
                    break
                payload = bytes(buf[:end])
                del buf[: end + 1]
                if buf[:1] == mllp.CR:
                    del buf[:1]
                in_frame = False
                ended = time.perf_counter()  # the ACK's time runs from here (engine_ack_seconds)
                if oversized or len(payload) > cfg.max_message_bytes:
                    answers.append(self._refuse_oversized(head or payload[:_HEAD_KEEP], ended))
                else:
                    answers.append((payload, ended))
            if answers:
                conn.busy = True
                if len(answers) > 1:  # several frames in one read: received side by side, in tasks
                    answers = [
                        a if isinstance(a, str) else asyncio.ensure_future(self._answer(a[0], peer, a[1]))
                        for a in answers
                    ]
                for ack in answers:
                    if isinstance(ack, tuple):  # the one frame of this read: answered without a task
                        text = await self._answer(ack[0], peer, ack[1])
                    else:
                        text = ack if isinstance(ack, str) else await ack
                    # header fields were read as latin-1 from the raw bytes: latin-1 gives them
                    # back byte for byte, whatever the message's own character set
                    writer.write(mllp.frame(text.encode("latin-1", "replace")))
                await writer.drain()
                conn.idle_since = loop.time()
                if in_frame:  # our commit time does not count against the sender's next frame
                    frame_deadline = conn.idle_since + cfg.frame_timeout_seconds
            conn.busy = in_frame

    async def _answer(self, payload: bytes, peer: str, ended: float) -> str:
        """The ACK for one frame; ``ended``: ``time.perf_counter()`` when its last byte came."""
        cfg = self.config
        result = await self.receiver.receive(
            self.channel,
            payload,
            peer=peer,
            charset=cfg.charset,
            ack_mode=cfg.ack_mode,
            result_timeout=cfg.result_timeout_seconds,
        )
        self._observe(result.text, result.code, ended)
        return result.text

    def _observe(self, ack: str, code: str, ended: float) -> None:
        # the partner is read back from the ACK (its MSH-5/6): the header is not parsed twice
        metrics.observe_ack(self.channel.name, metrics.ack_partner(ack), code, time.perf_counter() - ended)

    def _refuse_oversized(self, head: bytes, ended: float) -> str:
        self._log.note("refused an oversized message", f"over {self.config.max_message_bytes} bytes")
        try:
            header = hl7.read_header(head)
        except ParseError:
            header = None
        err = ParseError(
            f"message exceeds the channel's limit of {self.config.max_message_bytes} bytes",
            code=104 if header is None or header.version >= "2.6" else 207,
            reject=True,
        )
        nack = hl7_ack.build_ack(header, hl7_ack.ACK_REJECT, error=err)
        self._observe(nack, hl7_ack.ACK_REJECT, ended)
        return nack
