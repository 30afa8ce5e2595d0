"""The page behind the link in an invitation: GET shows the list and a button, POST
accepts, which subscribes the address (a link scanner's GET subscribes no one). The
confirm pages' steps (web/member.py), with the invitation's token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from listserv import invite
from listserv.web import member


async def form(request: Request) -> Response:
    return await member.offer(request, invite.find, "invitation", "invite")


async def accept(request: Request) -> Response:
    return await member.answer(request, invite.find, "invitation")
