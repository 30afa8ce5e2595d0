"""Owners hear about their list (issue 18): invitations that subscribe only when
accepted, the owners' mail on joins, leaves, bounce disabling and removals
(notify_owners), and the list's own welcome, goodbye, footer and digest header
(`listserv template`). Over the command line, real SMTP and the web pages."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import update

from listserv import db
from listserv.enums import DeliveryMode
from listserv.models import Member, utcnow
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    MAILBOX,
    as_json,
    assert_one_line_error,
    bounce,
    delivered_to,
    dsn,
    is_member,
    mails_to,
    message,
    ok,
    run_listserv,
    unsubscribe_path,
    web,
)

OWNER = "owner@example.org"
ALICE = "alice@example.com"
REQUEST = "dev-request@lists.example.org"
CONFIRM = re.compile(r"^dev-confirm\+([0-9a-f]+)@lists\.example\.org$")


def text(mail) -> str:
    return mail.get_body(("plain",)).get_content().replace("\r\n", "\n")


def token_of(mail) -> str:
    match = CONFIRM.match(str(mail["Reply-To"]))
    assert match, mail["Reply-To"]
    return match.group(1)


def owner_mails(sink, count: int) -> list[str]:
    """The subjects of the owner's first `count` mails."""
    return [m["Subject"] for m in mails_to(sink, OWNER, count)]


# --- invitations ------------------------------------------------------------------------

def test_an_invitation_subscribes_only_when_its_reply_comes(running, make_list, sink,
                                                            engine, cli):
    make_list(members=[BOB])
    ok(cli("ban", "add", "@spam.example"))
    result = cli("member", "invite", LIST, f"Alice <{ALICE}>", BOB, "eve@spam.example",
                 "not an address")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"invited {ALICE}"]
    assert f"{BOB}: already a member; not invited" in result.stderr
    assert "eve@spam.example: banned; not invited" in result.stderr
    assert "not an address: not a valid address; not invited" in result.stderr

    [invitation] = mails_to(sink, ALICE)
    assert invitation["Auto-Submitted"] == "auto-replied"
    assert invitation["From"].addresses[0].addr_spec == REQUEST
    token = token_of(invitation)
    assert f"/invite/{token}" in text(invitation) and "invite" in text(invitation)
    assert not is_member(engine, ALICE)  # nothing before the answer
    again = cli("member", "invite", LIST, ALICE)  # pending: not mailed twice
    assert again.exit_code == 1 and "already invited" in again.stderr

    running.send(ALICE, [f"dev-confirm+{token}@lists.example.org"],
                 message(f"Re: {invitation['Subject']}", sender=ALICE,
                         to=f"dev-confirm+{token}@lists.example.org", body="Gladly.\n"))
    welcome = mails_to(sink, ALICE, 2)[1]
    assert welcome["Subject"] == f"Welcome to {LIST}"
    assert is_member(engine, ALICE)
    assert delivered_to(engine, sink, BOB) == 0 and delivered_to(engine, sink, ALICE) == 2
    assert delivered_to(engine, sink, "eve@spam.example") == 0


def test_an_invitation_is_accepted_by_the_button_on_its_page(running, make_list, sink,
                                                             engine, cli):
    make_list()
    ok(cli("list", "set", LIST, "subscription", "closed"))  # the owners invite all the same
    ok(cli("member", "invite", LIST, ALICE))
    path = f"/invite/{token_of(mails_to(sink, ALICE)[0])}"
    with web(running) as client:
        page = client.get(path)
        assert page.status_code == 200 and "Yes, subscribe me" in page.text
        assert ALICE in page.text and 'method="post"' in page.text
        assert not is_member(engine, ALICE)  # a link scanner's GET subscribes no one
        done = client.post(path)
        assert done.status_code == 200 and "is now subscribed" in done.text
        assert client.post(path).status_code == 404  # spent
        assert client.get("/invite/" + "0" * 32).status_code == 404
    assert is_member(engine, ALICE)
    assert "Welcome" in mails_to(sink, ALICE, 2)[1]["Subject"]


