"""The task view's facts from an S3 task folder: attempts, verdicts, log sizes, a traceback.
Pure: the source lists the folder and GETs the few objects named here; log pages and the end of
stderr come in ranges (`logranges`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..taskinfo import AttemptFiles, TaskFolder
from .taskfiles import TaskObject, attempt_of, task_ok


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """An S3 object as the task view reads a file's stat."""

    st_size: int
    st_mtime: float


def task_folder(objects: Iterable[tuple[TaskObject, int]]) -> TaskFolder:
    """(object with its doc when read, size) of each object in the task folder -> the task view's
    facts. `_task_ok` stands in for `_meta`'s attempt_ok; there is no `_meta` in S3."""
    found = TaskFolder()
    for item, size in objects:
        parsed = attempt_of(item.name)
        if parsed is None:
            continue
        number, kind = parsed
        files = found.attempts.setdefault(number, AttemptFiles())
        if kind == "data.json":
            files.attempt_ok = task_ok(item.doc)
            continue
        files.stats[kind] = ObjectStat(size, item.modified)
        if kind == "attempt.json" and item.doc and isinstance(item.doc.get("time"), int | float):
            files.started = float(item.doc["time"])
        elif kind == "runtime" and item.doc is not None:
            files.verdict = dict(item.doc)
    return found


def latest_log(names: Iterable[str], stream: str) -> int | None:
    """The latest attempt with a log of `stream`, from the folder's object names."""
    found = [number for name in names if (parsed := attempt_of(name)) and parsed[1] == f"runtime_{stream}.log"
             for number in (parsed[0],)]
    return max(found, default=None)
