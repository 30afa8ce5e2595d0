"""Full-text search of the archive: written when a message is archived, in the same
transaction, and read by the archive's search page.

The one place besides db.py where SQLite and PostgreSQL differ, because their full-text
engines do: SQLite keeps an FTS5 table (`message_fts`, rowid = message id), PostgreSQL a
table with a generated, GIN-indexed tsvector (`message_search`). Both are made by the
migrations, not by SQLModel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape
from sqlalchemy import Integer, String, column, table, text
from sqlmodel import Session

from listserv import bulk, db
from listserv.models import Message

# Snippet highlight markers: control characters no mail text keeps (see _clean), so the
# snippet can be escaped as a whole and only then given its <mark> tags.
_START, _STOP = "\x02", "\x03"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TEXT = 65536  # characters of body text indexed per message


@dataclass(frozen=True)
class Hit:
    message_pk: int
    message_id: str
    subject: str
    from_name: str
    date: datetime | None
    snippet: Markup  # escaped text with <mark> around the matched words


def _sqlite(session: Session) -> bool:
    return db.is_sqlite(session.get_bind())


def _clean(value: str, limit: int = MAX_TEXT) -> str:
    """PostgreSQL text cannot hold NUL, and the markers must not occur in the text; bytes
    the declared charset could not decode arrive as lone surrogates, which neither
    database can store, and become U+FFFD."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value[:limit]))


def index(session: Session, entries: Iterable[tuple[Message, str]]) -> None:
    """Make archived messages findable by subject, sender name and address, and body
    (the text given with each); one statement for all of them."""
    rows = [{"pk": message.id, "list_id": message.list_id, "subject": _clean(message.subject),
             "sender": _clean(f"{message.from_name} {message.from_address}"),
             "body": _clean(body), "newest": newest_key(message)} for message, body in entries]
    if not rows:
        return
    if _sqlite(session):
        session.execute(text("INSERT INTO message_fts (rowid, subject, sender, body, list_id, "
                             "message_pk) VALUES (:newest, :subject, :sender, :body, "
                             ":list_id, :pk)"), rows)
    else:
        bulk.insert_new(session, _SEARCH_TABLE, [
            {"message_pk": r["pk"], "list_id": r["list_id"], "subject": r["subject"],
             "sender": r["sender"], "body": r["body"], "newest": r["newest"]} for r in rows])


# PostgreSQL's index table as written (its tsvector column is generated from these).
_SEARCH_TABLE = table("message_search", *(column(name) for name in (
    "message_pk", "list_id", "subject", "sender", "body", "newest")))


def newest_key(message: Message) -> int:
    """A message's place in "newest first": its date in seconds, then its id (low 24
    bits) to keep keys unique. An FTS5 table walks its rowids in this order and stops at
    a page's worth of hits, so a common word costs what a rare one does; PostgreSQL gets
    the same from a b-tree on (list_id, newest)."""
    when = message.date or message.received_at
    return (int(when.timestamp()) << 24) | (message.id & 0xFFFFFF)


def forget_list(session: Session, list_id: int) -> None:
    """Drop a deleted list's index rows (an FTS5 table has no foreign keys to cascade)."""
    if _sqlite(session):
        session.execute(text("DELETE FROM message_fts WHERE list_id = :list_id"),
                        {"list_id": list_id})


def forget(session: Session, messages: Iterable[Message]) -> None:
    """Take messages out of the index (an erased one), each by its own key."""
    rows = [{"pk": m.id, "newest": newest_key(m)} for m in messages]
    if not rows:
        return
    if _sqlite(session):
        session.execute(text("DELETE FROM message_fts WHERE rowid = :newest"), rows)
    else:
        session.execute(text("DELETE FROM message_search WHERE message_pk = :pk"), rows)


def fts5_query(query: str) -> str:
    """The words of what a reader typed, each quoted: FTS5 syntax errors cannot happen
    and every word must match."""
    return " ".join(f'"{word}"' for word in _WORD.findall(query))


def _highlight(snippet: str) -> Markup:
    return Markup(str(escape(snippet)).replace(_START, "<mark>").replace(_STOP, "</mark>"))


# Typed result columns, so dates come back as aware datetimes on both databases.
_COLUMNS = (column("id", Integer), column("message_id", String), column("subject", String),
            column("from_name", String), column("date", Message.__table__.c.date.type),
            column("snippet", String))

_SQLITE_SEARCH = text(f"""
    SELECT m.id, m.message_id, m.subject, m.from_name, m.date,
           snippet(message_fts, -1, '{_START}', '{_STOP}', '…', 24)
    FROM message_fts JOIN message m ON m.id = message_fts.message_pk
    WHERE message_fts MATCH :query AND message_fts.list_id = :list_id
    ORDER BY message_fts.rowid DESC LIMIT :limit OFFSET :offset""")
