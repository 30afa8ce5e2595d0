"""The enums of the data: roles, delivery modes, states and the owners' choices, each
value with a line saying what it means. Stored by their readable value (models._enum),
so adding a value is a code change, not a migration.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    MEMBER = "member"  # receives posts and may post
    MODERATOR = "moderator"  # receives notices, may post and moderate; no posts unless member
    OWNER = "owner"  # as moderator, and receives mail to LIST-owner@


class DeliveryMode(enum.StrEnum):
    REGULAR = "regular"  # one copy of each post
    DIGEST_MIME = "digest-mime"  # periodic digest, MIME format (RFC 1153 successor)
    DIGEST_PLAIN = "digest-plain"  # periodic digest, plain text (RFC 1153)
    NOMAIL = "nomail"  # stays a member (may post) but receives nothing
    SUMMARY = "summary"  # on the digest schedule, one short mail of the active threads


class DisabledBy(enum.StrEnum):
    """Why a member receives nothing although their mode says otherwise."""

    MEMBER = "member"  # the member asked for it
    BOUNCES = "bounces"  # too many of their deliveries bounced
    MODERATOR = "moderator"  # an owner or moderator switched it off


class Verp(enum.StrEnum):
    """Whether each copy's envelope sender names its recipient (LIST-bounces+u=host@)."""

    ON = "on"  # a bounce says whose copy failed without being parsed
    OFF = "off"  # one bounce address for all: bounces are parsed for their recipients


class Subscription(enum.StrEnum):
    OPEN = "open"  # anyone may join after confirming their address
    MODERATE = "moderate"  # confirm, then an owner or moderator approves
    CLOSED = "closed"  # only admins add members


class NonmemberAction(enum.StrEnum):
    HOLD = "hold"  # keep for a moderator
    REJECT = "reject"  # refuse at the door, the sender's MTA tells them
    DISCARD = "discard"  # keep the bytes, deliver nothing, tell no one
    ACCEPT = "accept"  # post as if from a member


class ReplyTo(enum.StrEnum):
    POSTER = "poster"  # leave Reply-To alone: replies go to the author
    LIST = "list"  # replies go to the list


class ArchivePolicy(enum.StrEnum):
    PUBLIC = "public"  # anyone may read the web archive
    PRIVATE = "private"  # members only
    OFF = "off"  # nothing is shown (messages are still stored for moderation and digests)


class DmarcMode(enum.StrEnum):
    """When a copy's From is rewritten to the list's address (DMARC mitigation)."""

    AUTO = "auto"  # when the author's domain publishes p=quarantine or p=reject
    ALWAYS = "always"  # for every post
    OFF = "off"  # never


class DigestFrequency(enum.StrEnum):
    """When a list's digest comes due (at the list's `digest_send_hour`, UTC)."""

    DAILY = "daily"  # every day
    WEEKLY = "weekly"  # on Mondays
    MONTHLY = "monthly"  # on the first of the month


class VolumeFrequency(enum.StrEnum):
    """How often the digest volume number goes up (and the issue number restarts at 1)."""

    YEARLY = "yearly"
    QUARTERLY = "quarterly"
    MONTHLY = "monthly"
    WEEKLY = "weekly"
    DAILY = "daily"


class TokenKind(enum.StrEnum):
    SUBSCRIBE = "subscribe"  # the address owner confirms a subscription
    UNSUBSCRIBE = "unsubscribe"  # the address owner confirms leaving
    APPROVE_MEMBER = "approve-member"  # a moderator approves a confirmed subscription
    HOLD = "hold"  # a moderator acts on a held post
    INVITE = "invite"  # the invited address accepts an owner's invitation
    ERASE = "erase"  # a post's author confirms its erasure (message_pk: the post)


class NotifyOwners(enum.StrEnum):
    """Whether the owners get a mail when someone joins, leaves, is disabled or removed."""

    ON = "on"
    OFF = "off"


class SenderAction(enum.StrEnum):
    ALLOW = "allow"  # posts go through, past the member and non-member checks
    DENY = "deny"  # posts are discarded
    HOLD = "hold"  # posts wait for a moderator, members' too


class MemberAction(enum.StrEnum):
    """What becomes of a member's post (owners and moderators always post)."""

    ACCEPT = "accept"  # a discussion list
    HOLD = "hold"  # an announce list whose owners approve each post
    REJECT = "reject"  # an announce list only its owners and moderators post to


class HeaderAction(enum.StrEnum):
    """What an owner's header rule does with a post whose field matches."""

    HOLD = "hold"
    REJECT = "reject"  # 5xx at the door
    DISCARD = "discard"  # kept, sent to no one, answered to no one (spam)


class MessageKind(enum.StrEnum):
    POST = "post"  # to LIST@: goes through policy, threading and fan-out
    OWNER = "owner"  # to LIST-owner@: forwarded to the owners
    BOUNCE = "bounce"  # to LIST-bounces@ or LIST-bounces+x@: for bounce processing
    REQUEST = "request"  # to LIST-request@ and friends: member commands


class MessageState(enum.StrEnum):
    ACCEPTED = "accepted"  # stored, threaded and fanned out
    HELD = "held"  # stored, waits for a moderator
    DISCARDED = "discarded"  # stored, never delivered (automatic mail, deny list, moderator)
    REJECTED = "rejected"  # a moderator refused it and the author was told why
    LOOP = "loop"  # already carried this list's List-Id: not sent round again
    DUPLICATE = "duplicate"  # a Message-ID this list already has: not sent twice
    IMPORTED = "imported"  # came from `archive import`: archived, never sent
    STORED = "stored"  # non-post mail kept for a later stage (bounces, commands)


class Lane(enum.IntEnum):
    """Which delivery jobs are claimed first."""

    WAITING = 0  # a person waits for it: confirmations, replies, notices, owners' mail
    POSTS = 1  # copies of posts and digests: the lists take turns


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker, possibly until next_attempt_at
    SENDING = "sending"  # claimed by a worker (see worker and lease_until)
    DONE = "done"  # the smarthost took every recipient it did not refuse for good
    FAILED = "failed"  # gave up: retry_max_hours passed with only temporary failures
    CANCELLED = "cancelled"  # an admin took it out of the queue (`listserv queue cancel`)
