"""Reading the datastore: one file into a domain event, or the whole tree into events.

Everything here tolerates what other writers leave behind: half-written JSON, files that vanish
between listing and reading, permissions, folders that are files. A file we cannot use yields
a Problem instead of an event; nothing raises.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .config import CARDS_DIR, Limits, Roots
from .events import (
    CardWritten,
    DataUpdate,
    DataWritten,
    Event,
    RunWritten,
    TaskMetaWritten,
)
from .layout import (
    PARAMETERS_STEP,
    CardFileKind,
    CardKey,
    MetaKind,
    RunFile,
    RunKey,
    TaskKey,
    is_name,
    parse_card_parts,
    parse_card_path,
    parse_datastore_path,
    parse_meta_name,
)
from .status import user_of


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a file could not be used; logged once per (path, reason)."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class Scope:
    """`--flow` / `--run-id`: what the server looks at. None means everything."""

    flow: str | None = None
    run: str | None = None

    def wants(self, flow: str, run: str | None = None) -> bool:
        if self.flow is not None and flow != self.flow:
            return False
        return self.run is None or run is None or run == self.run


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _float_sized_int(text: str) -> int | None:
    value = int(text)
    return value if abs(value) <= _FLOAT_MAX else None


_FLOAT_MAX = int(1.7976931348623157e308)


def read_json(path: Path, cap: int) -> dict[str, Any] | Problem:
    """A JSON object from disk, never more than `cap` bytes read."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(cap + 1)
    except FileNotFoundError:
        return Problem(path, "vanished before it could be read")
    except IsADirectoryError:
        return Problem(path, "is a folder")
    except OSError as error:
        return Problem(path, f"unreadable ({error.strerror or error})")
    if len(raw) > cap:
        return Problem(path, f"too large (over {cap} bytes)")
    try:
        # NaN, Infinity and numbers beyond a float become null: Python writers emit them, but
        # they break float arithmetic here and strict JSON on the way to the browser.
        doc = json.loads(
            raw,
            parse_constant=lambda _: None,
            parse_float=_finite_float,
            parse_int=_float_sized_int,
        )
    except (ValueError, RecursionError):
        return Problem(path, "not valid JSON (half written?)")
    if not isinstance(doc, dict):
        return Problem(path, "not a JSON object")
    return doc


def parse_data_update(doc: dict[str, Any]) -> DataUpdate | None:
    token, created, data = doc.get("reload_token"), doc.get("created_on"), doc.get("data")
    if not isinstance(token, str) or not isinstance(data, dict):
        return None
    created_on = float(created) if isinstance(created, int | float) else 0.0
    return DataUpdate(token, created_on, data)


def read_data_update(path: Path, limits: Limits) -> DataUpdate | Problem:
    doc = read_json(path, limits.max_data_bytes)
    if isinstance(doc, Problem):
        return doc
    update = parse_data_update(doc)
    return update if update is not None else Problem(path, "not a card data update")


