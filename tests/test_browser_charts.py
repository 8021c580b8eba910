"""Metaflow's charts are drawn at every width we show a card at, in Chromium (issue 22): the
viewer, a card on its own (`card/…`) and a notebook output, in windows from 400 to 1,920 px, for
real Metaflow cards made at test time. Metaflow's page, first loaded narrower than 60rem, draws
a chart with no width of its own 0 px wide (static/card-charts.css says why; docs/cards.md).

Every width of a test opens at once, each in a page of its own, in one browser: a card first
loaded narrow is the case that failed (a page loaded wide, then narrowed, kept its chart)."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, start_flow
from playwright.async_api import Error as PlaywrightError
from test_browser import UI_WAIT, shown_eval, until_shown
from test_cardscript import card_key
from test_jupyter import notebook_page

from cardserver.config import Roots
from cardserver.jupyter import Inline

pytestmark = pytest.mark.timeout(240)
WIDTHS = (400, 700, 1000, 1280, 1920)
HEIGHT = 900
SLOW_WAIT = 2 * UI_WAIT  # ms: five pages load at once, each a card and those it loads ahead

# Run in a card's frame: each chart, as drawn. `marks` are the boxes of what it drew (a canvas
# draws on itself); `scroller` is its own box when it scrolls sideways, wider than the card.
CHARTS = """() => [...document.querySelectorAll('.vega-embed')].map((embed) => {
  const box = (node) => { const r = node.getBoundingClientRect(); return [r.left, r.right]; };
  const drawn = embed.querySelector('svg.marks, canvas');
  const marks = drawn && drawn.tagName === 'CANVAS' ? [drawn] : [...embed.querySelectorAll('.role-mark')];
  return {
    width: drawn ? Math.round(drawn.getBoundingClientRect().width) : 0,
    marks: marks.map(box),
    scroller: embed.scrollWidth > embed.clientWidth + 1 ? box(embed) : null,
  };
})"""
# Run in a card's frame: whether at least `n` charts are drawn and in view (problems() says it
# in words): what to wait for, since Vega draws a beat after the page or the window changed.
DRAWN = f"""(n) => {{
  const charts = ({CHARTS})();
  const inside = ([left, right]) => left >= -1 && right <= innerWidth + 1;
  return charts.length >= n && charts.every((c) => c.width > 100 && c.marks.length
    && (c.scroller ? [c.scroller] : c.marks).every(inside));
}}"""
# The card frame's width, and the width of each section of the card (Metaflow's `<section>`).
PAGE = """() => ({ visible: innerWidth,
  sections: [...document.querySelectorAll('section')].map((s) => s.offsetWidth) })"""
# Run in the top page: the left and right of each card frame (the shown one) and the window's width.
FRAMES = """() => ({ visible: innerWidth, frames: [...document.querySelectorAll('iframe')]
  .filter((f) => !f.matches('.incoming, .kept')).map((f) => { const r = f.getBoundingClientRect();
  return [r.left, r.right]; }) })"""


def problems(width: int, charts: list[dict[str, Any]], page: dict[str, Any], wanted: int) -> list[str]:
    """What is wrong with the charts of one card frame, seen in a window `width` px wide."""
    found = [] if len(charts) >= wanted else [f"{width}px: {len(charts)} charts, not {wanted}"]
    visible = page["visible"]
    inside = lambda box: box[0] >= -1 and box[1] <= visible + 1  # noqa: E731
    for n, chart in enumerate(charts):
        if chart["width"] <= 100:
            found.append(f"{width}px: chart {n} drawn {chart['width']} px wide")
        if not chart["marks"]:
            found.append(f"{width}px: chart {n} drew no marks")
        # Wider than the card: it scrolls under itself, and that box is in view.
        shown = [chart["scroller"]] if chart["scroller"] else chart["marks"]
        if not all(inside(box) for box in shown):
            found.append(f"{width}px: chart {n} outside the {visible} px frame: {shown}")
    if not page["sections"] or min(page["sections"]) <= 100:
        found.append(f"{width}px: the card's sections are {page['sections']} px wide")
    return found


def in_view(width: int, top: dict[str, Any]) -> list[str]:
    """Each shown card frame lies inside the window, sideways."""
    return [f"{width}px: a card frame at {box} in a {top['visible']} px window"
            for box in top["frames"] if box[0] < -1 or box[1] > top["visible"] + 1]


def text(words: str) -> str:
    """Run in a card's frame: whether it shows `words`."""
    return f"document.body.innerText.includes({json.dumps(words)})"


