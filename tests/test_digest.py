"""Digests: when they come due, what they look like (parsed back from what the smarthost
received), that every post reaches every member exactly once whatever their delivery
mode, the CLI and archive pages, and replies to a digest as a whole."""

from __future__ import annotations

import email
import email.policy
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from sqlalchemy import select

from listserv import db, digest, digest_reply
from listserv.enums import DeliveryMode, DigestFrequency, VolumeFrequency
from listserv.models import DigestIssue, DigestItem, MailingList, Message
from listserv.parse import parse
from tests.helpers import (
    REG,
    as_json,
    assert_one_line_error,
    delivered_to,
    ingest_mail,
    mails_to,
    message,
    ok,
    post_bytes,
    run_listserv,
    send_post,
    set_modes,
)

LIST = "dev@lists.example.org"
MIME, PLAIN, NOMAIL = "mime@example.com", "plain@example.com", "nomail@example.com"
MODES = {REG: DeliveryMode.REGULAR, MIME: DeliveryMode.DIGEST_MIME,
         PLAIN: DeliveryMode.DIGEST_PLAIN, NOMAIL: DeliveryMode.NOMAIL}
HYPHENS_70, HYPHENS_30 = "-" * 70, "-" * 30


def t(day: int, hour: int = 0, minute: int = 0, month: int = 11, year: int = 2026) -> datetime:
    """A UTC time; 2026-11-30 is a Monday."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def a_list(**settings: object) -> MailingList:
    mlist = MailingList(address=LIST, domain="lists.example.org", name="Dev")
    for key, value in settings.items():
        setattr(mlist, key, value)
    return mlist


# --- the schedule (pure) ----------------------------------------------------------------

def test_daily_digest_goes_at_the_send_hour_once_per_day():
    mlist = a_list(digest_send_hour=8, digest_last_sent_at=t(30, 8))
    posted = t(30, 10)
    assert not digest.due(mlist, 500, posted, t(1, 7, 59, month=12))
    assert digest.due(mlist, 500, posted, t(1, 8, month=12))
    assert digest.due(mlist, 500, posted, t(1, 23, month=12))  # a late check still sends


def test_a_post_after_todays_slot_waits_for_the_next_one():
    mlist = a_list(digest_send_hour=8)  # never sent before
    assert not digest.due(mlist, 500, t(30, 10), t(30, 11))
    assert digest.due(mlist, 500, t(30, 10), t(1, 8, month=12))


def test_a_slot_already_sent_for_is_not_sent_again():
    # The slot's digest went out at 08:00:30; a post that came at 07:59:59 but was
    # committed after it is pending, and waits for tomorrow.
    mlist = a_list(digest_send_hour=8, digest_last_sent_at=t(30, 8).replace(second=30))
    assert not digest.due(mlist, 500, t(30, 7, 59), t(30, 8, 1))


def test_weekly_digest_goes_on_mondays():
    mlist = a_list(digest_frequency=DigestFrequency.WEEKLY, digest_send_hour=6,
                   digest_last_sent_at=t(30, 6))
    posted = t(1, 9, month=12)  # Tuesday
    assert not digest.due(mlist, 500, posted, t(6, 23, month=12))  # Sunday
    assert not digest.due(mlist, 500, posted, t(7, 5, month=12))  # Monday, before 06:00
    assert digest.due(mlist, 500, posted, t(7, 6, month=12))


def test_monthly_digest_goes_on_the_first():
    mlist = a_list(digest_frequency=DigestFrequency.MONTHLY, digest_send_hour=0,
                   digest_last_sent_at=t(1, 0))
    posted = t(2, 12)
    assert not digest.due(mlist, 500, posted, t(30, 23))
    assert digest.due(mlist, 500, posted, t(1, 0, month=12))


def test_size_trigger_sends_at_once_when_pending_posts_exceed_the_limit():
    mlist = a_list(digest_send_hour=8, digest_max_bytes=1000, digest_last_sent_at=t(30, 8))
    assert not digest.due(mlist, 1000, t(30, 9), t(30, 9, 5))
    assert digest.due(mlist, 1001, t(30, 9), t(30, 9, 5))
    assert not digest.due(a_list(digest_max_bytes=0, digest_last_sent_at=t(30, 0)),
                          10**9, t(30, 9), t(30, 9, 5))  # 0: no size trigger


def test_nothing_pending_sends_nothing():
    mlist = a_list(digest_send_hour=8, digest_max_bytes=1, digest_last_sent_at=t(1, 8))
    assert not digest.due(mlist, 0, None, t(30, 9))


@pytest.mark.parametrize(("frequency", "last", "now", "expected"), [
    (VolumeFrequency.YEARLY, t(31, month=12), t(1, month=1, year=2027), (4, 1)),
    (VolumeFrequency.YEARLY, t(1, month=1), t(31, month=12), (3, 13)),
    (VolumeFrequency.QUARTERLY, t(30, month=9), t(1, month=10), (4, 1)),
    (VolumeFrequency.QUARTERLY, t(1, month=10), t(31, month=12), (3, 13)),
    (VolumeFrequency.MONTHLY, t(30), t(1, month=12), (4, 1)),
    (VolumeFrequency.WEEKLY, t(29), t(30), (4, 1)),  # Sunday, then Monday
    (VolumeFrequency.WEEKLY, t(30), t(6, month=12), (3, 13)),
    (VolumeFrequency.DAILY, t(30, 23), t(1, 0, month=12), (4, 1)),
    (VolumeFrequency.DAILY, t(30, 0), t(30, 23), (3, 13)),
])
def test_volume_goes_up_with_its_period_and_the_issue_restarts(frequency, last, now,
                                                                expected):
    mlist = a_list(digest_volume_frequency=frequency, digest_volume=3, digest_issue=12,
                   digest_last_sent_at=last)
    assert digest.numbering(mlist, now) == expected


def test_first_issue_is_volume_1_issue_1():
    assert digest.numbering(a_list(), t(30)) == (1, 1)


# --- finding the item a reply to the digest answers (pure) ------------------------------

ITEMS = [
    digest_reply.Candidate(1, "a1@example.com", "Build fails on ARM",
                     "The build fails on ARM since yesterday's merge.\nAny idea?"),
    digest_reply.Candidate(2, "a2@example.com", "Re: Build fails on ARM",
                     "Try cleaning the cache first, that fixed it for me.\n"),
    digest_reply.Candidate(3, "b1@example.com", "Release planning",
                     "We should cut the release candidate next Tuesday.\n"),
]


@pytest.mark.parametrize(("text", "expected"), [
    ("I agree.\n\n> Message: 3\n> Date: Mon, 30 Nov 2026\n> Subject: Release planning\n", 3),
    ("Yes.\n\n>   2. Re: Build fails on ARM (Carol)\n", 2),
    ("No, it did not.\n\n> Try cleaning the cache first, that fixed it for me.\n", 2),
    ("Tuesday is too early.\n>> We should cut the release candidate next Tuesday.\n", 3),
    ("About message 3: fine by me.\n", 3),
    ("See http://x/dev@lists.example.org/message/a2@example.com/ - no.\n", 2),
    # Everything quoted, but the reply says which one.
    ("Re #1: same here.\n\n> Message: 1\n> Message: 2\n> Message: 3\n", 1),
])
def test_the_answered_item_is_found(text, expected):
    assert digest_reply.answered(text, ITEMS) == expected


@pytest.mark.parametrize("text", [
    "Thanks for the digest!\n",
    "> Message: 1\n> Message: 2\n> Message: 3\nI read them all.\n",
    "> Hi all,\n> Thanks!\n",  # short lines say nothing
    "",
])
def test_an_unclear_reply_names_no_item(text):
    assert digest_reply.answered(text, ITEMS) is None


# --- over SMTP, through the sink --------------------------------------------------------

def four_modes(make_list, engine) -> MailingList:
    mlist = make_list(members=list(MODES), owner=None)
    set_modes(engine, mlist, MODES)
    return mlist


def stored(engine, message_id: str) -> Message:
    with db.session(engine) as s:
        return s.scalars(select(Message).where(Message.message_id == message_id)).one()


def digests_to(sink, address: str, count: int = 1) -> list[bytes]:
    """The raw digests `address` received, as the smarthost got them."""
    mails_to(sink, address, count)
    with sink.lock:
        return [m.data for m in sink.received if address in m.rcpt_tos]


def test_each_post_reaches_each_member_exactly_once_whatever_their_mode(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    first = [send_post(running, f"Topic {i}", f"Post number {i}.\n") for i in range(3)]
    ok(cli("digest", "send", LIST))
    assert delivered_to(engine, sink, REG) == 3
    assert delivered_to(engine, sink, MIME) == 1
    assert delivered_to(engine, sink, PLAIN) == 1
    assert delivered_to(engine, sink, NOMAIL) == 0
    later = send_post(running, "Topic 3", "Post number 3.\n")
    ok(cli("digest", "send", LIST))
    assert delivered_to(engine, sink, REG) == 4
    [(mime1, mime2), (plain1, plain2)] = [digests_to(sink, MIME, 2), digests_to(sink, PLAIN, 2)]
    for ids, raws in ((first, (mime1, plain1)), ([later], (mime2, plain2))):
        for raw in raws:
            carried = [m for m in first + [later] if f"<{m}>".encode() in raw]
            assert carried == ids  # each post in one digest, never in the next
    regular = [m["Subject"] for m in mails_to(sink, REG, 4)]
    assert sorted(regular) == [f"[Dev] Topic {i}" for i in range(4)]


def test_mime_digest_is_a_toc_and_a_multipart_digest_of_the_stored_bytes(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    root = send_post(running, "Build fails", "It fails on ARM.\n")
    other = send_post(running, "Release plan", "Next Tuesday.\n", sender=MIME)
    reply = send_post(running, "Re: Build fails", "Clean the cache.\n", sender=PLAIN,
                 **{"In-Reply-To": f"<{root}>"})
    ok(cli("digest", "send", LIST))
    [raw] = digests_to(sink, MIME)
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["Subject"] == "Dev Digest, Vol 1, Issue 1"
    assert mail["From"].addresses[0].addr_spec == "dev-request@lists.example.org"
    assert mail["To"] == LIST and mail["Reply-To"] == LIST
    assert mail["List-Id"] == "Dev <dev.lists.example.org>"
    assert mail["Precedence"] == "list" and mail["Message-ID"] and mail["Date"]
    assert "/unsubscribe/" in mail["List-Unsubscribe"]  # the member's own one-click link
    assert mail.get_content_type() == "multipart/mixed"
    toc, posts = mail.get_payload()
    assert toc.get_content_type() == "text/plain"
    assert posts.get_content_type() == "multipart/digest"
    parts = posts.get_payload()
    assert [p.get_content_type() for p in parts] == ["message/rfc822"] * 3
    # Thread by thread: the reply comes right after the post it answers.
    assert [p.get_payload()[0]["Message-ID"] for p in parts] == [
        f"<{root}>", f"<{reply}>", f"<{other}>"]
    for message_id in (root, reply, other):
        assert stored(engine, message_id).raw in raw  # the stored bytes, unchanged
    text = content(toc)
    base = running.config.web.base_url
    assert "Build fails\n  1. Build fails (" in text and "  2. Re: Build fails (" in text
    assert "Release plan\n  3. Release plan (" in text
    for message_id in (root, reply, other):
        assert f"{base}/{LIST}/message/{message_id}/" in text
    links = [line.split("Reply: ", 1)[1] for line in text.splitlines() if "Reply: mailto:" in line]
    assert [reply_target(link) for link in links] == [
        (f"<{root}>", "Re: Build fails"), (f"<{reply}>", "Re: Build fails"),
        (f"<{other}>", "Re: Release plan")]
    assert "joins its" in text and "thread" in text  # how to reply without breaking it


def test_the_mime_digest_leaves_out_the_posters_ip_address(running, make_list, sink, engine,
                                                             cli):
    four_modes(make_list, engine)
    webmail = send_post(running, "Hello", "From the web.\n",
                        **{"X-Originating-IP": "[203.0.113.7]"})
    ok(cli("digest", "send", LIST))
    [raw] = digests_to(sink, MIME)
    assert b"From the web." in raw and b"203.0.113.7" not in raw
    assert b"X-Originating-IP: [203.0.113.7]" in stored(engine, webmail).raw


def content(part: email.message.EmailMessage) -> str:
    """A text part's decoded text with "\n" line ends (it travels with CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def reply_target(link: str) -> tuple[str, str]:
    """(In-Reply-To, subject) of a mailto: link, checking its address."""
    parts = urlsplit(link)
    assert parts.scheme == "mailto" and unquote(parts.path) == LIST
    query = parse_qs(parts.query)
    return query["In-Reply-To"][0], query["subject"][0]


