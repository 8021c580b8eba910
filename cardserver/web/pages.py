"""Pages: the viewer shell (one template, several deep-link routes), a card's host page and
the card's own HTML.

Every URL a page uses is relative: a page sets `<base href>` to the app root as seen from its
own URL, so the app works under any path prefix a proxy adds or strips.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import resources

import jinja2
from aiohttp import web
from markupsafe import Markup

from .. import __version__
from ..feed import card_topic
from ..index import Card
from ..layout import card_key_from_parts, is_name
from ..scriptjson import script_json
from ..source import Unavailable
from .cards import CardPage
from .keys import CARD_PAGES, CONFIG, GUARD, INDEX
from .security import (
    CARD_CSP,
    CARD_HTML_ROUTE,
    CARD_IFRAME_SANDBOX,
    CARD_ROUTE,
    CARD_SHELL_ROUTE,
    harden,
    json_error,
    page_headers,
    plain_error,
)


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
    return our_page(request, "viewer.html", asdict(view))


def our_page(request: web.Request, template: str, data: object, embeddable: bool = False) -> web.Response:
    """One of our own (trusted) pages: its data as JSON, its strict CSP, always revalidated;
    framed only by itself and the allowed origins unless `embeddable` (security.page_headers)."""
    html = request.app[TEMPLATES].get_template(template).render(
        root=root_from(request.path, request.app[CONFIG].base_url),
        data=Markup(script_json(data)),
        sandbox=CARD_IFRAME_SANDBOX,
        version=__version__,
    )
    response = web.Response(text=html, content_type="text/html")
    response.headers.update(page_headers(request.app[GUARD], embeddable))
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


def card_of_request(request: web.Request) -> Card | None:
    key = card_key_from_parts(list(card_parts(request)))
    return request.app[INDEX].card(key) if key else None


async def card_host(request: web.Request) -> web.StreamResponse:
    """A card on its own: our page, which holds the socket and frames the sandboxed card."""
    found = card_of_request(request)
    if found is None or found.version is None:
        return plain_error(404, "card not found")
    guard, topic = request.app[GUARD], card_topic(found.key)
    host = {
        "topic": topic,
        "cap": guard.capability(topic),  # for the socket when no cookie came (a notebook's frame)
        "html": guard.card_url(found.key, CARD_HTML_ROUTE),
        "version": found.version,
        "title": f"{found.key.task.step}/{found.key.task.task} · {found.key.name}",
    }
    return our_page(request, "card.html", host, embeddable=True)  # a notebook's frame, anywhere


async def card_html(request: web.Request) -> web.StreamResponse:
    """The card's own HTML (untrusted), with the runtime its host talks to."""
    pages = request.app[CARD_PAGES]
    return await card_response(request, pages.page, card_headers, "text/html", plain_error)


async def card_page_parts(request: web.Request) -> web.StreamResponse:
    """A card's page apart from Metaflow's bundle, for the viewer's warm frames (cards.py):
    JSON, under `api/` so that no card page can read it; `script` is null for a page that was
    not split (the viewer then loads its URL)."""
    pages = request.app[CARD_PAGES]
    return await card_response(request, pages.parts, parts_headers, "application/json", json_error)


async def card_response(
    request: web.Request,
    build: Callable[[Card], Awaitable[CardPage]],
    headers_for: Callable[[str], dict[str, str]],
    kind: str,
    error: Callable[[int, str], web.Response],
) -> web.StreamResponse:
    """One of a card's pages, built (or cached) by `build`, revalidated by its render's ETag."""
    found = card_of_request(request)
    if found is None:
        return error(404, "card not found")
    etag = request.app[CARD_PAGES].etag(found)
    headers = headers_for(etag)
    if found.version is not None and etag in if_none_match(request):
        return web.Response(status=304, headers=headers)
    try:
        page = await build(found)
    except Unavailable as problem:
        return error(problem.status, str(problem))
    return await encoded(request, page, headers, kind)


async def card_shell(request: web.Request) -> web.StreamResponse:
    """A warm frame: Metaflow's card bundle compiled, waiting for a card's page (cards.py)."""
    shell_page = await request.app[CARD_PAGES].shell(request.match_info["name"])
    if shell_page is None:
        return plain_error(404, "card script not found")
    headers = {**card_headers(shell_page.etag), "Cache-Control": "max-age=31536000, immutable"}
    return await encoded(request, shell_page, headers, "text/html")


async def encoded(
    request: web.Request, page: CardPage, headers: dict[str, str], kind: str
) -> web.StreamResponse:
    """The page gzipped when the client takes it (compressed once, when built), sent a chunk
    at a time: a client that reads slowly, or takes it unpacked, holds up its own answer, never
    a copy of the whole page in memory."""
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = harden(web.StreamResponse(headers=headers))  # (sent before the middleware sees it)
    response.content_type, response.charset = kind, "utf-8"
    response.content_length = len(page.gzipped) if gzipped else page.size
    await response.prepare(request)
    if request.method != "HEAD":
        for chunk in page.chunks(gzipped):
            await response.write(chunk)
    await response.write_eof()
    return response


def parts_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}


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
    app.router.add_get(f"{base}card/{card_path}", card_host, name=CARD_ROUTE)  # links open it
    app.router.add_get(f"{base}card-html/{card_path}", card_html, name=CARD_HTML_ROUTE)
    app.router.add_get(f"{base}{CARD_SHELL_ROUTE}/{{name}}", card_shell)
    app.router.add_get(f"{base}api/cards/{card_path}/page", card_page_parts)  # before the API's catch-all
    static = resources.files("cardserver").joinpath("static")
    app.router.add_static(f"{base}static/", str(static), append_version=False)
