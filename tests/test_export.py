"""Getting the archive out and old archives in: the Atom feed and the mbox export over
real HTTP, `archive export` on the command line, and imports from Mailman 2, Mailman 3
and Google Groups that keep every message's bytes and original date."""

from __future__ import annotations

import io
import mailbox
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from listserv import (
    archive_export,
    archive_import,
    db,
    list_settings,
    mbox,
    roster,
    tokens,
)
from listserv.address import ListAddresses
from listserv.cli import app
from listserv.models import Message, MessageState, ThreadNode, ThreadSummary, utcnow
from listserv.urls import message_url
from listserv.web.access import archive_cookie
from tests.helpers import (
    CORPUS,
    assert_one_line_error,
    corpus_path,
    message,
    run_listserv,
    write_config,
)

LIST = "dev@lists.example.org"
OTHER = "copy@lists.example.org"
ALICE = "alice@example.com"
SECRET = "test-secret"  # [web] secret of the `config` fixture
ATOM = "{http://www.w3.org/2005/Atom}"


def mail(message_id: str, subject: str, date: datetime, *, sender: str = ALICE,
         parent: str | None = None, body: str = "Hello.\n", crlf: bool = False,
         extra: str = "") -> bytes:
    """An old post as an archive holds it."""
    head = [f"From: Alice <{sender}>", f"To: {LIST}", f"Subject: {subject}",
            f"Date: {format_datetime(date)}", f"Message-ID: <{message_id}>"]
    if parent:
        head += [f"In-Reply-To: <{parent}>", f"References: <{parent}>"]
    text = "\n".join(head) + "\n" + extra + "\n" + body
    return text.replace("\n", "\r\n").encode() if crlf else text.encode()


def day(month: int, number: int, year: int = 2026) -> datetime:
    return datetime(year, month, number, 10, 0, tzinfo=UTC)


def import_raws(engine: Engine, raws: list[bytes], address: str = LIST) -> None:
    with db.session(engine) as s:
        archive_import.import_mail(s, roster.get_list(s, address),
                            archive_import.parsed_mails(mbox.Mail(r) for r in raws))
        s.commit()


def stored(engine: Engine, address: str = LIST) -> dict[str, bytes]:
    """Message-ID -> stored bytes of every archived message of a list."""
    with db.session(engine) as s:
        mlist = roster.get_list(s, address)
        return dict(s.execute(select(Message.message_id, Message.raw).join(
            ThreadNode, ThreadNode.message_pk == Message.id).where(
            ThreadNode.list_id == mlist.id)).all())


def read_mbox(data: bytes) -> list[bytes]:
    return [m.raw for m in mbox.read(io.BytesIO(data))]


def web_client(running, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=running.config.web.base_url, timeout=10, **kwargs)


def set_archive(engine: Engine, value: str, address: str = LIST) -> None:
    with db.session(engine) as s:
        mlist = roster.get_list(s, address)
        list_settings.set_setting(mlist, "archive", value)
        s.add(mlist)
        s.commit()


ROOT = mail("root@example.com", "Plans", day(11, 2))
REPLY = mail("reply@example.com", "Re: Plans", day(12, 1), parent="root@example.com")
OTHER_THREAD = mail("other@example.com", "Other news", day(11, 20))


# --- /LIST/export.mbox --------------------------------------------------------------------

def test_export_gives_the_archived_posts_oldest_first_and_the_thread_or_month_asked(
        running, make_list, engine):
    make_list(LIST, members=[ALICE])
    import_raws(engine, [REPLY, OTHER_THREAD, ROOT])
    held = message("Not yet", sender="stranger@example.net")  # a non-member: held
    running.send("stranger@example.net", [LIST], held)
    with web_client(running) as client:
        whole = client.get(f"/{LIST}/export.mbox")
        thread = client.get(f"/{LIST}/export.mbox", params={"thread": "root@example.com"})
        month = client.get(f"/{LIST}/export.mbox", params={"month": "2026-11"})
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/mbox"
    assert whole.headers["content-disposition"] == 'attachment; filename="dev.mbox"'
    assert read_mbox(whole.content) == [ROOT, OTHER_THREAD, REPLY]  # never the held post
    assert whole.content.startswith(b"From alice@example.com Mon Nov  2 10:00:00 2026\n")
    assert read_mbox(thread.content) == [ROOT, REPLY]
    assert thread.headers["content-disposition"].endswith('filename="dev-thread.mbox"')
    assert read_mbox(month.content) == [ROOT, OTHER_THREAD]
    assert month.headers["content-disposition"].endswith('filename="dev-2026-11.mbox"')


