"""A hostile card, in Chromium: it runs its attacks inside the viewer and on its own, writes what
happened into its own page, and every attack must fail while the viewer keeps working.

The hostile HTML is written at test time into the datastore at the card's layout path, like any
card Metaflow writes; it never lives in the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, free_port, launch

from cardserver import demo
from cardserver.layout import CardFileKind, CardKey, card_path

pytestmark = pytest.mark.timeout(240)
UI_WAIT = 20_000  # ms
VIEWER_COOKIE = "viewer-cookie-value"
VICTIM_SECRET = "VICTIM-SECRET-7f3a"

# Each attack settles to "blocked: <error>", "closed <code>" or "read: <what leaked>".
HOSTILE_CARD = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>hostile card</title></head>
<body>
<h1>hostile card</h1>
<pre id="results"></pre>
<script>
window.addEventListener("load", () => {
  const VICTIM = @@VICTIM@@;
  const ROOT = "../../../../../";
  const runtime = window.__cardserverRuntime === true;
  const attempt = async (body) => {
    try { return await body(); } catch (error) { return "blocked: " + (error && error.name); }
  };
  const parentDocument = () => attempt(async () => {
    if (window.parent === window) return "top-level: no parent";
    const doc = window.parent.document;
    doc.title = "pwned";
    return "read: " + doc.body.innerHTML.length;
  });
  const api = () => attempt(async () => {
    const response = await fetch(ROOT + "api/flows", { credentials: "include" });
    return "read: " + response.status + " " + (await response.text()).slice(0, 200);
  });
  const apiNoCors = () => attempt(async () => {
    const response = await fetch(ROOT + "api/flows", { mode: "no-cors", credentials: "include" });
    const body = await response.text();
    return body ? "read: " + body.slice(0, 200) : "opaque: " + response.type;
  });
  const socket = (topic, cap, query = "") => new Promise((resolve) => {
    const url = new URL(ROOT + "ws" + query, location.href);
    url.protocol = "ws:";
    const ws = new WebSocket(url.href);
    const leaked = [];
    const timer = setTimeout(() => { resolve("read: still open " + leaked.join(",")); ws.close(); }, 8000);
    ws.onopen = () => ws.send(JSON.stringify({ op: "subscribe", topic, cap }));
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.topic === topic) leaked.push(message.type + ":" + event.data.slice(0, 300));
    };
    ws.onclose = (event) => {
      clearTimeout(timer);
      resolve(leaked.length ? "read: " + leaked.join(",") : "closed " + event.code);
    };
  });
  // Try to drive the page that hosts us: ask for another card, any topic, a huge frame.
  const host = () => new Promise((resolve) => {
    if (window.parent === window) return resolve("top-level: no host");
    const heard = [];
    window.addEventListener("message", (event) => heard.push(JSON.stringify(event.data)));
    for (const ask of [{ cardserver: "subscribe", topic: VICTIM }, { cardserver: "show", src: VICTIM },
                       { cardserver: "card", exists: true, card: { version: "x" } },
                       { cardserver: "update", topic: VICTIM }, { cardserver: "ready", token: "x" },
                       { cardserver: "height", height: 1e12 }, { op: "subscribe", topic: VICTIM }]) {
      window.parent.postMessage(ask, "*");
    }
    setTimeout(() => {
      const leaked = heard.filter((text) => text.includes("VICTIM") || text.includes("SecFlow"));
      resolve(leaked.length ? "read: " + leaked.join(",") : "nothing");
    }, 3000);
  });
  const cookie = () => attempt(async () => "read: " + JSON.stringify(document.cookie));
  const storage = () => attempt(async () => {
    localStorage.setItem("hostile", "1");
    return "read: " + localStorage.length;
  });
  const hostSocket = (topic) => socket(topic, undefined, "?card=" + encodeURIComponent(topic.slice(5)));
  Promise.all([
    parentDocument(), api(), apiNoCors(), socket(VICTIM), socket("flows"), hostSocket(VICTIM),
    cookie(), storage(), host(),
  ]).then(([parent, apiRead, apiOpaque, victim, flows, asHost, cookieRead, storageRead, hostRead]) => {
    const results = { origin: String(window.origin), runtime, parent, api: apiRead,
      apiNoCors: apiOpaque, victimSocket: victim, flowsSocket: flows, hostSocket: asHost,
      cookie: cookieRead, storage: storageRead, host: hostRead,
      credentials: JSON.stringify(window.__cardserver || null) + location.search };
    const pre = document.getElementById("results");
    pre.textContent = JSON.stringify(results);
    pre.dataset.done = "1";
  });
});
</script>
</body>
</html>
"""


