"""Summaries (delivery mode `summary`): one short mail an issue for the members who
chose it, read back from what the smarthost received; its per-member links followed
over HTTP; its page beside the digest issues; the mode set by mail."""

from __future__ import annotations

import re

import httpx

from listserv import db, roster, summary
from listserv.enums import DeliveryMode
from tests.helpers import (
    LIST,
    REG,
    as_json,
    delivered_to,
    mails_to,
    manage_path,
    ok,
    send_post,
    set_modes,
    web,
)

SUM, SUM2 = "sum@example.com", "sum2@example.com"


def text_of(mail) -> str:
    return mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
SIGNED = ("I agree with the plan.\nLet us ship on Tuesday.\nThird line.\nFourth line.\n"
          "-- \nAnn, who signs everything\n")


def test_excerpt_is_the_authors_own_first_lines():
    text = ("On Mon, Bob wrote:\n> the old text\n> more of it\n\nFine by me.\n"
            "   Spaces   squeezed.\n" + "x" * 300 + "\nNot shown.\n")
    raw = f"From: a@example.com\nSubject: s\n\n{text}".encode()
    assert summary.excerpt(raw) == ("Fine by me.", "Spaces squeezed.",
                                    "x" * (summary.EXCERPT_WIDTH - 1) + "…")
    signed = b"From: a@example.com\nSubject: s\n\nOnly line.\n-- \nsig\n"
    assert summary.excerpt(signed) == ("Only line.",)


def summary_list(make_list, engine):
    mlist = make_list(members=[REG, SUM, SUM2], owner=None)
    set_modes(engine, mlist, {SUM: DeliveryMode.SUMMARY, SUM2: DeliveryMode.SUMMARY})
    return mlist


def test_summary_members_get_one_mail_listing_the_threads(running, make_list, sink,
                                                          engine, cli):
    summary_list(make_list, engine)
    root = send_post(running, "Release plan", "When do we ship?\n")
    send_post(running, "Re: Release plan", "> When do we ship?\n" + SIGNED, sender=SUM,
         **{"In-Reply-To": f"<{root}>"})
    send_post(running, "Build fails", "It fails on ARM.\n")
    result = ok(cli("digest", "send", LIST))
    assert "a summary for 2 summary members" in result.output
    assert delivered_to(engine, sink, REG) == 3
    assert delivered_to(engine, sink, SUM) == 1  # no copy of each post, one summary
    [mail] = mails_to(sink, SUM)
    assert mail["Subject"] == "Dev Summary, Vol 1, Issue 1"
    text = text_of(mail)
    assert "2 active topics, 3 new messages since the last summary." in text
    assert text.index("1. Release plan") < text.index("2. Build fails")
    assert "2 new messages from 2 authors; the newest, from sum@example.com:" in text
    assert ("   | I agree with the plan.\n   | Let us ship on Tuesday.\n   | Third line.\n"
            in text)
    assert "When do we ship" not in text and "Fourth line" not in text and "Ann, who" not in text
    base = running.config.web.base_url
    assert f"Read:   {base}/{LIST}/thread/{root}/" in text
    mutes = re.findall(r"Mute:   (\S+)", text)
    assert len(mutes) == 2
    [other] = mails_to(sink, SUM2)
    assert set(re.findall(r"Mute:   (\S+)", text_of(other))
               ).isdisjoint(mutes)  # each member's own links


def test_a_thread_muted_from_the_summary_is_left_out_of_the_next(running, make_list, sink,
                                                                 engine, cli):
    summary_list(make_list, engine)
    root = send_post(running, "Release plan", "When do we ship?\n")
    ok(cli("digest", "send", LIST))
    [first] = mails_to(sink, SUM)
    mute = re.search(r"Mute:   (\S+)", text_of(first)).group(1)
    with httpx.Client(timeout=10) as client:
        assert "Mute this thread" in client.get(mute).text  # a button, not yet an act
        assert client.post(mute).is_success
    send_post(running, "Re: Release plan", "Tuesday.\n", **{"In-Reply-To": f"<{root}>"})
    send_post(running, "Build fails", "It fails on ARM.\n")
    ok(cli("digest", "send", LIST))
    later = text_of(mails_to(sink, SUM, 2)[1])
    assert "Build fails" in later and "Release plan" not in later
    assert "1 active topic, 1 new message" in later
    other = text_of(mails_to(sink, SUM2, 2)[1])
    assert "Release plan" in other and "Build fails" in other


def test_a_thread_followed_from_the_summary_comes_post_by_post(running, make_list, sink,
                                                               engine, cli):
    summary_list(make_list, engine)
    root = send_post(running, "Release plan", "When do we ship?\n")
    send_post(running, "Build fails", "It fails on ARM.\n")
    ok(cli("digest", "send", LIST))
    text = text_of(mails_to(sink, SUM)[0])
    follows = re.findall(r"Follow: (\S+)", text)
    assert len(follows) == 2 and set(follows).isdisjoint(
        re.findall(r"Follow: (\S+)", text_of(mails_to(sink, SUM2)[0])))
    with httpx.Client(timeout=10) as client:
        assert "Follow this thread" in client.get(follows[0]).text  # a button, not yet an act
        assert client.post(follows[0]).is_success
    send_post(running, "Re: Release plan", "Tuesday.\n", **{"In-Reply-To": f"<{root}>"})
    send_post(running, "Re: Build fails", "Fixed.\n")
    assert delivered_to(engine, sink, SUM) == 2  # the summary, then the followed reply
    assert mails_to(sink, SUM, 2)[1]["Subject"].endswith("Re: Release plan")
    assert delivered_to(engine, sink, SUM2) == 1  # who did not follow waits for the next


