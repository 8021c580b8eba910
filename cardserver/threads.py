"""Thread pools of our own, one per kind of blocking work. A pool's queue holds only its own kind:
a live update's read never waits behind a task view's or a card page's read, however slow those
are or however many are asked at once (asyncio's default executor is shared by everything that
calls `asyncio.to_thread`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Pool:
    def __init__(self, name: str, workers: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"cardserver-{name}")

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(work, *args, **kwargs))

    def close(self) -> None:
        """Queued work is dropped; work under way finishes in its thread, unwaited."""
        self._executor.shutdown(wait=False, cancel_futures=True)
