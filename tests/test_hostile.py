"""Reliability, round two (issue 16): no file, frame or client can stop the server.

Each test is one finding of the red-team pass and failed on the code before the fix. Those where
the old server blocked its own event loop run a real `card server` process, so the test itself
cannot hang with it: every request has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import WAIT, ServerProcess, local_source, make_config, next_message, subscribe

from cardserver.config import Limits, Roots
from cardserver.demo import DemoCard, markdown, progress, start_run
from cardserver.layout import CardFileKind, CardKey, card_path

QUICK = aiohttp.ClientTimeout(total=3)
SECRET = "s3cr3t-outside-the-root"

StartServer = Callable[..., ServerProcess]


def live_card(roots: Roots, flow: str = "HostileFlow") -> DemoCard:
    run = start_run(roots.datastore, roots.cards, flow=flow)
    card = run.start_task("train").add_card(components=[markdown("m", "# ok"), progress("p", 0, 100)])
    card.update({"p": {"value": 0}})
    return card


def serve(server_process: StartServer, roots: Roots) -> ServerProcess:
    return server_process(["server", "--root", str(roots.datastore)], roots.datastore.parent)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=QUICK) as response:
        assert response.status == 200, (url, response.status)
        return await response.json()


async def wait_update(ws: aiohttp.ClientWebSocketResponse, card: DemoCard, value: int) -> None:
    topic = f"card/{card.key}"
    await next_message(ws, lambda m: m.get("topic") == topic and m.get("type") == "update"
                       and m["data"]["p"]["value"] == value)


async def answers_promptly(session: aiohttp.ClientSession, base: str, times: int = 5) -> None:
    for _ in range(times):
        status = await get_json(session, f"{base}api/status")
        assert status["version"]


def exits_within(process: Any, seconds: float) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=seconds)
    return time.monotonic() - started


# --- 1. FIFOs ----------------------------------------------------------------------------------


async def test_fifo_status_file_moved_into_a_flow_blocks_nothing(
    roots: Roots, tmp_path: Path, server_process: StartServer
) -> None:
    """A run whose `_meta/_self.json` is a FIFO, moved into a flow: the server reads on."""
    card = live_card(roots)
    server = serve(server_process, roots)
    staging = tmp_path / "staging" / "666"
    (staging / "_meta").mkdir(parents=True)
    os.mkfifo(staging / "_meta" / "_self.json")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}ws", timeout=aiohttp.ClientWSTimeout(ws_close=3)) as ws:
            await subscribe(ws, "runs/HostileFlow")
            await next_message(ws, lambda m: m.get("type") == "runs")
            os.rename(staging, roots.datastore / "HostileFlow" / "666")
            later = start_run(roots.datastore, roots.cards, flow="HostileFlow")  # seen after it
            await next_message(ws, lambda m: m.get("type") == "run" and m["run"]["run"] == later.run)
            await subscribe(ws, f"card/{card.key}")
            card.update({"p": {"value": 7}})
            await wait_update(ws, card, 7)
        await answers_promptly(session, server.url)
    assert exits_within(server.process, 3) < 3


async def test_fifo_at_start_up_does_not_stop_the_first_read(
    roots: Roots, server_process: StartServer
) -> None:
    card = live_card(roots)
    meta = roots.datastore / "HostileFlow" / "777" / "_meta"
    meta.mkdir(parents=True)
    os.mkfifo(meta / "_self.json")
    server = serve(server_process, roots)
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + WAIT
        while not (await get_json(session, f"{server.url}api/status"))["ready"]:
            assert time.monotonic() < deadline, "the first read never finished"
            await asyncio.sleep(0.05)  # polling the public status: there is no event to await
        found = await get_json(session, f"{server.url}api/cards/{card.key}")
        assert found["name"] == card.key.name


async def test_fifo_card_pages_pin_no_worker_and_sigterm_exits(
    roots: Roots, server_process: StartServer
) -> None:
    """A FIFO named like a card, asked for many times: real card pages are still served, and
    SIGTERM still ends the server at once."""
    card = live_card(roots)
    server = serve(server_process, roots)
    fifo = CardKey(card.key.task, "blank-f1f0")
    async with aiohttp.ClientSession() as session:
        await answers_promptly(session, server.url, 1)
        async with session.ws_connect(f"{server.url}ws", timeout=aiohttp.ClientWSTimeout(ws_close=3)) as ws:
            await subscribe(ws, f"card/{card.key}")
            os.mkfifo(roots.cards / card_path(fifo, CardFileKind.HTML, False))
            for value in (3, 4):  # changes after it, in later batches: the FIFO's event is handled
                card.update({"p": {"value": value}})
                await wait_update(ws, card, value)

        async def ask_fifo() -> None:
            try:
                async with session.get(f"{server.url}card-html/{fifo}", timeout=QUICK) as response:
                    assert response.status == 404
            except TimeoutError:
                pass  # what the old server did: the assertion below says what it cost

        await asyncio.gather(*(ask_fifo() for _ in range(12)))
        async with session.get(f"{server.url}card-html/{card.key}", timeout=QUICK) as response:
            assert response.status == 200
            assert "# ok" in await response.text()
    assert exits_within(server.process, 3) < 3


def test_reads_refuse_what_is_not_a_regular_file(roots: Roots) -> None:
    """The one read function: a FIFO, a folder and a symlink are refused without blocking."""
    from cardserver.disk import Problem, read_regular

    root = roots.datastore
    os.mkfifo(root / "fifo.json")
    (root / "folder.json").mkdir()
    (root / "real.json").write_text("{}")
    os.symlink(root / "real.json", root / "link.json")
    reasons = {name: read_regular(root / name, 100, root) for name in
               ("fifo.json", "folder.json", "link.json", "real.json")}
    assert reasons["real.json"] == b"{}"
    for name in ("fifo.json", "folder.json", "link.json"):
        assert isinstance(reasons[name], Problem), name


# --- 2. deep JSON, and the supervisor ------------------------------------------------------------


def deep_update(card: DemoCard, levels: int) -> None:
    nested = "[" * levels + "]" * levels
    card.path_data.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({"reload_token": card.token, "created_on": time.time()})[:-1]
    card.path_data.write_text(f'{head}, "data": {{"p": {{"id": "p", "value": 1, "deep": {nested}}}}}}}')


@pytest.mark.parametrize("levels", [967, 975])
async def test_deep_json_update_does_not_end_live_updates(
    roots: Roots, start_app: Any, levels: int
) -> None:
    good = live_card(roots)
    deep = good_run_card(roots)
    client = await start_app(make_config(roots))
    # The deep card's follower never parses what it gets (Python's json would not manage it).
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as deep_ws:
        await subscribe(ws, f"card/{good.key}")
        await subscribe(deep_ws, f"card/{deep.key}")
        while '"type":"card"' not in await asyncio.wait_for(deep_ws.receive_str(), WAIT):
            pass  # its hello first
        for _ in range(2):  # the second failure ended the watch task
            deep_update(deep, levels)
            good.update({"p": {"value": 1}})
            good.update({"p": {"value": 2}})
            await wait_update(ws, good, 2)
        response = await client.get(f"/api/cards/{deep.key}")
        assert response.status in (200, 404), response.status
        later = start_run(roots.datastore, roots.cards, flow="LaterFlow")
        await subscribe(ws, "flows")
        await next_message(ws, lambda m: m.get("type") == "flows"
                           and "LaterFlow" in [f["flow"] for f in m["flows"]])
        assert later.flow == "LaterFlow"
    status = await (await client.get("/api/status")).json()
    assert status["watch"] == {"ok": True, "restarts": 0, "problem": None}


def good_run_card(roots: Roots) -> DemoCard:
    run = start_run(roots.datastore, roots.cards, flow="DeepFlow")
    return run.start_task("train").add_card(components=[progress("p", 0, 100)])


async def test_a_dead_watch_is_said_and_restarted(roots: Roots, start_app: Any) -> None:
    card = live_card(roots)
    client = await start_app(make_config(roots))
    source = local_source(client)
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, "flows")
        await subscribe(ws, f"card/{card.key}")
        await next_message(ws, lambda m: m.get("type") == "flows")
        assert source._watch is not None
        source._watch.cancel()  # however the watch task ends
        said = await next_message(ws, lambda m: m.get("type") == "health")
        assert said["ok"] is False and "restarting" in said["problem"]
        status = await (await client.get("/api/status")).json()
        assert status["watch"]["restarts"] == 1
        await next_message(ws, lambda m: m.get("type") == "health" and m["ok"] is True)
        card.update({"p": {"value": 5}})
        await wait_update(ws, card, 5)
    status = await (await client.get("/api/status")).json()
    assert status["watch"] == {"ok": True, "restarts": 1, "problem": None}


# --- 4. the request-head deadline on keep-alive connections --------------------------------------


async def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) off a raw socket."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT)
    return head


async def closed_by_server(sock: socket.socket) -> float:
    """Seconds until the server closes the connection."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        while await loop.sock_recv(sock, 4096):
            pass
    except ConnectionError:
        pass
    return time.monotonic() - started


