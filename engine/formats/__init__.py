"""One module per format: HL7 v2 (hl7, hl7_ack, mllp) and X12 (x12, x12_envelope, x12_validate, x12_ack)."""

from __future__ import annotations


def parse_text(text: str):
    """A stored or test message as the mapping executor reads it: an X12 transaction set in its
    interchange (it starts with ISA) or an HL7 v2 message. Raises ParseError."""
    from engine.formats import hl7, x12

    if text.lstrip("\ufeff \r\n\t").startswith("ISA"):
        return x12.X12Message.from_text(text)
    return hl7.Message(text)
