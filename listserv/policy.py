"""Who may post: an ordered table of small rules, each returning a verdict or nothing.

The first decisive verdict (accept, discard, reject, loop) ends the walk; holds collect
their reasons on the way, so a moderator reads every reason a post was held for. The
order follows Mailman's posting chain: loops and automatic mail first (listserv/loops.py
for autoresponders that ignore RFC 3834), then bans and the owners' sender and header
rules (posting_rules.py gathers what they say), the moderator's switches, membership.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from listserv import loops
from listserv.address import ListAddresses
from listserv.enums import HeaderAction, MemberAction, NonmemberAction, SenderAction
from listserv.models import MailingList
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
    sender_rule: SenderAction | None = None  # the owners' entry for the From address
    sender_pattern: str = ""  # ... and the pattern that named it
    thread_rate: loops.ThreadRate | None = None  # the sender's recent posts to its thread
    ban: str | None = None  # the server-wide ban that names the sender
    header_hits: list[tuple[HeaderAction, str]] = field(default_factory=list)  # rules matched
    staff: bool = False  # the sender is an owner or moderator (read when a rule needs it)
    member_posts: int = 0  # the member's posts sent so far (read for new_member_holds)


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


def banned(facts: Facts) -> Verdict | None:
    if facts.ban:
        return Verdict(Action.DISCARD, [f"the sender is banned from every list ({facts.ban})"])
    return None


def _sender_is(facts: Facts, action: SenderAction) -> str:
    """Why the owners' sender rule applies, or "" when it does not."""
    if facts.sender_rule is not action:
        return ""
    address = facts.parsed.from_address
    named = "" if facts.sender_pattern in ("", address) else f" ({facts.sender_pattern})"
    return f"sender {address} is on the {action.value} list{named}"


def denied(facts: Facts) -> Verdict | None:
    why = _sender_is(facts, SenderAction.DENY)
    return Verdict(Action.DISCARD, [why]) if why else None


_HEADER = {HeaderAction.DISCARD: Action.DISCARD, HeaderAction.REJECT: Action.REJECT,
           HeaderAction.HOLD: Action.HOLD}


def header_rules(facts: Facts) -> Verdict | None:
    """The owners' rules on header fields; of several that match, the strictest acts."""
    for action in (HeaderAction.DISCARD, HeaderAction.REJECT, HeaderAction.HOLD):
        reasons = [why for hit, why in facts.header_hits if hit is action]
        if reasons:
            return Verdict(_HEADER[action], reasons)
    return None


def held_sender(facts: Facts) -> Verdict | None:
    why = _sender_is(facts, SenderAction.HOLD)
    return Verdict(Action.HOLD, [why]) if why else None


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


def _member_only(facts: Facts) -> bool:
    """A member who is not an owner or moderator and whom no allow entry lets through."""
    return facts.is_member and not facts.staff and facts.sender_rule is not SenderAction.ALLOW


def member_posting(facts: Facts) -> Verdict | None:
    """`member_action`: an announce list holds or refuses its members' posts."""
    if not _member_only(facts):
        return None
    if facts.mlist.member_action is MemberAction.HOLD:
        return Verdict(Action.HOLD, [f"members' posts to {facts.mlist.address} wait for "
                                     "the owners"])
    if facts.mlist.member_action is MemberAction.REJECT:
        return Verdict(Action.REJECT, [f"only the owners and moderators of "
                                       f"{facts.mlist.address} may post"])
    return None


def new_member(facts: Facts) -> Verdict | None:
    """`new_member_holds`: a member's first posts wait, then they post freely."""
    holds = facts.mlist.new_member_holds
    if not (_member_only(facts) and holds and facts.member_posts < holds):
        return None
    return Verdict(Action.HOLD, [f"a new member's first {holds} posts are held "
                                 f"({facts.member_posts} sent so far)"])


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
    why = f"post from non-member {facts.parsed.from_address}"
    return Verdict(action, [f"{why}; only members may post" if action is Action.REJECT else why])


RULES: list[Rule] = [unparseable, loop, automatic, autoreply_subject, thread_flood, banned,
                     denied, header_rules, emergency, no_sender, held_sender, moderated_member,
                     member_posting, new_member, too_big, non_member]


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
