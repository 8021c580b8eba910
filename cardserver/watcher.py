"""File events from the OS, paced for live cards, as batches of changed paths.

What is watched. A finished run never changes, and watching a 10,000-task run costs 50,000
inotify watches (seconds of start-up), so the tree is watched in two parts:
- the *shape*, one level deep: each root, each flow folder and each flow's cards `runs` folder,
  where new flows and runs appear;
- the *deep* watches over the folders the caller `follow`s: the runs that may still change,
  one OS watch per group of folders the caller gives. Opening a watch holds the GIL for the
  whole tree (~0.2 ms per task of a run): with its own watch, a big live run is not watched
  again each time another run starts or settles.
When a folder joins either part the watcher yields `Opened(folders)`: whatever was written
there before the watch existed must be read by the caller.

Pacing. watchfiles' `awatch` fixes its `step` for the life of the generator, and its Rust loop
wakes every `step` ms even when nothing happens: a short step costs idle CPU, a long one costs
latency. We drive `RustNotify` directly so the step can change between calls: short ("hot")
for `hot_seconds` after any change, since live cards write in bursts, and long ("cold")
otherwise. The shape watch always takes long steps: new runs are rare and read in full when seen.

When a root does not exist yet we watch its nearest existing parent and start over (a
`Rescan`) once it appears; when it is deleted we go back to waiting. When inotify cannot watch
(out of watches, unsupported file system) we fall back to polling with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

# Private API, pinned in pyproject.toml to the release line the tests cover (1.3.x).
from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

from .config import CARDS_DIR, Roots, WatchTiming
from .disk import subdirs
from .layout import cards_runs_dir

log = logging.getLogger("cardserver.watcher")

RESCAN_BATCH = 20_000  # a batch this large may have overflowed the OS queue: read the tree again
DEEP_WATCHES = 8  # at most: groups beyond are watched together with the last (threads, idle wake-ups)


class Change(IntEnum):
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


@dataclass(frozen=True, slots=True)
class Rescan:
    """Read the whole tree again: a root appeared or vanished, or events may have been lost."""

    reason: str


@dataclass(frozen=True, slots=True)
class Opened:
    """Folders just added to the watch: what was written in them before may have been missed."""

    folders: tuple[Path, ...]


Batch = list[tuple[Change, Path]]
Item = Batch | Rescan | Opened


@dataclass(frozen=True, slots=True)
class Plan:
    present: tuple[Path, ...]  # existing roots
    waiting: tuple[Path, ...]  # nearest existing parents of missing roots


def plan(roots: Roots) -> Plan:
    wanted = [roots.datastore]
    if not roots.cards.is_relative_to(roots.datastore):  # inside it, the shape watch finds it
        wanted.append(roots.cards)
    present = tuple(p for p in wanted if p.is_dir())
    waiting = tuple(sorted({nearest_existing(p) for p in wanted if not p.is_dir()}))
    return Plan(present, waiting)


def nearest_existing(path: Path) -> Path:
    for folder in path.parents:
        if folder.is_dir():
            return folder
    return Path(path.anchor or "/")


def shape_folders(roots: Roots) -> frozenset[Path]:
    """The folders where flows and runs appear: each root, each flow, each cards `runs`."""
    shape: set[Path] = set()
    if roots.datastore.is_dir():
        shape.add(roots.datastore)
        shape.update(roots.datastore / f for f in subdirs(str(roots.datastore)) if f != CARDS_DIR)
    if roots.cards.is_dir():
        shape.add(roots.cards)
        for flow in (roots.cards / name for name in subdirs(str(roots.cards))):
            shape.add(flow)
            if (runs := roots.cards / cards_runs_dir(flow.name)).is_dir():
                shape.add(runs)
    return frozenset(shape)


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

    def shape(self) -> tuple[int, int]:
        return self.timing.shape_step_ms, 0


class _Replan:
    """Queued by `follow`: the followed folders changed."""


_REPLAN = _Replan()


@dataclass(slots=True)
class _Pump:
    """One RustNotify and the task that feeds its batches to the queue."""

    notify: RustNotify
    folders: frozenset[Path]
    stop: threading.Event
    task: asyncio.Task[None] | None = None


class Watcher:
    def __init__(self, roots: Roots, timing: WatchTiming, force_polling: bool = False) -> None:
        self.roots = roots
        self.timing = timing
        self.force_polling = force_polling
        self.pacer = Pacer(timing)
        self.mode = "starting"
        self._stop = threading.Event()
        self._followed: tuple[frozenset[Path], ...] = ()
        self._queue: asyncio.Queue[Batch | Rescan | _Replan | None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._pumps: dict[str, _Pump] = {}  # by role: "shape", "waiting"
        self._deep: dict[frozenset[Path], _Pump] = {}  # by the group of folders it was opened for
        # Pumps wait in threads of their own (the loop's default pool is shared and small); twice
        # as many as there are watches, as a replaced pump takes one last step beside the new one.
        self._threads = ThreadPoolExecutor(2 * (DEEP_WATCHES + 2), thread_name_prefix="cardserver-watch")
        self._rescan_reason: str | None = None

    def stop(self) -> None:
        self._stop.set()
        for pump in self._all_pumps():
            pump.stop.set()
        if self._queue is not None:
            self._queue.put_nowait(None)

    def describe(self) -> str:
        return self.mode

    def follow(self, groups: Iterable[Iterable[Path]]) -> None:
        """Watch these folders deeply from now on (the runs that may still change), one OS watch
        per group, the most costly first: a group that stays keeps its watch."""
        wanted = tuple(frozenset(group) for group in groups)
        if len(wanted) > DEEP_WATCHES:
            wanted = (*wanted[: DEEP_WATCHES - 1], frozenset().union(*wanted[DEEP_WATCHES - 1 :]))
        if wanted != self._followed:
            self._followed = wanted
            if self._queue is not None:
                self._queue.put_nowait(_REPLAN)

    def watched(self, role: str) -> frozenset[Path]:
        """The folders watched in that role: "shape", "deep" (all groups) or "waiting"."""
        if role == "deep":
            return frozenset().union(*(pump.folders for pump in self._deep.values()))
        pump = self._pumps.get(role)
        return pump.folders if pump is not None else frozenset()

    def _all_pumps(self) -> list[_Pump]:
        return [*self._pumps.values(), *self._deep.values()]

    async def batches(self) -> AsyncGenerator[Item, None]:
        """Changed paths under the roots, batch by batch, until `stop()`."""
        reopened: str | None = None
        while not self._stop.is_set():
            current = plan(self.roots)
            self._queue = asyncio.Queue()
            try:
                self._open(current)
                if reopened is not None:
                    # Only now, with the new watches open: what lands during the rescan is seen.
                    yield Rescan(reopened)
                async for item in self._run(current):
                    yield item
            finally:
                await self._close_all()
            reopened = self._rescan_reason or "datastore appeared or changed shape"
            self._rescan_reason = None

    # --- opening and replacing watches ------------------------------------------------------

    def _open(self, current: Plan) -> None:
        if current.waiting:
            self._replace("waiting", frozenset(current.waiting), recursive=False)
        if current.present:
            self._refresh()
        self.mode = ("polling" if self.force_polling else "watching") if current.present else "waiting"

    def _refresh(self) -> tuple[Path, ...]:
        """Bring the shape and deep watches up to date; the folders that joined them, or whose
        watch was replaced."""
        before = self.watched("shape")
        shape = shape_folders(self.roots)
        if shape != before:
            self._replace("shape", shape, recursive=False)
        reopened = self._refresh_deep()
        return tuple(sorted(self.watched("shape") - before)) + tuple(sorted(reopened))

    def _refresh_deep(self) -> frozenset[Path]:
        """One watch per followed group (its folders that exist); a group that stays keeps its
        watch. The folders of every new watch are returned: a change the old watch had taken in
        but not yet handed over when it closed is lost, so they must be read again."""
        wanted = {frozenset(f for f in group if f.is_dir()) for group in self._followed}
        wanted.discard(frozenset())
        stale = self._deep.keys() - wanted
        opened: set[Path] = set()
        for group in wanted - self._deep.keys():
            pump = self._start(group, recursive=True)
            if pump is not None:
                self._deep[group] = pump
                opened.update(group)
        for group in stale:
            self._retire(self._deep.pop(group))
        return frozenset(opened)

    def _replace(self, role: str, folders: frozenset[Path], recursive: bool) -> None:
        """Open the new watch before closing the old, so no change falls between them."""
        old = self._pumps.pop(role, None)
        if folders:
            pump = self._start(folders, recursive)
            if pump is not None:
                self._pumps[role] = pump
        if old is not None:
            self._retire(old)

    def _start(self, folders: frozenset[Path], recursive: bool) -> _Pump | None:
        pump = self._notify(folders, recursive)
        if pump is not None:
            pump.task = asyncio.create_task(self._pump(pump, paced=recursive))
        return pump

    def _retire(self, pump: _Pump) -> None:
        pump.stop.set()  # its thread returns within one step; `_close` waits for it
        closing = asyncio.create_task(self._close(pump))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _notify(self, folders: frozenset[Path], recursive: bool) -> _Pump | None:
        for _ in range(3):  # a folder may vanish between listing and watching
            names = sorted(str(p) for p in folders)
            try:
                return _Pump(self._rust_notify(names, recursive), folders, threading.Event())
            except FileNotFoundError:
                folders = frozenset(p for p in folders if p.is_dir())
                if not folders:
                    return None
        return None

    def _rust_notify(self, names: list[str], recursive: bool) -> RustNotify:
        if not self.force_polling:
            try:
                # ignore_permission_denied=False: watchfiles ignores *every* error when it is
                # set, and an exhausted inotify limit must make us poll, not go silent.
                return RustNotify(names, False, False, self.timing.poll_delay_ms, recursive, False)
            except FileNotFoundError:
                raise
            except (WatchfilesRustInternalError, OSError) as error:
                log.warning(
                    "cannot watch %s with OS events (%s); polling every %d ms instead",
                    ", ".join(names[:3]) + (", …" if len(names) > 3 else ""),
                    error, self.timing.poll_delay_ms,
                )
                self.force_polling = True
                self.mode = "polling"
        return RustNotify(names, False, True, self.timing.poll_delay_ms, recursive, True)

    async def _close(self, pump: _Pump) -> None:
        pump.stop.set()
        if pump.task is not None:
            with suppress(asyncio.CancelledError):
                await pump.task
        pump.notify.close()

    async def _close_all(self) -> None:
        pumps, self._pumps, self._deep = self._all_pumps(), {}, {}
        for pump in pumps:
            await self._close(pump)
        for closing in list(self._closing):
            with suppress(asyncio.CancelledError):
                await closing

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self, current: Plan) -> AsyncIterator[Item]:
        queue = self._queue
        assert queue is not None
        while not self._stop.is_set():
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, _Replan):
                if current.present:
                    opened = self._refresh()
                    if opened:
                        yield Opened(opened)
                continue
            if isinstance(item, Rescan):
                self._rescan_reason = item.reason  # yielded once the watches are reopened
                return
            if plan(self.roots) != current:
                return  # a root appeared or vanished: reopen with the new plan
            if len(item) >= RESCAN_BATCH:
                yield Rescan("very large burst of changes")
                continue
            opened = self._refresh() if self._reshapes(item) else ()  # before the caller acts
            yield item
            if opened:
                yield Opened(opened)

    def _reshapes(self, batch: Batch) -> bool:
        """A folder came or went where flows and runs live, or a followed folder appeared."""
        shape = self.watched("shape")
        followed = frozenset().union(*self._followed)
        for change, path in batch:
            if change is not Change.MODIFIED and (path.parent in shape or path in followed):
                return True
        return False

    async def _pump(self, pump: _Pump, paced: bool) -> None:
        # Not cancelled from outside: the thread inside notices `stop` within one step and
        # returns, so no RustNotify call outlives its watch.
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while not pump.stop.is_set():
            step, timeout = self.pacer.next_wait() if paced else self.pacer.shape()
            try:
                raw = await loop.run_in_executor(
                    self._threads, pump.notify.watch, self.timing.debounce_ms, step, timeout, pump.stop
                )
            except (WatchfilesRustInternalError, RuntimeError, OSError) as error:
                log.warning("file watcher failed (%s); reading the tree again", error)
                self.force_polling = self.force_polling or "watch" in str(error)
                queue.put_nowait(Rescan(str(error)))
                return
            if raw == "stop":
                return
            if isinstance(raw, str):  # "timeout" (hot spell over) or "signal"
                continue
            self.pacer.changed()
            queue.put_nowait([(Change(kind), Path(path)) for kind, path in raw])
