"""The one-way flow, wired: disk -> events -> index -> feed -> hub.

The watcher says which paths changed; `disk` turns each into a domain event (reading the file
where needed); the index applies them and says what changed; the feed publishes that to the
hub. Everything that reaches the index goes through `ingest`, including the lazy read of a
card's data update when someone first asks for it.

One control signal runs the other way: after each change the pipeline tells the watcher which
runs may still change (`live.LiveRuns`), and reads again whatever the watcher newly opened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from stat import S_ISDIR
from typing import Any

from . import disk, helper
from .config import CARDS_DIR, Config, Roots
from .disk import Problem, Scanned, Scope
from .events import CardRemoved, DataWritten, Event, Reset, collector_paused
from .feed import Feed, parse_topic
from .hub import Hub
from .index import Changes, Index
from .layout import CardFileKind, CardKey, RunKey, card_path, parse_card_path
from .live import LiveRuns
from .prescan import Prescan
from .status import Status
from .taskfeed import TaskFeed
from .watcher import Batch, Change, Item, Opened, Rescan, Watcher

log = logging.getLogger("cardserver")

NEW_FOLDER_FILES = 10_000  # a new folder's files are read directly: inotify may miss them
OWN_WATCH_TASKS = 500  # a followed run this big gets an OS watch of its own (see `watch_groups`)

Read = tuple[Path, Event | Problem]  # what one changed path said, read off the loop


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the file watch runs: what /api/status and the viewer show."""

    ok: bool = True
    restarts: int = 0
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "restarts": self.restarts, "problem": self.problem}


