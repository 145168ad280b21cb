"""HL7 v2 data types decoded into named, typed parts: what ``{typed: ...}`` in a mapping reads.

A field of a composite data type is decoded repetition by repetition into parts, each typed:
numbers as floats, dates as dates, date/times as UTC datetimes (a value without an offset in
the message's time zone), text with its escape sequences decoded. No component is ever glued
to another: ``A^Abnormal^HL70078`` is the code ``A``, the text ``Abnormal`` and the system
``HL70078``, never ``A^Abnormal^HL70078``.

==================  =========================================================================
type                parts of each repetition
==================  =========================================================================
NM                  number
SN                  comparator, number, separator, number2   (``<^0.5``; ``=^1^:^640``)
CWE CE CNE CF       code, text, system   (the alternate triple when the first is empty; the text
                    falls back to the original text, CWE-9)
ID IS               code
ST TX FT TM         string   (a text's repetitions are its lines)
DT                  date
TS DTM              date, datetime   (datetime only when a time of day is given)
CX                  id, issuer, type   (issuer: CX-4.1, else CX-4.2)
RP                  reference, application, data_type, subtype
ED                  application, data_type, subtype, encoding   (never the data itself, ED-5)
XAD                 street, other, city, state, postal_code, country, address_type
anything else       string   (the non-empty components, separated by a space)
==================  =========================================================================

``street`` of an XAD is its SAD: SAD-1 (street or mailing address) with SAD-2 (street name) and
SAD-3 (dwelling number) added where SAD-1 does not already hold them (``1000&Hospital Lane`` is
``1000 Hospital Lane``; ``&Main St&12`` is ``12 Main St``).

:func:`decode` gives the parts of every repetition; :func:`part` one part of the value (the
first repetition's, or all lines of a text), None when the type has no such part, so a row
rewritten with a value of another type keeps nothing of the old one; :func:`as_json` every
repetition as a JSON list (one value per repetition for single-part types, an object of the
non-empty parts otherwise). Problems raise :class:`~engine.transforms.values.ValueProblem`
whose reason never quotes the value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from engine.formats.hl7 import Delimiters, unescape
from engine.transforms.values import has_time, to_date, to_datetime, to_number

Parts = dict[str, Any]

_CODED = ("CWE", "CE", "CNE", "CF")
_TEXT = ("ST", "TX", "FT", "TM")


def _comps(rep: str, d: Delimiters) -> list[str]:
    return rep.split(d.component)


def _text(raw: str, d: Delimiters) -> str:
    """One component or sub-component as text: '' for empty and for HL7 null."""
    return "" if raw in ("", '""') else unescape(raw, d).strip()


def _at(comps: list[str], n: int, d: Delimiters) -> str:
    """Component ``n`` (1-based) as text, '' when absent."""
    return _text(comps[n - 1], d) if n <= len(comps) else ""


def _sub(comps: list[str], n: int, k: int, d: Delimiters) -> str:
    """Sub-component ``k`` of component ``n`` as text."""
    if n > len(comps):
        return ""
    subs = comps[n - 1].split(d.subcomponent)
    return _text(subs[k - 1], d) if k <= len(subs) else ""


def _hd(comps: list[str], n: int, d: Delimiters) -> str:
    """An HD component: its namespace id, else its universal id."""
    return _sub(comps, n, 1, d) or _sub(comps, n, 2, d)


def _number(text: str) -> float | None:
    return to_number(text) if text else None


def _nm(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {"number": _number(_at(comps, 1, d))}


def _sn(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {
        "comparator": _at(comps, 1, d),
        "number": _number(_at(comps, 2, d)),
        "separator": _at(comps, 3, d),
        "number2": _number(_at(comps, 4, d)),
    }


def _coded(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    first = 1 if _at(comps, 1, d) or _at(comps, 2, d) or not (_at(comps, 4, d) or _at(comps, 5, d)) else 4
    return {
        "code": _at(comps, first, d),
        "text": _at(comps, first + 1, d) or _at(comps, 9, d),
        "system": _at(comps, first + 2, d),
    }


def _code(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {"code": _at(comps, 1, d)}


def _dt(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    v = _at(comps, 1, d)
    return {"date": to_date(v) if v else None}


def _ts(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    v = _at(comps, 1, d)
    if not v:
        return {"date": None, "datetime": None}
    return {"date": to_date(v), "datetime": to_datetime(v, zone) if has_time(v) else None}


def _cx(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {"id": _at(comps, 1, d), "issuer": _hd(comps, 4, d), "type": _at(comps, 5, d)}


def _rp(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {
        "reference": _at(comps, 1, d),
        "application": _hd(comps, 2, d),
        "data_type": _at(comps, 3, d),
        "subtype": _at(comps, 4, d),
    }


def _ed(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    return {
        "application": _hd(comps, 1, d),
        "data_type": _at(comps, 2, d),
        "subtype": _at(comps, 3, d),
        "encoding": _at(comps, 4, d),
    }


def street(sad: list[str]) -> str:
    """The street line of an XAD's SAD sub-components (see the module docstring)."""
    line, name, number = (sad + ["", "", ""])[:3]
    if not line:
        return " ".join(p for p in (number, name) if p)
    extra = [p for p in (name, number) if p and p not in line]
    return " ".join([line, *extra])