def hostile_html(victim_topic: str) -> str:
    return HOSTILE_CARD.replace("@@VICTIM@@", json.dumps(victim_topic))


def write_hostile_card(cards_root: Path, task: demo.DemoTask, victim_topic: str) -> CardKey:
    """A card file at Metaflow's layout path whose script attacks everything it can reach."""
    key = CardKey(task.key, f"blank-{uuid.uuid4().hex}")
    path = cards_root / card_path(key, CardFileKind.HTML, legacy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hostile_html(victim_topic), encoding="utf-8")
    return key


async def card_frame(page: Any, name: str) -> Any:
    """The shown card frame (not one loading behind it) once it holds card `name`."""
    await page.wait_for_function(
        """(name) => [...document.querySelectorAll('#frames iframe:not(.incoming):not(.kept)')]
                     .some(f => (f.dataset.card || f.src).includes(name))""",
        arg=name, timeout=UI_WAIT,
    )
    handle = await page.wait_for_selector("#frames iframe:not(.incoming):not(.kept)", timeout=UI_WAIT)
    frame = await handle.content_frame()
    assert frame is not None
    return frame


async def results_of(frame: Any) -> dict[str, str]:
    await frame.wait_for_selector("#results[data-done]", state="attached", timeout=UI_WAIT)
    text = await frame.text_content("#results")
    assert text
    results: dict[str, str] = json.loads(text)
    return results


def assert_every_attack_failed(results: dict[str, str], framed: bool) -> None:
    flat = json.dumps(results)
    assert "read:" not in flat, results
    assert VIEWER_COOKIE not in flat and VICTIM_SECRET not in flat and "SecFlow" not in flat
    assert results["origin"] == "null"  # an opaque origin, in the viewer and on its own
    assert "cap=" not in results["credentials"] and "null" in results["credentials"]
    if framed:
        assert results["runtime"] is True  # the runtime ran: its host was there to abuse
        assert results["parent"] == "blocked: SecurityError"
        assert results["host"] == "nothing"
    else:
        assert results["parent"] == "top-level: no parent"
    assert results["api"] == "blocked: TypeError"  # refused and unreadable cross-origin
    assert results["apiNoCors"] == "opaque: opaque"
    # A sandboxed page's socket (Origin null) is refused before the upgrade: no hello at all.
    assert results["victimSocket"] == "closed 1006"
    assert results["flowsSocket"] == "closed 1006"
    assert results["hostSocket"] == "closed 1006"
    assert results["cookie"] == "blocked: SecurityError"
    assert results["storage"] == "blocked: SecurityError"


@pytest.fixture
def hostile_server(tmp_path: Path, server_process: Any) -> tuple[ServerProcess, CardKey, demo.DemoRun]:
    datastore = tmp_path / ".metaflow"
    run = demo.start_run(datastore, flow="SecFlow")
    start = run.start_task("start")
    start.add_card(components=[demo.markdown("m", "# start")])
    start.finish()
    victim = run.start_task("victim").add_card(
        components=[demo.markdown("m", f"# {VICTIM_SECRET}"), demo.progress("p", 1, 10)]
    )
    victim.update({"p": {"value": 2}})
    key = write_hostile_card(run.cards, run.start_task("hostile"), f"card/{victim.key}")
    server = server_process(["server", "--root", str(datastore)], cwd=tmp_path)
    return server, key, run


async def test_hostile_card_in_the_viewer_gets_nothing_and_the_viewer_keeps_working(
    hostile_server: tuple[ServerProcess, CardKey, demo.DemoRun], browser: Any
) -> None:
    server, key, _ = hostile_server
    context = await browser.new_context()
    await context.add_cookies([{"name": "probe", "value": VIEWER_COOKIE, "url": server.url}])
    page = await context.new_page()
    await page.goto(f"{server.url}run/{key}")
    frame = await card_frame(page, key.name)
    sandbox = await page.get_attribute("#frames iframe:not(.incoming):not(.kept)", "sandbox")
    assert sandbox is not None and "allow-scripts" in sandbox.split()
    assert "allow-same-origin" not in sandbox

    assert_every_attack_failed(await results_of(frame), framed=True)
    # Its asks changed nothing: same card shown, the frame no taller than the clamp.
    assert await page.locator("#frames iframe:not(.kept)").count() == 1
    height = await page.evaluate(
        "document.querySelector('#frames iframe:not(.kept)').getBoundingClientRect().height")
    assert height <= 100_000
    assert key.name in (await page.get_attribute("#frames iframe:not(.kept)", "src") or "")

    assert "pwned" not in await page.title()
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'", timeout=UI_WAIT
    )
    await page.wait_for_function(  # start, victim, hostile: the viewer still lists them all
        "() => document.querySelectorAll('#card-list .row').length >= 3", timeout=UI_WAIT)
    assert await page.locator("#card-list .row").filter(has_text="victim").count() == 1
    await context.close()


