"""A task's logs and traceback on S3 are read in ranges (issue 21, finding 3): through a
counting proxy in front of moto's real S3 server, paging a 30 MiB log to the top as the viewer
does transfers about the log once (not the whole log per page), `tail=1` is one small Range GET,
the traceback is the last 256 KiB of stderr, and many requests at once hold only a few reads.
Every page equals the page the local source cuts from the same bytes in a file."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from s3fixtures import S3Endpoint, get_json, s3_config, settings_for
from s3proxy import FaultProxy, start_proxy

from cardserver import logs
from cardserver.s3 import logranges
from cardserver.s3.taskreads import LOG_READS_AT_ONCE
from cardserver.web.keys import SOURCE

pytestmark = pytest.mark.usefixtures("s3_credentials")

PREFIX = "logs"  # the datastore: s3://<bucket>/logs
TASK = "LogFlow/1/start/1"
STDOUT_BYTES = 30 << 20  # the log
PAGE = 2000  # lines a page, as the viewer asks (static/loglist.js)
EXCEPTION = "ValueError: this step fails on purpose"


def mflog(rng: random.Random, number: int) -> bytes:
    """One line as Metaflow saves it; some long, some with characters of several bytes."""
    text = f"line {number} " + "é漢x" * rng.choice((0, 1, 5, 40)) + "y" * rng.randrange(0, 300)
    if rng.random() < 0.0005:
        text += "z" * 70_000  # longer than a 64 KiB block, and than a line is shown
    return f"[MFLOG|0|2026-11-29T10:03:{number % 60:02}.835570Z|task|5f3c]{text}\n".encode()


def log_of(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines, total = [], 0
    while total < size:
        lines.append(mflog(rng, len(lines)))
        total += len(lines[-1])
    return b"".join(lines)


def stderr_with_traceback() -> bytes:
    noise = log_of(1 << 20, seed=2)
    trace = ["Traceback (most recent call last):", '  File "flow.py", line 9, in start',
             "    raise ValueError('this step fails on purpose')", EXCEPTION]
    return noise + b"".join(f"[MFLOG|0|2026-11-29T10:04:00.000000Z|task|5f3c]{t}\n".encode() for t in trace)


@dataclass(frozen=True)
class Logs:
    stdout: bytes
    stderr: bytes
    folder: Path  # the same logs as local files, to compare pages with the local source's


@pytest.fixture(scope="module")
def task_logs(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Logs:
    """A failed task's folder in the bucket: a 30 MiB stdout and a stderr ending in a traceback."""
    found = Logs(log_of(STDOUT_BYTES, seed=1), stderr_with_traceback(), tmp_path_factory.mktemp("logs"))
    folder = f"{PREFIX}/{TASK}"
    s3_server.put_many({f"{folder}/0.attempt.json": b'{"time": 1795345864.0}', f"{folder}/0.DONE.lock": b"",
                        f"{folder}/0.runtime": b'{"return_code": 1, "killed": false, "success": false}',
                        f"{folder}/0.runtime_stdout.log": found.stdout,
                        f"{folder}/0.runtime_stderr.log": found.stderr})
    (found.folder / "stdout").write_bytes(found.stdout)
    (found.folder / "stderr").write_bytes(found.stderr)
    return found


@pytest.fixture
async def proxy(s3_server: S3Endpoint) -> AsyncIterator[tuple[FaultProxy, str]]:
    async for pair in start_proxy(s3_server.url):
        yield pair


@pytest.fixture
async def client(proxy: tuple[FaultProxy, str], start_app: Any, s3_server: S3Endpoint, task_logs: Logs,
                 tmp_path: Path) -> Any:
    """Our app on the datastore, reaching S3 through the proxy (which stops after it)."""
    return await start_app(s3_config(tmp_path, settings_for(proxy[1], f"s3://{s3_server.bucket}/{PREFIX}")))


def log_gets(proxy: FaultProxy, stream: str) -> list[Any]:
    return [got for got in proxy.gets if got.path.endswith(f"/0.runtime_{stream}.log")]


def local_page(task_logs: Logs, stream: str, lines: int, before: int | None = None,
               since: int | None = None) -> dict[str, Any]:
    path = task_logs.folder / stream
    if since is not None:
        return logs.after(path, task_logs.folder, since, lines).as_dict()
    return logs.tail(path, task_logs.folder, lines, before).as_dict()


async def log_page(client: Any, query: str) -> dict[str, Any]:
    page = await get_json(client, f"/api/logs/{TASK}?{query}")
    return {name: page[name] for name in ("start", "end", "size", "lines")}


async def test_paging_a_30_mib_log_to_the_top_reads_it_about_once(
    client: Any, proxy: tuple[FaultProxy, str], task_logs: Logs
) -> None:
    """Before: every page was a GET of the whole log (86 pages, 2.7 GB)."""
    counter, _ = proxy
    page = await log_page(client, f"tail={PAGE}")
    pages = [page]
    while page["start"] > 0:
        page = await log_page(client, f"tail={PAGE}&before={page['start']}")
        pages.append(page)
    for page in pages[:3] + pages[-3:]:  # the first and last: as the local source cuts them
        before = None if page is pages[0] else page["end"]
        assert page == local_page(task_logs, "stdout", PAGE, before)
    shown = [line for page in reversed(pages) for line in page["lines"]]
    assert shown == [line.as_dict() for line in logs.parse_lines(task_logs.stdout)]  # no line lost or split
    gets = log_gets(counter, "stdout")
    assert all(got.range is not None and got.status == 206 for got in gets), gets[:3]
    assert len(pages) > 40 and sum(got.bytes for got in gets) < 2 * len(task_logs.stdout)
    assert max(got.bytes for got in gets) <= logs.MAX_PAGE_BYTES


