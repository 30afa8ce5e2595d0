"""Many rows at once: the writes of a bulk load (an archive import) and of rows two
processes may add together, and the statistics a bulk load leaves stale. The
statements differ between SQLite and PostgreSQL; their callers do not.
"""

from __future__ import annotations

from sqlalchemy import Table, TableClause, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from listserv.db import is_sqlite


def insert_missing(session: Session, table: Table, rows: list[dict]) -> None:
    """Insert the rows whose primary key is not there yet, leaving the others alone:
    two processes adding one row at once must not fail the loser's whole transaction
    (ON CONFLICT DO NOTHING, spelled by each database's dialect)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def insert_new(session: Session, table: TableClause, rows: list[dict]) -> None:
    """Insert rows that cannot be there yet (no ON CONFLICT), all with the same keys, in
    the session's transaction. PostgreSQL gets them by COPY: as a pipelined executemany,
    psycopg built and sent a Bind and an Execute for each row, most of an import's own
    time besides waiting (some 50,000 rows a 1,000-message batch); COPY streams them,
    each value through its column's type first and the columns' constant defaults
    filled in, as an INSERT would."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        session.connection().execute(insert(table), rows)
        return
    defaults = {c.name: c.default.arg for c in table.c  # type: ignore[attr-defined]
                if c.name not in rows[0] and c.default is not None and c.default.is_scalar}
    columns = [(name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
               for name in [*rows[0], *defaults]]
    quote = dialect.identifier_preparer.quote
    statement = (f"COPY {quote(table.name)} ({', '.join(quote(n) for n, _ in columns)}) "
                 "FROM STDIN")
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for row in rows:
            row = {**row, **defaults} if defaults else row
            copy.write_row([row[name] if process is None else process(row[name])
                            for name, process in columns])


def refresh_statistics(engine: Engine, *, lookups_only: bool = False) -> None:
    """After a bulk load (an archive import), on PostgreSQL: its planner reads the
    tables' statistics, and until autovacuum came round it planned a 100,000-message
    archive as an empty one (a page of threads sorted every thread). `lookups_only`:
    during an import, only what its own lookups are planned by (the threads, the
    messages' count), not the message text and search index, which cost most of the
    ANALYZE (4.6 s of a 20,000-message import, done five times). At the end the search
    index is also vacuumed: its GIN index keeps the newest rows in a pending list (up to
    4 MB) that every search reads through (2-3 ms a search of a rare word at 20,000
    messages), and the fresh rows' pages get marked all-visible (tens of ms). SQLite's
    planner keeps no statistics here."""
    if is_sqlite(engine):
        return
    tables = ("thread_node, thread_summary, message (id)" if lookups_only
              else "message, thread_node, thread_summary")
    with engine.connect() as connection:
        connection.execute(text(f"ANALYZE {tables}"))
        connection.commit()
    if not lookups_only:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM (ANALYZE) message_search"))
