"""The posting decisions of one group of SMTP transactions, in one database transaction:
each recipient routed to its list, a post decided on (policy) and stored, archived and
fanned out (store), mail to a list's other addresses kept and handed to commands,
bounces or the owners. The receiver (receive.GroupCommit) calls it in its writer thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

from listserv import (
    authenticity,
    bounces,
    commands,
    db,
    digest_reply,
    fanout,
    metrics,
    moderation,
    notices,
    outbox,
    policy,
    posting_rules,
    roster,
    store,
)
from listserv.address import Purpose, Route, candidates, split
from listserv.authenticity import Asked
from listserv.config import Config
from listserv.enums import MessageKind, MessageState, Role, SenderAction
from listserv.loops import thread_rate
from listserv.models import MailingList, Member, Message, SenderRule
from listserv.parse import Parsed, parse
from listserv.resolver import NotCached

log = logging.getLogger("listserv.ingest")

_KIND = {
    Purpose.POST: MessageKind.POST,
    Purpose.OWNER: MessageKind.OWNER,
    Purpose.BOUNCES: MessageKind.BOUNCE,
}
_COMMANDS = {Purpose.REQUEST, Purpose.JOIN, Purpose.LEAVE, Purpose.CONFIRM}


def _found(session: Session, rcpt: str) -> tuple[Route, MailingList] | None:
    for candidate in candidates(rcpt):
        mlist = roster.find_list(session, candidate.list_address)
        if mlist is not None:
            return candidate, mlist
    return None


def route(session: Session, rcpt: str) -> Route | str:
    """The list and purpose of a recipient, or the 550 reply that refuses it."""
    found = _found(session, rcpt)
    if found is not None:
        return found[0]
    _, domain = split(rcpt)
    if domain and roster.hosts_domain(session, domain):
        return f"550 5.1.1 <{rcpt}>: no such list or list address here"
    return f"550 5.7.1 <{rcpt}>: relay access denied; this server only takes mail for its lists"


@dataclass
class Outcome:
    """What one recipient of one SMTP transaction came to, for the log and the reply."""

    rcpt: str
    message_id: str
    state: str
    deliveries: int = 0
    reasons: list[str] = field(default_factory=list)
    # A post held from a non-member, by id: its author is told once the transaction is
    # committed, if its From domain vouches for it (receive, authenticity.vouched).
    held_from_non_member: int | None = None

    def log_line(self) -> str:
        extra = f" jobs={self.deliveries}" if self.deliveries else ""
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"to={self.rcpt} msgid=<{self.message_id}> {self.state}{extra}{why}"


class Rejected(Exception):
    """Policy refused the post: the SMTP client gets this 5xx reply."""


class NoRoute(LookupError):
    """The recipient is not ours (any more): the SMTP client gets this 5xx reply."""


# Whether an address may post to a list: (holds a role, is moderated, its sender rule).
Standing = tuple[bool, bool, SenderAction | None]


_member, _rule = Member.__table__.c, SenderRule.__table__.c
# Built once, one query: the roles of the senders (members, moderators and owners may all
# post; roster.roles_of) and the list's sender rule for the From address
# (posting_rules.senders; its @domain and ^regex$ entries are read by posting_rules.load).
_STANDING = select(
    select(func.count()).where(_member.list_id == bindparam("list_id"), _member.address.in_(
        bindparam("senders", expanding=True))).scalar_subquery(),
    select(func.count()).where(_member.list_id == bindparam("list_id"), _member.address.in_(
        bindparam("senders", expanding=True)), _member.moderated).scalar_subquery(),
    select(_rule.action).where(_rule.list_id == bindparam("list_id"),
                               _rule.address == bindparam("from_address")).scalar_subquery())


def _standing(session: Session, list_id: int, from_address: str, mail_from: str) -> Standing:
    senders = [a for a in (from_address, mail_from.lower()) if a]
    roles, moderated, rule = session.connection().execute(_STANDING, {
        "list_id": list_id, "senders": senders, "from_address": from_address}).one()
    return bool(roles), bool(moderated), SenderAction(rule) if rule else None


@dataclass
class Accepted:
    """A post accepted in a group, waiting to be archived and fanned out."""

    mlist: MailingList
    message: Message
    parsed: Parsed
    outcome: Outcome
    asked: Asked | None  # what DNS said of it, asked before the transaction


class Batch:
    """What the SMTP transactions of one group share, all in its database transaction:
    the lists their recipients are for, who may post and who gets posts (read once per
    group: its posts mostly go to the same few lists, often from the same senders), and
    the accepted posts waiting to be archived and fanned out together when the group's
    transactions are done (`publish`: each list's threads and summaries are read and
    written once per group, not once per post). With `inline`, each post is archived
    and fanned out at once, in its own transaction's savepoint (see ingest_group).

    What it read holds for the whole database transaction: on SQLite nobody else
    writes meanwhile; on PostgreSQL the group's posts are taken as all arriving at the
    moment of the first read, as they would be in one transaction. Mail to a command
    address (a subscription confirmed) can change the members, so it forgets them."""

    def __init__(self, *, inline: bool) -> None:
        self.inline = inline
        self.targets: dict[str, tuple[Route, MailingList]] = {}
        self.accepted: list[Accepted] = []
        self._standing: dict[tuple[int, str, str], Standing] = {}
        self.rules = posting_rules.Cache()

    def target(self, session: Session, rcpt: str) -> tuple[Route, MailingList]:
        if rcpt not in self.targets:
            found = _found(session, rcpt)
            if found is None:
                raise NoRoute(route(session, rcpt))  # the list went away since RCPT
            self.targets[rcpt] = found
        return self.targets[rcpt]

    def facts(self, session: Session, mlist: MailingList, parsed: Parsed, mail_from: str,
              size: int) -> policy.Facts:
        key = (mlist.id, parsed.from_address, mail_from)
        if key not in self._standing:
            self._standing[key] = _standing(session, mlist.id, parsed.from_address, mail_from)
        is_member, moderated, rule = self._standing[key]
        return policy.Facts(
            mlist=mlist, addresses=mlist.addresses, parsed=parsed,
            mail_from=mail_from, size=size, is_member=is_member, moderated=moderated,
            sender_rule=rule)

    def forget_members(self) -> None:
        self._standing.clear()

    def is_duplicate(self, session: Session, mlist: MailingList, message_id: str) -> bool:
        """Whether the archive, or a post of this group waiting for it, has this id."""
        return any(a.mlist.id == mlist.id and a.message.message_id == message_id
                   for a in self.accepted) or store.is_archived(session, mlist.id, message_id)

    def accept(self, session: Session, config: Config, post: Accepted) -> None:
        self.accepted.append(post)
        if self.inline:
            self.publish(session, config)

    def publish(self, session: Session, config: Config) -> None:
        """Archive the accepted posts and queue their copies, each list's together."""
        posts, self.accepted = self.accepted, []
        by_list: dict[int, list[Accepted]] = {}
        for post in posts:
            by_list.setdefault(post.mlist.id, []).append(post)
        for same in by_list.values():
            pairs = [(p.message, p.parsed) for p in same]
            store.archive_all(session, same[0].mlist, pairs)
            fanout.fan_out_all(session, same[0].mlist, pairs, config.web.base_url,
                               config=config, asked=[p.asked for p in same])
            for post in same:
                post.outcome.deliveries = 1  # its expansion: jobs come after the 250


