"""Reliability (issue 3, items 7 and 10): a client that stops reading is dropped without slowing
anyone or growing memory; SIGTERM closes sockets with GOING_AWAY and exits at once; a busy port
is one clean line, not a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from conftest import REPO, WAIT, free_port, make_config, next_message, subscribe

from cardserver.config import Limits, Roots
from cardserver.demo import markdown, progress, start_run
from cardserver.hub import Message, Subscriber
from cardserver.web.keys import HUB

UPDATES = 300
BLOB = 64 * 1024  # each update carries the card's full state: ~64 KiB on the wire


# --- a client that never reads ------------------------------------------------------------------


def client_frame(text: str) -> bytes:
    """One masked text frame, as a browser sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x81, 0x80 | length]) if length < 126 else (
        bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def stalled_client(port: int, topic: str) -> socket.socket:
    """Upgrade, subscribe, then never read again: the server's sends back up into its buffers."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window fills fast
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: read nothing past the handshake
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), WAIT)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    await loop.sock_sendall(sock, client_frame(json.dumps({"op": "subscribe", "topic": topic})))
    return sock


async def read_until_dropped(sock: socket.socket) -> None:
    """Drain what the kernel buffered for us; returns once the server has cut us off."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 1 << 16):
            pass
    except ConnectionError:
        pass


class HubSpy:
    """Watches the hub from the outside: who subscribed, who left, each mailbox's peak size."""

    def __init__(self, hub: Any) -> None:
        self.subscribed: asyncio.Queue[Subscriber] = asyncio.Queue()
        self.left: dict[Subscriber, asyncio.Event] = {}
        self.peak: dict[Subscriber, int] = {}
        subscribe_, leave = hub.subscribe, hub.leave

        def spy_subscribe(subscriber: Subscriber, topic: str, initial: Any) -> None:
            if subscriber not in self.left:
                self.watch(subscriber)
            subscribe_(subscriber, topic, initial)
            self.subscribed.put_nowait(subscriber)

        def spy_leave(subscriber: Subscriber) -> None:
            leave(subscriber)
            if subscriber in self.left:
                self.left[subscriber].set()

        hub.subscribe, hub.leave = spy_subscribe, spy_leave

    def watch(self, subscriber: Subscriber) -> None:
        self.left[subscriber] = asyncio.Event()
        self.peak[subscriber] = subscriber.mailbox.pending_bytes
        mailbox = subscriber.mailbox
        put = mailbox.put

        def spy_put(message: Message) -> None:
            put(message)
            self.peak[subscriber] = max(self.peak[subscriber], mailbox.pending_bytes)

        mailbox.put = spy_put  # type: ignore[method-assign]


async def test_stalled_client_is_dropped_while_others_get_every_update(
    roots: Roots, start_app: Any
) -> None:
    limits = Limits(stall_seconds=1.0, mailbox_bytes=512 * 1024)
    run = start_run(roots.datastore, roots.cards, flow="BusyFlow")
    card = run.start_task("train").add_card(
        components=[markdown("log", "x" * BLOB), progress("p", 0, UPDATES)]
    )
    client = await start_app(make_config(roots, limits=limits))
    spy = HubSpy(client.app[HUB])
    topic = f"card/{card.key}"

    sock = await stalled_client(client.port, topic)
    try:
        stalled = await asyncio.wait_for(spy.subscribed.get(), WAIT)
        async with client.ws_connect("/ws") as reader:
            await subscribe(reader, topic)
            await asyncio.wait_for(spy.subscribed.get(), WAIT)
            await next_message(reader, lambda m: m.get("type") == "card")
            slowest = 0.0
            for value in range(1, UPDATES + 1):
                started = time.monotonic()
                await asyncio.to_thread(card.update, {"p": {"value": value}})
                got = await next_message(reader, lambda m, value=value: m.get("type") == "update"
                                         and m["data"]["p"]["value"] >= value)
                slowest = max(slowest, time.monotonic() - started)
                assert got["data"]["p"]["value"] == value  # in lockstep: nothing skipped
            assert not reader.closed
            # the reader never waited on the stalled client (that would take stall_seconds)
            assert slowest < limits.stall_seconds, slowest
            await asyncio.wait_for(spy.left[stalled].wait(), WAIT)
        assert stalled.topics == set()
        assert spy.peak[stalled] <= limits.mailbox_bytes, spy.peak[stalled]
        await asyncio.wait_for(read_until_dropped(sock), WAIT)
    finally:
        sock.close()


# --- shutdown -------------------------------------------------------------------------------------


async def test_sigterm_closes_sockets_going_away_and_exits_within_a_second(
    tmp_path: Path, server_process: Any
) -> None:
    datastore = tmp_path / ".metaflow"
    run = start_run(datastore, flow="ShutdownFlow")
    run.start_task("start").add_card(components=[markdown("m", "# hi")])
    server = server_process(["server", "--root", str(datastore)], cwd=tmp_path)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{server.url}ws") as ws:
        assert (await next_message(ws))["type"] == "hello"
        await subscribe(ws, "flows")
        await next_message(ws, lambda m: m.get("type") == "flows")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        closing = await asyncio.wait_for(ws.receive(), WAIT)
        assert closing.type is aiohttp.WSMsgType.CLOSE, closing
        assert closing.data == aiohttp.WSCloseCode.GOING_AWAY
        code = await asyncio.to_thread(server.process.wait, WAIT)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert code == 0  # a clean exit, not death by the signal (-15)


# --- port in use -------------------------------------------------------------------------------


def test_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    datastore = tmp_path / ".metaflow"
    datastore.mkdir()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "server", "--root", str(datastore),
             "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"card: port {port}"), lines[0]
    assert "--port" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "serving" not in result.stdout


async def test_slow_request_head_is_cut_off(roots: Any) -> None:
    """Slowloris: a connection that never finishes its request head is closed, while a
    keep-alive connection that keeps asking outlives the same deadline."""
    from cardserver.web.server import serve

    config = replace(make_config(roots, limits=Limits(header_timeout_seconds=0.5)), port=free_port())
    stop = asyncio.Event()
    announced = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve(config, announced.set_result, stop=stop))
    try:
        await asyncio.wait_for(announced, 30)
        reader, writer = await asyncio.open_connection("127.0.0.1", config.port)
        request = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request)
        assert await read_response(reader) == 200
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", config.port)
        slow_writer.write(b"GET / HTTP/1.1\r\nHost: 127.0")
        started = asyncio.get_running_loop().time()
        cut_off = asyncio.ensure_future(asyncio.wait_for(slow_reader.read(100), 5))
        while not cut_off.done():  # meanwhile the well-behaved connection asks and is answered
            writer.write(request)
            assert await read_response(reader) == 200
            await asyncio.sleep(0.1)
        assert await cut_off == b""  # closed, no answer
        assert asyncio.get_running_loop().time() - started < 2
        writer.write(request)  # the well-behaved connection is still open
        assert await read_response(reader) == 200
        writer.close()
        slow_writer.close()
    finally:
        stop.set()
        await serving


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(": ") for line in lines)
                  if k.lower() == "content-length")
    await asyncio.wait_for(reader.readexactly(length), 5)
    return int(lines[0].split()[1])
