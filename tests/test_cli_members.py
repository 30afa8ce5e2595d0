"""The admin's command line for people: member imports from the systems lists leave
(Google Groups, Mailman 3), `member show` across lists, `sender remove`, `held ls` of
every list, `list show`'s built-in prefix and footer, and `bounce ls --by-member`.

Every command runs as the installed console script, in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

from listserv import config as config_mod
from tests.helpers import (
    DATA,
    MAILBOX,
    TRANSIENT,
    assert_one_line_error,
    bounce,
    dsn,
    ingest_mail,
    mails_to,
    message,
    run_listserv,
)

LIST = "dev@lists.example.org"
OTHER = "ops@lists.example.org"
IMPORTS = DATA / "imports"


def listserv(config: Path, *args: str | Path, code: int = 0) -> str:
    """stdout of `listserv --config CONFIG ARGS`, which must exit with `code`."""
    proc = run_listserv("--config", config, *args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def members(config: Path, list_address: str = LIST) -> dict[str, tuple[str, str]]:
    """address -> (name, delivery) of the list's members."""
    rows = json.loads(listserv(config, "member", "ls", list_address, "--json"))
    return {r["address"]: (r["name"], r["delivery"]) for r in rows if r["role"] == "member"}


# --- member import ----------------------------------------------------------------------

def test_google_groups_export_is_imported_as_downloaded(make_list, config_file):
    make_list(LIST, owner=None)
    proc = run_listserv("--config", config_file, "member", "import", LIST,
                        IMPORTS / "google-groups-members.csv")
    # The bad address is refused (exit 1), the rest went in; the invited person is not
    # a member in Google Groups, so not here either.
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not-an-address" in proc.stderr and "eve@example.org" in proc.stderr
    assert proc.stdout.splitlines() == ["added 4, already members 0, invalid 1"]
    assert members(config_file) == {
        "ann@example.org": ("Ann Smith", "regular"),
        "bob@example.org": ("", "digest-mime"),
        "cat@example.org": ("Lee, Cat", "summary"),  # Abridged: Google Groups' summary
        "dan@example.org": ("Dan", "nomail"),
    }


def test_mailman3_members_csv_and_list_keep_names_and_delivery(make_list, config_file):
    make_list(LIST, owner=None)
    make_list(OTHER, owner=None)
    listserv(config_file, "member", "import", LIST, IMPORTS / "mailman3-members.csv")
    assert members(config_file) == {"ann@example.org": ("Ann Smith", "regular"),
                                    "bob@example.org": ("Bob Jones", "digest-mime"),
                                    "cat@example.org": ("", "digest-plain")}
    listserv(config_file, "member", "import", OTHER, IMPORTS / "mailman3-members.txt")
    assert members(config_file, OTHER) == {"ann@example.org": ("Ann Smith", "regular"),
                                           "bob@example.org": ("", "regular"),
                                           "cat@example.org": ("Lee, Cat", "regular")}


def test_any_csv_name_and_delivery_columns_count_and_a_bad_delivery_is_refused(
        make_list, tmp_path, config_file):
    make_list(LIST, owner=None)
    path = tmp_path / "members.csv"
    path.write_text("Name;Address;Delivery\nAnn;ann@example.org;digest-plain\n"
                    "Bob;bob@example.org;weekly\n")
    proc = run_listserv("--config", config_file, "member", "import", LIST, path)
    assert proc.returncode == 1
    assert "line 3" in proc.stderr and "weekly" in proc.stderr
    assert members(config_file) == {"ann@example.org": ("Ann", "digest-plain")}


def test_import_welcome_sends_each_new_member_the_welcome(make_list, running, sink, tmp_path,
                                                          config_file):
    make_list(LIST, owner=None, members=["old@example.org"])
    path = tmp_path / "members.txt"
    path.write_text("old@example.org\nnew@example.org\n")
    listserv(config_file, "member", "import", LIST, path, "--welcome")
    [welcome] = mails_to(sink, "new@example.org")
    assert welcome["Subject"] == f"Welcome to {LIST}"
    assert mails_to(sink, "old@example.org", 0) == []


# --- member show, sender remove, held ls ------------------------------------------------

def test_member_show_lists_every_list_of_an_address(make_list, config_file):
    make_list(LIST, owner="ann@example.org")
    make_list(OTHER, owner=None, members=["ann@example.org"])
    make_list("quiet@lists.example.org", owner=None)
    listserv(config_file, "member", "set", OTHER, "ann@example.org", "--delivery", "nomail")
    rows = json.loads(listserv(config_file, "member", "show", "ANN@example.org", "--json"))
    assert [(r["list"], r["role"], r["delivery"], r["bounce_score"]) for r in rows] == [
        (LIST, "member", "regular", 0.0), (LIST, "owner", "regular", 0.0),
        (OTHER, "member", "nomail", 0.0)]
    text = listserv(config_file, "member", "show", "ann@example.org")
    assert text.splitlines()[0].split() == ["list", "role", "delivery", "status", "bounce",
                                            "score", "options"]
    assert f"{OTHER}  member  nomail  enabled  0  -" in text
    assert_one_line_error(run_listserv("--config", config_file, "member", "show",
                                       "nobody@example.org"), "nobody@example.org")


