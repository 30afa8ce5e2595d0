"""Content filter: what of a post members and the public get

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

mailing_list gains the content filter's settings: pass_types (the MIME types kept in
copies and on the archive's pages; "" keeps everything), collapse_alternatives and
html_to_text (off) and max_attachment_bytes (0: no limit). Their defaults keep every
existing list as it was; the stored bytes never change.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain server defaults: with an expression default alembic rebuilds a SQLite
    # table, and dropping mailing_list cascades to every member and message (see 0003).
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pass_types", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=False, server_default=""))
        batch_op.add_column(sa.Column("collapse_alternatives", sa.Boolean(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("html_to_text", sa.Boolean(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("max_attachment_bytes", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        for name in ("max_attachment_bytes", "html_to_text", "collapse_alternatives",
                     "pass_types"):
            batch_op.drop_column(name)
