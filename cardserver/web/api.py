"""The JSON API under `api/`: answered from the index in memory, never by walking the tree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import __version__
from ..feed import update_text
from ..index import Index, Run, Task
from ..layout import RunKey, card_key_from_parts, is_name
from .keys import GUARD, HUB, INDEX, READY, SOURCE
from .security import json_error

MAX_LIMIT = 10_000


def dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), default=str)


def reply(payload: Any) -> web.Response:
    return web.Response(text=dumps(payload), content_type="application/json")


def paging(request: web.Request) -> tuple[int, int] | web.Response:
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(MAX_LIMIT)))
    except ValueError:
        return json_error(400, "offset and limit must be whole numbers")
    if offset < 0 or not 0 < limit <= MAX_LIMIT:
        return json_error(400, f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
    return offset, limit


async def status(request: web.Request) -> web.Response:
    app = request.app
    source = app[SOURCE].status()
    return reply(
        {
            "version": __version__,
            "source": source.get("source", "local"),
            "datastore": source.get("datastore"),
            "cards": source.get("cards"),
            "watching": source.get("watching"),
            "ready": app[READY].is_set(),
            "followed_runs": source.get("followed_runs"),
            "flows": len(app[INDEX].flows),
            "subscribers": app[HUB].subscriber_count(),
            "watch": source.get("watch"),
            "s3": source.get("s3"),  # S3 only: endpoint, requests per minute by kind, USD per hour
        }
    )


async def flows(request: web.Request) -> web.Response:
    return reply({"flows": request.app[INDEX].flow_summaries()})


async def runs(request: web.Request) -> web.Response:
    flow = request.match_info["flow"]
    page = paging(request)
    if isinstance(page, web.Response):
        return page
    index = request.app[INDEX]
    if not is_name(flow) or not index.has_flow(flow):
        return json_error(404, f"no flow named {flow!r}")
    found = index.runs(flow)
    offset, limit = page
    return reply(
        {"flow": flow, "total": len(found), "runs": [r.summary() for r in found[offset : offset + limit]]}
    )


@dataclass(slots=True)
class RunView:
    """A run as the API shows it, computed once per revision: its tasks in order (sorting
    10,000 tasks was most of a filtered request), its summary, steps and whole-run JSON."""

    revision: tuple[int, int]
    tasks: list[Task]
    head: dict[str, Any]
    text: str | None = None


class RunCache:
    """The views of recently asked runs, valid while the run's revision holds."""

    def __init__(self) -> None:
        self._entries: dict[RunKey, RunView] = {}

    def view(self, index: Index, run: Run) -> RunView:
        revision = index.revision(run.key)
        hit = self._entries.get(run.key)
        if hit is not None and hit.revision == revision:
            return hit
        if len(self._entries) > 16:
            self._entries.clear()
        view = RunView(revision, index.tasks_in_order(run), {"run": run.summary(), "steps": run.steps()})
        self._entries[run.key] = view
        return view

    def text(self, index: Index, run: Run) -> str:
        view = self.view(index, run)
        if view.text is None:
            view.text = dumps({**view.head, "tasks": [t.summary() for t in view.tasks]})
        return view.text


RUN_CACHE = web.AppKey("run_cache", RunCache)


def matches(task: Task, step: str | None, status: str | None, text: str | None) -> bool:
    if step and task.key.step != step:
        return False
    if status and task.shown.value != status:
        return False
    if text:
        hay = " ".join([task.key.step, task.key.task, *task.cards]).lower()
        return text.lower() in hay
    return True


async def run(request: web.Request) -> web.Response:
    key = RunKey(request.match_info["flow"], request.match_info["run"])
    if not (is_name(key.flow) and is_name(key.run)):
        return json_error(400, "bad flow or run name")
    index = request.app[INDEX]
    found = index.run(key)
    if found is None:
        return json_error(404, f"no run {key}")
    step, state, text = (request.query.get(k) for k in ("step", "status", "q"))
    page = paging(request)
    if isinstance(page, web.Response):
        return page
    cache = request.app[RUN_CACHE]
    if not (step or state or text or "offset" in request.query or "limit" in request.query):
        return web.Response(text=cache.text(index, found), content_type="application/json")
    offset, limit = page
    view = cache.view(index, found)
    tasks = [t for t in view.tasks if matches(t, step, state, text)]
    return reply(
        {**view.head, "total": len(tasks), "tasks": [t.summary() for t in tasks[offset : offset + limit]]}
    )


async def card(request: web.Request) -> web.Response:
    parts = [request.match_info[k] for k in ("flow", "run", "step", "task", "card")]
    key = card_key_from_parts(parts)
    if key is None:
        return json_error(400, "bad card path")
    await request.app[SOURCE].load_update(key)
    detail = request.app[INDEX].card_detail(key)
    found = request.app[INDEX].card(key)
    if detail is None or found is None:
        return json_error(404, f"no card {key}")
    summary = {k: v for k, v in detail.items() if k != "update"}
    head = dumps({**summary, "link": request.app[GUARD].card_url(key)})
    if found.update is None:
        return web.Response(text=f'{head[:-1]},"update":null}}', content_type="application/json")
    # The update goes in as the JSON it was read as: encoding it here would stall the loop.
    text = f'{head[:-1]},"update":{update_text(found.update)}}}'
    return web.Response(text=text, content_type="application/json")


def add_routes(app: web.Application, base: str) -> None:
    app[RUN_CACHE] = RunCache()
    app.router.add_get(f"{base}api/status", status)
    app.router.add_get(f"{base}api/flows", flows)
    app.router.add_get(f"{base}api/flows/{{flow}}/runs", runs)
    app.router.add_get(f"{base}api/runs/{{flow}}/{{run}}", run)
    app.router.add_get(f"{base}api/cards/{{flow}}/{{run}}/{{step}}/{{task}}/{{card}}", card)
    app.router.add_route("*", f"{base}api/{{rest:.*}}", unknown)  # last: API clients get JSON


async def unknown(request: web.Request) -> web.Response:
    as_read = await request.app.router.resolve(request.clone(method="GET"))
    if as_read.handler is not unknown:  # the endpoint exists: only the method is wrong
        response = json_error(405, f"{request.method} is not allowed on {request.path!r}: the API only reads")
        response.headers["Allow"] = "GET, HEAD"
        return response
    return json_error(404, f"no API endpoint {request.path!r}")