@pytest.mark.parametrize(("params", "status"), [
    ({"thread": "nobody@example.com"}, 404), ({"month": "1999-01"}, 404),
    ({"month": "2026-13"}, 400), ({"month": "November"}, 400)])
def test_export_of_an_unknown_thread_or_month_is_an_error_page(running, make_list, engine,
                                                               params, status):
    make_list(LIST)
    import_raws(engine, [ROOT])
    with web_client(running) as client:
        page = client.get(f"/{LIST}/export.mbox", params=params)
    assert page.status_code == status
    assert page.headers["content-type"].startswith("text/html")
    assert "Traceback" not in page.text


def test_private_list_feed_and_export_need_the_member_pass(running, make_list, engine):
    mlist = make_list(LIST, members=[ALICE])
    import_raws(engine, [ROOT])
    set_archive(engine, "private")
    member_pass = {archive_cookie(mlist): tokens.archive_pass(SECRET, mlist.id, ALICE, 30)}
    for path in ("export.mbox", "feed.atom"):
        with web_client(running) as client:
            assert client.get(f"/{LIST}/{path}").status_code == 403
        with web_client(running, cookies=member_pass) as client:
            page = client.get(f"/{LIST}/{path}")
        assert page.status_code == 200, path
        assert b"Plans" in page.content


def test_a_list_without_web_archive_has_no_feed_or_export(running, make_list, engine):
    make_list(LIST)
    import_raws(engine, [ROOT])
    set_archive(engine, "off")
    with web_client(running) as client:
        for path in ("export.mbox", "feed.atom", "export.mbox?month=2026-11"):
            assert client.get(f"/{LIST}/{path}").status_code == 404
        assert client.get("/nope@lists.example.org/feed.atom").status_code == 404


# --- /LIST/feed.atom ----------------------------------------------------------------------

def test_feed_lists_the_latest_30_posts_newest_first_linking_their_pages(running,
                                                                         make_list, engine):
    make_list(LIST)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    import_raws(engine, [mail(f"m{i}@example.com", f"Post {i}", start + timedelta(days=i))
                         for i in range(35)])
    with web_client(running) as client:
        page = client.get(f"/{LIST}/feed.atom")
    assert page.headers["content-type"] == "application/atom+xml; charset=utf-8"
    feed = ET.fromstring(page.content)
    base = running.config.web.base_url
    links = {link.get("rel"): link.get("href") for link in feed.findall(f"{ATOM}link")}
    assert links == {"self": f"{base}/{LIST}/feed.atom", "alternate": f"{base}/{LIST}/"}
    entries = feed.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [
        f"Post {i}" for i in range(34, 4, -1)]
    newest = entries[0]
    url = message_url(base, ListAddresses(LIST), "m34@example.com")
    assert newest.findtext(f"{ATOM}id") == url
    assert newest.find(f"{ATOM}link").get("href") == url
    assert newest.findtext(f"{ATOM}published") == "2026-02-04T00:00:00+00:00"
    assert feed.findtext(f"{ATOM}updated") == "2026-02-04T00:00:00+00:00"
    assert newest.findtext(f"{ATOM}author/{ATOM}name") == "Alice"
    assert newest.findtext(f"{ATOM}summary") == "Hello."


def test_hostile_mail_stays_text_in_a_feed_that_parses_as_xml(running, make_list, engine):
    make_list(LIST)
    body = "Look: ]]> <img src=x onerror=alert(1)> \x01bell\x0b & more\n" + "long " * 200
    import_raws(engine, [mail("evil@example.com", "<script>alert(1)</script>\x07", day(11, 3),
                              sender="mallory@example.com", body=body).replace(
        b"From: Alice", b"From: <b>Mallory</b>")])
    with web_client(running) as client:
        page = client.get(f"/{LIST}/feed.atom")
    assert b"<script>" not in page.content and b"<img" not in page.content
    assert b"&lt;script&gt;" in page.content
    assert b"mallory@example.com" not in page.content  # no address on a public feed
    entry = ET.fromstring(page.content).find(f"{ATOM}entry")  # parses: no control chars
    assert entry.findtext(f"{ATOM}title") == "<script>alert(1)</script>"
    summary = entry.findtext(f"{ATOM}summary")
    assert summary.startswith("Look: ]]> <img src=x onerror=alert(1)> bell & more long")
    assert len(summary) <= archive_export.FEED_SUMMARY + 1 and summary.endswith("…")


