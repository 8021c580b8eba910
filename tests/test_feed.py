"""Index changes -> hub messages, and each topic's state for a new subscriber (cardserver.feed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cardserver.events import (
    CardRemoved,
    CardWritten,
    DataUpdate,
    DataWritten,
    Event,
    Reset,
    RunWritten,
    TaskMetaWritten,
    TaskRemoved,
)
from cardserver.feed import Feed, Topic, card_topic, encode, parse_topic
from cardserver.hub import SNAPSHOT, Hub, Message, Subscriber
from cardserver.index import Index
from cardserver.layout import LEGACY_STEP, CardKey, MetaKind, RunKey, TaskKey

FLOW = "LiveFlow"
RUN = RunKey(FLOW, "1795376725734877")
UUID = "3f1c2e9a0b7d4c5e8f6a1b2c3d4e5f60"
START = TaskKey(FLOW, RUN.run, "start", "1")
CARD = CardKey(START, f"blank-{UUID}")


class RecordingHub(Hub):
    """A hub that remembers the topic of every message it was asked to publish."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[str] = []

    def publish(self, message: Message) -> int:
        self.published.append(message.topic)
        return super().publish(message)


def started(key: TaskKey, ts: float, n: int = 0) -> TaskMetaWritten:
    doc = {"value": str(n), "tags": [f"attempt_id:{n}"]}
    return TaskMetaWritten(key, MetaKind.ATTEMPT, int(ts * 1000), doc)


def rendered(key: CardKey, mtime: float, version: str) -> CardWritten:
    return CardWritten(key, False, mtime, 1_100_000, version)


def updated(key: CardKey, created: float, data: dict[str, Any], token: str = "t1") -> DataWritten:
    return DataWritten(key, False, created, DataUpdate(token, created, data))


def base_events() -> list[Event]:
    return [
        RunWritten(RUN, 1000.0, "tester"),
        RunWritten(RunKey(FLOW, "5"), 500.0, "tester"),
        started(START, 1001.0),
        rendered(CARD, 1002.0, "v1"),
    ]


@pytest.fixture
def index() -> Index:
    index = Index(clock=lambda: 1_010.0)  # just after the events' times
    index.apply(base_events())
    return index


@pytest.fixture
def hub() -> RecordingHub:
    return RecordingHub()


@pytest.fixture
def feed(index: Index, hub: RecordingHub) -> Feed:
    return Feed(index, hub)


def decode(message: Message) -> dict[str, Any]:
    doc = json.loads(message.text)
    assert doc["topic"] == message.topic
    return doc  # type: ignore[no-any-return]


async def drain(subscriber: Subscriber) -> list[dict[str, Any]]:
    out = []
    while len(subscriber.mailbox):
        out.append(json.loads(await asyncio.wait_for(subscriber.mailbox.get(), timeout=5)))
    return out


def join(feed: Feed, name: str) -> Subscriber:
    topic = parse_topic(name)
    assert topic is not None
    subscriber = Subscriber(1 << 22)
    feed.hub.subscribe(subscriber, str(topic), feed.initial(topic))
    return subscriber


# --- topics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flows", Topic("flows")),
        ("runs/LiveFlow", Topic("runs", flow="LiveFlow")),
        ("run/LiveFlow/12", Topic("run", run=RunKey("LiveFlow", "12"))),
        (f"card/LiveFlow/12/start/3/blank-{UUID}",
         Topic("card", card=CardKey(TaskKey("LiveFlow", "12", "start", "3"), f"blank-{UUID}"))),
        (f"card/LiveFlow/12/{LEGACY_STEP}/3/blank-id-{UUID}",
         Topic("card", card=CardKey(TaskKey("LiveFlow", "12", LEGACY_STEP, "3"),
                                    f"blank-id-{UUID}"))),
        ("task/LiveFlow/12/start/3", Topic("task", task=TaskKey("LiveFlow", "12", "start", "3"))),
    ],
)
def test_parse_topic_accepts_the_five_forms(text: str, expected: Topic) -> None:
    topic = parse_topic(text)
    assert topic == expected
    assert str(topic) == text


