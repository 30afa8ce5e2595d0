"""What a smarthost answers, and what a failed transaction means for its recipients:
the relay's replies and errors, read by the delivery worker, the recorder and bounces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RelayError(Exception):
    """The transaction as a whole failed; `temporary` says whether to try again."""

    def __init__(self, text: str, temporary: bool = True, code: int = 0) -> None:
        super().__init__(text)
        self.temporary = temporary
        self.code = code


class ConnectionLost(RelayError):
    """The connection died before the smarthost answered MAIL, so it accepted nothing and
    the transaction can go again at once on a new connection."""


# How the refusals that are not of a recipient begin: our envelope sender's and the
# session's. They say nothing of a member's address, so they are never bounces.
MAIL_REFUSED = "MAIL FROM refused"
_NOT_RECIPIENT = (MAIL_REFUSED, "EHLO refused", "smarthost greeting")


def refuses_recipient(reply: Reply) -> bool:
    """A permanent refusal of the recipient or of the message sent to it (at RCPT or
    DATA): what a delivery report from the remote end would say about that address."""
    return reply.code >= 500 and not reply.text.startswith(_NOT_RECIPIENT)


def refusal(error: RelayError, lost: bool = False) -> Reply:
    """A failed transaction as the reply that refused its recipient."""
    if lost:
        return Reply(451, f"connection lost before the smarthost answered: {error}")
    return Reply(error.code or (451 if error.temporary else 554), str(error))
