"""The patterns owners write, checked once when saved and matched on every post: a
sender pattern (an address, "@domain" or "^regex$") and a header expression.

Owners' expressions run on every post, so each match is bounded: a pattern is at most
MAX_LENGTH characters, it reads the sender's address alone (at most MAX_ADDRESS
characters) or a header value's first MAX_VALUE, and the `regex` engine, unlike `re`,
gives up after MATCH_SECONDS. A pattern that takes that long on a probe is refused.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass

import regex

from listserv.address import parse_mailbox, split

log = logging.getLogger("listserv.patterns")

MAX_LENGTH = 200
MAX_ADDRESS = 254  # RFC 5321's limit on a path, less the brackets
MAX_VALUE = 998  # RFC 5322's limit on a line
MATCH_SECONDS = 0.05
# What a pattern is tried on before it is saved: the repetitions that make a
# backtracking engine take exponential time show up on a long run that fails at its end.
_PROBES = tuple(run * (MAX_ADDRESS // 2 - 1) + "!" for run in ("aa", "a.", "a@", "1,", "  "))
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


class BadPattern(ValueError):
    """A pattern that cannot be saved; its text says why, in one line."""


class Kind(enum.StrEnum):
    ADDRESS = "address"  # bob@example.org
    DOMAIN = "domain"  # @example.org: every address at that domain (not its subdomains)
    REGEX = "regex"  # ^.*@(mail\.)?example\.org$, case-insensitive


def _compiled(text: str) -> regex.Pattern:
    if len(text) > MAX_LENGTH:
        raise BadPattern(f"a pattern is at most {MAX_LENGTH} characters")
    try:
        compiled = regex.compile(text, regex.IGNORECASE)
    except regex.error as exc:
        raise BadPattern(f"not a regular expression ({exc})") from None
    for probe in _PROBES:
        try:
            compiled.search(probe, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise BadPattern("it takes too long to match (nested repetition such as "
                             "(a+)+ or (a|a)*); write it more simply") from None
    return compiled


def _bounded_search(compiled: regex.Pattern, text: str, what: str) -> bool:
    try:
        return compiled.search(text, timeout=MATCH_SECONDS) is not None
    except TimeoutError:
        log.warning("pattern %r took too long on %s; taken as no match", compiled.pattern, what)
        return False


@dataclass(frozen=True)
class SenderPattern:
    text: str  # as stored: a lower-case address, "@domain" or the expression
    kind: Kind
    compiled: regex.Pattern | None = None

    def matches(self, address: str) -> bool:
        """Whether a sender's lower-case address is one this pattern names."""
        if self.kind is Kind.ADDRESS:
            return address == self.text
        if self.kind is Kind.DOMAIN:
            return split(address)[1] == self.text[1:]
        assert self.compiled is not None
        return _bounded_search(self.compiled, address[:MAX_ADDRESS], "an address")


def sender(text: str) -> SenderPattern:
    """A sender pattern as written on the command line (or stored); BadPattern if it
    cannot be one."""
    text = text.strip()
    if text.startswith("^"):
        return SenderPattern(text, Kind.REGEX, _compiled(text))
    if text.startswith("@"):
        domain = text[1:].lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            raise BadPattern(f"{text!r} is not @ and a domain name")
        return SenderPattern(f"@{domain}", Kind.DOMAIN)
    mailbox = parse_mailbox(text)
    if mailbox is None or mailbox[0] or len(mailbox[1]) > MAX_ADDRESS:
        raise BadPattern(f"{text!r} is not an address, @domain or ^regex$")
    return SenderPattern(mailbox[1].lower(), Kind.ADDRESS)


def field_name(text: str) -> str:
    """A header field name as written (X-Spam-Flag), without a trailing colon; fields
    are matched by name whatever its case."""
    name = text.strip().rstrip(":")
    if not _FIELD_NAME.fullmatch(name):
        raise BadPattern(f"{text!r} is not a header field name")
    return name


def expression(text: str) -> regex.Pattern:
    """A header rule's regular expression, searched for case-insensitively."""
    if not text:
        raise BadPattern("an empty expression would match every value")
    return _compiled(text)


def value_matches(compiled: regex.Pattern, value: str) -> bool:
    return _bounded_search(compiled, value[:MAX_VALUE], "a header value")
