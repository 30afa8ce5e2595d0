"""Erasing a message (`message erase`, the owners' archive page, the author's confirmed
request by web or mail, `member forget`), over real SMTP and HTTP with a real database:
the post becomes a tombstone that keeps its thread, and its text, subject, sender and
attachments are nowhere: no page, search, feed, export, digest issue, stored byte or
copy not yet sent; /raw and its attachments answer 410 Gone."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlmodel import SQLModel

from listserv import db, fanout, roster, tokens
from listserv.enums import DeliveryMode, DeliveryState, MessageState, TokenKind
from listserv.models import BounceEvent, Follow, Member, Message, ThreadNode, Token
from listserv.queue_tables import Delivery, Expansion, Outgoing
from listserv.urls import quote_id
from tests.helpers import (
    BOB,
    CAROL,
    LIST,
    SECRET,
    assert_one_line_error,
    delivered_to,
    ingest_mail,
    mails_to,
    message,
    ok,
    run_listserv,
    settled,
    wait_until,
    web,
    write_config,
)

OWNER = "owner@example.org"
MOD = "mod@example.org"
DIGESTER = "dana@example.com"  # gets the MIME digest
SUMMARIZED = "sam@example.com"  # gets the summary of each issue
SECRET_WORD = "zanzibarquokka"  # in the erased post's subject, body and attachment
SECRET_NAME = "Secretname"  # its author's display name
AUTHOR = f"Xerxes {SECRET_NAME} <{CAROL}>"
REQUEST = "dev-request@lists.example.org"
CONFIRM = re.compile(r"dev-confirm\+([0-9a-f]+)@lists\.example\.org")


@pytest.fixture
def config_file(tmp_path, db_url, config, request):
    """The CLI names the running server's URL, as the digest's and mails' links do."""
    if "running" in request.fixturenames:
        config = request.getfixturevalue("running").config
    return write_config(tmp_path / "listserv.toml", db_url,
                        f'[web]\nbase_url = "{config.web.base_url}"\n')


@pytest.fixture
def dev(make_list, engine):
    mlist = make_list(members=[BOB, CAROL, DIGESTER, SUMMARIZED], owner=OWNER,
                      moderators=[MOD])
    with db.session(engine) as s:
        for address, mode in ((DIGESTER, DeliveryMode.DIGEST_MIME),
                              (SUMMARIZED, DeliveryMode.SUMMARY)):
            roster.set_member(s, s.get(type(mlist), mlist.id), address, delivery=mode)
        s.commit()
    return mlist


def secret_post(in_reply_to: str) -> str:
    """A post with the secret word in its subject, body and an attachment."""
    boundary = "b-" + uuid.uuid4().hex
    body = (f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n"
            f"The {SECRET_WORD} plan is in the file.\n"
            f"--{boundary}\nContent-Type: text/plain; name=\"plan.txt\"\n"
            f"Content-Disposition: attachment; filename=\"plan.txt\"\n\n"
            f"Attached {SECRET_WORD} details.\n--{boundary}--\n")
    return message(f"Re: the {SECRET_WORD} plan", sender=AUTHOR, body=body, headers={
        "MIME-Version": "1.0", "In-Reply-To": f"<{in_reply_to}>",
        "References": f"<{in_reply_to}>",
        "Content-Type": f'multipart/mixed; boundary="{boundary}"'})


def send(running, raw: str, sender: str) -> str:
    running.send(sender, [LIST], raw)
    return re.search(r"Message-ID: <([^>]+)>", raw).group(1)


def thread_of_three(running, engine) -> tuple[str, str, str]:
    """A root by Bob, the secret reply by Carol, and Bob's answer to it, all archived."""
    root = send(running, message("The plan", sender=BOB), BOB)
    wait_archived(engine, root)
    secret = send(running, secret_post(root), CAROL)
    wait_archived(engine, secret)
    answer = send(running, message("Re: the plan", sender=BOB, headers={
        "In-Reply-To": f"<{secret}>", "References": f"<{root}> <{secret}>"}), BOB)
    wait_archived(engine, answer)
    return root, secret, answer


def wait_archived(engine, message_id: str) -> None:
    def found() -> bool:
        with db.session(engine) as s:
            return s.scalars(select(ThreadNode.id).where(
                ThreadNode.message_id == message_id,
                ThreadNode.message_pk.is_not(None))).first() is not None
    wait_until(found, f"<{message_id}> archived")


