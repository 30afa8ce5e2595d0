"""Joining a list from the archive, over real HTTP and SMTP: the front page and the list
page show how to join and a form; its POST sends the confirmation a mail to LIST-join@
sends, says the same whoever asks, and gives bots, other sites and floods nothing.
Also the reader's side of the pages: a reply link on each post of a thread, images
shown in the message page."""

from __future__ import annotations

import re
from email.message import EmailMessage

from sqlalchemy import update

from listserv import db, tokens
from listserv.enums import Subscription
from listserv.models import MailingList
from tests.helpers import (
    BOB,
    LIST,
    SECRET,
    delivered_to,
    is_member,
    join_stamp,
    mails_to,
    message,
    web,
)

ALICE = "alice@example.com"
SUBSCRIBE = f"/{LIST}/subscribe"


def join(client, stamp: str, address: str = ALICE, **fields: str):
    return client.post(SUBSCRIBE, data={"form": stamp, "address": address, "website": "",
                                        **fields})


def test_the_front_and_list_pages_say_how_to_join(running, make_list):
    make_list(members=[BOB])
    with web(running) as client:
        for path in ("/", f"/{LIST}/"):
            page = client.get(path).text
            assert f'href="mailto:{LIST}"' in page
            assert 'href="mailto:dev-join@lists.example.org"' in page
            assert f'action="{running.config.web.base_url}{SUBSCRIBE}"' in page
            assert '<input type="email" name="address" required' in page
            assert 'class="hp" aria-hidden="true"' in page and 'name="website"' in page
            assert tokens.form_stamp_ok(SECRET, 1, join_stamp(page))


def test_joining_from_the_list_page_mails_the_confirmation_and_the_button_joins(
        running, make_list, sink, engine):
    make_list(members=[BOB])
    with web(running) as client:
        stamp = join_stamp(client.get(f"/{LIST}/").text)
        asked = join(client, stamp, delivery="digest-mime")
        assert asked.status_code == 200 and "Check your mail" in asked.text
        [confirmation] = mails_to(sink, ALICE)
        assert confirmation["Subject"].split()[0] == "confirm"
        assert confirmation["Auto-Submitted"] == "auto-replied"
        link = re.search(r"(/confirm/[0-9a-f]+)", confirmation.get_content()).group(1)
        page = client.get(link)  # what a mail scanner opening the link does
        assert page.status_code == 200 and not is_member(engine, ALICE)
        assert '<form method="post"' in page.text
        done = client.post(link)
        assert done.status_code == 200 and "now subscribed" in done.text
        again = client.post(link)  # the link is spent
        assert again.status_code == 404 and "not valid" in again.text
    assert is_member(engine, ALICE)
    welcome = mails_to(sink, ALICE, 2)[1]
    assert 'You asked for delivery "digest-mime"' in welcome.get_content()
    assert "/manage/" in welcome.get_content()


def test_a_member_gets_the_same_page_and_no_way_to_tell(running, make_list, sink):
    make_list(members=[BOB])
    with web(running) as client:
        stamp = join_stamp(client.get(f"/{LIST}/").text)
        member = join(client, stamp, BOB)
        stranger = join(client, stamp, ALICE)
    assert member.status_code == stranger.status_code == 200
    assert member.text.replace(BOB, "X") == stranger.text.replace(ALICE, "X")
    assert "already" in mails_to(sink, BOB)[0]["Subject"].lower() + mails_to(
        sink, BOB)[0].get_content().lower()


def test_a_form_not_from_our_page_or_too_old_sends_nothing(running, make_list, sink, engine):
    mlist = make_list()
    forged = [
        "",  # a form on another site, or a script, without our value
        tokens.form_stamp("another-secret", mlist.id, 6),
        tokens.form_stamp(SECRET, mlist.id + 1, 6),  # another list's
        tokens.form_stamp(SECRET, mlist.id, -1),  # expired
        tokens.manage_link(SECRET, ALICE, 6),  # signed, for another purpose
    ]
    with web(running) as client:
        for stamp in forged:
            refused = join(client, stamp)
            assert refused.status_code == 400 and "too old" in refused.text
            join_stamp(refused.text)  # with a fresh form to send again
    assert delivered_to(engine, sink, ALICE) == 0


def test_a_bot_filling_the_hidden_field_gets_the_same_page_and_no_mail(running, make_list,
                                                                         sink, engine):
    make_list()
    with web(running) as client:
        stamp = join_stamp(client.get("/").text)
        bot = join(client, stamp, website="http://spam.example")
    assert bot.status_code == 200 and "Check your mail" in bot.text
    assert delivered_to(engine, sink, ALICE) == 0