def test_feed_of_a_list_with_no_posts_is_valid_and_empty(running, make_list):
    make_list(LIST)
    with web_client(running) as client:
        feed = ET.fromstring(client.get(f"/{LIST}/feed.atom").content)
    assert feed.findall(f"{ATOM}entry") == [] and feed.findtext(f"{ATOM}updated")


# --- listserv archive export / import --------------------------------------------------

@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path / "listserv.toml", db_url)


def listserv(config_file: Path, *args: str | Path) -> bytes:
    """`listserv --config FILE ...` in process; its stdout as bytes (progress: stderr)."""
    result = CliRunner().invoke(app, ["--config", str(config_file), *map(str, args)])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result.stdout_bytes


def test_cli_export_writes_only_mbox_to_stdout_and_since_keeps_the_later_posts(
        make_list, engine, config_file):
    make_list(LIST)
    import_raws(engine, [REPLY, OTHER_THREAD, ROOT])
    assert read_mbox(listserv(config_file, "archive", "export", LIST)) == [
        ROOT, OTHER_THREAD, REPLY]
    assert read_mbox(listserv(config_file, "archive", "export", LIST, "--since",
                              "2026-11-20")) == [OTHER_THREAD, REPLY]


@pytest.mark.parametrize("value", ["2026-11", "yesterday", "2026-02-30"])
def test_cli_export_with_a_bad_date_is_a_one_line_error(make_list, config_file, value):
    make_list(LIST)
    assert_one_line_error(run_listserv("--config", config_file, "archive", "export", LIST,
                                       "--since", value), "--since", value)


ROUND_TRIP = ["notmuch-list-2009.mbox", "apache-maven-dev-2017-11_12.mbox",
              *(f"tricky/maven-duplicates/{p.name}" for p in sorted(
                  (CORPUS / "threads" / "tricky" / "maven-duplicates").glob("*.mbox")))]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_import_export_import_stores_the_same_bytes(make_list, engine, config_file, tmp_path,
                                                    name):
    make_list(LIST)
    make_list(OTHER)
    listserv(config_file, "archive", "import", LIST, corpus_path(f"threads/{name}"))
    exported = tmp_path / "export.mbox"
    exported.write_bytes(listserv(config_file, "archive", "export", LIST))
    listserv(config_file, "archive", "import", OTHER, exported)
    first, second = stored(engine, LIST), stored(engine, OTHER)
    assert first == second and len(first) > 5
    python_count = len(mailbox.mbox(exported, create=False))  # other readers agree
    assert python_count == len(first)


def test_export_of_posts_received_by_smtp_gives_their_bytes_back(running, make_list, engine,
                                                                 config_file, tmp_path):
    make_list(LIST, members=[ALICE])
    make_list(OTHER)
    body = ("From the start:\n>From a quote\n>>From deeper\n\nFrom  two spaces\n"
            "no newline at the end")
    running.send(ALICE, [LIST], message("Froms", sender=ALICE, body=body))
    import_raws(engine, [mail("lf@example.com", "LF", day(11, 1), body="From x\n>From y\n")])
    exported = tmp_path / "export.mbox"
    exported.write_bytes(listserv(config_file, "archive", "export", LIST))
    listserv(config_file, "archive", "import", OTHER, exported)
    first = stored(engine, LIST)
    assert len(first) == 2 and stored(engine, OTHER) == first


# --- old archives -----------------------------------------------------------------------

def imported(engine: Engine, address: str = LIST) -> dict[str, Message]:
    with db.session(engine) as s:
        mlist = roster.get_list(s, address)
        return {m.message_id: m for m in s.scalars(select(Message).where(
            Message.list_id == mlist.id, Message.state == MessageState.IMPORTED))}


def parents(engine: Engine) -> dict[str, str | None]:
    with db.session(engine) as s:
        return {r["message_id"]: r["parent_id"]
                for r in archive_export.thread_rows(s, roster.get_list(s, LIST))}


def summaries(engine: Engine) -> dict[str, tuple]:
    with db.session(engine) as s:
        return {r.thread_id: (r.messages, r.first_date, r.last_date)
                for r in s.scalars(select(ThreadSummary))}


