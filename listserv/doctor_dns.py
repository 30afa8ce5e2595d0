"""The `listserv doctor` checks that ask DNS, over the resolver the server uses, what
a member's provider will ask: where mail to the list goes (MX), which hosts may send
as its domain (SPF, its includes followed), the list's DKIM key, and the DMARC policy
copies From the list are judged by. A DNS server that does not answer is a finding.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import dkim

from listserv import dmarc, signing
from listserv.address import Purpose
from listserv.config import ConfigError
from listserv.doctor_check import Deployment, Result, Status
from listserv.resolver import LookupFailed, Resolver


def _dns_failed(check: str, exc: LookupFailed, deployment: Deployment) -> Result:
    dns = deployment.config.dns
    server = f"{dns.nameserver}:{dns.port}" if dns.nameserver else "the system's resolver"
    return Result(check, Status.FAIL, f"DNS did not answer ({exc}); asked {server}",
                  "set [dns] nameserver (and port) to a resolver that answers")


# --- MX ---------------------------------------------------------------------------------

def _addresses(resolver: Resolver, host: str) -> list[str]:
    return resolver.records(host, "A") + resolver.records(host, "AAAA")


def check_mx(d: Deployment) -> Result:
    """Where the members' replies and the bounces (LIST-bounces@domain) are delivered."""
    name = "mx"
    try:
        records = d.resolver.records(d.domain, "MX")
        if not records:
            if _addresses(d.resolver, d.domain):
                return Result(name, Status.WARN,
                              f"no MX record for {d.domain}: mail goes to its A/AAAA "
                              "record (RFC 5321 §5.1)",
                              f"publish {d.domain}. IN MX 10 <the host that receives "
                              "the list's mail>.")
            return Result(name, Status.FAIL,
                          f"no MX, A or AAAA record for {d.domain}: no mail to the list "
                          "or its bounce address can be delivered",
                          f"publish {d.domain}. IN MX 10 <the host that receives the "
                          "list's mail>.")
        hosts = sorted((int(pref), host.rstrip(".")) for pref, host in
                       (r.split() for r in records))
        if any(host == "" for _, host in hosts):
            return Result(name, Status.FAIL,
                          f"{d.domain} publishes a null MX (RFC 7505): it accepts no mail",
                          f"replace it with {d.domain}. IN MX 10 <the host that receives "
                          "the list's mail>.")
        missing = [host for _, host in hosts if not _addresses(d.resolver, host)]
    except LookupFailed as exc:
        return _dns_failed(name, exc, d)
    shown = ", ".join(f"{pref} {host}" for pref, host in hosts)
    if missing:
        return Result(name, Status.FAIL, f"MX {shown}; no A/AAAA record for "
                      f"{', '.join(missing)}",
                      f"publish an A (or AAAA) record for {', '.join(missing)}, or remove "
                      "that MX record")
    return Result(name, Status.OK, f"MX {shown}")


# --- SPF --------------------------------------------------------------------------------

_SPF_TERM = re.compile(
    r"[+\-~?]?(all|include:\S+|exists:\S+|ptr(:\S+)?|ip4:\S+|ip6:\S+"
    r"|(a|mx)(:[^/\s]+)?(/\d{1,2})?(//\d{1,3})?)"
    r"|[A-Za-z][A-Za-z0-9_.-]*=\S*", re.IGNORECASE)  # a modifier: redirect=, exp=, ...


def _spf_errors(terms: list[str]) -> list[str]:
    bad = [t for t in terms if not _SPF_TERM.fullmatch(t)]
    for term in terms:
        kind, _, net = term.lstrip("+-~?").partition(":")
        if kind.lower() in ("ip4", "ip6"):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                bad.append(term)
    return bad


def _smarthost_term(terms: list[str], smarthost: str) -> str | None:
    """The term of one record that names the smarthost: an address in an ip4:/ip6:
    range, or a host named in a:. mx is not followed (the smarthost may not be the host
    that receives the list's mail), nor are macros."""
    try:
        address = ipaddress.ip_address(smarthost)
    except ValueError:
        address = None
    for term in terms:
        kind, _, value = term.lstrip("+-~?").partition(":")
        kind = kind.lower()
        if address is not None and kind in ("ip4", "ip6"):
            network = ipaddress.ip_network(value, strict=False)
            if address.version == network.version and address in network:
                return term
        if kind == "a" and value.partition("/")[0].lower() == smarthost.lower():
            return term
    return None


# RFC 7208 §4.6.4: a record whose evaluation needs more DNS lookups than this is a
# permanent error, and receivers treat the mail as if it had no SPF at all.
SPF_LOOKUP_LIMIT = 10
_SPF_LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")


