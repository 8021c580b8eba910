"""What `card server` on an S3 datastore spends: requests per minute by kind, USD per hour at S3
list prices, and its CPU, idle (finished runs only, nobody looking), while a live run's card
is viewed (its data update rewritten every second), and with two more live cards of the run
subscribed: first all three visible (a page that never names the card it shows, as every
viewer did before issue 14), then one visible and two kept hidden (what the viewer does). A real
`card server` process with its default polling, started with no flags where Metaflow's
environment says S3, against moto's S3 server on 127.0.0.1 (a floor for real S3: no network
round trip).
    python bench/s3_polling.py [--smoke] [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO,
    Server,
    _launch,
    cpu_seconds,
    free_port,
    report,
    start_moto_server,
    summary_ms,
    verdict,
)
from cardserver.s3.client import PRICE_PER_1000
from cardserver.s3.taskfiles import TASK_OK_NAMES

BUCKET = "cardserver-bench"
IDLE_LISTS_PER_MINUTE = 6.0  # issue 12: no live runs, per served datastore
IDLE_CPU_PER_MINUTE = 0.5  # seconds
HOURLY_BUDGET_USD = 0.02  # per live run being viewed
KEPT_STEPS = ("train", "score")  # two more live cards of the viewed run, kept by the viewer
CARD = "card/AlphaFlow/3/start/1/blank-alphaflow3"
OK = next(name for name, value in TASK_OK_NAMES.items() if value is True)


def data_update(i: int) -> bytes:
    return json.dumps({"reload_token": "t", "created_on": time.time(),
                       "data": {"title": {"type": "markdown", "source": f"# update {i}"}}}).encode()


def task_objects(flow: str, run: str, step: str, ended: bool) -> dict[str, bytes]:
    cards = f"datastore/mf.cards/{flow}/runs/{run}/steps/{step}/tasks/1"
    folder = f"datastore/{flow}/{run}/{step}/1"
    files = {f"{cards}/cards/blank-{flow.lower()}{run}.html": b"<html><body>card</body></html>",
             f"{cards}/runtime/blank-{flow.lower()}{run}.data.json": data_update(0),
             f"{folder}/0.attempt.json": json.dumps({"time": time.time()}).encode()}
    if ended:
        files |= {f"{folder}/0.DONE.lock": b"", f"{folder}/0.data.json": json.dumps(
            {"objects": {"_task_ok": OK}}).encode()}
    return files


def seed(client: Any) -> None:
    """Three flows of finished runs: what an idle datastore looks like."""
    client.create_bucket(Bucket=BUCKET)
    for flow in ("AlphaFlow", "BetaFlow", "GammaFlow"):
        for run in ("1", "2"):
            for step in ("start", "end"):
                for key, body in task_objects(flow, run, step, True).items():
                    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def start_server(workdir: Path, endpoint: str) -> Server:
    env = {**os.environ, "METAFLOW_DEFAULT_DATASTORE": "s3",
           "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/datastore", "METAFLOW_S3_ENDPOINT_URL": endpoint}
    args = [sys.executable, str(REPO / "cli.py"), "server", "--port", str(port := free_port())]
    return _launch(args, port, " at http", 60, cwd=workdir, env=env)


async def status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}api/status") as answer:
        return dict(await answer.json())


async def sent(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    return dict((await status(session, url))["s3"]["requests"])


async def window(session: aiohttp.ClientSession, server: Server, seconds: float) -> dict[str, float]:
    """Requests per minute by kind, and CPU seconds per minute, over `seconds`."""
    before, cpu = await sent(session, server.url), cpu_seconds(server.pid)
    await asyncio.sleep(seconds)  # the measured window: nothing to await but time
    after, used = await sent(session, server.url), cpu_seconds(server.pid) - cpu
    minutes = seconds / 60
    return {**{kind: (after[kind] - before[kind]) / minutes for kind in after}, "cpu": used / minutes}


def usd_per_hour(rates: dict[str, float]) -> float:
    return sum(rates[kind] * 60 * PRICE_PER_1000[kind] / 1000 for kind in PRICE_PER_1000)


def writer(client: Any, key: str, stop: threading.Event, written: dict[int, float]) -> None:
    """The live card's data update, rewritten every second (a refreshing Metaflow card); when
    each PUT returned, in `written`."""
    i = 0
    while not stop.wait(1.0):
        i += 1
        client.put_object(Bucket=BUCKET, Key=key, Body=data_update(i))
        written[i] = time.monotonic()


def shows_run(message: dict[str, Any], run: str) -> bool:
    """A `runs/<flow>` message (its snapshot, or one run's summary) that shows `run`."""
    runs = message.get("runs") or [message.get("run") or {}]
    return any(found.get("run") == run for found in runs)


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive()
    return dict(json.loads(message.data))


async def measure(server: Server, client: Any, seconds: float) -> dict[str, dict[str, float]]:
    """Each window's rates: idle, viewing one card, three visible, one visible and two kept."""
    async with aiohttp.ClientSession() as session:
        while not (await status(session, server.url))["ready"]:
            await asyncio.sleep(0.2)  # the first read of the datastore is not idling
        windows = {"idle": await window(session, server, seconds)}
        live = task_objects("AlphaFlow", "3", "start", ended=False)
        for key, body in live.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        async with session.ws_connect(f"{server.url}ws") as ws:
            await ws.send_json({"op": "subscribe", "topic": "runs/AlphaFlow"})
            while not shows_run(await next_json(ws), "3"):  # discovery is paced to the idle budget
                pass
            for topic in ("run/AlphaFlow/3", CARD):
                await ws.send_json({"op": "subscribe", "topic": topic})
            stop = threading.Event()
            written: dict[int, float] = {}
            received: dict[int, float] = {}
            known: set[str] = set()
            write(client, live, stop, written)
            reading = asyncio.ensure_future(drain(ws, received, known))
            try:
                windows["viewing"] = await timed(session, server, seconds, written, received)
                kept = [f"card/AlphaFlow/3/{step}/1/blank-alphaflow3" for step in KEPT_STEPS]
                for step in KEPT_STEPS:
                    write(client, task_objects("AlphaFlow", "3", step, ended=False), stop, {})
                for topic in kept:
                    await ws.send_json({"op": "subscribe", "topic": topic})
                while not known.issuperset(kept):  # listed with the run (every 5 s), then polled
                    await asyncio.sleep(0.1)
                windows["all visible"] = await timed(session, server, seconds, written, received)
                await ws.send_json({"op": "visible", "topic": CARD})
                windows["one visible"] = await timed(session, server, seconds, written, received)
            finally:
                stop.set()
                reading.cancel()
    return windows


def write(client: Any, objects: dict[str, bytes], stop: threading.Event, written: dict[int, float]) -> None:
    """A live task's objects, then its card's data update rewritten every second until `stop`."""
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    data_key = next(key for key in objects if key.endswith(".data.json"))
    threading.Thread(target=writer, args=(client, data_key, stop, written), daemon=True).start()


async def timed(session: aiohttp.ClientSession, server: Server, seconds: float,
                written: dict[int, float], received: dict[int, float]) -> dict[str, float]:
    """A window's rates, and write -> websocket of the shown card's updates written in it."""
    began = time.monotonic()
    rates = await window(session, server, seconds)
    mine = {i: at for i, at in written.items() if at >= began}
    lags = [(received[i] - at) * 1000 for i, at in mine.items() if i in received]
    return {**rates, **{f"lag {k}": v for k, v in summary_ms(lags).items()},
            "updates": len(lags), "written": len(mine)}


async def drain(ws: aiohttp.ClientWebSocketResponse, received: dict[int, float], known: set[str]) -> None:
    """When each update of the shown card reached the socket, by its number; the cards known."""
    async for message in ws:
        data = json.loads(message.data)
        if data.get("type") == "card" and data.get("exists"):
            known.add(data["topic"])
        if data.get("type") == "update" and data.get("topic") == CARD:
            source = data["data"]["title"]["source"]
            received.setdefault(int(source.removeprefix("# update ")), time.monotonic())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20-second windows")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each window")
    options = parser.parse_args()
    seconds = 20.0 if options.smoke else options.seconds
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    with tempfile.TemporaryDirectory() as workdir:
        moto = start_moto_server(Path(workdir))
        try:
            client = boto3.client("s3", endpoint_url=moto.url)
            seed(client)
            server = start_server(Path(workdir), moto.url)
            try:
                windows = asyncio.run(measure(server, client, seconds))
            finally:
                server.stop()
        finally:
            moto.stop()
    idle, viewing = windows["idle"], windows["viewing"]
    idle_lists = idle["LIST"] + idle["GET"]
    rows: list[list[object]] = [
        ["idle: LIST / GET per minute", f"{idle['LIST']:.1f} / {idle['GET']:.1f}",
         f"<= {IDLE_LISTS_PER_MINUTE:.0f} in all", verdict(idle_lists <= IDLE_LISTS_PER_MINUTE)],
        ["idle: USD per hour", f"{usd_per_hour(idle):.5f}", "", ""],
        ["idle: server CPU s per minute", f"{idle['cpu']:.2f}", f"<= {IDLE_CPU_PER_MINUTE}",
         verdict(idle["cpu"] <= IDLE_CPU_PER_MINUTE)],
    ]
    for name, label in (("viewing", "viewing a live run"), ("all visible", "3 live cards, all visible"),
                        ("one visible", "1 visible + 2 kept")):
        rates = windows[name]
        rows += [
            [f"{label}: LIST / GET per minute", f"{rates['LIST']:.1f} / {rates['GET']:.1f}", "", ""],
            [f"{label}: USD per hour", f"{usd_per_hour(rates):.5f}",
             f"<= {HOURLY_BUDGET_USD}" if name == "viewing" else "",
             verdict(usd_per_hour(rates) <= HOURLY_BUDGET_USD) if name == "viewing" else ""],
            [f"{label}: server CPU s per minute", f"{rates['cpu']:.2f}", "", ""],
            [f"{label}: write -> websocket ms p50 / p90", f"{rates['lag p50']:.0f} / {rates['lag p90']:.0f}",
             "", ""],
            [f"{label}: updates seen / written", f"{rates['updates']:.0f} / {rates['written']:.0f}", "", ""],
        ]
    # What the two kept cards add: beside one card at the pace all three had (same tasks, same listings)
    kept_gets = windows["one visible"]["GET"] - windows["all visible"]["GET"] / 3
    rows.append(["2 kept cards add, GET per minute", f"{kept_gets:.1f}", "<= 30 (each every 10 s: 12)",
                 verdict(kept_gets <= 30)])
    polled = viewing["GET"]
    errors = [] if polled > 60 else [f"the viewed card was polled {polled:.0f} times a minute"]
    if kept_gets > 30:
        errors.append(f"two kept cards added {kept_gets:.0f} GETs a minute")
    return report("S3 polling" + (" (smoke)" if options.smoke else ""), rows, errors, options.smoke)


if __name__ == "__main__":
    sys.exit(main())
