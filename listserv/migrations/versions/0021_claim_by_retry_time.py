"""The claim reads new jobs by turn and tried ones by their next attempt's time

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06

Behind a long smarthost outage, a claim read down ix_delivery_claim (every pending job
by lane and turn) past every deferred job before it found a due one: a million
deferred jobs, a million rows read per claim. The turns' indexes now hold only new jobs
(never tried: due at once), and ix_delivery_retry holds the tried ones by lane and
next attempt's time, so a claim reads only the jobs it may take.
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_PENDING = sa.text("done_at IS NULL")  # as in 0019
_NEW = sa.text("done_at IS NULL AND attempts = 0")  # queue_tables.NEW_JOBS
_TRIED = sa.text("done_at IS NULL AND attempts > 0")  # queue_tables.TRIED_JOBS


def _turn_indexes(where: sa.TextClause) -> None:
    op.drop_index("ix_delivery_list_turn", "delivery")
    op.drop_index("ix_delivery_claim", "delivery")
    op.create_index("ix_delivery_claim", "delivery", ["lane", "turn", "id"],
                    sqlite_where=where, postgresql_where=where)
    op.create_index("ix_delivery_list_turn", "delivery", ["list_id", "turn"],
                    sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    _turn_indexes(_NEW)
    op.create_index("ix_delivery_retry", "delivery", ["lane", "next_attempt_at", "id"],
                    sqlite_where=_TRIED, postgresql_where=_TRIED)


def downgrade() -> None:
    op.drop_index("ix_delivery_retry", "delivery")
    _turn_indexes(_PENDING)
