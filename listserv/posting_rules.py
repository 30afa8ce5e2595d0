"""The owners' posting rules, kept and read: sender patterns per list (allow, deny,
hold), bans over every list, and rules on header fields. The CLI and the owner pages
call the same functions; the receiver loads a list's rules once per group of posts
(`load`) and adds what they say of each post to its facts (`fill`) for policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex
from sqlalchemy import delete, func, or_, select
from sqlmodel import Session

from listserv import patterns, policy
from listserv.config import MAX_INT
from listserv.enums import HeaderAction, MemberAction, MessageKind, MessageState, Role, SenderAction
from listserv.models import Ban, HeaderRule, MailingList, Member, Message, SenderRule
from listserv.parse import read_headers
from listserv.roster import UserError


def _pattern(text: str) -> patterns.SenderPattern:
    try:
        return patterns.sender(text)
    except patterns.BadPattern as exc:
        raise UserError(f"bad pattern: {exc}") from None


def _key(text: str) -> str:
    """A pattern as stored, for removing it: one that could not be saved today (a
    newer check) is taken as written."""
    try:
        return patterns.sender(text).text
    except patterns.BadPattern:
        return text.strip()


def _usable(texts: list[str]) -> list[patterns.SenderPattern]:
    """Stored patterns were checked when saved; one that no longer compiles (a newer
    `regex`) must not stop every post, so it is skipped."""
    found = []
    for text in texts:
        try:
            found.append(patterns.sender(text))
        except patterns.BadPattern:
            continue
    return found


# --- sender rules of one list -------------------------------------------------------------

def set_sender(session: Session, mlist: MailingList, text: str, action: SenderAction) -> str:
    """Allow, deny or hold the senders a pattern names; a pattern's new action replaces
    its old one. Returns the pattern as stored."""
    pattern = _pattern(text).text
    session.execute(delete(SenderRule).where(SenderRule.list_id == mlist.id,
                                             SenderRule.address == pattern))
    session.add(SenderRule(list_id=mlist.id, address=pattern, action=action))
    return pattern


def remove_sender(session: Session, mlist: MailingList, text: str) -> str:
    """Drop an entry: the senders it named are treated like any others again."""
    key = _key(text)
    gone = session.execute(delete(SenderRule).where(SenderRule.list_id == mlist.id,
                                                    SenderRule.address == key))
    if not gone.rowcount:
        raise UserError(f"{key} is not a sender rule of {mlist.address}")
    return key


def senders(session: Session, mlist: MailingList) -> list[SenderRule]:
    return list(session.scalars(select(SenderRule).where(SenderRule.list_id == mlist.id)
                                .order_by(SenderRule.action, SenderRule.address)))


# --- bans over every list -----------------------------------------------------------------

def add_ban(session: Session, text: str) -> str:
    pattern = _pattern(text).text
    if session.scalars(select(Ban).where(Ban.pattern == pattern)).first() is None:
        session.add(Ban(pattern=pattern))
    return pattern


def remove_ban(session: Session, text: str) -> str:
    key = _key(text)
    if not session.execute(delete(Ban).where(Ban.pattern == key)).rowcount:
        raise UserError(f"{key} is not banned")
    return key


def bans(session: Session) -> list[Ban]:
    return list(session.scalars(select(Ban).order_by(Ban.pattern)))


def _ban_patterns(session: Session) -> list[patterns.SenderPattern]:
    return _usable([ban.pattern for ban in bans(session)])


def banned(session: Session, address: str) -> str | None:
    """The ban that names this address, or None: it may not subscribe to any list."""
    return _first_match(_ban_patterns(session), [address.strip().lower()])


def _first_match(found: list[patterns.SenderPattern], addresses: list[str]) -> str | None:
    return next((p.text for p in found for a in addresses if a and p.matches(a)), None)


# --- header rules of one list -------------------------------------------------------------

def add_header_rule(session: Session, mlist: MailingList, header: str, expression: str,
                    action: HeaderAction) -> HeaderRule:
    try:
        name = patterns.field_name(header)
        patterns.expression(expression)
    except patterns.BadPattern as exc:
        raise UserError(f"bad header rule: {exc}") from None
    rule = HeaderRule(list_id=mlist.id, header=name, pattern=expression, action=action)
    session.add(rule)
    session.flush()
    return rule


def remove_header_rule(session: Session, mlist: MailingList, rule_id: int) -> None:
    gone = session.execute(delete(HeaderRule).where(
        HeaderRule.list_id == mlist.id, HeaderRule.id == rule_id)) if (
            0 < rule_id <= MAX_INT) else None
    if gone is None or not gone.rowcount:
        raise UserError(f"no header rule {rule_id} on {mlist.address}")


def header_rules(session: Session, mlist: MailingList) -> list[HeaderRule]:
    return list(session.scalars(select(HeaderRule).where(HeaderRule.list_id == mlist.id)
                                .order_by(HeaderRule.id)))


# --- what the receiver reads --------------------------------------------------------------

@dataclass
class Loaded:
    """One list's rules as the receiver reads them, once per group of posts. The
    plain-address sender rules are not here: the receiver reads the one for the From
    with the sender's roles (receive._standing)."""

    senders: list[tuple[patterns.SenderPattern, SenderAction]]  # @domain and ^regex$
    bans: list[patterns.SenderPattern]
    headers: list[tuple[HeaderRule, regex.Pattern]]


