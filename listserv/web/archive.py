"""The archive's pages: the front page of lists, a list's threads, a month, a thread, a
message (with its raw bytes and attachments), search and the digest issues. Every page
of one list reads through access.read; its routes are in app.py.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from listserv import (
    archive,
    content_filter,
    db,
    digest,
    digest_format,
    erasure,
    member_actions,
    privacy,
    search,
    summary,
    urls,
    view,
)
from listserv.models import DigestIssue, DigestSummary, MailingList
from listserv.web import access, articles, caching, join, pages
from listserv.web.access import read

THREADS_PER_PAGE = 50
HITS_PER_PAGE = 20
MAX_QUERY = 500  # characters of a search query kept
# Attachments a browser may show as themselves (still offered as a download); anything
# else is application/octet-stream, so no HTML or SVG of a stranger's runs on our origin.
SHOWN_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain",
               "application/pdf"}
_ATTACHMENT = re.compile(r"(.+)/attachment/([0-9]+)/([^/]*)")
MAX_ATTACHMENTS = 999_999  # an index past this is no attachment (and no 5,000-digit int)


async def archive_page(request: Request, name: str, mlist: MailingList,
                       **context: Any) -> HTMLResponse:
    """Rendered in a worker thread: a thread of a thousand posts is CPU work that would
    hold up every other request on the event loop meanwhile."""
    return await asyncio.to_thread(
        pages.page, request, name, mlist=mlist,
        list_url=f"{pages.base_url(request)}/{mlist.address}/",
        q=urls.quote_id, obfuscate=view.obfuscate, **context)


async def index(request: Request) -> Response:
    """/: every list with an archive, each with its join form."""
    def work() -> tuple[list[archive.ListEntry], dict[int, str]]:
        with db.read_session(pages.engine(request)) as session:
            lists = archive.listed(session)
            return lists, join.stamps(session, pages.config(request),
                                      [entry.mlist for entry in lists])
    lists, stamps = await asyncio.to_thread(work)
    return pages.page(request, "index", lists=lists, stamps=stamps,
                      join_address=join.join_address)


async def list_page(request: Request) -> Response:
    number = pages.page_number(request)
    mlist, (threads, months, stamps) = await read(request, lambda session, mlist: (
        archive.threads(session, mlist.id, number, THREADS_PER_PAGE),
        archive.months(session, mlist.id),
        join.stamps(session, pages.config(request), [mlist])))
    return await archive_page(request, "list", mlist, threads=threads, months=months,
                              stamp=stamps[mlist.id], join_address=join.join_address(mlist))


async def month_page(request: Request) -> Response:
    year, month = request.path_params["year"], request.path_params["month"]
    if not (1 <= month <= 12 and 1 <= year <= 9999):
        raise HTTPException(404, "There is no such month.")
    number = pages.page_number(request)
    mlist, (threads, months) = await read(request, lambda session, mlist: (
        archive.month_threads(session, mlist.id, year, month, number, THREADS_PER_PAGE),
        archive.months(session, mlist.id)))
    older = [m for m in months if m < (year, month)]
    newer = [m for m in months if m > (year, month)]
    return await archive_page(request, "month", mlist, threads=threads, year=year,
                              month=month, older=older[0] if older else None,
                              newer=newer[-1] if newer else None)


def trailing_slash(request: Request, kind: str) -> str | Response:
    """A thread or message id from the path without its closing "/"; without one, a
    redirect to the canonical URL (the path arrives decoded, so it is quoted again)."""
    value = request.path_params["rest"]
    if value.endswith("/"):
        return value[:-1]
    address = request.path_params["address"]
    return RedirectResponse(
        f"{pages.base_url(request)}/{address}/{kind}/{urls.quote_id(value)}/",
        status_code=308)


async def thread_page(request: Request) -> Response:
    thread_id = trailing_slash(request, "thread")
    if isinstance(thread_id, Response):
        return thread_id

    def work(session: Session, mlist: MailingList) -> tuple[list, list]:
        posts = archive.thread_posts(session, mlist.id, thread_id)
        list_url = f"{pages.base_url(request)}/{mlist.address}/"
        return posts, articles.drawn(posts, mlist, list_url)
    mlist, (posts, drawn) = await read(request, work)
    if not posts:
        raise HTTPException(404, "There is no such thread in this archive.")
    return await archive_page(request, "thread", mlist, posts=posts, articles=drawn,
                              thread_id=thread_id)


async def message_routes(request: Request) -> Response:
    """/message/ID/, /message/ID/raw and /message/ID/attachment/N/NAME: one route,
    since a Message-ID may itself contain "/"."""
    rest = request.path_params["rest"]
    if rest.endswith("/raw"):
        return await raw_page(request, rest.removesuffix("/raw"))
    if rest.endswith("/remove"):
        return await remove_form(request, rest.removesuffix("/remove"))
    found = _ATTACHMENT.fullmatch(rest)
    if found:
        digits = found.group(2)
        index = int(digits) if len(digits) <= len(str(MAX_ATTACHMENTS)) else -1
        return await attachment_page(request, found.group(1), found.group(3), index)
    message_id = trailing_slash(request, "message")
    if isinstance(message_id, Response):
        return message_id
    return await message_page(request, message_id)


def _gone() -> HTTPException:
    return HTTPException(404, "There is no such message in this archive.")


def _erased() -> HTTPException:
    return HTTPException(410, "This message was removed from the archive.")


def _version(pk: int, raw: bytes, mlist: MailingList) -> str:
    """What a reader's cached copy of a message must match: its stored bytes (erasure
    rewrites them) and the list's content filter (a change of it changes every page)."""
    return caching.page_etag(caching.message_etag(pk, raw), [content_filter.rules(mlist)])


