"""Signed links (unsubscribe, mute, re-enable, archive pass) have one spelling, and act
only on the membership they were made for: not on the one of a member who left and
joined again."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import update

from listserv import db, member_actions, roster, tokens
from listserv.models import ArchivePolicy, MailingList, Member, utcnow
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    SECRET,
    is_member,
    mails_to,
    message,
    set_archive,
    unsubscribe_path,
    web,
)


def respellings(path: str) -> list[str]:
    """The same token, decoding to the same bytes, written otherwise."""
    payload, mac = path.removeprefix("/unsubscribe/").split(".")
    return [f"/unsubscribe/{payload}.{mac}=",  # padding we never write
            f"/unsubscribe/{payload}=.{mac}",
            f"/unsubscribe/{payload}.{mac[:5]}!{mac[5:]}",  # a character base64 skips
            f"/unsubscribe/{payload}.{mac[:5]}%0A{mac[5:]}"]


def test_a_signed_link_has_one_spelling(running, make_list, engine):
    make_list(members=[BOB])
    path = unsubscribe_path(engine, BOB)
    with web(running) as client:
        for other in respellings(path):
            assert client.get(other).status_code == 400, other
            refused = client.post(other, data={"List-Unsubscribe": "One-Click"})
            assert refused.status_code == 400 and "not valid" in refused.text
            assert is_member(engine, BOB)
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert not is_member(engine, BOB)


def join_again_later(engine, list_id: int, address: str) -> None:
    """The member left; they join again, a while after their old links were made."""
    with db.session(engine) as s:
        roster.add_members(s, s.get(MailingList, list_id), [address])
        s.execute(update(Member).where(Member.address == address)
                  .values(created_at=utcnow() + timedelta(seconds=2)))
        s.commit()


def test_an_old_unsubscribe_link_does_not_end_a_new_membership(running, make_list, sink,
                                                                 engine):
    mlist = make_list(members=[BOB, CAROL])
    running.send(CAROL, [LIST], message(sender=CAROL))
    header = str(mails_to(sink, BOB)[0]["List-Unsubscribe"])
    link = re.search(r"<(http[^>]+)>", header).group(1)
    with web(running) as client:
        assert client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        assert not is_member(engine, BOB)
        join_again_later(engine, mlist.id, BOB)
        assert client.get(link).status_code == 400
        refused = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert refused.status_code == 400 and "expired" in refused.text
    assert is_member(engine, BOB)


def test_an_archive_pass_does_not_open_the_archive_to_a_new_membership(running, make_list,
                                                                        engine):
    mlist = make_list(members=[BOB])
    set_archive(engine, ArchivePolicy.PRIVATE)
    value = tokens.archive_pass(SECRET, mlist.id, BOB, 30)
    with db.session(engine) as s:
        member_actions.leave(s, running.config, s.get(MailingList, mlist.id), BOB)
        s.commit()
    join_again_later(engine, mlist.id, BOB)
    with web(running) as client:
        assert client.get(f"/{LIST}/access/{value}").status_code == 400
        client.cookies.set(f"listserv_archive_{mlist.id}", value)
        assert client.get(f"/{LIST}/").status_code == 403


@pytest.mark.parametrize("purpose", ["unsubscribe", "reenable"])
def test_a_link_made_before_links_said_when_is_refused(running, make_list, engine, purpose):
    """Links mailed by an older version carry no time: they get the "not valid" page."""
    mlist = make_list(members=[BOB])
    old = tokens.sign(SECRET, purpose, str(mlist.id), BOB)
    with web(running) as client:
        refused = client.post(f"/{purpose}/{old}")
    assert refused.status_code == 400 and "not valid" in refused.text
    assert is_member(engine, BOB)
