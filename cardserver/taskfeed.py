"""The task topic, `task/<flow>/<run>/<step>/<task>`: a task's details (attempts, verdicts,
log sizes, metadata, cards, traceback), read by the source on demand and pushed again
whenever anything in that folder, or the task in the index, changes while someone watches.

A log that grew shows as a new size in its attempt's `logs`: the browser fetches the new lines.
The hub says which tasks are watched. Reads happen only for those, one at a time per task
(a burst of changes while one read runs costs one more read, not one per change). Whoever asks
for a task's details while a read of it is under way, or within a second after (many requests
at once, a push), shares that read, unless the folder changed since it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from functools import partial
from typing import Any

from .feed import message
from .hub import SNAPSHOT, Hub
from .index import Index, card_order
from .layout import TaskKey, task_key_from_parts
from .taskinfo import TaskFolder, task_detail

ReadTask = Callable[[TaskKey], Awaitable[TaskFolder | None]]
FRESH_SECONDS = 1.0  # a read answers asks this long after it landed, unless the folder changed


def task_topic(key: TaskKey) -> str:
    return f"task/{key}"


class TaskFeed:
    def __init__(self, read: ReadTask, index: Index, hub: Hub) -> None:
        self.read = read  # the source's read of a task's folder
        self.index = index
        self.hub = hub
        self._reading: dict[TaskKey, asyncio.Task[None]] = {}
        self._flights: dict[TaskKey, asyncio.Future[TaskFolder | None]] = {}  # reads under way
        self._again: set[TaskKey] = set()
        self.watched: set[TaskKey] = set()  # tasks someone looks at, as the hub tells
        hub.watches.append(self._watch)

    def _watch(self, topic: str, watched: bool) -> None:
        key = task_key_from_parts(topic.split("/")[1:]) if topic.startswith("task/") else None
        if key is not None and watched:
            self.watched.add(key)
        elif key is not None:
            self.watched.discard(key)

    async def detail(self, key: TaskKey) -> dict[str, Any] | None:
        """The task's details now; None when neither the disk nor the index knows it."""
        found = await self.read_once(key)
        task = self.index.task(key)
        if found is None and task is None:
            return None
        cards = [c.summary() for c in sorted(task.cards.values(), key=card_order)] if task else []
        return task_detail(key, found, cards, task.shown.value if task else None)

    async def read_once(self, key: TaskKey) -> TaskFolder | None:
        """The source's read of the task's folder, shared with everyone who asks while it runs
        and for `FRESH_SECONDS` after, unless the folder changes meanwhile (`forget`): a flood
        of asks costs one read a second. One asker that gives up (a closed request) leaves the
        read running for the others."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(self.read(key))
            flight.add_done_callback(partial(self._landed, key))
        return await asyncio.shield(flight)

    def _landed(self, key: TaskKey, flight: asyncio.Future[TaskFolder | None]) -> None:
        if flight.cancelled() or flight.exception() is not None:  # (each asker got it)
            self._drop(key, flight)
        else:
            asyncio.get_running_loop().call_later(FRESH_SECONDS, self._drop, key, flight)

    def _drop(self, key: TaskKey, flight: asyncio.Future[TaskFolder | None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def forget(self, keys: Iterable[TaskKey]) -> None:
        """These folders changed: a read under way may have missed it, so the next asker reads anew."""
        for key in keys:
            self._flights.pop(key, None)

    # --- pushes -----------------------------------------------------------------------------

    def touched(self, keys: Iterable[TaskKey]) -> None:
        """Files changed in these tasks' folders: push again each watched one."""
        if not self.watched and not self._flights:
            return  # nobody looks at a task: a busy run's batches cost nothing here
        self.changed(set(keys))

    def changed(self, keys: Iterable[TaskKey]) -> None:
        keys = set(keys)
        self.forget(keys)
        for key in keys:
            if key in self.watched:
                self.refresh(key)

    def refresh_all(self) -> None:
        """After a whole read of the tree: every watched task may have changed."""
        self._flights.clear()
        for key in list(self.watched):
            self.refresh(key)

    def refresh(self, key: TaskKey) -> None:
        if key in self._reading:
            self._again.add(key)
            return
        self._reading[key] = asyncio.create_task(self._push(key))

    async def _push(self, key: TaskKey) -> None:
        try:
            while True:
                self._again.discard(key)
                detail = await self.detail(key)
                topic = task_topic(key)
                if detail is None:
                    self.hub.publish(message(topic, SNAPSHOT, "task-detail", exists=False))
                else:
                    self.hub.publish(message(topic, SNAPSHOT, "task-detail", **detail))
                if key not in self._again:
                    return
        finally:
            del self._reading[key]

    async def close(self) -> None:
        going: list[asyncio.Future[Any]] = [*self._reading.values(), *self._flights.values()]
        for reading in going:
            reading.cancel()
            with suppress(asyncio.CancelledError):
                await reading
