"""The HTTP edge: a Starlette app served by uvicorn in the server's event loop."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from listserv import db, roster
from listserv.config import Config
from listserv.templating import render


def make_app(engine: Engine, config: Config) -> Starlette:
    async def index(request: Request) -> Response:
        def lists() -> list:
            with db.session(engine) as session:
                return roster.all_lists(session)
        return HTMLResponse(render("web/index.html", lists=await asyncio.to_thread(lists),
                                   base_url=config.web.base_url))

    return Starlette(routes=[Route("/", index)])
