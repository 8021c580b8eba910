"""One task's details, read from its folder when someone looks (never in the index's hot
path): each attempt's start, end and verdict, its log sizes, the task's metadata, which
attempt each card belongs to, the traceback of a failed attempt; and a page of a log.

The facts (DESIGN.md §2): `<a>.attempt.json` holds the attempt's start `time`; `<a>.task_end`
is written when the task process ends; `<a>.runtime` is the runtime's verdict
(`return_code`, `killed`, `success`), also for workers it killed; `_meta/_self.json` holds the
tags; `_meta/sysmeta_<field>_<ts>.json` the user, versions, `attempt_ok` per attempt, and a
`card-info` per card (field = the card's uuid, `attempt_id:N` in its tags).

A folder can hold any number of attempts (a hostile one, thousands): only the newest
`SHOWN_ATTEMPTS` are read and shown, with the count of earlier ones, and only the latest failed
attempt's stderr is read for a traceback. The cost of a read is bounded whatever the folder holds.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import disk, logs
from .layout import LOG_STREAMS, TaskKey, log_file_name, parse_attempt_file, parse_sysmeta_name, task_dir

MAX_ENTRIES = 10_000  # a task folder holds a few dozen files: never list more than this
# Metaflow makes at most 6 attempts (its MAX_ATTEMPTS; a config may raise it, to 99 at most).
SHOWN_ATTEMPTS = 16
MAX_CARD_INFOS = 64  # a task has a few cards, each with one card-info per attempt
METADATA_FIELDS = ("user", "python_version", "metaflow_version", "runtime", "script-name", "ds-type")
_CARD_UUID = re.compile(r"[0-9a-f]{32}")  # a card-info field is the card's uuid
A = TypeVar("A")


class FileStat(Protocol):
    """What the task view needs of a file: an `os.stat_result`, or an S3 object's facts."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime(self) -> float: ...


@dataclass(slots=True)
class AttemptFiles:
    """What one attempt left in the task folder."""

    stats: dict[str, FileStat] = field(default_factory=dict)  # by kind: "runtime", ...
    started: float | None = None
    verdict: dict[str, Any] | None = None  # the runtime's `<a>.runtime`
    attempt_ok: bool | None = None  # `_meta` attempt_ok, when the runtime wrote no verdict


@dataclass(slots=True)
class TaskFolder:
    attempts: dict[int, AttemptFiles] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    card_attempts: dict[str, int] = field(default_factory=dict)  # card uuid -> attempt
    traceback: dict[str, Any] | None = None
    earlier_attempts: int = 0  # attempts older than those in `attempts`, left unread


def folder_of(datastore: Path, key: TaskKey) -> Path | None:
    """The task's folder, proven inside the datastore (no `..`, no symlink out). Its files are
    read with `disk.open_regular`, which checks again on each file it opens."""
    candidate = datastore / task_dir(key)
    real = candidate.resolve()
    inside = real.is_relative_to(datastore.resolve()) and real == datastore.resolve() / task_dir(key)
    return candidate if inside and real.is_dir() else None


def read_task(datastore: Path, key: TaskKey, cap: int) -> TaskFolder | None:
    """Everything the task view shows about a task; None when its folder does not exist."""
    folder = folder_of(datastore, key)
    if folder is None:
        return None
    found = TaskFolder()
    listed: dict[int, list[tuple[str, str]]] = {}  # attempt -> (kind, name) of each of its files
    for name in file_names(folder):
        parsed = parse_attempt_file(name)
        if parsed is not None:
            listed.setdefault(parsed[0], []).append((parsed[1], name))
    shown, earlier = newest_attempts(listed)
    found.earlier_attempts = len(earlier)
    for number, named in shown.items():  # only the attempts shown cost a stat
        found.attempts[number] = AttemptFiles(stats=stats(folder, named))
    for number, files in found.attempts.items():
        read_attempt(folder, number, files, cap, datastore)
    if not (folder / "_meta").is_symlink():  # a link could point anywhere outside the task
        read_meta(folder / "_meta", found, cap, datastore)
    found.traceback = failed_traceback(folder, found.attempts, datastore)
    return found


def newest_attempts(attempts: dict[int, A]) -> tuple[dict[int, A], list[int]]:
    """The newest `SHOWN_ATTEMPTS` attempts, in order, and the numbers of the earlier ones."""
    numbers = sorted(attempts)
    cut = max(0, len(numbers) - SHOWN_ATTEMPTS)
    return {n: attempts[n] for n in numbers[cut:]}, numbers[:cut]


def newest_names(found: list[tuple[int, str]], count: int) -> list[str]:
    """The `count` newest `_meta` files, by the time in their names."""
    return [name for _, name in sorted(found)[-count:]]


