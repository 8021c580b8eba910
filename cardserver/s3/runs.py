"""The runs of an S3 datastore: found by delimiter listings (discovery), each read by listing
its card tree and task folders, and a live one listed again when due (faster while someone
views it); a finished run is not polled again. What changed is told by comparing ETags with
the last listing seen, so a failed poll loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .. import disk
from ..config import Limits
from ..disk import Problem, Scope
from ..events import Event, RunWritten, TaskMetaRead
from ..layout import CardKey, RunKey, TaskKey, cards_run_dir, cards_runs_dir, datastore_run_dir
from ..source import SinkHolder
from .client import S3Error, S3Reader
from .faults import RUNS, Faults
from .listing import card_events, card_objects, changed_card_events, folder_names, signature, task_folders
from .schedule import PollTiming, followed
from .settings import S3Root
from .taskfiles import meta_files
from .taskreads import TaskDocs
from .updates import CardUpdates

log = logging.getLogger("cardserver")

READS_AT_ONCE = 8  # runs read at once, and task-folder objects read at once


@dataclass(slots=True)
class RunState:
    """What the source last saw of a run, to tell what changed."""

    cards: dict[str, str] = field(default_factory=dict)  # card object key -> ETag
    tasks: dict[TaskKey, frozenset[tuple[str, str]]] = field(default_factory=dict)  # folder signature
    read: bool = False
    done: bool = False  # finished: not polled again
    due: float = 0.0  # monotonic time of the next poll


class Runs:
    """The runs known, what was last seen of each, and who views them."""

    def __init__(self, source: SinkHolder, reader: S3Reader, cards: S3Root, docs: TaskDocs | None,
                 local: Path, limits: Limits, scope: Scope, timing: PollTiming, faults: Faults,
                 updates: CardUpdates) -> None:
        self.source = source  # its sink, once started
        self.reader = reader
        self.cards = cards
        self.docs = docs  # with the datastore root; None: status stays unknown
        self.local = local  # the working folder's .metaflow: a local runtime's _meta
        self.limits = limits
        self.scope = scope
        self.timing = timing
        self.faults = faults
        self.updates = updates  # told of each data update a run listing finds
        self.states: dict[RunKey, RunState] = {}
        self.flows: set[str] = set()
        self.viewers: Counter[RunKey] = Counter()  # shown runs, tasks and cards, by run
        # Runs read at once (apart from the docs' gate: a run's read waits on its objects)
        self._gate = asyncio.Semaphore(READS_AT_ONCE)
        self.wake = asyncio.Event()
        self._discovery_error: S3Error | None = None  # a flow whose runs could not be listed
        self._next_discovery = 0.0

    # --- whole reads and discovery -------------------------------------------------------------

    async def first_read(self) -> None:
        """Every run into the sink as a fresh start; said in health if part of it failed."""
        await self.source.sink.start_over(self._whole())
        for key in self.states:
            self._settle(key)
        self._next_discovery = time.monotonic() + self.discovery_seconds()
        if self._discovery_error is not None:  # a flow's runs could not be listed
            self.faults.failed(RUNS, self._discovery_error)
        elif self.faults.last_error is None:
            self.faults.recovered(RUNS)

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
                    self.faults.failed(RUNS, error)  # it stays unread, so it is read again at the next poll
                    continue
                yield events
        finally:
            for read in reads:
                read.cancel()

    async def _gated(self, read: Callable[[RunKey], Awaitable[tuple[list[Event], list[TaskKey]]]],
                     key: RunKey) -> tuple[list[Event], list[TaskKey]]:
        async with self._gate:
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
                if self.scope.wants(flow, run) and key not in self.states:
                    self.states[key] = RunState()
                    new.append(key)
        return new

    # --- one run ---------------------------------------------------------------------------------

    async def read_run(self, key: RunKey) -> tuple[list[Event], list[TaskKey]]:
        """The run's card tree (all of it the first time, what changed since after) and its
        status, with the tasks whose folder changed."""
        state = self.states.setdefault(key, RunState())
        folder = "/".join(cards_run_dir(key).parts) + "/"
        cards = card_objects(self.cards.folder, await self.reader.list_tree(self.cards, folder), self.scope)
        events = changed_card_events(cards, state.cards) if state.read else card_events(cards)
        self.updates.listed(cards)
        status, touched = await self.status_events(key, state)
        state.cards = {card.object.key: card.object.etag for card in cards}
        state.read = True
        return events + status, touched

    async def status_events(self, key: RunKey, state: RunState) -> tuple[list[Event], list[TaskKey]]:
        local = self.local / datastore_run_dir(key)
        if (local / "_meta").is_dir():  # a local runtime with (maybe) remote steps: its _meta says
            return await asyncio.to_thread(self._local_status, key, local), []
        if self.docs is None:
            return [], []  # no datastore root known: status stays unknown
        sysroot = self.docs.sysroot
        folder = "/".join(datastore_run_dir(key).parts) + "/"
        objects = await self.reader.list_tree(sysroot, folder)
        events: list[Event] = []
        touched: list[TaskKey] = []
        for task, items in task_folders(sysroot.folder, objects, key).items():
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
        self.source.sink.apply(events, touched)
        self._settle(key)

    def _settle(self, key: RunKey) -> None:
        """After a read: is the run finished (never polled again), and when is it due next."""
        state = self.states[key]
        run = self.source.sink.index.run(key)
        finished = run is not None and not followed(run.status, run.newest_write, time.time(),
                                                    self.timing.recent_seconds)
        state.done = state.read and finished  # a run whose read failed is read again
        if state.done:  # never listed again: nothing to compare a listing with
            state.cards.clear()
            state.tasks.clear()
        state.due = time.monotonic() + self.timing.run_seconds(self.viewers[key] > 0)

    # --- polling ---------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Discovery and the live runs, each when due; sleeps until the next is due or a run
        gains a viewer."""
        while True:
            try:
                await self._poll_once()
                delay = self._next_due() - time.monotonic()
            except S3Error as error:
                delay = self.faults.failed(RUNS, error)
            except Exception as error:  # a bug must not stop the polling: log it, try again
                log.exception("S3: polling failed")
                delay = self.faults.failed(RUNS, S3Error(f"polling failed: {error!r}"))
            self.wake.clear()
            if delay > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)

    async def _poll_once(self) -> None:
        now = time.monotonic()
        if now >= self._next_discovery:
            new = await self.discover()
            self._next_discovery = now + self.discovery_seconds()
            if new:
                self.source.sink.apply([RunWritten(key, None, None) for key in new])
            if self._discovery_error is not None:
                self._next_discovery = now + self.faults.next_retry(RUNS)
        due = [key for key, state in self.states.items()
               if not state.done and state.due <= now and self.faults.may_try(key, now)]
        results = await asyncio.gather(*(self._gated(self.read_run, key) for key in due),
                                       return_exceptions=True)
        failed: dict[RunKey | CardKey, S3Error] = {}
        for key, result in zip(due, results, strict=True):
            if isinstance(result, S3Error):  # one run's fault: only it backs off
                failed[key] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                self.faults.worked(key)
                self._apply_run(key, *result)
        if self._discovery_error is not None and not failed:
            self.faults.failed(RUNS, self._discovery_error)
        else:
            self.faults.back_off(RUNS, failed)

    def _next_due(self) -> float:
        times = [max(state.due, self.faults.retry_at(key)) for key, state in self.states.items()
                 if not state.done]
        return min([self._next_discovery, *times])

    # --- what is looked at -----------------------------------------------------------------------

    def show(self, key: RunKey, shown: bool) -> None:
        """A viewer of the run (or of its task or card) came or went."""
        self.viewers[key] += 1 if shown else -1
        if self.viewers[key] <= 0:
            del self.viewers[key]
        if shown and self.viewers[key] == 1:
            self.poll_now(key)  # a run someone starts looking at is read now, then every 5 s

    def poll_now(self, key: RunKey) -> None:
        state = self.states.get(key)
        if state is not None and not state.done:
            state.due = 0.0
            self.wake.set()

    def done(self, key: RunKey) -> bool:
        """A finished run: not polled again."""
        state = self.states.get(key)
        return state is not None and state.done

    def followed(self) -> int:
        return sum(1 for state in self.states.values() if not state.done)
