"""The demo writer (cardserver.demo): Metaflow's files, at Metaflow's paths, written atomically."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cardserver import demo, livedemo, taskinfo
from cardserver.layout import (
    LEGACY_STEP,
    CardFile,
    CardFileKind,
    CardKey,
    MetaKind,
    RunFile,
    RunKey,
    TaskFile,
    TaskKey,
    card_path,
    parse_card_path,
    parse_datastore_path,
)

CHROMIUM = os.environ.get("CARDSERVER_CHROMIUM", "/usr/bin/chromium")
TOKEN_RE = re.compile(r'<script>var METAFLOW_RELOAD_TOKEN = "([^"]+)";</script>')


def rel(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root).as_posix())


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def meta_files(datastore: Path) -> dict[TaskKey, dict[MetaKind, list[Path]]]:
    """Every task status file, grouped the way the layout module reads them."""
    out: dict[TaskKey, dict[MetaKind, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in files(datastore):
        parsed = parse_datastore_path(rel(datastore, path))
        if isinstance(parsed, TaskFile):
            out[parsed.key][parsed.kind].append(path)
    return out


def sysmeta(paths: list[Path]) -> list[dict[str, Any]]:
    return [load(p) for p in sorted(paths, key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    return tmp_path / ".metaflow"


# --- runs and tasks --------------------------------------------------------------------------


def test_start_run_writes_run_self_and_latest_run(datastore: Path) -> None:
    run = demo.start_run(datastore, flow="LiveFlow", user="ada", ts_ms=1_700_000_000_123)
    assert run.cards == datastore / "mf.cards"
    self_path = datastore / "LiveFlow" / run.run / "_meta" / "_self.json"
    assert parse_datastore_path(rel(datastore, self_path)) == RunFile(RunKey("LiveFlow", run.run))
    assert load(self_path) == {
        "run_number": run.run,
        "flow_id": "LiveFlow",
        "user_name": "ada",
        "tags": [],
        "system_tags": [
            "metaflow_version:2.19.39",
            "python_version:3.11.7",
            "user:ada",
            "runtime:dev",
        ],
        "ts_epoch": 1_700_000_000_123,
    }
    assert (datastore / "LiveFlow" / "latest_run").read_bytes() == run.run.encode()
    # `_parameters` is task 1, as in Metaflow; the layout says it is not a task.
    params = datastore / "LiveFlow" / run.run / "_parameters" / "1" / "_meta" / "_self.json"
    assert params.is_file() and parse_datastore_path(rel(datastore, params)) is None


def test_run_ids_are_unique_and_increasing(datastore: Path) -> None:
    ids = [demo.start_run(datastore).run for _ in range(20)]
    assert ids == sorted(ids, key=int) and len(set(ids)) == 20
    assert (datastore / "DemoFlow" / "latest_run").read_text() == ids[-1]


def test_task_self_and_attempt_files(datastore: Path) -> None:
    run = demo.start_run(datastore, flow="LiveFlow", user="ada")
    task = run.start_task("train")
    assert task.key == TaskKey("LiveFlow", run.run, "train", "2")
    meta = meta_files(datastore)[task.key]
    assert set(meta) == {MetaKind.TASK_SELF, MetaKind.ATTEMPT}
    self_doc = load(meta[MetaKind.TASK_SELF][0])
    assert self_doc["step_name"] == "train" and self_doc["task_id"] == "2"
    assert self_doc["run_number"] == run.run and "user:ada" in self_doc["system_tags"]
    [attempt] = sysmeta(meta[MetaKind.ATTEMPT])
    ts = int(meta[MetaKind.ATTEMPT][0].stem.rsplit("_", 1)[1])
    assert attempt == {
        "flow_id": "LiveFlow",
        "run_number": run.run,
        "step_name": "train",
        "task_id": "2",
        "field_name": "attempt",
        "type": "attempt",
        "value": "0",
        "tags": ["attempt_id:0"],
        "user_name": "ada",
        "ts_epoch": ts,
    }
    # Metaflow's per-attempt system files are there, and the layout ignores them.
    names = {p.name.rsplit("_", 1)[0] for p in meta[MetaKind.ATTEMPT][0].parent.iterdir()}
    assert {"sysmeta_runtime", "sysmeta_user", "sysmeta_metaflow_version"} <= names


def test_finish_writes_verdict_then_done(datastore: Path) -> None:
    run = demo.start_run(datastore)
    ok_task, bad_task = run.start_task("a"), run.start_task("b")
    ok_task.finish()
    bad_task.finish(ok=False)
    meta = meta_files(datastore)
    for task, verdict in ((ok_task, "True"), (bad_task, "False")):
        [ok_path] = meta[task.key][MetaKind.ATTEMPT_OK]
        [done_path] = meta[task.key][MetaKind.ATTEMPT_DONE]
        ok, done = load(ok_path), load(done_path)
        assert (ok["field_name"], ok["type"], ok["value"]) == (
            "attempt_ok",
            "internal_attempt_status",
            verdict,
        )
        assert (done["field_name"], done["type"], done["value"]) == (
            "attempt-done",
            "attempt-done",
            "0",
        )
        assert ok["tags"] == done["tags"] == ["attempt_id:0"]
        assert ok["ts_epoch"] < done["ts_epoch"]  # Metaflow writes the verdict first


def test_retry_starts_the_next_attempt(datastore: Path) -> None:
    run = demo.start_run(datastore)
    task = run.start_task("train")
    task.finish(ok=False)
    assert task.retry() == 1
    task.finish()
    meta = meta_files(datastore)[task.key]
    assert [d["value"] for d in sysmeta(meta[MetaKind.ATTEMPT])] == ["0", "1"]
    assert [d["value"] for d in sysmeta(meta[MetaKind.ATTEMPT_OK])] == ["False", "True"]
    assert [d["tags"] for d in sysmeta(meta[MetaKind.ATTEMPT_DONE])] == [
        ["attempt_id:0"],
        ["attempt_id:1"],
    ]


def test_the_task_folder_holds_attempts_logs_and_a_traceback(datastore: Path) -> None:
    """What the task view reads: `<a>.attempt.json`, the saved logs, and the failed attempt's
    traceback, as the runtime leaves them."""
    run = demo.start_run(datastore)
    task = run.start_task("train")
    task.print("epoch 1")
    livedemo._print_failure(task, 1)
    task.finish(ok=False)
    task.retry()
    task.print("epoch 1 again")
    task.finish()
    found = taskinfo.read_task(datastore, task.key, 1 << 20)
    assert found is not None and sorted(found.attempts) == [0, 1]
    assert all(files.started is not None for files in found.attempts.values())
    assert [taskinfo.verdict(found.attempts[n], latest=n == 1) for n in (0, 1)] == ["failed", "succeeded"]
    assert found.traceback is not None and found.traceback["attempt"] == 0
    assert found.traceback["exception"] == "ValueError: NaN loss at epoch 1"
    stdout = (task.folder / "1.runtime_stdout.log").read_text()
    assert stdout.startswith("[MFLOG|0|") and stdout.endswith("]epoch 1 again\n")


def test_the_runtime_verdict_comes_last_as_metaflow_writes_it(datastore: Path) -> None:
    run = demo.start_run(datastore)
    ok_task, bad_task, killed_task = run.start_task("a"), run.start_task("b"), run.start_task("c")
    ok_task.finish()
    bad_task.finish(ok=False)
    killed_task.kill()
    meta = meta_files(datastore)
    expected = [(ok_task, {"return_code": 0, "killed": False, "success": True}),
                (bad_task, {"return_code": 1, "killed": False, "success": False}),
                (killed_task, {"return_code": -9, "killed": True, "success": False})]
    for task, verdict in expected:
        [path] = meta[task.key][MetaKind.VERDICT]
        assert path == datastore / task.key.flow / task.key.run / task.key.step / task.key.task / "0.runtime"
        assert load(path) == verdict
        assert parse_datastore_path(rel(datastore, path)) == TaskFile(task.key, MetaKind.VERDICT, 0, 0)
    # A killed worker wrote nothing of its own end.
    assert set(meta[killed_task.key]) == {MetaKind.TASK_SELF, MetaKind.ATTEMPT, MetaKind.VERDICT}
    done = max(p.stat().st_mtime_ns for p in meta[ok_task.key][MetaKind.ATTEMPT_DONE])
    assert meta[ok_task.key][MetaKind.VERDICT][0].stat().st_mtime_ns >= done


def test_each_card_has_card_info_naming_its_attempt(datastore: Path) -> None:
    run = demo.start_run(datastore)
    task = run.start_task("train")
    first = task.add_card()
    task.finish(ok=False)
    task.retry()
    second = task.add_card()
    infos = sysmeta(meta_files(datastore)[task.key][MetaKind.CARD_INFO])
    uuids = [c.key.name.rpartition("-")[2] for c in (first, second)]
    assert [(d["field_name"], d["type"], d["tags"]) for d in infos] == [
        (uuids[0], "card-info", ["attempt_id:0"]), (uuids[1], "card-info", ["attempt_id:1"])]
    assert json.loads(infos[1]["value"])["card_uuid"] == uuids[1]


# --- cards -----------------------------------------------------------------------------------


def test_card_files_are_where_layout_parses_them(datastore: Path) -> None:
    run = demo.start_run(datastore, flow="LiveFlow")
    task = run.start_task("train")
    plain = task.add_card(components=[demo.progress("p", 0, 5, "Seconds")])
    named = task.add_card(type="blank", id="loss", components=[demo.text("t", "x")])
    plain.update({"p": {"value": 1}})
    named.update({"t": {"text": "y"}})
    cards = datastore / "mf.cards"
    for card in (plain, named):
        assert card.key.task == task.key
        assert parse_card_path(rel(cards, card.path_html)) == CardFile(card.key, CardFileKind.HTML)
        assert parse_card_path(rel(cards, card.path_data)) == CardFile(card.key, CardFileKind.DATA)
    assert re.fullmatch(r"blank-[0-9a-f]{32}", plain.key.name)
    assert re.fullmatch(r"blank-loss-[0-9a-f]{32}", named.key.name)
    assert rel(cards, plain.path_html).parts[:8] == (
        "LiveFlow",
        "runs",
        run.run,
        "steps",
        "train",
        "tasks",
        task.key.task,
        "cards",
    )


def test_legacy_cards_have_no_step_level(datastore: Path, tmp_path: Path) -> None:
    cards = tmp_path / "elsewhere"
    run = demo.start_run(datastore, cards=cards, flow="OldFlow")
    task = run.start_task("start")
    card = task.add_card(legacy=True, components=[demo.text("t", "old")])
    card.update({"t": {"text": "older"}})
    legacy_key = CardKey(TaskKey("OldFlow", run.run, LEGACY_STEP, task.key.task), card.key.name)
    assert rel(cards, card.path_html).parts[3] == "tasks"
    assert card.key.task == task.key  # the task the card belongs to; the disk just lacks its step
    html = CardFile(legacy_key, CardFileKind.HTML, legacy=True)
    assert parse_card_path(rel(cards, card.path_html)) == html
    data = CardFile(legacy_key, CardFileKind.DATA, legacy=True)
    assert parse_card_path(rel(cards, card.path_data)) == data


def test_update_writes_full_merged_state_under_the_current_token(datastore: Path) -> None:
    task = demo.start_run(datastore).start_task("train")
    card = task.add_card(components=[demo.markdown("md", "# item 1"), demo.progress("bar", 0, 5, "Seconds")])
    assert not card.path_data.exists()  # Metaflow writes no update before the first refresh
    card.update({"bar": {"value": 3}})
    card.update({"md": {"source": "# item 2"}})
    doc = load(card.path_data)
    assert list(doc) == ["reload_token", "data", "created_on"]
    assert doc["reload_token"] == card.token and card.token.startswith("runtime-")
    assert isinstance(doc["created_on"], float)
    assert doc["data"] == {
        "md": {"type": "markdown", "id": "md", "source": "# item 2"},
        "bar": {"type": "progressBar", "id": "bar", "max": 5, "value": 3, "label": "Seconds"},
    }
    with pytest.raises(KeyError):
        card.update({"new": {"type": "text", "text": "needs a rerender"}})


def test_rerender_writes_a_new_token_and_layout(datastore: Path) -> None:
    card = demo.start_run(datastore).start_task("train").add_card(components=[demo.text("a", "")])
    first = card.token
    second = card.rerender([demo.text("a", "x"), demo.text("b", "new")])
    assert second != first and second == card.token and second.startswith("runtime-")
    assert TOKEN_RE.findall(card.path_html.read_text()) == [second]
    card.update({"b": {"text": "newer"}})
    doc = load(card.path_data)
    assert doc["reload_token"] == second and set(doc["data"]) == {"a", "b"}
    later = [card.rerender() for _ in range(20)]  # faster than the clock's 10 ms steps
    assert len({first, second, *later}) == 22  # a token never comes back


def test_finish_renders_final_cards(datastore: Path) -> None:
    task = demo.start_run(datastore).start_task("train")
    card = task.add_card(components=[demo.progress("p", 0, 5)])
    card.update({"p": {"value": 4}})
    task.finish()
    html = card.path_html.read_text()
    assert card.token == "final" and TOKEN_RE.findall(html) == ["final"]
    assert "window.metaflow_card_update = undefined;" in html
    assert "window.metaflow_card_update = function" not in html
    doc = load(card.path_data)
    assert doc["reload_token"] == "final" and doc["data"]["p"]["value"] == 4
    with pytest.raises(RuntimeError):
        card.update({"p": {"value": 5}})


def test_success_after_retry_finalizes_only_that_attempts_cards(datastore: Path) -> None:
    task = demo.start_run(datastore).start_task("train")
    failed = task.add_card(components=[demo.text("t", "attempt 0")])
    task.finish(ok=False)
    task.retry()
    retried = task.add_card(components=[demo.text("t", "attempt 1")])
    task.finish()
    assert failed.key != retried.key and task.cards == [failed, retried]
    assert failed.token.startswith("runtime-") and retried.token == "final"


def test_a_failed_task_keeps_its_live_card(datastore: Path) -> None:
    """Metaflow renders final cards only for a task that succeeded (card_decorator)."""
    task = demo.start_run(datastore).start_task("train")
    card = task.add_card(components=[demo.progress("p", 0, 5)])
    card.update({"p": {"value": 2}})
    task.finish(ok=False)
    assert card.token.startswith("runtime-")
    assert load(card.path_data)["reload_token"] == card.token
    assert "window.metaflow_card_update = function(data)" in card.path_html.read_text()


def test_card_html_contract(datastore: Path) -> None:
    hostile = "</script><script>alert(1)</script>"
    card = (
        demo.start_run(datastore)
        .start_task("train")
        .add_card(
            components=[
                demo.markdown("md", f"# {hostile}"),
                demo.text("t", hostile),
                demo.table("tb", ["a", hostile], [[1, hostile]]),
                demo.progress("p", 1, 3, hostile),
            ]
        )
    )
    html = card.path_html.read_text()
    assert TOKEN_RE.findall(html) == [card.token]
    assert "window.metaflow_card_update = function(data)" in html
    assert html.count("</body>") == 2  # one in a script string, one real
    assert html.rstrip().endswith("</body>\n</html>")
    assert html.index('var __probe = "</body>"') < html.rindex("</body>")
    assert html.count("</script>") == 3  # the data cannot close a script element
    assert "alert(1)" in html  # the text is there, escaped inside the JSON
    assert "data-component-id" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "prefers-color-scheme: dark" in html
    assert len(html.encode()) < 16_000


def test_no_temp_files_are_left_behind(datastore: Path) -> None:
    run = demo.start_run(datastore)
    task = run.start_task("train")
    card = task.add_card(components=[demo.text("t", "")])
    for n in range(5):
        card.update({"t": {"text": str(n)}})
    card.rerender()
    task.finish(ok=False)
    task.retry()
    task.add_card(legacy=True)
    task.finish()
    names = [p.name for p in files(datastore)]
    assert names and not [n for n in names if n.startswith("tmp")]


def test_component_helpers_have_metaflow_shapes() -> None:
    assert demo.markdown("m", "# x") == {"type": "markdown", "id": "m", "source": "# x"}
    assert demo.text("t", "hi") == {"type": "text", "id": "t", "text": "hi"}
    assert demo.progress("p", 3, 5, "Seconds") == {
        "type": "progressBar",
        "id": "p",
        "max": 5,
        "value": 3,
        "label": "Seconds",
    }
    assert demo.table("tb", ["a"], [[1]]) == {
        "type": "table",
        "id": "tb",
        "headers": ["a"],
        "data": [[1]],
    }


# --- fixtures --------------------------------------------------------------------------------


def test_fixture_run_finished(datastore: Path) -> None:
    run = demo.write_fixture_run(datastore, "BigFlow", tasks=5, cards_per_task=2)
    meta = meta_files(datastore)
    assert sorted((k.step, int(k.task)) for k in meta) == [
        ("end", 8),
        ("start", 2),
        *[("work", n) for n in range(3, 8)],
    ]
    # Final cards are written at once, without card-info: one attempt wrote them all.
    assert all(set(kinds) == set(MetaKind) - {MetaKind.CARD_INFO, MetaKind.ENDED} for kinds in meta.values())
    parsed = [parse_card_path(rel(run.cards, p)) for p in files(run.cards)]
    assert None not in parsed
    html = [c for c in parsed if c is not None and c.kind is CardFileKind.HTML]
    data = [c for c in parsed if c is not None and c.kind is CardFileKind.DATA]
    assert len(html) == len(data) == 2 + 5 * 2
    for card in html:
        path = run.cards / card_path(card.key, card.kind, legacy=False)
        assert TOKEN_RE.findall(path.read_text()) == ["final"]
    assert not [p for p in files(datastore) if p.name.startswith("tmp")]


def test_fixture_run_running(datastore: Path) -> None:
    run = demo.write_fixture_run(datastore, "BigFlow", tasks=3, finished=False)
    meta = meta_files(datastore)
    steps = {k.step for k in meta}
    assert steps == {"start", "work"}  # `end` has not begun
    for key, kinds in meta.items():
        done = MetaKind.ATTEMPT_DONE in kinds
        assert done == (key.step == "start")
    tokens = sorted(load(p)["reload_token"] for p in files(run.cards) if p.name.endswith(".data.json"))
    assert tokens[0] == "final" and len(tokens) == 4  # `start` is final, `work` cards are live
    assert all(t.startswith("runtime-") for t in tokens[1:])


def test_fixture_run_without_data(datastore: Path) -> None:
    run = demo.write_fixture_run(datastore, "BigFlow", tasks=3, with_data=False)
    assert [p.suffix for p in files(run.cards)] == [".html"] * 5


# --- the live demo ---------------------------------------------------------------------------


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Poll the disk for a condition, briefly; fail if it never holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def task_states(datastore: Path) -> dict[TaskKey, str]:
    """running / succeeded / failed from the newest attempt's files."""
    states = {}
    for key, kinds in meta_files(datastore).items():
        started = [int(d["value"]) for d in sysmeta(kinds[MetaKind.ATTEMPT])]
        verdicts = {int(d["tags"][0].split(":")[1]): d["value"] for d in sysmeta(kinds[MetaKind.ATTEMPT_OK])}
        if not started:
            continue
        latest = max(started)
        verdict = verdicts.get(latest)
        states[key] = {None: "running", "True": "succeeded", "False": "failed"}[verdict]
    return states


