"""What every endpoint of the web app shares: the objects make_app puts on `app.state`,
a page rendered from templates/web, database work off the event loop, and the numbers
a visitor types into a URL, checked before any query sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from listserv import db
from listserv.config import MAX_INT, Config
from listserv.templating import render

T = TypeVar("T")


def engine(request: Request) -> Engine:
    """The database every page reads and writes (set by make_app)."""
    return request.app.state.engine


def config(request: Request) -> Config:
    """The server's config (set by make_app): base URL, secret, link lifetimes."""
    return request.app.state.config


def base_url(request: Request) -> str:
    """`[web] base_url` without its closing "/": what every link on a page starts with."""
    return config(request).web.base_url.rstrip("/")


def page(request: Request, name: str, status: int = 200, /, **context: Any) -> HTMLResponse:
    """templates/web/NAME.html, which every page extends from base.html."""
    return HTMLResponse(render(f"web/{name}.html", base_url=base_url(request), **context),
                        status_code=status)


def invalid(request: Request, kind: str, status: int) -> HTMLResponse:
    """The page for a link we did not sign, or one that was used or has expired."""
    return page(request, "invalid", status, kind=kind)


async def in_db(request: Request, work: Callable[[Session], T]) -> T:
    """Run database work off the event loop, in one committed transaction."""
    def call() -> T:
        with db.session(engine(request)) as session:
            result = work(session)
            session.commit()
            return result
    return await asyncio.to_thread(call)


# Past any archive's last page (at 50 threads a page); a number beyond is no page, not
# an offset for the database to choke on.
MAX_PAGE = 1_000_000


def page_number(request: Request) -> int:
    """?page=N of a paged list: a whole number from 1, else 400; past MAX_PAGE, 404."""
    value = request.query_params.get("page", "1")
    if not (value.isascii() and value.isdigit()) or not value.strip("0"):
        raise HTTPException(400, "The page number must be a whole number from 1.")
    if len(value.lstrip("0")) > len(str(MAX_PAGE)) or int(value) > MAX_PAGE:
        raise HTTPException(404, "There is no such page.")
    return int(value)


def path_number(request: Request, name: str) -> int:
    """An {x:number} of the path that a row could hold; any other is 404, not a query."""
    value = request.path_params[name]
    if not 1 <= value <= MAX_INT:
        raise HTTPException(404, "There is no such page.")
    return value
