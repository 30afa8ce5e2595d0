"""The archive in a real browser: Debian's Chromium, driven by Playwright, against
`listserv serve`, with mail put in the way users do (`archive import` of an old list's
mbox, posts over SMTP, `digest send`). A reader on a phone-sized screen clicks from the
front page to a list, a thread, a message, a search and a digest issue; a stranger's
hostile posts must run nothing on any of those pages, and read as the text they are."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from sqlalchemy import select, update

from listserv import bounces, db, tokens
from listserv.enums import Role
from listserv.models import Follow, MailingList, Member, Mute
from listserv.urls import quote_id
from tests.helpers import CORPUS, SECRET, mails_to, ok, write_config
from tests.helpers import is_member as helpers_is_member

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser test needs playwright (the test extras)")

pytestmark = pytest.mark.slow  # a real Chromium

PHONE = {"width": 390, "height": 844}
LIST = "dev@lists.example.org"
ALICE = "alice@example.com"
BOB = "bob@example.com"
NOTMUCH = CORPUS / "threads" / "notmuch-list-2009.mbox"
MAILDIR_ROOT = "20091117190054.GU3165@dottiness.seas.harvard.edu"
MAILDIR_REPLY = "20091117203301.GV3165@dottiness.seas.harvard.edu"  # quotes its parent

SCRIPT = '<script>window.__pwned = 1; alert("pwned")</script>'
HOSTILE_SUBJECT = f"{SCRIPT} Release"
HOSTILE_TEXT = (f"Hello {SCRIPT}\n<img src=x onerror=\"window.__pwned=1\">\n"
                '<a href="javascript:window.__pwned=1">click</a>\n')
HOSTILE_HTML = ('<p onclick="window.__pwned=1">Hello <b>there</b></p>' + SCRIPT +
                '<img src=x onerror="window.__pwned=1">'
                '<img src="http://evil.example/track.png">'
                '<a href="javascript:window.__pwned=1">click</a>')


@pytest.fixture
def config_file(tmp_path: Path, db_url: str, running) -> Path:
    """The CLI's config names the server's database and public URL (a digest's links)."""
    return write_config(tmp_path / "listserv.toml", db_url,
                        f'[web]\nbase_url = "{running.config.web.base_url}"\n')


class Reader:
    """A fresh browser context on a phone-sized screen. Every page it reaches is checked
    the same way: served with a Content-Security-Policy, no script from mail ran (no
    `window.__pwned`, no dialog), and nothing was fetched from anywhere but our server."""

    def __init__(self, browser: sync_api.Browser, origin: str, **options: object) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport=PHONE, **options)
        self.context.set_default_timeout(10_000)  # auto-waiting, but a failure fails soon
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.fetched: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.fetched.append(r.url))

    def visit(self, path: str) -> sync_api.Page:
        return self.checked(self.page.goto(self.origin + path))

    def follow(self, target: sync_api.Locator) -> sync_api.Page:
        """Click a link or a button as a reader does, and check the page it leads to."""
        with self.page.expect_navigation() as navigation:
            target.click()
        return self.checked(navigation.value)

    def checked(self, response: sync_api.Response | None) -> sync_api.Page:
        assert response is not None and response.status == 200, response
        assert "default-src 'none'" in response.headers.get("content-security-policy", "")
        self.assert_inert()
        return self.page

    def assert_inert(self) -> None:
        assert self.page.evaluate("() => typeof window.__pwned") == "undefined", self.page.url
        assert self.dialogs == [], self.page.url
        assert [u for u in self.fetched if not u.startswith(self.origin)] == []

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def reader(browser: sync_api.Browser, running) -> Iterator[Callable[..., Reader]]:
    opened: list[Reader] = []

    def open_reader(**options: object) -> Reader:
        opened.append(Reader(browser, running.config.web.base_url, **options))
        return opened[-1]
    yield open_reader
    for r in opened:
        r.close()


