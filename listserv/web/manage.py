"""A member's page of subscriptions, with no account and no password: GET /manage asks
for an address, POST /manage mails it a signed link /manage/TOKEN (the same answer
whoever asks), and that page shows and changes every list the address is on. Each
change is a POST to the link itself, carried out by the function the email commands
and the CLI use (roster, commands, subscriptions). A change of address takes effect
from the link mailed to the new address, /manage/address/TOKEN.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from sqlmodel import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from listserv import member_actions, roster, subscriptions, tokens
from listserv.config import Config
from listserv.enums import DeliveryMode
from listserv.models import MailingList
from listserv.web import pages
from listserv.web.join import form_address, too_many

MAX_PAUSE = timedelta(days=366)  # "no mail until" at most this far ahead


class Refused(Exception):
    """What a form asked for cannot be done; its text is shown on the page."""


async def request_form(request: Request) -> Response:
    """GET /manage."""
    return pages.page(request, "manage_request", typed="", problem="")


async def request_link(request: Request) -> Response:
    """POST /manage: mail the link when the address is on a list; the same page always."""
    form = await request.form()
    address = form_address(form)
    if address is None or too_many(request):
        return pages.page(request, "manage_request", 400 if address is None else 429,
                          typed=str(form.get("address", ""))[:254],
                          problem="address" if address is None else "limited")
    config = pages.config(request)
    await pages.in_db(request, lambda s: subscriptions.send_link(s, config, address))
    return pages.page(request, "manage_sent", address=address,
                      hours=config.web.manage_link_hours)


def _holder(session: Session, config: Config, value: str) -> str | None:
    return tokens.manage_holder(tokens.server_secret(session, config), value)


def _bad_link(request: Request, session: Session, value: str) -> Response:
    """An expired link of ours offers a new one; any other is not valid."""
    secret = tokens.server_secret(session, pages.config(request))
    address = tokens.manage_link_expired(secret, value)
    if address is not None:
        return pages.page(request, "manage_expired", 410, address=address,
                          hours=pages.config(request).web.manage_link_hours)
    return pages.invalid(request, "manage", 400)


def _show(request: Request, session: Session, address: str, status: int = 200,
          done: str = "", problem: str = "") -> Response:
    return pages.page(request, "manage", status, address=address, done=done,
                      problem=problem, entries=subscriptions.overview(session, address),
                      action=request.url.path,
                      today=datetime.now(UTC).date().isoformat(),
                      modes=list(DeliveryMode))


async def page(request: Request) -> Response:
    """GET /manage/TOKEN."""
    value, config = request.path_params["token"], pages.config(request)

    def work(session: Session) -> Response:
        address = _holder(session, config, value)
        if address is None:
            return _bad_link(request, session, value)
        return _show(request, session, address)
    return await pages.in_db(request, work)


# --- the changes: each takes the form and the link's address, says what it did ---------

Change = Callable[[Session, Config, str, FormData], str]


def _list_of(session: Session, address: str, form: FormData) -> MailingList:
    mlist = subscriptions.member_of(session, address, str(form.get("list", "")))
    if mlist is None:
        raise Refused(f"{address} is not a member of that list.")
    return mlist


def _delivery(session: Session, config: Config, address: str, form: FormData) -> str:
    mlist = _list_of(session, address, form)
    modes = {m.value: m for m in DeliveryMode}
    mode = modes.get(str(form.get("delivery", "")))
    if mode is None:
        raise Refused("Choose one of the ways to get posts.")
    roster.set_member(session, mlist, address, delivery=mode)
    return f"Delivery on {mlist.address} is now: {mode.value}."


def _until(text: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise Refused("Give the date as YYYY-MM-DD.") from None
    until = datetime(day.year, day.month, day.day, tzinfo=UTC)
    now = datetime.now(UTC)
    if not now < until <= now + MAX_PAUSE:
        raise Refused("Choose a date after today and within a year.")
    return until


def _pause(session: Session, config: Config, address: str, form: FormData) -> str:
    mlist = _list_of(session, address, form)
    until = _until(str(form.get("until", "")))
    roster.pause(session, mlist, address, until)
    return f"No mail from {mlist.address} until {until.date().isoformat()}."


def _resume(session: Session, config: Config, address: str, form: FormData) -> str:
    mlist = _list_of(session, address, form)
    roster.pause(session, mlist, address, None)
    return f"Mail from {mlist.address} comes again."


def _unmute(session: Session, config: Config, address: str, form: FormData) -> str:
    mlist = _list_of(session, address, form)
    member_actions.unmute(session, mlist.id, address, str(form.get("thread", "")))
    return f"That thread of {mlist.address} reaches you again."


def _leave(session: Session, config: Config, address: str, form: FormData) -> str:
    mlist = _list_of(session, address, form)
    member_actions.leave(session, config, mlist, address)
    return f"{address} has left {mlist.address}."


def _leave_all(session: Session, config: Config, address: str, form: FormData) -> str:
    left = subscriptions.leave_all(session, config, address)
    return f"{address} has left every list." if left else f"{address} is on no list."


def _new_address(session: Session, config: Config, address: str, form: FormData) -> str:
    new = form_address(form)
    if new is None:
        raise Refused("That new address is not valid.")
    if new == address:
        raise Refused(f"{address} is the address already.")
    subscriptions.ask_address_change(session, config, address, new)
    return (f"A link is on its way to {new}: the change takes effect when it is opened "
            "there and confirmed.")


CHANGES: dict[str, Change] = {
    "delivery": _delivery, "pause": _pause, "resume": _resume, "unmute": _unmute,
    "leave": _leave, "leave-all": _leave_all, "change-address": _new_address,
}


async def change(request: Request) -> Response:
    """POST /manage/TOKEN: the change the form's `action` names, then the page again."""
    form = await request.form()
    value, config = request.path_params["token"], pages.config(request)
    act = CHANGES.get(str(form.get("action", "")))
    # Only a change of address mails someone: it counts against the client's hourly share.
    limited = form.get("action") == "change-address" and too_many(request)

    def work(session: Session) -> Response:
        address = _holder(session, config, value)
        if address is None:
            return _bad_link(request, session, value)
        if act is None or limited:
            return _show(request, session, address, 429 if limited else 400,
                         problem="Too many requests from your address this hour; try "
                         "again later." if limited else "That is not a change this page "
                         "makes.")
        try:
            done = act(session, config, address, form)
        except (Refused, roster.UserError) as exc:
            session.rollback()
            return _show(request, session, address, 400, problem=str(exc))
        return _show(request, session, address, done=done)
    return await pages.in_db(request, work)


