"""The local disk as a source (see `source.py`): a `.metaflow` datastore and its cards root.

Its first read is the forked scan (`prescan`) or a scan in threads; then the watcher's batches
of changed paths become events (`pathevents`); the runs that may still change are watched
deeply (`following`) and whatever a new watch opens on is read again; when the watcher can only
poll, live cards' own files are checked at the poll delay too. Reads on demand (a card's HTML,
a data update, a task's folder, a log page) happen in a thread, inside the roots, each kind in
a pool of its own (`threads`): what a viewer or a script asks for, however slow or many, never
holds up a live update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

from . import disk, helper, taskinfo
from .config import Config
from .disk import Problem, Scanned, Scope
from .events import DataWritten, Event
from .feed import Viewed
from .following import Following, run_folders
from .index import Card, Changes
from .layout import CardFileKind, CardKey, TaskKey, card_path
from .logs import Page
from .pathevents import PathEvents
from .prescan import Prescan
from .source import Health, Sink, SinkHolder, Unavailable
from .taskinfo import TaskFolder
from .threads import Pool
from .watcher import Batch, Item, Opened, Rescan, Watcher

log = logging.getLogger("cardserver")


class LocalSource(SinkHolder):
    def __init__(self, config: Config, first_scan: Prescan | None = None) -> None:
        self.config = config
        self.first_scan = first_scan  # read before the server started: see `prescan`
        self.roots = config.roots
        self.limits = config.limits
        self.scope = Scope(config.flow, config.run_id)
        self.watcher = Watcher(config.roots, config.timing, config.force_polling)
        self.following = Following(config.roots, self.watcher, config.timing.settle_seconds)
        self.caught_up = self.following.caught_up
        self.paths = PathEvents(config.roots, config.limits, self.scope)
        self.shown: set[CardKey] = set()  # cards someone looks at: their data updates stay read
        self._sink: Sink | None = None
        self._batches: AsyncGenerator[Item, None] | None = None
        self._first: asyncio.Future[Item | None] | None = None
        self._live_poll: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None  # the loop over the watcher's batches
        self.health = Health()
        self._busy_since: float | None = None  # when the item being handled began (monotonic)
        self._unreadable: dict[CardKey, tuple[int, int, int]] = {}  # data file versions that failed
        self._loading: dict[CardKey, asyncio.Future[None]] = {}  # data updates being read
        self.live_threads = Pool("live", 2)  # the watched changes: classify, data updates
        self.task_threads = Pool("task-reads", 1)  # a task's folder, a log page
        self.card_threads = Pool("card-reads", 2)  # a card's HTML, up to the size cap

    # --- the source's life -------------------------------------------------------------------

    async def first_read(self, sink: Sink) -> None:
        self._sink = sink
        self._batches = self.watcher.batches()
        self._first = asyncio.ensure_future(anext(self._batches, None))  # OS watches before the scan
        await asyncio.sleep(0)
        try:
            if self.first_scan is not None:
                await self.rescan([part.result for part in self.first_scan.parts])
                await self.read_missed_runs()
            else:
                await self.rescan()
        finally:
            self.check_live_poll()

    async def follow(self, sink: Sink) -> None:
        self._sink = sink
        self._watch = asyncio.create_task(self._follow_batches(), name="cardserver-watch")
        await self._supervise()

    async def _follow_batches(self, restarted: bool = False) -> None:
        if restarted or self._batches is None or self._first is None:
            self._batches = self.watcher.batches()
            self._first = asyncio.ensure_future(anext(self._batches, None))
            await asyncio.sleep(0)
            await self.recover()  # a restarted watch: what changed meanwhile was missed
        batches, first = self._batches, self._first
        try:
            item = await first
            while item is not None:
                self._busy_since = time.monotonic()
                try:
                    await self.handle(item)
                except Exception:  # a bug must not stop the watching: log it, read everything again
                    log.exception("failed to apply a change; reading the datastore again")
                    await self.recover()
                self._busy_since = None
                self.check_live_poll()
                item = await anext(batches, None)
        finally:
            self._busy_since = None
            if not first.done():
                first.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await first
            with suppress(Exception):
                await batches.aclose()  # closes its OS watches

    async def recover(self) -> None:
        try:
            await self.rescan()
        except Exception:  # the next change tries again; the supervisor watches the rest
            log.exception("reading the datastore again failed too; watching on")

    # --- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Notices a watch task that ended or is stuck on one change, says so (`health`, shown
        in /api/status and the viewer), and starts it again."""
        timing = self.config.timing
        while True:
            await asyncio.sleep(timing.supervise_seconds)
            task = self._watch
            if task is None:
                continue
            busy = self._busy_since
            if task.done():
                failure = "ended" if task.cancelled() or task.exception() is None else (
                    f"failed: {task.exception()!r}")
            elif busy is not None and time.monotonic() - busy > timing.stuck_seconds:
                failure = f"stuck on one change for over {timing.stuck_seconds:.0f} s"
            else:
                if not self.health.ok:
                    self.set_health(Health(True, self.health.restarts, None))
                continue
            await self.restart_watch(failure)

    async def restart_watch(self, failure: str) -> None:
        log.error("the file watch %s; starting it again", failure)
        self.set_health(Health(False, self.health.restarts + 1, f"the file watch {failure}; restarting"))
        old = self._watch
        if old is not None and not old.done():
            old.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await old
        self._watch = asyncio.create_task(self._follow_batches(restarted=True), name="cardserver-watch")

    def set_health(self, health: Health) -> None:
        self.health = health
        self.sink.health(health)

    async def close(self) -> None:
        if self.first_scan is not None:
            self.first_scan.close()  # a reader still busy would hold up the shutdown
        self.following.close()
        self.watcher.stop()
        for task in (self._watch, self._first, self._live_poll, *self._loads):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
        for pool in (self.live_threads, self.task_threads, self.card_threads):
            pool.close()
        helper.stop()

    def status(self) -> dict[str, Any]:
        return {
            "datastore": str(self.roots.datastore),
            "cards": str(self.roots.cards),
            "watching": self.watcher.describe(),
            "followed_runs": len(self.following.followed),
            "watch": self.health.as_dict(),
        }

    async def handle(self, item: Item) -> None:
        if isinstance(item, Rescan):
            log.info("reading the datastore again: %s", item.reason)
            await self.rescan()
        elif isinstance(item, Opened):
            await self.catch_up(item.folders)
            self.following.read(item.folders)
        elif self.paths.lost_a_run(item, self.sink.index):
            log.info("a flow or run folder was deleted; reading the datastore again")
            await self.rescan()
        else:
            self.apply(self.paths.settle(await self.live_threads.run(self.paths.classify, item)), item)

    def apply(self, events: list[Event], batch: Batch | None = None) -> Changes:
        """Hand events to the sink (with the tasks a batch of paths touched)."""
        return self.sink.apply(events, self.paths.tasks_of(batch) if batch is not None else ())

    def changed(self, changes: Changes) -> None:
        """Follow the runs that may still change."""
        if self._sink is not None:
            self.following.follow_live_runs(self._sink.index, changes)

    # --- whole reads -------------------------------------------------------------------------

    async def rescan(self, reads: list[Callable[[], Scanned]] | None = None) -> None:
        """Read the whole tree and start the index over. `reads` may read it in parts instead:
        each is applied as soon as it is read, the changes announced once all are in."""
        watched = set(self.watcher.watched("deep"))  # before the scan: it reads them all after
        if reads is None:
            reads = [partial(disk.scan, self.roots, self.limits, self.scope)]
        await self.sink.start_over(self._parts(reads))
        self.following.read_since_watched = watched
        self.following.check_caught_up()
        # The scan leaves data updates unread: re-read those someone is looking at.
        for key in list(self.shown):
            await self.load_update(key)

    async def _parts(self, reads: list[Callable[[], Scanned]]) -> AsyncIterator[list[Event]]:
        for done in asyncio.as_completed([asyncio.to_thread(read) for read in reads]):
            events, problems = await done
            for problem in problems:
                self.paths.report(problem)
            yield events

    async def read_missed_runs(self) -> None:
        """The first scan began before the watch was open: read the runs that appeared meanwhile
        (and start over if one vanished). Runs it saw that may still change are read again
        anyway, once their deep watch opens."""
        listed = await asyncio.to_thread(disk.run_keys, self.roots, self.scope)
        known = self.sink.index.run_keys()
        if known - listed:
            await self.rescan()
        elif listed - known:
            await self.catch_up(tuple(f for key in listed - known for f in run_folders(self.roots, key)))

    async def catch_up(self, folders: tuple[Path, ...]) -> None:
        """Read what was written in newly watched folders before their watch existed."""
        scopes = {self.paths.scope_of(folder) for folder in folders}
        events: list[Event] = []
        for scope in scopes:
            if scope is None:
                continue
            found, problems = await asyncio.to_thread(disk.scan, self.roots, self.limits, scope)
            events.extend(found)
            for problem in problems:
                self.paths.report(problem)
        shown = self.shown_data_times()
        self.apply(events)
        # The scan leaves data updates unread: re-read those someone is looking at, if newer.
        index = self.sink.index
        for key, seen in shown.items():
            card = index.card(key)
            if card is not None and card.data_mtime != seen:
                await self.load_update(key, force=True)

    def shown_data_times(self) -> dict[CardKey, float | None]:
        """The cards someone looks at, with the data update time last seen."""
        index = self.sink.index
        return {key: card.data_mtime if (card := index.card(key)) is not None else None for key in self.shown}

    # --- the polling fallback ----------------------------------------------------------------

    def check_live_poll(self) -> None:
        if self.watcher.force_polling and self._live_poll is None:
            self._live_poll = asyncio.create_task(self._poll_live(), name="cardserver-live-poll")

    async def _poll_live(self) -> None:
        """Only while polling: watchfiles' poller compares mtimes in whole seconds, so two
        same-size updates within a second look like one. Re-check live cards' own files."""
        delay = self.config.timing.poll_delay_ms / 1000
        while True:
            await asyncio.sleep(delay)
            # Index reads and file reads stay on the loop, like `classify`; only stats go out.
            known = self.live_card_files()
            changed = await self.live_threads.run(changed_files, known)
            self.apply(self.paths.settle(await self.live_threads.run(self.paths.read_files, changed)))

    def live_card_files(self) -> list[tuple[Path, CardFileKind, object]]:
        """Each file of a running or pending task's cards, with the signature last seen."""
        known: list[tuple[Path, CardFileKind, object]] = []
        for card in self.sink.index.live_cards():
            for kind, seen in ((CardFileKind.HTML, card.version), (CardFileKind.DATA, card.data_mtime)):
                known.append((self.roots.cards / card_path(card.key, kind, card.legacy), kind, seen))
        return known

    # --- reads on demand -----------------------------------------------------------------------

    def show(self, key: Viewed, shown: bool) -> None:
        if not isinstance(key, CardKey):
            return  # the disk's watches follow runs by their status, not by who looks
        if not shown:
            self.shown.discard(key)
            return
        self.shown.add(key)
        if self._sink is not None:
            task = asyncio.create_task(self.load_update(key))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    def visible(self, key: CardKey, visible: bool) -> None:
        """Nothing to do: a file event costs the same whether its card is on screen or kept."""

    async def load_update(self, key: CardKey, force: bool = False) -> None:
        """Read a card's data update the first time someone wants it (the scan skips them),
        or again (`force`) when a scan saw a newer one. One read at a time per card, and a file
        that could not be read is not read again until it changes."""
        card = self.sink.index.card(key)
        if card is None or card.data_mtime is None or (card.update is not None and not force):
            return
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load_update(key))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(loading)

    async def _load_update(self, key: CardKey) -> None:
        card = self.sink.index.card(key)
        if card is None or card.data_mtime is None:
            return
        path = self.roots.cards / card_path(key, CardFileKind.DATA, card.legacy)
        version = await self.live_threads.run(disk.stat_version, path)
        seen = disk.file_version(version) if version is not None else None
        if seen is not None and self._unreadable.get(key) == seen:
            return
        read_at = time.monotonic()
        update = await self.live_threads.run(disk.read_data_update, path, self.limits, self.roots.cards)
        if isinstance(update, Problem):
            if seen is not None:
                self._unreadable[key] = seen
            self.paths.report(update)
            return
        self._unreadable.pop(key, None)
        self.apply([DataWritten(key, card.legacy, card.data_mtime, update, read_at)])

    async def read_card(self, card: Card) -> bytes:
        return await self.card_threads.run(self._read_card, card)

    def _read_card(self, card: Card) -> bytes:
        # A regular file inside the root, reached through no symlink, opened without blocking.
        html = disk.read_regular(self.roots.cards / card_path(card.key, CardFileKind.HTML, card.legacy),
                                 self.limits.max_card_bytes + 1, self.roots.cards)
        if isinstance(html, Problem):
            raise Unavailable(404, "card not found") from None
        if len(html) > self.limits.max_card_bytes:
            cap = self.limits.max_card_bytes
            size = f"{cap // (1024 * 1024)} MB" if cap >= 1024 * 1024 else f"{cap} bytes"
            raise Unavailable(413, f"card file too large to serve (over {size})")
        return html

    async def read_task(self, key: TaskKey) -> TaskFolder | None:
        cap = self.limits.max_meta_bytes
        return await self.task_threads.run(taskinfo.read_task, self.roots.datastore, key, cap)

    async def read_log(self, key: TaskKey, stream: str, attempt: int | None, lines: int,
                       before: int | None, since: int | None) -> tuple[int, Page] | None:
        return await self.task_threads.run(taskinfo.read_page, self.roots.datastore, key, stream, attempt,
                                           lines, before, since)


def changed_files(known: list[tuple[Path, CardFileKind, object]]) -> list[Path]:
    """The files whose signature (HTML: mtime_ns and size; data: mtime) is not the one known."""
    changed = []
    for path, kind, seen in known:
        stat = disk.stat_version(path)
        if stat is None:
            continue
        now = disk.version_of(stat) if kind is CardFileKind.HTML else stat.st_mtime
        if now != seen:
            changed.append(path)
    return changed
