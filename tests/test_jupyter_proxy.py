"""Behind a real Jupyter Server with jupyter-server-proxy and Jupyter's token auth on, in real
Chromium: cards stay live through `/proxy/<port>/` and `/proxy/absolute/<port>/` (with
`--base-url`), in the viewer, on their own and in a JupyterLab notebook output; a hub's public
name needs `--allow-host` (the proxy passes the browser's Host through); when Jupyter refuses
the live connection, the viewer says so.

Card frames are sandboxed, so a socket of their own would carry no cookie and Jupyter would
refuse it (403): only our own pages hold sockets, which is what these tests prove works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import (
    Jupyter,
    chromium,
    free_port,
    live_flow_moves_in_place,
    make_config,
    start_flow,
)
from nbclient import NotebookClient
from nbformat.sign import NotebookNotary

from cardserver import demo
from cardserver.config import Roots
from cardserver.web.socket import close_all

pytestmark = pytest.mark.timeout(300)
UI_WAIT = 30_000  # ms: JupyterLab's first load on a busy 2-core machine takes a while
HUB = "hub.test"  # a hub's public name, resolved to 127.0.0.1 by Chromium


@pytest.fixture
async def hub_browser() -> AsyncIterator[Any]:
    async with chromium(HUB) as launched:
        yield launched


async def signed_in(browser: Any, jupyter: Jupyter, host: str = "127.0.0.1") -> Any:
    """A browser context holding Jupyter's login cookie, as after opening its token URL."""
    context = await browser.new_context()
    page = await context.new_page()  # a page, not context.request: Chromium resolves the name
    response = await page.goto(jupyter.url(f"/api/status?token={jupyter.token}", host))
    assert response is not None and response.ok, await page.content()
    await page.close()
    return context


def live_card(roots: Roots) -> demo.DemoCard:
    run = demo.start_run(roots.datastore, flow="JupyterFlow")
    card = run.start_task("start").add_card(components=[demo.progress("bar", 1, 100, "steps")])
    done = run.start_task("start")
    done.add_card(id="second", components=[demo.text("t", "second card")])
    done.finish()  # follow mode stays on the running card
    return card


async def serve(roots: Roots, start_app: Any, mode: str, **options: Any) -> tuple[Any, str]:
    """A card server reached through Jupyter's proxy in `mode`; the path the browser uses."""
    port = free_port()
    if mode == "absolute":  # the proxy passes the whole path: the server serves under it
        prefix = f"/proxy/absolute/{port}/"
        client = await start_app(make_config(roots, base_url=prefix, **options), port=port)
    else:  # the proxy strips its prefix: no option needed
        prefix = f"/proxy/{port}/"
        client = await start_app(make_config(roots, **options), port=port)
    return client, prefix


async def shown_card(page: Any) -> Any:
    handle = await page.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT)
    frame = await handle.content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')",
                                  timeout=UI_WAIT)
    return frame


async def value_reaches(frame: Any, card: demo.DemoCard, value: int) -> None:
    card.update({"bar": demo.progress("bar", value, 100, "steps")})
    await frame.wait_for_function(
        "(v) => document.querySelector('[data-component-id=bar]').textContent.includes(String(v))",
        arg=value, timeout=UI_WAIT)


def sockets_opened(page: Any) -> list[str]:
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    return opened


@pytest.mark.parametrize("mode", ["prefix stripped", "absolute"])
async def test_cards_stay_live_through_jupyter_server_proxy(
    roots: Roots, start_app: Any, browser: Any, jupyter_server: Jupyter, mode: str
) -> None:
    card = live_card(roots)
    _, prefix = await serve(roots, start_app, mode)
    context = await signed_in(browser, jupyter_server)
    page = await context.new_page()
    opened = sockets_opened(page)
    await page.goto(jupyter_server.url(prefix))
    await page.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'",
                                 timeout=UI_WAIT)
    frame = await shown_card(page)
    for value in (30, 64):
        await value_reaches(frame, card, value)
    assert await page.is_hidden("#card-live")
    # One socket for the page (the viewer's); the sandboxed card opened none.
    assert opened == [jupyter_server.url(f"{prefix}ws").replace("http:", "ws:")], opened

    # The card on its own, as a tab through the proxy: our host page holds its socket.
    alone = await context.new_page()
    alone_sockets = sockets_opened(alone)
    await alone.goto(jupyter_server.url(f"{prefix}card/{card.key}"))
    frame = await shown_card(alone)
    await value_reaches(frame, card, 77)
    assert await alone.is_hidden("#liveness")
    assert len(alone_sockets) == 1 and f"{prefix}ws?card=" in alone_sockets[0]
    await context.close()


async def test_viewer_says_when_jupyter_refuses_the_updates(
    roots: Roots, start_app: Any, browser: Any, jupyter_server: Jupyter
) -> None:
    """The issue's failure, reproduced on purpose: the viewer's live connection reaches Jupyter
    without its login cookie (signed out) and Jupyter refuses it. The viewer must not say
    "live": it says the card's updates are paused and why, and recovers on sign-in."""
    card = live_card(roots)
    client, prefix = await serve(roots, start_app, "prefix stripped")
    context = await signed_in(browser, jupyter_server)
    page = await context.new_page()
    await page.goto(jupyter_server.url(prefix))
    frame = await shown_card(page)
    await value_reaches(frame, card, 20)

    await context.clear_cookies()  # signed out of Jupyter
    await close_all(client.app)  # the server restarts its sockets: the viewer reconnects
    await page.wait_for_function(
        "() => document.getElementById('card-live').textContent.includes('sign in')",
        timeout=UI_WAIT)
    assert await page.text_content("#card-live") == (
        "updates paused: the proxy wants you to sign in again (reload the page)")
    assert await page.text_content("#connection") == "reconnecting…"

    await context.request.get(jupyter_server.url(f"/api/status?token={jupyter_server.token}"))
    await page.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'",
                                 timeout=UI_WAIT)
    await page.wait_for_selector("#card-live", state="hidden", timeout=UI_WAIT)
    await value_reaches(frame, card, 88)
    await context.close()


