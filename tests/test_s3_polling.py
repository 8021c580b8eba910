"""The S3 source's polling against moto, on datastores written object by object (what a flow
would leave, made exact): the legacy layout, a run past 1,000 keys, status unknown where S3
cannot tell, finished runs left alone, a card's updates while S3 fails and after it recovers,
garbage and vanished objects. A proxy in front of moto counts each request and injects faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from conftest import WAIT, all_of, next_message, subscribe
from s3fixtures import FAST, S3Endpoint, get_json, s3_config, settings_for
from s3proxy import FaultProxy, start_proxy

from cardserver.s3.taskfiles import TASK_OK_NAMES

pytestmark = pytest.mark.usefixtures("s3_credentials")
OK = next(name for name, value in TASK_OK_NAMES.items() if value is True)


@pytest.fixture
async def proxy(s3_server: S3Endpoint) -> AsyncIterator[tuple[FaultProxy, str]]:
    async for pair in start_proxy(s3_server.url):
        yield pair


def data_update(token: str, text: str) -> bytes:
    return json.dumps({"reload_token": token, "created_on": time.time(),
                       "data": {"title": {"type": "markdown", "source": text}}}).encode()


def card_files(cards: str, flow: str, run: str, step: str, task: str, name: str,
               text: str) -> dict[str, bytes]:
    folder = f"{cards}/{flow}/runs/{run}/steps/{step}/tasks/{task}"
    return {f"{folder}/cards/{name}.html": b"<html><body>card</body></html>",
            f"{folder}/runtime/{name}.data.json": data_update("t1", text)}


def task_files(sysroot: str, flow: str, run: str, step: str, task: str, ended: bool) -> dict[str, bytes]:
    folder = f"{sysroot}/{flow}/{run}/{step}/{task}"
    files = {f"{folder}/0.attempt.json": json.dumps({"time": time.time()}).encode()}
    if ended:
        files |= {f"{folder}/0.DONE.lock": b"",
                  f"{folder}/0.data.json": json.dumps({"objects": {"_task_ok": OK}}).encode()}
    return files


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (checking every 50 ms) until `check` holds: the proxy has no event to await."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def read_again(faults: FaultProxy, key: str) -> None:
    """Until the server has asked for `key` since now (it saw what was just written there)."""
    mark, path = len(faults.requests), quote(key)
    await until(lambda: any(r.startswith("GET") and path in r for r in faults.requests[mark:]),
                f"a GET of {key}")


async def test_legacy_cards_with_no_status_anywhere_are_unknown(
    start_app: Any, s3_server: S3Endpoint, tmp_path: Any
) -> None:
    """Cards of the pre-2022 layout (no steps/ level); no task folder and no local _meta: the
    status is honestly unknown, never guessed."""
    folder = "oldlayout/mf.cards/OldFlow/runs/7/tasks/3"  # a prefix of its own in the shared bucket
    s3_server.put_many({f"{folder}/cards/default-abc123.html": b"<html><body>old</body></html>",
                        f"{folder}/runtime/default-abc123.data.json": data_update("t", "# old")})
    settings = settings_for(s3_server.url, f"s3://{s3_server.bucket}/oldlayout")
    client = await start_app(s3_config(tmp_path, settings))
    detail = await get_json(client, "/api/runs/OldFlow/7")
    [task] = detail["tasks"]
    assert (task["step"], task["task"], task["status"]) == ("_", "3", "unknown")
    assert detail["run"]["status"] == "unknown"
    card = await get_json(client, f"/api/cards/OldFlow/7/_/3/{task['cards'][0]['name']}")
    assert card["update"]["data"]["title"]["source"] == "# old"
    page = await client.get(f"/card-html/OldFlow/7/_/3/{task['cards'][0]['name']}")
    assert page.status == 200 and b"old" in await page.read()


async def test_a_run_past_1000_keys_is_listed_whole(
    start_app: Any, s3_server: S3Endpoint, tmp_path: Any
) -> None:
    cards = "paged/mf.cards/PagedFlow/runs/1/steps/s/tasks"
    s3_server.put_many({f"{cards}/{i}/cards/blank-c{i}.html": b"<html></html>" for i in range(1001)})
    settings = settings_for(s3_server.url, f"s3://{s3_server.bucket}/paged")
    client = await start_app(s3_config(tmp_path, settings))
    detail = await get_json(client, "/api/runs/PagedFlow/1?limit=2000")
    assert detail["run"]["tasks"] == 1001 and detail["run"]["cards"] == 1001


async def test_finished_runs_are_not_polled_again(
    start_app: Any, s3_server: S3Endpoint, proxy: tuple[FaultProxy, str], tmp_path: Any
) -> None:
    """Twelve finished runs (more than are read at once) are read, then never listed again."""
    faults, url = proxy
    runs = [str(run) for run in range(1, 13)]
    s3_server.put_many({key: body for run in runs for key, body in {
        **card_files("done/mf.cards", "DoneFlow", run, "end", "9", f"blank-d{run}", "# done"),
        **task_files("done", "DoneFlow", run, "end", "9", ended=True)}.items()})
    client = await start_app(s3_config(tmp_path, settings_for(url, f"s3://{s3_server.bucket}/done")))
    listed = await get_json(client, "/api/flows/DoneFlow/runs")
    assert {run["run"]: run["status"] for run in listed["runs"]} == dict.fromkeys(runs, "succeeded")
    seen = len(faults.requests)
    # Discovery goes on (a new run may come); the finished runs' folders are never listed again
    await until(lambda: sum("delimiter" in r for r in faults.requests[seen:]) >= 6, "three discoveries")
    assert not [r for r in faults.requests[seen:] if "DoneFlow%2F" in r and "delimiter" not in r]


async def test_a_viewed_card_keeps_its_updates_through_an_s3_outage(
    start_app: Any, s3_server: S3Endpoint, proxy: tuple[FaultProxy, str], tmp_path: Any
) -> None:
    """S3 denies everything for a while: viewers are told (health), polling goes on, and the
    update written meanwhile arrives once S3 answers again. Garbage and a vanished object
    change nothing."""
    faults, url = proxy
    files = card_files("outage/mf.cards", "LiveFlow", "1", "start", "1", "blank-l1", "# v1")
    s3_server.put_many({**files, **task_files("outage", "LiveFlow", "1", "start", "1", ended=False)})
    [data_key] = [key for key in files if key.endswith(".data.json")]
    client = await start_app(s3_config(tmp_path, settings_for(url, f"s3://{s3_server.bucket}/outage")))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "flows")
    await subscribe(ws, "card/LiveFlow/1/start/1/blank-l1")
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["title"]["source"] == "# v1")
    faults.denied = "outage"
    failing = await next_message(ws, lambda m: m.get("type") == "health" and not m["ok"])
    assert "access denied (AccessDenied)" in failing["problem"] and "retrying" in failing["problem"]
    s3_server.put_many({data_key: data_update("t1", "# v2")})
    faults.denied = ""
    await all_of(ws, lambda m: m.get("type") == "health" and m["ok"],
                 lambda m: m.get("type") == "update" and m["data"]["title"]["source"] == "# v2")
    s3_server.put_many({data_key: b'{"reload_token": "t1", "data": {"title": '})  # half written
    await read_again(faults, data_key)
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=data_key)
    await read_again(faults, data_key)
    s3_server.put_many({data_key: data_update("t1", "# v3")})
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["title"]["source"] == "# v3")


async def test_a_new_reload_token_lists_the_run_at_once(
    start_app: Any, s3_server: S3Endpoint, tmp_path: Any
) -> None:
    """The viewed card's update says it was rendered again (a new token): its run is listed then,
    not at its next turn (here ten minutes away), so the new HTML is served at once."""
    files = card_files("rerender/mf.cards", "ReFlow", "1", "start", "1", "blank-r1", "# v1")
    s3_server.put_many({**files, **task_files("rerender", "ReFlow", "1", "start", "1", ended=False)})
    slow = replace(FAST, viewed_run_seconds=600, unviewed_run_seconds=600)
    settings = settings_for(s3_server.url, f"s3://{s3_server.bucket}/rerender")
    client = await start_app(s3_config(tmp_path, settings, slow))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "card/ReFlow/1/start/1/blank-r1")
    first = await next_message(ws, lambda m: m.get("type") == "card")
    await next_message(ws, lambda m: m.get("type") == "update")
    html, data = sorted(files)
    s3_server.put_many({html: b"<html><body>rendered again</body></html>", data: data_update("t2", "# v2")})
    rendered = await next_message(ws, lambda m: m.get("type") == "card"
                                  and m["card"]["version"] != first["card"]["version"])
    page = await client.get(f"/card-html/ReFlow/1/start/1/blank-r1?v={rendered['card']['version']}")
    assert b"rendered again" in await page.read()


async def test_access_denied_on_one_run_loses_nothing_of_the_others(
    start_app: Any, s3_server: S3Endpoint, proxy: tuple[FaultProxy, str], tmp_path: Any
) -> None:
    """One run's task folders denied at start: the other run is served whole, the fault is one
    line in the health message, and the denied run is read in full once access is back."""
    faults, url = proxy
    s3_server.put_many({key: body for run in ("1", "2") for key, body in {
        **card_files("part/mf.cards", "PartFlow", run, "end", "1", f"blank-p{run}", "# p"),
        **task_files("part", "PartFlow", run, "end", "1", ended=True)}.items()})
    faults.denied = "PartFlow%2F2%2F"  # the LIST of run 2's task folders
    client = await start_app(s3_config(tmp_path, settings_for(url, f"s3://{s3_server.bucket}/part")))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "flows")
    failing = await next_message(ws, lambda m: m.get("type") == "health" and not m["ok"])
    where = f"s3://{s3_server.bucket}/part/PartFlow/2/"
    assert failing["problem"] == (f"access denied (AccessDenied) to LIST {where}: "
                                  "check the credentials' permissions; retrying")
    assert (await get_json(client, "/api/runs/PartFlow/1"))["run"]["status"] == "succeeded"
    await subscribe(ws, "runs/PartFlow")
    faults.denied = ""
    await all_of(ws, lambda m: m.get("type") == "health" and m["ok"],
                 lambda m: m.get("type") == "run" and m["run"]["run"] == "2"
                 and m["run"]["status"] == "succeeded",
                 timeout=30)
