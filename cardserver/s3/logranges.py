"""A page of an S3 log (or the tail where a traceback is) read by ranged GETs, cut by the code
that pages a local log (`logs.tail_of`, `logs.after_of`), so both sources give the same lines.

That code reads a file through `seek` and `read`, walking back from the end in blocks. Here it
reads a `Window` on part of the object instead; a read outside the window raises `Outside`
with the bytes it wanted, the window grows to hold them (one ranged GET: downwards it at least
doubles, so a page costs a few GETs), and the cut runs again. Bytes are never read twice, and a
page reads no more than the cut itself would from a file. A line split by a range boundary is
whole again in the window, as ranges are joined before anything is parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import logs

RangeRead = Callable[[int, int], Awaitable[bytes]]  # (start, end) -> those bytes of the object


class Changed(Exception):
    """The object is not the one listed (rewritten or deleted since): list it again."""


class Outside(Exception):
    """A read of bytes `start` to `end` of the object that the window does not hold."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__(start, end)
        self.start = start
        self.end = end


@dataclass(slots=True)
class Window:
    """Bytes `offset` to `offset + len(body)` of an object, read as a file is (`logs.Readable`)."""

    body: bytes = b""
    offset: int = 0
    position: int = 0

    def seek(self, offset: int, /) -> int:
        self.position = offset
        return offset

    def read(self, size: int, /) -> bytes:
        start, end = self.position, self.position + max(0, size)
        if start == end:
            return b""
        if start < self.offset or end > self.offset + len(self.body):
            raise Outside(start, end)
        self.position = end
        return self.body[start - self.offset : end - self.offset]


async def grown(window: Window, wanted: Outside, read: RangeRead, first: int, limit: int) -> Window:
    """The window holding what was wanted. Just below what it holds, it grows down to at least
    twice its size (never past `limit` bytes below its end); else it is the range wanted,
    widened back to `first` bytes."""
    top = window.offset + len(window.body)
    if window.body and window.offset <= wanted.end <= top:
        low = min(wanted.start, max(0, top - limit, window.offset - len(window.body)))
        return Window(await exactly(read, low, window.offset) + window.body, low)
    low = min(wanted.start, max(0, wanted.end - limit, wanted.end - first))
    return Window(await exactly(read, low, wanted.end), low)


async def exactly(read: RangeRead, start: int, end: int) -> bytes:
    """The bytes asked for, all of them: fewer means the object is shorter than listed."""
    body = await read(start, end)
    if len(body) != end - start:
        raise Changed(f"asked for {end - start} bytes at {start}, got {len(body)}")
    return body


async def cut_page(cut: Callable[[Window], logs.Page], read: RangeRead, first: int, limit: int) -> logs.Page:
    window = Window()
    while True:
        try:
            return cut(window)
        except Outside as wanted:
            window = await grown(window, wanted, read, first, limit)


async def page(read: RangeRead, size: int, lines: int, before: int | None, since: int | None) -> logs.Page:
    """A page of a log of `size` bytes, as `taskinfo.read_page` cuts one from a file: up to
    `lines` lines after byte `since`, else the last `lines` before byte `before` (or the end)."""
    if since is not None:
        return await cut_page(lambda window: logs.after_of(window, size, since, lines), read, 0,
                              logs.MAX_PAGE_BYTES)
    return await cut_page(lambda window: logs.tail_of(window, size, lines, before), read, logs.BLOCK,
                          logs.MAX_PAGE_BYTES)


async def traceback_tail(read: RangeRead, size: int) -> logs.Page:
    """The end of a stderr log where a traceback is looked for (as `logs.traceback_of` reads
    it from a file): its last TRACEBACK_TAIL_BYTES, in one GET."""
    limit = logs.TRACEBACK_TAIL_BYTES
    return await cut_page(lambda window: logs.tail_of(window, size, logs.MAX_PAGE_LINES, max_bytes=limit),
                          read, limit, limit)
