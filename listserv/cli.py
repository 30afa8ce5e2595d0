"""`listserv ...`: one typer sub-app per noun. Commands parse arguments, call the same
functions the server uses, and print with rich; a user error is one line and exit 1.
"""

from __future__ import annotations

import itertools
import json
import logging
import mailbox
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from listserv import (
    archive,
    bounce,
    bouncing,
    db,
    digest,
    doctor,
    mbox,
    moderation,
    resolver,
    roster,
    settings,
    signing,
    tokens,
)
from listserv import config as config_mod
from listserv.models import DeliveryMode, MailingList, Role, SenderAction, utcnow

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="listserv: a mailing-list server.")
list_app = typer.Typer(no_args_is_help=True, help="Create, inspect and delete lists.")
member_app = typer.Typer(no_args_is_help=True, help="Manage the members of a list.")
held_app = typer.Typer(no_args_is_help=True, help="Messages held for moderation.")
archive_app = typer.Typer(no_args_is_help=True, help="The stored, threaded messages.")
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
digest_app = typer.Typer(no_args_is_help=True, help="Digests of the posts.")
sender_app = typer.Typer(no_args_is_help=True,
                         help="Allow and deny lists for senders who are not members.")
app.add_typer(list_app, name="list")
app.add_typer(member_app, name="member")
app.add_typer(held_app, name="held")
app.add_typer(archive_app, name="archive")
app.add_typer(db_app, name="db")
bounce_app = typer.Typer(no_args_is_help=True, help="Delivery reports (bounces).")
app.add_typer(digest_app, name="digest")
app.add_typer(sender_app, name="sender")
app.add_typer(bounce_app, name="bounce")
dkim_app = typer.Typer(no_args_is_help=True, help="DKIM keys for signing the mail sent.")
app.add_typer(dkim_app, name="dkim")

