"""HL7 v2 segment names: the ones the standard defines, and a suggestion for a misspelt one.

A path such as ``MHS-9.1`` is well formed, so only a list of real segments tells that it will
never match anything: a channel filter on it drops every message as FILTERED, a mapping reads
nothing. ``engine check`` asks :func:`unknown_segment` about every path it compiles.

The list is the union of every version the engine reads (2.1 to 2.8.2), taken from hl7apy's
reference data (``hl7apy/v2_x/segments.py``, one ``SEGMENTS`` table per version; hl7apy has
no 2.7.1, whose segments are all in 2.7 or 2.8). Z-segments are local by definition and
always allowed.
"""

from __future__ import annotations

import functools
import importlib
import re
import string

from engine.formats.hl7 import SUPPORTED_VERSIONS

_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@functools.cache
def known_segments() -> frozenset[str]:
    """Every segment name defined in some HL7 v2 version from 2.1 to 2.8.2 (loaded once)."""
    names: set[str] = set()
    for version in SUPPORTED_VERSIONS:
        try:
            table = importlib.import_module(f"hl7apy.v{version.replace('.', '_')}.segments").SEGMENTS
        except ModuleNotFoundError:  # 2.7.1: not in hl7apy
            continue
        names.update(name for name in table if _NAME.match(name))  # not its ANYHL7SEGMENT placeholder
    return frozenset(names)


def unknown_segment(name: str) -> str | None:
    """None when ``name`` is a standard segment or a Z-segment, else the problem to report:
    ``unknown segment 'MHS' (did you mean MSH?)``."""
    if name.startswith("Z") or name in known_segments():
        return None
    near = suggestions(name)
    if not near:
        return f"unknown segment {name!r} (not in HL7 v2.1-2.8.2; local segments start with Z)"
    options = near[0] if len(near) == 1 else ", ".join(near[:-1]) + " or " + near[-1]
    return f"unknown segment {name!r} (did you mean {options}?)"


def suggestions(name: str, most: int = 3) -> list[str]:
    """Standard segments one slip away from ``name``: two neighbouring letters swapped
    (``PDI`` -> PID), else one character wrong (``OBZ`` -> OBR, OBX), else the same letters in
    another order (``HSM`` -> MSH). At most ``most``, alphabetical."""
    known = known_segments()
    swapped = {name[:i] + name[i + 1] + name[i] + name[i + 2 :] for i in range(len(name) - 1)}
    replaced = {name[:i] + c + name[i + 1 :] for i in range(len(name)) for c in _ALPHABET}
    shuffled = {a + b + c for a in name for b in name for c in name if sorted(a + b + c) == sorted(name)}
    for candidates in (swapped, replaced, shuffled):
        found = sorted((candidates & known) - {name})
        if found:
            return found[:most]
    return []


_ALPHABET = string.ascii_uppercase + string.digits
