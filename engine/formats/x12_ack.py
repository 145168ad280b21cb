"""Our own X12 acknowledgements: the 999 (005010X231A1) and the TA1 interchange acknowledgement.

pyx12's 999 writer is not used: it fails on 835 input, labels its output X231 instead of X231A1, leaves IK303
empty, copies bad element values into IK404 and takes control numbers from the clock. Here:

* :func:`build_999` answers every functional group of an interchange with one ST 999 (AK1 = GS01/GS06/GS08),
  an AK2 ... IK5 for every transaction set, accepted ones included, IK3 with the loop id, IK4 without IK404
  (a bad value can be patient data), and AK9 with the counts. All the ST 999s travel in one FA group addressed
  back to the sender of the first group (GS02/GS03 swapped), inside an ISA with ISA05/06 and ISA07/08 swapped.
  ISA13 and GS06 come from the caller's durable counters, never from the clock.
* :func:`build_ta1` writes ISA, TA1 and IEA for an interchange that cannot be accepted (or, with
  ``accepted=True``, one acknowledged on request); with no readable ISA it still answers, with TA101 000000000.

The inbound's delimiters are reused (a 5010 repetition separator is chosen when the inbound had none); every
segment is followed by a line break unless the terminator already is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from engine.formats.x12_envelope import Delimiters, EnvelopeProblem, Interchange
from engine.formats.x12_validate import GroupResult

GUIDE_999 = "005010X231A1"
_DEFAULT = Delimiters("*", ":", "^", "~")


@dataclass(frozen=True)
class Envelope:
    """Who we are when we answer: our ISA05/ISA06 and the partner's ISA07/ISA08."""

    sender_qualifier: str
    sender: str
    receiver_qualifier: str
    receiver: str
    usage: str = "P"

    @classmethod
    def reply_to(cls, isa: list[str]) -> Envelope:
        """The envelope answering an inbound ISA (['ISA', ISA01..ISA16]): its receiver becomes our sender."""
        v = [e.strip() for e in isa] + [""] * (17 - len(isa))
        usage = v[15] if v[15] in ("P", "T", "I") else "P"
        return cls(v[7] or "ZZ", v[8] or "UNKNOWN", v[5] or "ZZ", v[6] or "UNKNOWN", usage)


def _delimiters(inbound: Delimiters | None) -> Delimiters:
    d = inbound or _DEFAULT
    rep = d.repetition
    if rep is None:
        rep = next(c for c in "^{}`|!~+" if c not in (d.element, d.component, d.segment))
    return Delimiters(d.element, d.component, rep, d.segment)


class _Writer:
    def __init__(self, d: Delimiters) -> None:
        self.d = d
        self.segments: list[str] = []

    def add(self, *elements: str) -> None:
        while len(elements) > 1 and elements[-1] == "":
            elements = elements[:-1]
        self.segments.append(self.d.element.join(elements))

    def isa(self, env: Envelope, control: int, at: datetime) -> None:
        self.add(
            "ISA",
            "00",
            " " * 10,
            "00",
            " " * 10,
            env.sender_qualifier.ljust(2)[:2],
            env.sender.ljust(15)[:15],
            env.receiver_qualifier.ljust(2)[:2],
            env.receiver.ljust(15)[:15],
            at.strftime("%y%m%d"),
            at.strftime("%H%M"),
            self.d.repetition or "^",
            "00501",
            f"{control % 1_000_000_000:09d}",
            "0",
            env.usage,
            self.d.component,
        )

    def text(self) -> str:
        term = self.d.segment if self.d.segment in "\r\n" else self.d.segment + "\n"
        return "".join(s + term for s in self.segments)


def _safe(value: str, limit: int) -> str:
    """An identifier echoed back from the inbound, trimmed and cut to the element's maximum length."""
    return value.strip()[:limit]