@pytest.fixture
async def live_demo(datastore: Path) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    runner = asyncio.create_task(livedemo.run_demo(datastore, stop, interval=0.01))
    yield stop
    stop.set()
    await asyncio.wait_for(runner, timeout=5)  # stops promptly, and never raised


async def test_run_demo_shows_running_failed_and_changing_cards(
    datastore: Path, live_demo: asyncio.Event
) -> None:
    seen: set[str] = set()
    contents: dict[Path, set[bytes]] = defaultdict(set)

    def observed() -> bool:
        seen.update(task_states(datastore).values())
        for path in (datastore / "mf.cards").rglob("*.data.json"):
            with suppress(FileNotFoundError):  # listed a moment ago, replaced since
                contents[path].add(path.read_bytes())
        changing = any(len(versions) >= 3 for versions in contents.values())
        return {"running", "failed"} <= seen and changing

    await until(observed)


async def test_run_demo_finishes_a_run_and_starts_the_next(datastore: Path, live_demo: asyncio.Event) -> None:
    latest = datastore / "DemoFlow" / "latest_run"
    await until(latest.exists)
    first = latest.read_text()
    await until(lambda: latest.read_text() != first, timeout=20)
    states = {k: s for k, s in task_states(datastore).items() if k.run == first}
    assert {k.step for k in states} == {"start", "train", "join", "end"}
    assert len({k for k in states if k.step == "train"}) == 4
    assert set(states.values()) == {"succeeded"}  # the failed shard was retried and succeeded
    retried = [k for k, kinds in meta_files(datastore).items() if len(kinds[MetaKind.ATTEMPT]) > 1]
    assert [k.run for k in retried] == [first]
    cards = datastore / "mf.cards" / "DemoFlow" / "runs" / first
    tokens = [TOKEN_RE.findall(p.read_text())[0] for p in cards.rglob("*.html")]
    assert len(tokens) == 1 + 5 + 1 + 1  # start, 4 shards + the failed attempt's card, join, end
    assert sorted(tokens)[:-1] == ["final"] * 7  # only the failed attempt's card stays live


