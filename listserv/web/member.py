"""The pages behind the links in a member's mail: confirm a subscription, unsubscribe
(RFC 8058 one-click), mute or follow a thread (and undo it), turn delivery back on after
bounces.

They only ever act on POST: a GET shows a page with a button, because link scanners
and previews fetch every URL. Each link is checked again on the POST that acts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from listserv import bounces, member_actions, roster, tokens
from listserv.config import Config
from listserv.enums import DeliveryMode
from listserv.models import MailingList, Token, utcnow
from listserv.web import pages


@dataclass(frozen=True)
class Link:
    """What a signed link in a member's copy names: a member, and for mute or follow a
    thread."""

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


def _thread_link(session: Session, config: Config, purpose: str, value: str) -> Link | None:
    """The member and thread a mute or follow link was made for; None if forged or gone."""
    parts = _signed(session, config, purpose, value, 4)
    if parts is None or not parts[2].isdigit():
        return None
    mlist = session.get(MailingList, int(parts[0]))
    if mlist is None or not tokens.made_for_current(session, mlist.id, parts[1], parts[3]):
        return None
    thread_id = member_actions.thread_of_message(session, mlist.id, int(parts[2]))
    return Link(mlist, parts[1], thread_id) if thread_id else None


def mute_target(session: Session, config: Config, value: str) -> Link | None:
    return _thread_link(session, config, "mute", value)


def follow_target(session: Session, config: Config, value: str) -> Link | None:
    return _thread_link(session, config, "follow", value)


async def signed_link(request: Request, target: Callable[[Session, Config, str], Link | None],
                      action: Callable[[Session, Link], object] | None = None
                      ) -> Link | None:
    """Check the {token} of the path; for a POST, `action` runs in the same transaction."""
    value, config = request.path_params["token"], pages.config(request)

    def work(session: Session) -> Link | None:
        link = target(session, config, value)
        if link is not None and action is not None:
            action(session, link)
        return link
    return await pages.in_db(request, work)


# --- confirm: the web answer to a subscribe or unsubscribe confirmation ----------------

# What a confirm or invitation page acts on: a usable token and its list.
Finder = Callable[[Session, str], tuple[Token, MailingList] | None]


async def offer(request: Request, find: Finder, kind: str, name: str) -> Response:
    """GET: templates/web/NAME.html, with the button that POSTs the answer."""
    value = request.path_params["token"]
    found = await pages.in_db(request, lambda s: find(s, value))
    if found is None:
        return pages.invalid(request, kind, 404)
    token, mlist = found
    return pages.page(request, name, kind=token.kind.value, address=token.address,
                      mlist=mlist, action=request.url.path)


async def answer(request: Request, find: Finder, kind: str) -> Response:
    """POST: member_actions.confirm acts on the token, in the same transaction that finds it."""
    value, config = request.path_params["token"], pages.config(request)

    def act(session: Session) -> tuple[str, MailingList, str] | None:
        found = find(session, value)
        if found is None:
            return None
        token, mlist = found
        return member_actions.confirm(session, config, token).value, mlist, token.address
    done = await pages.in_db(request, act)
    if done is None or done[0] == member_actions.Outcome.BAD_TOKEN:
        return pages.invalid(request, kind, 404)
    outcome, mlist, address = done
    return pages.page(request, "done", outcome=outcome, mlist=mlist, address=address)


async def confirm_form(request: Request) -> Response:
    return await offer(request, member_actions.find_confirmable, "confirm", "confirm")


async def confirm(request: Request) -> Response:
    return await answer(request, member_actions.find_confirmable, "confirm")


# --- unsubscribe -----------------------------------------------------------------------

async def unsubscribe_form(request: Request) -> Response:
    link = await signed_link(request, unsubscribe_target)
    if link is None:
        return pages.invalid(request, "unsubscribe", 400)
    return pages.page(request, "unsubscribe", mlist=link.mlist, address=link.address,
                      action=request.url.path)


PAUSE_DAYS = 30  # "no mail for a while", the unsubscribe page's gentler choice


def _instead(session: Session, link: Link, choice: str) -> str:
    """A gentler choice than leaving, for a member (as `set delivery` by mail and
    `listserv member set` make it); "" when the address is no member now."""
    if not member_actions.is_member(session, link.mlist.id, link.address):
        return ""
    if choice == "pause":
        until = utcnow() + timedelta(days=PAUSE_DAYS)
        roster.pause(session, link.mlist, link.address, until)
        return f"no mail until {until.date().isoformat()}"
    roster.set_member(session, link.mlist, link.address, delivery=DeliveryMode.DIGEST_MIME)
    return "a digest"


async def unsubscribe(request: Request) -> Response:
    """RFC 8058 one-click: the POST itself is the confirmation. The page's gentler
    buttons post `instead` (digest or pause) and the member stays."""
    config = pages.config(request)
    choice = str((await request.form()).get("instead", ""))
    done: list[str] = []

    def act(session: Session, link: Link) -> None:
        if choice in ("digest", "pause"):
            done.append(_instead(session, link, choice))
        else:
            member_actions.leave(session, config, link.mlist, link.address)
    link = await signed_link(request, unsubscribe_target, act)
    if link is None:
        return pages.invalid(request, "unsubscribe", 400)
    if done:
        return pages.page(request, "done", outcome="instead", instead=done[0],
                          mlist=link.mlist, address=link.address)
    return pages.page(request, "done", outcome=member_actions.Outcome.UNSUBSCRIBED.value,
                      mlist=link.mlist, address=link.address)


# --- mute, unmute, follow, unfollow a thread: one link, each page offers the undo ------

@dataclass(frozen=True)
class ThreadVerb:
    """What a thread link's page does: its undo, the change, the link and page it uses."""

    undo: str
    done: str  # the page's word for it done
    change: Callable[[Session, int, str, str], None]
    target: Callable[[Session, Config, str], Link | None]
    page: str  # templates/web/PAGE.html, and the purpose of the signed link


