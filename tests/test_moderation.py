"""Moderation over real SMTP and the real CLI: what is held and why, the notice the
moderators get, and approve / reject / discard by email reply and by command."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from listserv import db, moderation
from listserv.enums import MessageState
from listserv.models import MailingList, Message, Token, utcnow
from tests.helpers import assert_one_line_error, message, ok, run_listserv

LIST = "dev@lists.example.org"
MEMBERS = ["bob@example.com", "carol@example.com"]


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def set_list(engine, **values) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).values(**values))
        s.commit()


def stored(engine) -> list[Message]:
    with db.session(engine) as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def notice_for(sink, address: str) -> email.message.EmailMessage:
    for received in sink.received:
        if address in received.rcpt_tos:
            return parsed(received.data)
    raise AssertionError(f"no mail for {address}: {sink.recipients()}")


@pytest.fixture
def dev(make_list):
    return make_list(members=MEMBERS, owner="owner@example.org",
                     moderators=["mod@example.org"])


def post(running, sender: str = "eve@example.org", **kw) -> None:
    running.send(sender, [LIST], message(sender=sender, **kw))


# --- what is held ------------------------------------------------------------------------

def test_held_post_notifies_owners_and_moderators_with_the_post_attached(running, dev, sink,
                                                                          engine):
    post(running, subject="Buy now")
    got = sink.wait_for(2)
    assert sorted(got) == ["mod@example.org", "owner@example.org"]
    notice = notice_for(sink, "mod@example.org")
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["Reply-To"].startswith("dev-confirm+")
    assert notice["Reply-To"].endswith("@lists.example.org")
    assert "non-member" in notice.get_body(("plain",)).get_content()
    attached = [p for p in notice.walk() if p.get_content_type() == "message/rfc822"]
    assert attached and b"Subject: Buy now" in attached[0].as_bytes()
    assert [m.state for m in stored(engine)] == [MessageState.HELD]


def test_moderated_member_is_held_and_told(running, dev, sink, engine, cli):
    ok(cli("member", "set", LIST, "bob@example.com", "--moderated", "true"))
    post(running, sender="bob@example.com")
    sink.wait_for(3)
    held = stored(engine)[0]
    assert held.state is MessageState.HELD and "moderated" in held.reasons
    assert "awaits a moderator" in notice_for(sink, "bob@example.com")["Subject"]


def test_emergency_holds_every_post(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "emergency", "true"))
    post(running, sender="bob@example.com")
    assert "emergency" in stored(engine)[0].reasons


def test_oversized_post_is_held(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "max_message_bytes", "2000"))
    post(running, sender="bob@example.com", body="x" * 3000)
    held = stored(engine)[0]
    assert held.state is MessageState.HELD and "2000" in held.reasons


def test_post_without_usable_sender_is_held(running, dev, engine):
    raw = "To: dev@lists.example.org\r\nSubject: anonymous\r\nMessage-ID: <a@b.c>\r\n\r\nhi\r\n"
    running.send("bob@example.com", [LIST], raw)
    held = stored(engine)[0]
    assert held.state is MessageState.HELD and "From" in held.reasons


def test_every_reason_is_recorded(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "emergency", "on"))
    ok(cli("list", "set", LIST, "max_message_bytes", "1000"))
    post(running, body="y" * 2000)
    reasons = stored(engine)[0].reasons
    assert "emergency" in reasons and "1000" in reasons and "non-member" in reasons


# --- non-member actions, allow and deny ----------------------------------------------------

def test_nonmember_reject_is_refused_at_the_door(running, dev, engine, cli):
    ok(cli("list", "set", LIST, "nonmember_action", "reject"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        post(running)
    assert info.value.smtp_code == 550
    assert stored(engine) == []


def test_nonmember_discard_and_accept(running, dev, engine, sink, cli):
    ok(cli("list", "set", LIST, "nonmember_action", "discard"))
    post(running)
    assert stored(engine)[0].state is MessageState.DISCARDED
    ok(cli("list", "set", LIST, "nonmember_action", "accept"))
    post(running)
    assert stored(engine)[1].state is MessageState.ACCEPTED
    assert "bob@example.com" in sink.wait_for(3)


def test_allowed_sender_posts_and_denied_sender_is_discarded(running, dev, engine, sink,
                                                            cli):
    ok(cli("sender", "allow", LIST, "eve@example.org"))
    ok(cli("sender", "deny", LIST, "spam@example.net"))
    listing = json.loads(ok(cli("sender", "ls", LIST, "--json")).stdout)
    assert {"address": "spam@example.net", "action": "deny"} in listing
    post(running, sender="eve@example.org")
    post(running, sender="spam@example.net")
    assert [m.state for m in stored(engine)] == [MessageState.ACCEPTED, MessageState.DISCARDED]
    got = sink.wait_for(3)
    assert "mod@example.org" not in got  # the deny list tells no moderator


# --- RFC 3834 --------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{"Auto-Submitted": "auto-replied"},
                                     {"Precedence": "bulk"}, {"Precedence": "junk"}])
def test_automatic_mail_is_discarded_silently(running, dev, engine, sink, headers):
    post(running, sender="bob@example.com", headers=headers)
    assert stored(engine)[0].state is MessageState.DISCARDED
    assert sink.wait_for(1, timeout=1.5) == []


def test_null_sender_is_discarded_silently(running, dev, engine, sink):
    running.send("", [LIST], message(sender="bob@example.com"))
    assert stored(engine)[0].state is MessageState.DISCARDED
    assert sink.wait_for(1, timeout=1.5) == []


# --- acting by email ---------------------------------------------------------------------------

def answer_notice(running, sink, first_line: str) -> None:
    notice = notice_for(sink, "mod@example.org")
    sink.received.clear()
    reply = message(f"Re: {notice['Subject']}", sender="mod@example.org",
                    to=notice["Reply-To"], body=f"{first_line}\n\n> quoted notice\n")
    running.send("mod@example.org", [notice["Reply-To"]], reply)


def test_approve_by_email_reply_fans_out_and_archives(running, dev, sink, engine, cli):
    post(running, subject="Worth reading")
    sink.wait_for(2)
    answer_notice(running, sink, "approve")
    got = sink.wait_for(4)
    # the members' copies, and the one-line confirmation to the moderator who answered
    assert sorted(got) == sorted(MEMBERS + ["owner@example.org", "mod@example.org"])
    assert notice_for(sink, "mod@example.org")["Subject"].startswith(
        "Dev moderation: approved message 1")
    assert stored(engine)[0].state is MessageState.ACCEPTED
    threads = json.loads(ok(cli("archive", "threads", LIST, "--json")).stdout)
    assert [t["subject"] for t in threads] == ["Worth reading"]


def test_reject_by_email_tells_the_author_why(running, dev, sink, engine, cli):
    # A member is told (issue 17); an unauthenticated non-member would not be.
    ok(cli("member", "add", LIST, "eve@example.org"))
    ok(cli("member", "set", LIST, "eve@example.org", "--moderated", "true"))
    post(running, subject="Off topic")
    sink.wait_for(3)  # the owner, the moderator, and eve told of the hold
    answer_notice(running, sink, "reject please stay on topic")
    sink.wait_for(2)  # the author, and the confirmation to the moderator
    told = notice_for(sink, "eve@example.org")
    assert "please stay on topic" in told.get_content()
    assert told["Auto-Submitted"] == "auto-replied"
    assert stored(engine)[0].state is MessageState.REJECTED


def test_discard_by_email_sends_nothing(running, dev, sink, engine):
    post(running)
    sink.wait_for(2)
    answer_notice(running, sink, "discard")
    # nothing but the one-line confirmation to the moderator who answered
    assert sink.wait_for(2, timeout=1.5) == ["mod@example.org"]
    assert stored(engine)[0].state is MessageState.DISCARDED


def test_a_notice_token_acts_only_once(running, dev, sink, engine):
    post(running)
    sink.wait_for(2)
    notice = notice_for(sink, "mod@example.org")
    answer_notice(running, sink, "discard")
    running.send("mod@example.org", [notice["Reply-To"]],
                 message("Re: x", sender="mod@example.org", to=notice["Reply-To"],
                         body="approve\n"))
    assert stored(engine)[0].state is MessageState.DISCARDED


# --- acting by CLI -------------------------------------------------------------------------------

def test_cli_show_approve_reject_discard(running, dev, sink, engine, cli):
    for subject in ("one", "two", "three"):
        post(running, subject=subject)
    held = json.loads(ok(cli("held", "ls", LIST, "--json")).stdout)
    assert [h["subject"] for h in held] == ["one", "two", "three"]
    assert {"id", "sender", "subject", "reason"} <= set(held[0])
    ids = [str(h["id"]) for h in held]
    shown = ok(cli("held", "show", ids[0])).stdout
    assert "non-member" in shown and "Subject: one" in shown
    sink.wait_for(6)
    sink.received.clear()
    ok(cli("held", "approve", ids[0]))
    ok(cli("held", "reject", ids[1], "--reason", "not here"))
    ok(cli("held", "discard", ids[2]))
    assert [m.state for m in stored(engine)] == [
        MessageState.ACCEPTED, MessageState.REJECTED, MessageState.DISCARDED]
    got = sink.wait_for(3)
    # eve, a non-member whose From no domain vouched for, is not told (issue 17)
    assert sorted(got) == sorted(MEMBERS + ["owner@example.org"])
    assert sink.wait_for(4, timeout=1.5) == got
    assert json.loads(ok(cli("held", "ls", LIST, "--json")).stdout) == []


def test_cli_errors_are_one_line(running, dev, config_file):
    assert_one_line_error(run_listserv("--config", config_file, "held", "approve", "999"),
                          "999")
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "colour", "blue"), "subscription", "archive")
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "reply_to", "everyone"), "list", "poster")
    assert_one_line_error(run_listserv("--config", config_file, "member", "set", LIST,
                                       "bob@example.com", "--moderated", "maybe"), "true")
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "footer", "{{ nmae }}"), "nmae", "unsubscribe_url")


def test_list_show_includes_settings(dev, cli):
    ok(cli("list", "set", LIST, "reply_to", "list"))
    shown = json.loads(ok(cli("list", "show", LIST, "--json")).stdout)
    assert shown["reply_to"] == "list"
    assert shown["nonmember_action"] == "hold" and shown["subscription"] == "open"
    assert shown["emergency"] is False and shown["archive"] == "public"


# --- expiry ---------------------------------------------------------------------------------------

def test_expired_hold_is_discarded_and_its_author_told(running, dev, sink, engine, config):
    post(running, subject="Slow moderators")
    sink.wait_for(2)
    sink.received.clear()
    with db.session(engine) as s:
        s.execute(update(Message).values(received_at=utcnow() - timedelta(days=15)))
        s.commit()
        assert moderation.expire_holds(s, config) == 1
        s.commit()
        assert s.scalars(select(Token)).one().used_at is not None
    assert stored(engine)[0].state is MessageState.DISCARDED
    got = sink.wait_for(1)
    assert got == ["eve@example.org"]
    assert "expired" in notice_for(sink, "eve@example.org")["Subject"]
