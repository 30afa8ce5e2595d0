"""The HTTP edge: a Starlette app served by uvicorn in the server's event loop.

Links in mail (confirm, one-click unsubscribe, mute) only ever act on POST: a GET
shows a page with a button, because link scanners and previews fetch every URL.

The archive's pages show mail written by anyone. Its content is escaped or sanitised
(view.py), and every response also carries a Content-Security-Policy that allows no
script and no remote content at all, so a hole in the sanitising still runs nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from listserv import (
    archive,
    bouncing,
    commands,
    compose,
    db,
    digest,
    privacy,
    roster,
    search,
    tokens,
    view,
)
from listserv.config import MAX_INT, Config
from listserv.models import ArchivePolicy, DigestIssue, MailingList
from listserv.templating import render

T = TypeVar("T")


@dataclass(frozen=True)
class Link:
    """What a signed link in a member's copy names: a member, and for mute a thread."""

    mlist: MailingList
    address: str
    thread_id: str = ""


def _signed(session: Session, config: Config, purpose: str, value: str,
            size: int) -> list[str] | None:
    parts = tokens.verify(tokens.server_secret(session, config), purpose, value)
    if parts is None or len(parts) != size or not parts[0].isdigit():
        return None
    return parts


def _member_link(session: Session, config: Config, purpose: str, value: str) -> Link | None:
    parts = _signed(session, config, purpose, value, 3)
    if parts is None:
        return None
    mlist = session.get(MailingList, int(parts[0]))
    if mlist is None or not tokens.made_for_current(session, mlist.id, parts[1], parts[2]):
        return None
    return Link(mlist, parts[1])


def unsubscribe_target(session: Session, config: Config, value: str) -> Link | None:
    """The member an unsubscribe link was made for; None if we did not sign it."""
    return _member_link(session, config, "unsubscribe", value)


def reenable_target(session: Session, config: Config, value: str) -> Link | None:
    """The member a bounce warning's re-enable link was made for."""
    return _member_link(session, config, "reenable", value)


def mute_target(session: Session, config: Config, value: str) -> Link | None:
    """The member and thread a mute link was made for; None if forged or gone."""
    parts = _signed(session, config, "mute", value, 4)
    if parts is None or not parts[2].isdigit():
        return None
    mlist = session.get(MailingList, int(parts[0]))
    if mlist is None or not tokens.made_for_current(session, mlist.id, parts[1], parts[3]):
        return None
    thread_id = commands.thread_of_message(session, mlist.id, int(parts[2]))
    return Link(mlist, parts[1], thread_id) if thread_id else None


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


POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
          "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


SECURITY_HEADERS = {b"content-security-policy": POLICY.encode(),
                    b"x-content-type-options": b"nosniff"}


