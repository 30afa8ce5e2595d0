"""The moderation summary: once a day, at `[lists] held_summary_hour` (UTC), each owner
and moderator of a list with held posts gets one mail listing them, each with its own
signed link to a page that approves, rejects or discards it. Run by housekeeping; the
day it last went out is kept in the database, so a restart sends it no second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlmodel import Session

from listserv import moderation, notices, roster, tokens
from listserv.config import Config
from listserv.enums import MessageState, Role
from listserv.models import MailingList, Message, Setting, utcnow

log = logging.getLogger("listserv.held_summary")

SENT_KEY = "held_summary_sent"  # Setting: the UTC date of the last summary, YYYY-MM-DD


@dataclass(frozen=True)
class Entry:
    """One held post as a summary lists it."""

    message: Message
    reasons: list[str]
    hours: int  # how long it has waited
    url: str  # its decision page, signed for the summary's recipient


def _claim(session: Session, today: str) -> bool:
    """Mark today's summary as sent; False when it already was (by this process before
    a restart, or by another serving the same database)."""
    if session.get(Setting, SENT_KEY) is None:
        session.add(Setting(key=SENT_KEY, value=today))
        session.flush()
        return True
    claimed = session.execute(update(Setting).where(
        Setting.key == SENT_KEY, Setting.value != today).values(value=today))
    return claimed.rowcount == 1


# A post held this recently was announced by its own notice minutes ago: the summary is
# the reminder of those still waiting, not a second mail about the same post (a server
# first started past the hour would otherwise send one at once).
FRESH = timedelta(hours=1)


def _waiting(now: datetime) -> ColumnElement[bool]:
    return (Message.state == MessageState.HELD) & (Message.received_at <= now - FRESH)


def _lists_with_held(session: Session, now: datetime) -> list[MailingList]:
    ids = select(Message.list_id).where(_waiting(now)).distinct()
    return list(session.scalars(select(MailingList).where(MailingList.id.in_(ids))
                                .order_by(MailingList.address)))


def _entries(session: Session, config: Config, mlist: MailingList, to: str,
             now: datetime) -> list[Entry]:
    secret, base = tokens.server_secret(session, config), config.web.base_url.rstrip("/")
    days = config.lists.hold_expiry_days
    return [Entry(m, m.reasons.splitlines(), int((now - m.received_at).total_seconds() // 3600),
                  f"{base}/{mlist.address}/held/"
                  f"{tokens.held_link(secret, mlist.id, to, m.id, days)}")
            for m in moderation.held(session, mlist) if m.received_at <= now - FRESH]


def send(session: Session, config: Config, now: datetime | None = None) -> int:
    """Today's summaries, when the hour has come and they have not gone out today; the
    number of mails queued."""
    hour = config.lists.held_summary_hour
    now = now or utcnow()
    if hour is None or now.hour < hour or not _claim(session, now.date().isoformat()):
        return 0
    sent = 0
    for mlist in _lists_with_held(session, now):
        for to in roster.role_addresses(session, mlist.id, [Role.OWNER, Role.MODERATOR]):
            entries = _entries(session, config, mlist, to, now)
            sent += notices.send(session, config, mlist, to, "held_summary", limit=False,
                                 auto="auto-generated", entries=entries,
                                 days=config.lists.hold_expiry_days)
    if sent:
        log.info("moderation summary: %d mails", sent)
    return sent
