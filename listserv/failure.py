"""A failed delivery and whose fault it was: the RFC 3463 status and the words servers
use for a dead mailbox, a refused copy or a delay. Delivery reports (`dsn`) and the
smarthost's refusals are both read into a `Failure` here, so a list (`bounces`) judges
them alike.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class BounceClass(enum.StrEnum):
    """Whose fault a failure is, which decides what a later step does to the member."""

    MAILBOX = "mailbox"  # the address is dead (no such user, disabled, moved): counts
    POLICY = "policy"  # the copy was refused (DMARC, spam, content): the member is innocent
    TRANSIENT = "transient"  # may still arrive or work later (4.x.x, mailbox full, delayed)
    UNKNOWN = "unknown"  # a failure we cannot attribute


@dataclass(frozen=True)
class Failure:
    """One recipient a delivery report says did not get the copy."""

    address: str
    status: str  # RFC 3463 "5.1.1", or "" when the report gives none
    diagnostic: str  # the remote server's words, on one line
    bounce_class: BounceClass


# RFC 3463 class.subject.detail of a failure (4 or 5); the detail is up to three digits
# (Microsoft's 5.7.606). Class 2 is success, and in prose mostly a version number.
_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")

# "listed in" is a block list, but Domino's "not listed in Domino Directory" is a
# dead address. A refusal of the list's own sender ("sender rejected", Cox's 5.1.0) or
# of the list's server (relaying, authentication) blames nobody among the members.
_POLICY_TEXT = re.compile(
    r"spam|blocked|block ?list|black ?list|blacklisted|dmarc|dkim|\bspf\b|policy|"
    r"reputation|content rejected|virus|malware|not accepted for delivery|"
    r"(?<!not )listed (at|in|on)|\brbl\b|junk mail|too large|size limit|message size|"
    r"sender (address )?(rejected|refused|denied|blocked)|"
    r"(host|network|ip|sender|client|relay(ing)?) (is )?not allowed|"
    r"not permitted to relay|relay(ing)? (access )?(denied|not permitted)|"
    r"authentication required|smtp authentication|unsolicited|bulk mail|"
    r"not accepting mail from",
    re.I)
_FULL_TEXT = re.compile(
    r"over ?quota|quota (exceeded|violation)|exceed\w* (the |their |its )?(storage|mailbox|"
    r"disk|quota)|(mailbox|mail ?folder|inbox) (is )?full|mailbox size limit|"
    r"insufficient (disk )?space|would exceed mailbox quota|storage (space )?full|"
    r"full mailbox|mail ?box full|out of (disk|storage) space",
    re.I)
# What providers and MTAs say for a user or a domain that does not exist, and for a
# mailbox that was closed: Gmail ("does not exist", "tried to reach is disabled"),
# Microsoft ("couldn't be found", "mailbox unavailable"), Yahoo and AT&T ("doesn't have
# a yahoo.com account"), Sendmail ("Host unknown"), qmail ("couldn't find any host"),
# Verizon ("No valid recipients"), i.ua ("Mailbox is frozen"), and Microsoft 365's
# "Recipient address rejected: Access denied" (5.4.1) for a user its tenant lacks.
_MAILBOX_TEXT = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address|account|person|"
    r"domain)|(user|mailbox|recipient|address|addressee|account)( name)? (is |was |has "
    r"been )?(unknown|not found|unavailable|disabled|invalid|inactive|does ?n.?t exist|"
    r"frozen|deactivated|suspended|closed|terminated|deleted|not (be )?recogni[sz]ed)|"
    r"does not exist|doesn't exist|not a valid (mailbox|user|recipient)|"
    r"invalid (recipient|mailbox|address|user|final delivery userid)|"
    r"unknown (recipient|address|local)|no valid recipients?|"
    r"no mailbox|not listed in|unrouteable|account (has been )?(disabled|suspended|"
    r"expired|closed)|no longer (active|valid|exists|in use)|illegal user|"
    r"does ?n.?t have an? [\w.-]+ account|tried to reach is (disabled|inactive)|"
    r"could ?n.?o?t be found|recipient address rejected: access denied|host unknown|"
    r"unknown host|could ?n.?t find any host|"
    r"host (or domain name )?not found|domain (name )?not found|bad destination|"
    r"name or service not known|nxdomain|no mx (or a )?records?",
    re.I)
_TRANSIENT_TEXT = re.compile(
    r"not yet been delivered|will (continue to )?(re)?try|still trying|delayed|"
    r"temporar|try again later|deferred|warning:? (message|delivery)|"
    r"delivery attempts will continue|has not been delivered yet",
    re.I)

# RFC 3463 subjects that blame the address itself (5.1.x addressing, 5.2.1 disabled,
# 5.4.4 unroutable domain) and the content or security subjects that blame the copy.
_MAILBOX_STATUS = re.compile(r"5\.(1\.\d+|2\.1|4\.4)$")
_POLICY_STATUS = re.compile(r"5\.(7\.\d+|6\.\d+|2\.3|3\.4)$")


def classify(status: str, text: str) -> BounceClass:
    """The class of one failure from its RFC 3463 status and the server's words.

    A specific status decides; a generic one (X.0.0, X.Y.0) or none leaves it to the
    text, because many servers answer "550 5.0.0" to everything from a dead mailbox to
    a DMARC refusal and only say which in prose.
    """
    text = " ".join(text.split())  # a reason folded over lines reads as one
    if status.startswith("4."):
        return BounceClass.TRANSIENT
    if status == "5.2.2" or _FULL_TEXT.search(text):
        return BounceClass.TRANSIENT
    generic = status == "" or status.endswith(".0")
    if not generic:
        if _POLICY_STATUS.match(status):
            return BounceClass.POLICY
        if _MAILBOX_STATUS.match(status):
            return BounceClass.MAILBOX
    by_text = _classify_text(text)
    if by_text is not BounceClass.UNKNOWN or not status:
        return by_text
    # Generic codes still say which subject went wrong: 5.1.0 is an address problem.
    if status.startswith("5.1."):
        return BounceClass.MAILBOX
    if status.startswith("5.7."):
        return BounceClass.POLICY
    return BounceClass.UNKNOWN


def _classify_text(text: str) -> BounceClass:
    if _POLICY_TEXT.search(text):
        return BounceClass.POLICY
    if _MAILBOX_TEXT.search(text):
        return BounceClass.MAILBOX
    if _TRANSIENT_TEXT.search(text):
        return BounceClass.TRANSIENT
    return BounceClass.UNKNOWN


def find_status(text: str) -> str:
    """The most specific RFC 3463 code in a text: "5.1.1" over a "5.0.0" beside it."""
    codes = [".".join(m.groups()) for m in _STATUS.finditer(text)]
    specific = [c for c in codes if not c.endswith(".0.0")]
    return (specific or codes or [""])[0]


def refusal(address: str, code: int, text: str) -> Failure:
    """A smarthost's SMTP refusal of `address`, read as a DSN carrying that reply would
    be: its enhanced status code when it gives one, else the reply code's class as
    "5.0.0" (what Postfix writes in Status), and the class from both as for any report."""
    words = diagnostic(f"{code} {text}")
    status = find_status(words) or f"{code // 100}.0.0"
    return Failure(address, status, words, classify(status, words))


def diagnostic(text: str, limit: int = 400) -> str:
    """A remote server's words as a `Failure` keeps them: one line, cut at `limit`."""
    return " ".join(text.split())[:limit]
