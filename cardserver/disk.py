"""Reading the datastore: one file into a domain event, or the whole tree into events.

Everything here tolerates what other writers leave behind: half-written JSON, files that vanish
between listing and reading, permissions, folders that are files. A file we cannot use yields
a Problem instead of an event; nothing raises.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from stat import S_ISDIR, S_ISREG
from types import MappingProxyType
from typing import Any

from . import helper
from .config import CARDS_DIR, Limits, Roots
from .events import (
    CardWritten,
    DataUpdate,
    DataWritten,
    Encoded,
    Event,
    MetaFile,
    RunWritten,
    TaskCardsRead,
    TaskMetaRead,
    TaskMetaWritten,
)
from .layout import (
    LEGACY_STEP,
    NOT_RUNS,
    PARAMETERS_STEP,
    CardFileKind,
    MetaKind,
    RunFile,
    RunKey,
    TaskFile,
    TaskKey,
    card_stem,
    cards_runs_dir,
    is_name,
    parse_card_path,
    parse_datastore_path,
    parse_meta_name,
    verdict_file_name,
)
from .status import user_of, verdict_doc


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

# NaN, Infinity and numbers beyond a float become null: Python writers emit them, but they break
# float arithmetic here and strict JSON on the way to the browser.
_DECODER = json.JSONDecoder(
    parse_constant=lambda _: None, parse_float=_finite_float, parse_int=_float_sized_int
)


def read_json(path: str | Path, cap: int, root: str | Path) -> dict[str, Any] | Problem:
    """A JSON object from disk, never more than `cap` bytes read, only from a regular file
    inside `root` (see `read_regular`). A str path spares the scan pathlib."""
    raw = read_regular(path, cap + 1, root)
    if isinstance(raw, Problem):
        return raw
    if len(raw) > cap:
        return Problem(Path(path), f"too large (over {cap} bytes)")
    doc = parse_json_bytes(raw)
    return Problem(Path(path), doc) if isinstance(doc, str) else doc


# --- the one way a file is opened -------------------------------------------------------------
# Anyone can put anything in a datastore: a FIFO blocks `open` forever, a device or a symlink
# leads out of it. Every read and every stat of a card file goes through `open_regular`.

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
_FD_PATHS = Path("/proc/self/fd").is_dir()  # Linux: where an open file really is, in one call


class Refused(OSError):
    """A file the datastore must not make us read; the message says why."""


def open_regular(path: str | Path, root: str | Path) -> tuple[int, os.stat_result]:
    """An open descriptor (and its stat) of the regular file at `path`, reached from `root`
    through real folders only. Opening never blocks (a FIFO opens at once, then is refused), and
    the checks are made on what was opened, so a swap after a check cannot fool them."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        stat = os.fstat(fd)
        if S_ISDIR(stat.st_mode):
            raise IsADirectoryError(21, "is a folder", str(path))
        if not S_ISREG(stat.st_mode):
            raise Refused("not a regular file (a FIFO, device or socket)")
        if not _reached_directly(fd, os.fspath(path), os.fspath(root)):
            raise Refused("reached through a symlink or outside the root")
    except BaseException:
        os.close(fd)
        raise
    return fd, stat


def _reached_directly(fd: int, path: str, root: str) -> bool:
    """The file opened is `path` itself: no folder between `root` and it is a symlink."""
    if not path.startswith(root.rstrip("/") + "/"):
        return False
    rest = path[len(root.rstrip("/")) :]
    real = os.readlink(f"/proc/self/fd/{fd}") if _FD_PATHS else os.path.realpath(path)
    # The root's own real path, cached; asked again only if it seems to have moved.
    return real == _real_root(root) + rest or real == os.path.realpath(root) + rest


@lru_cache(maxsize=16)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def read_regular(path: str | Path, size: int, root: str | Path) -> bytes | Problem:
    """Up to `size` bytes of a regular file inside `root`, in one read (a short read of a
    regular file is its end); a Problem for anything else. Never raises, never blocks."""
    try:
        fd, _ = open_regular(path, root)
    except OSError as error:
        return Problem(Path(path), _reason(error))
    try:
        return os.read(fd, size)
    except OSError as error:
        return Problem(Path(path), _reason(error))
    finally:
        os.close(fd)


def regular_stat(path: str | Path, root: str | Path) -> os.stat_result | Problem:
    """The stat of a file `read_regular` would read; a Problem where it would refuse."""
    try:
        fd, stat = open_regular(path, root)
    except OSError as error:
        return Problem(Path(path), _reason(error))
    os.close(fd)
    return stat


