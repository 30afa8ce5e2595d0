"""What members see on their copies, over real SMTP: their own RFC 8058 unsubscribe
link, the footer with their own mute link, Reply-To and subject prefix as the list says,
signed mail intact; and each copy reaches its member once, pipelined or not."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from listserv import db, fanout, headers, outbox, tokens
from listserv.enums import ReplyTo
from listserv.models import MailingList
from listserv.models import Message as Stored
from listserv.queue_tables import RecipientFailure
from tests.helpers import CORPUS, message

LIST = "dev@lists.example.org"
SECRET = "test-secret"  # [web] secret of the `config` fixture
MEMBERS = ["bob@example.com", "carol@example.com", "dave@example.net"]


def parsed(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def copies(sink) -> dict[str, bytes]:
    """Each recipient's copy; a personal copy goes to one recipient per transaction."""
    got: dict[str, bytes] = {}
    for received in sink.received:
        assert len(received.rcpt_tos) == 1
        assert received.rcpt_tos[0] not in got, "a member got the post twice"
        got[received.rcpt_tos[0]] = received.data
    return got


def link_token(text: str, kind: str) -> str:
    return re.search(rf"/{kind}/([A-Za-z0-9_.-]+)", text).group(1)


def list_id(engine) -> int:
    with db.session(engine) as s:
        return s.scalars(select(MailingList.id)).one()


def set_list(engine, **values) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).values(**values))
        s.commit()


def test_each_member_gets_their_own_one_click_unsubscribe(running, make_list, sink, engine):
    make_list(members=MEMBERS, owner=None)
    running.send("bob@example.com", [LIST], message())
    sink.wait_for(3)
    got = copies(sink)
    assert sorted(got) == sorted(MEMBERS)
    seen = set()
    for member, data in got.items():
        copy = parsed(data)
        header = copy["List-Unsubscribe"]
        assert header.endswith("<mailto:dev-leave@lists.example.org>")
        assert header.startswith(f"<{running.config.web.base_url}/unsubscribe/")
        assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert copy.get_all("List-Unsubscribe") == [header]
        token = link_token(header, "unsubscribe")
        assert tokens.verify(SECRET, "unsubscribe", token)[:2] == [str(list_id(engine)), member]
        assert f"Unsubscribe: {running.config.web.base_url}/unsubscribe/{token}" in (
            copy.get_payload())
        seen.add(token)
    assert len(seen) == len(MEMBERS)


ALTERNATIVE = """\
From: bob@example.com
To: dev@lists.example.org
Subject: Both ways
Message-ID: <both@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Hello in text.
--b1
Content-Type: text/html; charset=utf-8

<html><body><p>Hello in HTML.</p></body></html>
--b1--
"""


def test_footer_once_in_text_and_html_with_the_members_mute_link(running, make_list, sink,
                                                                  engine):
    make_list(members=["bob@example.com"], owner=None)
    running.send("bob@example.com", [LIST], ALTERNATIVE)
    sink.wait_for(1)
    text, html = parsed(copies(sink)["bob@example.com"]).get_payload()
    with db.session(engine) as s:
        post = s.scalars(select(Stored.id).where(Stored.message_id == "both@example.com")).one()
    for part in (text, html):
        body = part.get_payload(decode=True).decode()
        assert body.count("Mute this thread") == 1
        token = link_token(body, "mute")
        assert tokens.verify(SECRET, "mute", token)[:3] == [str(list_id(engine)),
                                                            "bob@example.com", str(post)]
    assert text.get_payload(decode=True).startswith(b"Hello in text.")
    page = html.get_payload(decode=True).decode()
    assert page.index("Mute this thread") < page.index("</body>")


def test_signed_post_stays_byte_identical_inside_a_multipart_mixed(running, make_list, sink):
    signed = (CORPUS / "messages/notmuch/protected-headers__simple-signed-mail.eml").read_bytes()
    signed = signed.replace(b"\n", b"\r\n")
    make_list(members=["test_suite@notmuchmail.org"], owner=None)
    running.send("test_suite@notmuchmail.org", [LIST], signed)
    sink.wait_for(1)
    data = copies(sink)["test_suite@notmuchmail.org"]
    copy = parsed(data)
    assert copy.get_content_type() == "multipart/mixed"
    inner, footer = copy.get_payload()
    assert inner.get_content_type() == "multipart/signed"
    body = signed.split(b"\r\n\r\n", 1)[1]
    assert body in data  # the signed part and its signature, byte for byte
    assert b"Mute this thread" in footer.get_payload(decode=True)


def test_muted_member_gets_no_more_of_that_thread_but_other_threads(running, make_list,
                                                                    sink):
    make_list(members=MEMBERS, owner=None)
    running.send("bob@example.com", [LIST], message("Bikeshed"))
    sink.wait_for(3)
    first = parsed(copies(sink)["carol@example.com"])
    mute_url = re.search(r"(http\S+/mute/\S+)", first.get_payload()).group(1)
    with httpx.Client(timeout=10) as client:
        assert client.post(mute_url).status_code == 200
    sink.received.clear()
    reply = message("Re: Bikeshed", headers={"In-Reply-To": first["Message-ID"],
                                            "References": first["Message-ID"]})
    running.send("bob@example.com", [LIST], reply)
    running.send("bob@example.com", [LIST], message("Something else"))
    sink.wait_for(5)
    subjects = {(r.rcpt_tos[0], parsed(r.data)["Subject"]) for r in sink.received}
    assert ("carol@example.com", "[Dev] Re: Bikeshed") not in subjects
    assert ("carol@example.com", "[Dev] Something else") in subjects
    assert ("dave@example.net", "[Dev] Re: Bikeshed") in subjects
    assert sink.wait_for(6, timeout=1.5) and len(sink.received) == 5


