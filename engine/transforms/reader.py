"""A per-message read cache in front of :class:`engine.formats.hl7.Message`, used while a mapping runs.

A mapping reads some fifty paths per message; ``Message.values`` finds a path's segment by
scanning every segment each time. :class:`Reader` indexes the segments by name once and
remembers each message-level value list, so a path read by several fields (the MRN, MSH-9.2)
costs one lookup. It offers the part of Message's interface that compiled mappings and
conditions use (``values``, ``find_segments``, ``spans``, ``delimiters``), with identical
results: scoped reads (inside ``for_each``) are delegated to the Message unchanged, and the
tests compare both over the fixtures.
"""

from __future__ import annotations

from engine.formats.hl7 import Message, Path, Segment, Span, values_in


class Reader:
    """Read-only view of one message; build one per ``Mapping.run`` call, then drop it."""

    __slots__ = ("_cache", "_index", "_outside", "_positions", "delimiters", "msg")

    def __init__(self, msg: Message):
        self.msg = msg
        self.delimiters = msg.delimiters
        index: dict[str, list[Segment]] = {}
        positions: dict[str, list[int]] = {}
        for i, seg in enumerate(msg.segments):
            index.setdefault(seg.name, []).append(seg)
            positions.setdefault(seg.name, []).append(i)
        self._index, self._positions = index, positions
        self._cache: dict[int, list] = {}
        self._outside: dict[tuple[str, str], bool] = {}

    def _message_level(self, segment: str, scopes: tuple[Span, ...]) -> bool:
        """True when a scoped read of ``segment`` gives what an unscoped read gives.

        That holds when no ``segment`` lies inside any group of the outermost scope's kind
        (PID, PV1, MSH read from inside an OBR or AL1 loop): the scope walk then finds
        nothing in the scopes and everything at message level.
        """
        anchor = self.msg.segments[scopes[0][0]].name
        key = (segment, anchor)
        outside = self._outside.get(key)
        if outside is None:
            spans = self.msg.spans(anchor)
            outside = self._outside[key] = not any(
                a <= p < b for p in self._positions.get(segment, ()) for a, b in spans
            )
        return outside

    def spans(self, segment: str, within: Span | None = None) -> list[Span]:
        return self.msg.spans(segment, within)

    def find_segments(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[Segment]:
        if scopes:
            own = self._own(path, scopes)
            if own is not None:
                return own
            if not self._message_level(path.segment, scopes):
                return self.msg.find_segments(path, scopes)
        found = self._index.get(path.segment, [])
        if path.occurrence == 0:
            return found
        k = (path.occurrence or 1) - 1
        return [found[k]] if k < len(found) else []

    def values(self, path: Path, scopes: tuple[Span, ...] = ()) -> list[str | None]:
        """As :meth:`Message.values` (``path`` already parsed)."""
        if scopes:
            own = self._own(path, scopes)
            if own is not None:
                return self._values(path, own)
            if not self._message_level(path.segment, scopes):
                return self.msg.values(path, scopes)
        cached = self._cache.get(id(path))
        if cached is None:
            cached = self._cache[id(path)] = self._values(path, self.find_segments(path))
        return cached

    def _own(self, path: Path, scopes: tuple[Span, ...]) -> list[Segment] | None:
        """The innermost group's own anchor (``AL1-3`` inside the AL1 loop), else None.

        A span holds exactly one segment of its anchor's kind, at its start, so the scope
        walk would find just that one.
        """
        seg = self.msg.segments[scopes[-1][0]]
        if seg.name != path.segment:
            return None
        return [seg] if (path.occurrence or 1) == 1 or path.occurrence == 0 else []

    def _values(self, path: Path, segments: list[Segment]) -> list[str | None]:
        return values_in(segments, path, self.delimiters)