def load(session: Session, mlist: MailingList,
         ban_patterns: list[patterns.SenderPattern]) -> Loaded:
    """A list's rules, with the bans the caller read for every list."""
    rows = session.execute(select(SenderRule.address, SenderRule.action).where(
        SenderRule.list_id == mlist.id,
        or_(SenderRule.address.startswith("@"), SenderRule.address.startswith("^")))).all()
    found = [(p, action) for address, action in rows for p in _usable([address])]
    # Domains before expressions: the more precise entry wins.
    found.sort(key=lambda pair: pair[0].kind is patterns.Kind.REGEX)
    headers = []
    for rule in header_rules(session, mlist):
        try:
            headers.append((rule, patterns.expression(rule.pattern)))
        except patterns.BadPattern:
            continue
    return Loaded(found, ban_patterns, headers)


class Cache:
    """The rules of the lists a group of posts goes to, each loaded once, and the bans
    read once for them all."""

    def __init__(self) -> None:
        self._loaded: dict[int, Loaded] = {}
        self._bans: list[patterns.SenderPattern] | None = None

    def fill(self, session: Session, facts: policy.Facts, raw: bytes) -> None:
        if self._bans is None:
            self._bans = _ban_patterns(session)
        if facts.mlist.id not in self._loaded:
            self._loaded[facts.mlist.id] = load(session, facts.mlist, self._bans)
        fill(session, facts, self._loaded[facts.mlist.id], raw)


def fill(session: Session, facts: policy.Facts, loaded: Loaded, raw: bytes) -> None:
    """Add what the list's rules say of one post (its bytes as received) to its facts."""
    senders = [a for a in (facts.parsed.from_address, facts.mail_from.lower()) if a]
    facts.ban = _first_match(loaded.bans, senders)
    address = facts.parsed.from_address
    if facts.sender_rule is not None:
        facts.sender_pattern = address
    elif address:
        hit = next(((p, action) for p, action in loaded.senders if p.matches(address)), None)
        if hit is not None:
            facts.sender_pattern, facts.sender_rule = hit[0].text, hit[1]
    if loaded.headers:
        facts.header_hits = _header_hits(raw, loaded.headers)
    mlist = facts.mlist
    if facts.is_member and (mlist.member_action is not MemberAction.ACCEPT
                            or mlist.new_member_holds):
        facts.staff = _is_staff(session, mlist.id, senders)
        if mlist.new_member_holds and not facts.staff:
            facts.member_posts = _posts_so_far(session, mlist, senders)


def _header_hits(raw: bytes, rules: list[tuple[HeaderRule, regex.Pattern]]
                 ) -> list[tuple[HeaderAction, str]]:
    values, _ = read_headers(raw, frozenset(rule.header.lower() for rule, _ in rules))
    return [(rule.action, f"header rule {rule.id}: {rule.header} matches {rule.pattern!r}")
            for rule, compiled in rules
            if any(patterns.value_matches(compiled, v)
                   for v in values.get(rule.header.lower(), []))]


def _is_staff(session: Session, list_id: int, senders: list[str]) -> bool:
    return session.scalar(select(func.count()).where(
        Member.list_id == list_id, Member.address.in_(senders),
        Member.role.in_([Role.OWNER, Role.MODERATOR]))) > 0


def _posts_so_far(session: Session, mlist: MailingList, senders: list[str]) -> int:
    """The member's posts the list has sent, counted up to new_member_holds."""
    sent = select(Message.id).where(
        Message.list_id == mlist.id, Message.from_address.in_(senders),
        Message.kind == MessageKind.POST, Message.state == MessageState.ACCEPTED,
    ).limit(mlist.new_member_holds).subquery()
    return session.scalar(select(func.count()).select_from(sent)) or 0
