"""The engine's one exception tree.

::

    EngineError
     ├── ConfigError        channels.yaml or a mapping is invalid (carries every problem found)
     ├── ParseError         an inbound message cannot be read (carries an HL7 table 0357 code
     │                      and the location, so it becomes a NACK's ERR segment)
     ├── MappingError       a mapping could not produce its records for one message
     │                      (missing required field, bad date, unknown table value)
     ├── DeliveryError      a destination refused or could not be reached (retryable or not)
     │    └── Deferred      not attempted: an earlier message of its ordering key failed first
     └── StoreUnavailable   the message store could not commit: the listener answers AE, never AA

Each maps to the protocol's own error answer: an HL7 NACK (AE/AR with ERR), later a FHIR
OperationOutcome or an X12 999.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a configuration or mapping file, located by file, line and key."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(EngineError):
    """The configuration (or a mapping it names) is invalid; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParseError(EngineError):
    """An inbound message cannot be read.

    ``code`` is the HL7 table 0357 error code (100 segment sequence, 101 required field missing,
    102 data type error, 200 unsupported message type, 203 unsupported version id, 207 internal
    error); ``segment``/``sequence``/``field`` locate the fault for ERR-2; ``reject`` says the
    answer is AR (the message can never be accepted) rather than AE.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 100,
        segment: str = "MSH",
        sequence: int = 1,
        field: int | None = None,
        reject: bool = True,
    ):
        super().__init__(message)
        self.code = code
        self.segment = segment
        self.sequence = sequence
        self.field = field
        self.reject = reject


class MappingError(EngineError):
    """A mapping could not produce its records for one message; the message goes to ERROR."""

    def __init__(self, message: str, *, mapping: str = "", field: str = "", path: str = ""):
        super().__init__(message)
        self.mapping = mapping
        self.field = field
        self.path = path


class DeliveryError(EngineError):
    """A destination failed. ``retryable`` is False when another attempt cannot succeed;
    ``retry_after``: seconds the receiver asked to wait before the next attempt (HTTP
    Retry-After), at least as long as the destination's backoff; None: the backoff alone."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class StoreUnavailable(EngineError):
    """The message store could not commit; nothing may be acknowledged as accepted."""


class Deferred(DeliveryError):
    """Not attempted: an earlier message of the same ordering key failed in the same batch.

    Returned (not raised) by a destination whose ``orders_its_batch`` is True; the message
    waits, without using up an attempt, until ``blocker`` is through.
    """

    def __init__(self, blocker: int):
        super().__init__(f"waits for message {blocker} (same ordering key)", retryable=True)
        self.blocker = blocker
