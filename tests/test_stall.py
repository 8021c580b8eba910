"""No task folder stalls the server (issue 21, finding 2): a folder of many failed attempts is
read to a bound, everyone asking for a task while it is read shares one read, and a live update
is delivered while task reads fill their threads and asyncio's default executor is full.
How fast, under load, is bench/stall.py's to say."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, make_config, next_message, subscribe

from bench.stall import hostile_task
from cardserver import logs, taskinfo
from cardserver.config import Roots
from cardserver.demo import DemoRun, progress, start_run
from cardserver.hub import Hub
from cardserver.index import Index
from cardserver.layout import TaskKey, log_file_name, task_dir
from cardserver.taskfeed import TaskFeed
from cardserver.taskinfo import TaskFolder

TRACEBACK = ("Traceback (most recent call last):\n  File \"flow.py\", line 9, in start\n"
             "ValueError: attempt {n} broke\n")


async def test_a_folder_of_many_failed_attempts_is_read_to_a_bound(
    roots: Roots, start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = start_run(roots.datastore, roots.cards, flow="StallFlow")
    key = hostile_task(run, "hostile", attempts=40, stderr_bytes=4096)
    latest = roots.datastore / task_dir(key) / log_file_name(39, "stderr")
    latest.unlink()  # a hard link: the latest failed attempt gets a log of its own
    latest.write_text(TRACEBACK.format(n=39))
    read: list[Path] = []
    traceback_of = logs.traceback_of

    def counted(path: Path, root: Path) -> list[logs.LogLine]:
        read.append(path)
        return traceback_of(path, root)

    monkeypatch.setattr(logs, "traceback_of", counted)
    client = await start_app(make_config(roots))
    detail = await (await client.get(f"/api/tasks/{key}")).json()
    assert [a["attempt"] for a in detail["attempts"]] == list(range(24, 40))  # the newest 16
    assert detail["earlier_attempts"] == 24
    assert all(a["verdict"] == "failed" for a in detail["attempts"])
    assert detail["traceback"]["attempt"] == 39
    assert detail["traceback"]["exception"] == "ValueError: attempt 39 broke"
    assert read == [latest]  # one stderr, whatever the number of failed attempts


async def test_everyone_asking_for_a_task_while_it_is_read_shares_one_read() -> None:
    key = TaskKey("StallFlow", "1", "hostile", "2")
    reads: list[asyncio.Event] = []
    entered = asyncio.Event()

    async def read(asked: TaskKey) -> TaskFolder | None:
        release = asyncio.Event()
        reads.append(release)
        number = len(reads)
        entered.set()
        await release.wait()
        return TaskFolder(earlier_attempts=number)  # says which read answered

    feed = TaskFeed(read, Index(), Hub())
    asks = [asyncio.ensure_future(feed.detail(key)) for _ in range(8)]
    await asyncio.wait_for(entered.wait(), WAIT)  # every ask started before the read did
    assert len(reads) == 1
    asks[0].cancel()  # one asker gives up: the read goes on for the others
    feed.touched([key])  # the folder changed while it was read: a new ask reads again
    entered.clear()
    later = asyncio.ensure_future(feed.detail(key))
    await asyncio.wait_for(entered.wait(), WAIT)
    for release in reads:
        release.set()
    answers = await asyncio.wait_for(asyncio.gather(*asks[1:], later), WAIT)
    assert len(reads) == 2
    assert [a["earlier_attempts"] for a in answers if a] == [1] * 7 + [2]
    again = await asyncio.wait_for(feed.detail(key), WAIT)  # just read: no new read
    assert again is not None and again["earlier_attempts"] == 2 and len(reads) == 2
    feed.changed([key])  # the index saw the task change: read again
    entered.clear()
    fresh = asyncio.ensure_future(feed.detail(key))
    await asyncio.wait_for(entered.wait(), WAIT)
    reads[-1].set()
    assert (await asyncio.wait_for(fresh, WAIT) or {})["earlier_attempts"] == 3


class Held:
    """Threads held in a function until released; the loop learns each time one enters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.release = threading.Event()
        self.count = 0
        self._lock = threading.Lock()
        self._changed = asyncio.Event()

    def hold(self) -> None:
        with self._lock:
            self.count += 1
        self.loop.call_soon_threadsafe(self._changed.set)
        self.release.wait(WAIT * 3)

    def wrap(self, work: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any) -> Any:
            self.hold()
            return work(*args)
        return held

    async def reach(self, count: int) -> None:
        async def wait() -> None:
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), WAIT)


async def test_a_live_update_arrives_while_task_reads_and_the_default_threads_are_full(
    roots: Roots, start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run: DemoRun = start_run(roots.datastore, roots.cards, flow="StallFlow")
    card = run.start_task("live").add_card(components=[progress("p", 0, 10)])
    hostile = [hostile_task(run, "hostile", attempts=3, stderr_bytes=1024) for _ in range(8)]
    loop = asyncio.get_running_loop()
    held = Held(loop)
    monkeypatch.setattr(taskinfo, "read_task", held.wrap(taskinfo.read_task))
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{card.key}")
        await next_message(ws, lambda m: m.get("type") == "card")
        # Whatever else runs in asyncio's default executor fills it...
        loop.set_default_executor(ThreadPoolExecutor(2))
        blockers = [loop.run_in_executor(None, held.hold) for _ in range(2)]
        await held.reach(2)
        # ... and 8 task reads run (each held in its read), one for each of 8 hostile tasks.
        asks = [asyncio.ensure_future(client.get(f"/api/tasks/{key}")) for key in hostile]
        await held.reach(3)
        card.update({"p": {"value": 7}})
        got = await next_message(ws, lambda m: m.get("type") == "update")
        assert got["data"]["p"]["value"] == 7
        assert not any(ask.done() for ask in asks)  # delivered while the reads were held
        held.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*asks), WAIT)
        assert [answer.status for answer in answers] == [200] * 8
        await asyncio.gather(*blockers)