HAS_CHART = "!!document.querySelector('.vega-embed')"  # a chart, drawn or not
POINTS = "document.querySelectorAll('.mark-symbol path').length"  # the Altair chart's points


async def charts_of(page: Any, width: int, wanted: int, shown: str) -> list[str]:
    """Wait for the shown card (viewer or `card/…`) to be the one where `shown` holds, and to
    draw `wanted` charts; what is wrong with them (nothing, when they are drawn and in view)."""
    try:
        await until_shown(page, shown, wait_ms=SLOW_WAIT)
    except (AssertionError, PlaywrightError):
        return [f"{width}px: the card where {shown} was never shown"]
    with suppress(AssertionError, PlaywrightError):  # not drawn: reported below, with what was
        await until_shown(page, DRAWN, wanted, wait_ms=SLOW_WAIT)
    found = problems(width, await shown_eval(page, CHARTS), await shown_eval(page, PAGE), wanted)
    return found + in_view(width, await page.evaluate(FRAMES))


async def open_pages(browser: Any, url: str) -> list[Any]:
    """One page per width, each first loaded at its width."""
    pages = [await browser.new_page(viewport={"width": w, "height": HEIGHT}) for w in WIDTHS]
    await asyncio.gather(*(page.goto(url) for page in pages))
    return pages


async def all_widths(pages: list[Any], wanted: int, shown: str,
                     widths: tuple[int, ...] = WIDTHS) -> list[str]:
    """charts_of() each page, page `n` seen in a window `widths[n]` px wide."""
    found = await asyncio.gather(*(charts_of(page, width, wanted, shown)
                                   for page, width in zip(pages, widths, strict=True)))
    return [line for lines in found for line in lines]


def blank_card(roots: Roots) -> str:
    """The first `branch` blank card (a Markdown, a Table and a VegaChart with no width)."""
    return str(card_key(roots, next(roots.cards.rglob("branch/tasks/*/cards/blank-*.html"))))


def default_card(roots: Roots) -> str:
    return str(card_key(roots, next(roots.cards.rglob("cards/default-*.html"))))


# Run in the viewer: whether card `n` has a frame loaded and hidden (kept, or loaded ahead).
LOADED_HIDDEN = ("(n) => [...document.querySelectorAll('#frames iframe[data-card].kept')]"
                 ".some((f) => f.dataset.card.includes(n))")
ROW = "#card-list .row[data-card]"


async def test_viewer_charts_at_every_width(metaflow_cards: Roots, start_app: Any, browser: Any) -> None:
    """In the viewer: Metaflow's default card is laid out; the blank card after it in the list,
    loaded ahead while the default one is shown, then picked, draws its chart with no width; and
    so it does again when picked once more, from the frame kept for it."""
    client = await start_app(make_config(metaflow_cards))
    pages = await open_pages(browser, str(client.make_url(f"/run/{default_card(metaflow_cards)}")))
    found = await all_widths(pages, 0, text("Task Metadata"))  # no chart: laid out in full
    rows = [page.locator(ROW) for page in pages]
    names = [await row.nth(1).get_attribute("data-card") for row in rows]
    await asyncio.gather(*(page.wait_for_function(LOADED_HIDDEN, arg=name, timeout=SLOW_WAIT)
                           for page, name in zip(pages, names, strict=True)))
    await asyncio.gather(*(row.nth(1).click() for row in rows))  # loaded ahead
    found += await all_widths(pages, 1, HAS_CHART)
    await asyncio.gather(*(row.nth(0).click() for row in rows))
    await asyncio.gather(*(page.wait_for_function(LOADED_HIDDEN, arg=name, timeout=SLOW_WAIT)
                           for page, name in zip(pages, names, strict=True)))
    await asyncio.gather(*(row.nth(1).click() for row in rows))  # kept
    found += await all_widths(pages, 1, HAS_CHART)
    # The window resized, wider or narrower: the chart follows the card's new width.
    resized = tuple(reversed(WIDTHS))
    await asyncio.gather(*(page.set_viewport_size({"width": w, "height": HEIGHT})
                           for page, w in zip(pages, resized, strict=True)))
    found += await all_widths(pages, 1, HAS_CHART, resized)
    assert not found, "\n".join(found)


