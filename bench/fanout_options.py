"""The fan-out of one post with members' own options (issue 18): fanout.fan_out_all
timed (wall, and CPU of this process, which includes SQLite's) for replies to one thread
on a list of N members in a SQLite file, in the code of the `listserv` first on sys.path
(run it with PYTHONPATH=OTHER_TREE for a before/after). With F > 0, F members get
digests and follow the thread, and F others (and the posts' author and Cc) have
own_posts=no and skip_if_addressed=yes.

    python bench/fanout_options.py 100000        # N members, nobody with options
    python bench/fanout_options.py 100000 1000   # and F followers, F with options
"""

import os
import statistics
import sys
import tempfile
import time

from sqlalchemy import insert, select, update

from listserv import db, fanout, roster, store
from listserv.config import Config, DatabaseConfig, WebConfig
from listserv.enums import DeliveryMode, DmarcMode
from listserv.models import Member, MessageKind, MessageState, ThreadNode
from listserv.parse import parse

LIST = "dev@lists.example.org"
POSTS = 7


def store_post(s, mlist, raw):
    parsed = parse(raw)
    msg = store.new_message(mlist, raw, parsed, kind=MessageKind.POST,
                            state=MessageState.ACCEPTED, mail_from="m1@example.com",
                            rcpt_to=LIST)
    store.save(s, msg)
    store.archive_all(s, mlist, [(msg, parsed)])
    return msg, parsed


def mail(name, extra=""):
    return (f"From: m1@example.com\r\nTo: {LIST}\r\nCc: m2@example.com\r\n"
            f"Subject: post {name}\r\nMessage-ID: <p{name}@example.com>\r\n{extra}"
            "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\nHi\r\n").encode()


def give_options(s, mlist, followers):
    """F digest members follow the root's thread; F others opt out of copies."""
    from listserv.models import Follow  # this branch's: the before tree has none

    thread_id = s.scalars(select(ThreadNode.thread_id)).one()
    follow = [f"m{i}@example.com" for i in range(10, 10 + followers)]
    opted = [f"m{i}@example.com" for i in range(10 + followers, 10 + 2 * followers)]
    s.execute(update(Member).where(Member.address.in_(follow))
              .values(delivery=DeliveryMode.DIGEST_MIME))
    s.execute(insert(Follow), [{"list_id": mlist.id, "address": a, "thread_id": thread_id}
                               for a in follow])
    s.execute(update(Member).where(Member.address.in_([*opted, "m1@example.com",
                                                       "m2@example.com"]))
              .values(own_posts=False, skip_if_addressed=True))


def main(members, followers):
    path = tempfile.mktemp(suffix=".db")
    url = f"sqlite:///{path}"
    config = Config(database=DatabaseConfig(url=url),
                    web=WebConfig(base_url="http://x", secret="s"))
    engine = db.open_database(url)
    with db.session(engine) as s:
        mlist = roster.create_list(s, LIST, name="Dev", owner=None)
        mlist.dmarc = DmarcMode.OFF  # no DNS
        roster.add_members(s, mlist, [f"m{i}@example.com" for i in range(members)])
        store_post(s, mlist, mail("root"))
        if followers:
            give_options(s, mlist, followers)
        s.commit()
    wall, cpu = [], []
    for k in range(POSTS):
        with db.session(engine) as s:
            mlist = roster.get_list(s, LIST)
            post = store_post(s, mlist, mail(k, "In-Reply-To: <proot@example.com>\r\n"))
            t, c = time.perf_counter(), time.process_time()
            fanout.fan_out_all(s, mlist, [post], "http://x", 50, config=config)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            s.rollback()
    os.unlink(path)
    print(f"{members} members, {followers} followers: fan_out_all median wall "
          f"{statistics.median(wall) * 1000:.0f} ms (min {min(wall) * 1000:.0f}), CPU "
          f"{statistics.median(cpu) * 1000:.0f} ms (min {min(cpu) * 1000:.0f}), {POSTS} posts")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
