"""Writes live Metaflow runs to disk, file for file as Metaflow 2.19 does, without Metaflow.

Used by `card demo` (a flow that keeps changing) and as test and benchmark fixtures. Every file
is written the way Metaflow writes it: a `tmpXXXXXXXX` file from `mkstemp` in the same folder,
then a rename onto the final name, so a watcher sees exactly what it will see in real use.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, cached_property
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from .config import CARDS_DIR
from .layout import (
    PARAMETERS_STEP,
    CardFileKind,
    CardKey,
    MetaKind,
    RunKey,
    TaskKey,
    card_path,
    log_file_name,
    meta_file_name,
    parse_card_name,
    run_meta_path,
    task_meta_dir,
    verdict_file_name,
)
from .scriptjson import script_json

log = logging.getLogger(__name__)

Component = dict[str, Any]

METAFLOW_VERSION = "2.19.39"
PYTHON_VERSION = "3.11.7"
FINAL_TOKEN = "final"
SCRIPT_NAME = "demo_flow.py"


# --- components, shaped like Metaflow's `render()` output -----------------------------------


def markdown(id: str, source: str) -> Component:
    return {"type": "markdown", "id": id, "source": source}


def text(id: str, text: str) -> Component:
    return {"type": "text", "id": id, "text": text}


def progress(id: str, value: float, max: float, label: str | None = None) -> Component:
    return {"type": "progressBar", "id": id, "max": max, "value": value, "label": label}


def table(id: str, headers: list[str], rows: list[list[Any]]) -> Component:
    return {"type": "table", "id": id, "headers": headers, "data": rows}


# --- atomic writes ---------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Metaflow's write: temp file beside the target, then rename; readers never see half.

    Plain string paths: pathlib's parsing was a third of the time of a 10,000-task fixture.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder)
    except FileNotFoundError:  # first file in its folder: mkdir only then, it is not free
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, doc: object) -> None:
    write_atomic(path, json.dumps(doc).encode())


def _now_ms() -> int:
    return round(time.time() * 1000)


_run_id_lock = threading.Lock()
_last_run_id = 0


def _new_run_id() -> str:
    """Metaflow's local run id (microseconds), made strictly increasing within this process."""
    global _last_run_id
    with _run_id_lock:
        _last_run_id = max(int(time.time() * 1e6), _last_run_id + 1)
        return str(_last_run_id)


def _runtime_token(previous: str | None = None) -> str:
    """A `runtime-<time>` token as Metaflow's blank card makes, later than the card's last one.

    A token must never come back: a page still showing an older render would take an update
    for the new layout as its own.
    """
    now = round(time.time(), 2)
    if previous is not None and previous.startswith("runtime-"):
        with suppress(ValueError):
            now = max(now, round(float(previous.removeprefix("runtime-")) + 0.01, 2))
    return f"runtime-{now:.2f}"


# --- runs, tasks, cards ----------------------------------------------------------------------


@dataclass
class DemoRun:
    """Handle to one run being written: the roots it lives in and its names."""

    datastore: Path
    cards: Path
    flow: str
    run: str
    user: str
    _task_seq: int = field(default=0, repr=False)
    _steps: set[str] = field(default_factory=set, repr=False)

    @property
    def key(self) -> RunKey:
        return RunKey(self.flow, self.run)

    def _system_tags(self) -> list[str]:
        return [
            f"metaflow_version:{METAFLOW_VERSION}",
            f"python_version:{PYTHON_VERSION}",
            f"user:{self.user}",
            "runtime:dev",
        ]

    def _next_task_id(self) -> str:
        """Local Metaflow numbers tasks 1, 2, 3... per run; `_parameters` takes the first."""
        self._task_seq += 1
        return str(self._task_seq)

    def _self_doc(self, ts_ms: int, step: str | None = None, task: str | None = None) -> Component:
        """`_self.json` in Metaflow's key order: run, step or task level."""
        doc: Component = {"run_number": self.run}
        if step is not None:
            doc["step_name"] = step
        if task is not None:
            doc["task_id"] = task
        doc.update(
            flow_id=self.flow,
            user_name=self.user,
            tags=[],
            system_tags=self._system_tags(),
            ts_epoch=ts_ms,
        )
        return doc

    def _ensure_step(self, step: str) -> None:
        """Metaflow writes `<run>/<step>/_meta/_self.json` once per step; readers must skip it."""
        if step in self._steps:
            return
        self._steps.add(step)
        path = self.datastore / self.flow / self.run / step / "_meta" / "_self.json"
        if not path.exists():
            _write_json(path, self._self_doc(_now_ms(), step=step))

    def start_task(
        self,
        step: str,
        task: str | None = None,
        attempt: int = 0,
        system_meta: bool = True,
    ) -> DemoTask:
        """A task that has started `attempt` and is running until `finish`.

        `system_meta` also writes the `sysmeta_<runtime|user|...>` files Metaflow adds for every
        attempt, so readers are tested against the real mix of files in `_meta`.
        """
        task_id = task if task is not None else self._next_task_id()
        key = TaskKey(self.flow, self.run, step, task_id)
        self._ensure_step(step)
        meta = self.datastore / task_meta_dir(key)
        _write_json(
            meta / meta_file_name(MetaKind.TASK_SELF, 0),
            self._self_doc(_now_ms(), step=step, task=task_id),
        )
        demo_task = DemoTask(key=key, run=self, attempt=attempt, system_meta=system_meta)
        demo_task._begin_attempt(attempt)
        return demo_task


