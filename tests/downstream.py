"""``Downstream``: an MLLP receiver for tests, standing for the system an ``mllp`` destination
forwards to. It records every frame it receives in arrival order and answers each with an ACK
(AA unless told otherwise), on as many concurrent connections as senders open.

    with Downstream() as down:                 # listening on 127.0.0.1:down.port
        down.answer("AR", ["F000001"])         # reject these control ids (AE: a retryable error)
        down.ack_delay_seconds = 1.0           # hold each ACK back this long
        ...
        down.assert_exactly_once_in_order({"P0001": ["F000001", "F000003"]})
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


@dataclass(frozen=True)
class Frame:
    """One message as it arrived: MSH-10, the ordering key (PID-3.1), when, on which connection."""

    control_id: str
    key: str
    at: float  # time.monotonic() at arrival, in seconds
    connection: int
    raw: bytes


def _fields(raw: bytes) -> tuple[str, str, str]:
    """(MSH-10, PID-3.1, MSH-9.2) of a frame; empty strings for what cannot be read."""
    text = raw.decode("latin-1")
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    comp = text[4] if len(text) > 4 else "^"
    control_id = key = trigger = ""
    for seg in text.replace("\n", "\r").split("\r"):
        parts = seg.split(sep)
        if parts[0] == "MSH" and len(parts) > 9:
            control_id = parts[9]  # MSH-1 is the separator itself, so MSH-n is parts[n - 1]
            trigger = parts[8].split(comp)[1] if comp in parts[8] else ""
        elif parts[0] == "PID" and len(parts) > 3 and not key:
            key = parts[3].split("~")[0].split(comp)[0]
    return control_id, key, trigger


class Downstream:
    """A threaded MLLP listener on a free port of 127.0.0.1 (``port``); one thread per connection."""

    def __init__(self, *, ack_delay_seconds: float = 0.0):
        self.ack_delay_seconds = ack_delay_seconds
        """Seconds each ACK is held back after its frame arrived."""
        self.frames: list[Frame] = []
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._server.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept, name="downstream-accept", daemon=True)
        self._accepter.start()

    # -- behaviour ----------------------------------------------------------------------------------
    def answer(self, code: str, control_ids) -> None:
        """Answer ``code`` (AA, AE or AR) to the frames with these control ids from now on."""
        with self._lock:
            self._answers.update(dict.fromkeys(control_ids, code))

    # -- what arrived -------------------------------------------------------------------------------
    def counts(self) -> collections.Counter:
        """Frames received per control id."""
        with self._lock:
            return collections.Counter(f.control_id for f in self.frames)

    def sequence(self, key: str) -> list[str]:
        """Control ids of ``key``'s frames in arrival order (repeats included)."""
        with self._lock:
            return [f.control_id for f in self.frames if f.key == key]

    def wait_for(self, control_ids, timeout: float = 60.0) -> bool:
        """Wait until every one of ``control_ids`` has arrived at least once; False on timeout."""
        wanted = set(control_ids)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not wanted <= {f.control_id for f in self.frames}:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(min(left, 0.5))
        return True

    def assert_exactly_once_in_order(self, expected: dict[str, list[str]]) -> None:
        """Each expected control id arrived once, nothing else arrived, and per key in the given order."""
        counts = self.counts()
        wanted = {cid for ids in expected.values() for cid in ids}
        missing = sorted(wanted - set(counts))
        repeated = sorted(cid for cid, n in counts.items() if n > 1)
        unexpected = sorted(set(counts) - wanted)
        assert not (missing or repeated or unexpected), (
            f"{len(missing)} missing {missing[:10]}, {len(repeated)} repeated {repeated[:10]}, "
            f"{len(unexpected)} unexpected {unexpected[:10]}"
        )
        for key, ids in expected.items():
            got = self.sequence(key)
            assert got == ids, self._misordered(key, got, ids)

    def assert_at_least_once_in_order(self, expected: dict[str, list[str]], max_repeats: int) -> None:
        """Each expected control id arrived, nothing else did; per key the arrival sequence with
        immediate repeats collapsed is the given order; at most ``max_repeats`` repeats in all,
        each one the identical bytes of its first arrival (a receiver's duplicate check drops it)."""
        counts = self.counts()
        wanted = {cid for ids in expected.values() for cid in ids}
        missing = sorted(wanted - set(counts))
        unexpected = sorted(set(counts) - wanted)
        assert not (missing or unexpected), (
            f"{len(missing)} missing {missing[:10]}, {len(unexpected)} unexpected {unexpected[:10]}"
        )
        repeats = sum(n - 1 for n in counts.values())
        repeated = {cid: n for cid, n in counts.items() if n > 1}
        assert repeats <= max_repeats, f"{repeats} repeats (at most {max_repeats}): {repeated}"
        with self._lock:
            first: dict[str, bytes] = {}
            for f in self.frames:
                assert first.setdefault(f.control_id, f.raw) == f.raw, f"{f.control_id} resent with other bytes"
        for key, ids in expected.items():
            got = self.sequence(key)
            collapsed = [cid for i, cid in enumerate(got) if i == 0 or got[i - 1] != cid]
            assert collapsed == ids, self._misordered(key, collapsed, ids)

    def _misordered(self, key: str, got: list[str], sent: list[str]) -> str:
        """Where ``key``'s arrivals (``got``, maybe with repeats collapsed) first differ from the
        order sent, with each arrival's connection number and time after the first frame of all."""
        at = next((i for i, (a, b) in enumerate(zip(got, sent)) if a != b), min(len(got), len(sent)))
        with self._lock:
            t0 = self.frames[0].at if self.frames else 0.0
            mine = [f for f in self.frames if f.key == key]
        starts = [i for i, f in enumerate(mine) if i == 0 or mine[i - 1].control_id != f.control_id]
        raw = starts[at] if at < len(starts) and len(got) == len(starts) else at
        near = [f"{f.control_id}@conn{f.connection}+{f.at - t0:.2f}s" for f in mine[max(raw - 2, 0) : raw + 3]]
        return f"{key}: arrival {at} differs: sent {sent[max(at - 2, 0) : at + 3]}, arrived {near}"

    # -- serving ------------------------------------------------------------------------------------
    def _accept(self) -> None:
        n = 0
        self._server.settimeout(0.1)  # a blocked accept() would not notice close()
        while not self._closing:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            n += 1
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._conns.append(conn)
                t = threading.Thread(target=self._serve, args=(conn, n), name=f"downstream-{n}", daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while True:
                while FS + CR not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                end = buf.index(FS + CR)
                start = buf.find(VT)
                raw = buf[start + 1 : end] if 0 <= start < end else buf[:end]
                buf = buf[end + 2 :]
                control_id, key, trigger = _fields(raw)
                with self._arrived:
                    self.frames.append(Frame(control_id, key, time.monotonic(), number, raw))
                    code = self._answers.get(control_id, "AA")
                    self._arrived.notify_all()
                if self.ack_delay_seconds:
                    time.sleep(self.ack_delay_seconds)
                conn.sendall(VT + ack(control_id, trigger, code) + FS + CR)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        with self._lock:
            self._closing = True
            conns, threads = list(self._conns), list(self._threads)
        self._accepter.join(5)
        self._server.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in threads:
            t.join(5)

    def __enter__(self) -> Downstream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ack(control_id: str, trigger: str, code: str) -> bytes:
    """An HL7 v2.5.1 ACK answering ``control_id`` with ``code``."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    text = "" if code == "AA" else "rejected by the test downstream"
    own_id = ("A" + control_id)[:20]
    return (
        f"MSH|^~\\&|DOWNSTREAM|TEST|ENGINE|HUB|{stamp}||ACK^{trigger}^ACK|{own_id}|P|2.5.1\r"
        f"MSA|{code}|{control_id}|{text}\r"
    ).encode("latin-1")