_STATES = {policy.Action.ACCEPT: MessageState.ACCEPTED, policy.Action.HOLD: MessageState.HELD,
           policy.Action.DISCARD: MessageState.DISCARDED, policy.Action.LOOP: MessageState.LOOP}


def _post(session: Session, config: Config, batch: Batch, mlist: MailingList, rcpt: str,
          mail_from: str, raw: bytes, parsed: Parsed, alone: bool, asked: Asked | None
          ) -> Outcome:
    # A reply to a digest as a whole goes into the thread of the item it answers.
    parsed = digest_reply.rethread(session, mlist, raw, parsed)
    facts = batch.facts(session, mlist, parsed, mail_from, len(raw))
    facts.thread_rate = thread_rate(session, config.lists, mlist.id, mail_from, parsed)
    batch.rules.fill(session, facts, raw)
    verdict = policy.decide(facts)
    if verdict.action is policy.Action.REJECT:
        reason = "; ".join(verdict.reasons)
        if alone:
            raise Rejected(f"550 5.7.1 {mlist.address}: {reason}")
        # Other recipients of this transaction took it: keep it, tell the author here.
        verdict = policy.Verdict(policy.Action.DISCARD, verdict.reasons)
        notices.send(session, config, mlist, parsed.from_address, "rejected",
                     reason=reason, message=parsed, in_reply_to=parsed.message_id)
    message = store.new_message(mlist, raw, parsed, kind=MessageKind.POST,
                                state=_STATES[verdict.action], mail_from=mail_from,
                                rcpt_to=rcpt, reasons=verdict.reasons)
    if message.state is MessageState.ACCEPTED and batch.is_duplicate(session, mlist,
                                                                     message.message_id):
        message.state = MessageState.DUPLICATE
        message.reasons = "this Message-ID was posted to the list before"
    store.save(session, message)
    outcome = Outcome(rcpt, message.message_id, message.state.value, 0,
                      message.reasons.splitlines())
    if message.state is MessageState.ACCEPTED:
        batch.accept(session, config, Accepted(mlist, message, parsed, outcome, asked))
    elif message.state is MessageState.HELD:
        moderation.hold(session, config, mlist, message, tell_author=facts.is_member)
        outcome.deliveries = 1
        if not facts.is_member:
            outcome.held_from_non_member = message.id
    return outcome