@dataclass
class DemoTask:
    """One task of a DemoRun: its attempts, verdicts and cards."""

    key: TaskKey
    run: DemoRun
    attempt: int = 0
    system_meta: bool = True
    cards: list[DemoCard] = field(default_factory=list)
    output: dict[str, list[str]] = field(default_factory=dict)  # stream -> lines of this attempt
    _last_ts: int = field(default=0, repr=False)

    @cached_property
    def meta_dir(self) -> Path:
        return self.run.datastore / task_meta_dir(self.key)

    @property
    def folder(self) -> Path:
        return self.meta_dir.parent

    def print(self, text: str, stream: str = "stdout") -> None:
        """A line the step prints; the runtime saves it when the attempt ends (local runs)."""
        self.output[stream].append(text)

    def save_logs(self, attempt: int) -> None:
        """`<attempt>.runtime_<stream>.log` in mflog form, as the runtime writes them at the end."""
        if not self.system_meta:
            return
        for stream, lines in self.output.items():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            text = "".join(f"[MFLOG|0|{stamp}.000000Z|runtime|{uuid.uuid4()}]{line}\n" for line in lines)
            write_atomic(self.folder / log_file_name(attempt, stream), text.encode())

    def _stamp(self) -> int:
        """Milliseconds, strictly increasing per task: two attempts never share a file name."""
        self._last_ts = max(_now_ms(), self._last_ts + 1)
        return self._last_ts

    def _sysmeta(self, kind: MetaKind | str, meta_type: str, value: str, attempt: int) -> None:
        field_name = kind.value if isinstance(kind, MetaKind) else kind
        ts = self._stamp()
        doc = {
            "flow_id": self.key.flow,
            "run_number": self.key.run,
            "step_name": self.key.step,
            "task_id": self.key.task,
            "field_name": field_name,
            "type": meta_type,
            "value": value,
            "tags": [f"attempt_id:{attempt}"],
            "user_name": self.run.user,
            "ts_epoch": ts,
        }
        name = meta_file_name(kind, ts) if isinstance(kind, MetaKind) else f"sysmeta_{kind}_{ts}.json"
        _write_json(self.meta_dir / name, doc)

    def _begin_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.output = {"stdout": [], "stderr": []}
        if self.system_meta:
            _write_json(self.folder / f"{attempt}.attempt.json", {"time": time.time()})
            for name, value in (
                ("runtime", "dev"),
                ("python_version", PYTHON_VERSION),
                ("user", self.run.user),
                ("metaflow_version", METAFLOW_VERSION),
                ("script-name", SCRIPT_NAME),
            ):
                self._sysmeta(name, name, value, attempt)
        self._sysmeta(MetaKind.ATTEMPT, "attempt", str(attempt), attempt)

    def add_card(
        self,
        type: str = "blank",
        id: str | None = None,
        components: list[Component] | None = None,
        legacy: bool = False,
    ) -> DemoCard:
        """A live card: its first HTML render is on disk when this returns."""
        card_uuid = uuid.uuid4().hex
        stem = f"{type}-{id}-{card_uuid}" if id else f"{type}-{card_uuid}"
        if parse_card_name(stem) is None:
            raise ValueError(f"not a Metaflow card name: {stem!r}")
        card = DemoCard(CardKey(self.key, stem), self.run.cards, legacy, components or [], self.attempt)
        card.rerender()
        self.cards.append(card)
        if not legacy:  # Metaflow wrote no card-info before mid-2022
            info = {"card_uuid": card_uuid, "type": type, "id": id, "is_runtime_card": True,
                    "refresh_interval": 1}
            self._sysmeta(card_uuid, "card-info", json.dumps(info), self.attempt)  # after the render
        return card

    def finish(self, ok: bool = True, attempt: int | None = None, reaped: bool = True) -> None:
        """End an attempt: `attempt_ok`, then `attempt-done`, then the final card renders, then
        (`reaped`) the runtime's verdict, written once the worker process has exited.

        Metaflow renders final cards only when the attempt succeeded (card_decorator.task_finished),
        and only that attempt's cards: a failed attempt keeps its last runtime render and update.
        """
        number = self.attempt if attempt is None else attempt
        self._sysmeta(MetaKind.ATTEMPT_OK, "internal_attempt_status", str(ok), number)
        self._sysmeta(MetaKind.ATTEMPT_DONE, "attempt-done", str(number), number)
        if ok:
            for card in self.cards:
                if card.attempt == number:
                    card.finalize()
        if reaped:
            self.save_logs(number)
            self.verdict(0 if ok else 1, number)

    def kill(self) -> None:
        """The runtime killed this attempt (a sibling failed, or the run was interrupted): only
        its verdict and what it printed are written, no `attempt_ok`, no `attempt-done`, no
        final render."""
        self.save_logs(self.attempt)
        self.verdict(-9, self.attempt, killed=True)

    def verdict(self, return_code: int, attempt: int, killed: bool = False) -> None:
        """`<attempt>.runtime`, as the runtime writes it when it reaps the worker."""
        doc = {"return_code": return_code, "killed": killed, "success": return_code == 0}
        _write_json(self.folder / verdict_file_name(attempt), doc)

    def retry(self) -> int:
        """Start the next attempt, as `@retry` does after a failure; returns its number."""
        self._begin_attempt(self.attempt + 1)
        return self.attempt