async def test_hostile_card_opened_directly_gets_nothing(
    hostile_server: tuple[ServerProcess, CardKey, demo.DemoRun], browser: Any
) -> None:
    server, key, _ = hostile_server
    context = await browser.new_context()
    await context.add_cookies([{"name": "probe", "value": VIEWER_COOKIE, "url": server.url}])
    page = await context.new_page()
    # The card URL: our host page around the sandboxed card.
    response = await page.goto(f"{server.url}card/{key}")
    assert response is not None and response.status == 200
    handle = await page.wait_for_selector("#frames iframe", timeout=UI_WAIT)
    assert "allow-same-origin" not in (await handle.get_attribute("sandbox") or "")
    assert_every_attack_failed(await results_of(await handle.content_frame()), framed=True)
    assert await page.title() != "pwned"
    # The card's HTML at the top level: sandboxed by its CSP, with no host to talk to.
    response = await page.goto(f"{server.url}card-html/{key}")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("sandbox allow-scripts")
    assert_every_attack_failed(await results_of(page.main_frame), framed=False)

    # the viewer, opened next, is unharmed
    viewer = await context.new_page()
    await viewer.goto(f"{server.url}run/{key.run_key}")
    await viewer.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'", timeout=UI_WAIT
    )
    await viewer.wait_for_selector("#card-list .row", timeout=UI_WAIT)
    await context.close()


# --- a page of another origin frames ours and navigates their card frames ----------------------
#
# The attacker serves a page (on another port of 127.0.0.1, reached as 127.0.0.1 and as
# localhost) that frames the viewer, or a card's host page, and every 100 ms points every card
# frame in it at the attacker's own card (`card-html/…`, served by us like any card). That card
# passes whatever it is given to the attacker's page (`top`). The same page opens as a popup
# when the user clicks a button in that card. Two running victim cards get live updates all the
# while: one in Metaflow's shape (it opens in a warm frame), one not.

