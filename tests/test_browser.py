"""What a person sees, in Chromium: the running card shows, values change in place, follow mode
moves to a new run, deep links reopen a card, re-renders swap without a blank frame."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import launch, live_flow_moves_in_place, make_config, start_flow
from playwright.async_api import Error as PlaywrightError

from cardserver import demo
from cardserver.config import Limits

pytestmark = pytest.mark.timeout(240)
UI_WAIT = 20_000  # ms


async def shown_frame(page: Any) -> Any:
    """The card frame a person sees (not one loading behind it). The viewer swaps frames, so
    a handle can go stale between two calls: ask again until one holds."""
    for _ in range(50):
        handle = await page.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT)
        frame = await handle.content_frame()
        if frame is not None and not frame.is_detached():
            return frame
        await page.wait_for_timeout(20)  # the swap is one task away; do not spin
    raise AssertionError("no card frame settled")


def swapped_away(page: Any, error: Exception) -> bool:
    """The frame was removed under us: detached, or (a sandboxed card runs out of process) its
    target closed. Only the page itself closing is a real failure."""
    text = str(error)
    return not page.is_closed() and ("detached" in text or "Target page, context or browser" in text)


async def shown_eval(page: Any, script: str) -> Any:
    """Evaluate in the shown card frame, asking again if the viewer swapped it meanwhile."""
    for _ in range(50):
        frame = await shown_frame(page)
        try:
            return await frame.evaluate(script)
        except PlaywrightError as error:
            if not swapped_away(page, error):
                raise
    raise AssertionError("the card frame never held still")


async def until_shown(page: Any, script: str, arg: Any = None) -> Any:
    """Wait for `script` to hold in whichever card frame is shown, across frame swaps."""
    deadline = asyncio.get_running_loop().time() + UI_WAIT / 1000
    while True:
        frame = await shown_frame(page)
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"never true in the shown card: {script}")
        try:
            return await frame.wait_for_function(script, arg=arg, timeout=left * 1000)
        except PlaywrightError as error:
            if not swapped_away(page, error):
                raise


async def wait_card_frame(page: Any, contains: str = "/card-html/") -> Any:
    await page.wait_for_function(
        """(part) => [...document.querySelectorAll('#frames iframe:not(.incoming):not(.kept)')]
                     .some(f => (f.dataset.card || f.src).includes(part))""",
        arg=contains, timeout=UI_WAIT,
    )
    frame = await shown_frame(page)
    await frame.wait_for_load_state()
    return frame


def live_run(roots: Any, flow: str = "DemoFlow", value: int = 0) -> tuple[Any, Any]:
    run = demo.start_run(roots.datastore, flow=flow)
    task = run.start_task("train")
    card = task.add_card(components=[demo.progress("bar", value, 100, "epochs"),
                                     demo.markdown("title", "# hello")])
    return run, card


async def test_running_card_updates_in_place(roots: Any, start_app: Any, browser: Any) -> None:
    run, card = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    frame = await wait_card_frame(page, f"/{run.run}/")
    await frame.evaluate("window.__marker = 'still here'")
    scroll_before = await frame.evaluate("document.scrollingElement.scrollTop")
    for value in (10, 20, 30):
        card.update({"bar": demo.progress("bar", value, 100, "epochs")})
        await frame.wait_for_function(
            f"document.querySelector('[data-component-id=bar]').textContent.includes('{value}')",
            timeout=UI_WAIT,
        )
    assert await frame.evaluate("window.__marker") == "still here"  # same document: no reload
    assert await frame.evaluate("document.scrollingElement.scrollTop") == scroll_before
    assert await page.get_attribute("#follow", "aria-pressed") == "true"
    assert await page.text_content("#connection") == "live"
    assert "?follow" in page.url and f"/run/DemoFlow/{run.run}/train/" in page.url


async def test_an_update_stamped_ahead_holds_back_none_after_it(
    roots: Any, start_app: Any, browser: Any
) -> None:
    """Issue 21, finding 6: updates are shown in the order they arrive. One stamped an hour
    ahead (`created_on`: the writer's clock) is shown, and so is every correct one after it,
    by the server and by the page alike."""
    run, card = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    frame = await wait_card_frame(page, f"/{run.run}/")
    bar = "document.querySelector('[data-component-id=bar]').textContent.includes('{}')"
    card.update({"bar": demo.progress("bar", 10, 100, "epochs")})
    await frame.wait_for_function(bar.format(10), timeout=UI_WAIT)
    ahead = {**card.state, "bar": {**card.state["bar"], "value": 20, "label": "ahead"}}
    demo.write_atomic(card.path_data, json.dumps(
        {"reload_token": card.token, "data": ahead, "created_on": time.time() + 3600}).encode())
    await frame.wait_for_function(bar.format("ahead"), timeout=UI_WAIT)
    for value in (30, 40):  # stamped now, after the one from the future
        card.update({"bar": demo.progress("bar", value, 100, "epochs")})
        await frame.wait_for_function(bar.format(value), timeout=UI_WAIT)


async def test_follow_moves_to_new_run_and_hand_pick_stops_it(
    roots: Any, start_app: Any, browser: Any
) -> None:
    first, _ = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    await wait_card_frame(page, f"/{first.run}/")
    second, _ = live_run(roots)
    await wait_card_frame(page, f"/{second.run}/")
    await page.wait_for_function("(r) => location.pathname.includes(r)", arg=second.run,
                                 timeout=UI_WAIT)
    # Choosing a card by hand turns following off.
    other = second.start_task("train")
    other.add_card(components=[demo.text("t", "other card")])
    row = page.locator(f"#card-list .row[data-id^='train/{other.key.task}/']")
    await row.click(timeout=UI_WAIT)
    assert await page.get_attribute("#follow", "aria-pressed") == "false"
    await wait_card_frame(page, f"/train/{other.key.task}/")
    third, _ = live_run(roots)
    await page.wait_for_function(
        "() => document.querySelectorAll('#run-picker option').length >= 3", timeout=UI_WAIT)
    assert third.run not in page.url  # not following any more


async def test_deep_link_reopens_the_card(roots: Any, start_app: Any, browser: Any) -> None:
    run, card = live_run(roots)
    task2 = run.start_task("train")
    wanted = task2.add_card(id="loss", components=[demo.text("t", "the wanted card")])
    task2.finish()
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    t = wanted.key.task
    await page.goto(str(client.make_url(f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/{wanted.key.name}")))
    frame = await wait_card_frame(page, wanted.key.name)
    await frame.wait_for_function("document.body.innerText.includes('the wanted card')",
                                  timeout=UI_WAIT)
    assert await page.get_attribute("#follow", "aria-pressed") == "false"
    selected = page.locator("#card-list .row[aria-selected=true]")
    assert await selected.get_attribute("data-id") == f"train/{t.task}/{wanted.key.name}"
    # Picking another card changes the address; Back reopens the first one.
    await page.locator(f"#card-list .row[data-id='train/{card.key.task.task}/{card.key.name}']").click()
    await page.wait_for_function("(n) => location.pathname.endsWith(n)", arg=card.key.name,
                                 timeout=UI_WAIT)
    await page.go_back()
    await wait_card_frame(page, wanted.key.name)


async def test_rerender_swaps_without_blank_frame(roots: Any, start_app: Any, browser: Any) -> None:
    _, card = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    await wait_card_frame(page, card.key.name)
    # Record, on every DOM change, whether any shown (not incoming) frame exists.
    await page.evaluate("""() => {
        window.__blank = 0;
        new MutationObserver(() => {
            if (!document.querySelector('#frames iframe:not(.incoming):not(.kept)')) window.__blank++;
        }).observe(document.getElementById('frames'), {childList: true, subtree: true,
                                                        attributes: true});
    }""")
    card.rerender([demo.markdown("title", "# a new layout"), demo.text("extra", "added")])
    # The swap happens whenever the new page has loaded: follow whichever frame is shown.
    await until_shown(page, "document.body.innerText.includes('a new layout')")
    await page.wait_for_function(
        "() => document.querySelectorAll('#frames iframe').length === 1", timeout=UI_WAIT)
    assert await page.evaluate("window.__blank") == 0


async def test_card_url_on_its_own_is_live(roots: Any, start_app: Any, browser: Any) -> None:
    """The card URL is our host page: it holds the socket and feeds the sandboxed card."""
    _, card = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    t = card.key.task
    await page.goto(str(client.make_url(f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/{card.key.name}")))
    handle = await page.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT)
    sandbox = (await handle.get_attribute("sandbox") or "").split()
    assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox
    frame = await handle.content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')", timeout=UI_WAIT)
    assert await frame.evaluate("String(window.origin)") == "null"
    await frame.evaluate("window.__marker = 1")
    card.update({"bar": demo.progress("bar", 77, 100, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('77')",
        timeout=UI_WAIT)
    assert await frame.evaluate("window.__marker") == 1  # in place: the same document
    assert await page.is_hidden("#liveness")  # live: nothing to warn about
    # A new layout: the host loads it behind the shown card and swaps, as the viewer does.
    card.rerender([demo.markdown("title", "# a new layout"), demo.text("extra", "added")])
    await until_shown(page, "document.body.innerText.includes('a new layout')")
    # The final render: shown, and the page stops listening (nothing more will come).
    card.finalize()
    await until_shown(page, "window.METAFLOW_RELOAD_TOKEN === 'final'")
    await page.wait_for_function("document.getElementById('liveness').dataset.state === 'final'",
                                 timeout=UI_WAIT)
    assert await page.is_hidden("#liveness")


async def test_real_flow_in_viewer(tmp_path: Path, browser: Any) -> None:
    """`card server` and a real Metaflow run: the running card shows and moves in place."""
    (tmp_path / ".metaflow").mkdir()
    server = launch(["server"], tmp_path)
    flow = start_flow("live_card_flow.py", tmp_path)
    try:
        page = await browser.new_page()
        await page.goto(server.url)
        frame = await wait_card_frame(page, "/LiveCardFlow/")
        await live_flow_moves_in_place(frame, tmp_path, UI_WAIT * 3)
        status = page.locator("#card-status")
        assert await status.text_content() == "running"
    finally:
        flow.kill()
        server.stop()


async def test_demo_renders_and_moves(tmp_path: Path, browser: Any) -> None:
    server = launch(["demo", "--interval", "0.2"], tmp_path)
    try:
        page = await browser.new_page()
        await page.goto(server.url)
        await wait_card_frame(page)  # follow mode switches cards as the demo's tasks come and go
        first = await shown_eval(page, "document.body.innerText")
        await until_shown(page, "(before) => document.body.innerText !== before", first)
        assert await page.locator("#card-list .row").count() >= 1
    finally:
        server.stop()
        assert server.process.wait(timeout=5) is not None


async def test_card_on_its_own_says_when_the_server_is_gone(
    roots: Any, start_app: Any, browser: Any
) -> None:
    _, card = live_run(roots)
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url(f"/card/{card.key}")))
    frame = await shown_frame(page)
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')", timeout=UI_WAIT)
    await client.close()  # the server stops: its sockets close, and nothing answers any more
    await page.wait_for_function(
        "() => document.getElementById('liveness').textContent.includes('cannot be reached')",
        timeout=UI_WAIT)
    assert await page.is_visible("#liveness")
    assert await page.text_content("#liveness") == (
        "updates paused, reconnecting… the server cannot be reached (stopped?)")


async def test_viewer_with_a_token_feeds_its_sandboxed_card(
    roots: Any, start_app: Any, browser: Any
) -> None:
    """With a token, the card frame's HTML loads with the viewer's cookie (the frame is ours to
    navigate), and its updates come through the viewer's own socket."""
    _, card = live_run(roots)
    client = await start_app(make_config(roots, token="browser-token-0123456789"))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/").with_query(token="browser-token-0123456789")))
    frame = await wait_card_frame(page, card.key.name)
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')", timeout=UI_WAIT)
    assert "token" not in await frame.evaluate("location.href")
    card.update({"bar": demo.progress("bar", 66, 100, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('66')",
        timeout=UI_WAIT)


async def test_viewer_says_when_the_card_subscription_is_refused(
    roots: Any, start_app: Any, browser: Any
) -> None:
    """The card's update path breaks at the server (its topic refused: here, one subscription
    too many): the viewer shows the card, and says its updates are refused and why."""
    live_run(roots)
    client = await start_app(make_config(roots, limits=Limits(max_subscriptions=3)))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))  # flows, runs/<flow>, run/<flow>/<run>: 3
    await wait_card_frame(page)
    await page.wait_for_function(
        "() => document.getElementById('card-live').textContent.startsWith('updates refused')",
        timeout=UI_WAIT)
    assert await page.text_content("#card-live") == (
        "updates refused: at most 3 subscriptions per socket")
    assert await page.text_content("#connection") == "live"  # the rest of the viewer is
