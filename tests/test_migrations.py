"""The schema: an existing database keeps its lists, members and mail through every
migration, and the migrations build exactly the tables the models describe."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlmodel import SQLModel

from listserv import db
from listserv.models import DigestFrequency, MailingList, Member, Message, Verp

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
    db.ensure_schema(engine)  # what `listserv serve` does on start
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


def test_the_quick_revision_check_agrees_with_alembic(db_url):
    """Commands skip loading alembic when the stored revision is the newest migration
    file's: that must be alembic's head, and an older database must still be upgraded."""
    from alembic.script import ScriptDirectory

    engine = db.make_engine(db_url)
    head = ScriptDirectory.from_config(db._alembic_config(engine)).get_current_head()
    assert db.newest_migration() == head
    command.upgrade(db._alembic_config(engine), "0001")
    db.ensure_schema(engine)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert versions == [(head,)]
