"""Bad input over real SMTP: random and mutated messages (from the corpus) to every kind
of list address. The server answers 250 and keeps the exact bytes, or refuses with a
4xx/5xx and a reason; it never crashes, hangs, logs a traceback or loses what it took.

`bench/fuzz.py` runs the same property for minutes (LISTSERV_FUZZ_EXAMPLES); CI runs a
fixed, derandomized 50 examples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import Engine

from listserv import db
from listserv.compose import quote_id
from listserv.models import Message
from tests.conftest import CORPUS, RunningServer, message

LIST = "dev@lists.example.org"
MEMBER = "bob@example.com"
# Every kind of address a list has (address.Purpose), VERP and confirmation detail too.
ADDRESSES = [LIST, "dev-request@lists.example.org", "dev-owner@lists.example.org",
             "dev-bounces@lists.example.org", "dev-bounces+alice=example.com@lists.example.org",
             "dev-join@lists.example.org", "dev-leave@lists.example.org",
             "dev-confirm+0123456789abcdef@lists.example.org"]
TIMEOUT = 30.0  # seconds any one reply may take: a hang fails the test
EXAMPLES = int(os.environ.get("LISTSERV_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 50,
                suppress_health_check=list(HealthCheck), database=None)
# bench/fuzz.py reads the tally of replies here.
TALLY_FILE = os.environ.get("LISTSERV_FUZZ_TALLY", "")


def crlf(raw: bytes) -> bytes:
    """A file's lines as SMTP carries them."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


CORPUS_MESSAGES = [crlf(p.read_bytes()) for p in sorted((CORPUS / "messages").rglob("*.eml"))]


# --- a raw SMTP client: bytes in every command, nothing fixed up ------------------------

