"""Destination ``mllp``: send each message to a remote MLLP listener and read its ACK.

Connections: every concurrent ``deliver`` call (processing threads call it at the same time)
takes a connection of its own from a small pool, holds it for the whole call and gives it
back; at most ``max_connections`` are open at once, and a caller beyond the cap waits for a
free one. A connection is kept open between messages; after any error it is closed and not
given back, so a later call opens a fresh one.

ACKs: an ACK counts only when its MSA-2 equals the MSH-10 control id that was sent (an empty
MSA-2 matches only a message without a control id). An ACK for another message means the
stream is out of step (a stale ACK, say, after a timeout): the connection is closed and the
message is retried. After a receive timeout the connection is closed too, so a late ACK is
never read as the answer to the next message. A matching AA (or CA) counts as delivered; AE
and connection failures are retried with the destination's backoff; AR (or CR) is final (the
receiver says the message can never be accepted).

TLS (``tls:``, :class:`engine.tls.ClientTls`): each connection does its handshake right after
connecting, within ``timeout_seconds``, checking the receiver's certificate and host name
(against ``tls.ca_file``, else the system's CAs). A failed handshake is a connection failure:
retried with the destination's backoff (a certificate renewed at the receiver is picked up).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.errors import DeliveryError, ParseError
from engine.formats import hl7, mllp
from engine.tls import ClientTls

log = logging.getLogger("engine.mllp")


class MllpSenderConfig(DestinationConfig):
    type: Literal["mllp"]
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait, in seconds, for the connection and for each whole ACK."""
    max_connections: int = Field(4, ge=1, le=64)
    """Most connections open at once to this receiver; one per concurrent ``deliver`` call,
    further callers wait for a free one."""
    tls: ClientTls | None = None
    """Speak MLLP inside TLS, trusting ``tls.ca_file`` (else the system's CAs)."""

    def check(self, cfg, key, src, *, check_mappings: bool = True) -> list:
        return self.tls.check(src, key + ("tls",)) if self.tls is not None else []


class MllpClient:
    """A blocking MLLP client on one socket: ``send(bytes) -> ACK bytes``; (re)connects on demand.

    Not thread-safe: one caller at a time. Any error (timeout included) closes the socket, so
    nothing left in the stream is read as a later answer.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0, tls: ssl.SSLContext | None = None):
        """``timeout``: seconds, for connecting (and the TLS handshake) and for each whole ACK;
        ``tls``: a client context to wrap each connection in (None: plain TCP)."""
        self.host, self.port, self.timeout, self.tls = host, port, timeout, tls
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, message: bytes) -> bytes:
        """Send one message (unframed bytes); return the first frame that comes back.

        Raises OSError (``TimeoutError`` after ``timeout`` seconds without a whole ACK,
        ``ConnectionError`` when the peer closes) and closes the connection first.
        """
        if self._sock is not None and self._out_of_step():
            self.close()  # unsolicited bytes or a closed peer: start on a fresh connection
        if self._sock is None:
            self._sock = self._connect()
            self._buf.clear()
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(mllp.frame(message))
            deadline = time.monotonic() + self.timeout
            while True:
                for payload in mllp.iter_frames(self._buf):
                    return payload
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no ACK within {self.timeout} s")
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the ACK arrived")
                self._buf += chunk
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is None:
            return sock
        try:  # the handshake runs here, under the socket's timeout
            return self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _out_of_step(self) -> bool:
        """True if bytes (or the peer's close) wait on an idle connection before we send.

        Over TLS a byte cannot be peeked: one is read (the connection is closed anyway when
        there is one); TLS records without application data (session tickets) do not count."""
        sock = self._sock
        if self._buf or sock is None:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        sock.setblocking(False)
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.recv(1)  # b"" (closed) or a byte nobody asked for
            else:
                sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self.timeout)
        return True

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()


def ack_fields(ack: bytes) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, MSA-3 or ERR-8 text) of an ACK.

    ('', '', reason) if it is not a readable ACK.
    """
    try:
        msg = hl7.Message(ack.decode("latin-1"))
    except ParseError as exc:
        return "", "", f"unreadable ACK: {exc}"
    code = msg.value("MSA-1") or ""
    control_id = msg.value("MSA-2") or ""
    return code, control_id, (msg.value("MSA-3") or msg.value("ERR-8") or "")


def ack_code(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-3 text) of an ACK; ('', reason) if it is not a readable ACK."""
    code, _, text = ack_fields(ack)
    return code, text


class ClientPool:
    """At most ``size`` MllpClients; ``with pool.client() as c:`` lends one to one caller.

    A caller beyond the cap blocks until a client is given back. A client that comes back
    closed (it failed) is dropped; the next caller opens a new one.
    """

    def __init__(self, host: str, port: int, timeout: float, size: int, tls: ssl.SSLContext | None = None):
        self._args = (host, port, timeout, tls)
        self._size = size
        self._idle: list[MllpClient] = []
        self._lent = 0
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def client(self) -> Iterator[MllpClient]:
        with self._cond:
            while not self._idle and self._lent >= self._size:
                self._cond.wait()
            c = self._idle.pop() if self._idle else MllpClient(*self._args)
            self._lent += 1
        try:
            yield c
        except BaseException:
            c.close()  # its state is unknown
            raise
        finally:
            with self._cond:
                self._lent -= 1
                if c.connected and not self._closed:
                    self._idle.append(c)
                else:
                    c.close()
                self._cond.notify()

    def close(self) -> None:
        """Close the idle clients; clients still lent out are closed when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


@registry.destination("mllp", MllpSenderConfig)
class MllpSender(Destination):
    """Forwards the raw message over MLLP and checks that the remote ACK answers that message."""

    config: MllpSenderConfig

    def __init__(self, config: MllpSenderConfig, context):
        super().__init__(config, context)
        tls = config.tls.context() if config.tls is not None else None
        self.pool = ClientPool(config.host, config.port, config.timeout_seconds, config.max_connections, tls)

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        """Send ``items`` in order on one pooled connection; one result per item."""
        with self.pool.client() as client:
            return [self._send(client, item) for item in items]

    def deliver_one(self, item: Item) -> Exception | None:
        """Send one item on a pooled connection: None when the receiver accepted it, else the error."""
        with self.pool.client() as client:
            return self._send(client, item)

    def _send(self, client: MllpClient, item: Item) -> Exception | None:
        where = f"{self.config.host}:{self.config.port}"
        try:
            expected = hl7.read_header(item.content).control_id
        except ParseError:
            expected = ""
        try:
            code, control_id, text = ack_fields(client.send(item.content))
        except OSError as exc:
            return DeliveryError(f"{where}: {type(exc).__name__}")
        if control_id != expected:
            client.close()  # the stream is out of step: what follows may answer other messages
            log.warning(
                "destination=%s message=%s: ACK from %s answers another message; connection closed",
                self.name,
                item.message_id,
                where,
            )
            what = text if not code else "ACK for another message"
            return DeliveryError(f"{where}: {what}; connection closed"[:500], retryable=True)
        if code in ("AA", "CA"):
            return None
        return DeliveryError(f"remote answered {code or 'no ACK'}: {text}"[:500], retryable=code not in ("AR", "CR"))

    def close(self) -> None:
        self.pool.close()
