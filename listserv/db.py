"""Engine and sessions: the one way to reach the database.

The differences between SQLite (the embedded default) and PostgreSQL live here only.
"""

from __future__ import annotations

import collections
import importlib.metadata
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    any_,
    bindparam,
    event,
    func,
    literal,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# alembic is imported only where a migration runs or a revision is compared: loading it
# was a third of the time of a command such as `listserv member add`.
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("listserv.db")
T = TypeVar("T")


class DatabaseError(Exception):
    """The database cannot be reached or is not in a usable state; the text says why."""


# How the drivers report a database that is away (stopped, unreachable, its disk full)
# rather than a query that is wrong: the web answers these with 503, not 500.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)

# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound values.
_IN_CHUNK = 1000


def chunks(values: Iterable[str]) -> Iterator[list[str]]:
    """`values` cut into lists short enough for one IN (...) each."""
    values = list(values)
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def among(session: Session, column: ColumnElement[T], values: list[T]) -> ColumnElement[bool]:
    """`column IN values` for one of chunks(): on PostgreSQL `= ANY` of one array
    parameter, since psycopg turns a query's placeholders into $n in Python and a
    1,000-id IN list took it ~0.1 s, a fifth of an import's time."""
    if session.get_bind().dialect.name == "sqlite":
        return column.in_(values)
    return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))


def normalize_url(url: str) -> str:
    """Let users write postgresql://; we only ship the psycopg 3 driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def holds_bytes(engine: Engine, column: ColumnElement[bytes], needle: bytes
                ) -> ColumnElement[bool]:
    """`column` (a BLOB or bytea) holds `needle`: instr and position are each
    database's own, and LIKE does not read SQLite's BLOBs as text."""
    if is_sqlite(engine):
        return func.instr(column, needle) > 0
    return func.position(literal(needle, LargeBinary).op("IN")(column)) > 0


def make_engine(url: str, durable: bool = True) -> Engine:
    """An engine whose transactions are safe for several threads of one process.

    durable=False is for delivery bookkeeping: its commits survive our process dying
    (kill -9) but not the machine losing power, where the worst case is a copy sent
    twice. Mail we answered 250 for always goes through a durable engine.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _tune_sqlite(engine, "FULL" if durable else "NORMAL")
    else:
        engine = create_engine(url, pool_size=10, max_overflow=10)
        _ping_when_idle(engine)
        if not durable:
            _relax_postgresql(engine)
    return engine


PING_AFTER_IDLE = 1.0  # seconds in the pool after which a connection is tried first


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping for connections that sat in the pool: a dead one is replaced (the
    pool tries another on DisconnectionError). Not for every checkout: that was a round
    trip more for each of the delivery worker's commits, every few milliseconds."""
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc


def _relax_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()


def _tune_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event decide how transactions start (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer 250 (NORMAL: see make_engine).
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    lock = _writer_lock(engine.url.database or "")

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # A deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY when another thread wrote meanwhile; IMMEDIATE waits its turn.
        # Read-only sessions (RCPT lookups, pages) need no write lock: in WAL mode they
        # read a snapshot and never queue behind writers.
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
            return
        # Writers of this process queue on a lock of ours first: SQLite's busy handler
        # sleeps up to 100 ms between tries, so with many short writers (delivery
        # bookkeeping next to a receiver that always has a group to write) a waiter
        # slept through the gaps and starved. Other processes still meet SQLite's. The
        # lock is given back when the connection returns to the pool, after its COMMIT
        # (the "commit" event comes before it).
        if "writer_lock" not in conn.info and lock.acquire(timeout=WRITER_WAIT):
            conn.info["writer_lock"] = lock
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn.info)
            raise

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        _release(record.info)


def _release(info: dict) -> None:
    held = info.pop("writer_lock", None)
    if held is not None:
        held.release()


# How long a writer waits for the others of its process before it leaves the wait to
# SQLite's own busy handler (a thread that nests two write sessions would wait forever).
WRITER_WAIT = 30.0


class FairLock:
    """A lock handed to its waiters in the order they came. threading.Lock is not fair:
    the receiver, which always has the next group ready, took it again and again while
    the delivery bookkeeping waited."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held:
                self._held = True
                return True
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        if baton.acquire(timeout=timeout):
            return True  # handed over by release()
        with self._guard:
            if baton in self._waiters:
                self._waiters.remove(baton)
                return False
        return True  # handed over as the wait ran out

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()  # still held: now by that waiter
            else:
                self._held = False


_writer_locks: dict[str, FairLock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(database: str) -> FairLock:
    """One lock per SQLite file, shared by every engine of this process on it."""
    key = str(Path(database).resolve()) if database and database != ":memory:" else database
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, FairLock())


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session whose objects stay readable after commit."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


@contextmanager
def read_session(engine: Engine, *, snapshot: bool = True) -> Iterator[Session]:
    """A session for reads only; on SQLite it does not take the write lock. Without
    `snapshot`, on PostgreSQL each statement reads as of its own start (autocommit): a
    page's few reads were wrapped in BEGIN and ROLLBACK, two of its five round trips to
    the server, and on a loaded machine each costs a wait for the server's turn. For
    what tolerates a write landing between its reads (an archive page)."""
    options: dict = {"readonly": True}
    if not snapshot and engine.dialect.name == "postgresql":
        options["isolation_level"] = "AUTOCOMMIT"
    with Session(engine.execution_options(**options), expire_on_commit=False) as s:
        yield s


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> str | None:
    """Run the alembic migrations up to the newest; the revision the database had
    when this process got its turn (see lock_migrations), None for an empty one."""
    from alembic import command

    config = _alembic_config(engine)
    try:
        command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot upgrade the database: {exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]}") from exc
    return config.attributes["before"]


# The first key of the advisory lock that migrations take on PostgreSQL ("lsmg"); the
# second is the schema's name, hashed, so schemas of one database do not wait on each other.
MIGRATION_LOCK = 0x6C736D67


def lock_migrations(connection: Connection) -> None:
    """Make the other processes that would migrate this schema wait until this
    connection's transaction ends. Two `listserv db upgrade` (or `serve --upgrade`, or
    the first start of several servers on an empty database) at once would otherwise
    both find the schema old and both run the same migrations: on PostgreSQL the second
    failed half-way (its tables already there). The migrations then read the revision
    again, and the second finds nothing to do. On SQLite the transaction already holds
    the database's write lock from its BEGIN IMMEDIATE (see _tune_sqlite) to its end."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(
            f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK}, hashtext(current_schema()))"))


