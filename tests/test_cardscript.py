"""Metaflow's card bundle apart from its page (cardscript.py), on cards a real Metaflow run
wrote: the split is exact, anything else has none; the viewer's warm frames (cards.py): a
card's page apart from its bundle, and the warm frame's page, served only to the viewer, and
a card rendered in one in Chromium, sandboxed."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import make_config

from bench.cachemem import grown
from cardserver.config import Roots
from cardserver.demo import markdown, start_run
from cardserver.index import Card
from cardserver.layout import CardKey, parse_card_path
from cardserver.web.cards import (
    CACHE_BYTES,
    SCRIPT_ENTRIES,
    SHELL_CLOSE,
    SHELL_OPEN,
    CardPages,
    inject_first,
    load_style,
)
from cardserver.web.cardscript import split

pytestmark = pytest.mark.timeout(240)
TOKEN = "s3cret-token-for-tests"


def card_files(roots: Roots) -> list[Path]:
    files = sorted(roots.cards.rglob("cards/*.html"))
    assert len(files) == 5, files
    return files


def card_key(roots: Roots, file: Path) -> CardKey:
    parsed = parse_card_path(PurePosixPath(file.relative_to(roots.cards).as_posix()))
    assert parsed is not None
    return parsed.key


def test_metaflow_cards_split_exactly(metaflow_cards: Roots) -> None:
    names = set()
    for file in card_files(metaflow_cards):
        html = file.read_bytes()
        apart = split(html)
        assert apart is not None, file
        assert apart.before + b"<script>" + apart.script + b"</script>" + apart.after == html
        assert apart.name == hashlib.sha256(apart.script).hexdigest() + ".js"
        assert len(apart.script) > len(html) * 0.8  # the bundle is most of the page
        assert b"METAFLOW_RELOAD_TOKEN" in apart.before  # the card's own data stays in its page
        names.add(apart.name)
    assert len(names) == 1  # every card of a Metaflow version shares one bundle


LIVE_TAIL = b"<script>\n  // This Card was Designed to be Realtime Updatable\n  </script>"
FINAL_TAIL = b"<script>\n    window.metaflow_card_update = undefined;\n  </script>"


def test_a_live_render_splits_too(metaflow_cards: Roots) -> None:
    """A render while the task runs ends with Metaflow's comment instead of the final hook
    (test_browser_switching's live test splits a real one)."""
    html = card_files(metaflow_cards)[1].read_bytes()
    assert FINAL_TAIL in html
    live = html.replace(FINAL_TAIL, LIVE_TAIL)
    apart = split(live)
    assert apart is not None and LIVE_TAIL in apart.after
    assert apart.before + b"<script>" + apart.script + b"</script>" + apart.after == live
    assert split(html.replace(FINAL_TAIL, LIVE_TAIL + FINAL_TAIL)) is None  # one of them at most


def test_other_shapes_are_served_whole(metaflow_cards: Roots) -> None:
    html = card_files(metaflow_cards)[1].read_bytes()
    apart = split(html)
    assert apart is not None
    bundle = apart.script
    unlike = {
        "a script tag inside the bundle": html.replace(bundle, bundle[:5000] + b"'<script>'" + bundle[5000:]),
        "an end tag inside the bundle": html.replace(bundle, bundle[:5000] + b"'</SCRIPT '" + bundle[5000:]),
        "no data script": html.replace(b"var METAFLOW_RELOAD_TOKEN", b"var OTHER_TOKEN"),
        "something after the bundle": html.replace(b"</body>\n\n</html>", b"<p>x</p></body></html>"),
        "a small script": apart.before + b"<script>1</script>" + apart.after,
        "an attribute on the bundle's tag": html.replace(b"<script>" + bundle, b"<script defer>" + bundle),
    }
    for why, page in unlike.items():
        assert page != html, why
        assert split(page) is None, why
    demo_card = start_run(Path(metaflow_cards.datastore.parent / "demo"), flow="DemoFlow")
    card = demo_card.start_task("start").add_card(components=[markdown("t", "# hello")])
    assert split(card.path_html.read_bytes()) is None  # our demo's cards: not Metaflow's shape


async def test_metaflow_card_opens_in_a_warm_frame_sandboxed(
    metaflow_cards: Roots, start_app: Any, browser: Any
) -> None:
    """Even the first card the viewer shows: a warm frame made for it (no card-html request),
    rendered in an opaque origin."""
    client = await start_app(make_config(metaflow_cards))
    page = await browser.new_page()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    blank = next(f for f in card_files(metaflow_cards) if f.name.startswith("blank-"))
    await page.goto(str(client.make_url(f"/run/{card_key(metaflow_cards, blank)}")))
    shown = f"#frames iframe[data-card*='{blank.stem}']:not(.incoming):not(.kept)"
    handle = await page.wait_for_selector(shown, state="attached", timeout=30_000)
    assert "/card-shell/" in (await handle.get_attribute("src") or "")
    frame = await handle.content_frame()
    await frame.wait_for_function("document.querySelector('.card_app') && "
                                  "document.querySelector('.card_app').innerText.includes('branch')",
                                  timeout=30_000)
    assert await frame.evaluate("!!document.querySelector('.card_app table')")
    assert await frame.evaluate("origin") == "null"  # an opaque origin
    assert any("/page" in url and blank.stem in url for url in asked)  # its page, apart
    assert not any("/card-html/" in url for url in asked)  # never its whole page


async def test_page_whose_script_was_let_go_is_built_again(metaflow_cards: Roots) -> None:
    """Nine Metaflow versions' bundles in view (one more than the server keeps): a cached page
    apart is never served naming a bundle whose warm frame the server can no longer make."""
    html = card_files(metaflow_cards)[1].read_bytes()
    apart = split(html)
    assert apart is not None
    versions = {n: html.replace(apart.script, apart.script + f";{n}".encode())
                for n in range(SCRIPT_ENTRIES + 1)}

    async def read(card: Card) -> bytes:
        return versions[int(card.key.name.rsplit("-", 1)[1])]

    pages = CardPages(read)
    key = card_key(metaflow_cards, card_files(metaflow_cards)[1])
    cards = [Card(CardKey(key.task, f"{key.name}-{n}"), version="1") for n in versions]
    first = await pages.parts(cards[0])
    assert first.script is not None
    for card in cards[1:]:
        await pages.parts(card)
    assert await pages.shell(first.script) is None  # the oldest bundle was let go...
    again = await pages.parts(cards[0])
    assert again.script == first.script and await pages.shell(first.script) is not None  # ... back
    whole = await pages.page(cards[0])
    assert apart.script + b";0" in whole.body  # the page itself is whole: it needs nothing else


async def test_pages_kept_are_bounded_by_bytes(metaflow_cards: Roots) -> None:
    """Issue 21, finding 4: 24 big cards in Metaflow's shape, each asked whole and apart (what a
    card's no-cors fetches can do): the memory the caches hold stays within their byte budget,
    and the cards asked last are still served from it."""
    html = card_files(metaflow_cards)[1].read_bytes()
    grown_pages = {n: grown(html, 4 << 20, n) for n in range(24)}
    reads: list[str] = []

    async def read(card: Card) -> bytes:
        reads.append(card.key.name)
        return grown_pages[int(card.key.name.rsplit("-", 1)[1])]

    key = card_key(metaflow_cards, card_files(metaflow_cards)[1])
    cards = [Card(CardKey(key.task, f"{key.name}-{n}"), version="1") for n in grown_pages]
    pages = CardPages(read)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for card in cards:
            assert (await pages.parts(card)).script is not None  # split: Metaflow's shape
            await pages.page(card)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= CACHE_BYTES, f"{held / 2**20:.0f} MiB held, for a budget of {CACHE_BYTES / 2**20:.0f}"
    assert pages.kept_bytes <= CACHE_BYTES
    reads.clear()
    await pages.page(cards[-1])
    await pages.parts(cards[-1])
    assert reads == []  # kept


async def test_our_style_is_first_in_the_card_head(metaflow_cards: Roots) -> None:
    """Our style for charts (static/card-charts.css) is the first thing in the card's head, before
    Metaflow's own style and script run, in the page whole and in the page a warm frame is given;
    around it, the page is byte for byte what Metaflow wrote."""
    file = card_files(metaflow_cards)[1]
    html = file.read_bytes()
    style = load_style().encode()
    assert style.startswith(b"<style>") and b".vega-embed.fit-x" in style
    head = html.index(b"<head>") + len(b"<head>")
    assert html.index(b"<style>") > head and html.index(b"<script>") > head

    async def read(card: Card) -> bytes:
        return html

    pages = CardPages(read)
    card = Card(card_key(metaflow_cards, file), version="1")
    whole = (await pages.page(card)).body
    before = json.loads((await pages.parts(card)).body)["before"].encode()
    for page in (whole, before):
        assert page.startswith(html[:head] + style + html[head : head + 1000])
        assert page.count(style) == 1


def test_style_without_a_head_goes_with_the_runtime() -> None:
    assert inject_first(b'<HTML><HEAD lang="en"><title>', b"<s>") == b'<HTML><HEAD lang="en"><s><title>'
    assert inject_first(b"<header></header></body>", b"<s>") == b"<header></header><s></body>"
    assert inject_first(b"<p>no body", b"<s>") == b"<p>no body<s>"


async def test_page_apart_from_its_bundle_for_a_warm_frame(metaflow_cards: Roots, start_app: Any) -> None:
    """`api/cards/.../page` holds the very page `card-html/...` serves, apart from its bundle;
    `card-shell/<bundle>` holds that bundle, compiled into a function, sandboxed like a card."""
    client = await start_app(make_config(metaflow_cards, token=TOKEN))
    key = card_key(metaflow_cards, card_files(metaflow_cards)[1])
    login = await client.get("/", params={"token": TOKEN}, allow_redirects=False)
    cookie = {"Cookie": "; ".join(f"{m.key}={m.value}" for m in login.cookies.values())}
    apart = await client.get(f"/api/cards/{key}/page", headers={"Accept-Encoding": "gzip", **cookie})
    assert apart.status == 200 and apart.headers["Content-Type"].startswith("application/json")
    parts = await apart.json()
    whole = await (await client.get(f"/card-html/{key}", headers=cookie)).read()
    script = split(card_files(metaflow_cards)[1].read_bytes())
    assert script is not None and parts["script"] == script.name
    inline = b"<script>" + script.script + b"</script>"
    assert whole == parts["before"].encode() + inline + parts["after"].encode()
    revalidate = {"If-None-Match": apart.headers["ETag"], **cookie}
    again = await client.get(f"/api/cards/{key}/page", headers=revalidate)
    assert again.status == 304

    shell = await client.get(f"/card-shell/{parts['script']}", headers=cookie)
    assert shell.status == 200 and shell.headers["Content-Type"].startswith("text/html")
    assert shell.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
    body = await shell.read()
    assert SHELL_OPEN + script.script + SHELL_CLOSE in body
    assert b'cardserver: "hello"' in body and b"__cardserverBundle()" in body  # the loader, inline
    assert (await client.get("/card-shell/" + "0" * 64 + ".js", headers=cookie)).status == 404
    # Only the viewer: nothing without the token, and no card page (Origin null) reads a page.
    client.session.cookie_jar.clear()
    assert (await client.get(f"/card-shell/{parts['script']}")).status == 401
    assert (await client.get(f"/api/cards/{key}/page")).status == 401
    opaque = await client.get(f"/api/cards/{key}/page", headers={"Origin": "null", **cookie})
    assert opaque.status == 403


async def test_a_page_not_split_has_no_parts(metaflow_cards: Roots, start_app: Any) -> None:
    datastore = Path(metaflow_cards.datastore.parent / "parts-demo")
    card = start_run(datastore, flow="PartsFlow").start_task("start").add_card(
        components=[markdown("t", "# hello")])
    client = await start_app(make_config(Roots(datastore, datastore / "mf.cards")))
    response = await client.get(f"/api/cards/{card.key}/page")
    assert response.status == 200
    assert (await response.json())["script"] is None  # the viewer loads its URL
    assert (await client.get(f"/api/cards/{card.key.task}/nope-1/page")).status in (400, 404)
