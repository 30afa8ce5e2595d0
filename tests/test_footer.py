"""The list footer goes into what members read and breaks nothing else: every message of
the corpus still parses, keeps every part the footer does not go into byte for byte,
and carries the footer once; signed mail is wrapped whole, so its signature verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
from email.message import Message
from pathlib import Path

import pytest

from listserv import compose, slots
from listserv.address import ListAddresses
from listserv.footer import Footer, render_footer
from listserv.headers import crlf
from tests.helpers import CORPUS

ADDRESSES = ListAddresses("dev@lists.example.org")
BASE = "https://lists.example.org"
MARK = b"Mute this thread:"  # a line of the default footer
MESSAGES = sorted((CORPUS / "messages").glob("*/*.eml"))
NOTMUCH = CORPUS / "messages" / "notmuch"


def footer(name: str = "Dev", template: str | None = None) -> Footer | None:
    return render_footer(template, name=name, addresses=ADDRESSES, base_url=BASE,
                                 archive=True)


def copy_of(raw: bytes, name: str = "Dev", template: str | None = None) -> bytes:
    copy = compose.list_copy(raw, addresses=ADDRESSES, name=name, base_url=BASE,
                             message_id="post@example.com", subject="Hello",
                             add_message_id=False, footer=footer(name, template))
    return copy.personal(slots.Links("UNSUB-TOKEN", "MUTE-TOKEN", "MANAGE-TOKEN"))


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def leaves(msg: Message) -> list[Message]:
    return [part for part in msg.walk() if not part.is_multipart()]


def decoded(part: Message) -> bytes:
    return (part.get_payload(decode=True) or b"").replace(b"\r\n", b"\n")


def filled(text: str, charset: str) -> bytes:
    links = slots.Links("UNSUB-TOKEN", "MUTE-TOKEN", "MANAGE-TOKEN")
    return slots.fill_links(text, links).encode(charset)


def same_payload(new: Message, old: Message, defective: bool) -> bool:
    """The stdlib gives the last part of a multipart with a missing or broken boundary
    without its final line end; the same bytes inside our wrapper keep it."""
    if defective:
        return new.get_payload().rstrip("\r\n") == old.get_payload().rstrip("\r\n")
    return new.get_payload() == old.get_payload()


def content_fields(part: Message) -> list[tuple[str, str]]:
    return [(k, v) for k, v in part.items() if k.lower().startswith("content-")]


def without_footer(part: Message, name: str = "Dev") -> bytes:
    """The part's text with the footer (as text or as HTML) taken out again."""
    charset = part.get_content_charset() or "us-ascii"
    rendered = footer(name)
    text = rendered.html if part.get_content_type() == "text/html" else rendered.text
    body = decoded(part)
    assert body.count(filled(text, charset)) == 1
    return body.replace(filled(text, charset), b"")


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_message_gets_the_footer_once_and_keeps_every_other_part(path: Path):
    raw = crlf(path.read_bytes())
    original = parse(raw)
    declared = original.get_param("boundary")
    if isinstance(declared, str) and declared != original.get_boundary():
        # A boundary the stdlib reads otherwise (it strips "<...>"): no oracle for the
        # parts, but the footer goes in once.
        assert copy_of(raw).count(MARK) == 1
        return
    before, after = leaves(original), leaves(parse(copy_of(raw)))
    holders = [p for p in after if MARK in decoded(p)]
    kinds = [p.get_content_type() for p in holders]
    # Once as text, and once in the HTML version if there is one; HTML-only mail in HTML.
    assert kinds.count("text/plain") == 1 or kinds == ["text/html"]
    assert kinds.count("text/html") <= 1
    assert len(after) in (len(before), len(before) + 1)
    if len(after) > len(before):  # the footer in a part of its own, at the end
        assert after[-1] in holders and decoded(after[-1]) == filled(footer().text, "utf-8")
    for old, new in zip(before, after, strict=False):
        if new in holders:
            assert without_footer(new).rstrip(b"\n") == decoded(old).rstrip(b"\n")
        else:
            assert same_payload(new, old, defective=any(p.defects for p in original.walk()))
            assert content_fields(new) == content_fields(old)


@pytest.mark.parametrize("name", ["protected-headers__simple-signed-mail.eml",
                                  "protected-headers__smime-multipart-signed.eml",
                                  "pkcs7__smime-onepart-signed.eml",
                                  "crypto__simple-encrypted.eml"])
def test_signed_or_encrypted_mail_is_wrapped_whole(name: str):
    raw = crlf((NOTMUCH / name).read_bytes())
    head, _, body = raw.partition(b"\r\n\r\n")
    content = [f + b"\r\n" for f in _unfolded(head) if f.lower().startswith(b"content-")]
    data = copy_of(raw)
    copy = parse(data)
    assert copy.get_content_type() == "multipart/mixed"
    boundary = copy.get_boundary().encode()
    first = data.split(b"--" + boundary + b"\r\n")[1]
    assert first == b"".join(content) + b"\r\n" + body + b"\r\n"  # the signed bytes, as they were
    inner, added = copy.get_payload()
    assert inner.get_content_type() == parse(raw).get_content_type()
    assert added.get_content_type() == "text/plain" and MARK in decoded(added)


