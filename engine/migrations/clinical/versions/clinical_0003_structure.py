"""Structure and coverage (issue 7): reports and observations keyed by where they stand in the
message, OBX values typed, and what real feeds carry that no column kept.

- ``diagnostic_report`` is keyed by (filler order, code, occurrence): one order may carry
  several tests (OBR-4), and a test twice (occurrence 1, 2 ...). New: observed and specimen
  collection dates, ordering provider, specimen (id, type, collected, received), notes.
- ``observation`` is keyed by (filler order, report code, report occurrence, specimen_seq,
  seq): the SPM group the OBX lies in (0: the report's own results) and its place there, so an
  OBX under SPM and one under the OBR never share a row whatever their set ids (``set_id``
  stays, no longer required); ``kind`` (result, specimen, order-answer). Values typed by data
  type (SN parts, coded text and system, date, date/time, CX id and issuer, RP/ED reference and
  type, every repetition in ``value_list``); effective date, notes, method, equipment,
  performer name, performing lab.
- ``patient``: name prefix and suffix, aliases, race, ethnicity, marital status, deceased date;
  ``encounter``: location parts, admit type, doctors, admit and discharge dates;
  ``allergy``: allergen coding system; ``diagnosis``: diagnosed date.

Rows written before: reports get occurrence 1 (and a code: the text, else ''); observations the
report's code, occurrence 1, specimen_seq 0 (none were told apart), seq their order of arrival
within the filler order, kind result; a CWE's text moves from value_string to value_code_text.
The downgrade drops what the old keys cannot hold (a second row per filler order or set id).

Revision ID: clinical_0003
Revises: clinical_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "clinical_0003"
down_revision: str | Sequence[str] | None = "clinical_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.String(), nullable=True) for n in names]


def _coded(name: str) -> list[sa.Column]:
    return _text(f"{name}_code", f"{name}_text", f"{name}_system")


def _date(name: str) -> sa.Column:
    return sa.Column(name, sa.Date(), nullable=True)


def _at(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _long(name: str) -> sa.Column:
    return sa.Column(name, sa.Text(), nullable=True)


def demographic() -> list[sa.Column]:
    """As engine.stores.columns.demographic_columns adds them at this revision (patient, registration)."""
    return [
        *_text("name_prefix", "name_suffix"),
        _long("aliases"),
        *_coded("race"),
        _long("races"),
        *_coded("ethnicity"),
        *_coded("marital_status"),
    ]


def visit() -> list[sa.Column]:
    """As engine.stores.columns.visit_columns adds them at this revision (encounter, visit)."""
    location = [f"location_{n}" for n in ("point_of_care", "room", "bed", "facility", "building")]
    doctors = ("attending_name", "admitting", "admitting_name", "referring", "referring_name")
    return [
        *_text(*location, "admit_type", *doctors),
        _long("consulting"),
        _date("admit_date"),
        _date("discharge_date"),
    ]


REPORT = [
    _date("observed_date"),
    *_text("ordering_provider", "ordering_provider_name", "specimen_id"),
    *_coded("specimen_type"),
    _at("specimen_collected_at"),
    _date("specimen_collected_date"),
    _at("specimen_received_at"),
    _long("notes"),
]
OBSERVATION = [
    sa.Column("kind", sa.String(), nullable=True),
    *_text("value_comparator", "value_separator"),
    sa.Column("value_numeric2", sa.Float(), nullable=True),
    *_text("value_code_text", "value_code_system"),
    _date("value_date"),
    _at("value_datetime"),
    *_text("value_id", "value_issuer", "value_reference", "value_data_type", "value_data_subtype"),
    _long("value_list"),
    _date("effective_date"),
    *_text("performer_name"),
    *_coded("method"),
    *_text("equipment_id", "performing_lab_id", "performing_lab_name"),
    _long("notes"),
]
OBSERVATION_KEY = ["filler_order_number", "report_code", "report_occurrence", "specimen_seq", "seq"]


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        for c in [*demographic(), _date("deceased_date")]:
            batch_op.add_column(c)
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        for c in visit():
            batch_op.add_column(c)
    with op.batch_alter_table("allergy", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allergen_system", sa.String(), nullable=True))
    with op.batch_alter_table("diagnosis", schema=None) as batch_op:
        batch_op.add_column(_date("diagnosed_date"))

    with op.batch_alter_table("diagnostic_report", schema=None) as batch_op:
        batch_op.add_column(sa.Column("occurrence", sa.Integer(), nullable=True))
        for c in REPORT:
            batch_op.add_column(c)
    op.execute(sa.text("UPDATE diagnostic_report SET occurrence = 1, code = COALESCE(code, code_text, '')"))
    with op.batch_alter_table("diagnostic_report", schema=None) as batch_op:
        batch_op.alter_column("code", existing_type=sa.String(), nullable=False)
        batch_op.alter_column("occurrence", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_constraint("uq_diagnostic_report_filler_order_number", type_="unique")
        batch_op.create_unique_constraint(
            "uq_diagnostic_report_position", ["filler_order_number", "code", "occurrence"]
        )

    with op.batch_alter_table("observation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_code", sa.String(), nullable=True))
        for name in ("report_occurrence", "specimen_seq", "seq"):
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
        for c in OBSERVATION:
            batch_op.add_column(c)
    op.execute(
        sa.text(
            "UPDATE observation SET report_occurrence = 1, specimen_seq = 0, kind = 'result', "
            "report_code = COALESCE((SELECT r.code FROM diagnostic_report r "
            "WHERE r.filler_order_number = observation.filler_order_number), ''), "
            "seq = (SELECT COUNT(*) FROM observation o "
            "WHERE o.filler_order_number = observation.filler_order_number AND o.id <= observation.id)"
        )
    )
    op.execute(
        sa.text(
            "UPDATE observation SET value_code_text = value_string, value_string = NULL "
            "WHERE value_type IN ('CWE', 'CE', 'CNE', 'CF')"
        )
    )
    with op.batch_alter_table("observation", schema=None) as batch_op:
        batch_op.alter_column("set_id", existing_type=sa.String(), nullable=True)
        batch_op.alter_column("report_code", existing_type=sa.String(), nullable=False)
        for name in OBSERVATION_KEY[2:]:
            batch_op.alter_column(name, existing_type=sa.Integer(), nullable=False)
        batch_op.drop_constraint("uq_observation_filler_order_number_set_id", type_="unique")
        batch_op.create_unique_constraint("uq_observation_position", OBSERVATION_KEY)


def downgrade() -> None:
    # what the old keys cannot hold goes: all but the first row per filler order (reports) and
    # per filler order and set id (observations); observations without a set id
    op.execute(
        sa.text(
            "DELETE FROM observation WHERE set_id IS NULL OR id NOT IN "
            "(SELECT MIN(o.id) FROM observation o WHERE o.set_id IS NOT NULL "
            "GROUP BY o.filler_order_number, o.set_id)"
        )
    )
    op.execute(
        sa.text(
            "DELETE FROM diagnostic_report WHERE id NOT IN "
            "(SELECT MIN(r.id) FROM diagnostic_report r GROUP BY r.filler_order_number)"
        )
    )
    op.execute(
        sa.text(
            "UPDATE observation SET value_string = value_code_text "
            "WHERE value_type IN ('CWE', 'CE', 'CNE', 'CF') AND value_string IS NULL"
        )
    )
    with op.batch_alter_table("observation", schema=None) as batch_op:
        batch_op.drop_constraint("uq_observation_position", type_="unique")
        batch_op.create_unique_constraint(
            "uq_observation_filler_order_number_set_id", ["filler_order_number", "set_id"]
        )
        batch_op.alter_column("set_id", existing_type=sa.String(), nullable=False)
        for c in OBSERVATION:
            batch_op.drop_column(c.name)
        for name in reversed(OBSERVATION_KEY[1:]):
            batch_op.drop_column(name)
    with op.batch_alter_table("diagnostic_report", schema=None) as batch_op:
        batch_op.drop_constraint("uq_diagnostic_report_position", type_="unique")
        batch_op.create_unique_constraint("uq_diagnostic_report_filler_order_number", ["filler_order_number"])
        batch_op.alter_column("code", existing_type=sa.String(), nullable=True)
        for c in REPORT:
            batch_op.drop_column(c.name)
        batch_op.drop_column("occurrence")
    with op.batch_alter_table("diagnosis", schema=None) as batch_op:
        batch_op.drop_column("diagnosed_date")
    with op.batch_alter_table("allergy", schema=None) as batch_op:
        batch_op.drop_column("allergen_system")
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        for c in visit():
            batch_op.drop_column(c.name)
    with op.batch_alter_table("patient", schema=None) as batch_op:
        for c in [*demographic(), _date("deceased_date")]:
            batch_op.drop_column(c.name)
