"""S3 datastores (issue 12): a data update PUT to S3 -> the card's DOM changed in Chromium, with
a real Metaflow live card; what polling costs in requests, dollars and CPU; and a 200-task live
run. Ours and Metaflow's own `card server`, side by side, on the same moto S3 server.

    python bench/s3_latency.py                # 60 updates on ours, 20 per Metaflow setup, 60 s idle
    python bench/s3_latency.py --tasks 200 --idle 60 --updates 100
    python bench/s3_latency.py --smoke        # tiny, a few minutes, exits non-zero on any error

How: bench/realcard.py's flow runs with `--datastore s3` against moto (Metaflow's S3 settings in
its environment) until its live card exists; the benchmark then PUTs the card's
`runtime/<stem>.data.json` itself, each update setting the markdown to "# seq N", and
bench/latency.py's MutationObserver in the card's frame records when "seq N" shows. Latency =
that time - the time just before the PUT. Both servers reach S3 through tests/s3proxy.py in its
own process, which counts every request by kind (the writes go to moto directly, uncounted);
USD per hour is those requests at S3 list prices (LIST 0.005, GET 0.0004 per 1,000; a 304 is a
GET). Ours is `card server` with no flags, started in an empty folder with only Metaflow's S3
settings in its environment, as a user runs it.

Phases: (1) the viewed live card on ours, then on Metaflow's at --poll-interval 1 and at its
default (5 s); (2) idle: the flow finishes, the viewer stays open on the final card, and the
server's requests and CPU are read over --idle seconds; (3) --tasks running tasks written key by
key in one run (each with a card and a data update, every task updating every --period seconds),
the viewer on one of them: how long until all are listed as running, the viewed card's latency
meanwhile, the request rate, and how long until all are shown finished once their DONE.lock is
written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    metaflow_s3_env,
    report,
    start_metaflow_server,
    start_moto_server,
    start_s3_cardserver,
    start_s3_proxy,
    summary_ms,
    verdict,
)
from bench.latency import Writer, find_card_frame, is_card_html, measure
from bench.realcard import FLOW_NAME, LiveCard, live_card, make_writer
from bench.s3card import Proxy, S3Cards, S3Place, WrittenRun

P50, P90 = 300.0, 600.0  # ms, issue 12
USD_PER_HOUR = 0.02  # per viewed live run
IDLE_REQUESTS_PER_MIN = 6.0
IDLE_CPU_PER_MIN = 0.5  # s
FOLLOW_SECONDS = 10.0  # a viewed run's new or ended tasks shown this soon (it is listed every 5 s)
NEW_RUN_SECONDS = 30.0  # a new run found this soon (discovery: every 20 s with one flow)
PRICE_PER_1000 = {"LIST": 0.005, "GET": 0.0004, "PUT": 0.005}


@dataclass
class Plan:
    updates: int
    rate: float
    metaflow: list[tuple[int, int]]  # (poll interval s, updates)
    idle: float
    tasks: int
    period: float
    settle: float = 20.0  # s after the server shows the run ended, before the idle window


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:  # the idle window only has to be measured, not judged: no settle, 3 s
        return Plan(updates=10, rate=2.0, metaflow=[(1, 3)], idle=3, tasks=20, period=5.0, settle=0.0)
    return Plan(updates=args.updates, rate=args.rate, metaflow=[(1, args.metaflow_updates),
                                                               (5, args.metaflow_updates)],
                idle=args.idle, tasks=args.tasks, period=args.period)


# --- the counting proxy -------------------------------------------------------------------------


@dataclass
class Requests:
    """What a server sent to S3 over a window: per minute by kind, and the hourly price."""

    kinds: dict[str, int]
    not_modified: int
    seconds: float

    def per_minute(self) -> dict[str, float]:
        return {kind: count * 60 / self.seconds for kind, count in sorted(self.kinds.items())}

    def usd_per_hour(self) -> float:
        spent = sum(PRICE_PER_1000.get(kind, 0.005) * n / 1000 for kind, n in self.kinds.items())
        return spent * 3600 / self.seconds

    def total_per_minute(self) -> float:
        return sum(self.kinds.values()) * 60 / self.seconds

    @classmethod
    def since_reset(cls, proxy: Proxy) -> Requests:
        state = proxy.state()
        return cls(state["kinds"], state["not_modified"], state["seconds"])

    def text(self) -> str:
        kinds = ", ".join(f"{kind} {rate:.1f}" for kind, rate in self.per_minute().items()) or "none"
        return f"{kinds} ({self.not_modified * 60 / self.seconds:.1f} of them 304)"


# --- results ------------------------------------------------------------------------------------


@dataclass
class Results:
    rows: list[list[object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def latency(self, name: str, values: list[float], missing: int, target: bool) -> None:
        s = summary_ms(values)
        ok = bool(values) and not missing and s["p50"] <= P50 and s["p90"] <= P90
        self.rows.append([f"{name}: write -> DOM p50 / p90 (ms)",
                          f"{s['p50']:.0f} / {s['p90']:.0f} (n {len(values)}, missed {missing})",
                          f"<= {P50:.0f} / {P90:.0f}" if target else "baseline",
                          verdict(ok) if target else "-"])
        if missing:
            self.errors.append(f"{name}: {missing} updates never reached the page")

    def requests(self, name: str, used: Requests, budget: float | None) -> None:
        usd = used.usd_per_hour()
        self.rows.append([f"{name}: S3 requests per minute", used.text(), "", ""])
        self.rows.append([f"{name}: USD per hour", f"{usd:.4f}",
                          f"<= {budget}" if budget else "baseline",
                          verdict(usd <= budget) if budget else "-"])

    def cpu(self, name: str, seconds: float, window: float, budget: float | None) -> None:
        rate = seconds / window * 60
        self.rows.append([f"{name}: server CPU s per minute", f"{rate:.2f}",
                          f"<= {budget}" if budget else "", verdict(rate <= budget) if budget else ""])


# --- phases -------------------------------------------------------------------------------------


async def open_card(browser: Any, url: str, wanted: Callable[[str], bool], timeout: float) -> tuple[Any, Any]:
    """A page at `url` and the frame that shows the live card."""
    page = await browser.new_page()
    await page.goto(url)
    return page, await find_card_frame(page, wanted, timeout)


async def viewed_card(name: str, browser: Any, url: str, card: LiveCard, writer: Writer, server: Server,
                      proxy: Proxy, count: int, rate: float, settle: float, results: Results,
                      wanted: Callable[[str], bool], target: bool, warmup: int, opened: Any = None) -> Any:
    """The live card open in a page (or `opened`: page and frame), `count` updates PUT at `rate`:
    latency, requests, CPU."""
    page, frame = opened or await open_card(browser, url, wanted, 90 + settle)
    proxy.reset()
    cpu0, started = cpu_seconds(server.pid), time.monotonic()
    result = await measure(name, frame, writer, server, count, rate, settle, warmup=warmup)
    window = time.monotonic() - started
    results.latency(name, result.latencies, result.missing, target)
    results.requests(name, Requests.since_reset(proxy), USD_PER_HOUR if target else None)
    results.cpu(name, cpu_seconds(server.pid) - cpu0, window, None)
    return page


async def metaflow_side(browser: Any, card: LiveCard, writer: Writer, proxy: Proxy, poll: int,
                        count: int, results: Results) -> None:
    env = {**card.env, "METAFLOW_S3_ENDPOINT_URL": proxy.server.url}
    server = start_metaflow_server(card.flow_file, card.run_id, "--poll-interval", str(poll), env=env)
    try:
        page = await viewed_card(f"Metaflow card server, --poll-interval {poll}", browser, server.url,
                                 card, writer, server, proxy, count, 1.0, 3 * poll + 10, results,
                                 lambda u: "/card/" in u, target=False, warmup=1)
        await page.close()
    finally:
        server.stop()


def finish_flow(card: LiveCard, place: S3Place, timeout: float = 180) -> None:
    """Let the flow go on to `end` and wait until the runtime reaped it (`end`'s verdict in S3)."""
    (card.flow_file.parent / "stop").write_text("")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(key.endswith("/0.runtime") for key in place.keys(f"{FLOW_NAME}/{card.run_id}/end/")):
            return
        time.sleep(1)
    raise RuntimeError(f"the flow did not finish within {timeout:.0f} s")


async def idle_phase(server: Server, proxy: Proxy, path: str, plan: Plan, results: Results) -> None:
    """The run is over, the viewer still open: what the server spends when nothing can change."""
    # The source's own pace: it learns the run ended on its next listing (every 5 s, viewed)
    if await wait_run(server, path, lambda run: run["run"]["status"] != "running", 120) is None:
        raise RuntimeError(f"{path}: the ended run is still shown running after 120 s")
    await asyncio.sleep(plan.settle)
    proxy.reset()
    cpu0, started = cpu_seconds(server.pid), time.monotonic()
    await asyncio.sleep(plan.idle)
    window = time.monotonic() - started
    used = Requests.since_reset(proxy)
    rate = used.total_per_minute()
    results.rows.append(["idle, no live run, viewer open: S3 requests per minute",
                         f"{rate:.1f}: {used.text()}", f"<= {IDLE_REQUESTS_PER_MIN:.0f}",
                         verdict(rate <= IDLE_REQUESTS_PER_MIN)])
    results.cpu("idle, no live run, viewer open", cpu_seconds(server.pid) - cpu0, window, IDLE_CPU_PER_MIN)


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def api(server: Server, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + path, timeout=10) as answer:
        found: dict[str, Any] = json.load(answer)
        return found


async def wait_tasks(server: Server, path: str, tasks: int, status: str, timeout: float) -> float | None:
    """Seconds until the run at `path` lists `tasks` tasks with `status`, or None."""
    return await wait_run(server, path, lambda run: sum(
        task["status"] == status for task in run.get("tasks", [])) >= tasks, timeout)


async def wait_run(server: Server, path: str, check: Callable[[dict[str, Any]], bool],
                   timeout: float) -> float | None:
    """Seconds until the server's answer for the run at `path` passes `check`, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check(await asyncio.to_thread(api, server, path)):
                return time.monotonic() - started
        except OSError:
            pass  # not listed yet: 404
        await asyncio.sleep(0.2)
    return None


class Updaters(threading.Thread):
    """Every task but the viewed one PUTs a data update every `period` seconds, spread evenly."""

    def __init__(self, run: WrittenRun, tasks: int, period: float) -> None:
        super().__init__(daemon=True)
        self.run_, self.tasks, self.period = run, tasks, period
        self.stop, self.written = threading.Event(), 0

    def run(self) -> None:
        gap = self.period / max(self.tasks - 1, 1)
        while not self.stop.is_set():
            for task in range(1, self.tasks):
                self.run_.place.put(self.run_.update_key(task), self.run_.update({}))
                self.written += 1
                if self.stop.wait(gap):
                    return


def live_copy(card: LiveCard, place: S3Place) -> tuple[bytes, bytes]:
    """The live card's HTML and data update as they are while its task runs (the final render
    replaces both)."""
    real = f"mf.cards/{card.data_name}"
    html = place.read(f"{real.rsplit('/runtime/', 1)[0]}/cards/{card.parts[-1]}.html")
    update = place.read(real)
    assert html and update
    return html, update


async def big_run(browser: Any, card: LiveCard, live: tuple[bytes, bytes], place: S3Place, server: Server,
                  proxy: Proxy, plan: Plan, results: Results) -> None:
    """`plan.tasks` running tasks in a new run of the card's flow and step; task 0 holds the real
    live card (`live`: its HTML and an update), the others a stub."""
    flow, _, step, _, stem = card.parts
    run = WrittenRun(place, flow, str(int(card.run_id) + 1), step, stem, card.token)
    html, update = live
    stub = b"<html><body>a card</body></html>"
    keys = run.started(range(plan.tasks), lambda task: html if task == 0 else stub, lambda task: update)
    first = {key: body for key, body in keys.items() if f"/{step}/0/" in key or "/tasks/0/" in key}
    # The run starts with one task: found by the next discovery (every 10 s per flow, plus one)
    await asyncio.to_thread(place.put_many, first)
    path = f"api/runs/{flow}/{run.run_id}"
    found = await wait_tasks(server, path, 1, "running", 120)
    results.rows.append(["a new run: found after its first task's keys (s)", seconds(found),
                         f"<= {NEW_RUN_SECONDS:.0f}",
                         verdict(found is not None and found <= NEW_RUN_SECONDS)])
    # Viewed (listed every 5 s), it gains the other tasks at once
    opened = await open_card(browser, f"{server.url}run/{run.card_path(0)}", is_card_html, 100)
    await asyncio.to_thread(place.put_many, {key: body for key, body in keys.items() if key not in first})
    listed = await wait_tasks(server, path, plan.tasks, "running", 120)
    results.rows.append([f"{plan.tasks - 1} more tasks in the viewed run: all listed running after their "
                         "keys (s)", seconds(listed), f"<= {FOLLOW_SECONDS:.0f}",
                         verdict(listed is not None and listed <= FOLLOW_SECONDS)])
    name = f"{plan.tasks} live tasks, one viewed, the others updating every {plan.period:.0f} s"
    assert card.store is not None
    data_name = run.update_key(0).removeprefix("mf.cards/")
    viewed = replace(card, run_id=run.run_id, parts=(flow, run.run_id, step, "0", stem),
                     data_name=data_name, write_update=make_writer(card.store, data_name, json.loads(update)))
    updaters = Updaters(run, plan.tasks, plan.period)
    updaters.start()
    try:
        page = await viewed_card(name, browser, "", viewed, Writer(viewed, 7), server, proxy, plan.updates,
                                 plan.rate, 10, results, is_card_html, target=True, warmup=3, opened=opened)
    finally:
        updaters.stop.set()
        updaters.join()
    results.notes.append(f"{name}: {updaters.written} data updates PUT by the other tasks")
    await asyncio.to_thread(place.put_many, run.ended(range(plan.tasks)))
    done = await wait_tasks(server, path, plan.tasks, "succeeded", 120)
    results.rows.append([f"{plan.tasks} live tasks: all shown succeeded after their DONE.lock (s)",
                         seconds(done), f"<= {FOLLOW_SECONDS:.0f}",
                         verdict(done is not None and done <= FOLLOW_SECONDS)])
    await page.close()


def our_server(place: S3Place, proxy: Proxy, workdir: Path) -> Server:
    """`card server` in an empty folder with nothing but Metaflow's S3 settings (S3 via the proxy)."""
    env = {**metaflow_env(workdir, "bench"), **metaflow_s3_env(proxy.server.url, place.sysroot)}
    env.pop("METAFLOW_DEFAULT_METADATA")
    return start_s3_cardserver(workdir, env)


