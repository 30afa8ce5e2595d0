#!/usr/bin/env python3
"""A realistic mailing-list mbox, deterministic from a seed, for the archive benchmark.

An archive is slow where real mail is awkward, so the mail is shaped like a real list's:
many one-message threads and a long tail up to 200 messages, reply trees with
References chains (and replies that have only In-Reply-To, or nothing and match by
"Re:" subject), a few messages without a Message-ID, ~1,500 senders (some with
RFC 2047-encoded names), five years of dates not in file order, bodies with quoted text
and signatures in utf-8 / iso-8859-1 / windows-1252, 8bit, quoted-printable or base64,
some multipart/alternative with HTML, a few base64 attachments, and words drawn from a
fixed vocabulary with a Zipf-like distribution, so that full-text search has common,
medium and rare words (`query_words`).

Only the thread structure (a few numbers per message) is held in memory; each message's
text comes from its own seeded generator and is written as soon as it is made.

    python bench/mbox_gen.py --messages 100000 --seed 1 out.mbox
"""

from __future__ import annotations

import argparse
import base64
import bisect
import datetime
import email.header
import email.utils
import itertools
import math
import quopri
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def _words(text: str) -> list[str]:
    return text.split()


VOCABULARY_SEED = 20260101  # the words are the same whatever the mbox seed
VOCABULARY_SIZE = 5000
ZIPF_EXPONENT = 1.1
SENDERS = 1500
YEARS = 5
START = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).timestamp()
LARGEST_THREAD = 200

# The head of the vocabulary: English function words first (the most frequent), then
# the words a software list talks about, then invented words for the long tail.
FUNCTION_WORDS = _words("""the of and to a in is it that for you this be on with as have are not
was but at or if can we by from all an so will what there do one would about when which
they more up out just like also has my some no any then than only use how should could
get does me other into see been now way think because need our know same here why still
most make these two first time new very even did""")
TOPIC_WORDS = _words("""server message list mail patch build release error config version test
file user problem question thread support install update change issue code option
package module function database query bug fix default command output network memory
kernel driver system setting document example branch commit review merge feature
request response client header address domain report log warning failure python
library interface window screen display format encoding charset attachment archive
search index page link browser security password account permission upgrade backup
storage disk cache thread socket timeout connection proxy certificate signature key
license project mailing subscriber moderator digest schedule meeting proposal vote
draft agenda summary benchmark performance latency throughput profile regression
compiler linker runtime debugger stack trace crash core dump segfault deadlock race
lock queue worker process scheduler cluster node replica shard migration schema table
column row transaction commit rollback snapshot""")
ONSETS = _words("b c d f g h j k l m n p r s t v w z br cr dr fl gr pl pr sk sl st tr ch sh "
          "th qu sp")
VOWELS = _words("a e i o u a e i o ai ea ou io")
CODAS = ["", "", "", "n", "r", "s", "l", "t", "m", "nd", "st", "x", "ck"]

