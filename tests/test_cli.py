"""The `listserv` command line end to end, against a real database.

Happy paths go through typer's CliRunner; every error path runs the installed console
script in a subprocess, so the one-line error handling of `main()` is what is tested.
"""

from __future__ import annotations

import functools
import json
import mailbox
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from typer.testing import Result

from listserv import config as config_mod
from listserv import db
from listserv.cli import app
from tests.helpers import (
    CORPUS,
    LIST,
    as_json,
    assert_one_line_error,
    ingest_mail,
    message,
    ok,
    run_listserv,
    start_listserv,
)
from tests.servers import ports_logged, start_serve

NOTMUCH = CORPUS / "threads" / "notmuch-list-2009.mbox"
NOTMUCH_PARENTS = CORPUS / "threads" / "expected" / "notmuch-list-2009.threads.json"


def roles(cli: Callable[..., Result], list_address: str = LIST) -> set[tuple[str, str]]:
    return {(m["address"], m["role"]) for m in as_json(cli("member", "ls", list_address,
                                                            "--json"))}


# --- help ---------------------------------------------------------------------------------

ISSUE_COMMANDS = [
    ("list", "create"), ("list", "ls"), ("list", "show"), ("list", "delete"),
    ("member", "add"), ("member", "remove"), ("member", "ls"), ("member", "import"),
    ("held", "ls"), ("archive", "import"), ("archive", "threads"), ("serve",),
    ("db", "upgrade"),
]


