"""DMARC mitigation end to end: posts go in over SMTP from authors whose domains publish
policies on a DNS server of the test's own (loopback UDP), and the copies' From,
Reply-To and Cc say what a member's mail program will show."""

from __future__ import annotations

import email
import email.policy
from email.header import decode_header, make_header

import pytest

from listserv import db, dmarc, list_settings, roster
from listserv.roster import UserError
from tests.helpers import free_port, message

LIST = "dev@lists.example.org"
READER = "reader@example.net"


def copy_for(sink, rcpt: str) -> email.message.Message:
    return email.message_from_bytes(sink.copies_to(rcpt)[0], policy=email.policy.compat32)


def set_list(engine, key: str, value: str) -> None:
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        list_settings.set_setting(mlist, key, value)
        s.add(mlist)
        s.commit()


def post(running, sink, author: str, name: str = "Alice", **headers: str
         ) -> email.message.Message:
    sender = f"{name} <{author}>" if name else author
    running.send(author, [LIST], message(sender=sender, headers=headers))
    return copy_for(sink, READER)


@pytest.mark.parametrize("record", ["v=DMARC1; p=reject", "v=DMARC1; p=quarantine; pct=100"])
def test_strict_policy_sends_the_copy_from_the_list_with_the_author_in_reply_to(
        running, make_list, sink, dns_server, record):
    dns_server.records["_dmarc.strict.example"] = [record]
    make_list(members=["alice@strict.example", READER], owner=None)
    copy = post(running, sink, "alice@strict.example")
    assert copy["From"] == '"Alice via Dev" <dev@lists.example.org>'
    assert copy["Reply-To"].strip() == "Alice <alice@strict.example>"
    assert copy["Subject"] == "[Dev] Hello"


@pytest.mark.parametrize("records", [["v=DMARC1; p=none; rua=mailto:d@lax.example"], [],
                                     ["v=spf1 -all"]])
def test_no_strict_policy_leaves_from_alone(running, make_list, sink, dns_server, records):
    if records:
        dns_server.records["_dmarc.lax.example"] = records
    make_list(members=["alice@lax.example", READER], owner=None)
    copy = post(running, sink, "alice@lax.example")
    assert copy["From"] == "Alice <alice@lax.example>"
    assert copy["Reply-To"] is None


def test_a_subdomain_takes_its_organisations_policy(running, make_list, sink, dns_server):
    """No record at news.parent.example: the organisational domain's sp= applies."""
    dns_server.records["_dmarc.parent.example"] = ["v=DMARC1; p=none; sp=reject"]
    make_list(members=["alice@news.parent.example", "bob@parent.example", READER],
              owner=None)
    copy = post(running, sink, "alice@news.parent.example")
    assert copy["From"] == '"Alice via Dev" <dev@lists.example.org>'
    sink.received.clear()
    copy = post(running, sink, "bob@parent.example", name="Bob")
    assert copy["From"] == "Bob <bob@parent.example>"  # p=none for the domain itself
    assert "_dmarc.news.parent.example" in dns_server.queries


def test_a_domains_own_record_wins_over_its_organisations(running, make_list, sink,
                                                          dns_server):
    dns_server.records["_dmarc.parent.example"] = ["v=DMARC1; p=reject"]
    dns_server.records["_dmarc.news.parent.example"] = ["v=DMARC1; p=none"]
    make_list(members=["alice@news.parent.example", READER], owner=None)
    assert post(running, sink, "alice@news.parent.example")["From"] == (
        "Alice <alice@news.parent.example>")


@pytest.mark.parametrize("domain, organisation", [
    ("example.com", "example.com"),
    ("a.b.example.com", "example.com"),
    ("mail.corp.co.uk", "corp.co.uk"),
    ("shop.example.com.au", "example.com.au"),
    ("news.parent.example", "parent.example"),  # a TLD the list does not know
])
def test_organisational_domain_is_one_label_below_the_public_suffix(domain, organisation):
    assert dmarc.organizational_domain(domain) == organisation


def test_with_reply_to_list_the_author_goes_to_cc(running, make_list, sink, dns_server,
                                                  engine):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["alice@strict.example", READER], owner=None)
    set_list(engine, "reply_to", "list")
    copy = post(running, sink, "alice@strict.example", Cc="carol@example.org")
    assert copy["From"] == '"Alice via Dev" <dev@lists.example.org>'
    assert copy["Reply-To"] == LIST
    cc = [a.strip() for a in copy["Cc"].replace("\r\n", "").split(",")]
    assert cc == ["carol@example.org", "Alice <alice@strict.example>"]


