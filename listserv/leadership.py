"""Which `listserv serve` process runs housekeeping (digests, hold expiry, bounce
warnings, retention): on PostgreSQL the one holding a session-level advisory lock, on a
dedicated connection; on SQLite the one process there is. server.py runs its
housekeeping loops only while this process holds the lock.

The lock goes with its session: a holder killed (even with SIGKILL) or cut off loses it
as its connection ends, and another process with the housekeeping role takes it within
CHECK_SECONDS. A holder that loses its connection stops its loops and tries to take the
lock again, as any other process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from listserv import db, supervise

log = logging.getLogger("listserv")

# How often a process without the lock tries to take it, and the holder checks that its
# connection (and so the lock) is still there: the longest a dead holder's housekeeping
# waits for a successor.
CHECK_SECONDS = 2.0
# The lock's two keys: listserv's, and the schema's, so that listservs in several
# schemas of one database (the tests run so) each have their own housekeeper.
_TRY = text("SELECT pg_try_advisory_lock(1819505524, hashtext(current_schema()))")
# A dead peer is noticed by the kernel within seconds, not the default two hours: a
# holder on the far side of a broken network stops checking within CHECK_SECONDS plus
# this, and the database drops its session (and the lock) about as fast.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3, "tcp_user_timeout": 10_000, "connect_timeout": 10}


class Leadership:
    """Whether this process runs housekeeping now: `held` is set while it does."""

    def __init__(self, engine: Engine) -> None:
        self.url = engine.url
        self.sqlite = db.is_sqlite(engine)
        self.held = asyncio.Event()
        self._lost = asyncio.Event()

    async def keep(self, stop: asyncio.Event) -> None:
        """Take the lock and keep it until `stop`; after a database outage, take it again
        (or leave it to the process that did meanwhile)."""
        if self.sqlite:
            self.held.set()
            await stop.wait()
            return
        lock = create_engine(self.url, poolclass=NullPool, connect_args=_KEEPALIVE,
                             isolation_level="AUTOCOMMIT")
        outage = supervise.Outage("housekeeping lock")
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._hold(lock, outage, stop)
                except SQLAlchemyError as exc:
                    if self.held.is_set():
                        log.warning("housekeeping stops in this process: its connection "
                                    "to the database failed (%s)", supervise.reason(exc))
                    self._release()
                    await supervise.pause(outage.failed(exc, started), stop)
        finally:
            self._release()
            lock.dispose()

    async def _hold(self, lock: Engine, outage: supervise.Outage,
                    stop: asyncio.Event) -> None:
        """On one connection: try for the lock until it is ours, then check the
        connection until `stop`. Closing the connection gives the lock back."""
        connection = await asyncio.to_thread(lock.connect)
        outage.recovered()
        try:
            while not stop.is_set():
                if self.held.is_set():
                    await asyncio.to_thread(_check, connection)
                elif await asyncio.to_thread(_take, connection):
                    log.info("housekeeping runs in this process (it holds the lock)")
                    self._lost.clear()
                    self.held.set()
                await supervise.pause(CHECK_SECONDS, stop)
        finally:
            await asyncio.to_thread(_close, connection)

    def _release(self) -> None:
        self.held.clear()
        self._lost.set()

    async def during(self, stop: asyncio.Event,
                     run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """`run(until)` each time this process holds the lock, until `stop`; `until` is
        set when it loses it (or `stop` is), and `run` returns then."""
        while not stop.is_set():
            if not await supervise.first(self.held, stop):
                return
            until = asyncio.Event()
            relay = asyncio.create_task(_relay(until, self._lost, stop))
            try:
                await run(until)
            finally:
                relay.cancel()


async def _relay(until: asyncio.Event, lost: asyncio.Event, stop: asyncio.Event) -> None:
    await supervise.first(lost, stop)
    until.set()


def _take(connection: Connection) -> bool:
    return bool(connection.execute(_TRY).scalar())


def _check(connection: Connection) -> None:
    connection.execute(text("SELECT 1"))


def _close(connection: Connection) -> None:
    with contextlib.suppress(SQLAlchemyError):
        connection.close()