async def test_run_demo_survives_an_unwritable_datastore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    stop = asyncio.Event()
    caplog.set_level(logging.ERROR, logger="cardserver.demo")
    runner = asyncio.create_task(livedemo.run_demo(blocker / ".metaflow", stop, interval=0.01))
    await until(lambda: len(caplog.records) >= 2)  # failed, waited, tried again
    assert not runner.done()
    stop.set()
    await asyncio.wait_for(runner, timeout=5)


# --- the page in a browser -------------------------------------------------------------------


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """Chromium is part of the suite (scripts/test.sh installs it): no skipping."""
    yield await browser.new_page()


async def test_page_updates_in_place_and_escapes(datastore: Path, page: Any) -> None:
    hostile = "<img src=x onerror=alert(1)></script>"
    task = demo.start_run(datastore).start_task("train")
    card = task.add_card(
        components=[
            demo.markdown("md", "# Title\nsome **bold** text"),
            demo.progress("p", 1, 4, "Epochs"),
            demo.text("t", hostile),
            demo.table("tb", ["epoch", "loss"], [[1, 0.5]]),
        ]
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: errors.append(f"dialog {d.message}"))
    await page.goto(card.path_html.as_uri())
    assert await page.evaluate("METAFLOW_RELOAD_TOKEN") == card.token
    assert await page.inner_text('[data-component-id="t"]') == hostile
    assert await page.inner_html('[data-component-id="md"]') == (
        "<h1>Title</h1><p>some <strong>bold</strong> text</p>"
    )
    assert await page.inner_text('[data-component-id="p"]') == "Epochs\n1 / 4"
    await page.evaluate("window.__kept = [...document.querySelectorAll('[data-component-id], h1, td')]")
    card.update(
        {
            "md": {"source": "# Title\nnow **more** text"},
            "p": {"value": 3},
            "t": {"text": "calm"},
            "tb": {"data": [[1, 0.25], [2, 0.125]]},
        }
    )
    applied = await page.evaluate("data => window.metaflow_card_update(data)", load(card.path_data)["data"])
    assert applied is True
    assert await page.evaluate("window.__kept.every(node => node.isConnected)")
    assert await page.inner_text('[data-component-id="p"]') == "Epochs\n3 / 4"
    assert await page.inner_text('[data-component-id="t"]') == "calm"
    assert await page.inner_html('[data-component-id="md"] p') == "now <strong>more</strong> text"
    assert await page.evaluate(
        "[...document.querySelectorAll('[data-component-id=tb] td')].map(td => td.textContent)"
    ) == ["1", "0.25", "2", "0.125"]
    width = await page.evaluate("document.querySelector('.mf-progress-fill').style.width")
    assert width == "75%"
    task.finish()
    await page.goto(card.path_html.as_uri())
    assert await page.evaluate("[METAFLOW_RELOAD_TOKEN, typeof window.metaflow_card_update]") == [
        "final",
        "undefined",
    ]
    assert await page.inner_text('[data-component-id="p"]') == "Epochs\n3 / 4"
    assert errors == []
