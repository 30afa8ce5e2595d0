"""The owners hear about their list's members (the list's `notify_owners`): someone
joined, left, had delivery disabled by bounces, or was removed, whichever way it came
about (email, web, command line, bounce processing). One mail to each owner a change.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from sqlmodel import Session

from listserv import roster
from listserv.config import Config
from listserv.enums import NotifyOwners, Role
from listserv.models import MailingList

# A change of many addresses at once (an import) names this many; the mail counts the rest.
NAMED = 100


class Change(enum.StrEnum):
    """What happened; templates/mail/members_changed.txt words each one."""

    JOINED = "joined"
    LEFT = "left"
    DISABLED = "disabled"  # too many bounces: delivery off, warnings on their way
    REMOVED = "removed"


def tell(session: Session, config: Config, mlist: MailingList, change: Change,
         addresses: Sequence[str], how: str = "") -> int:
    """Queue the mail that tells each owner of `change` to `addresses` (`how`: the way
    it came about, when the caller knows); the mails queued, none when the list's
    notify_owners is off."""
    if mlist.notify_owners is not NotifyOwners.ON or not addresses:
        return 0
    # Imported here: every member command calls this, and notices brings jinja2 and the
    # outbox, which only a list whose owners are notified needs (member add: -0.2 s).
    from listserv import notices

    owners = roster.role_addresses(session, mlist.id, [Role.OWNER])
    for owner in owners:
        notices.send(session, config, mlist, owner, "members_changed", limit=False,
                     auto="auto-generated", change=change.value, how=how,
                     changed=list(addresses[:NAMED]), more=max(0, len(addresses) - NAMED))
    return len(owners)
