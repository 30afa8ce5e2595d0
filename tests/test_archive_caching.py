"""HTTP caching of what the archive shows of one message (its page, its raw bytes, its
attachments) over real HTTP: an ETag and a Cache-Control on each, 304 to a reader who
holds the current version, and a new version when the message's thread grows or its
stored bytes change (as erasure changes them)."""

from __future__ import annotations

import mailbox
import re
from pathlib import Path

import pytest
from markupsafe import Markup
from sqlalchemy import event, update

from listserv import db
from listserv.enums import ArchivePolicy
from listserv.models import Message
from listserv.web import articles
from listserv.web.caching import MAX_AGE
from tests.helpers import (
    ALICE,
    LIST,
    access_link,
    ask_for_archive,
    attachment_mail,
    mail,
    mails_to,
    set_archive,
    url,
    web,
)


@pytest.fixture
def import_mbox(cli, tmp_path: Path):
    """import_mbox([raw, ...]): `listserv archive import LIST FILE` of those mails."""
    def run(mails: list[bytes]) -> None:
        path = tmp_path / f"import-{len(list(tmp_path.glob('*.mbox')))}.mbox"
        box = mailbox.mbox(path)
        for raw in mails:
            box.add(raw)
        box.close()
        result = cli("archive", "import", LIST, path)
        assert result.exit_code == 0, result.output
    return run


PUBLIC = f"public, max-age={MAX_AGE}, must-revalidate"


def message_urls(client) -> list[str]:
    """The message page of files@x, its raw bytes and its first attachment."""
    page = client.get(url("message", "files@x")).text
    [first, *_] = re.findall(r'href="([^"]*/attachment/\d+/[^"]*)"', page)
    return [url("message", "files@x"), url("message", "files@x") + "raw", first]


def test_message_raw_and_attachment_revalidate_with_304(running, make_list, import_mbox):
    make_list(LIST)
    import_mbox([attachment_mail()])
    with web(running) as client:
        for path in message_urls(client):
            first = client.get(path)
            etag = first.headers["etag"]
            again = client.get(path, headers={"If-None-Match": etag})
            weak = client.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
            other = client.get(path, headers={"If-None-Match": '"other"'})
            assert first.status_code == 200 and re.fullmatch(r'"[^"]+"', etag), path
            assert first.headers["cache-control"] == PUBLIC
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
            assert again.headers["cache-control"] == PUBLIC
            assert weak.status_code == 304
            assert other.status_code == 200 and other.content == first.content


def test_a_revalidated_message_page_does_not_walk_its_thread(running, make_list, engine,
                                                            import_mbox):
    make_list(LIST)
    import_mbox([mail("Plans", "root@x"), mail("Re: Plans", "reply@x", parent="root@x")])
    walks: list[str] = []

    def seen(_conn, _cursor, statement: str, *_args) -> None:
        if "walk" in statement:  # the parent and replies queries of a message page
            walks.append(statement)
    with web(running) as client:
        etag = client.get(url("message", "reply@x")).headers["etag"]
        event.listen(engine, "before_cursor_execute", seen)
        try:
            assert client.get(url("message", "reply@x"),
                              headers={"If-None-Match": etag}).status_code == 304
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert walks == []


def test_a_new_reply_changes_the_parents_page_but_not_its_raw(running, make_list,
                                                              import_mbox):
    make_list(LIST)
    import_mbox([mail("Plans", "root@x")])
    with web(running) as client:
        page = client.get(url("message", "root@x")).headers["etag"]
        raw = client.get(url("message", "root@x") + "raw").headers["etag"]
        import_mbox([mail("Re: Plans", "reply@x", parent="root@x")])
        page_after = client.get(url("message", "root@x"), headers={"If-None-Match": page})
        raw_after = client.get(url("message", "root@x") + "raw",
                               headers={"If-None-Match": raw})
    assert page_after.status_code == 200 and url("message", "reply@x") in page_after.text
    assert page_after.headers["etag"] != page
    assert raw_after.status_code == 304


def test_changed_stored_bytes_are_a_new_version_everywhere(running, make_list, engine,
                                                           import_mbox):
    # Erasure rewrites a message's stored bytes: no reader may keep the old ones.
    make_list(LIST)
    import_mbox([attachment_mail()])
    with web(running) as client:
        paths = message_urls(client)
        etags = [client.get(path).headers["etag"] for path in paths]
        with db.session(engine) as s:
            s.execute(update(Message).where(Message.message_id == "files@x").values(
                raw=attachment_mail().replace(b"See the files.", b"Other text.")))
            s.commit()
        after = [client.get(path, headers={"If-None-Match": etag})
                 for path, etag in zip(paths, etags, strict=True)]
    assert [r.status_code for r in after] == [200, 200, 200]
    assert all(r.headers["etag"] != etag for r, etag in zip(after, etags, strict=True))
    assert "Other text." in after[0].text


