"""a thread's nodes by (list, thread, date)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Replaces the index on thread_id alone: with it, SQLite's planner (no statistics) chose
the (list_id, date) index for "this thread's nodes in date order" and read every node
of the list for each message archived, so an import slowed as the archive grew.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("thread_node", schema=None) as batch_op:
        batch_op.create_index("ix_thread_node_thread", ["list_id", "thread_id", "date"],
                              unique=False)
        batch_op.drop_index("ix_thread_node_thread_id")


def downgrade() -> None:
    with op.batch_alter_table("thread_node", schema=None) as batch_op:
        batch_op.create_index("ix_thread_node_thread_id", ["thread_id"], unique=False)
        batch_op.drop_index("ix_thread_node_thread")
