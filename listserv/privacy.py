"""Header fields that reveal where a poster was: kept in the stored bytes, taken out of
what members and the public get.

Webmail services and some MTAs write the poster's own IP address into the post
(`X-Originating-IP`, `X-SenderIP`, ...). In a list's copies it shows every member where
the poster sat, and SpamAssassin reads it as one more relay without reverse DNS, which
costs the copy a spam score; on the archive's public pages it shows the world. The
database keeps the received bytes, which are the evidence.
"""

from __future__ import annotations

import re

# Lower-case names, as headers.field_name gives them.
POSTER_ADDRESS = frozenset({
    b"x-originating-ip", b"x-senderip", b"x-sender-ip", b"x-forwarded-for", b"x-real-ip",
    b"x-client-ip", b"x-remote-ip", b"x-remote-addr", b"x-source-ip", b"x-user-ip",
    b"x-yahoo-post-ip", b"x-aol-ip",
})

# A field by one of those names, with its continuation lines, whatever the line ends.
_FIELDS = re.compile(
    rb"^(?:" + b"|".join(re.escape(n) for n in sorted(POSTER_ADDRESS)) + rb")[ \t]*:"
    rb"[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*",
    re.IGNORECASE | re.MULTILINE)
_HEAD_END = re.compile(rb"\n\r?\n")


def public(raw: bytes) -> bytes:
    """The message as others may see it: the header without those fields, every other
    byte as stored (line ends included), and the same object when there is none."""
    end = _HEAD_END.search(raw)
    cut = end.start() + 1 if end else len(raw)
    head, found = _FIELDS.subn(b"", raw[:cut])
    return head + raw[cut:] if found else raw