def _other(session: Session, config: Config, batch: Batch, mlist: MailingList, target: Route,
           rcpt: str, mail_from: str, raw: bytes, parsed: Parsed) -> Outcome:
    """Mail to the list's other addresses: kept, and forwarded where that is its purpose."""
    batch.forget_members()
    message = store.save(session, store.new_message(
        mlist, raw, parsed, kind=_KIND.get(target.purpose, MessageKind.REQUEST),
        state=MessageState.STORED, mail_from=mail_from, rcpt_to=rcpt))
    jobs = 0
    if target.purpose is Purpose.OWNER:
        owners = roster.role_addresses(session, mlist.id, [Role.OWNER])
        jobs = outbox.queue(session, raw, mlist.addresses.at(Purpose.BOUNCES), owners,
                           config.delivery.max_recipients_per_transaction, message.id)
    elif target.purpose in _COMMANDS:
        commands.handle(session, config, mlist, target, message, parsed)
        jobs = 1  # replies may be queued: wake the worker
    elif target.purpose is Purpose.BOUNCES:
        jobs = bounces.process(session, config, mlist, message, rcpt)
    return Outcome(rcpt, message.message_id, f"{target.purpose.value} stored", jobs)


def _ingest_one(session: Session, config: Config, batch: Batch, incoming: Incoming
                ) -> list[Outcome]:
    """One SMTP transaction for all its recipients, an outcome for each. Its refusals
    (NoRoute, Rejected) are raised before it writes anything: every recipient is looked
    up first, and a post is rejected only when it has no other recipient.

    Recipients that route to the same list and purpose (the same RCPT repeated, or dev@
    and DEV@) are one: the message is stored, and sent on, once for them all; else one
    transaction naming a list a thousand times stored a thousand copies."""
    targets: dict[Route, tuple[str, MailingList]] = {}
    for rcpt in incoming.rcpts:
        target, mlist = batch.target(session, rcpt)
        targets.setdefault(target, (rcpt, mlist))
    outcomes: dict[Route, Outcome] = {}
    for target, (rcpt, mlist) in targets.items():
        args = (rcpt, incoming.mail_from, incoming.raw, incoming.parsed)
        if target.purpose is Purpose.POST:
            outcomes[target] = _post(session, config, batch, mlist, *args,
                                     alone=len(targets) == 1, asked=incoming.asked)
        else:
            outcomes[target] = _other(session, config, batch, mlist, target, *args)
    return [outcomes[batch.target(session, rcpt)[0]] for rcpt in incoming.rcpts]


@dataclass
class Incoming:
    """One SMTP transaction waiting to be stored."""

    mail_from: str
    rcpts: list[str]
    raw: bytes
    asked: Asked | None = None  # by the receiver before the transaction (see ask)

    @cached_property
    def parsed(self) -> Parsed:
        """Read where first needed, never in a thread hop of its own (that cost the
        event loop more than the parse; parse never raises): by `ask` for what may be a
        post, else in the writer's thread as its group is stored, where a writer busy
        parsing lets more transactions gather for the next group."""
        return parse(self.raw)

    def ask(self, config: Config, *, cached_only: bool = False) -> bool:
        """What DNS says of the post, asked before the group's transaction
        (authenticity): a slow name server must not hold the writer. With
        `cached_only`, of the resolver's cache alone, which does not block: False when
        a name server would have to answer (ask again, in a thread of its own: a hop
        to that thread for every post cost a busy receiver about 60 posts/s). A failure
        leaves it to be asked in the transaction, as before."""
        try:
            self.asked = authenticity.ask(self.raw, self.parsed.from_address, config,
                                          cached_only=cached_only)
        except NotCached:
            return False
        except Exception:
            log.exception("could not ask DNS about a post before storing it")
        return True


