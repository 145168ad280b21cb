"""Our own X12 837P (005010X222A1) professional claim writer, checked by pyx12 before it returns.

No well-kept Python library writes 837s: pyx12 reads, validates and acknowledges them but writes
none, and the packages that do are unmaintained or tied to one payer's companion guide. So the
segments are written here from typed dataclasses, and :func:`build_837p` runs the text through our
front end and pyx12 (:mod:`engine.formats.x12_envelope`, :mod:`engine.formats.x12_validate`)
before returning it: a file this returns has passed the implementation guide's checks, and one
that does not raises :class:`~engine.errors.DeliveryError` (``retryable=False``) listing pyx12's
findings (segment ids, positions and codes, never values).

One interchange, one functional group (HC), one transaction set (ST02 ``0001``)::

    ISA GS ST BHT
      1000A NM1*41 PER          submitter          1000B NM1*40      receiver
      2000A HL*1**20*1          billing provider   2010AA NM1*85 N3 N4 REF*EI
      2000B HL*n*1*22*0|1 SBR   per subscriber     2010BA NM1*IL [N3 N4 DMG]   2010BB NM1*PR
      2000C HL*m*n*23*0 PAT     the patient, when not the subscriber: 2010CA NM1*QC N3 N4 DMG
        2300 CLM HI             per claim          2310B NM1*82 (rendering, when given)
          2400 LX SV1 DTP*472 REF*6R                2420A NM1*82 (a line's own rendering provider)
    SE GE IEA

Delimiters ``*`` element, ``:`` component, ``^`` repetition, ``~`` segment (each followed by a line
break). Amounts are X12 R written from ``Decimal`` exactly (110.00 as ``110``, 32.50 as ``32.5``);
CLM02 is always the sum of the claim's SV102. Dates are D8 (CCYYMMDD). Text is folded to upper-case
ASCII, delimiters in it become spaces, and it is cut to the guide's maximum length.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from engine.errors import DeliveryError
from engine.formats.x12_envelope import read_interchanges
from engine.formats.x12_validate import validate

GUIDE = "005010X222A1"
TRANSACTION_CONTROL = "0001"
MAX_DIAGNOSES = 12
MAX_LINES = 50
ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}$")
"""An ICD-10-CM code as X12 carries it: no dot, upper case, 3 to 7 characters."""
PROCEDURE = re.compile(r"^[A-Z0-9]{5}$")
"""A CPT or HCPCS level II code."""


def npi_valid(npi: str) -> bool:
    """True for a 10-digit NPI whose check digit passes the Luhn check with the 80840 prefix."""
    if not re.fullmatch(r"\d{10}", npi or ""):
        return False
    total = 0
    for i, ch in enumerate(reversed("80840" + npi)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def icd10(code: str) -> str:
    """A diagnosis code as X12 writes it (``E11.9`` -> ``E119``); ValueError if it is not ICD-10-CM shaped."""
    out = code.replace(".", "").strip().upper()
    if not ICD10.match(out):
        raise ValueError("not an ICD-10-CM code")
    return out


@dataclass(frozen=True)
class Address:
    line1: str
    city: str
    state: str
    postal_code: str  # 5 or 9 digits (9 in 2010AA)
    line2: str = ""


@dataclass(frozen=True)
class Person:
    family_name: str
    given_name: str = ""
    middle_name: str = ""


@dataclass(frozen=True)
class Submitter:
    name: str
    id: str  # 1000A NM109 (46: electronic transmitter id, as the receiver assigned it)
    contact_name: str
    contact_phone: str  # 10 digits


@dataclass(frozen=True)
class Receiver:
    name: str
    id: str


@dataclass(frozen=True)
class BillingProvider:
    name: str
    npi: str
    tax_id: str  # EIN, 9 digits
    address: Address  # postal_code: the 9-digit ZIP 2010AA requires

    def __post_init__(self) -> None:
        if not npi_valid(self.npi):
            raise ValueError("billing provider NPI fails the NPI check")
        if not re.fullmatch(r"\d{9}", self.tax_id):
            raise ValueError("billing provider tax id is not a 9-digit EIN")
        if not re.fullmatch(r"\d{9}", self.address.postal_code):
            raise ValueError("billing provider ZIP must have 9 digits (2010AA N403)")


@dataclass(frozen=True)
class Envelope:
    """ISA05/06 and ISA07/08 (GS02/GS03 are the ids), the submitter, the receiver, the billing provider."""

    sender_qualifier: str
    sender_id: str
    receiver_qualifier: str
    receiver_id: str
    submitter: Submitter
    receiver: Receiver
    billing_provider: BillingProvider


@dataclass(frozen=True)
class Subscriber:
    member_id: str
    name: Person
    group_number: str = ""
    payer_responsibility: str = "P"  # SBR01: P, S, T
    claim_filing: str = "CI"  # SBR09: CI commercial, MB Medicare B, MC Medicaid, BL, HM ...
    birth_date: date | None = None  # 2010BA DMG and N3/N4: required when the subscriber is the patient
    sex: str = "U"  # F, M, U
    address: Address | None = None


@dataclass(frozen=True)
class Payer:
    name: str
    payer_id: str


@dataclass(frozen=True)
class Patient:
    """The patient when not the subscriber (2000C/2010CA); ``relationship`` is PAT01 (01 spouse, 19 child ...)."""

    name: Person
    birth_date: date
    sex: str
    address: Address
    relationship: str


@dataclass(frozen=True)
class Provider:
    """A rendering provider (a person): 2310B, or 2420A on a line."""

    npi: str
    name: Person


@dataclass(frozen=True)
class ServiceLine:
    procedure_code: str  # CPT/HCPCS (SV101-2, qualifier HC)
    charge: Decimal  # SV102, in dollars
    service_date: date  # DTP*472
    diagnosis_pointers: tuple[int, ...]  # SV107: 1-4 positions (1-based) in the claim's diagnoses
    line_control_number: str  # REF*6R, returned by the payer in the 835
    modifiers: tuple[str, ...] = ()  # up to 4
    units: Decimal = Decimal(1)  # SV104, unit type UN
    rendering_provider: Provider | None = None  # 2420A, when not the claim's


@dataclass(frozen=True)
class Claim:
    patient_control_number: str  # CLM01, 1-20 characters
    diagnoses: tuple[str, ...]  # ICD-10-CM, principal first (HI ABK, then ABF), 1-12
    lines: tuple[ServiceLine, ...]  # 1-50
    place_of_service: str = "11"
    frequency_code: str = "1"  # 1 original
    rendering_provider: Provider | None = None

    @property
    def total_charge(self) -> Decimal:
        """CLM02: the sum of the lines' charges, in dollars."""
        return sum((line.charge for line in self.lines), Decimal(0))

    def __post_init__(self) -> None:
        pcn = self.patient_control_number
        if not 1 <= len(pcn) <= 20 or _text(pcn, 20) != pcn.upper():
            raise ValueError("patient control number must be 1-20 plain characters")
        if not 1 <= len(self.diagnoses) <= MAX_DIAGNOSES or not 1 <= len(self.lines) <= MAX_LINES:
            raise ValueError(f"a claim has 1-{MAX_DIAGNOSES} diagnoses and 1-{MAX_LINES} lines")
        for d in self.diagnoses:
            icd10(d)
        for n, line in enumerate(self.lines, 1):
            ptrs = line.diagnosis_pointers
            if not 1 <= len(ptrs) <= 4 or not all(1 <= p <= len(self.diagnoses) for p in ptrs):
                raise ValueError(f"line {n}: 1-4 diagnosis pointers into the claim's diagnoses")
            if len(line.modifiers) > 4 or not all(re.fullmatch(r"[A-Z0-9]{2}", m) for m in line.modifiers):
                raise ValueError(f"line {n}: up to 4 modifiers of 2 letters or digits")
            if not PROCEDURE.match(line.procedure_code) or line.charge < 0 or line.units <= 0:
                raise ValueError(f"line {n}: procedure code, charge or units invalid")


