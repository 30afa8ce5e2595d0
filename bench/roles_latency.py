"""Seconds from a post's 250 to its first copy at the smarthost when the roles are split
(docs/postgresql.md): one `listserv serve --roles smtp,web` takes the post, another
`--roles deliver,housekeeping` sends it (issue 19: an operator saw about 3 s).

    python bench/roles_latency.py --database-url postgresql://postgres@127.0.0.1:5432/test

Both processes share a new schema of that database (dropped at the end). The smarthost
is an aiosmtpd sink in this script, stamping each copy as it arrives; POSTS posts to a
2-member list go one at a time over real SMTP, each after a random pause (so that they
land anywhere in the delivering process's poll), and the median, p90 and worst of
"250 -> first copy" are printed, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import random
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from expand import free_port  # bench/, the script's folder
from queue_ls import database

from listserv import db, roster

LIST = "dev@lists.example.org"
BUSY = "busy@lists.example.org"  # --busy: posted to all along, to keep the sender busy
SENDER = "poster@example.com"


class Sink:
    """Stamps the arrival of each copy by the Message-ID it carries."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.copies = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        now = time.perf_counter()
        self.copies += len(envelope.rcpt_tos)  # type: ignore[attr-defined]
        for line in envelope.content.split(b"\r\n"):  # type: ignore[attr-defined]
            if line.lower().startswith(b"message-id:"):
                with self.lock:
                    self.arrived.setdefault(line.split(b":", 1)[1].strip().decode(), now)
                break
        return "250 OK"


def serve(tmp: str, url: str, name: str, roles: str, smtp_port: int, sink_port: int
          ) -> tuple[subprocess.Popen, Path]:
    config = Path(tmp) / f"{name}.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[smtp]\nport = {smtp_port}\n'
                      "max_messages_per_sender_per_hour = 0\n"
                      f"[delivery]\nsmarthost_port = {sink_port}\n"
                      '[web]\nport = 0\nsecret = "bench"\nbase_url = "http://x.example"\n')
    log = Path(tmp) / f"{name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "listserv"), "--config",
                                 str(config), "serve", "--roles", roles],
                                stderr=err, stdout=subprocess.DEVNULL, cwd=tmp)
    return proc, log


def post(port: int, to: str) -> str:
    """One post over SMTP; its Message-ID once answered 250."""
    mid = f"<{uuid.uuid4().hex}@example.com>"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail(SENDER, [to], f"From: {SENDER}\r\nTo: {to}\r\n"
                        f"Subject: timing {mid}\r\nMessage-ID: {mid}\r\n\r\nHi.\r\n")
    return mid


def keep_busy(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        post(port, BUSY)
        stop.wait(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--busy", type=int, default=0, metavar="MEMBERS",
                        help="meanwhile, a post a second to a list of MEMBERS members")
    args = parser.parse_args()
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        engine = db.open_database(url)
        with db.session(engine) as s:
            roster.add_members(s, roster.create_list(s, LIST, owner=None),
                               [SENDER, "b@example.net"])
            roster.add_members(s, roster.create_list(s, BUSY, owner=None),
                               [SENDER, *(f"m{i}@example.org" for i in range(args.busy))])
            s.commit()
        engine.dispose()
        port = free_port()
        procs = [serve(tmp, url, "front", "smtp,web", port, controller.port),
                 serve(tmp, url, "back", "deliver,housekeeping", free_port(), controller.port)]
        stop = threading.Event()
        try:
            for _, log in procs:
                while " listening: " not in log.read_text():
                    time.sleep(0.1)
            if args.busy:
                threading.Thread(target=keep_busy, args=(port, stop), daemon=True).start()
            time.sleep(2)
            load = os.getloadavg()
            delays = []
            for _ in range(args.posts):
                time.sleep(random.uniform(0.5, 1.5))
                mid = post(port, LIST)
                answered = time.perf_counter()
                deadline = answered + 30
                while mid not in sink.arrived and time.perf_counter() < deadline:
                    time.sleep(0.005)
                delays.append(sink.arrived.get(mid, float("inf")) - answered)
        finally:
            stop.set()
            for proc, _ in procs:
                proc.terminate()
                proc.wait(60)
            controller.stop()
    delays.sort()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"250 -> first copy at the sink, {args.posts} posts"
          f"{f' (a post a second to {args.busy} members meanwhile)' if args.busy else ''}: median "
          f"{statistics.median(delays):.2f} s, p90 {delays[int(len(delays) * 0.9) - 1]:.2f} s,"
          f" worst {delays[-1]:.2f} s, best {delays[0]:.2f} s; {sink.copies} copies received")


if __name__ == "__main__":
    main()
