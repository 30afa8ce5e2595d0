"""Authentication-Results fields (RFC 8601) read: which MTA wrote each (its authserv-id)
and the results it gives, so the server can take the word of an MTA in front of it that
a post's From domain passed DMARC, and read its own DKIM results the same way.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from listserv.dmarc import aligned

_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class Result:
    method: str  # dkim, dmarc, spf, arc ... lower case
    result: str  # pass, fail, none ... lower case
    properties: dict[str, str] = field(default_factory=dict)  # header.d -> example.org


def read(value: str) -> tuple[str, list[Result]]:
    """The authserv-id (lower case) and the results of one field's value; comments,
    nested ones too, are dropped first."""
    text, previous = value, ""
    while text != previous:
        previous, text = text, _COMMENT.sub(" ", text)
    parts = text.split(";")
    words = parts[0].split()
    results = []
    for part in parts[1:]:
        tokens = part.split()
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        properties = {k.lower(): v.strip('"').lower()
                      for k, _, v in (t.partition("=") for t in tokens[1:]) if "." in k}
        results.append(Result(method.split("/")[0].lower(), result.lower(), properties))
    return (words[0].lower() if words else ""), results


def dmarc_pass(values: list[str], from_domain: str, trusted: Collection[str]) -> bool:
    """Whether a field written by a trusted MTA says the post passed DMARC for this From
    domain. Only trusted ones count: anyone can write the field, and the MTA must remove
    those that arrive with its own authserv-id (RFC 8601 section 5)."""
    ids = {t.lower() for t in trusted}
    for value in values:
        authserv, results = read(value)
        if authserv in ids and any(
                r.method == "dmarc" and r.result == "pass"
                and r.properties.get("header.from") == from_domain.lower() for r in results):
            return True
    return False


def dkim_pass(value: str, from_domain: str) -> bool:
    """Whether results (our own, signing.inbound_results) hold a DKIM pass whose signing
    domain aligns with the From domain."""
    return any(r.method == "dkim" and r.result == "pass"
               and aligned(r.properties.get("header.d", ""), from_domain)
               for r in read(value)[1])