FIRST_NAMES = _words("""James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth
William Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Lisa
Matthew Nancy Anthony Betty Mark Sandra Paul Ashley Steven Emily Andrew Kimberly Kevin
Donna Brian Michelle George Carol Timothy Amanda Ronald Melissa Jason Deborah Ryan
Stephanie Jacob Rebecca Gary Laura Nicholas Sharon Eric Cynthia Hans Petra Pieter
Anneke Lars Ingrid Marco Giulia Pierre Claire Ahmed Fatima Wei Mei Hiroshi Yuki Raj
Priya Ivan Olga Carlos Ana""")
LAST_NAMES = _words("""Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez
Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez
Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King
Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell
Mitchell Carter Roberts Jansen Visser Schmidt Fischer Weber Rossi Bianchi Dubois
Moreau Khan Wang Li Zhang Tanaka Suzuki Patel Sharma Petrov Silva Santos""")
# Names a sender may have instead, which need RFC 2047 in a From: header.
NON_ASCII_NAMES = _words("""José_García Zoë_Brontë Łukasz_Wiśniewski Jürgen_Müller
Søren_Kierkegård François_Lefèvre Ángel_Núñez Björn_Ångström Çağrı_Yılmaz
Dvořák_Antonín Иван_Петров Ольга_Смирнова 田中_太郎 李_伟 Νίκος_Παπαδόπουλος
Mónica_Sánchez Gérard_Depardieu Renée_Côté Håkon_Ødegård Zoltán_Kovács""")
DOMAINS = _words("""gmail.com yahoo.com outlook.com example.org example.com posteo.de
fastmail.fm university.edu corp.example.net mail.ru web.de free.fr proton.me
kernel.example.org debian.example.org""")
ZONES = [0, 0, 60, 60, 120, -300, -300, -360, -420, -480, 330, 480, 540, 600]
AGENTS = ["Mozilla Thunderbird", "Mutt/2.2.9", "Evolution 3.46", "Roundcube Webmail",
          "Microsoft Outlook 16.0", "Apple Mail (2.3731)", "Claws Mail 4.1.1", ""]
EXTRA_WORDS = {  # non-ASCII words each charset can carry in a body
    "utf-8": _words("café naïve über Zürich Привет 日本語 Ελληνικά → ✓ Łódź “quoted” €20"),
    "iso-8859-1": _words("café naïve über Zürich façade señor résumé déjà Ångström"),
    "windows-1252": _words("café naïve über “quoted” it’s €20 — façade résumé"),
    "us-ascii": [],
}
CHARSET_CODECS = {"utf-8": "utf-8", "iso-8859-1": "latin-1", "windows-1252": "cp1252",
                  "us-ascii": "ascii"}
ATTACHMENTS = [("application/pdf", "report.pdf"), ("image/png", "screenshot.png"),
               ("application/zip", "logs.zip"), ("application/octet-stream", "core.bin"),
               ("application/pdf", "résumé.pdf")]
FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                   for _ in range(rng.choice((1, 2, 2, 2, 3))))


def _vocabulary() -> list[str]:
    """The words by rank: real ones at the head, pronounceable invented ones in the tail."""
    rng = random.Random(VOCABULARY_SEED)
    words = list(dict.fromkeys(FUNCTION_WORDS + TOPIC_WORDS))
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        word = _pseudo_word(rng)
        if len(word) > 3 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


VOCABULARY = _vocabulary()
_WEIGHTS = list(itertools.accumulate(1 / rank ** ZIPF_EXPONENT
                                     for rank in range(1, VOCABULARY_SIZE + 1)))
_CONTENT_START = len(dict.fromkeys(FUNCTION_WORDS + TOPIC_WORDS))


def query_words() -> dict[str, list[str]]:
    """Search terms by how often they occur: common (a topic word in roughly one message
    in ten), medium (rank 500-700, about one in a few hundred) and rare (the last few
    hundred ranks, tens of messages at 100,000)."""
    topic = [w for w in VOCABULARY[len(FUNCTION_WORDS):_CONTENT_START] if len(w) > 3]
    return {"common": topic[:40], "medium": VOCABULARY[500:700],
            "rare": VOCABULARY[VOCABULARY_SIZE - 400:]}


# --- who writes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Sender:
    name: str
    address: str
    header: str  # the From: value as it goes on the wire (RFC 2047 when needed)
    zone: datetime.timezone
    agent: str
    gmail: bool  # Message-IDs like Gmail's, with + / = in them


def _encoded_name(name: str, rng: random.Random) -> str:
    if name.isascii():
        return f'"{name}"' if "," in name else name
    charset = "iso-8859-1" if rng.random() < 0.3 and _fits(name, "latin-1") else "utf-8"
    return email.header.Header(name, charset).encode()


