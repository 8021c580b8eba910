"""A hostile card's requests, in Chromium: whatever way it asks (a fetch in either mode, an image,
a script, a frame), the API and the costly card routes answer it with a refusal, never a 200,
while the viewer's and the host page's own requests are served. The statuses are the ones the
server sent, seen by the browser (Playwright's network events), not what the card could read.

The hostile HTML is written at test time at a card's layout path in the datastore.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp import web
from conftest import WAIT, free_port, make_config

from cardserver import demo
from cardserver.config import Roots
from cardserver.layout import CardFileKind, CardKey, card_path
from cardserver.web.app import create_app
from cardserver.web.keys import READY

pytestmark = pytest.mark.timeout(240)
UI_WAIT = 20_000  # ms

# Every request the card makes carries `hostile=<how>`, so the test can pick them out.
HOSTILE_CARD = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>hostile requests</title></head>
<body>
<script>
window.addEventListener("load", () => {
  const ROOT = "../../../../../";
  const TARGETS = @@TARGETS@@;
  const WAYS = @@WAYS@@;
  const url = (path, how) => ROOT + path + (path.includes("?") ? "&" : "?") + "hostile=" + how;
  const settle = (element, attribute, target) => new Promise((resolve) => {
    element.onload = () => resolve("loaded");
    element.onerror = () => resolve("error");
    element[attribute] = target;
    document.body.appendChild(element);
  });
  const asks = [];
  const ask = {
    cors: (target) => fetch(target).then((r) => "status " + r.status, (e) => "blocked " + e.name),
    nocors: (target) => fetch(target, { mode: "no-cors" }).then((r) => r.type, (e) => "blocked " + e.name),
    img: (target) => settle(new Image(), "src", target),
    script: (target) => settle(document.createElement("script"), "src", target),
    frame: (target) => settle(document.createElement("iframe"), "src", target),
  };
  for (const [name, path] of Object.entries(TARGETS)) {
    for (const way of WAYS) asks.push(ask[way](url(path, name + "-" + way)));
  }
  Promise.all(asks).then(() => { document.body.dataset.done = "1"; });  // the server knows the rest
});
</script>
</body></html>
"""


WAYS = ("cors", "nocors", "img", "script", "frame")
TARGETS = ("flows", "task", "log", "parts", "html", "shell")


def targets(victim: CardKey) -> dict[str, str]:
    """The routes a card must not make us serve: the API, and the card routes that read and
    build a page."""
    task = victim.task
    return {
        "flows": "api/flows",
        "task": f"api/tasks/{task.flow}/{task.run}/{task.step}/{task.task}",
        "log": f"api/logs/{task.flow}/{task.run}/{task.step}/{task.task}?stream=stderr",
        "parts": f"api/cards/{victim}/page",
        "html": f"card-html/{victim}",
        "shell": "card-shell/" + "0" * 64,
    }


class Served:
    """Every response the server prepared, with the fetch metadata of its request: the
    server's own record, not what the card or the browser could see."""

    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self.hostile_count = 0
        self.all_hostile = asyncio.Event()

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        self.responses.append({
            "path": request.path_qs, "status": response.status,
            **{name: request.headers.get(f"Sec-Fetch-{name}") for name in ("Site", "Mode", "Dest")},
        })
        if "hostile=" in request.query_string:
            self.hostile_count += 1
            if self.hostile_count >= len(TARGETS) * len(WAYS):
                self.all_hostile.set()

    def hostile(self) -> list[dict[str, Any]]:
        return [r for r in self.responses if "hostile=" in r["path"]]

    def ours(self, route: str) -> list[dict[str, Any]]:
        return [r for r in self.responses
                if r["path"].startswith(f"/{route}") and "hostile=" not in r["path"]]


@pytest.fixture
async def hostile_server(roots: Roots, aiohttp_client: Any) -> tuple[str, Served, CardKey, CardKey]:
    run = demo.start_run(roots.datastore, flow="FetchFlow")
    victim = run.start_task("victim").add_card(components=[demo.markdown("m", "# victim card")])
    task = run.start_task("hostile")
    key = CardKey(task.key, f"blank-{uuid.uuid4().hex}")
    path = run.cards / card_path(key, CardFileKind.HTML, legacy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HOSTILE_CARD.replace("@@TARGETS@@", json.dumps(targets(victim.key))).replace(
        "@@WAYS@@", json.dumps(WAYS)), encoding="utf-8")
    served = Served()
    app = create_app(make_config(roots))
    app.on_response_prepare.append(served.record)
    port = free_port()
    client = await aiohttp_client(app, server_kwargs={"port": port})
    await asyncio.wait_for(client.app[READY].wait(), WAIT)
    return f"http://127.0.0.1:{port}/", served, key, victim.key


