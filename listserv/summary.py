"""How a summary reads: one short mail for the members in `summary` mode, made with
each digest issue from the same posts (`digest.build` queues and keeps it), listing the
issue's threads with their counts, the first lines of each one's newest post and links
to read, follow or mute it. Nothing here reads or writes the store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from listserv import digest_format, slots, urls, view
from listserv.digest_format import Entry, Form
from listserv.enums import ArchivePolicy
from listserv.models import MailingList
from listserv.templating import render

EXCERPT_LINES = 3  # of the newest post of each thread
EXCERPT_WIDTH = 100  # characters of one excerpt line
_SIGNATURE = ("-- ", "--")  # RFC 3676 4.3 (and the usual trimmed form)
_ATTRIBUTION = re.compile(r"\b(wrote|writes|a écrit|schrieb)\s*:$", re.IGNORECASE)
_TEXT_PART = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'


@dataclass(frozen=True)
class Topic:
    """One thread as a summary lists it."""

    subject: str
    thread_id: str
    posts: int  # in this issue
    authors: int  # distinct, in this issue
    newest: Entry
    excerpt: tuple[str, ...]


def excerpt(raw: bytes, lines: int = EXCERPT_LINES) -> tuple[str, ...]:
    """The first lines a post's author wrote: quoted text, the line that introduces it
    and the signature left out, since a reader deciding whether to open a thread wants
    what is new in it."""
    out: list[str] = []
    for line in view.plain_text(raw, limit=16384).splitlines():
        if line.rstrip("\r") in _SIGNATURE:
            break
        text = " ".join(line.split())
        if not text or text.startswith(">") or _ATTRIBUTION.search(text):
            continue
        out.append(text if len(text) <= EXCERPT_WIDTH else text[:EXCERPT_WIDTH - 1] + "…")
        if len(out) == lines:
            break
    return tuple(out)


def topics(entries: Sequence[Entry]) -> list[Topic]:
    """The threads of an issue in the order they first came; a thread's newest post is
    the last to arrive (a Date field can say anything)."""
    return [Topic(g.subject, g.entries[0].thread_id, len(g.entries),
                  len({e.from_header.lower() for e in g.entries}), g.entries[-1],
                  excerpt(g.entries[-1].raw))
            for g in digest_format.by_thread(entries)]


def subject_of(name: str, volume: int, number: int) -> str:
    return render("mail/summary_subject.txt", name=name, volume=volume, number=number).strip()


def follow_url(base_url: str, message_pk: int) -> str:
    """A member's link to follow a thread (each post then comes to them as it is sent).
    Following is the `options` branch's: "" until its `urls.follow_url` and its token
    (named "follow" in copies.THREAD_LINKS) are merged, and the template leaves the link
    out meanwhile."""
    return ""


def _text(mlist: MailingList, base_url: str, context: dict, found: list[Topic],
          personal: bool) -> str:
    web = mlist.archive is not ArchivePolicy.OFF
    listed = [{"subject": t.subject, "posts": t.posts, "authors": t.authors,
               "author": t.newest.author, "excerpt": t.excerpt,
               "read_url": urls.thread_url(base_url, context["addresses"], t.thread_id)
               if web else "",
               "follow_url": follow_url(base_url, t.newest.message_pk) if personal else "",
               "mute_url": urls.mute_url(base_url, slots.thread_token(
                   "mute", t.newest.message_pk)) if personal else ""}
              for t in found]
    return render("mail/summary.txt", **context | {
        "topics": listed, "posts": sum(t.posts for t in found)})


@dataclass(frozen=True)
class Summary:
    subject: str
    topics: int
    form: Form


def mail(mlist: MailingList, base_url: str, context: dict, entries: Sequence[Entry],
         date: datetime) -> Summary:
    """The summary of an issue (`context` is the issue's, see digest_format): written
    once, each member's follow and mute links in one slot filled at delivery; the
    archive keeps it without them."""
    found = topics(entries)
    context = context | {"subject": subject_of(mlist.name, context["volume"],
                                               context["number"])}
    personal = slots.Slot(0, _text(mlist, base_url, context, found, personal=True))
    archived = _text(mlist, base_url, context, found, personal=False)
    made = digest_format.form(mlist, base_url, context, _TEXT_PART, "summary", date,
                              personal=(personal, archived))
    return Summary(context["subject"], len(found), made)
