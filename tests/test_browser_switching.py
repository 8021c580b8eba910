"""Switching cards in the viewer, in Chromium: a card shown before is kept loaded and hidden,
holds on to what changed while hidden (an update, a new render), and shows the newest the
very frame it is visible again, in the same document; the next card is loaded ahead."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import live_flow_moves_in_place, make_config, start_flow
from test_browser import UI_WAIT, live_run

from cardserver import demo
from cardserver.config import Roots

pytestmark = pytest.mark.timeout(240)

# Run inside a card frame: when the frame first comes on screen (an IntersectionObserver on
# the top-level viewport fires in the rendering step that paints it), note what it shows.
WATCH_SHOWN = """() => {
  window.__seen = null;
  new IntersectionObserver((entries) => {
    if (window.__seen === null && entries.some((e) => e.isIntersecting)) {
      window.__seen = document.body.innerText;
    }
  }).observe(document.body);
}"""


# Whether card `n` has a frame loaded and hidden (kept, or loaded ahead).
KEPT = ("(n) => [...document.querySelectorAll('#frames iframe[data-card].kept')]"
        ".some((f) => f.dataset.card.includes(n))")


async def card_frames(page: Any, name: str) -> list[Any]:
    """The frames of card `name` (loaded from its URL, or written into a warm frame)."""
    handles = await page.query_selector_all(f"#frames iframe[data-card*='{name}']")
    frames = [await handle.content_frame() for handle in handles]
    return [frame for frame in frames if frame is not None]


async def kept_frame(page: Any, name: str, script: str) -> Any:
    """The one frame of card `name`, once `script` holds in it (it may still be swapping)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UI_WAIT / 1000
    while loop.time() < deadline:
        frames = await card_frames(page, name)
        if len(frames) == 1:
            try:
                if await frames[0].evaluate(script):
                    return frames[0]
            except Exception:  # swapped under us: look again
                pass
        await page.wait_for_timeout(50)
    raise AssertionError(f"card {name}: never one frame where {script}")


def default_card(roots: Roots) -> tuple[str, str, str]:
    """The run's `start` default card: (flow, run, its deep link in the viewer)."""
    first = next(roots.cards.rglob("cards/default-*.html"))
    flow, _, run, _, step, _, task = str(first.relative_to(roots.cards)).split("/")[:7]
    return flow, run, f"/run/{flow}/{run}/{step}/{task}/{first.stem}"


def socket_log(page: Any) -> list[str]:
    """Every message the page's websockets receive, as it arrives."""
    received: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(str(payload))))
    return received


