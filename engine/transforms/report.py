"""What a mapping run notices besides its records: warnings, and which source positions it read.

A :class:`RunReport` is handed to :meth:`Mapping.run`; the processor keeps one per message
across all its destinations and stores two things with the message: the warnings (a record
skipped under ``on_error: skip``, never a value), and the unmapped positions — populated
``SEG-field.component`` positions that no rule of any destination read (:func:`unmapped`), so
an analyst sees what the mappings leave behind.

How positions count (the same rules for what was read and what is populated):

- A **position** is ``SEG-f`` (a whole field) or ``SEG-f.c`` (one component). A path that
  names a sub-component reads its component (``PID-5.1.1`` reads ``PID-5.1``): a component is
  mapped or not as a whole.
- **Repetitions and segment occurrences count together**: ``PID-3[2].4`` reads ``PID-3.4``; the
  position is populated when any repetition of any occurrence has it, and read when a rule read
  it in any of them (``PID-13.1`` reads only the first phone, yet covers ``PID-13.1``).
- Reading a whole field (``OBX-5``, ``concat: [AL1-5[*]]``) covers all its components; reading
  a whole segment (path ``ZPI``) covers the segment.
- A field sent without components is its first component: ``PV1-19.1`` covers ``PV1-19 = V1``;
  it is reported as ``SEG-f``, or as ``SEG-f.1`` when the message has that field with
  components elsewhere (a bare ``IN1-3`` in one IN1, ``IN1-3.1`` and ``.5`` in the next).
- A record skipped under ``on_error: skip`` read what it read before it failed; the fields
  after the failing one were not read and are reported if nothing else reads them.
- Every expression and condition a rule evaluates reads (``when``, ``where``, ``coalesce``
  alternatives actually tried); ``applies_when`` does not (it only decides whether to run).
- HL7 null ``""`` is populated (it tells the receiver to clear); an empty value is not.
- The header (MSH) is the engine's own envelope (type, control id, version and charset go to
  the message store, the ACK answers from it): it is never reported.

A FHIR resource names its own positions (element paths such as ``Patient.name.given``) and
says which are unmapped: :meth:`engine.formats.fhir.FhirMessage.unmapped`, whose docstring
says how a FHIRPath's reads are approximated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.formats.hl7 import Message, Path

ENVELOPE = frozenset({"MSH", "ISA", "GS", "ST", "SE", "GE", "IEA"})
"""Segments the engine reads itself (the HL7 header, the X12 envelopes): never reported as unmapped."""


@dataclass
class RunReport:
    """Collected during one or more mapping runs over one message."""

    warnings: list[str] = field(default_factory=list)
    """One line per thing the mapping let go (``store.table.column: reason ...``); never a value."""
    left_out: set[str] = field(default_factory=set)
    """FHIR resources (``Observation/<id>``) a rule skipped under ``on_error: skip``: references
    to them are taken out of the Bundle (:func:`engine.formats.fhir_bundle.transaction`)."""
    read: set[str] = field(default_factory=set)
    """Positions a rule read: ``SEG`` (a whole segment), ``SEG-f`` (a whole field) or ``SEG-f.c``."""


def position(path: Path) -> str:
    """The position a path reads: ``PID-3[2].4.1`` -> ``PID-3.4``, ``OBX-5`` -> ``OBX-5``."""
    segment = path.segment.split("*", 1)[0]  # X12 DTM*405-02 reads DTM-2: positions name segments by id
    if path.field is None:
        return segment
    if path.component is None:
        return f"{segment}-{path.field}"
    return f"{segment}-{path.field}.{path.component}"


def unmapped(message: Message, reports: Iterable[RunReport]) -> list[str]:
    """Populated positions (``SEG-f`` for a field without components, else ``SEG-f.c``) that
    no report read, in message order without repeats. Positions only, never values."""
    read: set[str] = set()
    for r in reports:
        read |= r.read
    own = getattr(message, "unmapped", None)
    if own is not None:  # a format that names its own positions (FHIR)
        return own(read)
    out: dict[str, None] = {}
    comp = message.delimiters.component
    rep = message.delimiters.repetition
    for seg in message.segments:
        name = seg.name
        if name in ENVELOPE or name in read:
            continue
        prefix = name + "-"
        for n, value in enumerate(seg.fields[1:], 1):
            if not value:
                continue
            whole = prefix + str(n)
            if whole in read:
                continue
            if comp not in value:
                if whole + ".1" not in read:
                    out[whole] = None
                continue
            for repetition in value.split(rep) if rep in value else (value,):
                for c, part in enumerate(repetition.split(comp), 1):
                    if part:
                        where = f"{whole}.{c}"
                        if where not in read:
                            out[where] = None
    by_component = {p.rsplit(".", 1)[0] for p in out if "." in p}  # one field, one way of naming it
    return list(dict.fromkeys(p + ".1" if p in by_component else p for p in out))


def summarise(lists: Iterable[list[str]]) -> list[tuple[str, int]]:
    """(position, number of lists that name it), most frequent first; ties in first-seen order.

    Each list is one message's unmapped positions; the result is what ``engine unmapped`` prints.
    """
    counts: Counter[str] = Counter()
    for positions in lists:
        counts.update(dict.fromkeys(positions, 1))
    return sorted(counts.items(), key=lambda kv: -kv[1])  # stable: equal counts keep first-seen order
