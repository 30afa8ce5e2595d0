"""The pages of a list's owners and moderators, opened by a signed link mailed to them
(GET/POST /{list}/admin asks for it): the held posts, the pending requests, and for
owners the way to their members, settings and bounces (admin_owner.py). The held-post
page of the daily summary's links is here too. Every change is a POST that carries the
signed link; staff.py makes it with the functions the CLI and the email commands use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from listserv import moderation, roster, staff, view
from listserv.roster import UserError
from listserv.staff import Staff
from listserv.web import pages

MAX_FIELD = 2000  # characters of a form field kept (a reason, an address, a setting)


async def form(request: Request, limit: int = MAX_FIELD) -> dict[str, str]:
    """The POSTed fields as text, each cut to `limit`; files are refused."""
    async with request.form(max_files=0, max_fields=50) as data:
        return {k: v[:limit] for k, v in data.items() if isinstance(v, str)}


def staff_page(request: Request, name: str, who: Staff, status: int = 200,
               **context: Any) -> Response:
    """A page of the admin pages: the list, who is acting, and (`admin`) the admin
    link's own URL, which the pages of a summary's held link have not."""
    context.setdefault("admin", f"{pages.base_url(request)}/{who.mlist.address}/admin/"
                       f"{request.path_params['token']}")
    response = pages.page(request, name, status, mlist=who.mlist, staff=who, **context)
    response.headers["cache-control"] = "no-store"  # a shared computer keeps no copy
    return response


async def signed(request: Request, work: Callable[[Session, Staff], Any] | None = None,
                 purpose: str = "admin") -> tuple[Staff, Any] | Response:
    """The staff the path's {token} speaks for, and `work` done for them in the same
    transaction; the "not valid" page when the link is forged, expired or of someone no
    longer staff. A UserError of `work` (an item already decided) is a page saying so,
    with nothing changed."""
    value, list_address = request.path_params["token"], request.path_params["address"]
    config = pages.config(request)

    def call(session: Session) -> tuple[Staff, Any] | None:
        who = staff.staff_of(session, config, purpose, value, list_address)
        if who is None:
            return None
        try:
            return who, (work(session, who) if work else None)
        except UserError as exc:
            session.rollback()  # nothing of a refused change stays
            session.refresh(who.mlist)  # the page still names the list
            return who, exc
    found = await pages.in_db(request, call)
    if found is None:
        return pages.invalid(request, purpose, 400)
    return found


# --- asking for the link -----------------------------------------------------------------

async def ask_form(request: Request) -> Response:
    mlist = await pages.in_db(request, lambda s: roster.find_list(
        s, request.path_params["address"]))
    if mlist is None:
        return pages.page(request, "error", 404, status=404, detail="There is no such list.")
    return pages.page(request, "admin_ask", mlist=mlist, sent=False)


async def ask(request: Request) -> Response:
    """The same answer whoever asks, so it tells no one who owns or moderates the list."""
    fields, config = await form(request), pages.config(request)

    def work(session: Session) -> Any:
        mlist = roster.find_list(session, request.path_params["address"])
        if mlist is not None:
            staff.send_admin_link(session, config, mlist, fields.get("address", ""))
        return mlist
    mlist = await pages.in_db(request, work)
    if mlist is None:
        return pages.page(request, "error", 404, status=404, detail="There is no such list.")
    return pages.page(request, "admin_ask", mlist=mlist, sent=True)


# --- held posts and pending requests ------------------------------------------------------

def _queue(session: Session, who: Staff) -> dict[str, Any]:
    held = moderation.held(session, who.mlist)
    return {"held": [(m, view.view(m.raw)) for m in held],
            "requests": staff.pending_requests(session, who.mlist)}


async def overview(request: Request) -> Response:
    found = await signed(request, _queue)
    if isinstance(found, Response):
        return found
    who, queue = found
    return staff_page(request, "admin", who, **queue)


def done_page(request: Request, who: Staff, result: Any, admin: str | None = "",
              page: str = "") -> Response:
    """What a POST did, or why it did nothing (409: decided already, or refused). The
    page links back to `page` of the admin pages, or nowhere when `admin` is None."""
    extra = {} if admin == "" else {"admin": admin}
    failed = isinstance(result, UserError)
    return staff_page(request, "admin_done", who, 409 if failed else 200, back=page,
                      error=str(result) if failed else "", summary="" if failed else result,
                      **extra)


async def held_action(request: Request) -> Response:
    message_pk = pages.path_number(request, "id")
    fields, config = await form(request), pages.config(request)
    found = await signed(request, lambda session, who: staff.decide_held(
        session, config, who, message_pk, fields.get("action", ""), fields.get("reason", "")))
    if isinstance(found, Response):
        return found
    who, result = found
    return done_page(request, who, result)


async def request_action(request: Request) -> Response:
    token_id = pages.path_number(request, "id")
    fields, config = await form(request), pages.config(request)
    found = await signed(request, lambda session, who: staff.decide_request(
        session, config, who, token_id, fields.get("action", "")))
    if isinstance(found, Response):
        return found
    who, result = found
    return done_page(request, who, result)


# --- one held post, from the daily summary -------------------------------------------------

def _summary_post(who: Staff) -> int:
    """The held post a summary's link was signed for."""
    return int(who.extra[0]) if len(who.extra) == 1 and who.extra[0].isdigit() else 0


def _held_post(session: Session, who: Staff) -> Any:
    message = moderation.held_message(session, _summary_post(who))
    if message.list_id != who.mlist.id:
        raise UserError(staff.NOT_HELD)
    return message, view.view(message.raw)


async def held_form(request: Request) -> Response:
    found = await signed(request, _held_post, purpose="held")
    if isinstance(found, Response):
        return found
    who, post = found
    if isinstance(post, UserError):
        return done_page(request, who, UserError(staff.NOT_HELD), None)
    return staff_page(request, "admin_held", who, admin=None, post=post,
                      action=request.url.path)


async def held_decide(request: Request) -> Response:
    fields, config = await form(request), pages.config(request)
    action = fields.get("action", "")
    found = await signed(request, lambda session, who: staff.decide_held(
        session, config, who, _summary_post(who),
        action if action in moderation.ACTIONS else "", fields.get("reason", "")),
        purpose="held")
    if isinstance(found, Response):
        return found
    who, result = found
    return done_page(request, who, result, None)
