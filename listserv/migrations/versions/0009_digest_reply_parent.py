"""message.inferred_parent: a digest reply's parent as derived data, its bytes as received

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A reply to a whole digest was stored with new In-Reply-To, References and Subject
fields, so the archive no longer held what its author sent. The bytes are now kept as
received; the item it answers goes here, and its inferred subject into message.subject.
Rows stored before keep the rewritten bytes they have (what was received is gone).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("message", sa.Column("inferred_parent", sa.String(), nullable=False,
                                       server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("inferred_parent")
