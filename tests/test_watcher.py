"""The file watcher (cardserver.watcher): pacing, what it watches, and real file-system batches."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import count_watches

from cardserver import watcher as watcher_module
from cardserver.config import Roots, WatchTiming
from cardserver.watcher import (
    Batch,
    Change,
    Item,
    Opened,
    Pacer,
    Plan,
    Rescan,
    Watcher,
    nearest_existing,
    plan,
    shape_folders,
)

TIMING = WatchTiming(hot_step_ms=2, cold_step_ms=10, shape_step_ms=10)
WAIT = 10.0


# --- Pacer -----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(watcher_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_pacer_starts_cold_with_no_timeout(clock: Clock) -> None:
    pacer = Pacer(WatchTiming(hot_step_ms=2, cold_step_ms=10, hot_seconds=30))
    assert pacer.next_wait() == (10, 0)


def test_pacer_is_hot_after_a_change_until_the_spell_ends(clock: Clock) -> None:
    pacer = Pacer(WatchTiming(hot_step_ms=2, cold_step_ms=10, hot_seconds=30))
    pacer.changed()
    assert pacer.next_wait() == (2, 30_000)  # the timeout wakes the loop to go cold
    clock.now += 29.5
    assert pacer.next_wait() == (2, 500)
    clock.now += 0.4999
    step, timeout = pacer.next_wait()
    assert (step, timeout) == (2, 1)  # never a timeout of 0, which would mean "no timeout"
    clock.now += 0.0001
    assert pacer.next_wait() == (10, 0)


def test_pacer_each_change_extends_the_hot_spell(clock: Clock) -> None:
    pacer = Pacer(WatchTiming(hot_step_ms=2, cold_step_ms=10, hot_seconds=5))
    pacer.changed()
    clock.now += 4
    pacer.changed()
    clock.now += 4
    assert pacer.next_wait() == (2, 1000)
    clock.now += 1
    assert pacer.next_wait() == (10, 0)


def test_pacer_with_the_real_clock() -> None:
    pacer = Pacer(WatchTiming(hot_step_ms=2, cold_step_ms=10, hot_seconds=60))
    assert pacer.next_wait() == (10, 0)
    pacer.changed()
    step, timeout = pacer.next_wait()
    assert step == 2 and 0 < timeout <= 60_000


# --- plan ------------------------------------------------------------------------------------


def test_plan_watches_an_existing_datastore_once(roots: Roots) -> None:
    roots.cards.mkdir()
    assert plan(roots) == Plan(present=(roots.datastore,), waiting=())


def test_plan_waits_on_the_nearest_parent_of_a_missing_datastore(tmp_path: Path) -> None:
    datastore = tmp_path / "project" / "sub" / ".metaflow"
    (tmp_path / "project").mkdir()
    assert plan(Roots(datastore, datastore / "mf.cards")) == Plan((), (tmp_path / "project",))


def test_plan_with_cards_outside_the_datastore(roots: Roots, tmp_path: Path) -> None:
    cards = tmp_path / "elsewhere" / "cards"
    split = Roots(roots.datastore, cards)
    assert plan(split) == Plan((roots.datastore,), (tmp_path,))
    cards.mkdir(parents=True)
    assert plan(split) == Plan((roots.datastore, cards), ())


def test_plan_waits_once_for_two_missing_roots_with_one_parent(tmp_path: Path) -> None:
    roots = Roots(tmp_path / "a" / ".metaflow", tmp_path / "b" / "cards")
    assert plan(roots) == Plan((), (tmp_path,))


def test_nearest_existing(tmp_path: Path) -> None:
    assert nearest_existing(tmp_path / "x" / "y" / "z") == tmp_path
    assert nearest_existing(Path("/no-such-folder-here/x")) == Path("/")


# --- real file-system batches ----------------------------------------------------------------


class Running:
    """A watcher whose `batches()` has opened its OS watches."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.items: AsyncIterator[Item] = watcher.batches()
        self.pending: asyncio.Future[Item | None] | None = None

    async def start(self) -> None:
        self.pending = asyncio.ensure_future(anext(self.items, None))
        await asyncio.sleep(0)  # one turn: the generator opens its RustNotify synchronously

    async def next(self, timeout: float = WAIT) -> Item | None:
        if self.pending is None:
            self.pending = asyncio.ensure_future(anext(self.items, None))
        try:
            return await asyncio.wait_for(self.pending, timeout)
        finally:
            self.pending = None

    async def until(self, wanted: Path, timeout: float = WAIT) -> Batch:
        """The first batch that names `wanted` (other batches may come first)."""

        async def find() -> Batch:
            while True:
                item = await self.next()
                if isinstance(item, list) and wanted in {path for _, path in item}:
                    return item
                assert item is not None, "the watcher ended"

        return await asyncio.wait_for(find(), timeout)

    async def collect_until(self, wanted: Path) -> set[Path]:
        """Every path reported up to and including the batch that names `wanted`."""
        seen: set[Path] = set()

        async def gather() -> set[Path]:
            while wanted not in seen:
                item = await self.next()
                assert item is not None, "the watcher ended"
                if isinstance(item, list):
                    seen.update(path for _, path in item)
            return seen

        return await asyncio.wait_for(gather(), WAIT)

    async def until_quiet_replan(self) -> None:
        """Let the watcher act on a `follow` that opens nothing (it yields no item for it)."""
        probe = self.watcher.roots.datastore / "probe.txt"
        probe.write_text("x")
        await self.until(probe)

    async def close(self) -> None:
        self.watcher.stop()
        if self.pending is not None:
            await asyncio.wait_for(self.pending, WAIT)
        await self.items.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for item in started:
        await item.close()


