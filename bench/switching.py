"""How fast the viewer moves between cards, in Chromium, on a real Metaflow run (issue 14).

A finished run with one default card and `--cards` blank cards (Markdown, Table, VegaChart:
Metaflow's ~1.1 MB page each) is made at bench time. One Chromium page opens the viewer on it,
and we time input -> card painted: the input event's own timestamp, until the first animation
frame after the picked card's frame is the one shown (loaded and not hidden) and, for a card
that was already loaded (kept or loaded ahead), its own frame has rendered an animation frame
since (a hidden frame renders none, so this counts its renderer waking up). Then:

- first visit: each card clicked once, in a shuffled order (list neighbours not favoured);
  every other one after the pointer rested on its row for 300 ms (a row hovered for 50 ms is
  loaded ahead), the others clicked at once (Playwright moves the pointer and clicks);
- visit again: a card among the last few shown, clicked again;
- any seen card: a card among all those shown so far, clicked again (most were dropped);
- keyboard: `j` (next card) down the list, then `k` (previous card) back up a third of it;
- memory: Chromium's (PSS of all its processes) every 10 of `--switches` random clicks over
  all the cards and after them: its peak, and whether it grows (the lowest reading of the
  walk's second half over the lowest of its first half: garbage comes and goes in a sawtooth,
  what a leak raises is the floor), and the server's (RSS) after them.

Between two switches we wait until no frame has been loading for 10 animation frames (a
person reads the card): what is loaded ahead is then ready, as it would be. Each setting of
`?keep=` runs in a new browser; `keep=0` is the viewer as it was before issue 14 (one frame,
nothing kept or loaded ahead, no warm frames: each card loads its whole page by its URL)."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    percentile,
    report,
    rss_mb,
    run_options,
    start_cardserver,
    table,
    verdict,
)
from bench.manycards import FLOW_NAME, many_cards

# Issue 14's figures (an older main, the same kind of run), and its targets, in ms.
BEFORE = {"first visit": 575.0, "visit again": 195.0}
TARGETS = {"first visit": 150.0, "visit again": 50.0, "keyboard next": 50.0,
           "keyboard previous": 50.0}
REST_MS = 300  # the pointer on a row before a click: our hover loads the card ahead after 50 ms
FIRST_RESTING = f"first visit, pointer resting {REST_MS} ms"
CHROMIUM_LIMIT_MB = 1400.0  # Chromium's peak over the walk, all processes (PSS): see README
GROWTH_LIMIT = 1.15  # the walk's floor, second half over first half: bounded, not growing
SAMPLE_EVERY = 10  # switches between two readings of Chromium's memory
SERVER_LIMIT_MB = 150.0

# In the viewer page: time each pick from its input event to the card painted.
PROBE = """() => {
  const probe = window.__switch = { input: 0 };
  for (const kind of ["click", "keydown"]) {
    window.addEventListener(kind, (event) => { probe.input = event.timeStamp; }, true);
  }
}"""

# Armed before the input: from then on, every animation frame checks whether the frame of
# `part` (its card-html path) is the one shown; one frame later `result` holds input -> painted
# in ms (-1 after `timeout`), and `shownAt` when it was seen shown (epoch ms). Returns whether
# that card's frame was already loaded (kept or loaded ahead).
ARM = """([part, timeout]) => {
  const probe = window.__switch;
  probe.result = null;
  probe.input = 0;
  const mine = () => [...document.querySelectorAll('#frames iframe[data-card]')]
    .find((f) => f.dataset.card.includes(part));
  const before = mine();
  const deadline = performance.now() + timeout;
  const check = () => {
    const f = mine();
    const shown = probe.input && f && !f.classList.contains("incoming") && !f.classList.contains("kept");
    if (shown) {
      probe.shownAt = performance.timeOrigin + performance.now();
      requestAnimationFrame(() => { probe.result = performance.now() - probe.input; });
    } else if (performance.now() > deadline) probe.result = -1;
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
  return !!before && !before.classList.contains("incoming");
}"""

# In a loaded card's own frame, before the input: note each animation frame it renders (a
# hidden frame renders none). Its first one after it was shown is when it is painted again.
FRAME_TICKS = """() => {
  const ticks = window.__ticks = [];
  const tick = () => {
    ticks.push(performance.timeOrigin + performance.now());
    if (ticks.length < 600) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""
FIRST_TICK = """(after) => new Promise((resolve) => {
  const find = () => {
    const at = window.__ticks.find((t) => t >= after);
    if (at !== undefined) { window.__ticks.length = 600; resolve(at); } else requestAnimationFrame(find);
  };
  find();
})"""

# Until no card frame has loaded for 10 animation frames: the viewer starts loading ahead 2
# frames after a card is painted, so a shorter quiet spell could end before it begins.
IDLE = """async () => {
  const nextFrame = () => new Promise((r) => requestAnimationFrame(r));
  for (let quiet = 0; quiet < 10;) {
    await nextFrame();
    quiet = document.querySelector('#frames iframe.incoming') ? 0 : quiet + 1;
  }
}"""


@dataclass
class Figures:
    keep: int
    times: dict[str, list[float]] = field(default_factory=dict)
    chromium_mb: float = float("nan")
    memory: list[float] = field(default_factory=list)  # Chromium's, during the walk
    server_mb: float = float("nan")
    frames: int = 0
    last: str = ""
    errors: list[str] = field(default_factory=list)

    def p(self, name: str, q: float) -> float:
        return percentile(self.times.get(name, []), q)

    @property
    def peak_mb(self) -> float:
        return max([*self.memory, self.chromium_mb])

    @property
    def growth(self) -> float:
        """The lowest reading of the walk's second half over the lowest of its first half."""
        half = len(self.memory) // 2
        return min(self.memory[half:]) / min(self.memory[:half]) if half else float("nan")


def card_part(row_id: str, run: str) -> str:
    """The card-html path of a row (`step/task/card`), as the frame's src holds it."""
    return f"/card-html/{FLOW_NAME}/{run}/{row_id}"


async def switch(page: Any, figures: Figures, name: str, run: str, row_id: str, key: str = "",
                 rest_ms: int = 0) -> None:
    """Pick `row_id` (a click, or `key`) and time it; never the card already shown. With
    `rest_ms`, the pointer rests on the row that long before the click, as a person's does."""
    row = f"#card-list .row[data-id='{row_id}']"
    if rest_ms:
        await page.hover(row)
        await page.wait_for_timeout(rest_ms)
    part = card_part(row_id, run)
    loaded = await page.evaluate(ARM, [part, 30_000])
    frame = next((f for f in page.frames if part in f.url), None) if loaded else None
    if frame is not None:
        await frame.evaluate(FRAME_TICKS)
    if key:
        await page.keyboard.press(key)
    else:
        await page.click(row)
    await page.wait_for_function("() => window.__switch.result !== null", timeout=40_000)
    took = await page.evaluate("window.__switch.result")
    if frame is not None and took >= 0:  # painted: the card's own frame rendered again
        shown_at, input_at = await page.evaluate(
            "[window.__switch.shownAt, performance.timeOrigin + window.__switch.input]")
        tick = await frame.evaluate(FIRST_TICK, shown_at) - input_at
        took = max(took, tick)
    if took < 0:
        figures.errors.append(f"{name}: {row_id} never shown")
    else:
        figures.times.setdefault(name, []).append(took)
    figures.last = row_id
    await page.evaluate(IDLE)


def other(rng: random.Random, rows: Sequence[str], shown: str) -> str:
    """A random card other than the one shown."""
    return rng.choice([r for r in rows if r != shown])


def chromium_pss_mb(browser_pid: int) -> float:
    """Proportional memory of Chromium's browser process and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family, grew = {browser_pid}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    total = 0.0
    for pid in family:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) / 1000
        except OSError:
            continue
    return total


def browser_pid(marker: str) -> int:
    """The Chromium browser process launched with `marker` on its command line."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    args = handle.read().split(b"\0")
            except OSError:
                continue
            if marker.encode() in args and not any(a.startswith(b"--type=") for a in args):
                return int(entry)
    raise RuntimeError("Chromium's browser process not found")


async def measure(playwright: Any, url: str, run: str, keep: int, args: Any, seed: int) -> Figures:
    figures = Figures(keep)
    marker = f"--user-agent=cardserver-switching-bench-{os.getpid()}-{keep}"
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, marker])
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 2400})
        await page.goto(f"{url}run/{FLOW_NAME}/{run}?keep={keep}")
        await page.wait_for_function(
            "(n) => document.querySelectorAll('#card-list .row[data-card]').length >= n",
            arg=args.cards + 1, timeout=60_000)
        await page.evaluate(PROBE)
        rows: list[str] = await page.evaluate(
            "[...document.querySelectorAll('#card-list .row[data-card]')].map((n) => n.dataset.id)")
        rng = random.Random(seed)
        order = rows[:]
        rng.shuffle(order)
        seen: list[str] = []
        await page.click(f"#card-list .row[data-id='{order[-1]}']")  # a card shown, to switch from
        await page.evaluate(IDLE)
        for at, row_id in enumerate(order[:-1]):
            if at % 2:
                await switch(page, figures, FIRST_RESTING, run, row_id, rest_ms=REST_MS)
            else:
                await switch(page, figures, "first visit", run, row_id)
            seen.append(row_id)
            if len(seen) >= 3:  # back to one of the last few shown, as a person comparing does
                again = rng.choice(sorted(set(seen[-4:]) - {seen[-1]}))
                await switch(page, figures, "visit again", run, again)
                seen.append(again)
        for _ in range(args.again):
            await switch(page, figures, "any seen card", run, other(rng, rows, seen[-1]))
            seen.append(figures.last)
        await page.click(f"#card-list .row[data-id='{rows[0]}']")  # the walk starts at the top
        await page.evaluate(IDLE)
        for row_id in rows[1 : 1 + args.keys]:
            await switch(page, figures, "keyboard next", run, row_id, key="j")
        at = min(args.keys, len(rows) - 1)
        for row_id in reversed(rows[max(0, at - max(1, args.keys // 3)) : at]):
            await switch(page, figures, "keyboard previous", run, row_id, key="k")
        last = figures.last
        pid = browser_pid(marker)
        for done in range(args.switches):
            last = other(rng, rows, last)
            await switch(page, figures, "memory walk", run, last)
            if done % SAMPLE_EVERY == SAMPLE_EVERY - 1:
                figures.memory.append(chromium_pss_mb(pid))
        await page.evaluate("() => new Promise((r) => setTimeout(r, 1000))")  # let GC settle a little
        figures.chromium_mb = chromium_pss_mb(pid)
        figures.frames = await page.evaluate("document.querySelectorAll('#frames iframe').length")
    finally:
        await browser.close()
    return figures


def run_id(datastore: Path) -> str:
    runs = datastore / "mf.cards" / FLOW_NAME / "runs"
    return next(p.name for p in runs.iterdir() if p.is_dir())


async def run(args: Any) -> list[Figures]:
    from playwright.async_api import async_playwright

    results = []
    with many_cards(args.cards, args.fixture) as datastore:
        server = start_cardserver(datastore)
        try:
            run_name = run_id(datastore)
            async with async_playwright() as playwright:
                for keep in args.keep:
                    print(f"keep={keep} ...", file=sys.stderr, flush=True)
                    figures = await measure(playwright, server.url, run_name, keep, args, args.seed)
                    figures.server_mb = rss_mb(server.pid)
                    results.append(figures)
        finally:
            server.stop()
    return results


def side_by_side(results: Sequence[Figures]) -> str:
    names = ["first visit", FIRST_RESTING, "visit again", "any seen card", "keyboard next",
             "keyboard previous", "memory walk"]
    header = ["switch (ms)", *[f"keep={f.keep} p50/p90" for f in results], "issue 14 (before)", "target p50"]
    rows: list[list[object]] = []
    for name in names:
        cells = [f"{f.p(name, 50):.0f} / {f.p(name, 90):.0f} (n={len(f.times.get(name, []))})"
                 for f in results]
        before = f"{BEFORE[name]:.0f}" if name in BEFORE else ""
        target = f"<= {TARGETS[name]:.0f}" if name in TARGETS else ""
        rows.append([name, *cells, before, target])
    rows.append(["Chromium memory after the walk (MB, PSS)",
                 *[f"{f.chromium_mb:.0f} ({f.frames} frames)" for f in results], "", ""])
    rows.append(["Chromium memory, peak in the walk (MB)", *[f"{f.peak_mb:.0f}" for f in results], "",
                 f"<= {CHROMIUM_LIMIT_MB:.0f}"])
    rows.append(["Chromium memory, floor 2nd / 1st half", *[f"{f.growth:.2f}" for f in results], "",
                 f"<= {GROWTH_LIMIT:.2f}"])
    rows.append(["server memory (MB, RSS)", *[f"{f.server_mb:.0f}" for f in results], "",
                 f"<= {SERVER_LIMIT_MB:.0f}"])
    return table("Card switching, side by side", header, rows)


def verdict_rows(best: Figures) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, target in TARGETS.items():
        value = best.p(name, 50)
        rows.append([f"{name} p50 (ms)", value, f"<= {target:.0f}", verdict(value <= target)])
    rows.append(["Chromium memory peak (MB)", best.peak_mb, f"<= {CHROMIUM_LIMIT_MB:.0f}",
                 verdict(best.peak_mb <= CHROMIUM_LIMIT_MB)])
    if best.memory:
        rows.append(["Chromium memory growth", round(best.growth, 2), f"<= {GROWTH_LIMIT:.2f}",
                     verdict(best.growth <= GROWTH_LIMIT)])
    rows.append(["server memory (MB)", best.server_mb, f"<= {SERVER_LIMIT_MB:.0f}",
                 verdict(best.server_mb <= SERVER_LIMIT_MB)])
    return rows


def main() -> int:
    parser = run_options(__doc__ or "", "4 cards, a few switches: that it runs, not its numbers")
    parser.add_argument("--cards", type=int, default=50, help="blank cards (plus the default one)")
    parser.add_argument("--switches", type=int, default=200, help="random clicks before memory is read")
    parser.add_argument("--again", type=int, default=30, help="clicks on any card seen before")
    parser.add_argument("--keys", type=int, default=30, help="`j` presses down the list")
    parser.add_argument("--keep", type=int, nargs="+", default=[0, 4],
                        help="viewer ?keep= settings; the last is judged")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    if args.smoke:
        args.cards, args.switches, args.again, args.keys = 3, 6, 3, 3
    started, load = time.monotonic(), os.getloadavg()[0]
    results = asyncio.run(run(args))
    print()
    print(side_by_side(results))
    errors = [e for f in results for e in f.errors]
    for f in results:
        readings = " ".join(f"{m:.0f}" for m in f.memory)
        print(f"Chromium MB every {SAMPLE_EVERY} switches, keep={f.keep}: {readings}")
    print(f"\nwall {time.monotonic() - started:.0f} s, load average at start {load:.2f}")
    title = "Card switching (smoke)" if args.smoke else f"Card switching, keep={results[-1].keep}"
    return report(title, verdict_rows(results[-1]), errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
