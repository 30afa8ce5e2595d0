"""The owners' page of the archive: the newest posts (or those a search finds), each
with the button that erases it (erasure.py), as `listserv message erase` does. A
moderator's link opens it not.
"""

from __future__ import annotations

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from listserv import erasure, staff
from listserv.staff import Staff
from listserv.web import pages
from listserv.web.admin import done_page, form, staff_page
from listserv.web.admin_owner import owners_only

POSTS_SHOWN = 50


async def archive(request: Request) -> Response:
    query = request.query_params.get("q", "")[:200]
    found = await owners_only(request, lambda s, who: erasure.recent(
        s, who.mlist, query, POSTS_SHOWN))
    if isinstance(found, Response):
        return found
    who, posts = found
    return staff_page(request, "admin_archive", who, posts=posts, query=query)


async def erase(request: Request) -> Response:
    """POST .../archive: erase the post `message_id`, with the owner's `reason`."""
    fields, config = await form(request), pages.config(request)

    def work(session: Session, who: Staff) -> str:
        return staff.erase_message(session, config, who, fields.get("message_id", ""),
                                   fields.get("reason", ""))
    found = await owners_only(request, work)
    if isinstance(found, Response):
        return found
    return done_page(request, *found, page="archive")
