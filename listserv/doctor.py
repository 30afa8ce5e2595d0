"""`listserv doctor LIST`: a deployment checked the way a postmaster would, from outside.

Each check asks what a member's provider will ask (DNS over the configured resolver, in
`doctor_dns`; the smarthost over SMTP, the web pages over HTTP, here) or builds what
members will get (a test copy, through the same code as fan-out, never sent), and says
what to change when the answer is wrong. Checks never raise: a DNS server that does not
answer is itself a finding.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import smtplib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.utils import format_datetime
from urllib.parse import urlsplit

import dkim

from listserv import copies, fanout, parse, signing, store, urls
from listserv.address import Purpose
from listserv.config import ConfigError
from listserv.doctor_check import Deployment, Result, Status
from listserv.doctor_dns import check_dkim, check_dmarc, check_mx, check_spf
from listserv.models import MessageKind, MessageState, Verp, utcnow

TIMEOUT = 5.0  # seconds for the smarthost and the web pages to answer
SAMPLE_MEMBER = "member@example.com"  # whose copy is composed; no mail is sent


# --- the smarthost ----------------------------------------------------------------------

_FEATURES = ("pipelining", "size", "starttls", "8bitmime")


def _greets(d: Deployment, host: str, port: int) -> tuple[bool, str]:
    """Whether one smarthost takes EHLO, and what it said."""
    try:
        with smtplib.SMTP(host, port, local_hostname=d.domain, timeout=TIMEOUT) as client:
            code, reply = client.ehlo()
            if code != 250:
                return False, (f"{host}:{port} refused EHLO: {code} "
                               f"{reply.decode('utf-8', 'replace')}")
            features = [f"{k.upper()} {client.esmtp_features[k]}".strip()
                        for k in _FEATURES if k in client.esmtp_features]
    except (OSError, smtplib.SMTPException) as exc:
        return False, f"cannot talk SMTP to {host}:{port}: {exc or type(exc).__name__}"
    return True, (f"{host}:{port} answers; EHLO offers "
                  f"{', '.join(features) or 'none of ' + ', '.join(_FEATURES).upper()}")


def check_smarthost(d: Deployment) -> Result:
    """Every copy goes out through them; a greeting and EHLO is what the server will
    see. One smarthost of several that fails is a failure too: it gets no copies."""
    name = "smarthost"
    delivery = d.config.delivery
    answers = [_greets(d, s.host, s.port) for s in delivery.smarthosts()]
    failed = [detail for ok, detail in answers if not ok]
    if not failed:
        return Result(name, Status.OK, "; ".join(detail for _, detail in answers))
    if delivery.smarthost:
        fix = "start the MTA there, or correct its [[delivery.smarthost]] entry"
    else:
        fix = (f"start the MTA on {delivery.smarthost_host}:{delivery.smarthost_port}, or "
               "set [delivery] smarthost_host and smarthost_port to the relay that sends "
               "the list's mail")
    return Result(name, Status.FAIL, "; ".join(failed), fix)


# --- the web ----------------------------------------------------------------------------

def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def check_base_url(d: Deployment) -> Result:
    """Every copy carries links under base_url: unsubscribe, archive, mute."""
    name = "base_url"
    url = d.config.web.base_url
    parts = urlsplit(url)
    problems = []
    if _loopback(parts.hostname or ""):
        problems.append("points at this machine: links in mail (unsubscribe, archive) "
                        "do not work for members")
    if parts.scheme != "https":
        problems.append("is not https: one-click unsubscribe (RFC 8058) needs https")
    if not problems:
        return Result(name, Status.OK, url)
    return Result(name, Status.WARN, f"[web] base_url {url} " + "; ".join(problems),
                  f"set [web] base_url to the https address members reach the web pages "
                  f"at (e.g. https://{d.domain}), behind a proxy that forwards to "
                  f"{d.config.web.host}:{d.config.web.port}")


def check_web(d: Deployment) -> Result:
    """The links in the copies lead there."""
    name = "web"
    url = d.config.web.base_url.rstrip("/") + "/"
    fix = (f"start `listserv serve`, or make {url} reach it (a proxy to "
           f"{d.config.web.host}:{d.config.web.port})")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return Result(name, Status.FAIL, f"GET {url}: {getattr(exc, 'reason', exc)}", fix)
    if status >= 500:
        return Result(name, Status.FAIL, f"GET {url}: HTTP {status}", fix)
    return Result(name, Status.OK, f"GET {url}: HTTP {status}")


# --- a test copy ------------------------------------------------------------------------

def sample_copy(d: Deployment) -> bytes:
    """The copy SAMPLE_MEMBER would get of a post by the list's owner address, composed
    and signed by the code fan-out and delivery use, and never sent."""
    addresses = d.addresses
    raw = (f"From: listserv doctor <{addresses.at(Purpose.OWNER)}>\r\n"
           f"To: {addresses.posting}\r\nSubject: listserv doctor test copy\r\n"
           f"Message-ID: <doctor-{uuid.uuid4().hex}@{d.domain}>\r\n"
           f"Date: {format_datetime(utcnow())}\r\n\r\nA test copy; never sent.\r\n").encode()
    parsed = parse.parse(raw)
    message = store.new_message(d.mlist, raw, parsed, kind=MessageKind.POST,
                                state=MessageState.ACCEPTED)
    copy, _ = fanout.list_copy(d.mlist, message, parsed, d.config.web.base_url,
                              config=d.config)
    verp = addresses if d.mlist.verp is Verp.ON else None
    personal = copies.Personal(copy, d.secret, d.mlist.id, None, verp,
                                signing.Signer.from_config(d.config.dkim))
    return personal.copy_for(SAMPLE_MEMBER)


def _header_problems(d: Deployment, headers: email.message.Message) -> list[str]:
    addresses = d.addresses
    base = d.config.web.base_url.rstrip("/") + "/"
    archive = urls.archive_url(d.config.web.base_url, addresses)
    unsubscribe = headers.get("List-Unsubscribe", "")
    expected = {
        "List-Id": lambda v: f"<{addresses.list_id}>" in v,
        "List-Post": lambda v: v == f"<mailto:{addresses.posting}>",
        "List-Unsubscribe": lambda v: f"<{base}unsubscribe/" in v and "<mailto:" in v,
        "List-Archive": lambda v: v == f"<{archive}>",
        "Archived-At": lambda v: v.startswith(f"<{archive}"),
        "Precedence": lambda v: v.lower() in ("list", "bulk"),
    }
    problems = [f"{field}: {headers[field]!r}" if field in headers else f"no {field}"
                for field, good in expected.items()
                if not good(" ".join(str(headers.get(field, "")).split()))]
    one_click = headers.get("List-Unsubscribe-Post", "")
    if unsubscribe.startswith("<https:") and one_click != "List-Unsubscribe=One-Click":
        problems.append("no List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    return problems


def check_copy_headers(d: Deployment) -> Result:
    """What members' clients and providers read: the list fields (RFC 2369, 2919, 5064,
    8058), their links under base_url."""
    name = "copy headers"
    try:
        data = sample_copy(d)
    except ConfigError as exc:
        return Result(name, Status.FAIL, f"cannot compose a copy: {exc}", "see the dkim check")
    headers = email.message_from_bytes(data, policy=email.policy.compat32)
    problems = _header_problems(d, headers)
    if problems:
        return Result(name, Status.FAIL, "; ".join(problems),
                      "this is a bug in listserv's list copy (or its footer template); "
                      "report it with `listserv doctor --json`")
    return Result(name, Status.OK, "List-Id, List-Post, List-Unsubscribe, List-Archive, "
                  f"Archived-At under {d.config.web.base_url}, Precedence: "
                  f"{headers['Precedence']}")


def check_copy_signature(d: Deployment) -> Result:
    """The signature checked as a member's provider checks it: dkimpy, the key from DNS."""
    name = "copy signature"
    if not d.config.dkim.enabled:
        return Result(name, Status.SKIP, "copies are not signed ([dkim] is not set)")
    try:
        data = sample_copy(d)
    except ConfigError as exc:
        return Result(name, Status.FAIL, str(exc), "see the dkim check")
    try:
        verified = dkim.verify(data, dnsfunc=signing.dnsfunc(d.resolver))
    except dkim.DnsTimeoutError as exc:
        return Result(name, Status.FAIL, f"DNS did not answer: {exc}",
                      "set [dns] nameserver (and port) to a resolver that answers")
    if not verified:
        return Result(name, Status.FAIL, "the test copy's DKIM signature does not verify "
                      "against the published key", "publish the record the dkim check shows")
    return Result(name, Status.OK, f"the test copy's signature (d={d.config.dkim.domain}, "
                  f"s={d.config.dkim.selector}) verifies against the published key")


CHECKS: tuple[Callable[[Deployment], Result], ...] = (
    check_mx, check_spf, check_dkim, check_dmarc, check_smarthost, check_base_url,
    check_web, check_copy_headers, check_copy_signature)


def run(deployment: Deployment) -> list[Result]:
    """Every check, in order; each one stands alone, so one failing says nothing of
    the next."""
    return [check(deployment) for check in CHECKS]