async def until_updated(page: Any, received: list[str], card: Any, value: int) -> None:
    """Wait until the page's socket got the update that sets `card`'s bar to `value`."""
    def holds(text: str) -> bool:
        message = json.loads(text)
        return (message.get("type") == "update" and message.get("topic", "").endswith(card.key.name)
                and message["data"].get("bar", {}).get("value") == value)

    for _ in range(UI_WAIT // 50):
        if any(holds(m) for m in received):
            return
        await page.wait_for_timeout(50)
    raise AssertionError(f"the viewer never received the update to {value}")


async def shown_names(page: Any) -> list[str]:
    return await page.evaluate(
        "[...document.querySelectorAll('#frames iframe[data-card]:not(.kept):not(.incoming)')]"
        ".map((f) => f.dataset.card)")


async def test_kept_card_is_never_stale(roots: Any, start_app: Any, browser: Any) -> None:
    run, first = live_run(roots)
    other = run.start_task("train").add_card(components=[demo.markdown("title", "# the other card")])
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    received = socket_log(page)
    t = first.key.task
    await page.goto(str(client.make_url(f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/{first.key.name}")))
    frame = await kept_frame(page, first.key.name, "!!document.querySelector('[data-component-id=bar]')")
    await frame.evaluate("window.__marker = 'kept'")

    # Away to the other card: the first stays loaded, hidden, still subscribed.
    await page.locator(f"#card-list .row[data-id='train/{other.key.task.task}/{other.key.name}']").click()
    await page.wait_for_function(
        KEPT,
        arg=first.key.name, timeout=UI_WAIT)
    assert any(other.key.name in src for src in await shown_names(page))

    # While hidden: an update lands. It is held, not applied (a hidden card costs nothing)...
    first.update({"bar": demo.progress("bar", 41, 100, "epochs")})
    first.update({"bar": demo.progress("bar", 42, 100, "epochs")})
    await until_updated(page, received, first, 42)
    hidden = (await card_frames(page, first.key.name))[0]
    assert "42" not in await hidden.evaluate("document.querySelector('[data-component-id=bar]').textContent")
    # ... and shown again, the very first frame on screen has it, in the same document.
    await hidden.evaluate(WATCH_SHOWN)
    await page.locator(f"#card-list .row[data-id='train/{t.task}/{first.key.name}']").click()
    await hidden.wait_for_function("window.__seen !== null", timeout=UI_WAIT)
    assert "42" in await hidden.evaluate("window.__seen")
    assert await hidden.evaluate("window.__marker") == "kept"

    # Hidden again, the card is re-rendered (a new layout) and then updated: the new render
    # loads behind while hidden, and shown again it is the newest layout with the newest data.
    await page.locator(f"#card-list .row[data-id='train/{other.key.task.task}/{other.key.name}']").click()
    await page.wait_for_function(
        KEPT,
        arg=first.key.name, timeout=UI_WAIT)
    first.rerender([demo.markdown("title", "# a new layout"), demo.progress("bar", 50, 100, "epochs")])
    rendered = await kept_frame(page, first.key.name, "document.body.innerText.includes('a new layout')")
    first.update({"bar": demo.progress("bar", 77, 100, "epochs")})
    await until_updated(page, received, first, 77)
    await rendered.evaluate(WATCH_SHOWN)
    await rendered.evaluate("window.__marker = 'rendered'")
    await page.locator(f"#card-list .row[data-id='train/{t.task}/{first.key.name}']").click()
    await rendered.wait_for_function("window.__seen !== null", timeout=UI_WAIT)
    seen = await rendered.evaluate("window.__seen")
    assert "a new layout" in seen and "77" in seen, seen
    assert await rendered.evaluate("window.__marker") == "rendered"  # kept: no reload on show


async def test_next_card_is_loaded_ahead(roots: Any, start_app: Any, browser: Any) -> None:
    run, first = live_run(roots)
    second = run.start_task("train").add_card(components=[demo.markdown("title", "# second"),
                                                           demo.progress("bar", 0, 100, "epochs")])
    second.update({"bar": demo.progress("bar", 5, 100, "epochs")})
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    received = socket_log(page)
    t = first.key.task
    await page.goto(str(client.make_url(f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/{first.key.name}")))
    # Nothing clicked: once the shown card has loaded, the next one loads hidden, given the
    # update it had when it loaded.
    bar = "document.querySelector('[data-component-id=bar]').textContent"
    ahead = await kept_frame(page, second.key.name, f"{bar}.includes('5')")
    await ahead.evaluate("window.__marker = 'ahead'")
    # An update while it waits hidden is held, and shown with it the first frame it is seen.
    second.update({"bar": demo.progress("bar", 6, 100, "epochs")})
    await until_updated(page, received, second, 6)
    assert "6" not in await ahead.evaluate(bar)
    await ahead.evaluate(WATCH_SHOWN)
    await page.keyboard.press("j")
    await ahead.wait_for_function("window.__seen !== null", timeout=UI_WAIT)
    assert "6" in await ahead.evaluate("window.__seen")
    assert await ahead.evaluate("window.__marker") == "ahead"  # the frame loaded ahead is shown
    # Shown, it is live again: the next update moves it in place.
    second.update({"bar": demo.progress("bar", 7, 100, "epochs")})
    await ahead.wait_for_function(f"{bar}.includes('7')", timeout=UI_WAIT)
    # With ?keep=0 nothing is kept or loaded ahead: one card frame at a time.
    await page.goto(str(client.make_url(f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/{first.key.name}?keep=0")))
    await kept_frame(page, first.key.name, "!!document.querySelector('[data-component-id=bar]')")
    assert await card_frames(page, second.key.name) == []


# Press `j` and say, in the same task, whether the frame of card `name` is on screen yet.
PRESS_J = """(name) => {
  document.body.dispatchEvent(new KeyboardEvent("keydown", { key: "j", bubbles: true }));
  const frame = [...document.querySelectorAll("#frames iframe[data-card]")]
    .find((f) => f.dataset.card.includes(name));
  return frame ? frame.className : "no frame";
}"""


async def test_loaded_card_is_shown_at_once(metaflow_cards: Any, start_app: Any, browser: Any) -> None:
    """Real Metaflow cards: their final render keeps the last runtime update (of another render
    token) beside it, which the card would never apply. A card loaded ahead with nothing newer
    to apply is shown by the key press itself, not after waiting on the card's renderer."""
    client = await start_app(make_config(metaflow_cards))
    first = next(metaflow_cards.cards.rglob("cards/default-*.html"))
    page = await browser.new_page()
    await page.goto(str(client.make_url(default_card(metaflow_cards)[2])))
    listed = "[...document.querySelectorAll('#card-list .row[data-card]')].map((n) => n.dataset.card)"
    await page.wait_for_function(f"() => {listed}.length === 5", timeout=UI_WAIT)
    rows = await page.evaluate(listed)
    following = rows[rows.index(first.stem) + 1]
    await kept_frame(page, following, "document.body.innerText.includes('branch')")
    await page.wait_for_function(  # loaded: not still swapping in
        KEPT,
        arg=following, timeout=UI_WAIT)
    assert "kept" not in await page.evaluate(PRESS_J, following)


# Press a card row (no pointer moved over it first), and never release it.
PRESS_ROW = """(id) => {
  const row = document.querySelector(`#card-list .row[data-id="${id}"]`);
  row.dispatchEvent(new PointerEvent("pointerdown", { bubbles: true }));
}"""


async def test_pressed_card_loads_before_the_click(roots: Any, start_app: Any, browser: Any) -> None:
    run, first = live_run(roots)
    run.start_task("eval").add_card(components=[demo.markdown("title", "# next: loaded ahead")])
    pressed = run.start_task("eval").add_card(components=[demo.markdown("title", "# pressed")])
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    t = first.key.task
    await page.goto(str(client.make_url(f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/{first.key.name}")))
    await kept_frame(page, first.key.name, "!!document.querySelector('[data-component-id=bar]')")
    assert await card_frames(page, pressed.key.name) == []  # not next to the shown card: not loaded ahead
    await page.evaluate(PRESS_ROW, f"eval/{pressed.key.task.task}/{pressed.key.name}")
    # Loading while the button is still down, and only loading: no click came, nothing switched.
    await kept_frame(page, pressed.key.name, "document.body.innerText.includes('pressed')")
    shown = await shown_names(page)
    assert len(shown) == 1 and first.key.name in shown[0]


WARM_READY = "#frames iframe.shell:not(.incoming)"  # the warm frame kept ready
SHOWN_FRAME = """(name) => {
  const frame = [...document.querySelectorAll("#frames iframe[data-card]:not(.incoming):not(.kept)")]
    .find((f) => f.dataset.card.includes(name));
  if (!frame) return null;
  return { src: frame.src, token: frame.dataset.token || "", sandbox: frame.getAttribute("sandbox") };
}"""
# The card's text but its chart's (whose axis ticks depend on the frame's width).
CARD_TEXT = """(() => {
  const card = document.querySelector('.card_app').cloneNode(true);
  for (const chart of card.querySelectorAll('svg, canvas')) chart.remove();
  return card.textContent;
})()"""
CHARTED = "!!document.querySelector('.card_app svg, .card_app canvas')"


async def test_first_visit_opens_in_a_warm_frame(metaflow_cards: Any, start_app: Any, browser: Any) -> None:
    """A card never loaded is written into the warm frame (Metaflow's bundle compiled ahead,
    not run) and shows what its own URL shows, live-ready and sandboxed; the warm frame is
    used for that one card, and a new one is warmed for the next."""
    client = await start_app(make_config(metaflow_cards))
    flow, run, link = default_card(metaflow_cards)
    page = await browser.new_page()
    await page.goto(str(client.make_url(link)))
    listed = "[...document.querySelectorAll('#card-list .row[data-card]')]"
    await page.wait_for_function(f"() => {listed}.length === 5", timeout=UI_WAIT)
    shell = await page.wait_for_selector(WARM_READY, state="attached", timeout=UI_WAIT)
    assert "/card-shell/" in (await shell.get_attribute("src") or "")
    # Far from the shown card (only its neighbours are loaded ahead) and never pointed at.
    target = await page.evaluate(f"() => {listed}[3].dataset.id")
    name = target.split("/")[-1]
    assert await page.evaluate(SHOWN_FRAME, name) is None
    await page.evaluate("(id) => document.querySelector(`#card-list .row[data-id='${id}']`).click()", target)
    await page.wait_for_function(f"(n) => ({SHOWN_FRAME})(n) !== null", arg=name, timeout=UI_WAIT)
    shown = await page.evaluate(SHOWN_FRAME, name)
    assert "/card-shell/" in shown["src"]  # the warm frame it was written into
    assert shown["token"] == "final"  # the card's runtime runs in it, and told us its render
    assert "allow-same-origin" not in shown["sandbox"].split()
    handle = await page.query_selector(f"#frames iframe[data-card*='{name}']")
    assert handle is not None
    written = await handle.content_frame()
    assert await written.evaluate("window.origin") == "null"
    await written.wait_for_function(CHARTED, timeout=UI_WAIT)
    # Its own URL, in its own host page, shows the very same card.
    alone = await browser.new_page()
    step, task = target.split("/")[:2]
    await alone.goto(str(client.make_url(f"/card/{flow}/{run}/{step}/{task}/{name}")))
    framed = await alone.wait_for_selector("#frames iframe:not(.incoming)", timeout=UI_WAIT)
    own = await framed.content_frame()
    await own.wait_for_function(CHARTED, timeout=UI_WAIT)
    assert await written.evaluate(CARD_TEXT) == await own.evaluate(CARD_TEXT)
    assert "branch" in await own.evaluate(CARD_TEXT)
    # One card per warm frame: the next is a new frame.
    fresh = await page.wait_for_selector(WARM_READY, state="attached", timeout=UI_WAIT)
    assert not await page.evaluate("([a, b]) => a === b", [fresh, handle])
    await alone.close()
    await page.close()


async def test_live_card_in_a_warm_frame_moves_in_place(
    tmp_path: Path, metaflow_cards: Roots, start_app: Any, browser: Any
) -> None:
    """A running Metaflow card opened in a warm frame: its updates arrive in the same document,
    as in a card loaded from its URL."""
    shutil.copytree(metaflow_cards.datastore, tmp_path / ".metaflow")  # a finished card to see first
    flow = start_flow("live_card_flow.py", tmp_path)
    try:
        roots = Roots(tmp_path / ".metaflow", tmp_path / ".metaflow" / "mf.cards")
        client = await start_app(make_config(roots))
        page = await browser.new_page()
        await page.goto(str(client.make_url(default_card(metaflow_cards)[2])))
        await page.wait_for_selector(WARM_READY, state="attached", timeout=UI_WAIT)
        await page.wait_for_selector("#flow-picker option[value='LiveCardFlow']", state="attached",
                                     timeout=UI_WAIT * 3)
        await page.select_option("#flow-picker", "LiveCardFlow")
        row = page.locator("#card-list .row[data-card]").first
        await row.wait_for(timeout=UI_WAIT * 3)
        await row.click()
        name = await row.get_attribute("data-card")
        await page.wait_for_function(f"(n) => ({SHOWN_FRAME})(n) !== null", arg=name, timeout=UI_WAIT)
        assert "/card-shell/" in (await page.evaluate(SHOWN_FRAME, name))["src"]
        handle = await page.query_selector(f"#frames iframe[data-card*='{name}']")
        assert handle is not None
        await live_flow_moves_in_place(await handle.content_frame(), tmp_path, UI_WAIT * 3)
    finally:
        flow.kill()


# Run in a card's frame, as a hostile card would: post a page of its own to every other frame
# of the viewer (the warm frame kept ready among them).
POST_TO_SIBLINGS = """() => {
  for (let i = 0; i < parent.frames.length; i++) {
    if (parent.frames[i] === window) continue;
    parent.frames[i].postMessage({ cardserver: "page", before: "<p id=pwned>taken</p>", after: "" }, "*");
  }
  return parent.frames.length;
}"""


async def test_a_card_cannot_write_into_the_warm_frame(
    metaflow_cards: Any, start_app: Any, browser: Any
) -> None:
    """The warm frame kept ready takes a page from the viewer only: a card posting one to it
    (it can reach its sibling frames) is ignored, and the warm frame still opens the next card."""
    client = await start_app(make_config(metaflow_cards))
    first = next(metaflow_cards.cards.rglob("cards/default-*.html"))
    page = await browser.new_page()
    await page.goto(str(client.make_url(default_card(metaflow_cards)[2])))
    shell = await page.wait_for_selector(WARM_READY, state="attached", timeout=UI_WAIT)
    shown = await page.wait_for_selector(f"#frames iframe[data-card*='{first.stem}']:not(.incoming)",
                                         state="attached", timeout=UI_WAIT)
    card = await shown.content_frame()
    assert await card.evaluate(POST_TO_SIBLINGS) >= 2
    warm = await shell.content_frame()
    # Had the warm frame taken that page, it would take no other: the pick below would hang.
    listed = "[...document.querySelectorAll('#card-list .row[data-card]')]"
    target = await page.evaluate(f"() => {listed}[3].dataset.id")
    await page.evaluate("(id) => document.querySelector(`#card-list .row[data-id='${id}']`).click()", target)
    name = target.split("/")[-1]
    await page.wait_for_function(f"(n) => ({SHOWN_FRAME})(n) !== null", arg=name, timeout=UI_WAIT)
    assert await page.evaluate("([a, b]) => a === b", [shell, await page.query_selector(
        f"#frames iframe[data-card*='{name}']")])  # the same warm frame, given the card by us
    assert "branch" in await warm.evaluate(CARD_TEXT)
    assert await warm.evaluate("document.getElementById('pwned') === null")