def build_999(
    interchange: Interchange,
    results: list[GroupResult],
    *,
    isa_control: int,
    gs_control: int,
    at: datetime,
    envelope: Envelope | None = None,
) -> str:
    """The 999 text answering every group in results (normally ``validate(interchange)``).

    An interchange without functional groups has nothing a 999 can answer (answer it with a TA1): ValueError.
    """
    if not results:
        raise ValueError("a 999 needs at least one functional group result")
    w = _Writer(_delimiters(interchange.delimiters))
    w.isa(envelope or Envelope.reply_to(interchange.isa), isa_control, at)
    first = results[0].group if results else None
    app_sender = _safe(first.receiver, 15) if first else ""
    app_receiver = _safe(first.sender, 15) if first else ""
    w.add(
        "GS",
        "FA",
        app_sender or (envelope.sender if envelope else interchange.receiver),
        app_receiver or (envelope.receiver if envelope else interchange.sender),
        at.strftime("%Y%m%d"),
        at.strftime("%H%M"),
        str(gs_control),
        "X",
        GUIDE_999,
    )
    for n, result in enumerate(results, start=1):
        start = len(w.segments)
        control = f"{n:04d}"
        w.add("ST", "999", control, GUIDE_999)
        g = result.group
        w.add("AK1", _safe(g.functional_id, 2), _safe(g.control, 9), _safe(g.version, 12))
        for tr in result.transactions:
            t = tr.transaction
            w.add("AK2", _safe(t.st_id, 3), _safe(t.control, 9), _safe(t.reference, 35))
            for seg in tr.segments:
                loop = (seg.loop_id or "")[:4]  # data element 447 is AN 1/4: 2010BA is reported as 2010
                w.add("IK3", seg.segment_id.strip()[:3], str(seg.position), loop, seg.code or "8")
                for el in seg.elements:
                    ref = f"{el.position}"
                    if el.component is not None or el.repeat is not None:
                        ref += f"{w.d.component}{el.component or ''}"
                    if el.repeat is not None:
                        ref += f"{w.d.component}{el.repeat}"
                    w.add("IK4", ref, el.element_ref or "", el.code)
            w.add("IK5", tr.status, *tr.codes[:5])
        received = len(g.transactions)
        included = g.ge_count.strip() if g.ge_count.strip().isdigit() else str(received)
        accepted = 0 if result.status == "R" else sum(tr.status in ("A", "E") for tr in result.transactions)
        w.add("AK9", result.status, included, str(received), str(accepted), *result.codes[:5])
        w.add("SE", str(len(w.segments) - start + 1), control)
    w.add("GE", str(len(results)), str(gs_control))
    w.add("IEA", "1", f"{isa_control % 1_000_000_000:09d}")
    return w.text()


def build_ta1(
    interchange: Interchange | None,
    isa: list[str] | None,
    problem: EnvelopeProblem,
    *,
    isa_control: int,
    at: datetime,
    accepted: bool = False,
    envelope: Envelope | None = None,
) -> str:
    """ISA + TA1 + IEA. TA104 is 'R', or with accepted=True 'A' (note 000) or 'E'; TA105 is problem.code."""
    inbound = interchange.isa if interchange is not None else isa
    w = _Writer(_delimiters(interchange.delimiters if interchange is not None else None))
    env = envelope or (Envelope.reply_to(inbound) if inbound else Envelope("ZZ", "UNKNOWN", "ZZ", "UNKNOWN"))
    w.isa(env, isa_control, at)
    v = [e.strip() for e in inbound] + [""] * 17 if inbound else [""] * 17
    control = v[13] if v[13].isdigit() and len(v[13]) <= 9 else "0"
    date = v[9] if len(v[9]) == 6 and v[9].isdigit() else at.strftime("%y%m%d")
    time = v[10] if len(v[10]) == 4 and v[10].isdigit() else at.strftime("%H%M")
    code = "R" if not accepted else "A" if problem.code == "000" else "E"
    w.add("TA1", f"{int(control):09d}", date, time, code, problem.code)
    w.add("IEA", "0", f"{isa_control % 1_000_000_000:09d}")
    return w.text()
