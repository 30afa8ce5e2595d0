"""Destinations grouped by MX: destination.domain becomes name, and destination_domain
holds the recipient domains of each

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06

A destination in back-off is the MX host set its domains share (or one domain whose MX
is not known): the claim leaves alone the jobs of every domain it holds. Each
destination in back-off now holds its own domain.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.alter_column("domain", new_column_name="name")
    op.create_table(
        "destination_domain",
        sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["destination"], ["destination.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("domain"))
    op.create_index("ix_destination_domain_destination", "destination_domain",
                    ["destination"])
    op.execute("INSERT INTO destination_domain (domain, destination) "
               "SELECT name, name FROM destination")


def downgrade() -> None:
    op.drop_index("ix_destination_domain_destination", "destination_domain")
    op.drop_table("destination_domain")
    # A group's back-off is lost: its jobs are claimed again, and defer again if need be.
    op.execute("DELETE FROM destination WHERE name LIKE '%,%'")
    with op.batch_alter_table("destination", schema=None) as batch_op:
        batch_op.alter_column("name", new_column_name="domain")
