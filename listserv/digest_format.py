"""How a digest issue reads: its posts grouped by thread, the MIME form (a table of
contents, then the posts as message/rfc822) and the RFC 1153 plain form, each with
the list's fields. `digest` gathers the posts and queues what this module writes;
nothing here reads or writes the store.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import quote

from listserv import compose, headers, privacy, slots, thread, urls, view
from listserv.address import ListAddresses, Purpose
from listserv.enums import ArchivePolicy
from listserv.models import MailingList
from listserv.templating import render

# --- what an issue holds ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One post as a digest (and its archive page) shows it."""

    position: int
    message_id: str
    subject: str
    author: str
    from_header: str
    date: datetime
    thread_id: str
    thread_subject: str
    raw: bytes = b""
    message_pk: int = 0


@dataclass(frozen=True)
class Group:
    subject: str
    entries: list[Entry]


def by_thread(entries: Iterable[Entry]) -> list[Group]:
    """Entries grouped by thread, threads in the order their first entry came."""
    groups: dict[str, Group] = {}
    for entry in entries:
        group = groups.setdefault(entry.thread_id, Group(entry.thread_subject, []))
        group.entries.append(entry)
    return list(groups.values())


# --- how it reads ---------------------------------------------------------------------

def reply_subject(subject: str) -> str:
    return "Re: " + thread.strip_prefixes(subject)


def reply_link(addresses: ListAddresses, message_id: str, subject: str) -> str:
    """A mailto: that answers one post on the list, in its thread (RFC 6068)."""
    return (f"mailto:{addresses.posting}?In-Reply-To={quote(f'<{message_id}>', safe='')}"
            f"&subject={quote(reply_subject(subject), safe='')}")


def issue_url(base_url: str, addresses: ListAddresses, volume: int, number: int) -> str:
    return f"{urls.archive_url(base_url, addresses)}digest/{volume}/{number}/"


_SEPARATOR = "-" * 30  # between messages (RFC 1153)
_STUFFED = re.compile(r"^(-{30})$", re.MULTILINE)


def _item_text(raw: bytes) -> str:
    """A post's readable text for the plain digest; a line that would read as the
    message separator gets a space in front (RFC 1153)."""
    return _STUFFED.sub(r" \1", view.plain_text(raw).replace("\r\n", "\n").strip("\n"))


def issue_context(mlist: MailingList, base_url: str, volume: int, number: int,
                  entries: Sequence[Entry]) -> dict:
    """What the templates of an issue read, shared by its two forms."""
    addresses = ListAddresses(mlist.address)
    web = mlist.archive is not ArchivePolicy.OFF

    def item(entry: Entry) -> dict:
        return {"position": entry.position, "message_id": entry.message_id,
                "subject": entry.subject, "author": entry.author, "from": entry.from_header,
                "date": format_datetime(entry.date),
                "reply_url": reply_link(addresses, entry.message_id, entry.subject),
                "web_url": urls.message_url(base_url, addresses, entry.message_id)
                if web else ""}
    groups = by_thread(entries)
    return {"name": mlist.name, "addresses": addresses, "volume": volume, "number": number,
            "subject": subject_of(mlist.name, volume, number),
            "threads": [{"subject": g.subject, "entries": [item(e) for e in g.entries]}
                        for g in groups],
            "items": [item(e) for e in entries],
            "separator": _SEPARATOR, "header": "",  # the owners' digest_header: digest.build
            "issue_url": issue_url(base_url, addresses, volume, number) if web else ""}


def subject_of(name: str, volume: int, number: int) -> str:
    return render("mail/digest_subject.txt", name=name, volume=volume, number=number).strip()


def digest_message_id(addresses: ListAddresses, volume: int, number: int, form: str) -> str:
    """Names the list and the issue, so a reply's In-Reply-To leads back to it."""
    return f"{addresses.local}.digest.{volume}.{number}.{form}.{secrets.token_hex(6)}@" \
           f"{addresses.domain}"


