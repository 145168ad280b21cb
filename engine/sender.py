"""``engine send``: an MLLP client for files that hold one message, many, or FHS/BHS batches.

Files are read as bytes and each message is sent byte for byte as it stands in the file
(split at its MSH with latin-1, which maps every byte to one character and back), so the
receiver sees the character set the message itself declares.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.channels.mllp_sender import MllpClient, ack_fields
from engine.errors import ParseError
from engine.formats import hl7

PROGRESS_FROM = 200  # files with more messages than this get a progress line on stderr


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
                messages = hl7.split_batch(Path(name).read_bytes().decode("latin-1"))
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
