"""What every `listserv doctor` check takes and gives: the Deployment it looks at, and
one Result with its Status. `doctor` runs the checks in order, `doctor_dns` holds
those that ask DNS; the CLI prints the results.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from listserv.address import ListAddresses
from listserv.config import Config
from listserv.models import MailingList
from listserv.resolver import Resolver


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but some mail may not arrive or some links not work
    FAIL = "fail"  # mail will not arrive, or not be trusted
    SKIP = "skip"  # does not apply to this setup


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Deployment:
    """What the checks look at: the settings, the list, and the resolver the server uses."""

    config: Config
    mlist: MailingList
    resolver: Resolver
    secret: str  # signs the sample member's links, as in the copies members get

    @property
    def domain(self) -> str:
        return self.mlist.domain

    @property
    def addresses(self) -> ListAddresses:
        return ListAddresses(self.mlist.address)
