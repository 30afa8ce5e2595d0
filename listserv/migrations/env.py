"""Alembic environment: run with the engine listserv already configured, one process
at a time (db.lock_migrations); the revision found once it is this one's turn goes back
to db.upgrade as the "before" attribute."""

from alembic import context
from sqlmodel import SQLModel

from listserv import (
    db,
    models,  # noqa: F401  (registers the tables)
    queue_tables,  # noqa: F401
)

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    db.lock_migrations(connection)
    context.configure(connection=connection, target_metadata=SQLModel.metadata,
                      render_as_batch=True)
    context.config.attributes["before"] = context.get_context().get_current_revision()
    context.run_migrations()
