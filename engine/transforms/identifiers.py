"""Which repetition of a CX list (PID-3, MRG-1) names the patient, and who issued it.

A patient is identified by the pair (assigning authority, identifier value), never by the value
alone: two authorities may issue the same number to two people. :class:`Identifier` picks,
from the repetitions of a CX field, the one whose identifier type (CX-5) comes first in a
priority list (``types``, default ``MR, PI, PT``), the first such repetition when several have
that type. Types not listed (SS, SID, DL, ...) are never taken; a repetition without a type is
taken only with ``untyped`` (after every listed type), for senders known to leave CX-5 empty.
The value is CX-1; the issuer CX-4.1 (HD namespace id), else CX-4.2 (HD universal id), else a
``default_issuer`` the configuration names (a path such as MSH-4.1, or a literal). Both come
from the same repetition. Nothing is guessed: with no acceptable repetition there is no
identity, and the caller fails the message with :func:`Identifier.missing`'s reason.

Used by the mapping language (``{identifier: PID-3, ...}``, :mod:`engine.transforms.expressions`)
and by channels' ordering keys (:class:`IdentifierKey`, read at receive), so the order a channel
keeps is the identity the mappings store.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.formats.hl7 import Delimiters, Message, Path, unescape

DEFAULT_TYPES = ("MR", "PI", "PT")
"""Medical record number, patient internal identifier, patient external identifier (HL7 table 0203)."""

OPTIONS = ("types", "default_issuer", "untyped")
"""What an identifier spec may say besides the field (the mapping language adds ``part``)."""


@dataclass(frozen=True)
class Chosen:
    """The repetition an :class:`Identifier` chose: its value, type and issuer ('' when CX-4 is empty)."""

    value: str
    type: str
    issuer: str


def _text(raw: str, d: Delimiters) -> str:
    """A component as text: '' for empty and for HL7 null (an identity is never "cleared")."""
    return "" if raw in ("", '""') else unescape(raw, d).strip()


@dataclass(frozen=True)
class Identifier:
    """The choice rule: ``types`` in priority order, ``untyped`` repetitions last or never."""

    types: tuple[str, ...] = DEFAULT_TYPES
    untyped: bool = False

    @property
    def listed(self) -> str:
        """``MR/PI/PT`` (``MR/PI/PT/untyped`` with ``untyped``), for reasons and sources."""
        return "/".join(self.types + (("untyped",) if self.untyped else ()))

    def choose(self, raw: str, d: Delimiters) -> Chosen | None:
        """The chosen repetition of the raw field text ``raw``, or None when none is acceptable.

        A repetition without a value (CX-1 empty) is not acceptable whatever its type.
        """
        best: Chosen | None = None
        best_rank = len(self.types) + 1
        for rep in raw.split(d.repetition):
            comps = rep.split(d.component)
            value = _text(comps[0], d)
            if not value:
                continue
            kind = _text(comps[4], d) if len(comps) > 4 else ""
            if kind in self.types:
                rank = self.types.index(kind)
            elif not kind and self.untyped:
                rank = len(self.types)
            else:
                continue
            if rank < best_rank:
                hd = comps[3].split(d.subcomponent) if len(comps) > 3 else []
                issuer = next((t for t in (_text(h, d) for h in hd[:2]) if t), "")
                best, best_rank = Chosen(value, kind, issuer), rank
                if rank == 0:
                    break
        return best

    def missing(self, field: str) -> str:
        """The reason a message without an acceptable identifier fails (no values in it)."""
        return f"no identifier of type {self.listed} in {field}"

    def no_issuer(self, chosen: Chosen, field: str) -> str:
        """The reason when the chosen repetition names no issuer and no default gives one."""
        kind = chosen.type or "untyped"
        return f"the {kind} identifier in {field} has no assigning authority (CX-4) and no default_issuer gives one"


@dataclass(frozen=True)
class IdentifierKey:
    """A channel's ordering key read as an identity: ``issuer|value`` of the chosen repetition.

    ``field`` is the CX field (PID-3); ``default_issuer`` a path read in the message, or
    ``literal_issuer`` a fixed text, used when the chosen repetition has no CX-4.
    """

    field: Path
    rule: Identifier
    default_issuer: Path | None = None
    literal_issuer: str | None = None

    def read(self, msg: Message) -> str | None:
        """``issuer|value`` for ``msg`` (at most 200 characters), or None when it has no identity
        (processing fails that message with the reason; an unordered key is harmless)."""
        segs = msg.find_segments(self.field)
        raw = segs[0].field(self.field.field or 0) if segs else ""
        chosen = self.rule.choose(raw, msg.delimiters) if raw else None
        if chosen is None:
            return None
        issuer = chosen.issuer
        if not issuer and self.default_issuer is not None:
            issuer = (msg.value(self.default_issuer) or "").strip()
        elif not issuer:
            issuer = self.literal_issuer or ""
        if not issuer:
            return None
        return f"{issuer}|{chosen.value}"[:200]
