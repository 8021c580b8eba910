"""Metaflow's datastore path grammar, both ways: paths <-> keys. Pure: no I/O.

Card files live under the cards root:
    <Flow>/runs/<run>/steps/<step>/tasks/<task>/cards/<type>[-<id>]-<uuid>.html
    <Flow>/runs/<run>/steps/<step>/tasks/<task>/runtime/<type>[-<id>]-<uuid>.data.json
Cards written before mid-2022 have no `steps/<step>/` level; their step is LEGACY_STEP.

Status files live under the datastore root:
    <Flow>/<run>/_meta/_self.json                     the run exists
    <Flow>/<run>/<step>/<task>/_meta/_self.json       the task exists
    <Flow>/<run>/<step>/<task>/_meta/sysmeta_attempt[_ok|-done]_<ts>.json
    <Flow>/<run>/<step>/<task>/_meta/sysmeta_<card-uuid>_<ts>.json   a card's attempt (card-info)
    <Flow>/<run>/<step>/<task>/<attempt>.runtime       the runtime's verdict on an attempt
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

LEGACY_STEP = "_"
PARAMETERS_STEP = "_parameters"  # Metaflow's pseudo step for run parameters: not a user step
CARD_SUFFIX = ".html"
DATA_SUFFIX = ".data.json"

# Flow, run, step and task names: what Metaflow produces, and nothing a path could abuse.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
# Possessive (`{m,n}+`): no part holds a "-", so giving characters back never helps, and
# not trying makes a match three times faster (the scan meets one per card file).
_CARD_NAME = re.compile(
    r"(?P<type>[A-Za-z0-9_]{1,100}+)(?:-(?P<id>[A-Za-z0-9_]{1,100}+))?-(?P<uuid>[A-Za-z0-9]{1,64}+)"
)
_META_NAME = re.compile(
    r"sysmeta_(?:(?P<field>attempt|attempt_ok|attempt-done)|(?P<card>[0-9a-f]{32}))_(?P<ts>\d{1,20})\.json"
)
_VERDICT_NAME = re.compile(r"(?P<attempt>\d{1,9})\.runtime")


def is_name(text: str) -> bool:
    """A flow, run, step or task name we accept (no separators, no dot-only names)."""
    return bool(_NAME.fullmatch(text)) and text not in {".", ".."} and ".." not in text


@dataclass(frozen=True, slots=True, order=True)
class RunKey:
    flow: str
    run: str

    def __str__(self) -> str:
        return f"{self.flow}/{self.run}"


@dataclass(frozen=True, slots=True, order=True)
class TaskKey:
    flow: str
    run: str
    step: str
    task: str

    @property
    def run_key(self) -> RunKey:
        return RunKey(self.flow, self.run)

    def __str__(self) -> str:
        return f"{self.flow}/{self.run}/{self.step}/{self.task}"


@dataclass(frozen=True, slots=True, order=True)
class CardKey:
    task: TaskKey
    name: str  # file stem: <type>[-<id>]-<uuid>

    @property
    def run_key(self) -> RunKey:
        return self.task.run_key

    def __str__(self) -> str:
        return f"{self.task}/{self.name}"


@dataclass(frozen=True, slots=True)
class CardName:
    type: str
    id: str | None
    uuid: str


def parse_card_name(stem: str) -> CardName | None:
    match = _CARD_NAME.fullmatch(stem)
    if match is None:
        return None
    return CardName(match["type"], match["id"], match["uuid"])


def card_key_from_parts(parts: list[str]) -> CardKey | None:
    """Validate URL or API segments `flow/run/step/task/card` into a key."""
    if len(parts) != 5:
        return None
    flow, run, step, task, name = parts
    if not all(is_name(p) for p in (flow, run, task)):
        return None
    if step != LEGACY_STEP and not is_name(step):
        return None
    if parse_card_name(name) is None:
        return None
    return CardKey(TaskKey(flow, run, step, task), name)


# --- files under the cards root ------------------------------------------------------------


class CardFileKind(Enum):
    HTML = "html"
    DATA = "data"


_FOLDER_KINDS = {"cards": CardFileKind.HTML, "runtime": CardFileKind.DATA}
# One match per file name, name and suffix together.
_CARD_FILES = {
    CardFileKind.HTML: re.compile(f"({_CARD_NAME.pattern}){re.escape(CARD_SUFFIX)}"),
    CardFileKind.DATA: re.compile(f"({_CARD_NAME.pattern}){re.escape(DATA_SUFFIX)}"),
}


@dataclass(frozen=True, slots=True)
class CardFile:
    key: CardKey
    kind: CardFileKind
    legacy: bool = False  # written before mid-2022: no steps/<step>/ level


def parse_card_path(rel: PurePosixPath) -> CardFile | None:
    """Classify a path relative to the cards root; None for anything that is not ours."""
    return parse_card_parts(rel.parts)


def parse_card_parts(parts: tuple[str, ...]) -> CardFile | None:
    """`parse_card_path` on the path's parts (the scan has them without building a path)."""
    if len(parts) == 9 and parts[1] == "runs" and parts[3] == "steps" and parts[5] == "tasks":
        flow, _, run, _, step, _, task, folder, file = parts
    elif len(parts) == 7 and parts[1] == "runs" and parts[3] == "tasks":
        flow, _, run, _, task, folder, file = parts
        step = LEGACY_STEP
    else:
        return None
    kind = _FOLDER_KINDS.get(folder)
    stem = None if kind is None else card_stem(file, kind)
    if kind is None or stem is None:
        return None
    if not (is_name(flow) and is_name(run) and is_name(task)):
        return None
    if step != LEGACY_STEP and not is_name(step):
        return None
    return CardFile(CardKey(TaskKey(flow, run, step, task), stem), kind, len(parts) == 7)