async def all_refused(frame: Any, served: Served) -> None:
    await frame.wait_for_selector("body[data-done]", state="attached", timeout=UI_WAIT)
    await asyncio.wait_for(served.all_hostile.wait(), WAIT)
    hostile = served.hostile()
    not_refused = [r for r in hostile if r["status"] != 403]
    assert not not_refused, not_refused
    # Chromium says each was asked by another site: the card's opaque origin.
    assert {r["Site"] for r in hostile} == {"cross-site"}, hostile


async def test_a_card_in_the_viewer_is_refused_every_way_and_the_viewer_is_served(
    hostile_server: tuple[str, Served, CardKey, CardKey], browser: Any
) -> None:
    url, served, key, victim = hostile_server
    page = await browser.new_page()
    await page.goto(f"{url}run/{key}")
    handle = await page.wait_for_selector(f"#frames iframe[src*='{key.name}']", timeout=UI_WAIT)
    await all_refused(await handle.content_frame(), served)
    # The viewer's own reads: the API and the card's HTML, all served.
    await page.wait_for_selector("#card-list .row", timeout=UI_WAIT)
    api = served.ours("api/")
    assert api and all(r["status"] == 200 and r["Site"] == "same-origin" for r in api), api
    html = [r for r in served.ours("card-html/") if key.name in r["path"]]
    assert html and all(r["status"] == 200 for r in html), html
    # The victim, shown next, still loads.
    await page.goto(f"{url}run/{victim}")
    victim_frame = await page.wait_for_selector(f"#frames iframe[src*='{victim.name}']", timeout=UI_WAIT)
    content = await victim_frame.content_frame()
    await content.wait_for_function("document.body.innerText.includes('victim card')", timeout=UI_WAIT)
    await page.close()


async def test_a_card_on_its_host_page_is_refused_every_way(
    hostile_server: tuple[str, Served, CardKey, CardKey], browser: Any
) -> None:
    url, served, key, _ = hostile_server
    page = await browser.new_page()
    response = await page.goto(f"{url}card/{key}")
    assert response is not None and response.status == 200
    handle = await page.wait_for_selector("#frames iframe", timeout=UI_WAIT)
    await all_refused(await handle.content_frame(), served)
    html = served.ours("card-html/")
    assert html and all(r["status"] == 200 and r["Site"] == "same-origin" for r in html), html
    # Opened at the top level (typed, or a link followed), the card's HTML is still served.
    response = await page.goto(f"{url}card-html/{key}")
    assert response is not None and response.status == 200
    await page.close()


async def test_a_notebook_on_another_site_frames_a_card_and_it_loads(
    hostile_server: tuple[str, Served, CardKey, CardKey], browser: Any, aiohttp_server: Any
) -> None:
    """A notebook output (another site: `localhost` against `127.0.0.1`) frames a card's host
    page, which frames the card's HTML: both are served, the second as asked by our own page."""
    url, served, _, victim = hostile_server

    async def notebook(request: web.Request) -> web.Response:
        return web.Response(text=f'<iframe src="{url}card/{victim}"></iframe>', content_type="text/html")

    app = web.Application()
    app.router.add_get("/", notebook)
    other = await aiohttp_server(app, host="127.0.0.1")
    page = await browser.new_page()
    await page.goto(f"http://localhost:{other.port}/")
    host = await (await page.wait_for_selector("iframe", timeout=UI_WAIT)).content_frame()
    card = await (await host.wait_for_selector("#frames iframe", timeout=UI_WAIT)).content_frame()
    await card.wait_for_function("document.body.innerText.includes('victim card')", timeout=UI_WAIT)
    asked = {r["path"].split("?")[0]: r for r in served.responses}
    assert asked[f"/card/{victim}"]["Site"] == "cross-site" and asked[f"/card/{victim}"]["status"] == 200
    assert asked[f"/card-html/{victim}"]["Site"] == "same-origin"
    assert asked[f"/card-html/{victim}"]["status"] == 200
    await page.close()