class Hangup(Exception):
    """The server closed the connection without a reply."""


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise Hangup(b"".join(lines))
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b" ".join(raw[4:].strip() for raw in lines)

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, content: bytes) -> tuple[int, bytes]:
        """DATA with `content` dot-stuffed; `content` must end with CRLF."""
        code, text = self.command(b"DATA")
        if code != 354:
            return code, text
        lines = content.split(b"\r\n")
        stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                               for line in lines)
        self.sock.sendall(stuffed + b".\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError, Hangup):
            self.command(b"QUIT")
        self.sock.close()


@dataclass
class Answer:
    stage: str  # the command the server answered last: MAIL, RCPT or DATA
    code: int
    text: bytes
    stored: bytes  # what the server must keep if it said 250 to DATA


def transact(port: int, mail_from: bytes, rcpt: bytes, content: bytes,
             smtputf8: bool = False) -> Answer:
    """One SMTP transaction on a connection of its own, up to the first refusal."""
    stored = content if content.endswith(b"\r\n") else content + b"\r\n"
    client = Client(port)
    try:
        client.command(b"EHLO fuzz.example.com")
        extra = b" SMTPUTF8" if smtputf8 else b""
        for stage, line in (("MAIL", b"MAIL FROM:<" + mail_from + b">" + extra),
                            ("RCPT", b"RCPT TO:<" + rcpt + b">")):
            code, text = client.command(line)
            if code != 250:
                return Answer(stage, code, text, stored)
        code, text = client.data(stored)
        return Answer("DATA", code, text, stored)
    finally:
        client.close()


# --- the property -----------------------------------------------------------------------

_ACCEPTED = re.compile(rb"2\.0\.0 OK <(.*)> ([a-z ]+)")


def stored_raw(engine: Engine, message_id: str) -> list[bytes]:
    with db.session(engine) as s:
        return list(s.scalars(select(Message.raw).where(Message.message_id == message_id)))


def archived_raw(base_url: str, message_id: str) -> httpx.Response:
    return httpx.get(f"{base_url}/{LIST}/message/{quote_id(message_id)}/raw", timeout=TIMEOUT)


def check(server: RunningServer, answer: Answer) -> str:
    """The property for one answer; what it was, for the tally."""
    assert 200 <= answer.code < 600 and answer.text, answer  # a reply with a reason
    if answer.code >= 400:
        assert answer.code != 451 or b"not stored" not in answer.text, answer  # a crash
        return f"{answer.code // 100}xx"
    assert answer.stage == "DATA", answer
    found = _ACCEPTED.fullmatch(answer.text)
    assert found, answer
    message_id, state = found.group(1).decode(), found.group(2).decode()
    assert answer.stored in stored_raw(server.engine, message_id)  # the exact bytes
    if state == "accepted":
        response = archived_raw(server.config.web.base_url, message_id)
        assert response.status_code == 200 and response.content == answer.stored
        page = httpx.get(f"{server.config.web.base_url}/{LIST}/message/"
                         f"{quote_id(message_id)}/", timeout=TIMEOUT)
        assert page.status_code == 200, page.text[:500]
    return "250"


@pytest.fixture
def errors() -> Iterator[list[logging.LogRecord]]:
    """Errors the server logs (tracebacks of a handler, the worker, the web app)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    for name in ("listserv", "uvicorn.error", "mail.log"):
        logging.getLogger(name).addHandler(handler)
    yield records
    for name in ("listserv", "uvicorn.error", "mail.log"):
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture
def fuzz_server(make_list: Callable, make_server: Callable, errors: list) -> RunningServer:
    make_list(members=[MEMBER])
    return make_server()


def still_answers(server: RunningServer, errors: list[logging.LogRecord]) -> None:
    """After everything, a plain post still gets its 250 and nothing was logged as an
    error; the list page and the feed still render."""
    answer = transact(server.config.smtp.port, MEMBER.encode(), LIST.encode(),
                      message("still here", sender=MEMBER).encode())
    assert answer.code == 250, answer
    base = f"{server.config.web.base_url}/{LIST}"
    for path in ("/", "/feed.atom", "/search?q=hello"):
        assert httpx.get(base + path, timeout=TIMEOUT).status_code == 200, path
    assert [r.getMessage() for r in errors] == []


# --- mutations of real messages ---------------------------------------------------------

JUNK = [b"\0", b"\r", b"\n", b"\xff", b"\xc3(", b"\x80\x80", b"\xed\xa0\x80", b"=?utf-8?b?",
        b"\r\n\t", b"<", b">", b"\"", b"@", b"\r\n.\r\n"]


def _header_end(raw: bytes) -> int:
    end = raw.find(b"\r\n\r\n")
    return end if end >= 0 else len(raw)


def flip(draw: st.DrawFn, raw: bytes) -> bytes:
    if not raw:
        return raw
    i = draw(st.integers(0, len(raw) - 1))
    return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]


def truncate(draw: st.DrawFn, raw: bytes) -> bytes:
    return raw[:draw(st.integers(0, len(raw)))]


def duplicate_header(draw: st.DrawFn, raw: bytes) -> bytes:
    end = _header_end(raw)
    headers = raw[:end].split(b"\r\n")
    i = draw(st.integers(0, len(headers) - 1))
    headers[i:i + 1] = [headers[i]] * draw(st.integers(2, 50))
    return b"\r\n".join(headers) + raw[end:]


def remove_blank_line(draw: st.DrawFn, raw: bytes) -> bytes:
    return raw.replace(b"\r\n\r\n", b"\r\n", 1)


def insert_in_headers(draw: st.DrawFn, raw: bytes) -> bytes:
    i = draw(st.integers(0, _header_end(raw)))
    return raw[:i] + draw(st.sampled_from(JUNK)) + raw[i:]


def insert_in_address(draw: st.DrawFn, raw: bytes) -> bytes:
    """Junk inside the From, To or Cc address, next to its "@"."""
    field = draw(st.sampled_from([b"From:", b"To:", b"Cc:", b"Reply-To:", b"Message-ID:"]))
    start = raw.find(b"\r\n" + field)
    at = raw.find(b"@", start) if start >= 0 else -1
    if at < 0 or at > _header_end(raw):
        return raw
    i = at + draw(st.integers(-3, 3))
    return raw[:i] + draw(st.sampled_from(JUNK)) + raw[i:]


MUTATIONS = [flip, truncate, duplicate_header, remove_blank_line, insert_in_headers,
             insert_in_address]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(CORPUS_MESSAGES))
    for _ in range(draw(st.integers(1, 5))):
        raw = draw(st.sampled_from(MUTATIONS))(draw, raw)
    return raw


# Random text that looks a little like mail: header names, colons, line ends, encodings.
_PIECES = st.sampled_from([b"From: ", b"To: ", b"Subject: ", b"Message-ID: ", b"\r\n",
                           b"\r\n\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
                           b"--b\r\n", b"=?utf-8?q?", b"?=", b"<a@b>", b"@"] + JUNK)
random_mail = st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=60).map(
    b"".join)

envelope_senders = st.one_of(st.just(MEMBER.encode()), st.just(b""),
                             st.sampled_from(JUNK).map(lambda j: b"bob" + j + b"@example.com"))
recipients = st.one_of(st.sampled_from(ADDRESSES).map(str.encode),
                       st.tuples(st.sampled_from(ADDRESSES).map(str.encode),
                                 st.sampled_from(JUNK)).map(lambda t: t[1] + t[0]))


def tally(counts: Counter[str], outcome: str) -> None:
    counts[outcome] += 1
    if TALLY_FILE:
        Path(TALLY_FILE).write_text(json.dumps(counts))


def test_mutated_and_random_mail_to_every_list_address_is_kept_exactly_or_refused(
        fuzz_server, errors):
    counts: Counter[str] = Counter()

    @FUZZ
    @given(content=st.one_of(mutated(), random_mail), mail_from=envelope_senders,
           rcpt=recipients, smtputf8=st.booleans())
    def one(content: bytes, mail_from: bytes, rcpt: bytes, smtputf8: bool) -> None:
        answer = transact(fuzz_server.config.smtp.port, mail_from, rcpt, content, smtputf8)
        tally(counts, check(fuzz_server, answer))

    one()
    assert counts["250"] > 0  # the property was tested on accepted mail, not only refusals
    still_answers(fuzz_server, errors)
