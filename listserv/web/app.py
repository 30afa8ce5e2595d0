"""The Starlette app: every URL of the web pages in one route table, the objects the
endpoints share put on `app.state`, the security headers of every response, and our
own error pages (never a traceback).

The archive's pages show mail written by anyone. Its content is escaped or sanitised
(view.py), and every response also carries a Content-Security-Policy that allows no
script and no remote content at all, so a hole in the sanitising still runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from listserv import db, limits
from listserv.config import Config
from listserv.web import (
    access,
    admin,
    admin_archive,
    admin_owner,
    archive,
    exports,
    invite,
    join,
    manage,
    member,
    pages,
)

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


class _Number(IntegerConvertor):
    """{x:number}: an int path segment of at most 10 digits; a longer one matches no
    route (404), where {x:int} would make Python refuse to convert 5,000 digits (500)."""

    regex = "[0-9]{1,10}"


register_url_convertor("number", _Number())

# A page is an endpoint function in one of the modules beside this one and a line here.
# The member pages come before the archive's, whose first segment is any list address.
ROUTES: list[BaseRoute] = [
    Route("/", archive.index),
    Route("/confirm/{token}", member.confirm_form, methods=["GET"]),
    Route("/confirm/{token}", member.confirm, methods=["POST"]),
    Route("/unsubscribe/{token}", member.unsubscribe_form, methods=["GET"]),
    Route("/unsubscribe/{token}", member.unsubscribe, methods=["POST"]),
    *(Route(f"/{kind}/{{token}}", handler, methods=[method])
      for kind in ("mute", "unmute", "follow", "unfollow")
      for handler, method in zip(member.thread_pages(kind), ("GET", "POST"), strict=True)),
    Route("/reenable/{token}", member.reenable, methods=["GET", "POST"]),
    Route("/manage", manage.request_form, methods=["GET"]),
    Route("/manage", manage.request_link, methods=["POST"]),
    Route("/manage/address/{token}", manage.address_form, methods=["GET"]),
    Route("/manage/address/{token}", manage.change_address, methods=["POST"]),
    Route("/manage/{token}", manage.page, methods=["GET"]),
    Route("/manage/{token}", manage.change, methods=["POST"]),
    Route("/{address}/subscribe", join.join_form, methods=["GET"]),
    Route("/{address}/subscribe", join.subscribe, methods=["POST"]),
    # An owner's or moderator's pages, opened by a signed link (admin.py, admin_owner.py).
    Route("/{address}/admin", admin.ask_form, methods=["GET"]),
    Route("/{address}/admin", admin.ask, methods=["POST"]),
    Route("/{address}/admin/{token}", admin.overview, methods=["GET"]),
    Route("/{address}/admin/{token}/held/{id:number}", admin.held_action, methods=["POST"]),
    Route("/{address}/admin/{token}/request/{id:number}", admin.request_action,
          methods=["POST"]),
    Route("/{address}/admin/{token}/members", admin_owner.members, methods=["GET"]),
    Route("/{address}/admin/{token}/members", admin_owner.member_change, methods=["POST"]),
    Route("/{address}/admin/{token}/members.csv", admin_owner.members_csv, methods=["GET"]),
    Route("/{address}/admin/{token}/settings", admin_owner.settings, methods=["GET"]),
    Route("/{address}/admin/{token}/settings", admin_owner.setting_change, methods=["POST"]),
    Route("/{address}/admin/{token}/bounces", admin_owner.bounce_list, methods=["GET"]),
    Route("/{address}/admin/{token}/invite", admin_owner.invitations, methods=["GET"]),
    Route("/{address}/admin/{token}/invite", admin_owner.invite_send, methods=["POST"]),
    Route("/{address}/admin/{token}/templates", admin_owner.templates, methods=["GET"]),
    Route("/{address}/admin/{token}/templates", admin_owner.template_change,
          methods=["POST"]),
    Route("/{address}/admin/{token}/archive", admin_archive.archive, methods=["GET"]),
    Route("/{address}/admin/{token}/archive", admin_archive.erase, methods=["POST"]),
    Route("/{address}/held/{token}", admin.held_form, methods=["GET"]),
    Route("/{address}/held/{token}", admin.held_decide, methods=["POST"]),
    Route("/invite/{token}", invite.form, methods=["GET"]),
    Route("/invite/{token}", invite.accept, methods=["POST"]),
    Route("/{address}/feed.atom", exports.feed),
    Route("/{address}/export.mbox", exports.export),
    Route("/{address}/", archive.list_page),
    Route("/{address}/search", archive.search_page),
    Route("/{address}/access/{token}", access.enter),
    Route("/{address}/{year:number}/{month:number}/", archive.month_page),
    Route("/{address}/thread/{rest:path}", archive.thread_page),
    Route("/{address}/message/{rest:path}", archive.message_routes),
    Route("/{address}/message/{rest:path}", archive.remove, methods=["POST"]),
    Route("/{address}/digest/", archive.digest_index, methods=["GET"]),
    Route("/{address}/digest/{volume:number}/{number:number}/", archive.digest_issue,
          methods=["GET"]),
    Route("/{address}/digest/{volume:number}/{number:number}/summary/",
          archive.digest_summary, methods=["GET"]),
]


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown pages and closed archives get a page of ours, never a traceback."""
    assert isinstance(exc, HTTPException)
    return pages.page(request, "error", exc.status_code, status=exc.status_code,
                      detail=exc.detail)


async def server_error(request: Request, exc: Exception) -> Response:
    """A failure of ours: our error page, with the headers of every page set here,
    since Starlette answers it outside the middleware that sets them."""
    response = pages.page(request, "error", 500, status=500,
                          detail="Something went wrong on our side; please try again later.")
    response.headers.update({k.decode(): v.decode() for k, v in SECURITY_HEADERS.items()})
    return response


UNAVAILABLE_TEXT = "The archive is unavailable for a moment. Please try again in a minute."


async def unavailable(request: Request, exc: Exception) -> Response:
    """The database is away (stopped, its disk full): a page saying so, with the
    headers of every page, not a traceback; it comes back by itself."""
    response = pages.page(request, "error", 503, status=503, detail=UNAVAILABLE_TEXT)
    response.headers["retry-after"] = "60"
    return response


def make_app(engine: Engine, config: Config, extra_routes: Sequence[BaseRoute] = ()
             ) -> Starlette:
    """The web pages over `engine`, plus `extra_routes` (the server's /healthz and
    /metrics)."""
    app = Starlette(exception_handlers={HTTPException: http_error, Exception: server_error,
                                        **dict.fromkeys(db.UNAVAILABLE, unavailable)},
                    middleware=[Middleware(SecurityHeaders)],
                    routes=[*extra_routes, *ROUTES])
    app.state.engine = engine
    app.state.config = config
    # Web requests that mail someone (join, manage links), per client IP an hour.
    app.state.web_requests = limits.PerHour(config.lists.max_confirmations_per_hour)
    return app
