"""list setting dmarc (DMARC mitigation: auto, always, off)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "dmarc",
                sa.Enum("auto", "always", "off", name="dmarcmode", native_enum=False,
                        length=32),
                nullable=False,
                server_default="auto",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("mailing_list", schema=None) as batch_op:
        batch_op.drop_column("dmarc")