def _spf_records(resolver: Resolver, domain: str) -> list[str]:
    records = [r.decode("ascii", "replace") for r in resolver.txt(domain)]
    return [r for r in records if re.match(r"v=spf1(\s|$)", r, re.IGNORECASE)]


@dataclass
class SpfTree:
    """A domain's SPF record with every include: and redirect= it names, followed as a
    receiver follows them: how many DNS lookups it costs, which records it reached
    (domain, terms), and what makes it a permanent error."""

    lookups: int = 0
    records: list[tuple[str, list[str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def follow(self, resolver: Resolver, domain: str, terms: list[str],
               path: tuple[str, ...] = ()) -> None:
        self.records.append((domain, terms))
        path = (*path, domain.lower())
        has_all = any(t.lstrip("+-~?").lower() == "all" for t in terms)
        for term in terms:
            kind, sep, value = term.lstrip("+-~?").partition("=" if "=" in term else ":")
            kind = kind.lower()
            if kind in _SPF_LOOKUP_TERMS:
                self.lookups += 1
            if kind == "redirect" and has_all:
                continue  # ignored beside an all mechanism (RFC 7208 §6.1)
            if kind in ("include", "redirect") and sep and "%" not in value:
                self._include(resolver, value.rstrip(".").lower(), path)

    def _include(self, resolver: Resolver, domain: str, path: tuple[str, ...]) -> None:
        if domain in path:
            self.errors.append(f"{domain} includes itself ({' > '.join((*path, domain))})")
            return
        if self.lookups > SPF_LOOKUP_LIMIT:
            return  # already a permanent error; no need to ask further
        spf = _spf_records(resolver, domain)
        if len(spf) != 1:
            self.errors.append(f"{domain} (named by {path[-1]}) has "
                               f"{'no' if not spf else len(spf)} SPF records")
            return
        terms = spf[0].split()[1:]
        bad = _spf_errors(terms)
        if bad:
            self.errors.append(f'"{spf[0]}" of {domain} does not parse: {", ".join(bad)}')
            return
        self.follow(resolver, domain, terms, path)

    def smarthost_listed(self, smarthost: str) -> str | None:
        """Where the smarthost is listed: the term, and the record it is in when that is
        an included one."""
        for i, (domain, terms) in enumerate(self.records):
            term = _smarthost_term(terms, smarthost)
            if term:
                return term if i == 0 else f"{term} in the record of {domain}"
        return None


def _spf_suggestion(d: Deployment) -> str:
    host = d.config.delivery.smarthost_host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    sender = "ip4:<the address this host sends from>" if loopback else f"a:{host}"
    return f'publish {d.domain}. IN TXT "v=spf1 mx {sender} ~all"'


def check_spf(d: Deployment) -> Result:
    """The envelope sender is LIST-bounces@domain: SPF of that domain is what receivers
    check, and with DMARC what aligns for copies From the list."""
    name = "spf"
    try:
        spf = _spf_records(d.resolver, d.domain)
    except LookupFailed as exc:
        return _dns_failed(name, exc, d)
    sender = d.addresses.at(Purpose.BOUNCES)
    if not spf:
        return Result(name, Status.FAIL, f"no SPF record on {d.domain} (the envelope sender "
                      f"{sender})", _spf_suggestion(d))
    if len(spf) > 1:
        return Result(name, Status.FAIL, f"{len(spf)} SPF records on {d.domain}: receivers "
                      "treat that as a permanent error (RFC 7208 §4.5)",
                      "merge them into one TXT record")
    terms = spf[0].split()[1:]
    bad = _spf_errors(terms)
    if bad:
        return Result(name, Status.FAIL, f'"{spf[0]}" does not parse: {", ".join(bad)}',
                      f"fix those terms in the TXT record of {d.domain}")
    tree = SpfTree()
    try:
        tree.follow(d.resolver, d.domain, terms)
    except LookupFailed as exc:
        return _dns_failed(name, exc, d)
    if tree.errors:
        return Result(name, Status.FAIL, f'"{spf[0]}": {"; ".join(tree.errors)}: receivers '
                      "treat that as a permanent error (RFC 7208 §5.2)",
                      "fix or remove those include: (or redirect=) terms")
    if tree.lookups > SPF_LOOKUP_LIMIT:
        return Result(name, Status.FAIL, f'"{spf[0]}" needs more than {SPF_LOOKUP_LIMIT} DNS '
                      f"lookups with its includes ({tree.lookups} counted before stopping): "
                      "receivers treat that as a permanent error (RFC 7208 §4.6.4)",
                      "replace some include: terms by the ip4:/ip6: ranges they list")
    last = terms[-1].lower() if terms else ""
    redirect = any(t.lower().startswith("redirect=") for t in terms)
    smarthost = d.config.delivery.smarthost_host
    listed = tree.smarthost_listed(smarthost)
    cover = (f"the smarthost {smarthost} is listed ({listed})" if listed else
             "cannot verify which host sends: make sure the record lists the host that "
             "hands the list's mail to the members' providers")
    detail = f'"{spf[0]}"; {cover}'
    if last in ("-all", "~all") or (redirect and not last.endswith("all")):
        return Result(name, Status.OK, detail)
    if last in ("+all", "all"):
        return Result(name, Status.WARN, f"{detail}; +all lets any host send as {d.domain}",
                      f"end the TXT record of {d.domain} with ~all (or -all)")
    return Result(name, Status.WARN, f"{detail}; it does not end with ~all or -all, so "
                  "unlisted hosts pass as neutral", f"end the TXT record of {d.domain} with "
                  "~all (or -all)")


# --- DKIM -------------------------------------------------------------------------------

def _dkim_tags(record: bytes) -> dict[bytes, bytes]:
    try:
        return dict(dkim.util.parse_tag_value(re.sub(rb"\s+", b"", record)))
    except dkim.util.InvalidTagValueList:
        return {}


def check_dkim(d: Deployment) -> Result:
    """Copies are changed (subject tag, footer), so the author's signature breaks: the
    list's own signature is what vouches for them."""
    name = "dkim"
    config = d.config.dkim
    if not config.enabled:
        return Result(name, Status.WARN, "[dkim] is not set: copies go out unsigned",
                      f"run `listserv dkim keygen {d.domain}`, publish the record it prints "
                      "and set [dkim] domain, selector and private_key_file")
    try:
        signer = signing.Signer.from_config(config)
    except ConfigError as exc:
        return Result(name, Status.FAIL, str(exc),
                      "set [dkim] private_key_file to the key `listserv dkim keygen` wrote")
    assert signer is not None
    public = signer.key.public_key()
    record_name = f"{config.selector}._domainkey.{config.domain}"
    publish = f"publish {signing.dns_record(config.domain, config.selector, public)}"
    try:
        records = d.resolver.txt(record_name)
    except LookupFailed as exc:
        return _dns_failed(name, exc, d)
    if not records:
        return Result(name, Status.FAIL, f"no DKIM record at {record_name}", publish)
    published = _dkim_tags(records[0]).get(b"p", b"").decode("ascii", "replace")
    if published != signing.public_key_text(public):
        why = "is revoked (empty p=)" if not published else "is not the one in"
        return Result(name, Status.FAIL, f"the key at {record_name} {why} "
                      f"[dkim] private_key_file {config.private_key_file}",
                      f"{publish} (or set private_key_file to the key it was made from)")
    return Result(name, Status.OK, f"{record_name} publishes the key of "
                  f"{config.private_key_file}")


# --- DMARC ------------------------------------------------------------------------------

def check_dmarc(d: Deployment) -> Result:
    """Copies From the list (DMARC mitigation) are judged by the list domain's policy."""
    name = "dmarc"
    try:
        record = dmarc.lookup(d.domain, d.resolver)
    except LookupFailed as exc:
        return _dns_failed(name, exc, d)
    org = dmarc.organizational_domain(d.domain)
    if record is None:
        return Result(name, Status.WARN, f"no DMARC record at _dmarc.{d.domain}"
                      + (f" or _dmarc.{org}" if org != d.domain else ""),
                      f'publish _dmarc.{d.domain}. IN TXT "v=DMARC1; p=none; '
                      f'rua=mailto:postmaster@{org}"')
    key = "sp" if record.inherited and "sp" in record.tags else "p"
    value = record.tags.get(key, "").lower()
    if value not in dmarc.POLICIES:
        return Result(name, Status.FAIL, f"{record.name}: {key}={value or '(missing)'} is not "
                      "none, quarantine or reject", f"set {key}= in the record at {record.name}")
    detail = f"{record.name}: {key}={value}"
    signer = d.config.dkim.domain if d.config.dkim.enabled else ""
    if value in dmarc.STRICT and dmarc.organizational_domain(signer or ".") != org:
        return Result(name, Status.WARN, f"{detail}, and no DKIM signature of {org} vouches "
                      "for copies From the list (DMARC mitigation): only SPF can pass them",
                      f"set [dkim] domain = \"{d.domain}\" (with `listserv dkim keygen "
                      f"{d.domain}`)")
    return Result(name, Status.OK, detail)

