"""End to end over real sockets: a post goes in by SMTP and out to every member."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import threading

import pytest
from sqlalchemy import func, select, text, update

from listserv import db, fanout, ingest, receive
from listserv.enums import MessageState, Verp
from listserv.models import MailingList, Message, ThreadNode
from listserv.queue_tables import Delivery
from tests.helpers import message, ok

MEMBERS = ["bob@example.com", "carol@example.com", "dave@example.net"]


def parsed(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def test_member_post_reaches_every_member_once_with_list_headers(running, make_list, sink):
    make_list(members=MEMBERS)
    post = message("Hello")
    running.send("bob@example.com", ["dev@lists.example.org"], post)
    got = sink.wait_for(4)
    # owner@example.org is a member too (list create --owner makes it both)
    assert sorted(got) == sorted(MEMBERS + ["owner@example.org"])
    copy = parsed(sink.received[0].data)
    # VERP (on by default): the envelope sender names the copy's recipient.
    first = sink.received[0]
    assert first.mail_from == "dev-bounces+{}@lists.example.org".format(
        first.rcpt_tos[0].replace("@", "="))
    assert copy["List-Id"] == "Dev <dev.lists.example.org>"
    assert copy["List-Post"] == "<mailto:dev@lists.example.org>"
    assert copy["List-Help"].startswith("<mailto:dev-request@lists.example.org")
    assert copy["List-Subscribe"] and copy["List-Unsubscribe"]
    assert copy["List-Archive"].startswith("<http://127.0.0.1:")
    assert copy["Precedence"] == "list"
    assert copy["X-BeenThere"] == "dev@lists.example.org"
    assert copy["Subject"] == "[Dev] Hello"
    assert copy["Message-ID"] == parsed(post.encode())["Message-ID"]
    assert copy.get_payload().startswith("Hi all.\r\n_____")  # then the list footer


@pytest.mark.parametrize("policy", ["public", "private", "off"])
def test_copies_point_at_the_archive_page_of_the_list_and_of_the_post(
        running, make_list, sink, engine, policy):
    """RFC 2369 List-Archive and RFC 5064 Archived-At name the pages a reader opens;
    a list that keeps no web archive names none (the links would be 404)."""
    mlist = make_list(members=["bob@example.com"], owner=None)
    with db.session(engine) as s:
        s.execute(text("UPDATE mailing_list SET archive = :a WHERE id = :id"),
                  {"a": policy, "id": mlist.id})
        s.commit()
    post = message("Archived?")
    running.send("bob@example.com", ["dev@lists.example.org"], post)
    sink.wait_for(1)
    copy = parsed(sink.received[0].data)
    msgid = parsed(post.encode())["Message-ID"].strip("<>")
    base = running.config.web.base_url
    if policy == "off":
        assert copy["List-Archive"] is None and copy["Archived-At"] is None
    else:
        assert copy["List-Archive"] == f"<{base}/dev@lists.example.org/>"
        assert copy["Archived-At"] == f"<{base}/dev@lists.example.org/message/{msgid}/>"


def test_jobs_respect_max_recipients_per_transaction(running, make_list, sink, engine):
    make_list(members=MEMBERS)  # 4 recipients with the owner, batches of 2
    running.send("bob@example.com", ["dev@lists.example.org"], message())
    sink.wait_for(4)
    with db.session(engine) as s:
        jobs = s.scalars(select(Delivery)).all()
    # A job holds one destination domain (shaping by destination), at most 2 of it.
    assert sorted(j.recipients.splitlines() for j in jobs) == [
        ["bob@example.com", "carol@example.com"], ["dave@example.net"], ["owner@example.org"]]
    # Each member's copy carries their own links, so each goes in its own transaction.
    assert [len(m.rcpt_tos) for m in sink.received] == [1, 1, 1, 1]


def _set(engine, address: str, **values) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).where(MailingList.address == address).values(**values))
        s.commit()


def test_copies_are_shared_only_when_nothing_in_them_is_the_members_own(
        running, make_list, sink, engine):
    make_list(members=MEMBERS)  # 4 recipients with the owner, batches of 2
    _set(engine, "dev@lists.example.org", verp=Verp.OFF, footer="-- {{ name }}: {{ address }}")
    running.send("bob@example.com", ["dev@lists.example.org"], message())
    sink.wait_for(4)
    # One transaction a destination domain: example.com's two members share one.
    assert sorted(len(m.rcpt_tos) for m in sink.received) == [1, 1, 2]
    copy = parsed(sink.received[0].data)
    assert copy["List-Unsubscribe"] == "<mailto:dev-leave@lists.example.org>"
    assert copy["List-Unsubscribe-Post"] is None  # RFC 8058 one-click needs an https URI
    assert sink.received[0].data == sink.received[1].data == sink.received[2].data
    assert copy.get_payload().endswith("-- Dev: dev@lists.example.org\r\n")
    # A footer with the member's own unsubscribe link makes every copy personal again.
    _set(engine, "dev@lists.example.org", footer="Leave: {{ unsubscribe_url }}")
    running.send("bob@example.com", ["dev@lists.example.org"], message("Again"))
    sink.wait_for(8)
    assert [len(m.rcpt_tos) for m in sink.received[3:]] == [1, 1, 1, 1]
    assert "/unsubscribe/" in parsed(sink.received[3].data)["List-Unsubscribe"]


@pytest.mark.parametrize("subject,expected", [
    ("Re: [Dev] Hello", "Re: [Dev] Hello"),
    ("[Dev] Hello", "[Dev] Hello"),
    ("Re: Hello", "[Dev] Re: Hello"),
    ("", "[Dev]"),
])
def test_subject_prefix_appears_exactly_once(running, make_list, sink, subject, expected):
    make_list(members=["bob@example.com"], owner=None)
    running.send("bob@example.com", ["dev@lists.example.org"], message(subject))
    sink.wait_for(1)
    assert parsed(sink.received[0].data)["Subject"].strip() == expected


def test_body_bytes_are_untouched_before_the_footer(running, make_list, sink):
    make_list(members=["bob@example.com"], owner=None)
    body = "caf\xe9 na\xefve \xbd\r\n.leading dot\r\n"
    raw = (message("Latin-1", headers={"Content-Type": "text/plain; charset=iso-8859-1",
                                       "Content-Transfer-Encoding": "8bit"}, body="")
           .encode() + body.encode("latin-1"))
    with running.smtp() as client:
        client.sendmail("bob@example.com", ["dev@lists.example.org"], raw)
    sink.wait_for(1)
    assert b"\r\n\r\n" + body.encode("latin-1") + b"_____" in sink.received[0].data


def test_message_without_message_id_gets_one(running, make_list, sink, engine):
    make_list(members=["bob@example.com"], owner=None)
    raw = "From: bob@example.com\r\nTo: dev@lists.example.org\r\nSubject: x\r\n\r\nbody\r\n"
    running.send("bob@example.com", ["dev@lists.example.org"], raw)
    sink.wait_for(1)
    msgid = parsed(sink.received[0].data)["Message-ID"]
    assert msgid and msgid.startswith("<listserv-")
    with db.session(engine) as s:
        stored = s.scalars(select(Message)).one()
    assert f"<{stored.message_id}>" == msgid


def test_non_member_post_is_held_not_delivered(running, make_list, sink, engine):
    make_list(members=MEMBERS)
    reply = running.send("eve@example.org", ["dev@lists.example.org"],
                         message(sender="eve@example.org"))
    assert reply == {}  # accepted: stored for a moderator, not bounced
    with db.session(engine) as s:
        stored = s.scalars(select(Message)).one()
    assert stored.state is MessageState.HELD
    assert "non-member" in stored.reasons
    # only the owner hears of it (a notice), no member gets the post
    assert sink.wait_for(2, timeout=2) == ["owner@example.org"]
    assert parsed(sink.received[0].data)["Auto-Submitted"] == "auto-generated"


def test_loop_is_not_delivered_again(running, make_list, sink, engine):
    make_list(members=MEMBERS)
    looped = message(headers={"List-Id": "Dev <dev.lists.example.org>"})
    running.send("bob@example.com", ["dev@lists.example.org"], looped)
    been_there = message(headers={"X-BeenThere": "dev@lists.example.org"})
    running.send("bob@example.com", ["dev@lists.example.org"], been_there)
    with db.session(engine) as s:
        states = [m.state for m in s.scalars(select(Message))]
    assert states == [MessageState.LOOP, MessageState.LOOP]
    assert sink.wait_for(1, timeout=1.5) == []


def test_same_message_id_twice_is_delivered_once(running, make_list, sink):
    make_list(members=["bob@example.com"], owner=None)
    post = message()
    running.send("bob@example.com", ["dev@lists.example.org"], post)
    running.send("bob@example.com", ["dev@lists.example.org"], post)
    assert sink.wait_for(2, timeout=2) == ["bob@example.com"]


def test_unparseable_mail_is_stored_raw_and_held(running, make_list, engine, sink):
    make_list(members=["bob@example.com"], owner=None)
    garbage = b"\xff\xfe\x00garbage without headers\r\n\x00\x01"
    with running.smtp() as client:
        client.sendmail("bob@example.com", ["dev@lists.example.org"], garbage)
    with db.session(engine) as s:
        stored = s.scalars(select(Message)).one()
    assert stored.raw.rstrip(b"\r\n") == garbage.rstrip(b"\r\n")
    assert stored.state is MessageState.HELD


def test_unknown_address_in_list_domain_is_refused_at_rcpt(running, make_list):
    make_list()
    with running.smtp() as client:
        client.ehlo()
        client.mail("bob@example.com")
        code, reply = client.rcpt("nosuchlist@lists.example.org")
    assert code == 550 and reply.startswith(b"5.1.1")


def test_other_domains_are_refused_no_open_relay(running, make_list):
    make_list()
    with running.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        client.sendmail("bob@example.com", ["victim@gmail.com"], message())
    code, reply = info.value.recipients["victim@gmail.com"]
    assert code == 550 and reply.startswith(b"5.7.1")


def test_list_addresses_are_accepted(running, make_list, engine):
    make_list()
    for rcpt in ["dev-owner@lists.example.org", "dev-bounces@lists.example.org",
                 "dev-bounces+bob=example.com@lists.example.org"]:
        assert running.send("mailer-daemon@example.com", [rcpt], message(to=rcpt)) == {}


def test_owner_mail_is_forwarded_to_owners(running, make_list, sink):
    make_list(members=["bob@example.com"], owner="owner@example.org")
    running.send("someone@example.com", ["dev-owner@lists.example.org"],
                 message("Question", to="dev-owner@lists.example.org"))
    assert sink.wait_for(1) == ["owner@example.org"]
    assert b"Subject: Question" in sink.received[0].data


def test_size_is_advertised_and_enforced(running, make_list):
    make_list(members=["bob@example.com"])
    with running.smtp() as client:
        client.ehlo()
        assert int(client.esmtp_features["size"]) == 200_000
        assert "8bitmime" in client.esmtp_features
        assert "smtputf8" in client.esmtp_features
        with pytest.raises(smtplib.SMTPResponseException) as info:
            client.sendmail("bob@example.com", ["dev@lists.example.org"],
                            message(body="x" * 300_000))
    assert info.value.smtp_code == 552


def test_database_failure_answers_451_and_stores_nothing(running, make_list, engine):
    make_list(members=["bob@example.com"])
    with engine.begin() as conn:  # make every insert of a message fail
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER no_insert BEFORE INSERT ON message "
                              "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"))
        else:
            conn.execute(text("CREATE FUNCTION no_insert() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER no_insert BEFORE INSERT ON message "
                              "FOR EACH ROW EXECUTE FUNCTION no_insert()"))
    with running.smtp() as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail("bob@example.com", ["dev@lists.example.org"], message())
    assert info.value.smtp_code == 451


def test_concurrent_clients_each_get_250_only_for_a_stored_message(running, make_list,
                                                                   engine):
    """Posts that arrive together share a commit; one client's refused transaction (a
    list that is not there any more) does not take the others' with it."""
    make_list(members=MEMBERS)
    make_list("gone@lists.example.org", name="Gone", members=MEMBERS)
    replies: dict[str, tuple[int, bytes]] = {}

    def client(i: int) -> None:
        with running.smtp() as smtp:
            smtp.ehlo()
            for j in range(5):
                post = message(f"post {i}-{j}")
                mid = parsed(post.encode())["Message-ID"].strip("<>")
                smtp.mail("bob@example.com")
                smtp.rcpt("dev@lists.example.org")
                replies[mid] = smtp.data(post)

    with db.session(engine) as s:  # refused after RCPT: the list is gone at DATA
        s.execute(text("DELETE FROM member WHERE list_id = "
                       "(SELECT id FROM mailing_list WHERE address = 'gone@lists.example.org')"))
        s.commit()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    with running.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("bob@example.com")
        smtp.rcpt("gone@lists.example.org")
        with db.session(engine) as s:
            s.execute(text("DELETE FROM mailing_list WHERE address = 'gone@lists.example.org'"))
            s.commit()
        code, _ = smtp.data(message("to a list that went away", to="gone@lists.example.org"))
    for t in threads:
        t.join()
    assert code == 550
    with db.session(engine) as s:
        stored = set(s.scalars(select(Message.message_id).where(
            Message.state == MessageState.ACCEPTED)))
    assert len(replies) == 40 and all(code == 250 for code, _ in replies.values())
    assert set(replies) <= stored


