"""How long one `message erase` takes in a large archive.

An archive of MESSAGES generated posts (bench/mbox_gen.py) is imported with `listserv
archive import`, and DIGESTS sent digest copies of 200 KB each are stored (what the
erasure scans for the post's Message-ID); then COUNT posts picked at random are erased
one by one, each in its own transaction as the CLI does. Prints the median and the
worst wall and CPU time of one erasure (the process's CPU: on PostgreSQL the server's
own time is in the wall figure only).

    python bench/erase.py                                      # SQLite, 20,000 posts
    python bench/erase.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).parent))

import mbox_gen
import run

from listserv import db, erasure, roster
from listserv.config import load
from listserv.models import MailingList, Message, ThreadNode
from listserv.queue_tables import Outgoing

LIST = "bench@lists.example.org"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--digests", type=int, default=60)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="listserv-erase-"))
    mbox = workdir / "archive.mbox"
    with mbox.open("wb") as f:
        mbox_gen.write_mbox(f, args.messages, 1, LIST)
    with run.database(args.database_url or None, workdir, keep=False) as (url, name):
        config_file = workdir / "listserv.toml"
        config_file.write_text(f'[database]\nurl = "{url}"\n[web]\nsecret = "bench"\n')
        listserv = [str(Path(sys.executable).parent / "listserv"), "--config", str(config_file)]
        subprocess.run([*listserv, "db", "upgrade"], check=True, capture_output=True)
        subprocess.run([*listserv, "list", "create", LIST], check=True, capture_output=True)
        subprocess.run([*listserv, "archive", "import", LIST, str(mbox)], check=True,
                       capture_output=True)
        config = load(config_file)
        engine = db.make_engine(url)
        with db.session(engine) as s:
            mlist = roster.get_list(s, LIST)
            s.execute(insert(Outgoing), [{"list_id": mlist.id, "slots": "",
                                          "data": random.randbytes(200_000).hex().encode()[
                                              :200_000]} for _ in range(args.digests)])
            ids = list(s.scalars(select(Message.message_id).join(
                ThreadNode, ThreadNode.message_pk == Message.id)))
            s.commit()
        walls, cpus = [], []
        for message_id in random.Random(1).sample(ids, args.count):
            wall, cpu = time.perf_counter(), time.process_time()
            with db.session(engine) as s:
                erasure.erase_id(s, config, s.get(MailingList, mlist.id), message_id)
                s.commit()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"{name}, {len(ids)} archived posts, {args.digests} digest copies kept: "
              f"one erasure took {statistics.median(walls) * 1000:.0f} ms wall "
              f"(worst {max(walls) * 1000:.0f} ms), {statistics.median(cpus) * 1000:.0f} ms "
              f"CPU (worst {max(cpus) * 1000:.0f} ms), median of {args.count}")


if __name__ == "__main__":
    main()
