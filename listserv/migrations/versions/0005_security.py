"""index on message (mail_from, received_at) for the per-sender rate limit

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:00:00.000000
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_message_sender_received", "message", ["mail_from", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_message_sender_received", table_name="message")
