"""Answers read from the database a moment ago, kept for a second or so by the receiver
so that busy senders and lists are not looked up at every SMTP command. Each user says
why its answers may be that old."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Keys remembered at most; the longest unused go first (one busy process, not a leak).
ENTRIES = 10_000


class Recent(Generic[K, V]):
    """Values by key, each with the time.monotonic() it was read at; older than
    `seconds` counts as absent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> tuple[float, V] | None:
        """(read_at, value) while fresh."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.seconds:
            return None
        return entry

    def put(self, key: K, read_at: float, value: V) -> None:
        self._entries[key] = (read_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > ENTRIES:
            self._entries.popitem(last=False)
