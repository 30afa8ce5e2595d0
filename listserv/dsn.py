"""Delivery reports in, failed recipients out: the DSN and ARF reader.

Mail to `LIST-bounces@` is a delivery report about one of our copies. Read it to find
the recipients that failed, each a `failure.Failure` with its RFC 3463 status and the
class `failure.classify` gives it. Standard reports (RFC 3464) carry that in fields; the
rest (qmail, Exim, old Exchange, Yahoo, ...) only in prose, so the prose is read with
heuristics. Spam complaints (RFC 5965 feedback reports) are a different thing and come
back as a `Complaint`. Nothing here touches the database, and no input makes it raise.
"""

from __future__ import annotations

import email
import email.message
import email.utils
import html
import re
from dataclasses import dataclass, field

from listserv.address import parse_mailbox
from listserv.failure import BounceClass, Failure, classify, diagnostic, find_status


@dataclass(frozen=True)
class Complaint:
    """An RFC 5965 feedback report: a recipient marked the copy as spam."""

    address: str  # who complained: Original-Rcpt-To, else the reported message's To
    feedback_type: str  # "abuse", "fraud", ... as the report says, lower case


@dataclass
class BounceReport:
    """What one mail to the bounces address says."""

    failures: list[Failure] = field(default_factory=list)
    complaint: Complaint | None = None


# --- the returned copy ----------------------------------------------------------------

@dataclass(frozen=True)
class ReturnedCopy:
    """What a bounce shows of the copy that failed: enough to find the post it carried."""

    message_id: str  # without angle brackets, "" when not shown
    from_address: str  # the copy's From, lower case, "" when not shown


def returned_copy(raw: bytes) -> ReturnedCopy:
    """The Message-ID and From of the copy a bounce returns, so a refusal for policy
    (DMARC, spam) can be put down to the post's author rather than the recipient.
    Never raises; empty fields when the report returns no headers."""
    try:
        message = email.message_from_bytes(raw)
        part = next((p for p in message.walk() if p.get_content_type() in _EMBEDDED), None)
        if part is None:
            return ReturnedCopy("", "")
        headers = _embedded_headers(part)
        message_id = str(headers.get("Message-ID", "")).strip().strip("<>").strip()
        return ReturnedCopy(message_id, _address_of(str(headers.get("From", ""))).lower())
    except Exception:  # noqa: BLE001  bad mail of any shape, as in parse_bounce
        return ReturnedCopy("", "")


# --- entry point ----------------------------------------------------------------------

def parse_bounce(raw: bytes) -> BounceReport:
    """Read a mail that came to the bounces address; never raises, whatever the bytes.

    An RFC 5965 spam complaint is returned as such; a message/delivery-status part is
    trusted over the prose; with neither, the notification text is read for addresses.
    """
    try:
        message = email.message_from_bytes(raw)
        if not message.keys():
            return BounceReport()
        complaint = _complaint(message)
        if complaint:
            return BounceReport(complaint=complaint)
        dsn = _dsn_failures(message)
        if dsn is not None:
            return BounceReport(failures=dsn)
        return BounceReport(failures=_text_failures(message))
    except Exception:  # noqa: BLE001  bad mail of any shape (deep nesting, bad charsets)
        return BounceReport()


# --- MIME walking ---------------------------------------------------------------------

