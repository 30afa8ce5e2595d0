"""The owners' admin pages of one list: members (search, add, remove, delivery and the
moderated flag, a CSV export), invitations (send, see those unanswered), every per-list
setting, the owners' templates (see, set, reset), and the bounces `listserv bounce ls`
shows. A moderator's link opens none of them. The link itself and the changes'
log lines are admin.py's and staff.py's.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from listserv import bounces, invite, list_settings, owner_templates, roster, staff
from listserv.config import Config
from listserv.enums import DeliveryMode
from listserv.models import Member, utcnow
from listserv.roster import UserError
from listserv.staff import Staff
from listserv.web import pages
from listserv.web.admin import done_page, form, signed, staff_page

MEMBERS_SHOWN = 200  # of a search's matches on one page; the CSV has them all
MAX_TEXT = 20_000  # characters of a template or a list of addresses to invite


def _owners(work: Callable[[Session, Staff], Any]) -> Callable[[Session, Staff], Any]:
    """`work` for an owner; for a moderator, PermissionError and nothing done."""
    def only(session: Session, who: Staff) -> Any:
        if not who.owner:
            return PermissionError()
        return work(session, who)
    return only


async def owners_only(request: Request, work: Callable[[Session, Staff], Any]
                      ) -> tuple[Staff, Any] | Response:
    """The signed link's staff and `work` done, when the link is an owner's; a
    moderator's gets a 403 page."""
    found = await signed(request, _owners(work))
    if isinstance(found, tuple) and isinstance(found[1], PermissionError):
        return staff_page(request, "admin_done", found[0], 403, back="", summary="",
                          error="These pages are for the list's owners only; a moderator's "
                          "link opens the held posts and the pending requests.")
    return found


# --- members -------------------------------------------------------------------------------

def _matching(session: Session, who: Staff, query: str) -> list[list[Member]]:
    """The roles of each address that matches, one entry an address (an owner who gets
    posts holds two roles; removing the address removes both, as the CLI does)."""
    query = query.strip().lower()
    by_address: dict[str, list[Member]] = {}
    for m in roster.members(session, who.mlist):
        if not query or query in m.address or query in m.display_name.lower():
            by_address.setdefault(m.address, []).append(m)
    return list(by_address.values())


async def members(request: Request) -> Response:
    query = request.query_params.get("q", "")[:200]
    found = await owners_only(request, lambda s, who: _matching(s, who, query))
    if isinstance(found, Response):
        return found
    who, matching = found
    return staff_page(request, "admin_members", who, members=matching[:MEMBERS_SHOWN],
                      more=len(matching) - MEMBERS_SHOWN, query=query,
                      deliveries=[m.value for m in DeliveryMode])


