"""Coverage (issue 7): what real feeds carry that no PM column kept.

- ``registration``: name prefix and suffix, aliases, race, ethnicity, marital status;
- ``visit``: location parts (PV1-3), admit type, attending's name, admitting, referring and
  consulting doctors, admit and discharge dates sent without a time of day;
- ``coverage``: the plan type's text beside its code (IN1-15; rows stored with the two glued
  by ``^`` are split), the IN2 ids (insured's employee id, SSN, Medicare and Medicaid numbers).

Revision ID: pm_0003
Revises: pm_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0003"
down_revision: str | Sequence[str] | None = "pm_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.String(), nullable=True) for n in names]


def _coded(name: str) -> list[sa.Column]:
    return _text(f"{name}_code", f"{name}_text", f"{name}_system")


def demographic() -> list[sa.Column]:
    """As engine.stores.columns.demographic_columns adds them at this revision."""
    return [
        *_text("name_prefix", "name_suffix"),
        sa.Column("aliases", sa.Text(), nullable=True),
        *_coded("race"),
        sa.Column("races", sa.Text(), nullable=True),
        *_coded("ethnicity"),
        *_coded("marital_status"),
    ]


def visit() -> list[sa.Column]:
    """As engine.stores.columns.visit_columns adds them at this revision."""
    location = [f"location_{n}" for n in ("point_of_care", "room", "bed", "facility", "building")]
    doctors = ("attending_name", "admitting", "admitting_name", "referring", "referring_name")
    return [
        *_text(*location, "admit_type", *doctors),
        sa.Column("consulting", sa.Text(), nullable=True),
        sa.Column("admit_date", sa.Date(), nullable=True),
        sa.Column("discharge_date", sa.Date(), nullable=True),
    ]


def coverage() -> list[sa.Column]:
    return _text("plan_type_text", "insured_employee_id", "insured_ssn", "medicare_id", "medicaid_id")


CHANGES = {"registration": demographic, "visit": visit, "coverage": coverage}


def upgrade() -> None:
    for table, columns in CHANGES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for c in columns():
                batch_op.add_column(c)
    # a plan type stored with its text glued on (HMO^Health maintenance): code and text apart
    conn = op.get_bind()
    glued = conn.execute(sa.text("SELECT id, plan_type FROM coverage WHERE plan_type LIKE '%^%'")).all()
    for row_id, plan_type in glued:
        code, text = (plan_type.split("^") + [""])[:2]
        conn.execute(
            sa.text("UPDATE coverage SET plan_type = :code, plan_type_text = :text WHERE id = :id"),
            {"code": code or None, "text": text or None, "id": row_id},
        )


def downgrade() -> None:
    for table, columns in CHANGES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for c in columns():
                batch_op.drop_column(c.name)