async def ours_live(browser: Any, card: LiveCard, writer: Writer, place: S3Place, proxy: Proxy, plan: Plan,
                    workdir: Path, results: Results) -> None:
    server = our_server(place, proxy, workdir)
    try:
        results.notes.append(f"ours: {server.output[-1].strip()}")
        page = await viewed_card("ours", browser, f"{server.url}run/{card.path}", card, writer, server, proxy,
                                 plan.updates, plan.rate, 10, results, is_card_html, target=True, warmup=5)
        await page.close()
    finally:
        server.stop()


async def ours_after(browser: Any, card: LiveCard, live: tuple[bytes, bytes], place: S3Place, proxy: Proxy,
                     plan: Plan, workdir: Path, results: Results) -> None:
    """The flow has ended: idle with the viewer open on its final card, then a big live run."""
    server = our_server(place, proxy, workdir)
    try:
        page = await browser.new_page()
        await page.goto(f"{server.url}run/{card.path}")
        await idle_phase(server, proxy, f"api/runs/{card.parts[0]}/{card.run_id}", plan, results)
        await page.close()
        await big_run(browser, card, live, place, server, proxy, plan, results)
    finally:
        server.stop()


async def run(plan: Plan, place: S3Place, proxy: Proxy) -> Results:
    """One server at a time, so the proxy's counts are that server's alone."""
    from playwright.async_api import async_playwright

    results = Results()
    with live_card(store=lambda _: S3Cards(place), max_seconds=1800) as card, \
            tempfile.TemporaryDirectory(prefix="bench-s3-ours-") as folder:
        writer, live = Writer(card, 4), live_copy(card, place)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                first = ours_live(browser, card, writer, place, proxy, plan, Path(folder), results)
                await attempt("ours, live card", first, results)
                for poll, count in plan.metaflow:
                    await attempt(f"Metaflow --poll-interval {poll}", metaflow_side(
                        browser, card, writer, proxy, poll, count, results), results)
                await asyncio.to_thread(finish_flow, card, place)
                await attempt("ours, idle and a big run", ours_after(browser, card, live, place, proxy, plan,
                                                                     Path(folder), results), results)
            finally:
                await browser.close()
    return results


