"""What SECURITY.md promises, each over the real interface an attacker has: SMTP on
loopback for relaying and mail-borne header injection, the console script for the
values an owner types, HTTP for the archive."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import smtplib
import time
from datetime import timedelta
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import select, text, update

from listserv import db, digest, limits, tokens
from listserv.enums import ArchivePolicy
from listserv.models import MailingList, Message, Token, utcnow
from listserv.web.access import archive_cookie
from tests.helpers import (
    CSP,
    LIST,
    Elements,
    assert_one_line_error,
    mails_to,
    message,
    no_mail_markup,
    run_listserv,
    web,
    write_config,
)
from tests.servers import connect, connect_when_counted_out

READER = "reader@example.net"


def rcpt(running, address: str) -> tuple[int, bytes]:
    """The server's answer to one RCPT TO, the argument sent exactly as given."""
    with running.smtp() as client:
        client.ehlo("client.example")
        client.mail("bob@example.com")
        arg = address if address.startswith("<") else f"<{address}>"
        return client.docmd(f"RCPT TO:{arg}")


# --- not an open relay --------------------------------------------------------------------

@pytest.mark.parametrize("address, code, status", [
    ("user@foreign.example", 550, b"5.7.1"),
    ("dev@other.example", 550, b"5.7.1"),  # our list's name, someone else's domain
    ("dev@lists.example.org.evil.example", 550, b"5.7.1"),
    ("dev@sub.lists.example.org", 550, b"5.7.1"),
    ("dev@[127.0.0.1]", 550, b"5.7.1"),  # an address literal is no list domain
    # The %-hack and bang paths: relays of old read these as "forward to"; to us they
    # are local parts of no list.
    ("user%foreign.example@lists.example.org", 550, b"5.1.1"),
    ("dev%foreign.example@lists.example.org", 550, b"5.1.1"),
    ("foreign.example!user@lists.example.org", 550, b"5.1.1"),
    # Source routes (RFC 5321 C): the route is ignored, the mailbox at its end decides.
    ("<@lists.example.org:user@foreign.example>", 550, b"5.7.1"),
    ("<@a.example:user@b.example>", 550, b"5.7.1"),
    # A quoted local part is its content; content with an "@" is no list's name.
    ('"dev@foreign.example"@lists.example.org', 550, b"5.1.1"),
    ('"user@foreign.example"@lists.example.org', 550, b"5.1.1"),
    # RFC 5321's Domain has no trailing dot and an address has one "@": malformed.
    ("dev@lists.example.org.", 553, b"5.1.3"),
    ("user@foreign.example@lists.example.org", 553, b"5.1.3"),
    ("dev@lists.example.org@foreign.example", 553, b"5.1.3"),
])
def test_only_our_lists_are_taken_at_rcpt(running, make_list, address, code, status):
    make_list(LIST, members=["bob@example.com"])
    got, reply = rcpt(running, address)
    assert (got, reply[:5]) == (code, status), reply


@pytest.mark.parametrize("address", [
    "Dev@Lists.Example.ORG",  # domains are case-insensitive; list names are made so
    '"dev"@lists.example.org',  # a quoted string is the same local part (RFC 5322 3.2.4)
    "<@relay.example:dev@lists.example.org>",  # a source route to us is ignored
])
def test_forms_that_mean_our_list_reach_it(running, make_list, sink, address):
    make_list(LIST, members=["bob@example.com", READER])
    assert rcpt(running, address)[0] == 250
    with running.smtp() as client:
        client.ehlo("client.example")
        client.mail("bob@example.com")
        client.docmd(f"RCPT TO:{address if address.startswith('<') else f'<{address}>'}")
        client.data(message().encode())
    assert mails_to(sink, READER)


def test_a_refused_recipient_gets_no_data_through(running, make_list, sink):
    make_list(LIST, members=["bob@example.com"])
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        running.send("bob@example.com", ["user%foreign.example@lists.example.org"],
                     message(to="user@foreign.example"))
    assert sink.received == []


