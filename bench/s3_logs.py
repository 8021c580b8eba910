"""A task's logs on S3 (issue 21, finding 3): what paging a 30 MiB log to the top as the viewer
does costs in GETs and bytes, what `tail=1` and a traceback cost, and the server's memory while
100 log requests run at once.

    python bench/s3_logs.py               # a 30 MiB stdout, 100 requests at once
    python bench/s3_logs.py --smoke       # a 2 MiB stdout, 10 at once; exits non-zero on any error

How: a failed task's folder is written to moto's S3 server (its own process): a stdout of
mflog lines of about 180 bytes (86 pages of 2,000 lines at 30 MiB, the issue's log) and a
stderr of 1 MiB ending in a traceback. `card server`, as a user runs it on S3, reaches moto
through tests/s3proxy.py in its own process, which counts every GET with its Range and the
bytes it answered. The viewer's paging is replayed over HTTP: `tail=2000`, then `before=<start>`
until the page starts at byte 0. The server's RSS is sampled every 100 ms while the concurrent
requests (each the viewer's first page) run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PeakRSS,
    metaflow_s3_env,
    report,
    rss_mb,
    start_moto_server,
    start_s3_cardserver,
    start_s3_proxy,
    verdict,
)
from bench.s3card import Proxy, S3Place

TASK = "LogFlow/1/start/1"
STDOUT, STDERR = "0.runtime_stdout.log", "0.runtime_stderr.log"
PAGE = 2000  # lines a page, as the viewer asks (static/loglist.js)
TAIL_BYTES = 64 * 1024  # one block back from the end: what `tail=1` should read
TRACEBACK_BYTES = 256 * 1024  # the end of stderr the local source reads for a traceback
RSS_TARGET_MB = 150.0  # the issue saw 343 MB with 100 requests at once


def log_lines(size: int, seed: int) -> bytes:
    """Mflog lines of about 180 bytes, `size` bytes in all."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    while total < size:
        text = f"step {len(lines)}: loss " + f"{rng.random():.6f} " * rng.randrange(4, 24)
        lines.append(f"[MFLOG|0|2026-11-29T10:03:11.835570Z|task|7a4c1f52-0c1d-4e3b-9b1d-3f2a]{text}\n".encode())
        total += len(lines[-1])
    return b"".join(lines)


def seed(place: S3Place, stdout_bytes: int) -> int:
    place.create_bucket()
    trace = b"".join(f"[MFLOG|0|2026-11-29T10:04:00.000000Z|task|7a4c]{line}\n".encode() for line in (
        "Traceback (most recent call last):", '  File "flow.py", line 9, in start',
        "    raise ValueError('this step fails on purpose')", "ValueError: this step fails on purpose"))
    stdout = log_lines(stdout_bytes, seed=1)
    place.put_many({f"{TASK}/0.attempt.json": b'{"time": 1795345864.0}', f"{TASK}/0.DONE.lock": b"",
                    f"{TASK}/0.runtime": b'{"return_code": 1, "killed": false, "success": false}',
                    f"{TASK}/{STDOUT}": stdout, f"{TASK}/{STDERR}": log_lines(1 << 20, seed=2) + trace})
    return len(stdout)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as answer:
        assert answer.status == 200, (url, answer.status, await answer.text())
        return await answer.json()


async def page_to_top(session: aiohttp.ClientSession, base: str) -> tuple[int, int, float]:
    """(pages, lines, seconds) to page the log from its end to its top, as the viewer does."""
    started = time.monotonic()
    page = await get_json(session, f"{base}?tail={PAGE}")
    pages, lines = 1, len(page["lines"])
    while page["start"] > 0:
        page = await get_json(session, f"{base}?tail={PAGE}&before={page['start']}")
        pages, lines = pages + 1, lines + len(page["lines"])
    return pages, lines, time.monotonic() - started


def gets(state: dict[str, Any], name: str) -> tuple[int, int, int]:
    """(GETs, ranged GETs, bytes answered) of the task's object `name` in a proxy state."""
    mine = [(ranged, sent) for path, ranged, _, sent in state["gets"] if path.endswith(f"/{TASK}/{name}")]
    return len(mine), sum(1 for ranged, _ in mine if ranged), sum(sent for _, sent in mine)


