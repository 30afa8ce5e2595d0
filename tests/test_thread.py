"""Threading checked against real mail: the mboxes in tests/data/corpus/threads/ and
the structure two independent threaders computed for them (see that folder's README).

notmuch threads on In-Reply-To/References only, as we do; its `nearest_real_parent` is
the expected parent of every message (the README explains why jwzthreading's parents
are not trusted). The pure decisions in thread.py are checked in several arrival
orders, then the store through `listserv archive import` and `archive threads --json`.
"""

from __future__ import annotations

import hashlib
import json
import mailbox
import random
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from typer.testing import CliRunner, Result

from listserv import archive_export, archive_import, db, mbox, roster, store, thread
from listserv.cli import app
from listserv.models import Follow, Mute
from listserv.parse import Parsed, parse
from tests.helpers import CORPUS, corpus_path, message

THREADS = CORPUS / "threads"
LIST = "dev@lists.example.org"
DOMAIN = "lists.example.org"
MAVEN = "apache-maven-dev-2017-11_12"

# expected/NAME.threads.json -> the input both threaders read
CASES = {
    "notmuch-list-2009": "notmuch-list-2009.mbox",
    MAVEN: "apache-maven-dev-2017-11_12.mbox",
    "tricky-threading-ghost-root": "tricky/threading-ghost-root",
    "tricky-threading-parent-priority": "tricky/threading-parent-priority",
    "tricky-duplicate": "tricky/duplicate",
    "tricky-maven-duplicates": "tricky/maven-duplicates",
}

ORDERS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "file": list,
    "reversed": lambda raws: raws[::-1],
    "shuffled": lambda raws: random.Random(20171105).sample(raws, len(raws)),
}

Groups = set[frozenset[str]]


# --- the corpus and what the reference threaders made of it ----------------------------

def threads_input(name: str) -> Path:
    return corpus_path(f"threads/{name}")


