"""A Metaflow datastore on S3 as a source (see `source.py`): cards from the card root, status
from the task folders (or from the local `_meta` where a local runtime ran the run).

Change detection is polling, paced by `schedule.PollTiming`: the data update of each shown card
by conditional GET (`updates`; fast while visible, slowly while a viewer only keeps it hidden), a
live run's card tree and task folders by listing (faster while someone views it), new flows and
runs by delimiter listings (`runs`); a finished run is not polled again. A failing poll is said
once (`Health`) and tried again, backing off (`faults`); nothing is lost, as the next listing
compares ETags with the last one seen. Nothing is unpickled; every key is built from a validated
key (`layout`) below the configured roots. This module wires those parts together and serves the
reads on demand.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

from ..config import Config
from ..disk import Scope
from ..feed import Viewed
from ..index import Card, Changes
from ..layout import CardFileKind, CardKey, RunKey, TaskKey, card_path
from ..logs import Page
from ..source import Health, Sink, SinkHolder, Unavailable
from ..taskinfo import TaskFolder
from .client import Got, S3Error, S3Reader
from .faults import RUNS, Faults
from .runs import READS_AT_ONCE, Runs
from .schedule import PollTiming
from .settings import S3Root, S3Settings
from .taskreads import TaskDocs, TaskReads
from .updates import CardUpdates


class S3Source(SinkHolder):
    def __init__(self, config: Config, settings: S3Settings, timing: PollTiming | None = None,
                 reader: S3Reader | None = None) -> None:
        if settings.cards is None:
            raise S3Error("no S3 card root: set METAFLOW_DATASTORE_SYSROOT_S3 or METAFLOW_CARD_S3ROOT")
        self.settings = settings
        self.cards: S3Root = settings.cards
        self.sysroot: S3Root | None = settings.sysroot
        self.limits = config.limits
        self.timing = timing or PollTiming()
        self.reader = reader or S3Reader(settings.endpoint_url)
        self.caught_up = asyncio.Event()
        self.faults = Faults(self.timing, self._tell_health, self._wake_polls)
        self.reader.on_throttled = self.faults.throttled
        local = config.roots.datastore  # the working folder's .metaflow: a local runtime's _meta
        docs = TaskDocs(self.reader, self.sysroot, self.limits, READS_AT_ONCE) if self.sysroot else None
        self.tasks = TaskReads(docs, local, self.limits) if docs else None
        self.updates = CardUpdates(self, self.reader, self.cards, self.limits, self.timing, self.faults,
                                   run_done=lambda key: self.runs.done(key),
                                   rendered=lambda key: self.runs.poll_now(key))
        self.runs = Runs(self, self.reader, self.cards, docs, local, self.limits,
                         Scope(config.flow, config.run_id), self.timing, self.faults, self.updates)
        self._open = False
        self._polls: list[asyncio.Task[None]] = []

    @property
    def health(self) -> Health:
        return self.faults.health

    @property
    def last_error(self) -> S3Error | None:
        """The latest failure, until every poll works again."""
        return self.faults.last_error

    # --- the source's life -------------------------------------------------------------------

    async def first_read(self, sink: Sink) -> None:
        self._sink = sink
        try:
            await self._ensure_open()
            await self.runs.first_read()
        except S3Error as error:  # said in the health message; the polls try again
            self.faults.failed(RUNS, error)
        finally:
            self.caught_up.set()

    async def follow(self, sink: Sink) -> None:
        self._sink = sink
        await self._ensure_open()
        self._polls = [asyncio.create_task(self.runs.poll(), name="cardserver-s3-runs"),
                       asyncio.create_task(self.updates.poll(), name="cardserver-s3-cards")]
        await asyncio.gather(*self._polls)

    async def _ensure_open(self) -> None:
        if not self._open:
            await self.reader.__aenter__()
            self._open = True

    async def close(self) -> None:
        for poll in self._polls:  # before the reader closes under them
            poll.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await poll
        if self._open:
            self._open = False
            with suppress(Exception):
                await self.reader.__aexit__(None, None, None)

    def changed(self, changes: Changes) -> None:
        """Nothing to do: what to poll is decided after each poll, from the index."""

    def _tell_health(self, health: Health) -> None:
        if self._sink is not None:
            self._sink.health(health)

    def _wake_polls(self) -> None:
        self.updates.wake.set()
        self.runs.wake.set()

    def status(self) -> dict[str, Any]:
        counts = self.reader.counts
        minutes = counts.per_minute()
        hours = max(time.monotonic() - counts.started, 1e-9) / 3600
        return {
            "source": "s3",
            "datastore": self.sysroot.url if self.sysroot else None,
            "cards": self.cards.url,
            "watching": "polling S3",
            "followed_runs": self.runs.followed(),
            "watch": self.health.as_dict(),
            "s3": {
                "endpoint": self.settings.endpoint_url,
                "requests": {kind.value: count for kind, count in counts.sent.items()},  # since start
                "requests_per_minute": {kind: round(rate, 2) for kind, rate in minutes.items()},
                "not_modified": counts.not_modified,
                "retried": counts.retried,
                "usd_per_hour": round(counts.cost_usd() / hours, 6),
                "viewed_cards": len(self.updates.shown),  # visible or kept
                "visible_cards": len(self.updates.visible),
                "viewed_runs": sum(1 for count in self.runs.viewers.values() if count > 0),
            },
        }

    # --- what is looked at ---------------------------------------------------------------------------

    def show(self, key: Viewed, shown: bool) -> None:
        if isinstance(key, CardKey):
            self.updates.show(key, shown)  # its run counts as viewed only while it is visible
        else:
            self.runs.show(key if isinstance(key, RunKey) else key.run_key, shown)

    def visible(self, key: CardKey, visible: bool) -> None:
        """A kept card costs a GET every `kept_card_seconds`, and no faster listing of its run."""
        self.runs.show(key.run_key, visible)
        self.updates.see(key, visible)

    async def load_update(self, key: CardKey) -> None:
        await self.updates.load(key)

    # --- reads on demand ----------------------------------------------------------------------------

    async def read_card(self, card: Card) -> bytes:
        cap = self.limits.max_card_bytes
        if card.size > cap:
            raise Unavailable(413, f"card file too large to serve (over {cap // (1024 * 1024)} MB)")
        object_key = self.cards.key(*card_path(card.key, CardFileKind.HTML, card.legacy).parts)
        try:
            got = await self.reader.get(self.cards.bucket, object_key, max_bytes=cap)
        except S3Error as error:
            raise Unavailable(502, str(error)) from None
        if got.outcome is not Got.NEW:
            raise Unavailable(404, "card not found")
        return got.body

    async def read_task(self, key: TaskKey) -> TaskFolder | None:
        return await self.tasks.read_task(key) if self.tasks is not None else None

    async def read_log(self, key: TaskKey, stream: str, attempt: int | None, lines: int,
                       before: int | None, since: int | None) -> tuple[int, Page] | None:
        if self.tasks is None:
            return None
        return await self.tasks.read_log(key, stream, attempt, lines, before, since)

