"""The in-memory model of flows, runs, steps, tasks and cards, with their status.

Built from a source's first read, then kept current by its batches of events. `apply` says what
changed so the feed can tell subscribers; every query is answered from memory. No I/O here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .events import (
    CardRemoved,
    CardWritten,
    DataUpdate,
    DataWritten,
    Event,
    Reset,
    RunWritten,
    TaskCardsRead,
    TaskMetaRead,
    TaskMetaWritten,
    TaskRemoved,
)
from .layout import LEGACY_STEP, CardKey, MetaKind, RunKey, TaskKey, parse_card_name
from .status import (
    GRACE_SECONDS,
    Status,
    TaskFacts,
    TaskState,
    card_attempt,
    finished_at,
    record,
    record_all,
    run_status,
    shown_status,
    task_status,
)


@dataclass(slots=True)
class Card:
    key: CardKey
    legacy: bool = False
    version: str | None = None  # None until the HTML itself has been seen
    mtime: float = 0.0
    size: int = 0
    data_mtime: float | None = None  # a data update exists on disk
    update: DataUpdate | None = None  # the merged newest state, once read
    read_at: float = 0.0  # when the read of the newest update began (monotonic)

    def summary(self) -> dict[str, Any]:
        name = parse_card_name(self.key.name)
        return {
            "name": self.key.name,
            "type": name.type if name else None,
            "id": name.id if name else None,
            "version": self.version,
        }


@dataclass(slots=True)
class Task:
    key: TaskKey
    facts: TaskFacts = field(default_factory=TaskFacts)
    cards: dict[str, Card] = field(default_factory=dict)
    last_activity: float = 0.0
    status: Status = Status.PENDING  # from the task's own files
    shown: Status = Status.PENDING  # in the context of its run (running in a run gone silent)

    def state(self) -> TaskState:
        return TaskState(self.key.step, self.status)

    def card_summaries(self) -> list[dict[str, Any]]:
        """Each card, oldest first, with the attempt that wrote it."""
        out = []
        for card in sorted(self.cards.values(), key=card_order):
            summary = card.summary()
            summary["attempt"] = card_attempt(self.facts, card.key.name.rpartition("-")[2])
            out.append(summary)
        return out

    def summary(self) -> dict[str, Any]:
        attempts = self.facts.attempts
        latest = attempts[max(attempts)] if attempts else None
        return {
            "step": self.key.step,
            "task": self.key.task,
            "status": self.shown.value,
            "attempt": latest.number if latest else None,
            "started": started_at(self.facts),
            "finished": finished_at(self.facts),
            "cards": self.card_summaries(),
        }


@dataclass(slots=True)
class Run:
    key: RunKey
    created: float | None = None
    user: str | None = None
    tasks: dict[tuple[str, str], Task] = field(default_factory=dict)
    status: Status = Status.PENDING
    first_seen: float = 0.0
    newest_write: float = 0.0  # the newest file time seen in the run
    by_id: dict[str, Task] = field(default_factory=dict)  # tasks of real steps, by task id

    @property
    def started(self) -> float | None:
        return self.created or self.first_seen or None

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        cards = 0
        for task in self.tasks.values():
            counts[task.shown.value] = counts.get(task.shown.value, 0) + 1
            cards += len(task.cards)
        return {
            "flow": self.key.flow,
            "run": self.key.run,
            "status": self.status.value,
            "started": self.started,
            "user": self.user,
            "tasks": len(self.tasks),
            "cards": cards,
            "counts": counts,
        }

    def last_activity(self) -> float:
        """When anything last happened in the run (its start, if nothing yet)."""
        return max((task.last_activity for task in self.tasks.values()), default=self.started or 0.0)

    def steps(self) -> list[str]:
        """Steps in the order they first ran, which is the flow's order for linear flows."""
        first: dict[str, float] = {}
        for task in self.tasks.values():
            begun = started_at(task.facts) or task.last_activity or float("inf")
            step = task.key.step
            first[step] = min(first.get(step, float("inf")), begun)
        return sorted(first, key=lambda s: (first[s], s))


