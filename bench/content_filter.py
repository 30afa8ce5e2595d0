"""What the content filter costs the compose path: the list copy of every corpus message
(tests/data/corpus/messages), composed as fanout composes it (the default footer), with
the filter off and with each setting on, CPU time per copy and MIME parses per copy.

Off must cost nothing: no parse more than the footer's own, the same time within noise.

    python bench/content_filter.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from listserv import compose, content_filter, mime
from listserv.address import ListAddresses
from listserv.footer import render_footer

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus" / "messages"
ADDRESSES = ListAddresses("dev@lists.example.org")
BASE = "https://lists.example.org"
RULES = {
    "off": content_filter.OFF,
    "pass_types text/plain image/*": content_filter.Rules(("text/plain", "image/*")),
    "collapse_alternatives": content_filter.Rules(collapse_alternatives=True),
    "html_to_text": content_filter.Rules(html_to_text=True),
    "max_attachment_bytes 1000": content_filter.Rules(max_attachment_bytes=1000),
    "all four": content_filter.Rules(("text/*", "image/*"), True, True, 5000),
}


def compose_all(posts: list[bytes], rules: content_filter.Rules, rounds: int) -> float:
    """CPU seconds per list copy, the best of `rounds` passes over the posts."""
    footer = render_footer(None, name="Dev", addresses=ADDRESSES, base_url=BASE,
                           archive=True)
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for raw in posts:
            compose.list_copy(raw, addresses=ADDRESSES, name="Dev", base_url=BASE,
                              message_id="m@example.org", subject="s", add_message_id=False,
                              footer=footer, content=rules)
        best = min(best, time.process_time() - start)
    return best / len(posts)


def parses_per_copy(posts: list[bytes], rules: content_filter.Rules) -> float:
    """mime.parse calls per copy (wrapped for the count, here only)."""
    calls = 0
    real = mime.parse

    def counting(*args: object, **kwargs: object) -> mime.Part:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]
    mime.parse = counting  # type: ignore[assignment]
    try:
        compose_all(posts, rules, 1)
    finally:
        mime.parse = real  # type: ignore[assignment]
    return calls / len(posts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    posts = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.eml"))]
    print(f"{len(posts)} corpus messages, {sum(map(len, posts)) // len(posts)} bytes on "
          f"average; best of {args.rounds} passes")
    print("| filter | CPU per copy (µs) | MIME parses per copy |\n|---|---|---|")
    for name, rules in RULES.items():
        print(f"| {name} | {compose_all(posts, rules, args.rounds) * 1e6:.0f} | "
              f"{parses_per_copy(posts, rules):.2f} |")


if __name__ == "__main__":
    main()