def since_reset(proxy: Proxy) -> dict[str, Any]:
    state = proxy.state()
    proxy.reset()
    return state


async def measure(server_url: str, proxy: Proxy, size: int, at_once: int,
                  pid: int) -> tuple[list[list[Any]], list[str]]:
    rows: list[list[Any]] = []
    errors: list[str] = []
    base = f"{server_url}api/logs/{TASK}"
    async with aiohttp.ClientSession() as session:
        proxy.reset()
        pages, lines, seconds = await page_to_top(session, base)
        count, ranged, sent = gets(since_reset(proxy), STDOUT)
        rows += [["log size (MiB)", f"{size / 2**20:.1f}", "", ""],
                 [f"pages of {PAGE} lines to the top", pages, "", ""],
                 ["  seconds, all pages", f"{seconds:.2f}", "", ""],
                 ["  GETs (ranged)", f"{count} ({ranged})", "all ranged", verdict(count == ranged)],
                 ["  MiB answered by S3", f"{sent / 2**20:.1f}", f"<= {2 * size / 2**20:.0f} (2x the log)",
                  verdict(sent <= 2 * size)],
                 ["  MiB per page", f"{sent / pages / 2**20:.2f}", "", ""]]
        if lines < size // 400:
            errors.append(f"only {lines} lines paged")
        await get_json(session, f"{base}?tail=1")
        count, ranged, sent = gets(since_reset(proxy), STDOUT)
        rows.append(["tail=1: GETs (ranged) / KiB", f"{count} ({ranged}) / {sent / 1024:.0f}",
                     f"1 (1) / <= {TAIL_BYTES // 1024}",
                     verdict(count == ranged == 1 and sent <= TAIL_BYTES)])
        detail = await get_json(session, f"{server_url}api/tasks/{TASK}")
        count, ranged, sent = gets(since_reset(proxy), STDERR)
        if detail["traceback"] is None:
            errors.append("no traceback found")
        rows.append(["traceback: GETs (ranged) / KiB", f"{count} ({ranged}) / {sent / 1024:.0f}",
                     f"1 (1) / <= {TRACEBACK_BYTES // 1024}",
                     verdict(count == ranged == 1 and sent <= TRACEBACK_BYTES)])
        before = rss_mb(pid)
        sampler = PeakRSS(pid)
        sampler.start()
        started = time.monotonic()
        answers = await asyncio.gather(*(get_json(session, f"{base}?tail={PAGE}") for _ in range(at_once)))
        seconds = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        state = since_reset(proxy)
        if any(len(answer["lines"]) != PAGE for answer in answers):
            errors.append("a concurrent page was short")
        rows += [[f"{at_once} first pages at once: seconds", f"{seconds:.2f}", "", ""],
                 ["  GETs (most at once)", f"{gets(state, STDOUT)[0]} ({state['most_getting']})", "", ""],
                 ["  server RSS before / peak (MB)", f"{before:.0f} / {sampler.peak:.0f}",
                  f"peak <= {RSS_TARGET_MB:.0f}", verdict(sampler.peak <= RSS_TARGET_MB)]]
    return rows, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a 2 MiB log, 10 requests at once")
    parser.add_argument("--mib", type=float, default=30.0, help="stdout size in MiB")
    parser.add_argument("--at-once", type=int, default=100, help="log requests at once")
    options = parser.parse_args()
    mib, at_once = (2.0, 10) if options.smoke else (options.mib, options.at_once)
    with tempfile.TemporaryDirectory() as workdir:
        moto = start_moto_server(Path(workdir))
        proxy = Proxy(start_s3_proxy(moto.url))
        place = S3Place(moto.url, prefix="logs")
        try:
            size = seed(place, int(mib * 2**20))
            (Path(workdir) / "user").mkdir()
            env = metaflow_s3_env(proxy.server.url, place.sysroot)
            server = start_s3_cardserver(Path(workdir) / "user", env)
            try:
                rows, errors = asyncio.run(measure(server.url, proxy, size, at_once, server.pid))
            finally:
                server.stop()
        finally:
            proxy.server.stop()
            moto.stop()
    return report("S3 logs" + (" (smoke)" if options.smoke else ""), rows, errors, options.smoke)


if __name__ == "__main__":
    sys.exit(main())
