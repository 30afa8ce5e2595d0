"""`listserv ...`: one typer sub-app per noun. Commands parse arguments, call the same
functions the server uses, and print with rich; a user error is one line and exit 1.

Only typer and the standard library are imported here: each command imports the domain
modules it needs when it runs, so `listserv --help` does not load the whole server.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from listserv import config as config_mod
from listserv.cli_help import Typer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from rich.console import Console
    from rich.progress import Progress
    from sqlalchemy.engine import Engine

    from listserv import mbox

app = Typer(help="listserv: a mailing-list server.")
list_app = Typer(help="Create, inspect and delete lists.")
member_app = Typer(help="Manage the members of a list.")
held_app = Typer(help="Messages held for moderation.")
archive_app = Typer(help="The stored, threaded messages.")
db_app = Typer(help="Database maintenance.")
digest_app = Typer(help="Digests of the posts.")
app.add_typer(list_app, name="list")
app.add_typer(member_app, name="member")
app.add_typer(held_app, name="held")
app.add_typer(archive_app, name="archive")
app.add_typer(db_app, name="db")
bounce_app = Typer(help="Delivery reports (bounces).")
app.add_typer(digest_app, name="digest")
app.add_typer(bounce_app, name="bounce")
dkim_app = Typer(help="DKIM keys for signing the mail sent.")
app.add_typer(dkim_app, name="dkim")


class _LazyConsole:
    """A rich Console made on first print: importing rich costs every command, --help too."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def console(self) -> Console:
        """The Console itself, for what takes one (a progress bar)."""
        if self._console is None:
            from rich.console import Console

            # Names, subjects and addresses are user data: "[dev] Hello" must print as it
            # is, not as rich markup; and a line of output is one line, never wrapped at
            # the terminal width.
            self._console = Console(stderr=self._stderr, markup=False, highlight=False,
                                    soft_wrap=True)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        """A line of text goes out as it is, without rich: importing rich cost a short
        command a twentieth of its start, and rich turned ":smile:" in a subject or a held
        message into an emoji. Tables and the like are rich's."""
        if len(objects) == 1 and isinstance(objects[0], str) and not options:
            (sys.stderr if self._stderr else sys.stdout).write(objects[0] + "\n")
        else:
            self.console().print(*objects, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else.")]
ListArg = Annotated[str, typer.Argument(metavar="LIST", help="The list's address.")]
AddressArg = Annotated[str, typer.Argument(metavar="ADDRESS")]
FileArg = Annotated[Path, typer.Argument(metavar="FILE")]


class State:
    def __init__(self, config_path: Path | None) -> None:
        self.config = config_mod.load(config_path)
        self._engine: Engine | None = None
        self.upgrade = False  # `serve --upgrade`: the one command that may migrate

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from listserv import db

            self._engine = db.open_database(self.config.database.url, self.upgrade)
            _imports_done()
        return self._engine


def _imports_done() -> None:
    """Collect cycles again from here. main() turns the collector off because importing
    the database layer makes some 10^5 lasting objects that it would scan over and over
    (0.1 s of a command's start), and again at exit (0.15 s): freezing them moves them
    out of its sight for good, and what the command itself makes is collected as usual.
    Under a test's CliRunner, which does not go through main(), this changes nothing.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _print_version(value: bool) -> None:
    if value:
        from listserv import db

        out.print(f"listserv {db.version()}")
        raise typer.Exit()


@app.callback()
def _global(ctx: typer.Context, config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", help="TOML config file (default: $LISTSERV_CONFIG, else "
        "built-in defaults).")] = None,
        _version: Annotated[bool, typer.Option(
            "--version", is_eager=True, callback=_print_version,
            help="Print the version and exit.")] = False) -> None:
    ctx.obj = State(config)


def _state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err.console(), transient=False)


# --- list -------------------------------------------------------------------------------

@list_app.command("create")
def list_create(ctx: typer.Context, address: ListArg,
                name: Annotated[str | None, typer.Option(metavar="NAME",
                                                         help="Display name.")] = None,
                owner: Annotated[str | None, typer.Option(metavar="ADDRESS",
                                                          help="Owner address.")] = None,
                description: Annotated[str, typer.Option(metavar="TEXT")] = "") -> None:
    """Create a list; --owner makes that address owner and member.

    \b
    Example:
      listserv list create dev@lists.example.org --owner ann@example.org --name Developers
    """
    from listserv import db, roster

    with db.session(_state(ctx).engine) as s:
        mlist = roster.create_list(s, address, name=name, owner=owner, description=description)
        s.commit()
    out.print(f"created {mlist.address} ({mlist.name})")


def _list_summary(s: Any, mlist: Any) -> dict:
    from listserv import list_settings, roster

    counts: dict[str, int] = {}
    for m in roster.members(s, mlist):
        counts[m.role.value] = counts.get(m.role.value, 0) + 1
    return {"address": mlist.address, "name": mlist.name, "description": mlist.description,
            "members": counts.get("member", 0), "owners": counts.get("owner", 0),
            "moderators": counts.get("moderator", 0), "created_at": mlist.created_at,
            **list_settings.settings_of(mlist)}


@list_app.command("ls")
def list_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """All lists.

    \b
    Example:
      listserv list ls --json
    """
    from rich.table import Table

    from listserv import db, roster

    with db.session(_state(ctx).engine) as s:
        rows = [_list_summary(s, m) for m in roster.all_lists(s)]
    if as_json:
        return _print_json(rows)
    table = Table("address", "name", "members", "description")
    for r in rows:
        table.add_row(r["address"], r["name"], str(r["members"]), r["description"])
    out.print(table)


@list_app.command("show")
def list_show(ctx: typer.Context, address: ListArg, as_json: JsonOpt = False) -> None:
    """One list, its counts and its settings. A subject prefix or footer left to the
    built-in one shows that one, marked "(default)".

    \b
    Example:
      listserv list show dev@lists.example.org
    """
    from listserv import db, list_settings, roster

    with db.session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, address)
        info = _list_summary(s, mlist)
        effective = list_settings.effective(mlist)
    if as_json:
        return _print_json({**info, **effective.values, "defaults": effective.defaults})
    for key, value in {**info, **effective.values}.items():
        _print_setting(key, value, " (default)" if key in effective.defaults else "")
    return None


def _print_setting(key: str, value: Any, mark: str) -> None:
    """One line a setting; a footer's lines indented under its name, and "" as (none)."""
    if value == "":
        out.print(f"{key}: (none)")
    elif isinstance(value, str) and "\n" in value.rstrip("\n"):
        out.print(f"{key}{mark}:")
        for line in value.rstrip("\n").splitlines():
            out.print(f"  {line}")
    else:
        out.print(f"{key}: {value}{mark}")


@list_app.command("delete")
def list_delete(ctx: typer.Context, address: ListArg,
                yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete a list with its members and archive.

    \b
    Example:
      listserv list delete dev@lists.example.org --yes
    """
    from listserv import db, roster

    if not yes:
        if not sys.stdin.isatty():
            raise roster.UserError(f"not deleting {address} without --yes")
        typer.confirm(f"Delete {address}, its members and its archive?", abort=True)
    with db.session(_state(ctx).engine) as s:
        roster.delete_list(s, roster.get_list(s, address))
        s.commit()
    out.print(f"deleted {address}")


@list_app.command("set")
def list_set(ctx: typer.Context, address: ListArg, key: str, value: str) -> None:
    """Change one setting: subscription, nonmember_action, member_action (accept, hold:
    the owners approve each member's post, reject: only owners and moderators post),
    new_member_holds (a new member's first N posts are held; 0 for none), notify_owners
    (on: the owners get a mail when someone joins, leaves, is disabled by bounces or is
    removed; off, the default), emergency,
    reply_to, subject_prefix, footer, max_message_bytes, archive, digest_frequency,
    digest_send_hour, digest_max_bytes, digest_volume_frequency, verp, dmarc, name,
    description. VALUE "default" gives subject_prefix and footer back the built-in ones.
    The content filter (what copies, digests and the archive's pages carry; the stored
    post stays as received): pass_types (the MIME types kept, "text/plain image/*";
    others are removed with a note; text/plain always passes; "" keeps every type),
    collapse_alternatives (true: a multipart/alternative goes as its text/plain),
    html_to_text (true: HTML-only posts go as text), max_attachment_bytes (larger
    attachments are removed with a note; 0 for no limit).

    \b
    Example:
      listserv list set dev@lists.example.org subject_prefix "[dev]"
    """
    from listserv import db, list_settings, roster

    with db.session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, address)
        new = list_settings.set_setting(mlist, key, value)
        s.add(mlist)
        s.commit()
    out.print(f"{mlist.address}: {key} = {new if new is not None else 'default'}")


# --- held -------------------------------------------------------------------------------

@held_app.command("ls")
def held_ls(ctx: typer.Context, list_address: Annotated[str | None, typer.Argument(
        metavar="LIST", help="Only this list's; every list's without it.")] = None,
        as_json: JsonOpt = False) -> None:
    """Messages waiting for a moderator, oldest first.

    \b
    Examples:
      listserv held ls
      listserv held ls dev@lists.example.org --json
    """
    from rich.table import Column, Table

    from listserv import db, moderation, roster

    with db.session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address) if list_address is not None else None
        lists = {m.id: m.address for m in ([mlist] if mlist else roster.all_lists(s))}
        rows = [{"id": m.id, "list": lists[m.list_id], "sender": m.from_address or m.mail_from,
                 "subject": m.subject, "reason": "; ".join(m.reasons.splitlines()),
                 "received_at": m.received_at}
                for m in moderation.held(s, mlist)]
    if as_json:
        return _print_json(rows)
    # An address cut to "dev@lists.example.o…" cannot be copied: the texts wrap instead.
    table = Table("id", *([] if mlist else [Column("list", no_wrap=True)]),
                  Column("sender", no_wrap=True), "subject", "reason")
    for r in rows:
        table.add_row(str(r["id"]), *([] if mlist else [r["list"]]), r["sender"],
                      r["subject"], r["reason"])
    out.print(table)
    return None


@held_app.command("show")
def held_show(ctx: typer.Context, message_id: Annotated[int, typer.Argument(metavar="ID")]
              ) -> None:
    """A held message: why it was held, and its text as received.

    \b
    Example:
      listserv held show 42
    """
    from listserv import db, moderation
    from listserv.models import MailingList

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
    from listserv import db, moderation

    with db.session(_state(ctx).engine) as s:
        messages = [moderation.held_message(s, i) for i in ids]
        lines = [moderation.act(s, _state(ctx).config, m, action, reason) for m in messages]
        s.commit()
    for line in lines:
        out.print(line)


@held_app.command("approve")
def held_approve(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Send held messages to the list as if they had been accepted.

    \b
    Example:
      listserv held approve 42 43
    """
    _moderate(ctx, ids, "approve")


@held_app.command("reject")
def held_reject(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")],
                reason: Annotated[str, typer.Option(metavar="TEXT",
                                                    help="Told to the author.")] = "") -> None:
    """Refuse held messages and tell their authors why.

    \b
    Example:
      listserv held reject 42 --reason "Off topic here; try users@lists.example.org."
    """
    _moderate(ctx, ids, "reject", reason)


@held_app.command("discard")
def held_discard(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Drop held messages silently (spam).

    \b
    Example:
      listserv held discard 42
    """
    _moderate(ctx, ids, "discard")


# --- archive ----------------------------------------------------------------------------

# Messages per transaction of `archive import`: large enough that threads are read and
# recounted once for many messages, small enough that a batch is a few megabytes.
IMPORT_BATCH = 1000


def _parsing_processes() -> int:
    """One core stores while the others parse; on one core, parsing stays in-process."""
    return min(4, (os.cpu_count() or 1) - 1)


def _maildir(path: Path) -> Iterator[mbox.Mail]:
    import mailbox

    from listserv import mbox

    box = mailbox.Maildir(path, factory=None, create=False)
    for key in box.iterkeys():
        yield mbox.Mail(box.get_bytes(key))


def _mbox_file(path: Path) -> Iterator[mbox.Mail]:
    from listserv import mbox

    with path.open("rb") as stream:
        yield from mbox.read(stream)


def _read_mailbox(path: Path) -> Iterator[mbox.Mail]:
    """The messages of an mbox file or a Maildir folder, one at a time; a wrong path is
    an error now, before anything is shown."""
    from listserv import roster

    if path.is_dir():
        return _maildir(path)
    if path.is_file():
        return _mbox_file(path)
    raise roster.UserError(f"{path}: no such mbox file or Maildir folder")


@archive_app.command("import")
def archive_import_cmd(ctx: typer.Context, list_address: ListArg, file: FileArg) -> None:
    """Store and thread every message of an mbox or Maildir, sending nothing.

    \b
    Example:
      listserv archive import dev@lists.example.org old-list.mbox
    """
    import itertools

    from listserv import archive_import, bulk, db, roster

    read = imported = 0
    mails = _read_mailbox(file)
    engine = _state(ctx).engine
    with db.session(engine) as s, _progress() as bar:
        mlist = roster.get_list(s, list_address)
        task = bar.add_task("importing", total=None)
        parsed = archive_import.parsed_mails(mails, workers=_parsing_processes())
        analyzed_at = 0
        while batch := list(itertools.islice(parsed, IMPORT_BATCH)):
            imported += archive_import.import_mail(s, mlist, batch)
            s.commit()
            read += len(batch)
            bar.update(task, completed=read)
            if imported >= 2 * analyzed_at + IMPORT_BATCH:
                # Each time the archive has doubled: PostgreSQL planned the batch's
                # lookups by the statistics of a smaller table, and a plan for an empty
                # one (a scan of every node per batch) took seconds at 50,000.
                bulk.refresh_statistics(engine, lookups_only=True)
                analyzed_at = imported
        bar.update(task, total=read)  # known now that the whole file was read
    bulk.refresh_statistics(engine)
    out.print(f"{read} messages read: {imported} imported, "
              f"{read - imported} duplicates skipped")


def _day(value: str, option: str) -> datetime:
    from datetime import UTC, datetime

    from listserv import roster

    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise roster.UserError(f"{option} {value!r}: not a date (YYYY-MM-DD)") from None


@archive_app.command("export")
def archive_export_cmd(ctx: typer.Context, list_address: ListArg, since: Annotated[
        str | None, typer.Option(metavar="DATE", help="Only messages dated on or after this "
                                 "day (YYYY-MM-DD, UTC).")] = None) -> None:
    """Write the archived messages to stdout as an mbox (mboxrd), oldest first; `archive
    import` of it stores the same messages again.

    \b
    Example:
      listserv archive export dev@lists.example.org --since 2026-01-01 > dev.mbox
    """
    from listserv import archive_export, db, roster

    start = _day(since, "--since") if since is not None else None
    with db.read_session(_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        stdout = sys.stdout.buffer
        selection = archive_export.Selection(mlist.id, start=start)
        for entry in archive_export.export_mbox(s, selection):
            stdout.write(entry)
        stdout.flush()


@archive_app.command("threads")
def archive_threads(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False
                    ) -> None:
    """Every stored message with its parent and thread.

    \b
    Example:
      listserv archive threads dev@lists.example.org --json
    """
    from rich.table import Table

    from listserv import archive_export, db, roster

    with db.session(_state(ctx).engine) as s:
        rows = archive_export.thread_rows(s, roster.get_list(s, list_address))
    if as_json:
        return _print_json(rows)
    table = Table("message_id", "parent_id", "thread_id", "subject")
    for r in rows:
        table.add_row(r["message_id"], r["parent_id"] or "", r["thread_id"], r["subject"])
    out.print(table)
    return None


# --- digest -----------------------------------------------------------------------------

@digest_app.command("send")
def digest_send(ctx: typer.Context, list_address: ListArg) -> None:
    """Build the next issue from the pending posts now and queue it for the digest
    members, and its summary for the summary members (`listserv serve` delivers
    them).

    \b
    Example:
      listserv digest send dev@lists.example.org
    """
    from listserv import db, digest, roster
    from listserv.models import utcnow

    state = _state(ctx)
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        sent = digest.build(s, state.config, mlist.id, utcnow(), force=True)
        s.commit()
    if sent is None:
        out.print(f"{mlist.address}: nothing pending")
        return
    out.print(f"{sent.issue.subject}: {sent.messages} messages, queued for "
              f"{sent.mime_members} digest-mime and {sent.plain_members} digest-plain members"
              + (f", and a summary for {sent.summary_members} summary members"
                 if sent.summary_members else ""))


@digest_app.command("ls")
def digest_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """The issues sent, newest first.

    \b
    Example:
      listserv digest ls dev@lists.example.org
    """
    from rich.table import Table

    from listserv import db, digest, roster

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
    return None


# --- dkim -------------------------------------------------------------------------------

_DNS_NAME = r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*"


def _dns_name(text: str, what: str) -> str:
    import re

    from listserv import roster

    name = text.strip().lower().rstrip(".")
    if not re.fullmatch(_DNS_NAME, name) or len(name) > 253:
        raise roster.UserError(f"{text!r} is not a valid {what}")
    return name


@dkim_app.command("keygen")
def dkim_keygen(domain: str,
                selector: Annotated[str, typer.Option(metavar="SELECTOR",
                                                      help="Names the key in DNS.")] = "listserv",
                folder: Annotated[Path, typer.Option(
                    "--out", metavar="FOLDER", help="Folder for the key files.")] = Path(".")
                ) -> None:
    """Write a 2048-bit RSA key pair (SELECTOR.DOMAIN.key, readable by you only, and .pub)
    and print the DNS record to publish and the config lines that sign with it.

    \b
    Example:
      listserv dkim keygen lists.example.org --out /etc/listserv
    """
    from listserv import roster, signing

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
def doctor_cmd(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """Check the deployment as a postmaster would: the list domain's MX, SPF, DKIM and
    DMARC records, the smarthost, the web pages and a test copy's headers and signature;
    print what to fix. Exit 1 when a check fails.

    \b
    Example:
      listserv doctor dev@lists.example.org
    """
    from listserv import db, doctor, doctor_check, resolver, roster, tokens

    state = _state(ctx)
    with db.session(state.engine) as s:  # never committed: a test copy leaves no trace
        mlist = roster.get_list(s, list_address)
        secret = tokens.server_secret(s, state.config)
    # A resolver of its own: what DNS says now, not what a cache remembers.
    deployment = doctor_check.Deployment(state.config, mlist,
                                         resolver.Resolver(state.config.dns), secret)
    results = doctor.run(deployment)
    if as_json:
        _print_json([r.as_dict() for r in results])
    else:
        for r in results:
            out.print(f"{r.status.upper():<4}  {r.check}: {r.detail}")
            if r.fix:
                out.print(f"      fix: {r.fix}")
    if any(r.status is doctor_check.Status.FAIL for r in results):
        raise typer.Exit(1)


# --- db, serve --------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database schema to this version's (back the database up first). Run
    twice at once, the second waits for the first and finds nothing left to do.

    \b
    Example:
      listserv --config /etc/listserv.toml db upgrade
    """
    from listserv import db

    engine = db.make_engine(_state(ctx).config.database.url)
    out.print(db.upgraded(db.ensure_schema(engine, upgrade_existing=True)))


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """The database's schema revision and this version's; exit 1 when they differ.

    \b
    Example:
      listserv --config /etc/listserv.toml db status
    """
    from listserv import db

    found = db.revisions(db.make_engine(_state(ctx).config.database.url))
    out.print(db.status(found))
    if not found.current:
        raise typer.Exit(1)


def _roles(text: str) -> tuple[str, ...]:
    try:
        return config_mod.parse_roles(text)
    except config_mod.ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--roles'") from None


@app.command("serve")
def serve(ctx: typer.Context, upgrade: Annotated[bool, typer.Option(
        "--upgrade", help="Migrate an older database schema first.")] = False,
        roles: Annotated[str, typer.Option(
            "--roles", metavar="ROLES", help="What this process does, separated by commas: "
            "smtp (receive), deliver, web (the archive and member pages), housekeeping "
            "(digests, hold expiry, bounce warnings, retention; on PostgreSQL one process "
            "at a time).")] = ",".join(config_mod.ROLES)) -> None:
    """Receive, deliver and serve the web pages in one process until SIGTERM or Ctrl-C.

    \b
    Examples:
      listserv --config /etc/listserv.toml serve --upgrade
      listserv serve --roles smtp,web          # and elsewhere: --roles deliver,housekeeping
    """
    chosen = _roles(roles)  # a bad word stops here, before the database is opened
    import logging

    from listserv import server

    state = _state(ctx)
    state.upgrade = upgrade
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema creation is not news
    # aiosmtpd logs every SMTP command it reads at INFO: five lines a post, which said
    # nothing the "accepted"/"refused" line does not and cost a tenth of the ingest CPU.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    server.check_keys(state.config)
    server.run(state.engine, state.config, chosen)


# The nouns in modules of their own use the helpers above, so they come after them.
from listserv import (  # noqa: E402, F401
    cli_bounce,
    cli_member,
    cli_message,
    cli_queue,
    cli_rules,
    cli_templates,
)

app.add_typer(cli_queue.queue_app, name="queue")
app.add_typer(cli_rules.sender_app, name="sender")
app.add_typer(cli_rules.ban_app, name="ban")
app.add_typer(cli_rules.rule_app, name="rule")
app.add_typer(cli_templates.template_app, name="template")
app.add_typer(cli_message.message_app, name="message")


def _usage_error(exc: Exception) -> int | None:
    """Click's usage errors (typer bundles its own click, so match by shape, not class)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and callable(getattr(exc, "format_message", None)):
        message = exc.format_message()
        if message:  # empty when the help was shown instead (a bare `listserv member`)
            err.print(f"error: {message} (see --help)")
        return code
    return None


# The errors a user can fix, by module and class: only modules already imported are
# looked in, since an exception comes from one, and importing the others just to compare
# would cost every failing command the start time the lazy imports save.
_USER_ERRORS = (("listserv.config", "ConfigError"), ("listserv.db", "DatabaseError"),
                ("listserv.roster", "UserError"))


def _is_user_error(exc: Exception) -> bool:
    return any(isinstance(exc, getattr(sys.modules[module], name))
               for module, name in _USER_ERRORS if module in sys.modules)


def _database_error(exc: Exception) -> bool:
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.SQLAlchemyError)


def main() -> None:
    """Console entry point: every error is one line on stderr and a non-zero exit."""
    gc.disable()  # until the command's imports are done: see _imports_done
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except OSError as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
    except Exception as exc:
        if _is_user_error(exc):
            err.print(f"error: {exc}")
            sys.exit(1)
        if _database_error(exc):
            err.print(f"database error: {str(exc).splitlines()[0]}")
            sys.exit(1)
        usage = _usage_error(exc)
        if usage is None:
            raise
        sys.exit(usage)
    sys.exit(code if isinstance(code, int) else 0)
