"""The archive for programs rather than readers: /{list}/feed.atom (the latest posts)
and /{list}/export.mbox (all, ?thread=ID or ?month=YYYY-MM), both behind access.read
like every archive page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from listserv import archive_export, content_filter, db, urls
from listserv.models import MailingList
from listserv.templating import render
from listserv.web import pages
from listserv.web.access import read

# About this many bytes of mbox per chunk sent: few thread hops, little memory.
EXPORT_CHUNK = 256 * 1024
FEED_POSTS = 30


async def feed(request: Request) -> Response:
    base = pages.config(request).web.base_url
    mlist, posts = await read(request, lambda session, mlist: archive_export.latest_posts(
        session, mlist, FEED_POSTS))
    addresses = mlist.addresses
    entries = [(post, urls.message_url(base, addresses, post.message_id))
               for post in posts]
    body = render("web/feed.atom", mlist=mlist, entries=entries,
                  list_url=urls.archive_url(base, addresses),
                  updated=posts[0].date if posts else mlist.created_at)
    return Response(body, media_type="application/atom+xml; charset=utf-8")


def _mbox_chunks(engine: Engine, selection: archive_export.Selection,
                 content: content_filter.Rules) -> Iterator[bytes]:
    """A plain iterator, which StreamingResponse runs in its thread pool a chunk at a
    time: the event loop never waits on the database, and a list of any size is never
    all in memory."""
    with db.read_session(engine) as session:
        pending: list[bytes] = []
        size = 0
        for entry in archive_export.export_mbox(session, selection, public=content):
            pending.append(entry)
            size += len(entry)
            if size >= EXPORT_CHUNK:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)


def _file_name(*words: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(words)) + ".mbox"


async def export(request: Request) -> Response:
    thread_id = request.query_params.get("thread")
    month = request.query_params.get("month")
    start = end = None
    if month is not None:
        try:
            start, end = archive_export.month_of(month)
        except ValueError:
            raise HTTPException(400, "The month must be written YYYY-MM.") from None

    def check(session: Session, mlist: MailingList) -> archive_export.Selection:
        selection = archive_export.Selection(mlist.id, thread_id, start, end)
        if (thread_id is not None or month is not None) and not archive_export.any_archived(
                session, selection):
            raise HTTPException(404, "The archive has no such thread or month.")
        return selection
    mlist, selection = await read(request, check)
    local = mlist.address.partition("@")[0]
    name = _file_name(local, *(["thread"] if thread_id is not None else []),
                      *([month] if month is not None else []))
    return StreamingResponse(
        _mbox_chunks(pages.engine(request), selection, content_filter.rules(mlist)),
        media_type="application/mbox",
        headers={"Content-Disposition": f'attachment; filename="{name}"'})