def test_summary_page_beside_its_digest_issue(running, make_list, sink, engine, cli):
    summary_list(make_list, engine)
    root = send_post(running, "Build <fails>", "It fails on ARM.\nSee the log.\n")
    ok(cli("digest", "send", LIST))
    mails_to(sink, SUM)
    with httpx.Client(base_url=running.config.web.base_url, timeout=10) as client:
        index = client.get(f"/{LIST}/digest/")
        assert f"/{LIST}/digest/1/1/summary/" in index.text
        page = client.get(f"/{LIST}/digest/1/1/summary/")
        assert page.status_code == 200
        assert "Dev Summary, Vol 1, Issue 1" in page.text
        assert "Build &lt;fails&gt;" in page.text and "<fails>" not in page.text
        assert "It fails on ARM.<br>See the log." in page.text
        assert f"/{LIST}/thread/{root}/" in page.text
        assert "/mute/" not in page.text  # the members' own links stay in their mail
        assert client.get(f"/{LIST}/digest/1/2/summary/").status_code == 404


def test_digest_ls_shows_each_summary_after_its_issue(running, make_list, sink, engine, cli):
    summary_list(make_list, engine)
    send_post(running, "Release plan", "When do we ship?\n")
    send_post(running, "Build fails", "It fails on ARM.\n")
    ok(cli("digest", "send", LIST))
    for address in (SUM, SUM2):
        ok(cli("member", "set", LIST, address, "--delivery", "regular"))
    send_post(running, "Later", "No summary members now.\n")
    ok(cli("digest", "send", LIST))
    rows = as_json(cli("digest", "ls", LIST, "--json"))
    assert [(r["volume"], r["number"], r["kind"], r["messages"]) for r in rows] == [
        (1, 2, "digest", 1), (1, 1, "digest", 2), (1, 1, "summary", 2)]
    made = rows[2]
    assert made["subject"] == "Dev Summary, Vol 1, Issue 1" and made["threads"] == 2
    assert made["size"] > 0 and made["created_at"] == rows[1]["created_at"]
    table = ok(cli("digest", "ls", LIST)).stdout  # narrow under the test: subjects wrap
    assert table.count("│ digest ") == 2 and table.count("│ summary ") == 1


def test_no_summary_members_no_summary(running, make_list, sink, engine, cli):
    make_list(members=[REG], owner=None)
    send_post(running, "Release plan", "When do we ship?\n")
    result = ok(cli("digest", "send", LIST))
    assert "summary" not in result.output
    with httpx.Client(base_url=running.config.web.base_url, timeout=10) as client:
        assert client.get(f"/{LIST}/digest/1/1/summary/").status_code == 404


def test_set_delivery_summary_by_mail(running, make_list, sink, engine):
    make_list(members=[REG], owner=None)
    running.send(REG, ["dev-request@lists.example.org"],
                 f"From: {REG}\r\nTo: dev-request@lists.example.org\r\nSubject: x\r\n"
                 "Message-ID: <set-summary@example.com>\r\n\r\nset delivery summary\r\n")
    [answer] = mails_to(sink, REG)
    assert "summary" in text_of(answer)
    send_post(running, "Release plan", "When do we ship?\n", sender=SUM)
    assert delivered_to(engine, sink, REG) == 1  # the answer; no copy of the post


def delivery_of(engine, address: str) -> DeliveryMode:
    with db.session(engine) as s:
        [found] = [m for m in roster.members(s, roster.get_list(s, LIST)) if m.address == address]
        return found.delivery


def test_summary_is_chosen_on_the_cli_and_the_page_of_subscriptions(running, make_list,
                                                                    engine, cli):
    make_list(members=[REG, SUM], owner=None)
    assert "summary" in ok(cli("member", "set", "--help")).output
    ok(cli("member", "set", LIST, REG, "--delivery", "summary"))
    assert delivery_of(engine, REG) is DeliveryMode.SUMMARY
    with web(running) as client:
        path = manage_path(SUM)
        assert 'value="summary"' in client.get(path).text
        changed = client.post(path, data={"action": "delivery", "list": LIST,
                                          "delivery": "summary"})
        assert changed.status_code == 200 and "now: summary" in changed.text
    assert delivery_of(engine, SUM) is DeliveryMode.SUMMARY


def test_summary_page_on_a_phone(browser, running, make_list, sink, engine, cli, tmp_path):
    summary_list(make_list, engine)
    root = send_post(running, "A rather long subject about the release plan for next week",
                "When do we ship?\n")
    send_post(running, "Re: A rather long subject about the release plan for next week",
         "> When do we ship?\n" + SIGNED, sender=SUM, **{"In-Reply-To": f"<{root}>"})
    ok(cli("digest", "send", LIST))
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  java_script_enabled=False)
    page = context.new_page()
    try:
        base = running.config.web.base_url
        for name, url in (("digests", f"{base}/{LIST}/digest/"),
                          ("summary", f"{base}/{LIST}/digest/1/1/summary/")):
            page.goto(url)
            page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, name
        assert "Let us ship on Tuesday." in page.content()
    finally:
        context.close()