def stats(folder: Path, named: list[tuple[str, str]]) -> dict[str, FileStat]:
    """The stats of one attempt's files by kind; a file that vanished since it was listed is
    left out."""
    found: dict[str, FileStat] = {}
    for kind, name in named:
        with suppress(OSError):
            found[kind] = os.stat(folder / name, follow_symlinks=False)
    return found


def file_names(folder: Path) -> list[str]:
    """The names of a folder's regular files, at most MAX_ENTRIES (the listing's file types: no
    stat per file)."""
    out: list[str] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if len(out) >= MAX_ENTRIES:
                    break
                with suppress(OSError):  # vanished while listed
                    if entry.is_file(follow_symlinks=False):
                        out.append(entry.name)
    except OSError:
        return []
    return out


def read_attempt(folder: Path, number: int, files: AttemptFiles, cap: int, root: Path) -> None:
    if "attempt.json" in files.stats:
        doc = disk.read_json(folder / f"{number}.attempt.json", cap, root)
        if isinstance(doc, dict) and isinstance(doc.get("time"), int | float):
            files.started = float(doc["time"])
    if "runtime" in files.stats:
        doc = disk.read_json(folder / f"{number}.runtime", cap, root)
        if isinstance(doc, dict):
            files.verdict = doc


def read_meta(meta: Path, found: TaskFolder, cap: int, root: Path) -> None:
    """Tags from `_self.json`; the newest value of each metadata field; attempt_ok per attempt;
    the attempt of each card."""
    newest: dict[str, tuple[int, str]] = {}
    oks: list[tuple[int, str]] = []
    infos: list[tuple[int, str]] = []
    for name in file_names(meta):
        parsed = parse_sysmeta_name(name)
        if name == "_self.json":
            read_tags(meta / name, found, cap, root)
        elif parsed is None:
            continue
        elif parsed[0] == "attempt_ok":
            oks.append((parsed[1], name))
        elif parsed[0] in METADATA_FIELDS:
            if parsed[1] > newest.get(parsed[0], (-1, ""))[0]:
                newest[parsed[0]] = (parsed[1], name)
        elif _CARD_UUID.fullmatch(parsed[0]):
            infos.append((parsed[1], name))
    for field_name, (_, name) in newest.items():
        doc = disk.read_json(meta / name, cap, root)
        if isinstance(doc, dict):
            found.metadata[field_name.replace("-", "_")] = doc.get("value")
    for name in newest_names(infos, MAX_CARD_INFOS):
        doc = disk.read_json(meta / name, cap, root)
        if isinstance(doc, dict) and doc.get("type") == "card-info":
            card_info(doc, found)
    for name in newest_names(oks, SHOWN_ATTEMPTS):  # the newest attempts wrote the newest
        doc = disk.read_json(meta / name, cap, root)
        attempt = attempt_tag(doc) if isinstance(doc, dict) else None
        if isinstance(doc, dict) and attempt in found.attempts:
            found.attempts[attempt].attempt_ok = doc.get("value") == "True"


def read_tags(path: Path, found: TaskFolder, cap: int, root: Path) -> None:
    doc = disk.read_json(path, cap, root)
    if isinstance(doc, dict):
        found.metadata["tags"] = strings(doc.get("tags"))
        found.metadata["system_tags"] = strings(doc.get("system_tags"))


def card_info(doc: dict[str, Any], found: TaskFolder) -> None:
    attempt = attempt_tag(doc)
    try:
        value = json.loads(doc.get("value") or "{}")
    except (TypeError, ValueError):
        return
    uuid = value.get("card_uuid") if isinstance(value, dict) else None
    if isinstance(uuid, str) and attempt is not None:
        found.card_attempts[uuid] = attempt


def attempt_tag(doc: dict[str, Any]) -> int | None:
    """N of the `attempt_id:N` tag Metaflow puts on each metadata entry."""
    for tag in strings(doc.get("tags")):
        if tag.startswith("attempt_id:") and tag[11:].isdigit():
            return int(tag[11:])
    return None


def strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def failed_log(attempts: dict[int, AttemptFiles]) -> int | None:
    """The latest failed attempt with a stderr log: where a traceback is looked for (one log,
    however many attempts failed)."""
    for number in sorted(attempts, reverse=True):
        files = attempts[number]
        if verdict(files, latest=False) == "failed" and "runtime_stderr.log" in files.stats:
            return number
    return None


def failed_traceback(folder: Path, attempts: dict[int, AttemptFiles], root: Path) -> dict[str, Any] | None:
    """The traceback of the latest failed attempt, if it printed one."""
    number = failed_log(attempts)
    if number is None:
        return None
    try:
        found = logs.traceback_of(folder / log_file_name(number, "stderr"), root)
    except OSError:
        return None
    return traceback_doc(number, found)