def _refusal_code(exc: smtplib.SMTPException) -> int:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))[0]
    return exc.smtp_code


def test_the_receiver_sees_at_once_a_list_an_admin_created_or_deleted(running, make_list,
                                                                     engine, cli):
    """The receiver remembers lately found recipients; the CLI, another process on the
    same database, creates and deletes lists under it."""
    make_list(members=MEMBERS)
    running.send("bob@example.com", ["dev@lists.example.org"], message("before"))
    ok(cli("list", "delete", "dev@lists.example.org", "--yes"))
    with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)) as refused:
        running.send("bob@example.com", ["dev@lists.example.org"], message("after"))
    assert _refusal_code(refused.value) == 550  # at RCPT, or at DATA if RCPT remembered
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        running.send("bob@example.com", ["new@lists.example.org"], message("too early"))
    ok(cli("list", "create", "new@lists.example.org", "--owner", "bob@example.com"))
    running.send("bob@example.com", ["new@lists.example.org"], message("new"))
    with db.session(engine) as s:
        assert set(s.scalars(select(Message.subject))) == {"new"}


def _group(*posts: str) -> list[ingest.Incoming]:
    return [ingest.Incoming("bob@example.com", ["dev@lists.example.org"], p.encode())
            for p in posts]


def test_a_post_that_fails_to_fan_out_fails_alone_in_its_group(make_list, engine, config,
                                                               monkeypatch):
    """The group's posts are archived and fanned out together; when that fails, the
    group is stored again post by post and only the failing one is refused."""
    make_list(members=MEMBERS)
    list_copy = fanout.list_copy

    def failing(mlist, message, *args, **kwargs):
        if message.subject == "boom":
            raise RuntimeError("cannot compose this one")
        return list_copy(mlist, message, *args, **kwargs)
    monkeypatch.setattr(fanout, "list_copy", failing)
    results = ingest.ingest_group(engine, config, _group(
        message("one"), message("boom"), message("Re: one")))
    assert isinstance(results[1], RuntimeError)
    assert [r[0].state for r in (results[0], results[2])] == ["accepted", "accepted"]
    assert all(r[0].deliveries for r in (results[0], results[2]))
    with db.session(engine) as s:
        assert sorted(s.scalars(select(Message.subject))) == ["Re: one", "one"]
        assert s.scalar(select(func.count()).select_from(ThreadNode)) == 2


