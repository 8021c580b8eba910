"""Which runs are watched deeply (cardserver.live, and the local source acting on it): every run
that may still change, and no finished one."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import count_watches, local_source, make_config, next_message, subscribe

from cardserver import demo, disk
from cardserver import following as following_module
from cardserver.config import Limits, Roots, WatchTiming
from cardserver.disk import Scope
from cardserver.events import Reset
from cardserver.following import run_folders
from cardserver.index import Index
from cardserver.layout import RunKey
from cardserver.live import LiveRuns
from cardserver.localsource import LocalSource
from cardserver.status import GRACE_SECONDS
from cardserver.web.keys import INDEX

WAIT = 10.0


def scanned(roots: Roots) -> Index:
    """The index of a scan made once no retry can come any more (a failed run has failed)."""
    index = Index(clock=lambda: time.time() + GRACE_SECONDS + 1)  # demo stamps run ms ahead
    index.apply([Reset(tuple(disk.scan(roots, Limits(), Scope())[0]))])
    return index


def finished_run(roots: Roots, ok: bool = True) -> demo.DemoRun:
    run = demo.start_run(roots.datastore, flow="F")
    run.start_task("start").finish(ok=ok)
    if ok:
        run.start_task("end").finish()
    return run


def running_run(roots: Roots) -> tuple[demo.DemoRun, demo.DemoTask]:
    run = demo.start_run(roots.datastore, flow="F")
    return run, run.start_task("start")


# --- the rule --------------------------------------------------------------------------------


def test_running_runs_are_live_and_finished_ones_settle(roots: Roots) -> None:
    done, failed, (going, _) = finished_run(roots), finished_run(roots, ok=False), running_run(roots)
    index = scanned(roots)
    live = LiveRuns(settle_seconds=60)
    quiet = max(t.last_activity for r in (done, failed) for t in index.run(r.key).tasks.values())  # type: ignore[union-attr]

    followed, next_check = live.update(index, (), now=quiet + 1, reset=True)
    assert followed == {done.key, failed.key, going.key}  # just finished: may still change
    assert next_check is not None and quiet + 59 <= next_check <= quiet + 60

    followed, next_check = live.update(index, (), now=quiet + 61)
    assert followed == {going.key}
    assert next_check is None


def test_a_change_to_a_finished_run_follows_it_again(roots: Roots) -> None:
    done = finished_run(roots)
    index = scanned(roots)
    live = LiveRuns(settle_seconds=60)
    later = 10**10
    assert live.update(index, (), now=later, reset=True) == (set(), None)
    followed, next_check = live.update(index, {done.key}, now=later + 1)
    assert followed == {done.key} and next_check == later + 61


def test_a_reset_reads_quiet_times_from_the_files_again(roots: Roots) -> None:
    done = finished_run(roots)
    index = scanned(roots)
    live = LiveRuns(settle_seconds=60)
    later = 10**10
    live.update(index, {done.key}, now=later)  # looks busy...
    assert live.update(index, (), now=later + 1, reset=True)[0] == set()  # ...until re-read


# --- the local source follows what the rule says -------------------------------------------------


def settled(**timing: Any) -> WatchTiming:
    return WatchTiming(cold_step_ms=10, shape_step_ms=10, settle_seconds=timing.get("settle_seconds", 0.0))


def deep(source: LocalSource) -> frozenset[Path]:
    return source.watcher.watched("deep")


def existing_folders(roots: Roots, key: RunKey) -> set[Path]:
    return {f for f in run_folders(roots, key) if f.is_dir()}


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a state the server reaches without telling anyone (a watch opened or closed)."""

    async def check() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(check(), timeout)


async def test_only_live_runs_are_watched_deeply(start_app: Any, roots: Roots) -> None:
    done = finished_run(roots)
    going, task = running_run(roots)
    task.add_card(components=[demo.progress("p", 0, 10)])
    client: TestClient = await start_app(make_config(roots, timing=settled()))
    source = local_source(client)
    assert source.caught_up.is_set()  # start_app waited for it: watched, and read since
    # Under load the first read has been seen still following the run that ended just before
    # it (1 CI run in many; the cause is not pinned down): what matters is that it stops.
    await until(lambda: deep(source) == existing_folders(roots, going.key))
    assert not deep(source) & set(run_folders(roots, done.key))


