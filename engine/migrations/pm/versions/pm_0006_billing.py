"""Billing in the PM store (issue 9): claims (X12 837), remittances posted against them (835),
and the 999s partners send back for the claims we send.

- ``claim`` / ``claim_line``: (patient_control_number CLM01, billing_provider_id) and LX01.
- ``remittance``: (payer_id TRN03, trace_number TRN02).
- ``claim_payment`` (CLP), ``service_payment`` (SVC), ``adjustment`` (CAS, one row per
  reason triplet), ``provider_adjustment`` (PLB, one row per reason/amount pair).
- ``acknowledgment``: (partner_id, acknowledged_group AK1-02, acknowledged_transaction AK2-02).
- ``charge.claimed_in`` / ``claimed_by``: the claim that bills a charge line (NULL: unbilled).

See engine/stores/pm_claims.py for the keys. Existing rows are untouched; the downgrade drops
the new tables and columns with their data.

Revision ID: pm_0006
Revises: pm_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0006"
down_revision: str | Sequence[str] | None = "pm_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acknowledgment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(), nullable=False),
        sa.Column("acknowledged_group", sa.String(), nullable=False),
        sa.Column("acknowledged_transaction", sa.String(), nullable=False),
        sa.Column("functional_id", sa.String(), nullable=True),
        sa.Column("transaction_set", sa.String(), nullable=True),
        sa.Column("version", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("status_text", sa.String(), nullable=True),
        sa.Column("codes", sa.Text(), nullable=True),
        sa.Column("segment_errors", sa.Text(), nullable=True),
        sa.Column("group_status", sa.String(), nullable=True),
        sa.Column("acknowledged_at", sa.String(), nullable=True),
        sa.Column("interchange_control", sa.String(), nullable=True),
        sa.Column("group_control", sa.String(), nullable=True),
        sa.Column("transaction_control", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acknowledgment")),
        sa.UniqueConstraint(
            "partner_id", "acknowledged_group", "acknowledged_transaction", name="uq_acknowledgment_key"
        ),
    )
    op.create_table(
        "adjustment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("trace_number", sa.String(), nullable=False),
        sa.Column("patient_control_number", sa.String(), nullable=False),
        sa.Column("payer_claim_number", sa.String(), server_default="", nullable=False),
        sa.Column("status_code", sa.String(), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("segment_number", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("group_code", sa.String(), nullable=True),
        sa.Column("reason_code", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("quantity", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjustment")),
        sa.UniqueConstraint(
            "payer_id",
            "trace_number",
            "patient_control_number",
            "payer_claim_number",
            "status_code",
            "line_number",
            "segment_number",
            "slot",
            name="uq_adjustment_key",
        ),
    )
    op.create_table(
        "claim",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("patient_control_number", sa.String(), nullable=False),
        sa.Column("billing_provider_id", sa.String(), server_default="", nullable=False),
        sa.Column("claim_type", sa.String(), nullable=True),
        sa.Column("origin", sa.String(), nullable=True),
        sa.Column("mrn", sa.String(), nullable=True),
        sa.Column("mrn_issuer", sa.String(), server_default="", nullable=False),
        sa.Column("billing_provider_name", sa.String(), nullable=True),
        sa.Column("billing_provider_tax_id", sa.String(), nullable=True),
        sa.Column("payer_id", sa.String(), nullable=True),
        sa.Column("payer_name", sa.String(), nullable=True),
        sa.Column("member_id", sa.String(), nullable=True),
        sa.Column("subscriber_name", sa.String(), nullable=True),
        sa.Column("patient_name", sa.String(), nullable=True),
        sa.Column("patient_birth_date", sa.Date(), nullable=True),
        sa.Column("patient_sex", sa.String(), nullable=True),
        sa.Column("relationship", sa.String(), nullable=True),
        sa.Column("payer_responsibility", sa.String(), nullable=True),
        sa.Column("total_charge", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("place_of_service", sa.String(), nullable=True),
        sa.Column("frequency_code", sa.String(), nullable=True),
        sa.Column("statement_from", sa.Date(), nullable=True),
        sa.Column("statement_to", sa.Date(), nullable=True),
        sa.Column("principal_diagnosis", sa.String(), nullable=True),
        sa.Column("diagnoses", sa.Text(), nullable=True),
        sa.Column("rendering_provider", sa.String(), nullable=True),
        sa.Column("attending_provider", sa.String(), nullable=True),
        sa.Column("referring_provider", sa.String(), nullable=True),
        sa.Column("medical_record_number", sa.String(), nullable=True),
        sa.Column("prior_authorization", sa.String(), nullable=True),
        sa.Column("submitted_at", sa.String(), nullable=True),
        sa.Column("interchange_control", sa.String(), nullable=True),
        sa.Column("group_control", sa.String(), nullable=True),
        sa.Column("transaction_control", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim")),
        sa.UniqueConstraint("patient_control_number", "billing_provider_id", name="uq_claim_key"),
    )
    with op.batch_alter_table("claim", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_claim_mrn"), ["mrn"], unique=False)

    op.create_table(
        "claim_line",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("patient_control_number", sa.String(), nullable=False),
        sa.Column("billing_provider_id", sa.String(), server_default="", nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("procedure_qualifier", sa.String(), nullable=True),
        sa.Column("procedure_code", sa.String(), nullable=True),
        sa.Column("modifiers", sa.Text(), nullable=True),
        sa.Column("revenue_code", sa.String(), nullable=True),
        sa.Column("charge", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("unit_type", sa.String(), nullable=True),
        sa.Column("units", sa.Float(), nullable=True),
        sa.Column("place_of_service", sa.String(), nullable=True),
        sa.Column("diagnosis_pointers", sa.Text(), nullable=True),
        sa.Column("service_date", sa.Date(), nullable=True),
        sa.Column("service_end_date", sa.Date(), nullable=True),
        sa.Column("line_control_number", sa.String(), nullable=True),
        sa.Column("rendering_provider", sa.String(), nullable=True),
        sa.Column("ndc_code", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_line")),
        sa.UniqueConstraint("patient_control_number", "billing_provider_id", "line_number", name="uq_claim_line_key"),
    )
    op.create_table(
        "claim_payment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("trace_number", sa.String(), nullable=False),
        sa.Column("patient_control_number", sa.String(), nullable=False),
        sa.Column("payer_claim_number", sa.String(), server_default="", nullable=False),
        sa.Column("status_code", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("charge_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("paid_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("patient_responsibility", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("filing_indicator", sa.String(), nullable=True),
        sa.Column("facility_type", sa.String(), nullable=True),
        sa.Column("frequency_code", sa.String(), nullable=True),
        sa.Column("drg_code", sa.String(), nullable=True),
        sa.Column("payee_id", sa.String(), nullable=True),
        sa.Column("patient_name", sa.String(), nullable=True),
        sa.Column("patient_member_id", sa.String(), nullable=True),
        sa.Column("insured_member_id", sa.String(), nullable=True),
        sa.Column("rendering_provider", sa.String(), nullable=True),
        sa.Column("corrected_member_id", sa.String(), nullable=True),
        sa.Column("crossover_payer", sa.String(), nullable=True),
        sa.Column("statement_from", sa.Date(), nullable=True),
        sa.Column("statement_to", sa.Date(), nullable=True),
        sa.Column("received_date", sa.Date(), nullable=True),
        sa.Column("remark_codes", sa.Text(), nullable=True),
        sa.Column("allowed_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_payment")),
        sa.UniqueConstraint(
            "payer_id",
            "trace_number",
            "patient_control_number",
            "payer_claim_number",
            "status_code",
            name="uq_claim_payment_key",
        ),
    )
    with op.batch_alter_table("claim_payment", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_claim_payment_patient_control_number"), ["patient_control_number"], unique=False
        )

    op.create_table(
        "provider_adjustment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("trace_number", sa.String(), nullable=False),
        sa.Column("segment_number", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.String(), nullable=True),
        sa.Column("fiscal_period_date", sa.Date(), nullable=True),
        sa.Column("reason_code", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("reference", sa.String(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_adjustment")),
        sa.UniqueConstraint("payer_id", "trace_number", "segment_number", "slot", name="uq_provider_adjustment_key"),
    )
    op.create_table(
        "remittance",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("trace_number", sa.String(), nullable=False),
        sa.Column("payer_name", sa.String(), nullable=True),
        sa.Column("payer_identifier", sa.String(), nullable=True),
        sa.Column("payee_name", sa.String(), nullable=True),
        sa.Column("payee_id", sa.String(), nullable=True),
        sa.Column("payee_id_qualifier", sa.String(), nullable=True),
        sa.Column("handling_code", sa.String(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("credit_debit", sa.String(), nullable=True),
        sa.Column("method", sa.String(), nullable=True),
        sa.Column("payment_format", sa.String(), nullable=True),
        sa.Column("payment_date", sa.Date(), nullable=True),
        sa.Column("production_date", sa.Date(), nullable=True),
        sa.Column("interchange_control", sa.String(), nullable=True),
        sa.Column("group_control", sa.String(), nullable=True),
        sa.Column("transaction_control", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remittance")),
        sa.UniqueConstraint("payer_id", "trace_number", name="uq_remittance_key"),
    )
    op.create_table(
        "service_payment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payer_id", sa.String(), nullable=False),
        sa.Column("trace_number", sa.String(), nullable=False),
        sa.Column("patient_control_number", sa.String(), nullable=False),
        sa.Column("payer_claim_number", sa.String(), server_default="", nullable=False),
        sa.Column("status_code", sa.String(), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("procedure_qualifier", sa.String(), nullable=True),
        sa.Column("procedure_code", sa.String(), nullable=True),
        sa.Column("modifiers", sa.Text(), nullable=True),
        sa.Column("charge_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("paid_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("revenue_code", sa.String(), nullable=True),
        sa.Column("units_paid", sa.Float(), nullable=True),
        sa.Column("submitted_procedure", sa.String(), nullable=True),
        sa.Column("units_billed", sa.Float(), nullable=True),
        sa.Column("service_date", sa.Date(), nullable=True),
        sa.Column("service_end_date", sa.Date(), nullable=True),
        sa.Column("line_control_number", sa.String(), nullable=True),
        sa.Column("allowed_amount", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("remark_codes", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_payment")),
        sa.UniqueConstraint(
            "payer_id",
            "trace_number",
            "patient_control_number",
            "payer_claim_number",
            "status_code",
            "line_number",
            name="uq_service_payment_key",
        ),
    )
    with op.batch_alter_table("charge", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_in", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("charge", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claimed_in")

    op.drop_table("service_payment")
    op.drop_table("remittance")
    op.drop_table("provider_adjustment")
    with op.batch_alter_table("claim_payment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_claim_payment_patient_control_number"))

    op.drop_table("claim_payment")
    op.drop_table("claim_line")
    with op.batch_alter_table("claim", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_claim_mrn"))

    op.drop_table("claim")
    op.drop_table("adjustment")
    op.drop_table("acknowledgment")
