"""Where the archive and a member's own pages live on the web: the URLs that list
headers, footers, digests and the archive's pages link to, and the mailto that starts a
reply. Pure functions of the configured base URL.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote

from listserv.address import ListAddresses


def archive_url(base_url: str, addresses: ListAddresses) -> str:
    return f"{base_url.rstrip('/')}/{addresses.posting}/"


def quote_id(message_id: str) -> str:
    """A Message-ID (or thread id) as one URL path segment: "/" and "%" escaped too."""
    return quote(message_id, safe="@!$&'()*+,;=:~")


def message_url(base_url: str, addresses: ListAddresses, message_id: str) -> str:
    """RFC 5064 Archived-At: keyed by Message-ID, so the URL never changes."""
    return f"{archive_url(base_url, addresses)}message/{quote_id(message_id)}/"


def thread_url(base_url: str, addresses: ListAddresses, thread_id: str) -> str:
    return f"{archive_url(base_url, addresses)}thread/{quote_id(thread_id)}/"


def unsubscribe_url(base_url: str, token: str) -> str:
    """A member's one-click unsubscribe page; `token` is a signed link (see tokens)."""
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"


def mute_url(base_url: str, token: str) -> str:
    """The page that mutes one thread for a member."""
    return f"{base_url.rstrip('/')}/mute/{token}"


def follow_url(base_url: str, token: str) -> str:
    """The page that follows one thread for a member (see tokens.follow_link)."""
    return f"{base_url.rstrip('/')}/follow/{token}"


def manage_url(base_url: str, token: str) -> str:
    """A member's page of every subscription on the server (a signed, timed link)."""
    return f"{base_url.rstrip('/')}/manage/{token}"


_REPLY_PREFIX = re.compile(r"\s*re\s*:", re.IGNORECASE)


def reply_mailto(list_address: str, message_id: str, subject: str) -> str:
    """An RFC 6068 link that starts a reply to a post in the reader's mail program,
    threaded under it (In-Reply-To) and with "Re: " added only if it is not there."""
    if not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    return (f"mailto:{_quoted(list_address, '@')}?In-Reply-To="
            f"{quote(f'<{message_id}>', safe='')}&subject={_quoted(subject, '')}")


@lru_cache(maxsize=1024)
def _quoted(text: str, safe: str) -> str:
    """quote(), remembered: a thread page links a reply to each of its posts, which
    share the list's address and mostly one subject, and quote() goes byte by byte."""
    return quote(text, safe=safe)
