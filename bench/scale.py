"""Scale: one run of 10,000 tasks, each with a card and a data update.

    python bench/scale.py                          # 10,000 tasks (writing them takes ~1 min)
    python bench/scale.py --fixture /tmp/scale10k  # write once, reuse on later runs
    python bench/scale.py --smoke                  # 300 tasks, < 60 s, non-zero exit on error

Measures: cold start (process start -> first 200 from /api/flows that lists the run), the
server's RSS, the run listing API (/api/runs/<flow>/<run>: first call, then cached, then
filtered), and the viewer in Chromium: open /run/<flow>/<run>, type in the filter box, pick
status filters, while a PerformanceObserver records every long task. Then Metaflow's own
`card server` answers `/runinfo` for the same run (with --max-cards above the card count).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    PeakRSS,
    Server,
    percentile,
    report,
    rss_mb,
    run_options,
    start_cardserver,
    start_metaflow_server,
    verdict,
)
from cardserver.demo import write_fixture_run

FLOW = "ScaleFlow"
TARGET_COLD_S = 2.0
TARGET_RSS_MB = 250.0
TARGET_API_P50_MS = 30.0
TARGET_LONGTASK_MS = 200.0

FLOW_SOURCE = f'''
from metaflow import FlowSpec, step


class {FLOW}(FlowSpec):
    """The shape of the fixture run: start -> work (many tasks) -> end."""

    @step
    def start(self):
        self.next(self.work)

    @step
    def work(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    {FLOW}()
'''

LONGTASK_OBSERVER = """
window.__longtasks = [];
window.__phases = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__longtasks.push({ start: entry.startTime, duration: entry.duration });
  }
}).observe({ type: "longtask", buffered: true });
"""


# --- fixture ----------------------------------------------------------------------------------


def fixture(folder: Path, tasks: int) -> tuple[Path, str, float | None]:
    """(datastore, run id, seconds spent writing or None when reused)."""
    marker = folder / "fixture.json"
    if marker.exists():
        known = json.loads(marker.read_text())
        if known["tasks"] == tasks:
            return folder / ".metaflow", known["run"], None
        shutil.rmtree(folder / ".metaflow", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    run = write_fixture_run(folder / ".metaflow", FLOW, tasks)
    spent = time.monotonic() - began
    (folder / f"{FLOW}.py").write_text(FLOW_SOURCE)
    marker.write_text(json.dumps({"tasks": tasks, "run": run.run}))
    return folder / ".metaflow", run.run, spent


# --- HTTP -------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection; `get` returns (status, body, seconds to the full body)."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes, float]:
        began = time.perf_counter()
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            raise
        return response.status, body, time.perf_counter() - began

    def close(self) -> None:
        self.conn.close()


def cold_start(datastore: Path, run: str) -> tuple[Server, float, float]:
    """Seconds from launching the process to its port answering (the viewer's page loads from
    then on), and to the first /api/flows that lists the run (the index is complete)."""
    server = start_cardserver(datastore, timeout=180)
    client = Client(server.port)
    deadline = time.monotonic() + 60
    port_open: float | None = None
    try:
        while time.monotonic() < deadline:
            try:
                status, body, _ = client.get("/api/flows" if port_open else "/api/status")
            except OSError:
                time.sleep(0.005)
                continue
            if port_open is None:
                port_open = time.monotonic() - server.started
                continue
            flows = json.loads(body).get("flows", []) if status == 200 else []
            if any(f["flow"] == FLOW and f["newest"] and f["newest"]["run"] == run for f in flows):
                return server, port_open, time.monotonic() - server.started
            time.sleep(0.005)
    finally:
        client.close()
    server.stop()
    raise RuntimeError("the server never listed the run")


def cold_starts(datastore: Path, run: str, launches: int) -> tuple[Server, list[tuple[float, float]]]:
    """`launches` cold starts one after another: the first finds the OS file cache as it is (cold
    after a reboot), the rest find it warm. Returns the last server, still running."""
    times: list[tuple[float, float]] = []
    for n in range(launches):
        server, port_open, cold = cold_start(datastore, run)
        times.append((port_open, cold))
        if n < launches - 1:
            server.stop()
    return server, times


def api_times(port: int, run: str, calls: int) -> dict[str, Any]:
    client = Client(port)
    path = f"/api/runs/{FLOW}/{run}"
    try:
        status, body, first = client.get(path)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
        detail = json.loads(body)
        cached = [client.get(path)[2] for _ in range(calls)]
        filtered = [client.get(f"{path}?status=succeeded&q=work")[2] for _ in range(max(3, calls // 5))]
        page = [client.get(f"{path}?offset=5000&limit=100")[2] for _ in range(max(3, calls // 5))]
    finally:
        client.close()
    return {"first": first * 1000, "cached": [v * 1000 for v in cached],
            "filtered": [v * 1000 for v in filtered], "page": [v * 1000 for v in page],
            "bytes": len(body), "tasks": len(detail["tasks"])}


# --- the viewer in Chromium -------------------------------------------------------------------


def viewer(url: str, run: str, tasks: int, timeout: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    expected = f"{tasks + 2} tasks"  # + start and end
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.add_init_script(LONGTASK_OBSERVER)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            began = time.monotonic()
            page.goto(f"{url}run/{FLOW}/{run}")
            page.wait_for_function(
                "(text) => document.getElementById('task-count').textContent.startsWith(text)",
                arg=expected, timeout=timeout * 1000,
            )
            shown = time.monotonic() - began
            rows_before = page.locator("#card-list .row").count()

            def phase(name: str) -> None:
                page.evaluate("(name) => window.__phases.push({ name, at: performance.now() })", name)

            phase("typing")
            page.click("#text-filter")
            page.keyboard.type("work/99", delay=60)
            page.wait_for_timeout(300)
            filtered = page.locator("#card-list .row").count()
            page.fill("#text-filter", "")
            phase("status filter")
            for status in ("succeeded", "failed", "running", ""):
                page.select_option("#status-filter", status)
                page.wait_for_timeout(250)
            phase("scroll")
            page.hover("#card-list")
            for _ in range(10):
                page.mouse.wheel(0, 3000)
                page.wait_for_timeout(50)
            phase("end")
            page.wait_for_timeout(300)
            found = page.evaluate("({ tasks: window.__longtasks, phases: window.__phases })")
        finally:
            browser.close()
    phases = found["phases"]

    def phase_of(start: float) -> str:
        name = "open"
        for mark in phases:
            if start >= mark["at"]:
                name = mark["name"]
        return name

    longest: dict[str, float] = {}
    for entry in found["tasks"]:
        name = phase_of(entry["start"])
        longest[name] = max(longest.get(name, 0.0), entry["duration"])
    return {"shown": shown, "long": found["tasks"], "longest": longest, "rows": rows_before,
            "filtered_rows": filtered, "errors": errors}


# --- Metaflow's card server -------------------------------------------------------------------


def metaflow_runinfo(folder: Path, run: str, cards: int, timeout: float) -> dict[str, Any]:
    from bench.common import metaflow_env

    flow_file = folder / f"{FLOW}.py"
    if not flow_file.exists():
        flow_file.write_text(FLOW_SOURCE)
    env = metaflow_env(folder, "bench")
    server = start_metaflow_server(flow_file, run, "--max-cards", str(cards + 100), env=env,
                                   timeout=180)
    try:
        client = Client(server.port, timeout=timeout)
        times, sizes, found = [], [], 0
        for _ in range(2):
            status, body, spent = client.get("/runinfo")
            if status != 200:
                return {"error": f"/runinfo answered {status}: {body[:300]!r}"}
            doc = json.loads(body)
            found = len(doc.get("cards", []))
            times.append(spent)
            sizes.append(len(body))
        client.close()
        return {"times": times, "cards": found, "bytes": sizes[-1]}
    except (OSError, http.client.HTTPException) as error:
        return {"error": f"/runinfo failed: {error!r}"}
    finally:
        server.stop()


# --- the benchmark ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    errors: list[str] = []
    temporary = args.fixture is None
    folder = Path(tempfile.mkdtemp(prefix="cardserver-scale-")) if temporary else Path(args.fixture)
    try:
        datastore, run_id, wrote = fixture(folder, args.tasks)
        how = f"written in {wrote:.0f} s" if wrote is not None else "reused"
        print(f"fixture: {args.tasks} tasks in {datastore} ({how})", flush=True)
        server, starts = cold_starts(datastore, run_id, args.starts)
        port_open = statistics.median(p for p, _ in starts[1:])
        cold = statistics.median(c for _, c in starts[1:])
        peak = PeakRSS(server.pid)
        peak.start()
        try:
            rss_start = rss_mb(server.pid)
            api = api_times(server.port, run_id, args.calls)
            if api["tasks"] != args.tasks + 2:
                errors.append(f"the run API lists {api['tasks']} tasks, not {args.tasks + 2}")
            shown = viewer(f"http://127.0.0.1:{server.port}/", run_id, args.tasks, args.browser_timeout)
            errors += [f"page error: {e}" for e in shown["errors"]]
            if server.process.poll() is not None:
                errors.append("the server exited during the run")
        finally:
            peak.stop.set()
            server.stop()
        metaflow = (metaflow_runinfo(folder, run_id, args.tasks + 2, args.metaflow_timeout)
                    if not args.no_metaflow else {"error": "skipped (--no-metaflow)"})
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)

    cached_p50 = percentile(api["cached"], 50)
    worst = max((t["duration"] for t in shown["long"]), default=0.0)
    rows: list[list[object]] = [
        ["first launch, OS file cache as found: to serving (s)", starts[0][1], "-", "-"],
        [f"cold start: port open, median of {len(starts) - 1} launches (s)", port_open, "-", "-"],
        [f"cold start to serving the run, median of {len(starts) - 1} (s)", cold,
         f"<= {TARGET_COLD_S:g}", verdict(cold <= TARGET_COLD_S)],
        ["  fastest, slowest of those (s)", f"{min(c for _, c in starts[1:]):.2f}, "
         f"{max(c for _, c in starts[1:]):.2f}", "-", "-"],
        ["server RSS after start (MB)", rss_start, "-", "-"],
        ["server RSS peak, API + viewer (MB)", peak.peak, f"<= {TARGET_RSS_MB:.0f}",
         verdict(peak.peak <= TARGET_RSS_MB)],
        ["run API first call (ms)", api["first"], "-", "-"],
        ["run API p50, cached (ms)", cached_p50, f"<= {TARGET_API_P50_MS:.0f}",
         verdict(cached_p50 <= TARGET_API_P50_MS)],
        ["run API p90, cached (ms)", percentile(api["cached"], 90), "-", "-"],
        ["run API p50, filtered ?status&q (ms)", percentile(api["filtered"], 50), "-", "-"],
        ["run API p50, one page ?limit=100 (ms)", percentile(api["page"], 50), "-", "-"],
        ["run API body (MB)", api["bytes"] / 1e6, "-", "-"],
        ["viewer: run shown after (s)", shown["shown"], "-", "-"],
        ["viewer: rows in the DOM (virtualized)", shown["rows"], "-", "-"],
        ["viewer: longest task, any phase (ms)", worst, f"<= {TARGET_LONGTASK_MS:.0f}",
         verdict(worst <= TARGET_LONGTASK_MS)],
    ]
    for name in ("open", "typing", "status filter", "scroll"):
        rows.append([f"  longest task while {name} (ms)", shown["longest"].get(name, 0.0), "-", "-"])
    rows.append(["  long tasks (> 50 ms), count", len(shown["long"]), "-", "-"])
    if "error" in metaflow:
        rows.append(["Metaflow card server /runinfo", metaflow["error"], "-", "-"])
    else:
        first, second = metaflow["times"]
        rows += [
            ["Metaflow /runinfo, first call (s)", first, "-", "-"],
            ["Metaflow /runinfo, second call (s)", second, "-", "-"],
            ["Metaflow /runinfo cards listed", metaflow["cards"], "-", "-"],
            ["ratio: Metaflow /runinfo / our run API first call", first / (api["first"] / 1000), "-", "-"],
            ["ratio: Metaflow /runinfo / our run API cached p50", second / (cached_p50 / 1000), "-", "-"],
        ]
        if metaflow["cards"] < args.tasks:
            errors.append(f"Metaflow listed {metaflow['cards']} cards, not {args.tasks + 2}")
    return rows, errors


def main() -> int:
    parser = run_options(__doc__, smoke="300 tasks, < 60 s")
    parser.add_argument("--calls", type=int, default=30, help="cached API calls to time")
    parser.add_argument("--starts", type=int, default=6,
                        help="server launches; the first is reported apart, the median of the rest")
    parser.add_argument("--browser-timeout", type=float, default=60.0)
    parser.add_argument("--metaflow-timeout", type=float, default=600.0)
    parser.add_argument("--no-metaflow", action="store_true", help="skip Metaflow's card server")
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.calls, args.starts = 300, 5, 2
    if args.starts < 2:
        parser.error("--starts must be at least 2: the first launch is reported apart")
    rows, errors = run(args)
    return report(f"Scale ({'smoke' if args.smoke else 'full'}): one run of {args.tasks} tasks, "
                "a card and a data update each", rows, errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
