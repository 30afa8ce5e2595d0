"""Owners hear about their list: notify_owners, and the owners' own templates

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

mailing_list gains notify_owners (on, off: a mail to the owners when someone joins,
leaves, is disabled by bounces or removed) and the texts of the owners' templates for
the welcome, the goodbye and the digest header (NULL: the built-in one), beside the
footer's. Invitations are tokens of a new kind, which needs no change (the kind is
stored as text).
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TEMPLATES = ("welcome", "goodbye", "digest_header")


def upgrade() -> None:
    # A plain server default: with an expression default alembic rebuilds a SQLite
    # table, and dropping mailing_list cascades to every member and message (see 0003).
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "notify_owners", sa.Enum("on", "off", name="notifyowners", native_enum=False,
                                     length=32),
            nullable=False, server_default="off"))
        for name in _TEMPLATES:
            batch_op.add_column(sa.Column(name, sqlmodel.sql.sqltypes.AutoString(),
                                          nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        for name in reversed(_TEMPLATES):
            batch_op.drop_column(name)
        batch_op.drop_column("notify_owners")
