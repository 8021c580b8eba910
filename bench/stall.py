"""A hostile task folder cannot stall the server (issue 21, finding 2): a live update's latency
while 8 requests for hostile task folders run at once, against the same with nothing else asked.

    python bench/stall.py                    # 8 hostile tasks of 1,000 failed attempts, 256 KiB stderr each
    python bench/stall.py --checkout DIR     # the same against another checkout (e.g. `git archive 166d59f`)
    python bench/stall.py --smoke            # 50 attempts of 4 KiB: under a minute

How: the script writes a run in a temp folder: one live card, and 8 hostile tasks whose folders
hold N failed attempts, each with its verdict, its `attempt.json`, `attempt_ok` in `_meta` and a
stderr log with no traceback in it (hard links to one file, so the disk holds one log). It starts
`card server`, subscribes a websocket to the card and writes data updates the way Metaflow does
(mkstemp + rename), one every 50 ms; latency = the update's write time -> its message read off
the socket. A second process (`--role load`) keeps 8 `api/tasks/...` requests in flight the whole
time: first all 8 for one hostile task, then one for each of the 8. Both phases are measured
after a quiet one with no load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import REPO, machine_busy_seconds, report, start_cardserver, summary_ms, verdict
from cardserver import demo
from cardserver.layout import TaskKey, log_file_name

TARGET_MS = 50.0
READS = 8
GAP = 0.05  # s between updates
WARM_UP = 20  # updates not counted
LINE = "[MFLOG|0|2026-11-29T10:03:11.835570Z|runtime|3f1c2b9e]" + "x" * 120 + "\n"


def hostile_task(run: demo.DemoRun, step: str, attempts: int, stderr_bytes: int) -> TaskKey:
    """A task folder of `attempts` failed attempts, each with a stderr log of `stderr_bytes` that
    holds no traceback: the most a folder can ask of a reader that looks for one. The logs are
    hard links to one file beside the datastore."""
    task = run.start_task(step, system_meta=False)
    shared = run.datastore.parent / f"stderr-{stderr_bytes}.log"
    if not shared.exists():
        shared.write_text(LINE * (stderr_bytes // len(LINE) + 1))
    for number in range(attempts):
        if number:
            task.retry()
        demo.write_atomic(task.folder / f"{number}.attempt.json", json.dumps({"time": time.time()}).encode())
        task.finish(ok=False, reaped=False)
        task.verdict(1, number)
        os.link(shared, task.folder / log_file_name(number, "stderr"))
    return task.key


def make_datastore(root: Path, attempts: int, stderr_bytes: int) -> tuple[demo.DemoCard, list[TaskKey]]:
    run = demo.start_run(root / ".metaflow", flow="StallFlow")
    card = run.start_task("live").add_card(components=[demo.progress("p", 0, 1_000_000)])
    hostile = [hostile_task(run, "hostile", attempts, stderr_bytes) for _ in range(READS)]
    return card, hostile


# --- the load: 8 requests in flight, in a process of its own -----------------------------------


async def load(urls: list[str], seconds: float) -> list[float]:
    """Each URL asked again as soon as it answers, until `seconds` are over: the durations."""
    durations: list[float] = []
    deadline = time.monotonic() + seconds

    async def keep_asking(session: aiohttp.ClientSession, url: str) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}")
            durations.append(time.monotonic() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(keep_asking(session, url) for url in urls))
    return durations


def start_load(urls: list[str], seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--role", "load", "--seconds", str(seconds), *urls],
                            stdout=subprocess.PIPE, text=True)


def load_result(process: subprocess.Popen[str]) -> list[float]:
    out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError("the load process failed")
    durations: list[float] = json.loads(out)
    return durations


# --- live updates -------------------------------------------------------------------------------


async def latencies(ws: aiohttp.ClientWebSocketResponse, card: demo.DemoCard, first: int,
                    count: int, loader: subprocess.Popen[str] | None = None) -> list[float]:
    """Up to `count` updates (fewer if the `loader` ends first), each written and waited for:
    write -> message on the socket, in ms."""
    found = []
    for seq in range(first, first + count):
        if loader is not None and loader.poll() is not None:
            break
        written = time.monotonic()
        card.update({"p": {"value": seq}})
        while True:
            received = await asyncio.wait_for(ws.receive(), 60)
            if received.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the socket ended: {received.type.name} {received.data!r}")
            message = json.loads(received.data)
            if message.get("type") == "update" and message["data"]["p"]["value"] >= seq:
                break
        found.append((time.monotonic() - written) * 1000)
        await asyncio.sleep(GAP)
    return found


async def measure(url: str, card: demo.DemoCard, hostile: list[TaskKey], updates: int,
                  seconds: float) -> tuple[list[list[object]], list[str]]:
    rows: list[list[object]] = []
    errors: list[str] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}ws") as ws:
        await ws.send_json({"op": "subscribe", "topic": f"card/{card.key}"})
        await latencies(ws, card, 1, WARM_UP)  # the first scan and the run's deep read are over
        started = time.monotonic()
        async with session.get(f"{url}api/tasks/{hostile[0]}") as response:
            detail = await response.json()
        rows.append(["one hostile api/tasks request (ms)", (time.monotonic() - started) * 1000, "-", "-"])
        rows.append(["attempts shown / earlier", f"{len(detail['attempts'])} / "
                     f"{detail.get('earlier_attempts', '-')}", "-", "-"])
        seq = WARM_UP + 1
        for name, keys in (("nothing else asked", []),
                           ("8 reads of one hostile task", [hostile[0]] * READS),
                           ("8 reads of 8 hostile tasks", hostile)):
            loader = start_load([f"{url}api/tasks/{key}" for key in keys], seconds) if keys else None
            if loader is not None:
                await asyncio.sleep(1.0)  # the 8 requests are in flight
            busy = machine_busy_seconds(), time.monotonic()
            loaded = await latencies(ws, card, seq, updates, loader)
            rows.append(live_row(f"live update, {name}", loaded))
            rows.append(["whole machine busy meanwhile (cores)",
                         (machine_busy_seconds() - busy[0]) / (time.monotonic() - busy[1]), "-", "-"])
            seq += updates
            if loader is None:
                continue
            durations = load_result(loader)
            if not durations:
                errors.append(f"{name}: no request answered")
            stats = summary_ms([d * 1000 for d in durations])
            rows.append(["api/tasks answered / p50 (ms)", f"{len(durations)} / {stats['p50']:.0f}",
                         "-", "-"])
    return rows, errors


def live_row(name: str, values: list[float]) -> list[object]:
    stats = summary_ms(values)
    text = f"p50 {stats['p50']:.1f} p90 {stats['p90']:.1f} max {stats['max']:.1f}"
    return [f"{name} (ms)", text, f"max <= {TARGET_MS:.0f}", verdict(stats["max"] <= TARGET_MS)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="50 attempts of 4 KiB, 20 updates per phase")
    parser.add_argument("--attempts", type=int, default=1_000)
    parser.add_argument("--stderr-kib", type=int, default=256)
    parser.add_argument("--updates", type=int, default=100, help="live updates per phase")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout whose server to run")
    parser.add_argument("--role", default="bench", choices=["bench", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("urls", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "load":
        print(json.dumps(asyncio.run(load(args.urls, args.seconds))))
        return 0
    if args.smoke:
        args.attempts, args.stderr_kib, args.updates = 50, 4, 20
    with tempfile.TemporaryDirectory(prefix="stall-") as folder:
        card, hostile = make_datastore(Path(folder), args.attempts, args.stderr_kib * 1024)
        server = start_cardserver(Path(folder) / ".metaflow", repo=args.checkout)
        try:
            seconds = 1.5 + args.updates * (GAP + 0.01) * 3  # covers a phase with room to spare
            rows, errors = asyncio.run(measure(server.url, card, hostile, args.updates, seconds))
        finally:
            server.stop()
    print(f"8 hostile tasks of {args.attempts} failed attempts, {args.stderr_kib} KiB stderr each; "
          f"the server of {args.checkout}")
    return report("Stall (smoke)" if args.smoke else "Stall", rows, errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
