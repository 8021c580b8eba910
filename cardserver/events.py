"""Domain events: what changed in a datastore, in the user's words. Produced by a source,
applied by the index. Plain frozen values, so they can be scripted in tests. A scan reports a task
folder in one event (TaskMetaRead, TaskCardsRead) where the watcher reports one file."""

from __future__ import annotations

from collections.abc import Mapping
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
    """A card's data update was written. `update` is None when it is known but not yet read;
    `read_at` is when its read began (`time.monotonic()`): updates are ordered by it."""

    key: CardKey
    legacy: bool
    mtime: float
    update: DataUpdate | None
    read_at: float = 0.0


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