@dataclass
class DemoCard:
    """One card file and its data updates; holds the full state of every component.

    `key` names the card's real task; a legacy card's files just lack the step level on disk
    (a reader keys it under layout.LEGACY_STEP).
    """

    key: CardKey
    cards_root: Path
    legacy: bool
    layout: list[Component]
    attempt: int = 0  # each attempt's process makes its own cards (a new uuid)
    token: str = ""
    state: dict[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {c["id"]: dict(c) for c in self.layout}

    @cached_property
    def path_html(self) -> Path:
        return self.cards_root / card_path(self.key, CardFileKind.HTML, self.legacy)

    @cached_property
    def path_data(self) -> Path:
        return self.cards_root / card_path(self.key, CardFileKind.DATA, self.legacy)

    @property
    def final(self) -> bool:
        return self.token == FINAL_TOKEN

    def _components(self) -> list[Component]:
        return [self.state[c["id"]] for c in self.layout]

    def _write_html(self) -> None:
        page = render_card_html(self.key, self.token, self._components())
        write_atomic(self.path_html, page.encode())

    def _write_data(self) -> None:
        doc = {"reload_token": self.token, "data": dict(self.state), "created_on": time.time()}
        _write_json(self.path_data, doc)

    def update(self, changes: dict[str, dict[str, Any]]) -> None:
        """A data update (`current.card.refresh()`): changed fields merge into the full state.

        Unknown ids are an error: new components change the layout, which is `rerender`.
        """
        if self.final:
            raise RuntimeError(f"card {self.key} is final")
        unknown = set(changes) - set(self.state)
        if unknown:
            raise KeyError(f"no such component in {self.key}: {sorted(unknown)}")
        for cid, change in changes.items():
            self.state[cid] = {**self.state[cid], **change, "id": cid}
        self._write_data()

    def rerender(self, components: list[Component] | None = None) -> str:
        """A new layout (`render_runtime`): the HTML is rewritten under a new token."""
        if self.final:
            raise RuntimeError(f"card {self.key} is final")
        if components is not None:
            self.layout = list(components)
            self.state = {c["id"]: dict(c) for c in self.layout}
        self.token = _runtime_token(self.token or None)
        self._write_html()
        return self.token

    def finalize(self) -> None:
        """The task's last render: HTML with token `final`, then a `final` data update."""
        if self.final:
            return
        self.token = FINAL_TOKEN
        self._write_html()
        self._write_data()


def start_run(
    datastore: Path,
    cards: Path | None = None,
    flow: str = "DemoFlow",
    run: str | None = None,
    user: str = "demo",
    ts_ms: int | None = None,
) -> DemoRun:
    """A new run: flow, run and `_parameters` metadata, then `latest_run`, as `flow.py run` does.

    Metaflow itself writes `latest_run` in place (open/write); we write it atomically like
    everything else, so readers here never depend on that race.
    """
    demo = DemoRun(
        datastore=datastore,
        cards=cards if cards is not None else datastore / CARDS_DIR,
        flow=flow,
        run=run if run is not None else _new_run_id(),
        user=user,
    )
    ts = ts_ms if ts_ms is not None else _now_ms()
    flow_self = datastore / flow / "_meta" / "_self.json"
    if not flow_self.exists():
        _write_json(flow_self, {"flow_id": flow, "ts_epoch": ts})
    _write_json(datastore / run_meta_path(demo.key), demo._self_doc(ts))
    params = TaskKey(flow, demo.run, PARAMETERS_STEP, demo._next_task_id())
    demo._ensure_step(PARAMETERS_STEP)
    _write_json(
        datastore / task_meta_dir(params) / meta_file_name(MetaKind.TASK_SELF, 0),
        demo._self_doc(ts, step=PARAMETERS_STEP, task=params.task),
    )
    write_atomic(datastore / flow / "latest_run", demo.run.encode())
    return demo


# --- the card page ---------------------------------------------------------------------------


_LIVE_HOOK = "window.metaflow_card_update = function(data) { return apply(data); };"
_FINAL_HOOK = "window.metaflow_card_update = undefined;"



@cache
def card_template() -> str:
    """The demo card's page (`templates/demo-card.html`), with `@@NAME@@` markers to fill."""
    return resources.files("cardserver").joinpath("templates/demo-card.html").read_text("utf-8")


def render_card_html(key: CardKey, token: str, components: list[Component]) -> str:
    """A self-contained card page honouring Metaflow's contract (token, update hook)."""
    final = token == FINAL_TOKEN
    title = f"{key.task} · {key.name.rsplit('-', 1)[0]}"
    replacements = {
        "@@TITLE@@": escape(title),
        "@@TOKEN@@": script_json(token),
        "@@COMPONENTS@@": script_json(components),
        "@@FINAL@@": "true" if final else "false",
        "@@HOOK@@": _FINAL_HOOK if final else _LIVE_HOOK,
    }
    page = card_template()
    for marker, value in replacements.items():
        page = page.replace(marker, value)
    return page


# --- fixtures --------------------------------------------------------------------------------


def write_fixture_run(
    datastore: Path,
    flow: str,
    tasks: int,
    cards_per_task: int = 1,
    finished: bool = True,
    with_data: bool = True,
    cards: Path | None = None,
    system_meta: bool = False,
) -> DemoRun:
    """A whole run at once: `start`, `tasks` tasks in `work` (`cards_per_task` each), `end`.

    finished=True: every task succeeded and its cards are final. finished=False: `start` is
    done, every `work` task is still running with a live card, and `end` has not begun.
    Finished cards are written once, already final, and Metaflow's per-attempt system files
    are off by default: file creation is what a 10,000-task run costs.
    """
    run = start_run(datastore, cards, flow=flow)
    for step, count in (("start", 1), ("work", tasks), ("end", 1 if finished else 0)):
        for n in range(count):
            task = run.start_task(step, system_meta=system_meta)
            done = finished or step == "start"
            for _ in range(cards_per_task if step == "work" else 1):
                parts = [markdown("title", f"# {step} {n}"), progress("p", 10 if done else 5, 10)]
                if done:
                    _write_final_card(task, parts, with_data)
                else:
                    card = task.add_card(components=parts)
                    if with_data:
                        card.update({"p": {"label": "Steps"}})
            if done:
                task.finish()
    return run


def _write_final_card(task: DemoTask, components: list[Component], with_data: bool) -> None:
    """A card as it is after `finalize`, in one write per file instead of two."""
    stem = f"blank-{uuid.uuid4().hex}"
    card = DemoCard(CardKey(task.key, stem), task.run.cards, False, components, task.attempt, FINAL_TOKEN)
    card._write_html()
    if with_data:
        card._write_data()
    task.cards.append(card)
