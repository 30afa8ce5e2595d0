"""The content filter (pass_types, collapse_alternatives, html_to_text,
max_attachment_bytes) over real SMTP and HTTP with a real database: what members'
copies, digests and the archive's pages carry, while the stored bytes stay as received.
Posts are real corpus mail where the corpus has the case, else built as clients do."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from email.message import EmailMessage, Message
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from listserv import content_filter, db, list_settings, mime, roster, signing, tokens
from listserv.enums import DeliveryMode
from listserv.headers import crlf
from listserv.models import Message as Stored
from listserv.urls import quote_id
from tests.helpers import (
    BOB,
    CAROL,
    CORPUS,
    LIST,
    SECRET,
    assert_one_line_error,
    mails_to,
    ok,
    published,
    run_listserv,
    web,
)

MESSAGES = sorted((CORPUS / "messages").glob("*/*.eml"))
NOTMUCH = CORPUS / "messages" / "notmuch"
PDF = b"%PDF-1.4\n" + b"secret pdf page\n" * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
OWNER = "owner@example.org"


def admin_path(list_id: int, address: str) -> str:
    return f"/{LIST}/admin/{tokens.staff_link(SECRET, list_id, address, 12)}"


def configure(engine, **settings: str) -> None:
    """`list set` each setting, as the CLI and the owners' page do."""
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        for key, value in settings.items():
            list_settings.set_setting(mlist, key, value)
        s.add(mlist)
        s.commit()


def files_post(sender: str = BOB) -> bytes:
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = sender, LIST, "Files"
    post["Message-ID"], post["Date"] = "<files@example.com>", "Mon, 02 Mar 2026 09:00:00 +0000"
    post.set_content("See the files.\n")
    post.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    post.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return post.as_bytes(policy=email.policy.SMTP)  # CRLF, as SMTP carries it


def corpus_post(path: Path, engine, make_list) -> tuple[str, bytes]:
    """A corpus message and its author, who is made a member so that it goes out."""
    raw = path.read_bytes()
    author = email.message_from_bytes(raw, policy=email.policy.default)["From"]
    address = author.addresses[0].addr_spec.lower()
    make_list(LIST, members=[address, CAROL], owner=None)
    return address, raw