def _reason(error: OSError) -> str:
    if isinstance(error, Refused):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return "vanished before it could be read"
    if isinstance(error, IsADirectoryError):
        return "is a folder"
    if error.errno == errno.ELOOP:
        return "a symlink: not followed"
    return f"unreadable ({error.strerror or error})"


def parse_data_update(doc: dict[str, Any]) -> DataUpdate | None:
    """The update in a data file's JSON, each component encoded back to JSON text here (off
    the event loop: sending it on is then a join, and no depth of nesting can fail later)."""
    token, created, data = doc.get("reload_token"), doc.get("created_on"), doc.get("data")
    if not isinstance(token, str) or not isinstance(data, dict):
        return None
    created_on = float(created) if isinstance(created, int | float) else 0.0
    return DataUpdate(token, created_on, {key: encoded(value) for key, value in data.items()})


def read_data_update(path: Path, limits: Limits, root: str | Path) -> DataUpdate | Problem:
    cap = limits.max_data_bytes
    raw = read_regular(path, cap + 1, root)
    if isinstance(raw, Problem):
        return raw
    if len(raw) > cap:
        return Problem(path, f"too large (over {cap} bytes)")
    # Parsing a big one here would hold the GIL, so stall the server: the helper does it.
    big = len(raw) > helper.BIG_UPDATE
    found = helper.parse_elsewhere(raw) if big else parse_update_bytes(raw)
    return found if isinstance(found, DataUpdate) else Problem(path, found)


def parse_update_bytes(raw: bytes) -> DataUpdate | str:
    """A data update from a data file's bytes, or why not."""
    doc = parse_json_bytes(raw)
    if isinstance(doc, str):
        return doc
    try:
        update = parse_data_update(doc)
    except (ValueError, RecursionError):
        return "nested too deeply"
    return update if update is not None else "not a card data update"


def parse_json_bytes(raw: bytes) -> dict[str, Any] | str:
    """A JSON object, or why not."""
    try:
        # What json.loads does with bytes, with one decoder made once instead of one per call.
        doc = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError):
        return "not valid JSON (half written?)"
    return doc if isinstance(doc, dict) else "not a JSON object"


def encoded(value: Any) -> Encoded:
    return Encoded(json.dumps(value, separators=(",", ":"), allow_nan=False))


