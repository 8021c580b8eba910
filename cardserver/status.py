"""Task and run status from Metaflow's `_meta` files, without the Metaflow client. Pure.

A task's attempts come from `sysmeta_attempt*` files: started, `attempt_ok` True/False, done.
The newest attempt decides the task's status; an older attempt that never finished was killed.
A run succeeded when its `end` task did. It failed when a task failed and every task still
marked running has been silent since that failure (Metaflow kills the other workers, and a
killed task never writes `attempt-done`): those tasks are shown as killed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .layout import MetaKind


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"


@dataclass(slots=True)
class Attempt:
    number: int
    started: float | None = None  # seconds since the epoch
    ok: bool | None = None
    done: float | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None or self.ok is not None


@dataclass(slots=True)
class TaskFacts:
    """What the `_meta` folder of one task says, accumulated file by file."""

    created: float | None = None
    user: str | None = None
    attempts: dict[int, Attempt] = field(default_factory=dict)

    def attempt(self, number: int) -> Attempt:
        found = self.attempts.get(number)  # not setdefault: that builds an Attempt every time
        if found is None:
            found = self.attempts[number] = Attempt(number)
        return found


def _is_attempt(text: str) -> bool:
    """ASCII digits, at most 9: str.isdigit() alone admits "²" (int() then raises) and 5,000 digits."""
    return text.isascii() and text.isdigit() and len(text) <= 9


def _tags(doc: Mapping[str, Any], field: str) -> list[Any]:
    tags = doc.get(field)
    return tags if isinstance(tags, list) else []


# The members as plain names for what runs once per status file: on Python 3.11 each
# `MetaKind.X` costs 0.1 µs (python/cpython#93910), as much as the rest of a check.
_TASK_SELF, _ATTEMPT, _ATTEMPT_OK = MetaKind.TASK_SELF, MetaKind.ATTEMPT, MetaKind.ATTEMPT_OK


def attempt_number(doc: Mapping[str, Any], kind: MetaKind) -> int | None:
    """Which attempt a sysmeta file speaks of: its `value` or its `attempt_id:N` tag."""
    if kind is _ATTEMPT or kind is MetaKind.ATTEMPT_DONE:
        value = doc.get("value")
        if isinstance(value, str | int) and _is_attempt(str(value)):
            return int(value)
    for tag in _tags(doc, "tags"):
        if isinstance(tag, str) and tag.startswith("attempt_id:") and _is_attempt(tag[11:]):
            return int(tag[11:])
    return None


def user_of(doc: Mapping[str, Any]) -> str | None:
    for tag in _tags(doc, "system_tags"):
        if isinstance(tag, str) and tag.startswith("user:"):
            return tag[5:]
    name = doc.get("user_name")
    return name if isinstance(name, str) else None


def record(facts: TaskFacts, kind: MetaKind, ts_ms: int, doc: Mapping[str, Any]) -> bool:
    """Fold one `_meta` file into the facts. False when the file says nothing usable."""
    if kind is _TASK_SELF:
        epoch = doc.get("ts_epoch")
        facts.created = epoch / 1000 if isinstance(epoch, int | float) else None
        facts.user = user_of(doc)
        return True
    number = attempt_number(doc, kind)
    if number is None:
        return False
    attempt = facts.attempt(number)
    ts = ts_ms / 1000
    if kind is _ATTEMPT:
        attempt.started = ts
    elif kind is _ATTEMPT_OK:
        attempt.ok = str(doc.get("value")) == "True"
    else:
        attempt.done = ts
    return True


def record_all(facts: TaskFacts, files: Iterable[tuple[MetaKind, int, Mapping[str, Any]]]) -> int | None:
    """`record` each (kind, ts, doc) in turn. The newest ts of a file that said something, other
    than `_self.json`: the task's activity, as the files' own times tell it."""
    newest: int | None = None
    for kind, ts_ms, doc in files:
        if record(facts, kind, ts_ms, doc) and kind is not _TASK_SELF:
            newest = ts_ms if newest is None or ts_ms > newest else newest
    return newest


def task_status(facts: TaskFacts) -> Status:
    if not facts.attempts:
        return Status.PENDING
    latest = facts.attempts[max(facts.attempts)]
    if latest.ok is True:
        return Status.SUCCEEDED
    if latest.ok is False:
        return Status.FAILED
    if latest.done is not None:  # done without a verdict: Metaflow writes ok first, so a crash
        return Status.FAILED
    return Status.RUNNING


def finished_at(facts: TaskFacts) -> float | None:
    if not facts.attempts:
        return None
    latest = facts.attempts[max(facts.attempts)]
    return latest.done if latest.done is not None else (latest.started if latest.finished else None)


@dataclass(frozen=True, slots=True)
class TaskState:
    step: str
    status: Status
    last_activity: float  # newest timestamp seen for the task: status file, card, data update
    finished: float | None


def failure_time(tasks: Iterable[TaskState]) -> float | None:
    times = [t.finished or t.last_activity for t in tasks if t.status is Status.FAILED]
    return max(times) if times else None


def shown_status(task: TaskState, failed_at: float | None) -> Status:
    """A task still marked running but silent since the run failed was killed."""
    if task.status is Status.RUNNING and failed_at is not None and task.last_activity <= failed_at:
        return Status.KILLED
    return task.status


def run_status(tasks: Iterable[TaskState]) -> Status:
    states = list(tasks)
    if not states:
        return Status.PENDING
    if any(t.step == "end" and t.status is Status.SUCCEEDED for t in states):
        return Status.SUCCEEDED
    failed_at = failure_time(states)
    if failed_at is not None and all(
        shown_status(t, failed_at) is not Status.RUNNING for t in states
    ):
        return Status.FAILED
    return Status.RUNNING
