"""Each post of a thread page as drawn, remembered between requests. A thread of 200
posts would otherwise parse, decode and clean 200 MIME trees and run the template for
each of them every time it is asked for: 35 ms of CPU a page (bench/RESULTS.md).

A post's <article> is a function of its stored bytes, its row (sender, subject, date,
erased), the list's content filter, its place in the thread and the list's URLs, so it
is remembered under all of them, one entry per message. Erasure rewrites the bytes and
the row, and a change of the filter changes the rules, so neither is ever answered from
what was drawn before (also when another process made the change); the next read of the
message replaces the old entry. The bytes are compared by Python's hash of them: SipHash
under a key of this process's own, a tenth of blake2b's cost, and no sender can aim at
it. A template edited on disk shows after a restart, as for the pages' ETags
(caching._rendering). The memory is bounded by the characters held, least recently used
going first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from markupsafe import Markup

from listserv import content_filter, urls, view
from listserv.archive import Post
from listserv.models import MailingList
from listserv.templating import environment

# About 10 MB: the articles of some 100 of the largest threads (200 posts, 50 KB each).
MAX_CHARS = 5_000_000


class _Remembered:
    """A bounded least-recently-used map of message pk -> (version, article), shared by
    the worker threads that draw pages."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.chars = 0
        self.entries: OrderedDict[int, tuple[Hashable, Markup]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, pk: int, version: Hashable) -> Markup | None:
        with self.lock:
            entry = self.entries.get(pk)
            if entry is None or entry[0] != version:
                return None
            self.entries.move_to_end(pk)
            return entry[1]

    def put(self, pk: int, version: Hashable, article: Markup) -> None:
        if len(article) > self.max_chars:
            return
        with self.lock:
            old = self.entries.pop(pk, None)
            self.chars += len(article) - (len(old[1]) if old else 0)
            self.entries[pk] = (version, article)
            while self.chars > self.max_chars:
                _, (_, dropped) = self.entries.popitem(last=False)
                self.chars -= len(dropped)


_REMEMBERED = _Remembered(MAX_CHARS)


def drawn(posts: list[Post], mlist: MailingList, list_url: str) -> list[Markup]:
    """Each post's <article> (templates/web/_archive.html, `article`), in order; a new
    subject is shown on a reply whose subject differs from the thread's first post's."""
    rules = content_filter.rules(mlist)
    root = posts[0].subject if posts else ""
    macro = environment().get_template("web/_archive.html").module.article  # type: ignore[attr-defined]
    articles: list[Markup] = []
    for post in posts:
        show_subject = bool(post.depth) and not post.erased and post.subject != root
        version = (hash(post.raw), rules, post.subject, post.from_name, post.from_address,
                   post.date, post.erased, post.depth, show_subject, list_url, mlist.address)
        article = _REMEMBERED.get(post.pk, version)
        if article is None:
            shown = view.view(content_filter.apply(post.raw, rules).data)
            # The URLs are made here, not called for from the template: a call from
            # jinja costs several times a call from Python, and a thread page makes
            # hundreds.
            reply = None if post.erased else urls.reply_mailto(mlist.address, post.message_id,
                                                                post.subject)
            article = macro(post, shown, show_subject,
                            f"{list_url}message/{urls.quote_id(post.message_id)}/", reply,
                            view.obfuscate, urls.quote_id)
            _REMEMBERED.put(post.pk, version, article)
        articles.append(article)
    return articles
