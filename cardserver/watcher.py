"""File events from the OS, paced for live cards, as batches of changed paths.

watchfiles' `awatch` fixes its `step` for the life of the generator, and its Rust loop wakes
every `step` ms even when nothing happens: a short step costs idle CPU, a long one costs
latency. We drive `RustNotify` directly so the step can change between calls: short ("hot")
for `hot_seconds` after any change, since live cards write in bursts, and long ("cold")
otherwise. The first write after a quiet spell pays at most two cold steps; every later one
pays two hot steps. One `RustNotify` lives as long as the roots do, so no change is missed
between calls.

When a root does not exist yet we watch its nearest existing parent and start over (a
`Rescan`) once it appears; when it is deleted we go back to waiting. When inotify cannot watch
(out of watches, unsupported file system) we fall back to polling with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

from .config import Roots, WatchTiming

log = logging.getLogger("cardserver.watcher")

RESCAN_BATCH = 20_000  # a batch this large may have overflowed the OS queue: read the tree again


class Change(IntEnum):
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


@dataclass(frozen=True, slots=True)
class Rescan:
    """Read the whole tree again: a root appeared or vanished, or events may have been lost."""

    reason: str


Batch = list[tuple[Change, Path]]


@dataclass(frozen=True, slots=True)
class Plan:
    recursive: tuple[Path, ...]  # existing roots
    waiting: tuple[Path, ...]  # nearest existing parents of missing roots


def plan(roots: Roots) -> Plan:
    wanted = [roots.datastore]
    if not roots.cards.is_relative_to(roots.datastore):
        wanted.append(roots.cards)
    present = tuple(p for p in wanted if p.is_dir())
    waiting = tuple(sorted({nearest_existing(p) for p in wanted if not p.is_dir()}))
    return Plan(present, waiting)


def nearest_existing(path: Path) -> Path:
    for folder in path.parents:
        if folder.is_dir():
            return folder
    return Path(path.anchor or "/")


class Pacer:
    """Hot right after a change, cold when quiet."""

    def __init__(self, timing: WatchTiming) -> None:
        self.timing = timing
        self.hot_until = 0.0

    def changed(self) -> None:
        self.hot_until = time.monotonic() + self.timing.hot_seconds

    def next_wait(self) -> tuple[int, int]:
        """(step_ms, timeout_ms) for the next RustNotify.watch; timeout 0 means none."""
        left = self.hot_until - time.monotonic()
        if left > 0:
            return self.timing.hot_step_ms, max(1, int(left * 1000))
        return self.timing.cold_step_ms, 0


class Watcher:
    def __init__(self, roots: Roots, timing: WatchTiming, force_polling: bool = False) -> None:
        self.roots = roots
        self.timing = timing
        self.force_polling = force_polling
        self.pacer = Pacer(timing)
        self.mode = "starting"
        self._stop = threading.Event()  # the whole watcher
        self._generation = threading.Event()  # the RustNotify loops of the current plan
        self._rescan_reason: str | None = None

    def stop(self) -> None:
        self._stop.set()
        self._generation.set()

    def describe(self) -> str:
        return self.mode

    async def batches(self) -> AsyncIterator[Batch | Rescan]:
        """Changed paths under the roots, batch by batch, until `stop()`."""
        reopened: str | None = None
        while not self._stop.is_set():
            current = plan(self.roots)
            notifies = self._open(current)
            if notifies is None:
                return
            try:
                if reopened is not None:
                    # Only now, with the new watches open: what lands during the rescan is seen.
                    yield Rescan(reopened)
                async for item in self._run(notifies, current):
                    yield item
            finally:
                for notify, _ in notifies:
                    notify.close()
            reopened = self._rescan_reason or "datastore appeared or changed shape"
            self._rescan_reason = None

    def _open(self, current: Plan) -> list[tuple[RustNotify, Plan]] | None:
        notifies: list[tuple[RustNotify, Plan]] = []
        if current.recursive:
            notifies.append((self._notify(list(current.recursive), True), current))
        if current.waiting:
            notifies.append((self._notify(list(current.waiting), False), current))
        self.mode = ("polling" if self.force_polling else "watching") if current.recursive else "waiting"
        return notifies

    def _notify(self, paths: list[Path], recursive: bool) -> RustNotify:
        names = [str(p) for p in paths]
        if not self.force_polling:
            try:
                # ignore_permission_denied=False: watchfiles ignores *every* error when it is
                # set, and an exhausted inotify limit must make us poll, not go silent.
                return RustNotify(names, False, False, self.timing.poll_delay_ms, recursive, False)
            except (WatchfilesRustInternalError, OSError) as error:
                log.warning(
                    "cannot watch %s with OS events (%s); polling every %d ms instead",
                    ", ".join(names), error, self.timing.poll_delay_ms,
                )
                self.force_polling = True
        return RustNotify(names, False, True, self.timing.poll_delay_ms, recursive, True)

    async def _run(
        self, notifies: list[tuple[RustNotify, Plan]], current: Plan
    ) -> AsyncIterator[Batch | Rescan]:
        queue: asyncio.Queue[Batch | Rescan | None] = asyncio.Queue()
        generation = self._generation = threading.Event()
        if self._stop.is_set():
            return
        tasks = [asyncio.create_task(self._pump(n, queue, generation)) for n, _ in notifies]
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Rescan):
                    self._rescan_reason = item.reason  # yielded once the watches are reopened
                    return
                if plan(self.roots) != current:
                    return  # a root appeared or vanished: reopen with the new plan
                if len(item) >= RESCAN_BATCH:
                    yield Rescan("very large burst of changes")
                    continue
                yield item
        finally:
            generation.set()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task

    async def _pump(
        self,
        notify: RustNotify,
        queue: asyncio.Queue[Batch | Rescan | None],
        stop: threading.Event,
    ) -> None:
        # Not cancelled from outside: the thread inside notices `stop` within one step and
        # returns, so no RustNotify call outlives its watcher.
        try:
            while not stop.is_set():
                step, timeout = self.pacer.next_wait()
                try:
                    raw = await asyncio.to_thread(
                        notify.watch, self.timing.debounce_ms, step, timeout, stop
                    )
                except (WatchfilesRustInternalError, RuntimeError, OSError) as error:
                    log.warning("file watcher failed (%s); reading the tree again", error)
                    self.force_polling = self.force_polling or "watch" in str(error)
                    await queue.put(Rescan(str(error)))
                    return
                if raw == "stop":
                    break
                if isinstance(raw, str):  # "timeout" (hot spell over) or "signal"
                    continue
                self.pacer.changed()
                await queue.put([(Change(kind), Path(path)) for kind, path in raw])
        finally:
            await queue.put(None)