# --- no header injection: what an owner types -----------------------------------------

INJECTED = "Dev\r\nBcc: victim@evil.example"


@pytest.fixture
def config_file(tmp_path, db_url):
    return write_config(tmp_path / "listserv.toml", db_url)


@pytest.mark.parametrize("args, named", [
    (["list", "create", "new@lists.example.org", "--name", INJECTED], "name"),
    (["list", "create", "new@lists.example.org", "--name", "Dev\x07"], "name"),
    (["list", "create", "new@lists.example.org", "--description", "one\ntwo"],
     "description"),
    (["list", "create", "new@lists.example.org\r\nBcc: victim@evil.example"], "address"),
    (["list", "create", "new@lists.example.org", "--owner",
      "o@example.org\r\nBcc: victim@evil.example"], "owner"),
    (["list", "set", LIST, "name", INJECTED], "name"),
    (["list", "set", LIST, "description", "x\ny"], "description"),
    (["list", "set", LIST, "subject_prefix", "[Dev]\nBcc: victim@evil.example"],
     "subject_prefix"),
    (["list", "set", LIST, "subject_prefix", "[Dev]\x1b[31m"], "subject_prefix"),
    (["list", "set", LIST, "reply_to", "list\r\nBcc: victim@evil.example"], "reply_to"),
    (["list", "set", LIST, "footer", "ok\rBcc: victim@evil.example"], "footer"),
    (["list", "set", LIST, "footer", "ok\x07"], "footer"),
    (["member", "add", LIST, "Bob\r\nBcc: victim@evil.example <bob@example.com>"],
     "not a valid address"),
    (["member", "add", LIST, "bob@example.com\nvictim@evil.example"], "not a valid address"),
    # The same CR LF hidden in an encoded-word of the display name.
    (["member", "add", LIST, "=?utf-8?q?Bob=0D=0ABcc=3A_victim=40evil=2Eexample?= "
      "<bob@example.com>"], "not a valid address"),
])
def test_control_characters_in_values_that_reach_headers_are_refused(
        make_list, config_file, args, named):
    make_list(LIST)
    assert_one_line_error(run_listserv("--config", config_file, *args), named)


def test_a_footer_may_have_lines(make_list, config_file):
    make_list(LIST)
    proc = run_listserv("--config", config_file, "list", "set", LIST, "footer",
                        "Line one\r\nLine two\n\tindented")
    assert proc.returncode == 0, proc.stderr


# --- no header injection: what arrives by mail ----------------------------------------

# "Alice<CR><LF>Bcc: victim@evil.example" as an RFC 2047 encoded-word: legal in a From
# field, and decoded it would start a header of the sender's choosing.
EVIL_NAME = "=?utf-8?q?Alice=0D=0ABcc=3A_victim=40evil=2Eexample?="
EVIL_SUBJECT = "=?utf-8?q?Hello=0D=0ABcc=3A_victim=40evil=2Eexample?="


def header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_no_injected_field(data: bytes) -> None:
    """No header line of ours starts a field named by the attacker."""
    fields = [line for line in header_lines(data) if re.match(rb"(?i)bcc\s*:", line)]
    assert fields == [], fields


def raw_to(sink, address: str) -> list[bytes]:
    mails_to(sink, address)
    with sink.lock:
        return [m.data for m in sink.received if address in m.rcpt_tos]


def test_an_authors_name_does_not_split_the_dmarc_from(running, make_list, sink, dns_server):
    dns_server.records["_dmarc.strict.example"] = ["v=DMARC1; p=reject"]
    make_list(LIST, members=["alice@strict.example", READER], owner=None)
    running.send("alice@strict.example", [LIST],
                 message(sender=f"{EVIL_NAME} <alice@strict.example>"))
    data = raw_to(sink, READER)[0]
    assert_no_injected_field(data)
    copy = email.message_from_bytes(data, policy=email.policy.compat32)
    assert copy["From"] == '"Alice Bcc: victim@evil.example via Dev" <dev@lists.example.org>'


