"""Shared fixtures: datastores, in-process apps, websocket listeners, server processes, Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from s3fixtures import (  # noqa: F401  (fixtures for the S3 tests)
    s3_card_run,
    s3_credentials,
    s3_failed_run,
    s3_live_run,
    s3_server,
)

from bench.common import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    Jupyter,
    free_port,
    metaflow_env,
    start_jupyter,
    stop_process,
)
from bench.manycards import make_run
from cardserver.config import Config, Roots, WatchTiming
from cardserver.localsource import LocalSource
from cardserver.watcher import Watcher
from cardserver.web.app import create_app
from cardserver.web.keys import READY, SOURCE

if TYPE_CHECKING:
    from taskflows import Ran

REPO = Path(__file__).resolve().parent.parent
__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "Jupyter", "free_port"]  # re-exported for the tests
WAIT = 10.0  # seconds any single expected event may take before a test fails


# --- datastores -------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    datastore = tmp_path / ".metaflow"
    datastore.mkdir()
    return Roots(datastore, datastore / "mf.cards")


@pytest.fixture(scope="session")
def metaflow_cards(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """A finished real Metaflow run: `start`'s default card, then four blank cards (Markdown,
    Table, VegaChart), each Metaflow's ~1.1 MB page with its bundle inline."""
    workdir = tmp_path_factory.mktemp("metaflow-cards")
    make_run(workdir, branches=4, timeout=600)
    datastore = workdir / ".metaflow"
    return Roots(datastore, datastore / "mf.cards")


def make_config(roots: Roots, **overrides: Any) -> Config:
    """A test config: fast cold step so tests that start quiet do not wait long."""
    overrides.setdefault("timing", WatchTiming(cold_step_ms=10, shape_step_ms=10))
    return Config(roots=roots, port=0, **overrides)


# --- in-process server ------------------------------------------------------------------------


@pytest.fixture
def start_app(aiohttp_client: Any) -> Callable[..., Any]:
    """`await start_app(config)` -> a TestClient whose pipeline has finished its first scan and
    watches every live run (so a test's writes cannot race the start-up catch-up read)."""

    async def start(config: Config, first_scan: Any = None, port: int | None = None) -> TestClient:
        kwargs = {"server_kwargs": {"port": port}} if port else {}
        client: TestClient = await aiohttp_client(create_app(config, first_scan), **kwargs)
        await asyncio.wait_for(client.app[READY].wait(), WAIT)
        await asyncio.wait_for(client.app[SOURCE].caught_up.wait(), WAIT)  # live runs watched and re-read
        return client

    return start


def local_source(client: TestClient) -> LocalSource:
    """The app's source, as the local disk source it is in these tests."""
    source = client.app[SOURCE]
    assert isinstance(source, LocalSource)
    return source


async def next_message(
    ws: aiohttp.ClientWebSocketResponse,
    predicate: Callable[[dict[str, Any]], bool] = lambda m: True,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """The next message matching `predicate`, read straight off the socket (no sleeps)."""

    async def read() -> dict[str, Any]:
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket ended while waiting: {msg.type} {msg.data!r}")
            data: dict[str, Any] = json.loads(msg.data)
            if predicate(data):
                return data

    return await asyncio.wait_for(read(), timeout)


async def all_of(ws: aiohttp.ClientWebSocketResponse, *predicates: Callable[[dict[str, Any]], bool],
                 timeout: float = WAIT) -> list[dict[str, Any]]:
    """Until a message matching each predicate came, in any order: those messages, in order."""
    left = list(predicates)
    found = []
    while left:
        message = await next_message(ws, lambda m, waiting=tuple(left): any(p(m) for p in waiting), timeout)
        found.append(message)
        left = [p for p in left if not p(message)]
    return found


async def subscribe(ws: aiohttp.ClientWebSocketResponse, topic: str, **extra: Any) -> None:
    await ws.send_json({"op": "subscribe", "topic": topic, **extra})


def count_watches(watcher: Watcher, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The folders of every OS watch the watcher opens from now on (each costs its whole tree)."""
    opened: list[list[str]] = []
    real = watcher._rust_notify

    def counted(names: list[str], recursive: bool) -> Any:
        opened.append(names)
        return real(names, recursive)

    monkeypatch.setattr(watcher, "_rust_notify", counted)
    return opened


# --- server processes (for real Metaflow and the browser) ------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    port: int
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    startup: list[str] = field(default_factory=list)  # what it printed up to its URL

    def stop(self) -> None:
        stop_process(self.process)


def launch(args: list[str], cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 30) -> ServerProcess:
    """Run `card <args>` from the checkout and wait for its one-line URL announcement."""
    return launch_command([sys.executable, str(REPO / "cli.py"), *args], cwd,
                          {**os.environ, **(env or {})}, timeout)


def launch_command(command: list[str], cwd: Path, env: dict[str, str],
                   timeout: float = 30) -> ServerProcess:
    """Run a `card ...` command line on a free port and wait for its URL announcement."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            process.kill()
            raise AssertionError(f"server did not announce a URL: {seen}") from None
        seen.append(line)
        if " at http" in line:
            url = line.rsplit(" at ", 1)[1].strip()
            return ServerProcess(process, url, port, lines, seen)


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> ServerProcess:
        server = launch(args, cwd, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- real Metaflow ----------------------------------------------------------------------------

FLOWS = REPO / "tests" / "flows"


def start_flow(name: str, workdir: Path, *args: str) -> subprocess.Popen[str]:
    """Start `python tests/flows/<name> run` with the datastore in `workdir/.metaflow`."""
    flow = workdir / name
    shutil.copy(FLOWS / name, flow)
    shutil.copy(FLOWS / "flowhelp.py", workdir)  # what the flows share
    return subprocess.Popen(
        [sys.executable, str(flow), "--quiet", "run", *args],
        cwd=workdir, env=metaflow_env(workdir, "tester"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="session")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """tests/taskflows.py's two finished runs, made once: the task view's API and browser tests
    only read them."""
    from taskflows import run_task_flows  # it imports this module

    return run_task_flows(tmp_path_factory.mktemp("taskflows"))


# --- a real Jupyter Server with jupyter-server-proxy ------------------------------------------


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """One Jupyter Server (token auth on, jupyter-server-proxy) for the whole session."""
    server = start_jupyter(tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        server.stop()


# --- Chromium ---------------------------------------------------------------------------------


@asynccontextmanager
async def chromium(*loopback_names: str) -> AsyncIterator[Any]:
    """Chromium; each of `loopback_names` (a proxy's public name) resolves to 127.0.0.1."""
    from playwright.async_api import async_playwright

    rules = [f"--host-resolver-rules={', '.join(f'MAP {n} 127.0.0.1' for n in loopback_names)}"]
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, *(rules if loopback_names else [])])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def live_flow_moves_in_place(frame: Any, workdir: Path, wait_ms: int) -> None:
    """tests/flows/live_card_flow.py's card, shown in `frame`: it starts, is let go, and its
    later steps arrive in the same document (no reload)."""
    await frame.wait_for_function("document.body.innerText.includes('step 0')", timeout=wait_ms)
    await frame.evaluate("window.__marker = 'same page'")
    (workdir / "go").touch()
    await frame.wait_for_function("document.body.innerText.includes('step 2')", timeout=wait_ms)
    assert await frame.evaluate("window.__marker") == "same page"
