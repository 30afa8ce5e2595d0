"""Destinations that defer copies: a recipient domain whose servers answer 421 or a
4.7.x status (too many connections, rate limited, greylisted), as the smarthost passes
it on at RCPT, backs off its destination in the database (the `destination` table): its
MX hosts where known, with every domain known to share them (mx_groups.py), else the
domain alone. Every worker's claim leaves the jobs of those domains alone until then
while other domains' copies go on; the back-off doubles with each deferral in a row and
ends with the first copy the destination takes.

The smarthost (Postfix) is one hop away: a deferral it only learns after accepting a
copy stays in its own queue and is its to shape; what listserv sees is the refusal of a
recipient in its transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy import bindparam, delete, exists, select
from sqlmodel import Session, col

from listserv import bulk
from listserv.config import DeliveryConfig
from listserv.models import utcnow
from listserv.mx_groups import Group
from listserv.outcomes import Attempt, backoff
from listserv.queue_tables import Destination, DestinationDomain
from listserv.replies import Reply

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


def note(session: Session, config: DeliveryConfig, attempts: list[Attempt],
         groups: Mapping[str, Group]) -> tuple[dict[str, float], dict[str, int]]:
    """Back off the destinations that deferred a copy, and end the back-off of those
    that took one; the seconds each backed-off destination now waits, and the
    deferrals in a row of each whose back-off ended. `groups` gives
    the destination of each job's domain (the domain alone where it gives none), with,
    for a domain that deferred, every domain known to share it.
    Deferrals while a destination is backed off already (jobs that were in flight
    together) do not double it again. The caller commits."""
    deferred, took = _outcomes(attempts)
    late: dict[str, tuple[Reply, set[str]]] = {}
    for domain, reply in deferred.items():
        group = groups.get(domain) or Group(domain, (domain,))
        late.setdefault(group.name, (reply, set()))[1].update(group.domains)
    took = {d for d in took if _name(groups, d) not in late}
    ended = _end(session, took, {_name(groups, d) for d in took})
    return (_back_off(session, config, late) if late else {}), ended


def _name(groups: Mapping[str, Group], domain: str) -> str:
    return groups[domain].name if domain in groups else domain


# Run with nearly every batch of outcomes, so built once (core, on the session's
# connection): an ORM delete built and cache-keyed per batch cost more than running it.
_DESTINATION = Destination.metadata.tables["destination"]
_dest, _held = _DESTINATION.c, DestinationDomain.metadata.tables["destination_domain"].c
_END = delete(_DESTINATION).where(
    _dest.name.in_(bindparam("names", expanding=True))
    | _dest.name.in_(select(_held.destination).where(
        _held.domain.in_(bindparam("domains", expanding=True))))
).returning(_dest.name, _dest.deferrals)


def _end(session: Session, domains: set[str], names: set[str]) -> dict[str, int]:
    """The back-off of these destinations ends, and that of the destinations holding
    these domains; the deferrals in a row of those that were backed off."""
    if not (domains or names):
        return {}
    rows = session.connection().execute(_END, {"names": sorted(names),
                                               "domains": sorted(domains)})
    return {name: deferrals for name, deferrals in rows}


def _back_off(session: Session, config: DeliveryConfig,
              late: dict[str, tuple[Reply, set[str]]]) -> dict[str, float]:
    now = utcnow()
    names = sorted(late)
    bulk.insert_missing(session, Destination.metadata.tables["destination"], [
        {"name": n, "backoff_until": now, "deferrals": 0, "last_reply": "",
         "updated_at": now} for n in names])
    rows = session.scalars(select(Destination).where(col(Destination.name).in_(names))
                           .order_by(col(Destination.name)).with_for_update()).all()
    # Each domain goes to the destination it defers with now (a domain seen before its
    # MX was known leaves the destination it was alone in).
    domains = {d: n for n, (_, ds) in late.items() for d in ds}
    session.execute(delete(DestinationDomain).where(
        col(DestinationDomain.domain).in_(sorted(domains))))
    bulk.insert_missing(session, DestinationDomain.metadata.tables["destination_domain"], [
        {"domain": d, "destination": n} for d, n in sorted(domains.items())])
    session.execute(delete(Destination).where(~exists().where(
        col(DestinationDomain.destination) == col(Destination.name))))
    waits = {}
    for row in rows:
        if row.backoff_until <= now:
            row.deferrals += 1
            row.backoff_until = now + backoff(config, row.deferrals)
        row.last_reply, row.updated_at = str(late[row.name][0])[:500], now
        waits[row.name] = (row.backoff_until - now).total_seconds()
    session.flush()
    return waits