def _fits(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def make_senders(rng: random.Random, count: int = SENDERS) -> list[Sender]:
    senders = []
    for i in range(count):
        if rng.random() < 0.12:
            first, last = rng.choice(NON_ASCII_NAMES).split("_")
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        ascii_name = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore")
        local = re.sub(r"[^a-z0-9.]", "", ascii_name.decode().lower()).strip(".") or "user"
        address = f"{local}{i}@{rng.choice(DOMAINS)}"
        name = f"{last}, {first}" if rng.random() < 0.05 else f"{first} {last}"
        header = address if rng.random() < 0.06 else f"{_encoded_name(name, rng)} <{address}>"
        zone = datetime.timezone(datetime.timedelta(minutes=rng.choice(ZONES)))
        senders.append(Sender(name, address, header, zone, rng.choice(AGENTS),
                              address.endswith("gmail.com")))
    return senders


# --- the thread structure ---------------------------------------------------------------

@dataclass(slots=True)
class Post:
    """What one message's headers need to know about the others."""

    index: int
    root: int  # index of the thread's first message
    parent: int | None
    date: float  # epoch seconds
    sender: int
    message_id: str | None  # None: the mail has no Message-ID header
    links: str  # "full", "irt" (In-Reply-To only), "refs" (References only), "none"
    words: int  # own text, without quotes


def _thread_sizes(rng: random.Random, total: int) -> list[int]:
    """Many single messages and a Pareto tail; at least one thread of the largest size so
    the thread page is timed at its worst."""
    sizes = [LARGEST_THREAD] * max(1, total // 25000) if total >= 4 * LARGEST_THREAD else []
    count = sum(sizes)
    while count < total:
        size = 1 if rng.random() < 0.42 else min(LARGEST_THREAD,
                                                  int(1 + rng.paretovariate(1.2)))
        size = min(size, total - count)
        sizes.append(size)
        count += size
    rng.shuffle(sizes)
    return sizes


def _sender_weights(count: int) -> list[float]:
    return list(itertools.accumulate(1 / rank ** 0.9 for rank in range(1, count + 1)))


def _message_id(rng: random.Random, index: int, sender: Sender) -> str:
    tag = f"{index:x}"
    if sender.gmail:
        return f"CA{base64.b64encode(rng.randbytes(24)).decode()}{tag}@mail.gmail.com"
    host = sender.address.split("@", 1)[1]
    if rng.random() < 0.5:
        return f"{rng.randbytes(8).hex()}-{tag}@{host}"
    return f"{rng.randrange(10**8):08d}.GA{tag}@{host}"


def plan(rng: random.Random, total: int, senders: list[Sender]) -> list[Post]:
    """Every message's place in its thread, in file order (roughly by date, not exactly)."""
    weights = _sender_weights(len(senders))
    order = list(range(len(senders)))
    rng.shuffle(order)  # who writes most is not who was made first
    posts: list[Post] = []
    span = YEARS * 365 * 86400
    for size in _thread_sizes(rng, total):
        root = len(posts)
        date = START + rng.random() * span
        for k in range(size):
            index = len(posts)
            sender = order[bisect.bisect(weights, rng.random() * weights[-1])]
            parent = None
            if k:
                parent = index - 1 if rng.random() < 0.55 else rng.randrange(root, index)
                date += rng.expovariate(1 / 21600) + (rng.random() < 0.05) * 86400 * 7
            message_id = (None if rng.random() < 0.003
                          else _message_id(rng, index, senders[sender]))
            links = rng.choices(("full", "irt", "refs", "none"), (80, 8, 4, 8))[0]
            words = int(min(6000, max(15, rng.lognormvariate(math.log(70), 0.9))))
            posts.append(Post(index, root, parent, date, sender, message_id, links, words))
    # Archives are concatenated by month or exported in arrival order: mostly by date,
    # but some messages are filed days or weeks away from where their date puts them.
    keys = [p.date + (rng.gauss(0, 20 * 86400) if rng.random() < 0.04 else 0) for p in posts]
    return [posts[i] for i in sorted(range(len(posts)), key=keys.__getitem__)]


# --- the text ---------------------------------------------------------------------------

def _rng(seed: int, index: int, part: int) -> random.Random:
    return random.Random((seed * 1_000_003 + index) * 4 + part)


def _wrap(words: list[str], width: int = 72) -> list[str]:
    lines, line, length = [], [], 0
    for word in words:
        if line and length + 1 + len(word) > width:
            lines.append(" ".join(line))
            line, length = [], 0
        line.append(word)
        length += len(word) + (length > 0)
    if line:
        lines.append(" ".join(line))
    return lines


def _sentences(rng: random.Random, count: int, extra: list[str]) -> list[str]:
    words = rng.choices(VOCABULARY, cum_weights=_WEIGHTS, k=count)
    if extra:
        for _ in range(max(1, count // 60)):
            words[rng.randrange(count)] = rng.choice(extra)
    if rng.random() < 0.2:  # versions, hashes and paths: the rare tokens of a real list
        words[rng.randrange(count)] = rng.choice((
            f"{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(40)}",
            rng.randbytes(4).hex(), f"src/{rng.choice(VOCABULARY)}/{rng.choice(VOCABULARY)}.c"))
    out, i = [], 0
    while i < count:
        n = rng.randint(5, 18)
        chunk = words[i:i + n]
        chunk[0] = chunk[0].capitalize()
        out.append(" ".join(chunk) + rng.choices(".?!", (85, 10, 5))[0])
        i += n
    return out


def own_text(seed: int, post: Post, charset: str) -> list[str]:
    """The lines this message adds (no quotes, no signature); the same lines every time it
    is asked for, because a reply quotes them."""
    rng = _rng(seed, post.index, 0)
    sentences = _sentences(rng, post.words, EXTRA_WORDS[charset])
    lines: list[str] = []
    while sentences:
        n = rng.randint(2, 6)
        paragraph = " ".join(sentences[:n]).split()
        del sentences[:n]
        if rng.random() < 0.03:  # a line an mbox reader would take for a separator
            paragraph[0] = "From"
        lines += [*_wrap(paragraph), ""]
    return lines[:-1]


def _quoted(lines: list[str], rng: random.Random) -> list[str]:
    keep = lines if rng.random() < 0.3 else lines[:rng.randint(3, 15)]
    return [f"> {line}" if line else ">" for line in keep]


def body_lines(seed: int, post: Post, posts: dict[int, Post], senders: list[Sender],
               charset: str, rng: random.Random) -> list[str]:
    """Own text, the parent's own text quoted (bottom-posted, interleaved or top-posted)
    and a signature. The reply is written in its own charset: what the parent had that it
    cannot carry becomes "?", as mail clients do."""
    own = own_text(seed, post, charset)
    lines = own
    if post.parent is not None:
        parent = posts[post.parent]
        quoted = _quoted(own_text(seed, parent, _charset_of(seed, parent)), rng)
        when = datetime.datetime.fromtimestamp(parent.date, datetime.UTC)
        attribution = f"On {when:%a, %d %b %Y at %H:%M}, {senders[parent.sender].name} wrote:"
        style = rng.random()
        if style < 0.6:
            lines = [attribution, *quoted, "", *own]
        elif style < 0.85:
            half = len(quoted) // 2
            split = len(own) // 2
            lines = [attribution, *quoted[:half], "", *own[:split], "", *quoted[half:], "",
                     *own[split:]]
        else:
            lines = [*own, "", attribution, *quoted]
    if rng.random() < 0.6:
        sender = senders[post.sender]
        lines += ["", "-- ", sender.name, _signature_line(post.sender)]
    return lines


def _signature_line(sender: int) -> str:
    rng = random.Random(VOCABULARY_SEED + sender)
    return " ".join(rng.choices(VOCABULARY[:800], k=rng.randint(3, 8))).capitalize()


# --- MIME -------------------------------------------------------------------------------

def _encode(text: str, charset: str, cte: str) -> bytes:
    data = text.encode(CHARSET_CODECS[charset], "replace")
    if cte == "quoted-printable":
        return quopri.encodestring(data)
    if cte == "base64":
        return base64.encodebytes(data)
    return data


def _text_part(text: str, subtype: str, charset: str, cte: str) -> bytes:
    return (f"Content-Type: text/{subtype}; charset={charset}\n"
            f"Content-Transfer-Encoding: {cte}\n\n").encode() + _encode(text, charset, cte)


def _html(lines: list[str]) -> str:
    """The same text as an HTML mail client would send it: paragraphs and blockquotes."""
    out, quote = ["<html><body>"], False
    for line in lines:
        is_quote = line.startswith(">")
        if is_quote != quote:
            out.append("<blockquote>" if is_quote else "</blockquote>")
            quote = is_quote
        text = line.lstrip("> ").replace("&", "&amp;").replace("<", "&lt;")
        out.append(f"<p>{text}</p>" if text else "<br>")
    out.append("</blockquote></body></html>" if quote else "</body></html>")
    return "\n".join(out) + "\n"


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\n" + part.rstrip(b"\n") + b"\n" for part in parts)
    return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"\n\n'
            f"This is a multi-part message in MIME format.\n").encode() + body + \
        b"--" + b + b"--\n"


def _attachment(rng: random.Random) -> bytes:
    content_type, filename = rng.choice(ATTACHMENTS)
    size = int(min(140_000, max(2_000, rng.lognormvariate(math.log(30_000), 0.8))))
    disposition = (f'attachment; filename="{filename}"' if filename.isascii() else
                   f"attachment; filename*=utf-8''{email.utils.quote(filename)}")
    return (f'Content-Type: {content_type}; name="{filename}"\n'
            f"Content-Disposition: {disposition}\n"
            "Content-Transfer-Encoding: base64\n\n").encode() + \
        base64.encodebytes(rng.randbytes(size))


def _content(lines: list[str], charset: str, rng: random.Random, index: int) -> bytes:
    """The MIME body (with its Content-Type header): one text part, an HTML alternative,
    or either of those with an attachment."""
    if charset == "us-ascii":
        cte = "7bit"
    elif charset == "utf-8":
        cte = rng.choices(("8bit", "quoted-printable", "base64"), (55, 30, 15))[0]
    else:
        cte = rng.choices(("8bit", "quoted-printable", "base64"), (45, 50, 5))[0]
    text = "\n".join(lines) + "\n"
    part = _text_part(text, "plain", charset, cte)
    if rng.random() < 0.12:
        html = _text_part(_html(lines), "html", charset, "quoted-printable")
        part = _multipart("alternative", f"alt-{index:x}-{rng.randrange(10**6)}", [part, html])
    if rng.random() < 0.015:
        part = _multipart("mixed", f"mix-{index:x}-{rng.randrange(10**6)}",
                          [part, _attachment(rng)])
    return part


def _charset_of(seed: int, post: Post) -> str:
    """The charset decides which extra words the text may hold, so it is drawn from the
    message's own generator before anything else (a reply quotes in its own charset)."""
    return _rng(seed, post.index, 2).choices(
        ("utf-8", "iso-8859-1", "windows-1252", "us-ascii"), (65, 15, 12, 8))[0]


def _subject(seed: int, root: Post) -> str:
    rng = _rng(seed, root.index, 3)
    words = rng.choices(VOCABULARY[len(FUNCTION_WORDS):1500], k=rng.randint(3, 9))
    if rng.random() < 0.05:
        words.append(rng.choice(EXTRA_WORDS["utf-8"]))
    text = " ".join(words).capitalize()
    prefix = rng.choices(("", "[PATCH] ", "[RFC] ", "Question: ", "[ANN] "), (80, 8, 3, 6, 3))
    return prefix[0] + text


def _header(value: str) -> str:
    return value if value.isascii() else email.header.Header(value, "utf-8").encode()


def _references(post: Post, posts: dict[int, Post]) -> list[str]:
    chain, node = [], post.parent
    while node is not None:
        parent = posts[node]
        if parent.message_id:
            chain.append(parent.message_id)
        node = parent.parent
    chain.reverse()
    return chain if len(chain) <= 10 else [chain[0], *chain[-9:]]  # as clients trim them


def message_bytes(seed: int, post: Post, posts: dict[int, Post], senders: list[Sender],
                  list_address: str) -> bytes:
    """One message as it would be found in an mbox (LF line ends, not yet escaped)."""
    rng = _rng(seed, post.index, 1)
    sender = senders[post.sender]
    subject = _subject(seed, posts[post.root])
    if post.parent is not None:
        subject = (rng.choices(("Re: ", "RE: ", "Re: Re: ", "AW: "), (85, 7, 5, 3))[0]
                   if post.links != "none" else "Re: ") + subject
    when = datetime.datetime.fromtimestamp(post.date, sender.zone)
    received = datetime.datetime.fromtimestamp(post.date + rng.randint(1, 90), datetime.UTC)
    headers = [f"Received: from mx{rng.randrange(1, 9)}.{sender.address.split('@')[1]} "
               f"(mx.{list_address.split('@')[1]} [192.0.2.{rng.randrange(1, 255)}])\n"
               f"\tby mail.{list_address.split('@')[1]} with ESMTPS id {rng.randbytes(6).hex()}"
               f"\n\tfor <{list_address}>; {email.utils.format_datetime(received)}",
               f"From: {sender.header}", f"To: {list_address}",
               f"Subject: {_header(subject)}", f"Date: {email.utils.format_datetime(when)}"]
    if post.message_id:
        headers.append(f"Message-ID: <{post.message_id}>")
    refs = _references(post, posts) if post.parent is not None else []
    if refs and post.links in ("full", "irt") and posts[post.parent].message_id:
        headers.append(f"In-Reply-To: <{posts[post.parent].message_id}>")
    if refs and post.links in ("full", "refs"):
        headers.append("References: " + "\n ".join(f"<{r}>" for r in refs))
    if sender.agent:
        headers.append(f"User-Agent: {sender.agent}")
    headers.append("MIME-Version: 1.0")
    charset = _charset_of(seed, post)
    lines = body_lines(seed, post, posts, senders, charset, rng)
    return "\n".join(headers).encode() + b"\n" + _content(lines, charset, rng, post.index)


def _envelope(sender: Sender, date: float) -> bytes:
    d = datetime.datetime.fromtimestamp(date, datetime.UTC)
    return f"From {sender.address} {d:%a %b} {d.day:2d} {d:%H:%M:%S %Y}\n".encode()


def write_mbox(out: BinaryIO, total: int, seed: int = 1,
               list_address: str = "dev@lists.example.org") -> int:
    """Write `total` messages; the bytes written. mboxrd escaping: every body line that
    starts with ">*From " gets one more ">", so the "From " separators are unambiguous."""
    rng = random.Random(seed)
    senders = make_senders(rng)
    order = plan(rng, total, senders)
    posts = {p.index: p for p in order}
    written = 0
    for post in order:
        data = message_bytes(seed, post, posts, senders, list_address)
        data = FROM_LINE.sub(rb">\1", data)
        chunk = _envelope(senders[post.sender], post.date) + data.rstrip(b"\n") + b"\n\n"
        out.write(chunk)
        written += len(chunk)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", type=Path)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--list-address", default="dev@lists.example.org")
    args = p.parse_args(argv)
    with args.output.open("wb") as out:
        size = write_mbox(out, args.messages, args.seed, args.list_address)
    print(f"wrote {args.messages:,} messages, {size / 1e6:.1f} MB, to {args.output}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
