"""A member's own options over real SMTP, HTTP and a real database (issue 18): own_posts,
skip_if_addressed, acknowledge and nomail until a date, set by mail, on the manage page
and by the CLI; and following a thread (by mail, or the follow_url link of a footer),
whose posts then reach a digest member one by one."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from listserv import db, roster, tokens
from listserv.enums import DeliveryMode, Role
from listserv.models import DigestItem, Follow, MailingList, Member, Message, ThreadNode
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    SECRET,
    as_json,
    assert_one_line_error,
    delivered_to,
    mails_to,
    manage_path,
    message,
    message_id,
    ok,
    run_listserv,
    web,
)

REQUEST = "dev-request@lists.example.org"
DAVE = "dave@example.net"


def member(engine, address: str) -> Member:
    with db.session(engine) as s:
        return s.scalars(select(Member).where(Member.address == address,
                                              Member.role == Role.MEMBER)).one()


def command(running, sink, sender: str, line: str, headers: dict | None = None) -> str:
    """Mail one command line to LIST-request@; the text of the reply it gets."""
    running.send(sender, [REQUEST], message(line, sender=sender, to=REQUEST, body=line + "\n",
                                            headers=headers))
    delivered_to(running.engine, sink, sender)
    replies = [m for m in mails_to(sink, sender, 0)
               if str(m["Subject"]).startswith("Results of your commands")]
    return replies[-1].get_body(("plain",)).get_content()


def subjects_to(engine, sink, address: str) -> list[str]:
    """The subjects of every mail `address` got, once the queue is empty."""
    delivered_to(engine, sink, address)
    return [str(m["Subject"]) for m in mails_to(sink, address, 0)]


def post(running, subject: str, sender: str = BOB, **headers: str) -> str:
    """A post to the list; its Message-ID, without angle brackets."""
    raw = message(subject, sender=sender, headers=headers)
    running.send(sender, [LIST], raw)
    return message_id(raw).strip("<>")


def set_delivery(engine, address: str, mode: DeliveryMode) -> None:
    with db.session(engine) as s:
        roster.set_member(s, roster.get_list(s, LIST), address, delivery=mode)
        s.commit()


# --- own_posts, skip_if_addressed, acknowledge --------------------------------------------

def test_own_posts_no_by_mail_leaves_the_author_out(running, make_list, sink, engine):
    make_list(members=[BOB, CAROL], owner=None)
    post(running, "Before")
    # Options count when a post's members are read (after its 250): let this one go first.
    subjects_to(engine, sink, BOB)
    assert "own_posts is now no" in command(running, sink, BOB, "set own_posts no")
    assert member(engine, BOB).own_posts is False
    post(running, "After")
    assert subjects_to(engine, sink, CAROL) == ["[Dev] Before", "[Dev] After"]
    assert [s for s in subjects_to(engine, sink, BOB) if s.startswith("[Dev]")] == [
        "[Dev] Before"]
    command(running, sink, BOB, "set own_posts yes")
    post(running, "Again")
    assert "[Dev] Again" in subjects_to(engine, sink, BOB)


def test_skip_if_addressed_sends_no_list_copy_to_a_member_in_to_or_cc(running, make_list,
                                                                       sink, engine):
    make_list(members=[BOB, CAROL, DAVE], owner=None)
    assert "skip_if_addressed is now yes" in command(running, sink, CAROL,
                                                     "set skip_if_addressed yes")
    post(running, "To you both", Cc=f"Carol <{CAROL.upper()}>, {DAVE}")
    post(running, "To the list")
    # Carol had her copy straight from Bob; Dave, who did not ask, gets the list's too.
    assert [s for s in subjects_to(engine, sink, CAROL) if s.startswith("[Dev]")] == [
        "[Dev] To the list"]
    assert subjects_to(engine, sink, DAVE) == ["[Dev] To you both", "[Dev] To the list"]


def test_acknowledge_tells_the_author_the_post_went_out_but_not_when_held(running, make_list,
                                                                        sink, engine, cli):
    make_list(members=[BOB, CAROL], owner=None)
    assert "acknowledge is now yes" in command(running, sink, BOB, "set acknowledge yes")
    msgid = post(running, "Release 1.0")
    delivered_to(engine, sink, BOB)
    [ack] = [m for m in mails_to(sink, BOB, 0) if "went out" in str(m["Subject"])]
    assert str(ack["Subject"]) == f"Your post to {LIST} went out: Release 1.0"
    assert ack["In-Reply-To"] == f"<{msgid}>" and ack["Auto-Submitted"] == "auto-generated"
    assert f"/{LIST}/message/{msgid}/" in ack.get_content()
    with db.session(engine) as s:
        roster.set_member(s, roster.get_list(s, LIST), BOB, moderated=True)
        s.commit()
    held = post(running, "Release 1.1")  # held for a moderator: it did not go out
    assert sum("went out" in s for s in subjects_to(engine, sink, BOB)) == 1
    with db.session(engine) as s:
        held_pk = s.scalars(select(Message.id).where(Message.message_id == held)).one()
    ok(cli("held", "approve", str(held_pk)))  # now it does
    assert "Your post to dev@lists.example.org went out: Release 1.1" in subjects_to(
        engine, sink, BOB)


def test_an_author_who_did_not_ask_gets_no_acknowledgement(running, make_list, sink, engine):
    make_list(members=[BOB, CAROL], owner=None)
    post(running, "Plain", sender=CAROL)
    assert subjects_to(engine, sink, CAROL) == ["[Dev] Plain"]


# --- set by mail: the forms, and nomail until a date -----------------------------------------

def test_set_nomail_until_a_date_and_off_by_mail(running, make_list, sink, engine):
    make_list(members=[BOB, CAROL], owner=None)
    day = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    reply = command(running, sink, CAROL, f"set nomail until {day}")
    assert f"no mail from this list until {day}" in reply
    assert member(engine, CAROL).nomail_until.date().isoformat() == day
    post(running, "While away")
    assert subjects_to(engine, sink, CAROL) == [f"Results of your commands to {REQUEST}"]
    assert "comes to you again" in command(running, sink, CAROL, "set nomail off")
    assert member(engine, CAROL).nomail_until is None
    post(running, "Back")
    assert "[Dev] Back" in subjects_to(engine, sink, CAROL)


def test_set_lines_that_are_not_one_of_its_forms_change_nothing(running, make_list, sink,
                                                               engine):
    make_list(members=[BOB], owner=None)
    for line in ("set own_posts maybe", "set nomail until 2001-01-01",
                 "set nomail until tomorrow", "set colour blue", "set acknowledge"):
        assert "not understood" in command(running, sink, BOB, line), line
    bob = member(engine, BOB)
    assert (bob.own_posts, bob.acknowledge, bob.nomail_until) == (True, False, None)
    assert "not subscribed" in command(running, sink, DAVE, "set acknowledge yes")


def test_help_names_the_new_commands(running, make_list, sink):
    make_list(members=[BOB], owner=None)
    reply = command(running, sink, BOB, "help")
    for word in ("set own_posts yes|no", "set skip_if_addressed yes|no",
                 "set acknowledge yes|no", "set nomail until YYYY-MM-DD", "set nomail off",
                 "follow", "unfollow"):
        assert word in reply


# --- follow ---------------------------------------------------------------------------------

def _follows(engine) -> list[tuple[str, str]]:
    with db.session(engine) as s:
        return [(f.address, f.thread_id) for f in s.scalars(select(Follow))]


def test_a_digest_member_who_follows_by_mail_gets_that_threads_posts(running, make_list,
                                                                    sink, engine):
    make_list(members=[BOB, CAROL], owner=None)
    set_delivery(engine, CAROL, DeliveryMode.DIGEST_MIME)
    first = post(running, "Tabs or spaces?")
    assert subjects_to(engine, sink, CAROL) == []
    reply = {"In-Reply-To": f"<{first}>", "References": f"<{first}>"}
    assert "each post of that thread" in command(running, sink, CAROL, "follow", reply)
    with db.session(engine) as s:
        thread_id = s.scalars(select(ThreadNode.thread_id).where(
            ThreadNode.message_id == first)).one()
    assert _follows(engine) == [(CAROL, thread_id)]
    post(running, "Re: Tabs or spaces?", **reply)
    post(running, "Something else")
    got = subjects_to(engine, sink, CAROL)
    assert "[Dev] Re: Tabs or spaces?" in got and "[Dev] Something else" not in got
    with db.session(engine) as s:  # and the digest still has every post
        assert s.scalar(select(func.count()).select_from(DigestItem)) == 3
    command(running, sink, CAROL, "unfollow", reply)
    assert _follows(engine) == []
    post(running, "Re: Tabs or spaces? (again)", **reply)
    assert "[Dev] Re: Tabs or spaces? (again)" not in subjects_to(engine, sink, CAROL)


def test_a_follower_on_nomail_or_a_pause_gets_nothing(running, make_list, sink, engine):
    mlist = make_list(members=[BOB, CAROL, DAVE], owner=None)
    first = post(running, "Thread")
    delivered_to(engine, sink, CAROL)
    set_delivery(engine, CAROL, DeliveryMode.NOMAIL)
    set_delivery(engine, DAVE, DeliveryMode.DIGEST_PLAIN)
    with db.session(engine) as s:
        thread_id = s.scalars(select(ThreadNode.thread_id)).one()
        for address in (CAROL, DAVE):
            s.add(Follow(list_id=mlist.id, address=address, thread_id=thread_id))
        s.execute(update(Member).where(Member.address == DAVE).values(
            nomail_until=datetime.now(UTC) + timedelta(days=3)))
        s.commit()
    post(running, "Re: Thread", **{"In-Reply-To": f"<{first}>"})
    assert subjects_to(engine, sink, CAROL) == ["[Dev] Thread"]
    assert subjects_to(engine, sink, DAVE) == ["[Dev] Thread"]


def test_follow_url_in_a_footer_follows_on_the_web(running, make_list, sink, engine):
    make_list(members=[BOB, CAROL], owner=None)
    with db.session(engine) as s:
        s.execute(update(MailingList).values(
            footer="-- {{ name }}\nFollow: {{ follow_url }}\nMute: {{ mute_url }}"))
        s.commit()
    first = post(running, "Roadmap")
    [copy] = mails_to(sink, CAROL)
    path = re.search(r"Follow: http://[^/]+(/follow/\S+)", copy.get_content()).group(1)
    mute_path = re.search(r"Mute: http://[^/]+(/mute/\S+)", copy.get_content()).group(1)
    set_delivery(engine, CAROL, DeliveryMode.DIGEST_MIME)
    with web(running) as client:
        offer = client.get(path)
        assert offer.status_code == 200 and "Follow this thread" in offer.text
        assert _follows(engine) == []  # a GET (a link scanner) changes nothing
        done = client.post(path)
        assert done.status_code == 200 and "each post of this thread" in done.text
        assert "Unfollow this thread" in done.text
        # A mute link is not a follow link, nor a forged one.
        token = mute_path.removeprefix("/mute/")
        assert client.post(f"/follow/{token}").status_code == 400
        assert client.post(path[:-3] + "abc").status_code == 400
    assert [a for a, _ in _follows(engine)] == [CAROL]
    post(running, "Re: Roadmap", **{"In-Reply-To": f"<{first}>"})
    assert "[Dev] Re: Roadmap" in subjects_to(engine, sink, CAROL)
    with web(running) as client:
        undone = client.post(path.replace("/follow/", "/unfollow/"))
    assert undone.status_code == 200 and _follows(engine) == []


def test_the_follow_link_is_the_one_urls_and_tokens_make(running, make_list, sink, engine):
    """What the summary digest links to: urls.follow_url(base, tokens.follow_link(...))."""
    from listserv import urls

    mlist = make_list(members=[BOB, CAROL], owner=None)
    post(running, "Summary item")
    delivered_to(engine, sink, CAROL)
    with db.session(engine) as s:
        message_pk = s.scalars(select(ThreadNode.message_pk)).one()
    url = urls.follow_url(running.config.web.base_url,
                          tokens.follow_link(SECRET, mlist.id, CAROL, message_pk))
    with web(running) as client:
        assert client.post(url).status_code == 200
    assert [a for a, _ in _follows(engine)] == [CAROL]


# --- the manage page --------------------------------------------------------------------------

def test_manage_page_shows_and_saves_the_options(running, make_list, engine):
    make_list(members=[BOB], owner=None)
    with web(running) as client:
        page = client.get(manage_path(BOB)).text
        assert 'name="own_posts" checked' in page and 'name="acknowledge">' in page
        done = client.post(manage_path(BOB), data={
            "action": "options", "list": LIST, "skip_if_addressed": "on",
            "acknowledge": "on"})
    assert done.status_code == 200 and "options on" in done.text
    assert 'name="own_posts">' in done.text and 'name="acknowledge" checked' in done.text
    bob = member(engine, BOB)
    assert (bob.own_posts, bob.skip_if_addressed, bob.acknowledge) == (False, True, True)


def test_manage_page_lists_followed_threads_and_unfollows(running, make_list, sink, engine):
    mlist = make_list(members=[BOB], owner=None)
    post(running, "Followed thread")
    delivered_to(engine, sink, BOB)
    with db.session(engine) as s:
        thread_id = s.scalars(select(ThreadNode.thread_id)).one()
        s.add(Follow(list_id=mlist.id, address=BOB, thread_id=thread_id))
        s.commit()
    with web(running) as client:
        page = client.get(manage_path(BOB)).text
        assert 'aria-label="Unfollow Followed thread"' in page
        done = client.post(manage_path(BOB), data={"action": "unfollow", "list": LIST,
                                                   "thread": thread_id})
    assert done.status_code == 200 and "Unfollow Followed thread" not in done.text
    assert _follows(engine) == []


def test_manage_page_pause_refuses_a_past_date(running, make_list, engine):
    make_list(members=[BOB], owner=None)
    with web(running) as client:
        done = client.post(manage_path(BOB), data={"action": "pause", "list": LIST,
                                                   "until": "2001-01-01"})
    assert done.status_code == 400 and "within a year" in done.text
    assert member(engine, BOB).nomail_until is None


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_member_set_options_and_ls_show(cli, config_file, make_list, engine):
    make_list(members=[BOB], owner=None)
    out = ok(cli("member", "set", LIST, BOB, "--own-posts", "no", "--skip-if-addressed",
                 "yes", "--acknowledge", "yes")).stdout
    assert "own_posts = no" in out and "acknowledge = yes" in out
    [row] = as_json(cli("member", "show", BOB, "--json"))
    assert (row["own_posts"], row["skip_if_addressed"], row["acknowledge"]) == (
        False, True, True)
    listing = ok(cli("member", "ls", LIST)).stdout
    assert "own_posts=no" in listing and "acknowledge=yes" in listing
    assert_one_line_error(run_listserv("--config", config_file, "member", "set", LIST, BOB,
                                       "--acknowledge", "perhaps"), "--acknowledge")
    assert member(engine, BOB).acknowledge is True


def test_the_owners_member_page_shows_a_members_options(running, make_list, engine):
    mlist = make_list(members=[BOB, CAROL], owner="owner@example.org")
    with db.session(engine) as s:
        roster.set_options(s, mlist, BOB, own_posts=False, acknowledge=True)
        s.commit()
    path = f"/{LIST}/admin/{tokens.staff_link(SECRET, mlist.id, 'owner@example.org', 12)}"
    with web(running) as client:
        page = client.get(f"{path}/members").text
    bob, carol = page.split(f"<strong>{BOB}")[1], page.split(f"<strong>{CAROL}")[1]
    assert "options: no copy of own posts · acknowledgements</p>" in bob.split("</section>")[0]
    assert "options:" not in carol.split("</section>")[0]
