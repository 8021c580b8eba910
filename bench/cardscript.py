"""A card's first load in Chromium: Metaflow's page whole, split, or written into a warm frame.

Real Metaflow card pages (bench/manycards.py's run) are loaded one after another into a new
sandboxed frame (`sandbox="allow-scripts"`, the CSP sandbox header: an opaque origin, as the
viewer does), each page new to the frame (a new URL), as a first visit is, four ways:

- `inline`: the page as Metaflow wrote it (the ~1 MB bundle inline);
- `split`: the page split by `cardscript.split`, its bundle from one `card-js/<sha256>.js` URL
  (what the viewer did before warm frames; a proxy refuses that request, which has no cookie);
- `warm, new`: a new warm frame (`cards.shell_page` with the real loader (`cards.shell_loader`), at one
  URL per bundle), then the page apart from its bundle (`cards.page_parts`, fetched) posted to
  it, as the viewer opens a card loaded ahead;
- `warm, ready`: the same, into a warm frame made ready before the clock starts, as the viewer
  opens a card picked that was not loaded.

Every page has our style first in its head, as the server serves it (`cards.load_style`;
`--without-style`: as before issue 22). `--width` is the frame's width: below 960 px a chart
with no width is drawn only with our style (docs/cards.md), so `--width 940` with and without
it is what drawing the chart costs.

Each load is timed from its start (creating the frame, or fetching the page apart for a ready
warm frame) to two animation frames after the frame's `load` event of the card. A small
aiohttp server on 127.0.0.1 serves them all. It also counts the requests for the split
script: Chromium's HTTP cache is not used from an opaque origin, so every load fetches it
again; what is shared is the compiled code, within the renderer process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bench.common import CHROMIUM, CHROMIUM_FLAGS, free_port, percentile, report, run_options, table, verdict
from bench.manycards import many_cards
from cardserver.web.cards import inject_first, load_style, page_parts, shell_loader, shell_page
from cardserver.web.cardscript import split

CSP = "sandbox allow-scripts"
KINDS = ("inline", "split", "warm, new", "warm, ready")

LOAD = """async (src) => {
  const started = performance.now();
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-scripts");
  frame.style.cssText = "width: 1000px; height: 2000px; border: 0";
  const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
  frame.src = src;
  document.body.append(frame);
  await loaded;
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const took = performance.now() - started;
  for (const old of [...document.querySelectorAll("iframe")].slice(0, -1)) old.remove();
  return took;
}"""

# A warm frame at `shell`, made and waited for until it says it is warm (its hello, with the
# secret of its URL and the port the page is posted over) and its load is over.
WARM = """(shell) => new Promise((resolve) => {
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-scripts");
  frame.style.cssText = "width: 1000px; height: 2000px; border: 0";
  const secret = "0123456789abcdef0123456789abcdef";
  let port = null, loaded = false;
  const done = () => { if (port && loaded) { window.__warm = { frame, port }; resolve(); } };
  window.addEventListener("message", function listen(event) {
    if (event.source !== frame.contentWindow || !event.data || event.data.secret !== secret) return;
    window.removeEventListener("message", listen);
    port = event.ports[0];
    done();
  });
  frame.addEventListener("load", () => { loaded = true; done(); }, { once: true });
  frame.src = `${shell}#cardserver=${secret}`;
  document.body.append(frame);
})"""

# Fetch a card's page apart and write it into the warm frame made by WARM; time it.
WRITE = """async (parts) => {
  const started = performance.now();
  const page = await (await fetch(parts)).json();
  const { frame, port } = window.__warm;
  const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
  port.postMessage({ cardserver: "page", before: page.before, after: page.after });
  await loaded;
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const took = performance.now() - started;
  for (const old of [...document.querySelectorAll("iframe")]) if (old !== frame) old.remove();
  return took;
}"""


def pages(datastore: Path, style: bytes) -> dict[str, list[bytes]]:
    """Each card page as written (with `style` first in its head), and as split (its script
    from `/card-js/<name>`)."""
    written = [inject_first(p.read_bytes(), style) for p in sorted(datastore.rglob("cards/*.html"))]
    served: dict[str, list[bytes]] = {"inline": written, "split": []}
    for html in written:
        apart = split(html)
        if apart is None:
            raise SystemExit("a card page is not Metaflow's shape: nothing to compare")
        tag = f'<script src="/card-js/{apart.name}"></script>'.encode()
        served["split"].append(apart.before + tag + apart.after)
    return served


def make_app(served: dict[str, list[bytes]], scripts: dict[str, bytes],
             fetched: list[str]) -> web.Application:
    loader = shell_loader()
    shells = {name: shell_page(script, loader) for name, script in scripts.items()}
    parts = []
    for html in served["inline"]:
        apart = split(html)
        assert apart is not None
        parts.append(page_parts(apart, apart.after, "1")[0])

    async def shell(request: web.Request) -> web.Response:
        return web.Response(body=shells[request.match_info["name"]], content_type="text/html",
                            headers={"Content-Security-Policy": CSP})

    async def apart(request: web.Request) -> web.Response:
        body = parts[int(request.match_info["n"]) % len(parts)]
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    async def card(request: web.Request) -> web.Response:
        kind, number = request.match_info["kind"], int(request.match_info["n"])
        body = served[kind][number % len(served[kind])]
        return web.Response(body=body, content_type="text/html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def script(request: web.Request) -> web.Response:
        fetched.append(request.match_info["name"])
        return web.Response(body=scripts[request.match_info["name"]], content_type="text/javascript",
                            headers={"Cache-Control": "max-age=31536000, immutable"})

    async def blank(request: web.Request) -> web.Response:
        width = int(request.query.get("width", "1000"))  # every frame's, over its own style
        return web.Response(text=f"<!doctype html><title>bench</title><style>iframe {{ width: {width}px"
                                 " !important }</style><body></body>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank)
    app.router.add_get("/card/{kind}/{n}", card)
    app.router.add_get("/card-js/{name}", script)
    app.router.add_get("/card-shell/{name}", shell)
    app.router.add_get("/parts/{n}", apart)
    return app


async def measure(datastore: Path, rounds: int, width: int,
                  style: bytes) -> tuple[dict[str, list[float]], int]:
    from playwright.async_api import async_playwright

    served = pages(datastore, style)
    scripts = {}
    for html in served["inline"]:
        apart = split(html)
        assert apart is not None
        scripts[apart.name] = apart.script
    fetched: list[str] = []
    runner = web.AppRunner(make_app(served, scripts, fetched))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page: Any = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{port}/?width={width}")
            count = len(served["inline"])
            shell = f"/card-shell/{next(iter(scripts))}"
            for number in range(rounds * count):  # every URL new: each load is a first visit
                for kind in ("inline", "split"):
                    times[kind].append(await page.evaluate(LOAD, f"/card/{kind}/{number}"))
                started = time.perf_counter()
                await page.evaluate(WARM, shell)
                warming = (time.perf_counter() - started) * 1000
                times["warm, new"].append(warming + await page.evaluate(WRITE, f"/parts/{number}"))
                await page.evaluate(WARM, shell)  # made ready before the clock starts
                times["warm, ready"].append(await page.evaluate(WRITE, f"/parts/{number}"))
            await browser.close()
    finally:
        await runner.cleanup()
    return times, len(fetched)


def main() -> int:
    parser = run_options(__doc__ or "", "3 cards, one round: that it runs, not its numbers")
    parser.add_argument("--cards", type=int, default=8, help="blank cards in the run (plus the default one)")
    parser.add_argument("--rounds", type=int, default=3, help="loads of each card, each kind")
    parser.add_argument("--width", type=int, default=1000, help="the card frame's width (px)")
    parser.add_argument("--without-style", action="store_true",
                        help="the pages without our style (docs/cards.md), as before issue 22")
    args = parser.parse_args()
    if args.smoke:
        args.cards, args.rounds = 2, 1
    started, load = time.monotonic(), os.getloadavg()[0]
    with many_cards(args.cards, args.fixture) as datastore:
        style = b"" if args.without_style else load_style().encode()
        times, fetched = asyncio.run(measure(datastore, args.rounds, args.width, style))
    header = ["card page", "load p50 (ms)", "p90", "n"]
    rows = [[kind, f"{percentile(t, 50):.0f}", f"{percentile(t, 90):.0f}", len(t)]
            for kind, t in times.items()]
    print(table("A card's first load in a sandboxed frame, side by side", header, rows))
    print(f"\nrequests for the script: {fetched} in {len(times['split'])} split loads (no HTTP cache "
          f"from an opaque origin)")
    print(f"frames {args.width} px wide, {'without' if args.without_style else 'with'} our style")
    print(f"wall {time.monotonic() - started:.0f} s, load average at start {load:.2f}")
    inline, ready = percentile(times["inline"], 50), percentile(times["warm, ready"], 50)
    new = percentile(times["warm, new"], 50)
    rows_verdict: list[list[object]] = [
        ["warm, ready / inline p50", round(ready / inline, 2), "< 1", verdict(ready < inline)],
        ["warm, new / inline p50", round(new / inline, 2), "< 1", verdict(new < inline)],
    ]
    title = "Warm frames" + (" (smoke)" if args.smoke else "")
    return report(title, rows_verdict, [], args.smoke)


if __name__ == "__main__":
    sys.exit(main())