def _boundary(parts: Sequence[bytes]) -> bytes:
    while True:
        boundary = b"=_digest_" + secrets.token_hex(12).encode()
        if not any(boundary in part for part in parts):
            return boundary


def _eight_bit(data: bytes) -> bytes:
    """The transfer encoding an entity holding `data` must declare (RFC 2045 6.4)."""
    return b"" if data.isascii() else b"Content-Transfer-Encoding: 8bit\r\n"


def _multipart(kind: str, parts: Sequence[bytes]) -> bytes:
    """A multipart entity (header and body) holding `parts` (each a whole entity)."""
    boundary = _boundary(parts)
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (f'Content-Type: multipart/{kind}; boundary="'.encode() + boundary + b'"\r\n'
            + _eight_bit(body) + b"\r\n" + body + b"--" + boundary + b"--\r\n")


def mime_body(context: dict, entries: Sequence[Entry]) -> bytes:
    """multipart/mixed: the table of contents, then a multipart/digest of the posts as
    message/rfc822, each the stored bytes (RFC 2046 5.1.5) less the fields that show
    where its poster was (see privacy)."""
    posts = [b"Content-Type: message/rfc822\r\n" + _eight_bit(e.raw) + b"\r\n"
             + headers.crlf(privacy.public(e.raw)) for e in entries]
    toc = headers.text_part(render("mail/digest_toc.txt", **context))
    return _multipart("mixed", [toc, _multipart("digest", posts)])


def plain_body(context: dict, entries: Sequence[Entry]) -> bytes:
    """RFC 1153: one text/plain body in UTF-8, each post as its readable text (made
    here: only this form has it)."""
    items = [item | {"text": _item_text(e.raw)}
             for item, e in zip(context["items"], entries, strict=True)]
    return headers.text_part(render("mail/digest_plain.txt", **context | {"items": items}))


@dataclass(frozen=True)
class Form:
    """One form of an issue: the copy members get (with their own List-Unsubscribe in a
    slot) and the same bytes with the plain mailto: form, as the archive keeps it."""

    copy: slots.Copy
    archived: bytes


def form(mlist: MailingList, base_url: str, context: dict, body: bytes, kind: str,
         date: datetime, personal: tuple[slots.Slot, str] | None = None) -> Form:
    """`personal`, for a summary: a slot of text with each member's links that ends the
    body, and the text the archive keeps in its place."""
    addresses = context["addresses"]
    message_id = digest_message_id(addresses, context["volume"], context["number"], kind)
    fields = [("From", headers.mailbox(mlist.name, addresses.at(Purpose.REQUEST))),
              ("To", addresses.posting), ("Reply-To", addresses.posting),
              ("Subject", headers.unstructured(context["subject"])),
              ("Date", format_datetime(date)), ("Message-ID", f"<{message_id}>")]
    fields += [(k, v) for k, v in compose.list_headers(
        addresses, mlist.name, base_url, message_id,
        archived=mlist.archive is not ArchivePolicy.OFF) if k != "Archived-At"]
    if context["issue_url"]:
        fields.append(("Archived-At", f"<{context['issue_url']}>"))
    head = headers.render_fields(fields)
    rest = b"MIME-Version: 1.0\r\n" + body
    slot = compose.unsubscribe_header(addresses, base_url)
    leave = f"List-Unsubscribe: <mailto:{addresses.at(Purpose.LEAVE)}>\r\n".encode()
    if personal is None:
        return Form(slots.Copy(head + rest, (dataclasses.replace(slot, at=len(head)),)),
                    head + leave + rest)
    text, archived = personal
    return Form(slots.Copy(head + rest, (dataclasses.replace(slot, at=len(head)),
                                         dataclasses.replace(text, at=len(head + rest)))),
                head + leave + rest + headers.crlf(archived.encode()))