def test_a_subject_does_not_split_the_held_notice(running, make_list, sink, engine):
    make_list(LIST, members=["alice@example.com", READER])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(emergency=True))  # hold every post
        s.commit()
    running.send("alice@example.com", [LIST],
                 message(sender=f"{EVIL_NAME} <alice@example.com>", subject=EVIL_SUBJECT))
    for data in raw_to(sink, "alice@example.com") + raw_to(sink, "owner@example.org"):
        assert_no_injected_field(data)
    notice = mails_to(sink, "alice@example.com")[0]
    assert notice["Subject"].endswith("awaits a moderator: Hello Bcc: victim@evil.example")


def test_a_subscribers_name_does_not_reach_the_confirmation(running, make_list, sink):
    make_list(LIST)
    running.send("eve@example.com", ["dev-join@lists.example.org"],
                 message(sender=f"{EVIL_NAME} <eve@example.com>", to="dev-join@lists.example.org"))
    data = raw_to(sink, "eve@example.com")[0]
    assert_no_injected_field(data)
    assert email.message_from_bytes(data, policy=email.policy.default)["To"] == "eve@example.com"


def test_a_list_name_stored_before_the_checks_cannot_split_a_copy(running, make_list, sink,
                                                                   engine):
    """Names are refused at the CLI now, but older databases may hold one: every header
    the server writes from the name is one line all the same."""
    make_list(LIST, members=["bob@example.com", READER])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(name=INJECTED))
        s.commit()
    running.send("bob@example.com", [LIST], message())
    copy = raw_to(sink, READER)[0]
    assert_no_injected_field(copy)
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed["List-Id"] == '"Dev Bcc: victim@evil.example" <dev.lists.example.org>'
    assert parsed["Subject"] == "[Dev Bcc: victim@evil.example] Hello"
    running.send("eve@example.com", ["dev-join@lists.example.org"],
                 message(sender="eve@example.com", to="dev-join@lists.example.org"))
    assert_no_injected_field(raw_to(sink, "eve@example.com")[0])


# --- rate limits ----------------------------------------------------------------------

