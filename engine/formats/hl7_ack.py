"""HL7 acknowledgements: ACK/NACK messages built from an inbound message's header.

ACKs follow the standard: MSH with sender and receiver swapped, MSH-9 ``ACK^<trigger>^ACK``
(v2.3.1+) or, for order and pharmacy messages, their application acknowledgement
(``ORL^O22^ORL_O22`` for an OML^O21, ``RRE^O12`` for an RDE^O11: :data:`RESPONSES`), MSA-1
AA/AE/AR, MSA-2 the original MSH-10; on AE/AR an ERR segment locating the fault (ERR-2) with
its HL7 table 0357 code (ERR-3), or ERR-1 for v2.4 and earlier.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from engine.errors import ParseError
from engine.formats.hl7 import Header

ACK_ACCEPT, ACK_ERROR, ACK_REJECT = "AA", "AE", "AR"

RESPONSES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("ORM", "O01"): ("ORR", "O02", "ORR_O02"),  # general order
    ("OML", "O21"): ("ORL", "O22", "ORL_O22"),  # laboratory order (v2.4+)
    ("OML", "O33"): ("ORL", "O34", "ORL_O34"),  # laboratory order for multiple orders per specimen
    ("OML", "O35"): ("ORL", "O36", "ORL_O36"),  # laboratory order for multiple orders per container
    ("OMG", "O19"): ("ORG", "O20", "ORG_O20"),  # general clinical order
    ("OMP", "O09"): ("ORP", "O10", "ORP_O10"),  # pharmacy/treatment order
    ("RDE", "O11"): ("RRE", "O12", "RRE_O12"),  # pharmacy/treatment encoded order
    ("RDE", "O25"): ("RRE", "O26", "RRE_O12"),  # refill authorization (v2.6+; table 0354: structure RRE_O12)
    ("RDS", "O13"): ("RRD", "O14", "RRD_O14"),  # pharmacy/treatment dispense
    ("RGV", "O15"): ("RRG", "O16", "RRG_O16"),  # pharmacy/treatment give
    ("RAS", "O17"): ("RRA", "O18", "RRA_O18"),  # pharmacy/treatment administration
}
"""The application acknowledgement each order and pharmacy message gets instead of a generic
ACK (HL7 v2.5.1 chapter 4: "the response to an OML^O21 is an ORL^O22", and so on). These
messages' structures allow the answer to be MSH, MSA and ERR alone (the order and patient
groups that may follow are optional), which is what the engine sends: it acknowledges that the
order was received, it does not accept or refuse the order on the filler's behalf. Every other
message (ADT, ORU, SIU, MDM, DFT, VXU ...) is answered with ``ACK^<trigger>^ACK``."""


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (2, 5)


def _escape(text: str, fs: str = "|", enc: str = "^~\\&") -> str:
    esc = enc[2] if len(enc) > 2 else "\\"
    table = {esc: f"{esc}E{esc}", fs: f"{esc}F{esc}", enc[0]: f"{esc}S{esc}", enc[1]: f"{esc}R{esc}"}
    if len(enc) > 3:
        table[enc[3]] = f"{esc}T{esc}"
    return "".join(table.get(c, c) for c in text.replace("\r", " ").replace("\n", " "))


_ack_ids = itertools.count()


def _next_ack_id() -> str:
    """A control id for an ACK: unique within the process, 16 characters at most (MSH-10 is
    limited to 20 up to v2.6)."""
    return f"A{time.time_ns() // 1_000_000:x}{next(_ack_ids) % 4096:03x}"


def build_ack(
    header: Header | None,
    code: str = ACK_ACCEPT,
    *,
    error: ParseError | None = None,
    text: str = "",
    app: str = "ENGINE",
    facility: str = "",
    now: datetime | None = None,
    control_id: str | None = None,
) -> str:
    """An ACK for ``header`` (None when the inbound message had no readable MSH).

    MSH swaps sender and receiver; MSH-9 is ``ACK^<trigger>^ACK`` (v2.3.1+); MSA-1 is the
    code, MSA-2 the original MSH-10. On AE/AR with ``error``, ERR-2 locates the fault
    (segment^sequence^field) and ERR-3 carries the table 0357 code (ERR-1 for v2.4 and earlier,
    which had no ERR-2/ERR-3).
    """
    now = now or datetime.now(UTC)
    ts = now.strftime("%Y%m%d%H%M%S")
    h = header
    fs = h.field_sep if h else "|"
    enc = h.encoding_chars[:4] if h and len(h.encoding_chars) >= 4 else "^~\\&"
    cs, ss = enc[0], enc[3]
    version = h.version if h and h.version else "2.5"
    trigger = h.trigger if h else ""
    response = RESPONSES.get((h.message_type.upper(), trigger.upper())) if h else None
    if response is not None:
        msg_type = cs.join(response) if _version_tuple(version) >= (2, 3, 1) else cs.join(response[:2])
    elif _version_tuple(version) >= (2, 3, 1):
        msg_type = f"ACK{cs}{trigger}{cs}ACK"
    else:
        msg_type = f"ACK{cs}{trigger}"
    ack_id = control_id or _next_ack_id()
    msh = fs.join(
        [
            "MSH",
            enc,
            h.receiving_app if h and h.receiving_app else app,
            h.receiving_facility if h and h.receiving_facility else facility,
            h.sending_app if h else "",
            h.sending_facility if h else "",
            ts,
            "",
            msg_type,
            ack_id,
            (h.processing_id if h and h.processing_id else "P"),
            version,
        ]
    )
    if h and h.charset:
        msh += fs * 6 + h.charset
    msa_text = _escape((text or (str(error) if error else ""))[:80], fs, enc)  # cut, then escape
    segments = [msh, fs.join(["MSA", code, h.control_id if h else "", msa_text]).rstrip(fs)]
    if error is not None and code != ACK_ACCEPT:
        loc = cs.join([error.segment or "", str(error.sequence or 1), str(error.field or "")]).rstrip(cs)
        err_text = _escape(str(error), fs, enc)
        code_cwe = cs.join([str(error.code), _TABLE_0357.get(error.code, "Error"), "HL70357"])
        if _version_tuple(version) >= (2, 5):
            segments.append(fs.join(["ERR", "", loc, code_cwe, "E", "", "", "", err_text]))
        else:
            eld = cs.join(
                [
                    error.segment or "",
                    str(error.sequence or 1),
                    str(error.field or ""),
                    ss.join([str(error.code), _TABLE_0357.get(error.code, "Error"), "HL70357"]),
                ]
            )
            segments.append(fs.join(["ERR", eld]))
    return "\r".join(segments) + "\r"


_TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
