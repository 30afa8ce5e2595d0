#!/usr/bin/env python3
"""The long fuzz run: the property of tests/test_fuzz.py (mutated corpus and random mail
over real SMTP to every kind of list address) with many random examples, not the 50
derandomized ones of CI. Prints the counts: messages sent, 250s, 4xx, 5xx, crashes.

    python bench/fuzz.py                      # 5,000 examples, a few minutes on 2 cores
    python bench/fuzz.py --examples 20000

A crash is any failure of the property: a traceback the server logged, a hang (no reply
within 30 s), a dropped connection, or accepted mail not stored byte for byte; pytest
then prints the smallest example that shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally = Path(tmp) / "tally.json"
        env = {**os.environ, "LISTSERV_FUZZ_EXAMPLES": str(args.examples),
               "LISTSERV_FUZZ_TALLY": str(tally)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings",
             "tests/test_fuzz.py::"
             "test_mutated_and_random_mail_to_every_list_address_is_kept_exactly_or_refused"],
            cwd=REPO, env=env)
        counts = json.loads(tally.read_text()) if tally.exists() else {}
    sent = sum(counts.values())
    print(f"\nfuzz: {sent} messages sent in {time.monotonic() - started:.0f} s: "
          f"{counts.get('250', 0)} got 250, {counts.get('4xx', 0)} 4xx, "
          f"{counts.get('5xx', 0)} 5xx; crashes: {0 if done.returncode == 0 else 'see above'}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
