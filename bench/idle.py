"""Idle cost (issue 4, target 4): the viewer open in Chromium, nothing changing, for a minute:
how much CPU the server burns. Ours and Metaflow's own `card server`, on the same trees.

    python bench/idle.py                 # 60 s per setup; a small datastore and a 10,000-task run
    python bench/idle.py --fixture /tmp/idle10k   # keep the trees, reuse them on later runs
    python bench/idle.py --smoke         # tiny, < 60 s, exits non-zero on any error

Trees (written once per invocation, in a temp dir, removed at the end):
  small  cardserver.demo.write_fixture_run: one finished run of a few tasks, each with a card
  big    the same with --tasks (10,000) tasks: Metaflow's layout, final cards with data updates
For each tree and server: start the server, open its viewer (ours: `/`, following; Metaflow's:
`/` with `--run-id` of that run and `--max-cards` above the card count), wait until the card
frame has loaded, then let things settle (ours: WatchTiming.hot_seconds + 2 s, so the watcher's
hot spell after any startup activity is over; Metaflow's: a few seconds), then read the server
process's CPU time (user + system, /proc) before and after --seconds of nothing happening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    Server,
    cpu_seconds,
    machine_busy_seconds,
    metaflow_env,
    rss_mb,
    start_cardserver,
    start_metaflow_server,
    table,
    verdict,
)
from cardserver.config import WatchTiming
from cardserver.demo import write_fixture_run

TARGET_CPU_PER_MIN = 0.2

FLOW_FILE = '''from metaflow import FlowSpec, step


class @@FLOW@@(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    @@FLOW@@()
'''

LOADED = """() => document.readyState === "complete" && !!document.body
  && document.body.textContent.trim().length > 0"""


@dataclass
class Tree:
    name: str
    workdir: Path
    flow: str
    run_id: str
    tasks: int

    @property
    def datastore(self) -> Path:
        return self.workdir / ".metaflow"

    @property
    def flow_file(self) -> Path:
        return self.workdir / f"{self.flow}.py"

    @property
    def cards(self) -> int:
        return self.tasks + 2  # start and end have a card too


def make_tree(parent: Path, name: str, flow: str, tasks: int) -> Tree:
    """A finished run in Metaflow's layout, plus a flow file Metaflow's server can load.
    Reused when `parent` already holds one of that size (--fixture)."""
    workdir = parent / name
    marker = workdir / "fixture.json"
    if marker.exists():
        kept = json.loads(marker.read_text())
        if kept["tasks"] == tasks and kept["flow"] == flow:
            return Tree(name, workdir, flow, kept["run"], tasks)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    run = write_fixture_run(workdir / ".metaflow", flow, tasks)
    tree = Tree(name, workdir, flow, run.run, tasks)
    tree.flow_file.write_text(FLOW_FILE.replace("@@FLOW@@", flow))
    marker.write_text(json.dumps({"tasks": tasks, "flow": flow, "run": run.run}))
    return tree


@dataclass
class Result:
    setup: str
    tree: str
    cpu_per_min: float | None = None
    seconds: float = 0.0
    load_seconds: float = 0.0  # server start -> card frame loaded
    rss: float | None = None
    target: bool = True
    note: str = ""

    def row(self) -> list[object]:
        if self.cpu_per_min is None:
            return [self.setup, self.tree, "-", "-", "-", "-", self.note or "not measured"]
        shown = verdict(self.cpu_per_min <= TARGET_CPU_PER_MIN) if self.target else "-"
        return [self.setup, self.tree, round(self.cpu_per_min, 3),
                f"<= {TARGET_CPU_PER_MIN}" if self.target else "baseline", shown,
                round(self.load_seconds, 1), self.note]


CARD_FRAMES = ("/card/", "/card-html/", "/card-shell/")  # theirs (Metaflow's server), ours


async def wait_card_frame(page: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if not any(part in frame.url for part in CARD_FRAMES):
                continue
            try:
                if await frame.evaluate(LOADED):
                    return
            except Exception:  # navigated meanwhile: look again
                continue
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the viewer showed no card within {timeout:.0f} s: {[f.url for f in page.frames]}")


async def idle(browser: Any, name: str, tree: Tree, server: Server, url: str, settle: float,
               seconds: float, load_timeout: float, target: bool) -> Result:
    page = await browser.new_page()
    try:
        await page.goto(url)
        await wait_card_frame(page, load_timeout)
        loaded = time.monotonic() - server.started
        await asyncio.sleep(settle)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, elapsed = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
        if server.process.poll() is not None:
            raise RuntimeError(f"{name} exited during the measurement")
        return Result(name, tree.name, cpu / elapsed * 60, elapsed, loaded, rss_mb(server.pid),
                      target=target)
    finally:
        await page.close()


@dataclass
class Plan:
    seconds: float
    tasks: int
    settle_ours: float
    settle_metaflow: float
    metaflow_trees: tuple[str, ...]
    load_timeout: float = 180.0


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(seconds=4, tasks=200, settle_ours=0.5, settle_metaflow=0.5, metaflow_trees=("small",),
                    load_timeout=30)
    settle = WatchTiming().hot_seconds + 2 if args.settle is None else args.settle
    return Plan(seconds=args.seconds, tasks=args.tasks, settle_ours=settle,
                settle_metaflow=5 if args.settle is None else args.settle,
                metaflow_trees=("small", "big"))


async def run(args: argparse.Namespace, parent: Path) -> list[Result]:
    from playwright.async_api import async_playwright

    plan = make_plan(args)
    results: list[Result] = []
    print(f"trees in {parent} (writing a {plan.tasks}-task run takes a while) ...", file=sys.stderr,
          flush=True)
    trees = [make_tree(parent, "small", "IdleSmallFlow", 4),
             make_tree(parent, "big", "IdleBigFlow", plan.tasks)]
    labels = {"small": "small (4 tasks)", "big": f"big ({plan.tasks} tasks)"}

    async def attempt(name: str, tree: Tree, job: Callable[[], Any]) -> None:
        print(f"{name} on {tree.name} ...", file=sys.stderr, flush=True)
        try:
            result = await job()
            result.tree = labels[tree.name]
            results.append(result)
        except Exception as error:
            if args.smoke:
                raise
            print(f"{name} on {tree.name}: failed: {error}", file=sys.stderr)
            results.append(Result(name, labels[tree.name], note=f"failed: {str(error)[:160]}"))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            for tree in trees:
                await attempt("ours", tree, lambda tree=tree: ours(browser, tree, plan))
            for tree in trees:
                if tree.name in plan.metaflow_trees:
                    await attempt("Metaflow card server", tree,
                                  lambda tree=tree: metaflow(browser, tree, plan))
                else:
                    results.append(Result("Metaflow card server", labels[tree.name],
                                          note="skipped in --smoke"))
        finally:
            await browser.close()
    return results


async def ours(browser: Any, tree: Tree, plan: Plan) -> Result:
    server = start_cardserver(tree.datastore)
    try:
        return await idle(browser, "ours (viewer on /, following)", tree, server, server.url,
                          plan.settle_ours, plan.seconds, plan.load_timeout, target=True)
    finally:
        server.stop()


async def metaflow(browser: Any, tree: Tree, plan: Plan) -> Result:
    server = start_metaflow_server(tree.flow_file, tree.run_id, "--max-cards", str(tree.cards + 10),
                                   env=metaflow_env(tree.workdir, "bench"))
    try:
        result = await idle(browser, "Metaflow card server (poll 5 s)", tree, server, server.url,
                            plan.settle_metaflow, plan.seconds, plan.load_timeout, target=False)
        result.note = f"--max-cards {tree.cards + 10}"
        return result
    finally:
        server.stop()


def report(results: list[Result], seconds: float, busy: float, wall: float) -> str:
    header = ["server", "tree", "CPU s/min", "target", "verdict", "load s", "note"]
    lines = [table(f"Idle cost: viewer open, nothing changing, {seconds:.0f} s per setup "
                   "(server CPU, user+system)", header, [r.row() for r in results])]
    for name in ("small", "big"):
        ours = next((r for r in results if r.setup.startswith("ours") and r.tree.startswith(name)), None)
        theirs = next((r for r in results if r.setup.startswith("Metaflow") and r.tree.startswith(name)),
                      None)
        if ours and theirs and ours.cpu_per_min is not None and theirs.cpu_per_min is not None:
            times = theirs.cpu_per_min / ours.cpu_per_min if ours.cpu_per_min else None
            ratio = ("n/a (ours used less than one clock tick)" if times is None
                     else f"x{times:.1f}" if times < 10 else f"x{times:.0f}")
            lines.append(f"{name}: Metaflow's server / ours, CPU while idle: {ratio}")
    for r in results:
        if r.rss is not None:
            lines.append(f"{r.setup} on {r.tree}: RSS {r.rss:.0f} MB")
    lines.append("load s: server start -> the viewer's card frame loaded")
    lines.append(f"machine: {busy:.1f} CPU s busy over {wall:.0f} s on all cores "
                 "(includes the browser and anything else running)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured per setup [60]")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the big run [10000]")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds between page loaded and measuring [ours: hot_seconds + 2; Metaflow: 5]")
    parser.add_argument("--fixture", help="folder to keep the trees in (written if missing, reused after)")
    parser.add_argument("--smoke", action="store_true", help="tiny run; any error exits non-zero")
    args = parser.parse_args()
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    temporary = args.fixture is None
    parent = Path(tempfile.mkdtemp(prefix="cardserver-bench-idle-")) if temporary else Path(args.fixture)
    try:
        results = asyncio.run(run(args, parent))
    finally:
        if temporary:
            shutil.rmtree(parent, ignore_errors=True)
    print(report(results, make_plan(args).seconds, machine_busy_seconds() - busy0, time.monotonic() - wall0))
    if args.smoke:
        missing = [r for r in results if r.cpu_per_min is None and "skipped" not in r.note]
        if missing:
            raise SystemExit(f"smoke: not measured: {[(r.setup, r.tree, r.note) for r in missing]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
