"""The data updates of the cards someone is shown, kept fresh from S3: each shown card that may
still change is asked for by conditional GET every `card_seconds`; a card whose update changed
in the latest run listing is asked for even once its task has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from .. import disk, helper
from ..config import Limits
from ..events import DataUpdate, DataWritten
from ..layout import CardFileKind, CardKey, RunKey, card_path
from ..source import SinkHolder
from ..status import Status
from .client import Got, S3Error, S3Reader
from .faults import CARDS, Faults
from .listing import CardObject
from .schedule import PollTiming
from .settings import S3Root

log = logging.getLogger("cardserver")

LIVE = (Status.RUNNING, Status.PENDING, Status.UNKNOWN)


class CardUpdates:
    """The shown cards, and the ETags of their data updates: last read, and last listed."""

    def __init__(self, source: SinkHolder, reader: S3Reader, cards: S3Root, limits: Limits,
                 timing: PollTiming, faults: Faults, run_done: Callable[[RunKey], bool],
                 rendered: Callable[[RunKey], None]) -> None:
        self.source = source  # its sink, once started
        self.reader = reader
        self.cards = cards
        self.limits = limits
        self.timing = timing
        self.faults = faults
        self.run_done = run_done  # a finished run: never polled again
        self.rendered = rendered  # a card rendered again: its run is listed now
        self.shown: set[CardKey] = set()
        self.wake = asyncio.Event()
        self._read_etags: dict[CardKey, str] = {}  # of the data update last read, by card
        self._listed_etags: dict[CardKey, str] = {}  # of each data update in the latest listing

    def show(self, key: CardKey, shown: bool) -> None:
        if shown:
            self.shown.add(key)
            self.wake.set()
        else:
            self.shown.discard(key)
            if self.faults.worked(key):
                self.faults.back_off(CARDS, {})  # nobody waits for it any more

    def listed(self, cards: Iterable[CardObject]) -> None:
        """A run listing's data updates: a shown one that changed is read again."""
        for card in cards:
            if card.file.kind is CardFileKind.DATA:
                self._listed_etags[card.file.key] = card.object.etag
                if card.file.key in self.shown:
                    self.wake.set()  # the last update of a task that just ended is read too

    async def poll(self) -> None:
        """The data update of each shown card that may still change, every `card_seconds`."""
        while True:
            now = time.monotonic()
            shown = [key for key in self.shown if self.may_update(key)]
            if not shown:
                self.wake.clear()
                await self.wake.wait()
                continue
            wanted = [key for key in shown if self.faults.may_try(key, now)]
            results = await asyncio.gather(*(self.fetch(key) for key in wanted), return_exceptions=True)
            failed: dict[RunKey | CardKey, S3Error] = {}
            for key, result in zip(wanted, results, strict=True):
                if isinstance(result, Exception):  # S3's, or a bug: only this card backs off
                    if not isinstance(result, S3Error):
                        log.error("S3: reading a card's update failed", exc_info=result)
                    failed[key] = result if isinstance(result, S3Error) else S3Error(repr(result))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self.faults.worked(key)
            self.faults.back_off(CARDS, failed)
            await asyncio.sleep(self.timing.card_seconds)

    def may_update(self, key: CardKey) -> bool:
        """A shown card whose update is not read yet, or whose task and run may still write."""
        card = self.source.sink.index.card(key) if self.source.started else None
        if card is None:
            return False
        read = self._read_etags.get(key)
        listed = self._listed_etags.get(key)
        if (card.update is None and read is None) or (listed is not None and listed != read):
            return True
        task = self.source.sink.index.task(key.task)
        return task is not None and task.status in LIVE and not self.run_done(key.run_key)

    async def fetch(self, key: CardKey) -> None:
        """GET the card's data update unless its ETag is the one last read; apply a new one."""
        card = self.source.sink.index.card(key)
        if card is None:
            return
        object_key = self.cards.key(*card_path(key, CardFileKind.DATA, card.legacy).parts)
        got = await self.reader.get(self.cards.bucket, object_key, self._read_etags.get(key),
                                    max_bytes=self.limits.max_data_bytes)
        if got.outcome is not Got.NEW:
            return
        self._read_etags[key] = got.etag  # a bad one too: asked again only once it changes
        update = await asyncio.to_thread(parse_update, got.body)
        if isinstance(update, str):
            log.warning("S3: s3://%s/%s: %s", self.cards.bucket, object_key, update)
            return
        rendered = card.update is not None and card.update.token != update.token
        self.source.sink.apply([DataWritten(key, card.legacy, time.time(), update)])
        if rendered:  # a new reload token: the card was rendered again, list its run now
            self.rendered(key.run_key)

    async def load(self, key: CardKey) -> None:
        """Read the card's data update now if the sink has none yet (a fault is only logged)."""
        card = self.source.sink.index.card(key)
        if card is None or card.update is not None:
            return
        try:
            await self.fetch(key)
        except S3Error as error:
            log.warning("S3: %s", error)


def parse_update(raw: bytes) -> DataUpdate | str:
    """A data update from an object's bytes (a big one in the helper process), or why not."""
    found = helper.parse_elsewhere(raw) if len(raw) > helper.BIG_UPDATE else disk.parse_update_bytes(raw)
    return found if isinstance(found, DataUpdate) else str(found)
