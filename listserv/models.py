"""Tables: the only shape the data has (their enums are in enums.py).

Received bytes are stored as they came (`Message.raw`); every other message column can
be recomputed from them. Outgoing mail is an `Outgoing` copy plus `Delivery` jobs.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from listserv.address import ListAddresses
from listserv.enums import (
    ArchivePolicy,
    DeliveryMode,
    DigestFrequency,
    DisabledBy,
    DmarcMode,
    HeaderAction,
    MemberAction,
    MessageKind,
    MessageState,
    NonmemberAction,
    NotifyOwners,
    ReplyTo,
    Role,
    SenderAction,
    Subscription,
    TokenKind,
    Verp,
    VolumeFrequency,
)


def utcnow() -> datetime:
    """Aware UTC: the column type refuses naive datetimes, so no local time sneaks in."""
    return datetime.now(UTC)


def enum_type(cls: type[enum.Enum]) -> SAEnum:
    # Store the readable value, not the Python name, and no native PG enum type:
    # adding a value later is then a code change, not a migration.
    return SAEnum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False,
                  length=32, validate_strings=True)


class MailingList(SQLModel, table=True):
    __tablename__ = "mailing_list"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(unique=True, index=True)  # dev@lists.example.org, lower case
    domain: str = Field(index=True)  # lists.example.org: the receiver answers for it
    name: str  # display name, used in List-Id and the subject prefix
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    subscription: Subscription = Field(default=Subscription.OPEN, sa_type=enum_type(Subscription))
    nonmember_action: NonmemberAction = Field(default=NonmemberAction.HOLD,
                                              sa_type=enum_type(NonmemberAction))
    emergency: bool = False  # hold every post
    reply_to: ReplyTo = Field(default=ReplyTo.POSTER, sa_type=enum_type(ReplyTo))
    subject_prefix: str | None = None  # None: "[name]"; "": no prefix
    footer: str | None = None  # jinja2 template; None: templates/mail/footer.txt
    max_message_bytes: int = 1048576  # larger posts are held; 0: no limit
    archive: ArchivePolicy = Field(default=ArchivePolicy.PUBLIC, sa_type=enum_type(ArchivePolicy))
    dmarc: DmarcMode = Field(default=DmarcMode.AUTO, sa_type=enum_type(DmarcMode))
    digest_frequency: DigestFrequency = Field(default=DigestFrequency.DAILY,
                                              sa_type=enum_type(DigestFrequency))
    digest_send_hour: int = 0  # 0..23, UTC
    digest_max_bytes: int = 30720  # pending posts larger than this send a digest at once
    digest_volume_frequency: VolumeFrequency = Field(default=VolumeFrequency.YEARLY,
                                                     sa_type=enum_type(VolumeFrequency))
    digest_volume: int = 1  # the volume of the last digest sent (1 before any)
    digest_issue: int = 0  # the number of the last issue sent in that volume (0: none)
    digest_last_sent_at: datetime | None = None
    verp: Verp = Field(default=Verp.ON, sa_type=enum_type(Verp))
    member_action: MemberAction = Field(default=MemberAction.ACCEPT,
                                        sa_type=enum_type(MemberAction))
    new_member_holds: int = 0  # a member's first N posts are held; 0: none
    notify_owners: NotifyOwners = Field(default=NotifyOwners.OFF, sa_type=enum_type(NotifyOwners))
    # The owners' own templates (owner_templates.py), as `footer`; None: the built-in one.
    welcome: str | None = None  # the welcome mail's body
    goodbye: str | None = None  # the body of the mail on leaving
    digest_header: str | None = None  # text at the top of each digest; None: none
    # The content filter (content_filter.py): what copies and the archive's pages carry.
    pass_types: str = ""  # MIME types kept, "text/plain image/*"; "": every type
    collapse_alternatives: bool = False  # multipart/alternative sent as its text/plain
    html_to_text: bool = False  # HTML-only posts sent as text/plain
    max_attachment_bytes: int = 0  # larger attachments are removed; 0: no limit

    @property
    def addresses(self) -> ListAddresses:
        """LIST-bounces@, LIST-owner@ and the others, for headers and envelopes."""
        return ListAddresses(self.address)


class Member(SQLModel, table=True):
    """One role of one address on one list; an owner who also gets posts has two rows."""

    __tablename__ = "member"
    # (list_id, id): the keyset a post's expansion reads its members by, chunk by chunk.
    __table_args__ = (UniqueConstraint("list_id", "address", "role"),
                      Index("ix_member_list_id_id", "list_id", "id"))

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    address: str  # lower-cased addr-spec, the key we match senders against
    display_name: str = ""
    role: Role = Field(default=Role.MEMBER, sa_type=enum_type(Role))
    delivery: DeliveryMode = Field(default=DeliveryMode.REGULAR, sa_type=enum_type(DeliveryMode))
    disabled_by: DisabledBy | None = Field(default=None, sa_type=enum_type(DisabledBy))
    # No mail until then (a holiday): delivery resumes by itself, with nothing to undo.
    nomail_until: datetime | None = None
    moderated: bool = False
    # The member's own options (set by mail, CLI and their page of subscriptions):
    own_posts: bool = True  # a copy of their own posts
    skip_if_addressed: bool = False  # no list copy of a post whose To or Cc names them
    acknowledge: bool = False  # a short mail saying their post went out
    created_at: datetime = Field(default_factory=utcnow)
    # Bounce scoring (see listserv/bounces.py): the score as of the last bounce that
    # counted, and, once delivery is disabled for bounces, the warnings sent so far.
    bounce_score: float = 0.0
    last_bounce_at: datetime | None = None
    warnings_sent: int = 0
    last_warning_at: datetime | None = None


class Message(SQLModel, table=True):
    """Every message the receiver answered 250 for, with its bytes as received."""

    __tablename__ = "message"
    __table_args__ = (Index("ix_message_list_msgid", "list_id", "message_id"),
                      # the sender's messages of the last hour (limits.sent_recently)
                      Index("ix_message_sender_received", "sender_key", "received_at"),
                      # a member's posts so far (new_member_holds)
                      Index("ix_message_list_from", "list_id", "from_address"))

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    kind: MessageKind = Field(sa_type=enum_type(MessageKind))
    state: MessageState = Field(sa_type=enum_type(MessageState))
    reasons: str = ""  # why it was held or discarded, one reason per line
    message_id: str  # without angle brackets; generated when the mail had none
    mail_from: str = ""  # envelope sender, "" for the null sender <>
    sender_key: str = ""  # mail_from in lower case: what the hourly limit counts by
    rcpt_to: str = ""  # the envelope recipient that routed it here
    from_address: str = ""  # addr-spec of the From: header, lower case
    from_name: str = ""
    subject: str = ""  # a digest reply's: the subject inferred for it (see below)
    # A reply to a whole digest: the Message-ID of the item it answers, which it is
    # threaded under and whose In-Reply-To/References its copies carry; `raw` keeps the
    # headers its author wrote. "" for any other message.
    inferred_parent: str = ""
    date: datetime | None = None  # the Date: header, UTC
    received_at: datetime = Field(default_factory=utcnow, index=True)
    size: int = 0
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Erased (erasure.py): `raw` is then a tombstone and the sender and subject columns
    # are empty; the row, its Message-ID, date and thread node stay, so replies keep
    # their parent. None: not erased. The reason is the owners' note, never shown.
    erased_at: datetime | None = None
    erased_reason: str = ""


class ThreadNode(SQLModel, table=True):
    """A container in the JWZ sense: a real message of the archive or a placeholder.

    Placeholders stand for Message-IDs that were referenced but not (yet) seen; when
    the message arrives it takes over its placeholder and the thread holds together.
    """

    __tablename__ = "thread_node"
    __table_args__ = (UniqueConstraint("list_id", "message_id"),
                      Index("ix_thread_node_parent", "list_id", "parent_id"),
                      # A thread's nodes in date order: the thread page and the recount
                      # of a thread's summary. Without it SQLite may pick the date index
                      # and walk the whole list for every message archived.
                      Index("ix_thread_node_thread", "list_id", "thread_id", "date"),
                      Index("ix_thread_node_date", "list_id", "date"),
                      # The subject fallback: the latest message with a subject in a
                      # window of dates, found by one seek.
                      Index("ix_thread_node_subject", "list_id", "subject_key", "date"))

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    message_id: str
    message_pk: int | None = Field(default=None, foreign_key="message.id",
                                   ondelete="CASCADE")  # None: a placeholder
    parent_id: str | None = None  # Message-ID of the parent node
    own_link: bool = False  # the parent came from the message's own headers
    thread_id: str  # Message-ID of the thread's root node
    by_subject: bool = False  # a root that joined its thread by the subject fallback
    subject_key: str = ""  # subject without Re:/[tag]
    date: datetime | None = None


class DigestIssue(SQLModel, table=True):
    """One digest as it was sent: numbered per list, and shown in the archive."""

    __tablename__ = "digest_issue"
    __table_args__ = (UniqueConstraint("list_id", "volume", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    volume: int
    number: int
    subject: str  # "Dev Digest, Vol 3, Issue 12"
    created_at: datetime = Field(default_factory=utcnow)
    size: int = 0  # bytes of the posts it carries
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # the MIME form sent


class DigestSummary(SQLModel, table=True):
    """The summary of a digest issue's posts, as its summary members got it (less their
    own links): built with the issue, from the same posts, and shown beside it."""

    __tablename__ = "digest_summary"

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="digest_issue.id", unique=True, ondelete="CASCADE")
    subject: str  # "Dev Summary, Vol 3, Issue 12"
    threads: int = 0  # how many threads it lists
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # the mail sent


class DigestItem(SQLModel, table=True):
    """A post waiting for the next digest (`issue_id` None), or item `position` of one.

    Queued when the post is fanned out, so each post is in exactly one digest.
    """

    __tablename__ = "digest_item"
    __table_args__ = (Index("ix_digest_item_pending", "list_id", "issue_id"),)

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", ondelete="CASCADE")
    message_pk: int = Field(foreign_key="message.id", unique=True, ondelete="CASCADE")
    issue_id: int | None = Field(default=None, foreign_key="digest_issue.id", index=True,
                                 ondelete="CASCADE")
    position: int | None = None  # 1-based item number within its issue
    size: int = 0  # bytes of the post, for the size trigger
    created_at: datetime = Field(default_factory=utcnow)


class ThreadSummary(SQLModel, table=True):
    """What the archive's list of threads shows, kept up to date as messages are archived
    so a page of threads is one indexed read, not an aggregate over the whole list."""

    __tablename__ = "thread_summary"
    __table_args__ = (UniqueConstraint("list_id", "thread_id"),
                      Index("ix_thread_summary_activity", "list_id", "last_date"))

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", ondelete="CASCADE")
    thread_id: str  # Message-ID of the thread's root node
    subject: str = ""  # of the earliest archived message
    messages: int = 0  # archived messages in the thread (replies: messages - 1)
    participants: int = 0  # distinct senders
    authors: str = ""  # the first few senders' names, one a line
    first_date: datetime | None = None
    last_date: datetime | None = None
    # Bumped by erasure: the thread's message pages show its posts' subjects and senders.
    version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Token(SQLModel, table=True):
    """A single-use secret that lets a mail reply or a web click act for an address."""

    __tablename__ = "token"

    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(unique=True, index=True)  # the lookup part (tokens.LOOKUP_CHARS)
    secret_hash: str = ""  # SHA-256 (hex) of the rest; only the mail sent holds that
    kind: TokenKind = Field(sa_type=enum_type(TokenKind))
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    address: str = Field(index=True)  # whom it acts for (the subscriber, or the author)
    message_pk: int | None = Field(default=None, foreign_key="message.id",
                                   ondelete="CASCADE")  # a held post
    data: str = ""  # e.g. the delivery mode asked for at subscribe time
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class Mute(SQLModel, table=True):
    """A member who asked for no more posts of one thread."""

    __tablename__ = "mute"
    __table_args__ = (UniqueConstraint("list_id", "address", "thread_id"),)

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    address: str
    thread_id: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class Follow(SQLModel, table=True):
    """A member who asked for each post of one thread as it is sent, whatever their
    delivery (a digest member still gets the digest too)."""

    __tablename__ = "follow"
    __table_args__ = (UniqueConstraint("list_id", "address", "thread_id"),)

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    address: str
    thread_id: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class SenderRule(SQLModel, table=True):
    """An owner's allow, deny or hold entry for the senders a pattern matches."""

    __tablename__ = "sender_rule"
    __table_args__ = (UniqueConstraint("list_id", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    address: str  # the pattern: an address, "@domain" or "^regex$" (patterns.py)
    action: SenderAction = Field(sa_type=enum_type(SenderAction))
    created_at: datetime = Field(default_factory=utcnow)


class Ban(SQLModel, table=True):
    """A sender pattern banned from every list: no subscribing, no posting."""

    __tablename__ = "ban"

    id: int | None = Field(default=None, primary_key=True)
    pattern: str = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class HeaderRule(SQLModel, table=True):
    """An owner's rule on a header field (`X-Spam-Flag` matching `YES`: discard)."""

    __tablename__ = "header_rule"

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", index=True, ondelete="CASCADE")
    header: str  # the field name as the owner wrote it (matched whatever its case)
    pattern: str  # a regular expression searched for in each of its values
    action: HeaderAction = Field(sa_type=enum_type(HeaderAction))
    created_at: datetime = Field(default_factory=utcnow)


class AutoReply(SQLModel, table=True):
    """One automatic mail to an address, counted for the daily limit."""

    __tablename__ = "auto_reply"
    __table_args__ = (Index("ix_auto_reply_address_sent", "address", "sent_at"),)

    id: int | None = Field(default=None, primary_key=True)
    address: str
    sent_at: datetime = Field(default_factory=utcnow)


class Setting(SQLModel, table=True):
    """Server-wide values kept in the database, such as the generated web secret."""

    __tablename__ = "setting"

    key: str = Field(primary_key=True)
    value: str


class BounceEvent(SQLModel, table=True):
    """One failed recipient (or spam complaint) a mail to LIST-bounces@ reported."""

    __tablename__ = "bounce_event"
    __table_args__ = (Index("ix_bounce_event_list_created", "list_id", "created_at"),
                      Index("ix_bounce_event_member", "list_id", "address", "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", ondelete="CASCADE")
    address: str  # the member whose copy failed, lower case
    status: str = ""  # RFC 3463 "5.1.1", "" when the report gives none
    bounce_class: str  # a bounce.BounceClass value, or "complaint"
    diagnostic: str = ""  # the remote server's words (for a complaint: its feedback type)
    # For `policy` refusals: the domain of the refused post's author, whom they blame.
    sender_domain: str = ""
    counted: bool = False  # it raised the member's bounce score
    message_pk: int | None = Field(default=None, foreign_key="message.id",
                                   ondelete="CASCADE")  # the stored bounce
    created_at: datetime = Field(default_factory=utcnow)
