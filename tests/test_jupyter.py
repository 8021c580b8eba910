"""The notebook helper, and a card framed by a page of another origin staying live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yarl
from aiohttp import web
from conftest import make_config

from cardserver import demo
from cardserver.jupyter import CardNotFound, Inline, card, viewer

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
    html = by_id._repr_html_()
    assert 'sandbox="allow-scripts' in html and "allow-same-origin" not in html
    with pytest.raises(CardNotFound):
        await asyncio.to_thread(card, pathspec, id="nope", server=server)
    with pytest.raises(ValueError):
        card("NoteFlow/1/train", server=server)
    assert viewer(public="/proxy/8423").src == "/proxy/8423/"


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
    assert page.status == 200 and "loss card" in await page.text()
    proxied = await asyncio.to_thread(card, pathspec, server=server, public="/user/ana/proxy/8423",
                                      token=TOKEN)
    assert proxied.src.startswith(f"/user/ana/proxy/8423/card/{pathspec}/{plain.key.name}?cap=")
    with pytest.raises(CardNotFound):  # the API needs the token the helper was given
        await asyncio.to_thread(card, pathspec, server=server, token="wrong-token-0123456789")


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

    async def notebook(request: web.Request) -> web.Response:
        return web.Response(text=f"<h1>notebook</h1>{inline._repr_html_()}",
                            content_type="text/html")

    other = web.Application()
    other.router.add_get("/", notebook)
    host = await aiohttp_client(other)
    page = await browser.new_page()
    # localhost vs 127.0.0.1: a different origin from the card server's.
    await page.goto(f"http://localhost:{host.server.port}/")
    frame = await (await page.wait_for_selector("iframe")).content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')",
                                  timeout=UI_WAIT)
    if token:  # the card's own script sees its link, never the token
        href = await frame.evaluate("location.href")
        assert token not in href and "token" not in href and "cap=" in href, href
    plain.update({"bar": demo.progress("bar", 9, 10, "epochs")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('9')",
        timeout=UI_WAIT)
    # Still sandboxed: the framed card cannot reach the notebook page.
    assert await frame.evaluate("(() => { try { return !!parent.document; } "
                                "catch (e) { return false; } })()") is False
