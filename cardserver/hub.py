"""Topic pub/sub between the feed and the sockets.

Each subscriber has a mailbox that keeps only the newest message per (topic, entity): a slow
browser never makes the server buffer more than one message per thing it watches, and it always
gets the last one. A message is serialized once and the same string goes to every mailbox.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SNAPSHOT = ""  # the entity of a topic's full-state message; it supersedes all pending deltas


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    entity: str  # what the message is the newest state of, within the topic
    text: str  # JSON, serialized once


class Overflow(Exception):
    """The subscriber fell so far behind that it must reconnect and resync."""


class Mailbox:
    def __init__(self, max_bytes: int) -> None:
        self._pending: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, message: Message) -> None:
        if message.entity == SNAPSHOT:
            self.drop_topic(message.topic)
        slot = (message.topic, message.entity)
        old = self._pending.get(slot)
        if old is not None:
            self._bytes -= len(old)
        self._pending[slot] = message.text  # a replaced slot keeps its place in line
        self._bytes += len(message.text)
        # Beside the newest message, however big (a data update may be 16 MB): it must get through.
        if self._bytes - len(message.text) > self._max_bytes:
            self.overflowed = True
        self._ready.set()

    def drop_topic(self, topic: str) -> None:
        for slot in [s for s in self._pending if s[0] == topic]:
            self._bytes -= len(self._pending.pop(slot))

    async def get(self) -> str:
        while not self._pending:
            if self.overflowed:
                raise Overflow
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise Overflow
        _, text = self._pending.popitem(last=False)
        self._bytes -= len(text)
        return text

    def close(self) -> None:
        """Wake a waiting `get` so the writer can notice the socket is gone."""
        self.overflowed = True
        self._ready.set()


class Subscriber:
    def __init__(self, max_bytes: int) -> None:
        self.mailbox = Mailbox(max_bytes)
        self.topics: set[str] = set()


# Told when a topic gains its first subscriber (True) or loses its last (False).
TopicWatch = Callable[[str, bool], None]


class Hub:
    def __init__(self) -> None:
        self._topics: dict[str, set[Subscriber]] = {}
        self.watches: list[TopicWatch] = []  # who wants to know which topics are looked at

    def subscribe(self, subscriber: Subscriber, topic: str, initial: Iterable[Message]) -> None:
        """Register and queue the topic's current state; later publishes follow in order."""
        members = self._topics.get(topic)
        if members is None:
            members = self._topics[topic] = set()
        members.add(subscriber)
        subscriber.topics.add(topic)
        for message in initial:
            subscriber.mailbox.put(message)
        if len(members) == 1:
            for watch in self.watches:
                watch(topic, True)

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        subscriber.topics.discard(topic)
        subscriber.mailbox.drop_topic(topic)
        members = self._topics.get(topic)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._topics[topic]
                for watch in self.watches:
                    watch(topic, False)

    def leave(self, subscriber: Subscriber) -> None:
        for topic in list(subscriber.topics):
            self.unsubscribe(subscriber, topic)

    def has_subscribers(self, topic: str) -> bool:
        return topic in self._topics

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def subscriber_count(self) -> int:
        return len({s for members in self._topics.values() for s in members})

    def publish(self, message: Message) -> int:
        members = self._topics.get(message.topic, ())
        for subscriber in members:
            subscriber.mailbox.put(message)
        return len(members)