async def member_change(request: Request) -> Response:
    """POST .../members: add, remove or set one address, by the field `do`."""
    fields, config = await form(request), pages.config(request)
    do, address = fields.get("do", ""), fields.get("address", "")

    def work(session: Session, who: Staff) -> str:
        if do == "add":
            return staff.add_member(session, config, who, address, fields.get("welcome") == "yes")
        if do == "remove":
            return staff.remove_member(session, who, address)
        return staff.set_member(session, who, address, fields.get("delivery", ""),
                                fields.get("moderated") == "yes")
    found = await owners_only(request, work)
    if isinstance(found, Response):
        return found
    return done_page(request, *found, page="members")


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A name a spreadsheet will not run as a formula."""
    return "'" + text if text.startswith(_FORMULA) else text


def _csv(session: Session, who: Staff) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["address", "name", "role", "delivery", "moderated", "status"])
    for m in roster.members(session, who.mlist):
        writer.writerow([m.address, _cell(m.display_name), m.role.value, m.delivery.value,
                         str(m.moderated).lower(), roster.delivery_status(m)])
    return out.getvalue()


async def members_csv(request: Request) -> Response:
    """Every role on the list, in the columns `listserv member import` reads back."""
    found = await owners_only(request, _csv)
    if isinstance(found, Response):
        return found
    who, text = found
    name = who.mlist.address.replace("@", "_at_")
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="{name}-members.csv"',
        "cache-control": "no-store"})


# --- settings ----------------------------------------------------------------------------

def _settings(who: Staff) -> list[dict[str, Any]]:
    """Each setting with its value as `list set` takes it, and its choices if any."""
    values = list_settings.settings_of(who.mlist)
    shown = {key: list_settings.DEFAULT if value is None else str(value).lower()
             if isinstance(value, bool) else str(value) for key, value in values.items()}
    return [{"key": key, "value": shown[key],
             "choices": list_settings.choices(key), "valid": list_settings.valid(key)}
            for key in list_settings.SETTINGS]


async def settings(request: Request) -> Response:
    found = await owners_only(request, lambda s, who: None)
    if isinstance(found, Response):
        return found
    who, _ = found
    return staff_page(request, "admin_settings", who, settings=_settings(who))


async def setting_change(request: Request) -> Response:
    fields = await form(request)
    found = await owners_only(request, lambda session, who: staff.change_setting(
        session, who, fields.get("key", ""), fields.get("value", "")))
    if isinstance(found, Response):
        return found
    return done_page(request, *found, page="settings")


# --- invitations -------------------------------------------------------------------------

async def invitations(request: Request) -> Response:
    found = await owners_only(request, lambda s, who: invite.pending(s, who.mlist))
    if isinstance(found, Response):
        return found
    who, waiting = found
    return staff_page(request, "admin_invite", who, pending=waiting, max_text=MAX_TEXT)


async def invite_send(request: Request) -> Response:
    """POST .../invite: `listserv member invite` with the addresses of the form."""
    text = _long_text(await form(request, MAX_TEXT + 1), "addresses")
    config = pages.config(request)

    def work(session: Session, who: Staff) -> str:
        if isinstance(text, UserError):
            raise text
        return staff.invite_addresses(session, config, who, text)
    found = await owners_only(request, work)
    if isinstance(found, Response):
        return found
    return done_page(request, *found, page="invite")


def _long_text(fields: dict[str, str], name: str) -> str | UserError:
    """A field that may be long (a template, many addresses): refused past MAX_TEXT
    rather than cut, which would save or mail something the owner did not write."""
    value = fields.get(name, "")
    if len(value) > MAX_TEXT:
        return UserError(f"at most {MAX_TEXT} characters; nothing was changed")
    return value


# --- templates ---------------------------------------------------------------------------

def _templates(who: Staff) -> list[dict[str, Any]]:
    """Each template with the text the list uses and the variables it may use."""
    shown = {name: owner_templates.shown(who.mlist, name) for name in owner_templates.VARIABLES}
    return [{"name": name, "text": text, "built_in": built_in,
             "variables": owner_templates.VARIABLES[name]}
            for name, (text, built_in) in shown.items()]


async def templates(request: Request) -> Response:
    found = await owners_only(request, lambda s, who: None)
    if isinstance(found, Response):
        return found
    who, _ = found
    return staff_page(request, "admin_templates", who, templates=_templates(who),
                      max_text=MAX_TEXT)


async def template_change(request: Request) -> Response:
    """POST .../templates: `template set` (do=set, checked the same way) or `template
    reset` (do=reset) of the template `name`."""
    fields = await form(request, MAX_TEXT + 1)
    text = _long_text(fields, "text") if fields.get("do") == "set" else None

    def work(session: Session, who: Staff) -> str:
        if isinstance(text, UserError):
            raise text
        return staff.change_template(session, who, fields.get("name", ""), text)
    found = await owners_only(request, work)
    if isinstance(found, Response):
        return found
    return done_page(request, *found, page="templates")


# --- bounces ---------------------------------------------------------------------------

def _bounces(session: Session, config: Config, who: Staff) -> tuple[list, list]:
    """What `listserv bounce ls` prints: the bounces, and refusals for policy by domain."""
    since = utcnow() - timedelta(days=bounces.HISTORY_DAYS)
    return (bounces.recent(session, config, who.mlist),
            bounces.policy_by_domain(session, who.mlist.id or 0, since))


async def bounce_list(request: Request) -> Response:
    config = pages.config(request)
    found = await owners_only(request, lambda session, who: _bounces(session, config, who))
    if isinstance(found, Response):
        return found
    who, (rows, policy) = found
    return staff_page(request, "admin_bounces", who, rows=rows, policy=policy,
                      days=bounces.HISTORY_DAYS)