def stored(engine, message_id: str) -> Message:
    with db.session(engine) as s:
        return s.scalars(select(Message).where(Message.message_id == message_id)).one()


def database_text(engine) -> str:
    """Every text and byte value of every table (and the search index), lower case, each
    after its table's name."""
    values: list[str] = []
    with db.session(engine) as s:
        tables = [t.name for t in SQLModel.metadata.sorted_tables]
        tables.append("message_fts" if db.is_sqlite(engine) else "message_search")
        for name in tables:
            for row in s.execute(text(f"SELECT * FROM {name}")):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        values.append(f"{name}: " + bytes(value).decode("utf-8", "replace"))
                    elif isinstance(value, str):
                        values.append(f"{name}: {value}")
    return "\n".join(values).lower()


def assert_no_trace(page: str) -> None:
    lowered = page.lower()
    for word in (SECRET_WORD, SECRET_NAME.lower()):
        at = lowered.find(word)
        assert at < 0, lowered[max(0, at - 300):at + 100]


def test_an_erased_post_leaves_no_trace_and_its_thread_holds(running, dev, engine, sink,
                                                             cli):
    root, secret, answer = thread_of_three(running, engine)
    settled(engine)
    ok(cli("digest", "send", LIST))
    settled(engine)
    with web(running) as client:
        url = f"/{LIST}/message/{quote_id(secret)}/"
        attachment = re.search(r'href="([^"]*/attachment/[^"]+)"', client.get(url).text)
        assert client.get(url + "raw").status_code == 200
        assert SECRET_WORD in client.get(f"/{LIST}/search", params={"q": SECRET_WORD}).text
    assert SECRET_WORD in database_text(engine)  # the places checked below held it

    done = ok(cli("message", "erase", LIST, f"<{secret}>", "--reason", "leaked plans"))
    assert f"erased <{secret}>" in done.output

    with web(running) as client:
        page = client.get(url)
        assert page.status_code == 200
        assert "removed by the list owners on" in page.text
        assert "(removed)" in page.text
        assert "Remove my message" not in page.text
        assert_no_trace(page.text)
        assert client.get(url + "raw").status_code == 410
        assert client.get(attachment.group(1)).status_code == 410
        # Its place in the thread: the answer still names it as its parent, the thread
        # page shows the three posts in order, the tombstone in the middle.
        answer_page = client.get(f"/{LIST}/message/{quote_id(answer)}/").text
        assert f"message/{quote_id(secret)}/" in answer_page
        thread = client.get(f"/{LIST}/thread/{quote_id(root)}/").text
        assert thread.index(quote_id(root)) < thread.index(quote_id(secret)) < thread.index(
            quote_id(answer))
        assert "3 messages" in thread
        for path in (f"/{LIST}/thread/{quote_id(root)}/", f"/{LIST}/", "/",
                     f"/{LIST}/2026/11/", f"/{LIST}/feed.atom", f"/{LIST}/export.mbox",
                     f"/{LIST}/export.mbox?thread={quote_id(root)}", f"/{LIST}/digest/",
                     f"/{LIST}/digest/1/1/", f"/{LIST}/digest/1/1/summary/"):
            shown = client.get(path)
            assert shown.status_code == 200, path
            assert_no_trace(shown.text)
        assert "(removed)" in client.get(f"/{LIST}/digest/1/1/").text
        assert secret in client.get(f"/{LIST}/export.mbox").text  # the tombstone stays
        assert quote_id(secret) not in client.get(f"/{LIST}/feed.atom").text  # no news
        for words in (SECRET_WORD, SECRET_NAME):
            hits = client.get(f"/{LIST}/search", params={"q": words}).text
            assert quote_id(secret) not in hits and "<mark>" not in hits
            assert_no_trace(hits.lower().replace(words.lower(), ""))  # less the query
    assert_no_trace(database_text(engine))
    row = stored(engine, secret)
    assert row.erased_at is not None and row.erased_reason == "leaked plans"
    assert row.from_address == row.subject == ""
    assert f"<{secret}>".encode() in row.raw and f"<{root}>".encode() in row.raw


def test_an_erased_post_leaves_the_digest_summary_kept(running, dev, engine, sink, cli):
    """A summary quotes the first lines of a thread's newest post: here the secret one."""
    secret = send(running, secret_post("elsewhere@example.com"), CAROL)
    wait_archived(engine, secret)
    settled(engine)
    ok(cli("digest", "send", LIST))
    settled(engine)
    with web(running) as client:
        summary = f"/{LIST}/digest/1/1/summary/"
        assert SECRET_WORD in client.get(summary).text
        ok(cli("message", "erase", LIST, secret))
        assert_no_trace(client.get(summary).text)
    assert_no_trace(database_text(engine))


