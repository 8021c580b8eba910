"""In Chromium: the viewer names the card on screen to the server (issue 14), when a card is
picked, when the Task tab or a hidden browser tab hides it, and again after its socket
reconnects; the card it left stays subscribed (kept), visible to nobody."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_config
from test_browser import UI_WAIT, live_run, wait_card_frame
from test_s3_polling import until

from cardserver import demo
from cardserver.feed import card_topic
from cardserver.hub import Hub
from cardserver.web.keys import HUB, SOCKETS

pytestmark = pytest.mark.timeout(240)


async def test_the_viewer_says_which_card_is_on_screen(roots: Any, start_app: Any, browser: Any) -> None:
    run, first = live_run(roots)
    second = run.start_task("train").add_card(components=[demo.text("t", "the second card")])
    client = await start_app(make_config(roots))
    hub: Hub = client.app[HUB]
    one, two = card_topic(first.key), card_topic(second.key)
    page = await browser.new_page()
    await page.goto(str(client.make_url(f"/run/{first.key}")))  # the viewer's deep link
    await wait_card_frame(page, f"/{first.key.task.task}/")
    await until(lambda: hub.visible(one), "the first card visible")
    await page.locator(f"#card-list .row[data-id^='train/{second.key.task.task}/']").click(timeout=UI_WAIT)
    await until(lambda: hub.visible(two) and not hub.visible(one), "the second card visible, the first not")
    assert hub.has_subscribers(one)  # kept: still subscribed, loaded and hidden
    await page.click("#tab-task")
    await until(lambda: not hub.visible(two) and hub.has_subscribers(two), "no card visible in the Task tab")
    await page.click("#tab-card")
    await until(lambda: hub.visible(two), "the card visible again")
    # A reconnect names it again before it subscribes again: never all kept cards visible at once
    seen: list[tuple[str, bool]] = []
    hub.sight_watches.append(lambda topic, on: seen.append((topic, on)))
    for ws in set(client.app[SOCKETS]):
        await ws.close(code=4008, message=b"too slow: reconnect and resync")  # the viewer reconnects
    await until(lambda: (two, False) in seen, "the old socket gone")
    await until(lambda: hub.visible(two) and hub.has_subscribers(one), "subscribed again")
    assert (one, True) not in seen and not hub.visible(one), seen
    # A hidden browser tab shows nothing (as the page's visibility says: headless Chromium never hides one)
    hidden = "(on) => { Object.defineProperty(document, 'hidden', {value: on, configurable: true});" \
             " document.dispatchEvent(new Event('visibilitychange')); }"
    await page.evaluate(hidden, True)
    await until(lambda: not hub.visible(two) and hub.has_subscribers(two), "no card visible in a hidden tab")
    await page.evaluate(hidden, False)
    await until(lambda: hub.visible(two), "the card visible again with its tab")
