"""Fan-out after the 250, and lanes: the expansion table, delivery's lane, list and turn

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06

A post is stored with its copy and one `expansion` row; delivery workers then write its
jobs chunk by chunk, reading members by (list_id, id). Delivery jobs gain a lane (0: a
person waits for it; 1: posts and digests), the list whose post they carry and a turn,
so that lists take turns; the claim reads the pending jobs by (lane, turn, id).
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_PENDING = sa.text("done_at IS NULL")  # queue_tables.PENDING_JOBS


def upgrade() -> None:
    op.create_table(
        "expansion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("outgoing_id", sa.Integer(), nullable=False),
        sa.Column("mail_from", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("after", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("advanced_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["mailing_list.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["outgoing_id"], ["outgoing.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_expansion_list_id", "expansion", ["list_id"])
    op.create_index("ix_expansion_outgoing_id", "expansion", ["outgoing_id"])
    op.create_index("ix_member_list_id_id", "member", ["list_id", "id"])
    # Plain columns with constant defaults: added in place (no rebuild of the table).
    op.add_column("delivery", sa.Column("lane", sa.Integer(), nullable=False,
                                        server_default="0"))
    op.add_column("delivery", sa.Column("list_id", sa.Integer(), nullable=True))
    op.add_column("delivery", sa.Column("turn", sa.Integer(), nullable=False,
                                        server_default="0"))
    op.create_index("ix_delivery_claim", "delivery", ["lane", "turn", "id"],
                    sqlite_where=_PENDING, postgresql_where=_PENDING)
    op.create_index("ix_delivery_list_turn", "delivery", ["list_id", "turn"],
                    sqlite_where=_PENDING, postgresql_where=_PENDING)


def downgrade() -> None:
    op.drop_index("ix_delivery_list_turn", "delivery")
    op.drop_index("ix_delivery_claim", "delivery")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("turn")
        batch_op.drop_column("list_id")
        batch_op.drop_column("lane")
    op.drop_index("ix_member_list_id_id", "member")
    op.drop_index("ix_expansion_outgoing_id", "expansion")
    op.drop_index("ix_expansion_list_id", "expansion")
    op.drop_table("expansion")
