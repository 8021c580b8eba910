"""Domain events: what changed on disk, in the user's words. Produced by disk/watcher, applied
by the index. Plain frozen values, so they can be scripted in tests. A scan reports a task
folder in one event (TaskMetaRead, TaskCardsRead) where the watcher reports one file."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .layout import CardKey, MetaKind, RunKey, TaskKey


class Encoded(str):
    """A value already written as JSON text: sent on as it is, never encoded again."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class DataUpdate:
    """One `runtime/*.data.json`: the newest state of the card's live components (as read
    from disk, each component is `Encoded`)."""

    token: str
    created_on: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CardWritten:
    """A card's HTML appeared or was re-rendered."""

    key: CardKey
    legacy: bool
    mtime: float
    size: int
    version: str  # changes with every render; also the HTTP ETag


@dataclass(frozen=True, slots=True)
class CardRemoved:
    key: CardKey


@dataclass(frozen=True, slots=True)
class DataWritten:
    """A card's data update was written. `update` is None when it is known but not yet read."""

    key: CardKey
    legacy: bool
    mtime: float
    update: DataUpdate | None


@dataclass(frozen=True, slots=True)
class RunWritten:
    key: RunKey
    created: float | None
    user: str | None


@dataclass(frozen=True, slots=True)
class TaskMetaWritten:
    """One `_meta` status file of a task; `doc` is its JSON (only the fields status needs)."""

    key: TaskKey
    kind: MetaKind
    ts: int
    doc: dict[str, Any] = field(default_factory=dict)


MetaFile = tuple[MetaKind, int, Mapping[str, Any]]  # a TaskMetaWritten without its task: kind, ts, doc


@dataclass(frozen=True, slots=True)
class TaskMetaRead:
    """All the `_meta` status files of one task, read by a scan: one event instead of one per file.

    Applying it is applying a TaskMetaWritten for each file, in order.
    """

    key: TaskKey
    files: tuple[MetaFile, ...]


CardPage = tuple[str, float, int, str]  # a CardWritten without its task: name, mtime, size, version
CardData = tuple[str, float]  # a DataWritten without its task and update: name, mtime


@dataclass(frozen=True, slots=True)
class TaskCardsRead:
    """The card files of one task folder, read by a scan: one event instead of one per file.

    Applying it is applying a CardWritten for each page, then a DataWritten (update not read)
    for each data file; `legacy` is the folder's layout, so it holds for every file.
    """

    task: TaskKey
    legacy: bool
    pages: tuple[CardPage, ...]
    data: tuple[CardData, ...]


@dataclass(frozen=True, slots=True)
class TaskRemoved:
    key: TaskKey


@dataclass(frozen=True, slots=True)
class Reset:
    """The whole tree was read again (datastore recreated, watcher overflow): start over."""

    events: tuple[Event, ...]


Event = (
    CardWritten
    | CardRemoved
    | DataWritten
    | RunWritten
    | TaskMetaWritten
    | TaskMetaRead
    | TaskCardsRead
    | TaskRemoved
    | Reset
)


@contextmanager
def collector_paused(keep: bool = False) -> Iterator[None]:
    """No cyclic garbage collection meanwhile, for reading a whole tree and applying its Reset:
    everything they make lives on, so the collector's passes find nothing (on 10,000 tasks they
    were a fifth of the work). What is made meanwhile is collected as usual afterwards, or with
    `keep` (a new index) never walked again: its first pass alone took 70 ms on 10,000 tasks."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep:
            gc.freeze()  # everything alive now skips later passes; freed objects still go
        if was_on:
            gc.enable()
