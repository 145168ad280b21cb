"""One module per format: HL7 v2 (hl7, hl7_ack, mllp), X12 (x12, x12_envelope, x12_validate, x12_ack), FHIR (fhir)."""

from __future__ import annotations


def parse_text(text: str):
    """A stored or test message as the mapping executor reads it: an X12 transaction set in its
    interchange (it starts with ISA), a FHIR resource in JSON (it starts with ``{``) or an HL7
    v2 message. Raises ParseError."""
    from engine.formats import fhir, hl7, x12

    start = text.lstrip("\ufeff \r\n\t")
    if start.startswith("ISA"):
        return x12.X12Message.from_text(text)
    if start.startswith("{"):
        return fhir.FhirMessage.from_text(text)
    return hl7.Message(text)
