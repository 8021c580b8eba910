"""Topic pub/sub with newest-per-entity mailboxes (cardserver.hub)."""

from __future__ import annotations

import asyncio

import pytest

from cardserver.hub import SNAPSHOT, Hub, Mailbox, Message, Overflow, Subscriber

BIG = 1 << 20


def msg(topic: str, entity: str, text: str) -> Message:
    return Message(topic, entity, text)


async def drain(mailbox: Mailbox) -> list[str]:
    out = []
    while len(mailbox):
        out.append(await asyncio.wait_for(mailbox.get(), timeout=5))
    return out


async def test_different_entities_keep_their_order() -> None:
    box = Mailbox(BIG)
    box.put(msg("run/F/1", "task/a/1", "A"))
    box.put(msg("card/x", "card", "B"))
    box.put(msg("run/F/1", "task/a/2", "C"))
    assert await drain(box) == ["A", "B", "C"]


async def test_newest_per_entity_wins_and_keeps_its_place() -> None:
    box = Mailbox(BIG)
    box.put(msg("run/F/1", "task/a/1", "A1"))
    box.put(msg("run/F/1", "task/a/2", "B1"))
    box.put(msg("run/F/1", "task/a/1", "A2"))
    box.put(msg("run/F/1", "task/a/1", "A3"))
    assert len(box) == 2
    assert await drain(box) == ["A3", "B1"]


async def test_same_entity_in_another_topic_is_another_slot() -> None:
    box = Mailbox(BIG)
    box.put(msg("card/x", "update", "X"))
    box.put(msg("card/y", "update", "Y"))
    assert await drain(box) == ["X", "Y"]


async def test_snapshot_drops_pending_deltas_of_its_topic_only() -> None:
    box = Mailbox(BIG)
    box.put(msg("run/F/1", "task/a/1", "delta1"))
    box.put(msg("runs/F", "1", "other"))
    box.put(msg("run/F/1", "run", "delta2"))
    box.put(msg("run/F/1", SNAPSHOT, "snapshot"))
    box.put(msg("run/F/1", "task/a/1", "after"))  # deltas after the snapshot still count
    assert await drain(box) == ["other", "snapshot", "after"]
    assert box.pending_bytes == 0


async def test_pending_byte_accounting() -> None:
    box = Mailbox(BIG)
    box.put(msg("t", "a", "x" * 10))
    box.put(msg("t", "b", "y" * 5))
    assert box.pending_bytes == 15
    box.put(msg("t", "a", "z" * 3))  # replaces 10 with 3
    assert box.pending_bytes == 8
    box.put(msg("u", "c", "w" * 7))
    assert box.pending_bytes == 15
    box.drop_topic("t")
    assert box.pending_bytes == 7
    assert len(box) == 1
    assert await box.get() == "w" * 7
    assert box.pending_bytes == 0


async def test_overflow_raises_from_get() -> None:
    box = Mailbox(10)
    box.put(msg("t", "a", "x" * 10))  # at the limit is fine
    box.put(msg("t", "b", "y"))  # and the newest message beside it
    assert not box.overflowed
    box.put(msg("t", "c", "z"))
    assert box.overflowed
    with pytest.raises(Overflow):
        await asyncio.wait_for(box.get(), timeout=5)


async def test_one_message_over_the_limit_still_gets_through() -> None:
    """A card's newest state may be bigger than the whole mailbox (a 16 MB data update)."""
    box = Mailbox(10)
    box.put(msg("t", "a", "x" * 100))
    assert not box.overflowed
    assert await box.get() == "x" * 100


async def test_overflow_is_sticky_even_after_room_frees_up() -> None:
    box = Mailbox(10)
    box.put(msg("t", "a", "x" * 11))
    box.put(msg("t", "b", "y"))
    box.drop_topic("t")
    assert box.pending_bytes == 0
    with pytest.raises(Overflow):
        await asyncio.wait_for(box.get(), timeout=5)


async def test_replacing_keeps_a_slow_reader_under_the_limit() -> None:
    box = Mailbox(100)
    for i in range(10_000):
        box.put(msg("card/x", "update", f"{i:050d}"))
    assert not box.overflowed
    assert await drain(box) == [f"{9_999:050d}"]


