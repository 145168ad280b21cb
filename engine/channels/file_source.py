"""Source ``file``: a folder polled for X12 files (835 remittances, 837 claims).

A file is taken once it has stopped changing (same size and modification time on two polls,
and untouched for ``stable_seconds``), so a partner's upload still in progress is never read
half-written. Then, in this order:

1. the front end reads its interchanges (:mod:`engine.formats.x12_envelope`) and pyx12
   checks each transaction set against its implementation guide (:mod:`engine.formats.x12_validate`);
2. every transaction set is committed to the message store as one message (content: a
   self-contained interchange ISA, GS, ST ... SE, GE, IEA; control id ``ISA13/GS06/ST02``;
   sender ISA06). One rejected by the 999 (IK5 R), or in an interchange the TA1 rejects, is
   committed as ERROR with the reason and never processed; the accepted ones are dispatched;
3. the acknowledgments are written to ``outbox``: a 999 (005010X231A1) per interchange
   answering each functional group, or a TA1 for an interchange whose envelope is broken (and
   for a file in which no interchange can be found at all). Control numbers come from the
   message store's durable counter per partner pair (:mod:`engine.stores.control_numbers`);
4. the file moves to ``processed/``, or to ``error/`` with ``<name>.reason.txt`` beside it
   when any part of it was rejected.

A crash between 2 and 4 leaves the file in the inbox: it is read again, its transaction sets
are found to be duplicates (same sender, control numbers and content, within the channel's
``duplicate_window_hours``) and are not posted twice, and the acknowledgment is written again.
Files are read whole, up to ``max_file_bytes``; a larger file is refused (moved to error/).

A file of ``stream_above_bytes`` or more is never read whole (a clearinghouse's 837 batch is one
transaction set of tens of thousands of claims): the same steps run over the file read in blocks
(:mod:`engine.formats.x12_stream`), pyx12 checking the sets as they are read, and a set larger than
``max_message_bytes`` is committed as several messages (parts, control id ``ISA13/GS06/ST02/<n>``),
each a self-contained interchange mapped to that part's records, committed in batches as they are cut.
Nothing here logs file content: lines name the channel, the file name and counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.registry import ConnectorConfig
from engine.formats import x12_ack, x12_envelope, x12_stream, x12_validate
from engine.stores.control_numbers import next_control_numbers
from engine.stores.message_store import Inbound, Stored
from engine.stores.message_tables import PENDING, RECEIVED

log = logging.getLogger("engine.file")

COMMIT_BATCH = 500
"""Most messages committed in one store transaction when a big file's parts are committed."""
PROCESSING_WAIT_SECONDS = 30.0
"""Longest wait, in seconds, for a streamed file's previous batch of parts to be processed."""
NOT_ACKNOWLEDGED = ("FA",)
"""Functional groups never answered with a 999: acknowledgments (999, 997) themselves."""


