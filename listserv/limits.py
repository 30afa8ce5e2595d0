"""Posting rate limits: how many messages one envelope sender may have stored in an
hour, how many SMTP connections may be open at once, in all and from one IP address;
and how many requests (to -join, -leave, -request) a list answers, and a client IP may
send, an hour.

The sender count is read from the `message` table (an index on sender_key, the
envelope sender in lower case, and received_at: `Alice@` and `alice@` share one
allowance), so every `listserv serve` process sharing a database sees the same count
and a restart forgets nothing. Connections are counted in memory, per process.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select
from sqlmodel import Session

from listserv.address import Purpose
from listserv.enums import MessageKind
from listserv.models import Message, utcnow
from listserv.recent import Recent

HOUR = timedelta(hours=1)


def sent_recently(session: Session, mail_from: str, limit: int) -> int:
    """How many messages from this sender, in any letter case, were stored in the last
    hour, counted up to `limit` (an index scan of at most that many rows)."""
    recent = select(Message.id).where(Message.sender_key == mail_from.lower(),
                                      Message.received_at >= utcnow() - HOUR).limit(limit)
    return session.scalar(select(func.count()).select_from(recent.subquery())) or 0


def refusal(mail_from: str, limit: int) -> str:
    """The 451 that puts off a sender who reached the hourly limit.

    A 4xx, not a 5xx: the sender's MTA keeps the message and tries again later, so a
    burst is slowed down, never lost. The null sender (bounces) is never limited.
    """
    return (f"451 4.7.1 <{mail_from}>: rate limit of {limit} messages an hour reached; "
            "try again later")


# How long a count of a sender's messages is trusted (see Headroom).
HEADROOM_SECONDS = 1.0


class Headroom:
    """What is left of each sender's hourly allowance, from a count read from the store
    less than HEADROOM_SECONDS ago minus the MAIL commands this process admitted since,
    so a busy sender is counted about once a second rather than at every MAIL (the count
    is an index scan of up to `limit` rows, run in a worker thread).

    Only admissions are answered from it: a sender without headroom left is counted
    again before being refused, so nobody is put off on a stale count. Admitted MAILs
    whose message never got stored count against the sender until the next count
    (stricter, never looser). What the count cannot see is mail another process on the
    same database stored in the last second; that bounds the overshoot."""

    def __init__(self, limit: int, seconds: float = HEADROOM_SECONDS) -> None:
        self.limit = limit
        self._left: Recent[str, int] = Recent(seconds)

    def take(self, mail_from: str) -> bool:
        """True (and one message less left) when a recent count leaves room for one more."""
        entry = self._left.get(mail_from)
        if entry is None or entry[1] <= 0:
            return False
        self._left.put(mail_from, entry[0], entry[1] - 1)
        return True

    def counted(self, mail_from: str, read_at: float, count: int) -> None:
        """A count read at `read_at` (time.monotonic()), for a MAIL now admitted."""
        self._left.put(mail_from, read_at, self.limit - count - 1)


class Connections:
    """The SMTP connections open in this process, in all and from each IP address."""

    def __init__(self, limit: int, total_limit: int = 0) -> None:
        self.limit = limit  # per address; 0: no limit
        self.total_limit = total_limit  # in all; 0: no limit
        self.open: Counter[str] = Counter()
        self.total = 0

    def admit(self, ip: str) -> str:
        """Count a new connection; the 421 that turns it away when it is one too many,
        else "" (it is counted all the same, and `release` is called when it closes)."""
        self.open[ip] += 1
        self.total += 1
        if self.total_limit and self.total > self.total_limit:
            return (f"421 4.3.2 too many connections ({self.total_limit} open); "
                    "try again later")
        if self.limit and self.open[ip] > self.limit:
            return "421 4.7.0 too many connections from your address; try again later"
        return ""

    def release(self, ip: str) -> None:
        self.total -= 1
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


class PerHour:
    """Events counted per key (a client IP) in the current clock hour, in memory: a
    fixed window, so memory holds at most the keys of one hour."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self._hour = 0
        self._counts: Counter[str] = Counter()

    def admit(self, key: str) -> bool:
        """Count one more for `key`; False when that is one too many this hour."""
        if not self.limit:
            return True
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self._counts = hour, Counter()
        self._counts[key] += 1
        return self._counts[key] <= self.limit


# Addresses whose mail makes the list write to the sender unasked (a forged From makes
# it write to a stranger): what `[lists] max_confirmations_per_hour` counts.
REQUEST_PURPOSES = frozenset({Purpose.JOIN, Purpose.LEAVE, Purpose.REQUEST})


def request_refusal(ip: str, limit: int) -> str:
    """The 450 for a client IP that sent its hourly share of requests (a 4xx: a real
    sender's MTA tries again later)."""
    return (f"450 4.7.1 {limit} requests to list command addresses an hour from {ip} "
            "reached; try again later")


def requests_this_hour(session: Session, list_id: int, limit: int) -> int:
    """The list's mails to its command addresses stored in the last hour, counted up to
    `limit` + 1 (over the index on received_at: an hour of mail, not the whole list)."""
    recent = select(Message.id).where(
        Message.received_at >= utcnow() - HOUR, Message.list_id == list_id,
        Message.kind == MessageKind.REQUEST).limit(limit + 1)
    return session.scalar(select(func.count()).select_from(recent.subquery())) or 0