def test_an_erased_post_goes_to_no_one_it_has_not_reached(dev, engine, config, sink,
                                                          make_server, cli):
    """Stored with no worker running, and half expanded into jobs: erased before any
    copy left, and the members not yet given a job get none."""
    raw = secret_post("elsewhere@example.com")
    ingest_mail(engine, config, CAROL, [LIST], raw.encode())
    secret = re.search(r"Message-ID: <([^>]+)>", raw).group(1)
    with db.session(engine) as s:
        assert fanout.expand(s, 1, chunk=1) == 1  # the first member's job; the rest wait
        assert set(s.scalars(select(Delivery.state))) == {DeliveryState.QUEUED}
        assert s.scalars(select(Expansion)).all()
    ok(cli("message", "erase", LIST, secret))
    with db.session(engine) as s:
        assert set(s.scalars(select(Delivery.state))) == {DeliveryState.CANCELLED}
        assert not s.scalars(select(Expansion)).all()
        assert all(o.data == b"" for o in s.scalars(select(Outgoing)))
        job = s.scalars(select(Delivery.id)).first()
    refused = cli("queue", "retry", str(job))  # an admin cannot send it by mistake
    assert refused.exit_code == 1 and "erased" in str(refused.exception)
    make_server()
    assert delivered_to(engine, sink, BOB) == 0
    ok(cli("digest", "send", LIST))  # its digest item went with it: no issue at all
    assert delivered_to(engine, sink, DIGESTER) == 0
    assert_no_trace(database_text(engine))


def test_the_command_line_says_what_it_could_not_erase(dev, engine, config, cli,
                                                       config_file):
    raw = message("Hello", sender=BOB)
    ingest_mail(engine, config, BOB, [LIST], raw.encode())
    mid = re.search(r"Message-ID: <([^>]+)>", raw).group(1)
    ok(cli("message", "erase", LIST, mid))
    for args, named in (((LIST, mid), "erased already"),
                        ((LIST, "nothing@example.com"), "has no post"),
                        (("nolist@lists.example.org", mid), "no list")):
        proc = run_listserv("--config", config_file, "message", "erase", *args)
        assert_one_line_error(proc, named)


# --- the author's way ----------------------------------------------------------------------

def mails_about(sink, address: str, subject: str, count: int = 1) -> list:
    """The mails to `address` whose subject has `subject`, once there are `count`."""
    def found() -> list:
        mails = [m for m in mails_to(sink, address, 0) if subject in str(m["Subject"])]
        return mails if len(mails) >= count else []
    return wait_until(found, f"{count} mails '{subject}' to {address}")


def confirmation_token(sink, address: str) -> str:
    [mail] = mails_about(sink, address, "remove your message")
    return CONFIRM.search(str(mail["Reply-To"])).group(1)


def test_the_author_removes_a_post_from_its_page_by_confirming(running, dev, engine, sink):
    root, secret, _ = thread_of_three(running, engine)
    settled(engine)
    url = f"/{LIST}/message/{quote_id(secret)}/"
    with web(running) as client:
        assert f'href="{running.config.web.base_url}{url}remove"' in client.get(url).text \
            or f"{url}remove" in client.get(url).text
        form = client.get(url + "remove")
        assert form.status_code == 200 and "Mail the confirmation" in form.text
        sent = client.post(url + "remove")
        assert sent.status_code == 200 and "on its way" in sent.text
        client.post(url + "remove")  # asked twice: still one confirmation
        token = confirmation_token(sink, CAROL)
        mail = mails_about(sink, CAROL, "remove your message")[0].get_content()
        assert url in mail and SECRET_WORD not in mail  # the link, not the text
        assert "Remove your message" in client.get(f"/confirm/{token}").text
        assert stored(engine, secret).erased_at is None  # nothing until confirmed
        done = client.post(f"/confirm/{token}")
        assert done.status_code == 200 and "removed" in done.text
        page = client.get(url).text
        assert "removed at its author" in page, page
        assert_no_trace(page)
        assert client.post(f"/confirm/{token}").status_code == 404  # spent
        assert client.post(f"/{LIST}/message/nothing@example.com/remove").status_code == 404
    settled(engine)
    assert len(mails_about(sink, CAROL, "remove your message")) == 1  # asked twice, sent once


