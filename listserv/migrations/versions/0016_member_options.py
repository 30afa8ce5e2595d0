"""Member options: own_posts, skip_if_addressed, acknowledge, and followed threads

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

member gains three options a member sets for themself (by mail, CLI or their page):
own_posts (a copy of their own posts; on), skip_if_addressed (no list copy of a post
whose To or Cc names them; off) and acknowledge (a short mail when their post went out;
off). The table follow holds the threads a member gets post by post whatever their
delivery, the way mute holds those they get none of.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Plain server defaults ("1", "0": booleans on both SQLite and PostgreSQL): with an
# expression default alembic rebuilds a SQLite table (see 0012).
_OPTIONS = (("own_posts", "1"), ("skip_if_addressed", "0"), ("acknowledge", "0"))


def upgrade() -> None:
    with op.batch_alter_table("member", schema=None) as batch_op:
        for name, default in _OPTIONS:
            batch_op.add_column(sa.Column(name, sa.Boolean(), nullable=False,
                                          server_default=default))
    op.create_table(
        "follow",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("thread_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["mailing_list.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("list_id", "address", "thread_id"),
    )
    with op.batch_alter_table("follow", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_follow_list_id"), ["list_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_follow_thread_id"), ["thread_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("follow", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_follow_thread_id"))
        batch_op.drop_index(batch_op.f("ix_follow_list_id"))
    op.drop_table("follow")
    with op.batch_alter_table("member", schema=None) as batch_op:
        for name, _ in reversed(_OPTIONS):
            batch_op.drop_column(name)
