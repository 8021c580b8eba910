"""The S3 source end to end: real Metaflow runs written to moto's S3 server, our real app on
top (API and websocket). What the local source offers must hold here too: flows, runs, tasks,
cards, status, live updates in place, re-renders, the task view, logs, `/api/status`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, all_of, next_message, subscribe
from s3fixtures import (
    LiveRun,
    S3Endpoint,
    S3Run,
    get_json,
    s3_config,
    settings_for,
)

from cardserver.s3.source import S3Source
from cardserver.web.keys import SOURCE

pytestmark = pytest.mark.usefixtures("s3_credentials")


def card_of(detail: dict[str, Any], step: str) -> str:
    [task] = [t for t in detail["tasks"] if t["step"] == step]
    [card] = task["cards"]
    return f"{detail['run']['flow']}/{detail['run']['run']}/{step}/{task['task']}/{card['name']}"


async def test_a_finished_run_is_served_with_status_from_its_s3_task_folders(
    start_app: Any, s3_server: S3Endpoint, s3_card_run: S3Run, tmp_path: Path
) -> None:
    run = s3_card_run
    client = await start_app(s3_config(tmp_path, settings_for(s3_server.url, run.sysroot)))
    flows = await get_json(client, "/api/flows")
    assert [f["flow"] for f in flows["flows"]] == [run.flow]
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    assert detail["run"]["status"] == "succeeded"
    assert {t["step"]: t["status"] for t in detail["tasks"]} == {"start": "succeeded", "end": "succeeded"}
    card = await get_json(client, f"/api/cards/{card_of(detail, 'start')}")
    assert card["update"]["token"] == "final" and "# update 2" in json.dumps(card["update"]["data"])
    html = await client.get(f"/card-html/{card_of(detail, 'start')}")
    page = await html.read()
    assert html.status == 200 and b'METAFLOW_RELOAD_TOKEN = "final"' in page
    start_card = card_of(detail, "start")
    parts = await get_json(client, f"/api/cards/{start_card}/page")  # apart, for a warm frame
    assert parts["script"] and parts["before"].encode() in page  # the page itself is whole
    shell = await client.get(f"/card-shell/{parts['script']}")
    assert shell.status == 200 and len(await shell.read()) > 500_000  # the bundle is in it
    status = await get_json(client, "/api/status")
    assert status["source"] == "s3" and status["cards"] == f"{run.sysroot}/mf.cards"
    assert status["s3"]["requests_per_minute"]["LIST"] > 0 and status["s3"]["usd_per_hour"] > 0
    source = client.app[SOURCE]
    assert isinstance(source, S3Source)
    assert source.status()["followed_runs"] == 0  # finished: never polled again


async def test_the_task_view_and_logs_come_from_s3(
    start_app: Any, s3_server: S3Endpoint, s3_card_run: S3Run, tmp_path: Path
) -> None:
    run = s3_card_run
    client = await start_app(s3_config(tmp_path, settings_for(s3_server.url, run.sysroot)))
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    [end] = [t for t in detail["tasks"] if t["step"] == "end"]
    task = await get_json(client, f"/api/tasks/{run.flow}/{run.run_id}/end/{end['task']}")
    [attempt] = task["attempts"]
    assert attempt["verdict"] == "succeeded" and attempt["return_code"] == 0 and attempt["logs"]["stdout"] > 0
    page = await get_json(client, f"/api/logs/{run.flow}/{run.run_id}/end/{end['task']}?stream=stdout")
    assert any("end of S3CardFlow" in line["text"] for line in page["lines"])


async def test_a_failed_run_with_cards_under_card_s3root(
    start_app: Any, s3_server: S3Endpoint, s3_failed_run: S3Run, tmp_path: Path
) -> None:
    run = s3_failed_run
    settings = settings_for(s3_server.url, run.sysroot, f"s3://{s3_server.bucket}/elsewhere/cards")
    client = await start_app(s3_config(tmp_path, settings))
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    assert {t["step"]: t["status"] for t in detail["tasks"]} == {"start": "failed"}
    assert detail["run"]["status"] == "failed"
    [start] = detail["tasks"]
    task = await get_json(client, f"/api/tasks/{run.flow}/{run.run_id}/start/{start['task']}")
    assert task["traceback"] is not None and "this step fails on purpose" in task["traceback"]["exception"]


FLOW_WAIT = 180.0  # a Metaflow run on S3 takes a while to start on a loaded 2-core machine


def title_step(message: dict[str, Any]) -> int | None:
    """N of the "# step N" title in a card update message."""
    for component in message["data"].values():
        text = component.get("source", "") if isinstance(component, dict) else ""
        if text.startswith("# step "):
            return int(text.removeprefix("# step "))
    return None


def has_text(message: dict[str, Any], text: str) -> bool:
    return text in json.dumps(message["data"])


def statuses(detail: dict[str, Any]) -> dict[str, list[tuple[str, int | None]]]:
    """step -> [(status, attempt)] of its tasks, in task order."""
    found: dict[str, list[tuple[str, int | None]]] = {}
    for task in detail["tasks"]:
        found.setdefault(task["step"], []).append((task["status"], task["attempt"]))
    return found


EXPECTED = {"start": [("succeeded", 0)], "flaky": [("succeeded", 1)],
            "each": sorted([("succeeded", 0), ("failed", 0), ("succeeded", 0)])}


async def test_a_live_card_on_s3_updates_in_place_then_re_renders_then_ends(
    start_app: Any, s3_server: S3Endpoint, s3_live_run: LiveRun, tmp_path: Path
) -> None:
    live = s3_live_run
    client = await start_app(s3_config(tmp_path, settings_for(s3_server.url, live.sysroot)))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, f"runs/{live.flow}")
    found = await next_message(ws, lambda m: bool(m.get("runs") or m.get("run")), timeout=FLOW_WAIT)
    run = (found.get("run") or found["runs"][0])["run"]
    await subscribe(ws, f"run/{live.flow}/{run}")
    task = await next_message(ws, lambda m: any(t["step"] == "start" and t["cards"] for t in
                                                m.get("tasks", [m.get("task") or {"step": "", "cards": []}])),
                              timeout=FLOW_WAIT)
    start = next(t for t in task.get("tasks", [task.get("task")]) if t["step"] == "start")
    card = f"{live.flow}/{run}/start/{start['task']}/{start['cards'][0]['name']}"
    await subscribe(ws, f"card/{card}")
    first = await next_message(ws, lambda m: m.get("type") == "card", timeout=WAIT)
    live.go()
    # A live update, while the task runs: its token is the render's, not "final"
    update = await next_message(ws, lambda m: m.get("type") == "update" and (title_step(m) or 0) >= 1,
                                timeout=FLOW_WAIT)
    assert update["token"] != "final"
    # The new component: the HTML rendered again (a new version), an update with a new reload
    # token, then the final update (read in any order: each poll may see any of them first)
    await all_of(ws, lambda m: m.get("type") == "card" and m["card"]["version"] != first["card"]["version"],
                 lambda m: m.get("type") == "update" and has_text(m, "a new section")
                 and m["token"] not in (update["token"], "final"),
                 lambda m: m.get("type") == "update" and m["token"] == "final", timeout=FLOW_WAIT)
    # The rest of the run, seen as it ends: a retry, a failing foreach item, the run failed
    finishing = asyncio.ensure_future(asyncio.to_thread(live.finish))  # the socket is read meanwhile
    await next_message(ws, lambda m: m.get("type") == "run" and m["run"]["status"] == "failed"
                       and m["run"]["counts"] == {"succeeded": 4, "failed": 1}, timeout=FLOW_WAIT)
    await finishing
    detail = await get_json(client, f"/api/runs/{live.flow}/{run}")
    got = statuses(detail)
    assert {**got, "each": sorted(got["each"])} == EXPECTED, got
    assert "join" not in got and "end" not in got


async def test_a_finished_live_run_read_with_its_local_metadata(
    start_app: Any, s3_server: S3Endpoint, s3_live_run: LiveRun
) -> None:
    """Started where the run's runtime ran: the local _meta says the status, cards from S3."""
    run = await asyncio.to_thread(s3_live_run.finish)
    client = await start_app(s3_config(run.workdir, settings_for(s3_server.url, run.sysroot)))
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    got = statuses(detail)
    assert {**got, "each": sorted(got["each"])} == EXPECTED, got
    assert detail["run"]["status"] == "failed" and detail["run"]["user"] == "tester"  # from the local _meta
    [flaky] = [t for t in detail["tasks"] if t["step"] == "flaky"]
    task = await get_json(client, f"/api/tasks/{run.flow}/{run.run_id}/flaky/{flaky['task']}")
    assert [a["verdict"] for a in task["attempts"]] == ["failed", "succeeded"]  # attempts from S3
    assert task["metadata"]["user"] == "tester"  # metadata from the local _meta
    assert "the first attempt fails" in task["traceback"]["exception"]