@dataclass(frozen=True)
class SubscriberClaims:
    """One 2000B loop: a subscriber at a payer, the patient when a dependent, and the patient's claims."""

    subscriber: Subscriber
    payer: Payer
    claims: Sequence[Claim]
    patient: Patient | None = None  # None: the subscriber is the patient (SBR02 18)


def amount(value: Decimal) -> str:
    """X12 R: exact, no exponent, no trailing zeros (``Decimal('110.00')`` -> ``110``)."""
    return format(value.normalize(), "f")


def _text(value: str | None, limit: int) -> str:
    folded = unicodedata.normalize("NFKD", value or "").encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[*:^~\x00-\x1f\x7f]", " ", folded)
    return " ".join(cleaned.split()).upper()[:limit].strip()


def _seg(*elements: str) -> str:
    return "*".join(elements).rstrip("*") + "~"


def _name(entity: str, person: Person, qualifier: str = "", ident: str = "") -> str:
    p = person
    names = (_text(p.family_name, 60), _text(p.given_name, 35), _text(p.middle_name, 25))
    return _seg("NM1", entity, "1", *names, "", "", qualifier, ident)


def _place(address: Address) -> list[str]:
    a = address
    zip_code = re.sub(r"\D", "", a.postal_code)
    return [
        _seg("N3", _text(a.line1, 55), _text(a.line2, 55)),
        _seg("N4", _text(a.city, 30), _text(a.state, 2), zip_code),
    ]


