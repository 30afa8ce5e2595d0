"""What DNS says of a post: the DMARC policy of its author's domain (whether copies go
out From the list) and, with `[dkim] arc`, the DKIM and ARC results our ARC set seals,
asked before the transaction that stores it opens; and whether its From domain vouches
for it (a held non-member is told only then), asked after that transaction, of the
posts it held from non-members alone.

The receiver stores posts one group at a time, in one writer thread holding one
database transaction; a lookup in there waited for the slowest name server (up to the
resolver's 2 s timeout) with every other client's 250 and the delivery bookkeeping
behind it. So the receiver asks first (`ask`): from the resolver's cache where that
holds every answer, else in a thread of its own; and the fan-out in the transaction only
reads the answers (`copy_identity`). Whether the From domain vouches costs a DKIM
verification (about 0.6 ms of CPU a signed post): asked of every post, it was thrown
away for all but the few held from non-members, so it is asked of those only, once the
transaction has told what became of the post (`vouched`).
"""

from __future__ import annotations

from dataclasses import dataclass

from listserv import authresults, dmarc, resolver, signing
from listserv.config import Config
from listserv.enums import DmarcMode
from listserv.models import MailingList, Message
from listserv.parse import read_headers

_RESULTS = frozenset({"authentication-results"})


@dataclass(frozen=True)
class Asked:
    """The answers for one post."""

    dmarc_policy: str | None  # none, quarantine, reject; None: no record, no answer, unasked
    results: str | None  # Authentication-Results for our ARC set; None without arc


def ask(raw: bytes, from_address: str, config: Config,
        mode: DmarcMode = DmarcMode.AUTO, *, cached_only: bool = False) -> Asked:
    """Ask DNS about a post (blocking: not in the event loop, not in a transaction).
    Only a list's AUTO mode needs the DMARC policy; the receiver, which does not know
    the lists yet, asks for it. With `cached_only`, the resolver's cache answers, or
    resolver.NotCached says that a name server would have to: that does not block."""
    dns = resolver.for_config(config.dns)
    if cached_only:
        dns = dns.cache_only
    domain = from_address.rpartition("@")[2]
    results = signing.inbound_results(raw, config.dkim.domain, dns) if config.dkim.arc else None
    return Asked(dmarc.policy(domain, dns) if domain and mode is DmarcMode.AUTO else None,
                 results)


def vouched(raw: bytes, from_address: str, config: Config, asked: Asked | None) -> bool:
    """Whether the post's From domain vouches for it: an aligned DKIM signature
    verifies, or a trusted MTA (`[smtp] trusted_authserv_ids`) says it passed DMARC
    (blocking, as `ask`). A trusted MTA's DMARC pass costs no lookup; our own DKIM
    results, when `arc` had them checked before the transaction, are read rather than
    checked again."""
    domain = from_address.rpartition("@")[2]
    if not domain:
        return False
    trusted = config.smtp.trusted_authserv_ids
    if trusted and authresults.dmarc_pass(
            read_headers(raw, _RESULTS)[0].get("authentication-results", []), domain, trusted):
        return True
    if asked is not None and asked.results is not None:
        return authresults.dkim_pass(asked.results, domain)
    return signing.aligned_pass(raw, domain, resolver.for_config(config.dns))


def copy_identity(mlist: MailingList, message: Message, config: Config,
                  asked: Asked | None) -> tuple[str | None, str | None]:
    """The display name of a From rewritten to the list (DMARC), and the
    Authentication-Results for our ARC set, of the list's copy of a post; asked of DNS
    here only for a post whose answers were not asked before (one a moderator
    approved, or `listserv doctor`'s test copy)."""
    if asked is None:
        asked = ask(message.raw, message.from_address, config, mlist.dmarc)
    via = (dmarc.via_name(message.from_name, message.from_address, mlist.name)
           if dmarc.rewrites_from(mlist.dmarc, message.from_address, asked.dmarc_policy)
           else None)
    return via, asked.results