async def message_page(request: Request, message_id: str) -> Response:
    def work(session: Session, mlist: MailingList) -> tuple | None:
        found = archive.find_message(session, mlist.id, message_id)
        if found is None:
            return None
        etag = caching.page_etag(_version(found.pk, found.post.raw, mlist), (
            found.thread_id, found.thread_messages, found.thread_last, found.thread_version))
        if caching.matches(request, etag):
            return etag, None  # the reader's copy is current: no more queries
        return etag, (archive.message_page(session, mlist.id, found),
                      view.view(content_filter.filtered(found.post.raw, mlist)))
    mlist, found = await read(request, work)
    if found is None:
        raise _gone()
    etag, page = found
    if page is None:
        return caching.not_modified(mlist, etag)
    message, shown = page
    response = await archive_page(request, "message", mlist, message=message, view=shown,
                                  reply=urls.reply_mailto(mlist.address, message_id,
                                                          message.post.subject))
    return caching.cached(response, mlist, etag)


def raw_response(raw: bytes) -> Response:
    """The stored bytes unchanged: what was received is the evidence (headers, signatures),
    so nothing is re-encoded. Only bytes that are UTF-8 are labelled so; older 8-bit mail
    is left for the browser to guess rather than shown as replacement characters."""
    try:
        raw.decode("utf-8")
        content_type = "text/plain; charset=utf-8"
    except UnicodeDecodeError:
        content_type = "text/plain"
    return Response(raw, headers={"content-type": content_type})


async def raw_page(request: Request, message_id: str) -> Response:
    """The message as the list's members got it (see content_filter), less the fields
    that show where its poster was (see privacy)."""
    mlist, found = await read(request, lambda session, mlist: archive.raw_message(
        session, mlist.id, message_id))
    if found is None:
        raise _gone()
    pk, raw = found
    if not raw:
        raise _erased()
    etag = _version(pk, raw, mlist)
    if caching.matches(request, etag):
        return caching.not_modified(mlist, etag)
    return caching.cached(raw_response(privacy.public(content_filter.filtered(raw, mlist))),
                          mlist, etag)


def attachment_response(part: view.Attachment, data: bytes) -> Response:
    """A download, never a page of our origin: safe type, attachment, sandboxed."""
    content_type = part.content_type if part.content_type in SHOWN_TYPES else (
        "application/octet-stream")
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", part.filename) or "attachment"
    return Response(data, headers={
        "content-type": content_type,
        "content-disposition": f"attachment; filename=\"{fallback}\"; "
                               f"filename*=UTF-8''{quote(part.filename, safe='')}",
        "content-security-policy": "sandbox"})


async def attachment_page(request: Request, message_id: str, name: str, index: int
                          ) -> Response:
    """An attachment of the message as the list's members got it: a part the content
    filter removed is no download here, and a link to it by its name says so (410)."""
    def work(session: Session, mlist: MailingList) -> tuple | bytes | None:
        found = archive.raw_message(session, mlist.id, message_id)
        if not found or not found[1]:
            return found and b""  # None: no such message; b"": erased
        etag = f"{_version(found[0], found[1], mlist)}-{index}"
        if caching.matches(request, etag):
            return etag, None  # current: not parsed again
        return etag, content_filter.apply(found[1], content_filter.rules(mlist))
    mlist, found = await read(request, work)
    if isinstance(found, bytes):
        raise _erased()
    if found is None:
        raise HTTPException(404, "There is no such attachment.")
    etag, shown = found
    if shown is None:
        return caching.not_modified(mlist, etag)
    part = view.attachment(shown.data, index)
    if any(r.filename == name for r in shown.removed) and (
            part is None or part[0].filename != name):
        raise HTTPException(410, f"The list's content filter removed {name} from this "
                                 "message: its members did not get it either.")
    if part is None:
        raise HTTPException(404, "There is no such attachment.")
    return caching.cached(attachment_response(*part), mlist, etag)


# --- an author's request to remove a post ----------------------------------------------

