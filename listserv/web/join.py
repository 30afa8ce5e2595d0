"""Joining a list from the archive: the form the front page and each list page show, and
POST /{list}/subscribe, which sends the confirmation a mail to LIST-join@ sends (through
member_actions.subscribe). The answer is the same page whether or not the address is already
a member, so the form tells nobody who is on a list.

Against abuse: the form carries a value signed by this server a few hours ago (a form
on another site cannot post one it did not fetch lately), a field people do not see
and bots fill in, a limit of requests per client IP an hour, and member_actions.subscribe's
own limits per address (one pending confirmation at a time, and `[lists]
max_autoreplies_per_day`). Confirming is the POST button of /confirm/TOKEN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlmodel import Session
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from listserv import member_actions, roster, tokens
from listserv.address import Purpose
from listserv.config import Config
from listserv.enums import DeliveryMode
from listserv.limits import PerHour
from listserv.models import MailingList
from listserv.web import pages

FORM_HOURS = 6  # how long a page's join form may be sent after the page was served
HONEYPOT = "website"  # the field hidden from people; a bot filling every field fills it
MAX_ADDRESS = 254  # characters of an address (RFC 5321's path limit)
CHOICES = (DeliveryMode.REGULAR, DeliveryMode.DIGEST_MIME, DeliveryMode.DIGEST_PLAIN,
           DeliveryMode.SUMMARY)


def stamps(session: Session, config: Config, lists: Iterable[MailingList]) -> dict[int, str]:
    """Each list's signed form value, for the pages that show its join form."""
    secret = tokens.server_secret(session, config)
    return {mlist.id: tokens.form_stamp(secret, mlist.id, FORM_HOURS) for mlist in lists}


def join_address(mlist: MailingList) -> str:
    """LIST-join@: what the pages tell people to write to."""
    return mlist.addresses.at(Purpose.JOIN)


def too_many(request: Request) -> bool:
    """One more request from this client IP this hour, counted; True when too many.
    (Behind a proxy every client is the proxy: the limit is then for all of them.)"""
    limit: PerHour = request.app.state.web_requests
    return not limit.admit(request.client.host if request.client else "")


def form_address(form: FormData) -> str | None:
    """The lower-case addr-spec typed in the form's `address`, or None if invalid."""
    text = str(form.get("address", ""))[:MAX_ADDRESS + 1]
    found = roster.normalize(text) if 0 < len(text) <= MAX_ADDRESS else None
    return found[1] if found else None


def _page(request: Request, name: str, status: int, mlist: MailingList, stamp: str = "",
          **context: Any) -> Response:
    return pages.page(request, name, status, mlist=mlist, stamp=stamp,
                      join_address=join_address(mlist), **context)


async def join_form(request: Request) -> Response:
    """GET /{list}/subscribe: the join form alone (also for lists whose archive is
    closed to strangers)."""
    def work(session: Session) -> tuple[MailingList, str] | None:
        mlist = roster.find_list(session, request.path_params["address"])
        if mlist is None:
            return None
        return mlist, stamps(session, pages.config(request), [mlist])[mlist.id]
    found = await pages.in_db(request, work)
    if found is None:
        raise HTTPException(404, "There is no such list here.")
    return _page(request, "join", 200, found[0], found[1], problem="", typed="")


async def subscribe(request: Request) -> Response:
    """POST /{list}/subscribe: check the form, then member_actions.subscribe."""
    form = await request.form()
    config = pages.config(request)
    address, wanted = form_address(form), str(form.get("delivery", DeliveryMode.REGULAR))
    mode = next((m for m in CHOICES if m.value == wanted), None)
    limited = too_many(request)

    def work(session: Session) -> tuple[MailingList, str, str] | None:
        mlist = roster.find_list(session, request.path_params["address"])
        if mlist is None:
            return None
        secret = tokens.server_secret(session, config)
        if not tokens.form_stamp_ok(secret, mlist.id, str(form.get("form", ""))):
            problem = "expired"
        elif limited:
            problem = "limited"
        elif address is None or mode is None:
            problem = "address" if address is None else "delivery"
        else:
            problem = ""
            if not form.get(HONEYPOT):
                member_actions.subscribe(session, config, mlist, address, mode)
        return mlist, problem, tokens.form_stamp(secret, mlist.id, FORM_HOURS)
    found = await pages.in_db(request, work)
    if found is None:
        raise HTTPException(404, "There is no such list here.")
    mlist, problem, stamp = found
    if problem:
        status = 429 if problem == "limited" else 400
        return _page(request, "join", status, mlist, stamp, problem=problem,
                     typed=str(form.get("address", ""))[:MAX_ADDRESS])
    return _page(request, "join_sent", 200, mlist, address=address)
