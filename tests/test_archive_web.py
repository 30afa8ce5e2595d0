"""The web archive over real HTTP: what a reader sees of a list, a month, a thread, a
message and a search, what a stranger's mail can and cannot do to those pages, and who
may read a members-only archive. Messages arrive by `listserv archive import` of mboxes
and by real SMTP posts."""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from sqlalchemy import event, select
from typer.testing import CliRunner

from listserv import archive, db, search, tokens
from listserv.cli import app
from listserv.enums import ArchivePolicy
from listserv.models import MailingList, Message, ThreadNode, ThreadSummary
from listserv.urls import quote_id
from tests.helpers import (
    ALICE,
    BOB,
    CORPUS,
    CSP,
    LIST,
    SECRET,
    Elements,
    access_link,
    ask_for_archive,
    attachment_mail,
    mail,
    mails_to,
    message,
    no_mail_markup,
    set_archive,
    url,
    web,
)

STRANGER = "mallory@example.net"
NOTMUCH = CORPUS / "threads" / "notmuch-list-2009.mbox"


# --- helpers ----------------------------------------------------------------------------

@pytest.fixture
def import_mbox(tmp_path: Path, db_url: str):
    """import_mbox(path_or_messages): `listserv archive import LIST FILE`, in process."""
    config_file = tmp_path / "listserv.toml"
    config_file.write_text(f'[database]\nurl = "{db_url}"\n', encoding="utf-8")

    def run(source: Path | list[bytes], list_address: str = LIST) -> str:
        if not isinstance(source, Path):
            path = tmp_path / f"import-{len(list(tmp_path.iterdir()))}.mbox"
            box = mailbox.mbox(path)
            for raw in source:
                box.add(raw)
            box.close()
            source = path
        result = CliRunner().invoke(app, ["--config", str(config_file), "archive", "import",
                                          list_address, str(source)])
        assert result.exit_code == 0, result.output
        return result.output
    return run


def thread_links(page: str) -> list[str]:
    return re.findall(r'<a href="[^"]*/thread/([^"/]+)/">', page)


def stored_raw(engine, message_id: str) -> bytes:
    with db.session(engine) as s:
        return s.scalars(select(Message.raw).where(Message.message_id == message_id)).one()


# --- the front page and the list page ---------------------------------------------------

def test_front_page_lists_public_and_members_only_archives_but_not_off_ones(
        running, make_list, engine, import_mbox):
    make_list(LIST)
    make_list("secret@lists.example.org", name="Secret")
    make_list("quiet@lists.example.org", name="Quiet")
    set_archive(engine, ArchivePolicy.PRIVATE, "secret@lists.example.org")
    set_archive(engine, ArchivePolicy.OFF, "quiet@lists.example.org")
    import_mbox([mail("One", "1@x", date="Mon, 02 Mar 2026 09:00:00 +0000"),
                 mail("Two", "2@x", date="Tue, 03 Mar 2026 09:30:00 +0000")])
    with web(running) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert LIST in page.text and "2 messages" in page.text and "2026-03-03 09:30" in page.text
    secret = page.text.split("secret@lists.example.org", 1)[1].split("</li>")[0]
    assert "members only" in secret
    assert "quiet@lists.example.org" not in page.text
    assert page.headers["content-security-policy"] == CSP


def test_list_page_shows_threads_by_latest_activity_with_counts(running, make_list, engine,
                                                                 import_mbox):
    make_list(LIST)
    import_mbox(NOTMUCH)
    with db.session(engine) as s:
        expected = list(s.scalars(select(ThreadSummary).order_by(
            ThreadSummary.last_date.desc(), ThreadSummary.id.desc())))
    with web(running) as client:
        page = client.get(f"/{LIST}/")
    assert page.status_code == 200
    assert [unquote(t) for t in thread_links(page.text)] == [t.thread_id for t in expected]
    busiest = max(expected, key=lambda t: t.messages)
    entry = page.text.split(f"/thread/{quote_id(busiest.thread_id)}/", 1)[1]
    entry = entry.split("</li>")[0]
    assert f"{busiest.messages - 1} replies" in entry
    assert f"{busiest.participants} participants" in entry
    assert busiest.authors.splitlines()[0] in entry
    assert f'href="http://{urlsplit(running.config.web.base_url).netloc}/{LIST}/digest/"' \
        in page.text
    assert f'action="{running.config.web.base_url}/{LIST}/search"' in page.text
    assert f"/{LIST}/2009/11/" in page.text  # the notmuch list's months


