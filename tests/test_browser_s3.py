"""A real `--datastore s3` run seen in Chromium through `card server` started as a user with
Metaflow set up for S3 starts it: in an empty folder, nothing but Metaflow's S3 settings in its
environment, no flag but the port. One run of tests/flows/s3_browser_flow.py and one server for the
whole file: the live card moves in place, a re-render swaps the page, the final card, a retry, a
failing foreach's statuses and a deep link."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import FLOWS, ServerProcess, launch, subscribe
from playwright.async_api import TimeoutError as PlaywrightTimeout
from s3fixtures import FLOW_WAIT, S3Endpoint, s3_env
from test_browser import shown_eval, until_shown, wait_card_frame
from test_browser_status import dots, rows_settle, shows

from bench.common import metaflow_s3_env

pytestmark = pytest.mark.timeout(600)
FLOW = "S3BrowserFlow"
PREFIX = "live"  # the run's datastore: s3://<bucket>/live


@dataclass
class LiveS3Run:
    workdir: Path  # where the flow runs; the test drives it with files (see the flow)
    process: subprocess.Popen[str]
    server: ServerProcess
    run_id: str

    def touch(self, name: str) -> None:
        (self.workdir / name).touch()

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.server.url + path, timeout=10) as answer:
            return json.load(answer)

    def wait_api(self, path: str, check: Any, timeout: float = FLOW_WAIT) -> Any:
        """`check(answer)` holds for `path` within `timeout` seconds; the last answer."""
        deadline, found = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                found = self.api(path)
                if check(found):
                    return found
            except urllib.error.HTTPError:
                pass  # not known yet
            assert self.process.poll() is None or time.monotonic() < deadline
            time.sleep(0.3)
        raise AssertionError(f"{path} never as expected: {found}")

    async def finished(self) -> dict[str, Any]:
        """Let the run go on from its live step, and wait until it is over (it fails). A socket
        views the run meanwhile, as a viewer would: it is then listed every 5 s, not every 30."""
        self.touch("rerender")
        self.touch("go")
        async with aiohttp.ClientSession() as session, session.ws_connect(
                self.server.url + "ws", headers={"Origin": self.server.url.rstrip("/")}) as ws:
            await subscribe(ws, f"run/{FLOW}/{self.run_id}")
            run: dict[str, Any] = await asyncio.to_thread(
                self.wait_api, f"api/runs/{FLOW}/{self.run_id}", lambda r: r["run"]["status"] == "failed")
        return run

    def card(self, step: str) -> str:
        """The path of the step's (first task's, newest attempt's) card, as in our URLs."""
        run = self.api(f"api/runs/{FLOW}/{self.run_id}")
        task = next(t for t in run["tasks"] if t["step"] == step)
        return f"{FLOW}/{self.run_id}/{step}/{task['task']}/{task['cards'][-1]['name']}"


async def within(wait: Any, seconds: float = FLOW_WAIT) -> Any:
    """`wait()` (one of test_browser's 20 s waits) again until it succeeds within `seconds`: on
    S3 a change takes a card subprocess, an upload and the next listing of the viewed run
    (every 5 s) to show, on a loaded machine."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await wait()
        except (AssertionError, PlaywrightTimeout):
            if time.monotonic() > deadline:
                raise


async def shown_within(page: Any, script: str) -> None:
    await within(lambda: until_shown(page, script))


async def frame_within(page: Any, contains: str) -> Any:
    return await within(lambda: wait_card_frame(page, contains))


def wait_run_id(workdir: Path, process: subprocess.Popen[str]) -> str:
    """The run's id, from its local metadata, as soon as the run has started."""
    deadline = time.monotonic() + FLOW_WAIT
    while time.monotonic() < deadline:
        folder = workdir / ".metaflow" / FLOW
        found = [p.name for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        if found:
            return found[0]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"the flow did not start: {process.communicate()[0][-3000:]}")