class Pipeline:
    def __init__(self, config: Config, first_scan: Prescan | None = None) -> None:
        self.config = config
        self.first_scan = first_scan  # read before this pipeline started: see `prescan`
        self.roots = config.roots
        self.limits = config.limits
        self.scope = Scope(config.flow, config.run_id)
        self.index = Index(grace=config.timing.status_grace_seconds)
        self.hub = Hub()
        self.feed = Feed(self.index, self.hub)
        self.tasks = TaskFeed(config.roots, config.limits, self.index, self.hub)
        self.watcher = Watcher(config.roots, config.timing, config.force_polling)
        self.live = LiveRuns(config.timing.settle_seconds)
        self.followed: set[RunKey] = set()  # the runs watched deeply: they may still change
        self._groups: list[tuple[Path, ...]] = []  # how they are watched: see `watch_groups`
        self._read_since_watched: set[Path] = set()  # deep-watched folders read after their watch
        self.caught_up = asyncio.Event()  # every followed run is watched and was read since
        self._settle_timer: asyncio.TimerHandle | None = None
        self._status_timer: asyncio.TimerHandle | None = None  # see `recheck_status_later`
        self._status_at: float | None = None  # when it fires
        self.ready = asyncio.Event()
        self._reported: set[tuple[Path, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._live_poll: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.health = Health()
        self._busy_since: float | None = None  # when the item being handled began (monotonic)
        self._unreadable: dict[CardKey, tuple[int, int, int]] = {}  # data file versions that failed
        self._loading: dict[CardKey, asyncio.Future[None]] = {}  # data updates being read

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cardserver-watch")
        self._supervisor = asyncio.create_task(self._supervise(), name="cardserver-supervisor")

    async def stop(self) -> None:
        if self.first_scan is not None:
            self.first_scan.close()  # a reader still busy would hold up the shutdown
        for timer in (self._settle_timer, self._status_timer):
            if timer is not None:
                timer.cancel()
        self.watcher.stop()
        await self.tasks.close()
        for task in (self._supervisor, self._task, self._live_poll):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        helper.stop()

    async def _run(self, first_read: bool = True) -> None:
        batches = self.watcher.batches()
        first = asyncio.ensure_future(anext(batches, None))  # OS watches exist before the scan
        try:
            await asyncio.sleep(0)
            try:
                if not first_read:
                    await self.rescan()  # a restarted watch: what changed meanwhile was missed
                elif self.first_scan is not None:
                    await self.rescan([part.result for part in self.first_scan.parts])
                    await self.read_missed_runs()
                else:
                    await self.rescan()
            except Exception:  # requests wait for `ready`: a bug here must not hang them all
                log.exception("failed to read the datastore; serving what is known")
            self.check_live_poll()
            self.ready.set()
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
            task = self._task
            if task is None:
                continue
            busy = self._busy_since
            if task.done():
                failure = "ended" if task.cancelled() or task.exception() is None else (
                    f"failed: {task.exception()!r}")
            elif busy is not None and time.monotonic() - busy > timing.stuck_seconds:
                failure = f"stuck on one change for over {timing.stuck_seconds:.0f} s"
            else:
                if not self.health.ok and self.ready.is_set():
                    self.set_health(Health(True, self.health.restarts, None))
                continue
            await self.restart_watch(failure)

    async def restart_watch(self, failure: str) -> None:
        log.error("the file watch %s; starting it again", failure)
        self.set_health(Health(False, self.health.restarts + 1, f"the file watch {failure}; restarting"))
        old = self._task
        if old is not None and not old.done():
            old.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await old
        self._task = asyncio.create_task(self._run(first_read=False), name="cardserver-watch")

    def set_health(self, health: Health) -> None:
        self.health = health
        self.feed.publish_health(health.as_dict())

    async def handle(self, item: Item) -> None:
        if isinstance(item, Rescan):
            log.info("reading the datastore again: %s", item.reason)
            await self.rescan()
        elif isinstance(item, Opened):
            await self.catch_up(item.folders)
            self._read_since_watched.update(item.folders)
            self.check_caught_up()
        elif self.lost_a_run(item):
            log.info("a flow or run folder was deleted; reading the datastore again")
            await self.rescan()
        else:
            self.ingest(self.settle(await asyncio.to_thread(self.classify, item)))
            self.tasks.paths_changed(path for _, path in item)

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
            self.ingest(self.settle(await asyncio.to_thread(self.read_files, changed)))

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

    async def rescan(self, reads: list[Callable[[], Scanned]] | None = None) -> None:
        """Read the whole tree and start the index over. `reads` may read it in parts instead:
        each is applied as soon as it is read, the changes announced once all are in."""
        watched = set(self.watcher.watched("deep"))  # before the scan: it reads them all after
        if reads is None:
            reads = [partial(disk.scan, self.roots, self.limits, self.scope)]
        changes: Changes | None = None
        with collector_paused(keep=True):
            for done in asyncio.as_completed([asyncio.to_thread(read) for read in reads]):
                events, problems = await done
                for problem in problems:
                    self.report(problem)
                if changes is None:  # its Reset says "everything changed", which covers the rest
                    changes = self.index.apply([Reset(tuple(events))])
                else:
                    self.index.apply(events)
        self._read_since_watched = watched
        if changes is not None:
            self.announce(changes)
        # The scan leaves data updates unread: re-read those someone is looking at.
        for name in self.hub.topics:
            topic = parse_topic(name)
            if topic is not None and topic.card is not None:
                await self.load_update(topic.card)

    async def read_missed_runs(self) -> None:
        """The first scan began before the watch was open: read the runs that appeared meanwhile
        (and start over if one vanished). Runs it saw that may still change are read again
        anyway, once their deep watch opens."""
        listed = await asyncio.to_thread(disk.run_keys, self.roots, self.scope)
        known = {run.key for flow in self.index.flows.values() for run in flow.runs.values()}
        if known - listed:
            await self.rescan()
        elif listed - known:
            await self.catch_up(tuple(f for key in listed - known for f in run_folders(self.roots, key)))

    # --- the flow --------------------------------------------------------------------------

    def ingest(self, events: list[Event]) -> Changes:
        changes = self.index.apply(events)
        self.announce(changes)
        return changes

    def announce(self, changes: Changes) -> None:
        """Tell subscribers, and the watcher which runs to follow."""
        if changes:
            self.feed.publish(changes)
            self.follow_live_runs(changes)
            if changes.reset:
                self.tasks.refresh_all()
            else:
                self.tasks.changed(changes.tasks)
        self.recheck_status_later()

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
        self.ingest([])

    # --- what the watcher follows -------------------------------------------------------------

    def follow_live_runs(self, changes: Changes | None = None) -> None:
        reset = changes is not None and changes.reset
        changed: set[RunKey] = set()
        if changes is not None and not reset:  # after a reset every run counts as changed
            changed = changes.runs | {t.run_key for t in changes.tasks}
            changed |= {c.run_key for c in changes.renders | changes.updates}
        live, next_check = self.live.update(self.index, changed, time.time(), reset=reset)
        groups = self.watch_groups(live)
        if groups != self._groups or not self.caught_up.is_set():  # not on every update
            self.followed, self._groups = live, groups
            self.watcher.follow(groups)
            self.check_caught_up()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if next_check is not None:
            delay = max(0.0, next_check - time.time()) + 1.0
            self._settle_timer = asyncio.get_running_loop().call_later(delay, self.follow_live_runs)

    def watch_groups(self, live: set[RunKey]) -> list[tuple[Path, ...]]:
        """The OS watches for these runs: each big one alone, biggest first, so no other run
        starting or settling re-opens its watch (seconds for 10,000 tasks); the rest share one."""
        sizes = {key: len(run.tasks) if (run := self.index.run(key)) else 0 for key in live}
        big = sorted((key for key in live if sizes[key] >= OWN_WATCH_TASKS), key=lambda k: (-sizes[k], k))
        groups: list[tuple[Path, ...]] = [run_folders(self.roots, key) for key in big]
        small = [folder for key in live - set(big) for folder in run_folders(self.roots, key)]
        return [*groups, tuple(sorted(small))] if small else groups

    def check_caught_up(self) -> None:
        """`caught_up` says whether every followed run is watched and was read since."""
        watched = self.watcher.watched("deep")
        self._read_since_watched &= watched
        wanted = {f for key in self.followed for f in run_folders(self.roots, key) if f.is_dir()}
        if wanted <= self._read_since_watched:
            self.caught_up.set()
        else:
            self.caught_up.clear()

    async def catch_up(self, folders: tuple[Path, ...]) -> None:
        """Read what was written in newly watched folders before their watch existed."""
        scopes = {self.scope_of(folder) for folder in folders}
        events: list[Event] = []
        for scope in scopes:
            if scope is None:
                continue
            found, problems = await asyncio.to_thread(disk.scan, self.roots, self.limits, scope)
            events.extend(found)
            for problem in problems:
                self.report(problem)
        shown = self.shown_data_times()
        self.ingest(events)
        # The scan leaves data updates unread: re-read those someone is looking at, if newer.
        for key, seen in shown.items():
            card = self.index.card(key)
            if card is not None and card.data_mtime != seen:
                await self.load_update(key, force=True)

    def scope_of(self, folder: Path) -> Scope | None:
        """The part of the tree a watched folder holds, within `--flow`/`--run-id`."""
        names = self.folder_names(folder)
        if names is None:
            return None
        flow, run = names
        if flow is None:
            return self.scope
        if not self.scope.wants(flow, run):
            return None
        return Scope(flow, run if run is not None else self.scope.run)

    def folder_names(self, path: Path) -> tuple[str | None, str | None] | None:
        """(flow, run) of a root, flow or run folder in either tree (a cards flow's `runs`
        folder counts as the flow); None for any other path."""
        if path.is_relative_to(self.roots.cards):
            parts = path.relative_to(self.roots.cards).parts
            if len(parts) >= 2 and parts[1] != "runs":
                return None
            parts = parts[:1] + parts[2:]
        elif path.is_relative_to(self.roots.datastore):
            parts = path.relative_to(self.roots.datastore).parts
        else:
            return None
        if len(parts) > 2:
            return None
        return (parts[0] if parts else None), (parts[1] if len(parts) == 2 else None)

    def lost_a_run(self, batch: Batch) -> bool:
        """A known flow or run folder was deleted: drop what it held by reading all again."""
        return any(change is Change.DELETED and self.is_known_folder(path) for change, path in batch)

    def is_known_folder(self, path: Path) -> bool:
        """`path` is the folder of a flow or run in the index, in either tree."""
        names = self.folder_names(path)
        if names is None or names[0] is None or names[0] not in self.index.flows:
            return False
        return names[1] is None or names[1] in self.index.flows[names[0]].runs

    def shown_data_times(self) -> dict[CardKey, float | None]:
        """The cards someone is subscribed to, with the data update time last seen."""
        shown: dict[CardKey, float | None] = {}
        for name in self.hub.topics:
            topic = parse_topic(name)
            if topic is not None and topic.card is not None:
                card = self.index.card(topic.card)
                shown[topic.card] = card.data_mtime if card is not None else None
        return shown

    def classify(self, batch: Batch) -> list[Read]:
        """What a batch of changed paths says. Reads files: runs in a thread, never on the loop."""
        events: list[Read] = []
        for change, path in batch:
            if not self.relevant(path):
                continue
            if change is Change.DELETED:
                removed = self.removed_card(path)
                if removed is not None:
                    events.append((path, removed))
                continue
            if change is Change.ADDED and is_real_folder(path):
                events.extend(self.read_new_folder(path))
                continue
            events.extend(self.read_file(path))
        return events

    def settle(self, reads: list[Read]) -> list[Event]:
        """On the loop: log the problems of what `classify` read, keep the events."""
        events: list[Event] = []
        for path, found in reads:
            if isinstance(found, Problem):
                self.report(found)
            else:
                if self._reported:  # it reads well now: say so again if it breaks again
                    self._reported = {r for r in self._reported if r[0] != path}
                events.append(found)
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

    def read_files(self, paths: list[Path]) -> list[Read]:
        return [read for path in paths for read in self.read_file(path)]

    def read_file(self, path: Path) -> list[Read]:
        found = disk.card_event(self.roots, path, self.limits, self.scope)
        if found is None:
            found = disk.datastore_event(self.roots, path, self.limits, self.scope)
        return [] if found is None else [(path, found)]

    def read_new_folder(self, folder: Path) -> list[Read]:
        events: list[Read] = []
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

    async def load_update(self, key: CardKey, force: bool = False) -> None:
        """Read a card's data update the first time someone wants it (the scan skips them),
        or again (`force`) when a scan saw a newer one. One read at a time per card, and a file
        that could not be read is not read again until it changes."""
        card = self.index.card(key)
        if card is None or card.data_mtime is None or (card.update is not None and not force):
            return
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load_update(key))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(loading)

    async def _load_update(self, key: CardKey) -> None:
        card = self.index.card(key)
        if card is None or card.data_mtime is None:
            return
        path = self.roots.cards / card_path(key, CardFileKind.DATA, card.legacy)
        version = await asyncio.to_thread(disk.stat_version, path)
        seen = disk.file_version(version) if version is not None else None
        if seen is not None and self._unreadable.get(key) == seen:
            return
        update = await asyncio.to_thread(disk.read_data_update, path, self.limits, self.roots.cards)
        if isinstance(update, Problem):
            if seen is not None:
                self._unreadable[key] = seen
            self.report(update)
            return
        self._unreadable.pop(key, None)
        self.ingest([DataWritten(key, card.legacy, card.data_mtime, update)])


def is_real_folder(path: Path) -> bool:
    """A folder, not a symlink to one: a symlinked tree is not walked (it may be anything)."""
    try:
        return S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def run_folders(roots: Roots, key: RunKey) -> tuple[Path, Path]:
    """A run's folder in the datastore (status) and in the cards root (cards)."""
    return roots.datastore / key.flow / key.run, roots.cards / key.flow / "runs" / key.run


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
