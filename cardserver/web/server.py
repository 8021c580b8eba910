"""Running the app on a port until told to stop: binding, the header deadline, shutdown."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

from aiohttp import web

from ..config import Config, ConfigError
from ..prescan import Prescan
from .app import create_app
from .keys import SEEN_TRANSPORTS

SHUTDOWN_SECONDS = 0.5
# glibc's mallopt: blocks from this size up are mapped apart, and unmapped as soon as freed.
M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 1024 * 1024
EXIT_SECONDS = 1.5  # after SIGTERM or SIGINT, the process is gone by then at the latest


class HeaderDeadline:
    """Wraps aiohttp's protocol factory: a connection that has not sent a complete request
    head within `seconds` is closed (aiohttp has no header timeout: slowloris would hold
    sockets forever). The security middleware marks transports that got that far."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], seconds: float,
                 seen: weakref.WeakSet[asyncio.BaseTransport]) -> None:
        self.factory = factory
        self.seconds = seconds
        self.seen = seen

    def __call__(self) -> asyncio.Protocol:
        protocol = self.factory()  # called as the connection is accepted
        asyncio.get_running_loop().call_later(self.seconds, self.expire, protocol)
        return protocol

    def expire(self, protocol: asyncio.Protocol) -> None:
        transport = getattr(protocol, "transport", None)
        if transport is not None and transport not in self.seen and not transport.is_closing():
            transport.close()


async def serve(
    config: Config,
    announce: Callable[[str], None],
    side_job: Callable[[], Coroutine[Any, Any, None]] | None = None,
    stop: asyncio.Event | None = None,
    first_scan: Prescan | None = None,
) -> None:
    """Serve until `stop` is set (default: SIGINT/SIGTERM). Port in use -> ConfigError."""
    return_big_blocks()
    app = create_app(config, first_scan)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS,
                           access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    assert runner.server is not None  # set by setup()
    factory = HeaderDeadline(runner.server, config.limits.header_timeout_seconds,
                             app[SEEN_TRANSPORTS])
    try:
        listener = await loop.create_server(factory, config.host, config.port, reuse_address=True)
    except OSError as error:
        await runner.cleanup()
        raise ConfigError(port_message(config, error)) from None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping, stop)
    side = asyncio.create_task(side_job()) if side_job else None
    announce(config.url)
    try:
        await stop.wait()
    finally:
        if side is not None:
            side.cancel()
            with suppress(asyncio.CancelledError):
                await side
        listener.close()
        await runner.cleanup()


def return_big_blocks() -> None:
    """A card page's buffers (MBs each) go back to the system once freed. glibc raises its mmap
    threshold to each mapped block freed, up to 32 MiB: after a few big cards, their buffers
    came from the heap and stayed there when freed (bench/cachemem.py: +271 MB held for
    caches of 84). A fixed threshold also stops that rise. Elsewhere: nothing to do."""
    with suppress(OSError, AttributeError, TypeError):  # no libc to load, or one without mallopt
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def stopping(stop: asyncio.Event) -> None:
    """A signal: stop serving, and leave within `EXIT_SECONDS` whatever a worker thread is
    doing (Python waits for every thread at exit, and a thread may wait on a disk that hangs)."""
    stop.set()
    threading.Thread(target=exit_later, name="cardserver-exit", daemon=True).start()


def exit_later() -> None:
    time.sleep(EXIT_SECONDS)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(0)


def port_message(config: Config, error: OSError) -> str:
    if error.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
        return (f"port {config.port} on {config.host} is already in use: "
                "stop the other server or pick another with --port")
    return f"cannot listen on {config.host}:{config.port}: {error.strerror or error}"
