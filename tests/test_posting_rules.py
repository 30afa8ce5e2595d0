"""Who may post, and what, over real SMTP with a real database and the real CLI: announce
lists (member_action), new members held, sender patterns, bans, header rules, and a held
non-member told only when its From domain vouches for the post."""

from __future__ import annotations

import json
import smtplib

import dkim
import pytest
import regex
from sqlalchemy import select

from listserv import authresults, db, patterns
from listserv.enums import MessageState
from listserv.models import Message, Token
from tests.helpers import (
    LIST,
    assert_one_line_error,
    delivered_to,
    mails_to,
    message,
    ok,
    run_listserv,
)

MEMBERS = ["bob@example.com", "carol@example.com"]
OWNER = "owner@example.org"
MOD = "mod@example.org"


@pytest.fixture
def dev(make_list):
    return make_list(members=MEMBERS, owner=OWNER, moderators=[MOD])


def post(running, sender: str = "eve@example.org", mail_from: str | None = None, **kw) -> None:
    running.send(mail_from or sender, [LIST], message(sender=sender, **kw))


def states(engine) -> list[tuple[str, MessageState]]:
    with db.session(engine) as s:
        return [(m.from_address, m.state)
                for m in s.scalars(select(Message).order_by(Message.id))]


def reasons(engine) -> str:
    with db.session(engine) as s:
        return "\n".join(s.scalars(select(Message.reasons).order_by(Message.id)))


def told_it_waits(engine, sink, address: str) -> bool:
    """Whether the author got the "awaits a moderator" notice, once everything queued
    was sent."""
    count = delivered_to(engine, sink, address)
    return any("awaits a moderator" in m["Subject"] for m in mails_to(sink, address, count))


# --- member_action and new_member_holds -----------------------------------------------------

def test_an_announce_list_holds_members_posts_for_the_owners(running, dev, engine, sink, cli):
    ok(cli("list", "set", LIST, "member_action", "hold"))
    post(running, sender="bob@example.com", subject="News?")
    post(running, sender=OWNER, subject="The news")
    assert states(engine) == [("bob@example.com", MessageState.HELD),
                              (OWNER, MessageState.ACCEPTED)]
    assert "wait for the owners" in reasons(engine)
    assert told_it_waits(engine, sink, "bob@example.com")


def test_a_reject_list_refuses_members_and_takes_moderators_posts(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "member_action", "reject"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        post(running, sender="carol@example.com")
    assert info.value.smtp_code == 550
    assert b"only the owners and moderators" in info.value.smtp_error
    post(running, sender=MOD)
    assert states(engine) == [(MOD, MessageState.ACCEPTED)]


def test_a_new_members_first_posts_are_held_then_it_posts_freely(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "new_member_holds", "1"))
    post(running, sender="bob@example.com", subject="First")
    [(_, state)] = states(engine)
    assert state is MessageState.HELD and "new member" in reasons(engine)
    held = json.loads(ok(cli("held", "ls", LIST, "--json")).stdout)
    ok(cli("held", "approve", str(held[0]["id"])))
    post(running, sender="bob@example.com", subject="Second")
    post(running, sender=OWNER, subject="Owners are never new")
    assert [s for _, s in states(engine)] == [MessageState.ACCEPTED] * 3


def test_the_settings_are_shown_and_a_bad_value_is_one_line(running, dev, cli, config_file):
    shown = json.loads(ok(cli("list", "show", LIST, "--json")).stdout)
    assert (shown["member_action"], shown["new_member_holds"]) == ("accept", 0)
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "member_action", "sometimes"), "accept, hold, reject")
    help_text = run_listserv("list", "set", "--help").stdout
    assert "member_action" in help_text and "new_member_holds" in help_text


# --- sender patterns ------------------------------------------------------------------------

def test_sender_patterns_allow_deny_and_hold(running, dev, engine, cli):
    ok(cli("sender", "allow", LIST, "@friends.example"))
    ok(cli("sender", "deny", LIST, r"^.*@(mail\.)?spam\.example$"))
    ok(cli("sender", "hold", LIST, "carol@example.com"))
    ok(cli("sender", "deny", LIST, "@example.net"))
    ok(cli("sender", "allow", LIST, "dave@example.net"))  # the address beats its domain
    post(running, sender="ann@friends.example")
    post(running, sender="x@mail.SPAM.example")
    post(running, sender="carol@example.com")  # a member, held all the same
    post(running, sender="dave@example.net")
    post(running, sender="erin@example.net")
    assert [s for _, s in states(engine)] == [
        MessageState.ACCEPTED, MessageState.DISCARDED, MessageState.HELD,
        MessageState.ACCEPTED, MessageState.DISCARDED]
    assert "hold list" in reasons(engine) and r"(^.*@(mail\.)?spam\.example$)" in reasons(engine)
    listing = json.loads(ok(cli("sender", "ls", LIST, "--json")).stdout)
    assert {"address": "@friends.example", "action": "allow"} in listing
    ok(cli("sender", "remove", LIST, "@FRIENDS.example"))
    post(running, sender="ann@friends.example")
    assert states(engine)[-1][1] is MessageState.HELD  # a non-member again