_SQLITE_SEARCH = _SQLITE_SEARCH.columns(*_COLUMNS)

# PostgreSQL plans "matches, newest first, a page of them" as a walk down the (list_id,
# newest) index that stops after a page of matches: right for a common word, but for a
# rare one (its frequency unknown to the statistics) the walk read the whole list, and
# checking a row's tsvector is the costly part. So the walk is first bounded to the
# newest WINDOW messages per page asked for; when that does not fill the page, the
# matches are taken from the GIN index (few, for such a word) and sorted.
WINDOW = 1000
_POSTGRESQL_MATCHES = """
    SELECT s.message_pk, s.newest FROM message_search s
    WHERE s.list_id = :list_id AND s.document @@ websearch_to_tsquery('english', :query)"""
_POSTGRESQL_RECENT = f"""{_POSTGRESQL_MATCHES} AND s.newest >= coalesce((
        SELECT newest FROM message_search WHERE list_id = :list_id
        ORDER BY newest DESC LIMIT 1 OFFSET :window), 0)
    ORDER BY s.newest DESC LIMIT :limit OFFSET :offset"""
# Both ways in one statement (a round trip fewer for a rare word): the second runs only
# when the first did not fill the page (a one-time filter: PostgreSQL skips it else).
_POSTGRESQL_PAGE = f"""
    WITH recent AS MATERIALIZED ({_POSTGRESQL_RECENT}),
         enough AS MATERIALIZED (SELECT count(*) >= :limit AS filled FROM recent),
         m AS MATERIALIZED ({_POSTGRESQL_MATCHES})
    SELECT * FROM recent WHERE (SELECT filled FROM enough)
    UNION ALL
    (SELECT * FROM m WHERE NOT (SELECT filled FROM enough)
     ORDER BY newest DESC LIMIT :limit OFFSET :offset)"""
# ts_headline parses and stems the whole text it is given, as to_tsvector does: 0.1-0.5
# ms a hit for a message of a few kilobytes, tens for a long one, most of a search
# page's time. So it is given an excerpt: the text from a little before the first place
# one of the query's stems occurs (as a prefix), or from the start where none occurs as
# such ("happi" of "happy"). An excerpt may hold one word of several, which satisfies no
# query of all of them: ts_headline then shows the excerpt's first dozen words, perhaps
# without the word. So it is asked to mark any of the query's words (its operators made
# `|`, and `!` dropped: a lexeme never holds a space, so the text form is safe to edit).
EXCERPT, BEFORE = 400, 100  # characters
_POSTGRESQL_SEARCH = text(f"""
    SELECT m.id, m.message_id, m.subject, m.from_name, m.date,
           ts_headline('english', CASE WHEN at.pos <= {BEFORE} THEN left(s.body, {EXCERPT})
                       ELSE regexp_replace(substr(s.body, at.pos - {BEFORE}, {EXCERPT}),
                                           '^\\S*\\s+', '') END,
                       q.any, 'StartSel={_START}, StopSel={_STOP}, MaxWords=30, MinWords=12')
    FROM ({_POSTGRESQL_PAGE}) hit
    JOIN message m ON m.id = hit.message_pk
    JOIN message_search s ON s.message_pk = hit.message_pk
    CROSS JOIN (SELECT replace(regexp_replace(websearch_to_tsquery('english', :query)::text,
                                              ' (&|<->|<[0-9]+>) ', ' | ', 'g'), '!', '')::tsquery
                       AS any,
                       array(SELECT lexeme FROM unnest(to_tsvector('english', :query)))
                       AS words) q
    CROSS JOIN LATERAL (SELECT coalesce(min(nullif(strpos(low.body, w), 0)), 0) AS pos
                        FROM (SELECT lower(s.body) AS body) low, unnest(q.words) w) at
    ORDER BY hit.newest DESC""").columns(*_COLUMNS)


def query(session: Session, list_id: int, words: str, limit: int = 20,
          offset: int = 0) -> list[Hit]:
    """Messages of one list matching every word, newest first, with snippets."""
    if _sqlite(session):
        words = fts5_query(words)
    if not words.strip():
        return []
    params = {"query": words, "list_id": list_id, "limit": limit, "offset": offset,
              "window": WINDOW * (1 + offset // max(limit, 1))}
    if _sqlite(session):
        rows = list(session.execute(_SQLITE_SEARCH, params))
    else:
        rows = list(session.execute(_POSTGRESQL_SEARCH, params))
    return [Hit(pk, mid, subject, name, date, _highlight(snippet or ""))
            for pk, mid, subject, name, date, snippet in rows]
