"""Status as a person sees it in Chromium, with real Metaflow runs: a foreach whose siblings the
runtime kills shows failed/killed and follow mode moves on to the next run; a retried task's
card rows each name their attempt; the stage and count line say what is true."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import launch, make_config, start_flow

from cardserver import demo
from cardserver.config import WatchTiming

pytestmark = pytest.mark.timeout(300)
FLOW_WAIT = 120_000  # ms: a Metaflow run takes seconds to start on a loaded 2-core machine


def dots(page: Any) -> Any:
    """(task, status, attempt label) of each row of the card list."""
    return page.locator("#card-list .row").evaluate_all(
        "(rows) => rows.map((r) => [r.querySelector('.where').textContent, "
        "r.querySelector('.dot').dataset.status, r.querySelector('.attempt')?.textContent ?? ''])"
    )


async def rows_settle(page: Any, wanted: int) -> None:
    """Rows are redrawn on the next animation frame after a status arrives: wait for `wanted`
    rows with no running dot among them."""
    await page.wait_for_function(
        """(wanted) => {
             const dots = [...document.querySelectorAll('#card-list .row .dot')];
             return dots.length === wanted && !dots.some((d) => d.dataset.status === 'running');
           }""", arg=wanted, timeout=FLOW_WAIT)


async def shows(page: Any, selector: str, text: str | None = None) -> None:
    """Wait for an element (with that text) to be in the page (the viewer's CSP forbids eval)."""
    await page.locator(selector, has_text=text).first.wait_for(state="attached", timeout=FLOW_WAIT)


async def test_killed_siblings_then_follow_moves_on(tmp_path: Path, browser: Any) -> None:
    (tmp_path / ".metaflow").mkdir()
    server = launch(["server"], tmp_path)
    flows: list[subprocess.Popen[str]] = []
    try:
        page = await browser.new_page()
        await page.goto(server.url)
        await shows(page, "#empty", "No runs yet")
        flows.append(start_flow("killed_siblings_flow.py", tmp_path, "--max-workers", "4"))
        await page.wait_for_url("**/KilledSiblingsFlow/**", timeout=FLOW_WAIT)
        await shows(page, "#run-status[data-status=failed]")
        await rows_settle(page, 4)  # start, and three branches
        rows = await dots(page)
        each = sorted(status for where, status, _ in rows if where.startswith("each/"))
        assert each == ["failed", "killed", "killed"], rows
        # Nothing of the failed run runs: follow mode takes the next run as soon as it starts.
        flows.append(start_flow("retry_card_flow.py", tmp_path))
        await page.wait_for_url("**/RetryCardFlow/**", timeout=FLOW_WAIT)
        await shows(page, "#run-status[data-status=succeeded]")
        await rows_settle(page, 4)  # start, two cards of flaky, end
        rows = await dots(page)
        flaky = sorted((status, attempt) for where, status, attempt in rows if where.startswith("flaky/"))
        assert flaky == [("succeeded", "attempt 1"), ("succeeded", "attempt 2")], rows
        # A typed filter: the count line says how many match.
        await page.fill("#text-filter", "flaky")
        await shows(page, "#task-count", "match")
        assert await page.locator("#task-count").text_content() == "1 of 3 tasks · 2 of 2 cards match"
    finally:
        for flow in flows:
            if flow.poll() is None:
                flow.kill()
            flow.communicate()
        server.stop()


async def test_the_stage_says_what_is_true_when_no_card_is_shown(
    roots: Any, start_app: Any, browser: Any
) -> None:
    done = demo.write_fixture_run(roots.datastore, "ManyFlow", tasks=4)
    bare = demo.start_run(roots.datastore, flow="BareFlow")
    bare.start_task("start").finish()
    bare.start_task("end").finish()
    timing = WatchTiming(cold_step_ms=10, shape_step_ms=10, status_grace_seconds=0.0)
    client = await start_app(make_config(roots, timing=timing))
    page = await browser.new_page()
    await page.goto(str(client.make_url(f"/run/ManyFlow/{done.run}")))
    await shows(page, "#empty", "The run succeeded. No card selected: pick one of its 6 cards")
    assert await page.locator("#task-count").text_content() == "6 tasks · 6 cards"
    await page.fill("#text-filter", "nothing-matches-this")
    await shows(page, "#empty", "No card matches the filter")
    assert await page.locator("#task-count").text_content() == "0 of 6 tasks · 0 of 6 cards match"
    await page.goto(str(client.make_url(f"/run/BareFlow/{bare.run}")))
    await shows(page, "#empty", "This run has no cards. Add @card to a step")


async def test_follow_mode_shows_the_retry_card_not_the_failed_attempts(
    roots: Any, start_app: Any, browser: Any
) -> None:
    """A retried task keeps its failed attempt's card, which never changes again: following the
    run shows the card of the attempt that runs."""
    run = demo.start_run(roots.datastore, flow="RetryFlow")
    task = run.start_task("train")
    failed = task.add_card(id="loss", components=[demo.markdown("m", "attempt 0")])
    task.finish(ok=False)
    task.retry()
    retried = task.add_card(id="loss", components=[demo.markdown("m", "attempt 1")])
    client = await start_app(make_config(roots))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/?follow")))
    await page.wait_for_url(f"**/{retried.key.name}?follow", timeout=20_000)
    assert failed.key.name not in page.url
