"""Background loops that outlive a database outage, and die loudly when they die.

A stopped PostgreSQL or a full disk used to end the delivery worker's task with an
exception nobody awaited: the process went on answering 250 and serving pages while
nothing was delivered, without a log line. Here each loop logs the outage once, tries
again with a backoff of a few seconds at most, and says when the database is back; a
loop that ends anyway stops the whole process with its reason, for a supervisor to
restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlmodel import Session

from listserv import db

log = logging.getLogger("listserv")

T = TypeVar("T")

# The first wait after a failed try, doubled up to the last: the database's return is
# noticed within MAX_BACKOFF seconds, and a database that is away is not hammered.
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 4.0


class LoopDied(Exception):
    """A background loop ended before the server was told to stop; the text says which
    and why."""


def reason(exc: BaseException) -> str:
    """An exception on one line: the first line of a driver's message carries it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def unreachable(exc: BaseException) -> bool:
    """Whether a database error says the database is away (stopped, cut off, its disk
    full, locked), rather than that it refused a statement of ours."""
    return isinstance(exc, OperationalError | InterfaceError) or bool(
        getattr(exc, "connection_invalidated", False))


class Outage:
    """One loop's view of the database being away: one line when it goes, one when it
    is back, and the wait before the next try. A statement the database refuses (a
    constraint violated) is retried the same way, but said to be that, with its
    traceback: called an outage, it sent the operator to a database that was fine."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None
        self.back = 0.0  # when the database was last seen back
        self.delay = 0.0
        self.away = True  # what the failure that began the streak said

    def failed(self, exc: BaseException, started: float) -> float:
        """Note a try begun at `started` failed; the seconds to wait before the next. A
        try begun before the database was seen back (several tasks share an Outage)
        is the old outage, not a new one."""
        if self.since is None and started >= self.back:
            self.since = time.monotonic()
            self.away = unreachable(exc)
            if self.away:
                log.error("%s: database unavailable, retrying until it is back (%s)",
                          self.name, reason(exc))
            else:
                log.error("%s: a database statement failed, retrying (%s)", self.name,
                          reason(exc), exc_info=exc)
        self.delay = min(MAX_BACKOFF, self.delay * 2 or FIRST_BACKOFF)
        return self.delay

    def recovered(self) -> None:
        if self.since is not None:
            self.back = time.monotonic()
            log.info("%s: %s after %.1f s", self.name,
                     "database back" if self.away else "working again", self.back - self.since)
        self.since = None
        self.delay = 0.0


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, cut short when `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first(wanted: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for `wanted` or `stop`; whether `wanted` came (and `stop` did not)."""
    waits = [asyncio.create_task(wanted.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return wanted.is_set() and not stop.is_set()


async def retrying(outage: Outage, call: Callable[[], Awaitable[T]],
                   stop: asyncio.Event | None = None) -> T:
    """`call()` tried until the database answers. Once `stop` is set a failure is
    raised instead: a stopping server does not wait for the database to come back."""
    while True:
        started = time.monotonic()
        try:
            result = await call()
        except SQLAlchemyError as exc:
            if stop is not None and stop.is_set():
                raise
            await pause(outage.failed(exc, started), stop)
        else:
            outage.recovered()
            return result


class Calls:
    """The database calls of one background task, run on threads of its own (in the
    loop's default pool, bookkeeping queued behind the receiver's work of hundreds of
    clients, and deliveries stalled under load). The `until_done` ones wait out an
    outage (logged once for the task); once `stop` is set, a failure is raised
    instead. Each call gets a session as its first argument."""

    def __init__(self, engine: Engine, name: str, threads: int = 2) -> None:
        self.engine = engine
        self.outage = Outage(name)
        self.stop = asyncio.Event()  # the task's own, once it runs
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{name}-db")

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._in_session, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A read: it needs no turn at the write lock (a receiver under load holds it
        most of the time)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._in_read_session, fn, *args)

    async def until_done(self, fn: Callable[..., T], *args: Any) -> T:
        """`write`, through any outage of the database (see retrying)."""
        return await retrying(self.outage, lambda: self.write(fn, *args), self.stop)

    async def read_until_done(self, fn: Callable[..., T], *args: Any) -> T:
        return await retrying(self.outage, lambda: self.read(fn, *args), self.stop)

    def _in_session(self, fn: Callable[..., T], *args: Any) -> T:
        session: Session
        with db.session(self.engine) as session:
            return fn(session, *args)

    def _in_read_session(self, fn: Callable[..., T], *args: Any) -> T:
        session: Session
        with db.read_session(self.engine) as session:
            return fn(session, *args)


async def periodic(name: str, step: Callable[[], Awaitable[object]],
                   wait: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    """Run `step`, then `wait`, until `stop` is set. A database error is an outage (see
    Outage), any other error of a step is logged with its traceback and the loop goes
    on at its pace: one bad list must not stop the others' digests or warnings."""
    outage = Outage(name)
    while not stop.is_set():
        try:
            await retrying(outage, step, stop)
        except SQLAlchemyError:
            return  # stopping with the database away
        except Exception:
            log.exception("%s failed; trying again later", name)
        await wait()


async def watch(tasks: dict[str, asyncio.Task], stop: asyncio.Event) -> None:
    """Wait for `stop`; a task that ends first sets it and is raised as LoopDied, so the
    process exits with its reason instead of running half alive."""
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *tasks.values()],
                                 return_when=asyncio.FIRST_COMPLETED)
    if stopped in done:
        return
    stopped.cancel()
    stop.set()
    name, task = next((n, t) for n, t in tasks.items() if t in done)
    exc = None if task.cancelled() else task.exception()
    why = reason(exc) if exc is not None else "ended"
    log.critical("%s stopped: %s; exiting", name, why, exc_info=exc)
    raise LoopDied(f"{name} stopped: {why}")
