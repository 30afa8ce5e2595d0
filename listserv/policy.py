"""Who may post: an ordered table of small rules, each returning a verdict or nothing.

The first decisive verdict (accept, discard, reject, loop) ends the walk; holds collect
their reasons on the way, so a moderator reads every reason a post was held for. The
order follows Mailman's posting chain: loops and automatic mail first (listserv/loops.py
for autoresponders that ignore RFC 3834), then the moderator's switches, then membership.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from listserv import loops
from listserv.address import ListAddresses
from listserv.models import MailingList, NonmemberAction, SenderAction
from listserv.parse import Parsed


class Action(enum.StrEnum):
    ACCEPT = "accept"  # archive and fan out
    HOLD = "hold"  # keep for a moderator
    DISCARD = "discard"  # keep the bytes, send nothing, answer nobody
    LOOP = "loop"  # our own copy came back: never send it round again
    REJECT = "reject"  # refuse at the door with a 5xx


@dataclass
class Verdict:
    action: Action
    reasons: list[str] = field(default_factory=list)


@dataclass
class Facts:
    """What the rules look at, gathered once by the caller from the message and the store."""

    mlist: MailingList
    addresses: ListAddresses
    parsed: Parsed
    mail_from: str
    size: int
    is_member: bool  # the From (or envelope sender) holds a role on the list
    moderated: bool = False  # ... and a moderator set its `moderated` flag
    sender_rule: SenderAction | None = None  # allow/deny entry for the sender
    thread_rate: loops.ThreadRate | None = None  # the sender's recent posts to its thread


Rule = Callable[[Facts], Verdict | None]


def unparseable(facts: Facts) -> Verdict | None:
    if facts.parsed.error:
        return Verdict(Action.HOLD, [facts.parsed.error])
    return None


def loop(facts: Facts) -> Verdict | None:
    """Our List-Id or X-BeenThere on an incoming post means we sent it already."""
    ours = facts.addresses.list_id
    if ours in facts.parsed.list_ids or facts.addresses.posting in facts.parsed.been_there:
        return Verdict(Action.LOOP, [f"already carries List-Id <{ours}> or X-BeenThere"])
    return None


def automatic_reason(mail_from: str, parsed: Parsed) -> str:
    """Why a mail was sent by a machine (RFC 3834), or "" when a person sent it: such
    mail is never posted and never answered."""
    if parsed.auto_submitted and parsed.auto_submitted != "no":
        return f"Auto-Submitted: {parsed.auto_submitted}"
    if parsed.precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {parsed.precedence}"
    if parsed.autoresponder:
        return f"an autoresponder's field ({parsed.autoresponder})"
    if not mail_from:
        return "null envelope sender (a bounce or notification)"
    return ""


def automatic(facts: Facts) -> Verdict | None:
    why = automatic_reason(facts.mail_from, facts.parsed)
    return Verdict(Action.DISCARD, [why]) if why else None


def autoreply_subject(facts: Facts) -> Verdict | None:
    """Held, not discarded: a person may write "Out of office" in a subject too."""
    why = loops.autoreply_subject(facts.parsed.subject)
    return Verdict(Action.HOLD, [why]) if why else None


def thread_flood(facts: Facts) -> Verdict | None:
    """Held: the same sender again and again in one thread is an autoresponder loop
    more often than a conversation; a moderator lets a real one through."""
    rate = facts.thread_rate
    if rate is not None and rate.reached:
        return Verdict(Action.HOLD, [rate.reason(facts.mail_from)])
    return None


def denied(facts: Facts) -> Verdict | None:
    if facts.sender_rule is SenderAction.DENY:
        return Verdict(Action.DISCARD, [f"sender {facts.parsed.from_address} is on the deny list"])
    return None


def emergency(facts: Facts) -> Verdict | None:
    if facts.mlist.emergency:
        return Verdict(Action.HOLD, ["the list is in emergency moderation"])
    return None


def no_sender(facts: Facts) -> Verdict | None:
    if not facts.parsed.error and not facts.parsed.from_address:
        return Verdict(Action.HOLD, ["no usable From: address"])
    return None


def moderated_member(facts: Facts) -> Verdict | None:
    if facts.is_member and facts.moderated:
        return Verdict(Action.HOLD, [f"posts from {facts.parsed.from_address} are moderated"])
    return None


def too_big(facts: Facts) -> Verdict | None:
    limit = facts.mlist.max_message_bytes
    if limit and facts.size > limit:
        return Verdict(Action.HOLD, [f"message is {facts.size} bytes, the list takes {limit}"])
    return None


_NONMEMBER = {
    NonmemberAction.HOLD: Action.HOLD,
    NonmemberAction.REJECT: Action.REJECT,
    NonmemberAction.DISCARD: Action.DISCARD,
}


def non_member(facts: Facts) -> Verdict | None:
    if facts.is_member or facts.sender_rule is SenderAction.ALLOW or not facts.parsed.from_address:
        return None
    action = _NONMEMBER.get(facts.mlist.nonmember_action)
    if action is None:
        return None
    return Verdict(action, [f"post from non-member {facts.parsed.from_address}"])


RULES: list[Rule] = [unparseable, loop, automatic, autoreply_subject, thread_flood, denied,
                     emergency, no_sender, moderated_member, too_big, non_member]


def decide(facts: Facts, rules: list[Rule] = RULES) -> Verdict:
    """Walk the rules in order; see the module docstring for how verdicts combine."""
    reasons: list[str] = []
    for rule in rules:
        verdict = rule(facts)
        if verdict is None:
            continue
        if verdict.action is Action.HOLD:
            reasons.extend(verdict.reasons)
            continue
        if reasons and verdict.action in (Action.ACCEPT, Action.REJECT):
            break  # a moderator looks at it anyway
        return verdict
    if reasons:
        return Verdict(Action.HOLD, reasons)
    return Verdict(Action.ACCEPT)