def stat_version(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def file_version(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells one content of a file from the next: a rewrite changes one of these."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


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
    stat = regular_stat(path, roots.cards)
    if isinstance(stat, Problem):
        return stat
    if found.kind is CardFileKind.HTML:
        return CardWritten(found.key, legacy, stat.st_mtime, stat.st_size, version_of(stat))
    read_at = time.monotonic()
    update = read_data_update(path, limits, roots.cards)
    if isinstance(update, Problem):
        return update
    return DataWritten(found.key, legacy, stat.st_mtime, update, read_at)


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
    if isinstance(found, TaskFile) and found.attempt is not None:
        verdict = read_verdict(str(path), found.attempt, limits, roots.datastore)
        return verdict if isinstance(verdict, Problem) else TaskMetaWritten(found.key, found.kind, *verdict)
    doc = read_json(path, limits.max_meta_bytes, roots.datastore)
    if isinstance(doc, Problem):
        return doc
    if isinstance(found, RunFile):
        return RunWritten(found.key, epoch_seconds(doc), run_user(doc))
    return TaskMetaWritten(found.key, found.kind, found.ts, slim(doc))


def read_verdict(
    path: str, attempt: int, limits: Limits, root: str | Path
) -> tuple[int, dict[str, Any]] | Problem:
    """A `<attempt>.runtime` file: (when it was written in ms, its doc as `status.record` takes it)."""
    stat = regular_stat(path, root)
    if isinstance(stat, Problem):
        return stat
    doc = read_json(path, limits.max_meta_bytes, root)
    if isinstance(doc, Problem):
        return doc
    verdict = verdict_doc(attempt, doc)
    if verdict is None:
        return Problem(Path(path), "not a runtime verdict")
    return stat.st_mtime_ns // 1_000_000, verdict


FUTURE_SLACK = 86_400.0  # seconds of clock skew allowed; a later time is impossible: ignored
MAX_USER = 80  # characters of a user name shown; a tag may hold anything


def epoch_seconds(doc: dict[str, Any]) -> float | None:
    epoch = doc.get("ts_epoch")
    if not isinstance(epoch, int | float) or epoch / 1000 > time.time() + FUTURE_SLACK:
        return None  # a run from the future would take over "follow the newest run"
    return epoch / 1000


def run_user(doc: dict[str, Any]) -> str | None:
    user = user_of(doc)
    return user if user is None or len(user) <= MAX_USER else user[: MAX_USER - 1] + "…"


def slim(doc: dict[str, Any]) -> dict[str, Any]:
    """Only what status derivation reads: keeps 10,000 tasks' worth of events small."""
    fields = ("value", "tags", "ts_epoch", "system_tags", "user_name", "field_name")
    return {k: doc[k] for k in fields if k in doc}


# --- the whole tree -> events ----------------------------------------------------------------
# Plain strings, not pathlib, and one event per task folder, not one per file: on a 10,000-task
# run, path objects and per-file events were most of the scan's time.


Scanned = tuple[list[Event], list[Problem]]


def scan(roots: Roots, limits: Limits, scope: Scope) -> Scanned:
    """Read both trees once. Card data updates are not read here (see `DataWritten.update`)."""
    problems: list[Problem] = []
    events: list[Event] = list(scan_datastore(roots, limits, scope, problems))
    events.extend(scan_cards(roots, scope))
    return events, problems


def listed(path: str, folders: bool) -> list[str]:
    """Names of the folders (or else the files) in `path`, links not followed (`path` itself
    neither); none if unlistable."""
    if not real_folder(path):
        return []
    try:
        with os.scandir(path) as found:
            entries = list(found)
    except OSError:
        return []
    test = os.DirEntry.is_dir if folders else os.DirEntry.is_file
    try:
        return [entry.name for entry in entries if test(entry, follow_symlinks=False)]
    except OSError:  # the listing gave no type and a stat failed: leave out just that entry
        return [entry.name for entry in entries if _safe_test(test, entry)]


def _safe_test(test: Callable[..., bool], entry: os.DirEntry[str]) -> bool:
    try:
        return test(entry, follow_symlinks=False)
    except OSError:
        return False


def real_folder(path: str) -> bool:
    """`path` is a folder and not a symlink to one: a symlinked `runtime` or `_meta` must not
    lead the scan anywhere. (Between this and the listing a swap could still show other names;
    never other contents: every read proves its own path, see `open_regular`.)"""
    try:
        return S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def subdirs(path: str) -> list[str]:
    """The well-named folders in `path`."""
    return [name for name in listed(path, True) if is_name(name)]


def files(path: str) -> list[str]:
    return listed(path, False)


def chosen(path: str, only: str | None) -> list[str]:
    """`subdirs`, or just the one the scope names: re-reading one run never lists the others."""
    if only is None:
        return subdirs(path)
    try:
        return [only] if is_name(only) and S_ISDIR(os.lstat(f"{path}/{only}").st_mode) else []
    except OSError:
        return []


def datastore_runs(roots: Roots, scope: Scope) -> Iterator[tuple[RunKey, str]]:
    """Each run folder of the status tree within the scope, with its path."""
    top = str(roots.datastore)
    for flow in chosen(top, scope.flow):
        if flow != CARDS_DIR:
            for run in chosen(f"{top}/{flow}", scope.run):
                if run not in NOT_RUNS:
                    yield RunKey(flow, run), f"{top}/{flow}/{run}"


def card_runs(roots: Roots, scope: Scope) -> Iterator[tuple[RunKey, str]]:
    """Each run folder of the cards tree within the scope, with its path."""
    top = str(roots.cards)
    for flow in chosen(top, scope.flow):
        for run in chosen(f"{top}/{cards_runs_dir(flow)}", scope.run):
            yield RunKey(flow, run), f"{top}/{cards_runs_dir(flow)}/{run}"


def run_keys(roots: Roots, scope: Scope) -> set[RunKey]:
    """Every run with a folder in either tree, by listing alone."""
    found = {key for key, _ in datastore_runs(roots, scope)}
    found.update(key for key, _ in card_runs(roots, scope))
    return found


def scan_datastore(
    roots: Roots, limits: Limits, scope: Scope, problems: list[Problem]
) -> Iterator[Event]:
    for key, run_dir in datastore_runs(roots, scope):
        yield from scan_run(key, run_dir, limits, problems, str(roots.datastore))


def scan_run(
    key: RunKey, run_dir: str, limits: Limits, problems: list[Problem], root: str
) -> Iterator[Event]:
    self_doc = read_json(f"{run_dir}/_meta/_self.json", limits.max_meta_bytes, root)
    if isinstance(self_doc, Problem):
        if "vanished" not in self_doc.reason:
            problems.append(self_doc)
    else:
        yield RunWritten(key, epoch_seconds(self_doc), run_user(self_doc))
    flow, run = key.flow, key.run
    for step in subdirs(run_dir):
        if step in ("_meta", PARAMETERS_STEP):
            continue
        for task in subdirs(f"{run_dir}/{step}"):
            if task != "_meta":
                meta_dir = f"{run_dir}/{step}/{task}/_meta"
                found = scan_task_meta(TaskKey(flow, run, step, task), meta_dir, limits, problems, root)
                if found is not None:
                    yield found


NO_DOC: Mapping[str, Any] = MappingProxyType({})
FIRST_ATTEMPT: Mapping[str, Any] = MappingProxyType({"value": "0", "tags": ["attempt_id:0"]})


def scan_task_meta(
    key: TaskKey, meta_dir: str, limits: Limits, problems: list[Problem], root: str
) -> TaskMetaRead | None:
    """The task's status files in one event; None when it has none yet."""
    found: list[tuple[MetaKind, int, str]] = []
    for name in files(meta_dir):
        parsed = parse_meta_name(name)
        if parsed is not None:
            found.append((parsed[0], parsed[1], name))
    kinds = [kind for kind, _, _ in found]
    starts = kinds.count(MetaKind.ATTEMPT)
    read: list[MetaFile] = []
    task_self, verdict = MetaKind.TASK_SELF, MetaKind.ATTEMPT_OK  # once: see python/cpython#93910
    card_info = MetaKind.CARD_INFO
    for kind, ts, name in found:
        if kind is task_self:
            read.append((kind, ts, NO_DOC))  # the run's _self already names the user
        elif starts <= 1 and kind is card_info:
            continue  # one attempt wrote every card: nothing to learn
        elif starts <= 1 and kind is not verdict:
            # One attempt: its number is 0 and the file name says the rest; skip the read.
            read.append((kind, ts, FIRST_ATTEMPT))
        else:
            doc = read_json(f"{meta_dir}/{name}", limits.max_meta_bytes, root)
            if isinstance(doc, Problem):
                problems.append(doc)
            else:
                read.append((kind, ts, slim(doc)))
    if kinds.count(verdict) < starts:  # an attempt without attempt_ok: killed, crashed or running
        read.extend(scan_verdicts(meta_dir.removesuffix("/_meta"), starts, limits, problems, root))
    return TaskMetaRead(key, tuple(read)) if read else None


def scan_verdicts(
    task_dir: str, starts: int, limits: Limits, problems: list[Problem], root: str | Path
) -> list[MetaFile]:
    """The runtime's verdicts on a task's attempts (numbered 0 to starts - 1), where written."""
    found: list[MetaFile] = []
    for attempt in range(starts):
        verdict = read_verdict(f"{task_dir}/{verdict_file_name(attempt)}", attempt, limits, root)
        if isinstance(verdict, Problem):
            if "vanished" not in verdict.reason:  # not written (yet): the usual case
                problems.append(verdict)
        else:
            found.append((MetaKind.VERDICT, *verdict))
    return found


def scan_cards(roots: Roots, scope: Scope) -> Iterator[TaskCardsRead]:
    for key, run_dir in card_runs(roots, scope):
        flow, run = key.flow, key.run
        for step in subdirs(f"{run_dir}/steps"):
            for task in subdirs(f"{run_dir}/steps/{step}/tasks"):
                task_dir = f"{run_dir}/steps/{step}/tasks/{task}"
                found = scan_task_cards(TaskKey(flow, run, step, task), False, task_dir)
                if found is not None:
                    yield found
        for task in subdirs(f"{run_dir}/tasks"):
            task_dir = f"{run_dir}/tasks/{task}"
            found = scan_task_cards(TaskKey(flow, run, LEGACY_STEP, task), True, task_dir)
            if found is not None:
                yield found


def scan_task_cards(task: TaskKey, legacy: bool, task_dir: str) -> TaskCardsRead | None:
    """The card files of one task folder in one event; None when it has none."""
    pages = [
        (name, st.st_mtime, st.st_size, version_of(st))
        for name, st in card_files(f"{task_dir}/cards", CardFileKind.HTML)
    ]
    data = [(name, st.st_mtime) for name, st in card_files(f"{task_dir}/runtime", CardFileKind.DATA)]
    if not (pages or data):
        return None
    return TaskCardsRead(task, legacy, tuple(pages), tuple(data))


def card_files(folder: str, kind: CardFileKind) -> list[tuple[str, os.stat_result]]:
    """(card name, stat) of the card files of that kind in a task's `cards` or `runtime` folder."""
    if not real_folder(folder):
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        stem = card_stem(name, kind)
        if stem is None:
            continue
        try:
            stat = os.lstat(f"{folder}/{name}")
        except OSError:
            continue
        if S_ISREG(stat.st_mode):  # what DirEntry.is_file(follow_symlinks=False) says
            found.append((stem, stat))
    return found
