"""The S3 source end to end: real Metaflow runs written to moto's S3 server, our real app on
top (API and websocket). What the local source offers must hold here too: flows, runs, tasks,
cards, status, live updates in place, re-renders, the task view, logs, `/api/status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from s3fixtures import DUMMY_CREDENTIALS, REGION, S3Endpoint, S3Run

from cardserver.config import Config, Roots, WatchTiming
from cardserver.s3.schedule import PollTiming
from cardserver.s3.settings import S3Settings, parse_s3_url
from cardserver.s3.source import S3Source
from cardserver.web.keys import SOURCE

FAST = PollTiming(card_seconds=0.1, viewed_run_seconds=0.5, unviewed_run_seconds=1.0,
                  min_discovery_seconds=0.5, idle_lists_per_minute=600)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS chain, fed from the environment as a user would."""
    for name, value in {**DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)


def settings_for(endpoint: S3Endpoint, sysroot: str, cards: str | None = None) -> S3Settings:
    root = parse_s3_url(sysroot, "test")
    card_root = parse_s3_url(cards, "test") if cards else root.child("mf.cards")
    return S3Settings("s3", root, card_root, endpoint.url)


def s3_config(workdir: Path, settings: S3Settings, **extra: Any) -> Config:
    """The server as started in `workdir` (its `.metaflow` is where a local runtime's _meta is)."""
    datastore = workdir / ".metaflow"
    return Config(Roots(datastore, datastore / "mf.cards"), port=0, s3=settings,
                  timing=WatchTiming(status_grace_seconds=0), **extra)


async def start_s3_app(start_app: Any, config: Config, timing: PollTiming = FAST) -> TestClient:
    """The app with its S3 source paced by `timing` (the tests' fast polling)."""
    from cardserver.web import app as app_module

    real = app_module.pick_source

    def paced(config: Config, first_scan: Any) -> Any:
        assert config.s3 is not None
        return S3Source(config, config.s3, timing)

    app_module.pick_source = paced  # type: ignore[assignment]
    try:
        return await start_app(config)  # type: ignore[no-any-return]
    finally:
        app_module.pick_source = real  # type: ignore[assignment]


async def get_json(client: TestClient, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, (path, response.status, await response.text())
    return await response.json()


def card_of(detail: dict[str, Any], step: str) -> str:
    [task] = [t for t in detail["tasks"] if t["step"] == step]
    [card] = task["cards"]
    return f"{detail['run']['flow']}/{detail['run']['run']}/{step}/{task['task']}/{card['name']}"


async def test_a_finished_run_is_served_with_status_from_its_s3_task_folders(
    start_app: Any, s3_server: S3Endpoint, s3_card_run: S3Run, tmp_path: Path
) -> None:
    run = s3_card_run
    client = await start_s3_app(start_app, s3_config(tmp_path, settings_for(s3_server, run.sysroot)))
    flows = await get_json(client, "/api/flows")
    assert [f["flow"] for f in flows["flows"]] == [run.flow]
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    assert detail["run"]["status"] == "succeeded"
    assert {t["step"]: t["status"] for t in detail["tasks"]} == {"start": "succeeded", "end": "succeeded"}
    card = await get_json(client, f"/api/cards/{card_of(detail, 'start')}")
    assert card["update"]["token"] == "final" and "# update 2" in json.dumps(card["update"]["data"])
    html = await client.get(f"/card-html/{card_of(detail, 'start')}")
    assert html.status == 200 and len(await html.read()) > 500_000
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
    client = await start_s3_app(start_app, s3_config(tmp_path, settings_for(s3_server, run.sysroot)))
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
    settings = settings_for(s3_server, run.sysroot, f"s3://{s3_server.bucket}/elsewhere/cards")
    client = await start_s3_app(start_app, s3_config(tmp_path, settings))
    detail = await get_json(client, f"/api/runs/{run.flow}/{run.run_id}")
    assert {t["step"]: t["status"] for t in detail["tasks"]} == {"start": "failed"}
    assert detail["run"]["status"] == "failed"
    [start] = detail["tasks"]
    task = await get_json(client, f"/api/tasks/{run.flow}/{run.run_id}/start/{start['task']}")
    assert task["traceback"] is not None and "this step fails on purpose" in task["traceback"]["exception"]