def test_plain_digest_is_rfc_1153_in_utf8(running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    first = send_post(running, "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
                 f"Ein schöner Tag.\n{HYPHENS_30}\nmehr\n")
    unwrapped = "Tuesday," + " and then some more words" * 8  # a client that does not wrap
    second = send_post(running, "Plans", unwrapped + "\n")
    ok(cli("digest", "send", LIST))
    [raw] = digests_to(sink, PLAIN)
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    # Lines as their authors wrote them: 8-bit text, no quoted-printable soft breaks.
    assert mail["Content-Transfer-Encoding"] == "8bit"
    assert f"\r\n{unwrapped}\r\n".encode() in raw
    assert mail["Subject"] == "Dev Digest, Vol 1, Issue 1"
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    text = content(mail)
    preamble, _, rest = text.partition(f"\n{HYPHENS_70}\n")
    assert "Today's Topics (2 messages):" in preamble
    assert "1. Grüße (" in preamble and "2. Plans (" in preamble
    chunks = rest.split(f"\n{HYPHENS_30}\n")
    assert len(chunks) == 3  # two messages, then the end
    for number, (chunk, message_id) in enumerate(zip(chunks[:2], (first, second), strict=True), 1):
        head, _, body = chunk.strip("\n").partition("\n\n")
        fields = dict(line.split(": ", 1) for line in head.splitlines())
        assert fields["Message"] == str(number)
        assert {"Date", "From", "Subject", "Message-ID"} <= set(fields)
        assert fields["Message-ID"] == f"<{message_id}>"
        link = next(line for line in body.splitlines() if line.startswith("Reply: "))
        assert reply_target(link[7:]) == (f"<{message_id}>", f"Re: {fields['Subject']}")
        assert f"/{LIST}/message/{message_id}/" in body
    assert "Ein schöner Tag." in chunks[0]
    assert f" {HYPHENS_30}\nmehr" in chunks[0]  # a separator inside a post is stuffed
    end = chunks[2].strip("\n").splitlines()
    assert end == ["End of Dev Digest, Vol 1, Issue 1", "*" * 33]
    # The MIME form carries the 8-bit post as it came, and says it is 8-bit.
    [mime] = digests_to(sink, MIME)
    assert stored(engine, first).raw in mime
    inner = email.message_from_bytes(mime, policy=email.policy.default).get_payload()[1]
    assert inner["Content-Transfer-Encoding"] == "8bit"
    assert inner.get_payload()[0]["Content-Transfer-Encoding"] == "8bit"


def test_digest_goes_out_when_its_slot_comes(make_server, make_list, sink, engine, config):
    mlist = four_modes(make_list, engine)
    raw = message("Waiting", sender=REG)
    ingest_mail(engine, config, REG, [LIST], raw.encode())
    with db.session(engine) as s:  # posted two days ago, before today's slot
        for item in s.scalars(select(DigestItem)):
            item.created_at -= timedelta(days=2)
        s.commit()
    make_server()
    [mail] = mails_to(sink, MIME)
    assert mail["Subject"] == "Dev Digest, Vol 1, Issue 1"
    with db.session(engine) as s:
        sent = s.get(MailingList, mlist.id)
        assert (sent.digest_volume, sent.digest_issue) == (1, 1)
        assert sent.digest_last_sent_at is not None


def test_digest_goes_out_at_once_when_pending_posts_exceed_the_size(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    ok(cli("list", "set", LIST, "digest_max_bytes", "3000"))
    small = send_post(running, "Small", "short\n")
    assert delivered_to(engine, sink, REG) == 1
    assert delivered_to(engine, sink, MIME) == 0  # under the size: it waits
    big = send_post(running, "Big", ("x" * 70 + "\n") * 45)
    [raw] = digests_to(sink, MIME)
    assert f"<{small}>".encode() in raw and f"<{big}>".encode() in raw
    assert "nothing pending" in ok(cli("digest", "send", LIST)).stdout


def test_numbering_and_volume_rollover(running, make_list, sink, engine, cli, config):
    mlist = four_modes(make_list, engine)
    ok(cli("list", "set", LIST, "digest_volume_frequency", "daily"))

    def send_one(subject: str) -> str:
        ingest_mail(engine, config, REG, [LIST], message(subject, sender=REG).encode())
        return ok(cli("digest", "send", LIST)).stdout
    assert send_one("one").startswith("Dev Digest, Vol 1, Issue 1: 1 messages, queued for "
                                      "1 digest-mime and 1 digest-plain members")
    assert send_one("two").startswith("Dev Digest, Vol 1, Issue 2:")
    with db.session(engine) as s:  # the last digest went out yesterday
        s.get(MailingList, mlist.id).digest_last_sent_at -= timedelta(days=1)
        s.commit()
    assert send_one("three").startswith("Dev Digest, Vol 2, Issue 1:")
    rows = as_json(cli("digest", "ls", LIST, "--json"))
    assert [(r["volume"], r["number"], r["messages"]) for r in rows] == [
        (2, 1, 1), (1, 2, 1), (1, 1, 1)]
    assert rows[0]["subject"] == "Dev Digest, Vol 2, Issue 1" and rows[0]["size"] > 0
    assert delivered_to(engine, sink, MIME) == 3


def test_two_builders_at_once_send_each_post_once(engine, make_list, config):
    """Two `listserv serve` on one database: the second waits for the first's lock and
    then finds nothing pending (no second issue, no post in two issues)."""
    mlist = four_modes(make_list, engine)
    ingest_mail(engine, config, REG, [LIST], message("once", sender=REG).encode())
    now = datetime.now(UTC)
    results: list[object] = []
    with db.session(engine) as first:
        assert digest.build(first, config, mlist.id, now, force=True) is not None

        def second() -> None:
            with db.session(engine) as s:
                try:
                    results.append(digest.build(s, config, mlist.id, now, force=True))
                    s.commit()
                except Exception as exc:  # noqa: BLE001  the failure is the finding
                    results.append(exc)
        other = threading.Thread(target=second)
        other.start()
        other.join(0.5)  # it cannot finish while the first holds the lock
        first.commit()
    other.join(30)
    assert results == [None]
    with db.session(engine) as s:
        assert len(s.scalars(select(DigestIssue)).all()) == 1


# --- settings and CLI -----------------------------------------------------------------

def test_digest_settings_are_set_and_shown(cli):
    ok(cli("list", "create", LIST))
    for key, value in (("digest_frequency", "weekly"), ("digest_send_hour", "7"),
                       ("digest_max_bytes", "50000"), ("digest_volume_frequency", "monthly")):
        ok(cli("list", "set", LIST, key, value))
    shown = as_json(cli("list", "show", LIST, "--json"))
    assert (shown["digest_frequency"], shown["digest_send_hour"], shown["digest_max_bytes"],
            shown["digest_volume_frequency"]) == ("weekly", 7, 50000, "monthly")


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("digest_frequency", "hourly", "daily, weekly, monthly"),
    ("digest_send_hour", "24", "0 to 23"),
    ("digest_max_bytes", "lots", "number of bytes"),
    ("digest_volume_frequency", "never", "yearly, quarterly, monthly, weekly, daily"),
])
def test_bad_digest_setting_is_a_one_line_error(cli, config_file, key, value, valid):
    ok(cli("list", "create", LIST))
    proc = run_listserv("--config", config_file, "list", "set", LIST, key, value)
    assert_one_line_error(proc, key, valid)


