"""``engine claims build``: the PM store's unbilled charge lines -> 837P claims, each charge billed once.

Selection: a charge (``pm.charge``) is billed when it is a CG line, unbilled (``claimed_in`` NULL),
has a procedure code, an amount (0 or more, USD), a service date and 1+ ICD-10-CM diagnoses, and no
CD credit of its source names it (``reversal_of``; any credit naming it reverses it whole). Its
patient must have a registration with name, birth date and address, and a coverage in effect on
the service date: priority 1, else the lowest priority (two coverages tied for first: not billed).
Nothing is guessed: a charge that fails any of this is left unbilled and reported by its
transaction id with the reason, on every run until it is fixed (a reversed one for good).

Claims: one per patient (``mrn_issuer``, ``mrn``) + visit number (the service date when the charge
has none) + coverage, split when it would pass 50 lines or 12 diagnoses (each line points at its
first 4). Lines are in charge-id order; a claim line's charge is the claim's charge at the same
place (``claimed_in`` = CLM01, ``claimed_by`` = the billing NPI). Patient control numbers come
from the durable counter (``"claims"``, billing NPI) as ``C000000123``; ISA13 = GS06 from the one
for the interchange's (``qualifier:sender``, ``qualifier:receiver``) pair, shared with the 999s.

Order and failure: (1) read the charges, registrations and coverages, holding no lock; (2) build
the 837P text, which pyx12 validates (:func:`engine.formats.x12_837.build_837p`); (3) ONE PM-store
transaction marks each claim's charges with ``UPDATE ... WHERE claimed_in IS NULL`` (and still
unreversed and unchanged since read) and inserts the ``claim`` and ``claim_line`` rows; when one
claim's update matches fewer rows than it has charges, another run (or a new credit) came first:
everything rolls back and 1-3 run again, up to ``ATTEMPTS`` times. So a charge billed once stays
billed once, also across concurrent ``engine claims build`` processes. (4) the file is written
atomically to the outbox as ``<ISA13>.837``. A crash before (3) leaves only gaps in the control
numbers. A crash between (3) and (4) leaves claims committed with no file: nothing is billed
again, and the claims carry the interchange control number, so ``engine claims build --resend
ISA13`` (:func:`resend`) writes that file from the stored claims. The resent file is the same,
byte for byte, unless the patient's registration, the coverage or the ``billing:`` settings
changed in between (then it carries today's values, with the same claims, amounts and numbers).

Not handled here: a credit for a charge already billed (that needs a void or replacement claim).
Nothing logged or returned names a patient: results are counts, control numbers and charge ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.engine import Connection, Engine

from engine.channels.file_source import write_atomically
from engine.config import BillingConfig
from engine.errors import DeliveryError
from engine.formats import x12_837 as x
from engine.stores.control_numbers import next_control_numbers
from engine.stores.db import write_transaction
from engine.stores.records_store import RecordStore

log = logging.getLogger("engine.billing")

ATTEMPTS = 5
MAX_CLAIMS = 5000
"""Claims per file at most (the guide's advice per transaction set); the rest wait for the next run."""
RELATIONSHIP = {"self": "18", "spouse": "01", "child": "19", "life-partner": "53", "employer": "20", "unknown": "21"}
RELATIONSHIP |= dict.fromkeys(("parent", "mother", "father", "guardian", "other"), "G8")
RELATIONSHIP |= {code: code for code in ("01", "18", "19", "20", "21", "53", "G8")}
"""The PM store's subscriber relationship (tables/relationship.yaml) -> SBR02 18 (self) / PAT01."""


@dataclass(frozen=True)
class Skipped:
    transaction_id: str
    transaction_source: str
    reason: str  # names fields and positions, never values


@dataclass
class BuildResult:
    """What a run did: counts and control numbers, no patient data. ``file`` is None when nothing was billed
    (or on a dry run); ``waiting`` counts claims left for the next run past ``MAX_CLAIMS``."""

    claims: int = 0
    lines: int = 0
    total_charge: Decimal = Decimal(0)
    skipped: list[Skipped] = field(default_factory=list)
    file: Path | None = None
    interchange_control: str | None = None
    waiting: int = 0
    dry_run: bool = False
    text: str | None = None
    """The 837 written (or, with no outbox, to be delivered by the caller: the claims channel)."""


@dataclass
class _Draft:
    registration: dict[str, Any]
    coverage: dict[str, Any]
    charges: list[dict[str, Any]] = field(default_factory=list)
    diagnoses: list[str] = field(default_factory=list)


class _Lost(Exception):
    """A claim's charges were claimed, reversed or changed by someone else after they were read."""


def build_claims(
    pm: RecordStore,
    message_store_engine: Engine,
    settings: BillingConfig,
    outbox: Path | None,
    *,
    at: datetime,
    dry_run: bool = False,
) -> BuildResult:
    """Bill every billable charge once: claims committed to ``pm``, then ``outbox/<ISA13>.837`` written.

    ``at`` is the file's date and time. ``dry_run`` builds and validates the file with placeholder
    numbers and writes nothing (no control number taken). Raises DeliveryError when the file does
    not validate (nothing committed) or cannot be written after the commit (the text says to --resend).
    """
    npi = settings.billing_provider.npi
    isa: int | None = None  # taken once there is something to bill; kept across attempts (not used yet)
    pcns: list[str] = []
    for _attempt in range(ATTEMPTS):
        drafts, skipped = _select(pm)
        result = BuildResult(skipped=skipped, dry_run=dry_run, waiting=max(len(drafts) - MAX_CLAIMS, 0))
        drafts = drafts[:MAX_CLAIMS]
        if not drafts:
            return result
        if dry_run:
            isa, pcns = 1, [f"C{k:09d}" for k in range(1, len(drafts) + 1)]
        else:
            isa = isa or _isa_number(message_store_engine, settings)
            more = len(drafts) - len(pcns)
            pcns += [f"C{n:09d}" for n in next_control_numbers(message_store_engine, "claims", npi, more)]
        claims, lines = _rows(settings, drafts, pcns, isa, at)
        text = _interchange(settings, claims, lines, _people(drafts), isa, at)
        result.claims, result.lines = len(claims), len(lines)
        result.total_charge = sum((c["total_charge"] for c in claims), Decimal(0))
        if dry_run:
            return result
        result.interchange_control = f"{isa:09d}"
        try:
            _commit(pm, claims, lines, drafts)
        except _Lost:
            log.info("claims build: charges of interchange %09d were billed or changed meanwhile; reading again", isa)
            continue
        result.text = text
        if outbox is not None:  # else the caller delivers it (engine/channels/claims_source.py)
            result.file = _write(outbox, f"{isa:09d}", text)
        log.info("claims build: interchange %09d: %d claim(s), %d line(s) written", isa, len(claims), len(lines))
        return result
    raise DeliveryError(
        f"claims build: charges kept changing under {ATTEMPTS} attempts; nothing billed", retryable=True
    )


def resend(pm: RecordStore, settings: BillingConfig, outbox: Path, interchange_control: str) -> BuildResult:
    """Write ``outbox/<ISA13>.837`` again from the claims stored with that interchange control number."""
    isa13 = interchange_control.strip().zfill(9)
    c, ln = pm.table("claim"), pm.table("claim_line")
    npi = settings.billing_provider.npi
    mine = and_(c.c.interchange_control == isa13, c.c.origin == "built", c.c.billing_provider_id == npi)
    with pm.engine.connect() as conn:
        claims = [dict(r) for r in conn.execute(select(c).where(mine).order_by(c.c.id)).mappings()]
        if not claims:
            raise DeliveryError(f"no claims were built in interchange {isa13} by NPI {npi}", retryable=False)
        pcns = [r["patient_control_number"] for r in claims]
        q = select(ln).where(ln.c.patient_control_number.in_(pcns), ln.c.billing_provider_id == npi)
        lines = [dict(r) for r in conn.execute(q.order_by(ln.c.patient_control_number, ln.c.line_number)).mappings()]
        people = _People({}, {}, _rendering_names(_charges(conn, pm, pcns, npi)))
        for r in claims:
            reg = _registration(conn, pm, r["mrn_issuer"], r["mrn"])
            cov = next((c for c in _coverages(conn, pm, r["mrn_issuer"], r["mrn"]) if _cov_key(c) == _cov_key(r)), None)
            if reg is None or cov is None:
                raise DeliveryError(f"claim {r['patient_control_number']}: its registration or coverage is gone")
            people.registrations[(r["mrn_issuer"], r["mrn"])], people.coverages[_cov_key(r)] = reg, cov
    at = datetime.strptime(claims[0]["submitted_at"], "%Y%m%d%H%M")
    text = _interchange(settings, claims, lines, people, int(isa13), at)
    total = sum((r["total_charge"] for r in claims), Decimal(0))
    return BuildResult(len(claims), len(lines), total, [], _write(outbox, isa13, text), isa13)


# -- selection ---------------------------------------------------------------------------------------


def _select(pm: RecordStore) -> tuple[list[_Draft], list[Skipped]]:
    """The claims to build now (as drafts, in file order) and the charges left out with their reasons."""
    t = pm.table("charge")
    skipped: list[Skipped] = []
    drafts: dict[tuple, _Draft] = {}
    with pm.engine.connect() as conn:
        credits = conn.execute(
            select(t.c.transaction_source, t.c.reversal_of, t.c.transaction_id).where(
                t.c.transaction_type == "CD", t.c.reversal_of.is_not(None)
            )
        ).all()
        reversed_by = {(src or "", of): cd for src, of, cd in credits}
        q = select(t).where(t.c.transaction_type == "CG", t.c.claimed_in.is_(None)).order_by(t.c.id)
        charges = [dict(r) for r in conn.execute(q).mappings()]
        patients: dict[tuple[str, str], tuple[dict | None, list[dict]]] = {}
        for ch in charges:
            source = ch["transaction_source"] or ""
            cd = reversed_by.get((source, ch["transaction_id"]))
            why = f"reversed by credit {cd}" if cd else _charge_problem(ch)
            if why is None:
                who = (ch["mrn_issuer"] or "", ch["mrn"])
                if who not in patients:
                    patients[who] = (_registration(conn, pm, *who), _coverages(conn, pm, *who))
                reg, covs = patients[who]
                why, cov = _payer_problem(reg, covs, ch["service_date"])
            if why is not None:
                skipped.append(Skipped(ch["transaction_id"], source, why))
                continue
            visit = ch["visit_number"] or ch["service_date"].isoformat()
            key = (*who, cov["payer_id"], cov["member_id"], visit)
            drafts.setdefault(key, _Draft(reg, cov)).charges.append(ch)  # type: ignore[arg-type]
    out: list[_Draft] = []
    for draft in drafts.values():
        out += _split(draft)
    out.sort(key=lambda d: (d.registration["mrn_issuer"], d.registration["mrn"], d.coverage["id"], d.charges[0]["id"]))
    return out, skipped


def _charge_problem(ch: dict[str, Any]) -> str | None:
    """Why a charge line cannot be a claim line as it stands, or None."""
    if not ch["procedure_code"] or not x.PROCEDURE.match(ch["procedure_code"]):
        return "no CPT/HCPCS procedure code (FT1-25)"
    if ch["amount"] is None or ch["amount"] < 0:
        return "no amount, or a negative one (FT1-11)"
    if (ch["currency"] or "USD") != "USD":
        return "amount not in USD (FT1-11.2)"
    if ch["quantity"] is not None and ch["quantity"] <= 0:
        return "quantity not positive (FT1-10)"
    if ch["service_date"] is None:
        return "no service date (FT1-4)"
    modifiers = json.loads(ch["modifiers"] or "[]")
    if len(modifiers) > 4 or not all(isinstance(m, str) and len(m) == 2 and m.isalnum() for m in modifiers):
        return "more than 4 modifiers, or one not of 2 letters or digits (FT1-26)"
    diagnoses = json.loads(ch["diagnoses"] or "[]")
    if not diagnoses:
        return "no diagnosis (FT1-19)"
    for n, code in enumerate(diagnoses[:4], 1):
        try:
            x.icd10(str(code))
        except ValueError:
            return f"diagnosis {n} is not an ICD-10-CM code (FT1-19)"
    npi = ch["rendering_provider"]
    if npi and not x.npi_valid(npi):
        return "rendering provider id is not an NPI (FT1-20)"
    if npi and len((ch["rendering_provider_name"] or "").split(", ")) != 2:
        return "rendering provider has no family and given name (FT1-20)"
    return None


def _payer_problem(reg: dict | None, covs: list[dict], on: date) -> tuple[str | None, dict]:
    """(why the patient cannot be billed, or None; the coverage to bill)."""
    if reg is None:
        return "patient has no registration in the PM store", {}
    if reg["merged_into"]:
        return "patient's registration was merged into another", {}
    missing = [k for k in ("family_name", "given_name", "birth_date", "address_line1", "city") if not reg[k]]
    missing += [] if _state(reg["state"]) else ["state"]
    missing += [] if _zip(reg["postal_code"]) else ["postal_code (5 or 9 digits)"]
    if missing:
        return "registration lacks " + ", ".join(missing), {}
    active = [
        c
        for c in covs
        if (c["effective_date"] is None or c["effective_date"] <= on)
        and (c["expiration_date"] is None or on <= c["expiration_date"])
    ]
    if not active:
        return "patient has no coverage in effect on the service date", {}
    rank = sorted(active, key=lambda c: (c["priority"] is None, c["priority"] or 0))
    if len(rank) > 1 and rank[1]["priority"] == rank[0]["priority"]:
        return "two coverages tie for primary (IN1-1)", {}
    cov = rank[0]
    relationship = RELATIONSHIP.get(cov["subscriber_relationship"] or "")
    if relationship is None:
        return "coverage has no known subscriber relationship (IN1-17)", {}
    if not cov["payer_name"]:
        return "coverage has no payer name (IN1-4)", {}
    if relationship != "18" and not 2 <= len((cov["subscriber_name"] or "").split()) <= 3:
        return "coverage's subscriber name is not given [middle] family (IN1-16)", {}
    return None, cov


def _split(draft: _Draft) -> list[_Draft]:
    """One claim's charges as claims of at most 50 lines and 12 diagnoses (a line points at its first 4)."""
    out = [_Draft(draft.registration, draft.coverage)]
    for ch in draft.charges:
        codes = [x.icd10(str(c)) for c in json.loads(ch["diagnoses"])[:4]]
        new = [c for c in dict.fromkeys(codes) if c not in out[-1].diagnoses]
        if len(out[-1].charges) == x.MAX_LINES or len(out[-1].diagnoses) + len(new) > x.MAX_DIAGNOSES:
            out.append(_Draft(draft.registration, draft.coverage))
            new = list(dict.fromkeys(codes))
        out[-1].charges.append(ch)
        out[-1].diagnoses += new
    return out


def _registration(conn: Connection, pm: RecordStore, issuer: str, mrn: str) -> dict | None:
    t = pm.table("registration")
    row = conn.execute(select(t).where(t.c.mrn == mrn, t.c.mrn_issuer == issuer)).mappings().first()
    return dict(row) if row else None


def _coverages(conn: Connection, pm: RecordStore, issuer: str, mrn: str) -> list[dict]:
    t = pm.table("coverage")
    rows = conn.execute(select(t).where(t.c.mrn == mrn, t.c.mrn_issuer == issuer).order_by(t.c.id)).mappings()
    return [dict(r) for r in rows]


def _charges(conn: Connection, pm: RecordStore, pcns: list[str], npi: str) -> list[dict]:
    t = pm.table("charge")
    q = select(t).where(t.c.claimed_in.in_(pcns), t.c.claimed_by == npi).order_by(t.c.id)
    return [dict(r) for r in conn.execute(q).mappings()]


def _state(value: str | None) -> str:
    v = (value or "").strip().upper()
    return v if len(v) == 2 and v.isalpha() else ""


def _zip(value: str | None) -> str:
    v = (value or "").replace("-", "").strip()
    return v if v.isdigit() and len(v) in (5, 9) else ""


def _cov_key(row: dict) -> tuple:
    return (row["mrn_issuer"], row["mrn"], row["payer_id"], row["member_id"])


# -- rows, text and commit ---------------------------------------------------------------------------


@dataclass
class _People:
    """Registrations by (issuer, mrn), coverages by (issuer, mrn, payer, member), rendering names by NPI."""

    registrations: dict[tuple, dict]
    coverages: dict[tuple, dict]
    rendering: dict[str, str]


def _people(drafts: list[_Draft]) -> _People:
    regs = {(d.registration["mrn_issuer"], d.registration["mrn"]): d.registration for d in drafts}
    covs = {_cov_key(d.coverage): d.coverage for d in drafts}
    charges = sorted((ch for d in drafts for ch in d.charges), key=lambda ch: ch["id"])
    return _People(regs, covs, _rendering_names(charges))


def _rendering_names(charges: list[dict]) -> dict[str, str]:
    names: dict[str, str] = {}
    for ch in charges:
        if ch["rendering_provider"]:
            names.setdefault(ch["rendering_provider"], ch["rendering_provider_name"])
    return names


def _rows(settings: BillingConfig, drafts: list[_Draft], pcns: list[str], isa: int, at: datetime):
    """The ``claim`` and ``claim_line`` rows of the drafts (PCNs in order); what the file is written from."""
    bp, now = settings.billing_provider, datetime.now(UTC)
    claims, lines = [], []
    for draft, pcn in zip(drafts, pcns):
        reg, cov = draft.registration, draft.coverage
        relationship = RELATIONSHIP[cov["subscriber_relationship"]]
        patient_name = f"{reg['family_name']}, {reg['given_name']}"
        dates = [ch["service_date"] for ch in draft.charges]
        total = sum((ch["amount"] for ch in draft.charges), Decimal(0))
        claims.append(
            dict(
                patient_control_number=pcn, billing_provider_id=bp.npi, claim_type="P", origin="built",
                mrn=reg["mrn"], mrn_issuer=reg["mrn_issuer"], billing_provider_name=bp.name,
                billing_provider_tax_id=bp.ein, payer_id=cov["payer_id"], payer_name=cov["payer_name"],
                member_id=cov["member_id"], subscriber_name=cov["subscriber_name"] or patient_name,
                patient_name=patient_name, patient_birth_date=reg["birth_date"], patient_sex=reg["sex"],
                relationship=relationship, payer_responsibility="P", total_charge=total,
                place_of_service=settings.place_of_service, frequency_code="1", statement_from=min(dates),
                statement_to=max(dates), principal_diagnosis=draft.diagnoses[0], diagnoses=list(draft.diagnoses),
                rendering_provider=draft.charges[0]["rendering_provider"], submitted_at=f"{at:%Y%m%d%H%M}",
                interchange_control=f"{isa:09d}", group_control=str(isa), transaction_control=x.TRANSACTION_CONTROL,
                updated_at=now,
            )
        )  # fmt: skip
        for n, ch in enumerate(draft.charges, 1):
            codes = [x.icd10(str(c)) for c in json.loads(ch["diagnoses"])[:4]]
            lines.append(
                dict(
                    patient_control_number=pcn, billing_provider_id=bp.npi, line_number=n, procedure_qualifier="HC",
                    procedure_code=ch["procedure_code"], modifiers=json.loads(ch["modifiers"] or "[]"),
                    charge=ch["amount"], unit_type="UN", units=ch["quantity"] or 1.0,
                    diagnosis_pointers=[draft.diagnoses.index(c) + 1 for c in dict.fromkeys(codes)],
                    service_date=ch["service_date"], line_control_number=f"{pcn}-{n}",
                    rendering_provider=ch["rendering_provider"], updated_at=now,
                )
            )  # fmt: skip
    return claims, lines


def _loads(value: Any) -> list:
    return json.loads(value) if isinstance(value, str) else list(value or [])


def _interchange(
    settings: BillingConfig, claims: list[dict], lines: list[dict], people: _People, isa: int, at: datetime
) -> str:
    """The 837P of stored (or about to be stored) claim rows: the one function both a build and a resend write with."""
    bp, i = settings.billing_provider, settings.interchange
    a = bp.address
    sub = settings.submitter
    envelope = x.Envelope(
        i.sender_qualifier,
        i.sender_id,
        i.receiver_qualifier,
        i.receiver_id,
        x.Submitter(sub.name, sub.id, sub.contact_name, sub.contact_phone),
        x.Receiver(settings.receiver.name, settings.receiver.id),
        x.BillingProvider(
            bp.name, bp.npi, bp.ein, x.Address(a.line1, a.city, a.state, a.zip.replace("-", ""), a.line2)
        ),
    )
    by_claim: dict[str, list[dict]] = {}
    for ln in lines:
        by_claim.setdefault(ln["patient_control_number"], []).append(ln)
    runs: list[tuple[dict, list[x.Claim]]] = []  # consecutive claims of one patient and coverage: one 2000B
    for c in claims:
        claim = _claim(c, sorted(by_claim[c["patient_control_number"]], key=lambda ln: ln["line_number"]), people)
        if runs and _cov_key(runs[-1][0]) == _cov_key(c):
            runs[-1][1].append(claim)
        else:
            runs.append((c, [claim]))
    groups = [_subscriber(settings, c, people, found) for c, found in runs]
    return x.build_837p(envelope, groups, isa_control=isa, gs_control=isa, at=at, usage=i.usage)


def _subscriber(settings: BillingConfig, c: dict, people: _People, claims: list[x.Claim]) -> x.SubscriberClaims:
    """The 2000B loop of a claim row's patient and coverage (with 2000C when the patient is a dependent)."""
    reg, cov = people.registrations[(c["mrn_issuer"], c["mrn"])], people.coverages[_cov_key(c)]
    person = x.Person(reg["family_name"], reg["given_name"], reg["middle_name"] or "")
    place = x.Address(reg["address_line1"], reg["city"], _state(reg["state"]), _zip(reg["postal_code"]))
    place = replace(place, line2=reg["address_line2"] or "")
    filing = settings.claim_filing_indicators.get(c["payer_id"], settings.claim_filing_indicator)
    payer = x.Payer(c["payer_name"], c["payer_id"])
    sex = {"female": "F", "male": "M", "F": "F", "M": "M"}.get(reg["sex"] or "", "U")
    group = cov["group_number"] or ""
    if c["relationship"] == "18":
        sub = x.Subscriber(c["member_id"], person, group, "P", filing, reg["birth_date"], sex, place)
        return x.SubscriberClaims(sub, payer, claims)
    words = cov["subscriber_name"].split()  # given [middle] family, as adt_pm.yaml joins IN1-16
    sub = x.Subscriber(c["member_id"], x.Person(words[-1], words[0], " ".join(words[1:-1])), group, "P", filing)
    return x.SubscriberClaims(sub, payer, claims, x.Patient(person, reg["birth_date"], sex, place, c["relationship"]))


def _provider(npi: str | None, people: _People) -> x.Provider | None:
    if not npi:
        return None
    family, given = people.rendering[npi].split(", ")
    return x.Provider(npi, x.Person(family, given))


def _claim(c: dict, lines: list[dict], people: _People) -> x.Claim:
    service = []
    for ln in lines:
        pointers, modifiers = tuple(_loads(ln["diagnosis_pointers"])), tuple(_loads(ln["modifiers"]))
        line = x.ServiceLine(
            ln["procedure_code"], ln["charge"], ln["service_date"], pointers, ln["line_control_number"]
        )
        own = _provider(ln["rendering_provider"], people)
        service.append(replace(line, modifiers=modifiers, units=Decimal(str(ln["units"])), rendering_provider=own))
    claim = x.Claim(c["patient_control_number"], tuple(_loads(c["diagnoses"])), tuple(service))
    rendering = _provider(c["rendering_provider"], people)
    return replace(
        claim, place_of_service=c["place_of_service"], frequency_code=c["frequency_code"], rendering_provider=rendering
    )


def _commit(pm: RecordStore, claims: list[dict], lines: list[dict], drafts: list[_Draft]) -> None:
    """Mark the charges and insert the claims in one transaction; raise _Lost (all rolled back) if any
    claim's charges are no longer all unbilled, unreversed and as read."""
    t, credit = pm.table("charge"), pm.table("charge").alias("credit")
    reversed_ = exists().where(
        credit.c.transaction_type == "CD",
        credit.c.reversal_of == t.c.transaction_id,
        credit.c.transaction_source == t.c.transaction_source,
    )
    now = datetime.now(UTC)
    with write_transaction(pm.engine) as conn:
        for claim, draft in zip(claims, drafts):
            ids = [ch["id"] for ch in draft.charges]
            seen = max(ch["updated_at"] for ch in draft.charges)
            done = conn.execute(
                update(t)
                .where(t.c.id.in_(ids), t.c.claimed_in.is_(None), t.c.updated_at <= seen, ~reversed_)
                .values(
                    claimed_in=claim["patient_control_number"], claimed_by=claim["billing_provider_id"], updated_at=now
                )
            ).rowcount
            if done != len(ids):
                raise _Lost
        conn.execute(insert(pm.table("claim")), claims)
        conn.execute(insert(pm.table("claim_line")), lines)


def _isa_number(engine: Engine, settings: BillingConfig) -> int:
    i = settings.interchange
    (n,) = next_control_numbers(
        engine, f"{i.sender_qualifier}:{i.sender_id}", f"{i.receiver_qualifier}:{i.receiver_id}"
    )
    return n


def _write(outbox: Path, isa13: str, text: str) -> Path:
    path = outbox / f"{isa13}.837"
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text.encode("ascii"))
    except OSError as exc:
        raise DeliveryError(
            f"claims of interchange {isa13} are committed but {path} could not be written ({exc.strerror}); "
            f"run `engine claims build --resend {isa13}`",
            retryable=False,
        ) from exc
    return path