@pytest.mark.parametrize("pattern, named", [
    ("^[a-z", "not a regular expression"),
    ("^(a|a)*$", "too long to match"),
    ("^" + "a" * 300 + "$", "at most 200"),
    ("not an address", "not an address"),
])
def test_a_bad_pattern_is_a_one_line_error(dev, config_file, pattern, named):
    assert_one_line_error(run_listserv("--config", config_file, "sender", "deny", LIST,
                                       pattern), named)


def test_a_match_that_backtracks_too_long_gives_up():
    """A pattern saved before the probes knew of it still cannot stall the receiver."""
    slow = patterns.SenderPattern("^(.*?,){11}P", patterns.Kind.REGEX,
                                  regex.compile("^(.*?,){11}P"))
    assert slow.matches("1," * 120) is False


# --- bans -------------------------------------------------------------------------------------

def test_a_ban_discards_posts_to_every_list_and_stops_subscribing(running, dev, make_list,
                                                                 engine, sink, cli):
    make_list("ops@lists.example.org", members=["mallory@bad.example"])
    ok(cli("ban", "add", "@bad.example"))
    ok(cli("ban", "add", "spammer@example.com"))
    assert {b["pattern"] for b in json.loads(ok(cli("ban", "ls", "--json")).stdout)} == {
        "@bad.example", "spammer@example.com"}
    running.send("mallory@bad.example", ["ops@lists.example.org"],
                 message(sender="mallory@bad.example", to="ops@lists.example.org"))
    post(running, sender="bob@example.com", mail_from="spammer@example.com")  # the envelope
    assert [s for _, s in states(engine)] == [MessageState.DISCARDED] * 2
    assert "banned" in reasons(engine)
    running.send("x@bad.example", ["dev-join@lists.example.org"],
                 message(sender="x@bad.example", to="dev-join@lists.example.org"))
    with db.session(engine) as s:
        assert s.scalars(select(Token).where(Token.address == "x@bad.example")).all() == []
    ok(cli("ban", "remove", "@bad.example"))
    running.send("x@bad.example", ["dev-join@lists.example.org"],
                 message(sender="x@bad.example", to="dev-join@lists.example.org"))
    sink.copies_to("x@bad.example")  # the confirmation, now
    assert sink.recipients().count("x@bad.example") == 1


# --- header rules -----------------------------------------------------------------------------

def test_header_rules_act_on_a_spam_filters_verdict(running, dev, engine, sink, cli):
    ok(cli("rule", "add", LIST, "X-Spam-Flag", "YES", "discard"))
    ok(cli("rule", "add", LIST, "X-Spam-Level", r"\*{5}", "hold"))
    ok(cli("rule", "add", LIST, "X-Virus", "found", "reject"))
    post(running, sender="bob@example.com", headers={"X-Spam-Flag": "YES"})
    post(running, sender="bob@example.com", headers={"X-Spam-Level": "*******"})
    post(running, sender="bob@example.com", headers={"X-Spam-Flag": "NO"})
    with pytest.raises(smtplib.SMTPDataError) as info:
        post(running, sender="bob@example.com", headers={"X-Virus": "Found: Eicar"})
    assert info.value.smtp_code == 550 and b"X-Virus" in info.value.smtp_error
    assert [s for _, s in states(engine)] == [MessageState.DISCARDED, MessageState.HELD,
                                              MessageState.ACCEPTED]
    assert "header rule" in reasons(engine)
    rules = json.loads(ok(cli("rule", "ls", LIST, "--json")).stdout)
    assert [(r["header"], r["action"]) for r in rules] == [
        ("X-Spam-Flag", "discard"), ("X-Spam-Level", "hold"), ("X-Virus", "reject")]
    ok(cli("rule", "remove", LIST, str(rules[0]["id"])))
    post(running, sender="bob@example.com", headers={"X-Spam-Flag": "YES"})
    assert states(engine)[-1][1] is MessageState.ACCEPTED


