"""A card a viewer keeps hidden costs the S3 source (almost) nothing (issue 14): a real
Metaflow run with three live cards in one running task, on moto behind a proxy that counts
each request. The visible card's update is asked for every `card_seconds` as before; a kept one
every `kept_card_seconds`, and at once when it is named visible, so it is shown fresh; a card
that any socket shows is visible."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import all_of, next_message, subscribe
from s3fixtures import FAST, FLOW_WAIT, FLOWS, S3Endpoint, s3_config, s3_env, settings_for
from s3proxy import FaultProxy
from test_s3_polling import proxy, until  # noqa: F401  (proxy: a fixture)
from test_s3_source import has_text

from cardserver.web.keys import SOURCE

pytestmark = pytest.mark.usefixtures("s3_credentials")
FLOW = "S3ThreeCardsFlow"
CARDS = ("shown", "kept", "other")
VISIBLE_GETS = 12  # asked for every 0.25 s: 3 s of polling


class ThreeCards:
    """tests/flows/s3_three_cards_flow.py running against moto until `stop`."""

    def __init__(self, workdir: Path, sysroot: str, process: subprocess.Popen[str]) -> None:
        self.workdir, self.sysroot, self.process = workdir, sysroot, process

    def touch(self, name: str) -> None:
        (self.workdir / name).touch()


@pytest.fixture(scope="module")
def three_cards(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeCards]:
    """One run for both tests (the second only counts requests: it needs the task running)."""
    workdir = tmp_path_factory.mktemp("threecards")
    sysroot = f"s3://{s3_server.bucket}/{workdir.name}"  # a prefix of its own: one run in it
    with open(workdir / "flow.log", "w") as output:  # a file: a full pipe would stall the flow
        process = subprocess.Popen(
            [sys.executable, str(FLOWS / "s3_three_cards_flow.py"), "--no-pylint", "run"], cwd=workdir,
            env=s3_env(workdir, s3_server, sysroot), stdout=output, stderr=subprocess.STDOUT, text=True)
    run = ThreeCards(workdir, sysroot, process)
    try:
        yield run
    finally:
        run.touch("go")
        run.touch("stop")
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def card_topics(ws: aiohttp.ClientWebSocketResponse) -> dict[str, str]:
    """Each card's id -> its topic, once the start task has all three."""
    await subscribe(ws, f"runs/{FLOW}")
    found = await next_message(ws, lambda m: bool(m.get("runs") or m.get("run")), timeout=FLOW_WAIT)
    run = (found.get("run") or found["runs"][0])["run"]
    await subscribe(ws, f"run/{FLOW}/{run}")

    def start(message: dict[str, Any]) -> dict[str, Any] | None:
        tasks = message.get("tasks") or [message.get("task") or {}]
        return next((t for t in tasks if t.get("step") == "start" and len(t.get("cards", [])) == 3), None)

    task = start(await next_message(ws, lambda m: start(m) is not None, timeout=FLOW_WAIT))
    assert task is not None
    await ws.send_json({"op": "unsubscribe", "topic": f"run/{FLOW}/{run}"})
    return {card["id"]: f"card/{FLOW}/{run}/start/{task['task']}/{card['name']}" for card in task["cards"]}


async def watch_cards(ws: aiohttp.ClientWebSocketResponse, topics: dict[str, str], shown: str,
                      faults: FaultProxy) -> None:
    """Name `shown` visible, subscribe to all three, until each card came and was asked for once."""
    mark = len(faults.requests)
    await ws.send_json({"op": "visible", "topic": topics[shown]})
    for topic in topics.values():
        await subscribe(ws, topic)
    await all_of(ws, *(lambda m, t=topic: m.get("type") == "card" and m.get("topic") == t
                       and bool(m.get("card")) for topic in topics.values()), timeout=FLOW_WAIT)
    await until(lambda: all(gets(faults, topic, mark) for topic in topics.values()), "a first GET of each")


def update_of(message: dict[str, Any], topic: str, text: str) -> bool:
    return message.get("type") == "update" and message.get("topic") == topic and has_text(message, text)


def gets(faults: FaultProxy, topic: str, since: int, until_: int | None = None) -> int:
    """GETs of the card's data update among the requests from `since` (to `until_`)."""
    name = topic.rsplit("/", 1)[1]
    return sum(1 for r in faults.requests[since:until_] if r.startswith("GET") and f"/{name}.data.json" in r)


