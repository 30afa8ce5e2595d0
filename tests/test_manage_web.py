"""A member's page of subscriptions over real HTTP and SMTP: the link mailed on request
(the same answer whoever asks), in the welcome and in the footer of each personal copy;
every change on it is the one the email commands and the CLI make; an expired, forged
or spent link changes nothing. Also the unsubscribe page's gentler choices."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from listserv import db, roster, tokens
from listserv.enums import DeliveryMode, Role
from listserv.models import Member, Mute, ThreadNode, utcnow
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    SECRET,
    as_json,
    delivered_to,
    is_member,
    mails_to,
    manage_path,
    message,
    ok,
    unsubscribe_path,
    web,
)

OTHER = "ops@lists.example.org"
NEW = "bob@new.example"


def member(engine, address: str = BOB, list_address: str = LIST) -> Member | None:
    with db.session(engine) as s:
        return s.scalars(select(Member).where(
            Member.address == address, Member.role == Role.MEMBER,
            Member.list_id == roster.get_list(s, list_address).id)).first()


def two_lists(make_list) -> None:
    make_list(LIST, members=[BOB, CAROL])
    make_list(OTHER, name="Ops", members=[BOB])


def test_asking_for_the_link_mails_members_and_tells_no_one_who_is(running, make_list,
                                                                   sink, engine):
    two_lists(make_list)
    with web(running) as client:
        assert 'name="address"' in client.get("/manage").text
        asked = client.post("/manage", data={"address": BOB.upper()})
        stranger = client.post("/manage", data={"address": "nobody@example.com"})
        bad = client.post("/manage", data={"address": "nobody"})
        [mail] = mails_to(sink, BOB)
        link = re.search(r"(/manage/\S+)", mail.get_content()).group(1)
        page = client.get(link)
    assert asked.status_code == stranger.status_code == 200
    assert asked.text.replace(BOB, "X") == stranger.text.replace("nobody@example.com", "X")
    assert bad.status_code == 400
    assert delivered_to(engine, sink, "nobody@example.com") == 0
    assert mail["Auto-Submitted"] == "auto-replied" and "24 hours" in mail.get_content()
    assert page.status_code == 200
    assert "Subscriptions of bob@example.com" in page.text
    assert "Leave Dev" in page.text and "Leave Ops" in page.text


def test_the_page_changes_delivery_and_leaves_one_list(running, make_list, sink, engine):
    two_lists(make_list)
    path = manage_path(BOB)
    with web(running) as client:
        digest = client.post(path, data={"action": "delivery", "list": LIST,
                                         "delivery": "digest-mime"})
        assert digest.status_code == 200 and "now: digest-mime" in digest.text
        left = client.post(path, data={"action": "leave", "list": OTHER})
        assert left.status_code == 200 and "has left ops@" in left.text
        again = client.post(path, data={"action": "leave", "list": OTHER})
    assert member(engine).delivery is DeliveryMode.DIGEST_MIME
    assert member(engine, list_address=OTHER) is None
    assert again.status_code == 400 and "Nothing was changed" in again.text
    assert "left" in mails_to(sink, BOB)[0]["Subject"]  # the goodbye of member_actions.leave


def test_no_mail_until_a_date_then_delivery_resumes_by_itself(running, make_list, sink,
                                                              engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    until = (utcnow() + timedelta(days=10)).date().isoformat()
    with web(running) as client:
        paused = client.post(manage_path(BOB), data={"action": "pause", "list": LIST,
                                                     "until": until})
        past = client.post(manage_path(BOB), data={"action": "pause", "list": LIST,
                                                   "until": "2001-01-01"})
    assert paused.status_code == 200 and f"until {until}" in paused.text
    assert past.status_code == 400
    running.send(CAROL, [LIST], message("While Bob is away", sender=CAROL))
    assert delivered_to(engine, sink, CAROL) == 1 and delivered_to(engine, sink, BOB) == 0
    with db.session(engine) as s:  # the day has come
        s.execute(update(Member).values(nomail_until=utcnow() - timedelta(minutes=1)))
        s.commit()
    running.send(CAROL, [LIST], message("Bob is back", sender=CAROL))
    assert delivered_to(engine, sink, BOB) == 1


def test_muted_threads_are_listed_and_unmuted(running, make_list, sink, engine):
    mlist = make_list(LIST, members=[BOB])
    running.send(BOB, [LIST], message("Noisy thread", sender=BOB))
    delivered_to(engine, sink, BOB)
    with db.session(engine) as s:
        thread_id = s.scalars(select(ThreadNode.thread_id)).one()
        s.add(Mute(list_id=mlist.id, address=BOB, thread_id=thread_id))
        s.commit()
    with web(running) as client:
        page = client.get(manage_path(BOB)).text
        assert "Noisy thread" in page and 'aria-label="Unmute Noisy thread"' in page
        done = client.post(manage_path(BOB), data={"action": "unmute", "list": LIST,
                                                   "thread": thread_id})
    assert done.status_code == 200 and "Noisy thread" not in done.text.split("<h2")[1]
    with db.session(engine) as s:
        assert s.scalars(select(Mute)).first() is None


def test_leave_all_lists(running, make_list, engine):
    two_lists(make_list)
    with web(running) as client:
        done = client.post(manage_path(BOB), data={"action": "leave-all"})
    assert done.status_code == 200 and "left every list" in done.text
    assert not is_member(engine, BOB) and is_member(engine, CAROL)


def test_a_change_of_address_is_confirmed_from_the_new_one(running, make_list, sink, engine):
    two_lists(make_list)
    with web(running) as client:
        asked = client.post(manage_path(BOB), data={"action": "change-address",
                                                    "address": NEW})
        assert asked.status_code == 200 and "on its way to bob@new.example" in asked.text
        assert is_member(engine, BOB) and not is_member(engine, NEW)
        [mail] = mails_to(sink, NEW)
        link = re.search(r"(/manage/address/\S+)", mail.get_content()).group(1)
        shown = client.get(link)  # a scanner's GET changes nothing
        assert shown.status_code == 200 and is_member(engine, BOB)
        done = client.post(link)
        reused = client.post(link)
    assert done.status_code == 200 and "dev@lists.example.org" in done.text
    assert not is_member(engine, BOB)
    assert member(engine, NEW) and member(engine, NEW, OTHER)
    assert reused.status_code == 400 and "was used" in reused.text
    told = mails_to(sink, BOB)[0]
    assert NEW in told["Subject"] and "ops@lists.example.org" in told.get_content()


@pytest.mark.parametrize("forge", [
    lambda: "garbage",
    lambda: tokens.manage_link("another-secret", BOB, 24),
    lambda: tokens.unsubscribe_link(SECRET, 1, BOB),  # signed for another purpose
    lambda: tokens.address_change_link(SECRET, BOB, CAROL, 24),
])
def test_forged_manage_links_change_nothing(running, make_list, engine, forge):
    two_lists(make_list)
    path = f"/manage/{forge()}"
    with web(running) as client:
        assert client.get(path).status_code == 400
        refused = client.post(path, data={"action": "leave-all"})
    assert refused.status_code == 400 and "not valid" in refused.text
    assert is_member(engine, BOB) and is_member(engine, CAROL)


@pytest.mark.parametrize("forge", [
    lambda: "garbage",
    lambda: tokens.address_change_link("another-secret", BOB, CAROL, 24),
    lambda: tokens.address_change_link(SECRET, BOB, CAROL, -1),  # expired
    lambda: tokens.manage_link(SECRET, BOB, 24),  # signed for another purpose
])
def test_forged_or_expired_address_change_links_change_nothing(running, make_list, engine,
                                                               forge):
    two_lists(make_list)
    path = f"/manage/address/{forge()}"
    with web(running) as client:
        assert client.get(path).status_code == 400
        refused = client.post(path)
    assert refused.status_code == 400 and "not valid" in refused.text
    assert member(engine, BOB, OTHER) and member(engine, CAROL)


def test_an_expired_manage_link_offers_a_new_one(running, make_list, sink, engine):
    two_lists(make_list)
    path = manage_path(BOB, hours=-1)
    with web(running) as client:
        page = client.get(path)
        refused = client.post(path, data={"action": "leave-all"})
        again = client.post("/manage", data={"address": BOB})  # its button
    assert page.status_code == refused.status_code == 410
    assert "has expired" in page.text and f'value="{BOB}"' in page.text
    assert is_member(engine, BOB) and again.status_code == 200
    assert "/manage/" in mails_to(sink, BOB)[0].get_content()


def test_a_members_copy_carries_their_own_manage_link(running, make_list, sink, engine):
    make_list(LIST, members=[BOB, CAROL], owner=None)
    running.send(BOB, [LIST], message("Hello", sender=BOB))
    [copy] = mails_to(sink, CAROL)
    footer = copy.get_body(("plain",)).get_content()
    url = re.search(r"Your subscriptions: (http\S+)", footer).group(1)
    with web(running) as client:
        page = client.get(url.removeprefix(running.config.web.base_url))
    assert page.status_code == 200 and f"Subscriptions of {CAROL}" in page.text


# --- the unsubscribe page's gentler choices ---------------------------------------------

def test_the_unsubscribe_page_offers_a_digest_or_a_pause(running, make_list, engine):
    make_list(LIST, members=[BOB, CAROL])
    with web(running) as client:
        page = client.get(unsubscribe_path(engine, BOB)).text
        assert "Get a digest instead" in page and "No mail for 30 days" in page
        digest = client.post(unsubscribe_path(engine, BOB), data={"instead": "digest"})
        pause = client.post(unsubscribe_path(engine, CAROL), data={"instead": "pause"})
    assert digest.status_code == pause.status_code == 200
    assert member(engine).delivery is DeliveryMode.DIGEST_MIME
    assert member(engine, CAROL).nomail_until > utcnow() + timedelta(days=29)
    assert "stays on" in pause.text


# --- the same changes from the command line ---------------------------------------------

def test_the_cli_pauses_a_member_and_changes_an_address(make_list, cli, engine):
    two_lists(make_list)
    ok(cli("member", "set", LIST, BOB, "--nomail-until", "2030-01-02"))
    [row] = [r for r in as_json(cli("member", "show", BOB, "--json")) if r["list"] == LIST]
    assert row["nomail_until"] == "2030-01-02"
    ok(cli("member", "set", LIST, BOB, "--nomail-until", ""))
    assert member(engine).nomail_until is None
    moved = ok(cli("member", "change-address", BOB, NEW))
    assert "ops@lists.example.org: bob@example.com is now bob@new.example" in moved.stdout
    assert not is_member(engine, BOB) and member(engine, NEW, OTHER)
    assert cli("member", "change-address", BOB, NEW).exit_code == 1
