"""A big run that is still live: how long the server stops answering, at start-up and when a
small run starts beside it.

    python bench/bigrun.py                           # 10,000 live tasks (writing them takes ~15 s)
    python bench/bigrun.py --fixture /tmp/live10k    # write once, reuse
    python bench/bigrun.py --smoke                   # 300 tasks, < 30 s, non-zero exit on error

A live run is watched deeply, and opening an OS watch holds the GIL for its whole tree. A probe
asks `/api/status` every 10 ms from another process and records each round trip: the longest
one is the longest time the server could not answer anything.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report, run_options, start_cardserver
from cardserver import demo

FLOW = "BigLiveFlow"
PROBE_EVERY = 0.01


class Probe(threading.Thread):
    """`/api/status` round trips, (sent at, seconds), until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.trips: list[tuple[float, float]] = []
        self.followed = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            sent = time.monotonic()
            conn.request("GET", "/api/status")
            body = json.loads(conn.getresponse().read())
            self.trips.append((sent, time.monotonic() - sent))
            self.followed = body.get("followed_runs", 0)
            self.stop.wait(PROBE_EVERY)
        conn.close()

    def worst(self, since: float, until: float) -> float:
        return max((spent for sent, spent in self.trips if since <= sent < until), default=0.0)

    def wait_for_followed(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.followed < count and time.monotonic() < deadline:
            time.sleep(PROBE_EVERY)
        return self.followed >= count


def fixture(folder: Path, tasks: int) -> Path:
    datastore = folder / ".metaflow"
    marker = folder / "bigrun.json"
    if not (marker.is_file() and json.loads(marker.read_text()).get("tasks") == tasks):
        shutil.rmtree(datastore, ignore_errors=True)
        demo.write_fixture_run(datastore, FLOW, tasks=tasks, finished=False)
        marker.write_text(json.dumps({"tasks": tasks}))
    return datastore


def measure(datastore: Path, quiet: float) -> tuple[list[list[object]], list[str]]:
    errors: list[str] = []
    server = start_cardserver(datastore)
    probe = Probe(server.port)
    started = time.monotonic()
    try:
        probe.start()
        if not probe.wait_for_followed(1, 60):
            errors.append("the server never followed the live run")
        time.sleep(quiet)  # the start-up's watch is open and settled
        beside = time.monotonic()
        small = demo.start_run(datastore, flow="SmallFlow")
        small.start_task("start").add_card(components=[demo.progress("p", 0, 10)])
        if not probe.wait_for_followed(2, 30):
            errors.append("the server never followed the small run")
        time.sleep(quiet)
        ended = time.monotonic()
    finally:
        probe.stop.set()
        probe.join(timeout=60)
        server.stop()
        shutil.rmtree(datastore / "SmallFlow", ignore_errors=True)
        shutil.rmtree(datastore / "mf.cards" / "SmallFlow", ignore_errors=True)
    rows: list[list[object]] = [
        ["probe round trips", len(probe.trips), "-", "-"],
        ["worst round trip, start-up until followed + quiet (s)", probe.worst(started, beside), "-", "-"],
        ["worst round trip, a small run starts beside (ms)", probe.worst(beside, ended) * 1000, "-", "-"],
    ]
    return rows, errors


def main() -> int:
    args = run_options(__doc__, smoke="300 tasks, < 30 s").parse_args()
    if args.smoke:
        args.tasks = 300
    folder = Path(args.fixture) if args.fixture else Path(tempfile.mkdtemp(prefix="cardserver-bigrun-"))
    try:
        rows, errors = measure(fixture(folder, args.tasks), quiet=1.0 if args.smoke else 3.0)
    finally:
        if args.fixture is None:
            shutil.rmtree(folder, ignore_errors=True)
    return report(f"Big live run ({'smoke' if args.smoke else 'full'}): {args.tasks} running tasks",
                  rows, errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