async def open_and_ask(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert (await read_response(sock)).startswith(b"HTTP/1.1 200")
    return sock


async def test_second_request_head_has_the_same_deadline(roots: Roots, start_app: Any) -> None:
    client = await start_app(make_config(roots, limits=Limits(header_timeout_seconds=1.0)))
    loop = asyncio.get_running_loop()
    sock = await open_and_ask(client.port)
    try:
        second = f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n"  # and no end
        await loop.sock_sendall(sock, second.encode())

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.2)
                await loop.sock_sendall(sock, b"X-Slow: 1\r\n")

        trickling = asyncio.create_task(trickle())
        try:
            assert await asyncio.wait_for(closed_by_server(sock), WAIT) < 5
        finally:
            trickling.cancel()
    finally:
        sock.close()


async def test_idle_keep_alive_connection_is_closed(roots: Roots, start_app: Any) -> None:
    client = await start_app(make_config(roots, limits=Limits(header_timeout_seconds=1.0)))
    sock = await open_and_ask(client.port)
    try:
        assert await asyncio.wait_for(closed_by_server(sock), WAIT) < 5
    finally:
        sock.close()


# --- 5. symlinks that leave the root ------------------------------------------------------------


def secret_update(path: Path, card: DemoCard) -> None:
    path.write_text(json.dumps({"reload_token": card.token, "created_on": time.time() + 60,
                                "data": {"m": {"type": "markdown", "id": "m", "source": SECRET}}}))


