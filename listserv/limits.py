"""Posting rate limits: how many messages one envelope sender may have stored in an
hour, and how many SMTP connections one IP address may hold open at once.

The sender count is read from the `message` table (an index on mail_from and
received_at), so every `listserv serve` process sharing a database sees the same
count and a restart forgets nothing. Connections are counted in memory, per process.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select
from sqlmodel import Session

from listserv.models import Message, utcnow

HOUR = timedelta(hours=1)


def sender_refusal(session: Session, mail_from: str, limit: int) -> str | None:
    """The 451 that puts off a sender who reached the hourly limit, or None.

    A 4xx, not a 5xx: the sender's MTA keeps the message and tries again later, so a
    burst is slowed down, never lost. The null sender (bounces) is not limited.
    """
    if not limit or mail_from in ("", "<>"):
        return None
    recent = select(Message.id).where(Message.mail_from == mail_from,
                                      Message.received_at >= utcnow() - HOUR).limit(limit)
    if session.scalar(select(func.count()).select_from(recent.subquery())) < limit:
        return None
    return (f"451 4.7.1 <{mail_from}>: rate limit of {limit} messages an hour reached; "
            "try again later")


class Connections:
    """The SMTP connections open from each IP address in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.open: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        """Count a new connection; False when it is one too many (it is counted all the
        same, and `release` is called for it when it closes)."""
        self.open[ip] += 1
        return not self.limit or self.open[ip] <= self.limit

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]