def _demographics(birth: date, sex: str) -> str:
    return _seg("DMG", "D8", f"{birth:%Y%m%d}", sex if sex in ("F", "M") else "U")


def _claim(claim: Claim, billing_npi: str) -> list[str]:
    pos = claim.place_of_service
    total = amount(claim.total_charge)
    # CLM06 signature on file, 07 assigned, 08 benefits assigned, 09 release of information
    out = [
        _seg("CLM", claim.patient_control_number, total, "", "", f"{pos}:B:{claim.frequency_code}", "Y", "A", "Y", "Y")
    ]
    codes = [icd10(d) for d in claim.diagnoses]
    out.append(_seg("HI", *(f"{'ABK' if i == 0 else 'ABF'}:{c}" for i, c in enumerate(codes))))
    rendering = claim.rendering_provider
    if rendering is not None and rendering.npi != billing_npi:
        out.append(_name("82", rendering.name, "XX", rendering.npi))
    for n, line in enumerate(claim.lines, 1):
        procedure = ":".join(("HC", line.procedure_code, *line.modifiers))
        pointers = ":".join(str(p) for p in line.diagnosis_pointers)
        out += [
            _seg("LX", str(n)),
            _seg("SV1", procedure, amount(line.charge), "UN", amount(line.units), "", "", pointers),
            _seg("DTP", "472", "D8", f"{line.service_date:%Y%m%d}"),
            _seg("REF", "6R", _text(line.line_control_number, 50)),
        ]
        own = line.rendering_provider
        if own is not None and own.npi != (rendering.npi if rendering else billing_npi):
            out.append(_name("82", own.name, "XX", own.npi))
    return out


def _transaction(envelope: Envelope, groups: Sequence[SubscriberClaims], reference: str, at: datetime) -> list[str]:
    sub, rec, bp = envelope.submitter, envelope.receiver, envelope.billing_provider
    phone = re.sub(r"\D", "", sub.contact_phone)
    segs = [
        _seg("ST", "837", TRANSACTION_CONTROL, GUIDE),
        _seg("BHT", "0019", "00", reference, f"{at:%Y%m%d}", f"{at:%H%M}", "CH"),
        _seg("NM1", "41", "2", _text(sub.name, 60), "", "", "", "", "46", _text(sub.id, 80)),
        _seg("PER", "IC", _text(sub.contact_name, 60), "TE", phone),
        _seg("NM1", "40", "2", _text(rec.name, 60), "", "", "", "", "46", _text(rec.id, 80)),
        _seg("HL", "1", "", "20", "1"),
        _seg("NM1", "85", "2", _text(bp.name, 60), "", "", "", "", "XX", bp.npi),
        *_place(bp.address),
        _seg("REF", "EI", bp.tax_id),
    ]
    hl = 1
    for g in groups:
        hl += 1
        parent, s = hl, g.subscriber
        segs.append(_seg("HL", str(parent), "1", "22", "0" if g.patient is None else "1"))
        group_number = _text(s.group_number, 50)
        segs.append(
            _seg(
                "SBR",
                s.payer_responsibility,
                "18" if g.patient is None else "",
                group_number,
                *[""] * 5,
                s.claim_filing,
            )
        )
        segs.append(_name("IL", s.name, "MI", _text(s.member_id, 80)))
        if g.patient is None:
            if s.address is None or s.birth_date is None:
                raise ValueError("a subscriber who is the patient needs an address and a birth date")
            segs += [*_place(s.address), _demographics(s.birth_date, s.sex)]
        segs.append(_seg("NM1", "PR", "2", _text(g.payer.name, 60), "", "", "", "", "PI", _text(g.payer.payer_id, 80)))
        if g.patient is not None:
            hl += 1
            p = g.patient
            segs += [_seg("HL", str(hl), str(parent), "23", "0"), _seg("PAT", p.relationship)]
            segs += [_name("QC", p.name), *_place(p.address), _demographics(p.birth_date, p.sex)]
        for claim in g.claims:
            segs += _claim(claim, bp.npi)
    segs.append(_seg("SE", str(len(segs) + 1), TRANSACTION_CONTROL))
    return segs