VERBS = {
    "mute": ThreadVerb("unmute", "muted", member_actions.mute, mute_target, "mute"),
    "unmute": ThreadVerb("mute", "unmuted", member_actions.unmute, mute_target, "mute"),
    "follow": ThreadVerb("unfollow", "followed", member_actions.follow, follow_target,
                         "follow"),
    "unfollow": ThreadVerb("follow", "unfollowed", member_actions.unfollow, follow_target,
                           "follow"),
}


async def _offer(request: Request, verb: str) -> Response:
    """GET /VERB/TOKEN: the page with the button."""
    what = VERBS[verb]
    link = await signed_link(request, what.target)
    if link is None:
        return pages.invalid(request, what.page, 400)
    return pages.page(request, what.page, done="", offer=verb, mlist=link.mlist,
                      address=link.address, action=request.url.path)


async def _change(request: Request, verb: str) -> Response:
    """POST /VERB/TOKEN: done, and the page offers to undo it."""
    what = VERBS[verb]
    link = await signed_link(request, what.target, lambda session, link: what.change(
        session, link.mlist.id, link.address, link.thread_id))
    if link is None:
        return pages.invalid(request, what.page, 400)
    return pages.page(request, what.page, done=what.done, offer=what.undo, mlist=link.mlist,
                      address=link.address,
                      action=f"/{what.undo}/{request.path_params['token']}")


def thread_pages(kind: str) -> tuple[Callable[[Request], Awaitable[Response]],
                                      Callable[[Request], Awaitable[Response]]]:
    """GET (the offer: a button, since mail scanners open links) and POST (the change)
    of /KIND/TOKEN, for mute, unmute, follow and unfollow alike."""
    async def offer(request: Request) -> Response:
        return await _offer(request, kind)

    async def change(request: Request) -> Response:
        return await _change(request, kind)
    return offer, change


# --- re-enable delivery after bounces --------------------------------------------------

async def reenable(request: Request) -> Response:
    """/reenable/TOKEN from a bounce warning: GET asks, POST turns delivery back on."""
    done = request.method == "POST"
    member: list[bool] = []

    def act(session: Session, link: Link) -> None:
        change = bounces.reenable if done else member_actions.is_member
        member.append(change(session, link.mlist.id, link.address))
    link = await signed_link(request, reenable_target, act)
    if link is None:
        return pages.invalid(request, "re-enable", 400)
    return pages.page(request, "reenable", done=done, member=member[0], mlist=link.mlist,
                      address=link.address, action=request.url.path)