def test_one_pending_confirmation_per_address(running, make_list, sink, engine):
    make_list()
    with web(running) as client:
        stamp = join_stamp(client.get("/").text)
        for _ in range(3):
            assert join(client, stamp).status_code == 200
    assert delivered_to(engine, sink, ALICE) == 1


def test_a_client_ip_gets_its_hourly_share_then_a_page_saying_so(make_server, make_list,
                                                                 sink, engine):
    srv = make_server(lists={"max_confirmations_per_hour": 2})
    make_list()
    with web(srv) as client:
        stamp = join_stamp(client.get("/").text)
        answers = [join(client, stamp, f"user{n}@example.com").status_code
                   for n in range(3)]
        limited = join(client, stamp, "late@example.com")
    assert answers == [200, 200, 429] and limited.status_code == 429
    assert "Too many requests" in limited.text
    assert delivered_to(engine, sink, "user1@example.com") == 1
    assert delivered_to(engine, sink, "user2@example.com") == 0


def test_bad_input_gets_the_form_again(running, make_list, sink, engine):
    make_list()
    with web(running) as client:
        stamp = join_stamp(client.get("/").text)
        bad = join(client, stamp, "not an address\r\nBcc: x@example.com")
        mode = join(client, stamp, delivery="nomail")
        unknown = client.post("/nobody@lists.example.org/subscribe",
                              data={"form": stamp, "address": ALICE})
        page = client.get(SUBSCRIBE)
    assert bad.status_code == 400 and "not an email address" in bad.text
    assert mode.status_code == 400
    assert unknown.status_code == 404
    assert page.status_code == 200 and "<h1>Join Dev</h1>" in page.text
    assert delivered_to(engine, sink, ALICE) == 0


def test_a_closed_list_shows_no_form(running, make_list, engine):
    make_list()
    with db.session(engine) as s:
        s.execute(update(MailingList).values(subscription=Subscription.CLOSED))
        s.commit()
    with web(running) as client:
        page = client.get(f"/{LIST}/").text
    assert "added by its owners" in page and 'name="address"' not in page


# --- reading and replying ---------------------------------------------------------------

def test_each_post_of_a_thread_has_its_reply_link(running, make_list, sink, engine):
    make_list(members=[BOB])
    first = message("Plans", sender=BOB)
    first_id = re.search(r"Message-ID: <([^>]+)>", first).group(1)
    running.send(BOB, [LIST], first)
    running.send(BOB, [LIST], message("Re: Plans", sender=BOB, headers={
        "In-Reply-To": f"<{first_id}>", "References": f"<{first_id}>"}))
    delivered_to(engine, sink, BOB)
    with web(running) as client:
        page = client.get(f"/{LIST}/thread/{first_id}/").text
    replies = re.findall(r'<a class="reply" href="(mailto:[^"]+)">Reply by email</a>', page)
    assert len(replies) == 2
    assert "In-Reply-To=%3C" + first_id.replace("@", "%40") + "%3E" in replies[0]
    assert all(r.startswith(f"mailto:{LIST}?") for r in replies)


def image_mail() -> bytes:
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = BOB, LIST, "Pictures"
    post["Message-ID"], post["Date"] = "<pictures@x>", "Mon, 02 Mar 2026 09:00:00 +0000"
    post.set_content("Look.\n")
    for subtype in ("png", "jpeg", "gif", "webp"):
        post.add_attachment(b"image bytes", maintype="image", subtype=subtype,
                            filename=f"photo.{subtype}")
    post.add_attachment(b"<svg onload=alert(1)>", maintype="image", subtype="svg+xml",
                        filename="drawing.svg")
    return post.as_bytes()


def test_images_are_shown_in_the_message_page_but_never_svg(running, make_list, sink,
                                                            engine):
    make_list(members=[BOB])
    running.send(BOB, [LIST], image_mail())
    delivered_to(engine, sink, BOB)
    with web(running) as client:
        page = client.get(f"/{LIST}/message/pictures@x/").text
        images = re.findall(r'<img class="attached" src="([^"]+)" alt="([^"]+)"', page)
        served = [client.get(src) for src, _ in images]
    assert [alt for _, alt in images] == ["photo.png", "photo.jpeg", "photo.gif",
                                          "photo.webp"]
    assert [r.headers["content-type"] for r in served] == [
        "image/png", "image/jpeg", "image/gif", "image/webp"]
    for response in served:
        assert response.headers["content-security-policy"] == "sandbox"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "drawing.svg" in page and 'alt="drawing.svg"' not in page