def stat_version(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def version_of(stat: os.stat_result) -> str:
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


# --- one changed file -> one event -----------------------------------------------------------


def card_event(roots: Roots, path: Path, limits: Limits, scope: Scope) -> Event | Problem | None:
    """A changed file under the cards root; None when it is not a card file we care for."""
    try:
        rel = PurePosixPath(path.relative_to(roots.cards).as_posix())
    except ValueError:
        return None
    found = parse_card_path(rel)
    if found is None or not scope.wants(found.key.task.flow, found.key.task.run):
        return None
    legacy = found.legacy
    if found.kind is CardFileKind.HTML:
        return html_event(found.key, legacy, path)
    stat = stat_version(path)
    if stat is None:
        return Problem(path, "vanished before it could be read")
    update = read_data_update(path, limits)
    if isinstance(update, Problem):
        return update
    return DataWritten(found.key, legacy, stat.st_mtime, update)


def html_event(key: CardKey, legacy: bool, path: Path) -> CardWritten | Problem:
    stat = stat_version(path)
    if stat is None:
        return Problem(path, "vanished before it could be read")
    return CardWritten(key, legacy, stat.st_mtime, stat.st_size, version_of(stat))


def datastore_event(roots: Roots, path: Path, limits: Limits, scope: Scope) -> Event | Problem | None:
    """A changed file under the datastore root; None when it is not a status file."""
    try:
        rel = PurePosixPath(path.relative_to(roots.datastore).as_posix())
    except ValueError:
        return None
    if rel.parts[:1] == (CARDS_DIR,):
        return None
    found = parse_datastore_path(rel)
    if found is None or not scope.wants(found.key.flow, found.key.run):
        return None
    doc = read_json(path, limits.max_meta_bytes)
    if isinstance(doc, Problem):
        return doc
    if isinstance(found, RunFile):
        return RunWritten(found.key, epoch_seconds(doc), user_of(doc))
    return TaskMetaWritten(found.key, found.kind, found.ts, slim(doc))


def epoch_seconds(doc: dict[str, Any]) -> float | None:
    epoch = doc.get("ts_epoch")
    return epoch / 1000 if isinstance(epoch, int | float) else None


def slim(doc: dict[str, Any]) -> dict[str, Any]:
    """Only what status derivation reads: keeps 10,000 tasks' worth of events small."""
    return {k: doc[k] for k in ("value", "tags", "ts_epoch", "system_tags", "user_name") if k in doc}


# --- the whole tree -> events ----------------------------------------------------------------


def subdirs(path: str | Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        yield entry
                except OSError:
                    continue
    except OSError:
        return


def files(path: str | Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        yield entry
                except OSError:
                    continue
    except OSError:
        return


def scan(roots: Roots, limits: Limits, scope: Scope) -> tuple[list[Event], list[Problem]]:
    """Read both trees once. Card data updates are not read here (see `DataWritten.update`)."""
    events: list[Event] = []
    problems: list[Problem] = []
    for event in scan_datastore(roots, limits, scope, problems):
        events.append(event)
    events.extend(scan_cards(roots, scope))
    return events, problems


def scan_cards(roots: Roots, scope: Scope) -> Iterator[Event]:
    # Plain strings, not pathlib: on a 10,000-task run pathlib was most of the scan's CPU.
    for flow in subdirs(roots.cards):
        if not is_name(flow.name) or not scope.wants(flow.name):
            continue
        for run in subdirs(os.path.join(flow.path, "runs")):
            if not scope.wants(flow.name, run.name):
                continue
            for step in subdirs(os.path.join(run.path, "steps")):
                for task in subdirs(os.path.join(step.path, "tasks")):
                    where = (flow.name, "runs", run.name, "steps", step.name, "tasks", task.name)
                    yield from scan_task_cards(task.path, where)
            for task in subdirs(os.path.join(run.path, "tasks")):
                yield from scan_task_cards(task.path, (flow.name, "runs", run.name, "tasks", task.name))


def scan_task_cards(task_dir: str, where: tuple[str, ...]) -> Iterator[Event]:
    """`where`: the task folder's path parts below the cards root."""
    for folder in ("cards", "runtime"):
        for entry in files(os.path.join(task_dir, folder)):
            found = parse_card_parts((*where, folder, entry.name))
            if found is None:
                continue
            legacy = found.legacy
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if found.kind is CardFileKind.HTML:
                yield CardWritten(found.key, legacy, stat.st_mtime, stat.st_size, version_of(stat))
            else:
                yield DataWritten(found.key, legacy, stat.st_mtime, None)


def scan_datastore(
    roots: Roots, limits: Limits, scope: Scope, problems: list[Problem]
) -> Iterator[Event]:
    for flow in subdirs(roots.datastore):
        if flow.name == CARDS_DIR or not is_name(flow.name) or not scope.wants(flow.name):
            continue
        for run in subdirs(flow.path):
            if run.name in ("data", "_meta") or not scope.wants(flow.name, run.name):
                continue
            yield from scan_run(roots, RunKey(flow.name, run.name), run.path, limits, problems)


def scan_run(
    roots: Roots, key: RunKey, run_dir: str, limits: Limits, problems: list[Problem]
) -> Iterator[Event]:
    self_doc = read_json(Path(run_dir, "_meta", "_self.json"), limits.max_meta_bytes)
    if isinstance(self_doc, Problem):
        if "vanished" not in self_doc.reason:
            problems.append(self_doc)
    else:
        yield RunWritten(key, epoch_seconds(self_doc), user_of(self_doc))
    for step in subdirs(run_dir):
        if step.name in ("_meta", PARAMETERS_STEP) or not is_name(step.name):
            continue
        for task in subdirs(step.path):
            if task.name == "_meta" or not is_name(task.name):
                continue
            task_key = TaskKey(key.flow, key.run, step.name, task.name)
            yield from scan_task_meta(task_key, os.path.join(task.path, "_meta"), limits, problems)


def scan_task_meta(
    key: TaskKey, meta_dir: str | Path, limits: Limits, problems: list[Problem]
) -> Iterator[Event]:
    found: list[tuple[MetaKind, int, str]] = []
    for entry in files(meta_dir):
        parsed = parse_meta_name(entry.name)
        if parsed is not None:
            found.append((parsed[0], parsed[1], entry.path))
    starts = sum(1 for kind, _, _ in found if kind is MetaKind.ATTEMPT)
    for kind, ts, path in found:
        if kind is MetaKind.TASK_SELF:
            yield TaskMetaWritten(key, kind, ts, {})  # the run's _self already names the user
            continue
        if starts <= 1 and kind is not MetaKind.ATTEMPT_OK:
            # One attempt: its number is 0 and the file name says the rest; skip the read.
            yield TaskMetaWritten(key, kind, ts, {"value": "0", "tags": ["attempt_id:0"]})
            continue
        doc = read_json(Path(path), limits.max_meta_bytes)
        if isinstance(doc, Problem):
            problems.append(doc)
            continue
        yield TaskMetaWritten(key, kind, ts, slim(doc))
