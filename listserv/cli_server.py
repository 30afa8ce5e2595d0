"""Running and setting up a deployment: `listserv serve`, `db upgrade|status`, `doctor`
and `dkim keygen`. cli.py puts `serve` and `doctor` on the root command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from listserv import config as config_mod
from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, ListArg, app_state, out, print_json

db_app = Typer(help="Database maintenance.")
dkim_app = Typer(help="DKIM keys for signing the mail sent.")


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


def doctor_cmd(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """Check the deployment as a postmaster would: the list domain's MX, SPF, DKIM and
    DMARC records, the smarthost, the web pages and a test copy's headers and signature;
    print what to fix. Exit 1 when a check fails.

    \b
    Example:
      listserv doctor dev@lists.example.org
    """
    from listserv import db, doctor, doctor_check, resolver, roster, tokens

    state = app_state(ctx)
    with db.session(state.engine) as s:  # never committed: a test copy leaves no trace
        mlist = roster.get_list(s, list_address)
        secret = tokens.server_secret(s, state.config)
    # A resolver of its own: what DNS says now, not what a cache remembers.
    deployment = doctor_check.Deployment(state.config, mlist,
                                         resolver.Resolver(state.config.dns), secret)
    results = doctor.run(deployment)
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            out.print(f"{r.status.upper():<4}  {r.check}: {r.detail}")
            if r.fix:
                out.print(f"      fix: {r.fix}")
    if any(r.status is doctor_check.Status.FAIL for r in results):
        raise typer.Exit(1)

@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database schema to this version's (back the database up first). Run
    twice at once, the second waits for the first and finds nothing left to do.

    \b
    Example:
      listserv --config /etc/listserv.toml db upgrade
    """
    from listserv import db

    engine = db.make_engine(app_state(ctx).config.database.url)
    out.print(db.upgraded(db.ensure_schema(engine, upgrade_existing=True)))


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """The database's schema revision and this version's; exit 1 when they differ.

    \b
    Example:
      listserv --config /etc/listserv.toml db status
    """
    from listserv import db

    found = db.revisions(db.make_engine(app_state(ctx).config.database.url))
    out.print(db.status(found))
    if not found.current:
        raise typer.Exit(1)


def _roles(text: str) -> tuple[str, ...]:
    try:
        return config_mod.parse_roles(text)
    except config_mod.ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--roles'") from None


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

    state = app_state(ctx)
    state.upgrade = upgrade
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema creation is not news
    # aiosmtpd logs every SMTP command it reads at INFO: five lines a post, which said
    # nothing the "accepted"/"refused" line does not and cost a tenth of the ingest CPU.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    server.check_keys(state.config)
    server.run(state.engine, state.config, chosen)
