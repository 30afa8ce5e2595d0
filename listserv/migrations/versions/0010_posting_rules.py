"""Who may post: member_action, new_member_holds, server-wide bans, header rules

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

mailing_list gains member_action (accept, hold, reject) and new_member_holds (a new
member's first N posts held); ban holds the sender patterns banned from every list,
header_rule an owner's rules on header fields (X-Spam-Flag: YES -> discard). The
message index on (list_id, from_address) counts a member's posts so far. sender_rule
keeps its columns: its `address` now holds a pattern, and its action may be `hold`.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain server defaults: with an expression default alembic rebuilds a SQLite table,
    # and dropping mailing_list cascades to every member and message (see 0003).
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "member_action", sa.Enum("accept", "hold", "reject", name="memberaction",
                                     native_enum=False, length=32),
            nullable=False, server_default="accept"))
        batch_op.add_column(sa.Column("new_member_holds", sa.Integer(), nullable=False,
                                      server_default="0"))
    op.create_table(
        "ban",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pattern", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pattern"),
    )
    op.create_table(
        "header_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("header", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pattern", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("action", sa.Enum("hold", "reject", "discard", name="headeraction",
                                    native_enum=False, length=32), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["mailing_list.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_header_rule_list_id", "header_rule", ["list_id"])
    op.create_index("ix_message_list_from", "message", ["list_id", "from_address"])


def downgrade() -> None:
    op.drop_index("ix_message_list_from", table_name="message")
    op.drop_index("ix_header_rule_list_id", table_name="header_rule")
    op.drop_table("header_rule")
    op.drop_table("ban")
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.drop_column("new_member_holds")
        batch_op.drop_column("member_action")