LEAK_SECRET = "LEAK-VICTIM-SECRET-91c2"
TICKS = 30  # the attacker's 100 ms rounds to wait for: 3 s of attacks
ATTACKER_CARD = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>attacker's card</title>
<script>
const ours = location.hash.includes("cardserver=");  // loaded by our page (read before it strips it)
const send = (kind, data) => {
  try { top.postMessage({ stolen: JSON.stringify({ kind, data }) }, "*"); } catch (error) {}
};
const listen = (port, kind) => port.addEventListener("message", (event) => send(kind, event.data));
// Everything posted to this document, and over any channel it can get, goes to the attacker.
window.addEventListener("message", (event) => {
  send("window", event.data);
  for (const port of event.ports) { listen(port, "port"); port.start(); }
});
const fake = new MessageChannel();
listen(fake.port1, "fake hello");
fake.port1.start();
parent.postMessage({ cardserver: "warm" }, "*");  // as a warm frame says it is ready (before)
parent.postMessage({ cardserver: "ready", token: "x" }, "*");
parent.postMessage({ cardserver: "hello", secret: "0".repeat(32) }, "*", [fake.port2]);
window.addEventListener("DOMContentLoaded", () => {
  const own = typeof window.__cardserverLink === "function" && window.__cardserverLink();
  if (own) { listen(own, "own channel"); own.start(); }
  // Loaded by our page (its fragment held its frame's secret), or put there by the attacker.
  top.postMessage({ arrived: ours ? "own" : "navigated" }, "*");
});
</script></head>
<body><h1>attacker's card</h1><button id="open">open</button>
<script>
document.getElementById("open").addEventListener("click", () => window.open(@@POPUP@@));
</script>
</body></html>
"""
ATTACK_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>attacker</title></head>
<body><iframe id="target" src="@@TARGET@@" style="width:1200px;height:900px"></iframe>
<script>
window.stolen = [];
window.reached = 0;  // the most card frames seen in our page: none if it refused to be framed
window.ticks = 0;
window.addEventListener("message", (event) => {
  if (!event.data) return;
  if (typeof event.data.stolen === "string") window.stolen.push(event.data.stolen);
});
setInterval(() => {
  window.ticks += 1;
  const target = document.getElementById("target").contentWindow;
  window.reached = Math.max(window.reached, target.frames.length);
  for (let i = 0; i < target.frames.length; i++) {
    try { target.frames[i].location = @@CARD@@; } catch (error) {}
  }
}, 100);
</script></body></html>
"""
# A card page in Metaflow's shape (cardscript.split takes it apart): its data script, one large
# script (the "bundle"), the live render's comment.
METAFLOW_SHAPED = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>victim</title></head>
<body><main class="card_app"><h1>@@SECRET@@</h1><pre id="live">no update yet</pre></main>
<script>
var METAFLOW_RELOAD_TOKEN = @@TOKEN@@;
</script>
<script>
window.metaflow_card_update = function (data) {
  document.getElementById("live").textContent = JSON.stringify(data);
  return true;
};
/* @@PADDING@@ */
</script>
<script>// This Card was Designed to be Realtime Updatable</script>
</body>
</html>
"""


@dataclass
class Leak:
    server: ServerProcess
    attacker: int  # the attacker's port (not allowed)
    allowed: int  # a port whose localhost origin the server allows (--allow-origin)
    victims: list[demo.DemoCard]
    plain: demo.DemoCard  # the victim not in Metaflow's shape
    hostile: CardKey


def write_card(cards: Path, key: CardKey, html: str) -> None:
    path = cards / card_path(key, CardFileKind.HTML, legacy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")


def serve_folder(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return process, port
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the attacker's server did not start")


@pytest.fixture(scope="module")
def leak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leak]:
    workdir = tmp_path_factory.mktemp("leak")
    datastore = workdir / ".metaflow"
    run = demo.start_run(datastore, flow="LeakFlow")
    hostile = CardKey(run.start_task("hostile").key, f"blank-{uuid.uuid4().hex}")
    shaped = run.start_task("shaped").add_card(components=[demo.markdown("m", "# shaped")])
    write_card(run.cards, shaped.key, METAFLOW_SHAPED.replace("@@SECRET@@", LEAK_SECRET)
               .replace("@@TOKEN@@", json.dumps(shaped.token)).replace("@@PADDING@@", "x" * 300_000))
    plain = run.start_task("plain").add_card(
        components=[demo.markdown("m", f"# {LEAK_SECRET}"), demo.progress("p", 0, 1000, LEAK_SECRET)])
    victims = [shaped, plain]
    for victim in victims:
        victim.update({"m": {"source": f"# {LEAK_SECRET} 0"}})
    site = workdir / "attacker"
    site.mkdir()
    attacker, attacker_port = serve_folder(site)
    friend, allowed_port = serve_folder(site)
    server = launch(["server", "--root", str(datastore), "--allow-origin", f"http://localhost:{allowed_port}"],
                    cwd=workdir)
    card = json.dumps(f"{server.url}card-html/{hostile}")
    popup = json.dumps(f"http://localhost:{attacker_port}/viewer.html")
    write_card(run.cards, hostile, ATTACKER_CARD.replace("@@POPUP@@", popup))
    for name, target in (("viewer", "flow/LeakFlow?follow"), ("card", f"card/{plain.key}")):
        page = ATTACK_PAGE.replace("@@TARGET@@", f"{server.url}{target}").replace("@@CARD@@", card)
        (site / f"{name}.html").write_text(page, encoding="utf-8")
    try:
        yield Leak(server, attacker_port, allowed_port, victims, plain, hostile)
    finally:
        server.stop()
        for process in (attacker, friend):
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def live_victims(leak: Leak) -> AsyncIterator[list[int]]:
    """Both victims get an update every 250 ms (`written[0]`: the newest value)."""
    written = [0]

    async def write() -> None:
        while True:
            written[0] += 1
            for victim in leak.victims:
                victim.update({"m": {"source": f"# {LEAK_SECRET} {written[0]}"}})
            leak.plain.update({"p": {"value": written[0]}})
            await asyncio.sleep(0.25)  # the flow's pace; nothing to wait for

    task = asyncio.create_task(write())
    try:
        yield written
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def victim_in_the_users_viewer(context: Any, leak: Leak) -> Any:
    """The user's own viewer, on the plain victim: its frame once it shows a live update."""
    page = await context.new_page()
    await page.goto(f"{leak.server.url}run/{leak.plain.key}")
    frame = await card_frame(page, leak.plain.key.name)
    await frame.wait_for_function("document.body.innerText.includes('" + LEAK_SECRET + " ')",
                                  timeout=UI_WAIT)
    return page


