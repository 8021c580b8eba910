"""The server in process (pytest-aiohttp): JSON API, websocket topics, card pages, viewer shell."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import make_config, next_message, subscribe
from yarl import URL

from cardserver import demo
from cardserver.config import Roots, WatchTiming
from cardserver.demo import DemoCard, DemoRun, DemoTask
from cardserver.layout import LEGACY_STEP, CardKey, TaskKey
from cardserver.web.cards import load_style
from cardserver.web.keys import SEEN_TRANSPORTS
from cardserver.web.security import CARD_IFRAME_SANDBOX, VIEWER_CSP

# --- fixtures --------------------------------------------------------------------------------


def server_key(card: DemoCard) -> CardKey:
    """The key the server knows a card by: legacy cards have no step on disk."""
    t = card.key.task
    step = LEGACY_STEP if card.legacy else t.step
    return CardKey(TaskKey(t.flow, t.run, step, t.task), card.key.name)


def card_url(card: DemoCard) -> str:
    return str(server_key(card))


def topic(card: DemoCard) -> str:
    return f"card/{server_key(card)}"


@dataclass
class Shop:
    """ShopFlow: an old succeeded run with a retried task, a legacy card and several cards per
    task, and a newer failed run. OtherFlow: one finished run."""

    done: DemoRun
    failed: DemoRun
    newest: DemoRun
    start: DemoTask
    plain: DemoCard  # start's first card, with a data update
    named: DemoCard  # start's @card(id="training")
    legacy: DemoCard
    retried: DemoTask
    broken: DemoTask


@pytest.fixture
def shop(roots: Roots) -> Shop:
    t0 = 1_795_000_000_000
    done = demo.start_run(roots.datastore, flow="ShopFlow", ts_ms=t0)
    start = done.start_task("start")
    plain = start.add_card(components=[demo.markdown("title", "# shop"), demo.progress("p", 0, 10)])
    plain.update({"p": {"value": 4}})
    named = start.add_card(id="training", components=[demo.text("loss", "loss —")])
    legacy = start.add_card(legacy=True, components=[demo.text("old", "old layout")])
    start.finish()
    work = [done.start_task("work") for _ in range(3)]
    retried = work[1]
    for task in work:
        task.add_card(components=[demo.progress("p", 0, 3)])
    retried.finish(ok=False)
    retried.retry()
    for task in work:
        task.finish()
    end = done.start_task("end")
    end.add_card()
    end.finish()

    failed = demo.start_run(roots.datastore, flow="ShopFlow", ts_ms=t0 + 60_000)
    ok = failed.start_task("start")
    ok.add_card()
    ok.finish()
    broken = failed.start_task("train")
    broken.add_card(id="training")
    broken.finish(ok=False)

    newest = demo.write_fixture_run(roots.datastore, "OtherFlow", tasks=1)
    return Shop(done, failed, newest, start, plain, named, legacy, retried, broken)


@pytest.fixture
async def client(start_app: Any, roots: Roots, shop: Shop) -> TestClient:
    # The shop's runs are finished as they are written: no retry is awaited before "failed".
    timing = WatchTiming(cold_step_ms=10, shape_step_ms=10, status_grace_seconds=0.0)
    app_client: TestClient = await start_app(make_config(roots, timing=timing))
    return app_client


async def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def connect(client: TestClient) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect("/ws")
    hello = await next_message(ws)
    assert hello["type"] == "hello"
    return ws


async def collect(
    ws: aiohttp.ClientWebSocketResponse, *predicates: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The first message matching each predicate, whatever order they arrive in."""
    found: dict[int, dict[str, Any]] = {}

    def any_missing(m: dict[str, Any]) -> bool:
        for n, predicate in enumerate(predicates):
            if n not in found and predicate(m):
                found[n] = m
        return len(found) == len(predicates)

    await next_message(ws, any_missing)
    return [found[n] for n in range(len(predicates))]


