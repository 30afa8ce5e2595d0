"""The page behind the link in an invitation: GET shows the list and a button, POST
accepts, which subscribes the address (a link scanner's GET subscribes no one).
"""

from __future__ import annotations

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from listserv import commands, invite
from listserv.models import MailingList
from listserv.web import pages


async def form(request: Request) -> Response:
    value = request.path_params["token"]
    found = await pages.in_db(request, lambda s: invite.find(s, value))
    if found is None:
        return pages.invalid(request, "invitation", 404)
    token, mlist = found
    return pages.page(request, "invite", address=token.address, mlist=mlist,
                      action=request.url.path)


async def accept(request: Request) -> Response:
    value, config = request.path_params["token"], pages.config(request)

    def act(session: Session) -> tuple[str, MailingList, str] | None:
        found = invite.find(session, value)
        if found is None:
            return None
        token, mlist = found
        return commands.confirm(session, config, token).value, mlist, token.address
    done = await pages.in_db(request, act)
    if done is None or done[0] == commands.Outcome.BAD_TOKEN:
        return pages.invalid(request, "invitation", 404)
    outcome, mlist, address = done
    return pages.page(request, "done", outcome=outcome, mlist=mlist, address=address)
