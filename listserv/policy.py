"""Who may post: an ordered table of small rules, each returning a verdict or nothing.

The first decisive verdict (accept, discard, reject) ends the walk; holds collect
their reasons on the way, so a moderator reads every reason a post was held for.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from listserv.address import ListAddresses
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
    smtp_reply: str = ""  # for REJECT: the reply the client gets


@dataclass
class Facts:
    """What the rules look at, gathered once by the caller from the message and the store."""

    addresses: ListAddresses
    parsed: Parsed
    mail_from: str
    size: int
    is_member: bool  # the From (or envelope sender) holds a role on the list


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


def no_sender(facts: Facts) -> Verdict | None:
    if not facts.parsed.from_address:
        return Verdict(Action.HOLD, ["no usable From: address"])
    return None


def non_member(facts: Facts) -> Verdict | None:
    if not facts.is_member:
        return Verdict(Action.HOLD, [f"post from non-member {facts.parsed.from_address}"])
    return None


RULES: list[Rule] = [unparseable, loop, no_sender, non_member]


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
        if reasons and verdict.action is not Action.LOOP:
            break
        return verdict
    if reasons:
        return Verdict(Action.HOLD, reasons)
    return Verdict(Action.ACCEPT)
