"""S3 read once, following nothing: the check that the card root can be listed before the
server starts, and `card list`'s whole datastore read into an index.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from ..config import Config
from ..events import Event, Reset
from ..index import Changes, Index
from ..layout import TaskKey
from ..source import Health
from .client import S3Reader
from .settings import S3Settings
from .source import S3Source


async def check_reachable(settings: S3Settings) -> None:
    """One LIST of the card root: raises S3Error with the one line to print (no credentials,
    wrong endpoint, no bucket, access denied) before the server starts. One page, however many
    there are: reading them all is the first read's job, whose faults the server's health says."""
    assert settings.cards is not None
    async with S3Reader(settings.endpoint_url) as reader:
        await reader.can_list(settings.cards)


class IndexSink:
    """A sink that only fills an index: `card list` reads the datastore once, follows nothing."""

    def __init__(self, index: Index) -> None:
        self._index = index

    @property
    def index(self) -> Index:
        return self._index

    async def start_over(self, parts: AsyncIterator[list[Event]]) -> Changes:
        changes = Changes()
        first = True
        async for events in parts:
            changes = self._index.apply([Reset(tuple(events))] if first else events)
            first = False
        return changes

    def apply(self, events: list[Event], tasks: Iterable[TaskKey] = ()) -> Changes:
        return self._index.apply(events)

    def health(self, health: Health) -> None:
        """`read_index` raises the source's last error instead."""


async def read_index(config: Config, settings: S3Settings) -> Index:
    """The whole S3 datastore read once into an index (for `card list`); S3Error on a fault."""
    source = S3Source(config, settings)
    index = Index(grace=config.timing.status_grace_seconds)
    said = logging.getLogger("cardserver")
    level = said.level
    said.setLevel(logging.ERROR)  # a fault is the one line raised, not a warning that it is retried
    try:
        await source.first_read(IndexSink(index))
    finally:
        said.setLevel(level)
        await source.close()
    if source.last_error is not None:
        raise source.last_error
    return index