class SecurityHeaders:
    """Every response: no script, no remote content, no framing, no type sniffing. A
    response that sets its own policy (attachments: sandbox) keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS.items() if k not in names]
                message["headers"] = headers
            await send(message)
        await self.app(scope, receive, send_with_headers)


THREADS_PER_PAGE = 50
HITS_PER_PAGE = 20
MAX_QUERY = 500  # characters of a search query kept
# Attachments a browser may show as themselves (still offered as a download); anything
# else is application/octet-stream, so no HTML or SVG of a stranger's runs on our origin.
SHOWN_TYPES = {"image/png", "image/jpeg", "image/gif", "text/plain", "application/pdf"}
_ATTACHMENT = re.compile(r"(.+)/attachment/([0-9]+)/[^/]*")
MAX_ATTACHMENTS = 999_999  # an index past this is no attachment (and no 5,000-digit int)


# Past any archive's last page (at 50 threads a page); a number beyond is no page, not
# an offset for the database to choke on.
MAX_PAGE = 1_000_000


def page_number(request: Request) -> int:
    value = request.query_params.get("page", "1")
    if not (value.isascii() and value.isdigit()) or not value.strip("0"):
        raise HTTPException(400, "The page number must be a whole number from 1.")
    if len(value.lstrip("0")) > len(str(MAX_PAGE)) or int(value) > MAX_PAGE:
        raise HTTPException(404, "There is no such page.")
    return int(value)


class _Number(IntegerConvertor):
    """{x:number}: an int path segment of at most 10 digits; a longer one matches no
    route (404), where {x:int} would make Python refuse to convert 5,000 digits (500)."""

    regex = "[0-9]{1,10}"


register_url_convertor("number", _Number())


def path_number(request: Request, name: str) -> int:
    """An {x:int} of the path that a row could hold; any other is 404, not a query."""
    value = request.path_params[name]
    if not 1 <= value <= MAX_INT:
        raise HTTPException(404, "There is no such page.")
    return value


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


Reader = Callable[[Request, Callable[[Session, MailingList], T]],
                  Awaitable[tuple[MailingList, T]]]


def archive_reader(engine: Engine, config: Config) -> Reader:
    """How every archive page reads: through readable_list, in one read session (on
    SQLite it never waits for a writer), off the event loop."""

    async def read(request: Request, work: Callable[[Session, MailingList], T]
                   ) -> tuple[MailingList, T]:
        def call() -> tuple[MailingList, T]:
            with db.read_session(engine) as session:
                mlist = readable_list(session, config, request.path_params["address"],
                                      request.cookies)
                return mlist, work(session, mlist)
        return await asyncio.to_thread(call)

    return read


def archive_routes(engine: Engine, config: Config,
                   page: Callable[..., HTMLResponse]) -> list[Route]:
    """The web archive: every route reads through readable_list in one read session."""
    base = config.web.base_url.rstrip("/")
    read = archive_reader(engine, config)

    async def archive_page(name: str, mlist: MailingList, **context: Any) -> HTMLResponse:
        """Rendered in a worker thread: a thread of a thousand posts is CPU work that
        would hold up every other request on the event loop meanwhile."""
        return await asyncio.to_thread(
            page, name, mlist=mlist, list_url=f"{base}/{mlist.address}/",
            q=compose.quote_id, obfuscate=view.obfuscate, **context)

    async def list_page(request: Request) -> Response:
        number = page_number(request)
        mlist, (threads, months) = await read(request, lambda session, mlist: (
            archive.threads(session, mlist.id, number, THREADS_PER_PAGE),
            archive.months(session, mlist.id)))
        return await archive_page("list", mlist, threads=threads, months=months)

    async def month_page(request: Request) -> Response:
        year, month = request.path_params["year"], request.path_params["month"]
        if not (1 <= month <= 12 and 1 <= year <= 9999):
            raise HTTPException(404, "There is no such month.")
        number = page_number(request)
        mlist, (threads, months) = await read(request, lambda session, mlist: (
            archive.month_threads(session, mlist.id, year, month, number, THREADS_PER_PAGE),
            archive.months(session, mlist.id)))
        older = [m for m in months if m < (year, month)]
        newer = [m for m in months if m > (year, month)]
        return await archive_page("month", mlist, threads=threads, year=year, month=month,
                            older=older[0] if older else None,
                            newer=newer[-1] if newer else None)

    def trailing_slash(request: Request, kind: str) -> str | Response:
        """A thread or message id from the path without its closing "/"; without one, a
        redirect to the canonical URL (the path arrives decoded, so it is quoted again)."""
        value = request.path_params["rest"]
        if value.endswith("/"):
            return value[:-1]
        address = request.path_params["address"]
        return RedirectResponse(f"{base}/{address}/{kind}/{compose.quote_id(value)}/",
                                status_code=308)

    async def thread_page(request: Request) -> Response:
        thread_id = trailing_slash(request, "thread")
        if isinstance(thread_id, Response):
            return thread_id

        def work(session: Session, mlist: MailingList) -> list:
            posts = archive.thread_posts(session, mlist.id, thread_id)
            return [(post, view.view(post.raw)) for post in posts]
        mlist, posts = await read(request, work)
        if not posts:
            raise HTTPException(404, "There is no such thread in this archive.")
        return await archive_page("thread", mlist, posts=posts, thread_id=thread_id)

    async def message_routes(request: Request) -> Response:
        """/message/ID/, /message/ID/raw and /message/ID/attachment/N/NAME: one route,
        since a Message-ID may itself contain "/"."""
        rest = request.path_params["rest"]
        if rest.endswith("/raw"):
            return await raw_page(request, rest.removesuffix("/raw"))
        found = _ATTACHMENT.fullmatch(rest)
        if found:
            digits = found.group(2)
            index = int(digits) if len(digits) <= len(str(MAX_ATTACHMENTS)) else -1
            return await attachment_page(request, found.group(1), index)
        message_id = trailing_slash(request, "message")
        if isinstance(message_id, Response):
            return message_id
        return await message_page(request, message_id)

    def gone() -> HTTPException:
        return HTTPException(404, "There is no such message in this archive.")

    async def message_page(request: Request, message_id: str) -> Response:
        def work(session: Session, mlist: MailingList) -> tuple | None:
            found = archive.message_page(session, mlist.id, message_id)
            return found and (found, view.view(found.post.raw))
        mlist, found = await read(request, work)
        if found is None:
            raise gone()
        message, shown = found
        return await archive_page("message", mlist, message=message, view=shown,
                            reply=compose.reply_mailto(mlist.address, message_id,
                                                       message.post.subject))

    async def raw_page(request: Request, message_id: str) -> Response:
        _, raw = await read(request, lambda session, mlist: archive.raw_message(
            session, mlist.id, message_id))
        if raw is None:
            raise gone()
        return raw_response(privacy.public(raw))

    async def attachment_page(request: Request, message_id: str, index: int) -> Response:
        def work(session: Session, mlist: MailingList) -> tuple | None:
            raw = archive.raw_message(session, mlist.id, message_id)
            return view.attachment(raw, index) if raw is not None else None
        _, found = await read(request, work)
        if found is None:
            raise HTTPException(404, "There is no such attachment.")
        return attachment_response(*found)

    async def search_page(request: Request) -> Response:
        words = request.query_params.get("q", "").strip()[:MAX_QUERY]
        number = page_number(request)
        mlist, hits = await read(request, lambda session, mlist: search.query(
            session, mlist.id, words, HITS_PER_PAGE + 1, (number - 1) * HITS_PER_PAGE)
            if words else [])
        return await archive_page("search", mlist, words=words, hits=hits[:HITS_PER_PAGE],
                            number=number, has_next=len(hits) > HITS_PER_PAGE)

    async def access(request: Request) -> Response:
        """The link a member was mailed: keep its pass in a cookie for this list only."""
        address, value = request.path_params["address"], request.path_params["token"]

        def work() -> MailingList | None:
            with db.read_session(engine) as session:
                mlist = roster.find_list(session, address)
                if mlist is None or mlist.archive is ArchivePolicy.OFF:
                    raise HTTPException(404, "There is no archive of that list here.")
                holder = tokens.archive_pass_holder(
                    session, tokens.server_secret(session, config), value, mlist.id)
                return mlist if holder is not None else None
        mlist = await asyncio.to_thread(work)
        if mlist is None:
            return page("invalid", 400, kind="archive")
        response = RedirectResponse(compose.archive_url(base, mlist.addresses),
                                    status_code=303)
        response.set_cookie(archive_cookie(mlist), value,
                            max_age=config.web.archive_link_days * 86400,
                            path=f"{urlsplit(base).path}/{mlist.address}/",
                            secure=base.startswith("https:"), httponly=True, samesite="lax")
        return response

    return [
        Route("/{address}/", list_page),
        Route("/{address}/search", search_page),
        Route("/{address}/access/{token}", access),
        Route("/{address}/{year:number}/{month:number}/", month_page),
        Route("/{address}/thread/{rest:path}", thread_page),
        Route("/{address}/message/{rest:path}", message_routes),
    ]


# About this many bytes of mbox per chunk sent: few thread hops, little memory.
EXPORT_CHUNK = 256 * 1024
FEED_POSTS = 30


def _mbox_chunks(engine: Engine, selection: archive.Selection) -> Iterator[bytes]:
    """A plain iterator, which StreamingResponse runs in its thread pool a chunk at a
    time: the event loop never waits on the database, and a list of any size is never
    all in memory."""
    with db.read_session(engine) as session:
        pending: list[bytes] = []
        size = 0
        for entry in archive.export_mbox(session, selection, public=True):
            pending.append(entry)
            size += len(entry)
            if size >= EXPORT_CHUNK:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)


def _file_name(*words: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(words)) + ".mbox"


def feed_and_export_routes(engine: Engine, config: Config) -> list[Route]:
    """/LIST/feed.atom (the latest posts) and /LIST/export.mbox (all, ?thread=ID or
    ?month=YYYY-MM), both behind readable_list like every archive page."""
    read = archive_reader(engine, config)

    async def feed(request: Request) -> Response:
        mlist, posts = await read(request, lambda session, mlist: archive.latest_posts(
            session, mlist.id, FEED_POSTS))
        addresses = mlist.addresses
        entries = [(post, compose.message_url(config.web.base_url, addresses,
                                              post.message_id)) for post in posts]
        body = render("web/feed.atom", mlist=mlist, entries=entries,
                      list_url=compose.archive_url(config.web.base_url, addresses),
                      updated=posts[0].date if posts else mlist.created_at)
        return Response(body, media_type="application/atom+xml; charset=utf-8")

    async def export(request: Request) -> Response:
        thread_id = request.query_params.get("thread")
        month = request.query_params.get("month")
        start = end = None
        if month is not None:
            try:
                start, end = archive.month_of(month)
            except ValueError:
                raise HTTPException(400, "The month must be written YYYY-MM.") from None

        def check(session: Session, mlist: MailingList) -> archive.Selection:
            selection = archive.Selection(mlist.id, thread_id, start, end)
            if (thread_id is not None or month is not None) and not archive.any_archived(
                    session, selection):
                raise HTTPException(404, "The archive has no such thread or month.")
            return selection
        mlist, selection = await read(request, check)
        local = mlist.address.partition("@")[0]
        name = _file_name(local, *(["thread"] if thread_id is not None else []),
                          *([month] if month is not None else []))
        return StreamingResponse(
            _mbox_chunks(engine, selection), media_type="application/mbox",
            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return [Route("/{address}/feed.atom", feed), Route("/{address}/export.mbox", export)]


# --- digests in the archive -----------------------------------------------------------

def digest_routes(engine: Engine, config: Config,
                  page: Callable[..., HTMLResponse]) -> list[Route]:
    """/{list}/digest/ (the issues, newest first) and /{list}/digest/{volume}/{issue}/
    (one issue's posts by thread, each linking to its message page)."""
    read = archive_reader(engine, config)

    def urls(mlist: MailingList) -> dict[str, Any]:
        addresses = mlist.addresses
        return {"archive_url": compose.archive_url(config.web.base_url, addresses),
                "message_url": lambda mid: compose.message_url(config.web.base_url,
                                                               addresses, mid),
                "thread_url": lambda tid: compose.thread_url(config.web.base_url, addresses,
                                                             tid)}

    async def index(request: Request) -> Response:
        mlist, issues = await read(request, lambda s, m: digest.issues(s, m.id))
        return page("digest_index", mlist=mlist, issues=issues, **urls(mlist))

    async def issue(request: Request) -> Response:
        volume, number = path_number(request, "volume"), path_number(request, "number")

        def work(session: Session, mlist: MailingList
                 ) -> tuple[DigestIssue, list[digest.Group]] | None:
            found = digest.find_issue(session, mlist.id, volume, number)
            if found is None:
                return None
            return found, digest.by_thread(digest.issue_entries(session, found))
        mlist, found = await read(request, work)
        if found is None:
            raise HTTPException(404, f"{mlist.name} has no digest Vol {volume}, "
                                     f"Issue {number}.")
        return page("digest_issue", mlist=mlist, issue=found[0], threads=found[1],
                    obfuscate=view.obfuscate,
                    **urls(mlist))

    return [Route("/{address}/digest/", index, methods=["GET"]),
            Route("/{address}/digest/{volume:number}/{number:number}/", issue,
                  methods=["GET"])]


UNAVAILABLE_TEXT = "The archive is unavailable for a moment. Please try again in a minute."


def make_app(engine: Engine, config: Config, extra_routes: Sequence[Route] = ()) -> Starlette:
    async def in_db(work: Callable[[Session], T]) -> T:
        """Run database work off the event loop, in one committed transaction."""
        def call() -> T:
            with db.session(engine) as session:
                result = work(session)
                session.commit()
                return result
        return await asyncio.to_thread(call)

    def page(name: str, status: int = 200, /, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(f"web/{name}.html",
                                   base_url=config.web.base_url.rstrip("/"), **context),
                            status_code=status)

    def invalid(kind: str, status: int) -> HTMLResponse:
        return page("invalid", status, kind=kind)

    async def index(request: Request) -> Response:
        def work() -> list[archive.ListEntry]:
            with db.read_session(engine) as session:
                return archive.listed(session)
        return page("index", lists=await asyncio.to_thread(work))

    async def confirm_form(request: Request) -> Response:
        value = request.path_params["token"]
        found = await in_db(lambda s: commands.find_confirmable(s, value))
        if found is None:
            return invalid("confirm", 404)
        token, mlist = found
        return page("confirm", kind=token.kind.value, address=token.address, mlist=mlist,
                    action=request.url.path)

    async def confirm_post(request: Request) -> Response:
        value = request.path_params["token"]

        def act(session: Session) -> tuple[str, MailingList, str] | None:
            found = commands.find_confirmable(session, value)
            if found is None:
                return None
            token, mlist = found
            return commands.confirm(session, config, token).value, mlist, token.address
        done = await in_db(act)
        if done is None or done[0] == commands.Outcome.BAD_TOKEN:
            return invalid("confirm", 404)
        outcome, mlist, address = done
        return page("done", outcome=outcome, mlist=mlist, address=address)

    async def signed_link(request: Request, target: Callable[[Session, Config, str], Link | None],
                          action: Callable[[Session, Link], object] | None = None
                          ) -> Link | None:
        """Check a signed link; for a POST, `action` runs in the same transaction."""
        value = request.path_params["token"]

        def work(session: Session) -> Link | None:
            link = target(session, config, value)
            if link is not None and action is not None:
                action(session, link)
            return link
        return await in_db(work)

    async def unsubscribe_form(request: Request) -> Response:
        link = await signed_link(request, unsubscribe_target)
        if link is None:
            return invalid("unsubscribe", 400)
        return page("unsubscribe", mlist=link.mlist, address=link.address,
                    action=request.url.path)

    async def unsubscribe_post(request: Request) -> Response:
        """RFC 8058 one-click: the POST itself is the confirmation."""
        link = await signed_link(request, unsubscribe_target, lambda session, link:
                                 commands.leave(session, config, link.mlist, link.address))
        if link is None:
            return invalid("unsubscribe", 400)
        return page("done", outcome=commands.Outcome.UNSUBSCRIBED.value, mlist=link.mlist,
                    address=link.address)

    def mute_routes(on: bool) -> tuple[Callable, Callable]:
        """The GET page and the POST action of /mute/TOKEN (on) or /unmute/TOKEN."""
        verb, other = ("mute", "unmute") if on else ("unmute", "mute")
        change = commands.mute if on else commands.unmute

        async def form(request: Request) -> Response:
            link = await signed_link(request, mute_target)
            if link is None:
                return invalid("mute", 400)
            return page("mute", done="", offer=verb, mlist=link.mlist, address=link.address,
                        action=request.url.path)

        async def post(request: Request) -> Response:
            link = await signed_link(request, mute_target, lambda session, link: change(
                session, link.mlist.id, link.address, link.thread_id))
            if link is None:
                return invalid("mute", 400)
            return page("mute", done=f"{verb}d", offer=other, mlist=link.mlist,
                        address=link.address,
                        action=f"/{other}/{request.path_params['token']}")
        return form, post

    async def reenable(request: Request) -> Response:
        """/reenable/TOKEN from a bounce warning: GET asks, POST turns delivery back on."""
        done = request.method == "POST"
        member: list[bool] = []

        def act(session: Session, link: Link) -> None:
            change = bouncing.reenable if done else commands.is_member
            member.append(change(session, link.mlist.id, link.address))
        link = await signed_link(request, reenable_target, act)
        if link is None:
            return invalid("re-enable", 400)
        return page("reenable", done=done, member=member[0], mlist=link.mlist,
                    address=link.address, action=request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown pages and closed archives get a page of ours, never a traceback."""
        assert isinstance(exc, HTTPException)
        return page("error", exc.status_code, status=exc.status_code, detail=exc.detail)

    async def server_error(request: Request, exc: Exception) -> Response:
        """A failure of ours: our error page, with the headers of every page set here,
        since Starlette answers it outside the middleware that sets them."""
        response = page("error", 500, status=500,
                        detail="Something went wrong on our side; please try again later.")
        response.headers.update({k.decode(): v.decode() for k, v in SECURITY_HEADERS.items()})
        return response

    async def unavailable(request: Request, exc: Exception) -> Response:
        """The database is away (stopped, its disk full): a page saying so, with the
        headers of every page, not a traceback; it comes back by itself."""
        response = page("error", 503, status=503, detail=UNAVAILABLE_TEXT)
        response.headers["retry-after"] = "60"
        return response

    mute_form, mute_post = mute_routes(on=True)
    unmute_form, unmute_post = mute_routes(on=False)
    return Starlette(exception_handlers={HTTPException: http_error, Exception: server_error,
                                         **dict.fromkeys(db.UNAVAILABLE, unavailable)},
                     middleware=[Middleware(SecurityHeaders)], routes=[
        Route("/", index),
        *extra_routes,
        Route("/confirm/{token}", confirm_form, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"]),
        Route("/unsubscribe/{token}", unsubscribe_form, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe_post, methods=["POST"]),
        Route("/mute/{token}", mute_form, methods=["GET"]),
        Route("/mute/{token}", mute_post, methods=["POST"]),
        Route("/unmute/{token}", unmute_form, methods=["GET"]),
        Route("/unmute/{token}", unmute_post, methods=["POST"]),
        Route("/reenable/{token}", reenable, methods=["GET", "POST"]),
        *feed_and_export_routes(engine, config),
        *archive_routes(engine, config, page),
        *digest_routes(engine, config, page),
    ])
