"""The web routes behind the links in mail, over real HTTP: a GET only shows a button,
a POST acts, and a forged or spent token changes nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from listserv import db, tokens
from listserv.models import Message, Mute, ThreadNode, Token, utcnow
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    SECRET,
    delivered_to,
    is_member,
    mails_to,
    message,
    unsubscribe_path,
    web,
)

ALICE = "alice@example.com"


def form_action(page: str) -> str:
    match = re.search(r'<form method="post" action="([^"]+)"', page)
    assert match, "the page has no POST form"
    return match.group(1)


def confirmation_token(running, sink) -> str:
    """Alice asks to join by mail; the token of the confirmation she gets."""
    running.send(ALICE, ["dev-join@lists.example.org"],
                 message("", sender=ALICE, to="dev-join@lists.example.org", body=""))
    [confirmation] = mails_to(sink, ALICE)
    return re.search(r"/confirm/([A-Za-z0-9_-]+)", confirmation.get_content()).group(1)


def test_confirm_link_get_shows_a_button_and_post_subscribes(running, make_list, sink, engine):
    make_list()
    token = confirmation_token(running, sink)
    with web(running) as client:
        page = client.get(f"/confirm/{token}")
        assert page.status_code == 200 and ALICE in page.text
        assert not is_member(engine, ALICE)  # a link scanner's GET confirms nothing
        done = client.post(form_action(page.text))
    assert done.status_code == 200 and "now subscribed" in done.text
    assert is_member(engine, ALICE)
    assert "Welcome" in mails_to(sink, ALICE, 2)[1]["Subject"]


def test_confirm_link_works_once(running, make_list, sink, engine):
    make_list()
    token = confirmation_token(running, sink)
    with web(running) as client:
        assert client.post(f"/confirm/{token}").status_code == 200
        again = client.post(f"/confirm/{token}")
        assert again.status_code == 404 and "not valid" in again.text
        assert client.get(f"/confirm/{token}").status_code == 404


def test_expired_confirm_link_does_nothing(running, make_list, sink, engine):
    make_list()
    token = confirmation_token(running, sink)
    with db.session(engine) as s:
        s.execute(update(Token).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    with web(running) as client:
        assert client.post(f"/confirm/{token}").status_code == 404
    assert not is_member(engine, ALICE)


def test_one_click_post_unsubscribes_at_once(running, make_list, sink, engine):
    make_list(members=[BOB])
    with web(running) as client:
        # RFC 8058: the mail client POSTs this body, without asking the member again.
        done = client.post(unsubscribe_path(engine, BOB),
                           data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "no longer subscribed" in done.text
    assert not is_member(engine, BOB)
    assert "left" in mails_to(sink, BOB)[0]["Subject"]


def test_unsubscribe_get_only_shows_the_button(running, make_list, engine):
    make_list(members=[BOB])
    path = unsubscribe_path(engine, BOB)
    with web(running) as client:
        page = client.get(path)
        assert page.status_code == 200 and BOB in page.text
        assert is_member(engine, BOB)
        assert form_action(page.text) == path
        assert 'name="List-Unsubscribe" value="One-Click"' in page.text
        client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert not is_member(engine, BOB)


@pytest.mark.parametrize("forge", [
    lambda list_id: "garbage",
    lambda list_id: tokens.unsubscribe_link("another-secret", list_id, CAROL),
    # Bob's signature on a payload naming Carol: the signature no longer matches.
    lambda list_id: (tokens.unsubscribe_link(SECRET, list_id, CAROL).split(".")[0] + "."
                     + tokens.unsubscribe_link(SECRET, list_id, BOB).split(".")[1]),
    # A mute link of Carol's is signed for another purpose.
    lambda list_id: tokens.mute_link(SECRET, list_id, CAROL, 1),
])
def test_forged_unsubscribe_links_are_refused(running, make_list, engine, forge):
    mlist = make_list(members=[BOB, CAROL])
    path = f"/unsubscribe/{forge(mlist.id)}"
    with web(running) as client:
        assert client.get(path).status_code == 400
        refused = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert refused.status_code == 400 and "not valid" in refused.text
    assert is_member(engine, CAROL) and is_member(engine, BOB)


def test_mute_link_mutes_the_thread_and_offers_to_unmute(running, make_list, sink, engine):
    mlist = make_list(members=[BOB, ALICE], owner=None)
    post = message("Tabs or spaces?", sender=BOB)
    running.send(BOB, [LIST], post)
    mails_to(sink, ALICE)
    msgid = re.search(r"Message-ID: <([^>]+)>", post).group(1)
    with db.session(engine) as s:
        pk, thread_id = s.execute(select(Message.id, ThreadNode.thread_id).join(
            ThreadNode, ThreadNode.message_pk == Message.id).where(
            Message.message_id == msgid)).one()
    path = f"/mute/{tokens.mute_link(SECRET, mlist.id, ALICE, pk)}"

    def mutes() -> list[tuple[str, str]]:
        with db.session(engine) as s:
            return [(m.address, m.thread_id) for m in s.scalars(select(Mute))]

    with web(running) as client:
        page = client.get(path)
        assert page.status_code == 200 and mutes() == []
        done = client.post(form_action(page.text))
        assert done.status_code == 200 and mutes() == [(ALICE, thread_id)]
        unmute = form_action(done.text)
        assert unmute.startswith("/unmute/")
        assert client.get(unmute).status_code == 200 and mutes() == [(ALICE, thread_id)]
        assert client.post(unmute).status_code == 200
    assert mutes() == []


def test_forged_mute_link_is_refused(running, make_list, engine):
    mlist = make_list(members=[BOB])
    with web(running) as client:
        for path in ("/mute/nope", f"/mute/{tokens.mute_link('other', mlist.id, BOB, 1)}",
                     f"/unmute/{tokens.unsubscribe_link(SECRET, mlist.id, BOB)}"):
            assert client.post(path).status_code == 400
    with db.session(engine) as s:
        assert s.scalars(select(Mute)).first() is None


def test_links_in_a_members_copy_unsubscribe_and_mute(running, make_list, sink, engine):
    """The List-Unsubscribe URL and the footer's mute link of a real copy both work."""
    make_list(members=[BOB, ALICE, CAROL], owner=None)
    post = message("Tabs or spaces?", sender=BOB)
    running.send(BOB, [LIST], post)
    [alice_copy] = mails_to(sink, ALICE)
    [carol_copy] = mails_to(sink, CAROL)
    assert alice_copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.search(r"<(http[^>]+)>", str(alice_copy["List-Unsubscribe"])).group(1)
    mute = re.search(r"(http\S+/mute/\S+)", carol_copy.get_body(("plain",)).get_content())
    with httpx.Client(timeout=10) as client:
        assert client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).is_success
        assert client.post(mute.group(1)).is_success
    assert not is_member(engine, ALICE) and is_member(engine, CAROL)

    msgid = re.search(r"Message-ID: <([^>]+)>", post).group(1)
    reply = message("Re: Tabs or spaces?", sender=BOB,
                    headers={"In-Reply-To": f"<{msgid}>", "References": f"<{msgid}>"})
    running.send(BOB, [LIST], reply)
    running.send(BOB, [LIST], message("Another topic", sender=BOB))
    # Bob gets all three posts, Carol not the muted reply, Alice only the first post and
    # her goodbye.
    assert [delivered_to(engine, sink, a) for a in (BOB, CAROL, ALICE)] == [3, 2, 2]


def test_an_unknown_page_is_our_404_page(running):
    with web(running) as client:
        response = client.get("/nobody@lists.example.org/thread/x/")
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in response.text
