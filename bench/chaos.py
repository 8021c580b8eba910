"""Chaos soak: a real `card server` under a bounded random mix of hostile datastore changes,
with live clients subscribed to cards that keep getting good updates.

    python bench/chaos.py                 # 4 minutes, 4 clients
    python bench/chaos.py --seconds 600   # longer
    python bench/chaos.py --smoke         # 12 s, non-zero exit on any error

The hostile changes (issue 16): FIFOs named like status, card and data files; symlinks that
lead out of the root (card files, data files, `runtime` folders, task folders) and into it
(a run folder linked as another run); deep (975 levels) and huge (12 MB) data updates;
truncated ones; permission flips; whole runs deleted and re-created; bursts of file churn; a
60 KB user tag and a time from the future. Good cards are never touched by them.

Measures: /api/status latency p50/p99/max (from a thread of its own, so this process's own work
never shows up in it), whether every client ends with every good card's last update, and
whether the server's final state (its API) equals a fresh scan of the disk (`disk.scan` into
a new `Index`), once the chaos has stopped and its permission flips are undone.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Server, percentile, report, start_cardserver, verdict
from cardserver.config import Limits, Roots
from cardserver.demo import DemoCard, DemoRun, markdown, progress, start_run, write_atomic
from cardserver.disk import Scope, scan
from cardserver.events import Reset
from cardserver.index import Index

TARGET_P99_MS = 100.0
GOOD_RUNS = 2
GOOD_CARDS_PER_RUN = 3
SETTLE_SECONDS = 30.0  # after the chaos: how long the last good updates may take to arrive

State = set[tuple[str, ...]]


# --- what every client sees --------------------------------------------------------------------


class Client:
    """One websocket on every good card: the highest value each one has shown."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.seen: dict[str, int] = {t: -1 for t in topics}
        self.closed: str | None = None

    async def follow(self, url: str) -> None:
        """Until cancelled; `closed` says why if the server ended it first."""
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}ws", max_msg_size=0) as ws:
            for topic in self.topics:
                await ws.send_json({"op": "subscribe", "topic": topic})
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") == "update" and data.get("topic") in self.seen:
                    value = data["data"]["p"]["value"]
                    self.seen[data["topic"]] = max(self.seen[data["topic"]], value)
            self.closed = f"socket ended: close code {ws.close_code}"


