"""Self-service by email over real SMTP: join, leave, confirm, set, mute, help, and the
rules that keep the list from answering robots or revealing its roster."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from listserv import db
from listserv.enums import DeliveryMode, Role, Subscription
from listserv.models import MailingList, Member, Mute, ThreadNode, Token, utcnow
from tests.helpers import delivered_to, mails_to, message

LIST = "dev@lists.example.org"
REQUEST = "dev-request@lists.example.org"
JOIN = "dev-join@lists.example.org"
LEAVE = "dev-leave@lists.example.org"
ALICE = "alice@example.com"
BOB = "bob@example.com"
OWNER = "owner@example.org"
CONFIRM = re.compile(r"^dev-confirm\+([A-Za-z0-9_-]+)@lists\.example\.org$")


def roles(engine, address: str) -> set[Role]:
    with db.session(engine) as s:
        return set(s.scalars(select(Member.role).where(Member.address == address)))


def member(engine, address: str) -> Member | None:
    with db.session(engine) as s:
        return s.scalars(select(Member).where(Member.address == address,
                                              Member.role == Role.MEMBER)).first()


def token_of(mail) -> str:
    """The token of a confirmation: its Reply-To is LIST-confirm+TOKEN@."""
    match = CONFIRM.match(str(mail["Reply-To"]))
    assert match, f"no confirm address in Reply-To: {mail['Reply-To']}"
    return match.group(1)


def text(mail) -> str:
    return mail.get_body(("plain",)).get_content()


def command(running, body: str = "", *, subject: str = "", sender: str = ALICE,
            to: str = REQUEST, headers: dict | None = None, mail_from: str | None = None):
    running.send(sender if mail_from is None else mail_from, [to],
                 message(subject, sender=sender, to=to, body=body, headers=headers))


def set_subscription(engine, policy: Subscription) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).values(subscription=policy))
        s.commit()


def test_join_sends_a_confirmation_to_the_address_and_a_reply_confirms(running, make_list,
                                                                       sink, engine):
    make_list()
    command(running, to=JOIN)  # no body needed
    [confirmation] = mails_to(sink, ALICE)
    token = token_of(confirmation)
    assert confirmation["Auto-Submitted"] == "auto-replied"
    assert confirmation["From"].addresses[0].addr_spec == REQUEST
    assert f"/confirm/{token}" in text(confirmation)
    assert f"confirm {token}" in text(confirmation)
    assert member(engine, ALICE) is None  # nothing before the confirmation

    reply = "Yes please.\n\n> Someone, probably you, asked to subscribe\n"
    command(running, reply, subject=f"Re: {confirmation['Subject']}",
            to=f"dev-confirm+{token}@lists.example.org")
    welcome = mails_to(sink, ALICE, 2)[1]
    assert "Welcome" in welcome["Subject"]
    assert "/unsubscribe/" in text(welcome)
    assert member(engine, ALICE).delivery is DeliveryMode.REGULAR


def test_confirm_line_to_request_confirms_and_digest_option_is_kept(running, make_list, sink,
                                                                    engine):
    make_list()
    command(running, "subscribe digest=mime\n")
    mails = mails_to(sink, ALICE, 2)  # the command results and the confirmation
    [confirmation] = [m for m in mails if m["Reply-To"]]
    [results] = [m for m in mails if not m["Reply-To"]]
    assert "a message asking you to confirm" in text(results)
    command(running, f"confirm {token_of(confirmation)}\n")
    mails_to(sink, ALICE, 4)
    assert member(engine, ALICE).delivery is DeliveryMode.DIGEST_MIME


def test_a_reply_sent_to_the_from_address_of_the_confirmation_confirms(running, make_list,
                                                                       sink, engine):
    make_list()
    command(running, to=JOIN)
    [confirmation] = mails_to(sink, ALICE)
    # A client that ignores Reply-To answers From: LIST-request@, with the subject.
    quoted = "".join(f"> {line}\n" for line in text(confirmation).splitlines())
    command(running, "OK\n\n" + quoted, subject=f"Re: {confirmation['Subject']}")
    mails_to(sink, ALICE, 3)  # the command results and the welcome
    assert member(engine, ALICE) is not None


def test_a_token_works_once(running, make_list, sink, engine):
    make_list()
    command(running, to=JOIN)
    token = token_of(mails_to(sink, ALICE)[0])
    confirm = f"dev-confirm+{token}@lists.example.org"
    command(running, "ok", to=confirm)
    assert "Welcome" in mails_to(sink, ALICE, 2)[1]["Subject"]
    command(running, "ok", to=confirm)  # the spent token again
    answer = mails_to(sink, ALICE, 3)[2]
    assert "unknown, was already used, or has expired" in text(answer)
    assert delivered_to(engine, sink, ALICE) == 3  # no second welcome


def test_an_expired_token_confirms_nothing(running, make_list, sink, engine):
    make_list()
    command(running, to=JOIN)
    token = token_of(mails_to(sink, ALICE)[0])
    with db.session(engine) as s:
        s.execute(update(Token).values(expires_at=utcnow() - timedelta(minutes=1)))
        s.commit()
    command(running, f"confirm {token}\n")
    assert "has expired" in text(mails_to(sink, ALICE, 2)[1])
    assert member(engine, ALICE) is None


def test_leave_needs_confirmation_then_says_goodbye(running, make_list, sink, engine):
    make_list(members=[BOB])
    command(running, sender=BOB, to=LEAVE)  # a forged From could do this much
    [confirmation] = mails_to(sink, BOB)
    assert member(engine, BOB) is not None  # ... but removes no one
    command(running, "", sender=BOB, to=f"dev-confirm+{token_of(confirmation)}@lists.example.org")
    goodbye = mails_to(sink, BOB, 2)[1]
    assert "left" in goodbye["Subject"]
    assert member(engine, BOB) is None


def test_owner_who_leaves_stays_owner(running, make_list, sink, engine):
    make_list()  # the owner is also a member
    command(running, "leave\n", sender=OWNER)
    [confirmation] = [m for m in mails_to(sink, OWNER, 2) if m["Reply-To"]]
    command(running, f"confirm {token_of(confirmation)}\n", sender=OWNER)
    mails_to(sink, OWNER, 4)
    assert roles(engine, OWNER) == {Role.OWNER}


def test_members_and_strangers_get_the_same_visible_answer(running, make_list, sink):
    make_list(members=[BOB])
    command(running, "subscribe\n", sender=BOB)
    command(running, "subscribe\n", sender=ALICE)
    bob = {m["Subject"]: text(m) for m in mails_to(sink, BOB, 2)}
    alice = {m["Subject"]: text(m) for m in mails_to(sink, ALICE, 2)}
    results = [s for s in bob if s.startswith("Results")]
    assert results and bob[results[0]].replace(BOB, "X") == alice[results[0]].replace(ALICE, "X")
    # Only the address itself learns it is already subscribed, with no token to spend.
    [notice] = [m for m in mails_to(sink, BOB, 2) if not m["Subject"].startswith("Results")]
    assert "already subscribed" in text(notice) and notice["Reply-To"] is None


def test_unsubscribe_of_a_stranger_reveals_nothing(running, make_list, sink):
    make_list(members=[BOB])
    command(running, "unsubscribe\n", sender=BOB)
    command(running, "unsubscribe\n", sender=ALICE)
    bob = [text(m) for m in mails_to(sink, BOB, 2) if m["Subject"].startswith("Results")]
    alice = [text(m) for m in mails_to(sink, ALICE, 2) if m["Subject"].startswith("Results")]
    assert bob[0].replace(BOB, "X") == alice[0].replace(ALICE, "X")


def test_a_pending_subscription_resends_nothing(running, make_list, sink, engine):
    make_list()
    command(running, to=JOIN)
    command(running, to=JOIN)
    assert delivered_to(engine, sink, ALICE) == 1


def test_moderated_list_waits_for_an_owner_who_approves_by_reply(running, make_list, sink,
                                                                 engine):
    make_list(moderators=["mod@example.org"])
    set_subscription(engine, Subscription.MODERATE)
    command(running, to=JOIN)
    command(running, to=f"dev-confirm+{token_of(mails_to(sink, ALICE)[0])}@lists.example.org")
    assert "awaits approval" in mails_to(sink, ALICE, 2)[1]["Subject"]
    [notice] = mails_to(sink, OWNER)
    assert ALICE in notice["Subject"] and "approve" in text(notice)
    assert mails_to(sink, "mod@example.org")[0]["Reply-To"] == notice["Reply-To"]
    assert member(engine, ALICE) is None

    command(running, "approve\n\n> alice asked to join\n", sender=OWNER,
            subject=f"Re: {notice['Subject']}", to=str(notice["Reply-To"]))
    assert "Welcome" in mails_to(sink, ALICE, 3)[2]["Subject"]
    assert member(engine, ALICE) is not None


def test_moderated_list_reject_tells_the_person_why(running, make_list, sink, engine):
    make_list()
    set_subscription(engine, Subscription.MODERATE)
    command(running, to=JOIN)
    command(running, to=f"dev-confirm+{token_of(mails_to(sink, ALICE)[0])}@lists.example.org")
    [notice] = mails_to(sink, OWNER)
    command(running, "reject we only take staff\n", sender=OWNER, to=str(notice["Reply-To"]))
    told = mails_to(sink, ALICE, 3)[2]
    assert "not approved" in told["Subject"] and "we only take staff" in text(told)
    assert member(engine, ALICE) is None


def test_first_moderator_answer_counts(running, make_list, sink, engine):
    make_list(moderators=["mod@example.org"])
    set_subscription(engine, Subscription.MODERATE)
    command(running, to=JOIN)
    command(running, to=f"dev-confirm+{token_of(mails_to(sink, ALICE)[0])}@lists.example.org")
    [notice] = mails_to(sink, "mod@example.org")
    command(running, "discard\n", sender="mod@example.org", to=str(notice["Reply-To"]))
    assert "Discarded" in text(mails_to(sink, "mod@example.org", 2)[1])
    command(running, "approve\n", sender=OWNER, to=str(notice["Reply-To"]))
    assert "already used" in text(mails_to(sink, OWNER, 2)[1])
    assert member(engine, ALICE) is None
    # Only the confirmation and "awaits approval": no welcome, no rejection.
    assert delivered_to(engine, sink, ALICE) == 2


def test_closed_list_takes_no_subscriptions(running, make_list, sink, engine):
    make_list()
    set_subscription(engine, Subscription.CLOSED)
    command(running, to=JOIN)
    [answer] = mails_to(sink, ALICE)
    assert "owners" in text(answer) and answer["Reply-To"] is None
    with db.session(engine) as s:
        assert s.scalars(select(Token)).first() is None


def test_set_delivery_changes_the_mode(running, make_list, sink, engine):
    make_list(members=[BOB])
    command(running, "set delivery digest-mime\n", sender=BOB)
    assert "digest-mime" in text(mails_to(sink, BOB)[0])
    assert member(engine, BOB).delivery is DeliveryMode.DIGEST_MIME


def test_quoted_lines_signature_and_reply_prefixes_are_ignored(running, make_list, sink,
                                                               engine):
    make_list(members=[BOB])
    body = "> unsubscribe\nset delivery nomail\n-- \nunsubscribe\nBob\n"
    command(running, body, subject="Re: Fwd: help", sender=BOB)
    [results] = mails_to(sink, BOB)
    assert "> help" in text(results) and "set delivery" in text(results)
    assert "> unsubscribe" not in text(results)
    assert member(engine, BOB).delivery is DeliveryMode.NOMAIL
    with db.session(engine) as s:
        assert s.scalars(select(Token)).first() is None  # no unsubscribe started


def test_processing_stops_at_end_and_after_too_much_prose(running, make_list, sink, engine):
    make_list()
    prose = "".join(f"this is line {i} of my letter\n" for i in range(6))
    command(running, "help\nend\nsubscribe\n", sender=ALICE)
    command(running, prose + "subscribe\n", sender="carol@example.com")
    assert "> subscribe" not in text(mails_to(sink, ALICE)[0])
    assert "> subscribe" not in text(mails_to(sink, "carol@example.com")[0])
    with db.session(engine) as s:
        assert s.scalars(select(Token)).first() is None


def test_html_only_command_mail_is_read(running, make_list, sink, engine):
    make_list(members=[BOB])
    html = "<html><head><style>p {}</style></head><body><p>set delivery nomail</p></body></html>"
    command(running, html, sender=BOB, headers={"Content-Type": "text/html; charset=utf-8"})
    mails_to(sink, BOB)
    assert member(engine, BOB).delivery is DeliveryMode.NOMAIL


def test_html_command_mail_skips_the_quoted_mail_it_answers(running, make_list, sink, engine):
    """Webmail quotes in a <blockquote>: its lines are quoted lines, as "> " in text."""
    make_list(members=[BOB])
    html = "<div>set delivery nomail</div><blockquote>set delivery regular</blockquote>"
    command(running, html, sender=BOB, headers={"Content-Type": "text/html; charset=utf-8"})
    mails_to(sink, BOB)
    assert member(engine, BOB).delivery is DeliveryMode.NOMAIL


def test_help_lists_the_commands(running, make_list, sink):
    make_list()
    command(running, "help\n")
    [reply] = mails_to(sink, ALICE)
    assert reply["To"] == ALICE and reply["Auto-Submitted"] == "auto-replied"
    for word in ("subscribe", "unsubscribe", "confirm TOKEN", "set delivery", "mute", JOIN):
        assert word in text(reply)


def test_unknown_lines_are_reported(running, make_list, sink):
    make_list()
    command(running, "frobnicate\n")
    assert "Not a command" in text(mails_to(sink, ALICE)[0])


@pytest.mark.parametrize("headers,mail_from", [
    ({"Auto-Submitted": "auto-replied"}, None),
    ({"Precedence": "bulk"}, None),
    ({"Precedence": "list"}, None),
    ({}, ""),
])
@pytest.mark.parametrize("to", [REQUEST, JOIN, LEAVE])
def test_automatic_mail_gets_no_answer(running, make_list, sink, engine, headers, mail_from,
                                      to):
    make_list(members=[ALICE])
    command(running, "help\nsubscribe\n", to=to, headers=headers, mail_from=mail_from)
    assert delivered_to(engine, sink, ALICE) == 0
    with db.session(engine) as s:
        assert s.scalars(select(Token)).first() is None


def test_replies_to_one_address_are_rate_limited(make_server, make_list, sink, engine):
    srv = make_server(lists={"max_autoreplies_per_day": 2})
    make_list()
    for _ in range(3):
        command(srv, "help\n")
    assert delivered_to(engine, sink, ALICE) == 2


def _post_and_archive(running, sink, engine) -> str:
    """Bob posts to the list; the Message-ID of the post, once it is archived."""
    post = message("Tabs or spaces?", sender=BOB)
    running.send(BOB, [LIST], post)
    mails_to(sink, ALICE)
    return re.search(r"Message-ID: <([^>]+)>", post).group(1)


def _mutes(engine) -> list[tuple[str, str]]:
    with db.session(engine) as s:
        return [(m.address, m.thread_id) for m in s.scalars(select(Mute))]


def test_mute_and_unmute_by_a_reply_to_request(running, make_list, sink, engine):
    make_list(members=[BOB, ALICE], owner=None)
    msgid = _post_and_archive(running, sink, engine)
    with db.session(engine) as s:
        thread_id = s.scalars(select(ThreadNode.thread_id).where(
            ThreadNode.message_id == msgid)).one()
    reply = {"In-Reply-To": f"<{msgid}>", "References": f"<{msgid}>"}
    command(running, "mute\n", subject="Re: [Dev] Tabs or spaces?", headers=reply)
    assert "no more posts of that thread" in text(mails_to(sink, ALICE, 2)[1])
    assert _mutes(engine) == [(ALICE, thread_id)]
    command(running, "unmute\n", subject="Re: [Dev] Tabs or spaces?", headers=reply)
    mails_to(sink, ALICE, 3)
    assert _mutes(engine) == []


def test_mute_outside_a_reply_says_which_thread_is_missing(running, make_list, sink, engine):
    make_list(members=[ALICE])
    command(running, "mute\n")
    assert "in a reply to a post" in text(mails_to(sink, ALICE)[0])
    assert _mutes(engine) == []