def request_mail(sender: str, replying_to: str, body: str = "erase\n") -> str:
    return message("", sender=sender, to=REQUEST, body=body, headers={
        "In-Reply-To": f"<{replying_to}>", "References": f"<{replying_to}>"})


def test_the_author_erases_by_mail_in_reply_to_their_post(running, dev, engine, sink):
    root, secret, _ = thread_of_three(running, engine)
    running.send(BOB, [REQUEST], request_mail(BOB, secret))  # not Bob's post
    [results] = mails_about(sink, BOB, "Results")
    assert "a post of yours" in results.get_content()
    running.send(CAROL, [REQUEST], request_mail(CAROL, secret))
    token = confirmation_token(sink, CAROL)
    [results] = mails_about(sink, CAROL, "Results")
    assert "confirm the removal" in results.get_content()
    confirm = f"dev-confirm+{token}@lists.example.org"
    running.send(CAROL, [confirm], message("Re: confirm", sender=CAROL, to=confirm))

    def erased() -> bool:
        return stored(engine, secret).erased_at is not None
    wait_until(erased, "the post erased")
    assert_no_trace(database_text(engine).replace(token, ""))
    with web(running) as client:
        assert client.get(f"/{LIST}/message/{quote_id(secret)}/raw").status_code == 410


# --- the owners' page -----------------------------------------------------------------------

def admin_path(list_id: int, address: str) -> str:
    return f"/{LIST}/admin/{tokens.staff_link(SECRET, list_id, address, 12)}"


def test_an_owner_erases_a_post_from_the_archive_page(running, dev, engine, sink):
    root, secret, _ = thread_of_three(running, engine)
    with web(running) as client:
        page = client.get(f"{admin_path(dev.id, OWNER)}/archive")
        assert page.status_code == 200 and secret in page.text
        found = client.get(f"{admin_path(dev.id, OWNER)}/archive", params={"q": "quokka"})
        assert secret in found.text and root not in found.text
        refused = client.post(f"{admin_path(dev.id, MOD)}/archive",
                              data={"message_id": secret, "reason": "spam"})
        assert refused.status_code == 403
        assert stored(engine, secret).erased_at is None
        done = client.post(f"{admin_path(dev.id, OWNER)}/archive",
                           data={"message_id": secret, "reason": "spam"})
        assert done.status_code == 200 and f"erased &lt;{secret}&gt;" in done.text
        again = client.post(f"{admin_path(dev.id, OWNER)}/archive",
                            data={"message_id": secret})
        assert again.status_code == 409
        listed = client.get(f"{admin_path(dev.id, OWNER)}/archive").text
        assert "Erased." in listed
        assert_no_trace(client.get(f"/{LIST}/message/{quote_id(secret)}/").text)
    assert stored(engine, secret).erased_reason == "spam"


# --- member forget ------------------------------------------------------------------------

def test_forget_removes_an_address_everywhere_and_erases_its_posts(running, dev, engine,
                                                                  make_list, sink, cli):
    make_list("other@lists.example.org", members=[CAROL])
    root, secret, answer = thread_of_three(running, engine)
    settled(engine)
    with db.session(engine) as s:
        s.add(BounceEvent(list_id=dev.id, address=CAROL, bounce_class="mailbox"))
        tokens.new(s, TokenKind.UNSUBSCRIBE, dev.id, CAROL, timedelta(hours=1))
        s.add(Follow(list_id=dev.id, address=CAROL, thread_id=root))
        s.commit()
    out = ok(cli("member", "forget", CAROL, "--messages"))
    assert "removed from 2 lists" in out.output and "1 messages erased" in out.output
    with db.session(engine) as s:
        assert not s.scalars(select(Member).where(Member.address == CAROL)).all()
        assert not s.scalars(select(BounceEvent).where(BounceEvent.address == CAROL)).all()
        assert not s.scalars(select(Token).where(Token.address == CAROL)).all()
        assert not s.scalars(select(Follow).where(Follow.address == CAROL)).all()
    assert stored(engine, secret).erased_at is not None
    assert stored(engine, answer).erased_at is None
    assert_no_trace(database_text(engine))


