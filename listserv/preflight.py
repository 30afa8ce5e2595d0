"""Checks at `listserv serve` start for settings that work on a test machine and fail
silently in production: the log says what is wrong before a member finds out."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.engine import Engine

from listserv import db
from listserv.config import Config
from listserv.models import MailingList

log = logging.getLogger("listserv")

# Names that never reach the Internet (RFC 2606, RFC 6761, RFC 6762's .local).
_RESERVED_TLDS = {"test", "example", "invalid", "localhost", "local"}
_EXAMPLE_DOMAINS = {"example.com", "example.net", "example.org"}


def is_real_domain(domain: str) -> bool:
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) < 2 or labels[-1] in _RESERVED_TLDS:
        return False
    return ".".join(labels[-2:]) not in _EXAMPLE_DOMAINS


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_problem(base_url: str, domains: Iterable[str]) -> str | None:
    """Why the links mailed to members of these domains would not work, if they would
    not: a loopback address reaches only this machine, and RFC 8058 one-click
    unsubscribe (which Gmail and Yahoo require of bulk senders) needs https."""
    real = sorted({d for d in domains if is_real_domain(d)})
    if not real:
        return None
    url = urlsplit(base_url)
    lists = f"lists on {', '.join(real[:3])}{' ...' if len(real) > 3 else ''}"
    if _is_loopback(url.hostname or ""):
        return (f"[web] base_url {base_url} is a loopback address, but there are {lists}: "
                "every link mailed to members (unsubscribe, confirm, archive) is dead")
    if url.scheme != "https":
        return (f"[web] base_url {base_url} is not https, but there are {lists}: "
                "one-click unsubscribe (RFC 8058) needs https")
    return None


def warn_about_base_url(engine: Engine, config: Config) -> None:
    with db.read_session(engine) as session:
        domains = session.scalars(select(MailingList.domain).distinct()).all()
    problem = base_url_problem(config.web.base_url, domains)
    if problem:
        log.warning("%s", problem)
