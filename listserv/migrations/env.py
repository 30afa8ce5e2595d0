"""Alembic environment: run with the engine listserv already configured."""

from alembic import context
from sqlmodel import SQLModel

from listserv import models  # noqa: F401  (registers the tables)

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=SQLModel.metadata,
                      render_as_batch=True)
    context.run_migrations()
