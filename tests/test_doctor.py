"""`listserv doctor LIST` against a real deployment on loopback: the zone served by the
test's DNS server, the smarthost a real aiosmtpd (or a closed port), the web pages a
running `listserv serve`, and the console script as an admin runs it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from listserv import doctor, doctor_check, doctor_dns, signing
from listserv.config import Config, DeliveryConfig, DkimConfig, SmarthostConfig, WebConfig
from listserv.resolver import Resolver
from tests.helpers import assert_one_line_error, published, run_listserv

LIST = "dev@lists.example.org"
DOMAIN = "lists.example.org"
SPF = "v=spf1 mx ip4:127.0.0.0/8 -all"
DMARC = "v=DMARC1; p=reject; rua=mailto:postmaster@example.org"


def healthy_zone(dns_server, key: signing.NewKey | None = None) -> None:
    dns_server.typed[(DOMAIN, "MX")] = [f"10 mx.{DOMAIN}."]
    dns_server.typed[(f"mx.{DOMAIN}", "A")] = ["127.0.0.1"]
    dns_server.records[DOMAIN] = [SPF, "google-site-verification=abc"]
    dns_server.records[f"_dmarc.{DOMAIN}"] = [DMARC]
    if key is not None:
        name, text = published(key.record)
        dns_server.records[name] = [text]


@pytest.fixture
def key(tmp_path: Path) -> signing.NewKey:
    return signing.keygen(DOMAIN, "listserv", tmp_path)


def with_dkim(config: Config, key: signing.NewKey) -> Config:
    return dataclasses.replace(config, dkim=DkimConfig(
        domain=DOMAIN, selector="listserv", private_key_file=str(key.private_file)))


def toml(config: Config) -> str:
    """The config file an admin would write for these settings."""
    lines = []
    for section in ("database", "delivery", "web", "dns", "dkim"):
        lines.append(f"[{section}]")
        for name, value in dataclasses.asdict(getattr(config, section)).items():
            lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def doctor_json(tmp_path: Path, config: Config, *args: str):
    path = tmp_path / "listserv.toml"
    path.write_text(toml(config), encoding="utf-8")
    proc = run_listserv("--config", path, "doctor", LIST, "--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, {r["check"]: r for r in json.loads(proc.stdout)}


@pytest.fixture
def mlist(make_list):
    return make_list(owner=None)


def check(config: Config, mlist, which):
    """One check on its own."""
    return which(doctor_check.Deployment(config, mlist, Resolver(config.dns), "test-secret"))


# --- the whole deployment, through the console script ----------------------------------

def test_a_healthy_deployment_passes_and_exits_0(tmp_path, make_server, make_list, config,
                                                 dns_server, sink, key):
    healthy_zone(dns_server, key)
    sink.pipelining = True
    make_list()
    served = make_server(dkim=dataclasses.asdict(with_dkim(config, key).dkim))
    proc, results = doctor_json(tmp_path, served.config)  # the web pages answer
    assert proc.returncode == 0, proc.stdout
    assert list(results) == ["mx", "spf", "dkim", "dmarc", "smarthost", "base_url", "web",
                             "copy headers", "copy signature"]
    # base_url is the test's http://127.0.0.1:port: the one thing a real list must change.
    assert {c: r["status"] for c, r in results.items() if r["status"] != "ok"} == {
        "base_url": "warn"}
    assert results["mx"]["detail"] == f"MX 10 mx.{DOMAIN}"
    assert "ip4:127.0.0.0/8" in results["spf"]["detail"]  # the smarthost 127.0.0.1 is listed
    assert "p=reject" in results["dmarc"]["detail"]
    assert "PIPELINING" in results["smarthost"]["detail"]
    assert "verifies" in results["copy signature"]["detail"]
    assert all(r["fix"] == "" for c, r in results.items() if c != "base_url")
    assert "listserv._domainkey.lists.example.org" in dns_server.queries


def test_a_broken_deployment_says_what_to_fix_and_exits_1(tmp_path, make_list, config,
                                                          dns_server, key, closed_port):
    healthy_zone(dns_server)
    del dns_server.records[DOMAIN]  # no SPF
    del dns_server.records[f"_dmarc.{DOMAIN}"]
    other = signing.keygen(DOMAIN, "old", tmp_path)  # a key that is not the configured one
    dns_server.records[f"listserv._domainkey.{DOMAIN}"] = [published(other.record)[1]]
    make_list()
    config = dataclasses.replace(
        with_dkim(config, key),
        delivery=DeliveryConfig(smarthost_host="127.0.0.1", smarthost_port=closed_port))
    proc, results = doctor_json(tmp_path, config)
    assert proc.returncode == 1
    status = {c: r["status"] for c, r in results.items()}
    assert status == {"mx": "ok", "spf": "fail", "dkim": "fail", "dmarc": "warn",
                      "smarthost": "fail", "base_url": "warn", "web": "fail",
                      "copy headers": "ok", "copy signature": "fail"}
    assert f'publish {DOMAIN}. IN TXT "v=spf1' in results["spf"]["fix"]
    assert "LIST-bounces" not in results["spf"]["detail"]
    assert "dev-bounces@lists.example.org" in results["spf"]["detail"]
    # The record to publish is the configured key's, as keygen printed it.
    assert results["dkim"]["fix"].startswith(f"publish {key.record}")
    assert "is not the one in" in results["dkim"]["detail"]
    assert (f'publish _dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=none; '
            'rua=mailto:postmaster@example.org"') == results["dmarc"]["fix"]
    port = config.delivery.smarthost_port
    assert f"127.0.0.1:{port}" in results["smarthost"]["detail"]
    assert "[delivery] smarthost_host and smarthost_port" in results["smarthost"]["fix"]
    assert "does not verify" in results["copy signature"]["detail"]
    assert all(r["fix"] for r in results.values() if r["status"] in ("fail", "warn"))


def test_text_output_is_one_line_per_check_with_a_fix_under_each_failure(
        tmp_path, make_list, config, dns_server):
    make_list()
    path = tmp_path / "listserv.toml"
    path.write_text(toml(config), encoding="utf-8")
    proc = run_listserv("--config", path, "doctor", LIST)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    checks = [line for line in lines if not line.startswith(" ")]
    assert [line.split()[0] for line in checks] == [
        "FAIL", "FAIL", "WARN", "WARN", "OK", "WARN", "FAIL", "OK", "SKIP"]
    assert checks[0].startswith(f"FAIL  mx: no MX, A or AAAA record for {DOMAIN}")
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith(("FAIL", "WARN")):
            assert after.startswith("      fix: "), line
    assert f"fix: run `listserv dkim keygen {DOMAIN}`" in proc.stdout


def test_an_unknown_list_is_a_one_line_error(tmp_path, make_list, config):
    make_list()
    path = tmp_path / "listserv.toml"
    path.write_text(toml(config), encoding="utf-8")
    assert_one_line_error(run_listserv("--config", path, "doctor", "nope@example.org"),
                          "no list nope@example.org")


# --- each check -------------------------------------------------------------------------

def test_smarthost_reports_its_ehlo_features(config, mlist, sink):
    sink.pipelining = True
    result = check(config, mlist, doctor.check_smarthost)
    assert result.status is doctor_check.Status.OK
    assert f"127.0.0.1:{sink.port} answers" in result.detail
    assert "PIPELINING" in result.detail and "SIZE" in result.detail


def test_smarthost_on_a_closed_port_fails(config, mlist, closed_port):
    port = closed_port
    closed = dataclasses.replace(config, delivery=DeliveryConfig(smarthost_port=port))
    result = check(closed, mlist, doctor.check_smarthost)
    assert result.status is doctor_check.Status.FAIL
    assert f"cannot talk SMTP to 127.0.0.1:{port}" in result.detail
    assert "smarthost_port" in result.fix


def test_each_of_several_smarthosts_is_checked(config, mlist, sink, closed_port):
    several = DeliveryConfig(smarthost=[SmarthostConfig("127.0.0.1", sink.port),
                                        SmarthostConfig("127.0.0.1", closed_port)])
    result = check(dataclasses.replace(config, delivery=several), mlist,
                   doctor.check_smarthost)
    assert result.status is doctor.Status.FAIL
    assert result.detail.startswith(f"cannot talk SMTP to 127.0.0.1:{closed_port}: ")
    assert f"127.0.0.1:{sink.port}" not in result.detail  # the one that works
    assert "[[delivery.smarthost]]" in result.fix


@pytest.mark.parametrize(("typed", "status", "said"), [
    ({}, "fail", "no MX, A or AAAA record"),
    ({(DOMAIN, "A"): ["192.0.2.1"]}, "warn", "mail goes to its A/AAAA record"),
    ({(DOMAIN, "MX"): [f"10 mx.{DOMAIN}."]}, "fail", f"no A/AAAA record for mx.{DOMAIN}"),
    ({(DOMAIN, "MX"): ["0 ."]}, "fail", "null MX"),
    ({(DOMAIN, "MX"): [f"20 mx2.{DOMAIN}.", f"10 mx.{DOMAIN}."],
      (f"mx.{DOMAIN}", "AAAA"): ["2001:db8::1"], (f"mx2.{DOMAIN}", "A"): ["192.0.2.2"]},
     "ok", f"MX 10 mx.{DOMAIN}, 20 mx2.{DOMAIN}"),
])
def test_mx(config, mlist, dns_server, typed, status, said):
    dns_server.typed.update(typed)
    result = check(config, mlist, doctor_dns.check_mx)
    assert (result.status, said in result.detail) == (status, True), result
    assert bool(result.fix) == (status != "ok")


@pytest.mark.parametrize(("records", "status", "said"), [
    ([SPF, "v=spf1 -all"], "fail", "2 SPF records"),
    (["v=spf1 ip4:300.1.1.1 -all"], "fail", "does not parse: ip4:300.1.1.1"),
    (["v=spf1 mx frobnicate -all"], "fail", "does not parse: frobnicate"),
    (["v=spf1 mx +all"], "warn", "+all lets any host send"),
    (["v=spf1 mx"], "warn", "does not end with ~all or -all"),
    (["v=spf1 include:_spf.example.net ~all"], "ok", "cannot verify which host sends"),
    (["v=spf1 redirect=_spf.example.net"], "ok", "cannot verify which host sends"),
    (["v=spf1 ip6:2001:db8::/32 a:127.0.0.1 -all"], "ok", "is listed (a:127.0.0.1)"),
    # include: and redirect= are followed as a receiver follows them
    (["v=spf1 include:relay.example.net -all"], "ok",
     "is listed (ip4:127.0.0.0/8 in the record of relay.example.net)"),
    (["v=spf1 redirect=relay.example.net"], "ok", "in the record of relay.example.net"),
    (["v=spf1 include:nothing.example.net -all"], "fail",
     f"nothing.example.net (named by {DOMAIN}) has no SPF records"),
    (["v=spf1 include:loop.example.net -all"], "fail",
     f"{DOMAIN} includes itself ({DOMAIN} > loop.example.net > {DOMAIN})"),
    (["v=spf1 include:broken.example.net -all"], "fail",
     '"v=spf1 ip4:1.2.3 -all" of broken.example.net does not parse: ip4:1.2.3'),
    (["v=spf1 mx a include:wide.example.net -all"], "fail",
     "needs more than 10 DNS lookups with its includes (11 counted"),
    # a redirect= beside all is not used, and so not counted or searched
    (["v=spf1 redirect=relay.example.net -all"], "ok", "cannot verify which host sends"),
])
def test_spf(config, mlist, dns_server, records, status, said):
    dns_server.records.update({
        "_spf.example.net": ["v=spf1 ip4:192.0.2.0/24 -all"],
        "relay.example.net": ["v=spf1 ip4:127.0.0.0/8 -all"],
        "loop.example.net": [f"v=spf1 include:{DOMAIN} -all"],
        "broken.example.net": ["v=spf1 ip4:1.2.3 -all"],
        "wide.example.net": ["v=spf1 " + " ".join(f"a:h{i}.example.net" for i in range(7))
                             + " include:_spf.example.net -all"],
        DOMAIN: records})
    result = check(config, mlist, doctor_dns.check_spf)
    assert (result.status, said in result.detail) == (status, True), result
    assert bool(result.fix) == (status != "ok")


def test_dmarc_falls_back_to_the_organisational_domain(config, mlist, dns_server):
    dns_server.records["_dmarc.example.org"] = ["v=DMARC1; p=reject; sp=none"]
    result = check(config, mlist, doctor_dns.check_dmarc)
    assert (result.status, result.detail) == (doctor_check.Status.OK,
                                              "_dmarc.example.org: sp=none")


def test_a_strict_dmarc_policy_without_a_list_signature_warns(config, mlist, dns_server):
    dns_server.records[f"_dmarc.{DOMAIN}"] = [DMARC]
    result = check(config, mlist, doctor_dns.check_dmarc)
    assert result.status is doctor_check.Status.WARN and "only SPF can pass them" in result.detail
    assert result.fix.startswith(f'set [dkim] domain = "{DOMAIN}"')


def test_dmarc_without_a_valid_policy_fails(config, mlist, dns_server):
    dns_server.records[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; rua=mailto:x@example.org"]
    result = check(config, mlist, doctor_dns.check_dmarc)
    assert result.status is doctor_check.Status.FAIL and "p=(missing)" in result.detail


def test_dkim_without_a_record_fails_with_the_record_to_publish(config, mlist, key):
    result = check(with_dkim(config, key), mlist, doctor_dns.check_dkim)
    assert result.status is doctor_check.Status.FAIL
    assert result.detail == f"no DKIM record at listserv._domainkey.{DOMAIN}"
    assert result.fix == f"publish {key.record}"


def test_dkim_with_an_unreadable_key_file_fails(config, mlist, key, tmp_path):
    broken = dataclasses.replace(key, private_file=tmp_path / "missing.key")
    result = check(with_dkim(config, broken), mlist, doctor_dns.check_dkim)
    assert result.status is doctor_check.Status.FAIL and "missing.key" in result.detail


def test_a_public_https_base_url_passes(config, mlist):
    public = dataclasses.replace(config, web=WebConfig(base_url=f"https://{DOMAIN}"))
    assert check(public, mlist, doctor.check_base_url).status is doctor_check.Status.OK
    headers = check(public, mlist, doctor.check_copy_headers)
    assert headers.status is doctor_check.Status.OK and f"https://{DOMAIN}" in headers.detail


def test_a_dns_server_that_does_not_answer_is_a_failure_naming_dns(config, mlist,
                                                                    dns_server):
    dns_server.close()
    result = check(config, mlist, doctor_dns.check_mx)
    assert result.status is doctor_check.Status.FAIL
    assert "DNS did not answer" in result.detail and "[dns] nameserver" in result.fix