_EMBEDDED = {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"}


def _leaves(message: email.message.Message) -> list[email.message.Message]:
    """Every leaf of the report, never those inside the returned original message,
    whose own headers and text would otherwise look like the report's."""
    if message.get_content_type() in _EMBEDDED:
        return []
    if message.is_multipart() and message.get_content_type() != _DSN:
        return [leaf for sub in _parts(message) for leaf in _leaves(sub)]
    return [message]


def _parts(message: email.message.Message) -> list[email.message.Message]:
    """The parts of a multipart or message/* part (none of any other): the stdlib types
    a payload loosely, as a list of parts or text."""
    payload = message.get_payload()
    if not isinstance(payload, list):
        return []
    return [p for p in payload if isinstance(p, email.message.Message)]


def _text(part: email.message.Message) -> str:
    """A part's payload decoded, in whatever charset it claims or Latin-1 when that is
    unknown (UTF-7 and "unicode-1-1-utf-7" from old Exchange included)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):  # None for a multipart
        payload = str(part.get_payload()).encode("latin-1", "replace")
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1")


# --- RFC 5965 feedback reports --------------------------------------------------------

def _complaint(message: email.message.Message) -> Complaint | None:
    if message.get_content_type() != "multipart/report":
        return None
    report_type = email.utils.collapse_rfc2231_value(message.get_param("report-type") or "")
    if report_type.lower() != "feedback-report":
        return None
    fields: email.message.Message | None = None
    to = ""
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype == "message/feedback-report":
            fields = _fields(part)
        elif ctype in _EMBEDDED and not to:
            to = _embedded_to(part)
    if fields is None:
        return None
    rcpt = _address_of(fields.get("Original-Rcpt-To", "")) or to
    if not rcpt:
        return None
    return Complaint(rcpt, str(fields.get("Feedback-Type", "")).strip().lower())


def _embedded_to(part: email.message.Message) -> str:
    """The To of the reported copy; providers often redact it, then there is none."""
    return _address_of(str(_embedded_headers(part).get("To", "")))


def _embedded_headers(part: email.message.Message) -> email.message.Message:
    """The header fields of a returned copy (message/rfc822 or text/rfc822-headers)."""
    inner = _parts(part)
    return inner[0] if inner else email.message_from_string(str(part.get_payload()))


def _fields(part: email.message.Message) -> email.message.Message:
    """The fields of a report part as one header block: the stdlib parses a message/*
    part into header blocks, but leaves a base64 or quoted-printable one as a body."""
    if part.is_multipart():
        merged = email.message.Message()
        for block in _parts(part):
            for name, value in block.items():
                merged[name] = value
        return merged
    return email.message_from_string(_text(part).lstrip())


# --- RFC 3464 delivery status notifications -------------------------------------------

# RFC 3464 2.3.3: these say the copy went on. Every other Action is a failure: the
# standard "failed" and "delayed", and what some MTAs write instead ("failure", "error").
_DSN = "message/delivery-status"
_SUCCESS_ACTIONS = {"delivered", "relayed", "expanded"}


def _dsn_failures(message: email.message.Message) -> list[Failure] | None:
    """Failures from every message/delivery-status part; None when the mail has no
    per-recipient block at all, so the prose is read instead.

    The part is looked for anywhere, not only in multipart/report: Lotus and some
    webmail bounces put it in a multipart/mixed.
    """
    reports = [p for p in _leaves(message) if p.get_content_type() == _DSN]
    if not reports:
        # A bounce forwarded by a person or a relay: the DSN is in an attachment.
        reports = [p for p in message.walk() if p.get_content_type() == _DSN]
    blocks = [b for part in reports for b in _dsn_blocks(part)]
    recipients = [b for b in blocks if b.get("Final-Recipient") or b.get("Original-Recipient")]
    if not recipients:
        return None
    failures: dict[str, Failure] = {}
    for block in recipients:
        failure = _dsn_failure(block)
        if failure and failure.address.lower() not in failures:
            failures[failure.address.lower()] = failure
    return list(failures.values())


def _dsn_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The per-message block and the per-recipient blocks (RFC 3464 section 2)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, email.message.Message)]
    # Base64 or quoted-printable delivery-status arrives as a body; split it ourselves.
    text = _text(part).replace("\r\n", "\n")
    return [email.message_from_string(b.strip() + "\n")
            for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def _dsn_failure(block: email.message.Message) -> Failure | None:
    action = str(block.get("Action", "")).strip().lower().split(" ")[0]
    status = find_status(str(block.get("Status", "")))
    if action in _SUCCESS_ACTIONS:
        return None
    if not action and not status.startswith(("4.", "5.")):
        return None  # no Action and no failure status: nothing says it failed
    # Original-Recipient is the address as we sent it (the member's), Final-Recipient
    # where a forward or alias ended (PMDF, Postfix "expanded from"): prefer ours.
    address = (_address_of(str(block.get("Original-Recipient", "")))
               or _address_of(str(block.get("Final-Recipient", ""))))
    if not address:
        return None
    words = diagnostic(_strip_type(str(block.get("Diagnostic-Code", ""))))
    # A generic Status (5.0.0) next to a precise code in the server's reply: the reply wins.
    if not status or status.endswith(".0.0"):
        status = find_status(f"{words} {status}")
    bounce_class = (BounceClass.TRANSIENT if action == "delayed"
                    else classify(status, words))
    return Failure(address, status, words, bounce_class)


def _strip_type(value: str) -> str:
    """RFC 3464 typed values, "rfc822; user@host" or "smtp; 550 ...", without the type."""
    kind, semi, rest = value.partition(";")
    return rest if semi and re.fullmatch(r"\s*[\w-]+\s*", kind) else value


# --- addresses in prose ---------------------------------------------------------------

_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
# Addresses that write reports, never receive our copies.
_ROBOTS = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|"
                     r"daemon|root|abuse|noreply|no-reply|bounces?)$", re.I)


def _address_of(value: str) -> str:
    """A clean address out of a DSN field or a header, or ""."""
    found = _clean(_strip_type(value))
    if found:
        return found
    mailbox = parse_mailbox(value)
    return mailbox[1] if mailbox else ""


def _clean(text: str) -> str:
    match = _ADDRESS.search(text)
    if not match:
        return ""
    local, _, domain = match.group(0).rpartition("@")
    # Old Exchange writes X.400 with the address inside: "dda:SMTP=user@host".
    local = re.sub(r"^.*\bSMTP=", "", local, flags=re.I)
    # Prose punctuation that the address grammar allows: "'user@host'", "...user@host".
    local = local.lstrip(".'`")
    # A dot-atom (RFC 5322 3.2.3) never ends in "." nor has "..": "david...@gmail.com"
    # is an address some MTAs shortened, not david@gmail.com.
    if not local or local.endswith(".") or ".." in local:
        return ""
    return f"{local}@{domain.lower()}"


# --- non-standard reports -------------------------------------------------------------

# Lines where the returned original begins: what follows is the sender's mail, not
# the report (qmail "--- Below this line is a copy", Exim "------ This is a copy",
# smtp32 "Original message follows.", Postfix "Undelivered Message" and friends).
_ORIGINAL_STARTS = re.compile(
    r"^\s*(?:[-=*_]{2,}.*(?:original|copy of|returned|undelivered|unsent|headers? of|"
    r"message (?:text|headers|follows))|"
    r"(?:-+ ?)?original message\b|(?:---+ )?begin (?:of )?(?:original|returned)|"
    r"(?:Return-Path|Received):)",
    re.I)
# The report says something failed; a mail without such words (an auto-reply, a
# newsletter) is not read for addresses at all.
_FAILURE_WORDS = re.compile(
    r"undeliver|could(?: not|n't) be delivered|not (?:yet )?(?:been )?delivered|fail|"
    r"unable to deliver|did not reach|returned mail|no such|does not exist|rejected|"
    r"refused|bounced|quota|mailbox (?:is )?full|unknown|not found|invalid|error|"
    r"no mailbox",
    re.I)
_REPORT_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|notification|problem|warning)|returned mail|"
    r"failure notice|mail delivery|delayed mail|non-?delivery|could not be delivered",
    re.I)
# Lines that quote the original copy's own header fields or the SMTP envelope sender
# ("Your message To: the-list@...", "MAIL From:<list-bounces@...>"): never failures.
_QUOTED_HEADER = re.compile(
    r"^[\s>*-]*(From|To|Cc|Sender|Reply-To|Return-Path|Subject|Date|Sent|"
    r"Message-Id|Errors-To|In-Reply-To|References|List-[\w-]+|X-[\w-]+|"
    r"(?:[<>]{3}\s*)?MAIL FROM|Envelope-From)\s*:",
    re.I)


def _text_failures(message: email.message.Message) -> list[Failure]:
    """Failures named in the prose of a report that has no delivery-status part."""
    full = _report_text(message)
    text = _before_original(full)
    if not (_FAILURE_WORDS.search(text) or _from_robot(message)):
        return []
    ignore = _own_addresses(message)
    lines = text.splitlines()
    found = _named(lines, ignore, quoted=False)
    if not found:
        # Yahoo and Verizon name the recipient only in the quoted To of the copy.
        lines = full.splitlines()
        found = _named(lines, ignore, quoted=True)
    status = find_status(text) if len(found) == 1 else ""
    return [_prose_failure(address, lines, numbers, set(found), text, status)
            for address, numbers in found.values()]


def _named(lines: list[str], ignore: set[str], *, quoted: bool
           ) -> dict[str, tuple[str, list[int]]]:
    """Addresses in the report's lines (lower case -> as written, line numbers): outside
    quoted header fields, or, with `quoted`, in the quoted To and Cc only."""
    found: dict[str, tuple[str, list[int]]] = {}
    for number, line in enumerate(lines):
        header = _QUOTED_HEADER.match(line)
        quoted_to = header is not None and header.group(1).lower() in {"to", "cc"}
        if (quoted and not quoted_to) or (header and not quoted):
            continue
        for match in _ADDRESS.finditer(line):
            address = _clean(match.group(0))
            if address and not _ignored(address, line, ignore):
                found.setdefault(address.lower(), (address, []))[1].append(number)
    return found


def _from_robot(message: email.message.Message) -> bool:
    """From a mail system (MAILER-DAEMON, postmaster, "Mail Delivery System") or with
    a report's Subject: a bounce even when its prose is in a language we cannot read."""
    sender = str(message.get("From", ""))
    subject = str(message.get("Subject", ""))
    return bool(re.search(r"mailer-daemon|postmaster|mail[ ._]delivery", sender, re.I)
                or _REPORT_SUBJECT.search(subject))


def _ignored(address: str, line: str, own: set[str]) -> bool:
    local = address.rpartition("@")[0]
    if address.lower() in own or _ROBOTS.match(local):
        return True
    # Message-ids look like addresses: skip lines that name one, and "<...$...@host>"
    # ids (Exchange, smtp32) in angle brackets.
    return bool(re.search(r"message-?id|<[^<>]*\$", line, re.I))


def _own_addresses(message: email.message.Message) -> set[str]:
    """The report's own From, To and Sender: the reporting robot and the list's bounce
    address. Neither is a recipient that failed."""
    own = set()
    for name in ("From", "To", "Cc", "Sender", "Reply-To", "Return-Path"):
        for value in message.get_all(name, []):
            for match in _ADDRESS.finditer(str(value)):
                own.add(_clean(match.group(0)).lower())
    return own


def _prose_failure(address: str, lines: list[str], numbers: list[int],
                   addresses: set[str], whole: str, sole_status: str) -> Failure:
    """One named address, with the status and words around it; `sole_status` is the
    report's code when it names no other address (Dragonfly and Mimecast put the code
    paragraphs away from the address)."""
    chunks = [_chunk(lines, n, addresses) for n in numbers]
    context = " ".join(" ".join(chunk) for chunk in chunks)
    status = find_status(context) or sole_status
    bounce_class = classify(status, context)
    if bounce_class is BounceClass.UNKNOWN and not status:
        # qmail and Exim state permanence once for all addresses, in the intro.
        bounce_class = classify(find_status(whole), whole)
    return Failure(address, status, diagnostic(" ".join(chunks[0])), bounce_class)


def _chunk(lines: list[str], start: int, addresses: set[str], most: int = 8) -> list[str]:
    """The address's line and the lines that explain it: up to the next failed
    address, or the blank line after the explanation."""
    own = {a.lower() for a in map(_clean, _ADDRESS.findall(lines[start])) if a}
    chunk = [lines[start]]
    explained = bool(_ADDRESS.sub("", lines[start]).strip(" \t<>:,;()[]."))
    for line in lines[start + 1: start + most]:
        named = {a.lower() for a in map(_clean, _ADDRESS.findall(line)) if a}
        if named & (addresses - own):
            break
        if not line.strip():
            if explained:
                break
            continue
        chunk.append(line)
        explained = True
    return chunk


def _report_text(message: email.message.Message) -> str:
    """The human-readable report: its text parts (HTML only when there is no plain)."""
    texts: list[str] = []
    for part in _leaves(message):
        ctype = part.get_content_type()
        if ctype == "text/plain" or (ctype == "text/html" and not texts):
            body = _text(part)
            texts.append(_untag(body) if ctype == "text/html" else body)
    return "\n".join(texts)


def _before_original(text: str) -> str:
    """The report up to where the returned original begins."""
    out = []
    for line in text.splitlines():
        if _ORIGINAL_STARTS.match(line):
            break
        out.append(line)
    return "\n".join(out)


def _untag(markup: str) -> str:
    """HTML reports (GroupWise, Exchange) as text; "<user@host>" is not a tag."""
    markup = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", markup)
    return html.unescape(re.sub(r"<(?![^<>]*@)[^<>]*>", " ", markup))
