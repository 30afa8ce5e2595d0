"""GET /healthz and GET /metrics, for the operator's monitoring, and the registry of
background loops whose liveness /healthz reports.

Neither page is for the public: they say nothing secret, but a proxy in front of the
web pages should keep them to the monitoring network (docs/operations.md).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from listserv import db, metrics
from listserv.config import ROLES
from listserv.models import utcnow
from listserv.smarthosts import Smarthosts


class Loops:
    """The server's long-running tasks by name. A task that ended while the server
    runs has died: its work (delivery, digests, housekeeping, the web) no longer
    happens, and /healthz answers 503 so that the process is restarted."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task] = {}

    def watch(self, name: str, task: asyncio.Task) -> asyncio.Task:
        self._tasks[name] = task
        return task

    def alive(self) -> dict[str, bool]:
        return {name: not task.done() for name, task in self._tasks.items()}


def _queue(engine: Engine) -> metrics.Queue:
    with db.read_session(engine) as session:
        return metrics.read_queue(session)


async def _read_queue(engine: Engine) -> metrics.Queue | None:
    """None when the database cannot be reached: that is what /healthz is asked."""
    try:
        return await asyncio.to_thread(_queue, engine)
    except SQLAlchemyError:
        return None


async def _probe(smarthosts: Smarthosts | None) -> dict[str, bool]:
    return await smarthosts.probe() if smarthosts is not None else {}


def routes(engine: Engine, loops: Loops, smarthosts: Smarthosts | None,
           roles: tuple[str, ...] = ROLES) -> list[Route]:
    """The two pages; `smarthosts` is None in a process without the deliver role, which
    sends nothing and so has no smarthost to report on."""

    async def healthz(_request: Request) -> Response:
        queue, reached = await asyncio.gather(_read_queue(engine), _probe(smarthosts))
        alive = loops.alive()
        healthy = queue is not None and all(alive.values())
        body = {"status": "ok" if healthy else "unavailable",
                "database": queue is not None,
                "smarthost": all(reached.values()) if smarthosts is not None else None,
                "smarthosts": reached,
                "oldest_queued_seconds": queue.oldest_age(utcnow()) if queue else None,
                "expansions": queue.expansions if queue else None,
                "expansion_stalled_seconds": (queue.expansion_stalled(utcnow())
                                              if queue else None),
                "backed_off": queue.backoffs if queue else None,
                "loops": alive, "roles": list(roles)}
        return JSONResponse(body, status_code=200 if healthy else 503,
                            headers={"Cache-Control": "no-store"})

    async def metrics_page(_request: Request) -> Response:
        queue = await _read_queue(engine)
        return Response(metrics.exposition(queue, utcnow()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return [Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"])]