async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A round trip: the server answers requests in order, so all earlier ones are handled."""
    await subscribe(ws, "ping")
    await next_message(ws, lambda m: m["type"] == "error" and m["topic"] == "ping")


async def follow_until_cards(ws: aiohttp.ClientWebSocketResponse, run: DemoRun, cards: int) -> None:
    """Subscribe to a run and wait until the server knows `cards` cards in one of its tasks,
    whether the snapshot already shows them or a later `task` message does."""
    await subscribe(ws, f"run/{run.key}")

    def enough(m: dict[str, Any]) -> bool:
        if m.get("topic") != f"run/{run.key}":
            return False
        if m["type"] == "run-detail":
            return any(len(t["cards"]) >= cards for t in m.get("tasks", []))
        return m["type"] == "task" and len(m["task"]["cards"]) >= cards

    await next_message(ws, enough)


def is_update(card: DemoCard, **values: Any) -> Any:
    """Predicate: the `update` message of `card` whose data holds these component fields."""

    def check(m: dict[str, Any]) -> bool:
        if m.get("topic") != topic(card) or m.get("type") != "update":
            return False
        return all(m["data"].get(cid, {}).get(k) == v for cid, fields in values.items()
                   for k, v in fields.items())

    return check


# --- API -------------------------------------------------------------------------------------


async def test_status(client: TestClient, roots: Roots) -> None:
    status = await get_json(client, "/api/status")
    assert status["ready"] is True
    assert status["watching"] == "watching"
    assert status["datastore"] == str(roots.datastore)
    assert status["cards"] == str(roots.cards)
    assert status["flows"] == 2


async def test_flows(client: TestClient, shop: Shop) -> None:
    body = await get_json(client, "/api/flows")
    assert [f["flow"] for f in body["flows"]] == ["OtherFlow", "ShopFlow"]
    shop_flow = body["flows"][1]
    assert shop_flow["runs"] == 2
    assert shop_flow["newest"]["run"] == shop.failed.run
    assert shop_flow["newest"]["status"] == "failed"
    assert body["flows"][0]["newest"]["status"] == "succeeded"


async def test_runs_newest_first_with_paging(client: TestClient, shop: Shop, roots: Roots) -> None:
    body = await get_json(client, "/api/flows/ShopFlow/runs")
    assert body["total"] == 2
    assert [r["run"] for r in body["runs"]] == [shop.failed.run, shop.done.run]
    assert [r["status"] for r in body["runs"]] == ["failed", "succeeded"]
    older = body["runs"][1]
    assert older["user"] == "demo"
    assert older["started"] == pytest.approx(1_795_000_000)
    assert older["tasks"] == 5  # start, 3 x work, end: the legacy card joins its own task
    assert older["counts"]["succeeded"] == 5

    page = await get_json(client, "/api/flows/ShopFlow/runs?offset=1&limit=1")
    assert page["total"] == 2
    assert [r["run"] for r in page["runs"]] == [shop.done.run]
    empty = await get_json(client, "/api/flows/ShopFlow/runs?offset=5")
    assert empty["total"] == 2 and empty["runs"] == []


async def test_run_detail(client: TestClient, shop: Shop) -> None:
    detail = await get_json(client, f"/api/runs/ShopFlow/{shop.done.run}")
    assert detail["run"]["status"] == "succeeded"
    assert detail["steps"] == ["start", "work", "end"]  # as they ran; no `_` for legacy cards
    real = [(t["step"], t["task"]) for t in detail["tasks"]]
    assert real == [("start", "2"), ("work", "3"), ("work", "4"), ("work", "5"), ("end", "6")]
    by_task = {(t["step"], t["task"]): t for t in detail["tasks"]}
    assert all(t["status"] == "succeeded" for t in by_task.values())

    retried = by_task[("work", shop.retried.key.task)]
    assert retried["attempt"] == 1
    assert retried["started"] is not None and retried["finished"] is not None

    start = by_task[("start", shop.start.key.task)]
    names = [c["name"] for c in start["cards"]]
    # The legacy card sits with the task of its id (its path has no step).
    assert set(names) == {shop.plain.key.name, shop.named.key.name, shop.legacy.key.name}
    named = next(c for c in start["cards"] if c["name"] == shop.named.key.name)
    assert named["type"] == "blank" and named["id"] == "training" and named["version"]
    plain = next(c for c in start["cards"] if c["name"] == shop.plain.key.name)
    assert plain["id"] is None



async def test_failed_run_and_task(client: TestClient, shop: Shop) -> None:
    detail = await get_json(client, f"/api/runs/ShopFlow/{shop.failed.run}")
    assert detail["run"]["status"] == "failed"
    statuses = {t["step"]: t["status"] for t in detail["tasks"]}
    assert statuses == {"start": "succeeded", "train": "failed"}
    train = next(t for t in detail["tasks"] if t["step"] == "train")
    assert train["cards"][0]["id"] == "training"


async def test_run_filters_and_paging(client: TestClient, shop: Shop) -> None:
    base = f"/api/runs/ShopFlow/{shop.done.run}"
    work = await get_json(client, f"{base}?step=work")
    assert work["total"] == 3
    assert [t["task"] for t in work["tasks"]] == ["3", "4", "5"]
    page = await get_json(client, f"{base}?step=work&offset=1&limit=1")
    assert page["total"] == 3 and [t["task"] for t in page["tasks"]] == ["4"]

    failed = await get_json(client, f"/api/runs/ShopFlow/{shop.failed.run}?status=failed")
    assert [t["step"] for t in failed["tasks"]] == ["train"]
    none = await get_json(client, f"{base}?status=running")
    assert none["total"] == 0 and none["tasks"] == []

    found = await get_json(client, f"{base}?q=TRAINING")  # card names, case-insensitive
    assert [(t["step"], t["task"]) for t in found["tasks"]] == [("start", shop.start.key.task)]
    by_task = await get_json(client, f"{base}?q=5")
    assert ("work", "5") in {(t["step"], t["task"]) for t in by_task["tasks"]}


async def test_filtered_run_answers_follow_each_change(start_app: Any, roots: Roots) -> None:
    """Filtered answers come from a per-revision view of the run: it must not go stale."""
    run = demo.start_run(roots.datastore, flow="LiveFlow")
    first = run.start_task("work")
    client: TestClient = await start_app(make_config(roots))
    base = f"/api/runs/LiveFlow/{run.run}"
    assert (await get_json(client, f"{base}?status=running"))["total"] == 1
    ws = await client.ws_connect("/ws")
    await subscribe(ws, f"run/LiveFlow/{run.run}")
    await next_message(ws)
    first.finish()
    second = run.start_task("work")
    seen: dict[str, str] = {}

    def both_known(m: dict[str, Any]) -> bool:  # the two tasks' messages come in either order
        if m.get("type") == "task":
            seen[m["task"]["task"]] = m["task"]["status"]
        return seen.get(first.key.task) == "succeeded" and second.key.task in seen

    await next_message(ws, both_known)
    running = await get_json(client, f"{base}?status=running")
    assert [t["task"] for t in running["tasks"]] == [second.key.task]
    work = await get_json(client, f"{base}?step=work&limit=5")
    assert [t["task"] for t in work["tasks"]] == [first.key.task, second.key.task]


async def test_card_detail_reads_the_update_lazily(client: TestClient, shop: Shop) -> None:
    body = await get_json(client, f"/api/cards/{card_url(shop.plain)}")
    assert body["flow"] == "ShopFlow" and body["run"] == shop.done.run
    assert body["step"] == "start" and body["task"] == shop.start.key.task
    assert body["task_status"] == "succeeded"
    assert body["name"] == shop.plain.key.name and body["has_html"] is True
    assert body["update"]["token"] == "final"
    assert body["update"]["data"]["p"]["value"] == 4


async def test_card_detail_of_named_and_legacy_cards(client: TestClient, shop: Shop) -> None:
    named = await get_json(client, f"/api/cards/{card_url(shop.named)}")
    assert named["id"] == "training" and named["update"]["token"] == "final"
    legacy = await get_json(client, f"/api/cards/{card_url(shop.legacy)}")
    assert legacy["step"] == LEGACY_STEP and legacy["has_html"] is True
    assert legacy["task_status"] == "succeeded"  # the status of the task with its id
    # The viewer links it under its task's real step; that URL serves the same file.
    t = shop.legacy.key.task
    page = await client.get(f"/card-html/{t.flow}/{t.run}/{t.step}/{t.task}/{shop.legacy.key.name}")
    assert page.status == 200 and "old layout" in await page.text()


@pytest.mark.parametrize(
    "path",
    [
        "/api/flows/NoFlow/runs",
        "/api/runs/ShopFlow/123",
        "/api/runs/NoFlow/123",
        "/api/cards/ShopFlow/1/start/2/blank-abc",
        "/api/nothing",
    ],
)
async def test_unknown_things_are_json_404(client: TestClient, path: str) -> None:
    body = await get_json(client, path, status=404)
    if path != "/api/nothing":
        assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_writing_to_the_api_is_405_with_allow(client: TestClient, method: str) -> None:
    for path in ("/api/flows", "/api/runs/ShopFlow/1", "/api/status"):
        response = await client.request(method, path)
        assert response.status == 405, path
        assert response.headers["Allow"] == "GET, HEAD"
        assert "only reads" in (await response.json())["error"]
    assert (await client.request(method, "/api/nothing")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/flows/%2e%2e/runs",
        "/api/runs/ShopFlow/%2e%2e",
        "/api/runs/..%2f..%2fetc/1",
        "/api/cards/ShopFlow/%2e%2e/start/2/blank-abc",
        "/api/cards/ShopFlow/1/start/%2e%2e/blank-abc",
        "/api/cards/ShopFlow/1/start/2/blank-abc.html",
        "/api/runs/Shop%00Flow/1",
    ],
)
async def test_bad_names_are_refused(client: TestClient, path: str) -> None:
    response = await client.get(URL(path, encoded=True))
    assert response.status in (400, 404)
    assert "error" in await response.json()


async def test_unknown_card_of_a_known_task(client: TestClient, shop: Shop) -> None:
    t = shop.start.key
    body = await get_json(client, f"/api/cards/{t}/blank-0123456789abcdef", status=404)
    assert "error" in body


@pytest.mark.parametrize(
    "query", ["offset=-1", "limit=0", "limit=abc", "offset=1.5", "limit=10001", "limit=-3"]
)
async def test_bad_paging_is_400(client: TestClient, shop: Shop, query: str) -> None:
    body = await get_json(client, f"/api/flows/ShopFlow/runs?{query}", status=400)
    assert "error" in body
    body = await get_json(client, f"/api/runs/ShopFlow/{shop.done.run}?{query}", status=400)
    assert "error" in body


# --- websocket -------------------------------------------------------------------------------


async def test_first_message_is_hello(client: TestClient) -> None:
    ws = await client.ws_connect("/ws")
    first = json.loads((await ws.receive()).data)
    assert first["type"] == "hello" and first["version"] == 1
    await ws.close()


async def test_unknown_topic_is_an_error(client: TestClient) -> None:
    ws = await connect(client)
    await subscribe(ws, "nonsense/topic")
    error = await next_message(ws)
    assert error["type"] == "error" and error["topic"] == "nonsense/topic" and error["error"]
    await subscribe(ws, "card/ShopFlow/../start/2/blank-abc")
    error = await next_message(ws)
    assert error["type"] == "error"
    await ws.send_json({"op": "dance", "topic": "flows"})
    assert (await next_message(ws))["type"] == "error"
    await ws.close()


async def test_card_subscriber_gets_state_then_updates(client: TestClient, roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="LiveFlow")
    task = run.start_task("train")
    card = task.add_card(components=[demo.progress("epochs", 0, 10), demo.text("loss", "-")])
    ws = await connect(client)
    await follow_until_cards(ws, run, 1)

    await subscribe(ws, topic(card))
    snapshot = await next_message(ws, lambda m: m.get("topic") == topic(card))  # the run's may interleave
    assert snapshot["type"] == "card", snapshot
    assert snapshot["exists"] is True and snapshot["card"]["name"] == card.key.name
    version = snapshot["card"]["version"]

    card.update({"epochs": {"value": 3}})
    update = await next_message(ws, is_update(card, epochs={"value": 3}))
    assert update["token"] == card.token
    assert update["data"]["loss"]["text"] == "-"  # the full state of every component

    card.update({"epochs": {"value": 4}, "loss": {"text": "0.5"}})
    await next_message(ws, is_update(card, epochs={"value": 4}, loss={"text": "0.5"}))

    token = card.rerender()
    rendered = await next_message(ws, lambda m: m["type"] == "card" and m["topic"] == topic(card))
    assert rendered["card"]["version"] != version
    detail = await get_json(client, f"/api/cards/{card_url(card)}")
    assert detail["version"] == rendered["card"]["version"]
    card.update({"epochs": {"value": 1}})
    after = await next_message(ws, is_update(card, epochs={"value": 1}))
    assert after["token"] == token
    await ws.close()


async def test_run_subscriber_sees_a_new_task(client: TestClient, shop: Shop) -> None:
    ws = await connect(client)
    await subscribe(ws, f"run/{shop.failed.key}")
    snapshot = await next_message(ws)
    assert snapshot["type"] == "run-detail" and snapshot["exists"] is True
    assert snapshot["run"]["status"] == "failed"
    assert {t["step"] for t in snapshot["tasks"]} == {"start", "train"}

    retry = shop.broken.retry()  # @retry: the run runs again
    task, run = await collect(
        ws,
        lambda m: m["type"] == "task" and m["task"]["step"] == "train" and m["task"]["attempt"] == retry,
        lambda m: m["type"] == "run" and m["run"]["status"] == "running",
    )
    assert task["task"]["status"] == "running"
    assert run["topic"] == f"run/{shop.failed.key}"

    fresh = shop.failed.start_task("report")
    card = fresh.add_card(id="summary")
    added = await next_message(
        ws, lambda m: m["type"] == "task" and m["task"]["task"] == fresh.key.task and m["task"]["cards"]
    )
    assert added["task"]["step"] == "report"
    assert added["task"]["cards"][0]["name"] == card.key.name
    assert added["task"]["cards"][0]["id"] == "summary"
    await ws.close()


async def test_run_topic_of_an_unknown_run(client: TestClient) -> None:
    ws = await connect(client)
    await subscribe(ws, "run/ShopFlow/404")
    snapshot = await next_message(ws)
    assert snapshot["type"] == "run-detail" and snapshot["exists"] is False
    await ws.close()


async def test_flows_and_runs_subscribers_see_a_new_run(
    client: TestClient, shop: Shop, roots: Roots
) -> None:
    ws = await connect(client)
    await subscribe(ws, "flows")
    flows = await next_message(ws)
    assert flows["type"] == "flows"
    assert [f["flow"] for f in flows["flows"]] == ["OtherFlow", "ShopFlow"]
    await subscribe(ws, "runs/ShopFlow")
    runs = await next_message(ws)
    assert runs["type"] == "runs" and [r["run"] for r in runs["runs"]] == [shop.failed.run, shop.done.run]

    brand_new = demo.start_run(roots.datastore, flow="ShopFlow")
    brand_new.start_task("start")
    added, newest = await collect(
        ws,
        lambda m: m["topic"] == "runs/ShopFlow" and m["type"] == "run" and m["run"]["run"] == brand_new.run,
        lambda m: m["type"] == "flows"
        and any(f["newest"] and f["newest"]["run"] == brand_new.run for f in m["flows"]),
    )
    assert added["run"]["flow"] == "ShopFlow"
    assert next(f for f in newest["flows"] if f["flow"] == "ShopFlow")["runs"] == 3

    other = demo.start_run(roots.datastore, flow="ThirdFlow")
    third = await next_message(
        ws, lambda m: m["type"] == "flows" and "ThirdFlow" in [f["flow"] for f in m["flows"]]
    )
    assert next(f for f in third["flows"] if f["flow"] == "ThirdFlow")["newest"]["run"] == other.run
    page = await get_json(client, "/api/flows/ShopFlow/runs")
    assert page["runs"][0]["run"] == brand_new.run
    await ws.close()


async def test_unsubscribe_stops_messages(client: TestClient, roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="QuietFlow")
    task = run.start_task("start")
    quiet = task.add_card(components=[demo.progress("p", 0, 10)])
    beacon = task.add_card(components=[demo.progress("p", 0, 10)])
    ws = await connect(client)
    await follow_until_cards(ws, run, 2)
    await ws.send_json({"op": "unsubscribe", "topic": f"run/{run.key}"})
    await subscribe(ws, topic(quiet))
    await subscribe(ws, topic(beacon))
    await next_message(ws, lambda m: m["type"] == "card" and m["topic"] == topic(beacon))
    quiet.update({"p": {"value": 1}})
    await next_message(ws, is_update(quiet, p={"value": 1}))

    await ws.send_json({"op": "unsubscribe", "topic": topic(quiet)})
    await ping(ws)  # the server has handled the unsubscribe before the file changes
    quiet.update({"p": {"value": 2}})
    beacon.update({"p": {"value": 9}})  # written after: its message proves quiet's was handled

    seen: list[dict[str, Any]] = []

    def record(m: dict[str, Any]) -> bool:
        seen.append(m)
        return is_update(beacon, p={"value": 9})(m)

    await next_message(ws, record)
    assert [m for m in seen if m.get("topic") == topic(quiet)] == []
    assert [m for m in seen if m.get("topic") == f"run/{run.key}"] == []
    await ws.close()


async def test_subscribe_sends_snapshot_then_deltas_in_order(client: TestClient, roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OrderFlow")
    first = run.start_task("start")
    card = first.add_card(components=[demo.progress("p", 0, 10)])
    card.update({"p": {"value": 2}})
    ws = await connect(client)
    await subscribe(ws, f"run/{run.key}")
    snapshot = await next_message(ws)
    assert snapshot["type"] == "run-detail" and snapshot["topic"] == f"run/{run.key}"
    if not snapshot["exists"] or not any(t["cards"] for t in snapshot["tasks"]):
        await next_message(ws, lambda m: m["type"] == "task" and m["task"]["cards"])
    second = run.start_task("work")
    delta = await next_message(  # its `_self.json` may come in a batch before its attempt
        ws, lambda m: m["type"] == "task" and m["task"]["task"] == second.key.task
        and m["task"]["status"] == "running"
    )
    assert delta["topic"] == f"run/{run.key}"

    await ws.send_json({"op": "unsubscribe", "topic": f"run/{run.key}"})
    await subscribe(ws, topic(card))

    def on_card(m: dict[str, Any]) -> bool:  # run messages sent before the unsubscribe may follow
        return m.get("topic") == topic(card)

    messages = [await next_message(ws, on_card), await next_message(ws, on_card)]
    assert [m["type"] for m in messages] == ["card", "update"]  # the render first, then its update
    assert messages[0]["exists"] is True
    assert messages[1]["data"]["p"]["value"] == 2
    await ws.close()


# --- card pages ------------------------------------------------------------------------------

INJECTED = b"window.__cardserverRuntime"


async def test_card_url_is_our_host_page_around_the_sandboxed_card(
    client: TestClient, shop: Shop
) -> None:
    """`card/...` is our own page (our CSP, our script); it frames `card-html/...` sandboxed."""
    response = await client.get(f"/card/{card_url(shop.plain)}")
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == VIEWER_CSP
    text = await response.text()
    config = json.loads(re.search(r'id="card-host">(\{.*?\})</script>', text)[1])  # type: ignore[index]
    assert config["topic"] == topic(shop.plain)
    assert config["html"] == f"card-html/{card_url(shop.plain)}"
    assert config["cap"] and config["version"]
    assert f'data-sandbox="{CARD_IFRAME_SANDBOX}"' in text
    assert 'src="static/card-host.js"' in text and "old layout" not in text


async def test_card_page_injects_the_runtime_before_the_last_body(client: TestClient, shop: Shop) -> None:
    response = await client.get(f"/card-html/{card_url(shop.plain)}")
    assert response.status == 200
    assert response.content_type == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in csp
    body = await response.read()
    original = shop.plain.path_html.read_bytes()
    assert original.count(b"</body>") >= 2  # one sits in a JS string: the trap we avoid
    at = body.index(INJECTED)
    assert body.rfind(b"</body>") > at > body.find(b"</body>")
    assert b'var __probe = "</body>";' in body
    style = load_style().encode()
    assert body.count(style) == 1 and body.index(style) == body.index(b"<head>") + len(b"<head>")
    unstyled = body.replace(style, b"", 1)  # our chart style, first in the head (docs/cards.md)
    head, _, _ = original.rpartition(b"</body>")
    assert unstyled.startswith(head)  # the card itself is untouched up to the injection
    assert unstyled.endswith(original[len(head):])
    assert b"WebSocket" not in body  # the card opens no connection: its host feeds it


async def test_card_page_etag_and_304(client: TestClient, shop: Shop) -> None:
    path = f"/card-html/{card_url(shop.named)}"
    first = await client.get(path)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert again.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
    assert await again.read() == b""
    weak = await client.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status == 304
    stale = await client.get(path, headers={"If-None-Match": '"stale"'})
    assert stale.status == 200


async def test_card_page_is_gzipped_when_accepted(client: TestClient, shop: Shop) -> None:
    path = f"/card-html/{card_url(shop.plain)}"
    plain = await client.get(path, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    zipped = await client.get(path, headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert int(zipped.headers["Content-Length"]) < int(plain.headers["Content-Length"]) / 2
    assert await zipped.read() == await plain.read()  # the client inflates it back to the same page


async def test_a_big_card_page_is_sent_a_chunk_at_a_time(start_app: Any, roots: Roots) -> None:
    """Issue 21, finding 4: a client that does not read holds at most a chunk or so of its answer
    in our buffers, never a copy of the whole page; unpacked, HEAD, or gzipped, the answer is the
    same page, with its length and the usual headers."""
    run = demo.start_run(roots.datastore, flow="BigFlow")
    noise = base64.b64encode(os.urandom(12 * 1024 * 1024)).decode()  # does not compress
    card = run.start_task("start").add_card(components=[demo.text("t", noise)])
    client = await start_app(make_config(roots))
    path = f"/card-html/{card_url(card)}"
    plain = await client.get(path, headers={"Accept-Encoding": "identity"})
    body = await plain.read()
    assert noise.encode() in body and int(plain.headers["Content-Length"]) == len(body)
    assert plain.headers["X-Content-Type-Options"] == "nosniff"
    only_head = await client.head(path, headers={"Accept-Encoding": "identity"})
    assert only_head.headers["Content-Length"] == str(len(body)) and await only_head.read() == b""

    port = client.server.port
    assert port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", port)  # reads 64 KiB, then pauses
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: gzip\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        held = await buffered_once_stalled(client.app[SEEN_TRANSPORTS])
    finally:
        writer.close()
    assert 0 < held <= 1024 * 1024, f"{held} bytes of a {len(body)}-byte page held for one client"


async def buffered_once_stalled(transports: Any, timeout: float = 10.0) -> int:
    """The most any of the server's transports holds unsent, once one has held the same for 0.2 s
    (its client reads nothing: the answer has stopped where it will stay)."""
    loop = asyncio.get_running_loop()
    deadline, most, same = loop.time() + timeout, 0, 0
    while loop.time() < deadline and same < 20:
        now = max((t.get_write_buffer_size() for t in list(transports)), default=0)
        same = same + 1 if now == most and now > 0 else 0
        most = max(most, now)
        await asyncio.sleep(0.01)  # nothing to await: the buffer has no event of its own
    return most


async def test_rerender_changes_the_etag(client: TestClient, roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="RenderFlow")
    card = run.start_task("start").add_card(components=[demo.text("t", "one")])
    ws = await connect(client)
    await subscribe(ws, topic(card))
    before = await next_message(ws, lambda m: m["type"] == "card" and m["exists"])
    path = f"/card-html/{card_url(card)}"
    old = await client.get(path)
    old_tag = old.headers["ETag"]
    assert b'"one"' in await old.read()

    card.rerender([demo.text("t", "two")])
    old_version = before["card"]["version"]
    await next_message(ws, lambda m: m["type"] == "card" and m["card"]["version"] != old_version)
    new = await client.get(path, headers={"If-None-Match": old_tag})
    assert new.status == 200
    assert new.headers["ETag"] != old_tag
    assert b'"two"' in await new.read()
    await ws.close()


@pytest.mark.parametrize("route", ["card", "card-html"])
async def test_card_page_not_found(client: TestClient, shop: Shop, route: str) -> None:
    missing = await client.get(f"/{route}/{shop.start.key}/blank-0123456789abcdef")
    assert missing.status == 404
    bad = await client.get(URL(f"/{route}/ShopFlow/%2e%2e/start/2/blank-abc", encoded=True))
    assert bad.status == 404


# --- viewer shell and static files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "base"),
    [
        ("/", "./"),
        ("/flow/ShopFlow", "../"),
        ("/run/ShopFlow/123", "../../"),
        ("/run/ShopFlow/123/start/2/blank-abc", "../../../../../"),
    ],
)
async def test_viewer_shell_has_a_relative_base(client: TestClient, path: str, base: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    assert f'<base href="{base}">' in html
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "sandbox" not in csp
    assert 'src="static/viewer.js"' in html  # relative to the base, so any prefix works


async def test_viewer_shell_tells_the_page_what_to_open(client: TestClient) -> None:
    html = await (await client.get("/run/ShopFlow/123/start/2/blank-abc")).text()
    view = json.loads(re.search(r'<script type="application/json" id="viewer">(.*?)</script>', html)[1])  # type: ignore[index]
    assert view["kind"] == "card"
    assert (view["flow"], view["run"], view["step"], view["task"], view["card"]) == (
        "ShopFlow", "123", "start", "2", "blank-abc"
    )


async def test_viewer_shell_refuses_bad_deep_links(client: TestClient) -> None:
    response = await client.get(URL("/run/ShopFlow/%2e%2e", encoded=True))
    assert response.status == 404


@pytest.mark.parametrize(
    ("name", "kind"),
    [("viewer.js", "javascript"), ("viewer.css", "text/css"), ("card-runtime.js", "javascript")],
)
async def test_static_files_are_served(client: TestClient, name: str, kind: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status == 200
    assert kind in response.headers["Content-Type"]
    body = await response.read()
    assert body == (Path(demo.__file__).parent / "static" / name).read_bytes()


async def test_static_files_stay_in_their_folder(client: TestClient) -> None:
    response = await client.get(URL("/static/..%2f__init__.py", encoded=True))
    assert response.status in (403, 404)


# --- no datastore yet ------------------------------------------------------------------------


async def test_server_waits_for_a_datastore(start_app: Any, tmp_path: Path) -> None:
    datastore = tmp_path / "project" / ".metaflow"
    (tmp_path / "project").mkdir()
    roots = Roots(datastore, datastore / "mf.cards")
    client: TestClient = await start_app(make_config(roots))
    status = await get_json(client, "/api/status")
    assert status["ready"] is True and status["watching"] == "waiting" and status["flows"] == 0
    assert (await get_json(client, "/api/flows"))["flows"] == []

    ws = await connect(client)
    await subscribe(ws, "flows")
    assert (await next_message(ws))["flows"] == []
    run = demo.start_run(datastore, flow="FirstFlow")
    card = run.start_task("start").add_card()
    found = await next_message(ws, lambda m: m["type"] == "flows" and m["flows"])
    assert found["flows"][0]["flow"] == "FirstFlow"
    assert found["flows"][0]["newest"]["run"] == run.run
    await subscribe(ws, topic(card))
    await next_message(ws, lambda m: m["type"] == "card" and m["exists"])
    assert (await get_json(client, "/api/status"))["watching"] == "watching"
    await ws.close()