def test_an_address_banned_after_its_invitation_cannot_accept(running, make_list, sink,
                                                              engine, cli):
    make_list()
    ok(cli("member", "invite", LIST, ALICE))
    path = f"/invite/{token_of(mails_to(sink, ALICE)[0])}"
    ok(cli("ban", "add", ALICE))
    with web(running) as client:
        assert client.post(path).status_code == 404
    assert not is_member(engine, ALICE)


# --- notify_owners ----------------------------------------------------------------------

def test_owners_hear_of_joins_leaves_and_removals_whatever_the_channel(running, make_list,
                                                                       sink, engine, cli):
    make_list(members=[BOB, CAROL])
    ok(cli("member", "add", LIST, "dan@example.com"))  # notify_owners is off by default
    assert delivered_to(engine, sink, OWNER) == 0
    assert "notify_owners" in run_listserv("list", "set", "--help").stdout
    ok(cli("list", "set", LIST, "notify_owners", "on"))
    assert as_json(cli("list", "show", LIST, "--json"))["notify_owners"] == "on"

    ok(cli("member", "invite", LIST, ALICE))  # joins by email
    token = token_of(mails_to(sink, ALICE)[0])
    running.send(ALICE, [REQUEST], message("", sender=ALICE, to=REQUEST,
                                           body=f"confirm {token}\n"))
    [joined] = mails_to(sink, OWNER)
    assert joined["Subject"] == f"Dev: {ALICE} joined"
    assert joined["Auto-Submitted"] == "auto-generated" and ALICE in text(joined)

    with web(running) as client:  # leaves by the one-click link of a copy
        assert client.post(unsubscribe_path(engine, BOB)).status_code == 200
    assert owner_mails(sink, 2)[1] == f"Dev: {BOB} left"

    ok(cli("member", "remove", LIST, CAROL))  # removed on the command line
    removed = mails_to(sink, OWNER, 3)[2]
    assert removed["Subject"] == f"Dev: {CAROL} removed"
    assert "listserv member remove" in text(removed)

    ok(cli("member", "add", LIST, "erin@example.com", "fay@example.com"))
    assert owner_mails(sink, 4)[3] == "Dev: erin@example.com and 1 more joined"

    ok(cli("list", "set", LIST, "notify_owners", "off"))
    ok(cli("member", "remove", LIST, "erin@example.com"))
    assert delivered_to(engine, sink, OWNER) == 4


def test_owners_hear_when_bounces_disable_a_member(running, make_list, sink, engine, cli):
    make_list(members=[BOB])
    ok(cli("list", "set", LIST, "notify_owners", "on"))
    with db.session(engine) as s:  # one hard bounce from the threshold, the last yesterday
        s.execute(update(Member).where(Member.address == BOB).values(
            bounce_score=4.0, last_bounce_at=utcnow() - timedelta(days=1)))
        s.commit()
    bounce(running, dsn(MAILBOX))
    [notice] = mails_to(sink, OWNER)
    assert notice["Subject"] == f"Dev: {BOB} disabled for bounces"
    assert "kept bouncing" in text(notice) and BOB in text(notice)
    assert mails_to(sink, BOB)[0]["Subject"] == "Dev: posts to you are bouncing"


def test_owners_hear_when_a_spam_complaint_removes_a_member(running, make_list, sink, engine,
                                                            cli):
    make_list(members=[BOB])
    ok(cli("list", "set", LIST, "notify_owners", "on"))
    bounce(running, dsn(("messages/auto/arf-16.eml", "kijitora@example.com")),
           to="dev-bounces@lists.example.org")
    [notice] = mails_to(sink, OWNER)
    assert notice["Subject"] == f"Dev: {BOB} removed"
    assert "marked a post as spam" in text(notice)
    assert not is_member(engine, BOB)


# --- the list's own templates -----------------------------------------------------------