def test_erasing_a_reply_changes_its_parents_page(running, make_list, import_mbox, cli):
    # The parent's page names the reply's subject and sender; erasure takes them away.
    make_list(LIST)
    import_mbox([mail("Plans", "root@x"), mail("Secret plans", "reply@x", parent="root@x")])
    with web(running) as client:
        before = client.get(url("message", "root@x"))
        assert "Secret plans" in before.text
        assert cli("message", "erase", LIST, "reply@x").exit_code == 0
        after = client.get(url("message", "root@x"),
                           headers={"If-None-Match": before.headers["etag"]})
        gone = client.get(url("message", "reply@x") + "raw")
    assert after.status_code == 200 and "Secret plans" not in after.text
    assert gone.status_code == 410


def test_a_content_filter_change_is_a_new_version(running, make_list, import_mbox, cli):
    make_list(LIST)
    import_mbox([attachment_mail()])
    with web(running) as client:
        paths = message_urls(client)
        etags = [client.get(path).headers["etag"] for path in paths]
        assert cli("list", "set", LIST, "pass_types", "text/plain").exit_code == 0
        after = [client.get(path, headers={"If-None-Match": etag})
                 for path, etag in zip(paths, etags, strict=True)]
    assert [r.status_code for r in after] == [200, 200, 410]


def test_a_members_only_archive_is_cached_privately(running, make_list, engine, sink,
                                                    import_mbox):
    make_list(LIST, members=[ALICE])
    import_mbox([mail("Plans", "root@x")])
    set_archive(engine, ArchivePolicy.PRIVATE)
    with web(running) as client:
        closed = client.get(url("message", "root@x"))
        ask_for_archive(running, sink, ALICE)
        client.get(access_link(mails_to(sink, ALICE, 2)))
        pages = [client.get(url("message", "root@x")),
                 client.get(url("message", "root@x") + "raw")]
    assert closed.status_code == 403 and "etag" not in closed.headers
    assert "cache-control" not in closed.headers
    for page in pages:
        assert page.status_code == 200
        assert page.headers["cache-control"] == f"private, max-age={MAX_AGE}, must-revalidate"


def test_a_thread_page_drawn_before_an_erasure_shows_the_tombstone(running, make_list,
                                                                  import_mbox, cli):
    # The server remembers each post of a thread page as drawn (web/articles.py): what
    # it drew of a post before the post was erased is never shown again.
    make_list(LIST)
    import_mbox([mail("Plans", "root@x"),
                 mail("Secret plans", "reply@x", parent="root@x", body="The vault code.\n",
                      sender="Carol Secret <carol@example.com>")])
    with web(running) as client:
        before = client.get(url("thread", "root@x")).text
        assert "The vault code." in before and "Carol Secret" in before
        assert cli("message", "erase", LIST, "reply@x").exit_code == 0
        after = client.get(url("thread", "root@x")).text
    assert "(removed)" in after and "2 messages" in after
    for trace in ("The vault code.", "Carol Secret", "Secret plans"):
        assert trace not in after


def test_a_thread_page_drawn_before_a_content_filter_change_shows_the_new_form(
        running, make_list, import_mbox, cli):
    make_list(LIST)
    import_mbox([attachment_mail()])
    with web(running) as client:
        before = client.get(url("thread", "files@x")).text
        assert "/attachment/0/chart.png" in before
        assert cli("list", "set", LIST, "pass_types", "text/plain").exit_code == 0
        after = client.get(url("thread", "files@x")).text
    assert "See the files." in after and "/attachment/" not in after
    assert "chart.png" in after  # named in the filter's note


def test_the_remembered_articles_stay_within_their_bound():
    # A server up for months reads every thread of a large archive: what it remembers
    # of them must not grow with the archive. The least recently read goes first.
    remembered = articles._Remembered(max_chars=100)
    for pk in range(3):
        remembered.put(pk, "v1", Markup("x" * 30))
    assert remembered.get(0, "v1") == "x" * 30  # read: now the most recent
    remembered.put(3, "v1", Markup("x" * 30))  # 120 characters: one must go
    assert remembered.get(1, "v1") is None
    assert all(remembered.get(pk, "v1") for pk in (0, 2, 3)) and remembered.chars == 90
    remembered.put(3, "v2", Markup("y" * 10))  # a new version replaces the entry
    assert remembered.get(3, "v1") is None and remembered.get(3, "v2") == "y" * 10
    assert remembered.chars == 70