def test_a_bad_header_rule_is_a_one_line_error(dev, config_file):
    for args, named in [(("X Spam", "YES", "discard"), "header field name"),
                        (("X-Spam-Flag", "(YES", "discard"), "regular expression")]:
        assert_one_line_error(run_listserv("--config", config_file, "rule", "add", LIST,
                                           *args), named)
    usage = run_listserv("--config", config_file, "rule", "add", LIST, "X-Spam-Flag", "YES",
                         "drop")
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1
    assert "hold, reject, discard" in usage.stderr
    assert_one_line_error(run_listserv("--config", config_file, "rule", "remove", LIST, "9"),
                          "no header rule 9")


# --- telling a held non-member ------------------------------------------------------------------

def signed(author_key: bytes, sender: str = "Alice <alice@author.example>",
           domain: bytes = b"author.example") -> bytes:
    raw = message(sender=sender).encode()
    return dkim.sign(raw, b"a", domain, author_key,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


def test_a_held_non_member_whose_domain_signs_is_told(running, dev, sink, engine,
                                                      author_key):
    running.send("alice@author.example", [LIST], signed(author_key))
    assert told_it_waits(engine, sink, "alice@author.example")


def test_a_members_signed_post_costs_no_dkim_verification(running, make_list, sink, engine,
                                                          author_key, dns_server):
    """The signature's answer matters for a held non-member alone: a member's signed
    post, sent on, does not look its key up (nor spend the CPU to verify it)."""
    make_list(members=["alice@author.example"], owner=OWNER)
    running.send("alice@author.example", [LIST], signed(author_key))
    assert delivered_to(engine, sink, "alice@author.example") == 1
    assert "a._domainkey.author.example" not in dns_server.queries


def test_a_forged_or_unaligned_sender_is_not_told(running, dev, sink, engine, author_key):
    # Signed by author.example, but From another domain: no vouching for that From.
    running.send("eve@forged.example", [LIST],
                 signed(author_key, sender="eve@forged.example"))
    post(running, sender="alice@author.example")  # unsigned
    assert [s for _, s in states(engine)] == [MessageState.HELD] * 2
    assert not told_it_waits(engine, sink, "eve@forged.example")
    assert not told_it_waits(engine, sink, "alice@author.example")


def test_a_trusted_mtas_dmarc_pass_tells_a_held_non_member(make_server, dev, sink, engine):
    srv = make_server(smtp={"trusted_authserv_ids": ["mx.lists.example.org"]})
    passed = ("mx.lists.example.org; dkim=pass header.d=x.example; dmarc=pass (p=none) "
              "header.from=trusted.example")
    forged = "mx.evil.example; dmarc=pass header.from=untrusted.example"
    srv.send("ann@trusted.example", [LIST], message(
        sender="ann@trusted.example", headers={"Authentication-Results": passed}))
    srv.send("ann@untrusted.example", [LIST], message(
        sender="ann@untrusted.example", headers={"Authentication-Results": forged}))
    assert told_it_waits(engine, sink, "ann@trusted.example")
    assert not told_it_waits(engine, sink, "ann@untrusted.example")


@pytest.mark.parametrize("value, vouches", [
    ("mx.lists.example.org; dmarc=pass header.from=Trusted.Example", True),
    ("MX.lists.example.org 1; spf=fail (a; comment (nested; too)) smtp.mailfrom=x; "
     "dmarc=pass (p=reject dis=none) header.from=trusted.example", True),
    ("mx.lists.example.org; dmarc=fail header.from=trusted.example", False),
    ("mx.lists.example.org; dmarc=pass header.from=other.example", False),
    ("mx.lists.example.org; dmarc=pass", False),  # says not for which From
    ("mx.evil.example; dmarc=pass header.from=trusted.example", False),
    ("mx.lists.example.org; (dmarc=pass header.from=trusted.example)", False),  # a comment
])
def test_only_a_trusted_mtas_dmarc_pass_for_the_from_domain_vouches(value, vouches):
    assert authresults.dmarc_pass([value], "trusted.example", ["mx.lists.example.org"]) is vouches


def test_our_own_dkim_results_vouch_when_the_signing_domain_aligns():
    ours = "lists.example.org; dkim=fail header.d=a.example; dkim=pass header.d=mail.b.example"
    assert authresults.dkim_pass(ours, "b.example")  # the same organisation
    assert not authresults.dkim_pass(ours, "a.example")
    assert not authresults.dkim_pass(ours, "c.example")
