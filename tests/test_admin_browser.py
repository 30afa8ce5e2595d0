"""An owner's and a moderator's pages in a real browser (Debian's Chromium through
Playwright), with JavaScript off, on a 390 px wide screen, by keyboard: the owner asks
for the admin link, approves a held post (which reaches the members) and rejects
another (whose author is told); a moderator's link opens no owner page; an expired,
forged or spent link gets a clear page and changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from listserv import db, held_summary, roster, tokens
from listserv.enums import MessageState
from listserv.models import Message
from tests.helpers import BOB, CAROL, LIST, SECRET, mails_to, message

pytestmark = pytest.mark.slow  # a real Chromium

PHONE = {"width": 390, "height": 844}
OWNER = "owner@example.org"
MOD = "mod@example.org"

# Every visible field of a page and whether a <label> names it.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
    .map(e => e.name)"""


@pytest.fixture
def dev(make_list, engine):
    mlist = make_list(members=[BOB, CAROL], owner=OWNER, moderators=[MOD])
    with db.session(engine) as s:
        roster.set_member(s, roster.get_list(s, LIST), BOB, moderated=True)
        s.commit()
    return mlist


@pytest.fixture
def phone(browser, running):
    """A page on a phone-sized screen with JavaScript off: every page must work so."""
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def look(page, name: str, tmp_path: Path) -> None:
    """A screenshot at 390 px, every field labelled, nothing wider than the screen."""
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
    assert page.evaluate(UNLABELLED) == [], name
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"], name


def held_post(running, engine, subject: str) -> int:
    running.send(BOB, [LIST], message(subject, sender=BOB))
    with db.session(engine) as s:
        found = s.query(Message).filter(Message.subject == subject).one()
        assert found.state is MessageState.HELD
        return found.id


def state(engine, message_pk: int) -> MessageState:
    with db.session(engine) as s:
        return s.get(Message, message_pk).state


def test_an_owner_approves_one_post_and_rejects_another(running, dev, sink, engine, phone,
                                                        tmp_path):
    good = held_post(running, engine, "Good news")
    bad = held_post(running, engine, "Off topic")
    base = running.config.web.base_url
    page = phone
    page.goto(f"{base}/{LIST}/admin")
    look(page, "admin-ask", tmp_path)
    # Keyboard only: Tab past the header's links to the address field.
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.name") == "address":
            break
    assert page.evaluate("() => document.activeElement.name") == "address"
    page.keyboard.type(OWNER)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Check your mail" in page.content()
    [mail] = [m for m in mails_to(sink, OWNER, 3) if "admin link" in m["Subject"]]
    link = re.search(r"http://\S+/admin/\S+", mail.get_content()).group(0)

    page.goto(link)
    look(page, "admin-held", tmp_path)
    assert "Good news" in page.content() and "moderated" in page.content()
    section = page.locator("section.item", has_text="Good news")
    section.get_by_role("button", name="Approve", exact=True).focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    look(page, "admin-done", tmp_path)
    assert "Done: approved message" in page.content()
    assert any(m["Subject"] == "[Dev] Good news" for m in mails_to(sink, CAROL))

    page.goto(link)
    section = page.locator("section.item", has_text="Off topic")
    section.get_by_label("Reason for rejecting").focus()
    page.keyboard.type("Please keep to the list's topic.")
    page.keyboard.press("Tab")  # to the Reject button
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Done: rejected message" in page.content()
    # two held notices, the approval, his copy of the post, and the rejection
    told = [m for m in mails_to(sink, BOB, 5) if "rejected" in m["Subject"]]
    assert told and "keep to the list's topic" in told[0].get_content()
    assert (state(engine, good), state(engine, bad)) == (MessageState.ACCEPTED,
                                                          MessageState.REJECTED)

    for name in ("members", "settings", "bounces"):
        response = page.goto(f"{link}/{name}")
        assert response.status == 200
        look(page, f"admin-{name}", tmp_path)


def test_a_moderator_s_link_opens_the_queue_and_no_owner_page(running, dev, engine, phone,
                                                              tmp_path):
    held_post(running, engine, "Waiting")
    value = tokens.staff_link(SECRET, dev.id, MOD, 12)
    link = f"{running.config.web.base_url}/{LIST}/admin/{value}"
    assert phone.goto(link).status == 200
    assert "Waiting" in phone.content()
    assert phone.locator("nav.tabs a", has_text="Members").count() == 0
    for name in ("members", "settings", "bounces"):
        response = phone.goto(f"{link}/{name}")
        assert response.status == 403 and "owners only" in phone.content()
    look(phone, "admin-moderator-refused", tmp_path)


def test_expired_forged_and_spent_links_change_nothing(running, dev, engine, phone, tmp_path):
    post = held_post(running, engine, "Still held")
    base = running.config.web.base_url
    expired = tokens.staff_link(SECRET, dev.id, OWNER, -1)
    forged = tokens.staff_link("not our secret", dev.id, OWNER, 12)
    for value in (expired, forged):
        response = phone.goto(f"{base}/{LIST}/admin/{value}")
        assert response.status == 400 and "This link is not valid" in phone.content()
        assert "Nothing was changed" in phone.content()
    look(phone, "admin-invalid", tmp_path)
    assert state(engine, post) is MessageState.HELD

    # a summary's link acts once: the second click finds the post decided
    config = running.config
    with db.session(engine) as s:
        held_summary.send(s, config, held_summary.utcnow().replace(year=2099, hour=23))
        s.commit()
    link = f"{base}/{LIST}/held/{tokens.held_link(SECRET, dev.id, MOD, post, 14)}"
    phone.goto(link)
    look(phone, "admin-summary-post", tmp_path)
    with phone.expect_navigation():
        phone.get_by_role("button", name="Discard").click()
    assert "Done: discarded" in phone.content()
    phone.goto(link)
    assert "no longer held" in phone.content()
    with db.session(engine) as s:
        assert s.get(Message, post).state is MessageState.DISCARDED


def test_owner_invites_and_sets_a_template_on_a_phone(phone, running, dev, sink, engine,
                                                       tmp_path):
    path = (f"{running.config.web.base_url}/{LIST}/admin/"
            f"{tokens.staff_link(SECRET, dev.id, OWNER, 12)}")
    phone.goto(f"{path}/invite")
    phone.fill("#invite-addresses", "Dan <dan@example.com>")
    look(phone, "invite", tmp_path)
    with phone.expect_navigation():
        phone.click("text=Send the invitations")
    assert "invited dan@example.com" in phone.content()
    mails_to(sink, "dan@example.com")
    phone.goto(f"{path}/invite")
    assert "Waiting for an answer (1)" in phone.content()
    look(phone, "invite-pending", tmp_path)
    phone.goto(f"{path}/templates")
    look(phone, "templates", tmp_path)
    phone.fill("#tpl-goodbye", "Goodbye {{ member }}, from {{ name }}.")
    with phone.expect_navigation():
        phone.click("text=Save goodbye")
    assert "goodbye saved" in phone.content()
    phone.goto(f"{path}/templates")
    assert "Back to the built-in goodbye" in phone.content()
    with db.session(engine) as s:
        assert roster.get_list(s, LIST).goodbye == "Goodbye {{ member }}, from {{ name }}."