def test_list_page_is_paginated_fifty_threads_a_page(running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([mail(f"Topic {n}", f"t{n}@x", date=f"Mon, 02 Mar 2026 {n // 60:02d}:"
                      f"{n % 60:02d}:00 +0000") for n in range(120)])
    with web(running) as client:
        first, second, third = (client.get(f"/{LIST}/", params={"page": n}) for n in (1, 2, 3))
        beyond = client.get(f"/{LIST}/?page=9")
        month, month_end = (client.get(f"/{LIST}/2026/03/", params={"page": n}) for n in (1, 3))
        bad = client.get(f"/{LIST}/?page=two")
    assert [unquote(t) for t in thread_links(first.text)] == [
        f"t{n}@x" for n in range(119, 69, -1)]
    assert len(thread_links(second.text)) == 50 and len(thread_links(third.text)) == 20
    assert "?page=2" in first.text and "?page=0" not in first.text
    assert "?page=1" in second.text and "?page=3" in second.text
    assert "?page=4" not in third.text
    assert beyond.status_code == 200 and "No messages." in beyond.text
    assert bad.status_code == 400 and "whole number" in bad.text
    assert thread_links(month.text) == thread_links(first.text)  # months page the same way
    assert f"/{LIST}/2026/03/?page=2" in month.text and len(thread_links(month_end.text)) == 20


def test_month_pages_show_the_threads_active_that_month(running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([
        mail("January topic", "jan@x", date="Sat, 10 Jan 2026 12:00:00 +0000"),
        mail("Re: January topic", "jan-reply@x", parent="jan@x",
             date="Tue, 03 Mar 2026 08:00:00 +0000"),
        mail("March topic", "mar@x", date="Tue, 31 Mar 2026 23:59:59 +0000"),
        mail("April topic", "apr@x", date="Wed, 01 Apr 2026 00:00:00 +0000"),
    ])
    with web(running) as client:
        listing = client.get(f"/{LIST}/").text
        january, march = client.get(f"/{LIST}/2026/01/"), client.get(f"/{LIST}/2026/03/")
        february = client.get(f"/{LIST}/2026/02/")
        missing = [client.get(f"/{LIST}/{path}") for path in
                   ("2026/13/", "2026/00/", "0000/05/", "2026/ab/", "12345/01/")]
    assert re.findall(r"/(\d{4}/\d{2})/\">", listing) == ["2026/04", "2026/03", "2026/01"]
    assert [unquote(t) for t in thread_links(january.text)] == ["jan@x"]
    assert [unquote(t) for t in thread_links(march.text)] == ["mar@x", "jan@x"]
    assert f"/{LIST}/2026/01/" in march.text and f"/{LIST}/2026/04/" in march.text
    assert f"/{LIST}/2026/03/" in january.text  # the next month with messages
    assert february.status_code == 200 and "No messages." in february.text
    assert [r.status_code for r in missing] == [404] * 5
    assert "Not found" in missing[0].text and "All lists" in missing[0].text


# --- threads and messages ---------------------------------------------------------------

TREE = [  # (id, parent, date): "x@lost" is referenced but never arrives
    ("root@x", None, "Mon, 02 Mar 2026 09:00:00 +0000"),
    ("late@x", "root@x", "Mon, 02 Mar 2026 12:00:00 +0000"),
    ("early@x", "root@x", "Mon, 02 Mar 2026 10:00:00 +0000"),
    ("deep@x", "early@x", "Mon, 02 Mar 2026 13:00:00 +0000"),
    ("via-ghost@x", "x@lost", "Mon, 02 Mar 2026 11:00:00 +0000"),
]


def import_tree(import_mbox) -> None:
    mails = []
    for mid, parent, date in TREE:
        refs = "<root@x> <x@lost>" if parent == "x@lost" else None
        mails.append(mail("Re: Plans" if parent else "Plans", mid, date=date, parent=parent,
                          references=refs, body=f"Body of {mid}\n"))
    import_mbox(mails)


def test_thread_page_reads_depth_first_by_date_with_replies_nested(running, make_list,
                                                                   import_mbox):
    make_list(LIST)
    import_tree(import_mbox)
    with web(running) as client:
        page = client.get(url("thread", "root@x"))
        unknown = client.get(url("thread", "nothing@x"))
    assert page.status_code == 200
    posts = re.findall(r'<article class="post d(\d)">.*?Body of ([^\s<]+)', page.text, re.S)
    # A reply through a placeholder hangs from the nearest message we have.
    assert posts == [("0", "root@x"), ("1", "early@x"), ("2", "deep@x"),
                     ("1", "via-ghost@x"), ("1", "late@x")]
    for mid, _, _ in TREE:
        assert f'href="{running.config.web.base_url}{url("message", mid)}">permalink' \
            in page.text
    assert "bob@example.com" not in page.text and "Bob Example" in page.text
    assert unknown.status_code == 404 and "no such thread" in unknown.text


def test_each_post_says_when_it_was_sent_as_utc_on_thread_and_message_pages(
        running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([mail("Dated", "d0@x", date="Mon, 02 Mar 2026 09:05:00 +0100")])
    with web(running) as client:
        pages = [client.get(url(kind, "d0@x")).text for kind in ("thread", "message")]
    for page in pages:
        assert '<time datetime="2026-03-02T08:05:00+00:00">2026-03-02 08:05</time>' in page


def test_a_deep_thread_nests_no_deeper_than_the_page_allows(running, make_list, import_mbox):
    make_list(LIST)
    chain = [mail("Long", "m0@x", date="Mon, 02 Mar 2026 00:00:00 +0000")]
    chain += [mail("Re: Long", f"m{n}@x", parent=f"m{n - 1}@x",
                   date=f"Mon, 02 Mar 2026 {n // 60:02d}:{n % 60:02d}:00 +0000")
              for n in range(1, 40)]
    import_mbox(chain)
    with web(running) as client:
        page = client.get(url("thread", "m0@x"))
    depths = [int(d) for d in re.findall(r'<article class="post d(\d+)">', page.text)]
    assert len(depths) == 40 and max(depths) == 6 and depths[:7] == list(range(7))


def test_message_page_links_parent_replies_thread_and_a_reply_by_email(
        running, make_list, engine, import_mbox):
    make_list(LIST)
    import_tree(import_mbox)
    with web(running) as client:
        page = client.get(url("message", "early@x"))
        slashless = client.get(url("message", "early@x").rstrip("/"))
    assert page.status_code == 200
    text = page.text
    assert "Body of early@x" in text and "Re: Plans" in text and "2026-03-02 10:00" in text
    assert "bob@example.com" not in text
    assert url("message", "root@x") in text.split("In reply to:")[1].split("</li>")[0]
    assert url("message", "deep@x") in text.split("Reply:")[1].split("</li>")[0]
    assert url("thread", "root@x") in text
    [mailto] = re.findall(r'<a class="reply" href="([^"]+)">Reply by email', text)
    target = urlsplit(mailto.replace("&amp;", "&"))
    fields = parse_qs(target.query)
    assert target.scheme == "mailto" and target.path == LIST
    assert fields["In-Reply-To"] == ["<early@x>"]
    assert fields["subject"] == ["Re: Plans"]  # already a reply: no second "Re: "
    assert slashless.status_code == 308
    assert slashless.headers["location"].endswith(url("message", "early@x"))


def test_a_post_with_5000_references_renders_and_its_pages_walk_a_bounded_chain(
        running, make_list, engine, import_mbox):
    # A References bomb: ids never seen make a chain of placeholders, and the message
    # page looked each up on its own (5,000 References: 9 s of CPU a view).
    make_list(LIST)
    ghosts = [f"<ghost{n}@x>" for n in range(5000)]
    import_mbox([mail("Plans", "root@x"),
                 mail("Re: Plans", "near@x", references=" ".join(["<root@x>", *ghosts[:3]])),
                 mail("Re: Plans", "far@x", references="\n ".join(["<root@x>", *ghosts[:40]])),
                 mail("Re: Plans", "bomb@x", references="\n ".join(["<root@x>", *ghosts]))])
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731  (conn, cursor, sql, ...)
    with db.read_session(engine) as session:
        list_id = session.scalars(select(MailingList.id)).one()
        # This session's own statements only: the running server's housekeeping shares
        # the engine and may sweep meanwhile.
        connection = session.connection()
        event.listen(connection, "before_cursor_execute", listener)
        try:
            pages = {mid: archive.message_page(
                session, list_id, archive.find_message(session, list_id, mid))
                for mid in ("near@x", "far@x", "bomb@x")}
        finally:
            event.remove(connection, "before_cursor_execute", listener)
        pages["root@x"] = archive.message_page(
            session, list_id, archive.find_message(session, list_id, "root@x"))
    assert len(statements) == 3 * 2  # the post, then its parent and replies: for each page
    assert pages["near@x"].parent.message_id == "root@x"  # through 3 placeholders
    assert pages["far@x"].parent is None  # 40 away: past what a page walks
    assert pages["bomb@x"].parent is None
    assert [r.message_id for r in pages["root@x"].replies] == ["near@x"]
    with web(running) as client:
        assert "Re: Plans" in client.get(url("message", "bomb@x")).text
        # root, near and far: the bomb hangs from the nearest 100 of its References only
        assert client.get(url("thread", "root@x")).text.count('<article class="post') == 3


def test_a_message_page_seeks_each_node_it_walks_without_statistics(
        make_list, engine, import_mbox):
    # SQLite has no statistics (no ANALYZE) unless someone runs it: a walk step joined
    # on `list_id = :list_id` read every node of the list down its list-id index, 3 s a
    # page at 1,000,000 messages. Each step must seek its nodes by both columns.
    if not db.is_sqlite(engine):
        pytest.skip("the plan asked of is SQLite's")
    make_list(LIST)
    import_mbox([mail("Plans", "root@x"),
                 mail("Re: Plans", "near@x", references="<root@x> <ghost@x>")])
    walks: list[tuple[str, object]] = []
    def listener(conn, cursor, sql, params, *rest):
        if "RECURSIVE" in sql:
            walks.append((sql, params))
    with db.read_session(engine) as session:
        list_id = session.scalars(select(MailingList.id)).one()
        connection = session.connection()
        event.listen(connection, "before_cursor_execute", listener)
        try:
            for mid in ("root@x", "near@x"):
                archive.message_page(session, list_id, archive.find_message(session, list_id, mid))
        finally:
            event.remove(connection, "before_cursor_execute", listener)
        raw = connection.connection.driver_connection
        plans = [row[3] for sql, params in walks
                 for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    node_reads = [step for step in plans if "thread_node" in step]
    assert len(walks) == 2 and node_reads  # a statement a page: its parent and replies
    assert all(" AND " in step for step in node_reads), node_reads


def test_reply_link_of_a_first_post_adds_re_once(running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([mail("Question & <answer>?", "q@x")])
    with web(running) as client:
        page = client.get(url("message", "q@x")).text
    [mailto] = re.findall(r'<a class="reply" href="([^"]+)">', page)
    assert parse_qs(urlsplit(mailto.replace("&amp;", "&")).query)["subject"] == [
        "Re: Question & <answer>?"]


def test_message_ids_with_slashes_and_percent_signs_have_working_pages(
        running, make_list, engine, import_mbox):
    make_list(LIST)
    odd = "a/b%2Fc/raw@x"
    import_mbox([mail("Odd id", odd, body="odd body\n")])
    with web(running) as client:
        page = client.get(url("message", odd))
        raw = client.get(url("message", odd) + "raw")
    assert page.status_code == 200 and "odd body" in page.text
    assert raw.content == stored_raw(engine, odd)


def test_raw_is_the_stored_bytes_as_plain_text(running, make_list, engine, import_mbox):
    make_list(LIST)
    latin = mail("Caf\xe9", "latin@x", body="caf\xe9\n").decode().encode("latin-1")
    import_mbox([mail("Plain", "plain@x", body="h\u00e9llo\n"), latin])
    with web(running) as client:
        utf8 = client.get(url("message", "plain@x") + "raw")
        eight_bit = client.get(url("message", "latin@x") + "raw")
        unknown = client.get(url("message", "nothing@x") + "raw")
    assert utf8.content == stored_raw(engine, "plain@x")
    assert utf8.headers["content-type"] == "text/plain; charset=utf-8"
    assert eight_bit.content == stored_raw(engine, "latin@x")
    assert eight_bit.headers["content-type"] == "text/plain"  # not falsely UTF-8
    for response in (utf8, eight_bit):
        assert response.headers["x-content-type-options"] == "nosniff"
    assert unknown.status_code == 404


# What webmail services add: the poster's own address, which SpamAssassin also reads as
# a relay without reverse DNS.
POSTER_IP = {"X-Originating-IP": "[203.0.113.7]", "X-SenderIP": "203.0.113.7",
             "X-Forwarded-For": "203.0.113.7,\r\n\t10.0.0.1"}


def test_the_posters_ip_address_is_kept_but_never_shown(running, make_list, engine, sink):
    make_list(LIST, members=["bob@example.com", "carol@example.net"])
    post = message("From the web", headers={**POSTER_IP, "X-Mailer": "Webmail 1.0"})
    message_id = re.search(r"Message-ID: <([^>]+)>", post).group(1)
    running.send("bob@example.com", [LIST], post)
    [copy] = sink.copies_to("carol@example.net")
    stored = stored_raw(engine, message_id)
    with web(running) as client:
        raw = client.get(url("message", message_id) + "raw").content
        box = client.get(f"/{LIST}/export.mbox").content
    for shown in (copy, raw, box):
        assert b"X-Mailer: Webmail 1.0" in shown
        assert b"203.0.113.7" not in shown and b"10.0.0.1" not in shown
    fields = b"".join(f"{name}: {value}\r\n".encode() for name, value in POSTER_IP.items())
    assert fields in stored
    assert raw == stored.replace(fields, b"")  # every other byte as received


def test_attachments_are_downloads_with_a_safe_type(running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([attachment_mail()])
    with web(running) as client:
        page = client.get(url("message", "files@x")).text
        links = re.findall(r'href="([^"]*/attachment/\d+/[^"]*)"', page)
        png, html, svg = (client.get(link) for link in links)
        missing = client.get(url("message", "files@x") + "attachment/9/x")
    assert len(links) == 3 and "chart.png" in page
    assert png.headers["content-type"] == "image/png"
    assert png.content == b"\x89PNG\r\n\x1a\nnot really"
    assert html.headers["content-type"] == "application/octet-stream"
    assert svg.headers["content-type"] == "application/octet-stream"
    assert svg.content == b"<svg onload=alert(1)>"
    for response in (png, html, svg):
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == "sandbox"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.svg" in svg.headers[
        "content-disposition"]
    assert missing.status_code == 404


# --- hostile and odd content ------------------------------------------------------------

HOSTILE_BODY = ('<script>alert("body")</script>\n<img src=x onerror=alert(1)>\n'
                '<a href="javascript:alert(2)">click</a>\n')


def html_only_post(subject: str) -> str:
    return "\r\n".join([
        f"From: Eve <{ALICE}>", f"To: {LIST}", f"Subject: {subject}",
        "Message-ID: <html-only@example.com>", "Date: Mon, 02 Mar 2026 09:00:00 +0000",
        "MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8", "",
        '<p onclick="alert(3)">Hello <b>there</b></p><script>alert("html")</script>'
        '<img src="http://evil.example/track.png"><a href="javascript:alert(4)">x</a>'
        '<iframe src="http://evil.example/"></iframe>'])


def test_hostile_posts_are_shown_inert_on_every_page(running, make_list):
    make_list(LIST, members=[ALICE, BOB])
    huge = "<script>alert('subject')</script> " + "x" * 5000
    running.send(BOB, [LIST], mail(huge, "hostile@example.com", sender=BOB,
                                   body=HOSTILE_BODY))
    running.send(ALICE, [LIST], html_only_post("<b onmouseover=alert(5)>Hi</b>"))
    with web(running) as client:
        pages = [client.get(p) for p in (
            "/", f"/{LIST}/", f"/{LIST}/2026/11/", f"/{LIST}/2026/03/",
            url("thread", "hostile@example.com"), url("message", "hostile@example.com"),
            url("thread", "html-only@example.com"), url("message", "html-only@example.com"),
            f"/{LIST}/search?q=alert", f"/{LIST}/search?q=<script>alert(1)</script>")]
    for page in pages:
        assert page.status_code == 200, page.url
        assert page.headers["content-security-policy"] == CSP
        no_mail_markup(page.text)
    shown = [Elements(page.text).text for page in pages]
    assert '<script>alert("body")</script>' in shown[5]  # as text a reader can see
    assert '<a href="javascript:alert(2)">click</a>' in shown[5]
    assert huge in shown[5] and huge in shown[1]  # the whole subject, as text
    assert "<b>there</b>" in pages[7].text  # harmless HTML survives the sanitiser
    assert "<b onmouseover=alert(5)>Hi</b>" in shown[7]
    [box] = [a for t, a in Elements(pages[9].text).found if a.get("name") == "q"]
    assert box["value"] == "<script>alert(1)</script>"  # the query, echoed as a value


def corpus_mbox_messages() -> list[bytes]:
    folder = CORPUS / "messages"
    return [p.read_bytes() for name in ("cpython", "mailman")
            for p in sorted((folder / name).glob("*.eml"))]


def test_corpus_mail_with_odd_charsets_and_broken_mime_renders(running, make_list, engine,
                                                              import_mbox):
    make_list(LIST)
    import_mbox(corpus_mbox_messages())
    with db.session(engine) as s:
        ids = list(s.scalars(select(ThreadNode.message_id)
                             .where(ThreadNode.message_pk.is_not(None))))
        threads = set(s.scalars(select(ThreadNode.thread_id)))
    assert len(ids) > 40
    with web(running) as client:
        for mid in ids:
            page = client.get(url("message", mid))
            assert page.status_code == 200, mid
            assert "Traceback" not in page.text
        for thread_id in threads:
            assert client.get(url("thread", thread_id)).status_code in (200, 404)
        koi8 = client.get(url("message", "20160614102505.9OFQ19L1C")).text
        listing = client.get(f"/{LIST}/?page=1")
    assert listing.status_code == 200
    expected = email.message_from_bytes(
        (CORPUS / "messages/mailman/bad_email.eml").read_bytes(), policy=email.policy.default)
    assert str(expected["Subject"]) in koi8  # decoded from koi8-r, not mojibake


def test_only_archived_posts_are_shown(running, make_list, engine):
    make_list(LIST, members=[BOB])
    running.send(STRANGER, [LIST], mail("Held one", "held@example.com", sender=STRANGER,
                                        body="waiting for a moderator\n"))
    running.send(BOB, ["dev-request@lists.example.org"], mail("help", "command@example.com",
                                                              sender=BOB))
    with web(running) as client:
        held = client.get(url("message", "held@example.com"))
        command = client.get(url("message", "command@example.com"))
        raw = client.get(url("message", "held@example.com") + "raw")
        listing = client.get(f"/{LIST}/").text
        found = client.get(f"/{LIST}/search", params={"q": "moderator"}).text
    assert held.status_code == command.status_code == raw.status_code == 404
    assert "Held one" not in listing and "Held one" not in found


# --- search -----------------------------------------------------------------------------

@pytest.mark.parametrize("window", [search.WINDOW, 3])
def test_search_newest_first_with_snippets_and_pages(running, make_list, import_mbox,
                                                     monkeypatch, window):
    """Also when the hits are not among the newest `window` messages (PostgreSQL then
    takes them from the GIN index instead of walking the newest first)."""
    monkeypatch.setattr(search, "WINDOW", window)
    make_list(LIST)
    import_mbox([mail(f"Note {n}", f"n{n}@x", body=f"the kumquat harvest, part {n}\n",
                      date=f"Mon, 02 Mar 2026 10:{n:02d}:00 +0000")
                 for n in reversed(range(25))]  # stored oldest last: order is by date
                + [mail("Other", "other@x", body="nothing to see\n")])
    with web(running) as client:
        first = client.get(f"/{LIST}/search", params={"q": "kumquat"})
        second = client.get(f"/{LIST}/search", params={"q": "kumquat", "page": 2})
        empty = client.get(f"/{LIST}/search", params={"q": ""})
        none = client.get(f"/{LIST}/search", params={"q": "durian"})
    hits = re.findall(r'/message/([^"/]+)/">Note', first.text)
    assert hits == [f"n{n}%40x".replace("%40", "@") for n in range(24, 4, -1)]
    assert len(re.findall(r'/message/[^"/]+/">Note', second.text)) == 5
    assert "<mark>kumquat</mark>" in first.text and "Bob Example" in first.text
    assert "page=2" in first.text and "page=1" in second.text
    assert 'value="kumquat"' in first.text
    assert empty.status_code == 200 and 'name="q"' in empty.text
    assert "No messages match" not in empty.text and "<li" not in empty.text.split("</form>")[1]
    assert "No messages match" in none.text


def test_search_of_several_words_marks_them_in_a_long_message(running, make_list,
                                                              import_mbox):
    """The words far apart in a long message: the snippet still shows one marked (on
    PostgreSQL it is cut from around the first word's place, not the whole text)."""
    make_list(LIST)
    filler = "plain words about nothing much here. " * 40
    import_mbox([mail("Harvest", "far@x", body=f"{filler}the kumquat crop\n{filler * 3}"
                      "and a durian too\n"),
                 mail("Other", "other@x", body="a kumquat alone\n")])
    with web(running) as client:
        both = client.get(f"/{LIST}/search", params={"q": "durian kumquat"}).text
        operators = [client.get(f"/{LIST}/search", params={"q": q}).status_code
                     for q in ('"kumquat crop" -durian', "kumquat or durian", "-kumquat")]
    assert re.findall(r'/message/([^"/]+)/">', both) == ["far@x"]
    assert "<mark>kumquat</mark> crop" in both
    assert operators == [200, 200, 200]  # PostgreSQL's query syntax: marked, not failed


# --- privacy ----------------------------------------------------------------------------

ROUTES = ["/", "thread/root@x/", "message/root@x/", "message/root@x/raw", "2026/03/",
          "search?q=plans", "message/root@x/attachment/1/x"]


def archive_routes() -> list[str]:
    return [f"/{LIST}{'/' if r == '/' else '/' + r}" for r in ROUTES]


def test_private_archive_opens_to_a_member_who_asks_by_mail(running, make_list, engine,
                                                            sink, import_mbox):
    make_list(LIST, members=[ALICE])
    set_archive(engine, ArchivePolicy.PRIVATE)
    import_tree(import_mbox)
    with web(running) as client:
        closed = [client.get(r) for r in archive_routes()]
        ask_for_archive(running, sink, ALICE)
        mails = mails_to(sink, ALICE, 2)
        link = access_link(mails)
        opened = client.get(link)
        cookie = next(c for c in client.cookies.jar)
        pages = [client.get(r) for r in archive_routes()[:-1]]
    assert [r.status_code for r in closed] == [403] * len(ROUTES)
    assert "members only" in closed[0].text and "dev-request@lists.example.org" in closed[0].text
    results = next(m for m in mails if m["Subject"].startswith("Results"))
    assert "is a member of this list, a message with a link" in results.get_content()
    assert opened.status_code == 303
    assert opened.headers["location"] == f"{running.config.web.base_url}/{LIST}/"
    set_cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert f"max-age={30 * 86400}" in set_cookie and "secure" not in set_cookie
    assert cookie.path == f"/{LIST}/"
    assert [r.status_code for r in pages] == [200] * (len(ROUTES) - 1)


def test_a_stranger_asking_for_a_private_archive_learns_nothing_and_gets_no_link(
        running, make_list, engine, sink):
    make_list(LIST, members=[ALICE])
    set_archive(engine, ArchivePolicy.PRIVATE)
    ask_for_archive(running, sink, STRANGER)
    [reply] = mails_to(sink, STRANGER)
    ask_for_archive(running, sink, ALICE)
    member_reply = next(m for m in mails_to(sink, ALICE, 2)
                        if m["Subject"].startswith("Results"))

    def said(m: EmailMessage, who: str) -> str:
        return m.get_content().split("> archive", 1)[1].replace(who, "ADDRESS")
    assert said(reply, STRANGER) == said(member_reply, ALICE)
    assert "/access/" not in reply.get_content()
    assert len(mails_to(sink, STRANGER, 2, timeout=1)) == 1


def test_forged_expired_and_other_list_passes_are_refused(running, make_list, engine):
    mlist = make_list(LIST, members=[ALICE])
    other = make_list("other@lists.example.org", members=[ALICE])
    set_archive(engine, ArchivePolicy.PRIVATE)
    expired = tokens.archive_pass(SECRET, mlist.id, ALICE, -1)
    forged = tokens.archive_pass("not-our-secret", mlist.id, ALICE, 30)
    elsewhere = tokens.archive_pass(SECRET, other.id, ALICE, 30)
    with web(running) as client:
        for value in (expired, forged, elsewhere, "garbage"):
            refused = client.get(f"/{LIST}/access/{value}")
            assert refused.status_code == 400 and "not valid" in refused.text
            assert "set-cookie" not in refused.headers
            client.cookies.set(f"listserv_archive_{mlist.id}", value)
            assert client.get(f"/{LIST}/").status_code == 403
            client.cookies.clear()


def test_a_member_who_leaves_loses_the_archive(running, make_list, engine):
    mlist = make_list(LIST, members=[ALICE])
    set_archive(engine, ArchivePolicy.PRIVATE)
    value = tokens.archive_pass(SECRET, mlist.id, ALICE, 30)
    with web(running) as client:
        assert client.get(f"/{LIST}/access/{value}").status_code == 303
        assert client.get(f"/{LIST}/").status_code == 200
        with db.session(engine) as s:
            from listserv import member_actions
            member_actions.leave(s, running.config, s.get(MailingList, mlist.id), ALICE)
            s.commit()
        assert client.get(f"/{LIST}/").status_code == 403
        assert client.get(f"/{LIST}/access/{value}").status_code == 400


def test_archive_command_on_a_public_list_replies_with_its_address(running, make_list, sink):
    make_list(LIST)
    ask_for_archive(running, sink, STRANGER)
    [reply] = mails_to(sink, STRANGER)
    assert f"{running.config.web.base_url}/{LIST}/" in reply.get_content()
    assert "/access/" not in reply.get_content()


def test_off_archives_are_404_everywhere(running, make_list, engine, import_mbox, sink):
    mlist = make_list(LIST, members=[ALICE])
    import_tree(import_mbox)
    set_archive(engine, ArchivePolicy.OFF)
    value = tokens.archive_pass(SECRET, mlist.id, ALICE, 30)
    with web(running) as client:
        client.cookies.set(f"listserv_archive_{mlist.id}", value)
        responses = [client.get(r) for r in [*archive_routes(), f"/{LIST}/access/{value}"]]
    assert [r.status_code for r in responses] == [404] * (len(ROUTES) + 1)
    assert all("Not found" in r.text for r in responses)
    ask_for_archive(running, sink, ALICE)
    results = next(m for m in mails_to(sink, ALICE) if m["Subject"].startswith("Results"))
    assert "keeps no web archive" in results.get_content()


def test_unknown_lists_threads_and_messages_are_our_404_page(running, make_list):
    make_list(LIST)
    with web(running) as client:
        for path in ("/nope@lists.example.org/", "/nope@lists.example.org/thread/a@x/",
                     url("thread", "a@x"), url("message", "a@x"), "/no/such/page"):
            page = client.get(path)
            assert page.status_code == 404, path
            assert "Not found" in page.text and "All lists" in page.text
            assert page.headers["content-security-policy"] == CSP
