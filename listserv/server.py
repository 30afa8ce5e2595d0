"""`listserv serve`: one event loop runs the SMTP receiver, the delivery worker and the
web app together, and stops them all within seconds of SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn
from sqlalchemy.engine import Engine

from listserv import bouncing, db, deliver, moderation, receive, tokens, web
from listserv.config import Config

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
        count = bouncing.housekeep(session, config)
        session.commit()
    return count


async def housekeeping(engine: Engine, config: Config, stop: asyncio.Event,
                       wake: Callable[[], None]) -> None:
    """Expire old holds now and then, telling their authors; warn and remove members
    whose delivery bounces."""
    while not stop.is_set():
        try:
            expired = await asyncio.to_thread(_expire_holds, engine, config)
            warned = await asyncio.to_thread(_bounce_schedule, engine, config)
        except Exception:
            log.exception("housekeeping failed; trying again later")
        else:
            if expired:
                log.info("discarded %d expired held messages", expired)
            if expired or warned:
                wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HOUSEKEEPING_SECONDS)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(engine: Engine, config: Config, stop: asyncio.Event | None = None,
                ready: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (by a signal when run from the command line)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    await asyncio.to_thread(_ensure_secret, engine, config)
    bookkeeping = db.make_engine(config.database.url, durable=False)
    worker = deliver.Worker(bookkeeping, config.delivery, server_config=config)
    handler = receive.Handler(engine, config, on_queued=worker.wake)
    smtp = await loop.create_server(receive.protocol_factory(handler, config),
                                    host=config.smtp.host, port=config.smtp.port)
    http = _Uvicorn(uvicorn.Config(web.make_app(engine, config), host=config.web.host,
                                   port=config.web.port, log_level="warning",
                                   lifespan="off"))
    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(http.serve()),
             asyncio.create_task(housekeeping(engine, config, stop, worker.wake))]
    log.info("listening: %s on %s:%d, web on http://%s:%d/, smarthost %s:%d",
             config.smtp.protocol.upper(), config.smtp.host, config.smtp.port,
             config.web.host, config.web.port, config.delivery.smarthost_host,
             config.delivery.smarthost_port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        smtp.close()
        http.should_exit = True
        await asyncio.wait(tasks, timeout=10)
        # Python 3.12+ waits here for open client connections; do not hang on them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(smtp.wait_closed(), 2)


def run(engine: Engine, config: Config) -> None:
    """Entry point for the CLI: serve with signal handling until told to stop."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(engine, config, stop)

    asyncio.run(main())
