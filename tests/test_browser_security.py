"""A hostile card, in Chromium: it runs its attacks inside the viewer and on its own, writes what
happened into its own page, and every attack must fail while the viewer keeps working.

The hostile HTML is written at test time into the datastore at the card's layout path, like any
card Metaflow writes; it never lives in the repository.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess

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
