"""Out of inotify watches: one clear warning, then polling, and live updates still arrive."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, next_message, subscribe

from cardserver import demo, watcher
from cardserver.config import WatchTiming

LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@contextmanager
def out_of_watches(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real thing where we may lower the limit (root), else the error notify raises."""
    try:
        old = LIMIT.read_text()
        LIMIT.write_text("16\n")
    except OSError:
        real = watcher.RustNotify

        def failing(paths: list[str], debug: bool, polling: bool, *rest: Any) -> Any:
            if not polling:
                raise OSError(f"OS file watch limit reached. about {paths}")
            return real(paths, debug, polling, *rest)

        monkeypatch.setattr(watcher, "RustNotify", failing)
        yield "simulated"
        return
    try:
        yield "real"
    finally:
        LIMIT.write_text(old)


async def test_out_of_watches_polls_with_one_warning(
    roots: Any, start_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = demo.start_run(roots.datastore, flow="WatchFlow")
    for _ in range(40):  # more folders than the lowered limit allows watches
        run.start_task("work").finish()
    card = run.start_task("live").add_card(components=[demo.progress("bar", 0, 10, "n")])
    caplog.set_level(logging.WARNING, logger="cardserver")
    timing = WatchTiming(cold_step_ms=10, shape_step_ms=10, poll_delay_ms=100)
    with out_of_watches(monkeypatch):
        client = await start_app(make_config(roots, timing=timing))
    status = await (await client.get("/api/status")).json()
    assert status["watching"] == "polling"
    warnings = [r.getMessage() for r in caplog.records if "polling" in r.getMessage()]
    assert len(warnings) == 1 and "cannot watch" in warnings[0]

    ws = await client.ws_connect("/ws")
    topic = f"card/{card.key}"
    await subscribe(ws, topic)
    await next_message(ws, lambda m: m.get("type") == "card")
    for value in (3, 7, 4):  # same size, within one second: whole-second mtimes cannot tell
        card.update({"bar": demo.progress("bar", value, 10, "n")})
        update = await next_message(ws, lambda m, v=value: m.get("type") == "update"
                                    and m["data"]["bar"]["value"] == v)
        assert update["topic"] == topic
    assert len([r for r in caplog.records if "polling" in r.getMessage()]) == 1