class FileSourceConfig(ConnectorConfig):
    type: Literal["file"]
    inbox: str
    """Folder polled for files (relative paths are relative to the working directory)."""
    format: Literal["x12"] = "x12"
    outbox: str | None = None
    """Folder the 999 and TA1 acknowledgments are written to; None: none are written."""
    processed: str | None = None
    """Where a taken file goes (default: ``processed`` beside the inbox)."""
    error: str | None = None
    """Where a file with a rejected part goes, with a reason file (default: ``error`` beside the inbox)."""
    pattern: str = "*"
    """Glob of the file names taken (hidden files and names ending in .tmp/.part never are)."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often, in seconds, the inbox is listed."""
    stable_seconds: float = Field(1.0, ge=0)
    """Seconds a file must go unchanged before it is read."""
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Largest file read, in bytes."""
    stream_above_bytes: int = Field(16 * 1024 * 1024, ge=0)
    """Files of at least this many bytes are read in blocks, never whole (:mod:`engine.formats.x12_stream`)."""
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    """In a file read in blocks, a transaction set larger than this many bytes is stored as several
    messages (parts) of about this size, cut between subscriber (837) or claim payment (835) loops."""
    in_flight_bytes: int = Field(256 * 1024, ge=1024)
    """Most content, in bytes, of a streamed file's parts committed and not yet processed: the file is
    cut on as they are (a processed part's records take about 20 times its size in memory)."""

    def folder(self, which: str) -> Path:
        chosen = {"processed": self.processed, "error": self.error}[which]
        return Path(chosen) if chosen else Path(self.inbox).parent / which


@registry.source("file", FileSourceConfig)
class FileSource:
    """Polls a folder for X12 files; commits each transaction set, acknowledges, moves the file."""

    def __init__(self, channel, config: FileSourceConfig, receiver):
        self.channel = channel
        self.config = config
        self.committer = receiver.committer
        self.store = receiver.committer.store
        self._seen: dict[str, tuple[int, int]] = {}
        self._behind: int | None = None  # last message of the streamed batch before (-1: no longer waited for)
        self._task: asyncio.Task | None = None

    async def start(self) -> str:
        for p in (Path(self.config.inbox), self.config.folder("processed"), self.config.folder("error")):
            p.mkdir(parents=True, exist_ok=True)
        if self.config.outbox:
            Path(self.config.outbox).mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._poll())
        out = f", acknowledgments to {self.config.outbox}" if self.config.outbox else ""
        return f"file inbox {self.config.inbox} ({self.config.format}{out})"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            for path in self.ready():
                try:
                    await asyncio.to_thread(self.take, path)
                except Exception as exc:  # the store is away, a disk error: the file stays, tried next poll
                    log.error("channel=%s file=%s not taken: %s", self.channel.name, path.name, type(exc).__name__)
            await asyncio.sleep(self.config.poll_seconds)

    def ready(self) -> list[Path]:
        """Files in the inbox that have not changed since the last poll and for stable_seconds."""
        out, seen, now = [], {}, time.time()
        for p in sorted(Path(self.config.inbox).glob(self.config.pattern)):
            if p.name.startswith(".") or p.suffix in (".tmp", ".part") or not p.is_file():
                continue
            st = p.stat()
            mark = (st.st_size, st.st_mtime_ns)
            seen[p.name] = mark
            if self._seen.get(p.name) == mark and now - st.st_mtime >= self.config.stable_seconds:
                out.append(p)
        self._seen = seen
        return out

    # -- the answers, shared by both ways of taking a file -----------------------------------------
    def _ta1_for_data(self, problems: list, at: datetime) -> tuple[str, str]:
        """The TA1 for data in which no interchange could be found."""
        (n,) = next_control_numbers(self.store.engine, "", "")
        return ("ta1", x12_ack.build_ta1(None, None, problems[0], isa_control=n, at=at))

    def _ta1_for(self, ic, at: datetime) -> tuple[str, tuple[str, str]]:
        """Why interchange ``ic`` is refused, and its TA1."""
        why = "; ".join(f"TA1 {p.code}: {p.text}" for p in ic.problems)
        (n,) = next_control_numbers(self.store.engine, *_pair(ic))
        return why, ("ta1", x12_ack.build_ta1(ic, ic.isa, ic.problems[0], isa_control=n, at=at))

    def _999_for(self, ic, results: list, at: datetime) -> tuple[str, str] | None:
        """The 999 answering ``ic``'s groups (None when they are all acknowledgments themselves)."""
        answered = [gr for gr in results if gr.group.functional_id not in NOT_ACKNOWLEDGED]
        if not answered:
            return None
        (n,) = next_control_numbers(self.store.engine, *_pair(ic))
        return ("999", x12_ack.build_999(ic, answered, isa_control=n, gs_control=n, at=at))

    # -- one file ---------------------------------------------------------------------------------
    def take(self, path: Path) -> list[Stored]:
        """Read, validate, commit, acknowledge and move one file; returns what was committed."""
        cfg, name = self.channel.config, self.channel.name
        window = timedelta(hours=cfg.duplicate_window_hours) if cfg.duplicate_window_hours else None
        if path.stat().st_size > self.config.max_file_bytes:
            reason = f"file larger than max_file_bytes ({self.config.max_file_bytes})"
            stored = self.committer.submit_sync([Inbound(name, b"", message_type="X12", error=reason)])
            self._move(path, "error", [reason])
            return stored
        if path.stat().st_size >= self.config.stream_above_bytes:
            return self._take_streaming(path, window)
        data = path.read_bytes()
        interchanges, problems = x12_envelope.read_interchanges(data)
        items: list[Inbound] = []
        acks: list[tuple[str, str]] = []  # (suffix, text)
        rejected: list[str] = [f"TA1 {p.code}: {p.text}" for p in problems]
        at = datetime.now(UTC)
        if problems and not interchanges:
            items.append(Inbound(name, data, message_type="X12", error="; ".join(rejected)[:2000], peer=path.name))
            acks.append(self._ta1_for_data(problems, at))
        for ic in interchanges:
            if ic.problems:
                why, ack = self._ta1_for(ic, at)
                rejected.append(f"interchange {ic.control}: {why}")
                items.append(_inbound(name, ic, None, None, error=why, window=window, peer=path.name))
                acks.append(ack)
                continue
            results = x12_validate.validate(ic)
            for gr in results:
                for tr in gr.transactions:
                    error = _summary(tr) if tr.status == "R" else None
                    if error:
                        rejected.append(_rejected(ic, gr, tr, error))
                    items.append(
                        _inbound(name, ic, gr.group, tr.transaction, error=error, window=window, peer=path.name)
                    )
            if (ack999 := self._999_for(ic, results, at)) is not None:
                acks.append(ack999)
        stored = self.committer.submit_sync(items) if items else []
        for k, (suffix, text) in enumerate(acks, 1):
            self._write_ack(path, k, suffix, text)
        dups = sum(1 for s in stored if s.duplicate_of is not None)
        log.info(
            "channel=%s file=%s transaction sets=%d rejected=%d duplicates=%d",
            name,
            path.name,
            len(items),
            len(rejected),
            dups,
        )
        self._move(path, "error" if rejected else "processed", rejected)
        return stored

    def _take_streaming(self, path: Path, window: timedelta | None) -> list[Stored]:
        """:meth:`take` for a big file, which never sits in memory whole: one pass reads the envelopes, one
        feeds pyx12, one cuts the transaction sets into parts (:func:`x12_stream.parts`) committed
        ``COMMIT_BATCH`` at a time. A rejected interchange is stored as one ERROR message without content (the
        file in error/ holds it); a rejected set's parts are stored as ERROR, and dispatched never."""
        name, at, enc = self.channel.name, datetime.now(UTC), x12_stream.encoding_of(path)
        interchanges, problems = x12_stream.scan(path, enc)
        verdicts = x12_stream.validate(path, interchanges, enc)
        errors: list[Inbound] = []
        acks: list[tuple[str, str]] = []
        rejected: list[str] = [f"TA1 {p.code}: {p.text}" for p in problems]
        if problems and not interchanges:
            errors.append(Inbound(name, b"", message_type="X12", error="; ".join(rejected)[:2000], peer=path.name))
            acks.append(self._ta1_for_data(problems, at))
        why: dict[tuple[int, int, int], str | None] = {}
        for i, ic in enumerate(interchanges):
            if ic.problems:
                reason, ack = self._ta1_for(ic, at)
                rejected.append(f"interchange {ic.control}: {reason}")
                errors.append(_inbound(name, ic, None, None, error=reason, window=window, peer=path.name, content=""))
                acks.append(ack)
                continue
            for g, gr in enumerate(verdicts[i]):
                for t, tr in enumerate(gr.transactions):
                    why[i, g, t] = error = _summary(tr) if tr.status == "R" else None
                    if error:
                        rejected.append(_rejected(ic, gr, tr, error))
            if (ack999 := self._999_for(ic, verdicts[i], at)) is not None:
                acks.append(ack999)
        stored = self.committer.submit_sync(errors) if errors else []
        batch: list[Inbound] = []
        self._behind = None
        skip = {i for i, ic in enumerate(interchanges) if ic.problems}
        count = size = 0
        for part in x12_stream.parts(path, interchanges, self.config.max_message_bytes, enc, skip):
            ic = interchanges[part.interchange]
            group = ic.groups[part.group]
            tx = group.transactions[part.transaction]
            error = why.get((part.interchange, part.group, part.transaction))
            number = part.number if part.of_many else None
            batch.append(_inbound(name, ic, group, tx, error=error, window=window, peer=path.name,
                                  content=part.content, part=number))  # fmt: skip
            count, size = count + 1, size + len(batch[-1].content)
            if len(batch) >= COMMIT_BATCH or size >= self.config.in_flight_bytes // 2:
                stored += self._commit_behind(batch, path.name)
                batch, size = [], 0
        if batch:
            stored += self._commit_behind(batch, path.name)
        self._behind = None
        for k, (suffix, text) in enumerate(acks, 1):
            self._write_ack(path, k, suffix, text)
        dups = sum(1 for s in stored if s.duplicate_of is not None)
        log.info(
            "channel=%s file=%s streamed messages=%d rejected=%d duplicates=%d",
            name,
            path.name,
            count + len(errors),
            len(rejected),
            dups,
        )
        self._move(path, "error" if rejected else "processed", rejected)
        return stored

    def _commit_behind(self, batch: list[Inbound], file: str) -> list[Stored]:
        """Commit ``batch``, then wait until the batch committed before it is processed (its last message no
        longer pending), so at most two batches of a file wait in the queue. Waits ``PROCESSING_WAIT_SECONDS``
        at most: processing held up (a destination down) does not hold the file, it is then cut on unwaited."""
        stored = self.committer.submit_sync(batch)
        behind, self._behind = self._behind, next((s.id for s in reversed(stored) if s.status == RECEIVED), None)
        if behind is not None and behind > 0:
            deadline = time.monotonic() + PROCESSING_WAIT_SECONDS
            while (self.store.status_of(behind) or ("",))[0] in PENDING:
                if time.monotonic() > deadline:
                    log.warning("channel=%s file=%s processing is behind; cutting on", self.channel.name, file)
                    self._behind = -1  # waited once: the rest of the file is not waited for
                    break
                time.sleep(0.02)
        elif behind is not None:
            self._behind = -1
        return stored

    def _write_ack(self, source: Path, k: int, suffix: str, text: str) -> None:
        if not self.config.outbox:
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        write_atomically(Path(self.config.outbox) / f"{source.stem}.{stamp}.{k}.{suffix}", text.encode())

    def _move(self, path: Path, where: str, reasons: list[str]) -> None:
        folder = self.config.folder(where)
        target = folder / path.name
        if target.exists():
            target = folder / f"{path.stem}.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}{path.suffix}"
        if reasons:
            write_atomically(target.with_name(target.name + ".reason.txt"), ("\n".join(reasons) + "\n").encode())
        os.replace(path, target)
        _fsync_dir(folder)
        _fsync_dir(path.parent)


