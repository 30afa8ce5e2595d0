"""Who may read a list's archive, and the one way every archive page reads the store:
a public archive is open to anyone, a private one to the holder of a member's pass,
which GET /{list}/access/{token} (the link a member was mailed) keeps in a cookie.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from listserv import db, roster, tokens, urls
from listserv.config import Config
from listserv.enums import ArchivePolicy
from listserv.models import MailingList
from listserv.web import pages

T = TypeVar("T")


def archive_cookie(mlist: MailingList) -> str:
    """The cookie holding a member's pass to one private archive."""
    return f"listserv_archive_{mlist.id}"


def readable_list(session: Session, config: Config, address: str,
                  cookies: Mapping[str, str]) -> MailingList:
    """The list whose archive a request may read. Unknown lists and lists that keep no
    web archive are 404; a private list needs the cookie its member link set, and the
    holder must still be the member it was made for (leaving the list, or leaving and
    joining again, closes its archive to that pass)."""
    mlist = roster.find_list(session, address)
    if mlist is None or mlist.archive is ArchivePolicy.OFF:
        raise HTTPException(404, "There is no archive of that list here.")
    if mlist.archive is ArchivePolicy.PRIVATE:
        value = cookies.get(archive_cookie(mlist), "")
        holder = tokens.archive_pass_holder(session, tokens.server_secret(session, config),
                                            value, mlist.id)
        if holder is None:
            raise HTTPException(403, mlist.address)
    return mlist


async def read(request: Request, work: Callable[[Session, MailingList], T]
               ) -> tuple[MailingList, T]:
    """How every archive page reads: the list of the path through readable_list, then
    `work`, in one read session (on SQLite it never waits for a writer; on PostgreSQL
    without a snapshot: a post archived meanwhile shows or not, as it would a moment
    earlier or later), off the event loop."""
    def call() -> tuple[MailingList, T]:
        with db.read_session(pages.engine(request), snapshot=False) as session:
            mlist = readable_list(session, pages.config(request),
                                  request.path_params["address"], request.cookies)
            return mlist, work(session, mlist)
    return await asyncio.to_thread(call)


async def enter(request: Request) -> Response:
    """The link a member was mailed: keep its pass in a cookie for this list only."""
    address, value = request.path_params["address"], request.path_params["token"]
    config, base = pages.config(request), pages.base_url(request)

    def work() -> MailingList | None:
        with db.read_session(pages.engine(request)) as session:
            mlist = roster.find_list(session, address)
            if mlist is None or mlist.archive is ArchivePolicy.OFF:
                raise HTTPException(404, "There is no archive of that list here.")
            holder = tokens.archive_pass_holder(
                session, tokens.server_secret(session, config), value, mlist.id)
            return mlist if holder is not None else None
    mlist = await asyncio.to_thread(work)
    if mlist is None:
        return pages.invalid(request, "archive", 400)
    response = RedirectResponse(urls.archive_url(base, mlist.addresses),
                                status_code=303)
    response.set_cookie(archive_cookie(mlist), value,
                        max_age=config.web.archive_link_days * 86400,
                        path=f"{urlsplit(base).path}/{mlist.address}/",
                        secure=base.startswith("https:"), httponly=True, samesite="lax")
    return response