async def _remove_page(request: Request, message_id: str, sent: bool) -> Response:
    mlist = await pages.in_db(request, lambda s: access.readable_list(
        s, pages.config(request), request.path_params["address"], request.cookies))
    return await archive_page(request, "erase_ask", mlist, sent=sent,
                              action=request.url.path,
                              message_url=f"{pages.base_url(request)}/{mlist.address}/"
                                          f"message/{urls.quote_id(message_id)}/")


async def remove_form(request: Request, message_id: str) -> Response:
    """GET /message/ID/remove: what asking does, and the button that asks."""
    _, found = await read(request, lambda session, mlist: erasure.find(
        session, mlist, message_id, archived=True))
    if found is None or found.erased_at is not None:
        raise _gone()
    return await _remove_page(request, message_id, sent=False)


async def remove(request: Request) -> Response:
    """POST /message/ID/remove: the post's author is mailed a confirmation
    (member_actions.ask_erase); the page says so whoever pressed the button."""
    message_id = request.path_params["rest"].removesuffix("/remove")
    if message_id == request.path_params["rest"]:
        raise HTTPException(405, "Only a message's remove page takes a POST.")
    config = pages.config(request)

    def work(session: Session) -> bool:
        mlist = access.readable_list(session, config, request.path_params["address"],
                                     request.cookies)
        message = erasure.find(session, mlist, message_id, archived=True)
        if message is None or message.erased_at is not None:
            return False
        member_actions.ask_erase(session, config, mlist, message)
        return True
    if not await pages.in_db(request, work):
        raise _gone()
    return await _remove_page(request, message_id, sent=True)


async def search_page(request: Request) -> Response:
    words = request.query_params.get("q", "").strip()[:MAX_QUERY]
    number = pages.page_number(request)
    mlist, hits = await read(request, lambda session, mlist: search.query(
        session, mlist.id, words, HITS_PER_PAGE + 1, (number - 1) * HITS_PER_PAGE)
        if words else [])
    return await archive_page(request, "search", mlist, words=words,
                              hits=hits[:HITS_PER_PAGE], number=number,
                              has_next=len(hits) > HITS_PER_PAGE)


# --- digests in the archive -----------------------------------------------------------

def _digest_urls(request: Request, mlist: MailingList) -> dict[str, Any]:
    base, addresses = pages.config(request).web.base_url, mlist.addresses
    return {"archive_url": urls.archive_url(base, addresses),
            "message_url": lambda mid: urls.message_url(base, addresses, mid),
            "thread_url": lambda tid: urls.thread_url(base, addresses, tid)}


async def digest_index(request: Request) -> Response:
    """/{list}/digest/: the issues, newest first."""
    mlist, (issues, summarized) = await read(
        request, lambda s, m: (digest.issues(s, m.id), digest.summaries(s, m.id)))
    return pages.page(request, "digest_index", mlist=mlist, issues=issues,
                      summarized=summarized, **_digest_urls(request, mlist))


async def digest_issue(request: Request) -> Response:
    """/{list}/digest/{volume}/{issue}/: one issue's posts by thread, each linking to its
    message page."""
    volume = pages.path_number(request, "volume")
    number = pages.path_number(request, "number")

    def work(session: Session, mlist: MailingList
             ) -> tuple[DigestIssue, list[digest_format.Group]] | None:
        found = digest.find_issue(session, mlist.id, volume, number)
        if found is None:
            return None
        return found, digest_format.by_thread(digest.issue_entries(session, found))
    mlist, found = await read(request, work)
    if found is None:
        raise HTTPException(404, f"{mlist.name} has no digest Vol {volume}, Issue {number}.")
    return pages.page(request, "digest_issue", mlist=mlist, issue=found[0],
                      threads=found[1], obfuscate=view.obfuscate,
                      **_digest_urls(request, mlist))


async def digest_summary(request: Request) -> Response:
    """/{list}/digest/{volume}/{issue}/summary/: the summary made with an issue, as its
    summary members read it (less their own links)."""
    volume = pages.path_number(request, "volume")
    number = pages.path_number(request, "number")

    def work(session: Session, mlist: MailingList
             ) -> tuple[DigestIssue, DigestSummary, list[summary.Topic]] | None:
        found = digest.find_issue(session, mlist.id, volume, number)
        made = digest.find_summary(session, found) if found is not None else None
        if found is None or made is None:
            return None
        return found, made, summary.topics(digest.issue_entries(session, found, with_raw=True))
    mlist, found = await read(request, work)
    if found is None:
        raise HTTPException(404, f"{mlist.name} has no summary of Vol {volume}, Issue {number}.")
    issue, made, topics = found
    return pages.page(request, "digest_summary", mlist=mlist, issue=issue, summary=made,
                      topics=topics, obfuscate=view.obfuscate, **_digest_urls(request, mlist))