def parsed(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def leaves(mail: Message) -> list[Message]:
    return [part for part in mail.walk() if not part.is_multipart()]


def stored(engine, message_id: str) -> bytes:
    with db.session(engine) as s:
        return s.scalars(select(Stored.raw).where(Stored.message_id == message_id)).one()


def note_for(mail: Message, filename: str) -> str:
    notes = [p.get_content() for p in leaves(mail)
             if p.get_content_type() == "text/plain" and filename in p.get_content()]
    assert len(notes) == 1, [p.get_content_type() for p in leaves(mail)]
    return notes[0]


# --- the filter over the corpus -----------------------------------------------------------

RULES = [content_filter.Rules(("text/plain",)),
         content_filter.Rules(collapse_alternatives=True),
         content_filter.Rules(html_to_text=True),
         content_filter.Rules(max_attachment_bytes=1000),
         content_filter.Rules(("text/*", "image/*"), True, True, 5000)]


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_mail_keeps_the_bytes_of_every_part_the_filter_leaves(path: Path):
    raw = path.read_bytes()
    assert content_filter.apply(raw, content_filter.OFF).data is raw  # off: not even parsed
    for rules in RULES:
        done = content_filter.apply(raw, rules)
        if done.data is raw:
            continue
        tree = mime.parse(done.data)
        assert tree.within_limits
        for leaf in _leaves(tree):
            new = leaf.content_type == "text/plain" and (
                leaf.payload.startswith(b"[The list removed") or rules.html_to_text)
            assert new or leaf.raw_body in crlf(raw), leaf.content_type
            assert rules.passes(leaf.content_type)
        assert content_filter.apply(done.data, rules).data == done.data  # settled


def _leaves(part: mime.Part) -> list[mime.Part]:
    if part.children is None:
        return [part]
    return [leaf for child in part.children for leaf in _leaves(child)]


# --- members' copies over SMTP ------------------------------------------------------------

def test_pass_types_remove_what_is_not_listed_with_a_note_naming_it(running, make_list, sink,
                                                                    engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    configure(engine, pass_types="text/plain, image/*")
    sent = files_post()
    running.send(BOB, [LIST], sent)
    [copy] = sink.copies_to(CAROL)
    mail = parsed(copy)
    types = [p.get_content_type() for p in leaves(mail)]
    assert "application/pdf" not in types and b"secret pdf page" not in copy
    assert base64.b64encode(PDF)[:60] not in copy
    note = note_for(mail, "report.pdf")
    assert "application/pdf" in note and "The list does not pass application/pdf." in note
    [png] = [p for p in leaves(mail) if p.get_content_type() == "image/png"]
    assert png.get_content() == PNG
    # the PNG part travels in the very bytes it came in, not encoded again
    png_at = sent.index(b"Content-Type: image/png")
    png_part = crlf(sent[png_at:sent.index(b"\n--", png_at)])
    assert png_part in copy
    assert "See the files." in leaves(mail)[0].get_content()
    assert "Mute this thread" in copy.decode()  # the footer still goes in
    assert stored(engine, "files@example.com") == sent  # the stored bytes as received


def test_a_corpus_attachment_of_a_type_not_passed_is_named_in_its_note(running, make_list,
                                                                        sink, engine):
    author, raw = corpus_post(NOTMUCH / "attachment__x-gtar-compressed.eml", engine, make_list)
    configure(engine, pass_types="text/plain")
    running.send(author, [LIST], raw)
    mail = parsed(sink.copies_to(CAROL)[0])
    note = note_for(mail, "zendesk-email-loop2.tgz")
    assert "application/x-gtar-compressed" in note and "5.4 kB" in note
    texts = [p.get_content() for p in leaves(mail)]
    assert any("obviously I forget the frigging attachment" in t for t in texts)
    assert any("plugin" in t for t in texts)  # the text after the attachment stays


def test_collapse_alternatives_sends_the_text_plain_version_as_it_came(running, make_list,
                                                                       sink, engine):
    author, raw = corpus_post(NOTMUCH / "html__embedded-image.eml", engine, make_list)
    configure(engine, collapse_alternatives="true", footer="")
    running.send(author, [LIST], raw)
    [copy] = sink.copies_to(CAROL)
    mail = parsed(copy)
    assert mail.get_content_type() == "text/plain" and not mail.is_multipart()
    assert mail["Content-Transfer-Encoding"] == "8bit"
    assert "Malmö 2016-07-09" in mail.get_content() and b"<html" not in copy.lower()
    plain = raw[raw.index(b"<http://malmoborg.se/2016/07"):raw.index(b"Filed under: Nyheter")]
    assert crlf(plain) in copy  # the plain version's bytes, not encoded again


def test_html_to_text_sends_an_html_only_post_as_text(running, make_list, sink, engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    configure(engine, html_to_text="true")
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = BOB, LIST, "Release"
    post["Message-ID"] = "<release@example.com>"
    post.set_content('<html><body><p>Hello all,</p><p>The release:</p><ul><li>is faster</li>'
                     '<li>has <a href="https://example.org/docs">new docs</a></li></ul>'
                     '<script>alert(1)</script></body></html>', subtype="html")
    running.send(BOB, [LIST], post.as_bytes())
    mail = parsed(sink.copies_to(CAROL)[0])
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().replace("\r\n", "\n").startswith(
        "Hello all,\n\nThe release:\n\n- is faster\n- has new docs <https://example.org/docs>\n")
    assert "alert" not in mail.get_content()


def test_html_to_text_reads_corpus_html_as_a_browser_shows_it(running, make_list, sink,
                                                             engine):
    author, raw = corpus_post(NOTMUCH / "html__attribute-text.eml", engine, make_list)
    configure(engine, html_to_text="true", footer="")
    running.send(author, [LIST], raw)
    mail = parsed(sink.copies_to(CAROL)[0])
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().strip() == "hunter2"  # never the attribute's "swordfish"


def test_html_to_text_leaves_a_post_that_has_a_text_version(running, make_list, sink, engine):
    author, raw = corpus_post(NOTMUCH / "html__embedded-image.eml", engine, make_list)
    configure(engine, html_to_text="true", footer="")
    running.send(author, [LIST], raw)
    mail = parsed(sink.copies_to(CAROL)[0])
    assert mail.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in leaves(mail)] == ["text/plain", "text/html"]


def test_max_attachment_bytes_removes_larger_attachments_only(running, make_list, sink,
                                                             engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    configure(engine, max_attachment_bytes="600")
    running.send(BOB, [LIST], files_post())  # the PNG is 520 bytes, the PDF 649
    mail = parsed(sink.copies_to(CAROL)[0])
    assert [p.get_content_type() for p in leaves(mail)] == ["text/plain", "image/png",
                                                            "text/plain"]
    note = note_for(mail, "report.pdf")
    assert "649 Bytes" in note and "larger than the list's limit of 600 Bytes" in note


def test_a_filtered_copy_is_signed_by_the_list_and_drops_the_authors_signature(
        make_server, make_list, sink, engine, dns_server, author_key, tmp_path):
    made = signing.keygen("lists.example.org", "listserv", tmp_path)
    name, text = published(made.record)
    dns_server.records[name] = [text]
    make_list(LIST, members=["alice@author.example", CAROL], owner=None)
    configure(engine, pass_types="text/plain")
    srv = make_server(dkim={"domain": "lists.example.org", "selector": "listserv",
                            "private_key_file": str(made.private_file), "arc": True})
    raw = files_post("Alice <alice@author.example>")
    signed = dkim.sign(raw, b"a", b"author.example", author_key,
                       include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw
    srv.send("alice@author.example", [LIST], signed)
    [copy] = sink.copies_to(CAROL)
    assert b"secret pdf page" not in copy
    assert dkim.verify(copy, dnsfunc=dns_server.txt)
    # the author's signature would fail its body hash: taken out, not left to fail
    assert [k for k, v in dkim.DKIM(copy).headers
            if k.lower() == b"dkim-signature" and b"d=author.example" in v] == []
    assert b"d=author.example" in signed
    assert dkim.arc_verify(copy, dnsfunc=dns_server.txt)[0] == dkim.CV_Pass


def test_the_digest_carries_the_filtered_form(running, make_list, sink, engine, cli):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    with db.session(engine) as s:
        roster.set_member(s, roster.get_list(s, LIST), CAROL, delivery=DeliveryMode.DIGEST_MIME)
        s.commit()
    configure(engine, pass_types="text/plain image/png")
    running.send(BOB, [LIST], files_post())
    mails_to(sink, BOB)
    ok(cli("digest", "send", LIST))
    [digest] = sink.copies_to(CAROL)
    assert b"secret pdf page" not in digest and base64.b64encode(PDF)[:60] not in digest
    assert b"report.pdf (application/pdf" in digest and b"chart.png" in digest


# --- the archive's pages over HTTP --------------------------------------------------------

def test_archive_pages_show_the_filtered_form_and_never_serve_a_removed_part(
        running, make_list, sink, engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    configure(engine, pass_types="text/plain image/*")
    running.send(BOB, [LIST], files_post())
    mails_to(sink, CAROL)
    page_url = f"/{LIST}/message/{quote_id('files@example.com')}/"
    with web(running) as client:
        page = client.get(page_url).text
        links = re.findall(r'href="([^"]*/attachment/\d+/[^"]*)"', page)
        png = client.get(links[0])
        removed = client.get(page_url + "attachment/1/report.pdf")
        raw = client.get(page_url + "raw").content
        box = client.get(f"/{LIST}/export.mbox").content
        thread = client.get(f"/{LIST}/thread/{quote_id('files@example.com')}/").text
    assert len(links) == 1 and "chart.png" in links[0] and png.content == PNG
    assert "The list removed a part of this post here: report.pdf" in page
    assert "report.pdf" in thread and "/attachment/1/" not in thread
    assert removed.status_code == 410
    assert "content filter removed report.pdf" in removed.text
    for shown in (raw, box):
        assert b"secret pdf page" not in shown and base64.b64encode(PDF)[:60] not in shown
        assert b"report.pdf (application/pdf" in shown
    assert base64.b64encode(PDF)[:60] in stored(engine, "files@example.com")


def test_a_list_with_the_filter_off_serves_every_part_as_before(running, make_list, sink,
                                                                engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    sent = files_post()
    running.send(BOB, [LIST], sent)
    assert b"report.pdf" in sink.copies_to(CAROL)[0]
    page_url = f"/{LIST}/message/{quote_id('files@example.com')}/"
    with web(running) as client:
        pdf = client.get(page_url + "attachment/1/report.pdf")
        raw = client.get(page_url + "raw").content
    assert pdf.status_code == 200 and pdf.content == PDF
    assert raw == sent


# --- the settings: CLI and the owners' page -------------------------------------------------

def test_the_settings_are_set_shown_and_checked_by_the_cli(make_list, cli, config_file):
    make_list(LIST)
    help_text = ok(cli("list", "set", "--help")).output
    for key in ("pass_types", "collapse_alternatives", "html_to_text", "max_attachment_bytes"):
        assert key in help_text
    shown = ok(cli("list", "show", LIST)).output
    assert "pass_types: (none)" in shown and "collapse_alternatives: False" in shown
    assert "max_attachment_bytes: 0" in shown
    assert ok(cli("list", "set", LIST, "pass_types", "Text/Plain, image/*")).output.strip() == (
        f"{LIST}: pass_types = text/plain image/*")
    ok(cli("list", "set", LIST, "html_to_text", "yes"))
    ok(cli("list", "set", LIST, "max_attachment_bytes", "1048576"))
    shown = ok(cli("list", "show", LIST)).output
    assert "pass_types: text/plain image/*" in shown and "html_to_text: True" in shown
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "pass_types", "pdf"), "'pdf' is no MIME type")
    assert_one_line_error(run_listserv("--config", config_file, "list", "set", LIST,
                                       "max_attachment_bytes", "lots"), "a number of bytes")


def test_owners_set_the_filter_on_their_settings_page(running, make_list, engine):
    mlist = make_list(LIST, members=[BOB], owner=OWNER)
    path = admin_path(mlist.id, OWNER)
    with web(running) as client:
        page = client.get(f"{path}/settings").text
        for key in ("pass_types", "collapse_alternatives", "html_to_text",
                    "max_attachment_bytes"):
            assert f'<label for="set-{key}">' in page
        assert 'text/plain always is' in page
        saved = client.post(f"{path}/settings", data={"key": "pass_types",
                                                      "value": "text/plain image/*"})
        menu = client.post(f"{path}/settings", data={"key": "collapse_alternatives",
                                                     "value": "true"})
        bad = client.post(f"{path}/settings", data={"key": "pass_types", "value": "image"})
    assert saved.status_code == menu.status_code == 200
    assert bad.status_code == 409 and "no MIME type" in bad.text
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        assert mlist.pass_types == "text/plain image/*" and mlist.collapse_alternatives



def test_search_finds_what_members_got_not_what_the_filter_removed(running, make_list, sink,
                                                                  engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    configure(engine, pass_types="text/plain")
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = BOB, LIST, "Offer"
    post["Message-ID"] = "<offer@example.com>"
    post.set_content("<p>Buy kumquats today</p>", subtype="html")
    running.send(BOB, [LIST], post.as_bytes())
    assert b"kumquats" not in sink.copies_to(CAROL)[0]
    with web(running) as client:
        removed = client.get(f"/{LIST}/search", params={"q": "kumquats"}).text
        noted = client.get(f"/{LIST}/search", params={"q": "removed"}).text
    assert "No messages match" in removed
    assert "offer@example.com" in noted