# Names, subjects and addresses are user data: "[dev] Hello" must print as it is, not
# as rich markup; and a line of output is one line, never wrapped at the terminal width.
out = Console(markup=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else.")]


class State:
    def __init__(self, config_path: Path | None) -> None:
        self.config = config_mod.load(config_path)
        self._engine: Engine | None = None
        self.upgrade = False  # `serve --upgrade`: the one command that may migrate

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.open_database(self.config.database.url, self.upgrade)
        return self._engine


def _print_version(value: bool) -> None:
    if value:
        out.print(f"listserv {db.version()}")
        raise typer.Exit()


@app.callback()
def _global(ctx: typer.Context, config: Annotated[Path | None, typer.Option(
        "--config", help="TOML config file (default: $LISTSERV_CONFIG, else built-in "
        "defaults).")] = None,
        _version: Annotated[bool, typer.Option(
            "--version", is_eager=True, callback=_print_version,
            help="Print the version and exit.")] = False) -> None:
    ctx.obj = State(config)


def _state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


# --- list -------------------------------------------------------------------------------

@list_app.command("create")
def list_create(ctx: typer.Context, address: str,
                name: Annotated[str | None, typer.Option(help="Display name.")] = None,
                owner: Annotated[str | None, typer.Option(help="Owner address.")] = None,
                description: Annotated[str, typer.Option()] = "") -> None:
    """Create a list; --owner makes that address owner and member."""
    with db.session(_state(ctx).engine) as s:
        mlist = roster.create_list(s, address, name=name, owner=owner, description=description)
        s.commit()
    out.print(f"created {mlist.address} ({mlist.name})")


def _list_summary(s: Any, mlist: Any) -> dict:
    counts: dict[str, int] = {}
    for m in roster.members(s, mlist):
        counts[m.role.value] = counts.get(m.role.value, 0) + 1
    return {"address": mlist.address, "name": mlist.name, "description": mlist.description,
            "members": counts.get("member", 0), "owners": counts.get("owner", 0),
            "moderators": counts.get("moderator", 0), "created_at": mlist.created_at,
            **settings.settings_of(mlist)}


@list_app.command("ls")
def list_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """All lists."""
    with db.session(_state(ctx).engine) as s:
        rows = [_list_summary(s, m) for m in roster.all_lists(s)]
    if as_json:
        return _print_json(rows)
    table = Table("address", "name", "members", "description")
    for r in rows:
        table.add_row(r["address"], r["name"], str(r["members"]), r["description"])
    out.print(table)


@list_app.command("show")
def list_show(ctx: typer.Context, address: str, as_json: JsonOpt = False) -> None:
    """One list and its counts."""
    with db.session(_state(ctx).engine) as s:
        info = _list_summary(s, roster.get_list(s, address))
    if as_json:
        return _print_json(info)
    for key, value in info.items():
        out.print(f"{key}: {value}")


@list_app.command("delete")
def list_delete(ctx: typer.Context, address: str,
                yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete a list with its members and archive."""
    if not yes:
        if not sys.stdin.isatty():
            raise roster.UserError(f"not deleting {address} without --yes")
        typer.confirm(f"Delete {address}, its members and its archive?", abort=True)
    with db.session(_state(ctx).engine) as s:
        roster.delete_list(s, roster.get_list(s, address))
        s.commit()
    out.print(f"deleted {address}")


@list_app.command("set")
def list_set(ctx: typer.Context, address: str, key: str, value: str) -> None:
    """Change one setting: subscription, nonmember_action, emergency, reply_to,
    subject_prefix, footer, max_message_bytes, archive, digest_frequency,
    digest_send_hour, digest_max_bytes, digest_volume_frequency, verp, dmarc, name,
    description."""
    with db.session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, address)
        new = settings.set_setting(mlist, key, value)
        s.add(mlist)
        s.commit()
    out.print(f"{mlist.address}: {key} = {new if new is not None else 'default'}")


# --- member -----------------------------------------------------------------------------

def _report(result: roster.AddResult, role: Role) -> None:
    for a in result.existing:
        err.print(f"{a}: already a {role.value}")
    for a in result.invalid:
        err.print(f"{a!r}: not a valid address")


@member_app.command("add")
def member_add(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], addresses: list[str],
        role: Annotated[Role, typer.Option(help="member, moderator or owner.")] = Role.MEMBER
        ) -> None:
    """Add addresses; bad or existing ones are reported and the rest still go in."""
    with db.session(_state(ctx).engine) as s:
        result = roster.add_members(s, roster.get_list(s, list_address), addresses, role)
        s.commit()
    for a in result.added:
        out.print(f"added {a} as {role.value}")
    _report(result, role)
    if result.invalid or result.existing:
        raise typer.Exit(1)


@member_app.command("remove")
def member_remove(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], addresses: list[str]) -> None:
    """Remove addresses (every role they hold)."""
    with db.session(_state(ctx).engine) as s:
        removed, missing = roster.remove_members(s, roster.get_list(s, list_address),
                                                 addresses)
        s.commit()
    for a in removed:
        out.print(f"removed {a}")
    for a in missing:
        err.print(f"{a}: not on {list_address}")
    if missing:
        raise typer.Exit(1)


@member_app.command("ls")
def member_ls(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """Members with their roles and delivery."""
    state = _state(ctx)
    now = utcnow()
    with db.session(state.engine) as s:
        rows = [{"address": m.address, "name": m.display_name, "role": m.role.value,
                 "delivery": m.delivery.value, "moderated": m.moderated,
                 "disabled_by": m.disabled_by.value if m.disabled_by else None,
                 "delivery_status": roster.delivery_status(m),
                 "bounce_score": bouncing.score_now(m.bounce_score, m.last_bounce_at, now,
                                                    state.config.bounces)}
                for m in roster.members(s, roster.get_list(s, list_address))]
    if as_json:
        return _print_json(rows)
    table = Table("address", "role", "delivery", "status", "name")
    for r in rows:
        table.add_row(r["address"], r["role"], r["delivery"], r["delivery_status"], r["name"])
    out.print(table)


@member_app.command("import")
def member_import(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], file: Path) -> None:
    """Add every address in FILE (CSV with an address column, or one per line)."""
    try:
        entries = list(roster.read_import(file.read_text(encoding="utf-8-sig")))
    except OSError as exc:
        raise roster.UserError(f"cannot read {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise roster.UserError(f"{file} is not UTF-8 text") from exc
    with db.session(_state(ctx).engine) as s, _progress() as bar:
        task = bar.add_task("importing", total=len(entries))
        result = roster.add_members(s, roster.get_list(s, list_address), entries,
                                    progress=lambda n: bar.advance(task, n))
        s.commit()
    _report(result, Role.MEMBER)
    out.print(f"added {len(result.added)}, already members {len(result.existing)}, "
              f"invalid {len(result.invalid)}")


@member_app.command("set")
def member_set(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], address: str,
        moderated: Annotated[str | None, typer.Option(
            "--moderated", metavar="true|false",
            help="true: hold this address's posts for a moderator.")] = None,
        delivery: Annotated[DeliveryMode | None, typer.Option(help="How posts arrive.")] = None,
        role: Annotated[Role | None, typer.Option(help="Change the address's role.")] = None
        ) -> None:
    """Change a member's moderation flag, delivery mode or role."""
    with db.session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        flag = None if moderated is None else settings.parse_bool(moderated, "--moderated")
        changed = roster.set_member(s, mlist, address, moderated=flag,
                                    delivery=delivery, role=role)
        s.commit()
    out.print(f"{changed}: " + ", ".join(f"{k} = {v}" for k, v in (
        ("moderated", moderated), ("delivery", delivery and delivery.value),
        ("role", role and role.value)) if v is not None))


# --- held -------------------------------------------------------------------------------

@held_app.command("ls")
def held_ls(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """Messages waiting for a moderator."""
    with db.session(_state(ctx).engine) as s:
        rows = [{"id": m.id, "sender": m.from_address or m.mail_from, "subject": m.subject,
                 "reason": "; ".join(m.reasons.splitlines()), "received_at": m.received_at}
                for m in archive.held(s, roster.get_list(s, list_address))]
    if as_json:
        return _print_json(rows)
    table = Table("id", "sender", "subject", "reason")
    for r in rows:
        table.add_row(str(r["id"]), r["sender"], r["subject"], r["reason"])
    out.print(table)


@held_app.command("show")
def held_show(ctx: typer.Context, message_id: Annotated[int, typer.Argument(metavar="ID")]
              ) -> None:
    """A held message: why it was held, and its text as received."""
    with db.session(_state(ctx).engine) as s:
        m = moderation.held_message(s, message_id)
        mlist = s.get(MailingList, m.list_id)
    out.print(f"id: {m.id}\nlist: {mlist.address}\nfrom: {m.from_address or m.mail_from}\n"
              f"subject: {m.subject}\nreceived: {m.received_at:%Y-%m-%d %H:%M} UTC\n"
              f"size: {m.size} bytes\nreasons:")
    for reason in m.reasons.splitlines():
        out.print(f"  - {reason}")
    out.print("")
    out.print(m.raw.decode("utf-8", "replace"))


def _moderate(ctx: typer.Context, ids: list[int], action: str, reason: str = "") -> None:
    with db.session(_state(ctx).engine) as s:
        messages = [moderation.held_message(s, i) for i in ids]
        lines = [moderation.act(s, _state(ctx).config, m, action, reason) for m in messages]
        s.commit()
    for line in lines:
        out.print(line)


@held_app.command("approve")
def held_approve(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Send held messages to the list as if they had been accepted."""
    _moderate(ctx, ids, "approve")


@held_app.command("reject")
def held_reject(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")],
                reason: Annotated[str, typer.Option(help="Told to the author.")] = "") -> None:
    """Refuse held messages and tell their authors why."""
    _moderate(ctx, ids, "reject", reason)


@held_app.command("discard")
def held_discard(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Drop held messages silently (spam)."""
    _moderate(ctx, ids, "discard")


# --- sender -----------------------------------------------------------------------------

def _sender(ctx: typer.Context, list_address: str, address: str, action: SenderAction) -> None:
    with db.session(_state(ctx).engine) as s:
        added = moderation.set_sender(s, roster.get_list(s, list_address), address, action)
        s.commit()
    out.print(f"{added}: {action.value}")


@sender_app.command("allow")
def sender_allow(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], address: str) -> None:
    """Let a non-member's posts through without moderation."""
    _sender(ctx, list_address, address, SenderAction.ALLOW)


@sender_app.command("deny")
def sender_deny(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], address: str) -> None:
    """Discard every post from this address."""
    _sender(ctx, list_address, address, SenderAction.DENY)


@sender_app.command("ls")
def sender_ls(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """The allow and deny entries of a list."""
    with db.session(_state(ctx).engine) as s:
        rows = [{"address": r.address, "action": r.action.value}
                for r in moderation.senders(s, roster.get_list(s, list_address))]
    if as_json:
        return _print_json(rows)
    table = Table("address", "action")
    for r in rows:
        table.add_row(r["address"], r["action"])
    out.print(table)


# --- archive ----------------------------------------------------------------------------

# Messages per transaction of `archive import`: large enough that threads are read and
# recounted once for many messages, small enough that a batch is a few megabytes.
IMPORT_BATCH = 1000


def _parsing_processes() -> int:
    """One core stores while the others parse; on one core, parsing stays in-process."""
    return min(4, (os.cpu_count() or 1) - 1)


def _maildir(path: Path) -> Iterator[mbox.Mail]:
    box = mailbox.Maildir(path, factory=None, create=False)
    for key in box.iterkeys():
        yield mbox.Mail(box.get_bytes(key))


def _mbox_file(path: Path) -> Iterator[mbox.Mail]:
    with path.open("rb") as stream:
        yield from mbox.read(stream)


def _read_mailbox(path: Path) -> Iterator[mbox.Mail]:
    """The messages of an mbox file or a Maildir folder, one at a time; a wrong path is
    an error now, before anything is shown."""
    if path.is_dir():
        return _maildir(path)
    if path.is_file():
        return _mbox_file(path)
    raise roster.UserError(f"{path}: no such mbox file or Maildir folder")


@archive_app.command("import")
def archive_import(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], file: Path) -> None:
    """Store and thread every message of an mbox or Maildir, sending nothing."""
    read = imported = 0
    mails = _read_mailbox(file)
    engine = _state(ctx).engine
    with db.session(engine) as s, _progress() as bar:
        mlist = roster.get_list(s, list_address)
        task = bar.add_task("importing", total=None)
        parsed = archive.parsed_mails(mails, workers=_parsing_processes())
        analyzed_at = 0
        while batch := list(itertools.islice(parsed, IMPORT_BATCH)):
            imported += archive.import_mail(s, mlist, batch)
            s.commit()
            read += len(batch)
            bar.update(task, completed=read)
            if imported >= 2 * analyzed_at + IMPORT_BATCH:
                # Each time the archive has doubled: PostgreSQL planned the batch's
                # lookups by the statistics of a smaller table, and a plan for an empty
                # one (a scan of every node per batch) took seconds at 50,000.
                db.refresh_statistics(engine)
                analyzed_at = imported
        bar.update(task, total=read)  # known now that the whole file was read
    db.refresh_statistics(engine)
    out.print(f"{read} messages read: {imported} imported, "
              f"{read - imported} duplicates skipped")


def _day(value: str, option: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise roster.UserError(f"{option} {value!r}: not a date (YYYY-MM-DD)") from None


@archive_app.command("export")
def archive_export(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], since: Annotated[str | None, typer.Option(
            metavar="DATE", help="Only messages dated on or after this day (YYYY-MM-DD, "
            "UTC).")] = None) -> None:
    """Write the archived messages to stdout as an mbox (mboxrd), oldest first; `archive
    import` of it stores the same messages again."""
    start = _day(since, "--since") if since is not None else None
    with db.read_session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        stdout = sys.stdout.buffer
        for entry in archive.export_mbox(s, archive.Selection(mlist.id, start=start)):
            stdout.write(entry)
        stdout.flush()


@archive_app.command("threads")
def archive_threads(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """Every stored message with its parent and thread."""
    with db.session(_state(ctx).engine) as s:
        rows = archive.thread_rows(s, roster.get_list(s, list_address))
    if as_json:
        return _print_json(rows)
    table = Table("message_id", "parent_id", "thread_id", "subject")
    for r in rows:
        table.add_row(r["message_id"], r["parent_id"] or "", r["thread_id"], r["subject"])
    out.print(table)


# --- bounce -----------------------------------------------------------------------------

@bounce_app.command("parse")
def bounce_parse(file: Path, as_json: JsonOpt = False) -> None:
    """The failed recipients of one bounce as a list would see them: address, RFC 3463
    status, class (mailbox, policy, transient, unknown) and the server's words."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise roster.UserError(f"cannot read {file}: {exc.strerror}") from exc
    report = bounce.parse_bounce(raw)
    rows = [{"address": f.address, "status": f.status, "class": f.bounce_class.value,
             "diagnostic": f.diagnostic} for f in report.failures]
    if report.complaint:
        # A spam complaint is not a failure; say so where it cannot spoil --json.
        c = report.complaint
        (err if as_json else out).print(f"spam complaint ({c.feedback_type or 'unspecified'}) "
                                        f"from {c.address}: not a delivery failure")
    if as_json:
        return _print_json(rows)
    if not rows:
        if not report.complaint:
            out.print("no failed recipients found")
        return None
    table = Table("address", "status", "class", "diagnostic")
    for r in rows:
        table.add_row(r["address"], r["status"], r["class"], r["diagnostic"])
    out.print(table)
    return None


# --- digest -----------------------------------------------------------------------------

@digest_app.command("send")
def digest_send(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")]) -> None:
    """Build the next issue from the pending posts now and queue it for the digest
    members (`listserv serve` delivers it)."""
    state = _state(ctx)
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        sent = digest.build(s, state.config, mlist.id, utcnow(), force=True)
        s.commit()
    if sent is None:
        out.print(f"{mlist.address}: nothing pending")
        return
    out.print(f"{sent.issue.subject}: {sent.messages} messages, queued for "
              f"{sent.mime_members} digest-mime and {sent.plain_members} digest-plain members")


@digest_app.command("ls")
def digest_ls(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """The issues sent, newest first."""
    with db.session(_state(ctx).engine) as s:
        rows = [{"volume": i.volume, "number": i.number, "subject": i.subject,
                 "created_at": i.created_at, "messages": n, "size": i.size}
                for i, n in digest.issues(s, roster.get_list(s, list_address).id)]
    if as_json:
        return _print_json(rows)
    table = Table("volume", "number", "subject", "created_at", "messages", "size")
    for r in rows:
        table.add_row(str(r["volume"]), str(r["number"]), r["subject"],
                      f"{r['created_at']:%Y-%m-%d %H:%M}", str(r["messages"]), str(r["size"]))
    out.print(table)


@bounce_app.command("ls")
def bounce_ls(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")],
        days: Annotated[int, typer.Option(min=1, max=36_500, help="How far back.")
                        ] = bouncing.HISTORY_DAYS,
        as_json: JsonOpt = False) -> None:
    """Recent bounces, newest first: member, class, status and the member's score and
    state now; refusals for policy name the domain of the post's author."""
    state = _state(ctx)
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        rows = bouncing.recent(s, state.config, mlist, days=days)
        policy = bouncing.policy_by_domain(s, mlist.id, utcnow() - timedelta(days=days))
    if as_json:
        return _print_json([{"time": r.time, "member": r.member, "class": r.bounce_class,
                             "status": r.status, "diagnostic": r.diagnostic,
                             "sender_domain": r.sender_domain, "counted": r.counted,
                             "score": r.score, "state": r.state} for r in rows])
    if not rows:
        out.print(f"no bounces in the last {days} days")
        return None
    # One line a bounce, never a wrapped table cell: diagnostics are long, and an
    # admin greps this for an address.
    for r in rows:
        kind = f"{r.bounce_class} ({r.sender_domain})" if r.sender_domain else r.bounce_class
        score = "" if r.score is None else f" score {r.score:g}"
        out.print(f"{r.time:%Y-%m-%d %H:%M}  {r.member}  {kind}  {r.status or '-'}  "
                  f"{r.state}{score}  {r.diagnostic}")
    for domain, count in policy:
        out.print(f"refused for policy, posts from {domain}: {count}")
    return None


# --- dkim -------------------------------------------------------------------------------

_DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _dns_name(text: str, what: str) -> str:
    name = text.strip().lower().rstrip(".")
    if not _DNS_NAME.fullmatch(name) or len(name) > 253:
        raise roster.UserError(f"{text!r} is not a valid {what}")
    return name


@dkim_app.command("keygen")
def dkim_keygen(domain: str,
                selector: Annotated[str, typer.Option(help="Names the key in DNS.")] = "listserv",
                folder: Annotated[Path, typer.Option(
                    "--out", help="Folder for the key files.")] = Path(".")
                ) -> None:
    """Write a 2048-bit RSA key pair (SELECTOR.DOMAIN.key, readable by you only, and .pub)
    and print the DNS record to publish and the config lines that sign with it."""
    domain, selector = _dns_name(domain, "domain"), _dns_name(selector, "selector")
    try:
        key = signing.keygen(domain, selector, folder)
    except FileExistsError as exc:
        raise roster.UserError(f"{exc.filename} exists; not overwritten") from exc
    except OSError as exc:
        raise roster.UserError(f"cannot write to {folder}: {exc.strerror}") from exc
    out.print(f"wrote {key.private_file} and {key.public_file}\n\n"
              "Publish this DNS record (the strings of one TXT record):\n\n"
              f"{key.record}\n\nand add to the config:\n\n[dkim]\n"
              f'domain = "{domain}"\nselector = "{selector}"\n'
              f'private_key_file = "{key.private_file.resolve()}"')


# --- doctor -----------------------------------------------------------------------------

@app.command("doctor")
def doctor_cmd(ctx: typer.Context, list_address: Annotated[str, typer.Argument(
        metavar="LIST")], as_json: JsonOpt = False) -> None:
    """Check the deployment as a postmaster would: the list domain's MX, SPF, DKIM and
    DMARC records, the smarthost, the web pages and a test copy's headers and signature;
    print what to fix. Exit 1 when a check fails."""
    state = _state(ctx)
    with db.session(state.engine) as s:  # never committed: a test copy leaves no trace
        mlist = roster.get_list(s, list_address)
        secret = tokens.server_secret(s, state.config)
    # A resolver of its own: what DNS says now, not what a cache remembers.
    deployment = doctor.Deployment(state.config, mlist, resolver.Resolver(state.config.dns),
                                   secret)
    results = doctor.run(deployment)
    if as_json:
        _print_json([r.as_dict() for r in results])
    else:
        for r in results:
            out.print(f"{r.status.upper():<4}  {r.check}: {r.detail}")
            if r.fix:
                out.print(f"      fix: {r.fix}")
    if any(r.status is doctor.Status.FAIL for r in results):
        raise typer.Exit(1)


# --- db, serve --------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database schema to this version's (back the database up first)."""
    engine = db.make_engine(_state(ctx).config.database.url)
    out.print(db.upgraded(db.ensure_schema(engine, upgrade_existing=True)))


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """The database's schema revision and this version's; exit 1 when they differ."""
    found = db.revisions(db.make_engine(_state(ctx).config.database.url))
    out.print(db.status(found))
    if not found.current:
        raise typer.Exit(1)


@app.command("serve")
def serve(ctx: typer.Context, upgrade: Annotated[bool, typer.Option(
        "--upgrade", help="Migrate an older database schema first.")] = False) -> None:
    """Receive, deliver and serve the web pages in one process until SIGTERM or Ctrl-C."""
    from listserv import server

    state = _state(ctx)
    state.upgrade = upgrade
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema creation is not news
    # aiosmtpd logs every SMTP command it reads at INFO: five lines a post, which said
    # nothing the "accepted"/"refused" line does not and cost a tenth of the ingest CPU.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    server.run(state.engine, state.config)


def _usage_error(exc: Exception) -> int | None:
    """Click's usage errors (typer bundles its own click, so match by shape, not class)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and callable(getattr(exc, "format_message", None)):
        message = exc.format_message()
        if message:  # empty when the help was shown instead (a bare `listserv member`)
            err.print(f"error: {message} (see --help)")
        return code
    return None


def main() -> None:
    """Console entry point: every error is one line on stderr and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except (config_mod.ConfigError, db.DatabaseError, roster.UserError) as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
    except SQLAlchemyError as exc:
        err.print(f"database error: {str(exc).splitlines()[0]}")
        sys.exit(1)
    except OSError as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is None:
            raise
        sys.exit(usage)
    sys.exit(code if isinstance(code, int) else 0)
