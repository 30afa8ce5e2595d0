"""bounces: VERP per list, bounce scores on members, the bounce events

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 06:42:11.860343
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("bounce_class", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("diagnostic", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("sender_domain", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("message_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["mailing_list.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_pk"], ["message.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.create_index("ix_bounce_event_list_created", ["list_id", "created_at"],
                              unique=False)
        batch_op.create_index("ix_bounce_event_member", ["list_id", "address", "created_at"],
                              unique=False)

    # Server defaults, so the rows of an existing database upgrade in place. Plain
    # strings, not sa.text(): with an expression default alembic rebuilds a SQLite table
    # (copy, DROP, rename), and dropping mailing_list cascades to every member and message.
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "verp", sa.Enum("on", "off", name="verp", native_enum=False, length=32),
            nullable=False, server_default="on"))

    with op.batch_alter_table("member", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bounce_score", sa.Float(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("last_bounce_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("warnings_sent", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("last_warning_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("member", schema=None) as batch_op:
        batch_op.drop_column("last_warning_at")
        batch_op.drop_column("warnings_sent")
        batch_op.drop_column("last_bounce_at")
        batch_op.drop_column("bounce_score")

    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.drop_column("verp")

    with op.batch_alter_table("bounce_event", schema=None) as batch_op:
        batch_op.drop_index("ix_bounce_event_member")
        batch_op.drop_index("ix_bounce_event_list_created")

    op.drop_table("bounce_event")
