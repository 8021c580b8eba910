"""The task view in Chromium, on real Metaflow runs: a failed task without a card opens on its
traceback, killed siblings and retries show their attempts, a 10 MiB log scrolls smoothly and
pages back, a log that grows is appended live, a hostile log line stays text, and a failure in a
followed run shows at once."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, launch, make_config, start_flow
from taskflows import FAIL_FLOW, HOSTILE, RETRY_FLOW, TRUNCATED, Ran, finish

from cardserver import demo, livedemo

pytestmark = pytest.mark.timeout(300)
UI_WAIT = 20_000  # ms
FLOW_WAIT = 120_000  # ms
# A scroll is painted within two frames (~33 ms) when idle; bounds with headroom for a 2-core
# machine under other tests' load. Rendering every line instead takes seconds per frame.
MEDIAN_FRAME_MS = 120
WORST_FRAME_MS = 1000


@pytest.fixture(scope="module")
def server(ran: Ran) -> Iterator[ServerProcess]:
    process = launch(["server", "--root", str(ran.roots.datastore)], ran.workdir)
    yield process
    process.stop()


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A page at `url`, and the dialogs and page errors it raises (there must be none)."""
    page = await browser.new_page(viewport={"width": 1200, "height": 800})
    problems: list[str] = []
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    page.on("pageerror", lambda error: problems.append(f"error: {error}"))
    await page.goto(url)
    return page, problems


async def attempts_shown(page: Any) -> list[list[str]]:
    await page.wait_for_selector("#task-panel:not([hidden]) [data-part=attempts] tr", timeout=UI_WAIT)
    rows: list[list[str]] = await page.eval_on_selector_all(
        "[data-part=attempts] tr", "rows => rows.map(r => [...r.cells].slice(0, 3).map(c => c.textContent))")
    return rows


async def test_failed_task_without_card_opens_on_its_traceback(
    ran: Ran, server: ServerProcess, browser: Any
) -> None:
    page, problems = await open_page(browser, f"{server.url}run/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}")
    badge = await page.wait_for_selector("#failure-badge:not([hidden])", timeout=UI_WAIT)
    assert await badge.text_content() == "✕ 1 failed"
    await badge.click()
    await page.wait_for_selector("[data-part=traceback]:not([hidden])", timeout=UI_WAIT)
    assert page.url.endswith(f"run/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}/each/2")
    assert "RuntimeError: diverged" in await page.text_content("[data-part=exception]")
    first, second = [await page.eval_on_selector(sel, "n => n.getBoundingClientRect().top")
                     for sel in ("[data-part=traceback]", ".attempts")]
    assert first < second  # the traceback comes first
    assert await attempts_shown(page) == [["1", "failed", "1"]]
    await page.click("[data-stream=stdout]")
    await page.wait_for_selector(".log-line >> text=item 0", timeout=UI_WAIT)
    texts = await page.eval_on_selector_all(".log-line .text", "nodes => nodes.map(n => n.textContent)")
    assert texts == ["item 0", HOSTILE]
    assert await page.eval_on_selector_all("#task-panel img", "nodes => nodes.length") == 0
    assert problems == []


async def test_killed_sibling_row_opens_its_task_view(ran: Ran, server: ServerProcess, browser: Any) -> None:
    page, problems = await open_page(browser, f"{server.url}run/{FAIL_FLOW}/{ran.runs[FAIL_FLOW]}")
    row = await page.wait_for_selector('.row.nocard[data-id="each/3"]', timeout=UI_WAIT)
    await row.click()
    await page.wait_for_function(
        "() => document.querySelector('[data-part=status]').textContent === 'killed'", timeout=UI_WAIT)
    assert await attempts_shown(page) == [["1", "killed", "-9"]]
    assert await page.is_hidden("[data-part=traceback]")
    assert page.url.endswith("/each/3") and problems == []


async def test_retry_shows_both_attempts_and_its_card(ran: Ran, server: ServerProcess, browser: Any) -> None:
    page, problems = await open_page(browser, f"{server.url}run/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/flaky/2")
    await page.wait_for_selector("[data-part=traceback]:not([hidden])", timeout=UI_WAIT)
    assert "(attempt 1)" in await page.text_content("[data-part=exception]")
    assert await page.text_content("[data-part=why]") == "An earlier attempt failed:"
    assert await attempts_shown(page) == [["1", "failed", "1"], ["2", "succeeded", "0"]]
    await page.click("[data-part=attempts] tr:nth-child(2) button.linkish")  # its card: tries
    await page.wait_for_selector("#frames:not([hidden]) iframe", timeout=UI_WAIT)
    assert await page.is_hidden("#task-panel") and "/flaky/2/blank-tries-" in page.url
    assert problems == []