def test_a_refused_transaction_takes_nothing_of_its_group_with_it(make_list, engine, config):
    """Refusals come before their transaction writes anything: no savepoint needed."""
    make_list(members=MEMBERS)
    group = _group(message("one"), message("nowhere"), message("two"))
    group[1].rcpts = ["dev@lists.example.org", "gone@lists.example.org"]
    results = ingest.ingest_group(engine, config, group)
    assert isinstance(results[1], ingest.NoRoute) and str(results[1]).startswith("550")
    with db.session(engine) as s:
        assert sorted(s.scalars(select(Message.subject))) == ["one", "two"]


def test_the_second_post_of_a_group_with_the_same_message_id_is_a_duplicate(make_list,
                                                                            engine, config):
    make_list(members=MEMBERS)
    post = message("twice")
    first, second = ingest.ingest_group(engine, config, _group(post, post))
    assert (first[0].state, second[0].state) == ("accepted", "duplicate")
    assert first[0].deliveries and not second[0].deliveries


def _grouping(engine, config, monkeypatch, **options) -> tuple[receive.GroupCommit, list]:
    """A GroupCommit on the real database, and the size of each group it stores."""
    sizes: list[int] = []
    ingest_group = receive.ingest_group

    def counted(engine, config, group):
        sizes.append(len(group))
        return ingest_group(engine, config, group)
    monkeypatch.setattr(receive, "ingest_group", counted)
    return receive.GroupCommit(engine, config, **options), sizes


