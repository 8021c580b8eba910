"""A task's saved output: Metaflow's mflog lines parsed into timestamp + text, read in bounded
pages from the end of a file (a task can print hundreds of MB), and the traceback of a failed
attempt picked out of stderr.

An mflog line: `[MFLOG|0|2026-11-29T10:03:11.835570Z|runtime|<uuid>]text`. A line that is not
one is kept as plain text with no timestamp.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from . import disk

_MFLOG = re.compile(r"\[MFLOG\|\d+\|(?P<ts>[^|\]]{0,40})\|(?P<source>[^|\]]{0,40})\|[^\]]{0,80}\]")
BLOCK = 64 * 1024  # read size when walking back from the end
MAX_PAGE_LINES = 5_000
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a page never reads more than this, whatever the line lengths
MAX_LINE_CHARS = 16 * 1024  # a longer line is cut, so one runaway line cannot flood the page
TRACEBACK_TAIL_BYTES = 256 * 1024  # a traceback is at the end of stderr: look only there
_TRACEBACK_START = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


class Readable(Protocol):
    """What paging reads a log through: an open file, or a window on an S3 object's bytes."""

    def seek(self, offset: int, /) -> int: ...

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: str | None  # ISO 8601, as Metaflow wrote it
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "text": self.text}


@dataclass(frozen=True, slots=True)
class Page:
    """Whole lines from byte `start` up to byte `end` of a file of `size` bytes."""

    lines: list[LogLine]
    start: int
    end: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "size": self.size,
                "lines": [line.as_dict() for line in self.lines]}


def parse_line(raw: bytes) -> LogLine:
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    match = _MFLOG.match(text)
    if match is None:
        return LogLine(None, text[:MAX_LINE_CHARS])
    return LogLine(match["ts"] or None, text[match.end():][:MAX_LINE_CHARS])


def parse_lines(chunk: bytes) -> list[LogLine]:
    """Every line of a chunk that holds whole lines (a final newline is optional)."""
    if not chunk:
        return []
    parts = chunk.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [parse_line(part) for part in parts]


def open_log(path: Path, root: Path) -> BinaryIO:
    """A log opened the one safe way (a regular file inside `root`: never a FIFO that blocks,
    never through a symlink). Raises OSError otherwise."""
    fd, _ = disk.open_regular(path, root)
    return os.fdopen(fd, "rb")


def tail(path: Path, root: Path, lines: int, before: int | None = None,
         max_bytes: int = MAX_PAGE_BYTES) -> Page:
    """The last `lines` whole lines ending at byte `before` (default: the end of the file),
    found by reading backwards in blocks: never more than `max_bytes` is read."""
    with open_log(path, root) as handle:
        return tail_of(handle, os.fstat(handle.fileno()).st_size, lines, before, max_bytes)


def tail_of(handle: Readable, size: int, lines: int, before: int | None = None,
            max_bytes: int = MAX_PAGE_BYTES) -> Page:
    """`tail` of an open log of `size` bytes (a file, or an S3 object's bytes)."""
    end = size if before is None else max(0, min(before, size))
    chunk, start = read_back(handle, end, lines, max_bytes)
    return Page(parse_lines(chunk), start, end, size)


def read_back(handle: Readable, end: int, lines: int, max_bytes: int) -> tuple[bytes, int]:
    """The bytes of the last `lines` lines before `end`, and where they start."""
    start = end
    chunk = b""
    while start > 0 and end - start < max_bytes:
        step = min(BLOCK, start, max_bytes - (end - start))
        start -= step
        handle.seek(start)
        chunk = handle.read(step) + chunk
        if chunk.count(b"\n", 0, len(chunk) - 1) >= lines:  # the last byte may end the last line
            break
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    cut = len(body)
    for _ in range(lines):
        cut = body.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    if cut >= 0:  # more lines than asked: drop everything up to the cut
        return chunk[cut + 1 :], start + cut + 1
    if start > 0:  # the read was bounded mid-line: drop the partial first line, if there is a later one
        first = chunk.find(b"\n")
        if 0 <= first < len(chunk) - 1:
            return chunk[first + 1 :], start + first + 1
    return chunk, start


def after(path: Path, root: Path, offset: int, lines: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
    """Up to `lines` whole lines from byte `offset` on (what was written since a page ended)."""
    with open_log(path, root) as handle:
        return after_of(handle, os.fstat(handle.fileno()).st_size, offset, lines, max_bytes)


def after_of(handle: Readable, size: int, offset: int, lines: int, max_bytes: int = MAX_PAGE_BYTES) -> Page:
    """`after` on an open log of `size` bytes."""
    start = max(0, min(offset, size))
    handle.seek(start)
    chunk = handle.read(min(max_bytes, size - start))
    cut = -1
    for _ in range(lines):
        cut = chunk.find(b"\n", cut + 1)
        if cut < 0:
            break
    if cut >= 0:
        chunk = chunk[: cut + 1]
    elif start + len(chunk) < size:  # bounded mid-line: keep only whole lines
        last = chunk.rfind(b"\n")
        chunk = chunk[: last + 1] if last >= 0 else chunk
    return Page(parse_lines(chunk), start, start + len(chunk), size)


def traceback_span(lines: list[str]) -> tuple[int, int] | None:
    """Where the last Python traceback in these lines is (with the exceptions chained before
    it), up to and including its exception line; None when there is none."""
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK_START)]
    if not starts:
        return None
    first = starts[-1]
    for earlier in reversed(starts[:-1]):  # walk back over "During handling of ..." links
        if not any(line.startswith(_CHAINED) for line in lines[earlier:first]):
            break
        first = earlier
    return first, exception_end(lines, starts[-1])


def exception_end(lines: list[str], start: int) -> int:
    """Where the traceback starting at `start` ends: after its first unindented line (the
    exception), plus that exception's indented continuation lines."""
    i = start + 1
    while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
        i += 1
    i += 1  # the exception line itself
    while i < len(lines) and lines[i].startswith(" ") and lines[i].strip():
        i += 1
    return min(i, len(lines))


def traceback_of(path: Path, root: Path) -> list[LogLine] | None:
    """The traceback at the end of a stderr log; None when it has none."""
    return traceback_in(tail(path, root, MAX_PAGE_LINES, max_bytes=TRACEBACK_TAIL_BYTES))


def traceback_in(page: Page) -> list[LogLine] | None:
    """The traceback at the end of a page of stderr (its last TRACEBACK_TAIL_BYTES); None if none."""
    span = traceback_span([line.text for line in page.lines])
    return None if span is None else page.lines[span[0] : span[1]]
