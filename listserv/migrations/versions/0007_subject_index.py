"""a list's real nodes by (list, subject key, date)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Replaces the index on subject_key alone: the subject fallback asks for the latest
message with a subject in a window of dates, and with only the key indexed it read
every message of the list that ever had that subject (a common one: hundreds) for
each subject-only reply, so an import slowed as the archive grew.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("thread_node", schema=None) as batch_op:
        batch_op.create_index("ix_thread_node_subject", ["list_id", "subject_key", "date"],
                              unique=False)
        batch_op.drop_index("ix_thread_node_subject_key")


def downgrade() -> None:
    with op.batch_alter_table("thread_node", schema=None) as batch_op:
        batch_op.create_index("ix_thread_node_subject_key", ["subject_key"], unique=False)
        batch_op.drop_index("ix_thread_node_subject")
