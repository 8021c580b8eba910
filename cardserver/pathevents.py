"""What a batch of changed paths means: the local source's events, read from the files where
needed (in a thread: `classify` never runs on the loop, `settle` does). Also which part of the
tree a folder holds, and logging each bad file once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from stat import S_ISDIR

from . import disk
from .config import CARDS_DIR, Limits, Roots
from .disk import Problem, Scope
from .events import CardRemoved, Event
from .index import Index
from .layout import (
    ARTIFACTS_DIR,
    CardFileKind,
    RunKey,
    TaskKey,
    folder_names,
    is_artifact_path,
    parse_card_path,
    task_of_path,
)
from .watcher import Batch, Change

log = logging.getLogger("cardserver")

NEW_FOLDER_FILES = 10_000  # a new folder's files are read directly: inotify may miss them

Read = tuple[Path, Event | Problem]  # what one changed path said, read off the loop


class PathEvents:
    def __init__(self, roots: Roots, limits: Limits, scope: Scope) -> None:
        self.roots = roots
        self.limits = limits
        self.scope = scope
        self._reported: set[tuple[Path, str]] = set()

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
        return not is_artifact_path(parts) and parts[:1] != (CARDS_DIR,)

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
                dirnames[:] = [d for d in dirnames if d != ARTIFACTS_DIR]
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

    # --- which part of the tree a path is -----------------------------------------------------

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
        """(flow, run) of a root, flow or run folder in either tree; None for any other path."""
        if path.is_relative_to(self.roots.cards):
            return folder_names(path.relative_to(self.roots.cards).parts, cards=True)
        if path.is_relative_to(self.roots.datastore):
            return folder_names(path.relative_to(self.roots.datastore).parts, cards=False)
        return None

    def lost_a_run(self, batch: Batch, index: Index) -> bool:
        """A known flow or run folder was deleted: drop what it held by reading all again."""
        return any(change is Change.DELETED and self.is_known_folder(path, index) for change, path in batch)

    def is_known_folder(self, path: Path, index: Index) -> bool:
        """`path` is the folder of a flow or run in the index, in either tree."""
        names = self.folder_names(path)
        if names is None or names[0] is None or not index.has_flow(names[0]):
            return False
        return names[1] is None or index.run(RunKey(names[0], names[1])) is not None

    def tasks_of(self, batch: Batch) -> Iterator[TaskKey]:
        """The tasks whose folders hold the changed paths (computed only if asked for)."""
        for _, path in batch:
            key = self.task_of(path)
            if key is not None:
                yield key

    def task_of(self, path: Path) -> TaskKey | None:
        for root, cards in ((self.roots.cards, True), (self.roots.datastore, False)):
            if path.is_relative_to(root):
                return task_of_path(PurePosixPath(path.relative_to(root).as_posix()), cards)
        return None


def is_real_folder(path: Path) -> bool:
    """A folder, not a symlink to one: a symlinked tree is not walked (it may be anything)."""
    try:
        return S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