async def kept_update_in_bucket(s3_server: S3Endpoint, run: ThreeCards, topic: str) -> None:
    """Until the flow's second update of the kept card is in the bucket (written, not yet read)."""
    name = topic.rsplit("/", 1)[1]

    def written() -> bool:
        client, prefix = s3_server.client(), run.sysroot.split("/", 3)[3] + "/"
        [key] = [k for k in s3_server.keys(prefix) if k.endswith(f"/{name}.data.json")]
        return b"kept 1" in client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()

    deadline = time.monotonic() + FLOW_WAIT
    while not await asyncio.to_thread(written):
        assert time.monotonic() < deadline, "the flow never wrote the kept card's second update"
        await asyncio.sleep(0.1)


async def test_a_kept_card_is_asked_for_rarely_and_fresh_once_visible(
    start_app: Any, s3_server: S3Endpoint, proxy: tuple[FaultProxy, str],  # noqa: F811
    three_cards: ThreeCards, tmp_path: Path,
) -> None:
    faults, url = proxy
    timing = replace(FAST, card_seconds=0.25, kept_card_seconds=60.0)  # kept: never again here
    client = await start_app(s3_config(tmp_path, settings_for(url, three_cards.sysroot), timing))
    ws = await client.ws_connect("/ws")
    topics = await card_topics(ws)
    await watch_cards(ws, topics, "shown", faults)
    # The visible card at its pace; the kept ones not at all (each was read once, when subscribed)
    mark, began = len(faults.requests), time.monotonic()
    await until(lambda: gets(faults, topics["shown"], mark) >= VISIBLE_GETS, "the visible card's GETs")
    assert (time.monotonic() - began) / VISIBLE_GETS < 0.6, "the visible card is asked for less often"
    assert gets(faults, topics["kept"], mark) == 0 and gets(faults, topics["other"], mark) == 0
    # Both change; the visible one arrives, the kept one is in the bucket and not read
    three_cards.touch("go")
    first = await next_message(ws, lambda m: update_of(m, topics["shown"], "# shown 1")
                               or update_of(m, topics["kept"], "# kept 1"), timeout=FLOW_WAIT)
    assert first["topic"] == topics["shown"], "a kept card was read at the visible card's pace"
    await kept_update_in_bucket(s3_server, three_cards, topics["kept"])
    # Named visible, it is read at once: fresh long before its slow poll (60 s) would read it
    named, shown_at = len(faults.requests), time.monotonic()
    await ws.send_json({"op": "visible", "topic": topics["kept"]})
    await next_message(ws, lambda m: update_of(m, topics["kept"], "# kept 1"), timeout=FLOW_WAIT)
    fresh_after = time.monotonic() - shown_at
    assert gets(faults, topics["kept"], mark, named) == 0 and gets(faults, topics["kept"], named) >= 1
    assert fresh_after < 2.0, f"the card became fresh {fresh_after:.2f} s after it was shown"
    status = (await (await client.get("/api/status")).json())["s3"]
    assert (status["viewed_cards"], status["visible_cards"], status["viewed_runs"]) == (3, 1, 1)
    # None visible (the Task tab, a hidden browser tab): kept cards do not make their run viewed
    await ws.send_json({"op": "visible", "topic": None})
    await until(lambda: client.app[SOURCE].status()["s3"]["viewed_runs"] == 0, "the run no longer viewed")
    assert client.app[SOURCE].status()["s3"]["viewed_cards"] == 3


async def test_a_kept_card_is_still_read_slowly_and_any_socket_showing_it_makes_it_visible(
    start_app: Any, proxy: tuple[FaultProxy, str], three_cards: ThreeCards, tmp_path: Path,  # noqa: F811
) -> None:
    faults, url = proxy
    timing = replace(FAST, card_seconds=0.25, kept_card_seconds=1.0)
    client = await start_app(s3_config(tmp_path, settings_for(url, three_cards.sysroot), timing))
    keeping = await client.ws_connect("/ws")
    topics = await card_topics(keeping)
    await watch_cards(keeping, topics, "shown", faults)
    mark = len(faults.requests)
    await until(lambda: gets(faults, topics["shown"], mark) >= VISIBLE_GETS, "the visible card's GETs")
    kept = gets(faults, topics["kept"], mark)
    assert 1 <= kept <= VISIBLE_GETS // 2, kept  # ~1 a second against ~4
    # A second viewer shows the kept card: visible now, asked for at the visible pace
    showing = await client.ws_connect("/ws")
    await watch_cards(showing, topics, "kept", faults)
    mark = len(faults.requests)
    await until(lambda: gets(faults, topics["kept"], mark) >= VISIBLE_GETS, "the shown kept card's GETs")
    assert gets(faults, topics["other"], mark) <= VISIBLE_GETS // 2
    status = (await (await client.get("/api/status")).json())["s3"]
    assert status["visible_cards"] == 2