def test_a_sender_over_the_hourly_limit_is_put_off_with_451(make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    srv = make_server(smtp={"max_messages_per_sender_per_hour": 2})
    for _ in range(2):
        srv.send("bob@example.com", [LIST], message())
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        # The same sender in other letters: one allowance, not one per spelling.
        srv.send("Bob@Example.COM", [LIST], message(subject="one too many"))
    assert refused.value.smtp_code == 451 and b"4.7.1" in refused.value.smtp_error
    assert b"rate limit" in refused.value.smtp_error
    assert stored_subjects(engine) == ["Hello", "Hello"]  # a 4xx: the sender's MTA keeps it
    # Other senders, and bounces (the null sender), are not held up by bob.
    srv.send("carol@example.com", [LIST], message(sender="carol@example.com"))
    srv.send("", ["dev-bounces@lists.example.org"], message(to="dev-bounces@lists.example.org"))
    # An hour later the sender's MTA tries again, and the message goes in.
    with db.session(engine) as s:
        s.execute(update(Message).values(received_at=utcnow() - timedelta(hours=1, minutes=1)))
        s.commit()
    srv.send("bob@example.com", [LIST], message(subject="one too many"))
    assert "one too many" in stored_subjects(engine)


def stored_subjects(engine) -> list[str]:
    with db.session(engine) as s:
        return list(s.scalars(select(Message.subject).where(
            Message.mail_from == "bob@example.com").order_by(Message.id)))


def test_one_connection_too_many_from_an_address_gets_421(make_server, make_list):
    make_list(LIST)
    srv = make_server(smtp={"max_connections_per_ip": 2})
    first, second = connect(srv), connect(srv)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(srv)
    assert refused.value.smtp_code == 421 and b"4.7.0" in refused.value.smtp_error
    assert second.noop()[0] == 250  # the open ones carry on
    first.quit()
    third = connect_when_counted_out(srv)
    assert third.noop()[0] == 250
    third.quit()
    second.quit()


# --- the archive: XSS and members-only -------------------------------------------------

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
SECRET_LIST = "secret@lists.example.org"


def post_with_attachment(running, to: str, message_id: str) -> None:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "bob@example.com", to, "Secret plans"
    mail["Message-ID"] = f"<{message_id}>"
    mail["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    mail.set_content("The plans are secret.\n")
    mail.add_attachment(b"secret bytes", maintype="application", subtype="octet-stream",
                        filename="plans.bin")
    running.send("bob@example.com", [to], mail.as_bytes())


def send_digest(engine, config, address: str) -> None:
    with db.session(engine) as s:
        mlist = s.scalars(select(MailingList).where(MailingList.address == address)).one()
        assert digest.build(s, config, mlist.id, utcnow(), force=True) is not None
        s.commit()


def test_list_names_urls_and_error_pages_are_inert(running, make_list, engine, config):
    """What an owner names a list, and what a visitor puts in a URL, is text on every
    page: the digest pages, the feed, and the 400, 403 and 404 pages too."""
    make_list(LIST, name=HOSTILE_NAME, members=["bob@example.com"])
    make_list(SECRET_LIST, name=HOSTILE_NAME, members=["bob@example.com"])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(description="<script>alert(2)</script>"))
        s.execute(update(MailingList).where(MailingList.address == SECRET_LIST)
                  .values(archive=ArchivePolicy.PRIVATE))
        s.commit()
    running.send("bob@example.com", [LIST], message("<script>alert(3)</script>"))
    send_digest(engine, config, LIST)
    with web(running) as client:
        pages = {path: client.get(path) for path in (
            "/", f"/{LIST}/", f"/{LIST}/digest/", f"/{LIST}/digest/1/1/",
            f"/{LIST}/digest/9/9/", f"/{SECRET_LIST}/", f"/{SECRET_LIST}/digest/",
            "/<script>alert(4)</script>@lists.example.org/",
            f"/{LIST}/thread/<script>alert(5)</script>/",
            f"/{LIST}/search?q=<script>alert(6)</script>&page=<script>alert(7)</script>",
            f"/{LIST}/export.mbox?month=<script>alert(8)</script>")}
        feed = client.get(f"/{LIST}/feed.atom")
    statuses = {path: page.status_code for path, page in pages.items()}
    assert sorted(set(statuses.values())) == [200, 400, 403, 404], statuses
    for path, page in pages.items():
        assert page.headers["content-security-policy"] == CSP, path
        no_mail_markup(page.text)
        assert "<script>" not in page.text and "<img src=x" not in page.text, path
    assert HOSTILE_NAME in Elements(pages["/"].text).text  # shown, as text
    assert "<script>alert(3)</script>" in Elements(pages[f"/{LIST}/digest/1/1/"].text).text
    assert feed.status_code == 200
    assert b"<script>" not in feed.content and b"<img" not in feed.content


def test_nothing_of_a_private_archive_is_readable_without_the_member_pass(
        running, make_list, engine, config):
    mlist = make_list(SECRET_LIST, members=["bob@example.com"])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(archive=ArchivePolicy.PRIVATE))
        s.commit()
    post_with_attachment(running, SECRET_LIST, "plans@example.com")
    send_digest(engine, running.config, SECRET_LIST)
    base = f"/{SECRET_LIST}/"
    existing = ["", "2026/11/", "thread/plans@example.com/", "message/plans@example.com/",
                "message/plans@example.com/raw", "message/plans@example.com/attachment/0/plans.bin",
                "search?q=plans", "feed.atom", "export.mbox",
                "export.mbox?thread=plans@example.com", "export.mbox?month=2026-11",
                "digest/", "digest/1/1/"]
    # What does not exist is refused the same way: a 404 would tell what does.
    missing = ["2001/01/", "thread/none@example.com/", "message/none@example.com/",
               "message/none@example.com/raw", "digest/9/9/", "export.mbox?thread=none"]
    with web(running) as client:
        refused = {path: client.get(base + path) for path in existing + missing}
    for path, page in refused.items():
        assert page.status_code == 403, path
        assert b"plans" not in page.content.lower() and b"secret bytes" not in page.content
    member_pass = {archive_cookie(mlist):
                   tokens.archive_pass(config.web.secret, mlist.id, "bob@example.com", 30)}
    with httpx.Client(base_url=running.config.web.base_url, cookies=member_pass,
                      timeout=20) as client:
        opened = {path: client.get(base + path).status_code for path in existing}
    assert opened == dict.fromkeys(existing, 200)