def _revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open database: {str(exc).splitlines()[0]}") from exc


@dataclass(frozen=True)
class Revisions:
    """Where the database's schema is, next to where this code's migrations end."""

    database: str | None  # None: an empty database, no schema yet
    code: str
    known: frozenset[str]  # every revision this code has a migration for

    @property
    def current(self) -> bool:
        return self.database == self.code

    @property
    def code_is_older(self) -> bool:
        """The database was migrated by a newer listserv: this code cannot use it."""
        return self.database is not None and self.database not in self.known


def revisions(engine: Engine) -> Revisions:
    """Read only: neither creates nor upgrades anything (`listserv db status`)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(engine))
    known = frozenset(r.revision for r in script.walk_revisions())
    return Revisions(_revision(engine), script.get_current_head() or "", known)


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


_REVISION = re.compile(r"""^(down_revision|revision)\b[^=\n]*=\s*["']([^"']+)["']""", re.M)


def migration_files() -> tuple[frozenset[str], str | None]:
    """The revisions this code has migrations for and the newest of them (None unless
    exactly one is no other's parent), read from the files without loading alembic;
    tests/test_migrations.py keeps them equal to alembic's."""
    found: dict[str, set[str]] = {"revision": set(), "down_revision": set()}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            found[kind].add(value)
    heads = found["revision"] - found["down_revision"]
    return frozenset(found["revision"]), next(iter(heads)) if len(heads) == 1 else None


def _stored_revision(engine: Engine) -> str | None:
    """The schema's revision read with plain SQL; None when there is none yet, or when
    it cannot be read (alembic's own check then says why)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def ensure_schema(engine: Engine, upgrade_existing: bool = False) -> Revisions:
    """Create the schema in an empty database, so a first `listserv serve` just works;
    but upgrade an existing one only when asked (`db upgrade`, `serve --upgrade`): on a
    shared PostgreSQL the first process of a newer version would otherwise migrate the
    schema under the older ones still running, without a backup or a word."""
    known, head = migration_files()
    stored = _stored_revision(engine)
    if stored is not None and stored == head:
        return Revisions(stored, head, known)  # the usual case, without loading alembic
    found = revisions(engine)
    if found.current:
        return found
    if found.code_is_older:
        raise DatabaseError(
            f"the database schema is at revision {found.database}, newer than this "
            f"listserv {version()} knows (up to {found.code}): upgrade listserv")
    if found.database is not None and not upgrade_existing:
        raise DatabaseError(
            f"the database schema is at revision {found.database}, this listserv needs "
            f"{found.code}: back it up and run `listserv db upgrade`")
    found = Revisions(upgrade(engine), found.code, found.known)
    if found.current:
        log.info("the database schema was upgraded to %s by another process meanwhile",
                 found.code)
    elif found.database is None:
        log.info("created the database schema (revision %s) in %s", found.code, _where(engine))
    else:
        log.warning("upgraded the database schema of %s from revision %s to %s",
                    _where(engine), found.database, found.code)
    return found


def status(found: Revisions) -> str:
    """Both revisions and what to do, so an operator can tell before restarting."""
    if found.current:
        verdict = "up to date"
    elif found.database is None:
        verdict = "empty database: the first command or `listserv serve` creates the schema"
    elif found.code_is_older:
        verdict = "the database is newer than this listserv: upgrade listserv"
    else:
        verdict = "the database is older: back it up and run `listserv db upgrade`"
    return (f"database revision: {found.database or 'none'}\n"
            f"code revision: {found.code}\n{verdict}")


def upgraded(before: Revisions) -> str:
    """One line for `db upgrade`: what it did, from which revision to which."""
    if before.current:
        return f"database is up to date (revision {before.code})"
    if before.database is None:
        return f"created the database schema (revision {before.code})"
    return f"upgraded the database schema from revision {before.database} to {before.code}"


def version() -> str:
    """This listserv's version, as installed."""
    try:
        return importlib.metadata.version("listserv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def open_database(url: str, upgrade_existing: bool = False) -> Engine:
    """The engine every command uses: connected, with the schema in place."""
    engine = make_engine(url)
    try:
        ensure_schema(engine, upgrade_existing)
    except DatabaseError:
        engine.dispose()
        raise
    return engine