def test_digest_commands_on_an_unknown_list_are_one_line_errors(config_file):
    for command in (["send"], ["ls", "--json"]):
        proc = run_listserv("--config", config_file, "digest", *command, "no@where.org")
        assert_one_line_error(proc, "no@where.org")


def test_digest_send_with_nothing_pending_says_so(cli):
    ok(cli("list", "create", LIST))
    assert ok(cli("digest", "send", LIST)).stdout.strip() == f"{LIST}: nothing pending"
    assert as_json(cli("digest", "ls", LIST, "--json")) == []


# --- archive pages --------------------------------------------------------------------

def web(running) -> httpx.Client:
    return httpx.Client(base_url=running.config.web.base_url, timeout=10)


def test_digest_pages_list_issues_and_their_messages_by_thread(running, make_list, sink,
                                                               engine, cli):
    four_modes(make_list, engine)
    root = send_post(running, "Build <fails>", "It fails.\n")
    reply = send_post(running, "Re: Build <fails>", "Clean.\n", **{"In-Reply-To": f"<{root}>"})
    ok(cli("digest", "send", LIST))
    other = send_post(running, "Release", "Tuesday.\n")
    ok(cli("digest", "send", LIST))
    with web(running) as client:
        index = client.get(f"/{LIST}/digest/")
        assert index.status_code == 200
        assert index.text.index("Vol 1, Issue 2") < index.text.index("Vol 1, Issue 1")
        assert f'href="{running.config.web.base_url}/{LIST}/digest/1/1/"' in index.text
        page = client.get(f"/{LIST}/digest/1/1/")
        assert page.status_code == 200
        assert "Build &lt;fails&gt;" in page.text and "<fails>" not in page.text
        for message_id in (root, reply):
            assert f"/{LIST}/message/{message_id}/" in page.text
        assert page.text.index(root) < page.text.index(reply)
        assert other not in page.text
        assert f"/{LIST}/message/{other}/" in client.get(f"/{LIST}/digest/1/2/").text


