"""Many writers: 50 live tasks, each refreshing its card at 10 Hz, one client on all 50 cards.

    python bench/writers.py              # 50 cards x 10 Hz for 20 s
    python bench/writers.py --smoke      # 5 cards x 10 Hz for 3 s, non-zero exit on any error

Each card's data update is written the way Metaflow writes it (mkstemp + os.replace) with a
sequence number and the write time in it; the writes of the 50 cards are spread evenly over
each 100 ms period, as independent tasks would. One websocket (aiohttp, in this process, on
its own thread) subscribes to all 50 cards and records, per card, every update it receives.

Measures: every card ends with its last update (final seq), write -> receive lag per card
(its max is how far a card ever fell behind), updates coalesced away by the server, and the
server's CPU in cores (CPU seconds / wall seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    report,
    start_cardserver,
    verdict,
)
from cardserver.demo import DemoCard, markdown, progress, start_run, text

TARGET_CPU_CORES = 1.0
TARGET_MAX_LAG_MS = 200.0  # two refresh periods at 10 Hz: a card that lags more is behind


class Listener(threading.Thread):
    """One websocket on every card; per card: last seq and every lag (ms)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.topics = port, topics
        self.last: dict[str, int] = {t: -1 for t in topics}
        self.lags: dict[str, list[float]] = {t: [] for t in topics}
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.listen())
        except BaseException as error:  # reported by the benchmark
            self.error = error
            self.ready.set()

    async def listen(self) -> None:
        import aiohttp

        self.loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"ws://127.0.0.1:{self.port}/ws", compress=15, max_msg_size=16 * 1024 * 1024
        ) as ws:
            for topic in self.topics:
                await ws.send_str(json.dumps({"op": "subscribe", "topic": topic}))
            stop = asyncio.ensure_future(asyncio.to_thread(self.done.wait))
            while not stop.done():
                receive = asyncio.ensure_future(ws.receive())
                await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    break
                msg = receive.result()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"websocket closed: {msg.type!r} {msg.data!r}")
                now = time.time()
                message = json.loads(msg.data)
                if message.get("type") != "update":
                    continue
                topic = message["topic"]
                bench = message["data"]["bench"]
                self.last[topic] = max(self.last[topic], bench["seq"])
                if bench["seq"] > 0:
                    self.lags[topic].append((now - bench["written"]) * 1000)
                if not self.ready.is_set() and all(v >= 0 for v in self.last.values()):
                    self.ready.set()


def make_cards(datastore: Path, count: int) -> list[DemoCard]:
    run = start_run(datastore, flow="WritersFlow")
    cards = []
    for n in range(count):
        task = run.start_task("train")
        card = task.add_card(components=[
            markdown("title", f"# Task {n}"),
            text("bench", "seq 0"),
            progress("epochs", 0, 1000, "Epochs"),
        ])
        card.update({"bench": {"text": "seq 0", "seq": 0, "written": time.time()}})
        cards.append(card)
    return cards


def run(args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    errors: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cardserver-writers-"))
    try:
        datastore = folder / ".metaflow"
        cards = make_cards(datastore, args.cards)
        topics = [f"card/{c.key}" for c in cards]
        server = start_cardserver(datastore)
        listener = Listener(server.port, topics)
        try:
            listener.start()
            if not listener.ready.wait(30) or listener.error:
                raise RuntimeError(f"the listener never got every card: {listener.error!r}")
            period = 1.0 / args.rate
            rounds = max(1, round(args.seconds * args.rate))
            offsets = [period * i / len(cards) for i in range(len(cards))]
            cpu0, busy0, wall0 = cpu_seconds(server.pid), machine_busy_seconds(), time.monotonic()
            late = 0.0
            for k in range(1, rounds + 1):
                for card, offset in zip(cards, offsets, strict=True):
                    due = wall0 + (k - 1) * period + offset
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        late = max(late, -delay)
                    card.update({"bench": {"text": f"seq {k}", "seq": k, "written": time.time()},
                                 "epochs": {"value": k}})
            written = time.monotonic()
            deadline = written + args.final_wait
            while time.monotonic() < deadline and min(listener.last.values()) < rounds:
                time.sleep(0.01)
            final_delay = time.monotonic() - written
            wall = written - wall0
            cpu = cpu_seconds(server.pid) - cpu0
            busy = machine_busy_seconds() - busy0
            listener.done.set()
            listener.join(10)
            if listener.error:
                errors.append(f"listener: {listener.error!r}")
            if server.process.poll() is not None:
                errors.append("the server exited during the run")
        finally:
            listener.done.set()
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    at_last = sum(1 for t in topics if listener.last[t] >= rounds)
    per_card_max = [max(listener.lags[t], default=float("nan")) for t in topics]
    per_card_p99 = [percentile(listener.lags[t], 99) for t in topics]
    every = [v for t in topics for v in listener.lags[t]]
    received = len(every)
    worst = max(per_card_max)
    cores = cpu / wall
    rows: list[list[object]] = [
        ["cards ending with their last update", f"{at_last}/{len(topics)}",
         f"{len(topics)}/{len(topics)}", verdict(at_last == len(topics))],
        ["last update seen after the last write (s)", final_delay, "-", "-"],
        ["lag p50, all updates (ms)", percentile(every, 50), "-", "-"],
        ["lag p99, all updates (ms)", percentile(every, 99), "-", "-"],
        ["per-card p99 lag, worst card (ms)", max(per_card_p99), "-", "-"],
        ["per-card max lag, worst card (ms)", worst, f"<= {TARGET_MAX_LAG_MS:.0f}",
         verdict(worst <= TARGET_MAX_LAG_MS)],
        ["per-card max lag, median card (ms)", percentile(per_card_max, 50), "-", "-"],
        ["updates received / written", f"{received}/{rounds * len(topics)}", "-", "-"],
        ["server CPU (cores)", cores, f"< {TARGET_CPU_CORES:g}", verdict(cores < TARGET_CPU_CORES)],
        ["other processes' CPU (cores)", (busy - cpu) / wall, "-", "-"],
        ["writer: latest write behind schedule (ms)", late * 1000, "-", "-"],
    ]
    if at_last != len(topics):
        behind = {t.rsplit("/", 2)[-2]: listener.last[t] for t in topics if listener.last[t] < rounds}
        errors.append(f"cards without their last update ({rounds}): {dict(list(behind.items())[:10])}")
    return rows, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s")
    parser.add_argument("--cards", type=int, default=50, help="live tasks, one card each")
    parser.add_argument("--rate", type=float, default=10.0, help="refreshes per second per card")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--final-wait", type=float, default=10.0,
                        help="seconds the last updates get to arrive")
    args = parser.parse_args()
    if args.smoke:
        args.cards, args.seconds = 5, 3.0
    rows, errors = run(args)
    return report(
        f"Many writers ({'smoke' if args.smoke else 'full'}): {args.cards} live cards x "
        f"{args.rate:g} Hz for {args.seconds:g} s, one client on all of them",
        rows, errors, args.smoke,
    )


if __name__ == "__main__":
    sys.exit(main())
