"""Real Metaflow flows, with real @card decorators and current.card.refresh(), while the server
runs: every update reaches a subscriber, statuses end right, the card URL serves the real card."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, next_message, start_flow, subscribe

from cardserver.config import Roots, WatchTiming

pytestmark = pytest.mark.timeout(240)
FLOW_WAIT = 90.0  # a Metaflow run takes seconds to start on a 2-core machine


def roots_in(workdir: Path) -> Roots:
    datastore = workdir / ".metaflow"
    datastore.mkdir()
    return Roots(datastore, datastore / "mf.cards")


async def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = await asyncio.to_thread(process.communicate, timeout=FLOW_WAIT * 2)
    return process.returncode, out


async def newest_run(ws: Any, flow: str) -> str:
    await subscribe(ws, "flows")
    message = await next_message(
        ws, lambda m: m.get("type") == "flows" and any(f["flow"] == flow for f in m["flows"]),
        timeout=FLOW_WAIT,
    )
    newest = next(f for f in message["flows"] if f["flow"] == flow)["newest"]
    return str(newest["run"])


def step_number(update: dict[str, Any]) -> int | None:
    for component in update["data"].values():
        source = component.get("source", "")
        if component.get("type") == "markdown" and source.startswith("# step "):
            return int(source.removeprefix("# step "))
    return None


async def test_live_card_every_update_arrives(tmp_path: Path, start_app: Any) -> None:
    roots = roots_in(tmp_path)
    client = await start_app(make_config(roots))
    ws = await client.ws_connect("/ws")
    flow = start_flow("live_card_flow.py", tmp_path)
    try:
        run = await newest_run(ws, "LiveCardFlow")
        await subscribe(ws, f"run/LiveCardFlow/{run}")
        task = await next_message(
            ws, lambda m: m.get("type") in ("task", "run-detail") and bool(card_of(m)),
            timeout=FLOW_WAIT,
        )
        card_name = card_of(task)
        topic = f"card/LiveCardFlow/{run}/start/1/{card_name}"
        await subscribe(ws, topic)
        first = await next_message(ws, lambda m: m.get("topic") == topic and m["type"] == "card")
        assert first["card"]["type"] == "blank"
        (tmp_path / "go").touch()  # the flow starts its update loop only now

        seen: list[int] = []
        tokens = set()
        while 4 not in seen:
            update = await next_message(
                ws, lambda m: m.get("topic") == topic and m["type"] == "update", timeout=FLOW_WAIT
            )
            tokens.add(update["token"])
            number = step_number(update)
            if number is not None and number not in seen:
                seen.append(number)
        assert [n for n in seen if n > 0] == [1, 2, 3, 4]
        kinds = {c["type"] for c in update["data"].values()}
        assert {"markdown", "progressBar", "vegaChart"} <= kinds

        code, out = await finished(flow)
        assert code == 0, out
        await subscribe(ws, "runs/LiveCardFlow")
        await next_message(
            ws, lambda m: (m.get("type") == "runs" and m["runs"][0]["status"] == "succeeded")
            or (m.get("type") == "run" and m["run"]["status"] == "succeeded"),
            timeout=FLOW_WAIT,
        )

        page = await client.get(f"/card-html/LiveCardFlow/{run}/start/1/{card_name}")
        html = await page.text()
        assert page.status == 200
        assert "METAFLOW_RELOAD_TOKEN" in html and "window.__cardserverRuntime" in html
        assert page.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
        api = await (await client.get(f"/api/cards/LiveCardFlow/{run}/start/1/{card_name}")).json()
        assert api["task_status"] == "succeeded"
        assert api["update"]["token"] == "final"
    finally:
        if flow.poll() is None:
            flow.kill()


def card_of(message: dict[str, Any]) -> str | None:
    tasks = message.get("tasks") or ([message["task"]] if "task" in message else [])
    for task in tasks:
        if task["step"] == "start" and task["cards"]:
            return str(task["cards"][0]["name"])
    return None


async def test_foreach_failure_statuses(tmp_path: Path, start_app: Any) -> None:
    roots = roots_in(tmp_path)
    # The flow has exited before the status is read: no retry can come, so 1 s of grace is plenty
    timing = WatchTiming(cold_step_ms=10, shape_step_ms=10, status_grace_seconds=1.0)
    client = await start_app(make_config(roots, timing=timing))
    ws = await client.ws_connect("/ws")
    code, _ = await finished(start_flow("foreach_fail_flow.py", tmp_path))
    assert code != 0, "the flow is meant to fail"
    run = await newest_run(ws, "ForeachFailFlow")
    await subscribe(ws, "runs/ForeachFailFlow")  # failed once no retry came (the grace)
    await next_message(ws, lambda m: (m.get("type") == "runs" and m["runs"][0]["status"] == "failed")
                       or (m.get("type") == "run" and m["run"]["status"] == "failed"), timeout=FLOW_WAIT)
    await subscribe(ws, f"run/ForeachFailFlow/{run}")
    detail = await next_message(ws, lambda m: m.get("type") == "run-detail")
    statuses = {f"{t['step']}/{t['task']}": t["status"] for t in detail["tasks"]}
    each = {k: v for k, v in statuses.items() if k.startswith("each/")}
    assert statuses["start/1"] == "succeeded"
    assert sorted(each.values()) == ["failed", "succeeded", "succeeded"], statuses
    assert detail["run"]["status"] == "failed"
    assert "end/" not in " ".join(statuses)
    failed = next(t for t in detail["tasks"] if t["status"] == "failed")
    ok = next(t for t in detail["tasks"] if t["step"] == "each" and t["status"] == "succeeded")
    assert [c["id"] for c in ok["cards"]] == ["progress"]
    # The card URL of a finished task serves the real Metaflow card.
    page = await client.get(f"/card-html/ForeachFailFlow/{run}/each/{ok['task']}/{ok['cards'][0]['name']}")
    assert page.status == 200
    assert 'METAFLOW_RELOAD_TOKEN = "final"' in await page.text()
    assert failed["finished"] is not None