def test_digest_pages_refuse_what_they_cannot_show(running, make_list, engine, cli):
    make_list()
    ok(cli("list", "create", "secret@lists.example.org"))
    ok(cli("list", "set", "secret@lists.example.org", "archive", "private"))
    with web(running) as client:
        assert client.get(f"/{LIST}/digest/").status_code == 200
        missing = client.get(f"/{LIST}/digest/1/1/")
        assert missing.status_code == 404 and "Vol 1, Issue 1" in missing.text
        assert client.get(f"/{LIST}/digest/one/1/").status_code == 404
        assert client.get("/nobody@lists.example.org/digest/").status_code == 404
        closed = client.get("/secret@lists.example.org/digest/")
        assert closed.status_code == 403 and "members only" in closed.text
        assert "Traceback" not in missing.text + closed.text


# --- replies to a digest ----------------------------------------------------------------

def three_item_digest(running, sink, engine, cli) -> tuple[list[str], email.message.Message]:
    ids = [send_post(running, "Build fails on ARM", "The build fails on ARM since the merge.\n"),
           send_post(running, "Release planning", "We should cut the release candidate on "
                "Tuesday.\nObjections?\n"),
           send_post(running, "Docs", "The docs need a new chapter on digests.\n")]
    ok(cli("digest", "send", LIST))
    [plain] = mails_to(sink, PLAIN)
    return ids, plain