def read_mbox(path: Path) -> list[bytes]:
    box = mailbox.mbox(path, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


@cache
def corpus(name: str) -> tuple[bytes, ...]:
    """The messages of an input in the order both reference drivers read them."""
    path = threads_input(name)
    if path.is_file():
        return tuple(read_mbox(path))
    raws: list[bytes] = []
    for file in sorted(path.iterdir()):
        raws += read_mbox(file) if file.suffix == ".mbox" else [file.read_bytes()]
    return tuple(raws)


@cache
def notmuch(name: str) -> dict:
    return json.loads((THREADS / "expected" / f"{name}.threads.json").read_text())["notmuch"]


@cache
def parsed(raw: bytes) -> Parsed:
    return parse(raw)


def notmuch_id(raw: bytes) -> str:
    """The id notmuch indexed a message under: its own, else a hash of its bytes."""
    return parsed(raw).message_id or f"notmuch-sha1-{hashlib.sha1(raw).hexdigest()}"


def stored_id(raw: bytes) -> str:
    """The id the archive keeps a message under; generated when it came without one."""
    return parsed(raw).message_id or store.generated_message_id(raw, DOMAIN)


def renamer(raws: Iterable[bytes]) -> Callable[[str], str]:
    """notmuch's id -> ours: they differ for a message that came without one."""
    ours = {notmuch_id(raw): stored_id(raw) for raw in raws}
    return lambda mid: ours.get(mid, mid)


def tree_ids(node: dict) -> frozenset[str]:
    """The messages of a notmuch tree; a dummy node is no message, it only groups."""
    own = frozenset() if node["dummy"] else frozenset([node["id"]])
    return own.union(*(tree_ids(child) for child in node["children"]))


def notmuch_threads(name: str, raws: Iterable[bytes] = ()) -> Groups:
    """notmuch's threads; with `raws`, under the ids the archive gives them."""
    rename = renamer(raws)
    return {frozenset(map(rename, tree_ids(tree))) for tree in notmuch(name)["threads"]}


def dummy_rooted(name: str) -> list[frozenset[str]]:
    """notmuch threads with several top-level messages: held together by an absent one."""
    return [tree_ids(tree) for tree in notmuch(name)["threads"] if tree["dummy"]]


def group(rows: Iterable[tuple[str, str]]) -> Groups:
    """(message_id, thread_id) pairs -> the sets of messages that share a thread."""
    threads: dict[str, set[str]] = {}
    for mid, tid in rows:
        threads.setdefault(tid, set()).add(mid)
    return {frozenset(g) for g in threads.values()}


# --- the pure functions ---------------------------------------------------------------

@cache
def linked(name: str, order: str) -> dict[str, thread.Node]:
    """Thread an input's messages one by one in an arrival order; a repeated id is
    skipped, as the store skips it. No subject fallback: References threading only."""
    nodes: dict[str, thread.Node] = {}
    for raw in ORDERS[order](list(corpus(name))):
        mid = notmuch_id(raw)
        if mid not in nodes or not nodes[mid].real:
            thread.link(nodes, mid, parsed(raw))
    return nodes


def real_ids(nodes: dict[str, thread.Node]) -> list[str]:
    return [mid for mid, node in nodes.items() if node.real]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", CASES)
def test_parents_match_notmuch_in_any_arrival_order(name, order):
    nodes = linked(CASES[name], order)
    assert thread.nearest_real_parents(nodes) == notmuch(name)["nearest_real_parent"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", CASES)
def test_threads_match_notmuch_in_any_arrival_order(name, order):
    # Without the subject fallback (the store decides it, see the CLI tests below) a
    # thread is what References/In-Reply-To hold together, which is notmuch's definition.
    nodes = linked(CASES[name], order)
    assert group((mid, nodes[mid].thread_id) for mid in real_ids(nodes)) == \
        notmuch_threads(name)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", CASES)
def test_absent_message_holding_a_thread_together_is_a_placeholder_root(name, order):
    # Where notmuch shows a thread with several top-level messages, the message they
    # all descend from never arrived: our thread hangs from a placeholder for it.
    nodes = linked(CASES[name], order)
    for members in dummy_rooted(name):
        (root,) = {nodes[mid].thread_id for mid in members}
        assert root in nodes and not nodes[root].real


@pytest.mark.parametrize("order", ORDERS)
def test_two_messages_answering_each_other_make_one_thread_with_a_root(order):
    # tricky/broken-loop: each In-Reply-To names the other. No order-free answer
    # exists (jwzthreading loses both, notmuch picks one); we need one thread, one root.
    nodes = linked("tricky/broken-loop", order)
    parents = thread.nearest_real_parents(nodes)
    (root,) = [mid for mid, parent in parents.items() if parent is None]
    (reply,) = set(parents) - {root}
    assert parents[reply] == root
    assert {nodes[root].thread_id, nodes[reply].thread_id} == {root}


def test_a_post_with_5000_references_links_only_its_nearest_ancestors():
    # Each placeholder linked checked the chain above it for a loop: 5,000 References
    # held the writer for 4 s, and every page walked what they made.
    references = " ".join(f"<ghost{n}@x>" for n in range(5000))
    bomb = parsed(b"Message-ID: <bomb@x>\nReferences: " + references.encode() + b"\n\nHi\n")
    nodes: dict[str, thread.Node] = {}
    thread.link(nodes, "bomb@x", bomb)
    assert len(nodes) == thread.MAX_CHAIN + 1 and nodes["bomb@x"].parent_id == "ghost4999@x"
    assert nodes[f"ghost{5000 - thread.MAX_CHAIN}@x"].parent_id is None


class CountedNodes(dict):
    """Nodes that count how often a walk looks one up."""

    lookups = 0

    def __getitem__(self, key: str) -> thread.Node:
        self.lookups += 1
        return super().__getitem__(key)


def test_posts_under_a_chain_of_placeholders_find_their_parent_in_one_pass():
    # 200 answers to a post with 5,000 References hang from a chain of 5,000
    # placeholders; walking it for each of them made the thread page cost 200 × 5,000.
    nodes = CountedNodes(root=thread.Node("root", real=True))
    for n in range(5000):
        nodes[f"ghost{n}"] = thread.Node(f"ghost{n}", parent_id=f"ghost{n - 1}" if n else "root")
    answers = [f"answer{n}" for n in range(200)]
    nodes.update({mid: thread.Node(mid, real=True, parent_id="ghost4999") for mid in answers})
    assert thread.nearest_real_parents(nodes) == {"root": None} | dict.fromkeys(answers, "root")
    assert nodes.lookups <= 2 * len(nodes)


# --- through the store and the CLI ----------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli(tmp_path: Path, db_url: str, make_list: Callable) -> Callable[..., Result]:
    """`listserv --config ... ARGS` on the test database, where the list exists."""
    config = tmp_path / "listserv.toml"
    config.write_text(f"[database]\nurl = {json.dumps(db_url)}\n")
    make_list(LIST)

    def run(*args: str) -> Result:
        result = runner.invoke(app, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result
    return run


def import_into_list(cli: Callable[..., Result], path: Path) -> str:
    """What `archive import` printed: the progress bar (stderr), then the summary."""
    return cli("archive", "import", LIST, str(path)).output


def archived(cli: Callable[..., Result]) -> dict[str, dict]:
    """`archive threads --json` by Message-ID; each stored message is there once."""
    rows = json.loads(cli("archive", "threads", LIST, "--json").stdout)
    by_id = {row["message_id"]: row for row in rows}
    assert len(by_id) == len(rows)
    return by_id


def write_mbox(path: Path, raws: Iterable[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in raws:
        box.add(raw)
    box.close()
    return path


def write_maildir(path: Path, raws: Iterable[bytes]) -> Path:
    box = mailbox.Maildir(path)
    for raw in raws:
        box.add(raw)
    return path


def expected_parents(name: str, raws: Iterable[bytes]) -> dict[str, str | None]:
    """notmuch's parents, under the ids the archive uses."""
    rename = renamer(raws)
    return {rename(mid): rename(parent) if parent else None
            for mid, parent in notmuch(name)["nearest_real_parent"].items()}


def parents(rows: dict[str, dict]) -> dict[str, str | None]:
    return {mid: row["parent_id"] for mid, row in rows.items()}


def threads(rows: dict[str, dict]) -> Groups:
    return group((mid, row["thread_id"]) for mid, row in rows.items())


def maven_threads_with_subject_fallback(raws: tuple[bytes, ...]) -> Groups:
    """notmuch's threads, plus what the subject fallback does on this mbox.

    A "Re:" with no In-Reply-To and no References joins the thread of the subject it
    answers, without a parent. anomalies.json lists three such replies: the two
    "Re: Reactor safe/rally points" (one with no Message-ID, one with replies of its
    own) answer "Reactor safe/rally points", earlier in the mbox, so their notmuch
    threads merge into its thread; "Re: main-class + module-version" answers a message
    that is not in the mbox, so nothing earlier matches and its thread stays as is.
    """
    groups = notmuch_threads(MAVEN, raws)
    anomalies = json.loads((THREADS / "expected" / f"{MAVEN}.anomalies.json").read_text())
    subject_only = [raws[a["mbox_index"] - 1]  # 1-based
                    for a in anomalies["reply_subject_without_reply_headers"]]
    joining = {stored_id(r) for r in subject_only
               if parsed(r).subject == "Re: Reactor safe/rally points"}
    (answered,) = [stored_id(r) for r in raws
                   if parsed(r).subject == "Reactor safe/rally points"]
    assert len(subject_only) == 3 and len(joining) == 2
    merged = frozenset().union(*(g for g in groups if g & {answered, *joining}))
    return {g for g in groups if not g & merged} | {merged}


def test_import_maven_mbox_threads_like_notmuch_plus_subject_fallback(cli):
    raws = corpus(CASES[MAVEN])
    summary = import_into_list(cli, threads_input(CASES[MAVEN]))
    assert "538/538" in summary  # the progress bar, at its end
    assert "538 messages read: 538 imported, 0 duplicates skipped" in summary
    rows = archived(cli)
    assert parents(rows) == expected_parents(MAVEN, raws)
    assert threads(rows) == maven_threads_with_subject_fallback(raws)


def test_a_large_import_parsed_in_other_processes_threads_the_same(cli, monkeypatch):
    """Past archive_import.IN_PROCESS mails, `archive import` parses in other processes (here
    from the 10th mail on): the archive must come out as if parsed in-process."""
    monkeypatch.setattr(archive_import, "IN_PROCESS", 10)
    monkeypatch.setattr(archive_import, "PARSE_CHUNK", 64)  # several chunks in flight
    raws = corpus(CASES[MAVEN])
    summary = import_into_list(cli, threads_input(CASES[MAVEN]))
    assert "538 messages read: 538 imported, 0 duplicates skipped" in summary
    rows = archived(cli)
    assert parents(rows) == expected_parents(MAVEN, raws)
    assert threads(rows) == maven_threads_with_subject_fallback(raws)


def test_parsing_in_other_processes_gives_what_parsing_here_gives(monkeypatch):
    monkeypatch.setattr(archive_import, "IN_PROCESS", 10)
    mails = [mbox.Mail(raw) for raw in corpus(CASES[MAVEN])]
    here = list(archive_import.parsed_mails(mails, workers=0))
    there = list(archive_import.parsed_mails(mails, workers=2))
    assert there == here
    assert [read.mail for read in there] == mails
    assert len({read.parsed.message_id for read in there}) == len(mails)
    assert all(read.text for read in there)


def test_import_in_shuffled_order_gives_the_same_parents(cli, tmp_path):
    # Replies before their parents, parents joining threads that grew under
    # placeholders: the store loads only the threads a message touches each time.
    raws = corpus(CASES[MAVEN])
    import_into_list(cli, write_mbox(tmp_path / "shuffled.mbox", ORDERS["shuffled"](list(raws))))
    rows = archived(cli)
    assert parents(rows) == expected_parents(MAVEN, raws)
    # The subject fallback depends on what came first; References never split a thread.
    ours = threads(rows)
    for expected in notmuch_threads(MAVEN, raws):
        assert any(expected <= got for got in ours)


def test_import_in_reverse_order_gives_the_same_threads(cli, tmp_path):
    name = "notmuch-list-2009"
    raws = corpus(CASES[name])
    import_into_list(cli, write_mbox(tmp_path / "reversed.mbox", reversed(raws)))
    rows = archived(cli)
    assert parents(rows) == expected_parents(name, raws)
    assert threads(rows) == notmuch_threads(name)


def test_importing_the_same_mbox_twice_imports_nothing_the_second_time(cli):
    # The mbox holds one Message-ID twice (anomalies.json: duplicate_message_id).
    path = threads_input(CASES["notmuch-list-2009"])
    assert "53 messages read: 52 imported, 1 duplicates skipped" in import_into_list(cli, path)
    assert "53 messages read: 0 imported, 53 duplicates skipped" in import_into_list(cli, path)
    assert len(archived(cli)) == 52


def test_import_maildir_threads_like_notmuch(cli, tmp_path):
    name = "tricky-threading-ghost-root"
    raws = corpus(CASES[name])
    summary = import_into_list(cli, write_maildir(tmp_path / "Maildir", raws))
    assert f"{len(raws)} messages read: {len(raws)} imported, 0 duplicates" in summary
    rows = archived(cli)
    assert parents(rows) == expected_parents(name, raws)
    assert threads(rows) == notmuch_threads(name)


def test_maildir_with_repeated_message_ids_keeps_one_of_each(cli, tmp_path):
    # tricky/duplicate: 9 files, 3 Message-IDs, different bytes under the same id.
    raws = corpus(CASES["tricky-duplicate"])
    summary = import_into_list(cli, write_maildir(tmp_path / "Maildir", raws))
    assert "9 messages read: 3 imported, 6 duplicates skipped" in summary
    assert set(archived(cli)) == set(notmuch("tricky-duplicate")["nearest_real_parent"])


def test_same_messages_from_four_archives_are_stored_once(cli):
    mboxes = sorted(threads_input(CASES["tricky-maven-duplicates"]).iterdir())
    summaries = [import_into_list(cli, path) for path in mboxes]
    assert "10 messages read: 10 imported, 0 duplicates skipped" in summaries[0]
    for summary in summaries[1:]:
        assert "10 messages read: 0 imported, 10 duplicates skipped" in summary
    rows = archived(cli)
    assert parents(rows) == expected_parents("tricky-maven-duplicates", ())


def test_message_without_message_id_gets_one_that_survives_reimport(cli, tmp_path):
    (raw,) = [r for r in corpus(CASES[MAVEN]) if parsed(r).message_id is None]
    path = write_mbox(tmp_path / "one.mbox", [raw])
    assert "1 imported, 0 duplicates" in import_into_list(cli, path)
    assert "0 imported, 1 duplicates" in import_into_list(cli, path)
    (mid,) = archived(cli)
    assert mid.endswith(f"@{DOMAIN}") and "<" not in mid


# --- arriving one by one -------------------------------------------------------------

def arrive(engine: Engine, *raws: bytes) -> dict[str, dict]:
    """Archive messages as they come, then read the threads as `archive threads` does."""
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        for raw in raws:
            assert archive_import.import_message(s, mlist, raw)
        s.commit()
        return {row["message_id"]: row for row in archive_export.thread_rows(s, mlist)}


def eml(name: str) -> bytes:
    return (THREADS / "tricky" / name).read_bytes()


def test_reply_before_its_parent_joins_the_thread_when_the_parent_comes(engine, make_list):
    # threading-parent-priority: root <- child <- grand-child, sent bottom up.
    make_list(LIST)
    root, child, grand = "B00-root@example.org", "B01-child@example.org", \
        "B01-grand-child@example.org"
    rows = arrive(engine, eml("threading-parent-priority/grand-child.eml"))
    assert rows[grand]["parent_id"] is None  # its parent is a placeholder so far
    rows = arrive(engine, eml("threading-parent-priority/child.eml"))
    assert (rows[grand]["parent_id"], rows[child]["parent_id"]) == (child, None)
    assert rows[grand]["thread_id"] == rows[child]["thread_id"]
    rows = arrive(engine, eml("threading-parent-priority/root.eml"))
    assert {mid: row["parent_id"] for mid, row in rows.items()} == \
        {root: None, child: root, grand: child}
    assert {row["thread_id"] for row in rows.values()} == {root}


def test_two_messages_answering_each_other_are_one_thread_in_the_store(engine, make_list):
    make_list(LIST)
    rows = arrive(engine, eml("broken-loop/loop-12.eml"), eml("broken-loop/loop-21.eml"))
    assert len({row["thread_id"] for row in rows.values()}) == 1
    assert [row["parent_id"] for row in rows.values()].count(None) == 1


def post(subject: str, **headers: str) -> bytes:
    return message(subject, headers=headers).encode()


def msgid(raw: bytes) -> str:
    return parsed(raw).message_id or ""


def test_reply_without_references_joins_its_subjects_thread_without_a_parent(
        engine, make_list):
    make_list(LIST)
    first = post("Release plan")
    answer = post("Re: Release plan", **{"In-Reply-To": f"<{msgid(first)}>"})
    bare = post("RE: [Dev] release PLAN")  # a client that dropped In-Reply-To
    rows = arrive(engine, first, answer, bare)
    assert rows[msgid(bare)]["parent_id"] is None
    assert rows[msgid(bare)]["thread_id"] == rows[msgid(first)]["thread_id"] == msgid(first)


def test_reply_with_references_never_joins_by_subject(engine, make_list):
    make_list(LIST)
    first = post("Release plan")
    # It names a message the archive never saw: it waits under a placeholder for it.
    other = post("Re: Release plan", References="<elsewhere@example.net>")
    rows = arrive(engine, first, other)
    assert rows[msgid(other)]["parent_id"] is None
    assert rows[msgid(other)]["thread_id"] == "elsewhere@example.net"


def test_reply_joined_by_subject_follows_its_thread_when_a_late_parent_reroots_it(
        engine, make_list):
    make_list(LIST)
    first = post("Plan")
    middle = post("Re: Plan", **{"In-Reply-To": f"<{msgid(first)}>"})
    renamed = post("Re: New plan", **{"In-Reply-To": f"<{msgid(middle)}>"})
    bare = post("Re: New plan")  # joins the thread of `renamed`, under a placeholder
    arrive(engine, first, renamed, bare)
    rows = arrive(engine, middle)  # the placeholder's thread moves under `first`
    assert {row["thread_id"] for row in rows.values()} == {msgid(first)}


def test_a_thread_rerooted_under_the_reply_that_joined_it_by_subject_ends(engine,
                                                                         make_list):
    """`bare` joins `first`'s thread by subject; then a reply names `bare` as the parent
    of `first`: the thread hangs from `bare` now, and `bare`'s joined thread leads back
    to itself. Threading must finish (an import once looped here for ever) and give the
    whole thread one id."""
    make_list(LIST)
    first = post("Plan")
    bare = post("Re: Plan")
    late = post("Re: Plan", References=f"<{msgid(bare)}> <{msgid(first)}>")
    rows = arrive(engine, first, bare, late)
    assert rows[msgid(first)]["parent_id"] == msgid(bare)
    assert len({row["thread_id"] for row in rows.values()}) == 1


@pytest.mark.parametrize("subject,headers,expected", [
    ("Re: Plan", {}, True),
    ("AW: [Dev] Plan", {}, True),
    ("Plan", {}, False),  # not a reply: a new thread, whatever its subject
    ("Re: Plan", {"In-Reply-To": "<a@example.org>"}, False),
    ("Re: Plan", {"References": "<a@example.org>"}, False),
])
def test_subject_is_only_consulted_for_a_reply_that_names_no_message(subject, headers,
                                                                     expected):
    assert thread.wants_subject_fallback(parse(post(subject, **headers))) is expected


def test_a_mute_follows_its_thread_when_a_late_parent_renames_it(engine, make_list):
    # child.eml answers child-of-root (absent), which is a reply to the root: the mute
    # taken while the thread was named after a placeholder must survive the renaming.
    make_list(LIST)
    rows = arrive(engine, eml("threading-parent-priority/grand-child.eml"))
    first_name = rows["B01-grand-child@example.org"]["thread_id"]
    with db.session(engine) as s:
        s.add(Mute(list_id=roster.get_list(s, LIST).id, address="bob@example.com",
                   thread_id=first_name))
        s.commit()
    rows = arrive(engine, eml("threading-parent-priority/child.eml"),
                  eml("threading-parent-priority/root.eml"))
    new_name = rows["B01-grand-child@example.org"]["thread_id"]
    assert new_name != first_name
    with db.session(engine) as s:
        assert [m.thread_id for m in s.scalars(select(Mute))] == [new_name]


def test_a_member_who_muted_and_followed_both_halves_of_a_merged_thread_keeps_one_of_each(
        engine, make_list):
    """A late parent that joins two threads must not give a member two rows of one thread
    (the unique constraint would refuse the post that joined them)."""
    def mail(message_id: str, parent: str = "") -> bytes:
        answer = f"In-Reply-To: <{parent}>\r\n" if parent else ""
        return (f"From: a@example.org\r\nSubject: {message_id}\r\n"
                f"Message-ID: <{message_id}>\r\n{answer}\r\nHi\r\n").encode()

    make_list(LIST)
    rows = arrive(engine, mail("reply@x", parent="middle@x"), mail("root@x"))
    names = {rows["reply@x"]["thread_id"], rows["root@x"]["thread_id"]}
    assert len(names) == 2
    with db.session(engine) as s:
        list_id = roster.get_list(s, LIST).id
        for table in (Mute, Follow):
            for name in names:
                s.add(table(list_id=list_id, address="bob@example.com", thread_id=name))
        s.commit()
    rows = arrive(engine, mail("middle@x", parent="root@x"))
    joined = rows["reply@x"]["thread_id"]
    assert joined == rows["root@x"]["thread_id"]
    with db.session(engine) as s:
        for table in (Mute, Follow):
            assert [(m.address, m.thread_id) for m in s.scalars(select(table))] == [
                ("bob@example.com", joined)]
