"""The schema: an existing database keeps its lists, members and mail through every
migration, and the migrations build exactly the tables the models describe."""

from __future__ import annotations

import importlib.metadata
import os
import signal

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlmodel import SQLModel

from listserv import db
from listserv.enums import DigestFrequency, Verp
from listserv.models import MailingList, Member, Message
from tests.helpers import (
    assert_one_line_error,
    run_listserv,
    start_listserv,
    wait_until,
    write_config,
)
from tests.servers import ports_logged, start_serve

# Made by the migrations with each database's own full-text engine, not by the models.
SEARCH_TABLES = {"message_fts", "message_search"}


def _outside_search(diff: object) -> bool:
    return not any(name in str(diff) for name in SEARCH_TABLES)


def test_upgrading_a_database_from_the_first_schema_keeps_its_rows(db_url):
    """On SQLite a migration that rebuilds mailing_list would cascade-delete every
    member and message with it: columns must be added in place."""
    engine = db.make_engine(db_url)
    command.upgrade(db._alembic_config(engine), "0001")
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO mailing_list (address, domain, name, description, created_at, "
            "subscription, nonmember_action, emergency, reply_to, max_message_bytes, archive) "
            "VALUES ('dev@lists.example.org', 'lists.example.org', 'Dev', '', "
            "'2026-01-01 00:00:00', 'open', 'hold', false, 'poster', 0, 'public')"))
        c.execute(text(
            "INSERT INTO member (list_id, address, display_name, role, delivery, moderated, "
            "created_at) SELECT id, 'bob@example.com', '', 'member', 'regular', false, "
            "'2026-01-01 00:00:00' FROM mailing_list"))
        c.execute(text(
            "INSERT INTO message (list_id, kind, state, reasons, message_id, mail_from, "
            "rcpt_to, from_address, from_name, subject, received_at, size, raw) "
            "SELECT id, 'post', 'accepted', '', 'a@example.com', 'Bob@Example.com', '', '', "
            "'', 'Hi', "
            "'2026-01-01 00:00:00', 2, :raw FROM mailing_list"), {"raw": b"x\n"})
    db.ensure_schema(engine, upgrade_existing=True)  # what `listserv db upgrade` does
    with db.session(engine) as s:
        [(frequency, verp, address)] = s.execute(
            select(MailingList.digest_frequency, MailingList.verp, Member.address)
            .join(Member, Member.list_id == MailingList.id)).all()
        messages = s.execute(select(Message.subject, Message.sender_key)).all()
    engine.dispose()
    assert (frequency, verp, address) == (DigestFrequency.DAILY, Verp.ON, "bob@example.com")
    # the rate limit counts an older message by its sender in lower case
    assert [tuple(m) for m in messages] == [("Hi", "bob@example.com")]


def test_the_migrations_build_what_the_models_describe(engine):
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert [d for d in diff if _outside_search(d)] == []


def test_the_quick_revision_check_agrees_with_alembic(engine):
    """Commands find the schema current without loading alembic, from the migration
    files read as text: they must give the revisions alembic knows, and its head."""
    found = db.revisions(engine)
    assert db.migration_files() == (found.known, found.code)
    assert found.database == found.code
    assert db.ensure_schema(engine) == found


# --- upgrades are explicit ----------------------------------------------------------------

def _at_revision(db_url: str, revision: str) -> None:
    """A database as an older listserv left it (or, stamped, as a newer one did)."""
    engine = db.make_engine(db_url)
    command.upgrade(db._alembic_config(engine), "0007")
    if revision != "0007":
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _revision_now(db_url: str) -> str | None:
    engine = db.make_engine(db_url)
    try:
        return db.revisions(engine).database
    finally:
        engine.dispose()


# The newest revision this code knows: the upgrades below go from 0007 to it.
HEAD = ScriptDirectory(str(db.MIGRATIONS)).get_current_head()


def test_an_older_database_is_upgraded_only_by_db_upgrade(db_url, tmp_path):
    config = write_config(tmp_path / "listserv.toml", db_url)
    _at_revision(db_url, "0007")
    # a read-only command neither migrates nor dies with a traceback
    assert_one_line_error(run_listserv("--config", config, "list", "ls"),
                          "0007", "listserv db upgrade")
    assert _revision_now(db_url) == "0007"
    status = run_listserv("--config", config, "db", "status")
    assert status.returncode == 1
    assert status.stdout.splitlines()[:2] == ["database revision: 0007", f"code revision: {HEAD}"]
    upgraded = run_listserv("--config", config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from revision 0007 to {HEAD}" in upgraded.stdout
    assert run_listserv("--config", config, "list", "ls").returncode == 0
    status = run_listserv("--config", config, "db", "status")
    assert status.returncode == 0 and "up to date" in status.stdout


def test_code_older_than_the_database_says_so_in_one_line(db_url, tmp_path):
    """The README's several-process setup: a newer listserv migrated the shared schema."""
    config = write_config(tmp_path / "listserv.toml", db_url)
    _at_revision(db_url, "0099")
    for args in (["list", "ls"], ["db", "upgrade"], ["serve", "--upgrade"]):
        assert_one_line_error(run_listserv("--config", config, *args), "0099",
                              "upgrade listserv")
    assert _revision_now(db_url) == "0099"


def _waiting_for_the_lock(engine, procs, db_url: str) -> bool:
    """Both processes are at the lock: on PostgreSQL, waiting for the advisory lock; on
    SQLite, holding the database file open (its BEGIN IMMEDIATE then waits)."""
    if db.is_sqlite(engine):
        path = db_url.removeprefix("sqlite:///")
        return all(any(os.path.realpath(f"/proc/{p.pid}/fd/{fd}") == path
                       for fd in os.listdir(f"/proc/{p.pid}/fd")) for p in procs)
    with engine.connect() as c:
        return c.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            f"AND classid = {db.MIGRATION_LOCK} AND objsubid = 2")).scalar() == len(procs)


def test_two_upgrades_at_once_migrate_once(db_url, tmp_path):
    """Two hosts of the README's several-process setup run `listserv db upgrade` at the
    same moment: one migrates, the other waits for it and finds nothing left to do."""
    config = write_config(tmp_path / "listserv.toml", db_url)
    _at_revision(db_url, "0007")
    engine = db.make_engine(db_url)
    with engine.begin() as holder:  # both start while a migration is under way
        db.lock_migrations(holder)
        procs = [start_listserv("--config", config, "db", "upgrade") for _ in range(2)]
        wait_until(lambda: _waiting_for_the_lock(engine, procs, db_url),
                   "both upgrades waiting for the migration lock")
    outputs = sorted(p.communicate(timeout=120)[0] for p in procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert outputs == [f"database is up to date (revision {HEAD})\n",
                       f"upgraded the database schema from revision 0007 to {HEAD}\n"]
    assert _revision_now(db_url) == HEAD
    engine.dispose()


@pytest.mark.parametrize("revision, args, logged", [
    (None, [], f"created the database schema (revision {HEAD})"),
    ("0007", ["--upgrade"], f"from revision 0007 to {HEAD}"),
])
def test_serve_creates_an_empty_database_and_upgrades_with_upgrade(db_url, tmp_path, sink,
                                                                   revision, args, logged):
    if revision:
        _at_revision(db_url, revision)
    proc = start_serve(tmp_path, db_url, sink.port, *args)
    try:
        started = ports_logged(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert logged in started.log + stderr
    assert _revision_now(db_url) == HEAD


def test_version_is_printed():
    proc = run_listserv("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"listserv {importlib.metadata.version('listserv')}\n"
