"""Shaping by destination: each delivery job's recipient domain, and the domains in
back-off

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

delivery gains domain (the one recipient domain of the job; "" for jobs queued before,
which are not shaped), indexed with the state for the claim and `queue ls --by-domain`.
destination holds the domains that deferred copies (421, 4.7.x): until when no job of
theirs is claimed, the back-offs in a row, and the last reply.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain server default: an expression default would rebuild the SQLite table.
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default=""))
        batch_op.create_index("ix_delivery_domain", ["domain", "state"], unique=False)
    op.create_table(
        "destination",
        sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("backoff_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("deferrals", sa.Integer(), nullable=False),
        sa.Column("last_reply", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )


def downgrade() -> None:
    op.drop_table("destination")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_domain")
        batch_op.drop_column("domain")
