"""The pipeline end to end (disk -> watcher -> index -> feed -> socket), fed the files that real
writers leave behind: bad files never crash it and never lose the last good state.

Every wait is on a websocket message. To prove that a write which must *not* produce a message
was handled, the test then writes a "beacon" card and waits for that update: the watcher reports
changes in order, so by then the earlier write has been read (and ignored or reported).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import local_source, make_config, next_message, subscribe

from cardserver import demo, disk, prescan
from cardserver.config import Limits, Roots, WatchTiming
from cardserver.demo import DemoCard, DemoRun, DemoTask
from cardserver.pathevents import PathEvents
from cardserver.web.keys import INDEX

ROOT = os.geteuid() == 0


def topic(card: DemoCard) -> str:
    return f"card/{card.key}"


def is_update(card: DemoCard, value: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m.get("topic") == topic(card) and m.get("type") == "update" and m["data"]["p"]["value"] == value
    )


async def collect(
    ws: aiohttp.ClientWebSocketResponse, *predicates: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The first message matching each predicate, whatever order they arrive in."""
    found: dict[int, dict[str, Any]] = {}

    def all_found(m: dict[str, Any]) -> bool:
        for n, predicate in enumerate(predicates):
            if n not in found and predicate(m):
                found[n] = m
        return len(found) == len(predicates)

    await next_message(ws, all_found)
    return [found[n] for n in range(len(predicates))]


@dataclass
class Live:
    """A server on a datastore with one live card under test and one beacon card."""

    client: TestClient
    ws: aiohttp.ClientWebSocketResponse
    roots: Roots
    run: DemoRun
    task: DemoTask
    card: DemoCard  # the card under test; its last good update has p = 3
    beacon: DemoCard  # another task's card, written to prove earlier writes were handled
    beats: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paths(self) -> PathEvents:
        return local_source(self.client).paths

    async def settle(self) -> list[dict[str, Any]]:
        """Write the beacon and wait for it; returns every message that came before it."""
        self.beats += 1
        self.beacon.update({"p": {"value": self.beats}})
        seen: list[dict[str, Any]] = []
        done = is_update(self.beacon, self.beats)

        def record(m: dict[str, Any]) -> bool:
            seen.append(m)
            return done(m)

        await next_message(self.ws, record)
        return seen[:-1]

    async def detail(self, card: DemoCard | None = None) -> dict[str, Any]:
        response = await self.client.get(f"/api/cards/{(card or self.card).key}")
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    async def value(self) -> Any:
        update = (await self.detail())["update"]
        return update["data"]["p"]["value"] if update else None


def live_card(task: DemoTask) -> DemoCard:
    card = task.add_card(components=[demo.progress("p", 0, 10), demo.text("t", "text")])
    card.update({"p": {"value": 3}})
    return card


async def open_live(
    start_app: Any, roots: Roots, before_start: Callable[[DemoTask], Any] = lambda task: None,
    **config: Any,
) -> Live:
    run = demo.start_run(roots.datastore, flow="LiveFlow")
    task = run.start_task("train")
    card = live_card(task)
    beacon = live_card(run.start_task("beacon"))
    before_start(task)
    client: TestClient = await start_app(make_config(roots, **config))
    ws = await client.ws_connect("/ws")
    live = Live(client, ws, roots, run, task, card, beacon)
    for followed in (card, beacon):
        await subscribe(ws, topic(followed))
        await next_message(ws, is_update(followed, 3))
    return live


@pytest.fixture
async def live(start_app: Any, roots: Roots) -> AsyncIterator[Live]:
    opened = await open_live(start_app, roots)
    yield opened
    await opened.ws.close()


def warnings_about(caplog: pytest.LogCaptureFixture, path: Path) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("cardserver") and str(path) in r.getMessage()
    ]


@pytest.fixture(autouse=True)
def capture_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cardserver")


# --- bad data updates ------------------------------------------------------------------------

