"""Topic pub/sub between the feed and the sockets.

Each subscriber has a mailbox that keeps only the newest message per (topic, entity): a slow
browser never makes the server buffer more than one message per thing it watches, and it always
gets the last one. A message is serialized once and the same string goes to every mailbox.

The hub also knows who looks: a topic is watched while anyone subscribes to it, and visible while
a subscriber shows it. A page that names the one topic it shows (`Subscriber.show`) keeps its
other topics hidden (a viewer's cards kept loaded behind the shown one); a page that never
names one shows everything it subscribes to (a card's own page, an older viewer).
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
        self.named = False  # whether its page said which topic it shows
        self.shown: str | None = None  # that topic, once named (None: none)

    def sees(self, topic: str) -> bool:
        """Whether its page shows `topic` (if subscribed): all of them until it names one."""
        return not self.named or topic == self.shown


# Told when a topic gains its first subscriber (True) or loses its last (False); as a sight
# watch, when a topic becomes visible to a subscriber (True) or to none any more (False).
TopicWatch = Callable[[str, bool], None]


class Hub:
    def __init__(self) -> None:
        self._topics: dict[str, set[Subscriber]] = {}
        self._seen: dict[str, int] = {}  # by topic: how many of its subscribers show it
        self.watches: list[TopicWatch] = []  # who wants to know which topics are looked at
        self.sight_watches: list[TopicWatch] = []  # ... and which of those are visible

    def subscribe(self, subscriber: Subscriber, topic: str, initial: Iterable[Message]) -> None:
        """Register and queue the topic's current state; later publishes follow in order."""
        members = self._topics.get(topic)
        if members is None:
            members = self._topics[topic] = set()
        joined = subscriber not in members
        members.add(subscriber)
        subscriber.topics.add(topic)
        for message in initial:
            subscriber.mailbox.put(message)
        if len(members) == 1 and joined:
            for watch in self.watches:
                watch(topic, True)
        if joined and subscriber.sees(topic):
            self._sight(topic, +1)

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        subscriber.topics.discard(topic)
        subscriber.mailbox.drop_topic(topic)
        members = self._topics.get(topic)
        if members is not None and subscriber in members:
            if subscriber.sees(topic):
                self._sight(topic, -1)
            members.discard(subscriber)
            if not members:
                del self._topics[topic]
                for watch in self.watches:
                    watch(topic, False)

    def show(self, subscriber: Subscriber, topic: str | None) -> None:
        """The one topic the subscriber's page shows (None: none); its other topics are kept
        hidden. It may name a topic before subscribing to it."""
        before = {t for t in subscriber.topics if subscriber.sees(t)}
        subscriber.named, subscriber.shown = True, topic
        after = {t for t in subscriber.topics if subscriber.sees(t)}
        for gone in before - after:
            self._sight(gone, -1)
        for came in after - before:
            self._sight(came, +1)

    def visible(self, topic: str) -> bool:
        return self._seen.get(topic, 0) > 0

    def _sight(self, topic: str, change: int) -> None:
        seen = self._seen.get(topic, 0) + change
        if seen > 0:
            self._seen[topic] = seen
        else:
            self._seen.pop(topic, None)
        if seen == 0 or (seen == 1 and change > 0):
            for watch in self.sight_watches:
                watch(topic, seen > 0)

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
