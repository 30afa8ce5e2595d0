"""What a list does about its bounces: blame the right party, score, disable, warn, remove.

`dsn` reads a report and knows nothing of lists; this module acts on what it read,
inside the receiver's transaction that stores the bounce, or the delivery worker's that
records a smarthost's refusal. Only a dead mailbox (and an unexplained failure that
keeps coming back) counts against a member: a refusal for policy (DMARC, spam filters)
is put down to the post's author's domain, and a temporary failure to nobody. A member
whose score reaches `[bounces] score_threshold` stops getting posts, is warned
`warnings` times with a link that turns delivery back on, and is then removed, and the
owners are told. The decisions about numbers and dates are pure functions of `now`, so
the schedule is tested without waiting for days.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from listserv import dsn, metrics, notices, notify_owners, roster, tokens
from listserv.address import split, verp_recipient
from listserv.config import BouncesConfig, Config
from listserv.dsn import BounceReport
from listserv.enums import DisabledBy, MessageKind, Role
from listserv.failure import BounceClass, Failure, refusal
from listserv.models import BounceEvent, MailingList, Member, Message, utcnow
from listserv.queue_tables import Outgoing
from listserv.replies import Reply, refuses_recipient

# The logger keeps the name operators filter on from before the module was renamed.
log = logging.getLogger("listserv.bouncing")

COMPLAINT = "complaint"  # BounceEvent.bounce_class of a spam complaint
# How far back `bounce ls` and the owners' notice look by default.
HISTORY_DAYS = 30


# --- pure decisions -------------------------------------------------------------------

def blamed(report: BounceReport, verp: str | None, members: set[str]) -> list[Failure]:
    """The failures a bounce puts on this list's recipients.

    With VERP the envelope recipient names whose copy failed, and is trusted over the
    addresses in the report (a forward or alias may have changed them); the report then
    only says how it failed. Without VERP, the failed addresses that are members.
    A report with no failure in it (an out-of-office reply to the envelope sender) is
    no bounce, whatever address it came to.
    """
    if verp:
        if not report.failures:
            return []
        own = next((f for f in report.failures if f.address.lower() == verp),
                   report.failures[0])
        return [Failure(verp, own.status, own.diagnostic, own.bounce_class)]
    seen: dict[str, Failure] = {}
    for failure in report.failures:
        address = failure.address.lower()
        if address in members:
            seen.setdefault(address, Failure(address, failure.status, failure.diagnostic,
                                             failure.bounce_class))
    return list(seen.values())


def weight(bounce_class: BounceClass, repeated: bool, config: BouncesConfig) -> float:
    """What one bounce of this class adds to the member's score. An `unknown` failure
    counts only when it repeats (one could be anything, a second points at the address);
    `policy` and `transient` blame the post or the moment, never the member."""
    if bounce_class is BounceClass.MAILBOX:
        return config.hard_bounce_score
    if bounce_class is BounceClass.UNKNOWN and repeated:
        return config.soft_bounce_score
    return 0.0


def score_now(score: float, last_bounce_at: datetime | None, now: datetime,
              config: BouncesConfig) -> float:
    """The score as it stands at `now`: it starts again after `stale_after_days` with no
    bounce that counted, so bounces weeks apart never add up to a removal."""
    if last_bounce_at is None or now - last_bounce_at >= timedelta(days=config.stale_after_days):
        return 0.0
    return score


def scored(score: float, last_bounce_at: datetime | None, worth: float, now: datetime,
           config: BouncesConfig) -> float | None:
    """The score after a bounce worth `worth` at `now`, or None when it does not count:
    worth nothing, or a bounce already counted on this (UTC) day, since one dead mailbox
    bounces every post of a busy day and that is still one piece of evidence."""
    if worth <= 0 or (last_bounce_at is not None and last_bounce_at.date() == now.date()):
        return None
    return score_now(score, last_bounce_at, now, config) + worth


class Step(enum.StrEnum):
    """What the warning schedule asks for a member disabled for bounces."""

    WAIT = "wait"
    WARN = "warn"  # send the next warning now
    REMOVE = "remove"  # every warning went out and the last one's interval passed


def next_step(warnings_sent: int, last_warning_at: datetime | None, now: datetime,
              config: BouncesConfig) -> Step:
    """Where a member disabled for bounces stands in the warning schedule at `now`: the
    first warning at once, each next one `warning_interval_days` later, and removal one
    interval after the last (Mailman's bounce_you_are_disabled_warnings and _interval)."""
    due = (last_warning_at is None
           or now - last_warning_at >= timedelta(days=config.warning_interval_days))
    if not due:
        return Step.WAIT
    return Step.WARN if warnings_sent < config.warnings else Step.REMOVE


# --- on arrival -----------------------------------------------------------------------

def process(session: Session, config: Config, mlist: MailingList, message: Message,
            rcpt: str, now: datetime | None = None) -> int:
    """Act on a bounce just stored; the number of notices queued (warnings)."""
    now = now or utcnow()
    report = dsn.parse_bounce(message.raw)
    verp = (verp_recipient(rcpt) or "").lower() or None
    if report.complaint is not None:
        return _complaint(session, config, mlist, message, report.complaint, verp, now)
    source = _Source(message.id, lambda: _sender_domain(session, mlist, message.raw))
    return _act(session, config, mlist, report, verp, source, now)


def refused(session: Session, config: Config, outgoing_id: int, refusals: dict[str, Reply],
            now: datetime | None = None) -> int:
    """The smarthost refused these recipients of a copy for good: one at RCPT or DATA
    (not of our MAIL FROM) is the same evidence as a DSN with that status and text, so
    it is counted the same way. Postfix refuses a local user that does not exist there,
    and no report ever comes back for it. The notices queued.

    It runs in a savepoint in the delivery worker's transaction: a fault here is logged
    and undone alone, since a delivery outcome left unwritten sends the job again."""
    failures = [refusal(address, reply.code, reply.text)
                for address, reply in refusals.items() if refuses_recipient(reply)]
    if not failures:
        return 0
    now = now or utcnow()
    try:
        with session.begin_nested():
            copy = session.execute(select(Outgoing.list_id, Outgoing.message_pk)
                                   .where(Outgoing.id == outgoing_id)).first()
            mlist = session.get(MailingList, copy.list_id) if copy and copy.list_id else None
            if mlist is None:
                return 0  # not a list's copy: no member to score
            source = _Source(None, lambda: _author_domain(session, copy.message_pk))
            return _act(session, config, mlist, BounceReport(failures), None, source, now)
    except OperationalError:
        raise  # the database itself: the whole outcome is retried
    except Exception:
        log.exception("smarthost refusals of outgoing=%d not counted as bounces", outgoing_id)
        return 0


@dataclass(frozen=True)
class _Source:
    """Where a failure was learnt: the bounce stored (None for a smarthost's refusal),
    and how to find the domain of the post's author, asked for policy refusals only."""

    bounce_pk: int | None
    sender_domain: Callable[[], str]


def _act(session: Session, config: Config, mlist: MailingList, report: BounceReport,
         verp: str | None, source: _Source, now: datetime) -> int:
    named = {f.address.lower() for f in report.failures}
    members = _members(session, mlist.id, named | ({verp} if verp else set()))
    queued = 0
    for failure in blamed(report, verp, set(members)):
        queued += _record(session, config, mlist, source, failure, members.get(failure.address),
                          now)
    return queued


def _members(session: Session, list_id: int, addresses: set[str]) -> dict[str, Member]:
    return {m.address: m for m in roster.roles_of(session, list_id, sorted(addresses))
            if m.role is Role.MEMBER}


def _record(session: Session, config: Config, mlist: MailingList, source: _Source,
            failure: Failure, member: Member | None, now: datetime) -> int:
    cfg = config.bounces
    event = BounceEvent(list_id=mlist.id, address=failure.address, status=failure.status,
                        bounce_class=failure.bounce_class.value,
                        diagnostic=failure.diagnostic, message_pk=source.bounce_pk,
                        created_at=now)
    if failure.bounce_class is BounceClass.POLICY:
        event.sender_domain = source.sender_domain()
    queued = 0
    if member is not None:
        repeated = (failure.bounce_class is BounceClass.UNKNOWN
                    and _unknown_before(session, mlist.id, member.address, now, cfg))
        score = scored(member.bounce_score, member.last_bounce_at,
                       weight(failure.bounce_class, repeated, cfg), now, cfg)
        if score is not None:
            event.counted = True
            member.bounce_score, member.last_bounce_at = score, now
            session.add(member)
            if score >= cfg.score_threshold and member.disabled_by is None:
                queued = _disable(session, config, mlist, member, now)
    session.add(event)
    metrics.BOUNCES.labels(event.bounce_class).inc()
    log.info("bounce list=%s rcpt=%s class=%s status=%s counted=%s", mlist.address,
             failure.address, failure.bounce_class.value, failure.status or "-", event.counted)
    return queued


def _unknown_before(session: Session, list_id: int, address: str, now: datetime,
                    config: BouncesConfig) -> bool:
    since = now - timedelta(days=config.stale_after_days)
    return session.scalars(select(BounceEvent.id).where(
        BounceEvent.list_id == list_id, BounceEvent.address == address,
        BounceEvent.bounce_class == BounceClass.UNKNOWN.value,
        BounceEvent.created_at >= since, BounceEvent.created_at < now)).first() is not None


def _sender_domain(session: Session, mlist: MailingList, raw: bytes) -> str:
    """The domain of the author of the post whose copy was refused: from our own copy of
    the post when the bounce shows its Message-ID, else from the returned From (unless
    that is the list itself)."""
    copy = dsn.returned_copy(raw)
    author = ""
    if copy.message_id:
        author = session.scalars(select(Message.from_address).where(
            Message.list_id == mlist.id, Message.kind == MessageKind.POST,
            Message.message_id == copy.message_id)).first() or ""
    if not author and split(copy.from_address)[1] != mlist.domain:
        author = copy.from_address
    return split(author)[1]


def _author_domain(session: Session, post_pk: int | None) -> str:
    """The domain of the author of our post (none for a digest or a notice)."""
    author = session.scalar(select(Message.from_address).where(Message.id == post_pk))
    return split(author or "")[1]


def _complaint(session: Session, config: Config, mlist: MailingList, message: Message,
               complaint: dsn.Complaint, verp: str | None, now: datetime) -> int:
    """A recipient marked a copy as spam: they never want it again, so they leave now,
    without the confirmation an unsubscribe needs. No goodbye is sent: mail to someone
    who reports our mail as spam is more spam to their provider, and it counts against
    the list's domain."""
    address = verp or complaint.address.lower()
    member = _members(session, mlist.id, {address}).get(address)
    if member is None and verp is None:
        log.info("spam complaint list=%s about %s: not a member", mlist.address, address)
        return 0
    session.add(BounceEvent(list_id=mlist.id, address=address, bounce_class=COMPLAINT,
                            diagnostic=complaint.feedback_type or "abuse",
                            message_pk=message.id, created_at=now))
    if member is not None:
        session.delete(member)
    metrics.BOUNCES.labels(COMPLAINT).inc()
    log.info("spam complaint list=%s from=%s (%s): %s", mlist.address, address,
             complaint.feedback_type or "unspecified",
             "unsubscribed" if member else "not a member")
    return notify_owners.tell(session, config, mlist, notify_owners.Change.REMOVED,
                              [address] if member else [], "they marked a post as spam")


# --- disabled, warned, removed --------------------------------------------------------

def _disable(session: Session, config: Config, mlist: MailingList, member: Member,
             now: datetime) -> int:
    member.disabled_by = DisabledBy.BOUNCES
    member.warnings_sent, member.last_warning_at = 0, None
    session.add(member)
    log.info("delivery disabled list=%s member=%s score=%.1f", mlist.address, member.address,
             member.bounce_score)
    told = notify_owners.tell(session, config, mlist, notify_owners.Change.DISABLED,
                              [member.address])
    return told + _advance(session, config, mlist, member, now)


def _advance(session: Session, config: Config, mlist: MailingList, member: Member,
             now: datetime) -> int:
    """Take a disabled member one step along the schedule; the notices queued."""
    step = next_step(member.warnings_sent, member.last_warning_at, now, config.bounces)
    if step is Step.WARN:
        member.warnings_sent += 1
        member.last_warning_at = now
        session.add(member)
        notices.send(session, config, mlist, member.address, "bounce_warning", limit=False,
                     auto="auto-generated", address=member.address,
                     warning=member.warnings_sent, warnings=config.bounces.warnings,
                     reenable_url=reenable_url(session, config, mlist, member.address),
                     days=config.bounces.warning_interval_days)
        return 1
    if step is Step.REMOVE:
        return _remove(session, config, mlist, member, now)
    return 0


def _remove(session: Session, config: Config, mlist: MailingList, member: Member,
            now: datetime) -> int:
    """Remove the member's subscription (an owner or moderator keeps that role) and tell
    the owners, with the member's bounces and the refusals that were not their fault."""
    since = now - timedelta(days=HISTORY_DAYS)
    events = list(session.scalars(select(BounceEvent).where(
        BounceEvent.list_id == mlist.id, BounceEvent.address == member.address,
        BounceEvent.created_at >= since).order_by(BounceEvent.created_at.desc())))
    session.execute(delete(Member).where(Member.id == member.id))
    log.info("removed for bounces list=%s member=%s", mlist.address, member.address)
    owners = roster.role_addresses(session, mlist.id, [Role.OWNER])
    for owner in owners:
        notices.send(session, config, mlist, owner, "bounce_removed", limit=False,
                     auto="auto-generated", address=member.address, events=events,
                     warnings=member.warnings_sent, history_days=HISTORY_DAYS,
                     policy=policy_by_domain(session, mlist.id, since))
    return len(owners)


def housekeep(session: Session, config: Config, now: datetime | None = None) -> int:
    """Send the warnings that are due and remove the members whose last one expired, on
    every list; the notices queued."""
    now = now or utcnow()
    rows = session.execute(select(Member, MailingList)
                           .join(MailingList, MailingList.id == Member.list_id)
                           .where(Member.disabled_by == DisabledBy.BOUNCES,
                                  Member.role == Role.MEMBER)).all()
    return sum(_advance(session, config, mlist, member, now) for member, mlist in rows)


def reenable_url(session: Session, config: Config, mlist: MailingList, address: str) -> str:
    secret = tokens.server_secret(session, config)
    return (f"{config.web.base_url.rstrip('/')}/reenable/"
            f"{tokens.reenable_link(secret, mlist.id, address)}")


def reenable(session: Session, list_id: int, address: str) -> bool:
    """The member clicked their link: posts again, and a clean slate. False when they
    are no longer a member (removed already, or left)."""
    member = _members(session, list_id, {address}).get(address)
    if member is None:
        return False
    if member.disabled_by is DisabledBy.BOUNCES:
        member.disabled_by = None
    member.bounce_score, member.last_bounce_at = 0.0, None
    member.warnings_sent, member.last_warning_at = 0, None
    session.add(member)
    log.info("delivery re-enabled list_id=%d member=%s", list_id, address)
    return True


# --- what owners see ------------------------------------------------------------------

def policy_by_domain(session: Session, list_id: int, since: datetime) -> list[tuple[str, int]]:
    """Policy refusals since `since` by the domain of the refused post's author, most
    first: a DMARC or reputation problem of one sender's domain, not of the members."""
    domains = session.scalars(select(BounceEvent.sender_domain).where(
        BounceEvent.list_id == list_id, BounceEvent.bounce_class == BounceClass.POLICY.value,
        BounceEvent.created_at >= since))
    return Counter(d or "(unknown)" for d in domains).most_common()


@dataclass(frozen=True)
class Row:
    """One line of `listserv bounce ls`."""

    time: datetime
    member: str
    bounce_class: str
    status: str
    diagnostic: str
    sender_domain: str
    counted: bool
    score: float | None  # the member's score now; None when no longer a member
    state: str  # roster.delivery_status, or "removed"


def recent(session: Session, config: Config, mlist: MailingList, now: datetime | None = None,
           days: int = HISTORY_DAYS) -> list[Row]:
    """The list's bounces of the last `days`, newest first, with each member's state."""
    now = now or utcnow()
    events = list(session.scalars(select(BounceEvent).where(
        BounceEvent.list_id == mlist.id, BounceEvent.created_at >= now - timedelta(days=days))
        .order_by(BounceEvent.created_at.desc(), BounceEvent.id.desc())))
    members = _members(session, mlist.id, {e.address for e in events})
    rows = []
    for e in events:
        member = members.get(e.address)
        rows.append(Row(
            e.created_at, e.address, e.bounce_class, e.status, e.diagnostic, e.sender_domain,
            e.counted,
            None if member is None else score_now(member.bounce_score, member.last_bounce_at,
                                                  now, config.bounces),
            "removed" if member is None else roster.delivery_status(member)))
    return rows
