"""Destinations grouped by MX: recipient domains whose MX records name the same hosts
share one limit and one back-off; a domain whose MX is not known (no MX, a failed
lookup, not looked up yet) is its own destination; the delivery path never waits for
DNS. Against the real DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from listserv import db, resolver
from listserv.config import DnsConfig
from listserv.enums import DeliveryState
from listserv.mx_groups import MxGroups
from listserv.queue_tables import Destination, DestinationDomain
from tests.dns_server import DnsServer
from tests.helpers import LIST, SENDER, jobs, message, settled, wait_until

SHARED = ["a.example", "b.example"]  # e.g. gmail.com and googlemail.com
HOSTS = ["mx1.shared.example", "mx2.shared.example"]
GROUP = ",".join(HOSTS)  # the destination's name: its MX hosts, most preferred first
FAST = [SENDER] + [f"f{i}@example.com" for i in range(3)]
DEFERRAL = "421 4.7.0 Try again later, closing connection."


def serve_mx(dns_server: DnsServer, domains: list[str], hosts: list[str]) -> None:
    for domain in domains:
        dns_server.typed[(domain, "MX")] = [f"{10 * (i + 1)} {h}." for i, h in
                                            enumerate(hosts)]


def members_at(domains: list[str]) -> list[str]:
    return [f"{m}@{d}" for d in domains for m in ("p", "q")]


def received(sink, domain: str) -> list[str]:
    return sorted(r for r in sink.recipients() if r.endswith("@" + domain))


def answered(cache: resolver.Resolver, domain: str) -> bool:
    """Whether the resolver's cache holds an answer (or a failure) for the MX of
    `domain`: its lookup is over."""
    try:
        cache.mx(domain)
    except resolver.NotCached:
        return False
    except resolver.LookupFailed:
        pass
    return True


def test_two_domains_that_share_mx_hosts_back_off_together(
        make_server, sink, make_list, engine, cli, dns_server, config):
    serve_mx(dns_server, SHARED, HOSTS)
    make_list(LIST, members=FAST + members_at(SHARED), owner=None)
    # One transaction at a time to a destination: a.example's goes first, b.example's
    # waits for it, as it would for any other of a.example's.
    srv = make_server(delivery={"max_connections_per_domain": 1,
                                "retry_initial_seconds": 600})
    srv.send(SENDER, [LIST], message("First", sender=SENDER))
    settled(engine)
    cache = resolver.for_config(config.dns).cache_only  # the worker's, in this process
    wait_until(lambda: all(answered(cache, d) for d in SHARED), "the MX answers")
    assert cache.mx("b.example") == [(10, HOSTS[0]), (20, HOSTS[1])]

    sink.deferring["a.example"] = DEFERRAL
    srv.send(SENDER, [LIST], message("Second", sender=SENDER))
    wait_until(lambda: len(received(sink, "example.com")) == 2 * len(FAST),
               "the second post's other copies")
    with db.session(engine) as s:
        backed_off = wait_until(lambda: s.get(Destination, GROUP), "the group's back-off")
        assert backed_off.deferrals == 1 and DEFERRAL in backed_off.last_reply
        assert sorted(s.get(DestinationDomain, d).destination for d in SHARED) == [GROUP] * 2
    # b.example's copies wait with a.example's, not even tried.
    assert received(sink, "b.example") == members_at(["b.example"])  # the first post's
    assert "b.example" not in sink.deferred
    assert [j.state for j in jobs(engine) if j.domain == "b.example"][-1] != DeliveryState.DONE

    lines = cli("queue", "ls", "--by-domain").output.splitlines()
    assert lines[0] == "domain  waiting  deferred  back-off  deferrals  last reply"
    [group] = [line for line in lines if line.startswith("a.example")]
    assert group.startswith(f"a.example,b.example (mx {HOSTS[0]} +1)  4  2  until ")
    assert group.endswith(f"  1  {DEFERRAL}")
    rows = json.loads(cli("queue", "ls", "--by-domain", "--json").output)["domains"]
    [row] = [r for r in rows if r["destination"] == GROUP]
    assert (row["domains"], row["mx"], row["waiting"]) == (SHARED, HOSTS, 4)


def test_copies_go_out_while_the_mx_lookups_are_unanswered(
        make_server, sink, make_list, engine, dns_server, config, monkeypatch):
    # A name server that answers only once the copies are out, and a resolver that would
    # wait for it (a delivery path that asked DNS could not send before the answer).
    monkeypatch.setattr(resolver, "TIMEOUT", 60.0)
    serve_mx(dns_server, SHARED, HOSTS)
    dns_server.held.update(SHARED)
    members = FAST + members_at(SHARED)
    make_list(LIST, members=members, owner=None)
    srv = make_server()
    srv.send(SENDER, [LIST], message(sender=SENDER))
    done = settled(engine)
    assert {j.state for j in done} == {DeliveryState.DONE}
    assert sorted(sink.recipients()) == sorted(members)
    assert set(SHARED) <= set(dns_server.queries)  # asked, in the background

    dns_server.release()
    cache = resolver.for_config(config.dns).cache_only
    assert wait_until(lambda: answered(cache, "a.example") and cache.mx("a.example"),
                      "the MX answer, once given") == [(10, HOSTS[0]), (20, HOSTS[1])]


def test_no_mx_is_asked_with_group_by_mx_off(make_server, sink, make_list, engine,
                                             dns_server):
    serve_mx(dns_server, SHARED, HOSTS)
    members = FAST + members_at(SHARED)
    make_list(LIST, members=members, owner=None)
    srv = make_server(delivery={"group_by_mx": False})
    srv.send(SENDER, [LIST], message(sender=SENDER))
    settled(engine)
    assert sorted(sink.recipients()) == sorted(members)
    assert not set(SHARED) & set(dns_server.queries)


@pytest.fixture
def groups(dns_server: DnsServer) -> MxGroups:
    serve_mx(dns_server, SHARED, HOSTS)
    dns_server.typed[("nomx.example", "A")] = ["192.0.2.1"]  # mail goes to its A record
    dns_server.typed[("nullmx.example", "MX")] = ["0 ."]  # takes no mail (RFC 7505)
    dns_server.failing.add("broken.example")
    # A resolver of its own (new each test), as the worker's for these settings.
    return MxGroups(resolver.Resolver(DnsConfig("127.0.0.1", dns_server.port)))


def test_a_domain_whose_mx_is_not_known_is_its_own_destination(groups):
    domains = [*SHARED, "nomx.example", "nullmx.example", "broken.example",
               "nxdomain.example"]

    async def scenario() -> tuple[list[str], list[str], tuple[str, ...]]:
        before = [groups.of(d) for d in domains]  # nothing known yet: not waited for
        assert groups.resolver is not None
        cache = groups.resolver.cache_only
        while not all(answered(cache, d) for d in domains):
            await asyncio.sleep(0.02)
        return before, [groups.of(d) for d in domains], groups.group("a.example").domains

    before, after, shared = asyncio.run(scenario())
    assert before == domains
    assert after == [GROUP, GROUP, *domains[2:]]
    assert shared == tuple(SHARED)


def test_a_domain_is_its_own_destination_until_its_mx_answers(groups, dns_server):
    dns_server.held.add("a.example")

    async def scenario() -> tuple[str, str]:
        # From the cache only: it returns at once, and the name server answers after.
        # (A lookup that waited would time out first, and the failure would be cached.)
        first = groups.of("a.example")
        while "a.example" not in dns_server.queries:
            await asyncio.sleep(0.02)
        dns_server.release()
        assert groups.resolver is not None
        while not answered(groups.resolver.cache_only, "a.example"):
            await asyncio.sleep(0.02)
        return first, groups.of("a.example")

    assert asyncio.run(scenario()) == ("a.example", GROUP)
