"""Which destination a recipient domain's copies count against, for the delivery
worker's limits (shaping.py) and back-offs (destinations.py): the MX hosts of the
domain where a lookup has answered, so that domains served by the same servers
(gmail.com and googlemail.com; the domains of one hosting provider) share one limit and
one back-off, as KumoMTA's and PowerMTA's "MX rollup" do; the domain itself where
nothing is known (no MX, a failed lookup, not looked up yet).

The delivery path never waits for DNS: the answer comes from the resolver's cache
(resolver.py: kept for the record's TTL, "no such name" and failures too), and a domain
it does not hold is looked up in the background while its copies go on as the domain's
own. An answer past its TTL is used while it is asked again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from listserv.resolver import MAX_ENTRIES, LookupFailed, NotCached, Resolver

log = logging.getLogger("listserv.deliver")

# MX lookups under way at once, in threads of their own: in the loop's default pool,
# lookups that time out during a DNS outage would hold the web pages' threads.
LOOKUPS = 4


@dataclass(frozen=True)
class Group:
    """A destination and the recipient domains known to go to it."""

    name: str  # the MX hosts, most preferred first, joined by ","; or the domain
    domains: tuple[str, ...]


def name_of(domain: str, mx: list[tuple[int, str]]) -> str:
    """The destination of `domain` given its MX records (most preferred first): its
    hosts, or the domain itself when it names none (no MX; a null MX, RFC 7505)."""
    hosts = list(dict.fromkeys(host for _, host in mx if host))
    return ",".join(hosts) or domain


def hosts(group: Group) -> list[str]:
    """The MX hosts a group is named after; [] for a domain that is its own."""
    return [] if group.domains == (group.name,) else group.name.split(",")


class MxGroups:
    """The destinations of one delivery worker's domains (resolver None: every domain
    is its own, `[delivery] group_by_mx = false`). Used from the event loop only."""

    def __init__(self, resolver: Resolver | None) -> None:
        self.resolver = resolver
        # domain -> destination, as last answered: a domain's group, and what it stays
        # while its answer is asked again; and each destination's domains.
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._domains: defaultdict[str, set[str]] = defaultdict(set)
        self._asking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads = ThreadPoolExecutor(max_workers=LOOKUPS, thread_name_prefix="mx-dns")

    def of(self, domain: str) -> str:
        """The destination of `domain` now, from the cache alone; a domain the cache
        does not hold is looked up in the background meanwhile."""
        if self.resolver is None or not domain:
            return domain
        try:
            name = name_of(domain, self.resolver.cache_only.mx(domain))
        except NotCached:
            self._look_up(domain)
            return self._seen.get(domain, domain)
        except LookupFailed:
            name = domain
        self._remember(domain, name)
        return name

    def group(self, domain: str) -> Group:
        """The destination of `domain` with every domain known to share it."""
        name = self.of(domain)
        return Group(name, tuple(sorted(self._domains[name] | {domain})))

    def close(self) -> None:
        """Stop the lookups under way (the worker is stopping)."""
        for task in self._tasks:
            task.cancel()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _remember(self, domain: str, name: str) -> None:
        before = self._seen.get(domain)
        if before != name:
            self._forget(domain, before)
            self._domains[name].add(domain)
        self._seen[domain] = name
        self._seen.move_to_end(domain)
        while len(self._seen) > MAX_ENTRIES:
            self._forget(*self._seen.popitem(last=False))

    def _forget(self, domain: str, name: str | None) -> None:
        if name is not None:
            self._domains[name].discard(domain)
            if not self._domains[name]:
                del self._domains[name]

    def _look_up(self, domain: str) -> None:
        if domain in self._asking:
            return
        self._asking.add(domain)
        task = asyncio.get_running_loop().create_task(self._ask(domain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, domain: str) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, self._resolve,
                                                             domain)
            self.of(domain)  # remembered as one of its group's domains
        finally:
            self._asking.discard(domain)

    def _resolve(self, domain: str) -> None:
        assert self.resolver is not None
        try:
            self.resolver.mx(domain)  # cached, a failure too (resolver.FAILURE_TTL)
        except LookupFailed as exc:
            # Debug only: in a DNS outage, every domain's lookup fails each minute.
            log.debug("no MX answer for %s (%s): its copies are shaped as its own", domain,
                      exc)
