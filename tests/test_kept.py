"""The byte-bounded cache (web/kept.py): what it holds is accounted for, and bounded."""

from __future__ import annotations

from cardserver.web.kept import Kept


def kept(entries: int = 10, max_bytes: int = 100) -> Kept[str, bytes]:
    return Kept(entries, max_bytes, len)


def test_the_least_recently_used_go_first_beyond_the_bytes() -> None:
    cache = kept()
    for name in "abc":
        cache.put(name, b"x" * 40)
    assert "a" not in cache and len(cache) == 2 and cache.bytes == 80
    assert cache.get("b") == b"x" * 40  # now the most recently used...
    cache.put("d", b"y" * 40)
    assert "c" not in cache and "b" in cache and cache.bytes == 80  # ... so "c" went


def test_beyond_the_count_too() -> None:
    cache = kept(entries=2)
    for name in "abc":
        cache.put(name, b"x")
    assert list(name for name in "abc" if name in cache) == ["b", "c"] and cache.bytes == 2


def test_a_value_bigger_than_the_budget_is_served_not_kept() -> None:
    cache = kept()
    cache.put("small", b"x" * 10)
    big = b"y" * 101
    assert cache.put("big", big) is big
    assert "big" not in cache and "small" in cache and cache.bytes == 10


def test_a_value_replaced_or_discarded_is_no_longer_counted() -> None:
    cache = kept()
    cache.put("a", b"x" * 60)
    cache.put("a", b"x" * 30)
    assert cache.bytes == 30 and len(cache) == 1
    cache.put("a", b"x" * 200)  # too big: the old value goes too, nothing stale is served
    assert "a" not in cache and cache.bytes == 0
    cache.put("b", b"x")
    cache.discard("b")
    cache.discard("b")
    assert cache.bytes == 0 and cache.get("b") is None