def _inbound(
    channel, ic, group, tr, *, error: str | None, window, peer: str, content: str | None = None, part: int | None = None
) -> Inbound:
    """One transaction set (or a whole rejected interchange, ``tr`` None) as a message; ``content`` when it
    is not the set's (or interchange's) own text, ``part`` the part number of a set stored in parts."""
    if tr is None:
        content, control, st_id, version = ic.text if content is None else content, ic.control, "X12", ic.version
    else:
        control = f"{ic.control}/{group.control}/{tr.control}" + (f"/{part}" if part is not None else "")
        content = x12_envelope.single(ic, group, tr) if content is None else content
        st_id, version = tr.st_id, (tr.reference or group.version)
    return Inbound(
        channel=channel,
        content=content.encode("utf-8"),
        charset="utf-8",
        message_type=st_id[:20],
        trigger=(group.functional_id if group else "")[:20],
        control_id=control[:200],
        sending_app=ic.sender[:200],
        sending_facility=ic.sender[:200],
        version=version[:20],
        ordering_key=f"x12|{ic.sender_qualifier}:{ic.sender}"[:200],
        error=error[:2000] if error else None,
        duplicate_window=window,
        peer=peer[:100],
    )


def _pair(ic) -> tuple[str, str]:
    """(us, the partner) for an answer to ``ic``: its receiver and its sender, qualifier:id."""
    return f"{ic.receiver_qualifier}:{ic.receiver}", f"{ic.sender_qualifier}:{ic.sender}"


def _rejected(ic, gr, tr, error: str) -> str:
    """A reason-file line for a rejected transaction set: its control numbers and why."""
    return f"transaction set {ic.control}/{gr.group.control}/{tr.transaction.control}: {error}"


def _summary(tr) -> str:
    """Why a transaction set was rejected, in words: codes and positions, never values."""
    parts = [f"IK5 R {','.join(tr.codes)}".rstrip()]
    for seg in tr.segments[:5]:
        elements = ", ".join(f"element {el.position}: {el.text}" for el in seg.elements[:3])
        loop = f" (loop {seg.loop_id})" if seg.loop_id else ""
        parts.append(f"{seg.text}{loop}" + (f"; {elements}" if elements else ""))
    if len(tr.segments) > 5:
        parts.append(f"{len(tr.segments) - 5} more segment error(s)")
    return "; ".join(parts)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing (temp file,
    fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
