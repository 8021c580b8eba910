"""A task's status from the files Metaflow keeps in its S3 task folder, where no `_meta` is.
Pure: the caller lists the folder and reads the few small JSON objects this asks for.

`<a>.task_end` and `<a>.DONE.lock` are written in a `finally`, failed attempts included, so
they say an attempt ended, not how. How comes from the local runtime's `<a>.runtime` verdict,
else from the attempt's artifact index `<a>.data.json`: Metaflow stores artifacts by the SHA-1
of their pickled bytes, so `_task_ok` names the pickle of True or of False. Comparing names
tells the outcome without loading any artifact (docs/s3.md).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..layout import MetaKind, parse_attempt_file
from ..status import Status, TaskFacts, record, task_status, verdict_doc

# Metaflow 2.x pickles artifacts with protocol 4; we pickle two constants, never unpickle
TASK_OK_NAMES = {hashlib.sha1(pickle.dumps(value, protocol=4)).hexdigest(): value
                 for value in (True, False)}
READ_KINDS = ("attempt.json", "runtime", "data.json")  # the objects whose bodies status needs


@dataclass(frozen=True, slots=True)
class TaskObject:
    """One object in a task folder: its name, when S3 says it was written, and its parsed JSON
    when it is one of READ_KINDS (None when not read, or not a JSON object)."""

    name: str
    modified: float  # LastModified, seconds since the epoch (1 s resolution)
    doc: Mapping[str, Any] | None = None


def attempt_of(name: str) -> tuple[int, str] | None:
    """(attempt, kind) of a task-folder object, `0.data.json` (the artifact index) included."""
    if name.endswith(".data.json") and name.removesuffix(".data.json").isdigit():
        return int(name.removesuffix(".data.json")), "data.json"
    return parse_attempt_file(name)


def task_ok(doc: Mapping[str, Any] | None) -> bool | None:
    """What an artifact index says of `_task_ok`, by the name its pickle is stored under."""
    objects = doc.get("objects") if doc else None
    name = objects.get("_task_ok") if isinstance(objects, dict) else None
    return TASK_OK_NAMES.get(name) if isinstance(name, str) else None


def facts_from_objects(objects: Iterable[TaskObject]) -> TaskFacts:
    """The task's attempts as `status.TaskFacts`, from its S3 task folder alone."""
    facts = TaskFacts()
    for item in objects:
        found = attempt_of(item.name)
        if found is None:
            continue
        number, kind = found
        attempt = facts.attempt(number)
        if kind == "attempt.json":
            at = item.doc.get("time") if item.doc else None
            attempt.started = at if isinstance(at, int | float) else item.modified
        elif kind == "task_begin" and attempt.started is None:
            attempt.started = item.modified
        elif kind == "DONE.lock":
            attempt.done = item.modified
        elif kind == "data.json" and (ok := task_ok(item.doc)) is not None:
            attempt.ok = ok
        elif kind == "runtime" and item.doc and (doc := verdict_doc(number, item.doc)):
            record(facts, MetaKind.VERDICT, int(item.modified * 1000), doc)
    return facts


def s3_task_status(facts: TaskFacts) -> Status:
    """`status.task_status`, except that an attempt which ended with nothing saying how is
    UNKNOWN (locally its `_meta` would say; here a missing word is not a failure)."""
    if facts.attempts:
        latest = facts.attempts[max(facts.attempts)]
        if latest.done is not None and latest.ok is None and latest.verdict is None:
            return Status.UNKNOWN
    return task_status(facts)