async def updates_still_arrive(page: Any, leak: Leak, written: list[int]) -> None:
    """The victim in the user's viewer shows an update written from now on, in place."""
    frame = await card_frame(page, leak.plain.key.name)
    await frame.evaluate("window.__marker = 'same page'")
    after = written[0] + 2
    await frame.wait_for_function(
        "(n) => Number(document.querySelector('[data-component-id=p] [role=progressbar]')"
        ".getAttribute('aria-valuenow')) >= n", arg=after, timeout=UI_WAIT)
    assert await frame.evaluate("window.__marker") == "same page"


async def collects_nothing(attacker: Any, framed: bool) -> None:
    """The attacker's page collected none of the victims' data, once it has attacked for TICKS
    rounds, `framed`: with card frames of ours in reach (our page let itself be framed), or none
    (it refused)."""
    if framed:  # from when our page is in reach
        await attacker.wait_for_function("() => window.reached > 0", timeout=UI_WAIT)
    start = await attacker.evaluate("window.ticks")
    await attacker.wait_for_function(f"(t) => window.ticks >= t + {TICKS}", arg=start, timeout=UI_WAIT)
    stolen: list[str] = await attacker.evaluate("window.stolen")
    leaked = [message for message in stolen if LEAK_SECRET in message]
    assert leaked == [], f"{len(leaked)} messages with victim data: {leaked[:3]}"
    assert (await attacker.evaluate("window.reached") > 0) is framed


@pytest.mark.parametrize("how", [
    "viewer, from another port of 127.0.0.1",
    "viewer, from localhost",
    "viewer, from an allowed origin",  # frame-ancestors lets it in: the frames must hold alone
    "card's host page, from localhost",  # embeddable anywhere by design
])
async def test_a_page_of_another_origin_gets_no_card_through_our_frames(
    leak: Leak, browser: Any, how: str
) -> None:
    host = "127.0.0.1" if "127.0.0.1" in how else "localhost"
    port = leak.allowed if "allowed" in how else leak.attacker
    target = "card" if "host page" in how else "viewer"
    context = await browser.new_context()
    user = await victim_in_the_users_viewer(context, leak)
    async with live_victims(leak) as written:
        attacker = await context.new_page()
        await attacker.goto(f"http://{host}:{port}/{target}.html")
        await collects_nothing(attacker, framed="allowed" in how or target == "card")
        await updates_still_arrive(user, leak, written)
    await context.close()


async def test_a_popup_of_a_card_gets_no_other_card(leak: Leak, browser: Any) -> None:
    """The attacker's card, shown in the user's viewer: a click opens the attacker's page as a
    popup that escapes the card's sandbox, and it tries the same."""
    context = await browser.new_context()
    user = await victim_in_the_users_viewer(context, leak)
    viewer = await context.new_page()
    await viewer.goto(f"{leak.server.url}run/{leak.hostile}")
    card = await card_frame(viewer, leak.hostile.name)
    async with live_victims(leak) as written:
        async with context.expect_page() as opened:
            await card.click("#open")
        popup = await opened.value
        await popup.wait_for_load_state()
        assert popup.url.startswith(f"http://localhost:{leak.attacker}/")
        await collects_nothing(popup, framed=False)
        await updates_still_arrive(user, leak, written)
    await context.close()


async def test_a_card_frame_that_loads_another_document_is_dropped_and_its_card_comes_back(
    leak: Leak, browser: Any
) -> None:
    """What any page that frames ours may do, done by the viewer's own page: point the shown
    card's frame at the attacker's card. That card gets nothing, the frame is dropped, and the
    card shows again, live, in a new frame."""
    context = await browser.new_context()
    page = await victim_in_the_users_viewer(context, leak)
    await page.evaluate("""() => {
      window.__stolen = [];
      window.__arrived = 0;
      window.addEventListener("message", (event) => {
        if (event.data && typeof event.data.stolen === "string") window.__stolen.push(event.data.stolen);
        if (event.data && event.data.arrived === "navigated") window.__arrived += 1;
      });
      window.__old = document.querySelector("#frames iframe:not(.incoming):not(.kept)");
    }""")
    async with live_victims(leak) as written:
        await page.evaluate("(url) => { window.__old.contentWindow.location = url; }",
                            f"{leak.server.url}card-html/{leak.hostile}")
        await page.wait_for_function("() => window.__arrived > 0", timeout=UI_WAIT)
        await page.wait_for_function("() => !window.__old.isConnected", timeout=UI_WAIT)
        await updates_still_arrive(page, leak, written)
    assert await page.evaluate(
        "document.querySelector('#frames iframe:not(.incoming):not(.kept)') !== window.__old")
    stolen: list[str] = await page.evaluate("window.__stolen")
    assert [message for message in stolen if LEAK_SECRET in message] == []
    await context.close()
