"""What DNS says of a post, asked before the transaction that stores it opens: the DMARC
policy of its author's domain (whether copies go out From the list); with `[dkim]
arc`, the DKIM and ARC results our ARC set seals; and whether its From domain vouches
for it (a held non-member is told only then).

The receiver stores posts one group at a time, in one writer thread holding one
database transaction; a lookup in there waited for the slowest name server (up to the
resolver's 2 s timeout) with every other client's 250 and the delivery bookkeeping
behind it. So the receiver asks first (`ask`): from the resolver's cache where that
holds every answer, else in a thread of its own; and the fan-out in the transaction only
reads the answers (`copy_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass

from listserv import authresults, dmarc, resolver, signing
from listserv.config import Config
from listserv.models import DmarcMode, MailingList, Message
from listserv.parse import read_headers

_RESULTS = frozenset({"authentication-results"})


@dataclass(frozen=True)
class Asked:
    """The answers for one post."""

    dmarc_policy: str | None  # none, quarantine, reject; None: no record, no answer, unasked
    results: str | None  # Authentication-Results for our ARC set; None without arc
    # The From domain vouches for the post: an aligned DKIM signature verifies, or a
    # trusted MTA (`[smtp] trusted_authserv_ids`) says it passed DMARC.
    authenticated: bool = False


def ask(raw: bytes, from_address: str, config: Config,
        mode: DmarcMode = DmarcMode.AUTO, vouch: bool = True, *,
        cached_only: bool = False) -> Asked:
    """Ask DNS about a post (blocking: not in the event loop, not in a transaction).
    Only a list's AUTO mode needs the DMARC policy; the receiver, which does not know
    the lists yet, asks for it, and whether the From domain vouches (`vouch`). With
    `cached_only`, the resolver's cache answers, or resolver.NotCached says that a name
    server would have to: that does not block."""
    dns = resolver.for_config(config.dns)
    if cached_only:
        dns = dns.cache_only
    domain = from_address.rpartition("@")[2]
    results = signing.inbound_results(raw, config.dkim.domain, dns) if config.dkim.arc else None
    return Asked(dmarc.policy(domain, dns) if domain and mode is DmarcMode.AUTO else None,
                 results, vouch and bool(domain) and _vouched(raw, domain, config, results, dns))


def _vouched(raw: bytes, domain: str, config: Config, results: str | None,
             dns: resolver.Resolver) -> bool:
    """A trusted MTA's DMARC pass costs no lookup; our own DKIM results, when `arc` had
    them checked, are read rather than checked again."""
    trusted = config.smtp.trusted_authserv_ids
    if trusted and authresults.dmarc_pass(
            read_headers(raw, _RESULTS)[0].get("authentication-results", []), domain, trusted):
        return True
    if results is not None:
        return authresults.dkim_pass(results, domain)
    return signing.aligned_pass(raw, domain, dns)


def copy_identity(mlist: MailingList, message: Message, config: Config,
                  asked: Asked | None) -> tuple[str | None, str | None]:
    """The display name of a From rewritten to the list (DMARC), and the
    Authentication-Results for our ARC set, of the list's copy of a post; asked of DNS
    here only for a post whose answers were not asked before (one a moderator
    approved, or `listserv doctor`'s test copy)."""
    if asked is None:
        asked = ask(message.raw, message.from_address, config, mlist.dmarc, vouch=False)
    via = (dmarc.via_name(message.from_name, message.from_address, mlist.name)
           if dmarc.rewrites_from(mlist.dmarc, message.from_address, asked.dmarc_policy)
           else None)
    return via, asked.results
