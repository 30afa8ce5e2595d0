"""The templates a list's owners write: the welcome, the goodbye, the footer and the
digest header (`listserv template set`). Each is kept in the list's row (None: the
built-in one), checked by rendering it with sample values before it is saved, and
rendered in the sandbox with its documented variables only when it is used.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from listserv import notices
from listserv.address import ListAddresses, Purpose
from listserv.config import Config
from listserv.enums import ArchivePolicy
from listserv.footer import render_footer
from listserv.headers import has_control
from listserv.models import MailingList
from listserv.roster import UserError
from listserv.templating import environment, owner_environment
from listserv.urls import archive_url

log = logging.getLogger("listserv.owner_templates")

_LIST = ("name", "address", "description", "request_address", "join_address",
         "leave_address", "owner_address", "archive_url")

# Each template an owner may set, and the variables it sees (footer.render_footer
# gives the footer its own).
VARIABLES: dict[str, tuple[str, ...]] = {
    "welcome": (*_LIST, "member", "delivery", "unsubscribe_url", "manage_url", "hours"),
    "goodbye": (*_LIST, "member"),
    "footer": ("name", "address", "archive_url", "unsubscribe_url", "mute_url",
               "manage_url", "follow_url"),
    "digest_header": (*_LIST, "subject", "volume", "number", "issue_url"),
}

# The built-in one each replaces; the digest has no header of its own.
BUILT_IN = {"welcome": "mail/welcome.txt", "goodbye": "mail/goodbye.txt",
            "footer": "mail/footer.txt"}

_SAMPLE_URL = "https://example.org"
_SAMPLES: dict[str, Any] = {
    "member": "member@example.com", "delivery": "regular",
    "unsubscribe_url": f"{_SAMPLE_URL}/unsubscribe/x",
    "manage_url": f"{_SAMPLE_URL}/manage/x", "hours": 24, "subject": "Sample Digest, Vol 1, "
    "Issue 1", "volume": 1, "number": 1, "issue_url": f"{_SAMPLE_URL}/digest/1/1/",
}


def names() -> str:
    return ", ".join(VARIABLES)


def _known(name: str) -> str:
    if name not in VARIABLES:
        raise UserError(f"unknown template {name!r}; valid templates: {names()}")
    return name


def list_context(mlist: MailingList, base_url: str) -> dict[str, Any]:
    """What every template but the footer may say of the list."""
    addresses = ListAddresses(mlist.address)
    return {"name": mlist.name, "address": mlist.address, "description": mlist.description,
            "request_address": addresses.at(Purpose.REQUEST),
            "join_address": addresses.at(Purpose.JOIN),
            "leave_address": addresses.at(Purpose.LEAVE),
            "owner_address": addresses.at(Purpose.OWNER),
            "archive_url": archive_url(base_url, addresses)
            if mlist.archive is not ArchivePolicy.OFF else None}


def _render(name: str, text: str, context: dict[str, Any]) -> str:
    compiled = owner_environment().from_string(text)
    return compiled.render(**{key: context[key] for key in VARIABLES[name]})


def check(name: str, text: str) -> str:
    """The text to store: it renders now, with sample values, rather than failing on the
    next member who joins or the next post. It is body text, so it has lines, but no
    other control character (a bare CR, a NUL)."""
    value = text.replace("\r\n", "\n")
    label = name.replace("_", " ")
    if has_control(value.replace("\n", "").replace("\t", "")):
        raise UserError(f"a {label} may have lines and tabs but no other control characters")
    try:
        if name == "footer":
            render_footer(value, name="Sample", addresses=ListAddresses("sample@example.org"),
                          base_url=_SAMPLE_URL, archive=True)
        else:
            sample = MailingList(address="sample@example.org", domain="example.org",
                                 name="Sample")
            _render(name, value, list_context(sample, _SAMPLE_URL) | _SAMPLES)
    except Exception as exc:  # noqa: BLE001  an owner's text in the sandbox may raise any kind
        raise UserError(f"the {label} template does not render ({exc}); it may use "
                        f"{', '.join(VARIABLES[name])}") from None
    return value


def set_template(mlist: MailingList, name: str, text: str) -> None:
    """Store the owners' template NAME, once it renders."""
    setattr(mlist, _known(name), check(name, text))


def reset(mlist: MailingList, name: str) -> None:
    setattr(mlist, _known(name), None)


def shown(mlist: MailingList, name: str) -> tuple[str, bool]:
    """(the template the list uses, whether it is the built-in one)."""
    own = getattr(mlist, _known(name))
    if own is not None:
        return own, False
    if name not in BUILT_IN:
        return "", True
    env = environment()
    text = env.loader.get_source(env, BUILT_IN[name])[0]  # type: ignore[union-attr]
    if text.startswith("Subject:"):  # the subject is the server's; the body theirs
        text = text.partition("\n")[2].lstrip("\n")
    return text, True


def rendered(mlist: MailingList, name: str, base_url: str, **values: Any) -> str | None:
    """The owners' template NAME for this mail; None when they set none, or when one
    stored before these checks fails now (the built-in one is used then, and logged)."""
    text = getattr(mlist, name)
    if text is None:
        return None
    try:
        return _render(name, text, list_context(mlist, base_url) | values)
    except Exception as exc:  # noqa: BLE001  as in check()
        log.warning("%s: the owners' %s template does not render (%s); using the built-in",
                    mlist.address, name, exc)
        return None


def send(session: Session, config: Config, mlist: MailingList, member: str, name: str,
         **values: Any) -> None:
    """The welcome or goodbye mail to `member`: the built-in body or the owners', which
    see the same variables, so the built-in one is where an owner's starts from."""
    base_url = config.web.base_url
    values |= {"member": member}
    notices.send(session, config, mlist, member, name, limit=False,
                 own_body=rendered(mlist, name, base_url, **values),
                 **list_context(mlist, base_url), **values)
