"""Source ``mllp``: an asyncio MLLP listener (VT message FS CR), one ACK per message.

Every frame is committed to the message store before its ACK is written. A frame larger than
``max_message_bytes`` is refused with an AR NACK while the rest of it is read and dropped, so
the connection stays in step. Bytes outside a frame are dropped (counted, never stored); a
connection silent for ``idle_timeout_seconds`` is closed, and so is one that closes mid-frame
(that message was never ACKed, so the sender still owns it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.registry import ConnectorConfig
from engine.errors import ParseError
from engine.formats import hl7, hl7_ack, mllp

log = logging.getLogger("engine.mllp")

_HEAD_KEEP = 8192  # bytes kept of an oversized frame, enough to read its MSH for the NACK


class MllpListenerConfig(ConnectorConfig):
    type: Literal["mllp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    ack_mode: Literal["on_receive", "after_processing"] = "on_receive"
    """on_receive: ACK once stored; after_processing: the ACK reflects the processing result."""
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest accepted message, in bytes, excluding the MLLP framing."""
    idle_timeout_seconds: float = Field(300.0, gt=0)
    """Close a connection that sends nothing for this many seconds."""
    charset: str = "utf-8"
    """Python codec for messages whose MSH-18 is empty."""
    max_connections: int = Field(256, ge=1)
    result_timeout_seconds: float = Field(30.0, gt=0)
    """after_processing only: longest wait for the result before answering AE."""

    @property
    def listen_address(self) -> tuple[str, int]:
        return (self.host, self.port)


@registry.source("mllp", MllpListenerConfig)
class MllpListener:
    """Listens for HL7 v2 over MLLP; commits each message, then answers with its ACK."""

    def __init__(self, channel, config: MllpListenerConfig, receiver):
        self.channel = channel
        self.config = config
        self.receiver = receiver
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(config.max_connections)

    async def start(self) -> str:
        self._server = await asyncio.start_server(
            self._handle, self.config.host, self.config.port, limit=2**20, reuse_address=True
        )
        port = self._server.sockets[0].getsockname()[1]
        return f"mllp {self.config.host}:{port}"

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server else self.config.port

    async def stop(self) -> None:
        """Stop accepting, let connections finish the message in hand, then close them."""
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if peer else ""
        try:
            if self._slots.locked():
                log.warning("channel=%s refused connection from %s: too many connections", self.channel.name, peer_s)
                return
            async with self._slots:
                await self._serve(reader, writer, peer_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take the listener down
            log.exception("channel=%s connection from %s failed", self.channel.name, peer_s)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader, writer, peer: str) -> None:
        cfg = self.config
        buf = bytearray()
        in_frame = False
        oversized = False
        head = b""
        junk = 0
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), cfg.idle_timeout_seconds)
            except TimeoutError:
                log.info("channel=%s closing idle connection from %s", self.channel.name, peer)
                return
            if not data:
                if in_frame or buf:
                    log.warning(
                        "channel=%s connection from %s closed mid-frame; nothing stored or ACKed",
                        self.channel.name,
                        peer,
                    )
                return
            buf += data
            answers: list = []  # frames complete in this read: committed together, ACKed in order
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
                    if junk:
                        log.warning(
                            "channel=%s dropped %d byte(s) outside MLLP framing from %s", self.channel.name, junk, peer
                        )
                        junk = 0
                end = buf.find(mllp.FS)
                restart = buf.find(mllp.VT, 0, end if end >= 0 else len(buf))
                if restart >= 0 and not oversized:
                    # a new frame began before this one ended: the sender gave up on it
                    log.warning("channel=%s dropped a truncated frame from %s", self.channel.name, peer)
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
                if oversized or len(payload) > cfg.max_message_bytes:
                    answers.append(self._refuse_oversized(head or payload[:_HEAD_KEEP]))
                else:
                    answers.append(asyncio.ensure_future(self._answer(payload, peer)))
            if answers:
                for ack in answers:
                    text = ack if isinstance(ack, str) else await ack
                    # header fields were read as latin-1 from the raw bytes: latin-1 gives them
                    # back byte for byte, whatever the message's own character set
                    writer.write(mllp.frame(text.encode("latin-1", "replace")))
                await writer.drain()

    async def _answer(self, payload: bytes, peer: str) -> str:
        cfg = self.config
        result = await self.receiver.receive(
            self.channel,
            payload,
            peer=peer,
            charset=cfg.charset,
            ack_mode=cfg.ack_mode,
            result_timeout=cfg.result_timeout_seconds,
        )
        return result.text

    def _refuse_oversized(self, head: bytes) -> str:
        log.warning("channel=%s refused a message over %d bytes", self.channel.name, self.config.max_message_bytes)
        try:
            header = hl7.read_header(head)
        except ParseError:
            header = None
        err = ParseError(
            f"message exceeds the channel's limit of {self.config.max_message_bytes} bytes",
            code=104 if header is None or header.version >= "2.6" else 207,
            reject=True,
        )
        return hl7_ack.build_ack(header, hl7_ack.ACK_REJECT, error=err)