async def test_a_new_run_is_followed_and_its_updates_arrive(start_app: Any, roots: Roots) -> None:
    finished_run(roots)
    client: TestClient = await start_app(make_config(roots, timing=settled()))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "runs/F")
    await next_message(ws)
    run, task = running_run(roots)
    await next_message(ws, lambda m: m.get("type") == "run" and m["run"]["run"] == run.key.run)
    card = task.add_card(components=[demo.progress("p", 0, 10)])
    card.update({"p": {"value": 1}})
    await subscribe(ws, f"card/{card.key}")
    card.update({"p": {"value": 2}})
    await next_message(
        ws, lambda m: m.get("type") == "update" and m["data"]["p"]["value"] == 2, timeout=WAIT
    )
    await until(lambda: existing_folders(roots, run.key) <= deep(local_source(client)))


async def test_a_run_that_finishes_stops_being_watched(start_app: Any, roots: Roots) -> None:
    run, task = running_run(roots)
    client: TestClient = await start_app(make_config(roots, timing=settled(settle_seconds=0.5)))
    source = local_source(client)
    await until(lambda: deep(source) == existing_folders(roots, run.key))
    task.finish()
    run.start_task("end").finish()
    await until(lambda: deep(source) == frozenset())


async def test_catching_up_on_a_folder_delivers_a_missed_update(start_app: Any, roots: Roots) -> None:
    run = finished_run(roots)
    task = run.start_task("extra")  # a finished run's folder gets a card nobody watched
    card = task.add_card(components=[demo.progress("p", 0, 10)])
    card.update({"p": {"value": 1}})  # the run counts as succeeded: its `end` did
    client: TestClient = await start_app(make_config(roots, timing=settled()))
    source = local_source(client)
    ws = await client.ws_connect("/ws")
    await subscribe(ws, f"card/{card.key}")
    await next_message(ws, lambda m: m.get("type") == "update")
    card.update({"p": {"value": 5}})  # unwatched: only a catch-up can find it
    await source.catch_up(run_folders(roots, run.key))
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["p"]["value"] == 5)


async def test_a_deleted_run_disappears(start_app: Any, roots: Roots) -> None:
    keep, gone = finished_run(roots), finished_run(roots)
    client: TestClient = await start_app(make_config(roots, timing=settled()))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "runs/F")
    await next_message(ws)
    for folder in run_folders(roots, gone.key):
        shutil.rmtree(folder, ignore_errors=True)

    async def runs() -> set[str]:
        body = await (await client.get("/api/flows/F/runs")).json()
        return {r["run"] for r in body["runs"]}

    await next_message(ws, lambda m: True)  # the snapshot after reading the datastore again
    await until(lambda: gone.key.run not in client.app[INDEX].flows["F"].runs)
    assert await runs() == {keep.key.run}


async def test_a_big_live_run_keeps_its_own_watch_while_others_come_and_go(
    start_app: Any, roots: Roots, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a watch over 10,000 tasks holds the GIL for seconds: a big run is watched alone,
    so a small run starting or settling never re-opens it, and its updates keep arriving."""
    monkeypatch.setattr(following_module, "OWN_WATCH_TASKS", 3)
    big = demo.start_run(roots.datastore, flow="Big")
    tasks = [big.start_task("work") for _ in range(4)]  # over the (lowered) threshold
    card = tasks[0].add_card(components=[demo.progress("p", 0, 9)])
    small, _ = running_run(roots)
    client: TestClient = await start_app(make_config(roots, timing=settled(settle_seconds=0.5)))
    source = local_source(client)
    big_folders = run_folders(roots, big.key)
    assert source.following.watch_groups(client.app[INDEX], source.following.followed) == [
        big_folders, tuple(sorted(run_folders(roots, small.key)))
    ]
    opened = count_watches(source.watcher, monkeypatch)
    later, task = running_run(roots)
    await until(lambda: existing_folders(roots, later.key) <= deep(source))
    task.finish()
    later.start_task("end").finish()  # it settles and leaves after 0.5 s
    await until(lambda: not deep(source) & set(run_folders(roots, later.key)))
    assert opened and not any(str(f) in names for names in opened for f in big_folders)

    ws = await client.ws_connect("/ws")
    await subscribe(ws, f"card/{card.key}")
    await next_message(ws, lambda m: m.get("type") == "card")
    card.update({"p": {"value": 7}})
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["p"]["value"] == 7)