def traceback_doc(number: int, lines: list[logs.LogLine] | None) -> dict[str, Any] | None:
    """A traceback's lines (from the end of attempt `number`'s stderr), as the task view shows it."""
    if not lines:
        return None
    return {"attempt": number, "exception": lines[-1].text, "lines": [line.as_dict() for line in lines]}


# --- what the API and the task topic show -------------------------------------------------


def verdict(files: AttemptFiles, latest: bool) -> str:
    """succeeded | failed | killed from the runtime's verdict, else from `_meta`; an attempt
    that has not ended is running if it is the latest, and was killed if a retry followed."""
    doc = files.verdict
    if doc is not None:
        if doc.get("success") is True:
            return "succeeded"
        return "killed" if doc.get("killed") is True else "failed"
    if files.attempt_ok is not None:
        return "succeeded" if files.attempt_ok else "failed"
    if "task_end" in files.stats or "DONE.lock" in files.stats:
        return "finished"  # ended, and no verdict was recorded where we can read it
    return "running" if latest else "killed"


def finished_at(files: AttemptFiles) -> float | None:
    for kind in ("task_end", "DONE.lock", "runtime"):
        if kind in files.stats:
            return files.stats[kind].st_mtime
    return None


def attempt_summary(number: int, files: AttemptFiles, latest: bool,
                    cards: list[dict[str, Any]]) -> dict[str, Any]:
    started = files.started
    if started is None and "task_begin" in files.stats:
        started = files.stats["task_begin"].st_mtime
    finished = finished_at(files)
    doc = files.verdict or {}
    code = doc.get("return_code")
    return {
        "attempt": number,
        "started": started,
        "finished": finished,
        "duration": finished - started if finished is not None and started is not None else None,
        "verdict": verdict(files, latest),
        "return_code": code if isinstance(code, int) else None,
        "killed": doc.get("killed") is True,
        "logs": {s: log_size(files, s) for s in LOG_STREAMS},
        "cards": cards,
    }


def log_size(files: AttemptFiles, stream: str) -> int | None:
    stat = files.stats.get(f"runtime_{stream}.log")
    return stat.st_size if stat is not None else None


def task_detail(key: TaskKey, found: TaskFolder | None, cards: list[dict[str, Any]],
                shown_status: str | None) -> dict[str, Any]:
    """The task view's whole state. `cards` are the index's card summaries for the task;
    `shown_status` the index's status of it (None when the index does not know it)."""
    head = {"flow": key.flow, "run": key.run, "step": key.step, "task": key.task}
    if found is None:
        return {**head, "exists": shown_status is not None, "status": shown_status, "attempts": [],
                "earlier_attempts": 0, "metadata": {}, "traceback": None, "cards": cards}
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for card in cards:
        attempt = found.card_attempts.get(str(card.get("name", "")).rsplit("-", 1)[-1])
        card["attempt"] = attempt
        by_attempt.setdefault(attempt if attempt is not None else -1, []).append(card)
    shown, earlier = newest_attempts(found.attempts)  # a source that read them all shows as many
    latest = max(shown, default=None)
    attempts = [attempt_summary(n, shown[n], n == latest, by_attempt.get(n, [])) for n in shown]
    status = attempts[-1]["verdict"] if attempts else shown_status
    if status == "running" and shown_status == "killed":  # the index saw the whole run end
        status = attempts[-1]["verdict"] = "killed"
    return {**head, "exists": True, "status": status, "attempts": attempts,
            "earlier_attempts": found.earlier_attempts + len(earlier),
            "metadata": found.metadata, "traceback": found.traceback, "cards": cards}


# --- a page of a log ------------------------------------------------------------------------


def read_page(datastore: Path, key: TaskKey, stream: str, attempt: int | None, lines: int,
              before: int | None, since: int | None) -> tuple[int, logs.Page] | None:
    """A page of one attempt's log (the latest attempt that has one, by default)."""
    folder = folder_of(datastore, key)
    if folder is None:
        return None
    if attempt is None:
        attempt = latest_log(folder, stream)
        if attempt is None:
            return None
    path = folder / log_file_name(attempt, stream)
    try:
        if since is not None:
            return attempt, logs.after(path, datastore, since, lines)
        return attempt, logs.tail(path, datastore, lines, before)
    except OSError:  # missing, vanished, a folder, a FIFO, a symlink: nothing to show
        return None


def latest_log(folder: Path, stream: str) -> int | None:
    kind = f"runtime_{stream}.log"
    found = [parsed[0] for name in file_names(folder)
             if (parsed := parse_attempt_file(name)) is not None and parsed[1] == kind]
    return max(found, default=None)
