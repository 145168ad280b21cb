"""``engine send``: an MLLP client for files that hold one message, many, or FHS/BHS batches.

Files are read as bytes and each message is sent byte for byte as it stands in the file
(split at its MSH with latin-1, which maps every byte to one character and back), so the
receiver sees the character set the message itself declares. A UTF-8 byte order mark (at the
start of the file, or of each file in a concatenation) belongs to the file, not to a message,
and is not sent. UTF-16 and UTF-32 files are refused with what to do: MLLP frames a byte
stream with 0x0B and 0x1C, bytes that such text may contain anywhere.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from engine.channels.mllp_sender import MllpClient, ack_fields
from engine.errors import ParseError
from engine.formats import hl7

PROGRESS_FROM = 200  # files with more messages than this get a progress line on stderr
_UTF8_MARK_AT_LINE_START = re.compile(rb"(?:^|(?<=[\r\n\x0b\x1c]))\xef\xbb\xbf")


def read_messages(name: str) -> list[str]:
    """The messages in file ``name``, as latin-1 text (one character per byte, so ``encode("latin-1")``
    gives each message's bytes back). Raises OSError, or ParseError saying why the file cannot
    be sent (a UTF-16/32 file; segments before the first MSH)."""
    data = Path(name).read_bytes()
    mark = hl7.byte_order_mark(data)
    if mark and mark[2] != "utf-8":
        found = f"{mark[2].upper()} text (byte order mark {data[mark[0] : mark[0] + mark[1]].hex(' ').upper()})"
    elif b"\x00" in data[:64]:
        found = "not ASCII-compatible (NUL bytes: UTF-16 or UTF-32 without a byte order mark?)"
    else:
        return hl7.split_batch(_UTF8_MARK_AT_LINE_START.sub(b"", data).decode("latin-1"))
    raise ParseError(
        f"the file is {found}; MLLP framing (0x0B ... 0x1C) cannot carry it: convert it first"
        f" (iconv -f {(mark[2] if mark else 'UTF-16').upper()} -t UTF-8) and set MSH-18 to UNICODE UTF-8"
    )


def send_files(files: list[str], host: str, port: int, *, timeout: float = 30.0, out=sys.stdout, err=sys.stderr) -> int:
    """Send every message in ``files``; print ``file#n control-id ACK-code [text]`` per message.

    An ACK counts only when its MSA-2 equals the message's MSH-10; an ACK for another message
    prints ``--`` and closes the connection. Returns 0 when every message was answered AA (or
    CA), 1 otherwise.
    """
    client = MllpClient(host, port, timeout)
    failures = sent = 0
    started = time.monotonic()
    try:
        for name in files:
            try:
                messages = read_messages(name)
            except (OSError, ParseError) as exc:
                print(f"{name}: cannot read messages: {exc}", file=err)
                failures += 1
                continue
            total = len(messages)
            step = max(total // 20, 1)
            for n, text in enumerate(messages, 1):
                try:
                    control_id = hl7.read_header(text.encode("latin-1")).control_id
                except ParseError:
                    control_id = "?"
                try:
                    code, answered, note = ack_fields(client.send(text.encode("latin-1")))
                except OSError as exc:
                    code, answered, note = "--", control_id, f"no ACK: {type(exc).__name__}: {exc}"
                if code and control_id != "?" and answered != control_id:
                    client.close()  # out of step: the next message starts on a fresh connection
                    code, note = "--", f"ACK for another message ({code} for {answered!r})"
                sent += 1
                if code not in ("AA", "CA"):
                    failures += 1
                print(f"{name}#{n} {control_id} {code}" + (f" {note}" if note else ""), file=out, flush=False)
                if total > PROGRESS_FROM and (n % step == 0 or n == total):
                    rate = sent / max(time.monotonic() - started, 1e-9)
                    print(f"{name}: {n}/{total} sent ({rate:.0f} msg/s)", file=err, flush=True)
    finally:
        client.close()
        out.flush()
    return 1 if failures else 0