async def watch(roots: Roots, running: list[Running], **kwargs: object) -> Running:
    item = Running(Watcher(roots, kwargs.pop("timing", TIMING), **kwargs))  # type: ignore[arg-type]
    running.append(item)
    await item.start()
    return item


async def test_a_write_yields_a_batch_with_its_path(roots: Roots, running: list[Running]) -> None:
    live = await watch(roots, running)
    assert live.watcher.describe() == "watching"
    target = roots.datastore / "Flow" / "latest_run"
    target.parent.mkdir()
    await live.until(target.parent)
    target.write_text("123")
    batch = await live.until(target)
    assert {change for change, path in batch if path == target} <= {Change.ADDED, Change.MODIFIED}


async def test_a_deep_write_in_a_followed_run_is_seen(roots: Roots, running: list[Running]) -> None:
    run = roots.cards / "F" / "runs" / "1"
    deep = run / "steps" / "s" / "tasks" / "2" / "cards"
    deep.mkdir(parents=True)
    live = await watch(roots, running)
    live.watcher.follow([[run]])
    assert await live.next() == Opened((run,))
    target = deep / "blank-abc.html"
    target.write_text("<html></html>")
    await live.until(target)


async def test_a_run_that_is_not_followed_is_not_watched(roots: Roots, running: list[Running]) -> None:
    deep = roots.datastore / "F" / "1" / "start" / "1" / "_meta"
    deep.mkdir(parents=True)
    live = await watch(roots, running)
    assert live.watcher.watched("deep") == frozenset()
    unseen = deep / "sysmeta_attempt_0_1.json"
    unseen.write_text("{}")
    sentinel = roots.datastore / "F" / "latest_run"
    sentinel.write_text("1")  # written after: had the deep write been watched, it came first
    seen = await live.collect_until(sentinel)
    assert unseen not in seen


async def test_following_stops(roots: Roots, running: list[Running]) -> None:
    run = roots.datastore / "F" / "1"
    (run / "start").mkdir(parents=True)
    live = await watch(roots, running)
    live.watcher.follow([[run]])
    assert await live.next() == Opened((run,))
    live.watcher.follow([])
    sentinel = roots.datastore / "F" / "latest_run"
    await live.until_quiet_replan()
    unseen = run / "start" / "x.json"
    unseen.write_text("{}")
    sentinel.write_text("1")
    assert unseen not in await live.collect_until(sentinel)
    assert live.watcher.watched("deep") == frozenset()


