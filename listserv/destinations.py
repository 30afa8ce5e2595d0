"""Destinations that defer copies: a recipient domain whose servers answer 421 or a
4.7.x status (too many connections, rate limited, greylisted), as the smarthost passes
it on at RCPT, is backed off in the database (the `destination` table), so that every
worker's claim leaves its jobs alone until then while other domains' copies go on; the
back-off doubles with each deferral in a row and ends with the first copy it takes.

The smarthost (Postfix) is one hop away: a deferral it only learns after accepting a
copy stays in its own queue and is its to shape; what listserv sees is the refusal of a
recipient in its transaction.
"""

from __future__ import annotations

import re

from sqlalchemy import delete, select
from sqlmodel import Session, col

from listserv import bulk
from listserv.claims import Attempt, backoff
from listserv.config import DeliveryConfig
from listserv.models import utcnow
from listserv.queue_tables import Destination
from listserv.relay import Reply

# RFC 3463 X.7.X is a security or policy status; a 4.7.x is the receiver asking the
# sender to slow down or come back later (Gmail's 4.7.28, Microsoft's 4.7.500, a
# greylist's 4.7.1).
_POLICY_DEFERRAL = re.compile(r"(?<![\d.])4\.7\.\d{1,3}(?![\d.])")


def defers(reply: Reply) -> bool:
    """Whether a refusal says the destination wants fewer or slower copies: 421
    (service not available, closing) or a 4.7.x status."""
    return reply.code == 421 or (reply.temporary and bool(_POLICY_DEFERRAL.search(reply.text)))


def _outcomes(attempts: list[Attempt]) -> tuple[dict[str, Reply], set[str]]:
    """The domains that deferred a copy in these attempts, each with a reply that said
    so, and the domains that took one."""
    deferred: dict[str, Reply] = {}
    took: set[str] = set()
    for job, refused, error in attempts:
        if not job.domain:
            continue
        deferral = next((reply for reply in refused.values() if defers(reply)), None)
        if deferral is not None:
            deferred[job.domain] = deferral
        elif error is None and len(refused) < len(job.recipients):
            took.add(job.domain)
    return deferred, took - set(deferred)


def note(session: Session, config: DeliveryConfig, attempts: list[Attempt]
         ) -> dict[str, float]:
    """Back off the domains that deferred a copy, and end the back-off of those that
    took one; the seconds each backed-off domain now waits. Deferrals while a domain is
    backed off already (jobs that were in flight together) do not double it again. The
    caller commits."""
    deferred, took = _outcomes(attempts)
    if took:
        session.execute(delete(Destination).where(col(Destination.domain).in_(sorted(took))))
    if not deferred:
        return {}
    now = utcnow()
    bulk.insert_missing(session, Destination.metadata.tables["destination"], [
        {"domain": d, "backoff_until": now, "deferrals": 0, "last_reply": "",
         "updated_at": now} for d in sorted(deferred)])
    rows = session.scalars(select(Destination).where(col(Destination.domain).in_(sorted(deferred)))
                           .order_by(col(Destination.domain)).with_for_update()).all()
    waits = {}
    for row in rows:
        if row.backoff_until <= now:
            row.deferrals += 1
            row.backoff_until = now + backoff(config, row.deferrals)
        row.last_reply, row.updated_at = str(deferred[row.domain])[:500], now
        waits[row.domain] = (row.backoff_until - now).total_seconds()
    session.flush()
    return waits

