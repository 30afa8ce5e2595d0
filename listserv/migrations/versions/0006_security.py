"""index on message (mail_from, received_at) for the per-sender rate limit; tokens
split into a lookup part and a hashed secret

Tokens in flight keep working: the 32 characters a member holds are the same, only
the row now keeps the first 16 as they are and a SHA-256 of the last 16.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 09:00:00.000000
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


_LOOKUP = 16


def upgrade() -> None:
    op.create_index("ix_message_sender_received", "message", ["mail_from", "received_at"])
    op.add_column("token", sa.Column("secret_hash", sa.String(), nullable=False,
                                     server_default=""))
    token = sa.table("token", sa.column("id", sa.Integer), sa.column("token", sa.String),
                     sa.column("secret_hash", sa.String))
    conn = op.get_bind()
    for row in conn.execute(sa.select(token.c.id, token.c.token)).all():
        if len(row.token) > _LOOKUP:
            secret = hashlib.sha256(row.token[_LOOKUP:].encode()).hexdigest()
            conn.execute(token.update().where(token.c.id == row.id).values(
                token=row.token[:_LOOKUP], secret_hash=secret))


def downgrade() -> None:
    # The secrets are gone; tokens in flight stop working, and expire anyway.
    op.execute("DELETE FROM token")
    op.drop_column("token", "secret_hash")
    op.drop_index("ix_message_sender_received", table_name="message")