async def test_a_group_that_stays_followed_keeps_its_watch(
    roots: Roots, running: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a watch costs its whole tree: another run coming or going must not re-open the
    watch of a big one, and a write in it during the change is still seen."""
    big, small, later = (roots.datastore / "F" / name for name in ("1", "2", "3"))
    for folder in (big, small, later):
        (folder / "start").mkdir(parents=True)
    live = await watch(roots, running)
    opened = count_watches(live.watcher, monkeypatch)
    live.watcher.follow([[big], [small]])
    assert await live.next() == Opened((big, small))
    live.watcher.follow([[big], [later]])
    assert await live.next() == Opened((later,))
    live.watcher.follow([[big]])
    await live.until_quiet_replan()
    assert sorted(opened) == [[str(big)], [str(small)], [str(later)]]  # big: opened once
    assert live.watcher.watched("deep") == {big}
    target = big / "start" / "x.json"
    target.write_text("{}")
    await live.until(target)


async def test_groups_beyond_the_cap_share_the_last_watch(
    roots: Roots, running: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = [roots.datastore / "F" / str(n) for n in range(watcher_module.DEEP_WATCHES + 2)]
    for folder in folders:
        folder.mkdir(parents=True)
    live = await watch(roots, running)
    opened = count_watches(live.watcher, monkeypatch)
    live.watcher.follow([[folder] for folder in folders])
    assert await live.next() == Opened(tuple(sorted(folders)))
    assert len(opened) == watcher_module.DEEP_WATCHES
    assert sorted(map(str, folders[watcher_module.DEEP_WATCHES - 1 :])) in opened
    target = folders[-1] / "x.json"
    target.write_text("{}")
    await live.until(target)


async def test_a_followed_folder_is_opened_when_it_appears(roots: Roots, running: list[Running]) -> None:
    runs = roots.cards / "F" / "runs"
    runs.mkdir(parents=True)
    live = await watch(roots, running)
    run = runs / "7"
    live.watcher.follow([[run]])  # not there yet: nothing to open
    await live.until_quiet_replan()
    run.mkdir()
    await live.until(run)
    assert await live.next() == Opened((run,))
    target = run / "steps"  # one level: inotify can miss a folder made inside a brand-new one
    target.mkdir()
    await live.until(target)


async def test_a_new_flow_joins_the_shape_watch(roots: Roots, running: list[Running]) -> None:
    live = await watch(roots, running)
    flow = roots.datastore / "NewFlow"
    flow.mkdir()
    await live.until(flow)
    assert await live.next() == Opened((flow,))
    run = flow / "123"
    run.mkdir()
    await live.until(run)  # a new run is seen one level down, without watching inside it


def test_shape_folders_are_roots_flows_and_card_run_lists(roots: Roots) -> None:
    (roots.datastore / "F" / "1" / "start").mkdir(parents=True)
    (roots.datastore / "F" / "data" / "ab").mkdir(parents=True)
    (roots.cards / "F" / "runs" / "1" / "steps").mkdir(parents=True)
    (roots.cards / "G").mkdir(parents=True)
    assert shape_folders(roots) == {
        roots.datastore,
        roots.datastore / "F",
        roots.cards,
        roots.cards / "F",
        roots.cards / "F" / "runs",
        roots.cards / "G",
    }


async def test_a_deletion_is_reported(roots: Roots, running: list[Running]) -> None:
    target = roots.datastore / "gone.txt"
    target.write_text("x")
    live = await watch(roots, running)
    target.unlink()
    batch = await live.until(target)
    assert (Change.DELETED, target) in batch


async def test_a_datastore_that_appears_yields_a_rescan(tmp_path: Path, running: list[Running]) -> None:
    datastore = tmp_path / ".metaflow"
    roots = Roots(datastore, datastore / "mf.cards")
    live = await watch(roots, running)
    assert live.watcher.describe() == "waiting"
    datastore.mkdir()
    item = await live.next()
    assert isinstance(item, Rescan)
    # ...and from then on the new datastore is watched recursively.
    target = datastore / "Flow" / "x.json"
    target.parent.mkdir()
    await live.until(target.parent)
    assert live.watcher.describe() == "watching"
    target.write_text("{}")
    await live.until(target)


async def test_a_datastore_that_vanishes_yields_a_rescan(roots: Roots, running: list[Running]) -> None:
    (roots.datastore / "Flow").mkdir()
    live = await watch(roots, running)
    shutil.rmtree(roots.datastore)

    async def rescan() -> Rescan:
        while True:
            item = await live.next()
            assert item is not None, "the watcher ended"
            if isinstance(item, Rescan):
                return item

    await asyncio.wait_for(rescan(), WAIT)
    # back to waiting on the parent: the datastore coming back is one more rescan
    roots.datastore.mkdir()
    await asyncio.wait_for(rescan(), WAIT)


async def test_stop_ends_the_iterator_promptly(roots: Roots) -> None:
    watcher = Watcher(roots, WatchTiming(hot_step_ms=2, cold_step_ms=10))
    items = watcher.batches()
    pending = asyncio.ensure_future(anext(items, None))
    await asyncio.sleep(0)
    watcher.stop()
    assert await asyncio.wait_for(pending, 2.0) is None
    assert await anext(items, None) is None


async def test_stop_before_start_yields_nothing(roots: Roots) -> None:
    watcher = Watcher(roots, TIMING)
    watcher.stop()
    assert await asyncio.wait_for(anext(watcher.batches(), None), 2.0) is None


async def test_a_huge_batch_becomes_a_rescan(
    roots: Roots, running: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "RESCAN_BATCH", 1)
    live = await watch(roots, running)
    (roots.datastore / "x").write_text("x")
    item = await live.next()
    assert isinstance(item, Rescan)
    assert "burst" in item.reason


async def test_polling_fallback_still_yields_batches(roots: Roots, running: list[Running]) -> None:
    timing = WatchTiming(hot_step_ms=2, cold_step_ms=10, poll_delay_ms=20)
    live = await watch(roots, running, timing=timing, force_polling=True)
    assert live.watcher.describe() == "polling"
    target = roots.datastore / "polled.txt"
    target.write_text("x")
    await live.until(target)


async def test_the_watcher_goes_hot_after_a_change(roots: Roots, running: list[Running]) -> None:
    live = await watch(roots, running)
    assert live.watcher.pacer.next_wait() == (10, 0)
    target = roots.datastore / "x.txt"
    target.write_text("x")
    await live.until(target)
    step, timeout = live.watcher.pacer.next_wait()
    assert step == 2 and timeout > 0