def test_member_ls_prints_a_line_a_member_as_member_show_does(make_list, config_file,
                                                              tmp_path):
    """A line a member, no table: drawing a rich table of a list of 20,000 took half a
    minute, and its box characters got in the way of grep and cut."""
    make_list(LIST, owner="owner@example.org")
    people = tmp_path / "people.txt"
    people.write_text("Ann Smith <ann@example.org>\nbob@example.org\n")
    listserv(config_file, "member", "import", LIST, people)
    listserv(config_file, "member", "set", LIST, "bob@example.org", "--own-posts", "no")
    assert listserv(config_file, "member", "ls", LIST).splitlines() == [
        "address  role  delivery  status  options  name",
        "ann@example.org  member  regular  enabled  -  Ann Smith",
        "bob@example.org  member  regular  enabled  own_posts=no  -",
        "owner@example.org  member  regular  enabled  -  -",
        "owner@example.org  owner  regular  enabled  -  -"]


def test_sender_remove_undoes_a_deny_entry(make_list, config_file, engine):
    make_list(LIST)
    listserv(config_file, "sender", "deny", LIST, "Spam@Example.net")
    config = config_mod.load(config_file)
    post = message("Hello", sender="spam@example.net").encode()
    assert [o.state for o in ingest_mail(engine, config, "spam@example.net", [LIST],
                                         post)] == ["discarded"]
    assert listserv(config_file, "sender", "remove", LIST, "spam@example.net") == (
        "spam@example.net: removed\n")
    assert json.loads(listserv(config_file, "sender", "ls", LIST, "--json")) == []
    # A non-member again: held for a moderator, not discarded.
    post = message("Hello again", sender="spam@example.net").encode()
    assert [o.state for o in ingest_mail(engine, config, "spam@example.net", [LIST],
                                         post)] == ["held"]
    assert_one_line_error(run_listserv("--config", config_file, "sender", "remove", LIST,
                                       "spam@example.net"), "spam@example.net")


def test_held_ls_without_a_list_shows_every_lists_held_posts(make_list, engine,
                                                            config_file):
    make_list(LIST)
    make_list(OTHER)
    config = config_mod.load(config_file)
    for list_address in (LIST, OTHER):
        post = message(f"For {list_address}", sender="stranger@example.net",
                       to=list_address).encode()
        ingest_mail(engine, config, "stranger@example.net", [list_address], post)
    rows = json.loads(listserv(config_file, "held", "ls", "--json"))
    assert [(r["list"], r["subject"]) for r in rows] == [(LIST, f"For {LIST}"),
                                                         (OTHER, f"For {OTHER}")]
    assert [r["list"] for r in json.loads(listserv(config_file, "held", "ls", OTHER,
                                                   "--json"))] == [OTHER]


# --- list show, bounce ls ---------------------------------------------------------------

def test_list_show_names_the_built_in_prefix_and_footer(make_list, config_file):
    make_list(LIST, name="Dev")
    text = listserv(config_file, "list", "show", LIST)
    assert "subject_prefix: [Dev] (default)" in text
    assert "footer (default):\n  ______" in text
    assert "None" not in text
    info = json.loads(listserv(config_file, "list", "show", LIST, "--json"))
    assert info["subject_prefix"] == "[Dev]" and "mailing list" in info["footer"]
    assert info["defaults"] == ["subject_prefix", "footer"]
    listserv(config_file, "list", "set", LIST, "subject_prefix", "")
    listserv(config_file, "list", "set", LIST, "footer", "")
    text = listserv(config_file, "list", "show", LIST)
    assert "subject_prefix: (none)" in text and "footer: (none)" in text
    assert json.loads(listserv(config_file, "list", "show", LIST, "--json"))["defaults"] == []


def test_bounce_ls_has_a_header_and_by_member_one_line_a_member(running, make_list,
                                                               config_file):
    make_list(LIST, members=["bob@example.com", "carol@example.net"])
    bounce(running, dsn(MAILBOX))
    bounce(running, dsn(TRANSIENT))
    bounce(running, dsn(MAILBOX, "carol@example.net"),
           to="dev-bounces+carol=example.net@lists.example.org")
    lines = listserv(config_file, "bounce", "ls", LIST).splitlines()
    assert lines[0].split()[:3] == ["time", "member", "class"]
    assert len(lines) == 4
    lines = listserv(config_file, "bounce", "ls", LIST, "--by-member").splitlines()
    assert lines[0].split()[:3] == ["member", "bounces", "score"]
    assert sorted(line.split()[:3] for line in lines[1:]) == [
        ["bob@example.com", "2", "1"], ["carol@example.net", "1", "1"]]
    rows = json.loads(listserv(config_file, "bounce", "ls", LIST, "--by-member", "--json"))
    bob = next(r for r in rows if r["member"] == "bob@example.com")
    assert (bob["bounces"], bob["last_class"], bob["state"]) == (2, "transient", "enabled")
