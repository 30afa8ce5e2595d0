"""Mail the server writes itself (confirmations, welcomes, held notices, replies):
rendered from templates/mail/, marked Auto-Submitted (RFC 3834), rate-limited per
address, and queued like any other delivery.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from typing import Any

from sqlalchemy import delete, func, select
from sqlmodel import Session

from listserv import outbox
from listserv.address import Purpose
from listserv.config import Config
from listserv.headers import crlf, mailbox, one_line, text_part
from listserv.models import AutoReply, MailingList, utcnow
from listserv.templating import render

log = logging.getLogger("listserv.notices")

DAY = timedelta(days=1)


def render_mail(template: str, **context: Any) -> tuple[str, str]:
    """(subject, body) of templates/mail/NAME.txt, whose first line is "Subject: ..."."""
    text = render(f"mail/{template}.txt", **context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"templates/mail/{template}.txt must start with a Subject: line")
    return first.removeprefix("Subject:").strip(), body.lstrip("\n")


def allowed(session: Session, config: Config, address: str) -> bool:
    """Count an automatic mail to `address` unless it already had its daily share."""
    now = utcnow()
    session.execute(delete(AutoReply).where(AutoReply.sent_at < now - DAY))
    sent = session.scalar(select(func.count()).select_from(AutoReply).where(
        AutoReply.address == address, AutoReply.sent_at >= now - DAY))
    if sent >= config.lists.max_autoreplies_per_day:
        log.info("not sending to %s: %d automatic mails in the last day", address, sent)
        return False
    session.add(AutoReply(address=address, sent_at=now))
    return True


# A notice's subject names the post it is about, whose subject may be one word of a
# megabyte: the email package folds a word that long in quadratic time (an 8 MB one
# held the receiver's writer for a minute). The body still quotes the subject whole.
SUBJECT_CHARS = 200


def _subject(text: str) -> str:
    text = one_line(text)
    return text if len(text) <= SUBJECT_CHARS else text[:SUBJECT_CHARS - 3] + "..."


def write(mlist: MailingList, to: str, subject: str, body: str, *,
            from_purpose: Purpose = Purpose.REQUEST, reply_to: str | None = None,
            attach: bytes | None = None, auto: str = "auto-replied",
            in_reply_to: str | None = None) -> bytes:
    """A notice as bytes; an attached post goes in verbatim as message/rfc822."""
    addresses = mlist.addresses
    head = EmailMessage(policy=SMTP)
    head["From"] = mailbox(mlist.name, addresses.at(from_purpose))
    head["To"] = to
    head["Subject"] = _subject(subject)
    head["Date"] = formatdate(localtime=False)
    head["Message-ID"] = make_msgid("listserv", addresses.domain)
    if in_reply_to:
        head["In-Reply-To"] = f"<{in_reply_to}>"
        head["References"] = f"<{in_reply_to}>"
    if reply_to:
        head["Reply-To"] = reply_to
    head["Auto-Submitted"] = auto
    head["X-Auto-Response-Suppress"] = "All"  # keeps Exchange out-of-office answers away
    head["MIME-Version"] = "1.0"
    text = text_part(body)
    headers = head.as_bytes().rstrip(b"\r\n") + b"\r\n"
    if attach is None:
        return headers + text
    boundary = b"=_listserv_" + secrets.token_hex(12).encode()
    return (headers + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            + b"--" + boundary + b"\r\n" + text + b"\r\n--" + boundary
            + b"\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
            + crlf(attach).rstrip(b"\r\n") + b"\r\n--" + boundary + b"--\r\n")


def send(session: Session, config: Config, mlist: MailingList, to: str, template: str, *,
         limit: bool = True, reply_to: str | None = None, attach: bytes | None = None,
         auto: str = "auto-replied", in_reply_to: str | None = None,
         from_purpose: Purpose = Purpose.REQUEST, own_body: str | None = None,
         about: int | None = None, **context: Any) -> bool:
    """Render and queue one notice; False when the daily limit for `to` stopped it.
    `own_body`, the list owners' text for this mail, replaces the template's body;
    `about`, the id of the post it carries, lets erasing that post reach the copy."""
    if limit and not allowed(session, config, to):
        return False
    addresses = mlist.addresses
    subject, body = render_mail(template, mlist=mlist, addresses=addresses,
                                base_url=config.web.base_url.rstrip("/"), **context)
    body = body if own_body is None else own_body
    data = write(mlist, to, subject, body, reply_to=reply_to, attach=attach, auto=auto,
                 in_reply_to=in_reply_to, from_purpose=from_purpose)
    outbox.queue(session, data, addresses.at(Purpose.BOUNCES), [to],
                 config.delivery.max_recipients_per_transaction, message_pk=about)
    return True
