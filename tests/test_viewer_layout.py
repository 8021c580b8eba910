"""The viewer in a 400 px side panel and at full width: readable, navigable, no horizontal
scroll; keyboard moves between cards; the theme follows the system. Layout assertions, not
pixel diffs."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import free_port, make_config

from cardserver import demo

pytestmark = pytest.mark.timeout(120)
UI_WAIT = 20_000


def three_cards(roots: Any) -> list[Any]:
    run = demo.start_run(roots.datastore, flow="AVeryLongFlowNameThatCouldOverflowANarrowPane")
    cards = []
    for n in range(3):
        task = run.start_task("train")
        cards.append(task.add_card(components=[demo.text("t", f"card {n}")]))
        task.finish()
    return cards


async def open_viewer(browser: Any, client: Any, width: int, scheme: str = "light") -> Any:
    page = await browser.new_page(viewport={"width": width, "height": 800}, color_scheme=scheme)
    await page.goto(str(client.make_url("/")))
    await page.wait_for_selector("#frames iframe:not(.incoming)", timeout=UI_WAIT)
    await page.wait_for_function(  # every card listed, not just the first to arrive
        "() => document.querySelectorAll('#card-list .row').length === 3", timeout=UI_WAIT)
    return page


async def box(page: Any, selector: str) -> dict[str, float]:
    found = await page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not visible"
    return dict(found)


async def test_narrow_pane(roots: Any, start_app: Any, browser: Any) -> None:
    three_cards(roots)
    client = await start_app(make_config(roots))
    page = await open_viewer(browser, client, 400)
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "horizontal scroll at 400 px"
    for control in ("#flow-picker", "#run-picker", "#follow", "#toggle-list"):
        found = await box(page, control)
        assert found["x"] >= 0 and found["x"] + found["width"] <= 400, control
    sidebar, stage = await box(page, "#sidebar"), await box(page, ".stage")
    assert sidebar["y"] + sidebar["height"] <= stage["y"] + 1  # stacked, not side by side
    assert stage["height"] >= 300 and (await box(page, "#frames"))["width"] >= 390
    row = await box(page, "#card-list .row >> nth=0")
    assert row["height"] >= 24 and row["width"] >= 380
    # The list can be folded away to give the card the whole pane.
    await page.click("#toggle-list")
    assert not await page.locator("#sidebar").is_visible()
    assert (await box(page, "#frames"))["height"] >= 600


async def test_full_width_side_by_side(roots: Any, start_app: Any, browser: Any) -> None:
    three_cards(roots)
    client = await start_app(make_config(roots))
    page = await open_viewer(browser, client, 1400)
    sidebar, stage = await box(page, "#sidebar"), await box(page, ".stage")
    assert sidebar["x"] + sidebar["width"] <= stage["x"] + 1
    assert stage["width"] >= 1000


async def test_keyboard_moves_between_cards(roots: Any, start_app: Any, browser: Any) -> None:
    cards = three_cards(roots)
    client = await start_app(make_config(roots))
    page = await open_viewer(browser, client, 1200)
    ids = await page.eval_on_selector_all("#card-list .row", "rows => rows.map(r => r.dataset.id)")
    await page.focus("#card-list")
    await page.keyboard.press("Home")
    await page.wait_for_function("(id) => location.pathname.endsWith(id.split('/').pop())",
                                 arg=ids[0], timeout=UI_WAIT)
    await page.keyboard.press("ArrowDown")
    await page.wait_for_function("(id) => location.pathname.endsWith(id.split('/').pop())",
                                 arg=ids[1], timeout=UI_WAIT)
    assert await page.get_attribute("#card-list .row[aria-selected=true]", "data-id") == ids[1]
    assert await page.get_attribute("#follow", "aria-pressed") == "false"
    await page.keyboard.press("k")
    await page.wait_for_function("(id) => location.pathname.endsWith(id.split('/').pop())",
                                 arg=ids[0], timeout=UI_WAIT)
    await page.locator("body").press("f")
    assert await page.get_attribute("#follow", "aria-pressed") == "true"
    assert len(cards) == len(ids)


@pytest.mark.parametrize(("scheme", "dark"), [("dark", True), ("light", False)])
async def test_theme_follows_the_system(roots: Any, start_app: Any, browser: Any, scheme: str,
                                        dark: bool) -> None:
    three_cards(roots)
    client = await start_app(make_config(roots))
    page = await open_viewer(browser, client, 1000, scheme)
    rgb = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    assert (sum(channels) < 200) is dark, rgb


async def test_viewer_works_inside_another_origins_frame(roots: Any, start_app: Any,
                                                         aiohttp_client: Any, browser: Any) -> None:
    """A workspace panel frames the whole viewer: it loads, connects and follows (the panel's
    origin allowed: the viewer lets no other origin frame it)."""
    from aiohttp import web

    from cardserver.jupyter import viewer

    cards = three_cards(roots)
    port = free_port()
    client = await start_app(make_config(roots, allow_origins=frozenset({f"http://localhost:{port}"})))
    frame_html = viewer(server=str(client.make_url("/")))._repr_html_()

    async def workspace(request: web.Request) -> web.Response:
        return web.Response(text=f"<h1>workspace</h1>{frame_html}", content_type="text/html")

    host = web.Application()
    host.router.add_get("/", workspace)
    outer = await aiohttp_client(host, server_kwargs={"port": port})
    page = await browser.new_page()
    await page.goto(f"http://localhost:{outer.server.port}/")
    inner = await (await page.wait_for_selector("iframe")).content_frame()
    await inner.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'",
                                  timeout=UI_WAIT)
    await inner.wait_for_function(
        "(n) => document.querySelectorAll('#card-list .row').length === n", arg=len(cards),
        timeout=UI_WAIT)
    await inner.wait_for_selector("#frames iframe:not(.incoming)", timeout=UI_WAIT)
