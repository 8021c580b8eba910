"""The pipeline: applies a source's events to the index and announces what changed (the feed
to the hub, the task topics, and the source, whose idea of what may still change follows the
index). It does not read, watch, poll or plan: the source does (`source.py`). The one thing it
applies unasked is nothing at all, when the index says time alone may change a status.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager, suppress

from .events import Event, Reset
from .feed import Feed
from .hub import Hub
from .index import Changes, Index
from .layout import TaskKey
from .source import Health, Source
from .status import GRACE_SECONDS
from .taskfeed import TaskFeed

log = logging.getLogger("cardserver")


class Pipeline:
    def __init__(self, source: Source, status_grace_seconds: float = GRACE_SECONDS) -> None:
        self.source = source
        self.index = Index(grace=status_grace_seconds)
        self.hub = Hub()
        self.feed = Feed(self.index, self.hub)
        self.tasks = TaskFeed(source.read_task, self.index, self.hub)
        self.ready = asyncio.Event()  # the first read is in the index
        self._task: asyncio.Task[None] | None = None
        self._status_timer: asyncio.TimerHandle | None = None  # see `recheck_status_later`
        self._status_at: float | None = None  # when it fires

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cardserver-pipeline")

    async def stop(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
        await self.source.close()
        await self.tasks.close()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            await self.source.first_read(self)
        except Exception:  # requests wait for `ready`: a bug here must not hang them all
            log.exception("failed to read the datastore; serving what is known")
        self.ready.set()
        await self.source.follow(self)

    # --- the sink a source hands its events to -----------------------------------------------

    async def start_over(self, parts: AsyncIterator[list[Event]]) -> Changes:
        changes: Changes | None = None
        with collector_paused():
            async for events in parts:
                if changes is None:  # its Reset says "everything changed", which covers the rest
                    changes = self.index.apply([Reset(tuple(events))])
                else:
                    self.index.apply(events)
        if changes is None:
            return Changes()
        self.announce(changes)
        return changes

    def apply(self, events: list[Event], tasks: Iterable[TaskKey] = ()) -> Changes:
        changes = self.index.apply(events)
        self.announce(changes)
        if tasks:  # a batch's lazy list of tasks, or nothing to look at
            self.tasks.touched(tasks)
        return changes

    def health(self, health: Health) -> None:
        self.feed.publish_health(health.as_dict())

    def announce(self, changes: Changes) -> None:
        """Tell subscribers, and the source (what it follows may differ now)."""
        if changes:
            self.feed.publish(changes)
            self.source.changed(changes)
            if changes.reset:
                self.tasks.refresh_all()
            else:
                self.tasks.changed(changes.tasks)
        self.recheck_status_later()

    # --- statuses that change with time alone -------------------------------------------------

    def recheck_status_later(self) -> None:
        """Some statuses change with time alone (a run gone quiet): apply nothing when one may."""
        at = self.index.next_recheck()
        if at == self._status_at:
            return  # already set for then: every batch of live updates comes through here
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        self._status_at = at
        if at is not None:
            delay = max(0.0, at - time.time()) + 0.05
            self._status_timer = asyncio.get_running_loop().call_later(delay, self.recheck_status)

    def recheck_status(self) -> None:
        self._status_timer = self._status_at = None
        self.apply([])


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a whole datastore is read and applied (across the
    awaits of its parts): everything made lives on in the new index, so the passes find nothing.
    Then the new index is frozen out of later passes (`gc.freeze`); what is freed still goes.
    bench/scale.py on 10,000 tasks, alternating runs: "cold start to serving the run" median
    2.27 s with the pause, 4.11 s without (5 runs each); "run API first call" median 203 ms
    with the freeze, 235 ms without (3 runs each: a full pass over the index during the call)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_on:
            gc.enable()