def command_paths(command: typer.core.TyperGroup, prefix: tuple[str, ...] = ()
                  ) -> list[tuple[str, ...]]:
    """Every command and group under `listserv`, as the words that invoke it."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


def test_every_command_answers_help_with_its_description(cli):
    root = typer.main.get_command(app)
    paths = command_paths(root)
    assert set(ISSUE_COMMANDS) <= set(paths)
    for path in paths:
        result = ok(cli(*path, "--help"))
        assert "Usage:" in result.stdout, path
        command = root
        for word in path:
            command = command.commands[word]
        assert command.help, f"listserv {' '.join(path)} has no help text"


@functools.cache
def help_of(path: tuple[str, ...]) -> str:
    """`listserv PATH --help` as a user's terminal shows it, from the installed script."""
    proc = run_listserv(*path, "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_names_values_by_capital_metavars_never_by_python_types():
    root = typer.main.get_command(app)
    for path in command_paths(root):
        text = help_of(path)
        assert not re.search(r"<(str|int|bool|path|list\[\w+\]|\w+\|\w+)>", text), (path, text)
        usage = text.split("Usage: ", 1)[1].splitlines()[0].split()
        for word in usage[len(path) + 1:]:
            assert word.strip("[].") == word.strip("[].").upper(), (path, usage)


def test_each_command_shows_an_example_and_rewraps_its_docstring():
    root = typer.main.get_command(app)
    for path in command_paths(root):
        command = root
        for word in path:
            command = command.commands[word]
        if getattr(command, "commands", None):
            continue  # a group: its commands have the examples
        text = help_of(path)
        examples = text.partition("\n  Example")[2]
        assert "listserv " in examples and " ".join(path) in examples, (path, text)
        # The description is rewrapped to the terminal: no docstring line break left in
        # mid-sentence, so every line but a paragraph's last is full.
        description = text.split("\n\n")[1].splitlines()
        assert all(len(line) > 30 for line in description[:-1]), (path, description)


def test_the_command_line_loads_no_server_part_before_a_command_runs():
    """`listserv --help` took 1.7 s when the CLI imported the whole server; each command
    now imports what it needs (bench/cli_start.py measures the time)."""
    heavy = {"sqlalchemy", "sqlmodel", "alembic", "flanker", "jinja2", "aiosmtpd", "rich"}
    proc = subprocess.run([sys.executable, "-c", "import sys, listserv.cli; print(' '.join("
                           "sorted({m.split('.')[0] for m in sys.modules})))"],
                          capture_output=True, text=True, check=True)
    assert heavy.isdisjoint(proc.stdout.split()), proc.stdout


# --- list ---------------------------------------------------------------------------------

def test_schema_is_created_on_first_use(cli):
    assert as_json(cli("list", "ls", "--json")) == []


def test_list_create_owner_is_owner_and_member(cli):
    ok(cli("list", "create", LIST, "--owner", "ann@example.org", "--name", "Developers",
           "--description", "[dev] talk"))
    assert roles(cli) == {("ann@example.org", "owner"), ("ann@example.org", "member")}
    info = as_json(cli("list", "show", LIST, "--json"))
    assert (info["address"], info["name"], info["description"]) == (LIST, "Developers",
                                                                    "[dev] talk")
    assert (info["members"], info["owners"], info["moderators"]) == (1, 1, 0)


def test_list_texts_are_printed_as_written_not_as_markup(cli):
    """Rich markup in a name or description ("[dev]", "[/x]") must neither vanish nor crash."""
    ok(cli("list", "create", LIST, "--name", "[dev] list", "--description", "[/x] odd"))
    shown = ok(cli("list", "show", LIST)).stdout
    assert "name: [dev] list" in shown
    assert "description: [/x] odd" in shown
    assert "[dev] list" in ok(cli("list", "ls")).stdout


def test_list_texts_are_printed_without_turning_emoji_codes_into_emoji(cli):
    """A ":thumbs_up:" in a name is text someone typed, not a picture to draw."""
    created = ok(cli("list", "create", LIST, "--name", ":thumbs_up: team")).stdout
    assert created == f"created {LIST} (:thumbs_up: team)\n"
    assert "name: :thumbs_up: team" in ok(cli("list", "show", LIST)).stdout


def test_list_ls_json_lists_every_list(cli):
    ok(cli("list", "create", "b@lists.example.org"))
    ok(cli("list", "create", "a@lists.example.org", "--description", "first"))
    rows = as_json(cli("list", "ls", "--json"))
    assert [(r["address"], r["description"]) for r in rows] == [
        ("a@lists.example.org", "first"), ("b@lists.example.org", "")]


def test_list_delete_yes_removes_the_list_and_its_members(cli):
    ok(cli("list", "create", LIST, "--owner", "ann@example.org"))
    ok(cli("list", "delete", LIST, "--yes"))
    assert as_json(cli("list", "ls", "--json")) == []
    # The address is free again, with no members left over from before.
    ok(cli("list", "create", LIST))
    assert roles(cli) == set()


def test_list_delete_without_yes_and_no_tty_refuses(cli, config_file):
    ok(cli("list", "create", LIST))
    assert_one_line_error(run_listserv("--config", config_file, "list", "delete", LIST), LIST)
    assert [r["address"] for r in as_json(cli("list", "ls", "--json"))] == [LIST]


@pytest.mark.parametrize("args, named", [
    (["list", "show", "nope@lists.example.org"], "nope@lists.example.org"),
    (["list", "show", "nope@lists.example.org", "--json"], "nope@lists.example.org"),
    (["list", "delete", "nope@lists.example.org", "--yes"], "nope@lists.example.org"),
    (["list", "create", LIST], LIST),
    (["list", "create", "DEV@Lists.Example.org"], LIST),
    (["list", "create", "not-an-address"], "not-an-address"),
    (["list", "create", "dev-owner@lists.example.org"], "dev-owner"),
    (["list", "create", "new@lists.example.org", "--owner", "nobody"], "nobody"),
    (["member", "add", "nope@lists.example.org", "ann@example.org"], "nope@lists.example.org"),
    (["member", "ls", "nope@lists.example.org", "--json"], "nope@lists.example.org"),
    (["held", "ls", "nope@lists.example.org", "--json"], "nope@lists.example.org"),
    (["archive", "threads", "nope@lists.example.org", "--json"], "nope@lists.example.org"),
    (["member", "import", LIST, "missing.csv"], "missing.csv"),
    (["archive", "import", LIST, "missing.mbox"], "missing.mbox"),
])
def test_errors_are_one_line_and_exit_1(make_list, config_file, args, named):
    make_list(LIST)
    assert_one_line_error(run_listserv("--config", config_file, *args), named)


@pytest.mark.parametrize("args, named", [
    (["member", "add"], "LIST"),
    (["member", "add", LIST, "ann@example.org", "--role", "boss"], "boss"),
    (["held", "approve", "not-a-number"], "ID"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_errors_are_one_line_too(make_list, config_file, args, named):
    make_list(LIST)
    proc = run_listserv("--config", config_file, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and named in proc.stderr, proc.stderr


def test_failed_create_leaves_nothing_behind(cli):
    """An invalid --owner refuses the whole command: no list without its owner."""
    assert cli("list", "create", LIST, "--owner", "nobody").exit_code != 0
    assert as_json(cli("list", "ls", "--json")) == []


# --- member -------------------------------------------------------------------------------

def test_member_add_reports_bad_and_existing_addresses_and_adds_the_rest(make_list, cli,
                                                                           config_file):
    make_list(LIST, owner="owner@example.org")
    proc = run_listserv("--config", config_file, "member", "add", LIST, "new@example.org",
                        "not-an-address", "owner@example.org", "Other <Other@example.net>")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "not-an-address" in proc.stderr
    assert "owner@example.org" in proc.stderr
    assert roles(cli) == {("owner@example.org", "owner"), ("owner@example.org", "member"),
                          ("new@example.org", "member"), ("other@example.net", "member")}


def test_member_add_role_moderator_does_not_make_a_member(make_list, cli):
    make_list(LIST, owner=None)
    ok(cli("member", "add", LIST, "mod@example.org", "--role", "moderator"))
    assert roles(cli) == {("mod@example.org", "moderator")}
    # The same address may also be a member: a second role, not a duplicate.
    ok(cli("member", "add", LIST, "mod@example.org"))
    assert roles(cli) == {("mod@example.org", "moderator"), ("mod@example.org", "member")}


def test_member_remove_removes_every_role_and_reports_unknown(make_list, cli, config_file):
    make_list(LIST, owner="owner@example.org", members=["ann@example.org"])
    proc = run_listserv("--config", config_file, "member", "remove", LIST,
                        "owner@example.org", "ghost@example.org")
    assert proc.returncode == 1
    assert "ghost@example.org" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert roles(cli) == {("ann@example.org", "member")}


@pytest.mark.parametrize("content, expected", [
    pytest.param("address\nann@example.org\nbob@example.org\n",
                 {"ann@example.org", "bob@example.org"}, id="csv-address-column-only"),
    pytest.param("ann@example.org\n\nBob <bob@example.org>\n# a comment\n  carl@example.org  \n",
                 {"ann@example.org", "bob@example.org", "carl@example.org"}, id="one-per-line"),
    pytest.param("\nname,Email,city\nAnn,ann@example.org,Oslo\n,,\n\n"
                 "Bob,bob@example.org,Rome\nAnn again,ANN@example.org,Oslo\n",
                 {"ann@example.org", "bob@example.org"}, id="csv-email-column-blanks-dupes"),
    pytest.param('"name";"address"\n"Smith; Ann";ann@example.org\n',
                 {"ann@example.org"}, id="csv-semicolons-quoted"),
    pytest.param("\ufeffaddress,name\r\nann@example.org,Ann\r\n",
                 {"ann@example.org"}, id="csv-bom-crlf"),
])
def test_member_import_reads_csv_and_plain_lists(make_list, cli, tmp_path, content, expected):
    make_list(LIST, owner=None)
    path = tmp_path / "members.txt"
    path.write_text(content, encoding="utf-8")
    ok(cli("member", "import", LIST, path))
    assert roles(cli) == {(a, "member") for a in expected}


def test_member_import_reports_on_stderr_and_keeps_stdout_to_the_summary(make_list, cli,
                                                                          config_file,
                                                                          tmp_path):
    make_list(LIST, owner=None, members=["old@example.org"])
    path = tmp_path / "members.txt"
    path.write_text("new@example.org\nold@example.org\nnot-an-address\nnew@example.org\n")
    proc = run_listserv("--config", config_file, "member", "import", LIST, path)
    assert proc.returncode == 1, proc.stderr  # a line was refused; the others went in
    # The progress bar and the per-address reports go to stderr; stdout is the summary.
    assert proc.stdout.splitlines() == ["added 1, already members 2, invalid 1"]
    assert "not-an-address" in proc.stderr
    assert "old@example.org" in proc.stderr
    assert roles(cli) == {("new@example.org", "member"), ("old@example.org", "member")}


def test_member_import_csv_without_address_column_is_one_line_error(make_list, config_file,
                                                                     tmp_path):
    make_list(LIST)
    path = tmp_path / "members.csv"
    path.write_text("name,phone\nAnn,123\n")
    assert_one_line_error(run_listserv("--config", config_file, "member", "import", LIST,
                                       path), "address")


# --- held, archive ------------------------------------------------------------------------

def test_held_ls_shows_a_held_post(make_list, cli, engine: Engine, config_file):
    make_list(LIST, members=["ann@example.org"])
    post = message("[dev] Who can help?", sender="stranger@example.net")
    outcomes = ingest_mail(engine, config_mod.load(config_file), "stranger@example.net",
                           [LIST], post.encode())
    assert [o.state for o in outcomes] == ["held"]
    rows = as_json(cli("held", "ls", LIST, "--json"))
    assert len(rows) == 1
    assert isinstance(rows[0]["id"], int)
    assert rows[0]["sender"] == "stranger@example.net"
    assert rows[0]["subject"] == "[dev] Who can help?"
    assert "non-member" in rows[0]["reason"]
    assert "[dev]" in ok(cli("held", "ls", LIST)).stdout


def test_held_ls_of_every_list_prints_addresses_whole(make_list, engine, config_file):
    """At 80 columns the table squeezed "dev@lists.example.org" to "dev@lists.example.o…":
    an address an operator cannot copy. The subject and reason wrap instead."""
    make_list(LIST, members=["ann@example.org"])
    sender = "a.rather.long.sender.name@example.net"
    post = message("A subject " * 4, sender=sender)
    ingest_mail(engine, config_mod.load(config_file), sender, [LIST], post.encode())
    proc = run_listserv("--config", config_file, "held", "ls", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert LIST in proc.stdout and sender in proc.stdout


def test_held_ls_is_empty_without_held_posts(make_list, cli):
    make_list(LIST)
    assert as_json(cli("held", "ls", LIST, "--json")) == []


def test_archive_import_threads_like_notmuch_and_skips_duplicates(make_list, cli,
                                                                   config_file):
    make_list(LIST)
    first = run_listserv("--config", config_file, "archive", "import", LIST, NOTMUCH)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 1  # the progress bar stays on stderr
    rows = as_json(cli("archive", "threads", LIST, "--json"))
    expected = json.loads(NOTMUCH_PARENTS.read_text())["notmuch"]["nearest_real_parent"]
    assert {r["message_id"]: r["parent_id"] for r in rows} == expected
    assert len(rows) == len(expected)  # the mbox's one duplicate Message-ID is stored once
    ok(cli("archive", "import", LIST, NOTMUCH))
    assert as_json(cli("archive", "threads", LIST, "--json")) == rows


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(c) for c in path.read_text().split()} if path.exists() else set()


def _running(pid: int) -> bool:
    try:  # the state follows the command's name in parentheses; Z: exited, not yet reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists() or (os.cpu_count() or 1) < 2,
                    reason="reads child processes from Linux's /proc; parses in-process "
                           "on one core")
def test_sigterm_stops_an_import_with_its_parsing_processes(make_list, config_file, tmp_path):
    """A supervisor's or a user's `kill` ends an import as Ctrl-C does: its parsing
    processes go with it (they used to wait for work forever) and it says so."""
    make_list(LIST)
    box = mailbox.mbox(tmp_path / "big.mbox")
    for n in range(30_000):
        box.add(message(f"Post {n}", body=f"Body {n}\n").encode())
    box.close()
    proc = start_listserv("--config", config_file, "archive", "import", LIST,
                          tmp_path / "big.mbox")
    helpers: set[int] = set()
    for _ in range(300):
        helpers = _children(proc.pid)
        if helpers or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert helpers, "the import started no parsing process"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    for _ in range(100):
        if not any(_running(pid) for pid in helpers):
            break
        time.sleep(0.1)
    assert not any(_running(pid) for pid in helpers)


def test_archive_import_leaves_postgresql_its_statistics(make_list, cli, engine):
    """PostgreSQL planned a freshly imported archive as an empty one until autovacuum came
    round; the import runs ANALYZE itself."""
    if db.is_sqlite(engine):
        pytest.skip("SQLite's planner keeps no statistics here")
    make_list(LIST)
    ok(cli("archive", "import", LIST, NOTMUCH))
    with engine.connect() as connection:
        analyzed = connection.execute(text(
            "SELECT relname, reltuples FROM pg_class WHERE relnamespace = "
            "current_schema()::regnamespace AND relname IN ('message', 'thread_node', "
            "'thread_summary', 'message_search')")).all()
    assert len(analyzed) == 4 and all(tuples > 0 for _, tuples in analyzed), analyzed


# --- db, serve ----------------------------------------------------------------------------

def test_db_upgrade_on_a_fresh_database_and_again(cli, db_url):
    ok(cli("db", "upgrade"))
    ok(cli("db", "upgrade"))
    engine = db.make_engine(db_url)
    try:
        assert {"alembic_version", "mailing_list", "member", "message"} <= set(
            inspect(engine).get_table_names())
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1
    finally:
        engine.dispose()
    ok(cli("list", "create", LIST))
    assert [r["address"] for r in as_json(cli("list", "ls", "--json"))] == [LIST]


@pytest.mark.slow
def test_serve_receives_and_delivers_until_sigterm(make_list, sink, tmp_path, db_url):
    make_list(LIST, members=["ann@example.org"])
    proc = start_serve(tmp_path, db_url, sink.port)
    try:
        smtp_port, web_port, _ = ports_logged(proc)  # port 0: any free port, as logged
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("ann@example.org", [LIST], message("Hi", sender="ann@example.org"))
        assert sorted(sink.wait_for(2)) == ["ann@example.org", "owner@example.org"]
        # base_url named port 0 too: the links in a copy name the port the web got.
        [copy] = sink.copies_to("ann@example.org")
        assert f"<http://127.0.0.1:{web_port}/unsubscribe/".encode() in copy
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