# --- the new address agrees ------------------------------------------------------------

async def address_form(request: Request) -> Response:
    """GET /manage/address/TOKEN: the button (a mail scanner's GET changes nothing)."""
    value, config = request.path_params["token"], pages.config(request)

    def work(session: Session) -> tuple[str, str] | None:
        found = tokens.address_change(tokens.server_secret(session, config), value)
        return found if found and subscriptions.overview(session, found[0]) else None
    found = await pages.in_db(request, work)
    if found is None:
        return pages.invalid(request, "address", 400)
    return pages.page(request, "address_change", old=found[0], new=found[1], moved=[],
                      action=request.url.path)


async def change_address(request: Request) -> Response:
    """POST /manage/address/TOKEN: move every subscription; a link used once finds
    nothing left to move the second time, and says so."""
    value, config = request.path_params["token"], pages.config(request)

    def work(session: Session) -> tuple[str, str, list[str], str] | None:
        found = tokens.address_change(tokens.server_secret(session, config), value)
        try:
            moved = subscriptions.change_address(session, config, *found) if found else []
        except roster.UserError:
            moved = []
        if not (found and moved):
            return None
        return *found, moved, member_actions.manage_url(session, config, found[1])
    done = await pages.in_db(request, work)
    if done is None:
        return pages.invalid(request, "address", 400)
    old, new, moved, url = done
    return pages.page(request, "address_change", old=old, new=new, moved=moved,
                      action="", manage_url=url)
