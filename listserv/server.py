"""`listserv serve`: one event loop runs the SMTP receiver, the delivery worker, the web
app and the housekeeping loops together (or those of its `--roles`), and stops them all
within seconds of SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from listserv import (
    bounces,
    db,
    deliver,
    digest,
    health,
    held_summary,
    listeners,
    metrics,
    moderation,
    preflight,
    receive,
    retention,
    signing,
    supervise,
    tokens,
    web,
)
from listserv.config import ROLES, Config
from listserv.descriptors import ExhaustionLog
from listserv.leadership import Leadership
from listserv.models import utcnow
from listserv.protocol import protocol_factory, tls_context

log = logging.getLogger("listserv")


# How often held posts are checked for expiry; they expire after days, so minutes is fine.
HOUSEKEEPING_SECONDS = 600


def _ensure_secret(engine: Engine, config: Config) -> None:
    """Generate the link-signing secret durably before any copy carries a signed link."""
    with db.session(engine) as session:
        tokens.server_secret(session, config)
        session.commit()


def _expire_holds(engine: Engine, config: Config) -> int:
    with db.session(engine) as session:
        count = moderation.expire_holds(session, config)
        session.commit()
    return count


def _bounce_schedule(engine: Engine, config: Config) -> int:
    """Bounce warnings that are due, and removals after the last one."""
    with db.session(engine) as session:
        count = bounces.housekeep(session, config)
        session.commit()
    return count


def _held_summaries(engine: Engine, config: Config) -> int:
    """The daily moderation summary, once its hour has come."""
    with db.session(engine) as session:
        count = held_summary.send(session, config)
        session.commit()
    return count


async def housekeeping(engine: Engine, config: Config, stop: asyncio.Event,
                       wake: Callable[[], None]) -> None:
    """Expire old holds now and then, telling their authors; send the daily moderation
    summary; warn and remove members whose delivery bounces; delete old bookkeeping
    ([retention])."""

    async def step() -> None:
        expired = await asyncio.to_thread(_expire_holds, engine, config)
        warned = await asyncio.to_thread(_bounce_schedule, engine, config)
        summaries = await asyncio.to_thread(_held_summaries, engine, config)
        swept = await asyncio.to_thread(retention.sweep, engine, config.retention)
        if expired:
            log.info("discarded %d expired held messages", expired)
        if swept:
            log.info("retention: deleted %d finished delivery jobs, %d copies and %d "
                     "tokens, emptied %d old bounces", swept.deliveries, swept.copies,
                     swept.tokens, swept.bounce_raw)
        if expired or warned or summaries:
            wake()

    await supervise.periodic("housekeeping", step,
                             lambda: supervise.pause(HOUSEKEEPING_SECONDS, stop), stop)


# Digests come due at an hour of the day; a check a minute sends them on time.
DIGEST_CHECK_SECONDS = 60
# Under a stream of posts `check` is set all the time, and each check aggregates every
# pending digest item: a digest that filled up may wait this long, not every post.
DIGEST_SIZE_CHECK_SECONDS = 1.0


def _send_digests(engine: Engine, config: Config) -> list[digest.Sent]:
    """Build every due digest, each list in a transaction of its own."""
    now = utcnow()
    with db.read_session(engine) as session:
        due = digest.due_lists(session, now)
    sent = []
    for list_id in due:
        with db.session(engine) as session:
            done = digest.build(session, config, list_id, now)
            session.commit()
        if done is not None:
            sent.append(done)
    return sent


async def digests(engine: Engine, config: Config, stop: asyncio.Event, check: asyncio.Event,
                  wake: Callable[[], None]) -> None:
    """Send the digests that are due: every minute, and when `check` is set (a post was
    accepted, so a digest may have reached its size), at most once a
    DIGEST_SIZE_CHECK_SECONDS."""

    async def step() -> None:
        check.clear()
        sent = await asyncio.to_thread(_send_digests, engine, config)
        for done in sent:
            metrics.DIGESTS.inc()
            log.info("digest %r: %d messages, to %d digest-mime, %d digest-plain and %d "
                     "summary members", done.issue.subject, done.messages, done.mime_members,
                     done.plain_members, done.summary_members)
        if sent:
            wake()

    async def wait() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(supervise.first(check, stop), DIGEST_CHECK_SECONDS)
        await supervise.pause(DIGEST_SIZE_CHECK_SECONDS, stop)

    await supervise.periodic("digests", step, wait, stop)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _housekeeper(leadership: Leadership, stop: asyncio.Event,
                       run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """The lock kept and the housekeeping loop run while it is held, as one task: when
    either ends, housekeeping no longer happens here (supervise.watch)."""
    await asyncio.gather(leadership.keep(stop), leadership.during(stop, run))


def _listening(config: Config, roles: tuple[str, ...], worker: deliver.Worker | None) -> str:
    """The "listening" log line: what this process serves, and where."""
    parts = [f"{config.smtp.protocol.upper()} on {config.smtp.host}:{config.smtp.port}"
             ] if "smtp" in roles else []
    web_only = "" if "web" in roles else " (/healthz and /metrics only)"
    parts.append(f"web on http://{config.web.host}:{config.web.port}/{web_only}")
    if worker is not None:
        parts.append(f"smarthost {worker.smarthosts.names()}")
    return f"listening: {', '.join(parts)}; roles {','.join(roles)}"


def _worker(config: Config, roles: tuple[str, ...]) -> deliver.Worker | None:
    """The delivery worker of a process with the deliver role, on an engine of its own
    whose commits skip the fsync (delivery bookkeeping: docs/postgresql.md)."""
    if "deliver" not in roles:
        return None
    bookkeeping = db.make_engine(config.database.url, durable=False)
    return deliver.Worker(bookkeeping, config)


def _app(engine: Engine, config: Config, loops: health.Loops, worker: deliver.Worker | None,
         roles: tuple[str, ...]) -> Starlette:
    """The pages with the web role; /healthz and /metrics in any case."""
    monitoring = health.routes(engine, loops, worker.smarthosts if worker else None, roles)
    if "web" in roles:
        return web.make_app(engine, config, monitoring)
    return Starlette(routes=monitoring)


def _housekeeping_tasks(engine: Engine, config: Config, stop: asyncio.Event,
                  digest_check: asyncio.Event, wake: Callable[[], None]
                  ) -> dict[str, asyncio.Task]:
    """The housekeeping and digest loops, run while this process holds the lock."""
    leadership = Leadership(engine)
    return {"housekeeping": asyncio.create_task(_housekeeper(
                leadership, stop, lambda until: housekeeping(engine, config, until, wake))),
            "digests": asyncio.create_task(leadership.during(
                stop, lambda until: digests(engine, config, until, digest_check, wake)))}


async def serve(engine: Engine, config: Config, stop: asyncio.Event | None = None,
                ready: Callable[[Config], None] | None = None,
                roles: tuple[str, ...] = ROLES) -> None:
    """Run until `stop` is set (by a signal when run from the command line). `ready` is
    called once listening, with the config naming the ports bound (port 0: any free one).
    `roles` says what this process does (docs/postgresql.md); /healthz and /metrics are
    served whatever they are, each process having its own counters."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(ExhaustionLog())
    stop = stop or asyncio.Event()
    smtp_socket = listeners.bind(config.smtp.host, config.smtp.port) if "smtp" in roles else None
    web_socket = listeners.bind(config.web.host, config.web.port)
    config = listeners.bound(config, smtp_socket, web_socket)
    await asyncio.to_thread(_ensure_secret, engine, config)
    await asyncio.to_thread(preflight.warn_about_base_url, engine, config)
    worker = _worker(config, roles)
    tasks = {"delivery": asyncio.create_task(worker.run(stop))} if worker else {}
    digest_check = asyncio.Event()
    handler = smtp = None
    if smtp_socket is not None:
        handler = receive.Handler(engine, config, worker, on_accepted=digest_check.set)
        smtp = await loop.create_server(protocol_factory(handler, config), sock=smtp_socket)
    loops = health.Loops()
    http = _Uvicorn(uvicorn.Config(_app(engine, config, loops, worker, roles),
                                   host=config.web.host, port=config.web.port,
                                   log_level="warning", lifespan="off"))
    tasks["web"] = asyncio.create_task(http.serve([web_socket]))
    if "housekeeping" in roles:
        tasks |= _housekeeping_tasks(engine, config, stop, digest_check,
                                     worker.wake if worker else _nothing)
    for name, task in tasks.items():
        loops.watch(name, task)  # for /healthz
    # Logs if a smarthost cannot be reached.
    probe = asyncio.create_task(worker.smarthosts.probe() if worker else asyncio.sleep(0))
    log.info("%s", _listening(config, roles, worker))
    if ready is not None:
        ready(config)
    try:
        await supervise.watch(tasks, stop)
    finally:
        log.info("stopping")
        if smtp is not None:
            smtp.close()
        http.should_exit = True
        await asyncio.wait([*tasks.values(), probe], timeout=10)
        if handler is not None:
            handler.group.close()
        # Python 3.12+ waits here for open client connections; do not hang on them.
        if smtp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(smtp.wait_closed(), 2)


def _nothing() -> None:
    """Wakes no worker: this process has none (no deliver role)."""


def check_keys(config: Config) -> None:
    """Load the TLS and DKIM keys once before the database is opened (or created), so a
    key that cannot be loaded stops `serve` with its one line and nothing else."""
    tls_context(config.smtp)
    signing.Signer.from_config(config.dkim)


def run(engine: Engine, config: Config, roles: tuple[str, ...] = ROLES) -> None:
    """Entry point for the CLI: serve with signal handling until told to stop."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(engine, config, stop, roles=roles)

    try:
        asyncio.run(main())
    except supervise.LoopDied:
        raise SystemExit(1) from None  # logged with its reason by supervise.watch
