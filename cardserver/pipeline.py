"""The one-way flow, wired: disk -> events -> index -> feed -> hub.

The watcher says which paths changed; `disk` turns each into a domain event (reading the file
where needed); the index applies them and says what changed; the feed publishes that to the
hub. Everything that reaches the index goes through `ingest`, including the lazy read of a
card's data update when someone first asks for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import suppress
from pathlib import Path, PurePosixPath

from . import disk
from .config import CARDS_DIR, Config
from .disk import Problem, Scope
from .events import CardRemoved, DataWritten, Event, Reset
from .feed import Feed, parse_topic
from .hub import Hub
from .index import Changes, Index
from .layout import CardFileKind, CardKey, card_path, parse_card_path
from .status import Status
from .watcher import Batch, Change, Rescan, Watcher

log = logging.getLogger("cardserver")

NEW_FOLDER_FILES = 10_000  # a new folder's files are read directly: inotify may miss them


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.roots = config.roots
        self.limits = config.limits
        self.scope = Scope(config.flow, config.run_id)
        self.index = Index()
        self.hub = Hub()
        self.feed = Feed(self.index, self.hub)
        self.watcher = Watcher(config.roots, config.timing, config.force_polling)
        self.ready = asyncio.Event()
        self._reported: set[tuple[Path, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._live_poll: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cardserver-watch")

    async def stop(self) -> None:
        self.watcher.stop()
        for task in (self._task, self._live_poll):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        batches = self.watcher.batches()
        first = asyncio.ensure_future(anext(batches, None))  # OS watches exist before the scan
        await asyncio.sleep(0)
        await self.rescan()
        self.check_live_poll()
        self.ready.set()
        item = await first
        while item is not None:
            try:
                await self.handle(item)
            except Exception:  # a bug must not stop the watching: log it, read everything again
                log.exception("failed to apply a change; reading the datastore again")
                await self.rescan()
            self.check_live_poll()
            item = await anext(batches, None)

    async def handle(self, item: Batch | Rescan) -> None:
        if isinstance(item, Rescan):
            log.info("reading the datastore again: %s", item.reason)
            await self.rescan()
        else:
            self.ingest(self.classify(item))

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
            changed = await asyncio.to_thread(changed_files, known)
            self.ingest([e for path in changed for e in self.read_file(path)])

    def live_card_files(self) -> list[tuple[Path, CardFileKind, object]]:
        """Each file of a running or pending task's cards, with the signature last seen."""
        known: list[tuple[Path, CardFileKind, object]] = []
        for flow in self.index.flows.values():
            for run in flow.runs.values():
                for task in run.tasks.values():
                    if task.status not in (Status.RUNNING, Status.PENDING):
                        continue
                    for card in task.cards.values():
                        for kind, seen in ((CardFileKind.HTML, card.version),
                                           (CardFileKind.DATA, card.data_mtime)):
                            path = self.roots.cards / card_path(card.key, kind, card.legacy)
                            known.append((path, kind, seen))
        return known

    async def rescan(self) -> None:
        events, problems = await asyncio.to_thread(disk.scan, self.roots, self.limits, self.scope)
        for problem in problems:
            self.report(problem)
        self.ingest([Reset(tuple(events))])
        # The scan leaves data updates unread: re-read those someone is looking at.
        for name in self.hub.topics:
            topic = parse_topic(name)
            if topic is not None and topic.card is not None:
                await self.load_update(topic.card)

    # --- the flow --------------------------------------------------------------------------

    def ingest(self, events: list[Event]) -> Changes:
        changes = self.index.apply(events)
        if changes:
            self.feed.publish(changes)
        return changes

    def classify(self, batch: Batch) -> list[Event]:
        events: list[Event] = []
        for change, path in batch:
            if not self.relevant(path):
                continue
            if change is Change.DELETED:
                removed = self.removed_card(path)
                if removed is not None:
                    events.append(removed)
                continue
            if change is Change.ADDED and path.is_dir():
                events.extend(self.read_new_folder(path))
                continue
            events.extend(self.read_file(path))
        return events

    def relevant(self, path: Path) -> bool:
        """Cheap, string-only test that skips the artifact store and anything outside."""
        if path.is_relative_to(self.roots.cards):
            return True
        try:
            parts = path.relative_to(self.roots.datastore).parts
        except ValueError:
            return False
        return not (len(parts) >= 2 and parts[1] == "data") and parts[:1] != (CARDS_DIR,)

    def read_file(self, path: Path) -> list[Event]:
        found = disk.card_event(self.roots, path, self.limits, self.scope)
        if found is None:
            found = disk.datastore_event(self.roots, path, self.limits, self.scope)
        if isinstance(found, Problem):
            self.report(found)
            return []
        if found is not None:
            self._reported = {r for r in self._reported if r[0] != path}
            return [found]
        return []

    def read_new_folder(self, folder: Path) -> list[Event]:
        events: list[Event] = []
        seen = 0
        for dirpath, dirnames, filenames in os.walk(folder):
            if Path(dirpath).parent == self.roots.datastore:  # a flow folder: skip its artifacts
                dirnames[:] = [d for d in dirnames if d != "data"]
            for name in filenames:
                seen += 1
                if seen > NEW_FOLDER_FILES:
                    return events
                events.extend(self.read_file(Path(dirpath) / name))
        return events

    def removed_card(self, path: Path) -> CardRemoved | None:
        try:
            rel = PurePosixPath(path.relative_to(self.roots.cards).as_posix())
        except ValueError:
            return None
        found = parse_card_path(rel)
        if found is None or found.kind is not CardFileKind.HTML:
            return None
        return CardRemoved(found.key)

    def report(self, problem: Problem) -> None:
        """Log a bad file once, not once per event; the last good state stays served."""
        key = (problem.path, problem.reason)
        if key not in self._reported:
            self._reported.add(key)
            log.warning("skipping %s: %s", problem.path, problem.reason)

    # --- lazy reads ------------------------------------------------------------------------

    async def load_update(self, key: CardKey) -> None:
        """Read a card's data update the first time someone wants it (the scan skips them)."""
        card = self.index.card(key)
        if card is None or card.data_mtime is None or card.update is not None:
            return
        path = self.roots.cards / card_path(key, CardFileKind.DATA, card.legacy)
        update = await asyncio.to_thread(disk.read_data_update, path, self.limits)
        if isinstance(update, Problem):
            self.report(update)
            return
        self.ingest([DataWritten(key, card.legacy, card.data_mtime, update)])


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