async def test_one_line_is_one_small_range_get(
    client: Any, proxy: tuple[FaultProxy, str], task_logs: Logs
) -> None:
    counter, _ = proxy
    page = await log_page(client, "tail=1")
    assert page == local_page(task_logs, "stdout", 1)
    [got] = log_gets(counter, "stdout")
    size = len(task_logs.stdout)
    assert got.range == f"bytes={size - logs.BLOCK}-{size - 1}" and got.bytes == logs.BLOCK
    since = size - 5000
    after = await log_page(client, f"tail=10&after={since}")
    assert after == local_page(task_logs, "stdout", 10, since=since)
    assert log_gets(counter, "stdout")[-1].range == f"bytes={since}-{size - 1}"


async def test_the_traceback_is_read_from_the_end_of_stderr(
    client: Any, proxy: tuple[FaultProxy, str], task_logs: Logs
) -> None:
    counter, _ = proxy
    detail = await get_json(client, f"/api/tasks/{TASK}")
    assert detail["status"] == "failed" and detail["traceback"]["exception"] == EXCEPTION
    local = logs.traceback_of(task_logs.folder / "stderr", task_logs.folder)
    assert local is not None and detail["traceback"]["lines"] == [line.as_dict() for line in local]
    [got] = log_gets(counter, "stderr")
    assert got.range is not None and got.bytes == logs.TRACEBACK_TAIL_BYTES


async def test_many_log_requests_at_once_hold_only_a_few_reads(
    client: Any, proxy: tuple[FaultProxy, str], task_logs: Logs
) -> None:
    counter, _ = proxy
    counter.set_faults({"reset": True})
    pages = await asyncio.gather(*(log_page(client, "tail=100") for _ in range(100)))
    assert all(page == pages[0] for page in pages) and len(pages[0]["lines"]) == 100
    assert counter.most_getting <= LOG_READS_AT_ONCE < len(log_gets(counter, "stdout"))


async def test_a_log_rewritten_while_paged_is_listed_again(
    client: Any, proxy: tuple[FaultProxy, str], s3_server: S3Endpoint, task_logs: Logs
) -> None:
    """A remote task uploads its whole log every few seconds: a read of the version listed
    (If-Match) finds it replaced, and the page comes from the new version."""
    counter, _ = proxy
    reader = client.app[SOURCE].reader
    key = f"{PREFIX}/{TASK}/0.runtime_stdout.log"
    longer = task_logs.stdout + b"[MFLOG|0|2026-11-29T10:05:00.000000Z|task|5f3c]one more line\n"
    rewrite = reader.get_range

    async def rewritten_first(*args: Any, **kwargs: Any) -> Any:
        reader.get_range = rewrite
        await asyncio.to_thread(s3_server.client().put_object, Bucket=s3_server.bucket, Key=key, Body=longer)
        return await rewrite(*args, **kwargs)

    reader.get_range = rewritten_first
    try:
        page = await log_page(client, "tail=1")
    finally:
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=task_logs.stdout)
    assert page["size"] == len(longer) and page["lines"] == [{"ts": "2026-11-29T10:05:00.000000Z",
                                                              "text": "one more line"}]
    assert [got.status for got in log_gets(counter, "stdout")] == [412, 206]


# --- the window the local paging code reads through ------------------------------------------


def reading(body: bytes, asked: list[tuple[int, int]]) -> logranges.RangeRead:
    """Ranges of `body`, each one asked for noted in `asked`."""

    async def read(start: int, end: int) -> bytes:
        asked.append((start, end))
        return body[start:end]

    return read


@pytest.mark.parametrize("seed", range(4))
async def test_ranged_pages_are_the_local_pages(seed: int) -> None:
    """Any page, cut by range reads, is the page cut from a file of the same bytes; no byte is
    read twice; a tail reads at most twice what it shows (and a block), an `after` page what the
    file's cut reads."""
    rng = random.Random(seed)
    body = log_of(rng.randrange(1, 600_000), seed)
    if seed % 2:
        body = body.rstrip(b"\n").replace(b"\n", b"\r\n", 50)  # no final newline, some CRLF
    for _ in range(25):
        lines = rng.choice((1, 2, 7, 100, 2000, 5000))
        before = rng.choice((None, rng.randrange(0, len(body) + 10)))
        since = rng.choice((None, None, rng.randrange(0, len(body) + 10)))
        asked: list[tuple[int, int]] = []
        ranged = await logranges.page(reading(body, asked), len(body), lines, before, since)
        handle = io.BytesIO(body)
        local = (logs.after_of(handle, len(body), since, lines) if since is not None
                 else logs.tail_of(handle, len(body), lines, before))
        assert ranged == local, (lines, before, since)
        spans = sorted(asked)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # never read twice
        read_bytes = sum(end - start for start, end in asked)
        if since is None:
            assert read_bytes <= 2 * (local.end - local.start + logs.BLOCK)
        else:
            assert read_bytes == min(logs.MAX_PAGE_BYTES, len(body) - local.start)