@pytest.mark.parametrize(
    "text",
    [
        "", "/", "flows/", "flows/x", "/flows", "Flows", "flow",
        "runs", "runs/", "runs/a/b", "runs/..", "runs/a..b", "runs/a b",
        "run", "run/a", "run/a/", "run/a/b/c", "run/../b", "run/a/..", "run//b",
        "card", "card/a/1/start/1", f"card/a/1/start/1/blank-{UUID}/x",
        f"card/../1/start/1/blank-{UUID}", "card/a/1/start/1/..", "card/a/1/start/1/tmpa1b2c3d4",
        f"card/a/1/start/1/blank-{UUID}.html", "card/a//start/1/blank-x",
        "task", "task/a/1/start", "task/a/1/start/1/x", "task/a/1/_parameters/1", "task/a/../start/1",
        "tasks/a/1/start/1", "runs/" + "a" * 1100, "run/a\x00/1",
    ],
)
def test_parse_topic_rejects(text: str) -> None:
    assert parse_topic(text) is None


def test_card_topic_matches_parse_topic() -> None:
    assert str(parse_topic(card_topic(CARD))) == card_topic(CARD)


# --- initial state ---------------------------------------------------------------------------


def test_initial_flows(feed: Feed, index: Index) -> None:
    [message] = feed.initial(Topic("flows"))
    assert message.topic == "flows" and message.entity == SNAPSHOT
    doc = decode(message)
    assert doc["type"] == "flows"
    assert doc["flows"] == index.flow_summaries()
    assert doc["flows"][0]["newest"]["run"] == RUN.run


def test_initial_runs_newest_first(feed: Feed) -> None:
    [message] = feed.initial(Topic("runs", flow=FLOW))
    assert message.entity == SNAPSHOT
    doc = decode(message)
    assert doc["type"] == "runs" and doc["flow"] == FLOW
    assert [r["run"] for r in doc["runs"]] == [RUN.run, "5"]


def test_initial_runs_of_unknown_flow_is_empty(feed: Feed) -> None:
    [message] = feed.initial(Topic("runs", flow="Nope"))
    assert decode(message)["runs"] == []


def test_initial_run_detail(feed: Feed) -> None:
    [message] = feed.initial(Topic("run", run=RUN))
    assert message.topic == f"run/{RUN}" and message.entity == SNAPSHOT
    doc = decode(message)
    assert doc["type"] == "run-detail" and doc["exists"] is True
    assert doc["run"]["status"] == "running"
    assert doc["steps"] == ["start"]
    [task] = doc["tasks"]
    assert task["task"] == "1" and task["status"] == "running"
    assert [c["name"] for c in task["cards"]] == [CARD.name]


def test_initial_run_detail_of_unknown_run(feed: Feed) -> None:
    [message] = feed.initial(Topic("run", run=RunKey(FLOW, "404")))
    doc = decode(message)
    assert doc["type"] == "run-detail" and doc["exists"] is False


def test_initial_card_without_update(feed: Feed) -> None:
    [message] = feed.initial(Topic("card", card=CARD))
    assert message.topic == card_topic(CARD) and message.entity == "card"
    doc = decode(message)
    assert doc["type"] == "card" and doc["exists"] is True
    assert doc["card"]["version"] == "v1"
    assert doc["card"]["has_html"] is True
    assert "update" not in doc["card"]


def test_initial_card_with_update(feed: Feed, index: Index) -> None:
    index.apply([updated(CARD, 1003.0, {"bar": 1})])
    render, update = feed.initial(Topic("card", card=CARD))
    assert decode(render)["type"] == "card"
    assert update.entity == "update"
    doc = decode(update)
    assert doc["type"] == "update"
    assert doc["token"] == "t1" and doc["data"] == {"bar": 1}


def test_initial_unknown_card(feed: Feed) -> None:
    [message] = feed.initial(Topic("card", card=CardKey(START, f"default-{UUID}")))
    assert decode(message) == {
        "topic": f"card/{START}/default-{UUID}", "type": "card", "exists": False,
    }


# --- publishing changes ----------------------------------------------------------------------


def test_nothing_is_built_for_topics_nobody_watches(
    feed: Feed, index: Index, hub: RecordingHub
) -> None:
    feed.publish(index.apply([
        started(TaskKey(FLOW, RUN.run, "train", "2"), 1004.0),
        rendered(CARD, 1005.0, "v2"),
        updated(CARD, 1006.0, {"bar": 2}),
        RunWritten(RunKey("NewFlow", "1"), 2000.0, "tester"),
    ]))
    assert hub.published == []