def test_mailman2_pipermail_mbox_keeps_old_senders_dates_and_quoted_from_lines(
        make_list, engine, config_file, tmp_path):
    # archives/private/LIST.mbox/LIST.mbox as Mailman 2.1 writes it: mboxo, RFC 822
    # senders with the name in a comment, the odd obfuscated From:, a body line that
    # starts with "From " and was never quoted (what Mailman's cleanarch is for).
    pipermail = (
        b"From alice@example.org  Mon Jan  5 10:00:00 2009\n"
        b"From: alice@example.org (Alice Liddell)\n"
        b"Subject: [Dev] Wonderland\n"
        b"Date: Mon, 05 Jan 2009 10:00:00 +0100\n"
        b"Message-ID: <w1@example.org>\n\n"
        b">From the rabbit hole.\n"
        b"From the start, this line was never quoted.\n\n"
        b"From bob at example.org  Tue Jan  6 11:00:00 2009\n"
        b"From: bob at example.org (Bob)\n"
        b"Subject: Re: [Dev] Wonderland\n"
        b"Message-ID: <w2@example.org>\n"
        b"In-Reply-To: <w1@example.org>\n\n"
        b"No Date header at all.\n\n")
    path = tmp_path / "dev.mbox"
    path.write_bytes(pipermail)
    before = utcnow()
    make_list(LIST)
    listserv(config_file, "archive", "import", LIST, path)
    messages = imported(engine)
    first, second = messages["w1@example.org"], messages["w2@example.org"]
    assert first.raw.endswith(b"\n\nFrom the rabbit hole.\nFrom the start, this line was "
                              b"never quoted.\n")
    assert (first.from_name, first.from_address) == ("Alice Liddell", "alice@example.org")
    assert (second.from_name, second.from_address) == ("Bob", "bob@example.org")
    assert first.date == datetime(2009, 1, 5, 9, 0, tzinfo=UTC)
    assert second.date == datetime(2009, 1, 6, 11, 0, tzinfo=UTC)  # from the envelope
    assert first.received_at >= before  # when it was imported
    assert parents(engine) == {"w1@example.org": None, "w2@example.org": "w1@example.org"}
    assert summaries(engine) == {"w1@example.org": (2, first.date, second.date)}


def test_hyperkitty_export_written_by_python_mailbox_imports_the_original_bytes(
        make_list, engine, config_file, tmp_path):
    # HyperKitty's "Download" builds its mbox with Python's mailbox module (mboxo).
    raws = [mail("h1@example.org", "Release", day(3, 1, 2019),
                 body="From now on we release monthly.\n"),
            mail("h2@example.org", "Re: Release", day(3, 2, 2019), parent="h1@example.org")]
    path = tmp_path / "dev@lists.example.org-2019-03.mbox"
    box = mailbox.mbox(path)
    for raw in raws:
        box.add(raw)
    box.close()
    assert b"\n>From now on" in path.read_bytes()
    make_list(LIST)
    listserv(config_file, "archive", "import", LIST, path)
    messages = imported(engine)
    assert [messages[m].raw for m in ("h1@example.org", "h2@example.org")] == raws
    assert parents(engine)["h2@example.org"] == "h1@example.org"


def test_google_takeout_mbox_with_crlf_out_of_order_keeps_dates_and_threads(
        make_list, engine, config_file, tmp_path):
    gmail = "X-GM-THRID: 1650000000000000001\nX-Gmail-Labels: Groups,Opened\n"
    raws = [mail("g3@googlegroups.com", "Re: Meetup", day(6, 5, 2020), crlf=True,
                 parent="g2@googlegroups.com", extra=gmail),
            mail("g1@googlegroups.com", "Meetup", day(6, 3, 2020), crlf=True, extra=gmail),
            mail("g2@googlegroups.com", "Re: Meetup", day(6, 4, 2020), crlf=True,
                 parent="g1@googlegroups.com", extra=gmail, body="From Paris.\r\n")]
    takeout = b"".join(
        f"From 165000000000000000{i}@xxx Wed Jun 03 10:00:00 +0000 2020\r\n".encode()
        + raw.replace(b"\r\nFrom ", b"\r\n>From ") + b"\r\n"
        for i, raw in enumerate(raws))
    path = tmp_path / "All mail Including Spam and Trash.mbox"
    path.write_bytes(takeout)
    make_list(LIST)
    listserv(config_file, "archive", "import", LIST, path)
    messages = imported(engine)
    assert [messages[f"g{i}@googlegroups.com"].raw for i in (3, 1, 2)] == raws
    assert messages["g1@googlegroups.com"].date == day(6, 3, 2020)
    assert parents(engine) == {"g1@googlegroups.com": None,
                               "g2@googlegroups.com": "g1@googlegroups.com",
                               "g3@googlegroups.com": "g2@googlegroups.com"}
    assert summaries(engine) == {"g1@googlegroups.com": (3, day(6, 3, 2020),
                                                         day(6, 5, 2020))}
