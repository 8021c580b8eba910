"""mflog parsing, bounded tail paging and traceback extraction (`cardserver.logs`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cardserver import logs

STAMP = "[MFLOG|0|2026-11-29T10:03:11.835570Z|runtime|5e0d4dc9-b32b-4398-91b4-419fc6061118]"


def write_log(path: Path, texts: list[str], final_newline: bool = True) -> Path:
    body = "\n".join(f"{STAMP}{text}" for text in texts)
    path.write_text(body + ("\n" if final_newline else ""))
    return path


def test_mflog_line_becomes_timestamp_and_text() -> None:
    line = logs.parse_line(f"{STAMP}<img src=x onerror=alert(1)>\n".encode())
    assert line == logs.LogLine("2026-11-29T10:03:11.835570Z", "<img src=x onerror=alert(1)>")


def test_plain_and_broken_lines_stay_text() -> None:
    assert logs.parse_line(b"not mflog\n") == logs.LogLine(None, "not mflog")
    assert logs.parse_line(b"[MFLOG|0|x") == logs.LogLine(None, "[MFLOG|0|x")
    assert logs.parse_line(b"\xff\xfe bad bytes").text.endswith("bad bytes")


def test_a_runaway_line_is_cut() -> None:
    assert len(logs.parse_line(b"x" * 100_000).text) == logs.MAX_LINE_CHARS


def test_tail_then_page_back_covers_every_line_once(tmp_path: Path) -> None:
    texts = [f"line {i}" for i in range(10_000)]
    path = write_log(tmp_path / "0.runtime_stdout.log", texts)
    page = logs.tail(path, tmp_path, 1_000)
    assert [line.text for line in page.lines] == texts[-1_000:]
    assert page.end == page.size == path.stat().st_size
    seen = [line.text for line in page.lines]
    while page.start > 0:
        earlier = logs.tail(path, tmp_path, 1_000, before=page.start)
        assert earlier.end == page.start  # pages meet exactly: nothing lost, nothing twice
        seen = [line.text for line in earlier.lines] + seen
        page = earlier
    assert seen == texts


def test_tail_reads_a_bounded_number_of_bytes(tmp_path: Path) -> None:
    path = write_log(tmp_path / "big.log", ["y" * 1_000] * 5_000)  # ~5 MB of 1 KB lines
    page = logs.tail(path, tmp_path, 5_000, max_bytes=64 * 1024)
    assert page.end - page.start <= 64 * 1024
    assert 0 < len(page.lines) < 70
    assert all(line.text == "y" * 1_000 for line in page.lines)  # no half line at the cut


def test_tail_without_final_newline_and_empty_file(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.log", ["one", "two", "three"], final_newline=False)
    assert [line.text for line in logs.tail(path, tmp_path, 2).lines] == ["two", "three"]
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert logs.tail(empty, tmp_path, 10) == logs.Page([], 0, 0, 0)


def test_after_reads_what_was_appended(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.log", ["one", "two"])
    first = logs.tail(path, tmp_path, 100)
    with path.open("a") as handle:
        handle.write(f"{STAMP}three\n{STAMP}four\n")
    later = logs.after(path, tmp_path, first.end, 1)
    assert [line.text for line in later.lines] == ["three"]
    rest = logs.after(path, tmp_path, later.end, 100)
    assert [line.text for line in rest.lines] == ["four"] and rest.end == rest.size


TRACEBACK = """\
<flow F step s> failed:
    Internal error
Traceback (most recent call last):
  File "x.py", line 1, in f
    g()
KeyError: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "x.py", line 3, in s
    raise RuntimeError("diverged")
RuntimeError: diverged

Task failed."""


def test_traceback_with_its_chained_exception() -> None:
    lines = TRACEBACK.splitlines()
    span = logs.traceback_span(lines)
    assert span is not None
    picked = lines[span[0] : span[1]]
    assert picked[0] == "Traceback (most recent call last):"
    assert "KeyError: 'a'" in picked
    assert picked[-1] == "RuntimeError: diverged"


@pytest.mark.parametrize("text", ["all good\nTask finished.", "", "Traceback is a word here"])
def test_no_traceback(text: str) -> None:
    assert logs.traceback_span(text.splitlines()) is None


def test_traceback_of_a_stderr_log(tmp_path: Path) -> None:
    path = write_log(tmp_path / "0.runtime_stderr.log", ["noise"] * 50_000 + TRACEBACK.splitlines())
    found = logs.traceback_of(path, tmp_path)
    assert found is not None and found[-1].text == "RuntimeError: diverged"
    assert found[-1].ts == "2026-11-29T10:03:11.835570Z"


def test_a_fifo_or_a_link_named_like_a_log_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO would block the reading thread forever; a link could lead out of the datastore."""
    fifo = tmp_path / "0.runtime_stdout.log"
    os.mkfifo(fifo)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.log"
    outside.write_text("secret\n")
    link = tmp_path / "1.runtime_stdout.log"
    link.symlink_to(outside)
    for path in (fifo, link):
        with pytest.raises(OSError):
            logs.tail(path, tmp_path, 10)
        with pytest.raises(OSError):
            logs.after(path, tmp_path, 0, 10)
