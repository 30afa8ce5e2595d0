#!/usr/bin/env python3
"""The full-size crash test: tests/test_crash.py's fan-out of one post to 10,000 members
(CI uses 2,000), `listserv serve` killed with SIGKILL at seeded random moments of it and
restarted each time; every member must get the post, with no more copies twice than the
transactions in flight at the kills.

    python bench/crash.py                     # 10,000 members, 5 kills
    python bench/crash.py --members 50000 --kills 10
    LISTSERV_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/crash.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "LISTSERV_CRASH_MEMBERS": str(args.members),
           "LISTSERV_CRASH_KILLS": str(args.kills)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:warnings", "tests/test_crash.py::"
         "test_kill_9_at_random_moments_of_a_fan_out_loses_no_member"], cwd=REPO, env=env)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
