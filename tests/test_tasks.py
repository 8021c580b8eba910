"""The task view's API and topic on real Metaflow runs: a step that raises (traceback picked
out), foreach siblings the runtime killed, a retry that fails then succeeds, a 10 MiB log paged
from its end; live pushes of attempts and verdicts; requests checked like the rest of the API."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import metaflow
import pytest
from conftest import make_config, next_message, start_flow, subscribe
from taskflows import FAIL_FLOW, HOSTILE, RETRY_FLOW, TRUNCATED, Ran, finish
from test_metaflow import roots_in

pytestmark = pytest.mark.timeout(300)
FLOW_WAIT = 120.0
TOKEN = "task-view-token-for-tests"


async def get_json(client: Any, path: str, status: int = 200, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status == status, (path, await response.text())
    return await response.json()


async def tasks_by_status(client: Any, ran: Ran, flow: str) -> dict[str, list[dict[str, Any]]]:
    detail = await get_json(client, f"/api/runs/{flow}/{ran.runs[flow]}")
    found: dict[str, list[dict[str, Any]]] = {}
    for task in detail["tasks"]:
        found.setdefault(task["status"], []).append(task)
    return found


async def test_a_raising_step_shows_why_it_failed(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots))
    failed = (await tasks_by_status(client, ran, FAIL_FLOW))["failed"]
    assert [t["step"] for t in failed] == ["each"]
    detail = await get_json(client, f"/api/tasks/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}/each/{failed[0]['task']}")
    assert detail["status"] == "failed"
    [attempt] = detail["attempts"]
    assert attempt["verdict"] == "failed" and attempt["return_code"] == 1 and not attempt["killed"]
    assert attempt["started"] <= attempt["finished"] and attempt["duration"] >= 2  # it slept 2 s
    traceback = detail["traceback"]
    assert traceback["attempt"] == 0 and traceback["exception"] == "RuntimeError: diverged"
    assert traceback["lines"][0]["text"] == "Traceback (most recent call last):"
    assert 'raise RuntimeError("diverged")' in traceback["lines"][-2]["text"]
    meta = detail["metadata"]
    assert meta["user"] == "tester" and meta["metaflow_version"] == metaflow.__version__
    assert meta["python_version"] == sys.version.split()[0] and meta["runtime"] == "dev"
    assert "user:tester" in meta["system_tags"]

    stdout = await get_json(client, f"/api/logs/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}/each/{failed[0]['task']}")
    assert [line["text"] for line in stdout["lines"]] == ["item 0", HOSTILE]  # text, as printed
    assert all(line["ts"].endswith("Z") for line in stdout["lines"])
    stderr = await get_json(client, f"/api/logs/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}/each/{failed[0]['task']}",
                            stream="stderr")
    texts = [line["text"] for line in stderr["lines"]]
    assert texts[0] == "about to fail" and "RuntimeError: diverged" in texts


async def test_foreach_siblings_killed_by_the_runtime(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots))
    killed = (await tasks_by_status(client, ran, FAIL_FLOW))["killed"]
    assert len(killed) == 2
    for task in killed:
        path = f"{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}/each/{task['task']}"
        detail = await get_json(client, f"/api/tasks/{path}")
        [attempt] = detail["attempts"]
        assert (detail["status"], attempt["verdict"], attempt["return_code"], attempt["killed"]) == (
            "killed", "killed", -9, True)
        assert detail["traceback"] is None  # killed, not raised: nothing to pick out
        stdout = await get_json(client, f"/api/logs/{path}")
        assert stdout["lines"][0]["text"].startswith("item ")  # what it printed before the kill


async def test_retry_attempts_verdicts_logs_and_cards(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots))
    path = f"{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/flaky/2"
    detail = await get_json(client, f"/api/tasks/{path}")
    assert detail["status"] == "succeeded"
    assert [(a["attempt"], a["verdict"], a["return_code"]) for a in detail["attempts"]] == [
        (0, "failed", 1), (1, "succeeded", 0)]
    assert detail["traceback"]["attempt"] == 0  # why the first try failed, though the task succeeded
    assert [c["id"] for c in detail["attempts"][1]["cards"]] == ["tries"]
    assert detail["attempts"][0]["cards"] == []
    for attempt in (0, 1):
        page = await get_json(client, f"/api/logs/{path}", attempt=attempt)
        assert page["attempt"] == attempt and page["lines"][0]["text"] == f"attempt {attempt}"
    latest = await get_json(client, f"/api/logs/{path}")
    assert latest["attempt"] == 1


async def test_big_log_tail_first_then_pages_back(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots))
    path = f"/api/logs/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/chatty/3"
    log_file = ran.task_dir(RETRY_FLOW, "chatty", "3") / "0.runtime_stdout.log"
    page = await get_json(client, path, tail=100)
    assert len(page["lines"]) == 100 and page["end"] == page["size"] == log_file.stat().st_size
    assert page["lines"][-1]["text"] == TRUNCATED
    texts = [line["text"] for line in page["lines"]]
    requests = 1
    while page["start"] > 0:
        earlier = await get_json(client, path, tail=5000, before=page["start"])
        assert earlier["end"] == page["start"] and len(earlier["lines"]) <= 5000
        texts = [line["text"] for line in earlier["lines"]] + texts
        page = earlier
        requests += 1
    assert texts[:2] == ["line 0", "line 1"]
    assert texts[:-1] == [HOSTILE if i == 100_000 else f"line {i}" for i in range(len(texts) - 1)]
    assert len(texts) == log_file.read_bytes().count(b"\n") and requests > 20


async def test_log_requests_are_checked(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots))
    task = f"{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/flaky/2"
    for params in ({"stream": "both"}, {"attempt": "-1"}, {"tail": "0"}, {"tail": "999999"},
                   {"before": "x"}, {"before": "1", "after": "1"}):
        assert "error" in await get_json(client, f"/api/logs/{task}", 400, **params)
    assert "error" in await get_json(client, f"/api/logs/{task}", 404, attempt="7")
    assert "error" in await get_json(client, f"/api/logs/{RETRY_FLOW}/1/flaky/2", 404)
    assert "error" in await get_json(client, f"/api/tasks/{RETRY_FLOW}/1/flaky/2", 404)
    for bad in ("..%2F..%2F..", "_parameters", "a%2Fb"):
        response = await client.get(f"/api/tasks/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/{bad}/2")
        assert response.status in (400, 404)
        response = await client.get(f"/api/logs/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/{bad}/2")
        assert response.status in (400, 404)
    page = await client.get(f"/run/{task}")
    assert page.status == 200 and "task-panel" in await page.text()


async def test_logs_and_tasks_need_the_token(ran: Ran, start_app: Any) -> None:
    client = await start_app(make_config(ran.roots, token=TOKEN))
    task = f"{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/flaky/2"
    for path in (f"/api/logs/{task}", f"/api/tasks/{task}", f"/run/{task}"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status == 403
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get(f"/api/logs/{task}", headers=bearer)).status == 200
    foreign = await client.get(f"/api/logs/{task}", headers={**bearer, "Origin": "null"})
    assert foreign.status == 403  # a card page (opaque origin) reads no logs


async def test_attempts_and_verdicts_are_pushed_live(tmp_path: Path, start_app: Any) -> None:
    client = await start_app(make_config(roots_in(tmp_path)))
    ws = await client.ws_connect("/ws")
    flow = start_flow("task_fail_flow.py", tmp_path)
    try:
        await subscribe(ws, "flows")
        flows = await next_message(
            ws, lambda m: m.get("type") == "flows" and any(f["flow"] == FAIL_FLOW for f in m["flows"]),
            timeout=FLOW_WAIT)
        run = next(f for f in flows["flows"] if f["flow"] == FAIL_FLOW)["newest"]["run"]
        failing, sibling = f"task/{FAIL_FLOW}/{run}/each/2", f"task/{FAIL_FLOW}/{run}/each/3"
        await subscribe(ws, failing)
        await subscribe(ws, sibling)
        seen: dict[str, list[str]] = {failing: [], sibling: []}
        traceback: list[str] = []

        def verdicts(message: dict[str, Any]) -> bool:
            if message.get("type") != "task-detail":
                return False
            latest = message["attempts"][-1]["verdict"] if message.get("attempts") else "none"
            if not seen[message["topic"]] or seen[message["topic"]][-1] != latest:
                seen[message["topic"]].append(latest)
            if message["topic"] == failing and message.get("traceback"):
                traceback[:] = [message["traceback"]["exception"]]  # the runtime saves logs last
            return bool(traceback) and seen[sibling][-1:] == ["killed"]

        await next_message(ws, verdicts, timeout=FLOW_WAIT)
        assert "running" in seen[sibling], seen  # pushed while it ran, then again when killed
        assert seen[failing][-1] == "failed" and traceback == ["RuntimeError: diverged"]
        await ws.close()
    finally:
        await asyncio.to_thread(finish, flow)