@dataclass(slots=True)
class Flow:
    name: str
    runs: dict[str, Run] = field(default_factory=dict)


@dataclass(slots=True)
class Changes:
    """What one batch of events changed, for the feed to publish."""

    reset: bool = False
    flows: bool = False
    runs: set[RunKey] = field(default_factory=set)  # a run's summary (status, counts) changed
    tasks: set[TaskKey] = field(default_factory=set)
    renders: set[CardKey] = field(default_factory=set)  # a card's HTML changed
    updates: set[CardKey] = field(default_factory=set)  # a card's data update changed

    def __bool__(self) -> bool:
        return bool(self.reset or self.flows or self.runs or self.tasks or self.renders or self.updates)


def facts_state(facts: TaskFacts) -> tuple[Any, ...]:
    """What a task's status files have said so far, comparable: a re-read changes nothing."""
    attempts = tuple((n, a.started, a.ok, a.done, a.verdict) for n, a in sorted(facts.attempts.items()))
    return facts.created, facts.user, attempts, tuple(sorted(facts.card_attempts.items()))


def started_at(facts: TaskFacts) -> float | None:
    starts = [a.started for a in facts.attempts.values() if a.started is not None]
    return min(starts) if starts else facts.created


CLOCK_SLACK = 1.0  # seconds a write time may be ahead of our clock and still be taken as it is
_DIGITS = re.compile(r"(\d+)")