def post(running, subject: str, body: str, sender: str, message_id: str, *,
         content_type: str = "text/plain; charset=utf-8", parent: str | None = None) -> None:
    """A post over SMTP as a mail client sends it."""
    lines = [f"From: {sender}", f"To: {LIST}", f"Subject: {subject}",
             f"Message-ID: <{message_id}>", "Date: Thu, 26 Nov 2026 10:00:00 +0000",
             "MIME-Version: 1.0", f"Content-Type: {content_type}"]
    if parent:
        lines += [f"In-Reply-To: <{parent}>", f"References: <{parent}>"]
    running.send(sender, [LIST], ("\r\n".join(lines) + "\r\n\r\n" + body).encode())


def message_link(page: sync_api.Page, message_id: str) -> sync_api.Locator:
    return page.locator(f'a[href$="/message/{quote_id(message_id)}/"]')


def test_a_reader_browses_a_thread_a_message_search_and_a_digest(
        running, make_list, cli, reader, tmp_path):
    make_list(LIST, members=[ALICE, BOB])
    ok(cli("archive", "import", LIST, NOTMUCH))
    post(running, "Release plans", "Shall we tag the tarball on Friday?\n", BOB, "plans@x")
    post(running, "Re: Release plans", "Friday suits me.\n", ALICE, "plans-re@x",
         parent="plans@x")
    ok(cli("digest", "send", LIST))
    r = reader()
    page = r.visit("/")
    sync_api.expect(page.get_by_text(LIST)).to_be_visible()

    page = r.follow(page.get_by_role("link", name="Dev"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Dev")
    page = r.follow(page.get_by_role("link", name="[notmuch] Working with Maildir storage?",
                                     exact=True))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        "[notmuch] Working with Maildir storage?")
    sync_api.expect(page.locator("article.post")).to_have_count(7)
    root, reply = page.locator("article.post").nth(0), page.locator("article.post.d1").first
    assert reply.bounding_box()["x"] > root.bounding_box()["x"]  # replies are indented
    page.screenshot(path=tmp_path / "thread.png", full_page=True)

    page = r.follow(message_link(page, MAILDIR_REPLY).filter(has_text="permalink"))
    assert unquote(urlsplit(page.url).path) == f"/{LIST}/message/{MAILDIR_REPLY}/"
    quote = page.locator("details.quote").first
    quoted = "See the patch just posted here."  # innerText: what is on the screen
    sync_api.expect(quote).not_to_contain_text(quoted, use_inner_text=True)  # folded
    quote.locator("summary").click()
    sync_api.expect(quote).to_contain_text(quoted, use_inner_text=True)
    page.screenshot(path=tmp_path / "message.png", full_page=True)
    mailto = urlsplit(page.get_by_role("link", name="Reply by email").get_attribute("href"))
    fields = parse_qs(mailto.query)
    assert (mailto.scheme, unquote(mailto.path)) == ("mailto", LIST)
    assert fields["In-Reply-To"] == [f"<{MAILDIR_REPLY}>"]
    assert fields["subject"] == ["Re: [notmuch] Working with Maildir storage?"]
    page = r.follow(page.get_by_role("link", name="The whole thread"))
    assert unquote(urlsplit(page.url).path) == f"/{LIST}/thread/{MAILDIR_ROOT}/"

    page = r.follow(page.get_by_role("link", name="Dev", exact=True))
    page.get_by_role("searchbox", name="Search this list").fill("tarball")
    page = r.follow(page.get_by_role("button", name="Search"))
    assert parse_qs(urlsplit(page.url).query)["q"] == ["tarball"]
    hits = page.locator("ul.hits li")
    sync_api.expect(hits).to_have_count(1)
    sync_api.expect(hits.locator("mark")).to_have_text("tarball")
    page = r.follow(hits.get_by_role("link", name="Release plans"))
    sync_api.expect(page.get_by_text("Shall we tag the tarball on Friday?")).to_be_visible()

    page = r.follow(page.get_by_role("link", name="Dev", exact=True))
    page = r.follow(page.get_by_role("link", name="Digests"))
    page = r.follow(page.get_by_role("link", name="Dev Digest, Vol 1, Issue 1"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        "Dev Digest, Vol 1, Issue 1")
    page = r.follow(message_link(page, "plans-re@x"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Re: Release plans")
    sync_api.expect(page.get_by_text("Friday suits me.")).to_be_visible()


def click_hostile_link(r: Reader) -> None:
    """The HTML post's `javascript:` link, clicked: it must lead nowhere and run nothing."""
    before = r.page.url
    r.page.locator(".content a").filter(has_text="click").click()  # href gone: no role
    assert r.page.url == before
    r.assert_inert()


def walk_hostile_pages(r: Reader) -> None:
    """The front and list pages, the thread, both messages, the digest issue, a search."""
    page = r.visit("/")
    page = r.follow(page.get_by_role("link", name="Dev"))
    page = r.follow(page.get_by_role("link", name=HOSTILE_SUBJECT))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE_SUBJECT)
    sync_api.expect(page.get_by_text(f"Hello {SCRIPT}")).to_be_visible()  # text, not code
    sync_api.expect(page.get_by_text('<img src=x onerror="window.__pwned=1">')).to_be_visible()
    sync_api.expect(page.get_by_text("Hello there")).to_be_visible()  # the HTML, cleaned
    click_hostile_link(r)
    thread_url = page.url

    page = r.follow(message_link(page, "hostile-text@x").filter(has_text="permalink"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE_SUBJECT)
    sync_api.expect(page.get_by_text(
        '<a href="javascript:window.__pwned=1">click</a>')).to_be_visible()
    r.checked(page.goto(thread_url))
    page = r.follow(message_link(page, "hostile-html@x").filter(has_text="permalink"))
    sync_api.expect(page.get_by_text("Hello there")).to_be_visible()
    click_hostile_link(r)

    page = r.visit(f"/{LIST}/digest/1/1/")
    # The thread's heading and its first item, the subject as text in both.
    sync_api.expect(page.get_by_role("link", name=HOSTILE_SUBJECT, exact=True)).to_have_count(2)
    page = r.follow(message_link(page, "hostile-html@x"))
    sync_api.expect(page.get_by_text("Hello there")).to_be_visible()

    page = r.visit(f"/{LIST}/")
    page.get_by_role("searchbox", name="Search this list").fill("Release")
    page = r.follow(page.get_by_role("button", name="Search"))
    sync_api.expect(page.locator("ul.hits li")).to_have_count(2)
    sync_api.expect(page.get_by_role("link", name=HOSTILE_SUBJECT, exact=True)).to_be_visible()


def test_hostile_mail_runs_nothing_in_a_browser(running, make_list, cli, reader):
    make_list(LIST, members=[ALICE, BOB])
    post(running, HOSTILE_SUBJECT, HOSTILE_TEXT, BOB, "hostile-text@x")
    post(running, f"Re: {HOSTILE_SUBJECT}", HOSTILE_HTML, ALICE, "hostile-html@x",
         content_type="text/html; charset=utf-8", parent="hostile-text@x")
    ok(cli("digest", "send", LIST))
    walk_hostile_pages(reader())
    # The same pages with the browser ignoring our Content-Security-Policy: the escaping
    # and the sanitiser alone must keep the mail inert (the policy is a second wall).
    walk_hostile_pages(reader(bypass_csp=True))


def test_the_reenable_page_fits_a_phone_and_leads_back_to_the_lists(running, make_list,
                                                                    reader, tmp_path):
    mlist = make_list(LIST, members=[BOB])
    with db.session(running.engine) as s:
        link = bounces.reenable_url(s, running.config, mlist, BOB)
    r = reader(is_mobile=True, has_touch=True)  # a phone honours the page's viewport
    page = r.visit(urlsplit(link).path)
    page.screenshot(path=tmp_path / "reenable.png", full_page=True)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    page = r.follow(page.get_by_role("button", name="Turn delivery back on"))
    assert "Delivery is on again" in page.content()
    page = r.follow(page.get_by_role("link", name="All lists"))
    assert page.url == r.origin + "/"


# --- members: joining, and the page of subscriptions ----------------------------------

SHOTS = Path("/tmp") / "listserv-member-shots"  # kept to look at after a run


def fits_a_phone(page: sync_api.Page, name: str, tmp_path: Path) -> None:
    """No sideways scrolling at 390 px, a label on every field a person fills in, and a
    screenshot to look at."""
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')].filter(e => !e.labels.length)
        .map(e => e.name)""")
    assert unlabelled == [], page.url
    SHOTS.mkdir(exist_ok=True)
    for folder in (tmp_path, SHOTS):
        page.screenshot(path=folder / f"{name}.png", full_page=True)


def link_in(sink, address: str, pattern: str, count: int = 1) -> str:
    """The path of the link matching `pattern` in the newest of `count` mails to `address`."""
    mail = mails_to(sink, address, count)[-1]
    found = re.search(pattern, mail.get_body(("plain",)).get_content())
    assert found, mail.get_content()
    return urlsplit(found.group(0)).path


def test_a_visitor_joins_from_the_list_page_by_keyboard_and_confirms_from_the_mail(
        running, make_list, reader, sink, engine, tmp_path):
    make_list(LIST, members=[BOB])
    r = reader(is_mobile=True, has_touch=True)
    fits_a_phone(r.visit("/"), "index-join", tmp_path)
    page = r.visit(f"/{LIST}/")
    fits_a_phone(page, "list-join", tmp_path)
    mailto = page.get_by_role("link", name=LIST).first.get_attribute("href")
    assert mailto == f"mailto:{LIST}"
    # Keyboard only: type the address, Tab to the delivery choice (the hidden field is
    # not on the way), Tab to the button, Enter.
    page.get_by_label("Your email address").focus()
    page.keyboard.type("visitor@example.com")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.name") == "delivery"
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Join Dev"
    with page.expect_navigation() as navigation:
        page.keyboard.press("Enter")
    page = r.checked(navigation.value)
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Check your mail")
    fits_a_phone(page, "join-sent", tmp_path)

    confirm = link_in(sink, "visitor@example.com", r"http\S+/confirm/\S+")
    page = r.visit(confirm)
    assert not helpers_is_member(engine, "visitor@example.com")  # opening it did nothing
    fits_a_phone(page, "confirm", tmp_path)
    page = r.follow(page.get_by_role("button", name="Yes, subscribe me"))
    sync_api.expect(page.get_by_text("is now subscribed")).to_be_visible()
    assert helpers_is_member(engine, "visitor@example.com")

    spent = page.goto(r.origin + confirm)  # the link again: used
    assert spent.status == 404
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        "This link is not valid")
    sync_api.expect(page.get_by_text("Nothing was changed")).to_be_visible()


def test_a_member_switches_to_the_digest_mutes_a_thread_and_leaves_one_list_of_two(
        running, make_list, reader, sink, engine, tmp_path):
    make_list(LIST, members=[ALICE, BOB])
    make_list("ops@lists.example.org", name="Ops", members=[BOB])
    post(running, "Release plans", "Shall we tag the tarball on Friday?\n", ALICE, "plans@x")
    r = reader(is_mobile=True, has_touch=True)

    # The footer of Bob's copy: mute the thread, then his page of subscriptions.
    page = r.visit(link_in(sink, BOB, r"http\S+/mute/\S+"))
    page = r.follow(page.get_by_role("button", name="Mute this thread"))
    page = r.visit(link_in(sink, BOB, r"http\S+/manage/\S+"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Subscriptions of {BOB}")
    sync_api.expect(page.get_by_role("button", name="Unmute Release plans")).to_be_visible()
    fits_a_phone(page, "manage", tmp_path)

    dev = page.get_by_role("group", name="How posts of Dev reach you")
    dev.get_by_label("A digest (MIME, each post a part)").check()
    page = r.follow(page.get_by_role("button", name="Save delivery for Dev"))
    sync_api.expect(page.get_by_role("status")).to_contain_text("now: digest-mime")
    page = r.follow(page.get_by_role("button", name="Leave Ops"))
    sync_api.expect(page.get_by_role("status")).to_contain_text("has left ops@")
    sync_api.expect(page.get_by_role("heading", name="Ops")).to_have_count(0)
    fits_a_phone(page, "manage-after", tmp_path)
    with db.session(engine) as s:
        rows = {(m.list_id, m.delivery.value) for m in s.scalars(
            select(Member).where(Member.address == BOB, Member.role == Role.MEMBER))}
        assert s.scalars(select(Mute.thread_id).where(Mute.address == BOB)).all() == [
            "plans@x"]
    assert rows == {(1, "digest-mime")}


def test_a_digest_member_follows_a_thread_from_the_footer_and_sets_options_on_the_page(
        running, make_list, reader, sink, engine, tmp_path):
    make_list(LIST, members=[ALICE, BOB])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(
            footer="-- {{ name }}\nFollow this thread: {{ follow_url }}\n"
                   "Your subscriptions: {{ manage_url }}"))
        s.commit()
    post(running, "Release plans", "Shall we tag the tarball on Friday?\n", ALICE, "plans@x")
    r = reader(is_mobile=True, has_touch=True)

    page = r.visit(link_in(sink, BOB, r"http\S+/follow/\S+"))
    fits_a_phone(page, "follow", tmp_path)
    page = r.follow(page.get_by_role("button", name="Follow this thread"))
    sync_api.expect(page.get_by_role("button", name="Unfollow this thread")).to_be_visible()
    fits_a_phone(page, "followed", tmp_path)

    page = r.visit(link_in(sink, BOB, r"http\S+/manage/\S+"))
    options = page.get_by_role("group", name="Your options on Dev")
    options.get_by_label("A copy of my own posts").uncheck()
    options.get_by_label("A short mail when my post went out").check()
    page = r.follow(page.get_by_role("button", name="Save options for Dev"))
    sync_api.expect(page.get_by_role("status")).to_contain_text("options on dev@")
    sync_api.expect(page.get_by_role("button", name="Unfollow Release plans")).to_be_visible()
    fits_a_phone(page, "manage-options", tmp_path)
    with db.session(engine) as s:
        bob = s.scalars(select(Member).where(Member.address == BOB)).one()
        assert (bob.own_posts, bob.acknowledge) == (False, True)
        assert s.scalars(select(Follow.thread_id)).all() == ["plans@x"]
    page = r.follow(page.get_by_role("button", name="Unfollow Release plans"))
    sync_api.expect(page.get_by_role("button", name="Unfollow Release plans")).to_have_count(0)


def test_expired_and_forged_manage_links_get_a_clear_page(running, make_list, reader,
                                                          engine, tmp_path):
    make_list(LIST, members=[BOB])
    r = reader(is_mobile=True, has_touch=True)
    page = r.page
    expired = page.goto(r.origin + f"/manage/{tokens.manage_link(SECRET, BOB, -1)}")
    assert expired.status == 410
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        "This link has expired")
    fits_a_phone(page, "manage-expired", tmp_path)
    forged = page.goto(r.origin + f"/manage/{tokens.manage_link('not-ours', BOB, 24)}")
    assert forged.status == 400
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text(
        "This link is not valid")
    assert helpers_is_member(engine, BOB)
    page = r.visit("/manage")
    fits_a_phone(page, "manage-request", tmp_path)
    page.get_by_label("Your email address").fill(BOB)
    page = r.follow(page.get_by_role("button", name="Mail me the link"))
    sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Check your mail")
