"""The owners' and moderators' pages over real HTTP against a running server, with
mail through the real smarthost sink: the admin link asked for and mailed, held posts
approved, rejected and discarded, pending requests, members, settings and bounces, and
links that are forged, expired, of another list or spent changing nothing."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from listserv import db, held_summary, roster, tokens
from listserv.enums import DeliveryMode, MessageState
from listserv.models import MailingList, Member, Message, SenderRule, Setting, utcnow
from tests.helpers import BOB, CAROL, LIST, SECRET, mails_to, message, web

OWNER = "owner@example.org"
MOD = "mod@example.org"
EVE = "eve@example.org"  # a non-member, not authenticated


@pytest.fixture
def dev(make_list):
    return make_list(members=[BOB, CAROL], owner=OWNER, moderators=[MOD])


def admin_path(list_id: int, address: str, hours: int = 12) -> str:
    return f"/{LIST}/admin/{tokens.staff_link(SECRET, list_id, address, hours)}"


def held(engine) -> list[Message]:
    with db.session(engine) as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def post_held(running, engine, sender: str = EVE, subject: str = "Held one") -> Message:
    """A post the list holds: a non-member's, or a moderated member's."""
    before = len(held(engine))
    running.send(sender, [LIST], message(subject, sender=sender))
    message_row = held(engine)[before]
    assert message_row.state is MessageState.HELD
    return message_row


def moderate(engine, address: str) -> None:
    with db.session(engine) as s:
        roster.set_member(s, roster.get_list(s, LIST), address, moderated=True)
        s.commit()


def state(engine, message_pk: int) -> MessageState:
    with db.session(engine) as s:
        return s.get(Message, message_pk).state


def subjects_to(sink, address: str) -> list[str]:
    return [m["Subject"] for m in mails_to(sink, address, 0)]


# --- asking for the link ---------------------------------------------------------------------

def test_the_form_mails_the_link_to_staff_only_and_answers_the_same(running, dev, sink):
    with web(running) as client:
        page = client.get(f"/{LIST}/admin")
        assert page.status_code == 200 and '<label for="address">' in page.text
        for_owner = client.post(f"/{LIST}/admin", data={"address": OWNER})
        for_stranger = client.post(f"/{LIST}/admin", data={"address": "x@example.net"})
        for_member = client.post(f"/{LIST}/admin", data={"address": BOB})
        assert for_owner.text == for_stranger.text == for_member.text
        assert "Check your mail" in for_owner.text
        [mail] = mails_to(sink, OWNER)
        assert mail["Auto-Submitted"] == "auto-generated"
        url = re.search(r"http://\S+/admin/\S+", mail.get_content()).group(0)
        assert "12 hours" in mail.get_content()
        opened = client.get(url)
        assert opened.status_code == 200 and "held posts" in opened.text
        assert opened.headers["cache-control"] == "no-store"
    assert subjects_to(sink, "x@example.net") == [] and subjects_to(sink, BOB) == []


def test_an_unknown_list_has_no_admin_form(running, dev):
    with web(running) as client:
        assert client.get("/nope@lists.example.org/admin").status_code == 404
        assert client.post("/nope@lists.example.org/admin",
                           data={"address": OWNER}).status_code == 404


def test_admin_links_are_rate_limited_like_other_automatic_mail(running, dev, sink, engine):
    limit = running.config.lists.max_autoreplies_per_day
    with web(running) as client:
        for _ in range(limit + 3):
            assert client.post(f"/{LIST}/admin", data={"address": OWNER}).status_code == 200
    assert len(mails_to(sink, OWNER, limit)) == limit


# --- held posts --------------------------------------------------------------------------------

def test_held_post_is_shown_sanitised_with_its_reasons(running, dev, engine):
    body = 'Look <script>alert(1)</script> here\n'
    running.send(EVE, [LIST], message("<b>Bold</b> offer", sender=EVE, body=body))
    with web(running) as client:
        page = client.get(admin_path(dev.id, MOD)).text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;Bold&lt;/b&gt; offer" in page
    assert "non-member" in page
    for label in ("Approve", "Reject", "Discard", "always allow", "always deny"):
        assert label in page
    assert '<label for="reason-' in page


def test_approve_sends_the_post_to_the_members_and_tells_a_member_author(running, dev, sink,
                                                                          engine):
    moderate(engine, BOB)
    post = post_held(running, engine, sender=BOB, subject="Worth reading")
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        done = client.post(f"{path}/held/{post.id}", data={"action": "approve"})
    assert done.status_code == 200 and "approved message" in done.text
    assert any(m["Subject"] == "[Dev] Worth reading" for m in mails_to(sink, CAROL))
    assert state(engine, post.id) is MessageState.ACCEPTED
    # the held notice, the post itself (in whichever order) and the approval
    told = [m for m in mails_to(sink, BOB, 3) if "approved" in m["Subject"]]
    assert told and "Worth reading" in told[0]["Subject"]


def test_reject_tells_a_member_author_the_reason(running, dev, sink, engine):
    moderate(engine, BOB)
    post = post_held(running, engine, sender=BOB, subject="Off topic")
    with web(running) as client:
        done = client.post(f"{admin_path(dev.id, MOD)}/held/{post.id}",
                           data={"action": "reject", "reason": "please stay on topic"})
    assert done.status_code == 200
    told = [m for m in mails_to(sink, BOB, 2) if "rejected" in m["Subject"]]
    assert told and "please stay on topic" in told[0].get_content()
    assert state(engine, post.id) is MessageState.REJECTED


def test_an_unauthenticated_non_member_is_not_told_of_a_rejection(running, dev, sink, engine):
    post = post_held(running, engine)
    with web(running) as client:
        client.post(f"{admin_path(dev.id, OWNER)}/held/{post.id}",
                    data={"action": "reject", "reason": "no"})
    assert state(engine, post.id) is MessageState.REJECTED
    sink.wait_for(2)  # the two held notices
    assert subjects_to(sink, EVE) == []


def test_approve_and_allow_or_discard_and_deny_set_the_sender_rule(running, dev, engine):
    first = post_held(running, engine, sender=EVE)
    second = post_held(running, engine, sender="spam@example.net")
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        client.post(f"{path}/held/{first.id}", data={"action": "approve-allow"})
        client.post(f"{path}/held/{second.id}", data={"action": "discard-deny"})
    with db.session(engine) as s:
        rules = {r.address: r.action.value for r in s.scalars(select(SenderRule))}
    assert rules == {EVE: "allow", "spam@example.net": "deny"}
    assert state(engine, first.id) is MessageState.ACCEPTED
    assert state(engine, second.id) is MessageState.DISCARDED
    running.send(EVE, [LIST], message("again", sender=EVE))
    assert held(engine)[-1].state is MessageState.ACCEPTED  # allowed from now on


def test_a_post_decided_once_is_not_decided_again(running, dev, engine):
    post = post_held(running, engine)
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        assert client.post(f"{path}/held/{post.id}", data={"action": "discard"}
                           ).status_code == 200
        again = client.post(f"{path}/held/{post.id}", data={"action": "approve"})
    assert again.status_code == 409 and "no longer held" in again.text
    assert state(engine, post.id) is MessageState.DISCARDED


def test_a_list_s_staff_sees_that_list_only(running, dev, make_list, engine):
    other = make_list("ops@lists.example.org", owner="boss@example.org")
    running.send(EVE, ["ops@lists.example.org"],
                 message("Other list", sender=EVE, to="ops@lists.example.org"))
    theirs = held(engine)[-1]
    with web(running) as client:
        mine = admin_path(dev.id, OWNER)
        assert client.post(f"{mine}/held/{theirs.id}", data={"action": "approve"}
                           ).status_code == 409
        # a link for one list does not open another's pages
        value = tokens.staff_link(SECRET, dev.id, OWNER, 12)
        assert client.get(f"/ops@lists.example.org/admin/{value}").status_code == 400
        # and the other list's owner is no one here
        assert client.get(admin_path(dev.id, "boss@example.org")).status_code == 400
        assert client.get(f"/ops@lists.example.org/admin/"
                          f"{tokens.staff_link(SECRET, other.id, 'boss@example.org', 12)}"
                          ).status_code == 200
    assert state(engine, theirs.id) is MessageState.HELD


@pytest.mark.parametrize("how", ["forged", "expired", "member", "removed"])
def test_a_bad_admin_link_gets_a_clear_page_and_changes_nothing(running, dev, engine, how):
    post = post_held(running, engine)
    value = tokens.staff_link(SECRET, dev.id, OWNER, 12)
    if how == "forged":
        value = tokens.staff_link("another secret", dev.id, OWNER, 12)
    elif how == "expired":
        value = tokens.staff_link(SECRET, dev.id, OWNER, -1)
    elif how == "member":
        value = tokens.staff_link(SECRET, dev.id, BOB, 12)
    else:
        with db.session(engine) as s:
            roster.remove_members(s, roster.get_list(s, LIST), [OWNER])
            s.commit()
    path = f"/{LIST}/admin/{value}"
    with web(running) as client:
        page = client.get(path)
        acted = client.post(f"{path}/held/{post.id}", data={"action": "approve"})
    assert page.status_code == acted.status_code == 400
    assert "This admin link" in page.text and "Nothing was changed" in acted.text
    assert state(engine, post.id) is MessageState.HELD


# --- pending requests --------------------------------------------------------------------------

def test_a_moderator_approves_a_pending_subscription(running, dev, sink, engine):
    with db.session(engine) as s:
        s.execute(update(MailingList).values(subscription="moderate"))
        s.commit()
    alice = "alice@example.com"
    running.send(alice, ["dev-join@lists.example.org"],
                 message("", sender=alice, to="dev-join@lists.example.org", body=""))
    confirmation = mails_to(sink, alice)[0].get_content()
    token = re.search(r"/confirm/([A-Za-z0-9_-]+)", confirmation).group(1)
    path = admin_path(dev.id, MOD)
    with web(running) as client:
        client.post(f"/confirm/{token}")
        page = client.get(path).text
        assert alice in page
        request_id = re.search(r"/request/([0-9]+)", page).group(1)
        done = client.post(f"{path}/request/{request_id}", data={"action": "approve"})
        again = client.post(f"{path}/request/{request_id}", data={"action": "reject"})
    assert done.status_code == 200 and again.status_code == 409
    with db.session(engine) as s:
        assert s.scalars(select(Member).where(Member.address == alice)).first() is not None
    assert any("Welcome" in m["Subject"] for m in mails_to(sink, alice, 3))


# --- owners only: members, settings, bounces ----------------------------------------------------

def test_a_moderator_s_link_opens_no_owner_page(running, dev, sink, engine):
    path = admin_path(dev.id, MOD)
    with web(running) as client:
        assert client.get(path).status_code == 200
        for page in ("members", "settings", "bounces", "members.csv", "invite", "templates"):
            assert client.get(f"{path}/{page}").status_code == 403
        removed = client.post(f"{path}/members", data={"do": "remove", "address": BOB})
        changed = client.post(f"{path}/settings", data={"key": "emergency", "value": "true"})
        invited = client.post(f"{path}/invite", data={"addresses": "dan@example.com"})
        templated = client.post(f"{path}/templates", data={
            "name": "welcome", "do": "set", "text": "Hi"})
    assert removed.status_code == changed.status_code == 403
    assert invited.status_code == templated.status_code == 403
    assert subjects_to(sink, "dan@example.com") == []
    with db.session(engine) as s:
        assert roster.get_list(s, LIST).emergency is False
        assert s.scalars(select(Member).where(Member.address == BOB)).first() is not None


def test_owner_adds_sets_and_removes_members_and_exports_them(running, dev, sink, engine):
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        added = client.post(f"{path}/members", data={
            "do": "add", "address": "Dan <dan@example.com>", "welcome": "yes"})
        quiet = client.post(f"{path}/members", data={"do": "add", "address": "erin@example.com"})
        twice = client.post(f"{path}/members", data={"do": "add", "address": "dan@example.com"})
        assert added.status_code == quiet.status_code == 200 and twice.status_code == 409
        client.post(f"{path}/members", data={"do": "set", "address": BOB,
                                             "delivery": "digest-mime", "moderated": "yes"})
        client.post(f"{path}/members", data={"do": "remove", "address": CAROL})
        found = client.get(f"{path}/members", params={"q": "dan"}).text
        exported = client.get(f"{path}/members.csv")
    assert "dan@example.com" in found and BOB not in found
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert exported.headers["content-type"].startswith("text/csv")
    by_address = {r["address"]: r for r in rows if r["role"] == "member"}
    assert set(by_address) == {BOB, "dan@example.com", "erin@example.com", OWNER}
    assert by_address[BOB]["delivery"] == "digest-mime" and by_address[BOB]["moderated"] == "true"
    assert by_address["dan@example.com"]["name"] == "Dan"
    assert any("Welcome" in m["Subject"] for m in mails_to(sink, "dan@example.com"))
    assert subjects_to(sink, "erin@example.com") == []
    with db.session(engine) as s:
        bob = s.scalars(select(Member).where(Member.address == BOB)).one()
        assert bob.delivery is DeliveryMode.DIGEST_MIME and bob.moderated


def test_owner_sets_a_member_to_summary(running, dev, engine):
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        assert '<option value="summary"' in client.get(f"{path}/members").text
        assert client.post(f"{path}/members", data={
            "do": "set", "address": BOB, "delivery": "summary"}).status_code == 200
    with db.session(engine) as s:
        bob = s.scalars(select(Member).where(Member.address == BOB)).one()
        assert bob.delivery is DeliveryMode.SUMMARY


def test_owner_invites_and_sees_the_invitations_waiting(running, dev, sink, engine):
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        assert "No invitation is waiting" in client.get(f"{path}/invite").text
        sent = client.post(f"{path}/invite", data={
            "addresses": f"Dan <dan@example.com>\n\n{BOB}\nnot an address\n"})
        assert sent.status_code == 200
        assert "invited dan@example.com" in sent.text
        assert f"{BOB}: already a member" in sent.text and "not a valid address" in sent.text
        page = client.get(f"{path}/invite").text
        assert "Waiting for an answer (1)" in page and "dan@example.com" in page
        again = client.post(f"{path}/invite", data={"addresses": "dan@example.com"})
        assert again.status_code == 409 and "already invited" in again.text
        empty = client.post(f"{path}/invite", data={"addresses": "  \n"})
        assert empty.status_code == 409
    [invitation] = mails_to(sink, "dan@example.com")  # once, not twice
    assert "/invite/" in invitation.get_body(("plain",)).get_content()
    with db.session(engine) as s:
        assert s.scalars(select(Member).where(Member.address == "dan@example.com")).first() \
            is None  # a member only once they accept


def test_owner_sets_and_resets_a_template_checked_as_the_cli_checks_it(running, dev, sink,
                                                                       engine):
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        page = client.get(f"{path}/templates").text
        for name in ("welcome", "goodbye", "footer", "digest_header"):
            assert f'<label for="tpl-{name}">' in page
        assert "the built-in one" in page and "{{ member }}" in page
        broken = client.post(f"{path}/templates", data={
            "name": "welcome", "do": "set", "text": "Hello {{ member.nope() }}"})
        assert broken.status_code == 409 and "does not render" in broken.text
        unknown = client.post(f"{path}/templates", data={"name": "x", "do": "set", "text": "a"})
        assert unknown.status_code == 409 and "unknown template" in unknown.text
        too_long = client.post(f"{path}/templates", data={
            "name": "welcome", "do": "set", "text": "a" * 20_001})
        assert too_long.status_code == 409
        saved = client.post(f"{path}/templates", data={
            "name": "welcome", "do": "set", "text": "Hello {{ member }}, welcome to {{ name }}."})
        assert saved.status_code == 200
        assert "Hello {{ member }}, welcome to {{ name }}." in client.get(f"{path}/templates").text
        client.post(f"{path}/members", data={"do": "add", "address": "dan@example.com",
                                             "welcome": "yes"})
        [welcome] = mails_to(sink, "dan@example.com")
        assert "Hello dan@example.com, welcome to" in welcome.get_body(("plain",)).get_content()
        reset = client.post(f"{path}/templates", data={"name": "welcome", "do": "reset"})
        assert reset.status_code == 200
    with db.session(engine) as s:
        assert roster.get_list(s, LIST).welcome is None


def test_owner_changes_a_setting_checked_as_list_set_checks_it(running, dev, engine):
    path = admin_path(dev.id, OWNER)
    with web(running) as client:
        page = client.get(f"{path}/settings").text
        for key in ("subscription", "member_action", "new_member_holds", "footer", "dmarc"):
            assert f'<label for="set-{key}">' in page
        assert client.post(f"{path}/settings", data={"key": "subscription",
                                                     "value": "moderate"}).status_code == 200
        bad = client.post(f"{path}/settings", data={"key": "digest_send_hour", "value": "25"})
        unknown = client.post(f"{path}/settings", data={"key": "id", "value": "3"})
    assert bad.status_code == unknown.status_code == 409
    assert "valid values: an hour from 0 to 23" in bad.text
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        assert mlist.subscription.value == "moderate" and mlist.digest_send_hour == 0


def test_owner_sees_the_bounces(running, dev, engine):
    from listserv.models import BounceEvent

    with db.session(engine) as s:
        s.add(BounceEvent(list_id=dev.id, address=BOB, status="5.1.1", bounce_class="mailbox",
                          diagnostic="no such user", counted=True))
        s.commit()
    with web(running) as client:
        page = client.get(f"{admin_path(dev.id, OWNER)}/bounces").text
    assert BOB in page and "5.1.1" in page and "no such user" in page


# --- the moderation summary --------------------------------------------------------------

def summary_links(sink, address: str) -> list[str]:
    [mail] = [m for m in mails_to(sink, address, 0) if "waiting for a moderator" in m["Subject"]]
    return re.findall(r"http://\S+/held/\S+", mail.get_content())


def test_the_summary_goes_once_a_day_with_a_link_per_post(make_server, dev, sink, engine):
    # The server's own housekeeping sends none: the test says when it is time.
    running = make_server(lists={"held_summary_hour": None})
    first = post_held(running, engine, subject="First")
    post_held(running, engine, subject="Second")
    config = dataclasses.replace(running.config, lists=dataclasses.replace(
        running.config.lists, held_summary_hour=8))
    today = (utcnow() + timedelta(days=1)).replace(hour=9)
    with db.session(engine) as s:
        # posts held within the hour were just announced, each by its own notice
        anytime = dataclasses.replace(config, lists=dataclasses.replace(
            config.lists, held_summary_hour=0))
        assert held_summary.send(s, anytime, utcnow()) == 0
        s.rollback()
        assert held_summary.send(s, config, today.replace(hour=7)) == 0  # not yet its hour
        assert held_summary.send(s, config, today) == 2  # the owner and the moderator
        s.commit()
    with db.session(engine) as s:  # a restart: the date is in the database
        assert held_summary.send(s, config, today.replace(hour=10)) == 0
        assert s.get(Setting, held_summary.SENT_KEY).value == today.date().isoformat()
    mails_to(sink, MOD, 3)  # two held notices and the summary
    links = summary_links(sink, MOD)
    assert len(links) == 2
    mail = [m for m in mails_to(sink, MOD, 0) if "waiting" in m["Subject"]][0]
    assert mail["Auto-Submitted"] == "auto-generated" and "First" in mail.get_content()
    with web(running) as client:
        page = client.get(links[0])
        assert page.status_code == 200 and "First" in page.text
        assert state(engine, first.id) is MessageState.HELD  # a GET does nothing
        done = client.post(links[0], data={"action": "discard"})
        reused = client.post(links[0], data={"action": "approve"})
        forged = client.get(links[0][:-3] + "AAA")
    assert done.status_code == 200 and reused.status_code == 409
    assert forged.status_code == 400
    assert state(engine, first.id) is MessageState.DISCARDED


def test_no_summary_when_its_hour_is_empty(running, dev, engine):
    post_held(running, engine)
    config = running.config
    off = dataclasses.replace(config, lists=dataclasses.replace(config.lists,
                                                                  held_summary_hour=None))
    with db.session(engine) as s:
        assert held_summary.send(s, off, utcnow().replace(hour=23)) == 0


def test_a_moderator_answering_by_mail_gets_a_confirmation(running, dev, sink, engine):
    post = post_held(running, engine)
    [notice] = [m for m in mails_to(sink, MOD) if "held" in m["Subject"]]
    running.send(MOD, [notice["Reply-To"]], message("Re: held", sender=MOD,
                                                    to=notice["Reply-To"], body="discard\n"))
    done = [m for m in mails_to(sink, MOD, 2) if "moderation:" in m["Subject"]]
    assert done and f"discarded message {post.id}" in done[0].get_content()


def test_expiry_of_a_link_is_its_own(engine, dev):
    with db.session(engine) as s:
        value = tokens.staff_link(SECRET, dev.id, OWNER, 12)
        found = tokens.staff_link_holder(SECRET, "admin", value)
        assert found is not None and found[:2] == (dev.id, OWNER)
        later = int((utcnow() + timedelta(hours=12, seconds=5)).timestamp())
        assert int(tokens.verify(SECRET, "admin", value)[2]) < later
        assert tokens.staff_link_holder(SECRET, "held", value) is None
        s.rollback()
