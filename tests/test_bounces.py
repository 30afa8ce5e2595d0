"""What the list does with bounces, over real SMTP and HTTP: VERP envelope senders, scores
that only dead mailboxes raise, delivery disabled, warnings on schedule with a re-enable
link, removal with the owners told, spam complaints, and `bounce ls`.

Days pass without sleeping: `age()` moves every stored bounce and warning time back, as
if the days had gone by, and the warning schedule is run with an explicit `now`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from listserv import bounces, db
from listserv.config import BouncesConfig
from listserv.dsn import BounceReport
from listserv.enums import DeliveryState, DisabledBy, Role
from listserv.failure import BounceClass, Failure
from listserv.models import BounceEvent, Member, utcnow
from listserv.queue_tables import Delivery, RecipientFailure
from tests.helpers import (
    BOB,
    BOB_VERP,
    LIST,
    MAILBOX,
    TRANSIENT,
    as_json,
    bounce,
    delivered_to,
    dsn,
    mails_to,
    message,
    ok,
)

CAROL = "carol@example.net"
OWNER = "owner@example.org"
BOUNCES = "dev-bounces@lists.example.org"

# Real bounces from the corpus, with the address they name.
POLICY = ("bounces/sisimai/lhost-barracuda-01.eml", "kijitora@example.org")  # 5.7.1 UBE
COMPLAINT = ("messages/auto/arf-16.eml", "kijitora@example.com")  # ARF, abuse


def age(engine, days: float) -> None:
    """Let `days` pass: every bounce, score and warning time moves that far back."""
    delta = timedelta(days=days)
    with db.session(engine) as s:
        for event in s.scalars(select(BounceEvent)):
            event.created_at -= delta
        for row in s.scalars(select(Member)):
            if row.last_bounce_at:
                row.last_bounce_at -= delta
            if row.last_warning_at:
                row.last_warning_at -= delta
        s.commit()


def member(engine, address: str = BOB) -> Member | None:
    with db.session(engine) as s:
        return s.scalars(select(Member).where(Member.address == address,
                                              Member.role == Role.MEMBER)).first()


def events(engine) -> list[BounceEvent]:
    with db.session(engine) as s:
        return list(s.scalars(select(BounceEvent).order_by(BounceEvent.id)))


def status_of(cli, address: str = BOB) -> dict:
    rows = as_json(cli("member", "ls", LIST, "--json"))
    return next(r for r in rows if r["address"] == address and r["role"] == "member")


def bounce_on_days(running, engine, raw: bytes, days: int, to: str = BOB_VERP) -> None:
    for _ in range(days):
        bounce(running, raw, to)
        age(engine, 1)


def near_threshold(engine, address: str = BOB) -> None:
    """A member one hard bounce from being disabled, their last one yesterday."""
    with db.session(engine) as s:
        s.execute(update(Member).where(Member.address == address).values(
            bounce_score=4.0, last_bounce_at=utcnow() - timedelta(days=1)))
        s.commit()


# --- VERP -------------------------------------------------------------------------------

def test_each_copy_goes_out_with_its_recipients_verp_sender(running, make_list, sink):
    make_list(members=[BOB, CAROL])
    running.send(BOB, [LIST], message("Hello", sender=BOB))
    sink.wait_for(3)
    senders = {tuple(m.rcpt_tos): m.mail_from for m in sink.received}
    assert senders == {
        (BOB,): BOB_VERP,
        (CAROL,): "dev-bounces+carol=example.net@lists.example.org",
        (OWNER,): "dev-bounces+owner=example.org@lists.example.org"}


def test_with_verp_off_copies_share_the_bounce_address(running, make_list, sink, engine, cli):
    make_list(members=[BOB, CAROL])
    assert "verp = off" in ok(cli("list", "set", LIST, "verp", "off")).stdout
    assert as_json(cli("list", "show", LIST, "--json"))["verp"] == "off"
    running.send(BOB, [LIST], message("Hello", sender=BOB))
    sink.wait_for(3)
    assert {m.mail_from for m in sink.received} == {BOUNCES}


def test_a_verp_bounce_is_routed_to_the_list(running, make_list):
    make_list(members=[BOB])
    assert running.send("", [BOB_VERP], dsn(MAILBOX)) == {}


# --- scoring ----------------------------------------------------------------------------

def test_a_dead_mailbox_raises_the_score_and_bounce_ls_shows_it(running, make_list, engine,
                                                                 cli):
    make_list(members=[BOB])
    bounce(running, dsn(MAILBOX))
    assert status_of(cli)["bounce_score"] == 1.0
    assert status_of(cli)["delivery_status"] == "enabled"
    [row] = as_json(cli("bounce", "ls", LIST, "--json"))
    assert (row["member"], row["class"], row["status"], row["counted"], row["score"],
            row["state"]) == (BOB, "mailbox", "5.1.1", True, 1.0, "enabled")
    assert "No such user" in row["diagnostic"]
    text = ok(cli("bounce", "ls", LIST)).stdout
    assert BOB in text and "mailbox" in text and "5.1.1" in text


def test_the_verp_address_is_trusted_over_the_reports_addresses(running, make_list, engine):
    make_list(members=[BOB])
    # The report names an alias the copy was forwarded to; VERP says it was Bob's copy.
    bounce(running, dsn(MAILBOX, "bob.forwarded@elsewhere.example"))
    assert [(e.address, e.bounce_class) for e in events(engine)] == [(BOB, "mailbox")]
    assert member(engine).bounce_score == 1.0


def test_without_verp_the_parsed_members_are_blamed(running, make_list, engine):
    make_list(members=[BOB])
    bounce(running, dsn(MAILBOX), to=BOUNCES)
    bounce(running, dsn(MAILBOX, "stranger@example.com"), to=BOUNCES)
    assert [e.address for e in events(engine)] == [BOB]  # a non-member is nobody's concern
    assert member(engine).bounce_score == 1.0


def test_at_most_one_bounce_a_day_counts(running, make_list, engine):
    make_list(members=[BOB])
    for _ in range(3):
        bounce(running, dsn(MAILBOX))
    assert member(engine).bounce_score == 1.0
    assert [e.counted for e in events(engine)] == [True, False, False]


def test_five_days_of_dead_mailbox_disable_delivery(running, make_list, engine, sink, cli):
    make_list(members=[BOB, CAROL])
    bounce_on_days(running, engine, dsn(MAILBOX), 4)
    assert status_of(cli)["delivery_status"] == "enabled"
    bounce(running, dsn(MAILBOX))
    state = status_of(cli)
    assert (state["delivery_status"], state["bounce_score"]) == ("disabled-bounce", 5.0)
    subject = mails_to(sink, BOB)[0]["Subject"]  # the first warning, at once
    # The member's own address in the Subject costs a spam score (SpamAssassin TO_IN_SUBJ).
    assert "bouncing" in subject and BOB not in subject
    running.send(CAROL, [LIST], message("After", sender=CAROL))
    assert delivered_to(running.engine, sink, CAROL) == 1
    assert delivered_to(running.engine, sink, BOB) == 1  # the warning only, no post
    assert as_json(cli("bounce", "ls", LIST, "--json"))[0]["state"] == "disabled-bounce"


def test_policy_refusals_never_disable_and_blame_the_authors_domain(running, make_list,
                                                                     engine, sink, cli):
    make_list(members=[BOB, CAROL])
    post = message("Hello", sender=CAROL)
    msgid = re.search(r"Message-ID: <([^>]+)>", post).group(1)
    running.send(CAROL, [LIST], post)
    # The refused copy's headers show our post's Message-ID: its author is Carol.
    refused = dsn(POLICY, **{"ad4be1052982bf7aa5558be760abbf74@neko.example.com": msgid})
    bounce_on_days(running, engine, refused, 6)
    bounce(running, dsn(POLICY))  # a copy we cannot find: its From names the domain
    assert member(engine).disabled_by is None
    assert member(engine).bounce_score == 0.0
    rows = as_json(cli("bounce", "ls", LIST, "--json"))
    assert {r["class"] for r in rows} == {"policy"} and not any(r["counted"] for r in rows)
    assert [r["sender_domain"] for r in rows] == ["example.org"] + ["example.net"] * 6
    text = ok(cli("bounce", "ls", LIST)).stdout
    assert "policy (example.net)" in text
    assert "posts from example.net: 6" in text


def test_transient_failures_never_count(running, make_list, engine, cli):
    make_list(members=[BOB])
    bounce_on_days(running, engine, dsn(TRANSIENT), 6)
    assert member(engine).bounce_score == 0.0 and member(engine).disabled_by is None
    assert {r["class"] for r in as_json(cli("bounce", "ls", LIST, "--json"))} == {"transient"}


def test_a_score_goes_stale_after_a_week_without_bounces(running, make_list, engine, cli):
    make_list(members=[BOB])
    bounce_on_days(running, engine, dsn(MAILBOX), 4)
    assert status_of(cli)["bounce_score"] == 4.0
    age(engine, 7)
    assert status_of(cli)["bounce_score"] == 0.0
    bounce(running, dsn(MAILBOX))
    assert member(engine).bounce_score == 1.0


def test_an_out_of_office_reply_to_the_verp_address_is_no_bounce(running, make_list, engine):
    make_list(members=[BOB])
    bounce(running, message("Out of office", sender=BOB, to=BOB_VERP,
                            body="I am away until Monday.\n").encode())
    assert events(engine) == []


# --- refusals by the smarthost ---------------------------------------------------------

# What Postfix answers for a local user that does not exist (smtpd's default).
UNKNOWN_LOCAL = ("550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown "
                 "in local recipient table")


def test_a_smarthost_refusal_counts_as_a_dsn_would(running, make_list, engine, sink, cli):
    make_list(members=[BOB, CAROL])
    near_threshold(engine)
    sink.rcpt_replies[BOB] = [UNKNOWN_LOCAL]  # the post's copy; the warning goes through
    running.send(CAROL, [LIST], message("Hello", sender=CAROL))
    [warning] = mails_to(sink, BOB)
    assert "bouncing" in warning["Subject"]
    state = status_of(cli)
    assert (state["delivery_status"], state["bounce_score"]) == ("disabled-bounce", 5.0)
    [row] = as_json(cli("bounce", "ls", LIST, "--json"))
    assert (row["member"], row["class"], row["status"], row["counted"]) == (
        BOB, "mailbox", "5.1.1", True)
    assert "User unknown in local recipient table" in row["diagnostic"]


def test_a_smarthost_refusal_of_the_content_blames_the_author(running, make_list, engine,
                                                               sink, cli):
    make_list(members=[BOB], owner=None)
    sink.data_replies = ["554 5.7.1 Message rejected as spam"]
    running.send(BOB, [LIST], message("Hello", sender=BOB))
    assert delivered_to(running.engine, sink, BOB) == 0
    [row] = as_json(cli("bounce", "ls", LIST, "--json"))
    assert (row["class"], row["sender_domain"], row["counted"]) == ("policy", "example.com",
                                                                    False)
    assert member(engine).bounce_score == 0.0


def test_a_fault_counting_a_refusal_still_records_the_delivery(running, make_list, engine,
                                                               sink, monkeypatch):
    make_list(members=[BOB, CAROL])

    def fault(*args: object) -> int:
        raise RuntimeError("a bug in bounce handling")
    monkeypatch.setattr(bounces, "_act", fault)
    sink.rcpt_replies[BOB] = [UNKNOWN_LOCAL]
    running.send(CAROL, [LIST], message("Hello", sender=CAROL))
    assert delivered_to(running.engine, sink, CAROL) == 1
    with db.session(engine) as s:  # written, not left to go out again after its lease
        assert set(s.scalars(select(Delivery.state))) == {DeliveryState.DONE}
        assert s.scalars(select(RecipientFailure.address)).all() == [BOB]
    assert events(engine) == []


# --- warnings, re-enabling, removal -----------------------------------------------------

def reenable_link(mail) -> str:
    return re.search(r"http://\S+/reenable/\S+", mail.get_content()).group(0)


def test_the_reenable_link_turns_delivery_back_on(running, make_list, engine, sink, cli):
    make_list(members=[BOB])
    near_threshold(engine)
    bounce(running, dsn(MAILBOX))
    [warning] = mails_to(sink, BOB)
    link = reenable_link(warning)
    with httpx.Client(timeout=10) as client:
        page = client.get(link)
        assert page.status_code == 200 and "Turn delivery back on" in page.text
        assert member(engine).disabled_by is DisabledBy.BOUNCES  # a GET changes nothing
        done = client.post(link)
        assert done.status_code == 200 and "Delivery is on again" in done.text
        for shown in (page, done):  # the site's layout: fits a phone, leads to the lists
            assert '<meta name="viewport"' in shown.text and ">All lists</a>" in shown.text
        forged = client.post(link[:-3] + "xyz")
        assert forged.status_code == 400
    state = status_of(cli)
    assert (state["delivery_status"], state["bounce_score"]) == ("enabled", 0.0)
    running.send(OWNER, [LIST], message("Welcome back", sender=OWNER))
    assert delivered_to(running.engine, sink, BOB) == 2


def test_warnings_go_out_on_schedule_then_the_member_is_removed(running, make_list, engine,
                                                                 sink, cli):
    make_list(members=[BOB])
    near_threshold(engine)
    bounce(running, dsn(MAILBOX))
    assert len(mails_to(sink, BOB)) == 1
    start = utcnow()

    def housekeep(days: float) -> int:
        with db.session(engine) as s:
            queued = bounces.housekeep(s, running.config, start + timedelta(days=days))
            s.commit()
        return queued

    assert housekeep(3) == 0  # not due yet
    assert housekeep(7) == 1 and housekeep(7.5) == 0
    assert housekeep(14) == 1
    warnings = mails_to(sink, BOB, 3)
    numbers = sorted(re.search(r"warning \d of \d", w.get_content()).group(0)
                     for w in warnings)
    assert numbers == ["warning 1 of 3", "warning 2 of 3", "warning 3 of 3"]
    assert housekeep(20) == 0 and member(engine) is not None
    assert housekeep(21) == 1  # the owner's notice
    assert member(engine) is None
    assert member(engine, OWNER) is not None
    [told] = [m for m in mails_to(sink, OWNER) if "removed" in m["Subject"]]
    assert BOB in told["Subject"] and "5.1.1" in told.get_content()
    assert as_json(cli("bounce", "ls", LIST, "--json"))[0]["state"] == "removed"
    with httpx.Client(timeout=10) as client:  # a late click: nothing to re-enable
        assert "no longer a member" in client.post(reenable_link(warnings[0])).text


def test_an_owner_who_is_also_a_member_keeps_the_owner_role(running, make_list, engine, sink):
    make_list(members=[BOB])
    near_threshold(engine, OWNER)
    bounce(running, dsn(MAILBOX, OWNER), to="dev-bounces+owner=example.org@lists.example.org")
    for week in (1, 2, 3):  # two more warnings, then the removal
        with db.session(engine) as s:
            bounces.housekeep(s, running.config, utcnow() + timedelta(weeks=week))
            s.commit()
    assert member(engine, OWNER) is None
    with db.session(engine) as s:
        assert s.scalars(select(Member.role).where(Member.address == OWNER)).all() == [
            Role.OWNER]


# --- spam complaints --------------------------------------------------------------------

def test_a_spam_complaint_unsubscribes_without_a_goodbye(running, make_list, engine, sink,
                                                          cli):
    make_list(members=[BOB, CAROL])
    bounce(running, dsn(COMPLAINT), to=BOUNCES)
    assert member(engine) is None and member(engine, CAROL) is not None
    assert delivered_to(running.engine, sink, BOB) == 0
    [row] = as_json(cli("bounce", "ls", LIST, "--json"))
    assert (row["member"], row["class"], row["state"]) == (BOB, "complaint", "removed")


def test_a_complaint_about_a_non_member_changes_nothing(running, make_list, engine):
    make_list(members=[CAROL])
    bounce(running, dsn(COMPLAINT), to=BOUNCES)
    assert events(engine) == [] and member(engine, CAROL) is not None


# --- the decisions, as functions of now -------------------------------------------------

CFG = BouncesConfig()
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=utcnow().tzinfo)


def days(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.mark.parametrize("sent, last, now, step", [
    (0, None, 0, bounces.Step.WARN),  # disabled just now: the first warning
    (1, 0, 6.9, bounces.Step.WAIT),
    (1, 0, 7, bounces.Step.WARN),
    (2, 7, 14, bounces.Step.WARN),
    (3, 14, 20, bounces.Step.WAIT),
    (3, 14, 21, bounces.Step.REMOVE),
])
def test_the_warning_schedule(sent, last, now, step):
    last_at = None if last is None else days(last)
    assert bounces.next_step(sent, last_at, days(now), CFG) is step


def test_no_warnings_configured_removes_at_once():
    assert bounces.next_step(0, None, T0, BouncesConfig(warnings=0)) is bounces.Step.REMOVE


def test_scores_count_once_a_day_and_go_stale():
    assert bounces.scored(0.0, None, 1.0, T0, CFG) == 1.0
    assert bounces.scored(1.0, days(0), 1.0, days(0.4), CFG) is None  # same day
    assert bounces.scored(1.0, days(0), 1.0, days(1), CFG) == 2.0
    assert bounces.scored(4.0, days(0), 1.0, days(7), CFG) == 1.0  # stale: from 0
    assert bounces.scored(1.0, days(0), 0.0, days(1), CFG) is None  # worth nothing
    assert bounces.score_now(3.0, days(0), days(6.9), CFG) == 3.0
    assert bounces.score_now(3.0, days(0), days(7), CFG) == 0.0


def test_only_dead_mailboxes_and_repeated_unknowns_weigh():
    w = bounces.weight
    assert w(BounceClass.MAILBOX, False, CFG) == 1.0
    assert w(BounceClass.UNKNOWN, False, CFG) == 0.0
    assert w(BounceClass.UNKNOWN, True, CFG) == 0.5
    assert w(BounceClass.POLICY, True, CFG) == 0.0
    assert w(BounceClass.TRANSIENT, True, CFG) == 0.0


def test_blame_goes_to_the_verp_recipient_or_to_members():
    report = BounceReport(failures=[
        Failure("Alias@Example.org", "5.1.1", "no such user", BounceClass.MAILBOX),
        Failure("bob@example.com", "4.2.2", "full", BounceClass.TRANSIENT)])
    [verp] = bounces.blamed(report, "bob@example.com", set())
    assert (verp.address, verp.bounce_class) == ("bob@example.com", BounceClass.TRANSIENT)
    assert [f.address for f in bounces.blamed(report, None, {"alias@example.org"})] == [
        "alias@example.org"]
    assert bounces.blamed(BounceReport(), "bob@example.com", {"bob@example.com"}) == []


def test_an_unknown_failure_counts_when_it_repeats(running, make_list, engine):
    make_list(members=[BOB])
    unknown = message("Returned mail", sender="MAILER-DAEMON@mx.example.com", to=BOB_VERP,
                      body=f"Your message could not be delivered to {BOB}.\n").encode()
    bounce(running, unknown)
    assert member(engine).bounce_score == 0.0
    age(engine, 1)
    bounce(running, unknown)
    assert [e.bounce_class for e in events(engine)] == ["unknown", "unknown"]
    assert member(engine).bounce_score == 0.5


# --- the schema -------------------------------------------------------------------------
