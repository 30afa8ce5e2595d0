"""The per-list settings an owner can change (`listserv list set LIST KEY VALUE`):
each key with the values it takes, parsed from text the same way everywhere.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from listserv import owner_templates
from listserv.compose import subject_tag
from listserv.config import MAX_INT
from listserv.enums import (
    ArchivePolicy,
    DigestFrequency,
    DmarcMode,
    MemberAction,
    NonmemberAction,
    NotifyOwners,
    ReplyTo,
    Subscription,
    Verp,
    VolumeFrequency,
)
from listserv.headers import has_control
from listserv.models import MailingList
from listserv.roster import UserError

DEFAULT = "default"  # resets subject_prefix and footer to the built-in ones


def _choice(cls: type[enum.Enum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UserError(f"valid values: {', '.join(m.value for m in cls)}") from None
    parse.valid = ", ".join(m.value for m in cls)  # type: ignore[attr-defined]
    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise UserError("valid values: true, false")


def parse_bool(text: str, name: str) -> bool:
    """A true/false option given as text (`member set --moderated true`)."""
    try:
        return _bool(text)
    except UserError as exc:
        raise UserError(f"bad value {text!r} for {name}: {exc}") from None


def _size(text: str) -> int:
    """A number of bytes the list's row can hold (MAX_INT, 2 GB: more is no limit)."""
    valid = f"valid values: a number of bytes up to {MAX_INT}, 0 for no limit"
    text = text.strip()
    if (not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_INT))
            or int(text) > MAX_INT):
        raise UserError(valid)
    return int(text)


def _count(text: str) -> int:
    """A number of posts (new_member_holds)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise UserError("valid values: a number of posts up to 9999, 0 for none")
    return int(text)


def _hour(text: str) -> int:
    """An hour of the day, UTC (digest_send_hour)."""
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= 23:
        raise UserError("valid values: an hour from 0 to 23 (UTC)")
    return value


_ONE_LINE = "it must be one line, without control characters"


def _text(text: str) -> str:
    """A value that reaches headers (name, description): a CR or LF in it would let
    it write header fields of its own into every copy."""
    if has_control(text.strip()):
        raise UserError(_ONE_LINE)
    return text.strip()


def _optional_text(text: str) -> str | None:
    return None if text.strip().lower() == DEFAULT else _text(text)


# A MIME type as pass_types takes it: "type/subtype", or "type/*" for all of a type.
_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
_MIME_TYPE = re.compile(rf"{_TOKEN}/(?:\*|{_TOKEN})")


def _mime_types(text: str) -> str:
    """pass_types: MIME types apart by spaces or commas, kept lower case and one space
    apart; "" (none given) keeps every type."""
    types = text.replace(",", " ").lower().split()
    wrong = [t for t in types if not _MIME_TYPE.fullmatch(t)]
    if wrong:
        raise UserError(f"{wrong[0]!r} is no MIME type: {_VALID['pass_types']}")
    return " ".join(dict.fromkeys(types))


def _footer(text: str) -> str | None:
    """The owners' footer template, checked as their other templates are."""
    return None if text.strip().lower() == DEFAULT else owner_templates.check("footer", text)


SETTINGS: dict[str, Callable[[str], Any]] = {
    "name": _text,
    "description": _text,
    "subscription": _choice(Subscription),
    "nonmember_action": _choice(NonmemberAction),
    "member_action": _choice(MemberAction),
    "new_member_holds": _count,
    "notify_owners": _choice(NotifyOwners),
    "emergency": _bool,
    "reply_to": _choice(ReplyTo),
    "subject_prefix": _optional_text,
    "footer": _footer,
    "max_message_bytes": _size,
    "archive": _choice(ArchivePolicy),
    "digest_frequency": _choice(DigestFrequency),
    "digest_send_hour": _hour,
    "digest_max_bytes": _size,
    "digest_volume_frequency": _choice(VolumeFrequency),
    "verp": _choice(Verp),
    "dmarc": _choice(DmarcMode),
    "pass_types": _mime_types,
    "collapse_alternatives": _bool,
    "html_to_text": _bool,
    "max_attachment_bytes": _size,
}


# What the settings that are no fixed few take, as a form says it.
_VALID = {
    "name": "one line, not empty", "description": "one line",
    "new_member_holds": "a number of posts up to 9999, 0 for none",
    "subject_prefix": 'one line; "default" for [name]',
    "footer": 'a template using name, address, archive_url, unsubscribe_url, mute_url; '
              '"default" for the built-in one',
    "max_message_bytes": f"a number of bytes up to {MAX_INT}, 0 for no limit",
    "digest_send_hour": "an hour from 0 to 23 (UTC)",
    "digest_max_bytes": f"a number of bytes up to {MAX_INT}, 0 for no limit",
    "collapse_alternatives": "true: a post in text and HTML goes as its text; false",
    "html_to_text": "true: an HTML-only post goes as text; false",
    "pass_types": 'MIME types kept in copies and on the archive, such as "text/plain '
                  'image/*"; text/plain always is; empty for every type',
    "max_attachment_bytes": f"a number of bytes up to {MAX_INT}: larger attachments are "
                            "removed; 0 for no limit",
}


def choices(key: str) -> list[str]:
    """The values of a setting that takes a fixed few (a menu on the web); else []."""
    parser = SETTINGS[key]
    if parser is _bool:
        return ["true", "false"]
    valid: str = getattr(parser, "valid", "")
    return valid.split(", ") if valid else []


def valid(key: str) -> str:
    """The values a setting takes, in words."""
    return _VALID.get(key) or ", ".join(choices(key))


def set_setting(mlist: MailingList, key: str, text: str) -> Any:
    """Parse and apply one setting; a one-line UserError names the valid keys or values."""
    parser = SETTINGS.get(key)
    if parser is None:
        raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(SETTINGS)}")
    try:
        value = parser(text)
    except UserError as exc:
        raise UserError(f"bad value {text!r} for {key}: {exc}") from None
    if key == "name" and not value:
        raise UserError("bad value for name: it must not be empty")
    setattr(mlist, key, value)
    return value


def settings_of(mlist: MailingList) -> dict[str, Any]:
    values = {key: getattr(mlist, key) for key in SETTINGS}
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


@dataclass
class Effective:
    values: dict[str, Any]  # subject_prefix and footer as they act on posts
    defaults: list[str]  # which of them are the built-in ones


def effective(mlist: MailingList) -> Effective:
    """The subject prefix and footer the list's posts get: unset, they are "[name]" and
    templates/mail/footer.txt, and an owner who read `None` took that for none."""
    values: dict[str, Any] = {"subject_prefix": mlist.subject_prefix, "footer": mlist.footer}
    defaults = [key for key, value in values.items() if value is None]
    if mlist.subject_prefix is None:
        values["subject_prefix"] = subject_tag(mlist.name)
    values["footer"] = owner_templates.shown(mlist, "footer")[0]
    return Effective(values, defaults)