def natural(text: str) -> tuple[Any, ...]:
    """Sort `2` before `10`: Metaflow ids are numbers written as text."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(text))


def card_order(card: Card) -> tuple[Any, ...]:
    return (card.mtime or float("inf"), card.key.name)


def run_order(run: Run) -> tuple[Any, ...]:
    return (run.started or 0.0, natural(run.key.run))


class Index:
    def __init__(self, clock: Callable[[], float] = time.time, grace: float = GRACE_SECONDS) -> None:
        self.flows: dict[str, Flow] = {}
        self.clock = clock  # statuses that time changes (see status.run_status) read it
        self.grace = grace
        self._rechecks: dict[RunKey, float] = {}  # runs whose status time alone may change
        self._last_now = 0.0  # the clock at the last batch
        self._dirty_runs: set[RunKey] = set()
        self._generation = 0  # bumped by a reset
        self._revisions: dict[RunKey, int] = {}  # bumped whenever a run's detail changes

    # --- updates ---------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> Changes:
        return self._apply_batch(events)

    def _apply_batch(self, events: Iterable[Event]) -> Changes:
        changes = Changes()
        for event in events:
            self._apply_one(event, changes)
        now = self.clock()
        stepped_back, self._last_now = now < self._last_now, now  # then every recheck is due now
        self._dirty_runs.update(key for key, at in self._rechecks.items() if at <= now or stepped_back)
        for key in self._dirty_runs:
            self._settle_run(key, changes, now)
        self._dirty_runs.clear()
        if changes.reset:
            self._generation += 1
            self._revisions.clear()
        # Names first: one RunKey per run, not one per changed task.
        names = {(t.flow, t.run) for t in changes.tasks}
        for run_key in changes.runs.union(RunKey(flow, run) for flow, run in names):
            self._revisions[run_key] = self._revisions.get(run_key, 0) + 1
        return changes

    def revision(self, key: RunKey) -> tuple[int, int]:
        """Changes whenever `run_detail(key)` would: lets callers cache its serialization."""
        return self._generation, self._revisions.get(key, 0)

    def _apply_one(self, event: Event, changes: Changes) -> None:
        match event:
            case Reset(events=events):
                self.flows.clear()
                self._dirty_runs.clear()
                self._rechecks.clear()
                for inner in events:
                    self._apply_one(inner, changes)
                changes.reset = True
            case TaskMetaRead(key=key, files=files):
                run = self._run(key.flow, key.run, changes)
                task = self._task(run, key, changes)
                before = facts_state(task.facts) if task.facts.attempts else None
                newest = record_all(task.facts, files)
                if newest is not None:  # one touch at the newest time: what one per file ends at
                    self._touch(run, task, newest / 1000)
                if before is None or facts_state(task.facts) != before:  # a re-read says nothing new
                    self._dirty_runs.add(run.key)
                    changes.tasks.add(key)
            case TaskCardsRead(task=task_key, legacy=legacy, pages=pages, data=data):
                run = self._run(task_key.flow, task_key.run, changes)
                task = self._task(run, task_key, changes)
                for name, mtime, size, version in pages:
                    self._rendered(run, task, CardKey(task_key, name), legacy, mtime, size, version, changes)
                for name, mtime in data:
                    # A key is built only for a new card: the data's page has usually made it.
                    card = task.cards.get(name) or self._card(run, task, CardKey(task_key, name), changes)
                    self._data_seen(run, task, card, legacy, mtime)
            case RunWritten(key=key, created=created, user=user):
                run = self._run(key.flow, key.run, changes)
                known = (run.created, run.user)
                run.created, run.user = created or run.created, user or run.user
                if (run.created, run.user) != known:
                    changes.runs.add(key)
            case TaskMetaWritten(key=key, kind=kind, ts=ts, doc=doc):
                run = self._run(key.flow, key.run, changes)
                task = self._task(run, key, changes)
                before = facts_state(task.facts)
                if record(task.facts, kind, ts, doc) and kind is not MetaKind.TASK_SELF:
                    self._touch(run, task, ts / 1000)
                if facts_state(task.facts) != before:
                    self._dirty_runs.add(run.key)
                    changes.tasks.add(key)
            case CardWritten(key=key):
                run = self._run(key.task.flow, key.task.run, changes)
                task = self._task(run, key.task, changes)
                self._rendered(run, task, key, event.legacy, event.mtime, event.size, event.version, changes)
            case DataWritten(key=key):
                run = self._run(key.task.flow, key.task.run, changes)
                task = self._task(run, key.task, changes)
                card = self._card(run, task, key, changes)
                if event.update is not None and arrived_later(event.update, event.read_at, card):
                    card.update, card.read_at = merge(card.update, event.update), event.read_at
                    changes.updates.add(key)
                self._data_seen(run, task, card, event.legacy, event.mtime)
            case CardRemoved(key=key):
                owner = self._find_task(key.task)
                if owner is not None and owner.cards.pop(key.name, None) is not None:
                    changes.tasks.add(owner.key)
                    changes.runs.add(key.run_key)
                    changes.renders.add(key)
            case TaskRemoved(key=key):
                parent = self.run(key.run_key)
                if parent is not None and parent.tasks.pop((key.step, key.task), None) is not None:
                    if parent.by_id.get(key.task) is not None and parent.by_id[key.task].key == key:
                        del parent.by_id[key.task]
                    self._dirty_runs.add(key.run_key)
                    changes.runs.add(key.run_key)
                    changes.tasks.add(key)  # the feed tells subscribers it is gone

    def _rendered(
        self, run: Run, task: Task, key: CardKey, legacy: bool, mtime: float, size: int, version: str,
        changes: Changes,
    ) -> None:
        card = self._card(run, task, key, changes)
        if card.version != version:
            card.legacy, card.version = legacy, version
            card.mtime, card.size = mtime, size
            changes.renders.add(key)
            changes.tasks.add(task.key)
        self._touch(run, task, mtime)

    def _data_seen(self, run: Run, task: Task, card: Card, legacy: bool, mtime: float) -> None:
        card.legacy = legacy
        card.data_mtime = mtime
        self._touch(run, task, mtime)

    def _touch(self, run: Run, task: Task, when: float) -> None:
        if when > task.last_activity:
            task.last_activity = when
        if when > run.newest_write:
            run.newest_write = when  # read at the run's next recheck, not on every write
            if run.status is Status.UNKNOWN:  # it wrote after all: look again now
                self._dirty_runs.add(run.key)

    def _run(self, flow_name: str, run_name: str, changes: Changes) -> Run:
        """The run, made if new; by its names, as a RunKey is built only for a new run."""
        flow = self.flows.get(flow_name)
        if flow is None:
            flow = self.flows[flow_name] = Flow(flow_name)
            changes.flows = True
        run = flow.runs.get(run_name)
        if run is None:
            key = RunKey(flow_name, run_name)
            run = flow.runs[run_name] = Run(key)
            changes.flows = True
            changes.runs.add(key)
        return run

    def _task(self, run: Run, key: TaskKey, changes: Changes) -> Task:
        if key.step == LEGACY_STEP and key.task in run.by_id:
            return run.by_id[key.task]  # an old-layout card belongs to the task of its id
        task = run.tasks.get((key.step, key.task))
        if task is None:
            task = run.tasks[(key.step, key.task)] = Task(key)
            self._dirty_runs.add(run.key)
            changes.runs.add(run.key)
            if key.step != LEGACY_STEP:
                run.by_id[key.task] = task
                self._adopt_legacy_cards(run, task, changes)
        return task

    def _adopt_legacy_cards(self, run: Run, task: Task, changes: Changes) -> None:
        """Old-layout cards seen before their task's status files move onto that task."""
        placeholder = run.tasks.pop((LEGACY_STEP, task.key.task), None)
        if placeholder is not None:
            task.cards.update(placeholder.cards)
            task.last_activity = max(task.last_activity, placeholder.last_activity)
            changes.tasks.update((placeholder.key, task.key))

    def _card(self, run: Run, task: Task, key: CardKey, changes: Changes) -> Card:
        card = task.cards.get(key.name)
        if card is None:
            card = task.cards[key.name] = Card(key)
            changes.tasks.add(task.key)
            changes.runs.add(run.key)
        return card

    def _settle_run(self, key: RunKey, changes: Changes, now: float) -> None:
        """Recompute the run's status and the shown status of its tasks, once per batch."""
        run = self.run(key)
        self._rechecks.pop(key, None)
        if run is None:
            return
        states = []
        for task in run.tasks.values():
            task.status = task_status(task.facts)
            states.append(task.state())
        # A time well ahead of the clock (a file stamped in the future, or the clock stepped back)
        # counts as now: quiet from now on, it never holds the run as running past the grace.
        # Stamps a little ahead (writers' clocks and millisecond stamps) are kept as written.
        if run.newest_write > now + CLOCK_SLACK:
            run.newest_write = now
        verdict = run_status(states, min(run.newest_write or run.started or now, now), now, self.grace)
        if verdict.recheck_at is not None:
            self._rechecks[key] = verdict.recheck_at
        for task in run.tasks.values():
            shown = shown_status(task.status, verdict.status)
            if shown is not task.shown:
                task.shown = shown
                changes.tasks.add(task.key)
                changes.runs.add(key)
        if verdict.status is not run.status:
            run.status = verdict.status
            changes.runs.add(key)
            changes.flows = True
        if not run.first_seen:
            times = (t.last_activity for t in run.tasks.values() if t.last_activity)
            run.first_seen = min(times, default=0.0)

    def next_recheck(self) -> float | None:
        """When time alone may next change a run's status: apply (even nothing) then."""
        return min(self._rechecks.values(), default=None)

    # --- queries ---------------------------------------------------------------------------

    def run(self, key: RunKey) -> Run | None:
        flow = self.flows.get(key.flow)
        return flow.runs.get(key.run) if flow else None

    def _find_task(self, key: TaskKey) -> Task | None:
        """The task a card key points at: old-layout keys resolve to the task of their id."""
        run = self.run(key.run_key)
        if run is None:
            return None
        if key.step == LEGACY_STEP and key.task in run.by_id:
            return run.by_id[key.task]
        return run.tasks.get((key.step, key.task))

    def task(self, key: TaskKey) -> Task | None:
        run = self.run(key.run_key)
        return run.tasks.get((key.step, key.task)) if run else None

    def card(self, key: CardKey) -> Card | None:
        task = self._find_task(key.task)
        return task.cards.get(key.name) if task else None

    def all_runs(self) -> Iterator[Run]:
        for flow in self.flows.values():
            yield from flow.runs.values()

    def run_keys(self) -> set[RunKey]:
        return {run.key for run in self.all_runs()}

    def has_flow(self, name: str) -> bool:
        return name in self.flows

    def live_cards(self) -> Iterator[Card]:
        """The cards of running and pending tasks: those that may still be written."""
        for run in self.all_runs():
            for task in run.tasks.values():
                if task.status in (Status.RUNNING, Status.PENDING):
                    yield from task.cards.values()

    def runs(self, flow: str) -> list[Run]:
        """Newest first."""
        found = self.flows.get(flow)
        return sorted(found.runs.values(), key=run_order, reverse=True) if found else []

    def newest_run(self, flow: str | None = None) -> Run | None:
        candidates = [
            run
            for name, f in self.flows.items()
            if flow is None or name == flow
            for run in f.runs.values()
        ]
        return max(candidates, key=run_order, default=None)

    def flow_summaries(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self.flows):
            newest = self.newest_run(name)
            out.append(
                {
                    "flow": name,
                    "runs": len(self.flows[name].runs),
                    "newest": newest.summary() if newest else None,
                }
            )
        return out

    def tasks_in_order(self, run: Run) -> list[Task]:
        step_rank = {step: i for i, step in enumerate(run.steps())}
        return sorted(
            run.tasks.values(),
            key=lambda t: (step_rank.get(t.key.step, len(step_rank)), natural(t.key.task)),
        )

    def run_detail(self, key: RunKey) -> dict[str, Any] | None:
        run = self.run(key)
        if run is None:
            return None
        return {
            "run": run.summary(),
            "steps": run.steps(),
            "tasks": [t.summary() for t in self.tasks_in_order(run)],
        }

    def card_detail(self, key: CardKey) -> dict[str, Any] | None:
        card = self.card(key)
        task = self._find_task(key.task)
        if card is None or task is None:
            return None
        return {
            "flow": key.task.flow,
            "run": key.task.run,
            "step": key.task.step,
            "task": key.task.task,
            "task_status": task.shown.value,
            **card.summary(),
            "attempt": card_attempt(task.facts, key.name.rpartition("-")[2]),
            "has_html": card.version is not None,
            "update": update_dict(card.update),
        }


def arrived_later(new: DataUpdate, read_at: float, card: Card) -> bool:
    """Updates go by arrival: one whose read began later than the shown one's replaces it, and
    one whose read began earlier (a slow read, overtaken) never does. Their `created_on` only
    breaks a tie: it is the writer's clock, and one stamp ahead (or a clock stepped back) would
    otherwise hold back every update after it."""
    old = card.update
    if old is None:
        return True
    if read_at != card.read_at:
        return read_at > card.read_at
    return not (new.created_on and old.created_on and new.created_on < old.created_on)


def merge(old: DataUpdate | None, new: DataUpdate) -> DataUpdate:
    """Newest state per component (`new` arrived later); a new reload token (a new render)
    starts from its own update alone."""
    if old is None or old.token != new.token:
        return new
    return DataUpdate(new.token, new.created_on, {**old.data, **new.data})


def update_dict(update: DataUpdate | None) -> dict[str, Any] | None:
    """As read from disk, each value of `data` is `Encoded` JSON text: send it with
    `feed.update_text`, never through `json.dumps` (which would quote it)."""
    if update is None:
        return None
    return {"token": update.token, "created_on": update.created_on, "data": update.data}
