"""thread_summary.version: bumped when a post of the thread is erased or anonymised

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06

A message page lists its parent and replies by subject and sender, and a reader's
browser keeps the page with an ETag (web/caching). Erasing a reply changes what the
parent's page shows without changing anything of the parent itself, so the page's
ETag takes the thread's version too, and erasure bumps it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("thread_summary", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("thread_summary", schema=None) as batch_op:
        batch_op.drop_column("version")
