"""Fan-out after the 250, and the lanes (issue 19), over real SMTP and a real database:
a post is answered before any of its delivery jobs exists, whatever the list's size, and
its members are given their jobs by the delivery workers a chunk at a time; mail a
person waits for overtakes a large post's copies, two lists' posts take turns, and
copies deferred behind an outage wait for their time without holding up the claim."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select, update

from listserv import claims, db, outbox, outcomes
from listserv.config import DeliveryConfig
from listserv.enums import Lane
from listserv.models import MailingList, utcnow
from listserv.queue_tables import Delivery, Expansion
from listserv.relay import RelayError
from tests.helpers import SENDER, message, post, queue_empty, wait_until
from tests.servers import Smarthost

LIST, OTHER = "dev@lists.example.org", "ops@lists.example.org"


def members(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}@example.com" for i in range(count)] + [SENDER]


def shared_copies(engine) -> None:
    """No footer: one copy for all the members of a job (a transaction for many)."""
    with db.session(engine) as s:
        s.execute(update(MailingList).values(footer=""))
        s.commit()


def counts(engine) -> tuple[int, int]:
    with db.session(engine) as s:
        return (s.scalar(select(func.count()).select_from(Delivery)),
                s.scalar(select(func.count()).select_from(Expansion)))


def lists_in_order(sink: Smarthost) -> list[str]:
    """The list of each transaction the smarthost took, in the order it took them."""
    with sink.lock:
        return [m.mail_from.split("-bounces")[0] for m in sink.received]


def test_the_250_comes_before_any_job_and_each_of_20000_members_gets_one_copy(
        make_server, make_list, engine, sink):
    everyone = members("m", 20_000 - 1)
    make_list(LIST, owner=None, members=everyone)
    shared_copies(engine)
    receiver = make_server(roles=("smtp",))
    assert receiver.send(SENDER, [LIST], post()) == {}  # the 250
    assert counts(engine) == (0, 1)  # the post and its expansion: no job yet
    make_server(roles=("deliver",), delivery={"max_recipients_per_transaction": 500,
                                              "expansion_chunk": 3000})
    wait_until(lambda: len(sink.recipients()) >= len(everyone) and queue_empty(engine),
               "a copy for every member", timeout=240)
    assert Counter(sink.recipients()) == Counter(dict.fromkeys(everyone, 1))
    # 7 chunks of 3,000 members (the last of 2,000): 6 jobs of 500 each, 4 for the last.
    assert counts(engine) == (6 * 6 + 4, 0)


def test_a_confirmation_asked_for_after_a_large_post_leaves_before_its_copies(
        make_server, make_list, engine, sink):
    everyone = members("m", 2000)
    make_list(LIST, owner=None, members=everyone)
    shared_copies(engine)
    sink.data_delay = 0.005  # a smarthost that takes its time
    server = make_server(delivery={"concurrency": 1})
    server.send(SENDER, [LIST], post())
    wait_until(lambda: sink.recipients(), "the post's first copies")
    server.send("new@example.com", ["dev-join@lists.example.org"],
                message("join", sender="new@example.com", to="dev-join@lists.example.org"))
    wait_until(lambda: "new@example.com" in sink.recipients(), "the confirmation",
               timeout=120)
    copies = len(sink.recipients()) - 1
    assert copies < len(everyone) / 2, copies  # 1,000 jobs of 2 copies: most still to go
    wait_until(lambda: queue_empty(engine), "the rest of the copies", timeout=240)
    assert len(sink.recipients()) == len(everyone) + 1


def test_two_lists_posts_take_turns(make_server, make_list, engine, sink):
    make_list(LIST, owner=None, members=members("a", 600))
    make_list(OTHER, owner=None, members=members("b", 600))
    shared_copies(engine)
    receiver = make_server(roles=("smtp",))
    receiver.send(SENDER, [LIST], post("first, to the first list"))
    receiver.send(SENDER, [OTHER], message("then to the other", sender=SENDER, to=OTHER))
    make_server(roles=("deliver",), delivery={"concurrency": 1})
    wait_until(lambda: queue_empty(engine) and len(sink.recipients()) >= 2 * 601,
               "both posts", timeout=240)
    order = lists_in_order(sink)
    assert Counter(order) == {"dev": 601, "ops": 601}  # (VERP: a transaction a member)
    first_half = Counter(order[:601])
    # Not the first list's copies first: once the few handed to the worker with the
    # expansion went, the claims took the two lists' jobs in turn.
    assert first_half["ops"] >= 200 and first_half["dev"] >= 200, first_half


def _queue(engine, rcpts: list[str], lane: Lane, list_id: int | None = None) -> list[int]:
    """A copy to `rcpts`, a job each; their ids."""
    with db.session(engine) as s:
        outbox.queue(s, b"Subject: x\n\nx\n", "dev-bounces@lists.example.org", rcpts, 1,
                     list_id=list_id, lane=lane)
        s.commit()
        return list(s.scalars(select(Delivery.id).where(Delivery.recipients.in_(rcpts))
                              .order_by(Delivery.id)))


def _claim(engine, limit: int) -> set[int]:
    with db.session(engine) as s:
        return {job.id for job in claims.claim(s, "test:1", limit, timedelta(seconds=30))}


def test_copies_deferred_by_an_outage_wait_for_their_time_and_hold_up_no_claim(
        make_list, engine):
    dev, ops = make_list(LIST, owner=None), make_list(OTHER, owner=None)
    deferred = _queue(engine, [f"d{i}@example.com" for i in range(300)], Lane.POSTS, dev.id)
    config = DeliveryConfig(retry_initial_seconds=600)
    with db.session(engine) as s:  # the smarthost is away: every copy tried and deferred
        jobs = claims.claim(s, "test:1", 300, timedelta(seconds=30))
        for job in jobs:
            outcomes.record(s, config, job, {}, RelayError("connection refused", temporary=True))
        s.commit()
    assert len(jobs) == 300
    confirmation = _queue(engine, ["new@example.com"], Lane.WAITING)
    post_copies = _queue(engine, [f"o{i}@example.com" for i in range(5)], Lane.POSTS, ops.id)
    # Only what is due: the confirmation first, then the other list's new post.
    assert _claim(engine, 4) == {*confirmation, *post_copies[:3]}
    with db.session(engine) as s:  # ten minutes on, the deferred copies are due again
        s.execute(update(Delivery).where(Delivery.id.in_(deferred[:2])).values(
            next_attempt_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    notice = _queue(engine, ["owner@example.com"], Lane.WAITING)
    # Mail a person waits for still first; the copies tried before go before new ones.
    assert _claim(engine, 3) == {*notice, *deferred[:2]}
    assert _claim(engine, 10) == set(post_copies[3:])
    assert _claim(engine, 10) == set()