async def test_symlinked_runtime_folder_is_not_read(roots: Roots, tmp_path: Path, start_app: Any) -> None:
    card = live_card(roots)
    outside = tmp_path / "outside-runtime"
    outside.mkdir()
    secret_update(outside / card.path_data.name, card)
    runtime = card.path_data.parent
    for name in os.listdir(runtime):
        os.unlink(runtime / name)
    runtime.rmdir()
    os.symlink(outside, runtime, target_is_directory=True)
    client = await start_app(make_config(roots))
    body = await (await client.get(f"/api/cards/{card.key}")).text()
    assert SECRET not in body


async def test_symlinked_data_file_is_not_read(roots: Roots, tmp_path: Path, start_app: Any) -> None:
    card = live_card(roots)
    client = await start_app(make_config(roots))
    outside = tmp_path / "outside.data.json"
    secret_update(outside, card)
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{card.key}")
        os.unlink(card.path_data)
        os.symlink(outside, card.path_data)
        card.path_html.touch()  # a change after it: the watcher has handled the symlink by then
        await next_message(ws, lambda m: m.get("type") == "card" and m.get("exists") is True)
    body = await (await client.get(f"/api/cards/{card.key}")).text()
    assert SECRET not in body


# --- 6. event loop stalls ------------------------------------------------------------------------


def big_update(card: DemoCard, rows: int, value: int) -> bytes:
    table = [[i, f"name-{i}", i * 1.5, "x" * 20] for i in range(rows)]
    doc = {"reload_token": card.token, "created_on": time.time(),
           "data": {"p": {"type": "progressBar", "id": "p", "value": value},
                    "t": {"type": "table", "id": "t", "data": table}}}
    return json.dumps(doc).encode()


async def status_latencies(session: aiohttp.ClientSession, base: str, until: asyncio.Event) -> list[float]:
    took = []
    while not until.is_set():
        started = time.monotonic()
        await get_json(session, f"{base}api/status")
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return took


async def test_big_data_updates_do_not_stall_the_server(
    roots: Roots, server_process: StartServer
) -> None:
    """A 12 MB data update rewritten twice a second: /api/status stays prompt (it took 644 ms
    at p99 when the server parsed and encoded each one on its event loop)."""
    from cardserver.demo import write_atomic

    card = live_card(roots)
    server = serve(server_process, roots)
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{server.url}ws", max_msg_size=0
    ) as ws:
        await subscribe(ws, f"card/{card.key}")
        done = asyncio.Event()
        measuring = asyncio.create_task(status_latencies(session, server.url, done))
        base = big_update(card, 210_000, 0)  # made before measuring: it holds this process's GIL
        for value in range(1, 9):
            raw = base.replace(b'"value": 0}', b'"value": %d}' % value, 1)
            await asyncio.to_thread(write_atomic, card.path_data, raw)
            await wait_update(ws, card, value)
            await asyncio.sleep(0.5)  # the pace of the finding: twice a second
        done.set()
        took = sorted(await measuring)
    p99 = took[int(len(took) * 0.99) - 1]
    print(f"/api/status p99 {p99 * 1000:.0f} ms over {len(took)} requests")
    assert len(took) > 20 and p99 < 0.25, (len(took), p99, took[-5:])


async def test_a_broken_big_data_file_is_parsed_once_per_version(
    roots: Roots, start_app: Any
) -> None:
    card = live_card(roots)
    raw = big_update(card, 260_000, 9)
    card.path_data.write_bytes(raw[: len(raw) - 100])  # truncated, and stays so
    client = await start_app(make_config(roots))
    started = time.monotonic()
    for _ in range(30):
        response = await client.get(f"/api/cards/{card.key}")
        assert response.status == 200
    assert time.monotonic() - started < 6  # each GET parsed 15 MB again before
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        await subscribe(ws, f"card/{card.key}")
        card.path_data.write_bytes(raw)  # repaired: a new version is read
        await wait_update(ws, card, 9)


