"""Many tasks hand items to one writer task, which writes what waits in one go.

The shape of every group commit here: the receiver's (a commit per group of SMTP
transactions), and the delivery worker's sent-marks and outcomes (a commit per batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def no_delay(waiting: int) -> float:
    return 0.0


class Drain(Generic[T, R]):
    """Items put while a batch is being written wait and go together in the next batch
    (`limit` at most; 0 for all that wait), which `write` turns into one result per
    item. Before each batch, `delay(waiting)` seconds let more items join. A batch whose
    write raises gives its exception to each of its items, and the next batch goes on."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]], *, limit: int = 0,
                 delay: Callable[[int], float] = no_delay) -> None:
        self.write = write
        self.limit = limit
        self.delay = delay
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.writer: asyncio.Task | None = None

    def put(self, item: T) -> asyncio.Future[R]:
        """Queue `item` for the next batch; its result once that is written (awaiting
        it is optional)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.writer is None:
            self.writer = asyncio.create_task(self._write_all())
        return future

    async def idle(self) -> None:
        """Wait until everything put so far is written."""
        while self.writer is not None:
            await asyncio.shield(self.writer)

    async def _write_all(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self.waiting:
                seconds = self.delay(len(self.waiting))
                if seconds:
                    await asyncio.sleep(seconds)
                cut = self.limit or len(self.waiting)
                batch, self.waiting = self.waiting[:cut], self.waiting[cut:]
                try:
                    results = await self.write([item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001  each item's waiter gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            self.writer = None
            # Cancelled (the loop is closing): nobody waits for a write that will not come.
            for _, future in [*batch, *self.waiting]:
                future.cancel()
            self.waiting = []
