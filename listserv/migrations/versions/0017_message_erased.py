"""Erased messages: when and why a message was made a tombstone

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

message gains erased_at (NULL: not erased) and erased_reason. An erased message keeps
its row, Message-ID, date and thread node, so replies keep their parent; its bytes
become a tombstone (erasure.py). The confirmation an author answers to erase a post
is a token of a new kind, which needs no change (the kind is stored as text).
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("erased_reason", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("erased_reason")
        batch_op.drop_column("erased_at")
