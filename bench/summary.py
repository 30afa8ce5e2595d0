"""What a summary costs: writing one for an issue, and each member's copy of it.

An issue of POSTS posts in THREADS threads (each post a few quoted lines, a reply of its
own and a signature) is summarised once with `summary.mail`, then the copy is made
personal for MEMBERS members as the delivery worker does (`copies.Personal`: the
unsubscribe header and one signed mute link per thread). The same is timed for the
plain digest of the same issue (one signed link a member), for comparison. In process,
no database and no network; CPU time (time.process_time), median of RUNS runs.

    python bench/summary.py
    python bench/summary.py --posts 500 --threads 100 --members 20000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from listserv import copies, digest_format, summary
from listserv.digest_format import Entry
from listserv.models import MailingList

SECRET = "bench-secret"
NOW = datetime(2026, 12, 6, 8, tzinfo=UTC)


def entries(posts: int, threads: int) -> list[Entry]:
    body = ("On Monday, someone wrote:\n> the earlier message\n> more of it\n\n"
            "Here is what I think about it, in a line of some length.\n"
            "A second line.\nA third line.\nA fourth line.\n-- \nA signature\n")
    found = []
    for n in range(posts):
        thread = n % threads
        raw = (f"From: Author {n} <a{n}@example.com>\r\nSubject: Topic {thread}\r\n"
               f"Message-ID: <p{n}@example.com>\r\n\r\n{body}").encode()
        found.append(Entry(position=n + 1, message_id=f"p{n}@example.com",
                           subject=f"Re: Topic {thread}", author=f"Author {n}",
                           from_header=f"Author {n} <a{n}@example.com>", date=NOW,
                           thread_id=f"t{thread}@example.com",
                           thread_subject=f"Topic {thread}", raw=raw, message_pk=n + 1))
    return found


def cpu(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def per_member(copy: digest_format.Form, members: int) -> Callable[[], object]:
    personal = copies.Personal(copy.copy, SECRET, 1, None)
    return lambda: [personal.prepared_for(f"m{i}@example.org") for i in range(members)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    mlist = MailingList(id=1, address="dev@lists.example.org", domain="lists.example.org",
                        name="Dev")
    found = entries(args.posts, args.threads)
    context = digest_format.issue_context(mlist, "https://lists.example.org", 1, 1, found)
    made = summary.mail(mlist, "https://lists.example.org", context, found, NOW)
    plain = digest_format.form(mlist, "https://lists.example.org", context,
                               digest_format.plain_body(context, found), "plain", NOW)
    write = cpu(lambda: summary.mail(mlist, "https://lists.example.org", context, found,
                                     NOW), args.runs)
    fill_summary = cpu(per_member(made.form, args.members), args.runs)
    fill_plain = cpu(per_member(plain, args.members), args.runs)
    print(f"{args.posts} posts in {args.threads} threads, {args.members} members")
    size = len(copies.Personal(made.form.copy, SECRET, 1, None).copy_for("m@example.org"))
    print(f"summary written once: {write * 1000:.1f} ms CPU; a member's copy {size} bytes")
    print(f"summary per member: {fill_summary / args.members * 1e6:.0f} µs CPU "
          f"({args.threads} mute links)")
    print(f"plain digest per member: {fill_plain / args.members * 1e6:.0f} µs CPU "
          f"({len(plain.copy.data)} bytes)")


if __name__ == "__main__":
    main()
