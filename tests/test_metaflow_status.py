"""Run and task status of real Metaflow runs that end badly: a foreach branch raises while its
siblings run (the runtime kills them), a retried task, a run interrupted with SIGINT and one
whose runtime is killed with SIGKILL. Checked through the API and the websocket, with the
server started before the run and after it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import local_source, make_config, next_message, start_flow, subscribe

from cardserver.cli import card_rows
from cardserver.config import Roots, WatchTiming
from cardserver.status import GRACE_SECONDS

pytestmark = pytest.mark.timeout(300)
FLOW_WAIT = 120.0  # a Metaflow run takes seconds to start on a loaded 2-core machine


def roots_in(workdir: Path) -> Roots:
    datastore = workdir / ".metaflow"
    datastore.mkdir(exist_ok=True)
    return Roots(datastore, datastore / "mf.cards")


def config(workdir: Path, grace: float = GRACE_SECONDS) -> Any:
    """Finished runs leave the deep watch at once, so a test can see them leave."""
    return make_config(roots_in(workdir), timing=WatchTiming(cold_step_ms=10, shape_step_ms=10,
                                                             settle_seconds=0.0, status_grace_seconds=grace))


async def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = await asyncio.to_thread(process.communicate, timeout=FLOW_WAIT * 2)
    return process.returncode, out


def only_run(workdir: Path, flow: str) -> str:
    return (workdir / ".metaflow" / flow / "latest_run").read_text().strip()


async def run_detail(client: Any, flow: str, run: str) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{flow}/{run}")
    assert response.status == 200
    detail: dict[str, Any] = await response.json()
    return detail


def statuses(detail: dict[str, Any]) -> dict[str, str]:
    return {f"{t['step']}/{t['task']}": t["status"] for t in detail["tasks"]}


def verdicts(workdir: Path, flow: str, run: str) -> list[Path]:
    return sorted((workdir / ".metaflow" / flow / run).glob("*/*/*.runtime"))


async def wait_for_run_status(ws: Any, flow: str, wanted: str) -> float:
    """Wait on the runs topic for the newest run of `flow` to reach `wanted`; when it did."""
    await subscribe(ws, f"runs/{flow}")
    await next_message(
        ws, lambda m: (m.get("type") == "runs" and bool(m["runs"]) and m["runs"][0]["status"] == wanted)
        or (m.get("type") == "run" and m["run"]["status"] == wanted),
        timeout=FLOW_WAIT,
    )
    return time.time()


async def wait_for_files(workdir: Path, names: list[str], process: subprocess.Popen[str]) -> None:
    """The flow touches these once its branches run (polled: they are not ours to watch)."""
    deadline = time.monotonic() + FLOW_WAIT
    while not all((workdir / name).exists() for name in names):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"the flow never started its branches: {names}"
        await asyncio.sleep(0.1)


def assert_killed_siblings(detail: dict[str, Any]) -> None:
    each = {k: v for k, v in statuses(detail).items() if k.startswith("each/")}
    assert sorted(each.values()) == ["failed", "killed", "killed"], statuses(detail)
    assert detail["run"]["status"] == "failed"
    assert detail["run"]["counts"] == {"succeeded": 1, "failed": 1, "killed": 2}
    killed = [t for t in detail["tasks"] if t["status"] == "killed"]
    assert all(t["finished"] is not None for t in killed)  # the verdict's time


# --- a branch raises, the runtime kills its siblings -----------------------------------------


async def test_killed_siblings_with_the_server_started_before(tmp_path: Path, start_app: Any) -> None:
    client = await start_app(config(tmp_path))
    ws = await client.ws_connect("/ws")
    flow = start_flow("killed_siblings_flow.py", tmp_path, "--max-workers", "4")
    try:
        await wait_for_run_status(ws, "KilledSiblingsFlow", "running")
        shown_at = await wait_for_run_status(ws, "KilledSiblingsFlow", "failed")
        code, out = await finished(flow)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert code != 0 and "KILLED BY ORCHESTRATOR" in out
    run = only_run(tmp_path, "KilledSiblingsFlow")
    written = verdicts(tmp_path, "KilledSiblingsFlow", run)
    assert len(written) == 4  # start, and each branch
    # Shown failed within a second of the last verdict (headroom for a loaded machine).
    last_verdict = max(path.stat().st_mtime for path in written)
    assert shown_at - last_verdict < 2.0, shown_at - last_verdict
    assert_killed_siblings(await run_detail(client, "KilledSiblingsFlow", run))
    following = local_source(client).following
    deadline = time.monotonic() + 30
    while any(key.run == run for key in following.followed):  # settle_seconds=0: it leaves at once
        assert time.monotonic() < deadline, "the failed run stayed in the deep watch"
        await asyncio.sleep(0.1)


async def test_killed_siblings_with_the_server_started_after(tmp_path: Path, start_app: Any) -> None:
    code, out = await finished(start_flow("killed_siblings_flow.py", tmp_path, "--max-workers", "4"))
    assert code != 0 and "KILLED BY ORCHESTRATOR" in out
    client = await start_app(config(tmp_path))
    run = only_run(tmp_path, "KilledSiblingsFlow")
    detail = await run_detail(client, "KilledSiblingsFlow", run)
    assert_killed_siblings(detail)
    assert not any(key.run == run for key in local_source(client).following.followed)
    # `card list` says what the API says, card by card.
    listed = {(r["step"], r["task"], r["card"]): (r["status"], r["run_status"], r["attempt"])
              for r in card_rows(config(tmp_path))}
    shown = {(t["step"], t["task"], c["name"]): (t["status"], "failed", c["attempt"])
             for t in detail["tasks"] for c in t["cards"]}
    assert listed == shown and len(listed) == 3


# --- @retry -----------------------------------------------------------------------------------


async def test_a_retried_task_shows_both_attempts_and_succeeds(tmp_path: Path, start_app: Any) -> None:
    client = await start_app(config(tmp_path))
    ws = await client.ws_connect("/ws")
    code, out = await finished(start_flow("retry_card_flow.py", tmp_path))
    assert code == 0, out
    await wait_for_run_status(ws, "RetryCardFlow", "succeeded")
    run = only_run(tmp_path, "RetryCardFlow")
    detail = await run_detail(client, "RetryCardFlow", run)
    [flaky] = [t for t in detail["tasks"] if t["step"] == "flaky"]
    assert flaky["status"] == "succeeded" and flaky["attempt"] == 1
    assert sorted(card["attempt"] for card in flaky["cards"]) == [0, 1]  # each card its own attempt
    for card in flaky["cards"]:
        path = f"/api/cards/RetryCardFlow/{run}/flaky/{flaky['task']}/{card['name']}"
        assert (await (await client.get(path)).json())["attempt"] == card["attempt"]
    # A server started afterwards reads the same from the scan.
    again = await start_app(config(tmp_path))
    assert await run_detail(again, "RetryCardFlow", run) == detail


# --- interrupted runs -------------------------------------------------------------------------


async def test_sigint_to_the_runtime_stops_the_run(tmp_path: Path, start_app: Any) -> None:
    """Ctrl-C reaching only the `run` process: the runtime kills every worker after 5 s."""
    client = await start_app(config(tmp_path))
    ws = await client.ws_connect("/ws")
    flow = start_flow("long_card_flow.py", tmp_path)
    try:
        await wait_for_files(tmp_path, ["started-1", "started-2"], flow)
        flow.send_signal(signal.SIGINT)
        await wait_for_run_status(ws, "LongCardFlow", "stopped")
        await finished(flow)
    finally:
        if flow.poll() is None:
            flow.kill()
    run = only_run(tmp_path, "LongCardFlow")
    detail = await run_detail(client, "LongCardFlow", run)
    each = {k: v for k, v in statuses(detail).items() if k.startswith("each/")}
    assert sorted(each.values()) == ["killed", "killed"], statuses(detail)
    assert detail["run"]["status"] == "stopped"


async def test_sigkill_to_the_runtime_never_leaves_the_run_running(
    tmp_path: Path, start_app: Any
) -> None:
    """The runtime killed with SIGKILL writes nothing more. Its workers die at their next print
    (their output pipe is gone), writing attempt_ok False but never a verdict. Failed once the
    run is quiet for the grace: 3 s, three times the pace of the workers' card writes."""
    client = await start_app(config(tmp_path, grace=3.0))
    ws = await client.ws_connect("/ws")
    flow = start_flow("long_card_flow.py", tmp_path)
    try:
        await wait_for_files(tmp_path, ["started-1", "started-2"], flow)
        flow.send_signal(signal.SIGKILL)
        await wait_for_run_status(ws, "LongCardFlow", "failed")
    finally:
        if flow.poll() is None:
            flow.kill()
        flow.communicate()
    run = only_run(tmp_path, "LongCardFlow")
    assert [p.parent.parent.name for p in verdicts(tmp_path, "LongCardFlow", run)] == ["start"]
    detail = await run_detail(client, "LongCardFlow", run)
    each = {k: v for k, v in statuses(detail).items() if k.startswith("each/")}
    assert sorted(each.values()) == ["failed", "failed"], statuses(detail)
