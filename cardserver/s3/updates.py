"""The data updates of the cards someone is shown, kept fresh from S3: each shown card that may
still change is asked for by conditional GET, every `card_seconds` while it is visible and every
`kept_card_seconds` while a viewer only keeps it loaded behind the card it shows (and at once when
it becomes visible again); a card whose update changed in the latest run listing is asked for
even once its task has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import suppress

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
        self.visible: set[CardKey] = set()  # the shown cards on someone's screen; the rest are kept
        self.wake = asyncio.Event()
        self._due: dict[CardKey, float] = {}  # when each shown card's update is asked for next
        self._read_etags: dict[CardKey, str] = {}  # of the data update last read, by card
        self._listed_etags: dict[CardKey, str] = {}  # of each data update in the latest listing

    def show(self, key: CardKey, shown: bool) -> None:
        if shown:
            self.shown.add(key)
            self.read_now(key)
        else:
            self.shown.discard(key)
            self.visible.discard(key)
            self._due.pop(key, None)
            if self.faults.worked(key):
                self.faults.back_off(CARDS, {})  # nobody waits for it any more

    def see(self, key: CardKey, visible: bool) -> None:
        """A shown card came on screen (read at once: it is shown fresh) or left it (kept)."""
        if visible:
            self.visible.add(key)
            self.read_now(key)
        else:
            self.visible.discard(key)

    def read_now(self, key: CardKey) -> None:
        self._due[key] = 0.0
        self.wake.set()

    def listed(self, cards: Iterable[CardObject]) -> None:
        """A run listing's data updates: a shown one that changed is read again."""
        for card in cards:
            if card.file.kind is CardFileKind.DATA:
                self._listed_etags[card.file.key] = card.object.etag
                if card.file.key in self.shown:
                    self.wake.set()  # the last update of a task that just ended is read too

    async def poll(self) -> None:
        """The data update of each shown card that may still change, when it is due."""
        while True:
            self.wake.clear()  # what wakes us from here on is seen on the next turn
            live = [key for key in self.shown if self.may_update(key)]
            if not live:
                await self.wake.wait()
                continue
            now = time.monotonic()
            wanted = [key for key in live if self._due.get(key, 0.0) <= now and self.faults.may_try(key, now)]
            if wanted:
                await self.read(wanted)
            done = time.monotonic()
            for key in wanted:
                if key in self.shown:
                    self._due[key] = done + self.timing.update_seconds(key in self.visible)
            soonest = min(self._due.get(key, 0.0) for key in live) - done
            # Due but backing off (or just unshown): wait a turn rather than spin.
            await self.rest(soonest if soonest > 0 or wanted else self.timing.card_seconds)

    async def read(self, wanted: list[CardKey]) -> None:
        """Ask for these cards' updates at once; a card that fails backs off alone."""
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

    async def rest(self, seconds: float) -> None:
        """Until the next card is due, or sooner: a card shown, made visible, or listed changed."""
        if seconds > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), seconds)

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
        read_at = time.monotonic()
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
        self.source.sink.apply([DataWritten(key, card.legacy, time.time(), update, read_at)])
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