def card_stem(file: str, kind: CardFileKind) -> str | None:
    """The card name in a file name of that kind (`<name>.html`, `<name>.data.json`), if it is ours."""
    match = _CARD_FILES[kind].fullmatch(file)
    return match[1] if match else None


def card_path(key: CardKey, kind: CardFileKind, legacy: bool) -> PurePosixPath:
    """Where a card's file lives, relative to the cards root."""
    t = key.task
    task_dir = (
        PurePosixPath(t.flow, "runs", t.run, "tasks", t.task)
        if legacy
        else PurePosixPath(t.flow, "runs", t.run, "steps", t.step, "tasks", t.task)
    )
    if kind is CardFileKind.HTML:
        return task_dir / "cards" / f"{key.name}{CARD_SUFFIX}"
    return task_dir / "runtime" / f"{key.name}{DATA_SUFFIX}"


# --- files under the datastore root --------------------------------------------------------


class MetaKind(Enum):
    TASK_SELF = "task"
    ATTEMPT = "attempt"
    ATTEMPT_OK = "attempt_ok"
    ATTEMPT_DONE = "attempt-done"
    CARD_INFO = "card-info"  # sysmeta_<card-uuid>_<ts>.json: which attempt wrote the card
    VERDICT = "runtime"  # <attempt>.runtime, beside _meta: the runtime's verdict on the attempt
    ENDED = "ended"  # <attempt>.DONE.lock in an S3 task folder: the attempt ended, not how


_META_KINDS = {kind.value: kind for kind in MetaKind}  # a dict lookup: MetaKind(...) is slow in a scan


@dataclass(frozen=True, slots=True)
class RunFile:
    """`<Flow>/<run>/_meta/_self.json`: a run exists."""

    key: RunKey


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A status file of one task."""

    key: TaskKey
    kind: MetaKind
    ts: int  # ms since the epoch, from the file name; 0 for _self.json and verdicts
    attempt: int | None = None  # a verdict's attempt, from its name


def parse_meta_name(name: str) -> tuple[MetaKind, int] | None:
    if name == "_self.json":
        return MetaKind.TASK_SELF, 0
    match = _META_NAME.fullmatch(name)
    if match is None:
        return None
    field = match["field"]
    return (_META_KINDS[field] if field else MetaKind.CARD_INFO), int(match["ts"])


def parse_verdict_name(name: str) -> int | None:
    """The attempt of a `<attempt>.runtime` file name, or None."""
    match = _VERDICT_NAME.fullmatch(name)
    return int(match["attempt"]) if match else None


def verdict_file_name(attempt: int) -> str:
    return f"{attempt}.runtime"


def parse_datastore_path(rel: PurePosixPath) -> RunFile | TaskFile | None:
    """Classify a path relative to the datastore root; None for anything that is not ours."""
    parts = rel.parts
    if len(parts) == 4 and parts[2] == "_meta" and parts[3] == "_self.json":
        flow, run = parts[0], parts[1]
        if is_name(flow) and is_name(run) and run != "data":
            return RunFile(RunKey(flow, run))
        return None
    if len(parts) == 5:
        return _verdict_file(parts)
    if len(parts) != 6 or parts[4] != "_meta":
        return None
    flow, run, step, task, _, name = parts
    if step == PARAMETERS_STEP or run == "data":
        return None
    if not all(is_name(p) for p in (flow, run, step, task)):
        return None
    parsed = parse_meta_name(name)
    if parsed is None:
        return None
    return TaskFile(TaskKey(flow, run, step, task), parsed[0], parsed[1])


def _verdict_file(parts: tuple[str, ...]) -> TaskFile | None:
    flow, run, step, task, name = parts
    attempt = parse_verdict_name(name)
    if attempt is None or step == PARAMETERS_STEP or run == "data":
        return None
    if not all(is_name(p) for p in (flow, run, step, task)):
        return None
    return TaskFile(TaskKey(flow, run, step, task), MetaKind.VERDICT, 0, attempt)


def run_meta_path(key: RunKey) -> PurePosixPath:
    return PurePosixPath(key.flow, key.run, "_meta", "_self.json")


def task_meta_dir(key: TaskKey) -> PurePosixPath:
    return PurePosixPath(key.flow, key.run, key.step, key.task, "_meta")


def task_dir(key: TaskKey) -> PurePosixPath:
    """A task's folder, relative to the datastore root."""
    return PurePosixPath(key.flow, key.run, key.step, key.task)


