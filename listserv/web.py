"""The HTTP edge: a Starlette app served by uvicorn in the server's event loop.

Links in mail (confirm, one-click unsubscribe, mute) only ever act on POST: a GET
shows a page with a button, because link scanners and previews fetch every URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from listserv import bouncing, commands, db, roster, tokens
from listserv.config import Config
from listserv.models import ArchivePolicy, MailingList
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
    parts = _signed(session, config, purpose, value, 2)
    if parts is None:
        return None
    mlist = session.get(MailingList, int(parts[0]))
    return Link(mlist, parts[1]) if mlist else None


def unsubscribe_target(session: Session, config: Config, value: str) -> Link | None:
    """The member an unsubscribe link was made for; None if we did not sign it."""
    return _member_link(session, config, "unsubscribe", value)


def reenable_target(session: Session, config: Config, value: str) -> Link | None:
    """The member a bounce warning's re-enable link was made for."""
    return _member_link(session, config, "reenable", value)


def mute_target(session: Session, config: Config, value: str) -> Link | None:
    """The member and thread a mute link was made for; None if forged or gone."""
    parts = _signed(session, config, "mute", value, 3)
    if parts is None or not parts[2].isdigit():
        return None
    mlist = session.get(MailingList, int(parts[0]))
    if mlist is None:
        return None
    thread_id = commands.thread_of_message(session, mlist.id, int(parts[2]))
    return Link(mlist, parts[1], thread_id) if thread_id else None


def archive_cookie(mlist: MailingList) -> str:
    return f"listserv_archive_{mlist.id}"


def readable_list(session: Session, config: Config, address: str,
                  cookies: Mapping[str, str]) -> MailingList:
    """The list whose archive a request may read. Unknown lists and lists that keep no
    web archive are 404; a private list needs the cookie its member link set, and the
    holder must still be a member (leaving the list closes its archive to them)."""
    mlist = roster.find_list(session, address)
    if mlist is None or mlist.archive is ArchivePolicy.OFF:
        raise HTTPException(404, "There is no archive of that list here.")
    if mlist.archive is ArchivePolicy.PRIVATE:
        value = cookies.get(archive_cookie(mlist), "")
        holder = tokens.archive_pass_holder(tokens.server_secret(session, config), value,
                                            mlist.id)
        if holder is None or not commands.is_member(session, mlist.id, holder):
            raise HTTPException(403, mlist.address)
    return mlist


def make_app(engine: Engine, config: Config) -> Starlette:
    async def in_db(work: Callable[[Session], T]) -> T:
        """Run database work off the event loop, in one committed transaction."""
        def call() -> T:
            with db.session(engine) as session:
                result = work(session)
                session.commit()
                return result
        return await asyncio.to_thread(call)

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(f"web/{name}.html", base_url=config.web.base_url,
                                   **context), status_code=status)

    def invalid(kind: str, status: int) -> HTMLResponse:
        return page("invalid", status, kind=kind)

    async def index(request: Request) -> Response:
        lists = await in_db(roster.all_lists)
        return page("index", lists=lists)

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

    mute_form, mute_post = mute_routes(on=True)
    unmute_form, unmute_post = mute_routes(on=False)
    return Starlette(exception_handlers={HTTPException: http_error}, routes=[
        Route("/", index),
        Route("/confirm/{token}", confirm_form, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"]),
        Route("/unsubscribe/{token}", unsubscribe_form, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe_post, methods=["POST"]),
        Route("/mute/{token}", mute_form, methods=["GET"]),
        Route("/mute/{token}", mute_post, methods=["POST"]),
        Route("/unmute/{token}", unmute_form, methods=["GET"]),
        Route("/unmute/{token}", unmute_post, methods=["POST"]),
        Route("/reenable/{token}", reenable, methods=["GET", "POST"]),
    ])
