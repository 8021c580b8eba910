"""Update latency (issue 4, target 1): a card data file written -> the card's DOM changed, in
Chromium, with a real Metaflow live card. Ours and Metaflow's own `card server`, side by side.

    python bench/latency.py                  # 200 updates per setup on ours; 40 on Metaflow's
    python bench/latency.py --updates 500 --full
    python bench/latency.py --smoke          # tiny, < 60 s, exits non-zero on any error
    python bench/latency.py --jupyter --updates 30   # direct vs through jupyter-server-proxy

How: bench/realcard.py runs a real flow whose `@card(type="blank", refresh_interval=1)` task
stays running; this script then writes the card's `runtime/<stem>.data.json` itself, Metaflow's
way (mkstemp + os.replace), each update setting the markdown to "# seq N". A MutationObserver
injected into the frame that shows the card records `performance.timeOrigin + performance.now()`
when the text first shows "seq N" (or a later N: a poller that skips updates shows the newest).
Latency = that time - the write time (time.time() just before mkstemp), with the browser clock's
offset to ours measured by round trips and taken off. Nothing talks to the browser while the
updates are written: the page keeps its records and we read them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    Server,
    cpu_seconds,
    machine_busy_seconds,
    start_cardserver,
    start_jupyter,
    start_metaflow_server,
    summary_ms,
    table,
    verdict,
)
from bench.realcard import LiveCard, live_card
from cardserver.config import WatchTiming

TARGETS = {"p50": 10.0, "p90": 25.0, "p99": 60.0}
TARGET_TEXT = "p50<=10 p90<=25 p99<=60"

# Records, in the card's own frame, when the markdown first shows each new "seq N".
OBSERVER = """() => {
  if (window.__bench) return;
  const seen = [];
  const state = { seen, last: -1 };
  const check = (text, now) => {
    const found = /seq (\\d+)/.exec(text || "");
    if (!found) return;
    const seq = Number(found[1]);
    if (seq !== state.last) { state.last = seq; seen.push([seq, now]); }
  };
  new MutationObserver((records) => {
    const now = performance.timeOrigin + performance.now();
    for (const record of records) {
      const node = record.target;
      check(node.nodeType === Node.TEXT_NODE ? node.data : node.textContent, now);
    }
  }).observe(document.documentElement, { subtree: true, childList: true, characterData: true });
  // Ours only: when each update's message from the host page reached the card's runtime (a
  // capturing listener runs before the runtime's own, so before the update is applied), to
  // split the latency in two.
  const arrivals = [];
  state.arrivals = arrivals;
  if (window.__cardserverRuntime) {
    window.addEventListener("message", (event) => {
      const now = performance.timeOrigin + performance.now();
      const found = /seq (\\d+)/.exec(JSON.stringify(event.data && event.data.update) || "");
      if (found) arrivals.push([Number(found[1]), now]);
    }, { capture: true });
  }
  window.__bench = state;
}"""

RESET = "() => { window.__bench.seen.length = 0; window.__bench.arrivals.length = 0; }"

READY = """() => typeof window.metaflow_card_update === "function"
  && !!document.body && /seq \\d+/.test(document.body.textContent)"""


@dataclass
class Result:
    setup: str
    latencies: list[float] = field(default_factory=list)  # ms
    missing: int = 0
    cpu: float | None = None  # server CPU seconds during the measured updates
    seconds: float = 0.0
    offset_ms: float = 0.0
    target: bool = True
    note: str = ""
    to_socket: list[float] = field(default_factory=list)  # write -> message in the card's runtime
    to_dom: list[float] = field(default_factory=list)  # message -> DOM changed
    write_ms: list[float] = field(default_factory=list)  # the write call (mkstemp .. os.replace)
    slowest: str = ""

    def row(self) -> list[object]:
        s = summary_ms(self.latencies)
        ok = self.passed()
        shown = "-" if not self.target else verdict(ok)
        return [self.setup, s["n"], s["p50"], s["p90"], s["p99"], s["max"],
                TARGET_TEXT if self.target else "baseline", shown,
                "?" if self.cpu is None else round(self.cpu, 2), self.missing]

    def passed(self) -> bool:
        s = summary_ms(self.latencies)
        return bool(self.latencies) and not self.missing and all(s[k] <= v for k, v in TARGETS.items())


# --- browser side -------------------------------------------------------------------------------


async def find_card_frame(page: Any, wanted: Callable[[str], bool], timeout: float) -> Any:
    """The frame showing the live card (an iframe of a viewer, or the page itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if not wanted(frame.url):
                continue
            try:
                if await frame.evaluate(READY):
                    return frame
            except Exception:  # the frame navigated or detached meanwhile: look again
                continue
        await asyncio.sleep(0.1)
    urls = [f.url for f in page.frames]
    raise RuntimeError(f"no live card frame appeared within {timeout:.0f} s; frames: {urls}")


async def clock_offset(frame: Any, probes: int = 25) -> float:
    """Browser epoch ms minus ours, from the tightest of several round trips."""
    best: tuple[float, float] | None = None
    for _ in range(probes):
        before = time.time()
        theirs = await frame.evaluate("() => performance.timeOrigin + performance.now()")
        after = time.time()
        trip = after - before
        if best is None or trip < best[0]:
            best = (trip, theirs - (before + after) / 2 * 1000)
    assert best is not None
    return best[1]


async def last_seen(frame: Any) -> int:
    return int(await frame.evaluate("() => window.__bench.last"))


async def wait_seen(frame: Any, seq: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await last_seen(frame) >= seq:
            return True
        await asyncio.sleep(0.05)
    return False


def latencies(writes: dict[int, float], seen: Sequence[Sequence[float]], offset_ms: float
              ) -> tuple[list[float], int]:
    """Per write: first time the page showed that seq or a later one, minus the write time."""
    shown = sorted((t - offset_ms, int(s)) for s, t in seen)
    out: list[float] = []
    missing = 0
    for seq, written in sorted(writes.items()):
        first = next((t for t, s in shown if s >= seq), None)
        if first is None:
            missing += 1
        else:
            out.append(first - written * 1000)
    return out, missing


# --- one setup ----------------------------------------------------------------------------------


class Writer:
    """Hands out increasing sequence numbers; each write is a real file event."""

    def __init__(self, card: LiveCard, seed: int) -> None:
        self.card = card
        self.seq = 0
        self.random = random.Random(seed)
        self.took: dict[int, float] = {}  # seq -> ms the write itself took (mkstemp .. replace)

    async def run(self, count: int, rate: float, jitter: float = 0.5) -> dict[int, float]:
        writes: dict[int, float] = {}
        for _ in range(count):
            self.seq += 1
            writes[self.seq] = self.card.write_update(self.seq)
            self.took[self.seq] = (time.time() - writes[self.seq]) * 1000
            gap = 1 / rate * (1 + self.random.uniform(-jitter, jitter))
            await asyncio.sleep(gap)
        return writes


async def measure(name: str, frame: Any, writer: Writer, server: Server, count: int, rate: float,
                  settle: float, warmup: int = 5) -> Result:
    await frame.evaluate(OBSERVER)
    # Warm up: the path works end to end, and the watcher is in its steady state for a live card.
    await writer.run(warmup, rate)
    if not await wait_seen(frame, writer.seq, settle):
        raise RuntimeError(f"{name}: warm-up update {writer.seq} never reached the page")
    await asyncio.sleep(0.3)
    offset = await clock_offset(frame)
    await frame.evaluate(RESET)
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    writes = await writer.run(count, rate)
    await wait_seen(frame, writer.seq, settle)
    cpu = cpu_seconds(server.pid) - cpu0
    seconds = time.monotonic() - t0
    seen, arrivals = await frame.evaluate("() => [window.__bench.seen, window.__bench.arrivals]")
    values, missing = latencies(writes, seen, offset)
    result = Result(name, values, missing, cpu, seconds, offset)
    result.to_socket, result.to_dom = stages(writes, seen, arrivals, offset)
    result.write_ms = [writer.took[seq] for seq in writes]
    result.slowest = slowest(writes, seen, arrivals, offset, writer.took)
    return result


def slowest(writes: dict[int, float], seen: Sequence[Sequence[float]],
            arrivals: Sequence[Sequence[float]], offset_ms: float, took: dict[int, float]) -> str:
    """Where the worst update's time went, to tell a server stall from a disk or CPU stall."""
    shown = sorted((t - offset_ms, int(s)) for s, t in seen)
    worst, seq = max(((next((t for t, s in shown if s >= n), float("inf")) - w * 1000, n)
                      for n, w in writes.items()), default=(float("nan"), 0))
    arrived = {int(s): t - offset_ms for s, t in arrivals}
    parts = [f"slowest: seq {seq} {worst:.1f} ms", f"the write call itself {took.get(seq, 0):.1f} ms"]
    if seq in arrived:
        parts.append(f"write -> message in runtime {arrived[seq] - writes[seq] * 1000:.1f} ms")
    return ", ".join(parts)


def stages(writes: dict[int, float], seen: Sequence[Sequence[float]],
           arrivals: Sequence[Sequence[float]], offset_ms: float) -> tuple[list[float], list[float]]:
    """Split each update's latency at the moment its message reached the card's runtime."""
    shown = {int(s): t for s, t in seen}
    to_socket, to_dom = [], []
    for seq, t in arrivals:
        seq = int(seq)
        if seq in writes and seq in shown:
            to_socket.append(t - offset_ms - writes[seq] * 1000)
            to_dom.append(shown[seq] - t)
    return to_socket, to_dom


async def measure_cold(name: str, frame: Any, writer: Writer, server: Server, count: int,
                       quiet: float) -> Result:
    """First write after `quiet` seconds with no change at all: the watcher has gone cold."""
    offset = await clock_offset(frame)
    result = Result(name, offset_ms=offset, target=False)
    cpu0 = cpu_seconds(server.pid)
    for _ in range(count):
        await asyncio.sleep(quiet)
        await frame.evaluate(RESET)
        writer.seq += 1
        writes = {writer.seq: writer.card.write_update(writer.seq)}
        await wait_seen(frame, writer.seq, 10)
        values, missing = latencies(writes, await frame.evaluate("() => window.__bench.seen"), offset)
        result.latencies += values
        result.missing += missing
    result.cpu = cpu_seconds(server.pid) - cpu0
    return result


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Plan:
    updates: int
    rate: float
    cold: int
    metaflow: list[tuple[int, int, float]]  # (poll interval s, updates, rate)
    settle_extra: float = 5.0


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(updates=20, rate=10.0, cold=0, metaflow=[] if args.jupyter else [(1, 4, 2.0)])
    if args.jupyter:  # ours direct vs ours through jupyter-server-proxy; no Metaflow server
        return Plan(updates=args.updates, rate=args.rate, cold=0, metaflow=[])
    mf_updates = args.updates if args.full else 40
    return Plan(updates=args.updates, rate=args.rate, cold=args.cold,
                metaflow=[(5, mf_updates, 1.0), (1, mf_updates, 1.0)])


async def run(args: argparse.Namespace) -> list[Result]:
    """Every setup on one live card and one browser. Outside --smoke a setup that fails is
    reported in the table and the others still run."""
    from playwright.async_api import async_playwright

    plan = make_plan(args)
    results: list[Result] = []

    async def attempt(name: str, job: Callable[[], Any]) -> None:
        try:
            await job()
        except Exception as error:
            if args.smoke:
                raise
            print(f"{name}: failed: {error}", file=sys.stderr)
            results.append(Result(name, target=False, note=f"failed: {str(error)[:200]}"))

    with live_card() as card:
        writer = Writer(card, args.seed)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                await attempt("ours", lambda: run_ours(browser, card, writer, plan, results))
                if args.jupyter:
                    await attempt("ours through Jupyter", lambda: run_through_jupyter(
                        browser, card, writer, plan, results))
                for poll, count, rate in plan.metaflow:
                    name = f"Metaflow card server, --poll-interval {poll}"
                    await attempt(name, lambda poll=poll, count=count, rate=rate, name=name: run_metaflow(
                        browser, card, writer, name, poll, count, rate, plan, results))
            finally:
                await browser.close()
    return results


async def run_ours(browser: Any, card: LiveCard, writer: Writer, plan: Plan,
                   results: list[Result]) -> None:
    server = start_cardserver(card.datastore)
    try:
        page = await browser.new_page()
        await page.goto(f"{server.url}run/{card.path}")
        frame = await find_card_frame(page, is_card_html, 60)
        results.append(await measure("ours: viewer page (/run/...)", frame, writer, server,
                                     plan.updates, plan.rate, plan.settle_extra))
        if plan.cold:
            quiet = WatchTiming().hot_seconds + 2
            print(f"cold writes: {plan.cold} x {quiet:.0f} s quiet ...", file=sys.stderr, flush=True)
            results.append(await measure_cold(f"ours: viewer, 1st write after {quiet:.0f} s quiet",
                                              frame, writer, server, plan.cold, quiet))
        await page.close()
        page = await browser.new_page()
        await page.goto(f"{server.url}card/{card.path}")
        frame = await find_card_frame(page, is_card_html, 60)
        results.append(await measure("ours: card URL (/card/...)", frame, writer, server,
                                     plan.updates, plan.rate, plan.settle_extra))
        await page.close()
    finally:
        server.stop()


def is_card_html(url: str) -> bool:
    """Our card's own HTML, framed by the card's host page, or written into the viewer's warm
    frame (a Metaflow card; one not given a card yet never passes READY)."""
    return "/card-html/" in url or "/card-shell/" in url


async def run_through_jupyter(browser: Any, card: LiveCard, writer: Writer, plan: Plan,
                              results: list[Result]) -> None:
    """The same pages reached through jupyter-server-proxy, signed in with Jupyter's token."""
    with tempfile.TemporaryDirectory(prefix="bench-jupyter-") as folder:
        server = start_cardserver(card.datastore)
        jupyter = start_jupyter(Path(folder))
        try:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(jupyter.url(f"/api/status?token={jupyter.token}"))  # the login cookie
            proxied = jupyter.url(f"/proxy/{server.port}/")
            for name, path in (("viewer page (/run/...)", f"run/{card.path}"),
                               ("card URL (/card/...)", f"card/{card.path}")):
                await page.goto(proxied + path)
                frame = await find_card_frame(page, is_card_html, 60)
                results.append(await measure(f"ours through jupyter-server-proxy: {name}", frame,
                                             writer, server, plan.updates, plan.rate,
                                             plan.settle_extra))
            await context.close()
        finally:
            jupyter.stop()
            server.stop()


async def run_metaflow(browser: Any, card: LiveCard, writer: Writer, name: str, poll: int,
                       count: int, rate: float, plan: Plan, results: list[Result]) -> None:
    server = start_metaflow_server(card.flow_file, card.run_id, "--poll-interval", str(poll),
                                   env=card.env)
    try:
        page = await browser.new_page()
        await page.goto(server.url)
        frame = await find_card_frame(page, lambda u: "/card/" in u, 60 + 3 * poll)
        result = await measure(name, frame, writer, server, count, rate,
                               3 * poll + plan.settle_extra, warmup=1)
        result.target = False
        results.append(result)
        await page.close()
    finally:
        server.stop()


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to other guests while ours wanted it (/proc/stat steal)."""
    with open("/proc/stat") as handle:
        fields = handle.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def report(results: list[Result], busy: float, wall: float, stolen: float) -> str:
    header = ["setup", "n", "p50", "p90", "p99", "max (ms)", "target", "verdict", "server CPU s",
              "missed"]
    lines = [table("Update latency: file write -> DOM changed in Chromium (real Metaflow card)",
                   header, [r.row() for r in results])]
    ours = next((r for r in results if r.setup.startswith("ours: viewer page")), None)
    if ours and ours.latencies:
        o = summary_ms(ours.latencies)
        for r in results:
            if r.setup.startswith("Metaflow") and r.latencies:
                m = summary_ms(r.latencies)
                lines.append(f"{r.setup} vs ours (viewer): p50 x{m['p50'] / o['p50']:.0f}, "
                             f"p90 x{m['p90'] / o['p90']:.0f}")
    for r in results:
        if r.to_socket:
            a, b = summary_ms(r.to_socket), summary_ms(r.to_dom)
            lines.append(f"{r.setup}: write -> message in the card's runtime p50 {a['p50']:.1f} / "
                         f"p90 {a['p90']:.1f} / p99 {a['p99']:.1f} ms; message -> DOM changed "
                         f"p50 {b['p50']:.1f} / p90 {b['p90']:.1f} / p99 {b['p99']:.1f} ms")
    for r in results:
        if r.write_ms:
            w = summary_ms(r.write_ms)
            lines.append(f"{r.setup}: the write call itself p50 {w['p50']:.2f} / max {w['max']:.1f} ms; "
                         f"{r.slowest}")
    for r in results:
        if r.note:
            lines.append(f"{r.setup}: {r.note}")
            continue
        rate = f", {r.cpu / r.seconds * 60:.2f} CPU s/min" if r.cpu is not None and r.seconds else ""
        lines.append(f"{r.setup}: browser clock offset {r.offset_ms:+.2f} ms{rate}")
    lines.append(f"machine: {busy:.1f} CPU s busy over {wall:.0f} s on all cores "
                 "(other load shares the 2 cores with server, browser and flow); "
                 f"{stolen:.1f} CPU s stolen by the hypervisor")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200, help="updates per setup on ours [200]")
    parser.add_argument("--rate", type=float, default=10.0, help="updates per second, +-50%% jitter [10]")
    parser.add_argument("--cold", type=int, default=3,
                        help="extra writes, each after the watcher went cold (hot_seconds + 2 s quiet) [3]")
    parser.add_argument("--full", action="store_true",
                        help="as many updates on Metaflow's server as on ours (slow: 1 update/s)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="tiny run; any error exits non-zero")
    parser.add_argument("--jupyter", action="store_true",
                        help="ours direct and through jupyter-server-proxy (a real Jupyter Server, "
                             "token auth on), instead of Metaflow's server")
    args = parser.parse_args()
    busy0, wall0, stolen0 = machine_busy_seconds(), time.monotonic(), stolen_seconds()
    try:
        results = asyncio.run(run(args))
    except Exception as error:
        if args.smoke:
            raise
        print(f"latency benchmark failed: {error}", file=sys.stderr)
        return 0
    text = report(results, machine_busy_seconds() - busy0, time.monotonic() - wall0,
                  stolen_seconds() - stolen0)
    print(text)
    if args.smoke:
        for r in results:
            if r.missing or not r.latencies:
                raise SystemExit(f"smoke: {r.setup}: {r.missing} updates never reached the page")
            if min(r.latencies) < -5:
                raise SystemExit(f"smoke: {r.setup}: negative latency {min(r.latencies):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
