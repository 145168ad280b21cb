"""The PM store's billing tables: claims (X12 837) and remittances posted against them (X12 835).

Each row's key is the natural key the X12 file carries, so a file applied twice (a resend, a
reprocess) updates its own rows and never posts twice:

- ``claim`` (837 2300 CLM): (``patient_control_number``, ``billing_provider_id``). CLM01 is the
  provider's own claim number, unique per billing provider; an 835 returns it in CLP01, which
  is how a payment finds its claim. ``claim_line`` (2400 LX): the claim's key and the line
  number (LX01).
- ``remittance`` (835 BPR/TRN): (``payer_id``, ``trace_number``): TRN03 (the payer's
  identifier, "1" + EIN) and TRN02, the check or EFT trace number, unique per payer.
- ``claim_payment`` (2100 CLP): the remittance's key, CLP01, CLP07 (the payer's claim number)
  and CLP02 (the status): a reversal (22) of a payment and the corrected payment that follows
  it carry the same CLP01, so the status keeps each its own row.
- ``service_payment`` (2110 SVC): the claim payment's key and the line's place (1, 2 ...).
- ``adjustment`` (CAS): the claim payment's key, the line's place (0: claim level), the CAS
  segment's place and the slot (1-6) of the group's reason/amount/quantity triplet.
- ``provider_adjustment`` (PLB): the remittance's key, the PLB's place and the slot (1-6).
- ``acknowledgment`` (a 999 received for a file we sent, 2000 AK2): the partner that sent it
  (ISA06), our group control number it answers (AK1-02) and our transaction set's (AK2-02). A
  claim we built shows it by those two numbers; a later 999 for the same set replaces it.

A payment's claim and the claim's balance are not stored but read (``engine patient``,
:mod:`engine.stores.billing_view`): charge minus what every payment paid and adjusted, each
payment counted with its sign, so a reversal (negative amounts) undoes what it reverses and
applying it twice changes nothing.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, Float, Index, Integer, MetaData, String, Table, UniqueConstraint

from engine.stores.columns import Amount, JSONText, id_column, issuer_column, managed_columns, namespace_column

CLAIM_KEY = ("patient_control_number", "billing_provider_id")
CLAIM_LINE_KEY = (*CLAIM_KEY, "line_number")
REMITTANCE_KEY = ("payer_id", "trace_number")
CLAIM_PAYMENT_KEY = (*REMITTANCE_KEY, "patient_control_number", "payer_claim_number", "status_code")
SERVICE_PAYMENT_KEY = (*CLAIM_PAYMENT_KEY, "line_number")
ADJUSTMENT_KEY = (*CLAIM_PAYMENT_KEY, "line_number", "segment_number", "slot")
PROVIDER_ADJUSTMENT_KEY = (*REMITTANCE_KEY, "segment_number", "slot")
ACKNOWLEDGMENT_KEY = ("partner_id", "acknowledged_group", "acknowledged_transaction")


def _envelope() -> list[Column]:
    """Where a row came from: the interchange, group and transaction set control numbers."""
    return [
        Column("interchange_control", String),
        Column("group_control", String),
        Column("transaction_control", String),
    ]


def _claim_payment_key() -> list[Column]:
    """The columns that name one claim payment (CLAIM_PAYMENT_KEY), in its lines and adjustments too."""
    return [
        Column("payer_id", String, nullable=False),
        Column("trace_number", String, nullable=False),
        Column("patient_control_number", String, nullable=False),
        namespace_column("payer_claim_number"),
        Column("status_code", String, nullable=False),
    ]


def billing_tables(metadata: MetaData) -> dict[str, Table]:
    claim = Table(
        "claim",
        metadata,
        id_column(),
        Column("patient_control_number", String, nullable=False),  # CLM01
        namespace_column("billing_provider_id"),  # 2010AA NM109: NPI (XX), else the EIN
        Column("claim_type", String),  # P (837P) or I (837I)
        Column("origin", String),  # inbound (an 837 received) or built (an 837 we wrote)
        Column("mrn", String),  # the patient's medical record number (2300 REF*EA), when sent
        issuer_column(),
        Column("billing_provider_name", String),
        Column("billing_provider_tax_id", String),  # REF*EI
        Column("payer_id", String),  # 2010BB NM109
        Column("payer_name", String),
        Column("member_id", String),  # 2010BA NM109: the subscriber's id at the payer
        Column("subscriber_name", String),
        Column("patient_name", String),  # 2010CA when a dependent, else the subscriber
        Column("patient_birth_date", Date),
        Column("patient_sex", String),
        Column("relationship", String),  # SBR02 / PAT01: 18 self, 01 spouse, 19 child ...
        Column("payer_responsibility", String),  # SBR01: P, S, T
        Column("total_charge", Amount),  # CLM02
        Column("place_of_service", String),  # CLM05-1 (837I: facility type code)
        Column("frequency_code", String),  # CLM05-3: 1 original, 7 replacement, 8 void
        Column("statement_from", Date),
        Column("statement_to", Date),
        Column("principal_diagnosis", String),  # HI ABK/BK (837I also ABJ admitting)
        Column("diagnoses", JSONText),  # every diagnosis code, in order: the lines' pointers
        Column("rendering_provider", String),  # NPI (2310B/2310D...)
        Column("attending_provider", String),  # 837I 2310A
        Column("referring_provider", String),
        Column("medical_record_number", String),  # REF*EA as sent
        Column("prior_authorization", String),  # REF*G1
        Column("submitted_at", String),  # BHT04/05 as sent (CCYYMMDD[HHMM])
        *_envelope(),
        *managed_columns(),
        UniqueConstraint(*CLAIM_KEY, name="uq_claim_key"),
    )
    claim_line = Table(
        "claim_line",
        metadata,
        id_column(),
        Column("patient_control_number", String, nullable=False),
        namespace_column("billing_provider_id"),
        Column("line_number", Integer, nullable=False),  # LX01
        Column("procedure_qualifier", String),  # SV101-1 / SV202-1: HC (CPT/HCPCS)
        Column("procedure_code", String),
        Column("modifiers", JSONText),
        Column("revenue_code", String),  # SV201 (837I)
        Column("charge", Amount),  # SV102 / SV203
        Column("unit_type", String),  # UN, MJ
        Column("units", Float),
        Column("place_of_service", String),  # SV105
        Column("diagnosis_pointers", JSONText),  # SV107: positions in the claim's diagnoses
        Column("service_date", Date),  # DTP*472
        Column("service_end_date", Date),
        Column("line_control_number", String),  # REF*6R: returned in the 835's REF*6R
        Column("rendering_provider", String),
        Column("ndc_code", String),  # LIN03
        *managed_columns(),
        UniqueConstraint(*CLAIM_LINE_KEY, name="uq_claim_line_key"),
    )
    remittance = Table(
        "remittance",
        metadata,
        id_column(),
        Column("payer_id", String, nullable=False),  # TRN03
        Column("trace_number", String, nullable=False),  # TRN02: check or EFT trace number
        Column("payer_name", String),  # N1*PR
        Column("payer_identifier", String),  # N1*PR-04 / REF*2U
        Column("payee_name", String),
        Column("payee_id", String),  # N1*PE-04: the NPI with XX, else the tax id
        Column("payee_id_qualifier", String),
        Column("handling_code", String),  # BPR01: I remittance and payment, H notification only
        Column("amount", Amount),  # BPR02
        Column("credit_debit", String),  # BPR03
        Column("method", String),  # BPR04: CHK, ACH, FWT, BOP, NON
        Column("payment_format", String),  # BPR05: CCP, CTX
        Column("payment_date", Date),  # BPR16
        Column("production_date", Date),  # DTM*405
        *_envelope(),
        *managed_columns(),
        UniqueConstraint(*REMITTANCE_KEY, name="uq_remittance_key"),
    )
    claim_payment = Table(
        "claim_payment",
        metadata,
        id_column(),
        Column("payer_id", String, nullable=False),
        Column("trace_number", String, nullable=False),
        Column("patient_control_number", String, nullable=False),  # CLP01: our CLM01
        namespace_column("payer_claim_number"),  # CLP07
        Column("status_code", String, nullable=False),  # CLP02
        Column("status", String),  # its meaning (tables/claim_status.yaml)
        Column("charge_amount", Amount),  # CLP03
        Column("paid_amount", Amount),  # CLP04
        Column("patient_responsibility", Amount),  # CLP05
        Column("filing_indicator", String),  # CLP06
        Column("facility_type", String),  # CLP08
        Column("frequency_code", String),  # CLP09
        Column("drg_code", String),  # CLP11
        Column("payee_id", String),  # N1*PE-04: the billing provider paid (matches claim.billing_provider_id)
        Column("patient_name", String),  # NM1*QC
        Column("patient_member_id", String),
        Column("insured_member_id", String),  # NM1*IL
        Column("rendering_provider", String),  # NM1*82
        Column("corrected_member_id", String),  # NM1*74
        Column("crossover_payer", String),  # NM1*TT
        Column("statement_from", Date),  # DTM*232
        Column("statement_to", Date),  # DTM*233
        Column("received_date", Date),  # DTM*050
        Column("remark_codes", JSONText),  # MOA (and MIA) RARCs
        Column("allowed_amount", Amount),  # AMT*AU (coverage amount)
        *managed_columns(),
        UniqueConstraint(*CLAIM_PAYMENT_KEY, name="uq_claim_payment_key"),
    )
    service_payment = Table(
        "service_payment",
        metadata,
        id_column(),
        *_claim_payment_key(),
        Column("line_number", Integer, nullable=False),  # the SVC's place in its CLP
        Column("procedure_qualifier", String),  # SVC01-1: HC, NU (revenue code), N4 (NDC)
        Column("procedure_code", String),  # SVC01-2
        Column("modifiers", JSONText),  # SVC01-3 .. 6
        Column("charge_amount", Amount),  # SVC02
        Column("paid_amount", Amount),  # SVC03
        Column("revenue_code", String),  # SVC04
        Column("units_paid", Float),  # SVC05
        Column("submitted_procedure", String),  # SVC06-2, when the payer paid another code
        Column("units_billed", Float),  # SVC07
        Column("service_date", Date),  # DTM*472 (else 150)
        Column("service_end_date", Date),  # DTM*151
        Column("line_control_number", String),  # REF*6R: our claim line
        Column("allowed_amount", Amount),  # AMT*B6
        Column("remark_codes", JSONText),  # LQ*HE
        *managed_columns(),
        UniqueConstraint(*SERVICE_PAYMENT_KEY, name="uq_service_payment_key"),
    )
    adjustment = Table(
        "adjustment",
        metadata,
        id_column(),
        *_claim_payment_key(),
        Column("line_number", Integer, nullable=False),  # 0: claim level; else the SVC's place
        Column("segment_number", Integer, nullable=False),  # the CAS's place in its loop
        Column("slot", Integer, nullable=False),  # 1-6: CAS02-04, 05-07 ... 17-19
        Column("group_code", String),  # CAS01: CO, PR, OA, PI, CR
        Column("reason_code", String),  # CARC
        Column("reason", String),  # its description (tables/carc.yaml)
        Column("amount", Amount),
        Column("quantity", Float),
        *managed_columns(),
        UniqueConstraint(*ADJUSTMENT_KEY, name="uq_adjustment_key"),
    )
    provider_adjustment = Table(
        "provider_adjustment",
        metadata,
        id_column(),
        Column("payer_id", String, nullable=False),
        Column("trace_number", String, nullable=False),
        Column("segment_number", Integer, nullable=False),
        Column("slot", Integer, nullable=False),  # 1-6: PLB03/04 ... PLB13/14
        Column("provider_id", String),  # PLB01
        Column("fiscal_period_date", Date),  # PLB02
        Column("reason_code", String),  # PLB03-1: WO, L6, FB, CS ...
        Column("reason", String),
        Column("reference", String),  # PLB03-2
        Column("amount", Amount),  # positive: withheld from the payment; negative: added
        *managed_columns(),
        UniqueConstraint(*PROVIDER_ADJUSTMENT_KEY, name="uq_provider_adjustment_key"),
    )
    acknowledgment = Table(
        "acknowledgment",
        metadata,
        id_column(),
        Column("partner_id", String, nullable=False),  # ISA06 of the 999
        Column("acknowledged_group", String, nullable=False),  # AK1-02: our GS06
        Column("acknowledged_transaction", String, nullable=False),  # AK2-02: our ST02
        Column("functional_id", String),  # AK1-01: HC for 837s
        Column("transaction_set", String),  # AK2-01: 837
        Column("version", String),  # AK1-03 / AK2-03
        Column("status", String),  # IK5-01: A accepted, E accepted with errors, R rejected, ...
        Column("status_text", String),
        Column("codes", JSONText),  # IK5-02 .. 06: why
        Column("segment_errors", JSONText),  # each IK3: segment id and position
        Column("group_status", String),  # AK9-01
        Column("acknowledged_at", String),  # the 999's GS04/GS05 as sent
        *_envelope(),
        *managed_columns(),
        UniqueConstraint(*ACKNOWLEDGMENT_KEY, name="uq_acknowledgment_key"),
    )
    Index(None, claim.c.mrn)
    Index(None, claim_payment.c.patient_control_number)
    return {
        "claim": claim,
        "claim_line": claim_line,
        "remittance": remittance,
        "claim_payment": claim_payment,
        "service_payment": service_payment,
        "adjustment": adjustment,
        "provider_adjustment": provider_adjustment,
        "acknowledgment": acknowledgment,
    }


BILLING_KEYS: dict[str, tuple[str, ...]] = {
    "claim": CLAIM_KEY,
    "claim_line": CLAIM_LINE_KEY,
    "remittance": REMITTANCE_KEY,
    "claim_payment": CLAIM_PAYMENT_KEY,
    "service_payment": SERVICE_PAYMENT_KEY,
    "adjustment": ADJUSTMENT_KEY,
    "provider_adjustment": PROVIDER_ADJUSTMENT_KEY,
    "acknowledgment": ACKNOWLEDGMENT_KEY,
}
