"""The tables of the mail listserv sends: each copy's bytes (outgoing), its delivery
jobs, a post's expansion into jobs, the destinations in back-off and each recipient a
job failed. Apart from the list's and the message's tables (models.py) because only
the outbox, the delivery worker and the queue's views read and write them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Integer, LargeBinary, Text, text
from sqlmodel import Field, SQLModel

from listserv.enums import DeliveryState, Lane
from listserv.models import enum_type, utcnow


class Outgoing(SQLModel, table=True):
    """The bytes of one mail we send, shared by all the delivery jobs that carry it.

    A list copy is personal (RFC 8058 unsubscribe link, footer links): `slots` (JSON)
    says where in `data` each recipient's own bytes go; "" means the same for all.
    """

    __tablename__ = "outgoing"

    id: int | None = Field(default=None, primary_key=True)
    message_pk: int | None = Field(default=None, foreign_key="message.id", index=True,
                                   ondelete="CASCADE")
    list_id: int | None = Field(default=None, foreign_key="mailing_list.id", index=True,
                                ondelete="CASCADE")
    slots: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # CRLF line ends
    created_at: datetime = Field(default_factory=utcnow)


# The claim's and the turns' indexes hold only jobs not finished yet (queued or
# sending: every other state sets done_at), so that the finished ones (kept for days)
# are never read past; not a test of `state`, which ix_delivery_ready would serve:
# SQLite, without statistics, then preferred that index and sorted every pending job.
# They are split by whether a job was tried: a new one (never claimed, or put back
# untried) is due at once and goes by lane and turn; a tried one (deferred, or claimed)
# waits for its next attempt and goes by that time. In one (lane, turn) index, a claim
# behind a long smarthost outage read past every deferred job to find a due one.
NEW_JOBS = text("done_at IS NULL AND attempts = 0")
TRIED_JOBS = text("done_at IS NULL AND attempts > 0")


class Expansion(SQLModel, table=True):
    """A post whose copy is stored and whose members are still being given delivery jobs,
    chunk by chunk after the 250 (fanout.expand): `after` is the last member id done."""

    __tablename__ = "expansion"

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    outgoing_id: int = Field(foreign_key="outgoing.id", index=True, ondelete="CASCADE")
    mail_from: str
    after: int = 0
    jobs: int = 0  # written so far
    created_at: datetime = Field(default_factory=utcnow)
    # When a chunk was last written: the expansion waiting longest goes next.
    advanced_at: datetime = Field(default_factory=utcnow)


class Delivery(SQLModel, table=True):
    """One SMTP transaction to the smarthost: one copy, at most N recipients.

    Claimed by `lane` first (enums.Lane: mail a person waits for goes first), then,
    once tried, by `next_attempt_at`, and new by `turn`: the copies of posts and digests
    of each list are numbered on from the head of the new jobs, so lists take turns
    (outbox.queue_all)."""

    __tablename__ = "delivery"
    __table_args__ = (Index("ix_delivery_ready", "state", "next_attempt_at"),
                      Index("ix_delivery_domain", "domain", "state"),
                      Index("ix_delivery_claim", "lane", "turn", "id",
                            sqlite_where=NEW_JOBS, postgresql_where=NEW_JOBS),
                      Index("ix_delivery_list_turn", "list_id", "turn",
                            sqlite_where=NEW_JOBS, postgresql_where=NEW_JOBS),
                      Index("ix_delivery_retry", "lane", "next_attempt_at", "id",
                            sqlite_where=TRIED_JOBS, postgresql_where=TRIED_JOBS),
                      # The same by domain: where another domain's jobs start, when a
                      # claim leaves some alone (claims._floor_of).
                      Index("ix_delivery_claim_domain", "lane", "domain", "turn", "id",
                            sqlite_where=NEW_JOBS, postgresql_where=NEW_JOBS),
                      Index("ix_delivery_retry_domain", "lane", "domain", "next_attempt_at",
                            "id", sqlite_where=TRIED_JOBS, postgresql_where=TRIED_JOBS))

    id: int | None = Field(default=None, primary_key=True)
    outgoing_id: int = Field(foreign_key="outgoing.id", index=True, ondelete="CASCADE")
    lane: Lane = Field(default=Lane.WAITING, sa_type=Integer)
    list_id: int | None = None  # whose post or digest (None: anything else)
    turn: int = 0
    mail_from: str
    recipients: str = Field(sa_column=Column(Text, nullable=False))  # one address a line
    # The recipients' domain, lower case (a job has one; "" for jobs queued before 0018):
    # the destination that claims and the worker shape by (destinations.py).
    domain: str = ""
    state: DeliveryState = Field(default=DeliveryState.QUEUED, sa_type=enum_type(DeliveryState))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    worker: str | None = None  # "host:pid" of the worker that claimed it
    lease_until: datetime | None = None
    last_error: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    done_at: datetime | None = None


class Destination(SQLModel, table=True):
    """A destination that deferred copies (421, 4.7.x) and is being slowed: shared
    through the database, so that every worker holds back from it. Once its back-off
    ends, one job at a time tries it (probes.py); deleted once a copy to it goes
    through."""

    __tablename__ = "destination"

    # The MX hosts its domains share, most preferred first, joined by ","; or the one
    # recipient domain whose MX is not known (mx_groups.py).
    name: str = Field(primary_key=True)
    backoff_until: datetime  # no job of its domains is claimed before this
    deferrals: int = 0  # back-offs in a row, which double it
    last_reply: str = ""  # the deferral's words, for `queue ls --by-domain`
    # The job sent to try it after its back-off: while that job is being sent (its lease
    # not run out), no other job of its domains is claimed.
    probe: int | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class DestinationDomain(SQLModel, table=True):
    """A recipient domain of a destination in back-off: the claim leaves its jobs alone.
    The domains the worker that noted the deferral knew to share the destination's MX
    hosts, and any that defers later with the same hosts."""

    __tablename__ = "destination_domain"

    domain: str = Field(primary_key=True)
    destination: str = Field(foreign_key="destination.name", index=True, ondelete="CASCADE")


class RecipientFailure(SQLModel, table=True):
    """A recipient the smarthost refused for good (5xx); bounce processing reads these."""

    __tablename__ = "recipient_failure"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id", index=True, ondelete="CASCADE")
    address: str = Field(index=True)
    code: int
    text: str = ""
    created_at: datetime = Field(default_factory=utcnow)