def test_reply_to_list_replaces_the_authors(running, make_list, sink, engine):
    make_list(members=["bob@example.com"], owner=None)
    set_list(engine, reply_to=ReplyTo.LIST)
    running.send("bob@example.com", [LIST],
                 message(headers={"Reply-To": "bob-private@example.com"}))
    sink.wait_for(1)
    assert parsed(sink.received[0].data).get_all("Reply-To") == [LIST]


def test_reply_to_poster_leaves_it_alone(running, make_list, sink):
    make_list(members=["bob@example.com"], owner=None)
    running.send("bob@example.com", [LIST],
                 message(headers={"Reply-To": "bob-private@example.com"}))
    sink.wait_for(1)
    assert parsed(sink.received[0].data).get_all("Reply-To") == ["bob-private@example.com"]


@pytest.mark.parametrize("prefix,subject,expected", [
    ("[dev-list]", "Hello", "[dev-list] Hello"),
    ("[dev-list]", "Re: [dev-list] Hello", "Re: [dev-list] Hello"),
    ("", "Hello", "Hello"),
])
def test_subject_prefix_setting(running, make_list, sink, engine, prefix, subject, expected):
    make_list(members=["bob@example.com"], owner=None)
    set_list(engine, subject_prefix=prefix)
    running.send("bob@example.com", [LIST], message(subject))
    sink.wait_for(1)
    assert parsed(sink.received[0].data)["Subject"] == expected


MANY = [f"member{n:02d}@example.org" for n in range(9)]


def test_pipelined_sending_gives_every_member_their_own_copy_once(running, make_list, sink,
                                                                  engine):
    sink.pipelining = True
    make_list(members=MANY, owner=None)
    running.send(MANY[0], [LIST], message(sender=MANY[0], body=".starts with a dot\n"))
    sink.wait_for(len(MANY))
    got = copies(sink)
    assert sorted(got) == MANY
    for member, data in got.items():  # each copy carries the links of its own recipient
        token = link_token(parsed(data)["List-Unsubscribe"], "unsubscribe")
        assert tokens.verify(SECRET, "unsubscribe", token)[1] == member
        assert b"\r\n\r\n.starts with a dot\r\n" in data  # dot-stuffing undone by the sink


@pytest.mark.parametrize("pipelining", [True, False])
def test_refusals_count_for_their_recipient_only(running, make_list, sink, engine,
                                                 pipelining):
    sink.pipelining = pipelining
    sink.rcpt_replies = {"member03@example.org": ["550 5.1.1 no such user"],
                         "member05@example.org": ["450 4.2.1 try again later"]}
    sink.data_replies = ["250 OK", "451 4.3.0 disk full"]  # the second message, once
    make_list(members=MANY, owner=None)
    running.send(MANY[0], [LIST], message(sender=MANY[0]))
    expected = [m for m in MANY if m != "member03@example.org"]
    sink.wait_for(len(expected), timeout=20)
    assert sorted(copies(sink)) == expected  # the refused-for-now ones once, later
    with db.session(engine) as s:
        failures = s.scalars(select(RecipientFailure.address)).all()
    assert failures == ["member03@example.org"]


def test_copies_without_slots_keep_one_transaction_per_job(running, make_list, sink, engine):
    """Notices and owner forwards are the same for everyone: one transaction carries
    the whole job."""
    make_list()
    with db.session(engine) as s:
        outbox.queue(s, b"Subject: notice\r\n\r\nSame for all.\r\n", "dev-bounces@x.org",
                     ["a@example.org", "b@example.org"], 2)
        s.commit()
    sink.wait_for(2)  # the worker finds it at its next poll
    assert [m.rcpt_tos for m in sink.received] == [["a@example.org", "b@example.org"]]


def test_a_broken_footer_template_falls_back_to_the_default():
    mlist = MailingList(address=LIST, domain="lists.example.org", name="Dev",
                        footer="{{ no_such_variable }}")
    assert "Mute this thread" in fanout.footer(mlist, "http://x").text
    mlist.footer = ""
    assert fanout.footer(mlist, "http://x") is None


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
       | st.lists(st.sampled_from(["a", "ü", " ", "\n", "\r\n", "x" * 120, "é" * 600]),
                  max_size=8).map("".join))
@settings(max_examples=500, derandomize=True, database=None)
def test_a_text_the_server_writes_reads_back_as_written(text):
    """Notices and digests: what a mail client decodes from the entity is the text, its
    line breaks made CRLF, and no line of the entity is longer than 998 octets."""
    part = headers.text_part(text)
    assert max(len(line) for line in part.split(b"\r\n")) <= 998
    read = email.message_from_bytes(part, policy=email.policy.default)
    assert read.get_content_type() == "text/plain"
    assert read["Content-Transfer-Encoding"] != "7bit" or part.isascii()  # RFC 2045 2.7
    assert read.get_content().replace("\r\n", "\n") == _email_lines(text)


def _email_lines(text: str) -> str:
    """The text as the email package splits its lines (on CR, LF and CRLF only)."""
    return "".join(line.decode() + "\n" for line in text.encode().splitlines())
