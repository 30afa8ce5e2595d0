"""HTTP caching of the archive's message pages, raw messages and attachments: an ETag
and a Cache-Control on each, and 304 Not Modified to a reader who already holds it.

A message's bytes never change once archived, except when the owners erase it, so its
ETag is the message's id and a digest of its stored bytes (which erasure rewrites).
The message page also shows its thread's links (a reply arriving adds one) and is drawn
by our templates, so its ETag adds the thread's count and last date and the software
that renders it. Why max-age is what it is: docs/archive.md, "Caching".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from listserv.enums import ArchivePolicy
from listserv.models import MailingList

# How long a browser or proxy may show its copy without asking again: erasure reaches
# every cache within this, and a new reply shows on its parent's page within it.
MAX_AGE = 300


def message_etag(pk: int, raw: bytes) -> str:
    """The version of an archived message: what erasure changes (its stored bytes)
    changes this. Everything cached of a message derives its ETag from here."""
    return f"{pk}-{hashlib.blake2b(raw, digest_size=8).hexdigest()}"


@cache
def _rendering() -> str:
    """The software that draws a page: the version and the page templates, so an upgrade
    is never answered with 304 for a page drawn by the version before."""
    digest = hashlib.blake2b(importlib.metadata.version("listserv").encode(), digest_size=6)
    templates = resources.files("listserv.templates") / "web"
    for item in sorted(templates.iterdir(), key=lambda t: t.name):
        if item.is_file():
            digest.update(item.name.encode() + b"\0" + item.read_bytes())
    return digest.hexdigest()


def page_etag(message: str, parts: Iterable[object]) -> str:
    """A page about a message: its message_etag, the other `parts` the page shows (its
    thread's state), and the software drawing it."""
    text = "\0".join(str(part) for part in parts)
    extra = hashlib.blake2b(f"{_rendering()}\0{text}".encode(), digest_size=8).hexdigest()
    return f"{message}-{extra}"


def cache_control(mlist: MailingList) -> str:
    """A members-only archive's pages are for the member's own browser only (`private`);
    after MAX_AGE every copy is checked with us again (`must-revalidate`), never shown
    stale, so an erased message is gone from every cache within MAX_AGE."""
    scope = "private" if mlist.archive is ArchivePolicy.PRIVATE else "public"
    return f"{scope}, max-age={MAX_AGE}, must-revalidate"


def headers(mlist: MailingList, etag: str) -> dict[str, str]:
    return {"etag": f'"{etag}"', "cache-control": cache_control(mlist)}


def matches(request: Request, etag: str) -> bool:
    """The reader's If-None-Match names this version (weak or strong, or *)."""
    wanted = request.headers.get("if-none-match")
    if wanted is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or f'"{etag}"' in tags


def not_modified(mlist: MailingList, etag: str) -> Response:
    """304: the reader's copy is current (with the headers it would have come with)."""
    return Response(status_code=304, headers=headers(mlist, etag))


def cached(response: Response, mlist: MailingList, etag: str) -> Response:
    """`response` with its ETag and Cache-Control."""
    response.headers.update(headers(mlist, etag))
    return response
