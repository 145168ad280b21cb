"""Value conversions used by mappings: HL7 DTM and FHIR date/dateTime/instant to date/datetime,
numbers; the MISSING marker.

Three states of a value while a mapping runs: ``MISSING`` (the message does not have it: the
column is left out of ``Record.values``, the store keeps what it has), ``None`` (HL7 explicit
null ``""``: the column is cleared) and a real value. Conversions leave MISSING and None as
they are. A value that cannot be converted raises :class:`ValueProblem`, whose reason never
contains the value itself (it may be PHI); the record compiler adds mapping, column and path.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing()


class ValueProblem(Exception):
    """A value could not be produced; ``reason`` is safe to log (no patient data).

    ``unreadable``: the sent value is malformed (a date or number that is not one), as opposed
    to a rule the analyst set (a required value, a code table's ``on_unknown: error``). An
    unreadable value in an optional field is left out with a warning; the rest fail the record.
    """

    def __init__(self, reason: str, *, unreadable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable


# YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6})\d*)?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?"
)

# FHIR date, dateTime, instant: YYYY[-MM[-DD[Thh:mm[:ss[.s+]][Z|+zz:zz]]]]
_FHIR = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?"
    r"(?:(Z)|([+-])(\d{2}):(\d{2}))?)?)?)?"
)


def _match(text: str, fhir: bool) -> tuple | None:
    """The parts (year ... fraction, sign, offset hours, minutes) of an HL7 DTM or, with
    ``fhir``, of a FHIR date/dateTime/instant (``Z`` is ``+00:00``); None when it is not one."""
    if not fhir:
        m = _DTM.fullmatch(text)
        return m.groups() if m else None
    f = _FHIR.fullmatch(text)
    if not f:
        return None
    *head, zulu, sign, oh, om = f.groups()
    return (*head, "+", "00", "00") if zulu else (*head, sign, oh, om)


def parse_dtm(text: str, fhir: bool = False) -> tuple[datetime, tzinfo | None]:
    """Parse an HL7 DTM/TS (first component) or, with ``fhir``, a FHIR date, dateTime or instant
    (``2024-03-14``, ``2024-03-14T09:30:00-05:00``, ``2024-03-14T09:30:00.123Z``) into a naive
    datetime and its offset, if given. Each format reads only its own way of writing dates.

    Reduced precision is the first instant of the period HL7 allows it to denote
    (``2024`` -> 2024-01-01 00:00; FHIR ``2024-03`` alike). Raises ValueProblem for anything else.
    """
    parts = _match(text.strip(), fhir)
    kind = "FHIR" if fhir else "HL7"
    if parts is None:
        expected = "YYYY[-MM[-DD[Thh:mm:ss[.s]+zz:zz]]]" if fhir else "YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]"
        raise ValueProblem(f"not a valid {kind} date/time (expected {expected})", unreadable=True)
    y, mo, d, h, mi, s, frac, sign, oh, om = parts
    try:
        value = datetime(
            int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), int((frac or "0").ljust(6, "0"))
        )
    except ValueError:
        raise ValueProblem(
            f"not a valid {kind} date/time (a month, day or time is out of range)", unreadable=True
        ) from None
    offset = None
    if sign:
        if int(oh) > 14 or int(om) > 59:
            raise ValueProblem(f"not a valid {kind} date/time (time zone offset out of range)", unreadable=True)
        delta = timedelta(hours=int(oh), minutes=int(om))
        offset = timezone(-delta if sign == "-" else delta)
    return value, offset


def has_time(text: str, fhir: bool = False) -> bool:
    """True unless ``text`` is a valid HL7 (or with ``fhir``, FHIR) date/time without a time of
    day (``20240314``, ``202403``; ``2024-03-14``): such a value names a calendar date or period,
    never an instant. Text that is not a date/time at all answers True, so that converting it
    reports the problem."""
    parts = _match(text.strip(), fhir)
    return parts is None or parts[3] is not None


def to_date(text: str, fhir: bool = False) -> date:
    """The calendar date as written (an offset does not move it: a birth date stays put)."""
    return parse_dtm(text, fhir)[0].date()


def to_datetime(text: str, default_zone: tzinfo, fhir: bool = False) -> datetime:
    """A timezone-aware UTC datetime; ``default_zone`` applies when the value has no offset."""
    value, offset = parse_dtm(text, fhir)
    return value.replace(tzinfo=offset or default_zone).astimezone(UTC)


def zone(name: str) -> tzinfo:
    """A zoneinfo time zone by IANA name (``America/New_York``); ValueError when unknown."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/New_York)") from None


_NM = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def to_number(text: str) -> float:
    """A float from an NM value (``+3.5``, ``-.5``, ``12``); ValueProblem when not numeric."""
    text = text.strip()
    if not _NM.fullmatch(text):
        raise ValueProblem("not a number (HL7 NM: optional sign, digits, optional decimal point)", unreadable=True)
    return float(text)


def to_integer(text: str) -> int:
    """An int from an NM/SI value (``1``, ``+2``, ``3.0``); ValueProblem when not whole."""
    value = to_number(text)
    if not value.is_integer():
        raise ValueProblem("not a whole number", unreadable=True)
    return int(value)


def to_boolean(text: str) -> bool:
    """True or False from ``true``/``false`` (FHIR and JSON booleans); ValueProblem otherwise
    (HL7's Y/N indicators go through a table: ``{table: yes_no, ...}``)."""
    value = text.strip()
    if value not in ("true", "false"):
        raise ValueProblem("not a boolean (expected true or false)", unreadable=True)
    return value == "true"