async def attempt(name: str, job: Any, results: Results) -> None:
    """A setup that fails is an error (a smoke run then exits non-zero); the others still run."""
    try:
        await job
    except Exception as error:
        results.errors.append(f"{name}: {type(error).__name__}: {str(error)[:300]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; any error exits non-zero")
    parser.add_argument("--updates", type=int, default=60, help="updates on ours per phase [60]")
    parser.add_argument("--rate", type=float, default=2.0, help="updates per second on ours [2]")
    parser.add_argument("--metaflow-updates", type=int, default=20,
                        help="updates per Metaflow setup, 1 a second [20]")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window [60]")
    parser.add_argument("--tasks", type=int, default=200, help="running tasks in the big run [200]")
    parser.add_argument("--period", type=float, default=5.0,
                        help="seconds between two data updates of each big-run task [5]")
    args = parser.parse_args()
    plan = make_plan(args)
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as workdir:
        moto = start_moto_server(Path(workdir))
        proxy = Proxy(start_s3_proxy(moto.url))
        try:
            place = S3Place(moto.url)
            place.create_bucket()
            results = asyncio.run(run(plan, place, proxy))
        finally:
            proxy.server.stop()
            moto.stop()
    wall = time.monotonic() - wall0
    results.rows.append(["machine: CPU s busy on all cores / wall s",
                         f"{machine_busy_seconds() - busy0:.0f} / {wall:.0f} (2 cores: servers, "
                         "Chromium, moto, the flow and other work)", "", ""])
    code = report("S3: write -> DOM, requests, cost and CPU" + (" (smoke)" if args.smoke else ""),
                  results.rows, results.errors, args.smoke)
    for note in results.notes:
        print(note)
    return code


if __name__ == "__main__":
    sys.exit(main())