async def test_put_wakes_a_waiting_get() -> None:
    box = Mailbox(BIG)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)  # one loop turn: the getter is now parked on its event
    assert not getter.done()
    box.put(msg("t", "a", "hello"))
    assert await asyncio.wait_for(getter, timeout=5) == "hello"


async def test_close_wakes_a_waiting_get() -> None:
    box = Mailbox(BIG)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)  # one loop turn: the getter is now parked on its event
    assert not getter.done()
    box.close()
    with pytest.raises(Overflow):
        await asyncio.wait_for(getter, timeout=5)


# --- hub -------------------------------------------------------------------------------------


async def test_subscribe_queues_initial_state_then_publishes_follow() -> None:
    hub, sub = Hub(), Subscriber(BIG)
    hub.subscribe(sub, "runs/F", [msg("runs/F", SNAPSHOT, "initial")])
    assert hub.has_subscribers("runs/F")
    assert hub.topics == ["runs/F"]
    assert sub.topics == {"runs/F"}
    assert hub.publish(msg("runs/F", "1", "delta")) == 1
    assert await drain(sub.mailbox) == ["initial", "delta"]


def test_publish_returns_subscriber_count() -> None:
    hub, a, b = Hub(), Subscriber(BIG), Subscriber(BIG)
    assert hub.publish(msg("flows", SNAPSHOT, "x")) == 0
    hub.subscribe(a, "flows", [])
    hub.subscribe(b, "flows", [])
    hub.subscribe(b, "runs/F", [])
    assert hub.publish(msg("flows", SNAPSHOT, "x")) == 2
    assert hub.publish(msg("runs/F", "1", "y")) == 1
    assert hub.subscriber_count() == 2
    assert len(a.mailbox) == 1 and len(b.mailbox) == 2


def test_publish_only_reaches_its_topic() -> None:
    hub, a, b = Hub(), Subscriber(BIG), Subscriber(BIG)
    hub.subscribe(a, "card/x", [])
    hub.subscribe(b, "card/y", [])
    hub.publish(msg("card/x", "update", "for a"))
    assert len(a.mailbox) == 1
    assert len(b.mailbox) == 0


async def test_message_text_is_shared_not_copied() -> None:
    hub, a, b = Hub(), Subscriber(BIG), Subscriber(BIG)
    hub.subscribe(a, "flows", [])
    hub.subscribe(b, "flows", [])
    text = "".join(["{", '"type":"flows"', "}"])  # built at run time: not an interned constant
    hub.publish(msg("flows", SNAPSHOT, text))
    got_a, got_b = await a.mailbox.get(), await b.mailbox.get()
    assert got_a is text
    assert got_b is text


def test_unsubscribe_drops_pending_and_membership() -> None:
    hub, sub = Hub(), Subscriber(BIG)
    hub.subscribe(sub, "run/F/1", [msg("run/F/1", SNAPSHOT, "snapshot")])
    hub.subscribe(sub, "flows", [msg("flows", SNAPSHOT, "flows")])
    hub.publish(msg("run/F/1", "task/a/1", "delta"))
    hub.unsubscribe(sub, "run/F/1")
    assert len(sub.mailbox) == 1
    assert sub.mailbox.pending_bytes == len("flows")
    assert sub.topics == {"flows"}
    assert not hub.has_subscribers("run/F/1")
    assert hub.topics == ["flows"]
    assert hub.publish(msg("run/F/1", "task/a/1", "late")) == 0
    assert len(sub.mailbox) == 1
    hub.unsubscribe(sub, "never-subscribed")  # harmless


def test_unsubscribe_keeps_other_subscribers() -> None:
    hub, a, b = Hub(), Subscriber(BIG), Subscriber(BIG)
    hub.subscribe(a, "flows", [])
    hub.subscribe(b, "flows", [])
    hub.unsubscribe(a, "flows")
    assert hub.has_subscribers("flows")
    assert hub.publish(msg("flows", SNAPSHOT, "x")) == 1
    assert len(a.mailbox) == 0 and len(b.mailbox) == 1


def test_leave_drops_every_topic() -> None:
    hub, sub = Hub(), Subscriber(BIG)
    for topic in ("flows", "runs/F", "card/x"):
        hub.subscribe(sub, topic, [msg(topic, SNAPSHOT, topic)])
    hub.leave(sub)
    assert hub.topics == []
    assert hub.subscriber_count() == 0
    assert sub.topics == set()
    assert len(sub.mailbox) == 0
