"""Pages: the viewer shell (one template, several deep-link routes) and the card pages.

Every URL a page uses is relative: the shell sets `<base href>` to the app root as seen from
its own URL, so the app works under any path prefix a proxy adds or strips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources

import jinja2
from aiohttp import web
from markupsafe import Markup

from .. import __version__
from ..layout import card_key_from_parts, is_name
from ..scriptjson import script_json
from ..source import Unavailable
from .keys import CARD_PAGES, CONFIG, INDEX
from .security import CARD_CSP, CARD_IFRAME_SANDBOX, CARD_ROUTE, VIEWER_CSP, plain_error


@dataclass(frozen=True, slots=True)
class View:
    """What the shell opens on; the browser side takes it from there."""

    kind: str  # follow | flow | run | card | task
    flow: str | None = None
    run: str | None = None
    step: str | None = None
    task: str | None = None
    card: str | None = None
    pinned_flow: str | None = None
    pinned_run: str | None = None


def environment() -> jinja2.Environment:
    folder = resources.files("cardserver").joinpath("templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)), autoescape=True, keep_trailing_newline=True
    )


TEMPLATES = web.AppKey("templates", jinja2.Environment)


def root_from(path: str, base: str) -> str:
    """The relative URL of the app root from `path` (which starts with `base`)."""
    depth = path[len(base) :].count("/")
    return "../" * depth or "./"


def shell(request: web.Request, view: View) -> web.Response:
    config = request.app[CONFIG]
    view = View(**{**asdict(view), "pinned_flow": config.flow, "pinned_run": config.run_id})
    html = request.app[TEMPLATES].get_template("viewer.html").render(
        root=root_from(request.path, config.base_url),
        view=Markup(script_json(asdict(view))),
        sandbox=CARD_IFRAME_SANDBOX,
        version=__version__,
    )
    response = web.Response(text=html, content_type="text/html")
    response.headers["Content-Security-Policy"] = VIEWER_CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


async def follow(request: web.Request) -> web.Response:
    return shell(request, View("follow"))


async def flow(request: web.Request) -> web.Response:
    name = request.match_info["flow"]
    if not is_name(name):
        return plain_error(404, "not found")
    return shell(request, View("flow", flow=name))


async def run(request: web.Request) -> web.Response:
    name, run_id = request.match_info["flow"], request.match_info["run"]
    if not (is_name(name) and is_name(run_id)):
        return plain_error(404, "not found")
    return shell(request, View("run", flow=name, run=run_id))


async def run_card(request: web.Request) -> web.Response:
    key = card_key_from_parts(list(card_parts(request)))
    if key is None:
        return plain_error(404, "not found")
    t = key.task
    return shell(request, View("card", t.flow, t.run, t.step, t.task, key.name))


def card_parts(request: web.Request) -> tuple[str, ...]:
    return tuple(request.match_info[k] for k in ("flow", "run", "step", "task", "card"))


async def card(request: web.Request) -> web.StreamResponse:
    key = card_key_from_parts(list(card_parts(request)))
    found = request.app[INDEX].card(key) if key else None
    if found is None:
        return plain_error(404, "card not found")
    pages = request.app[CARD_PAGES]
    headers = card_headers(pages.etag(found))
    if found.version is not None and pages.etag(found) in if_none_match(request):
        return web.Response(status=304, headers=headers)
    try:
        page = await pages.page(found)
    except Unavailable as problem:
        return plain_error(problem.status, str(problem))
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        body = page.gzipped
    else:
        body = page.body
    return web.Response(body=body, headers=headers, content_type="text/html", charset="utf-8")


def card_headers(etag: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": CARD_CSP,
        "ETag": etag,
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }


def if_none_match(request: web.Request) -> set[str]:
    header = request.headers.get("If-None-Match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def add_routes(app: web.Application, base: str) -> None:
    app[TEMPLATES] = environment()
    card_path = "{flow}/{run}/{step}/{task}/{card}"
    app.router.add_get(base, follow)
    app.router.add_get(f"{base}flow/{{flow}}", flow)
    app.router.add_get(f"{base}run/{{flow}}/{{run}}", run)
    app.router.add_get(f"{base}run/{card_path}", run_card)
    app.router.add_get(f"{base}card/{card_path}", card, name=CARD_ROUTE)  # links open it
    static = resources.files("cardserver").joinpath("static")
    app.router.add_static(f"{base}static/", str(static), append_version=False)
