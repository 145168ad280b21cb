"""Destination ``mllp``: send each message to a remote MLLP listener and read its ACK.

The connection is kept open between messages and re-opened after any error. AA (or CA)
counts as delivered; AE and connection failures are retried with the destination's backoff;
AR is final (the receiver says the message can never be accepted).
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.errors import DeliveryError, ParseError
from engine.formats import hl7, mllp


class MllpSenderConfig(DestinationConfig):
    type: Literal["mllp"]
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for the connection and for each ACK."""


class MllpClient:
    """A blocking MLLP client: ``send(bytes) -> ACK text``; reconnects on demand."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def send(self, message: bytes) -> bytes:
        """Send one message (unframed bytes); return the ACK's bytes. Raises OSError on failure."""
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf.clear()
        try:
            self._sock.sendall(mllp.frame(message))
            while True:
                for payload in mllp.iter_frames(self._buf):
                    return payload
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the ACK arrived")
                self._buf += chunk
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def ack_code(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-3 text) of an ACK; ('', reason) if it is not a readable ACK."""
    try:
        msg = hl7.Message(ack.decode("latin-1"))
    except ParseError as exc:
        return "", f"unreadable ACK: {exc}"
    return (msg.value("MSA-1") or ""), (msg.value("MSA-3") or msg.value("ERR-8") or "")


@registry.destination("mllp", MllpSenderConfig)
class MllpSender(Destination):
    """Forwards the raw message over MLLP and checks the remote ACK."""

    def __init__(self, config: MllpSenderConfig, context):
        super().__init__(config, context)
        self.client = MllpClient(config.host, config.port, config.timeout_seconds)

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        results: list[Exception | None] = []
        for item in items:
            try:
                code, text = ack_code(self.client.send(item.content))
            except OSError as exc:
                results.append(DeliveryError(f"{self.config.host}:{self.config.port}: {type(exc).__name__}"))
                continue
            if code in ("AA", "CA"):
                results.append(None)
            else:
                results.append(
                    DeliveryError(
                        f"remote answered {code or 'no ACK'}: {text}"[:500], retryable=code not in ("AR", "CR")
                    )
                )
        return results

    def close(self) -> None:
        self.client.close()