# --- tokens ---------------------------------------------------------------------------

CONFIRM = re.compile(r"dev-confirm\+([0-9a-f]{32})@lists\.example\.org")


def test_a_confirmation_token_needs_its_secret_half(running, make_list, sink, engine):
    """The first half of a token finds its row; the second must match a hash the row
    keeps, compared in constant time. The database holds no usable token."""
    make_list(LIST)
    running.send("alice@example.com", ["dev-join@lists.example.org"],
                 message(sender="alice@example.com", to="dev-join@lists.example.org"))
    [confirmation] = mails_to(sink, "alice@example.com")
    token = CONFIRM.search(str(confirmation["Reply-To"])).group(1)
    lookup, secret = token[:16], token[16:]
    with db.session(engine) as s:
        [row] = s.scalars(select(Token)).all()
        assert (row.token, row.secret_hash) == (lookup, hashlib.sha256(secret.encode())
                                                .hexdigest())
    wrong = f"{int(secret, 16) ^ 1:016x}"
    with web(running) as client:
        for guess in (lookup, lookup + wrong, lookup + secret[:-1], wrong + secret):
            assert client.get(f"/confirm/{guess}").status_code == 404, guess
        assert client.get(f"/confirm/{token.upper()}").status_code == 200


def test_tokens_in_flight_survive_the_upgrade_that_splits_them(db_url):
    """Migration 0006 splits the tokens stored whole before it: the confirmation mails
    already sent keep working."""
    from alembic import command

    engine = db.make_engine(db_url)
    command.upgrade(db._alembic_config(engine), "0005")
    value = "0123456789abcdef" + "fedcba9876543210"
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO mailing_list (address, domain, name, description, created_at, "
            "subscription, nonmember_action, emergency, reply_to, max_message_bytes, "
            "archive) VALUES ('dev@lists.example.org', 'lists.example.org', 'Dev', '', "
            "'2026-01-01 00:00:00', 'open', 'hold', false, 'poster', 0, 'public')"))
        c.execute(text(
            "INSERT INTO token (token, kind, list_id, address, data, created_at, expires_at) "
            "SELECT :value, 'subscribe', id, 'alice@example.com', '', '2026-01-01 00:00:00', "
            "'2999-01-01 00:00:00' FROM mailing_list"), {"value": value})
    db.upgrade(engine)
    with db.session(engine) as s:
        found = tokens.find(s, value)
        assert found is not None and found.address == "alice@example.com"
        assert tokens.find(s, value[:16] + "0" * 16) is None
        assert value[16:] not in found.token + found.secret_hash
    engine.dispose()


def test_headroom_admits_from_a_recent_count_and_asks_again_when_used_up():
    room = limits.Headroom(3)
    assert not room.take("bob@example.com")  # never counted: ask the store
    room.counted("bob@example.com", time.monotonic(), 1)  # 1 stored, this MAIL the 2nd
    assert room.take("bob@example.com")  # the 3rd
    assert not room.take("bob@example.com")  # the 4th: counted again before any refusal
    stale = limits.Headroom(3, seconds=0)
    stale.counted("bob@example.com", time.monotonic() - 1, 0)
    assert not stale.take("bob@example.com")  # a count older than `seconds` is not used
