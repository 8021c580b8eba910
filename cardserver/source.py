"""What a datastore offers the server: a source. The one boundary between where cards live
(the local disk today, S3 next) and everything else.

A source reads, in the user's words (events), never in its own (paths, listings, polls):
- `first_read`: the whole datastore once, handed to the sink as a fresh start (in parts, each
  applied as soon as it is read);
- `follow`: then each change as a batch of events, until cancelled; how it learns of changes
  (OS watches, polling, listing a bucket) is its own business;
- reads on demand: a card's bytes, a card's data update, a task's folder, a page of a log.
The sink (the pipeline) applies what it is handed to the index and tells the source what
changed, which says what may still change. The layer that knows who is looking (the hub)
tells the source which cards, tasks and runs are shown: it keeps a shown card's data update
read and fresh, and a source that polls may poll what is shown faster. Of the shown cards, the
hub also says which are visible (on someone's screen) and which are only kept (loaded, hidden,
behind the one a viewer shows): a source that polls may poll a kept card slowly, as long as it
reads it at once when it becomes visible again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .events import Event
from .feed import Viewed
from .index import Card, Changes, Index
from .layout import CardKey, TaskKey
from .logs import Page
from .taskinfo import TaskFolder


class Unavailable(Exception):
    """Why a card cannot be served; the message is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Health:
    """Whether a source's changes flow (its watch or poll runs): what /api/status and the
    viewer show."""

    ok: bool = True
    restarts: int = 0
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "restarts": self.restarts, "problem": self.problem}


class Sink(Protocol):
    """Where a source's events go: the pipeline."""

    @property
    def index(self) -> Index:
        """What is known so far, to be asked (never changed) by the source."""
        ...

    async def start_over(self, parts: AsyncIterator[list[Event]]) -> Changes:
        """The whole datastore again, in parts: the first replaces the index, the rest add to it;
        what changed is announced once all are in."""
        ...

    def apply(self, events: list[Event], tasks: Iterable[TaskKey] = ()) -> Changes:
        """A batch of changes; `tasks` are tasks whose folder changed beyond what the events say
        (their logs, their attempts), looked at only if someone watches one."""
        ...

    def health(self, health: Health) -> None:
        """Whether changes flow now: every viewer is told."""
        ...


class SinkHolder:
    """A source's hold on its sink, which `first_read` (or `follow`) hands it."""

    _sink: Sink | None = None

    @property
    def sink(self) -> Sink:
        assert self._sink is not None, "the source has not been started"
        return self._sink

    @property
    def started(self) -> bool:
        return self._sink is not None


class Source(Protocol):
    caught_up: asyncio.Event  # everything that may still change is followed, and was read since

    async def first_read(self, sink: Sink) -> None:
        """Read the whole datastore into the sink; changes made meanwhile are not lost."""
        ...

    async def follow(self, sink: Sink) -> None:
        """Hand the sink each change, batch by batch, until cancelled; a way of following that
        ends or sticks is started again (the sink is told of its `health`)."""
        ...

    async def close(self) -> None: ...

    def changed(self, changes: Changes) -> None:
        """The index changed (by this source's events, or by time): what may still change, and
        so what to follow, may differ now."""
        ...

    def show(self, key: Viewed, shown: bool) -> None:
        """A card, task or run gained its first viewer (or lost its last). A card's data update
        is kept read while it is shown; a source that polls may poll what is shown faster."""
        ...

    def visible(self, key: CardKey, visible: bool) -> None:
        """A shown card became visible to a viewer (after `show`), or to none any more (kept
        hidden, or before `show` says it lost its last viewer). Visible again, its data update
        must be read fresh at once."""
        ...

    async def load_update(self, key: CardKey) -> None:
        """Make sure the sink holds the card's data update, if it has one."""
        ...

    async def read_card(self, card: Card) -> bytes:
        """The card's HTML; raises `Unavailable`."""
        ...

    async def read_task(self, key: TaskKey) -> TaskFolder | None:
        """The task's own files (attempts, verdicts, logs' sizes, metadata); None if it has none."""
        ...

    async def read_log(self, key: TaskKey, stream: str, attempt: int | None, lines: int,
                       before: int | None, since: int | None) -> tuple[int, Page] | None:
        """A page of one attempt's log (the latest attempt that has one, by default)."""
        ...

    def status(self) -> dict[str, Any]:
        """What `/api/status` says about the source: where it reads and how it follows."""
        ...
