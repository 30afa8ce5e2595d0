"""member.nomail_until: no mail until a date, after which delivery resumes by itself

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

A member going away asks for no mail until they are back (the web page of their
subscriptions); the fan-out and the digests skip them until then, and nothing has to
switch delivery back on. (Another branch may add 0010: this one then revises it.)
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("member", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nomail_until", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("member", schema=None) as batch_op:
        batch_op.drop_column("nomail_until")