def test_forget_anonymise_keeps_the_text_without_the_sender(running, dev, engine, sink, cli):
    root, secret, _ = thread_of_three(running, engine)
    settled(engine)
    ok(cli("digest", "send", LIST))
    settled(engine)
    ok(cli("member", "forget", CAROL, "--messages", "--anonymise"))
    row = stored(engine, secret)
    assert row.erased_at is None and SECRET_WORD.encode() in row.raw
    assert CAROL.encode() not in row.raw and SECRET_NAME.encode() not in row.raw
    assert row.from_address == row.from_name == row.mail_from == ""
    with web(running) as client:
        url = f"/{LIST}/message/{quote_id(secret)}/"
        page = client.get(url).text
        assert SECRET_WORD in page and SECRET_NAME not in page
        assert CAROL not in client.get(url + "raw").text
        assert quote_id(secret) in client.get(f"/{LIST}/search",
                                              params={"q": SECRET_WORD}).text
        assert quote_id(secret) not in client.get(f"/{LIST}/search",
                                                  params={"q": SECRET_NAME}).text
        for path in (f"/{LIST}/export.mbox", f"/{LIST}/feed.atom", f"/{LIST}/",
                     f"/{LIST}/digest/1/1/"):
            assert SECRET_NAME not in client.get(path).text, path
    # Kept: the post's text. Gone: the name everywhere, the address from every post.
    assert SECRET_NAME.lower() not in database_text(engine)
    with db.session(engine) as s:
        assert not s.scalars(select(Member).where(Member.address == CAROL)).all()
        issue = s.execute(text("SELECT data FROM digest_issue")).scalar_one()
        assert SECRET_WORD.encode() in bytes(issue) and CAROL.encode() not in bytes(issue)


def test_forget_needs_messages_for_anonymise_and_names_an_unknown_address(
        dev, config_file):
    proc = run_listserv("--config", config_file, "member", "forget", "nobody@example.com")
    assert_one_line_error(proc, "nobody@example.com")
    proc = run_listserv("--config", config_file, "member", "forget", BOB, "--anonymise")
    assert proc.returncode != 0 and "--messages" in proc.stderr


def test_an_erased_held_post_is_never_approved(dev, engine, config, cli):
    """A non-member's post waits for a moderator; erased, it is discarded, and the
    notice that carries it to the moderators is not sent."""
    raw = message("Held", sender="eve@example.org", body=f"{SECRET_WORD}\n")
    ingest_mail(engine, config, "eve@example.org", [LIST], raw.encode())
    mid = re.search(r"Message-ID: <([^>]+)>", raw).group(1)
    assert stored(engine, mid).state is MessageState.HELD
    ok(cli("message", "erase", LIST, mid))
    row = stored(engine, mid)
    assert row.state is MessageState.DISCARDED
    with db.session(engine) as s:
        assert not s.scalars(select(Token).where(Token.message_pk == row.id,
                                                 Token.kind == TokenKind.HOLD)).all()
    assert SECRET_WORD not in database_text(engine)


# --- in a browser, on a phone ---------------------------------------------------------------

PHONE = {"width": 390, "height": 844}
SHOTS = Path("/tmp") / "listserv-erase-shots"  # kept to look at after a run


def shot(page, name: str) -> None:
    """No sideways scrolling at 390 px, a label on every field, and a screenshot."""
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')].filter(e => !e.labels.length)
        .map(e => e.name)""")
    assert unlabelled == [], page.url
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def test_the_author_and_an_owner_erase_by_pressing_buttons(running, dev, engine, sink,
                                                           browser):
    root, secret, answer = thread_of_three(running, engine)
    origin = running.config.web.base_url
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(f"{origin}/{LIST}/message/{quote_id(secret)}/")
    shot(page, "message")
    page.get_by_role("link", name="Remove my message").click()
    shot(page, "remove")
    page.get_by_role("button", name="Mail the confirmation to the author").click()
    page.get_by_text("on its way").wait_for()
    shot(page, "remove-sent")
    page.goto(f"{origin}/confirm/{confirmation_token(sink, CAROL)}")
    shot(page, "confirm")
    page.get_by_role("button", name="Yes, remove my message").click()
    page.get_by_text("is removed from the archive").wait_for()
    page.goto(f"{origin}/{LIST}/thread/{quote_id(root)}/")
    assert "removed at its author" in page.content()
    shot(page, "thread-with-tombstone")
    page.goto(f"{origin}{admin_path(dev.id, OWNER)}/archive")
    shot(page, "owner-archive")
    post = page.locator("section.item", has_text="Re: the plan")
    post.get_by_label("Reason").fill("off topic")
    post.get_by_role("button", name="Erase this post").click()
    page.get_by_text(f"erased <{answer}>").wait_for()
    shot(page, "owner-erased")
    context.close()
    assert stored(engine, answer).erased_reason == "off topic"
