"""A helper process that parses big data updates, so the server's own process never holds the
GIL for the hundreds of milliseconds a 10 MB JSON document takes (json releases it nowhere,
and a thread would stall the event loop just the same).

The helper gets the file's bytes and gives back the token, the time and each component as JSON
text (`marshal`: strings cross in a few milliseconds). It is started on the first big update,
from a fork server (the server has threads, so it must not fork itself), and stopped with the
server. A parse that takes too long is abandoned and the helper replaced.
"""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import threading
import time
from multiprocessing.pool import Pool
from typing import Any

from .events import DataUpdate, Encoded

log = logging.getLogger("cardserver")

BIG_UPDATE = 512 * 1024  # bytes: ~15 ms of parsing and encoding; above this, the helper does it
PARSE_SECONDS = 20.0  # the 16 MB cap parses in well under a second: this is a hang

_lock = threading.Lock()
_pool: Pool | None = None


def _helper() -> Pool:
    global _pool
    with _lock:
        if _pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            _pool = context.Pool(1)
        return _pool


def parse_elsewhere(raw: bytes) -> DataUpdate | str:
    """The data update in `raw`, parsed by the helper; or why not."""
    try:
        pool = _helper()
        pending = pool.apply_async(_parse, (raw,))
        deadline = time.monotonic() + PARSE_SECONDS
        while not pending.ready():  # in short waits: a stopped helper never answers
            if _pool is not pool:
                return "not parsed: the helper was stopped"
            if time.monotonic() > deadline:
                stop()
                return f"took over {PARSE_SECONDS:.0f} s to parse"
            pending.wait(0.1)
        wire = pending.get()
    except (OSError, ValueError, RuntimeError) as error:  # the helper died or could not start
        stop()
        return f"could not be parsed ({error})"
    if isinstance(wire, str):
        return wire
    token, created_on, parts = marshal.loads(wire)
    return DataUpdate(token, created_on, {key: Encoded(text) for key, text in parts.items()})


def _parse(raw: bytes) -> bytes | str:
    """In the helper: what `disk.parse_update_bytes` says, as plain values."""
    from .disk import parse_update_bytes  # here: disk imports this module

    found = parse_update_bytes(raw)
    if isinstance(found, str):
        return found
    parts: dict[str, Any] = {key: str(text) for key, text in found.data.items()}
    return marshal.dumps((found.token, found.created_on, parts))


def stop() -> None:
    """End the helper (the server stops, or a parse hung); the next big update starts one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.terminate()
