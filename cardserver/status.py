"""Task and run status from Metaflow's files, without the Metaflow client. Pure.

A task's attempts come from `sysmeta_attempt*` files (started, `attempt_ok` True/False, done)
and from the runtime's verdict on each attempt, `<attempt>.runtime` (`success`, `killed`),
which it writes when it reaps the worker, killed ones included. The newest attempt decides the
task's status, and the verdict is the last word on it. The run's status follows from its tasks'
(`run_status`, the table in the README's "Status, as read from disk").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .layout import MetaKind


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"  # a task the runtime killed (a sibling failed, or the run was interrupted)
    STOPPED = "stopped"  # a run whose runtime killed its tasks and none failed: interrupted
    UNKNOWN = "unknown"  # the runtime went without a word (SIGKILL, a reboot): nothing more will say


# Metaflow's local runtime acts within a second of reaping a worker: it starts a retry or the
# next task, or, when the run failed, kills the others. Nothing running and nothing new for
# this long means it will not act any more. Ten times what a loaded 2-core machine needed.
GRACE_SECONDS = 10.0
# A running task writes nothing of its own until it ends (its card writes, if it refreshes
# one). Started, no verdict and no write anywhere in the run for this long: the processes are
# most likely gone (runtime and workers killed together). Shown "unknown", not "failed": the
# next write makes it running again.
STALE_SECONDS = 30 * 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """`<attempt>.runtime`: what the runtime saw when it reaped the worker."""

    success: bool
    killed: bool
    at: float  # seconds since the epoch: when it was written


@dataclass(slots=True)
class Attempt:
    number: int
    started: float | None = None  # seconds since the epoch
    ok: bool | None = None
    done: float | None = None
    verdict: Verdict | None = None
    # Its end was read from an S3 task folder, where an end with nothing saying how is not a
    # crash (as a `_meta` without attempt_ok is) but unknown: see s3/taskfiles.py.
    remote: bool = False

    @property
    def finished(self) -> bool:
        return self.done is not None or self.ok is not None or self.verdict is not None


@dataclass(slots=True)
class TaskFacts:
    """What the `_meta` folder of one task says, accumulated file by file."""

    created: float | None = None
    user: str | None = None
    attempts: dict[int, Attempt] = field(default_factory=dict)
    card_attempts: dict[str, int] = field(default_factory=dict)  # card uuid -> its attempt

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
_VERDICT, _CARD_INFO = MetaKind.VERDICT, MetaKind.CARD_INFO


def attempt_number(doc: Mapping[str, Any], kind: MetaKind) -> int | None:
    """Which attempt a file speaks of: its `value` (a verdict's is its name's) or its
    `attempt_id:N` tag."""
    if kind is _ATTEMPT or kind is MetaKind.ATTEMPT_DONE or kind is _VERDICT or kind is MetaKind.ENDED:
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


def verdict_doc(attempt: int, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """A `.runtime` file's JSON as `record` takes it (its attempt, from the name, as `value`);
    None when it is not a verdict."""
    success, killed = doc.get("success"), doc.get("killed")
    if not isinstance(success, bool) or not isinstance(killed, bool):
        return None
    return {"value": str(attempt), "success": success, "killed": killed}


def record(facts: TaskFacts, kind: MetaKind, ts_ms: int, doc: Mapping[str, Any]) -> bool:
    """Fold one `_meta` file or verdict into the facts. False when it says nothing usable.
    A verdict's `ts_ms` is when it was written (the file's time)."""
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
    elif kind is _CARD_INFO:
        uuid = doc.get("field_name")
        if not isinstance(uuid, str) or number == 0:
            return False  # attempt 0 is every card's default: the scan skips reading those
        facts.card_attempts[uuid] = number
    elif kind is _VERDICT:
        success, killed = doc.get("success") is True, doc.get("killed") is True
        if not killed and attempt.ok is success:
            return False  # no news: the scan skips these reads, so the live path must too
        attempt.verdict = Verdict(success, killed, ts)
    elif kind is _ATTEMPT_OK:
        attempt.ok = str(doc.get("value")) == "True"
    elif kind is MetaKind.ENDED:
        attempt.done, attempt.remote = ts, True
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
    """The task's own status, from its newest attempt: the runtime's verdict if there is one,
    else what the task itself wrote."""
    if not facts.attempts:
        return Status.PENDING
    latest = facts.attempts[max(facts.attempts)]
    verdict = latest.verdict
    if verdict is not None:
        if verdict.killed:
            return Status.KILLED
        return Status.SUCCEEDED if verdict.success else Status.FAILED
    if latest.ok is True:
        return Status.SUCCEEDED
    if latest.ok is False:
        return Status.FAILED
    if latest.done is not None:  # done without a verdict: Metaflow writes ok first, so a crash
        return Status.UNKNOWN if latest.remote else Status.FAILED
    return Status.RUNNING


def finished_at(facts: TaskFacts) -> float | None:
    if not facts.attempts:
        return None
    latest = facts.attempts[max(facts.attempts)]
    if latest.done is not None:
        return latest.done
    if latest.verdict is not None:
        return latest.verdict.at
    return latest.started if latest.finished else None


def card_attempt(facts: TaskFacts, card_uuid: str) -> int | None:
    """The attempt that wrote a card: its card-info's, else the first. None: no attempt yet, or
    a retried task read from S3 alone, whose folder does not say which attempt wrote a card."""
    if card_uuid in facts.card_attempts:
        return facts.card_attempts[card_uuid]
    if not facts.attempts:
        return None
    remote = any(attempt.remote for attempt in facts.attempts.values())
    return None if remote and len(facts.attempts) > 1 else 0


@dataclass(frozen=True, slots=True)
class TaskState:
    step: str
    status: Status


@dataclass(frozen=True, slots=True)
class RunVerdict:
    """A run's status, and when to look again (a status that time alone can change)."""

    status: Status
    recheck_at: float | None = None


def run_status(
    tasks: Sequence[TaskState], newest_write: float, now: float, grace: float = GRACE_SECONDS
) -> RunVerdict:
    """The run's status from its tasks' (first rule that holds wins); `newest_write` is the
    time of the newest file written in the run (status files, verdicts, cards, data updates)."""
    statuses = {t.status for t in tasks}
    quiet = now - newest_write
    if not statuses:
        return RunVerdict(Status.PENDING)
    if any(t.step == "end" and t.status is Status.SUCCEEDED for t in tasks):
        return RunVerdict(Status.SUCCEEDED)
    if Status.RUNNING in statuses:
        if quiet >= STALE_SECONDS:
            return RunVerdict(Status.UNKNOWN)
        return RunVerdict(Status.RUNNING, newest_write + STALE_SECONDS)
    if Status.KILLED in statuses:  # the runtime kills workers only once the run is over
        return RunVerdict(Status.FAILED if Status.FAILED in statuses else Status.STOPPED)
    if quiet < grace:  # a retry or the next task is on its way, or the run is over
        return RunVerdict(Status.RUNNING, newest_write + grace)
    return RunVerdict(Status.FAILED if Status.FAILED in statuses else Status.UNKNOWN)


def shown_status(task: Status, run: Status) -> Status:
    """A task in the context of its run: one still marked running in a run whose runtime is
    gone may be dead; nobody knows."""
    if run is Status.UNKNOWN and task in (Status.RUNNING, Status.PENDING):
        return Status.UNKNOWN
    return task
