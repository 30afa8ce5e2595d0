"""Secrets that let a mail reply or a web click act for someone.

Confirmation and moderation tokens are random, stored, single-use and expiring. Each
is 32 hex characters: the first 16 find its row, the last 16 are a secret of which the
row keeps only a SHA-256, compared in constant time. So neither the index lookup (a
B-tree compares the value it is given byte by byte) nor a copy of the database tells
anyone a usable token.
Unsubscribe, mute, follow and manage links (and the join form's value) are signed instead
(HMAC with the server secret), so a copy can carry one for each member without a row
per member per post. Each says when
it was made, so it acts only on the membership of that time: after the member leaves
and joins again, an old link is refused. Each has one spelling: a token that decodes to
the same bytes but is written otherwise (padding, stray characters, "+/" for "-_",
other unused bits) is refused, so a link is known by its text.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlmodel import Session

from listserv.config import Config
from listserv.enums import Role, TokenKind
from listserv.models import Member, Setting, Token, utcnow

_SECRET_KEY = "web_secret"


def server_secret(session: Session, config: Config) -> str:
    """`[web] secret`, or one generated on first start and kept in the database."""
    if config.web.secret:
        return config.web.secret
    row = session.get(Setting, _SECRET_KEY)
    if row is None:
        row = Setting(key=_SECRET_KEY, value=secrets.token_urlsafe(32))
        session.add(row)
        session.flush()
    return row.value


LOOKUP_CHARS = 16  # of a token's 32: the part stored as it is, that finds the row


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new(session: Session, kind: TokenKind, list_id: int, address: str, lifetime: timedelta,
        *, message_pk: int | None = None, data: str = "") -> tuple[Token, str]:
    """The stored row and the token to send, which only the mail it goes in holds."""
    # Lower-case hex: the token travels in a local part (LIST-confirm+TOKEN@), and
    # mail systems may change the case of local parts.
    value = secrets.token_hex(16)
    token = Token(token=value[:LOOKUP_CHARS], secret_hash=secret_hash(value[LOOKUP_CHARS:]),
                  kind=kind, list_id=list_id, address=address, message_pk=message_pk,
                  data=data, expires_at=utcnow() + lifetime)
    session.add(token)
    session.flush()
    return token, value


def pending(session: Session, kind: TokenKind, list_id: int, address: str) -> Token | None:
    """An unused, unexpired token of this kind for this address (so we do not resend)."""
    return session.scalars(select(Token).where(
        Token.kind == kind, Token.list_id == list_id, Token.address == address,
        Token.used_at.is_(None), Token.expires_at > utcnow())).first()


def find(session: Session, value: str) -> Token | None:
    """The token if it can still be used; None when unknown, used or expired."""
    value = value.strip().lower()
    token = session.scalars(select(Token).where(Token.token == value[:LOOKUP_CHARS])).first()
    if token is None or not hmac.compare_digest(token.secret_hash,
                                                secret_hash(value[LOOKUP_CHARS:])):
        return None
    if token.used_at is not None or token.expires_at <= utcnow():
        return None
    return token


def use(session: Session, token: Token) -> bool:
    """Spend a token; False when someone else spent it first (two clicks, two replies)."""
    result = session.execute(update(Token).where(Token.id == token.id, Token.used_at.is_(None))
                             .values(used_at=utcnow()))
    token.used_at = utcnow()
    return result.rowcount == 1


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _pads(secret: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's keyed inner and outer hashes (RFC 2104), made once per secret."""
    key = secret.encode()
    key = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)),
            hashlib.sha256(bytes(b ^ 0x5C for b in key)))


def _mac(secret: str, data: bytes) -> bytes:
    """HMAC-SHA256 from hashes keyed once: a personal copy signs two or three links for
    every recipient, and hmac.digest spends most of its time keying."""
    keyed_inner, keyed_outer = _pads(secret)
    inner, outer = keyed_inner.copy(), keyed_outer.copy()
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


def sign(secret: str, purpose: str, *parts: str) -> str:
    """An opaque link token carrying `parts`; only this server can make a valid one."""
    payload = "\n".join(parts).encode()
    mac = _mac(secret, purpose.encode() + b"\0" + payload)
    return f"{_b64(payload)}.{_b64(mac[:18])}"


def verify(secret: str, purpose: str, token: str) -> list[str] | None:
    """The parts of a signed token, or None if it was not made by us for this purpose."""
    try:
        payload_text, mac_text = token.split(".", 1)
        payload = _unb64(payload_text)
        mac = _unb64(mac_text)
    except (ValueError, TypeError):
        return None
    if _b64(payload) != payload_text or _b64(mac) != mac_text:
        return None  # not the spelling we write
    expected = _mac(secret, purpose.encode() + b"\0" + payload)[:18]
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        return payload.decode().split("\n")
    except UnicodeDecodeError:
        return None


def _now() -> str:
    """When a link is made, in whole seconds: what ties it to the membership of the time.
    (time.time, as _expires: the delivery worker signs two or three for every recipient
    of a post, and a datetime for each cost more than its HMAC.)"""
    return str(int(time.time()))


def _joined(session: Session, list_id: int, address: str) -> datetime | None:
    """When the address's current membership began; None when it is no member."""
    return session.scalars(select(Member.created_at).where(
        Member.list_id == list_id, Member.address == address,
        Member.role == Role.MEMBER)).first()


