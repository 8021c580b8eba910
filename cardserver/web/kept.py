"""A least-recently-used cache bounded by bytes as well as by count: what one card can make the
server keep is bounded by its budget, never by how big the card is."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kept(Generic[K, V]):
    """Values by key; the least recently used go first beyond `entries` or `max_bytes`. A value
    bigger than `max_bytes` on its own is not kept at all (it is served, then let go)."""

    def __init__(self, entries: int, max_bytes: int, size: Callable[[V], int]) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0  # the sizes of the values kept

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def fits(self, size: int) -> bool:
        return size <= self.max_bytes

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if not kept."""
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> V:
        """Keep `value` as the most recently used (if it fits at all); returns it."""
        self.discard(key)
        size = self._size(value)
        if not self.fits(size):
            return value
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > self.entries or self.bytes > self.max_bytes:
            _, (_, gone) = self._items.popitem(last=False)
            self.bytes -= gone
        return value

    def discard(self, key: K) -> None:
        found = self._items.pop(key, None)
        if found is not None:
            self.bytes -= found[1]
