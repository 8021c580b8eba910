"""The task view's routes: `api/tasks/...` (attempts, verdicts, metadata, cards, traceback),
`api/logs/...` (a page of a task's stdout or stderr) and the viewer's deep link
`run/<flow>/<run>/<step>/<task>`. Names are validated into keys; files are read on demand in
a thread, inside the datastore, in bounded pages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from .. import logs
from ..layout import LOG_STREAMS, TaskKey, log_file_name, parse_attempt_file, task_key_from_parts
from ..taskinfo import entries, folder_of
from .api import reply
from .keys import PIPELINE
from .pages import View, shell
from .security import json_error, plain_error

DEFAULT_TAIL = 1_000
_TASK = "{flow}/{run}/{step}/{task}"


def task_key(request: web.Request) -> TaskKey | None:
    return task_key_from_parts([request.match_info[k] for k in ("flow", "run", "step", "task")])


async def task(request: web.Request) -> web.Response:
    key = task_key(request)
    if key is None:
        return json_error(400, "bad task path")
    detail = await request.app[PIPELINE].tasks.detail(key)
    if detail is None:
        return json_error(404, f"no task {key}")
    return reply(detail)


def whole_number(request: web.Request, name: str, default: int | None) -> int | None:
    """A non-negative whole-number query parameter; ValueError with a user's message."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18:
        raise ValueError(f"{name} must be a whole number >= 0")
    return int(text)


async def log(request: web.Request) -> web.Response:
    key = task_key(request)
    if key is None:
        return json_error(400, "bad task path")
    stream = request.query.get("stream", "stdout")
    if stream not in LOG_STREAMS:
        return json_error(400, "stream must be stdout or stderr")
    try:
        attempt = whole_number(request, "attempt", None)
        lines = whole_number(request, "tail", DEFAULT_TAIL) or 0
        before = whole_number(request, "before", None)
        since = whole_number(request, "after", None)
    except ValueError as error:
        return json_error(400, str(error))
    if not 0 < lines <= logs.MAX_PAGE_LINES:
        return json_error(400, f"tail must be between 1 and {logs.MAX_PAGE_LINES}")
    if before is not None and since is not None:
        return json_error(400, "give before or after, not both")
    datastore = request.app[PIPELINE].roots.datastore
    page = await asyncio.to_thread(read_page, datastore, key, stream, attempt, lines, before, since)
    if page is None:
        which = "" if attempt is None else f" attempt {attempt}"
        return json_error(404, f"no {stream} log for task {key}{which}")
    number, found = page
    return reply({"flow": key.flow, "run": key.run, "step": key.step, "task": key.task,
                  "stream": stream, "attempt": number, **found.as_dict()})


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
    found = [parsed[0] for name, _ in entries(folder)
             if (parsed := parse_attempt_file(name)) is not None and parsed[1] == kind]
    return max(found, default=None)


async def task_page(request: web.Request) -> web.Response:
    key = task_key(request)
    if key is None:
        return plain_error(404, "not found")
    return shell(request, View("task", key.flow, key.run, key.step, key.task))


def add_routes(app: web.Application, base: str) -> None:
    """Before `api.add_routes`: its catch-all answers every other `api/` path."""
    app.router.add_get(f"{base}api/tasks/{_TASK}", task)
    app.router.add_get(f"{base}api/logs/{_TASK}", log)
    app.router.add_get(f"{base}run/{_TASK}", task_page)