def meta_file_name(kind: MetaKind, ts: int, card_uuid: str = "") -> str:
    """A `_meta` file's name; a card-info file is named by its card's uuid."""
    if kind is MetaKind.TASK_SELF:
        return "_self.json"
    return f"sysmeta_{card_uuid if kind is MetaKind.CARD_INFO else kind.value}_{ts}.json"


# --- a task's own folder (attempts, verdicts, logs), read on demand by the task view -------

# `<a>.attempt.json`, `<a>.task_begin`, `<a>.task_end`, `<a>.DONE.lock`, `<a>.runtime`,
# `<a>.runtime_stdout.log`, `<a>.runtime_stderr.log`, `<a>.data.json` (not read: artifacts).
_ATTEMPT_FILE = re.compile(
    r"(?P<attempt>\d{1,4})\.(?P<kind>attempt\.json|task_begin|task_end|DONE\.lock|runtime"
    r"|runtime_stdout\.log|runtime_stderr\.log)"
)
# `_meta/sysmeta_<field>_<ts>.json`: user, versions, attempts, and card-info (field = card uuid).
_SYSMETA_NAME = re.compile(r"sysmeta_(?P<field>[A-Za-z0-9_\-]{1,100}?)_(?P<ts>\d{1,20})\.json")
LOG_STREAMS = ("stdout", "stderr")


def task_key_from_parts(parts: list[str]) -> TaskKey | None:
    """Validate URL or API segments `flow/run/step/task` into a key."""
    if len(parts) != 4 or not all(is_name(p) for p in parts) or parts[2] == PARAMETERS_STEP:
        return None
    return TaskKey(*parts)


def parse_attempt_file(name: str) -> tuple[int, str] | None:
    """(attempt, kind) of a file in a task's folder, e.g. `1.runtime` -> (1, "runtime")."""
    match = _ATTEMPT_FILE.fullmatch(name)
    return (int(match["attempt"]), match["kind"]) if match else None


def parse_sysmeta_name(name: str) -> tuple[str, int] | None:
    """(field, ts) of a `_meta/sysmeta_<field>_<ts>.json` file."""
    match = _SYSMETA_NAME.fullmatch(name)
    return (match["field"], int(match["ts"])) if match else None


def task_folder_file(parts: tuple[str, ...]) -> tuple[TaskKey, str] | None:
    """(task, file name) of a file in a task's own folder, from its parts below the datastore
    root (`<Flow>/<run>/<step>/<task>/<name>`); None for the artifact store, parameters and the rest."""
    if len(parts) != 5 or parts[1] == ARTIFACTS_DIR:
        return None
    key = task_key_from_parts(list(parts[:4]))
    return (key, parts[4]) if key is not None else None


def log_file_name(attempt: int, stream: str) -> str:
    return f"{attempt}.runtime_{stream}.log"


def task_of_path(rel: PurePosixPath, cards: bool) -> TaskKey | None:
    """The task whose folder holds `rel` (relative to the datastore root, or to the cards root
    when `cards`: a card's HTML only, as its data updates change nothing about the task)."""
    parts = rel.parts
    if cards:
        found = parse_card_parts(parts)
        return found.key.task if found and found.kind is CardFileKind.HTML else None
    if len(parts) < 5 or parts[1] == ARTIFACTS_DIR:
        return None
    return task_key_from_parts(list(parts[:4]))


# --- the folders of flows and runs, in either tree ------------------------------------------

RUNS_DIR = "runs"  # a cards flow's folder of runs
ARTIFACTS_DIR = "data"  # a datastore flow's artifact store: never read
NOT_RUNS = (ARTIFACTS_DIR, "_meta")  # a datastore flow folder's entries that are not runs


def datastore_run_dir(key: RunKey) -> PurePosixPath:
    """A run's folder in the datastore (its status), relative to the datastore root."""
    return PurePosixPath(key.flow, key.run)


def cards_run_dir(key: RunKey) -> PurePosixPath:
    """A run's folder in the cards root (its cards), relative to the cards root."""
    return PurePosixPath(key.flow, RUNS_DIR, key.run)


def cards_runs_dir(flow: str) -> PurePosixPath:
    """A flow's folder of runs in the cards root."""
    return PurePosixPath(flow, RUNS_DIR)


def folder_names(parts: tuple[str, ...], cards: bool) -> tuple[str | None, str | None] | None:
    """(flow, run) of the root, a flow or a run folder, from its parts below its root (a cards
    flow's `runs` folder counts as the flow); None for any other folder."""
    if cards:
        if len(parts) >= 2 and parts[1] != RUNS_DIR:
            return None
        parts = parts[:1] + parts[2:]
    if len(parts) > 2:
        return None
    return (parts[0] if parts else None), (parts[1] if len(parts) == 2 else None)


def is_artifact_path(parts: tuple[str, ...]) -> bool:
    """A path in a flow's artifact store, from its parts below the datastore root."""
    return len(parts) >= 2 and parts[1] == ARTIFACTS_DIR
