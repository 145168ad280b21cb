"""Patient identity is (assigning authority, identifier value): mrn_issuer beside every mrn.

Every table with ``mrn`` gets ``mrn_issuer`` (text, NOT NULL, default ''), and the natural keys
that contain ``mrn`` (registration, coverage) contain it too; ``registration.merged_into`` gets
``merged_into_issuer``; the merge audit names both patients' issuers. Rows written before this
revision keep their values with issuer '' (their issuer was never recorded). A downgrade fails
where the same mrn has rows under two issuers (the old keys cannot hold them).

Revision ID: pm_0004
Revises: pm_0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0004"
down_revision: str | Sequence[str] | None = "pm_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_MRN = ("registration", "coverage", "visit")  # at this revision
KEYS = {  # table: (old unique, its columns, new unique, its columns)
    "registration": ("uq_registration_mrn", ["mrn"], "uq_registration_mrn_mrn_issuer", ["mrn", "mrn_issuer"]),
    "coverage": (
        "uq_coverage_mrn_payer_id_member_id",
        ["mrn", "payer_id", "member_id"],
        "uq_coverage_mrn_mrn_issuer_payer_id_member_id",
        ["mrn", "mrn_issuer", "payer_id", "member_id"],
    ),
    "pm_patient_merge": (
        "uq_pm_patient_merge_old_mrn_new_mrn_message_id",
        ["old_mrn", "new_mrn", "message_id"],
        "uq_pm_patient_merge_pair",
        ["old_mrn_issuer", "old_mrn", "new_mrn_issuer", "new_mrn", "message_id"],
    ),
}


def _issuer(name: str) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=False, server_default="")


def upgrade() -> None:
    for name in WITH_MRN:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(_issuer("mrn_issuer"))
            if name == "registration":
                batch_op.add_column(sa.Column("merged_into_issuer", sa.String(), nullable=True))
    with op.batch_alter_table("pm_patient_merge", schema=None) as batch_op:
        batch_op.add_column(_issuer("old_mrn_issuer"))
        batch_op.add_column(_issuer("new_mrn_issuer"))
    op.execute(sa.text("UPDATE registration SET merged_into_issuer = '' WHERE merged_into IS NOT NULL"))
    for name, (old, _cols, new, cols) in KEYS.items():
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_constraint(old, type_="unique")
            batch_op.create_unique_constraint(new, cols)


def downgrade() -> None:
    for name, (old, cols, new, _cols) in KEYS.items():
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_constraint(new, type_="unique")
            batch_op.create_unique_constraint(old, cols)
    with op.batch_alter_table("pm_patient_merge", schema=None) as batch_op:
        batch_op.drop_column("new_mrn_issuer")
        batch_op.drop_column("old_mrn_issuer")
    for name in WITH_MRN:
        with op.batch_alter_table(name, schema=None) as batch_op:
            if name == "registration":
                batch_op.drop_column("merged_into_issuer")
            batch_op.drop_column("mrn_issuer")