def _xad(comps: list[str], d: Delimiters, zone: tzinfo) -> Parts:
    sad = [_text(s, d) for s in comps[0].split(d.subcomponent)] if comps else []
    return {
        "street": street(sad),
        "other": _at(comps, 2, d),
        "city": _at(comps, 3, d),
        "state": _at(comps, 4, d),
        "postal_code": _at(comps, 5, d),
        "country": _at(comps, 6, d),
        "address_type": _at(comps, 7, d),
    }


DECODERS: dict[str, Callable[[list[str], Delimiters, tzinfo], Parts]] = {
    "NM": _nm,
    "SN": _sn,
    **dict.fromkeys(_CODED, _coded),
    "ID": _code,
    "IS": _code,
    "DT": _dt,
    "TS": _ts,
    "DTM": _ts,
    "CX": _cx,
    "RP": _rp,
    "ED": _ed,
    "XAD": _xad,
}
TYPES = frozenset(DECODERS) | frozenset(_TEXT)
"""Data types decoded into parts; any other is text (see the module docstring)."""
PARTS = frozenset(p for fn in DECODERS.values() for p in fn([], Delimiters(), UTC)) | {"string"}
"""Every part name some data type has."""
_SINGLE = {"NM": "number", "ID": "code", "IS": "code", "DT": "date"}
_XAD = ("street", "other", "city", "state", "postal_code", "country", "address_type")
COMPONENTS: dict[tuple[str, str], tuple[int, ...]] = {
    **{("XAD", name): (n,) for n, name in enumerate(_XAD, 1)},
    **{(t, "code"): (1, 4) for t in _CODED},
    **{(t, "text"): (2, 5, 9) for t in _CODED},
    **{(t, "system"): (3, 6) for t in _CODED},
    ("CX", "id"): (1,),
    ("CX", "issuer"): (4,),
    ("CX", "type"): (5,),
}
"""The components one part of a data type is made of (what reading it reads); a part not
listed reads the whole field."""


def decode(raw: str, type_code: str, d: Delimiters, zone: tzinfo) -> list[Parts]:
    """The parts of each repetition of the raw field text ``raw`` (HL7 null handled by the
    caller). ``zone`` is the sender's clock, for date/times without an offset."""
    fn = DECODERS.get(type_code)
    out: list[Parts] = []
    for rep in raw.split(d.repetition):
        if fn is not None:
            out.append(fn(_comps(rep, d), d, zone))
        elif type_code in _TEXT:
            out.append({"string": "" if rep == '""' else unescape(rep, d)})
        else:
            comps = [_text(c, d) for c in _comps(rep, d)]
            out.append({"string": " ".join(c for c in comps if c), "components": comps})
    return out


def part(items: list[Parts], type_code: str, name: str) -> Any:
    """One part of a decoded value: of the first repetition, or for text every repetition as a
    line. None when the type has no such part or it is empty (the column is cleared)."""
    if not items:
        return None
    if name == "string" and "string" in items[0]:
        lines = [i["string"] for i in items]
        while lines and not lines[-1]:
            lines.pop()
        while lines and not lines[0]:
            lines.pop(0)
        return "\n".join(lines) or None
    v = items[0].get(name)
    return None if v == "" else v


def as_json(items: list[Parts], type_code: str) -> str:
    """Every repetition of a decoded value as JSON text (see the module docstring)."""
    out: list[Any] = []
    single = _SINGLE.get(type_code)
    for item in items:
        if "string" in item:
            comps = item.get("components")
            out.append(comps if comps is not None and len(comps) > 1 else item["string"])
        elif single is not None:
            out.append(_json_value(item[single]))
        elif type_code in ("TS", "DTM"):
            out.append(_json_value(item["datetime"] if item["datetime"] is not None else item["date"]))
        else:
            out.append({k: _json_value(v) for k, v in item.items() if v not in (None, "")})
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_value(v: Any) -> Any:
    if isinstance(v, float):
        return int(v) if v.is_integer() else v
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(v, date):
        return v.isoformat()
    return v