def threads(cli) -> dict[str, dict]:
    return {r["message_id"]: r for r in as_json(cli("archive", "threads", LIST, "--json"))}


def test_reply_to_the_digest_quoting_an_item_joins_that_items_thread(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    ids, plain = three_item_digest(running, sink, engine, cli)
    sent = post_bytes(f"Re: {plain['Subject']}",
                      "Tuesday is too early for me.\n\n> We should cut the release candidate "
                      "on Tuesday.\n> Objections?\n", sender=PLAIN,
                      **{"In-Reply-To": plain["Message-ID"]})
    running.send(PLAIN, [LIST], sent)
    answer = parse(sent).message_id
    kept = stored(engine, answer)
    assert kept.raw == sent  # what its author wrote; the inferred parent is derived data
    assert (kept.inferred_parent, kept.subject) == (ids[1], "Re: Release planning")
    with web(running) as client:
        assert client.get(f"/{LIST}/message/{answer}/raw").content == sent
    copies = mails_to(sink, REG, 4)
    copy = next(m for m in copies if m["Message-ID"] == f"<{answer}>")
    assert copy["In-Reply-To"] == f"<{ids[1]}>" and copy["References"].split()[-1] == \
        f"<{ids[1]}>"
    assert copy["Subject"] == "[Dev] Re: Release planning"
    assert copy.get_all("Subject") == [copy["Subject"]]  # the author's is replaced
    rows = threads(cli)
    assert rows[answer]["parent_id"] == ids[1]
    assert rows[answer]["thread_id"] == rows[ids[1]]["thread_id"]


def test_a_held_reply_to_the_digest_goes_under_its_item_when_approved(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    ids, plain = three_item_digest(running, sink, engine, cli)
    sent = post_bytes(f"Re: {plain['Subject']}", "> The docs need a new chapter on "
                      "digests.\n\nI can write it.\n", sender="guest@example.net",
                      **{"In-Reply-To": plain["Message-ID"]})
    running.send("guest@example.net", [LIST], sent)
    answer = parse(sent).message_id
    assert stored(engine, answer).state == "held"  # not a member
    ok(cli("held", "approve", str(stored(engine, answer).id)))
    copy = next(m for m in mails_to(sink, REG, 4) if m["Message-ID"] == f"<{answer}>")
    assert (copy["In-Reply-To"], copy["Subject"]) == (f"<{ids[2]}>", "[Dev] Re: Docs")
    assert threads(cli)[answer]["parent_id"] == ids[2]
    assert stored(engine, answer).raw == sent


def test_reply_to_the_mime_digest_by_item_number_in_the_subject_only(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    ids, _ = three_item_digest(running, sink, engine, cli)
    # No In-Reply-To (some clients drop it), the TOC line of item 3 quoted.
    answer = send_post(running, "Re: Dev Digest, Vol 1, Issue 1",
                  "I can write it.\n\n>   3. Docs (reg@example.com)\n", sender=MIME)
    assert threads(cli)[answer]["parent_id"] == ids[2]
    assert stored(engine, answer).subject == "Re: Docs"


def test_unclear_reply_to_the_digest_starts_its_own_thread_and_is_not_held(
        running, make_list, sink, engine, cli):
    four_modes(make_list, engine)
    ids, plain = three_item_digest(running, sink, engine, cli)
    answer = send_post(running, f"Re: {plain['Subject']}", "Thanks for all of this!\n",
                  sender=PLAIN, **{"In-Reply-To": plain["Message-ID"]})
    kept = stored(engine, answer)
    assert kept.state == "accepted"
    assert kept.subject == "Re: Dev Digest, Vol 1, Issue 1"
    rows = threads(cli)
    assert rows[answer]["parent_id"] is None
    assert rows[answer]["thread_id"] not in {rows[i]["thread_id"] for i in ids}
    assert delivered_to(engine, sink, REG) == 4  # it went out to the list
