"""What a reader sees of a stored message: its readable text (a first cut; the archive
pages' rendering lands with the web archive)."""

from __future__ import annotations

import email
import email.policy


def plain_text(raw: bytes, limit: int = 65536) -> str:
    """The readable text of a message for the search index: its text/plain body."""
    try:
        mail = email.message_from_bytes(raw, policy=email.policy.default)
        part = mail.get_body(preferencelist=("plain",))
        return part.get_content()[:limit] if part is not None else ""
    except Exception:  # noqa: BLE001  bad charsets and broken MIME raise many kinds
        return ""
