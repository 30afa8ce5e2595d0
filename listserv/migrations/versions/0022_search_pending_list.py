"""A smaller pending list for the search index on PostgreSQL

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

A GIN index takes new rows into a pending list, merged into the index proper when it
passes gin_pending_list_limit (4 MB by default) or by a vacuum, and every search reads
the whole list: with some 1,500 new messages in it, 2-3 ms more a search. 512 kB keeps
that to an eighth, and costs an archive import no time (it merges as much, in smaller
steps).
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX ix_message_search_document SET (gin_pending_list_limit = 512)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX ix_message_search_document RESET (gin_pending_list_limit)")
