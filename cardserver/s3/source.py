"""A Metaflow datastore on S3 as a source (see `source.py`): cards from the card root, status
from the task folders (or from the local `_meta` where a local runtime ran the run).

Change detection is polling, paced by `schedule.PollTiming`: the data update of each shown card
by conditional GET, a live run's card tree and task folders by listing (faster while someone
views it), new flows and runs by delimiter listings; a finished run is not polled again. A
failing poll is said once (`Health`) and tried again, backing off; nothing is lost, as the next
listing compares ETags with the last one seen. Nothing is unpickled; every key is built from a
validated key (`layout`) below the configured roots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import disk, helper
from ..config import Config
from ..disk import Problem, Scope
from ..events import DataUpdate, DataWritten, Event, Reset, RunWritten, TaskMetaRead
from ..feed import Viewed
from ..index import Card, Changes, Index
from ..layout import (
    CardFileKind,
    CardKey,
    RunKey,
    TaskKey,
    card_path,
    cards_run_dir,
    cards_runs_dir,
    datastore_run_dir,
)
from ..logs import Page
from ..source import Health, Sink, SinkHolder, Unavailable
from ..status import Status
from ..taskinfo import TaskFolder
from .client import Got, S3Error, S3Reader
from .listing import (
    card_events,
    card_objects,
    changed_card_events,
    folder_names,
    signature,
    task_folders,
)
from .schedule import PollTiming, followed
from .settings import S3Root, S3Settings
from .taskfiles import meta_files
from .taskreads import TaskDocs, TaskReads

log = logging.getLogger("cardserver")

READS_AT_ONCE = 8  # runs read at once, and task-folder objects read at once
LIVE = (Status.RUNNING, Status.PENDING, Status.UNKNOWN)
RUNS, CARDS = "runs", "cards"  # the two polls: listings (discovery and runs), shown cards' updates
THROTTLED = "throttled"  # the reader backing off throttled requests, whichever poll sent them


@dataclass(slots=True)
class RunState:
    """What the source last saw of a run, to tell what changed."""

    cards: dict[str, str] = field(default_factory=dict)  # card object key -> ETag
    tasks: dict[TaskKey, frozenset[tuple[str, str]]] = field(default_factory=dict)  # folder signature
    read: bool = False
    done: bool = False  # finished: not polled again
    due: float = 0.0  # monotonic time of the next poll


class S3Source(SinkHolder):
    def __init__(self, config: Config, settings: S3Settings, timing: PollTiming | None = None,
                 reader: S3Reader | None = None) -> None:
        if settings.cards is None:
            raise S3Error("no S3 card root: set METAFLOW_DATASTORE_SYSROOT_S3 or METAFLOW_CARD_S3ROOT")
        self.config = config
        self.settings = settings
        self.cards: S3Root = settings.cards
        self.sysroot: S3Root | None = settings.sysroot
        self.local = config.roots.datastore  # the working folder's .metaflow: a local runtime's _meta
        self.limits = config.limits
        self.scope = Scope(config.flow, config.run_id)
        self.timing = timing or PollTiming()
        self.reader = reader or S3Reader(settings.endpoint_url)
        self.reader.on_throttled = self._throttled
        self.caught_up = asyncio.Event()
        self.health = Health()
        self.runs: dict[RunKey, RunState] = {}
        self.flows: set[str] = set()
        self.shown: set[CardKey] = set()
        self.viewers: Counter[RunKey] = Counter()  # shown runs, tasks and cards, by run
        sysroot = settings.sysroot
        self.docs = TaskDocs(self.reader, sysroot, self.limits, READS_AT_ONCE) if sysroot else None
        self.tasks = TaskReads(self.docs, self.local, self.limits) if self.docs else None
        self._data_etags: dict[CardKey, str] = {}  # of the data update last read, by card
        self._listed_etags: dict[CardKey, str] = {}  # of each data update in the latest listing
        self._sink: Sink | None = None
        self._open = False
        # Runs read at once (apart from the docs' gate: a run's read waits on its objects)
        self._run_gate = asyncio.Semaphore(READS_AT_ONCE)
        self._wake_runs = asyncio.Event()
        self._wake_cards = asyncio.Event()
        # Each poll ("runs", "cards") fails and recovers on its own; health is ok when both work
        self._failures: Counter[str] = Counter()
        self._problems: dict[str, str] = {}
        self.last_error: S3Error | None = None  # the latest failure, until every poll works again
        self._retry_at: dict[RunKey | CardKey, float] = {}  # a run or card that failed -> next try
        self._discovery_error: S3Error | None = None  # a flow whose runs could not be listed
        self._next_discovery = 0.0
        self._polls: list[asyncio.Task[None]] = []

    # --- the source's life -------------------------------------------------------------------

    async def first_read(self, sink: Sink) -> None:
        self._sink = sink
        try:
            await self._ensure_open()
            await sink.start_over(self._whole())
            for key in self.runs:
                self._settle(key)
            self._next_discovery = time.monotonic() + self.discovery_seconds()
            if self._discovery_error is not None:  # a flow's runs could not be listed
                self._failed(RUNS, self._discovery_error)
            elif self.last_error is None:
                self._recovered(RUNS)
        except S3Error as error:  # said in the health message; the polls try again
            self._failed(RUNS, error)
        finally:
            self.caught_up.set()

    async def follow(self, sink: Sink) -> None:
        self._sink = sink
        await self._ensure_open()
        self._polls = [asyncio.create_task(self._poll_runs(), name="cardserver-s3-runs"),
                       asyncio.create_task(self._poll_cards(), name="cardserver-s3-cards")]
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

    def status(self) -> dict[str, Any]:
        counts = self.reader.counts
        minutes = counts.per_minute()
        hours = max(time.monotonic() - counts.started, 1e-9) / 3600
        return {
            "source": "s3",
            "datastore": self.sysroot.url if self.sysroot else None,
            "cards": self.cards.url,
            "watching": "polling S3",
            "followed_runs": sum(1 for state in self.runs.values() if not state.done),
            "watch": self.health.as_dict(),
            "s3": {
                "endpoint": self.settings.endpoint_url,
                "requests": {kind.value: count for kind, count in counts.sent.items()},  # since start
                "requests_per_minute": {kind: round(rate, 2) for kind, rate in minutes.items()},
                "not_modified": counts.not_modified,
                "retried": counts.retried,
                "usd_per_hour": round(counts.cost_usd() / hours, 6),
                "viewed_cards": len(self.shown),
                "viewed_runs": sum(1 for count in self.viewers.values() if count > 0),
            },
        }

    # --- health --------------------------------------------------------------------------------

    def _failed(self, poll: str, error: S3Error) -> float:
        """Say why a poll fails (once per change of reason) and how long it waits to retry."""
        self._failures[poll] += 1
        self.last_error = error
        problem = f"{error}; retrying"
        if self._problems.get(poll) != problem:
            log.warning("S3: %s", problem)
            self._problems[poll] = problem
            self._publish_health()
        return self.timing.retry_after(self._failures[poll])

    def _recovered(self, poll: str) -> None:
        self._failures[poll] = 0
        if self._problems.pop(poll, None) is None:
            return
        if not self._problems:
            log.warning("S3: polling works again")
            self.last_error = None
        self._wake_cards.set()  # the other poll may be backing off: it tries again now
        self._wake_runs.set()
        self._publish_health()

    def _throttled(self, active: bool, code: str) -> None:
        """The reader backs off throttled requests (retrying them until they pass): say so."""
        if active:
            self._failed(THROTTLED, S3Error(f"S3 is throttling requests ({code}), backing off"))
        else:
            self._recovered(THROTTLED)

    def _back_off(self, poll: str, failed: dict[RunKey | CardKey, S3Error]) -> None:
        """Only what failed waits before it is tried again (the rest of the poll goes on); the
        poll recovers once nothing of it is waiting."""
        if failed:
            delay = self._failed(poll, next(iter(failed.values())))
            self._retry_at.update(dict.fromkeys(failed, time.monotonic() + delay))
        elif not any(isinstance(key, CardKey) == (poll == CARDS) for key in self._retry_at):
            self._recovered(poll)

    def _may_try(self, key: RunKey | CardKey, now: float) -> bool:
        return self._retry_at.get(key, 0.0) <= now

    def _publish_health(self) -> None:
        ok = not self._problems
        problem = "; ".join(dict.fromkeys(self._problems.values())) or None
        self._set_health(Health(ok, self.health.restarts + (1 if self.health.ok and not ok else 0), problem))

    def _set_health(self, health: Health) -> None:
        self.health = health
        if self._sink is not None:
            self._sink.health(health)

    # --- whole reads and discovery -------------------------------------------------------------

    def discovery_seconds(self) -> float:
        return self.timing.discovery_seconds(len(self.flows))

    async def _whole(self) -> AsyncIterator[list[Event]]:
        """Every run's cards and status: first the runs, then each run's events as read."""
        found = await self.discover()
        yield [RunWritten(key, None, None) for key in found]
        reads = [asyncio.ensure_future(self._gated(self.read_run, key)) for key in found]
        try:
            for done in asyncio.as_completed(reads):
                try:
                    events, _ = await done
                except S3Error as error:  # this run only (access denied on part of the bucket)
                    self._failed(RUNS, error)  # it stays unread, so it is read again at the next poll
                    continue
                yield events
        finally:
            for read in reads:
                read.cancel()

    async def _gated(self, read: Callable[[RunKey], Awaitable[tuple[list[Event], list[TaskKey]]]],
                     key: RunKey) -> tuple[list[Event], list[TaskKey]]:
        async with self._run_gate:
            return await read(key)

    async def discover(self) -> list[RunKey]:
        """Flows and runs in the card root (delimiter listings); the runs not known before. A
        flow whose runs cannot be listed (access denied on part of the prefix) does not stop
        the others: it is `_discovery_error`, tried again at the next discovery."""
        top = await self.reader.list_folder(self.cards)
        flows = [name for name in folder_names(self.cards.folder, top.folders) if self.scope.wants(name)]
        self.flows = set(flows)
        new: list[RunKey] = []
        self._discovery_error = None
        for flow in flows:
            prefix = self.cards.key(*cards_runs_dir(flow).parts) + "/"
            try:
                listing = await self.reader.list_folder(self.cards, prefix.removeprefix(self.cards.folder))
            except S3Error as error:
                self._discovery_error = self._discovery_error or error
                continue
            for run in folder_names(prefix, listing.folders):
                key = RunKey(flow, run)
                if self.scope.wants(flow, run) and key not in self.runs:
                    self.runs[key] = RunState()
                    new.append(key)
        return new

    # --- one run ---------------------------------------------------------------------------------

    async def read_run(self, key: RunKey) -> tuple[list[Event], list[TaskKey]]:
        """The run's card tree (all of it the first time, what changed since after) and its
        status, with the tasks whose folder changed."""
        state = self.runs.setdefault(key, RunState())
        folder = "/".join(cards_run_dir(key).parts) + "/"
        cards = card_objects(self.cards.folder, await self.reader.list_tree(self.cards, folder), self.scope)
        events = changed_card_events(cards, state.cards) if state.read else card_events(cards)
        for card in cards:
            if card.file.kind is CardFileKind.DATA:
                self._listed_etags[card.file.key] = card.object.etag
                if card.file.key in self.shown:
                    self._wake_cards.set()  # the last update of a task that just ended is read too
        status, touched = await self.status_events(key, state)
        state.cards = {card.object.key: card.object.etag for card in cards}
        state.read = True
        return events + status, touched

    async def status_events(self, key: RunKey, state: RunState) -> tuple[list[Event], list[TaskKey]]:
        local = self.local / datastore_run_dir(key)
        if (local / "_meta").is_dir():  # a local runtime with (maybe) remote steps: its _meta says
            return await asyncio.to_thread(self._local_status, key, local), []
        if self.sysroot is None or self.docs is None:
            return [], []  # no datastore root known: status stays unknown
        folder = "/".join(datastore_run_dir(key).parts) + "/"
        objects = await self.reader.list_tree(self.sysroot, folder)
        events: list[Event] = []
        touched: list[TaskKey] = []
        for task, items in task_folders(self.sysroot.folder, objects, key).items():
            seen = signature(items)
            if state.tasks.get(task) == seen:
                continue
            events.append(TaskMetaRead(task, meta_files(await self.docs.objects(items))))
            state.tasks[task] = seen
            touched.append(task)
        return events, touched

    def _local_status(self, key: RunKey, folder: Path) -> list[Event]:
        problems: list[Problem] = []
        return list(disk.scan_run(key, str(folder), self.limits, problems, str(self.local)))

    def _apply_run(self, key: RunKey, events: list[Event], touched: list[TaskKey]) -> None:
        self.sink.apply(events, touched)
        self._settle(key)

    def _settle(self, key: RunKey) -> None:
        """After a read: is the run finished (never polled again), and when is it due next."""
        state = self.runs[key]
        run = self.sink.index.run(key)
        finished = run is not None and not followed(run.status, run.newest_write, time.time(),
                                                    self.timing.recent_seconds)
        state.done = state.read and finished  # a run whose read failed is read again
        if state.done:  # never listed again: nothing to compare a listing with
            state.cards.clear()
            state.tasks.clear()
        state.due = time.monotonic() + self.timing.run_seconds(self.viewers[key] > 0)

    # --- polling ---------------------------------------------------------------------------------

    async def _poll_runs(self) -> None:
        """Discovery and the live runs, each when due; sleeps until the next is due or a run
        gains a viewer."""
        while True:
            try:
                await self._poll_runs_once()
                delay = self._next_due() - time.monotonic()
            except S3Error as error:
                delay = self._failed(RUNS, error)
            except Exception as error:  # a bug must not stop the polling: log it, try again
                log.exception("S3: polling failed")
                delay = self._failed(RUNS, S3Error(f"polling failed: {error!r}"))
            self._wake_runs.clear()
            if delay > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_runs.wait(), delay)

    async def _poll_runs_once(self) -> None:
        now = time.monotonic()
        if now >= self._next_discovery:
            new = await self.discover()
            self._next_discovery = now + self.discovery_seconds()
            if new:
                self.sink.apply([RunWritten(key, None, None) for key in new])
            if self._discovery_error is not None:
                self._next_discovery = now + self.timing.retry_after(self._failures[RUNS] + 1)
        due = [key for key, state in self.runs.items()
               if not state.done and state.due <= now and self._may_try(key, now)]
        results = await asyncio.gather(*(self._gated(self.read_run, key) for key in due),
                                       return_exceptions=True)
        failed: dict[RunKey | CardKey, S3Error] = {}
        for key, result in zip(due, results, strict=True):
            if isinstance(result, S3Error):  # one run's fault: only it backs off
                failed[key] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                self._retry_at.pop(key, None)
                self._apply_run(key, *result)
        if self._discovery_error is not None and not failed:
            self._failed(RUNS, self._discovery_error)
        else:
            self._back_off(RUNS, failed)

    def _next_due(self) -> float:
        times = [max(state.due, self._retry_at.get(key, 0.0)) for key, state in self.runs.items()
                 if not state.done]
        return min([self._next_discovery, *times])

    async def _poll_cards(self) -> None:
        """The data update of each shown card that may still change, every `card_seconds`."""
        while True:
            now = time.monotonic()
            shown = [key for key in self.shown if self._may_update(key)]
            if not shown:
                self._wake_cards.clear()
                await self._wake_cards.wait()
                continue
            wanted = [key for key in shown if self._may_try(key, now)]
            results = await asyncio.gather(*(self.fetch_update(key) for key in wanted),
                                           return_exceptions=True)
            failed: dict[RunKey | CardKey, S3Error] = {}
            for key, result in zip(wanted, results, strict=True):
                if isinstance(result, Exception):  # S3's, or a bug: only this card backs off
                    if not isinstance(result, S3Error):
                        log.error("S3: reading a card's update failed", exc_info=result)
                    failed[key] = result if isinstance(result, S3Error) else S3Error(repr(result))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self._retry_at.pop(key, None)
            self._back_off(CARDS, failed)
            await asyncio.sleep(self.timing.card_seconds)

    def _may_update(self, key: CardKey) -> bool:
        """A shown card whose update is not read yet, or whose task and run may still write."""
        card = self.sink.index.card(key) if self._sink is not None else None
        if card is None:
            return False
        read = self._data_etags.get(key)
        listed = self._listed_etags.get(key)
        if (card.update is None and read is None) or (listed is not None and listed != read):
            return True
        task = self.sink.index.task(key.task)
        state = self.runs.get(key.run_key)
        return task is not None and task.status in LIVE and not (state is not None and state.done)

    async def fetch_update(self, key: CardKey) -> None:
        """GET the card's data update unless its ETag is the one last read; apply a new one."""
        card = self.sink.index.card(key)
        if card is None:
            return
        object_key = self.cards.key(*card_path(key, CardFileKind.DATA, card.legacy).parts)
        got = await self.reader.get(self.cards.bucket, object_key, self._data_etags.get(key),
                                    max_bytes=self.limits.max_data_bytes)
        if got.outcome is not Got.NEW:
            return
        self._data_etags[key] = got.etag  # a bad one too: asked again only once it changes
        update = await asyncio.to_thread(parse_update, got.body)
        if isinstance(update, str):
            log.warning("S3: s3://%s/%s: %s", self.cards.bucket, object_key, update)
            return
        rendered = card.update is not None and card.update.token != update.token
        self.sink.apply([DataWritten(key, card.legacy, time.time(), update)])
        if rendered:  # a new reload token: the card was rendered again, list its run now
            self._poll_now(key.run_key)

    def _poll_now(self, key: RunKey) -> None:
        state = self.runs.get(key)
        if state is not None and not state.done:
            state.due = 0.0
            self._wake_runs.set()

    # --- what is looked at ---------------------------------------------------------------------------

    def show(self, key: Viewed, shown: bool) -> None:
        run = key if isinstance(key, RunKey) else key.run_key
        self.viewers[run] += 1 if shown else -1
        if self.viewers[run] <= 0:
            del self.viewers[run]
        if isinstance(key, CardKey):
            if shown:
                self.shown.add(key)
                self._wake_cards.set()
            else:
                self.shown.discard(key)
                if self._retry_at.pop(key, None) is not None:
                    self._back_off(CARDS, {})  # nobody waits for it any more
        if shown and self.viewers[run] == 1:
            self._poll_now(run)  # a run someone starts looking at is read now, then every 5 s

    async def load_update(self, key: CardKey) -> None:
        card = self.sink.index.card(key)
        if card is None or card.update is not None:
            return
        try:
            await self.fetch_update(key)
        except S3Error as error:
            log.warning("S3: %s", error)

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


def parse_update(raw: bytes) -> DataUpdate | str:
    """A data update from an object's bytes (a big one in the helper process), or why not."""
    found = helper.parse_elsewhere(raw) if len(raw) > helper.BIG_UPDATE else disk.parse_update_bytes(raw)
    return found if isinstance(found, DataUpdate) else str(found)


async def check_reachable(settings: S3Settings) -> None:
    """One delimiter listing of the card root: raises S3Error with the one line to print (no
    credentials, wrong endpoint, no bucket, access denied) before the server starts."""
    assert settings.cards is not None
    async with S3Reader(settings.endpoint_url) as reader:
        await reader.list_folder(settings.cards)


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
    try:
        await source.first_read(IndexSink(index))
    finally:
        await source.close()
    if source.last_error is not None:
        raise source.last_error
    return index
