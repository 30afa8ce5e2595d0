"""digest_summary: the summary mail of a digest issue, for members in `summary` mode

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

A summary is built with its digest issue from the same posts, so it is a row beside the
issue rather than an issue of its own: digest_issue keeps its (list, volume, number)
key, which SQLite could only change by rebuilding the table, and dropping digest_issue
would cascade to every digest_item. The new delivery mode needs no change (modes are
stored as text).
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digest_summary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["digest_issue.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issue_id"),
    )


def downgrade() -> None:
    op.drop_table("digest_summary")