def test_a_busy_receiver_lets_transactions_ending_a_moment_later_share_the_commit(
        make_list, engine, config, monkeypatch):
    """Two transactions waiting: the writer gives a third, ending just after, the
    chance to join their group (one commit for all three)."""
    make_list(members=MEMBERS)
    group, sizes = _grouping(engine, config, monkeypatch, gather=0.5)

    async def main() -> list:
        first = [asyncio.create_task(group.store(i)) for i in _group(message("one"),
                                                                      message("two"))]
        await asyncio.sleep(0.05)  # the writer has started and is waiting for more
        later = asyncio.create_task(group.store(_group(message("three"))[0]))
        return await asyncio.gather(*first, later)
    try:
        results = asyncio.run(main())
    finally:
        group.close()
    assert sizes == [3]
    assert [r[0].state for r in results] == ["accepted"] * 3


def test_a_lone_transaction_does_not_wait_for_others(make_list, engine, config, monkeypatch):
    make_list(members=MEMBERS)
    group, sizes = _grouping(engine, config, monkeypatch, gather=600)

    async def main() -> list:
        return await asyncio.wait_for(group.store(_group(message("alone"))[0]), 30)
    try:
        assert asyncio.run(main())[0].state == "accepted"
    finally:
        group.close()
    assert sizes == [1]