async def test_card_on_its_own_at_every_width(metaflow_cards: Roots, start_app: Any, browser: Any) -> None:
    """`card/…`: a finished blank card's chart with no width is drawn, and Metaflow's default
    card is laid out, at every width."""
    client = await start_app(make_config(metaflow_cards))
    found = []
    for card, charts, shown in ((blank_card(metaflow_cards), 1, HAS_CHART),
                                (default_card(metaflow_cards), 0, text("Task Metadata"))):
        pages = await open_pages(browser, str(client.make_url(f"/card/{card}")))
        found += await all_widths(pages, charts, shown)
        await asyncio.gather(*(page.close() for page in pages))
    assert not found, "\n".join(found)


async def test_chart_in_a_notebook_output(
    metaflow_cards: Roots, start_app: Any, aiohttp_client: Any, browser: Any
) -> None:
    """The card in a notebook's output cell (cardserver.jupyter's frame of `card/…`, on another
    origin), at an ordinary cell width, and narrower."""
    client = await start_app(make_config(metaflow_cards))
    page = await notebook_page(aiohttp_client, browser,
                               Inline(str(client.make_url(f"/card/{blank_card(metaflow_cards)}"))))
    for width in (900, 500):
        await page.set_viewport_size({"width": width, "height": HEIGHT})
        await page.reload()
        host = await (await page.wait_for_selector("iframe")).content_frame()
        frame = await (await host.wait_for_selector("#frames iframe", timeout=UI_WAIT)).content_frame()
        await frame.wait_for_function(HAS_CHART, timeout=UI_WAIT)
        with suppress(PlaywrightError):  # not drawn: reported below
            await frame.wait_for_function(DRAWN, arg=1, timeout=UI_WAIT / 2)
        found = problems(width, await frame.evaluate(CHARTS), await frame.evaluate(PAGE), 1)
        found += in_view(width, await page.evaluate(FRAMES)) + in_view(width, await host.evaluate(FRAMES))
        assert not found, "\n".join(found)


async def test_live_altair_chart_at_every_width(tmp_path: Path, start_app: Any, browser: Any) -> None:
    """tests/flows/chart_card_flow.py: an Altair chart with no width, updated live, beside a
    chart wider than the pane: drawn, and in view or scrolling in view, at every width, in the
    viewer and on its own, while live and after the final render."""
    flow = start_flow("chart_card_flow.py", tmp_path)
    try:
        roots = Roots(tmp_path / ".metaflow", tmp_path / ".metaflow" / "mf.cards")
        client = await start_app(make_config(roots))
        key = await first_card(roots, client)
        pages = [*await open_pages(browser, str(client.make_url(f"/run/{key}"))),
                 *await open_pages(browser, str(client.make_url(f"/card/{key}")))]
        halves = [pages[: len(WIDTHS)], pages[len(WIDTHS) :]]
        # The update applied: the chart draws its four points, with no width of its own still.
        live = f"{text('loss 1')} && {POINTS} === 4"
        found = [line for half in halves for line in await all_widths(half, 2, live)]
        assert not found, "live:\n" + "\n".join(found)
        (tmp_path / "done").touch()
        final = f"{text('loss final')} && {POINTS} === 4 && window.METAFLOW_RELOAD_TOKEN === 'final'"
        found = [line for half in halves for line in await all_widths(half, 2, final)]
        assert not found, "final:\n" + "\n".join(found)
    finally:
        flow.kill()


async def first_card(roots: Roots, client: Any) -> str:
    """The flow's card, once Metaflow has written its first render and the server knows it
    (nothing tells us but the disk and the API: we look every 100 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        for file in roots.cards.rglob("cards/blank-*.html"):
            key = str(card_key(roots, file))
            if (await client.get(f"/api/cards/{key}")).status == 200:
                return key
        await asyncio.sleep(0.1)
    raise AssertionError("the flow wrote no card")
