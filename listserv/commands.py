"""Member commands by email: LIST-request@ (one command a line), LIST-join@,
LIST-leave@ and LIST-confirm+TOKEN@ (answers to confirmations and notices).
"""

from __future__ import annotations

from sqlmodel import Session

from listserv.address import Route
from listserv.config import Config
from listserv.models import MailingList, Message
from listserv.parse import Parsed


def handle(session: Session, config: Config, mlist: MailingList, target: Route,
           message: Message, parsed: Parsed) -> None:
    """Act on a stored mail to one of the list's command addresses (stub: to be written)."""
