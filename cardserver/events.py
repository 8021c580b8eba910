"""Domain events: what changed on disk, in the user's words. Produced by disk/watcher, applied
by the index. Plain frozen values, so they can be scripted in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layout import CardKey, MetaKind, RunKey, TaskKey


@dataclass(frozen=True, slots=True)
class DataUpdate:
    """One `runtime/*.data.json`: the newest state of the card's live components."""

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


@dataclass(frozen=True, slots=True)
class TaskRemoved:
    key: TaskKey


@dataclass(frozen=True, slots=True)
class Reset:
    """The whole tree was read again (datastore recreated, watcher overflow): start over."""

    events: tuple[Event, ...]


Event = CardWritten | CardRemoved | DataWritten | RunWritten | TaskMetaWritten | TaskRemoved | Reset
