"""DMARC mitigation (RFC 7489): whether a copy goes out From the list instead of the author.

A list that prefixes the subject or adds a footer breaks the author's DKIM signature, and
its servers are not the author's SPF, so a copy "From" a domain that publishes
p=quarantine or p=reject would land in spam or be refused by the members' providers.
Such copies are From "Alice via Dev" <dev@lists.example.org> instead, the way Mailman
munges From; compose puts the author in Reply-To (or Cc), so no one loses sight of them.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import tld

from listserv.enums import DmarcMode
from listserv.resolver import LookupFailed, Resolver

log = logging.getLogger("listserv.dmarc")

STRICT = ("quarantine", "reject")  # the policies that make receivers act on a failure
POLICIES = ("none", *STRICT)
_TAG = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([^;]*?)\s*(?:;|$)")


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: one label below the domain's public suffix.

    The Public Suffix List is the one `tld` ships (already installed with flanker, and
    kept up to date with the list upstream); a TLD it does not know is a suffix of one
    label, as the list's own default rule "*" says. Remembered: the list changes only
    with the package, and looking it up was a good part of a post's DMARC check.
    """
    try:
        return tld.get_fld(domain, fix_protocol=True)
    except ValueError:  # tld's errors for an unknown TLD or a name it cannot read
        return ".".join(domain.split(".")[-2:])


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed identifier alignment (RFC 7489 section 3.1.1): one organisation's domains."""
    if not signing_domain or not from_domain:
        return False
    return (organizational_domain(signing_domain.lower().rstrip("."))
            == organizational_domain(from_domain.lower().rstrip(".")))


def _record(records: list[bytes]) -> dict[str, str] | None:
    """The tags of the one DMARC record among these TXT records (§6.6.3: none if several)."""
    found = [r.decode("ascii", "replace") for r in records
             if re.match(rb"\s*v\s*=\s*DMARC1\s*(;|$)", r)]
    if len(found) != 1:
        return None
    return {m.group(1).lower(): m.group(2) for m in _TAG.finditer(found[0])}


@dataclass(frozen=True)
class Record:
    name: str  # where it was found: _dmarc.DOMAIN, or _dmarc.ORG for a subdomain
    tags: dict[str, str]  # lower-case names
    inherited: bool  # the organisation's record: its sp= (else p=) is the policy


def lookup(domain: str, resolver: Resolver) -> Record | None:
    """The DMARC record that governs mail From `domain` (RFC 7489 §6.6.3), None if none;
    LookupFailed when DNS does not answer."""
    domain = domain.lower().rstrip(".")
    tags = _record(resolver.txt(f"_dmarc.{domain}"))
    if tags is not None:
        return Record(f"_dmarc.{domain}", tags, inherited=False)
    org = organizational_domain(domain)
    if org == domain:
        return None
    tags = _record(resolver.txt(f"_dmarc.{org}"))
    return Record(f"_dmarc.{org}", tags, inherited=True) if tags is not None else None


def policy(domain: str, resolver: Resolver) -> str | None:
    """The policy for mail From `domain` (none, quarantine, reject), or None for no record.

    A DNS failure is no policy: the post goes out with From as it was, and the log says
    why; waiting for DNS to come back would hold the list up.
    """
    try:
        record = lookup(domain, resolver)
    except LookupFailed as exc:
        log.warning("DMARC policy of %s unknown, From left as it is: %s", domain, exc)
        return None
    if record is None:
        return None
    tags = record.tags
    value = (tags.get("sp") or tags.get("p")) if record.inherited else tags.get("p")
    value = (value or "").lower()
    return value if value in POLICIES else None


def rewrites_from(mode: DmarcMode, from_address: str, domain_policy: str | None) -> bool:
    """Whether this post's copies go out From the list, given the policy of its
    author's domain (asked of DNS before, see authenticity)."""
    domain = from_address.rpartition("@")[2]
    if mode is DmarcMode.OFF or not domain:
        return False
    return mode is DmarcMode.ALWAYS or domain_policy in STRICT


def via_name(from_name: str, from_address: str, list_name: str) -> str:
    """"Alice via Dev"; an author without a name is shown by address, with " at " so
    that no filter takes the display name for a forged address."""
    return f"{from_name or from_address.replace('@', ' at ')} via {list_name}"
