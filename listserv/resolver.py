"""DNS lookups, cached: TXT (DMARC policies, DKIM keys) for the receive path, where a post
waits, and MX for the delivery worker, which groups recipient domains by their mail
servers (mx_groups.py) from the cache alone and looks up in the background.

Answers are cached for their TTL, and so are "no such name" answers (for the SOA's
negative TTL, RFC 2308), so a busy list asks once per author domain and TTL. A resolver
that does not answer costs one short timeout, and is then not asked again for that name
for FAILURE_TTL seconds: a DNS outage must not hold every post for seconds.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections import OrderedDict

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from listserv.config import DnsConfig

log = logging.getLogger("listserv.resolver")

TIMEOUT = 2.0  # seconds for one lookup, all retries included
MAX_ENTRIES = 10_000
MAX_TTL = 86_400  # a record with a longer TTL is asked again after a day all the same
NEGATIVE_TTL = 300  # for a "no such name" that came without an SOA
FAILURE_TTL = 60


class LookupFailed(Exception):
    """The resolver gave no answer (timeout, SERVFAIL): nothing is known about the name."""


class NotCached(BaseException):
    """A name the cache holds no answer for, asked of `Resolver.cache_only`. Not an
    Exception: it must pass the checks that read whatever DNS says and treat any
    Exception as the sender's fault (signing.inbound_results), up to the caller that
    then asks the network in a thread of its own."""


# How each record type is kept in the cache: a TXT record's strings joined; an MX
# record's preference and host, lower case and without the final dot ("" for the root,
# a null MX: RFC 7505).
_KEPT = {
    "TXT": lambda rdata: b"".join(rdata.strings),
    "MX": lambda rdata: f"{rdata.preference} {rdata.exchange.to_text().rstrip('.').lower()}"
                        .encode(),
}


class Resolver:
    """TXT and MX records by name, cached; safe to share between threads."""

    def __init__(self, config: DnsConfig) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[float, tuple[bytes, ...] | None]] = (
            OrderedDict())
        self._lock = threading.Lock()
        self._network = True
        try:
            self._resolver: dns.resolver.Resolver | None = dns.resolver.Resolver(
                configure=not config.nameserver)
        except dns.resolver.NoResolverConfiguration:
            log.warning("no DNS resolver configured (/etc/resolv.conf); set [dns] nameserver")
            self._resolver = None
            return
        if config.nameserver:
            self._resolver.nameservers = [config.nameserver]
            self._resolver.port = config.port
        self._resolver.lifetime = TIMEOUT

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of `name`, its strings joined; [] when there is none."""
        return self._cached(name, "TXT")

    def mx(self, name: str) -> list[tuple[int, str]]:
        """The MX records of `name` as (preference, host), most preferred first; [] when
        there is none (the domain is its own mail server, RFC 5321 5.1)."""
        records = (r.decode().split(" ", 1) for r in self._cached(name, "MX"))
        return sorted((int(preference), host) for preference, host in records)

    def _cached(self, name: str, rdtype: str) -> list[bytes]:
        key = (name.lower().rstrip("."), rdtype)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key)
                records = cached[1]
                if records is None:
                    raise LookupFailed(f"{key[0]} {rdtype}: no answer (cached)")
                return list(records)
        if not self._network:
            raise NotCached(key[0])
        try:
            ttl, found = self._ask(*key)
        except LookupFailed:
            self._store(key, now + FAILURE_TTL, None)
            raise
        self._store(key, now + ttl, found)
        return list(found)

    @functools.cached_property
    def cache_only(self) -> Resolver:
        """This resolver without the network: what its cache holds (a cached failure
        too), and NotCached for any other name. For a caller that may not wait for a
        name server, which learns so whether it would have to."""
        view = copy.copy(self)  # the same cache and lock
        view._network = False
        return view

    def records(self, name: str, rdtype: str) -> list[str]:
        """The records of any type (MX, A, AAAA) as zone-file text, asked now, not cached:
        for `listserv doctor`, which must see what DNS says at this moment."""
        if self._resolver is None:
            raise LookupFailed("no DNS resolver configured")
        try:
            answer = self._resolver.resolve(name, rdtype, search=False,
                                            raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.name.NameTooLong, dns.name.LabelTooLong,
                dns.name.EmptyLabel):
            return []
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name}: {exc}") from exc
        return [rdata.to_text() for rdata in answer.rrset or ()]

    def _store(self, key: tuple[str, str], expires: float,
               records: tuple[bytes, ...] | None) -> None:
        with self._lock:
            self._cache[key] = (expires, records)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)

    def _ask(self, name: str, rdtype: str) -> tuple[float, tuple[bytes, ...]]:
        if self._resolver is None:
            raise LookupFailed("no DNS resolver configured")
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return _negative_ttl(exc.response(exc.qnames()[0])), ()
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
            return MAX_TTL, ()  # no such name can exist
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name} {rdtype}: {exc}") from exc
        ttl = min(max(answer.expiration - time.time(), 0.0), MAX_TTL)
        if answer.rrset is None:
            return ttl, ()
        return ttl, tuple(_KEPT[rdtype](rdata) for rdata in answer.rrset)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: the lesser of the SOA's TTL and its MINIMUM field."""
    for rrset in response.authority if response is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum, MAX_TTL))
    return float(NEGATIVE_TTL)


@functools.lru_cache(maxsize=8)
def for_config(config: DnsConfig) -> Resolver:
    """The process's resolver (and so its cache) for these settings."""
    return Resolver(config)
