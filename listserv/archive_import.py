"""Old mail into the archive: an mbox (or a single message) stored and threaded like
the posts the server took in, never sent. Reading the mails runs in other processes
while this one writes the last ones; `listserv archive import` drives it.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from sqlmodel import Session

from listserv import mbox, store, view
from listserv.models import MailingList, MessageKind, MessageState
from listserv.parse import Parsed, parse

_IMPORTED_FIELDS = [f for f in store.Imported.__dataclass_fields__ if f != "id"]


def import_mail(session: Session, mlist: MailingList, mails: Iterable[Read]) -> int:
    """Archive old messages (stored and threaded, never sent), given with what reading
    them found (see parsed_mails); how many were new. A Message-ID already archived, or
    met earlier in `mails`, is skipped. A message without a usable Date keeps its
    envelope's date, so it is shown when it was sent, not when it was imported."""
    rows: dict[str, tuple[dict, Read]] = {}
    for read in mails:
        values = store.message_values(mlist, read.mail.raw, read.parsed,
                                      kind=MessageKind.POST, state=MessageState.IMPORTED,
                                      mail_from=read.mail.sender)
        values["date"] = values["date"] or read.mail.date
        rows.setdefault(values["message_id"], (values, read))
    known = store.archived_ids(session, mlist.id, rows)
    new = [(values, read) for mid, (values, read) in rows.items() if mid not in known]
    if not new:
        return 0
    ids = store.insert_messages(session, [values for values, _ in new])
    posts = [(store.Imported(id=pk, **{f: values[f] for f in _IMPORTED_FIELDS}), read.parsed)
             for pk, (values, read) in zip(ids, new, strict=True)]
    store.archive_all(session, mlist, posts, [read.text for _, read in new])
    return len(posts)


@dataclass(frozen=True)
class Read:
    """A mail with what archiving it needs read out of its bytes: the fields, and the
    text for the search index."""

    mail: mbox.Mail
    parsed: Parsed
    text: str


def _read(raw: bytes) -> tuple[Parsed, str]:
    return parse(raw), view.plain_text(raw)


def _read_all(raws: list[bytes]) -> list[tuple[Parsed, str]]:
    return [_read(raw) for raw in raws]


# Mails handed to a parsing process at a time, and chunks read ahead per process: enough
# to keep the processes busy while the database is written, little enough to stay a
# few megabytes.
PARSE_CHUNK = 200
READ_AHEAD = 2
# Fewer mails than this are parsed here: starting a process (and flanker in it) takes
# longer than parsing them.
IN_PROCESS = 1000


def parsed_mails(mails: Iterable[mbox.Mail], workers: int = 0) -> Iterator[Read]:
    """Each mail with what reading it found, in order. Reading is half of an import's
    time and needs nothing from the database, so with `workers` other processes parse
    the next mails while this one stores the last ones (spawned, not forked: the
    database connection must not be shared with a child)."""
    mails = iter(mails)
    head = list(itertools.islice(mails, IN_PROCESS))
    if workers < 1 or len(head) < IN_PROCESS:
        yield from (Read(mail, *_read(mail.raw)) for mail in itertools.chain(head, mails))
        return
    mails = itertools.chain(head, mails)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[list[mbox.Mail], Future[list[tuple[Parsed, str]]]]] = deque()

        def submit() -> None:
            if chunk := list(itertools.islice(mails, PARSE_CHUNK)):
                pending.append((chunk, pool.submit(_read_all, [m.raw for m in chunk])))

        for _ in range(workers * READ_AHEAD):
            submit()
        while pending:
            chunk, done = pending.popleft()
            submit()
            yield from (Read(mail, *read) for mail, read in zip(chunk, done.result(),
                                                                strict=True))


def import_message(session: Session, mlist: MailingList, raw: bytes) -> bool:
    """Archive one old message; False when its Message-ID is already archived."""
    return import_mail(session, mlist, parsed_mails([mbox.Mail(raw)])) == 1