async def test_big_log_stays_responsive_while_scrolling(
    ran: Ran, server: ServerProcess, browser: Any
) -> None:
    page, problems = await open_page(browser, f"{server.url}run/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}/chatty/3")
    await page.wait_for_selector(f".log-line >> text={TRUNCATED}", timeout=UI_WAIT)  # the tail first
    loaded = int(await page.get_attribute("[data-part=log]", "data-lines"))
    assert 0 < loaded <= 2000
    frames: list[float] = []
    for _ in range(60):  # scroll up in big steps: earlier pages load as the top comes near
        frames.append(await page.evaluate("""async () => {
            const log = document.querySelector('[data-part=log]');
            const start = performance.now();
            log.scrollTop = Math.max(0, log.scrollTop - 9000);
            await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
            return performance.now() - start;
        }"""))
    now = int(await page.get_attribute("[data-part=log]", "data-lines"))
    assert now >= 3 * loaded, (loaded, now)  # paged back by byte offset
    rendered = await page.eval_on_selector_all(".log-line", "nodes => nodes.length")
    assert rendered < 200  # virtual: only what is on screen
    assert statistics.median(frames) < MEDIAN_FRAME_MS and max(frames) < WORST_FRAME_MS, sorted(frames)
    started = asyncio.get_running_loop().time()
    await page.click("[data-stream=stderr]")
    await page.wait_for_selector("[data-part=log-info] >> text=0 B", timeout=UI_WAIT)
    assert asyncio.get_running_loop().time() - started < 2  # a click answers at once
    assert problems == []


async def test_follow_mode_shows_a_failure_at_once(tmp_path: Path, browser: Any) -> None:
    (tmp_path / ".metaflow").mkdir()
    server = launch(["server", "--root", str(tmp_path / ".metaflow")], tmp_path)
    flow = None
    try:
        page, problems = await open_page(browser, f"{server.url}?follow")
        await page.wait_for_selector("#connection[data-state=live]", timeout=UI_WAIT)
        flow = start_flow("task_fail_flow.py", tmp_path)
        badge = await page.wait_for_selector("#failure-badge:not([hidden])", timeout=FLOW_WAIT)
        await badge.click()
        await page.wait_for_selector(  # pushed once the runtime has saved the logs
            "[data-part=exception] >> text=RuntimeError: diverged", timeout=FLOW_WAIT)
        assert "/each/2" in page.url and problems == []
    finally:
        if flow is not None:
            await asyncio.to_thread(finish, flow)
        server.stop()


def mflog(*texts: str) -> str:
    return "".join(f"[MFLOG|0|2026-11-29T10:03:11.835570Z|runtime|5e0d4dc9]{text}\n" for text in texts)


async def test_a_log_that_grows_is_appended_live(roots: Any, start_app: Any, browser: Any) -> None:
    run = demo.start_run(roots.datastore, flow="DemoFlow")
    task = run.start_task("train")
    client = await start_app(make_config(roots))
    url = client.make_url(f"/run/DemoFlow/{run.run}/train/{task.key.task}")
    page, problems = await open_page(browser, str(url))
    await page.wait_for_selector("[data-part=log-info] >> text=no log saved yet", timeout=UI_WAIT)
    log = task.meta_dir.parent / "0.runtime_stdout.log"
    log.write_text(mflog("one", "two"))
    await page.wait_for_selector(".log-line >> text=two", timeout=UI_WAIT)
    with log.open("a") as handle:  # S3 uploads grow a remote task's log while it runs
        handle.write(mflog("three", HOSTILE))
    await page.wait_for_selector(f".log-line >> text={HOSTILE}", timeout=UI_WAIT)
    texts = await page.eval_on_selector_all(".log-line .text", "nodes => nodes.map(n => n.textContent)")
    assert texts == ["one", "two", "three", HOSTILE]
    assert await page.get_attribute("[data-part=log]", "data-lines") == "4"
    assert await page.text_content("[data-part=status]") == "running" and problems == []


async def test_t_key_switches_between_card_and_task(ran: Ran, server: ServerProcess, browser: Any) -> None:
    url = f"{server.url}run/{RETRY_FLOW}/{ran.runs[RETRY_FLOW]}"
    page, problems = await open_page(browser, url)
    await page.click(".row[data-card] >> nth=0")  # flaky/2's card
    await page.wait_for_selector("#frames:not([hidden]) iframe", timeout=UI_WAIT)
    await page.keyboard.press("t")
    await page.wait_for_selector("#task-panel:not([hidden]) [data-part=attempts] tr", timeout=UI_WAIT)
    assert page.url.endswith("/flaky/2") and await page.is_hidden("#frames")
    await page.keyboard.press("t")
    await page.wait_for_selector("#frames:not([hidden])", timeout=UI_WAIT)
    assert "/flaky/2/blank-tries-" in page.url and problems == []


async def test_a_log_not_saved_yet_shows_no_other_log(roots: Any, start_app: Any, browser: Any) -> None:
    """Choosing an attempt whose log is not saved yet clears the lines of the one shown before."""
    run = demo.start_run(roots.datastore, flow="DemoFlow")
    task = run.start_task("train")
    livedemo._print_failure(task, 3)
    task.finish(ok=False)
    task.retry()  # attempt 1 runs: its logs are saved when it ends
    client = await start_app(make_config(roots))
    url = client.make_url(f"/run/DemoFlow/{run.run}/train/{task.key.task}")
    page, problems = await open_page(browser, str(url))
    await page.click("[data-part=streams] button >> text=stderr")
    await page.select_option("[data-part=attempt]", "0")
    await page.wait_for_selector(".log-line >> text=ValueError: NaN loss at epoch 3", timeout=UI_WAIT)
    await page.select_option("[data-part=attempt]", "1")
    await page.wait_for_selector("[data-part=log-info] >> text=no log saved yet", timeout=UI_WAIT)
    assert await page.locator(".log-line").count() == 0 and problems == []
