"""Turns index changes into hub messages, and answers "what is the state now" for a new
subscriber. Topics, in the user's words:

    flows                                     every flow with its newest run
    runs/<flow>                               the runs of one flow, newest first
    run/<flow>/<run>                          one run: summary, steps, tasks with their cards
    card/<flow>/<run>/<step>/<task>/<card>    one card: its render version and data update
    task/<flow>/<run>/<step>/<task>           one task's details (published by `taskfeed`)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .events import DataUpdate, Encoded
from .hub import SNAPSHOT, Hub, Message, TopicWatch
from .index import Changes, Index
from .layout import CardKey, RunKey, TaskKey, card_key_from_parts, is_name, task_key_from_parts


@dataclass(frozen=True, slots=True)
class Topic:
    kind: str  # flows | runs | run | card | task
    flow: str | None = None
    run: RunKey | None = None
    card: CardKey | None = None
    task: TaskKey | None = None

    def __str__(self) -> str:
        if self.task is not None:
            return f"task/{self.task}"
        if self.card is not None:
            return card_topic(self.card)
        if self.run is not None:
            return f"run/{self.run}"
        if self.flow is not None:
            return f"runs/{self.flow}"
        return "flows"


def parse_topic(text: str) -> Topic | None:
    if len(text) > 1024:
        return None
    kind, _, rest = text.partition("/")
    parts = rest.split("/") if rest else []
    if text == "flows":
        return Topic("flows")
    if kind == "runs" and len(parts) == 1 and is_name(parts[0]):
        return Topic("runs", flow=parts[0])
    if kind == "run" and len(parts) == 2 and all(is_name(p) for p in parts):
        return Topic("run", run=RunKey(parts[0], parts[1]))
    if kind == "card":
        key = card_key_from_parts(parts)
        return Topic("card", card=key) if key else None
    if kind == "task":
        task = task_key_from_parts(parts)
        return Topic("task", task=task) if task else None
    return None


def card_topic(key: CardKey) -> str:
    """A card's topic; also its page's URL below the app root (one string, built only here)."""
    return f"card/{key}"


Viewed = CardKey | TaskKey | RunKey  # what a source may be told someone looks at


def shown_to(show: Callable[[Viewed, bool], None]) -> TopicWatch:
    """A hub watch that tells `show` (the source's) when a card, task or run gains its first
    viewer or loses its last."""

    def watch(name: str, shown: bool) -> None:
        topic = parse_topic(name)
        key = None if topic is None else topic.card or topic.task or topic.run
        if key is not None:
            show(key, shown)

    return watch


def visible_to(visible: Callable[[CardKey, bool], None]) -> TopicWatch:
    """A hub sight watch that tells `visible` (the source's) when a card becomes visible to a
    viewer, or to none any more (kept hidden, or no longer watched)."""

    def watch(name: str, seen: bool) -> None:
        topic = parse_topic(name)
        if topic is not None and topic.card is not None:
            visible(topic.card, seen)

    return watch


def encode(payload: Any) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # NaN/Infinity: Metaflow writes them in data updates; JSON has neither
        return json.dumps(finite(payload), separators=(",", ":"), allow_nan=False, default=str)
    except RecursionError:  # read from disk, these come `Encoded`; anything else this deep is a bug
        return "null"


def update_text(update: DataUpdate) -> str:
    """`{"token", "created_on", "data"}` as JSON: components read from disk are already JSON
    text (encoded where they were read, off the event loop), so this is a join."""
    data = ",".join(
        f"{encode(key)}:{value if isinstance(value, Encoded) else encode(value)}"
        for key, value in update.data.items()
    )
    head = encode({"token": update.token, "created_on": update.created_on})
    return f'{head[:-1]},"data":{{{data}}}}}'


def finite(value: Any) -> Any:
    """NaN and Infinity become null, as JavaScript's JSON.stringify does."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def message(topic: str, entity: str, kind: str, **fields: Any) -> Message:
    return Message(topic, entity, encode({"topic": topic, "type": kind, **fields}))


class Feed:
    def __init__(self, index: Index, hub: Hub) -> None:
        self.index = index
        self.hub = hub
        # A 10,000-task run's snapshot takes ~0.4 s to build: build it once per revision.
        self._snapshots: dict[RunKey, tuple[tuple[int, int], Message]] = {}
        self._health: Message | None = None  # only while the file watch is not running

    def publish_health(self, health: dict[str, Any]) -> None:
        """Whether live updates flow (the file watch runs), on the `flows` topic every viewer follows."""
        health_message = message("flows", "health", "health", **health)
        self._health = None if health.get("ok") else health_message
        self.hub.publish(health_message)

    # --- the state now, for a new subscriber ----------------------------------------------

    def initial(self, topic: Topic) -> list[Message]:
        name = str(topic)
        if topic.kind == "flows":
            return [self._flows()] if self._health is None else [self._flows(), self._health]
        if topic.flow is not None:
            runs = [r.summary() for r in self.index.runs(topic.flow)]
            return [message(name, SNAPSHOT, "runs", flow=topic.flow, runs=runs)]
        if topic.run is not None:
            return [self._run_snapshot(topic.run)]
        if topic.task is not None:
            return []  # read from disk on subscribe, then published: see `taskfeed`
        assert topic.card is not None
        return self._card_messages(topic.card, render=True, update=True)

    # --- changes -> messages ---------------------------------------------------------------

    def publish(self, changes: Changes) -> None:
        if changes.reset:
            self._republish_all()
            return
        if changes.flows and self.hub.has_subscribers("flows"):
            self.hub.publish(self._flows())
        for key in changes.runs:
            self._publish_run_summary(key)
        for task_key in changes.tasks:
            topic = f"run/{task_key.run_key}"
            if not self.hub.has_subscribers(topic):
                continue
            task = self.index.task(task_key)
            entity = f"task/{task_key.step}/{task_key.task}"
            if task is None:
                self.hub.publish(message(topic, entity, "task-removed", step=task_key.step,
                                         task=task_key.task))
            else:
                self.hub.publish(message(topic, entity, "task", task=task.summary()))
        for card_key in changes.renders | changes.updates:
            if self.hub.has_subscribers(card_topic(card_key)):
                for msg in self._card_messages(
                    card_key, render=card_key in changes.renders, update=card_key in changes.updates
                ):
                    self.hub.publish(msg)

    def _republish_all(self) -> None:
        for name in self.hub.topics:
            topic = parse_topic(name)
            if topic is not None:
                for msg in self.initial(topic):
                    self.hub.publish(msg)

    def _run_snapshot(self, key: RunKey) -> Message:
        revision = self.index.revision(key)
        cached = self._snapshots.get(key)
        if cached is not None and cached[0] == revision:
            return cached[1]
        detail = self.index.run_detail(key)
        snapshot = message(f"run/{key}", SNAPSHOT, "run-detail", exists=detail is not None,
                           **(detail or {}))
        if len(self._snapshots) > 16:
            self._snapshots.clear()
        self._snapshots[key] = (revision, snapshot)
        return snapshot

    def _flows(self) -> Message:
        return message("flows", SNAPSHOT, "flows", flows=self.index.flow_summaries())

    def _publish_run_summary(self, key: RunKey) -> None:
        run = self.index.run(key)
        if run is None:
            return
        runs_topic, run_topic = f"runs/{key.flow}", f"run/{key}"
        if not (self.hub.has_subscribers(runs_topic) or self.hub.has_subscribers(run_topic)):
            return
        summary = run.summary()
        self.hub.publish(message(runs_topic, key.run, "run", run=summary))
        self.hub.publish(message(run_topic, "run", "run", run=summary, steps=run.steps()))

    def _card_messages(self, key: CardKey, render: bool, update: bool) -> list[Message]:
        topic = card_topic(key)
        detail = self.index.card_detail(key)
        out = []
        if render:
            if detail is None:
                out.append(message(topic, "card", "card", exists=False))
            else:
                summary = {k: v for k, v in detail.items() if k != "update"}
                out.append(message(topic, "card", "card", exists=True, card=summary))
        card = self.index.card(key)
        if update and card is not None and card.update is not None:
            head = encode({"topic": topic, "type": "update"})
            out.append(Message(topic, "update", f"{head[:-1]},{update_text(card.update)[1:]}"))
        return out
