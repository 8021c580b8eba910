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

from ..events import MetaFile
from ..layout import MetaKind, parse_attempt_file
from ..status import Status, TaskFacts, record_all, task_status, verdict_doc

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


def meta_files(objects: Iterable[TaskObject]) -> tuple[MetaFile, ...]:
    """The task folder's objects as the status files the index records (`status.record`): an
    attempt's start, its end (`ENDED`: not how), `_task_ok` as attempt_ok, the verdict."""
    found: list[MetaFile] = []
    begun: dict[int, float] = {}  # task_begin times, for attempts without attempt.json
    started: set[int] = set()
    for item in objects:
        parsed = attempt_of(item.name)
        if parsed is None:
            continue
        number, kind = parsed
        value = {"value": str(number), "tags": [f"attempt_id:{number}"]}
        ms = int(item.modified * 1000)
        if kind == "attempt.json":
            at = item.doc.get("time") if item.doc else None
            found.append((MetaKind.ATTEMPT, int(at * 1000) if isinstance(at, int | float) else ms, value))
            started.add(number)
        elif kind == "task_begin":
            begun[number] = item.modified
        elif kind == "DONE.lock":
            found.append((MetaKind.ENDED, ms, value))
        elif kind == "data.json" and (ok := task_ok(item.doc)) is not None:
            found.append((MetaKind.ATTEMPT_OK, ms, {**value, "value": str(ok)}))
        elif kind == "runtime" and item.doc and (doc := verdict_doc(number, item.doc)):
            found.append((MetaKind.VERDICT, ms, doc))
    found += [(MetaKind.ATTEMPT, int(at * 1000), {"value": str(n)})
              for n, at in begun.items() if n not in started]
    # Starts first: a verdict recorded before its attempt's ok would be taken for news
    order = {MetaKind.ATTEMPT: 0, MetaKind.ATTEMPT_OK: 1, MetaKind.ENDED: 2, MetaKind.VERDICT: 3}
    return tuple(sorted(found, key=lambda file: order.get(file[0], 4)))


def facts_from_objects(objects: Iterable[TaskObject]) -> TaskFacts:
    """The task's attempts as `status.TaskFacts`, from its S3 task folder alone."""
    facts = TaskFacts()
    record_all(facts, meta_files(objects))
    return facts


def s3_task_status(facts: TaskFacts) -> Status:
    """`status.task_status`: an attempt that ended with nothing saying how is UNKNOWN there
    (locally its `_meta` would say; here a missing word is not a failure)."""
    return task_status(facts)
