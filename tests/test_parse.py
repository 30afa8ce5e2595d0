"""parse(): received bytes -> the fields policy, threading and the archive read, on the
real mail of tests/data/corpus; bad mail must give an error to hold, never an exception."""

from __future__ import annotations

import email
import email.header
import email.policy
import mailbox
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from listserv.parse import msgids, parse
from tests.helpers import CORPUS, corpus_path

MESSAGES = CORPUS / "messages"
EMLS = sorted(MESSAGES.rglob("*.eml"))
MBOXES = sorted(corpus_path(p.relative_to(CORPUS).as_posix().removesuffix(".gz"))
                for p in (CORPUS / "threads").rglob("*.mbox*"))

# A digest's text part saved alone: not one header line, so not a mail message.
NOT_MAIL = {"cpython/msg_19.eml"}


def name(path: Path) -> str:
    return path.relative_to(MESSAGES).as_posix()


def mbox_messages(path: Path) -> list[bytes]:
    box = mailbox.mbox(path, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


@pytest.mark.parametrize("path", EMLS, ids=name)
def test_every_corpus_message_parses(path):
    parsed = parse(path.read_bytes())
    assert bool(parsed.error) is (name(path) in NOT_MAIL)


@pytest.mark.parametrize("path", MBOXES, ids=lambda p: p.name)
def test_every_message_of_the_thread_mboxes_parses_with_its_subject(path):
    for raw in mbox_messages(path):
        parsed = parse(raw)
        assert not parsed.error
        assert parsed.subject  # every one of them has a Subject: none may get lost


@pytest.mark.parametrize("path,subject", [
    ("mailman/issue144.eml", "Višenamjenski pištolj za vodu 8/1"),  # UTF-8 B
    ("notmuch/html__embedded-image.eml", "Tack alla trafikanter och fotgängare!"),
    ("notmuch/broken__empty-part.eml",  # Q with encoded "@" and "(", ")"
     "Post to freebsd-hackers@FreeBSD.org denied: Re: rcd(8) - new service manager daemon"),
    ("mailman/bad_email.eml", "P_@_С_C_Ы_Л_K_И"),  # koi8-r B
])
def test_rfc2047_subjects_are_decoded(path, subject):
    assert parse((MESSAGES / path).read_bytes()).subject == subject


def stdlib_subject(raw: bytes) -> str:
    header = email.message_from_bytes(raw, policy=email.policy.compat32)["Subject"]
    decoded = email.header.make_header(email.header.decode_header(header))
    return " ".join(str(decoded).split())


@pytest.mark.parametrize("path", MBOXES, ids=lambda p: p.name)
def test_encoded_subjects_in_the_mboxes_decode_as_the_stdlib_does(path):
    encoded = [raw for raw in mbox_messages(path)
               if "=?" in str(email.message_from_bytes(raw)["Subject"])]
    for raw in encoded:
        assert parse(raw).subject == stdlib_subject(raw)


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe\x80\x81 not mail at all \xc3\x28",
    random.Random(0).randbytes(4096),
    b"just a line of text\n\nand a body\n",
], ids=["empty", "binary", "random", "no-header"])
def test_garbage_gives_an_error_and_no_exception(raw):
    parsed = parse(raw)
    assert parsed.error.startswith("unparseable message")
    assert parsed.message_id is None and parsed.subject == ""


def test_msgids_keeps_real_ids_in_order_and_drops_tokens_without_at():
    # git-send-email writes <yes> into References when asked "In-Reply-To?".
    value = "<a@example.org> <yes>\r\n\t<b@example.net> (Bob's message of Tuesday) <c>"
    assert msgids(value) == ["a@example.org", "b@example.net"]
    assert msgids(None) == msgids("") == []


def headers(*lines: str) -> bytes:
    return ("\r\n".join(["From: Bob <bob@example.com>", *lines]) + "\r\n\r\nHi\r\n").encode()


@pytest.mark.parametrize("value,expected", [
    ("<a@example.org>", "a@example.org"),
    ("  <a@example.org> (comment)", "a@example.org"),
    ("a@example.org", "a@example.org"),  # no brackets: some clients
    ("<a@example.org", "a@example.org"),  # no closing bracket (corpus: bad_email_3)
    ("not an id", None),
])
def test_message_id_is_kept_without_angle_brackets(value, expected):
    assert parse(headers(f"Message-ID: {value}")).message_id == expected


def test_reply_headers_are_read_as_ids():
    parsed = parse(headers("In-Reply-To: <p@example.org> (Alice's message)",
                           "References: <r@example.org>\r\n <p@example.org>"))
    assert parsed.in_reply_to == ["p@example.org"]
    assert parsed.references == ["r@example.org", "p@example.org"]


@pytest.mark.parametrize("value,expected", [
    ("Thu, 26 Nov 2026 10:00:00 +0100", datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
    ("Thu, 26 Nov 2026 23:30:00 -0500", datetime(2026, 11, 27, 4, 30, tzinfo=UTC)),
    ("Thu, 26 Nov 2026 10:00:00 -0000", datetime(2026, 11, 26, 10, 0, tzinfo=UTC)),
    ("26 Nov 2026 10:00 GMT", datetime(2026, 11, 26, 10, 0, tzinfo=UTC)),
    ("Thu Jan 01 00:00:10 +0000", None),  # no year (corpus: attachment__text-calendar)
    ("yesterday", None),
])
def test_date_becomes_aware_utc(value, expected):
    date = parse(headers(f"Date: {value}")).date
    assert date == expected
    if date is not None:
        assert date.utcoffset() == timedelta(0)


def test_missing_date_is_none():
    assert parse(headers("Subject: x")).date is None


def test_only_the_fields_before_the_body_are_read_even_past_fields_it_skips():
    """parse reads only the fields it uses; what it skips must not change where the
    header ends: a non-field line starts the body, and a field after it is body text."""
    raw = (b"Received: from a\r\n\tby b\r\nX-Weird: =?utf-8?q?caf=C3=A9?=\r\n"
           b"Subject: first\r\n continued\r\nthis line is not a field\r\n"
           b"Message-ID: <late@example.org>\r\n\r\nbody\r\n")
    parsed = parse(raw)
    assert parsed.subject == "first continued"
    assert parsed.message_id is None and not parsed.error


def test_a_header_of_fields_it_does_not_read_is_still_mail():
    parsed = parse(b"X-Mailer: something\r\nReceived: from a\r\n\r\nbody\r\n")
    assert not parsed.error and parsed.subject == "" and parsed.message_id is None