def build_837p(
    envelope: Envelope,
    groups: Sequence[SubscriberClaims],
    *,
    isa_control: int,
    gs_control: int,
    at: datetime,
    usage: str = "P",
) -> str:
    """The 837P interchange for ``groups`` (in order), validated against 005010X222A1.

    ``isa_control`` (ISA13/IEA02, 1-999999999) and ``gs_control`` (GS06/GE02) come from the
    caller's durable counter; ``at`` is written as the interchange's and BHT's date and time;
    ``usage`` is ISA15, P (production) or T (test). BHT03 is ISA13. Raises ValueError for
    arguments that break the guide's rules before any text is written (a claim without lines,
    no groups), DeliveryError (``retryable=False``) when pyx12 finds the text invalid.
    """
    if not groups or not all(g.claims for g in groups):
        raise ValueError("an 837P needs at least one subscriber, each with at least one claim")
    if usage not in ("P", "T") or not 1 <= isa_control <= 999_999_999 or gs_control < 1:
        raise ValueError("usage is P or T; control numbers are positive (ISA13 up to 9 digits)")
    e = envelope
    isa13 = f"{isa_control:09d}"
    sender, receiver = _text(e.sender_id, 15), _text(e.receiver_id, 15)
    isa = [
        "ISA", "00", " " * 10, "00", " " * 10, e.sender_qualifier, sender.ljust(15), e.receiver_qualifier,
        receiver.ljust(15), f"{at:%y%m%d}", f"{at:%H%M}", "^", "00501", isa13, "0", usage, ":",
    ]  # fmt: skip
    segs = [
        "*".join(isa) + "~",
        _seg("GS", "HC", sender, receiver, f"{at:%Y%m%d}", f"{at:%H%M}", str(gs_control), "X", GUIDE),
        *_transaction(e, groups, isa13, at),
        _seg("GE", "1", str(gs_control)),
        _seg("IEA", "1", isa13),
    ]
    text = "\n".join(segs) + "\n"
    problems = problems_of(text)
    if problems:
        raise DeliveryError(
            f"837P interchange {isa13} does not validate against {GUIDE}: " + "; ".join(problems), retryable=False
        )
    return text


def problems_of(text: str) -> list[str]:
    """Every envelope and pyx12 finding on an 837 text, as plain texts (ids and positions, no values);
    [] when every group and transaction set is accepted without errors."""
    interchanges, stray = read_interchanges(text.encode("ascii", "replace"))
    out = [p.text for p in stray] + [f"TA1 {p.code}: {p.text}" for ic in interchanges for p in ic.problems]
    for ic in interchanges:
        for gr in validate(ic):
            if gr.status != "A":
                out.append(f"group {gr.group.control}: {gr.status} " + ",".join(gr.codes))
            for tr in gr.transactions:
                out += [s.text for s in tr.segments] + [e.text for s in tr.segments for e in s.elements]
                if tr.status != "A" and not tr.segments:
                    out.append(f"transaction set {tr.transaction.control}: {tr.status} " + ",".join(tr.codes))
    return out
