"""The ``mllp`` destination against a real threaded MLLP listener: every result answers its own message."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable

from services import free_port

from engine.channels.base import Item
from engine.channels.mllp_sender import MllpSender, MllpSenderConfig
from engine.errors import DeliveryError


def message(control_id: str) -> bytes:
    """A synthetic ADT message (no patient data) with MSH-10 ``control_id``."""
    return f"MSH|^~\\&|SEND|FAC|RECV|FAC|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.5\rEVN|A01\r".encode()


def ack(code: str, control_id: str) -> bytes:
    msh = f"MSH|^~\\&|RECV|FAC|SEND|FAC|20260101120000||ACK^A01^ACK|A-{control_id}|P|2.5"
    return f"\x0b{msh}\rMSA|{code}|{control_id}\r\x1c\r".encode()


class Listener:
    """A threaded MLLP peer; ``answer(control_id, n) -> bytes`` gives the bytes to write back for
    the n-th message (1-based, over all connections). Counts the connections open at once."""

    def __init__(self, answer: Callable[[str, int], bytes]):
        self.answer = answer
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.lock = threading.Lock()
        self.count = self.open = self.most_open = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\x1c\r" in buf:
                    frame, buf = buf.split(b"\x1c\r", 1)
                    control_id = frame.lstrip(b"\x0b").split(b"\r")[0].split(b"|")[9].decode()
                    with self.lock:
                        self.count += 1
                        n = self.count
                    conn.sendall(self.answer(control_id, n))
        except OSError:
            return
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def sender(port: int, **settings) -> MllpSender:
    return MllpSender(MllpSenderConfig(type="mllp", name="down", host="127.0.0.1", port=port, **settings), None)


def test_concurrent_deliveries_each_get_the_answer_the_receiver_gave_to_that_message():
    def answer(control_id: str, _n: int) -> bytes:
        time.sleep(random.uniform(0, 0.005))
        return ack("AR" if int(control_id) % 2 else "AA", control_id)

    listener = Listener(answer)
    dest = sender(listener.port)
    results: dict[int, Exception | None] = {}
    lock = threading.Lock()

    def worker(k: int) -> None:
        for j in range(50):
            n = k * 50 + j
            res = dest.deliver([Item(n, None, message(str(n)))])
            with lock:
                results[n] = res[0]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    dest.close()
    listener.close()
    assert len(results) == 200

    def answered_as_sent(n: int, res: Exception | None) -> bool:
        if n % 2 == 0:  # AA: delivered
            return res is None
        return isinstance(res, DeliveryError) and not res.retryable  # AR: final error

    assert [n for n, res in results.items() if not answered_as_sent(n, res)] == []


def test_a_stale_ack_for_another_message_is_a_retryable_error_and_the_next_message_goes_through():
    def answer(control_id: str, n: int) -> bytes:
        stale = ack("AA", "STALE-1") if n == 1 else b""
        return stale + ack("AA", control_id)

    listener = Listener(answer)
    dest = sender(listener.port)
    first = dest.deliver_one(Item(1, None, message("MSG-1")))
    assert isinstance(first, DeliveryError) and first.retryable
    assert "another message" in str(first)
    # the connection that was out of step is gone: MSG-2 gets its own ACK, not MSG-1's leftover one
    assert dest.deliver_one(Item(2, None, message("MSG-2"))) is None
    dest.close()
    listener.close()


def test_an_ack_with_an_empty_msa_2_does_not_count_as_delivered():
    listener = Listener(lambda _cid, _n: ack("AA", ""))
    dest = sender(listener.port)
    res = dest.deliver_one(Item(1, None, message("MSG-1")))
    dest.close()
    listener.close()
    assert isinstance(res, DeliveryError) and res.retryable


def test_a_late_ack_after_a_timeout_is_never_read_as_the_answer_to_the_next_message():
    def answer(control_id: str, _n: int) -> bytes:
        if control_id == "SLOW":
            time.sleep(0.6)
            return ack("AA", control_id)
        return ack("AR", control_id)

    listener = Listener(answer)
    dest = sender(listener.port, timeout_seconds=0.3)
    slow = dest.deliver_one(Item(1, None, message("SLOW")))
    assert isinstance(slow, DeliveryError) and slow.retryable
    time.sleep(0.5)  # the late AA for SLOW has been written by now
    nxt = dest.deliver_one(Item(2, None, message("NEXT")))
    dest.close()
    listener.close()
    assert isinstance(nxt, DeliveryError) and not nxt.retryable  # NEXT's own AR, not SLOW's late AA


def test_no_more_than_max_connections_are_open_at_once_and_every_caller_is_served():
    def answer(control_id: str, _n: int) -> bytes:
        time.sleep(0.01)
        return ack("AA", control_id)

    listener = Listener(answer)
    dest = sender(listener.port, max_connections=2)
    results: list[Exception | None] = []

    def worker(k: int) -> None:
        for j in range(5):
            results.append(dest.deliver_one(Item(k * 10 + j, None, message(f"{k}-{j}"))))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    dest.close()
    listener.close()
    assert results == [None] * 30
    assert listener.most_open <= 2
