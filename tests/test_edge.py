"""The SMTP edge under abuse: what one client can make the server store, hold or wait for."""

from __future__ import annotations

import smtplib

import pytest
from sqlalchemy import func, select, update

from listserv import db
from listserv.models import MailingList, Message, NonmemberAction
from tests.conftest import delivered_to, message

LIST = "dev@lists.example.org"
OWNER_ADDRESS = "dev-owner@lists.example.org"


def stored(engine) -> int:
    with db.session(engine) as s:
        return s.scalar(select(func.count()).select_from(Message))


# --- recipients (issue 14 item 5) -------------------------------------------------------

def test_a_list_named_many_times_in_one_transaction_is_stored_and_sent_once(
        running, make_list, sink, engine):
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    rcpts = [LIST] * 20 + ["DEV@Lists.Example.ORG"] + [OWNER_ADDRESS] * 20
    assert running.send("bob@example.com", rcpts, message()) == {}
    assert stored(engine) == 2  # the post and the owner's mail, once each
    assert delivered_to(engine, sink, "carol@example.com") == 1
    assert delivered_to(engine, sink, "owner@example.org") == 2  # the post, the owner mail


def test_a_non_member_naming_the_list_twice_is_refused_as_naming_it_once(
        make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    with db.session(engine) as s:
        s.execute(update(MailingList).values(nonmember_action=NonmemberAction.REJECT))
        s.commit()
    srv = make_server()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        srv.send("eve@example.org", [LIST, LIST], message(sender="eve@example.org"))
    assert refused.value.smtp_code == 550
    assert stored(engine) == 0


def test_recipients_past_max_recipients_get_452(make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    srv = make_server(smtp={"max_recipients": 3})
    refused = srv.send("bob@example.com", [LIST, LIST, OWNER_ADDRESS, OWNER_ADDRESS],
                       message())
    assert list(refused.values()) == [(452, refused[OWNER_ADDRESS][1])]
    assert refused[OWNER_ADDRESS][1].startswith(b"4.5.3")
    assert stored(engine) == 2