BAD = {
    "half-written": b'{"reload_token": "runtime-1795376726.13", "created_on": 1795376726.2, "data": {"p',
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00",
    "empty": b"",
    "latin-1": '{"reload_token": "t", "data": {"p": {"value": "café"}}}'.encode("latin-1"),
    "not-an-update": b'{"reload_token": 7, "data": []}',
    "a-list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("content", BAD.values(), ids=BAD.keys())
async def test_a_bad_data_update_keeps_the_last_good_one(
    live: Live, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    live.card.path_data.write_bytes(content)  # in place, as a non-atomic writer would
    before = await live.settle()
    assert [m for m in before if m.get("topic") == topic(live.card)] == []
    assert await live.value() == 3
    assert len(warnings_about(caplog, live.card.path_data)) == 1

    live.card.update({"p": {"value": 6}})  # the next good write is picked up and published
    message = await next_message(live.ws, is_update(live.card, 6))
    assert message["data"]["t"]["text"] == "text"
    assert await live.value() == 6


async def test_a_bad_file_is_logged_once_not_once_per_event(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        live.card.path_data.write_bytes(BAD["half-written"])
        await live.settle()
    assert len(warnings_about(caplog, live.card.path_data)) == 1
    assert await live.value() == 3

    # once it has been read fine, the next breakage is news again
    live.card.update({"p": {"value": 4}})
    await next_message(live.ws, is_update(live.card, 4))
    live.card.path_data.write_bytes(BAD["binary"])
    await live.settle()
    assert len(warnings_about(caplog, live.card.path_data)) == 2


async def test_a_data_update_over_the_size_cap_is_reported_and_not_loaded(
    start_app: Any, roots: Roots, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[DemoCard] = []

    def add_big_card(task: DemoTask) -> None:
        big = task.add_card(components=[demo.progress("p", 0, 10), demo.text("t", "")])
        big.update({"t": {"text": "x" * 10_000}})  # on disk before the scan: read lazily
        made.append(big)

    live = await open_live(start_app, roots, add_big_card, limits=Limits(max_data_bytes=4096))
    big = made[0]
    await subscribe(live.ws, topic(big))
    card = await next_message(live.ws, lambda m: m.get("topic") == topic(big))
    assert card["type"] == "card" and card["exists"] is True
    await live.settle()
    assert (await live.detail(big))["update"] is None
    assert (await live.detail(big))["update"] is None
    problems = warnings_about(caplog, big.path_data)
    assert len(problems) == 1 and "too large" in problems[0].getMessage()

    live.card.update({"t": {"text": "y" * 10_000}})  # a live write of the card under test
    await live.settle()
    assert await live.value() == 3
    assert "too large" in warnings_about(caplog, live.card.path_data)[0].getMessage()
    await live.ws.close()


async def test_an_unreadable_data_update(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    fd, tmp = tempfile.mkstemp(dir=live.roots.datastore.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump({"reload_token": live.card.token, "created_on": 1.0, "data": {"p": {"value": 7}}}, handle)
    os.chmod(tmp, 0)
    os.replace(tmp, live.card.path_data)  # unreadable from its very first event
    try:
        await live.settle()
        if not ROOT:  # root reads whatever the mode says
            assert await live.value() == 3
            problems = warnings_about(caplog, live.card.path_data)
            assert len(problems) == 1 and "unreadable" in problems[0].getMessage()
    finally:
        os.chmod(live.card.path_data, 0o644)
    live.card.update({"p": {"value": 8}})
    await next_message(live.ws, is_update(live.card, 8))
    assert await live.value() == 8


# --- names that are not ours -----------------------------------------------------------------


async def test_names_that_almost_match_are_ignored(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    runtime, cards = live.card.path_data.parent, live.card.path_html.parent
    garbage = b'{"reload_token": "t", "data": {"p": {"val'
    for folder in (runtime, cards):
        fd, _ = tempfile.mkstemp(dir=folder)  # Metaflow's temp file, left half written
        os.write(fd, garbage)
        os.close(fd)
    stem = live.card.key.name
    for name in (f"{stem}.data.json.tmp", f".{stem}.data.json.swp", "blank-.data.json", f"{stem}.json"):
        (runtime / name).write_bytes(garbage)
    for name in (f"{stem}.htm", "blank abc.html", f"{stem}.html~", "-abc.html", "blank-a-b-c.html"):
        (cards / name).write_bytes(b"<html>")
    (live.card.path_html.parent.parent / "notes").mkdir()
    (live.card.path_html.parent.parent / "notes" / f"{stem}.html").write_bytes(b"<html>")

    before = await live.settle()
    assert [m for m in before if m.get("topic") == topic(live.card)] == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    response = await live.client.get(f"/api/runs/{live.run.key}?step=train")
    tasks = (await response.json())["tasks"]
    assert [c["name"] for c in tasks[0]["cards"]] == [stem]
    assert await live.value() == 3


# --- folders and trees that vanish -----------------------------------------------------------


async def test_a_card_folder_deleted_and_recreated(live: Live) -> None:
    await subscribe(live.ws, f"run/{live.run.key}")
    await next_message(live.ws, lambda m: m.get("type") == "run-detail")
    task_folder = live.card.path_html.parent.parent
    shutil.rmtree(task_folder)
    gone, _ = await collect(
        live.ws,
        lambda m: m.get("topic") == topic(live.card) and m["type"] == "card",
        lambda m: m.get("type") == "task" and m["task"]["step"] == "train" and m["task"]["cards"] == [],
    )
    assert gone["exists"] is False
    response = await live.client.get(f"/api/cards/{live.card.key}")
    assert response.status == 404

    live.card.rerender()  # the folder comes back with a new render
    back = await next_message(
        live.ws, lambda m: m.get("topic") == topic(live.card) and m["type"] == "card" and m["exists"]
    )
    assert back["card"]["name"] == live.card.key.name
    live.card.update({"p": {"value": 5}})
    await next_message(live.ws, is_update(live.card, 5))
    assert await live.value() == 5


async def test_the_whole_datastore_deleted_and_recreated(live: Live) -> None:
    await subscribe(live.ws, "flows")
    await next_message(live.ws, lambda m: m.get("type") == "flows" and m["flows"])
    shutil.rmtree(live.roots.datastore)
    await next_message(live.ws, lambda m: m.get("type") == "flows" and m["flows"] == [])
    status = await (await live.client.get("/api/status")).json()
    assert status["flows"] == 0

    run = demo.start_run(live.roots.datastore, flow="RebornFlow")
    card = live_card(run.start_task("start"))
    found = await next_message(
        live.ws, lambda m: m.get("type") == "flows" and [f["flow"] for f in m["flows"]] == ["RebornFlow"]
    )
    assert found["flows"][0]["newest"]["run"] == run.run
    await subscribe(live.ws, topic(card))
    await next_message(live.ws, is_update(card, 3))
    card.update({"p": {"value": 9}})
    await next_message(live.ws, is_update(card, 9))
    response = await live.client.get(f"/api/runs/{run.key}")
    assert response.status == 200
    assert (await response.json())["run"]["status"] == "running"


# --- status files ----------------------------------------------------------------------------


async def test_a_half_written_status_file_is_retried_on_the_next_write(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    await subscribe(live.ws, f"run/{live.run.key}")
    await next_message(live.ws, lambda m: m.get("type") == "run-detail")
    ok_file = live.task.meta_dir / "sysmeta_attempt_ok_1795376800000.json"
    ok_file.write_bytes(b'{"value": "Tr')
    before = await live.settle()
    assert [m for m in before if m.get("type") == "task"] == []
    assert len(warnings_about(caplog, ok_file)) == 1
    ok_file.write_text(json.dumps({"value": "True", "tags": ["attempt_id:0"]}))
    task = await next_message(
        live.ws, lambda m: m.get("type") == "task" and m["task"]["step"] == "train"
    )
    assert task["task"]["status"] == "succeeded"


# --- the artifact store ----------------------------------------------------------------------


async def test_artifact_store_changes_cost_nothing(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[Path] = []
    paths = live.paths
    read_file, read_new_folder = paths.read_file, paths.read_new_folder

    def spy_file(path: Path) -> Any:
        read.append(path)
        return read_file(path)

    def spy_folder(path: Path) -> Any:
        read.append(path)
        return read_new_folder(path)

    monkeypatch.setattr(paths, "read_file", spy_file)
    monkeypatch.setattr(paths, "read_new_folder", spy_folder)
    await subscribe(live.ws, "flows")
    await subscribe(live.ws, f"run/{live.run.key}")
    await next_message(live.ws, lambda m: m.get("type") == "run-detail")

    artifacts = live.roots.datastore / "LiveFlow" / "data"
    blob = artifacts / "3f" / "3f1c2e9a0b7d4c5e8f6a1b2c3d4e5f60"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(os.urandom(4096))
    (artifacts / "_meta").mkdir()
    (artifacts / "_meta" / "_self.json").write_text("{}")  # looks like a run; is not
    blob.write_bytes(os.urandom(64))
    blob.unlink()

    before = await live.settle()
    assert [p for p in read if p.is_relative_to(artifacts)] == []
    assert before == []  # no flows, run or card message: nothing happened
    assert read  # the spies were in the path: the beacon itself was read through them


async def test_a_write_while_the_tree_is_read_again_is_not_lost(
    start_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metaflow creates the datastore and writes its first run in one go: what lands while the
    new datastore is being scanned must still arrive, so the watches open before the scan."""
    datastore = tmp_path / ".metaflow"
    roots = Roots(datastore, datastore / "mf.cards")
    client: TestClient = await start_app(make_config(roots))
    real_scan = disk.scan
    late: list[DemoRun] = []

    def scan_then_write(*args: Any) -> Any:
        found = real_scan(*args)
        if datastore.is_dir() and not late:  # right after the tree was read, before it is watched
            late.append(demo.start_run(datastore, flow="LateFlow"))
        return found

    monkeypatch.setattr(disk, "scan", scan_then_write)
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "flows")
    assert (await next_message(ws, lambda m: m.get("type") == "flows"))["flows"] == []
    datastore.mkdir()
    found = await next_message(ws, lambda m: m.get("type") == "flows" and m["flows"] != [])
    assert [f["flow"] for f in found["flows"]] == ["LateFlow"]
    assert found["flows"][0]["newest"]["run"] == late[0].run
    await ws.close()


@dataclass
class Done:
    """A part of the first scan, already read (as a forked reader's is when its process ends)."""

    found: disk.Scanned

    def result(self) -> disk.Scanned:
        return self.found


@dataclass
class EarlyScan:
    """What `prescan.Prescan` gives the pipeline: the tree read before the watch was open."""

    parts: list[Done]

    def close(self) -> None:
        """Nothing to stop: the parts were read already."""

    @classmethod
    def of(cls, roots: Roots) -> EarlyScan:
        limits, scope = Limits(), disk.Scope()
        return cls([Done(prescan._datastore(roots, limits, scope)), Done(prescan._cards(roots, scope))])


async def test_runs_made_or_deleted_while_the_first_scan_was_read_elsewhere(
    start_app: Any, roots: Roots
) -> None:
    """`card server` reads the tree in other processes before its watch is open: a run that
    appears or vanishes in between is found once the watch is open. All are finished runs,
    the kind nothing else would read again."""
    kept = demo.write_fixture_run(roots.datastore, "Early", tasks=2)
    gone = demo.write_fixture_run(roots.datastore, "Early", tasks=2)
    early = EarlyScan.of(roots)
    late = demo.write_fixture_run(roots.datastore, "Early", tasks=3)
    other = demo.write_fixture_run(roots.datastore, "LateFlow", tasks=1)
    shutil.rmtree(roots.datastore / "Early" / gone.run)
    shutil.rmtree(roots.cards / "Early" / "runs" / gone.run)

    client: TestClient = await start_app(make_config(roots), first_scan=early)
    index = client.app[INDEX]
    assert set(index.flows["Early"].runs) == {kept.run, late.run}
    assert len(index.flows["Early"].runs[late.run].tasks) == 5  # start, 3 work, end
    assert set(index.flows["LateFlow"].runs) == {other.run}


def strict_json(text: str) -> Any:
    """Parse as a browser does: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def test_numbers_json_cannot_carry(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    """Python's json writes NaN and Infinity (a "NaN loss" is an everyday card value) and reads
    400-digit integers: none of them may stop the pipeline or reach the browser as bad JSON."""
    doc = {"reload_token": live.card.token, "created_on": 1e12,
           "data": {"p": {"value": float("nan")}, "t": {"text": float("inf")}}}
    live.card.path_data.write_text(json.dumps(doc))
    update = await next_message(
        live.ws, lambda m: m.get("topic") == topic(live.card) and m["type"] == "update"
    )
    assert update["data"]["p"]["value"] is None and update["data"]["t"]["text"] is None
    response = await live.client.get(f"/api/cards/{live.card.key}")
    body = strict_json(await response.text())
    assert body["update"]["data"]["p"]["value"] is None

    run_self = live.roots.datastore / "LiveFlow" / live.run.run / "_meta" / "_self.json"
    run_self.write_text('{"ts_epoch": ' + "9" * 400 + ', "system_tags": ["user:someone"]}')
    await live.settle()  # still alive
    response = await live.client.get(f"/api/runs/{live.run.key}")
    run = strict_json(await response.text())["run"]
    assert run["user"] == "someone"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_bug_while_applying_changes_does_not_stop_watching(
    roots: Any, start_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One failure is logged, the tree is read again, and later writes still arrive."""
    run = demo.start_run(roots.datastore, flow="SturdyFlow")
    card = run.start_task("start").add_card(components=[demo.progress("bar", 0, 9, "n")])
    client = await start_app(make_config(roots))
    paths = local_source(client).paths
    real = PathEvents.classify
    calls = {"n": 0}

    def classify_once_broken(self: PathEvents, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(self, batch)

    monkeypatch.setattr(paths, "classify", classify_once_broken.__get__(paths))
    ws = await client.ws_connect("/ws")
    topic = f"card/{card.key}"
    await subscribe(ws, topic)
    await next_message(ws, lambda m: m.get("type") == "card")
    card.update({"bar": demo.progress("bar", 4, 9, "n")})  # hits the bug; the rescan recovers it
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["bar"]["value"] == 4)
    card.update({"bar": demo.progress("bar", 5, 9, "n")})
    await next_message(ws, lambda m: m.get("type") == "update" and m["data"]["bar"]["value"] == 5)
    assert any("failed to apply a change" in r.getMessage() for r in caplog.records)


async def test_a_lone_failure_fails_the_run_when_no_retry_came(roots: Roots, start_app: Any) -> None:
    """No file tells that a failed task will not be retried: the server looks again once the
    grace has passed, with nothing else written meanwhile."""
    timing = WatchTiming(cold_step_ms=10, shape_step_ms=10, status_grace_seconds=1.0)
    client: TestClient = await start_app(make_config(roots, timing=timing))
    ws = await client.ws_connect("/ws")
    await subscribe(ws, "flows")
    await next_message(ws)
    run = demo.start_run(roots.datastore, flow="LoneFlow")
    run.start_task("start").finish(ok=False)
    running = await next_message(ws, lambda m: any(f["newest"] and f["newest"]["status"] == "running"
                                                   for f in m.get("flows", [])))
    failed = await next_message(ws, lambda m: any(f["newest"] and f["newest"]["status"] == "failed"
                                                  for f in m.get("flows", [])))
    assert running["flows"][0]["flow"] == failed["flows"][0]["flow"] == "LoneFlow"