async def drain(url: str, topics: list[str]) -> None:
    """A client of the hostile cards, until cancelled: reads everything, parses nothing (975
    levels of nesting are too deep for Python's json)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}ws", max_msg_size=0) as ws:
        for topic in topics:
            await ws.send_json({"op": "subscribe", "topic": topic})
        async for _ in ws:
            pass


# --- /api/status latency, from its own thread ----------------------------------------------------


class Probe(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.took: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.wait(0.02):
            started = time.perf_counter()
            try:
                connection.request("GET", "/api/status")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.errors.append(f"/api/status answered {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(f"/api/status: {error!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.took.append((time.perf_counter() - started) * 1000)


# --- the hostile mix ---------------------------------------------------------------------------


class Chaos:
    """Hostile changes, one at a time, in their own runs (and beside the good cards' files)."""

    def __init__(self, roots: Roots, outside: Path, rng: random.Random, big_bytes: int) -> None:
        self.roots, self.outside, self.rng = roots, outside, rng
        self.runs: list[DemoRun] = []
        self.cards: list[DemoCard] = []
        self.locked: list[Path] = []
        self.count: dict[str, int] = {}
        rows = big_bytes // 60
        table = [[i, f"name-{i}", i * 1.5, "x" * 20] for i in range(rows)]
        self.big_data = json.dumps({"t": {"type": "table", "id": "t", "data": table}})
        self.deep = "[" * 975 + "]" * 975
        (outside / "secret.html").write_text("<html><body>outside the root</body></html>")
        (outside / "runtime").mkdir()
        (outside / "task" / "cards").mkdir(parents=True)
        self.moves: list[Callable[[], None]] = [
            self.fifo_status, self.fifo_card, self.fifo_data, self.link_card_out, self.link_data_out,
            self.link_runtime_out, self.link_task_out, self.link_run_in, self.deep_update,
            self.huge_update, self.truncated_update, self.flip_permissions, self.recreate_run,
            self.churn, self.hostile_metadata, self.new_hostile_run,
        ]
        self.new_hostile_run()

    def step(self) -> None:
        move = self.rng.choice(self.moves)
        self.count[move.__name__] = self.count.get(move.__name__, 0) + 1
        with suppress(OSError):  # a path that another move just deleted: chaos, not a failure
            move()

    def finish(self) -> None:
        """Undo the permission flips, so a fresh scan can read what the server could."""
        for path in self.locked:
            if path.exists():
                path.chmod(0o755 if path.is_dir() else 0o644)
        self.locked.clear()

    # --- helpers ---

    def card(self) -> DemoCard:
        return self.rng.choice(self.cards)

    def task_dir(self, card: DemoCard) -> Path:
        return card.path_html.parent.parent

    def name(self) -> str:
        return f"blank-{self.rng.randrange(16**8):08x}"

    # --- the moves ---

    def new_hostile_run(self) -> None:
        if len(self.runs) >= 6:
            return
        flow = self.rng.choice(["ChaosFlow", "GoodFlow"])
        run = start_run(self.roots.datastore, self.roots.cards, flow=flow)
        self.runs.append(run)
        for _ in range(2):
            card = run.start_task("chaos").add_card(components=[markdown("m", "chaos"), progress("p", 0, 9)])
            card.update({"p": {"value": 1}})
            self.cards.append(card)

    def fifo_status(self) -> None:
        run_dir = self.roots.datastore / "ChaosFlow" / f"9{self.rng.randrange(10**6)}"
        (run_dir / "_meta").mkdir(parents=True, exist_ok=True)
        os.mkfifo(run_dir / "_meta" / "_self.json")

    def fifo_card(self) -> None:
        os.mkfifo(self.task_dir(self.card()) / "cards" / f"{self.name()}.html")

    def fifo_data(self) -> None:
        runtime = self.task_dir(self.card()) / "runtime"
        runtime.mkdir(exist_ok=True)
        os.mkfifo(runtime / f"{self.name()}.data.json")

    def link_card_out(self) -> None:
        os.symlink(self.outside / "secret.html", self.task_dir(self.card()) / "cards" / f"{self.name()}.html")

    def link_data_out(self) -> None:
        card = self.card()
        card.path_data.unlink(missing_ok=True)
        os.symlink(self.outside / "runtime" / "x.data.json", card.path_data)

    def link_runtime_out(self) -> None:
        runtime = self.task_dir(self.card()) / "runtime"
        if runtime.is_symlink():
            return
        shutil.rmtree(runtime, ignore_errors=True)
        os.symlink(self.outside / "runtime", runtime, target_is_directory=True)

    def link_task_out(self) -> None:
        tasks = self.task_dir(self.card()).parent
        os.symlink(self.outside / "task", tasks / str(900 + self.rng.randrange(99)), target_is_directory=True)

    def link_run_in(self) -> None:
        run = self.rng.choice(self.runs)
        link = self.roots.datastore / run.flow / f"8{self.rng.randrange(10**6)}"
        os.symlink(self.roots.datastore / run.flow / run.run, link, target_is_directory=True)

    def write_data(self, card: DemoCard, data: str) -> None:
        head = json.dumps({"reload_token": card.token, "created_on": time.time()})[:-1]
        write_atomic(card.path_data, f'{head}, "data": {data}}}'.encode())

    def deep_update(self) -> None:
        self.write_data(self.card(), f'{{"p": {{"id": "p", "value": 2, "deep": {self.deep}}}}}')

    def huge_update(self) -> None:
        self.write_data(self.card(), self.big_data)

    def truncated_update(self) -> None:
        card = self.card()
        head = json.dumps({"reload_token": card.token, "created_on": time.time()})[:-1]
        write_atomic(card.path_data, f'{head}, "data": {self.big_data}'[: len(self.big_data) // 2].encode())

    def flip_permissions(self) -> None:
        card = self.card()
        target = self.rng.choice([card.path_html, card.path_data, card.path_html.parent])
        if target.exists() and not target.is_symlink():
            target.chmod(0)
            self.locked.append(target)
        if len(self.locked) > 4:  # and back, a little later
            self.finish()

    def recreate_run(self) -> None:
        run = self.rng.choice(self.runs)
        self.finish()
        cards = self.roots.cards / run.flow / "runs" / run.run
        for folder in (self.roots.datastore / run.flow / run.run, cards):
            shutil.rmtree(folder, ignore_errors=True)
        self.cards = [c for c in self.cards if c.key.task.run != run.run]
        self.runs.remove(run)
        self.new_hostile_run()

    def churn(self) -> None:
        folder = self.task_dir(self.card()) / "cards"
        names = [folder / f"tmp{self.rng.randrange(16**8):08x}" for _ in range(50)]
        for name in names:
            name.write_text("x")
        for name in names:
            name.unlink()

    def hostile_metadata(self) -> None:
        if self.count["hostile_metadata"] > 5:
            return
        ts = self.rng.choice([10**17, int(time.time() * 1000)])
        start_run(self.roots.datastore, self.roots.cards, flow="ChaosFlow", user="u" * 30_000, ts_ms=ts)


# --- the final comparison ----------------------------------------------------------------------


def disk_state(roots: Roots) -> State:
    """Every run, task and card as a fresh scan sees them."""
    events, _ = scan(roots, Limits(), Scope())
    index = Index()
    index.apply([Reset(tuple(events))])
    found: State = set()
    for flow in index.flows.values():
        for run in flow.runs.values():
            found.add((run.key.flow, run.key.run))
            for task in run.tasks.values():
                where = (run.key.flow, run.key.run, task.key.step, task.key.task)
                found.add(where)
                found.update((*where, card.key.name) for card in task.cards.values()
                             if card.version is not None)
    return found


async def server_state(session: aiohttp.ClientSession, url: str) -> State:
    found: State = set()
    async with session.get(f"{url}api/flows") as response:
        flows = (await response.json())["flows"]
    for flow in flows:
        async with session.get(f"{url}api/flows/{flow['flow']}/runs") as response:
            runs = (await response.json())["runs"]
        for run in runs:
            found.add((run["flow"], run["run"]))
            async with session.get(f"{url}api/runs/{run['flow']}/{run['run']}") as response:
                detail = await response.json()
            for task in detail["tasks"]:
                found.add((run["flow"], run["run"], task["step"], task["task"]))
                found.update((run["flow"], run["run"], task["step"], task["task"], card["name"])
                             for card in task["cards"] if card["version"] is not None)
    return found


async def settled_state(url: str, roots: Roots, seconds: float) -> tuple[State, State]:
    """The server's state once it agrees with the disk, or what it says after `seconds`."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            on_disk = await asyncio.to_thread(disk_state, roots)
            served = await server_state(session, url)
            if served == on_disk or time.monotonic() > deadline:
                return served, on_disk
            await asyncio.sleep(0.5)  # the watcher may still be reading the last changes


# --- the soak ----------------------------------------------------------------------------------


def good_cards(roots: Roots) -> list[DemoCard]:
    cards = []
    for _ in range(GOOD_RUNS):
        run = start_run(roots.datastore, roots.cards, flow="GoodFlow")
        for _ in range(GOOD_CARDS_PER_RUN):
            components = [markdown("m", "good"), progress("p", 0, 10**9)]
            card = run.start_task("train").add_card(components=components)
            card.update({"p": {"value": 0}})
            cards.append(card)
    return cards


async def soak(server: Server, roots: Roots, chaos: Chaos, good: list[DemoCard], seconds: float,
               clients: int, rng: random.Random) -> dict[str, Any]:
    topics = [f"card/{card.key}" for card in good]
    followers = [Client(topics) for _ in range(clients)]
    tasks = [asyncio.create_task(c.follow(server.url)) for c in followers]
    hostile = [f"card/{card.key}" for card in chaos.cards]
    tasks.append(asyncio.create_task(drain(server.url, hostile)))
    probe = Probe(server.port)
    probe.start()
    value = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(rng.randrange(1, 4)):
            await asyncio.to_thread(chaos.step)
        value += 1
        card = rng.choice(good)
        await asyncio.to_thread(card.update, {"p": {"value": value}})
        await asyncio.sleep(rng.uniform(0.02, 0.15))
    chaos.finish()
    final = value + 1
    for card in good:  # the last good update of every card: each client must show it
        await asyncio.to_thread(card.update, {"p": {"value": final}})
    wait_until = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < wait_until and not all(
        min(c.seen.values()) >= final or c.closed for c in followers
    ):
        await asyncio.sleep(0.1)
    served, on_disk = await settled_state(server.url, roots, SETTLE_SECONDS)
    for client in followers:
        for topic, seen in client.seen.items():
            if seen < final:
                async with aiohttp.ClientSession() as session, session.get(
                    f"{server.url}api/cards/{topic[5:]}"
                ) as response:
                    said = (await response.json()).get("update") or {}
                shown = said.get("data", {}).get("p", {}).get("value")
                print(f"lost: {topic} shows {seen} of {final}; the API says {shown}", file=sys.stderr)
    probe.stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lost = sum(1 for c in followers for seen in c.seen.values() if seen < final)
    return {"probe": probe, "followers": followers, "lost": lost, "served": served, "on_disk": on_disk,
            "updates": value}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="12 s, 2 clients, smaller JSON")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    seconds, clients = (12.0, 2) if args.smoke else (args.seconds, args.clients)
    big_bytes = 2_000_000 if args.smoke else 12_000_000
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="cardserver-chaos-"))
    errors: list[str] = []
    try:
        datastore = work / ".metaflow"
        roots = Roots(datastore, datastore / "mf.cards")
        (work / "outside").mkdir()
        good = good_cards(roots)
        chaos = Chaos(roots, work / "outside", rng, big_bytes)
        server = start_cardserver(datastore)
        try:
            result = asyncio.run(soak(server, roots, chaos, good, seconds, clients, rng))
            alive = server.process.poll() is None
        finally:
            chaos.finish()
            server.stop()
        took = result["probe"].took
        served, on_disk = result["served"], result["on_disk"]
        same = served == on_disk
        p99 = percentile(took, 99)
        closed = [c.closed for c in result["followers"] if c.closed]
        errors += result["probe"].errors[:5] + closed
        if result["lost"]:
            errors.append(f"{result['lost']} good card(s) never showed their last update in some client")
        if not same:
            errors.append(f"server state differs from a fresh scan: only served "
                          f"{sorted(served - on_disk)[:5]}, only on disk {sorted(on_disk - served)[:5]}")
        if not alive:
            errors.append("the server died")
        moves = ", ".join(f"{name} {n}" for name, n in sorted(chaos.count.items()))
        print(f"hostile moves: {sum(chaos.count.values())} ({moves})")
        rows = [
            ("seconds of chaos", seconds, "", ""),
            ("hostile moves", sum(chaos.count.values()), "", ""),
            ("good updates written", result["updates"], "", ""),
            ("/api/status requests", len(took), "", ""),
            ("/api/status p50 (ms)", percentile(took, 50), "", ""),
            ("/api/status p99 (ms)", p99, f"< {TARGET_P99_MS:.0f}", verdict(p99 < TARGET_P99_MS)),
            ("/api/status max (ms)", max(took) if took else float("nan"), "", ""),
            ("lost good updates", result["lost"], "0", verdict(result["lost"] == 0 and not closed)),
            ("final state equals a fresh scan", "yes" if same else "no", "yes", verdict(same)),
            ("server alive at the end", "yes" if alive else "no", "yes", verdict(alive)),
        ]
        title = "Chaos soak (smoke)" if args.smoke else "Chaos soak"
        return report(title, rows, errors, args.smoke)
    finally:
        for path in work.rglob("*"):  # a flipped permission must not stop the clean-up
            if not path.is_symlink():
                with suppress(OSError):
                    path.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