def _made_after(made: str, joined: datetime) -> bool:
    return made.isdigit() and int(made) >= int(joined.timestamp())


def made_for_current(session: Session, list_id: int, address: str, made: str) -> bool:
    """False when `address` joined the list after the link was made (at `made`, from
    the link): the link was made for a membership that has ended. True when the member
    is still the one it was made for, or is no member at all (nothing to act on)."""
    joined = _joined(session, list_id, address)
    return made.isdigit() and (joined is None or _made_after(made, joined))


def unsubscribe_link(secret: str, list_id: int, address: str) -> str:
    return sign(secret, "unsubscribe", str(list_id), address, _now())


def reenable_link(secret: str, list_id: int, address: str) -> str:
    """For the bounce warnings: turns a member's delivery back on."""
    return sign(secret, "reenable", str(list_id), address, _now())


def mute_link(secret: str, list_id: int, address: str, message_pk: int) -> str:
    return sign(secret, "mute", str(list_id), address, str(message_pk), _now())


def follow_link(secret: str, list_id: int, address: str, message_pk: int) -> str:
    """Follow the thread of a post: its posts come one by one even to a digest member.
    A purpose of its own, so a mute link can never be replayed as a follow."""
    return sign(secret, "follow", str(list_id), address, str(message_pk), _now())


def archive_pass(secret: str, list_id: int, address: str, days: int) -> str:
    """What opens a private archive to a member: the link they are mailed carries it,
    and the cookie it sets holds the same value, so nothing is stored per member."""
    expires = int((utcnow() + timedelta(days=days)).timestamp())
    return sign(secret, "archive", str(list_id), address, str(expires), _now())


def archive_pass_holder(session: Session, secret: str, value: str, list_id: int) -> str | None:
    """The member a pass was made for, if it is ours, for this list, not expired, and
    its holder is still the member it was made for."""
    parts = verify(secret, "archive", value)
    if parts is None or len(parts) != 4 or parts[0] != str(list_id) or not parts[2].isdigit():
        return None
    address, expires, made = parts[1:]
    if int(expires) <= utcnow().timestamp():
        return None
    joined = _joined(session, list_id, address)
    return address if joined is not None and _made_after(made, joined) else None


def _expires(hours: float) -> str:
    """In whole seconds since the epoch (time.time: the delivery worker signs one for
    every recipient of a post)."""
    return str(int(time.time() + hours * 3600))


def _live(expires: str) -> bool:
    return expires.isdigit() and int(expires) > time.time()


def form_stamp(secret: str, list_id: int, hours: float) -> str:
    """The hidden value of a list's join form: a POST without one made by us lately, for
    this list, comes from no page of ours (a form on another site, a script)."""
    return sign(secret, "join-form", str(list_id), _expires(hours))


def form_stamp_ok(secret: str, list_id: int, value: str) -> bool:
    parts = verify(secret, "join-form", value)
    return parts is not None and len(parts) == 2 and parts[0] == str(list_id) and _live(
        parts[1])


def manage_link(secret: str, address: str, hours: float) -> str:
    """The token of an address's page of subscriptions, every list's: the link is mailed
    to that address only (or put in its own copies), so holding it shows one reads it."""
    return sign(secret, "manage", address, _expires(hours))


def manage_holder(secret: str, value: str) -> str | None:
    """The address a manage link was made for, if it is ours and not expired."""
    parts = verify(secret, "manage", value)
    if parts is None or len(parts) != 2 or not _live(parts[1]):
        return None
    return parts[0]


def manage_link_expired(secret: str, value: str) -> str | None:
    """The address of a manage link of ours that has expired (to offer a new one)."""
    parts = verify(secret, "manage", value)
    return parts[0] if parts is not None and len(parts) == 2 else None


def address_change_link(secret: str, old: str, new: str, hours: float) -> str:
    """What the new address is mailed to confirm a change of address: the reader of the
    new mailbox agrees to take over every subscription of the old one."""
    return sign(secret, "change-address", old, new, _expires(hours))


def address_change(secret: str, value: str) -> tuple[str, str] | None:
    """(old, new) of an address change link of ours that has not expired."""
    parts = verify(secret, "change-address", value)
    if parts is None or len(parts) != 3 or not _live(parts[2]):
        return None
    return parts[0], parts[1]


def staff_link(secret: str, list_id: int, address: str, hours: int) -> str:
    """An owner's or moderator's admin page for one list. It names the address, not
    its role: each request reads the role anew, so removing someone closes their link."""
    return sign(secret, "admin", str(list_id), address, _expires(hours))


def held_link(secret: str, list_id: int, address: str, message_pk: int, days: int) -> str:
    """One held post's decision page, in the moderation summary sent to `address`."""
    return sign(secret, "held", str(list_id), address, _expires(days * 24), str(message_pk))


def staff_link_holder(secret: str, purpose: str, value: str
                      ) -> tuple[int, str, list[str]] | None:
    """(list id, address, the rest) of an unexpired staff_link or held_link; None when
    forged, expired or of another purpose."""
    parts = verify(secret, purpose, value)
    if (parts is None or len(parts) < 3 or not parts[0].isdigit()
            or not _live(parts[2])):
        return None
    return int(parts[0]), parts[1], parts[3:]