async def test_hub_public_name_needs_allow_host(
    roots: Roots, start_app: Any, hub_browser: Any, jupyter_server: Jupyter
) -> None:
    """jupyter-server-proxy passes the browser's Host through: a hub's public name reaches the
    card server, which refuses it (naming the option) until `--allow-host` allows it."""
    card = live_card(roots)
    _, refused = await serve(roots, start_app, "prefix stripped")
    _, allowed = await serve(roots, start_app, "prefix stripped", allow_hosts=frozenset({HUB}))
    context = await signed_in(hub_browser, jupyter_server, host=HUB)
    page = await context.new_page()
    response = await page.goto(jupyter_server.url(refused, host=HUB))
    assert response.status == 403
    assert f"--allow-host {HUB}" in await response.text()
    await page.goto(jupyter_server.url(allowed, host=HUB))
    await page.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'",
                                 timeout=UI_WAIT)
    await value_reaches(await shown_card(page), card, 55)
    await context.close()


def notebook_with_card(workdir: Path, code: str) -> Path:
    """A notebook whose cell shows a card, executed by a real kernel (nbclient) and signed, so
    JupyterLab renders its HTML output as it would right after running the cell."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = notebook.cells[0].outputs
    assert outputs and "text/html" in outputs[0].get("data", {}), outputs
    return notebook


@pytest.mark.parametrize("mode", ["prefix stripped", "absolute"])
async def test_notebook_card_stays_live_in_jupyterlab(
    roots: Roots, start_app: Any, browser: Any, jupyter_server: Jupyter, mode: str
) -> None:
    card = live_card(roots)
    client, prefix = await serve(roots, start_app, mode)
    t = card.key.task
    served = client.make_url(prefix if mode == "absolute" else "/")  # where the kernel asks
    code = (
        "from cardserver.jupyter import card\n"
        f"card({f'{t.flow}/{t.run}/{t.step}/{t.task}'!r}, server={str(served)!r}, public={prefix!r})"
    )
    notebook = await asyncio.to_thread(notebook_with_card, jupyter_server.root, code)
    NotebookNotary(data_dir=str(jupyter_server.data_dir)).sign(notebook)
    name = f"live-{t.run}-{mode.split()[0]}.ipynb"
    nbformat.write(notebook, jupyter_server.root / name)

    context = await signed_in(browser, jupyter_server)
    page = await context.new_page()
    await page.goto(jupyter_server.url(f"/lab/tree/{name}"))
    host = await output_host(page, f"{prefix}card/{card.key}")
    frame = await shown_card(host)
    await value_reaches(frame, card, 42)
    assert await host.is_hidden("#liveness")
    # The output frame fits the card: as tall as the card inside, no inner scrollbar.
    card_height = await host.evaluate("document.querySelector('#frames iframe').offsetHeight")
    await page.wait_for_function(
        "([s, h]) => Math.abs(document.querySelector(s).clientHeight - h) <= 2",
        arg=[f'iframe[src^="{prefix}card/{card.key}"]', card_height], timeout=UI_WAIT)
    assert await host.evaluate("document.scrollingElement.scrollHeight <= innerHeight + 1")
    await context.close()


async def output_host(page: Any, src: str) -> Any:
    """The card's host page in the notebook output whose frame shows `src`, once it is ours
    and parsed (through the proxy it shares JupyterLab's origin, so the notebook page can look
    into it). JupyterLab may also restore notebooks opened by earlier tests: pick ours."""
    selector = f'iframe[id^=cardserver-][src^="{src}"]'
    await page.wait_for_function("""(selector) => {
        const doc = document.querySelector(selector)?.contentDocument;
        return !!doc && !!doc.getElementById('frames');
    }""", arg=selector, timeout=UI_WAIT * 2)
    output = await page.query_selector(selector)
    return await output.content_frame()


async def test_real_metaflow_card_through_the_proxy(
    tmp_path: Path, start_app: Any, browser: Any, jupyter_server: Jupyter
) -> None:
    """A real Metaflow run with a live @card, watched through Jupyter's proxy: every step the
    flow renders reaches the card in the viewer, in place."""
    datastore = tmp_path / ".metaflow"
    datastore.mkdir()
    roots = Roots(datastore, datastore / "mf.cards")
    port = free_port()
    await start_app(make_config(roots), port=port)
    flow = start_flow("live_card_flow.py", tmp_path)
    try:
        context = await signed_in(browser, jupyter_server)
        page = await context.new_page()
        await page.goto(jupyter_server.url(f"/proxy/{port}/"))
        handle = await page.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT * 3)
        await live_flow_moves_in_place(await handle.content_frame(), tmp_path, UI_WAIT * 3)
        await context.close()
    finally:
        flow.kill()
        flow.wait()

