"""Which folders the local source watches deeply: the runs that may still change (`live`),
grouped into OS watches, and whether each was read since its watch opened (`caught_up`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .config import Roots
from .index import Changes, Index
from .layout import RunKey, cards_run_dir, datastore_run_dir
from .live import LiveRuns
from .watcher import Watcher

OWN_WATCH_TASKS = 500  # a followed run this big gets an OS watch of its own (see `watch_groups`)


class Following:
    def __init__(self, roots: Roots, watcher: Watcher, settle_seconds: float) -> None:
        self.roots = roots
        self.watcher = watcher
        self.live = LiveRuns(settle_seconds)
        self.followed: set[RunKey] = set()  # the runs watched deeply: they may still change
        self._groups: list[tuple[Path, ...]] = []  # how they are watched: see `watch_groups`
        self.read_since_watched: set[Path] = set()  # deep-watched folders read after their watch
        self.caught_up = asyncio.Event()  # every followed run is watched and was read since
        self._settle_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.cancel()

    def follow_live_runs(self, index: Index, changes: Changes | None = None) -> None:
        reset = changes is not None and changes.reset
        changed: set[RunKey] = set()
        if changes is not None and not reset:  # after a reset every run counts as changed
            changed = changes.runs | {t.run_key for t in changes.tasks}
            changed |= {c.run_key for c in changes.renders | changes.updates}
        live, next_check = self.live.update(index, changed, time.time(), reset=reset)
        groups = self.watch_groups(index, live)
        if groups != self._groups or not self.caught_up.is_set():  # not on every update
            self.followed, self._groups = live, groups
            self.watcher.follow(groups)
            self.check_caught_up()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if next_check is not None:
            delay = max(0.0, next_check - time.time()) + 1.0
            self._settle_timer = asyncio.get_running_loop().call_later(delay, self.follow_live_runs, index)

    def watch_groups(self, index: Index, live: set[RunKey]) -> list[tuple[Path, ...]]:
        """The OS watches for these runs: each big one alone, biggest first, so no other run
        starting or settling re-opens its watch (seconds for 10,000 tasks); the rest share one."""
        sizes = {key: len(run.tasks) if (run := index.run(key)) else 0 for key in live}
        big = sorted((key for key in live if sizes[key] >= OWN_WATCH_TASKS), key=lambda k: (-sizes[k], k))
        groups: list[tuple[Path, ...]] = [run_folders(self.roots, key) for key in big]
        small = [folder for key in live - set(big) for folder in run_folders(self.roots, key)]
        return [*groups, tuple(sorted(small))] if small else groups

    def read(self, folders: set[Path] | tuple[Path, ...]) -> None:
        """These deep-watched folders were just read."""
        self.read_since_watched.update(folders)
        self.check_caught_up()

    def check_caught_up(self) -> None:
        """`caught_up` says whether every followed run is watched and was read since."""
        watched = self.watcher.watched("deep")
        self.read_since_watched &= watched
        wanted = {f for key in self.followed for f in run_folders(self.roots, key) if f.is_dir()}
        if wanted <= self.read_since_watched:
            self.caught_up.set()
        else:
            self.caught_up.clear()


def run_folders(roots: Roots, key: RunKey) -> tuple[Path, Path]:
    """A run's folder in the datastore (status) and in the cards root (cards)."""
    return roots.datastore / datastore_run_dir(key), roots.cards / cards_run_dir(key)
