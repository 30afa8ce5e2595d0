"""Held posts: notices to moderators, and approve / reject / discard by email or CLI."""

from __future__ import annotations

from sqlmodel import Session

from listserv.config import Config
from listserv.models import Token


def reply_to_notice(session: Session, config: Config, token: Token, text: str,
                    sender: str) -> str:
    """A moderator answered a held-post notice (stub: to be written)."""
    return ""