def _unfolded(head: bytes) -> list[bytes]:
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def post(content_type: str, body: bytes, cte: str = "8bit", extra: str = "") -> bytes:
    return (f"From: bob@example.com\r\nTo: dev@lists.example.org\r\nSubject: Hi\r\n"
            f"Message-ID: <hi@example.com>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n{extra}\r\n"
            ).encode() + body


def test_latin1_body_gets_the_footer_in_latin1():
    body = "Gr\xfc\xdfe aus K\xf6ln\r\n".encode("latin-1")
    data = copy_of(post("text/plain; charset=iso-8859-1", body), name="Caf\xe9")
    assert data.split(b"\r\n\r\n", 1)[1].startswith(body)
    assert b"Caf\xe9 mailing list" in data  # in the body's own charset, not UTF-8
    assert parse(data).get_content_type() == "text/plain"


@pytest.mark.parametrize("charset,text", [("us-ascii", "plain ascii"),
                                          ("koi8-r", "\u041f\u0440\u0438\u0432\u0435\u0442"),
                                          ("big5", "\u4f60\u597d"),
                                          ("x-no-such-charset", "???")])
def test_footer_the_charset_cannot_hold_goes_in_a_utf8_part_of_its_own(charset, text):
    body = text.encode("latin-1" if charset.startswith("x-") else charset) + b"\r\n"
    cte = "7bit" if charset == "us-ascii" else "8bit"
    data = copy_of(post(f"text/plain; charset={charset}", body, cte), name="Caf\xe9")
    copy = parse(data)
    original, added = copy.get_payload()
    assert original.get_payload(decode=True) == body
    assert original.get_content_charset() == charset
    assert added.get_content_charset() == "utf-8"
    assert "Caf\xe9 mailing list" in added.get_payload(decode=True).decode("utf-8")


def test_base64_body_decodes_to_the_text_and_the_footer():
    text = "Gr\u00fc\u00dfe\r\nand a last line without an end".encode()
    data = copy_of(post("text/plain; charset=utf-8", base64.encodebytes(text), "base64"))
    got = parse(data).get_payload(decode=True)
    assert got.startswith(text + b"\r\n_____")
    assert got.endswith(filled(footer().text, "utf-8").replace(b"\n", b"\r\n"))


def test_quoted_printable_body_gets_the_footer_quoted_printable():
    text = "caf\xe9 " * 30  # one long line: soft breaks, and no line end at all
    encoded = quopri.encodestring(text.encode("latin-1")).replace(b"\n", b"\r\n")
    data = copy_of(post("text/plain; charset=iso-8859-1", encoded, "quoted-printable"))
    assert data.split(b"\r\n\r\n", 1)[1].startswith(encoded)
    got = parse(data).get_payload(decode=True).replace(b"\r\n", b"\n")
    assert got == text.encode("latin-1") + b"\n" + filled(footer().text, "latin-1")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_alternative_gets_it_in_text_and_html_escaped_before_body_end():
    boundary = "alt"
    body = (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"<html><body><p>Hello</p></body></html>\r\n--{boundary}--\r\n").encode()
    data = copy_of(post(f'multipart/alternative; boundary="{boundary}"', body),
                   name="R&D <dev>")
    plain, html = parse(data).get_payload()
    assert MARK in decoded(plain) and b"R&D <dev> mailing list" in decoded(plain)
    page = decoded(html).decode()
    assert page.count("Mute this thread") == 1
    assert page.index("Mute this thread") < page.index("</body>")
    assert "R&amp;D &lt;dev&gt; mailing list" in page
    assert f'<a href="{BASE}/unsubscribe/UNSUB-TOKEN">' in page


def test_mixed_starting_with_an_image_gets_a_text_part_at_the_end():
    image = base64.encodebytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    body = (b"--m\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + image + b"--m--\r\n")
    copy = parse(copy_of(post('multipart/mixed; boundary="m"', body)))
    assert copy.get_content_type() == "multipart/mixed"  # the same entity, one part more
    picture, added = copy.get_payload()
    assert picture.get_payload(decode=True) == base64.decodebytes(image)
    assert MARK in decoded(added)


def test_list_footer_template_and_no_footer():
    raw = post("text/plain", b"Hi\r\n")
    custom = copy_of(raw, template="{{ name }} -- leave: {{ unsubscribe_url }}")
    assert custom.endswith(f"Hi\r\nDev -- leave: {BASE}/unsubscribe/UNSUB-TOKEN\r\n".encode())
    assert footer(template="") is None


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
def test_html_part_gets_the_footer_before_body_end_in_its_own_encoding(cte):
    page = "<html><body><p>Gr\xfc\xdfe</p>\r\n</body></html>\r\n".encode()
    encoded = {"base64": base64.encodebytes(page),
               "quoted-printable": crlf(quopri.encodestring(page.replace(b"\r", b""))),
               "8bit": page}[cte]
    data = copy_of(post("text/html; charset=utf-8", encoded, cte))
    got = parse(data).get_payload(decode=True).replace(b"\r\n", b"\n").decode()
    before, after = got.split('<div class="list-footer">')
    assert before == "<html><body><p>Gr\xfc\xdfe</p>\n"
    assert after.endswith("</div>\n</body></html>\n")
    assert "Mute this thread" in after
