"""The content filter: what of a post its copies, its digests and the archive's pages
carry, by the list's `pass_types`, `collapse_alternatives`, `html_to_text` and
`max_attachment_bytes`. The stored bytes stay as received (the evidence); the filtered
form is made from them wherever a post leaves the store.

Only the parts the filter changes are written anew: every other part keeps its bytes,
and a list with the filter off gets the very same bytes object back, never parsed. A
removed part leaves a short text/plain note in its place (templates/mail/removed_part.txt)
naming what it was, except a version of a multipart/alternative: another version
carries the post, and a note there would be the version mail clients show.
"""

from __future__ import annotations

from dataclasses import dataclass

from listserv import html_text, mime, view
from listserv.headers import crlf, field_name, split_head, text_part
from listserv.models import MailingList
from listserv.slots import Edit, apply_edits
from listserv.templating import render

# Always passed: the text of a post, and the filter's own notes.
ALWAYS_PASSED = frozenset({"text/plain"})


@dataclass(frozen=True)
class Rules:
    """A list's filter settings; all off (the default) keeps every byte."""

    pass_types: tuple[str, ...] = ()  # "image/png", or "image/*"; () keeps every type
    collapse_alternatives: bool = False
    html_to_text: bool = False
    max_attachment_bytes: int = 0  # 0: no limit

    @property
    def active(self) -> bool:
        return bool(self.pass_types or self.collapse_alternatives or self.html_to_text
                    or self.max_attachment_bytes)

    def passes(self, content_type: str) -> bool:
        if not self.pass_types or content_type in ALWAYS_PASSED:
            return True
        major = content_type.partition("/")[0] + "/*"
        return content_type in self.pass_types or major in self.pass_types


OFF = Rules()  # what a list that never set them has


def rules(mlist: MailingList) -> Rules:
    return Rules(tuple(mlist.pass_types.split()), mlist.collapse_alternatives,
                 mlist.html_to_text, mlist.max_attachment_bytes)


@dataclass(frozen=True)
class Removed:
    """A part the filter took out, as its note names it."""

    filename: str  # as the archive would offer it for download
    content_type: str
    size: int  # decoded bytes
    why: str  # "type" (not in pass_types), "size" (max_attachment_bytes), "limits" (mime's)


@dataclass(frozen=True)
class Filtered:
    data: bytes  # the post as it leaves the store: `raw` itself when nothing changed
    removed: tuple[Removed, ...] = ()


def apply(raw: bytes, rules: Rules) -> Filtered:
    """The post as copies and pages carry it (CRLF line ends once anything changed)."""
    if not rules.active:
        return Filtered(raw)
    data = crlf(raw)
    walk = _Walk(data, rules)
    top = mime.parse(data)
    outcome = walk.verdict(top, in_alternative=False)
    if outcome is None and not walk.edits:
        return Filtered(raw)
    if outcome is None:
        out = b"".join(p for p in apply_edits(data, walk.edits) if isinstance(p, bytes))
    else:
        out = _new_body(data, outcome if isinstance(outcome, bytes) else walk.note(outcome))
    return Filtered(out, tuple(walk.removed))


def filtered(raw: bytes, mlist: MailingList) -> bytes:
    """The list's form of a stored post (see apply)."""
    return apply(raw, rules(mlist)).data


def _new_body(data: bytes, entity: bytes) -> bytes:
    """The message with `entity` (Content-* fields and body) as its whole body."""
    fields, _ = split_head(data)
    kept = [f for f in fields if not field_name(f).startswith(b"content-")]
    if not any(field_name(f) == b"mime-version" for f in kept):
        kept.append(b"MIME-Version: 1.0\r\n")
    inner, body_at = split_head(entity)
    content = [f for f in inner if field_name(f).startswith(b"content-")]
    return b"".join(kept + content) + b"\r\n" + entity[body_at:]


Verdict = bytes | Removed | None  # a new entity for the part; taken out; kept (maybe edited)


class _Walk:
    """One pass over the MIME tree: the edits inside kept multiparts, and what went."""

    def __init__(self, data: bytes, rules: Rules) -> None:
        self.data = data
        self.rules = rules
        self.edits: list[Edit] = []
        self.removed: list[Removed] = []

    def note(self, removed: Removed) -> bytes:
        text = render("mail/removed_part.txt", filename=removed.filename,
                      content_type=removed.content_type, size=removed.size, why=removed.why,
                      limit=self.rules.max_attachment_bytes)
        return text_part(text)

    def _remove(self, part: mime.Part, why: str) -> Removed:
        found = view.describe(len(self.removed), part)
        removed = Removed(found.filename, part.declared_type, found.size, why)
        self.removed.append(removed)
        return removed

    def verdict(self, part: mime.Part, *, in_alternative: bool) -> Verdict:
        if part.limited:
            return self._remove(part, "limits")
        if part.children is None:
            return self._leaf(part, in_alternative)
        alternative = part.content_type == "multipart/alternative"
        if alternative and self.rules.collapse_alternatives:
            plain = _plain_version(part.children)
            if plain is not None:
                return self.data[plain.start:plain.end]
        verdicts = [self.verdict(child, in_alternative=in_alternative or alternative)
                    for child in part.children]
        if alternative and any(isinstance(v, Removed) for v in verdicts):
            return self._drop_versions(part.children, verdicts)
        self.edits += [(child.start, child.end, [v if isinstance(v, bytes) else self.note(v)])
                       for child, v in zip(part.children, verdicts, strict=True)
                       if v is not None]
        return None

    def _drop_versions(self, children: list[mime.Part], verdicts: list[Verdict]) -> Verdict:
        """An alternative without the versions removed (delimiter lines and all), or,
        with none left, removed itself: its first version's note stands for it."""
        kept = [i for i, v in enumerate(verdicts) if not isinstance(v, Removed)]
        if not kept:
            return next(v for v in verdicts if isinstance(v, Removed))
        first = kept[0]
        if first:  # the versions before the first kept one, up to its start
            self.edits.append((children[0].start, children[first].start, []))
        for i, v in enumerate(verdicts[first:], first):
            if isinstance(v, Removed):  # from the line end before its delimiter
                self.edits.append((children[i - 1].end, children[i].end, []))
            elif v is not None:
                self.edits.append((children[i].start, children[i].end, [v]))
        return None

    def _leaf(self, part: mime.Part, in_alternative: bool) -> Verdict:
        ctype, body = part.content_type, view.is_body(part)
        if ctype == "text/html" and body and self.rules.html_to_text and not in_alternative:
            return text_part(html_text.to_text(view.leaf_text(part)))
        if not self.rules.passes(ctype):
            return self._remove(part, "type")
        limit = self.rules.max_attachment_bytes
        # A transfer encoding never makes a part smaller: most parts are let through on
        # their encoded size, without decoding them.
        if limit and not body and len(part.raw_body) > limit and len(part.payload) > limit:
            return self._remove(part, "size")
        return None


def _plain_version(children: list[mime.Part]) -> mime.Part | None:
    """The text/plain version of an alternative, unless it is blank (some clients send
    an empty one beside the HTML, which would leave members nothing to read)."""
    return next((c for c in children if c.content_type == "text/plain" and view.is_body(c)
                 and c.payload.strip()), None)
