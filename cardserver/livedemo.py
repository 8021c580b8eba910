"""`card demo`: a flow that keeps changing. Runs follow one another, each a small story of
task scripts (start, four training shards, one of which fails and retries, join, end), driven
one step per tick and written by `demo` in Metaflow's exact layout.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from .demo import SCRIPT_NAME, DemoCard, DemoRun, DemoTask, markdown, progress, start_run, table, text

log = logging.getLogger(__name__)

# --- the live demo ---------------------------------------------------------------------------

_DONE = object()


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait, waking at once on stop. True when stop is set."""
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _drive(stop: asyncio.Event, interval: float, schedule: list[tuple[int, Iterator[None]]]) -> bool:
    """Advance each task script one step per tick; a script starts at its tick.

    Scripts are generators, so a task's story reads top to bottom; its files appear on
    its first step. False when stopped.
    """
    pending = sorted(schedule, key=lambda item: item[0])
    active: list[Iterator[None]] = []
    tick = 0
    while pending or active:
        while pending and pending[0][0] <= tick:
            active.append(pending.pop(0)[1])
        for script in list(active):
            if next(script, _DONE) is _DONE:
                active.remove(script)
        if await _pause(stop, interval):
            return False
        tick += 1
    return True


def _start_script(run: DemoRun, rows: int) -> Iterator[None]:
    task = run.start_task("start")
    card = task.add_card(
        components=[
            markdown("intro", f"# {run.flow} run {run.run}\nLoading the **training set**."),
            progress("load", 0, rows, "Shards loaded"),
        ]
    )
    for done in range(1, rows + 1):
        yield
        card.update({"load": {"value": done}})
    card.update({"intro": {"source": f"# {run.flow} run {run.run}\nLoaded **{rows}** shards."}})
    yield
    task.finish()


def _train_card(task: DemoTask, shard: int, epochs: int) -> DemoCard:
    return task.add_card(
        id="training",
        components=[
            markdown("title", f"## Shard {shard}, attempt {task.attempt}\nStarting…"),
            progress("epochs", 0, epochs, "Epochs"),
            text("loss", "loss —"),
            table("metrics", ["epoch", "loss", "accuracy"], []),
        ],
    )


def _train_script(
    run: DemoRun, shard: int, epochs: int, fail_at: int | None, results: dict[int, float]
) -> Iterator[None]:
    task = run.start_task("train")
    card = _train_card(task, shard, epochs)
    rows: list[list[Any]] = []
    epoch = 0
    while epoch < epochs:
        yield
        epoch += 1
        if fail_at is not None and task.attempt == 0 and epoch == fail_at:
            card.update({"title": {"source": f"## Shard {shard}\n**Failed**: `ValueError: NaN loss`"}})
            _print_failure(task, epoch)
            task.finish(ok=False)
            for _ in range(4):  # @retry waits a little before the next attempt
                yield
            task.retry()
            card = _train_card(task, shard, epochs)
            rows, epoch = [], 0
            continue
        loss = round(1.2 * math.exp(-epoch / (3 + shard)) + 0.02 * shard, 4)
        accuracy = round(1 - loss / 1.5, 4)
        rows.append([epoch, loss, accuracy])
        card.update(
            {
                "title": {"source": f"## Shard {shard}, attempt {task.attempt}\nTraining…"},
                "epochs": {"value": epoch},
                "loss": {"text": f"loss {loss:.4f} · accuracy {accuracy:.2%}"},
                "metrics": {"data": rows[-8:]},
            }
        )
        results[shard] = accuracy
        task.print(f"shard {shard} epoch {epoch}: loss {loss:.4f} accuracy {accuracy:.4f}")
    card.update({"title": {"source": f"## Shard {shard}, attempt {task.attempt}\n**Done**."}})
    yield
    task.finish()


def _print_failure(task: DemoTask, epoch: int) -> None:
    """What a step raising `ValueError` leaves in its stderr, as Metaflow prints it."""
    for line in (
        f"<flow {task.key.flow} step {task.key.step}> failed:",
        "Traceback (most recent call last):",
        f'  File "{SCRIPT_NAME}", line 42, in {task.key.step}',
        "    loss = model.fit(batch)",
        f"ValueError: NaN loss at epoch {epoch}",
    ):
        task.print(line, "stderr")


def _join_script(run: DemoRun, results: dict[int, float]) -> Iterator[None]:
    task = run.start_task("join")
    rows: list[list[Any]] = [[shard, acc] for shard, acc in sorted(results.items())]
    best = max(results, key=lambda shard: results[shard]) if results else None
    card = task.add_card(
        components=[
            markdown("summary", "# Results\nComparing shards…"),
            table("shards", ["shard", "accuracy"], []),
        ]
    )
    for n in range(1, len(rows) + 1):
        yield
        card.update({"shards": {"data": rows[:n]}})
    card.update({"summary": {"source": f"# Results\nBest shard: **{best}**."}})
    yield
    task.finish()


def _end_script(run: DemoRun) -> Iterator[None]:
    task = run.start_task("end")
    card = task.add_card(components=[text("status", "Publishing the model…")])
    yield
    yield
    card.update({"status": {"text": "All done. A new run starts in a moment."}})
    yield
    task.finish()


async def _demo_run(
    datastore: Path, cards: Path | None, stop: asyncio.Event, interval: float, flow: str
) -> bool:
    """One run of the demo flow, start to end. False when stopped midway."""
    run = start_run(datastore, cards, flow=flow)
    shards, epochs = 4, 12
    results: dict[int, float] = {}
    # Scripts do nothing until first driven, so `join` reads the results `train` left.
    phases = [
        [(0, _start_script(run, shards))],
        [(2 * n, _train_script(run, n, epochs, 5 if n == 2 else None, results)) for n in range(shards)],
        [(0, _join_script(run, results))],
        [(0, _end_script(run))],
    ]
    for phase in phases:
        if not await _drive(stop, interval, phase):
            return False
    return True


async def run_demo(
    datastore: Path,
    stop: asyncio.Event,
    interval: float = 0.5,
    cards: Path | None = None,
    flow: str = "DemoFlow",
) -> None:
    """Keep a demo flow live until `stop`: runs follow one another so follow mode shows.

    A failing disk (full, removed, read-only) is logged and retried; the demo never raises.
    """
    while not stop.is_set():
        try:
            if not await _demo_run(datastore, cards, stop, interval, flow):
                return
        except Exception:
            log.exception("demo run failed; starting another")
        if await _pause(stop, max(interval * 8, 0.05)):
            return
