"""The addresses a list owns, both ways: route an envelope recipient to a list and a
purpose, and build the addresses that go into the headers of what we send.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property, lru_cache


class Purpose(enum.StrEnum):
    POST = "post"  # LIST@: a post to the members
    OWNER = "owner"  # LIST-owner@: forwarded to the owners
    BOUNCES = "bounces"  # LIST-bounces@, LIST-bounces+x@: delivery reports
    REQUEST = "request"  # LIST-request@: commands, one per line
    JOIN = "join"  # LIST-join@: subscribe, no body needed
    LEAVE = "leave"  # LIST-leave@: unsubscribe, no body needed
    CONFIRM = "confirm"  # LIST-confirm+TOKEN@: answers to confirmations and notices


# Which suffixes take a "+detail" part: bounces may (VERP), confirm must (the token).
_DETAIL = {Purpose.BOUNCES: "optional", Purpose.CONFIRM: "required"}


@dataclass(frozen=True)
class Route:
    list_address: str  # dev@lists.example.org
    purpose: Purpose
    detail: str = ""  # what followed "+" in the local part


def split(addr: str) -> tuple[str, str]:
    """Local part and domain, lower case; ("", "") for anything without one "@"."""
    local, at, domain = addr.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return "", ""
    return local.lower(), domain.lower()


def candidates(rcpt: str) -> list[Route]:
    """Every (list, purpose) a recipient could mean; the caller keeps the one that exists.

    A list may itself be called "dev-owner", so the plain reading comes first.
    """
    local, domain = split(rcpt)
    if not local:
        return []
    base, plus, detail = local.partition("+")
    routes = []
    if not plus:
        routes.append(Route(f"{local}@{domain}", Purpose.POST))
    for purpose in Purpose:
        suffix = "-" + purpose.value
        if purpose is Purpose.POST or not base.endswith(suffix) or len(base) == len(suffix):
            continue
        need = _DETAIL.get(purpose)
        if (plus and need is None) or (need == "required" and not detail):
            continue
        routes.append(Route(f"{base[: -len(suffix)]}@{domain}", purpose, detail))
    return routes


@dataclass(frozen=True)
class ListAddresses:
    """The addresses of one list, for headers and envelopes."""

    posting: str

    # Cached: fan-out builds a VERP sender for every recipient from these.
    @cached_property
    def local(self) -> str:
        return split(self.posting)[0]

    @cached_property
    def domain(self) -> str:
        return split(self.posting)[1]

    def at(self, purpose: Purpose | str, detail: str = "") -> str:
        """The list's address for a purpose; templates may name it: at("owner")."""
        purpose = Purpose(purpose)
        if purpose is Purpose.POST:
            return self.posting
        plus = f"+{detail}" if detail else ""
        return f"{self.local}-{purpose.value}{plus}@{self.domain}"

    def verp(self, rcpt: str) -> str:
        """The envelope sender of `rcpt`'s copy, so a bounce names whose copy failed:
        LIST-bounces+user=example.com@domain ("@" written "=", read by
        verp_recipient)."""
        local, _, domain = rcpt.rpartition("@")
        return self.at(Purpose.BOUNCES, f"{local}={domain}")

    @property
    def list_id(self) -> str:
        """RFC 2919 list-id: the posting address with "@" turned into "."."""
        return f"{self.local}.{self.domain}"


def verp_recipient(envelope_recipient: str) -> str | None:
    """The member a VERP bounce address names: LIST-bounces+user=example.com@domain
    gives user@example.com, so a bounce needs no parsing to find its recipient.

    The `@` of the member's address is written `=` in the detail; the member's own local
    part may hold `=` too, so the last one is the separator (a domain never has one).
    None when the address carries no such detail.
    """
    local, at, _domain = envelope_recipient.strip().strip("<>").rpartition("@")
    if not at:
        return None
    _list, plus, detail = local.lower().partition("-bounces+")
    if not plus:
        return None
    detail = local[len(local) - len(detail):]  # the member's case, as sent
    user, eq, domain = detail.rpartition("=")
    if not (eq and user and "." in domain and "@" not in detail):
        return None
    return f"{user}@{domain.lower()}"


# flanker reads no mailbox longer than this (and then says None); nor is one cached.
MAX_MAILBOX = 1024


def parse_mailbox(text: str) -> tuple[str, str] | None:
    """(display name, lower-case addr-spec) of one mailbox, or None if it is not one."""
    text = text.strip()
    return _parse_mailbox(text) if len(text) <= MAX_MAILBOX else None


@lru_cache(maxsize=4096)
def _parse_mailbox(text: str) -> tuple[str, str] | None:
    # Remembered: a list hears from the same few thousand From: fields again and again,
    # and flanker's grammar parser was a third of the time it took to parse a post.
    # Imported here: flanker takes a quarter of a second to load, and a command line
    # that only adds plain addresses never needs it.
    from listserv._quiet import flanker_address

    parsed = flanker_address.parse(text, addr_spec_only=False)
    if parsed is None or getattr(parsed, "addr_type", "email") != "email":
        return None
    return (parsed.display_name or "", parsed.address.lower())


def valid_list_local(local: str) -> bool:
    """List names must route unambiguously: no "+" and no reserved suffix."""
    if not local or "+" in local:
        return False
    return not any(local.endswith("-" + p.value) for p in Purpose if p is not Purpose.POST)
