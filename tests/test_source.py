"""The source boundary (cardserver.source): a second kind of source, scripted in memory, drives
the real pipeline, index, feed and hub with no local-disk code. What it hands over reaches a
subscriber; the hub tells it which cards are looked at; on-demand reads go through it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from cardserver.events import CardWritten, DataUpdate, DataWritten, Event, RunWritten
from cardserver.feed import Viewed, parse_topic, shown_to
from cardserver.hub import Subscriber
from cardserver.index import Card, Changes
from cardserver.layout import CardKey, RunKey, TaskKey
from cardserver.logs import Page
from cardserver.pipeline import Pipeline
from cardserver.source import Sink, Unavailable
from cardserver.taskinfo import TaskFolder

WAIT = 10.0
RUN = RunKey("RemoteFlow", "7")
CARD = CardKey(TaskKey("RemoteFlow", "7", "train", "3"), "blank-0123456789abcdef0123456789abcdef")


def update(value: int) -> DataUpdate:
    return DataUpdate("tok", float(value), {"p": {"value": value}})


class ScriptedSource:
    """A source whose datastore is a list: the test hands it batches; reads answer from memory."""

    def __init__(self, first: list[list[Event]]) -> None:
        self.first = first
        self.batches: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.caught_up = asyncio.Event()
        self.shown: list[tuple[Viewed, bool]] = []
        self.updates: dict[CardKey, DataUpdate] = {}
        self.sink: Sink | None = None
        self.changes: list[Changes] = []  # what the pipeline said changed

    async def first_read(self, sink: Sink) -> None:
        self.sink = sink

        async def parts() -> AsyncIterator[list[Event]]:
            for part in self.first:
                yield part

        await sink.start_over(parts())
        self.caught_up.set()

    async def follow(self, sink: Sink) -> None:
        while True:
            sink.apply(await self.batches.get())

    async def close(self) -> None:
        """Nothing to stop."""

    def changed(self, changes: Changes) -> None:
        self.changes.append(changes)

    def show(self, key: Viewed, shown: bool) -> None:
        self.shown.append((key, shown))

    def visible(self, key: CardKey, visible: bool) -> None:
        """Only the S3 source cares (tests/test_visible.py)."""

    async def load_update(self, key: CardKey) -> None:
        card = self.sink.index.card(key) if self.sink else None
        if self.sink and card is not None and key in self.updates:
            self.sink.apply([DataWritten(key, False, card.data_mtime or 0.0, self.updates[key])])

    async def read_card(self, card: Card) -> bytes:
        raise Unavailable(404, "card not found")

    async def read_task(self, key: TaskKey) -> TaskFolder | None:
        return None

    async def read_log(self, key: TaskKey, stream: str, attempt: int | None, lines: int,
                       before: int | None, since: int | None) -> tuple[int, Page] | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"watching": "scripted"}


async def next_text(subscriber: Subscriber, wanted: str) -> dict[str, Any]:
    """The next message of type `wanted` in the subscriber's mailbox."""
    while True:
        found = json.loads(await asyncio.wait_for(subscriber.mailbox.get(), WAIT))
        if found.get("type") == wanted:
            return found  # type: ignore[no-any-return]


def subscribe(pipeline: Pipeline, topic: str) -> Subscriber:
    subscriber = Subscriber(1 << 20)
    found = parse_topic(topic)
    assert found is not None
    pipeline.hub.subscribe(subscriber, topic, pipeline.feed.initial(found))
    return subscriber


async def started(source: ScriptedSource) -> Pipeline:
    pipeline = Pipeline(source)
    pipeline.hub.watches.append(shown_to(source.show))
    await pipeline.start()
    await asyncio.wait_for(pipeline.ready.wait(), WAIT)
    return pipeline


async def test_a_first_read_in_parts_and_then_a_batch_reach_a_subscriber() -> None:
    source = ScriptedSource([[RunWritten(RUN, 1.0, "ana")],
                             [CardWritten(CARD, False, 2.0, 10, "v1")]])
    pipeline = await started(source)
    try:
        assert pipeline.index.run(RUN) is not None  # the first part started the index over
        assert pipeline.index.card(CARD) is not None  # the second part was added to it
        subscriber = subscribe(pipeline, f"card/{CARD}")
        source.batches.put_nowait([DataWritten(CARD, False, 3.0, update(4))])
        found = await next_text(subscriber, "update")
        assert found["data"]["p"]["value"] == 4
        assert source.changes[0].reset and source.changes[-1].updates == {CARD}  # told back
    finally:
        await pipeline.stop()


async def test_the_hub_tells_the_source_which_cards_are_looked_at() -> None:
    source = ScriptedSource([[CardWritten(CARD, False, 2.0, 10, "v1"), DataWritten(CARD, False, 3.0, None)]])
    source.updates[CARD] = update(9)
    pipeline = await started(source)
    try:
        first, second = subscribe(pipeline, f"card/{CARD}"), subscribe(pipeline, f"card/{CARD}")
        subscribe(pipeline, f"run/{RUN}")  # a run: told too (a polling source may poll it faster)
        subscribe(pipeline, "flows")  # not one thing: not told
        assert source.shown == [(CARD, True), (RUN, True)]  # once each, for the first viewer
        await source.load_update(CARD)  # what a source does when told: the update reaches viewers
        assert (await next_text(second, "update"))["data"]["p"]["value"] == 9
        pipeline.hub.leave(first)
        assert source.shown == [(CARD, True), (RUN, True)]  # one viewer of the card is left
        pipeline.hub.leave(second)
        assert source.shown[-1] == (CARD, False)
    finally:
        await pipeline.stop()
