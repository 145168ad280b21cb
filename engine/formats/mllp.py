"""MLLP framing: VT message FS CR (HL7 v2 Minimal Lower Layer Protocol)."""

from __future__ import annotations

from collections.abc import Iterator

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """Wrap a message in MLLP framing: VT message FS CR."""
    data = message.encode(encoding) if isinstance(message, str) else message
    return VT + data + FS + CR


def iter_frames(buffer: bytearray) -> Iterator[bytes]:
    """Yield complete MLLP frames from ``buffer`` (consumed in place); partial data stays."""
    while True:
        start = buffer.find(VT)
        if start < 0:
            buffer.clear()
            return
        end = buffer.find(FS, start + 1)
        if end < 0:
            if start:
                del buffer[:start]
            return
        start = buffer.rfind(VT, start, end)  # a VT inside means the frame before it was cut off
        payload = bytes(buffer[start + 1 : end])
        del buffer[: end + 1]
        if buffer[:1] == CR:
            del buffer[:1]
        yield payload