async def test_a_symlinked_tree_in_a_live_run_is_not_walked(
    roots: Roots, tmp_path: Path, start_app: Any
) -> None:
    card = live_card(roots)
    tree = tmp_path / "tree"
    for a in range(100):
        for b in range(200):
            (tree / str(a) / str(b)).mkdir(parents=True)
    client = await start_app(make_config(roots))
    worst = 0.0
    ticking = True

    async def ticker() -> None:
        nonlocal worst
        last = time.monotonic()
        while ticking:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            worst, last = max(worst, now - last), now

    ticks = asyncio.create_task(ticker())
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{card.key}")
        os.symlink(tree, card.path_data.parent.parent / "linked", target_is_directory=True)
        card.update({"p": {"value": 4}})
        await wait_update(ws, card, 4)
        await asyncio.sleep(1.5)  # a window to measure in: the symlink's event may come later
    ticking = False
    await ticks
    print(f"worst loop stall {worst * 1000:.0f} ms")
    assert worst < 0.2, worst


# --- 7. hostile metadata -------------------------------------------------------------------------


async def test_hostile_run_metadata_is_bounded(roots: Roots, start_app: Any) -> None:
    live_card(roots)
    long_user = start_run(roots.datastore, roots.cards, flow="HostileFlow", user="u" * 30_000)
    future = start_run(roots.datastore, roots.cards, flow="HostileFlow", ts_ms=10**17)
    client = await start_app(make_config(roots))
    runs = (await (await client.get("/api/flows/HostileFlow/runs")).json())["runs"]
    by_id = {r["run"]: r for r in runs}
    assert len(by_id[long_user.run]["user"]) <= 100
    assert by_id[future.run]["started"] is None or by_id[future.run]["started"] <= time.time() + 86_400
    assert runs[0]["run"] != future.run  # the newest run is not the one from the future


@pytest.mark.timeout(120)
async def test_viewer_survives_hostile_metadata_and_shows_watch_health(
    roots: Roots, start_app: Any, browser: Any
) -> None:
    start_run(roots.datastore, roots.cards, flow="HostileFlow", ts_ms=10**17)  # from the future
    run = start_run(roots.datastore, roots.cards, flow="HostileFlow", user="u" * 30_000)
    run.start_task("train").add_card(components=[markdown("m", "# hostile")])
    client = await start_app(make_config(roots))
    page = await browser.new_page(viewport={"width": 1200, "height": 800})
    await page.goto(str(client.make_url("/")))
    await page.wait_for_selector("#card-list .row", timeout=20_000)
    await page.wait_for_function("(run) => document.querySelector('#run-summary').textContent"
                                 ".includes(run)", arg=run.run, timeout=20_000)
    texts = await page.evaluate("() => [document.body.innerText,"
                                " ...[...document.querySelectorAll('option')].map(o => o.textContent)]")
    assert not [t for t in texts if "Invalid Date" in t]
    summary = await page.locator("#run-summary").bounding_box()
    assert summary is not None and summary["height"] < 150, summary
    row = await page.locator("#card-list .row >> nth=0").bounding_box()
    assert row is not None
    hit = await page.evaluate("([x, y]) => !!document.elementFromPoint(x, y)?.closest('#card-list .row')",
                              [row["x"] + row["width"] / 2, row["y"] + row["height"] / 2])
    assert hit, "the card list is covered"
    assert not await page.locator("#watch-health").is_visible()
    source = local_source(client)
    assert source._watch is not None
    source._watch.cancel()
    await page.wait_for_selector("#watch-health", state="visible", timeout=20_000)
    assert "restarting" in await page.locator("#watch-health").inner_text()
    await page.wait_for_selector("#watch-health", state="hidden", timeout=20_000)


async def test_a_session_cookie_dies_with_the_server_that_set_it(
    roots: Roots, start_app: Any
) -> None:
    """Another local server on this host gets our cookie (cookies ignore ports): what it can
    replay is worth nothing once this server stops."""
    live_card(roots)
    first = await start_app(make_config(roots, token="t0ken"))
    response = await first.get("/?token=t0ken", allow_redirects=False)
    cookie = next(iter(response.cookies.values()))
    headers = {"Cookie": f"{cookie.key}={cookie.value}"}
    assert (await first.get("/api/flows", headers=headers)).status == 200
    second = await start_app(make_config(roots, token="t0ken"))
    assert (await second.get("/api/flows", headers=headers)).status == 403
    assert (await second.get("/api/flows", headers={"Authorization": "Bearer t0ken"})).status == 200
