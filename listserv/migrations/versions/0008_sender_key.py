"""message.sender_key, the envelope sender in lower case, for the per-sender rate limit

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

The hourly limit counted the envelope sender exactly as given, so a member could
post past it by writing the address in other letter cases (`Alice@`, `ALICE@`). The
index the count reads moves from (mail_from, received_at) to (sender_key,
received_at). Existing rows get the key from the database's lower(); only the last
hour's rows are ever counted.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("message", sa.Column("sender_key", sa.String(), nullable=False,
                                       server_default=""))
    op.drop_index("ix_message_sender_received", table_name="message")
    op.execute("UPDATE message SET sender_key = lower(mail_from)")
    op.create_index("ix_message_sender_received", "message", ["sender_key", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_message_sender_received", table_name="message")
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("sender_key")
    op.create_index("ix_message_sender_received", "message", ["mail_from", "received_at"])
