"""destination.probe: the job that tries a destination whose back-off ended

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06

A destination stays in the table after its back-off ends, until a copy goes through:
meanwhile one job at a time tries it (probes.py), and `probe` is that job.
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.add_column(sa.Column("probe", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.drop_column("probe")