@pytest.fixture(scope="session")
def s3_live(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveS3Run]:
    workdir, empty = tmp_path_factory.mktemp("s3live"), tmp_path_factory.mktemp("s3user")
    sysroot = f"s3://{s3_server.bucket}/{PREFIX}"
    shutil.copy(FLOWS / "s3_browser_flow.py", workdir)
    process = subprocess.Popen([sys.executable, "s3_browser_flow.py", "--no-pylint", "run",
                                "--max-workers", "4"], cwd=workdir, env=s3_env(workdir, s3_server, sysroot),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = None
    try:
        run_id = wait_run_id(workdir, process)
        # As a user runs it: an empty folder, Metaflow's S3 settings, no datastore flag.
        user_env = {"USERNAME": "tester", **metaflow_s3_env(s3_server.url, sysroot)}
        server = launch(["server"], empty, env=user_env)
        yield LiveS3Run(workdir, process, server, run_id)
    finally:
        (workdir / "go").touch()
        if process.poll() is None:
            process.kill()
        process.communicate()
        if server is not None:
            server.stop()


def test_the_start_line_names_the_s3_datastore(s3_live: LiveS3Run, s3_server: S3Endpoint) -> None:
    said = "".join(s3_live.server.startup)
    assert f"s3://{s3_server.bucket}/{PREFIX}" in said, said
    assert "testing" not in said  # the (dummy) credentials are never printed
    status = s3_live.api("api/status")
    assert status["watch"]["ok"] is True, status


async def test_the_live_card_moves_in_place(s3_live: LiveS3Run, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(s3_live.server.url)  # follow mode: the newest run, its running card
    frame = await frame_within(page, f"/{s3_live.run_id}/start/")
    await shown_within(page, "/tick \\d+/.test(document.body.innerText)")
    first = await shown_eval(page, "Number(/tick (\\d+)/.exec(document.body.innerText)[1])")
    await frame.evaluate("window.__marker = 'same page'")
    # Two more ticks, each a data update PUT by a `card create` subprocess, shown in place.
    await frame.wait_for_function(
        "(n) => Number((/tick (\\d+)/.exec(document.body.innerText) || [0, 0])[1]) >= n",
        arg=first + 2, timeout=FLOW_WAIT * 1000)
    assert await frame.evaluate("window.__marker") == "same page"
    card = s3_live.api(f"api/cards/{s3_live.card('start')}")
    assert card["task_status"] == "running"
    assert "tick" in json.dumps(card["update"]["data"])


async def test_a_rerender_replaces_the_page(s3_live: LiveS3Run, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(s3_live.server.url)
    await frame_within(page, f"/{s3_live.run_id}/start/")
    before = s3_live.api(f"api/cards/{s3_live.card('start')}")["version"]
    s3_live.touch("rerender")  # the step adds a component: Metaflow renders the HTML again
    await shown_within(page, "document.body.innerText.includes('re-rendered')")
    assert s3_live.api(f"api/cards/{s3_live.card('start')}")["version"] != before


async def test_the_final_card(s3_live: LiveS3Run, browser: Any) -> None:
    await s3_live.finished()
    page = await browser.new_page()
    await page.goto(f"{s3_live.server.url}card/{s3_live.card('start')}")
    await shown_within(page, "document.body.innerText.includes('last tick')")
    assert await shown_eval(page, "window.METAFLOW_RELOAD_TOKEN") == "final"
    assert await page.is_hidden("#liveness")


async def test_a_retry_and_a_failing_foreach(s3_live: LiveS3Run, browser: Any) -> None:
    run = await s3_live.finished()
    statuses = sorted((t["step"], t["status"]) for t in run["tasks"] if t["step"] == "each")
    assert statuses == [("each", "failed"), ("each", "killed"), ("each", "killed")], run["tasks"]
    flaky = next(t for t in run["tasks"] if t["step"] == "flaky")
    assert (flaky["status"], flaky["attempt"]) == ("succeeded", 1), flaky
    details = s3_live.api(f"api/tasks/{FLOW}/{s3_live.run_id}/flaky/{flaky['task']}")
    assert [a["verdict"] for a in details["attempts"]] == ["failed", "succeeded"], details["attempts"]
    page = await browser.new_page()
    await page.goto(f"{s3_live.server.url}run/{FLOW}/{s3_live.run_id}")
    await shows(page, "#run-status[data-status=failed]")
    await rows_settle(page, 6)  # start, two attempts of flaky, three branches of each
    rows = await dots(page)
    each = sorted(status for where, status, _ in rows if where.startswith("each/"))
    assert each == ["failed", "killed", "killed"], rows
    assert sum(where.startswith("flaky/") for where, _, _ in rows) == 2, rows  # both attempts' cards


async def test_a_retried_cards_attempt_is_said_to_be_unknown(s3_live: LiveS3Run, browser: Any) -> None:
    """The S3 task folder says a task ran twice, not which attempt wrote each card (that is in the
    runtime's `_meta`, not in the bucket): the viewer says so rather than name one."""
    await s3_live.finished()
    page = await browser.new_page()
    await page.goto(f"{s3_live.server.url}run/{FLOW}/{s3_live.run_id}")
    await rows_settle(page, 6)
    rows = await dots(page)
    retried = sorted((status, attempt) for where, status, attempt in rows if where.startswith("flaky/"))
    assert retried == [("succeeded", "attempt unknown")] * 2, rows


async def test_a_deep_link_opens_its_card(s3_live: LiveS3Run, browser: Any) -> None:
    await s3_live.finished()
    flaky = s3_live.card("flaky")
    page = await browser.new_page()
    await page.goto(f"{s3_live.server.url}run/{flaky}")
    await frame_within(page, flaky.rsplit("/", 1)[1])
    await shown_within(page, "document.body.innerText.includes('attempt 1')")
    assert await page.get_attribute("#follow", "aria-pressed") == "false"
    selected = page.locator("#card-list .row[aria-selected=true]")
    assert await selected.get_attribute("data-id") == "/".join(flaky.split("/")[2:])