def test_the_owners_welcome_and_goodbye_are_the_ones_sent(running, make_list, sink, engine,
                                                          cli, tmp_path):
    make_list()
    welcome = tmp_path / "welcome.txt"
    welcome.write_text("Hello {{ member }}, welcome to {{ name }} <{{ address }}>.\n"
                       "Rules: be kind.\nLeave: {{ unsubscribe_url }}\n", encoding="utf-8")
    goodbye = tmp_path / "goodbye.txt"
    goodbye.write_text("So long, {{ member }}. Come back via {{ join_address }}.\n")
    ok(cli("template", "set", LIST, "welcome", welcome))
    ok(cli("template", "set", LIST, "goodbye", goodbye))
    assert "Rules: be kind." in ok(cli("template", "show", LIST, "welcome")).stdout

    ok(cli("member", "invite", LIST, ALICE))
    with web(running) as client:
        client.post(f"/invite/{token_of(mails_to(sink, ALICE)[0])}")
        got = mails_to(sink, ALICE, 2)[1]
        assert got["Subject"] == f"Welcome to {LIST}"  # the subject stays
        body = text(got)
        assert body.startswith(f"Hello {ALICE}, welcome to Dev <{LIST}>.\nRules: be kind.")
        assert "/unsubscribe/" in body
        client.post(unsubscribe_path(engine, ALICE))
    assert text(mails_to(sink, ALICE, 3)[2]).startswith(
        f"So long, {ALICE}. Come back via dev-join@lists.example.org.")

    ok(cli("template", "reset", LIST, "welcome"))
    shown = ok(cli("template", "show", LIST, "welcome"))
    assert "{{ unsubscribe_url }}" in shown.stdout and "built-in" in shown.stderr


def test_a_template_that_does_not_render_is_refused_whole(make_list, config_file, tmp_path,
                                                          cli):
    make_list()
    bad = tmp_path / "bad.txt"
    for template, named in (("{{ mute_url }}", "mute_url"),  # not a welcome's variable
                            ("{{ name + 1 }}", "welcome"),
                            ("{{ ''.__class__.__mro__ }}", "welcome")):
        bad.write_text(template)
        proc = run_listserv("--config", config_file, "template", "set", LIST, "welcome", bad)
        assert_one_line_error(proc, "welcome", named)
    assert_one_line_error(run_listserv("--config", config_file, "template", "set", LIST,
                                       "signature", bad), "signature", "digest_header")
    shown = ok(cli("template", "show", LIST, "welcome"))
    assert "built-in" in shown.stderr  # nothing was saved


def test_an_owner_starts_from_the_built_in_template(make_list, cli, tmp_path):
    make_list()
    for name in ("welcome", "goodbye", "footer"):
        start = tmp_path / f"{name}.txt"
        start.write_text(ok(cli("template", "show", LIST, name)).stdout)
        assert "Subject:" not in start.read_text()  # the subject stays the server's
        ok(cli("template", "set", LIST, name, start))
        assert "built-in" not in ok(cli("template", "show", LIST, name)).stderr


def test_the_footer_template_is_the_list_footer(running, make_list, sink, cli, tmp_path):
    make_list(members=[BOB, CAROL])
    footer = tmp_path / "footer.txt"
    footer.write_text("-- {{ name }}: {{ address }}\nLeave: {{ unsubscribe_url }}\n")
    ok(cli("template", "set", LIST, "footer", footer))
    assert as_json(cli("list", "show", LIST, "--json"))["footer"] == footer.read_text()
    running.send(BOB, [LIST], message())
    body = text(mails_to(sink, CAROL)[0])
    assert f"-- Dev: {LIST}\nLeave: " in body and "/unsubscribe/" in body


def test_the_digest_header_heads_each_digest(running, make_list, sink, engine, cli, tmp_path):
    make_list(members=[BOB, CAROL])
    ok(cli("member", "set", LIST, CAROL, "--delivery", DeliveryMode.DIGEST_PLAIN.value))
    header = tmp_path / "header.txt"
    header.write_text("{{ subject }}: the weekly news of {{ name }}.\n")
    ok(cli("template", "set", LIST, "digest_header", header))
    running.send(BOB, [LIST], message("Topic"))
    delivered_to(engine, sink, BOB)
    ok(cli("digest", "send", LIST))
    digest = text(mails_to(sink, CAROL)[0])
    assert digest.startswith("Dev Digest, Vol 1, Issue 1: the weekly news of Dev.\n\nSend ")