async def test_task_delta_goes_to_its_run_topic_only(
    feed: Feed, index: Index, hub: RecordingHub
) -> None:
    watcher = join(feed, f"run/{RUN}")
    other = TaskKey(FLOW, "5", "start", "1")
    await drain(watcher)
    feed.publish(index.apply([started(TaskKey(FLOW, RUN.run, "train", "2"), 1004.0),
                              started(other, 1004.0)]))
    assert f"run/{FLOW}/5" not in hub.published
    messages = await drain(watcher)
    tasks = [m for m in messages if m["type"] == "task"]
    assert [(m["task"]["step"], m["task"]["task"]) for m in tasks] == [("train", "2")]
    assert tasks[0]["task"]["status"] == "running"
    [run] = [m for m in messages if m["type"] == "run"]
    assert run["run"]["tasks"] == 2
    assert run["steps"] == ["start", "train"]


async def test_task_deltas_are_per_task_entities(feed: Feed, index: Index) -> None:
    watcher = join(feed, f"run/{RUN}")
    await drain(watcher)
    a, b = TaskKey(FLOW, RUN.run, "train", "2"), TaskKey(FLOW, RUN.run, "train", "3")
    feed.publish(index.apply([started(a, 1004.0)]))
    feed.publish(index.apply([started(b, 1005.0)]))
    feed.publish(index.apply([rendered(CardKey(a, f"blank-{UUID}"), 1006.0, "v1")]))
    tasks = [m["task"] for m in await drain(watcher) if m["type"] == "task"]
    # a's two deltas collapsed into its newest, which kept a's place in line
    assert [t["task"] for t in tasks] == ["2", "3"]
    assert len(tasks[0]["cards"]) == 1


async def test_run_summary_goes_to_runs_topic(feed: Feed, index: Index, hub: RecordingHub) -> None:
    watcher = join(feed, f"runs/{FLOW}")
    await drain(watcher)
    feed.publish(index.apply([started(TaskKey(FLOW, RUN.run, "train", "2"), 1004.0)]))
    [message] = await drain(watcher)
    assert message["type"] == "run"
    assert message["run"]["run"] == RUN.run and message["run"]["tasks"] == 2
    assert "flows" not in hub.published


async def test_new_run_updates_flows_and_runs(feed: Feed, index: Index) -> None:
    flows, runs = join(feed, "flows"), join(feed, f"runs/{FLOW}")
    await drain(flows)
    await drain(runs)
    feed.publish(index.apply([RunWritten(RunKey(FLOW, "9999999999999999"), 3000.0, "tester")]))
    [snapshot] = await drain(flows)
    assert snapshot["type"] == "flows"
    assert snapshot["flows"][0]["runs"] == 3
    assert snapshot["flows"][0]["newest"]["run"] == "9999999999999999"
    [run] = await drain(runs)
    assert run["type"] == "run" and run["run"]["run"] == "9999999999999999"


async def test_card_render_and_update_messages(feed: Feed, index: Index) -> None:
    watcher = join(feed, card_topic(CARD))
    await drain(watcher)

    feed.publish(index.apply([updated(CARD, 1003.0, {"bar": 1, "text": "a"})]))
    [update] = await drain(watcher)
    assert update["type"] == "update" and update["data"] == {"bar": 1, "text": "a"}

    feed.publish(index.apply([updated(CARD, 1004.0, {"bar": 2})]))
    [update] = await drain(watcher)
    assert update["data"] == {"bar": 2, "text": "a"}  # merged state, not just the delta

    feed.publish(index.apply([rendered(CARD, 1005.0, "v2")]))
    [render] = await drain(watcher)
    assert render["type"] == "card" and render["card"]["version"] == "v2"

    feed.publish(index.apply([rendered(CARD, 1006.0, "v3"),
                              updated(CARD, 1006.0, {"bar": 3}, token="t2")]))
    render, update = await drain(watcher)
    assert render["card"]["version"] == "v3"
    assert update["token"] == "t2" and update["data"] == {"bar": 3}


async def test_other_cards_changes_are_not_sent(feed: Feed, index: Index) -> None:
    watcher = join(feed, card_topic(CARD))
    await drain(watcher)
    other = CardKey(START, f"default-{UUID}")
    feed.publish(index.apply([rendered(other, 1003.0, "v1"), updated(other, 1003.0, {"x": 1})]))
    assert await drain(watcher) == []