def test_an_authors_own_reply_to_stays(running, make_list, sink, dns_server):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["alice@strict.example", READER], owner=None)
    copy = post(running, sink, "alice@strict.example", **{"Reply-To": "team@strict.example"})
    assert copy["From"] == '"Alice via Dev" <dev@lists.example.org>'
    assert copy.get_all("Reply-To") == ["team@strict.example"]


def test_a_non_ascii_name_is_encoded(running, make_list, sink, dns_server):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["zoe@strict.example", READER], owner=None)
    sender = "=?utf-8?q?Zo=C3=AB?= <zoe@strict.example>"
    running.send("zoe@strict.example", [LIST], message(sender=sender))
    copy = copy_for(sink, READER)
    assert copy["From"].isascii()
    assert str(make_header(decode_header(copy["From"]))) == "Zoë via Dev <dev@lists.example.org>"
    assert copy["Reply-To"].strip() == sender


def test_an_author_without_a_name_is_named_by_address(running, make_list, sink, dns_server):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["alice@strict.example", READER], owner=None)
    copy = post(running, sink, "alice@strict.example", name="")
    assert copy["From"] == '"alice at strict.example via Dev" <dev@lists.example.org>'


def test_always_and_off_override_the_lookup(running, make_list, sink, dns_server, engine):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["alice@strict.example", "bob@lax.example", READER], owner=None)
    set_list(engine, "dmarc", "always")
    assert post(running, sink, "bob@lax.example", name="Bob")["From"] == (
        '"Bob via Dev" <dev@lists.example.org>')
    sink.received.clear()
    set_list(engine, "dmarc", "off")
    assert post(running, sink, "alice@strict.example")["From"] == (
        "Alice <alice@strict.example>")


def test_dmarc_setting_takes_only_its_values(engine, make_list):
    make_list()
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        assert list_settings.settings_of(mlist)["dmarc"] == "auto"
        with pytest.raises(UserError, match="auto, always, off"):
            list_settings.set_setting(mlist, "dmarc", "sometimes")


def test_a_policy_is_asked_once_and_cached_for_its_ttl(running, make_list, sink, dns_server):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(members=["alice@strict.example", READER], owner=None)
    for _ in range(3):
        running.send("alice@strict.example", [LIST], message(sender="alice@strict.example"))
    sink.wait_for(6)
    assert dns_server.queries.count("_dmarc.strict.example") == 1
    # "No such name" is remembered too: the same holds for a domain without a record.
    for _ in range(2):
        running.send(READER, [LIST], message(sender=READER))
    sink.wait_for(10)
    assert dns_server.queries.count("_dmarc.example.net") == 1


def test_a_policy_answered_from_the_cache_rewrites_from_as_the_first_answer_did(
        running, make_list, sink, dns_server):
    """The receiver reads cached answers without a DNS thread: a subdomain's second post,
    whose two names (its own, with no record, and its organisation's) are both cached,
    goes out From the list like the first."""
    dns_server.records["_dmarc.parent.example"] = ["v=DMARC1; p=none; sp=reject"]
    make_list(members=["alice@news.parent.example", READER], owner=None)
    for subject in ("first", "second"):
        running.send("alice@news.parent.example", [LIST],
                     message(subject, sender="Alice <alice@news.parent.example>"))
    copies = [email.message_from_bytes(raw, policy=email.policy.compat32)
              for raw in sink.copies_to(READER, 2)]
    assert [c["From"] for c in copies] == ['"Alice via Dev" <dev@lists.example.org>'] * 2
    assert [dns_server.queries.count(f"_dmarc.{d}") for d in ("news.parent.example",
                                                             "parent.example")] == [1, 1]


def test_dns_down_delivers_the_post_with_from_untouched(make_server, make_list, sink):
    """Nothing answers on this port: the lookup times out and the post goes out as it is."""
    make_list(members=["alice@strict.example", READER], owner=None)
    srv = make_server(dns={"port": free_port()})
    copy = post(srv, sink, "alice@strict.example")
    assert copy["From"] == "Alice <alice@strict.example>"
