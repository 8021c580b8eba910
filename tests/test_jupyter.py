"""The notebook helper, and a card framed by a page of another origin staying live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yarl
from aiohttp import web
from conftest import free_port, make_config

from cardserver import demo
from cardserver.jupyter import CardNotFound, Inline, ServerUnavailable, card, viewer

UI_WAIT = 20_000
TOKEN = "notebook-token-0123456789"


def live(roots: Any) -> tuple[Any, Any]:
    run = demo.start_run(roots.datastore, flow="NoteFlow")
    task = run.start_task("train")
    plain = task.add_card(components=[demo.progress("bar", 1, 10, "epochs")])
    named = task.add_card(id="loss", components=[demo.text("t", "loss card")])
    return plain, named


async def test_card_helper_finds_cards_by_pathspec(roots: Any, start_app: Any) -> None:
    plain, named = live(roots)
    client = await start_app(make_config(roots))
    server = str(client.make_url("/"))
    t = plain.key.task
    pathspec = f"{t.flow}/{t.run}/{t.step}/{t.task}"
    first = await asyncio.to_thread(card, pathspec, server=server)
    assert first.src == f"{server}card/{pathspec}/{plain.key.name}"
    by_id = await asyncio.to_thread(card, pathspec, id="loss", server=server,
                                    public="/user/ana/proxy/8423")
    assert by_id.src == f"/user/ana/proxy/8423/card/{pathspec}/{named.key.name}"
    # Our host page is framed as is (it sandboxes the card itself, and needs its origin to
    # hold the socket); the card's HTML is never framed by the notebook directly.
    html = by_id._repr_html_()
    assert "sandbox=" not in html and "card-html" not in html
    capped = await asyncio.to_thread(card, pathspec, server=server, max_height=500)
    assert capped.src.endswith("?max_height=500") and "500" in capped._repr_html_()
    with pytest.raises(ValueError):
        card("NoteFlow/1/train", server=server)
    assert viewer(public="/proxy/8423").src == "/proxy/8423/"


async def test_card_helper_errors_are_one_clear_line(roots: Any, start_app: Any) -> None:
    plain, _ = live(roots)
    empty = demo.start_run(roots.datastore, flow="NoteFlow").start_task("train")  # no card yet
    client = await start_app(make_config(roots))
    server = str(client.make_url("/"))
    t = plain.key.task
    run = f"{t.flow}/{t.run}"

    async def error_of(pathspec: str, kind: type[Exception], **options: Any) -> str:
        with pytest.raises(kind) as raised:
            await asyncio.to_thread(card, pathspec, server=options.pop("at", server), **options)
        text = str(raised.value)
        chained = raised.value.__context__ is not None and not raised.value.__suppress_context__
        assert "\n" not in text and not chained, text  # no URLError traceback behind it
        return text

    assert await error_of(f"{run}/train/{t.task}", CardNotFound, id="nope") == (
        f"task {run}/train/{t.task} has no card with id 'nope' (its cards: blank, blank id='loss')")
    e = empty.key
    assert await error_of(f"{e.flow}/{e.run}/train/{e.task}", CardNotFound) == (
        f"task {e.flow}/{e.run}/train/{e.task} has no card (its cards: none)")
    assert await error_of(f"{run}/train/999", CardNotFound) == f"run {run} has no task train/999"
    assert f"no run {t.flow}/42" in await error_of(f"{t.flow}/42/train/1", CardNotFound)
    gone = f"http://127.0.0.1:{free_port()}/"
    assert await error_of(f"{run}/train/{t.task}", ServerUnavailable, at=gone) == (
        f"no card server at {gone} ([Errno 111] Connection refused): start it with `card server`"
        " in a terminal, in the folder of your .metaflow datastore")


async def test_card_helper_with_a_token_gives_the_card_link(roots: Any, start_app: Any) -> None:
    plain, named = live(roots)
    client = await start_app(make_config(roots, token=TOKEN))
    server = str(client.make_url("/"))
    t = plain.key.task
    pathspec = f"{t.flow}/{t.run}/{t.step}/{t.task}"
    inline = await asyncio.to_thread(card, pathspec, id="loss", server=server, token=TOKEN)
    assert TOKEN not in inline.src and TOKEN not in inline._repr_html_()
    src = yarl.URL(inline.src)
    assert src.path == f"/card/{pathspec}/{named.key.name}" and set(src.query) == {"cap"}
    page = await client.get(src.relative())  # what the iframe does: no cookie, no token
    assert page.status == 200 and f"card-html/{pathspec}/{named.key.name}?cap=" in await page.text()
    proxied = await asyncio.to_thread(card, pathspec, server=server, public="/user/ana/proxy/8423",
                                      token=TOKEN)
    assert proxied.src.startswith(f"/user/ana/proxy/8423/card/{pathspec}/{plain.key.name}?cap=")
    with pytest.raises(ServerUnavailable, match="refused the kernel: wrong token"):
        await asyncio.to_thread(card, pathspec, server=server, token="wrong-token-0123456789")
    with pytest.raises(ServerUnavailable, match="needs its token: pass token="):
        await asyncio.to_thread(card, pathspec, server=server)


@pytest.mark.parametrize("how", ["no token", "helper with token", "card URL with ?token="])
async def test_card_framed_by_another_origin_stays_live(roots: Any, start_app: Any,
                                                        aiohttp_client: Any, browser: Any,
                                                        how: str) -> None:
    plain, _ = live(roots)
    token = None if how == "no token" else TOKEN
    client = await start_app(make_config(roots, token=token))
    t = plain.key.task
    inline = await asyncio.to_thread(card, f"{t.flow}/{t.run}/{t.step}/{t.task}",
                                     server=str(client.make_url("/")), token=token)
    if how == "card URL with ?token=":  # pasted by hand: the server trades it for the link
        url = client.make_url(f"/card/{plain.key}").with_query(token=TOKEN)
        inline = Inline(str(url))

    page = await notebook_page(aiohttp_client, browser, inline)
    host = await (await page.wait_for_selector("iframe")).content_frame()
    frame = await (await host.wait_for_selector("#frames iframe", timeout=UI_WAIT)).content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')",
                                  timeout=UI_WAIT)
    if token:  # neither our host page nor the card's script sees the token
        for href in (await host.evaluate("location.href"), await frame.evaluate("location.href")):
            assert token not in href and "token" not in href and "cap=" in href, href
    plain.update({"bar": demo.progress("bar", 9, 10, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('9')",
        timeout=UI_WAIT)
    # Only the card's host may feed it: an update the notebook page posts straight into the
    # card's frame is ignored (its source is not the card's parent).
    token = await frame.evaluate("window.METAFLOW_RELOAD_TOKEN")
    await page.evaluate("""(token) => document.querySelector('iframe').contentWindow.frames[0].postMessage(
        {cardserver: 'update', update: {token, created_on: 1e12,
         data: {bar: {type: 'progressBar', id: 'bar', max: 10, value: 3, label: 'forged'}}}}, '*')""",
                        token)
    plain.update({"bar": demo.progress("bar", 10, 10, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('10')",
        timeout=UI_WAIT)
    assert "forged" not in await frame.evaluate("document.body.innerText")
    # Still sandboxed: the card reaches neither its host page nor the notebook page.
    assert await frame.evaluate("(() => { try { return !!parent.document; } "
                                "catch (e) { return false; } })()") is False
    assert await frame.evaluate("String(window.origin)") == "null"
    # The notebook's frame grew to the card's height: no inner scrollbar for a short card.
    card_height = await host.evaluate("document.querySelector('#frames iframe').offsetHeight")
    await page.wait_for_function(
        "(h) => Math.abs(document.querySelector('iframe').clientHeight - h) <= 2",
        arg=card_height, timeout=UI_WAIT)
    assert await host.evaluate("document.scrollingElement.scrollHeight <= innerHeight + 1")


async def notebook_page(aiohttp_client: Any, browser: Any, *outputs: Inline, port: int = 0) -> Any:
    """A notebook-like page on another origin (localhost, not 127.0.0.1) showing `outputs`."""

    async def notebook(request: web.Request) -> web.Response:
        cells = "".join(f"<div class=cell>{o._repr_html_()}</div>" for o in outputs)
        return web.Response(text=f"<h1>notebook</h1>{cells}", content_type="text/html")

    other = web.Application()
    other.router.add_get("/", notebook)
    host = await aiohttp_client(other, server_kwargs={"port": port} if port else {})
    page = await browser.new_page(viewport={"width": 900, "height": 700})
    await page.goto(f"http://localhost:{host.server.port}/")
    return page


async def test_card_frame_height_is_capped_and_follows_the_width(
    roots: Any, start_app: Any, aiohttp_client: Any, browser: Any
) -> None:
    run = demo.start_run(roots.datastore, flow="TallFlow")
    lines = [demo.text(f"t{i}", f"line {i} " + "word " * 30) for i in range(40)]
    tall = run.start_task("train").add_card(components=lines)
    client = await start_app(make_config(roots))
    t = tall.key.task
    inline = await asyncio.to_thread(card, f"{t.flow}/{t.run}/{t.step}/{t.task}",
                                     server=str(client.make_url("/")), max_height=400)
    page = await notebook_page(aiohttp_client, browser, inline)
    host = await (await page.wait_for_selector("iframe")).content_frame()
    inner = await host.wait_for_selector("#frames iframe", timeout=UI_WAIT)
    frame = await inner.content_frame()
    await frame.wait_for_function("document.body.innerText.includes('line 39')", timeout=UI_WAIT)
    # The notebook's frame stops at the cap; beyond it our host page scrolls, once.
    await page.wait_for_function("document.querySelector('iframe').clientHeight === 400",
                                 timeout=UI_WAIT)
    assert await host.evaluate("document.scrollingElement.scrollHeight") > 1000
    # The card itself never scrolls inside its frame: the frame is as tall as the card.
    fits = "document.scrollingElement.scrollHeight <= innerHeight + 1"
    assert await frame.evaluate(fits)
    wide = await inner.evaluate("(f) => f.offsetHeight")
    # Narrower: the card follows the width, wraps, and its frame grows to fit again.
    await page.set_viewport_size({"width": 420, "height": 700})
    await host.wait_for_function("(w) => document.querySelector('#frames iframe').offsetHeight > w",
                                 arg=wide, timeout=UI_WAIT)
    await frame.wait_for_function(fits, timeout=UI_WAIT)
    widths = await page.evaluate("document.querySelector('iframe').clientWidth")
    assert abs(await inner.evaluate("(f) => f.offsetWidth") - widths) <= 2


async def test_viewer_frame_grows_to_its_card(
    roots: Any, start_app: Any, aiohttp_client: Any, browser: Any
) -> None:
    plain, _ = live(roots)
    port = free_port()  # the notebook's: the viewer lets only an allowed origin frame it
    client = await start_app(make_config(roots, allow_origins=frozenset({f"http://localhost:{port}"})))
    page = await notebook_page(aiohttp_client, browser,
                               viewer(server=str(client.make_url("/")), max_height=2000), port=port)
    shell = await (await page.wait_for_selector("iframe")).content_frame()
    handle = await shell.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT)
    frame = await handle.content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')",
                                  timeout=UI_WAIT)
    # The notebook's frame is the viewer's header plus the card (at least 420 px for the list):
    # nothing scrolls.
    wanted = """() => {
        const frames = document.getElementById('frames');
        const top = frames.getBoundingClientRect().top;
        return Math.max(420, Math.ceil(top + frames.querySelector('iframe').offsetHeight));
    }"""
    await page.wait_for_function(
        "(h) => Math.abs(document.querySelector('iframe').clientHeight - h) <= 2",
        arg=await shell.evaluate(wanted), timeout=UI_WAIT)
    assert await shell.evaluate("(() => { const f = document.getElementById('frames');"
                                " return f.scrollHeight <= f.clientHeight + 1; })()")
    plain.update({"bar": demo.progress("bar", 8, 10, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('8')",
        timeout=UI_WAIT)