async def test_card_removed_says_so(feed: Feed, index: Index) -> None:
    watcher = join(feed, card_topic(CARD))
    await drain(watcher)
    feed.publish(index.apply([CardRemoved(CARD)]))
    [message] = await drain(watcher)
    assert message == {"topic": card_topic(CARD), "type": "card", "exists": False}


async def test_removed_task_is_announced_to_its_run(feed: Feed, index: Index) -> None:
    watcher = join(feed, f"run/{CARD.run_key}")
    await drain(watcher)
    feed.publish(index.apply([TaskRemoved(CARD.task)]))
    removed = [m for m in await drain(watcher) if m["type"] == "task-removed"]
    assert removed == [{"topic": f"run/{CARD.run_key}", "type": "task-removed",
                        "step": CARD.task.step, "task": CARD.task.task}]


async def test_non_finite_numbers_in_card_data_do_not_break_the_feed(
    feed: Feed, index: Index
) -> None:
    # Metaflow writes data updates with json.dumps' defaults, so NaN and Infinity do occur.
    raw = json.loads('{"chart": {"values": [1.5, NaN, Infinity, -Infinity]}, "n": NaN}')
    watcher = join(feed, card_topic(CARD))
    await drain(watcher)
    feed.publish(index.apply([updated(CARD, 1003.0, raw)]))
    [update] = await drain(watcher)
    assert update["data"] == {"chart": {"values": [1.5, None, None, None]}, "n": None}
    _, again = feed.initial(Topic("card", card=CARD))

    def strict(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    assert json.loads(again.text, parse_constant=strict)["data"]["n"] is None


async def test_reset_republishes_every_subscribed_topic(
    feed: Feed, index: Index, hub: RecordingHub
) -> None:
    names = ["flows", f"runs/{FLOW}", f"run/{RUN}", card_topic(CARD)]
    watchers = {name: join(feed, name) for name in names}
    for watcher in watchers.values():
        await drain(watcher)
    hub.published.clear()

    fresh = RunKey(FLOW, "42")
    events = (RunWritten(fresh, 5000.0, "tester"), started(START, 1001.0),
              rendered(CARD, 1002.0, "v9"))
    feed.publish(index.apply([Reset(events)]))

    assert sorted(set(hub.published)) == sorted(names)
    flows = await drain(watchers["flows"])
    assert [m["type"] for m in flows] == ["flows"]
    assert flows[0]["flows"][0]["newest"]["run"] == "42"
    [runs] = await drain(watchers[f"runs/{FLOW}"])
    assert [r["run"] for r in runs["runs"]] == ["42", RUN.run]
    [detail] = await drain(watchers[f"run/{RUN}"])
    assert detail["type"] == "run-detail" and detail["exists"] is True
    [card] = await drain(watchers[card_topic(CARD)])
    assert card["card"]["version"] == "v9"


async def test_reset_snapshot_supersedes_pending_deltas(feed: Feed, index: Index) -> None:
    watcher = join(feed, f"run/{RUN}")
    await drain(watcher)
    feed.publish(index.apply([started(TaskKey(FLOW, RUN.run, "train", "2"), 1004.0)]))
    assert len(watcher.mailbox) > 0  # deltas are waiting for a slow reader
    feed.publish(index.apply([Reset(())]))
    [message] = await drain(watcher)
    assert message["type"] == "run-detail" and message["exists"] is False


def test_encode_is_compact_strict_json() -> None:
    text = encode({"a": [1, float("nan")], "b": {"c": float("inf")}, "d": "\u00e9"})
    assert text == '{"a":[1,null],"b":{"c":null},"d":"\\u00e9"}'


def test_run_snapshot_is_built_once_per_revision(feed: Feed, index: Index) -> None:
    topic = parse_topic(f"run/{CARD.run_key}")
    assert topic is not None
    first, again = feed.initial(topic)[0], feed.initial(topic)[0]
    assert again is first  # the same serialized message: not rebuilt for each subscriber
    index.apply([started(TaskKey(CARD.task.flow, CARD.task.run, "more", "99"), 2000.0)])
    changed = feed.initial(topic)[0]
    assert changed is not first and '"more"' in changed.text
