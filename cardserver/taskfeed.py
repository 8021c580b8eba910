"""The task topic, `task/<flow>/<run>/<step>/<task>`: a task's details (attempts, verdicts,
log sizes, metadata, cards, traceback), read by the source on demand and pushed again
whenever anything in that folder, or the task in the index, changes while someone watches.

A log that grew shows as a new size in its attempt's `logs`: the browser fetches the new lines.
The hub says which tasks are watched. Reads happen only for those, one at a time per task
(a burst of changes while one read runs costs one more read, not one per change).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any

from .feed import message
from .hub import SNAPSHOT, Hub
from .index import Index, card_order
from .layout import TaskKey, task_key_from_parts
from .taskinfo import TaskFolder, task_detail

ReadTask = Callable[[TaskKey], Awaitable[TaskFolder | None]]


def task_topic(key: TaskKey) -> str:
    return f"task/{key}"


class TaskFeed:
    def __init__(self, read: ReadTask, index: Index, hub: Hub) -> None:
        self.read = read  # the source's read of a task's folder
        self.index = index
        self.hub = hub
        self._reading: dict[TaskKey, asyncio.Task[None]] = {}
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
        found = await self.read(key)
        task = self.index.task(key)
        if found is None and task is None:
            return None
        cards = [c.summary() for c in sorted(task.cards.values(), key=card_order)] if task else []
        return task_detail(key, found, cards, task.shown.value if task else None)

    # --- pushes -----------------------------------------------------------------------------

    def touched(self, keys: Iterable[TaskKey]) -> None:
        """Files changed in these tasks' folders: push again each watched one."""
        if not self.watched:
            return  # nobody looks at a task: a busy run's batches cost nothing here
        self.changed(set(keys))

    def changed(self, keys: Iterable[TaskKey]) -> None:
        for key in keys:
            if key in self.watched:
                self.refresh(key)

    def refresh_all(self) -> None:
        """After a whole read of the tree: every watched task may have changed."""
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
        for reading in list(self._reading.values()):
            reading.cancel()
            with suppress(asyncio.CancelledError):
                await reading