def tell_if_vouched(engine: Engine, config: Config, incoming: Incoming,
                    message_pk: int) -> None:
    """A post held from a non-member, committed: its author is told when its From
    domain vouches for it (authenticity.vouched, a DKIM verification: asked of these
    posts alone, out of the writer's transaction). Blocking; the post is stored
    whatever happens here."""
    try:
        if authenticity.vouched(incoming.raw, incoming.parsed.from_address, config,
                                incoming.asked):
            with db.session(engine) as session:
                moderation.tell_author(session, config, message_pk)
                session.commit()
    except Exception:
        log.exception("could not tell the author of held message %d", message_pk)


# What one SMTP transaction of a group came to: its outcomes, or why it was refused.
Result = list[Outcome] | Exception
REFUSALS = (NoRoute, Rejected)


class Redo(Exception):
    """A group written straight failed where only a savepoint could take one SMTP
    transaction back alone: it is written again carefully."""


def ingest_group(engine: Engine, config: Config, group: list[Incoming]) -> list[Result]:
    """Store several SMTP transactions in one database transaction: one commit (one
    fsync) for them all, and nothing is answered before it. One refused or failing
    transaction must not take the others with it, and savepoints cost two statements
    and a good part of a millisecond each, so:

    - first the group is written straight, without savepoints, its accepted posts
      archived and fanned out together at the end (see Batch). Refusals need no
      savepoint: they come before their transaction wrote anything (_ingest_one);
    - anything else failing there (a post that cannot be composed, two receivers
      threading into one thread at once on PostgreSQL) rolls the whole group back, and
      it is written again carefully: each transaction in a savepoint of its own, its
      posts archived and fanned out in it, so that only that transaction fails."""
    attempts = 3
    for attempt in range(attempts):
        try:
            try:
                return _write_group(engine, config, group, careful=False)
            except Redo as exc:
                log.warning("a group of %d failed written straight (%r); writing it again "
                            "transaction by transaction", len(group), exc.__cause__)
                return _write_group(engine, config, group, careful=True)
        except OperationalError:
            # A busy or failing database: the whole group is redone from the start.
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _write_group(engine: Engine, config: Config, group: list[Incoming], *,
                 careful: bool) -> list[Result]:
    batch = Batch(inline=careful)
    with db.session(engine) as session:
        if careful:
            results = [_in_savepoint(session, config, incoming, batch)
                       for incoming in group]
        else:
            results = [_straight(session, config, incoming, batch) for incoming in group]
            with _or_redo():
                batch.publish(session, config)
        with metrics.INGEST_COMMIT.time():
            session.commit()
        return results


@contextmanager
def _or_redo() -> Iterator[None]:
    """Refusals and the database's own failures pass; any other failure means Redo."""
    try:
        yield
    except (*REFUSALS, OperationalError):
        raise
    except Exception as exc:
        raise Redo() from exc


def _straight(session: Session, config: Config, incoming: Incoming, batch: Batch) -> Result:
    try:
        with _or_redo():
            return _ingest_one(session, config, batch, incoming)
    except REFUSALS as exc:
        return exc  # nothing of it was written


def _in_savepoint(session: Session, config: Config, incoming: Incoming,
                  batch: Batch) -> Result:
    attempts = 3
    for attempt in range(attempts):
        try:
            with session.begin_nested():
                return _ingest_one(session, config, batch, incoming)
        except IntegrityError as exc:
            # Two receivers threading into the same thread at once (PostgreSQL): this
            # transaction is redone from its savepoint.
            if attempt == attempts - 1:
                return exc
        except REFUSALS as exc:
            return exc
        except OperationalError:
            raise  # the group as a whole
        except Exception as exc:  # noqa: BLE001  one transaction's failure, not the group's
            return exc  # its client gets a 451 (and the log the traceback)
    raise AssertionError("unreachable")
