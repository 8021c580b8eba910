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
  const own = window.__cardserver || {};
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
  const socket = (topic, cap) => new Promise((resolve) => {
    const url = new URL(ROOT + "ws", location.href);
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
  const cookie = () => attempt(async () => "read: " + JSON.stringify(document.cookie));
  const storage = () => attempt(async () => {
    localStorage.setItem("hostile", "1");
    return "read: " + localStorage.length;
  });
  Promise.all([
    parentDocument(), api(), apiNoCors(), socket(VICTIM, own.cap), socket("flows", own.cap),
    socket(VICTIM, undefined), cookie(), storage(),
  ]).then(([parent, apiRead, apiOpaque, victim, flows, noCap, cookieRead, storageRead]) => {
    const results = { origin: String(window.origin), ownTopic: own.topic || null, parent, api: apiRead,
      apiNoCors: apiOpaque, victimSocket: victim, flowsSocket: flows, noCapSocket: noCap,
      cookie: cookieRead, storage: storageRead };
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
        """(name) => [...document.querySelectorAll('#frames iframe:not(.incoming)')]
                     .some(f => f.src.includes(name))""",
        arg=name, timeout=UI_WAIT,
    )
    handle = await page.wait_for_selector("#frames iframe:not(.incoming)", timeout=UI_WAIT)
    frame = await handle.content_frame()
    assert frame is not None
    return frame


async def results_of(frame: Any) -> dict[str, str]:
    await frame.wait_for_selector("#results[data-done]", state="attached", timeout=UI_WAIT)
    text = await frame.text_content("#results")
    assert text
    results: dict[str, str] = json.loads(text)
    return results


def assert_every_attack_failed(results: dict[str, str], key: CardKey, embedded: bool) -> None:
    flat = json.dumps({k: v for k, v in results.items() if k != "ownTopic"})
    assert "read:" not in flat, results
    assert VIEWER_COOKIE not in flat and VICTIM_SECRET not in flat and "SecFlow" not in flat
    assert results["origin"] == "null"  # an opaque origin, in the viewer and on its own
    assert results["ownTopic"] == f"card/{key}"  # the runtime ran: the capability was there to abuse
    if embedded:
        assert results["parent"] == "blocked: SecurityError"
    else:
        assert results["parent"] == "top-level: no parent"
    assert results["api"] == "blocked: TypeError"  # refused and unreadable cross-origin
    assert results["apiNoCors"] == "opaque: opaque"
    assert results["victimSocket"] == "closed 4403"
    assert results["flowsSocket"] == "closed 4403"
    assert results["noCapSocket"] == "closed 4403"
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
    sandbox = await page.get_attribute("#frames iframe:not(.incoming)", "sandbox")
    assert sandbox is not None and "allow-scripts" in sandbox.split()
    assert "allow-same-origin" not in sandbox

    assert_every_attack_failed(await results_of(frame), key, embedded=True)

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
    response = await page.goto(f"{server.url}card/{key}")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("sandbox allow-scripts")

    assert_every_attack_failed(await results_of(page.main_frame), key, embedded=False)

    # the viewer, opened next, is unharmed
    viewer = await context.new_page()
    await viewer.goto(f"{server.url}run/{key.run_key}")
    await viewer.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'", timeout=UI_WAIT
    )
    await viewer.wait_for_selector("#card-list .row", timeout=UI_WAIT)
    await context.close()
