"""The benchmarks still work end to end, each in its --smoke mode (tiny counts, a real Metaflow
card, Chromium, both servers; exit non-zero on any error). Their numbers are not judged here: CI
machines are busy; only that each ran without error and printed its table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import stop_process

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CARDSERVER_CHROMIUM", "/usr/bin/chromium")


@dataclass
class Smoke:
    """A bench's smoke run in its own process, its output in files (a full pipe would stall it)."""

    process: subprocess.Popen[bytes]
    folder: Path
    timeout: float

    @classmethod
    def start(cls, script: str, timeout: float, *extra: str) -> Smoke:
        folder = Path(tempfile.mkdtemp(prefix="smoke-"))
        with open(folder / "out", "wb") as out, open(folder / "err", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / script), "--smoke", *extra],
                cwd=REPO, stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(process, folder, timeout)

    def finish(self) -> str:
        """Its printout, once it exited 0 within its timeout."""
        try:
            self.process.wait(timeout=self.timeout)
        finally:
            stop_process(self.process)  # timed out (or the test stopped): kill it, not leave it
        out, err = ((self.folder / name).read_text(errors="replace") for name in ("out", "err"))
        shutil.rmtree(self.folder)
        assert self.process.returncode == 0, (out + err)[-4000:]
        return out


# Started with this file, run beside the other smokes: most of its minute is spent waiting on
# the S3 source's own paces (discovery, the run's end), time the others fill.
EARLY = {"test_s3_latency_smoke": ("s3_latency.py", 420.0)}
early: dict[str, Smoke] = {}


@pytest.fixture(scope="module", autouse=True)
def early_smokes(request: pytest.FixtureRequest) -> Iterator[None]:
    chosen = {item.name for item in request.session.items} & EARLY.keys()
    early.update({name: Smoke.start(*EARLY[name]) for name in sorted(chosen)})
    yield
    for smoke in early.values():
        stop_process(smoke.process)
    early.clear()


def run_smoke(script: str, timeout: float = 120, *extra: str) -> str:
    return Smoke.start(script, timeout, *extra).finish()


def rows(out: str, title: str) -> dict[str, list[str]]:
    """The table that starts with `title`: measure -> the other cells (split on 2+ spaces)."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    assert start is not None, f"no table {title!r} in:\n{out}"
    assert lines[start + 1].split()[:4] == ["measure", "value", "target", "verdict"], lines[start + 1]
    found = {}
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        found[cells[0]] = cells[1:]
    assert found, f"empty table {title!r}"
    return found


def verdicts(table: dict[str, list[str]]) -> list[str]:
    return [cells[-1] for cells in table.values() if cells[-1] in ("PASS", "FAIL")]


def test_fanout_smoke() -> None:
    table = rows(run_smoke("fanout.py"), "Fan-out (smoke)")
    assert table["readers ending with the last update"][0] == "20/20"
    assert float(table["delivery p99 (ms)"][0]) > 0
    # The only verdict that does not depend on a quiet machine: a client that never reads is
    # reset by the server (stall timeout 10 s; the smoke run writes for 14 s).
    assert table["stalled clients dropped by the server"][0] == "2/2", table
    assert verdicts(table)


def test_writers_smoke() -> None:
    table = rows(run_smoke("writers.py"), "Many writers (smoke)")
    assert table["cards ending with their last update"][0] == "5/5"
    assert float(table["server CPU (cores)"][0]) >= 0
    assert verdicts(table)


def test_scale_smoke() -> None:
    table = rows(run_smoke("scale.py", timeout=180), "Scale (smoke)")
    assert float(table["run API p50, cached (ms)"][0]) > 0
    assert int(table["viewer: rows in the DOM (virtualized)"][0]) > 0
    assert "Metaflow /runinfo cards listed" in table, table
    assert verdicts(table)


def test_transfer_smoke() -> None:
    table = rows(run_smoke("transfer.py", timeout=180), "Transfer (smoke)")
    assert table["reload with If-None-Match: status"][0] == "304"
    assert table["reload: body bytes"][0] == "0"
    assert int(table["gzip: bytes on the wire"][0]) < int(table["identity: bytes on the wire"][0])
    assert "ratio: Metaflow bytes / ours (gzip)" in table, table


def test_stall_smoke() -> None:
    table = rows(run_smoke("stall.py"), "Stall (smoke)")
    assert table["attempts shown / earlier"][0] == "16 / 34"
    assert int(table["api/tasks answered / p50 (ms)"][0].split(" / ")[0]) > 0
    assert len(verdicts(table)) == 3


def latency_rows(out: str, *setups: str) -> dict[str, list[str]]:
    """setup -> its cells (n, p50, p90, ...) in latency.py's table; each must have updates."""
    assert "Update latency: file write -> DOM changed in Chromium" in out
    found = {}
    for setup in setups:
        rows = [line for line in out.splitlines() if line.startswith(setup + " ")]
        assert rows, f"no table row for {setup!r}:\n{out}"
        found[setup] = rows[0][len(setup):].split()
        assert int(found[setup][0]) > 0, rows[0]  # n: updates that reached the page
    return found


@pytest.fixture(scope="module")
def latency_smoke() -> str:
    """One smoke run of every latency setup (one live card, browser and server for all): ours
    direct and through Jupyter, and Metaflow's server."""
    return run_smoke("latency.py", 300, "--jupyter")


def test_latency_smoke(latency_smoke: str) -> None:
    out = latency_smoke
    latency_rows(out, "ours: viewer page (/run/...)", "ours: card URL (/card/...)",
                 "Metaflow card server, --poll-interval 1")
    assert "vs ours (viewer): p50 x" in out


def test_latency_through_jupyter_smoke(latency_smoke: str) -> None:
    """Through a real jupyter-server-proxy (token auth on), every update reaches the card, in
    the viewer and on its own, about as fast as direct (headroom for a busy machine)."""
    out = latency_smoke
    direct = "ours: viewer page (/run/...)"
    proxied = "ours through jupyter-server-proxy: viewer page (/run/...)"
    cells = latency_rows(out, direct, proxied, "ours through jupyter-server-proxy: card URL (/card/...)")
    assert float(cells[proxied][1]) <= float(cells[direct][1]) + 40, out


def test_idle_smoke() -> None:
    out = run_smoke("idle.py", timeout=180)
    assert "Idle cost: viewer open, nothing changing" in out
    for server, tree in (("ours (viewer on /, following)", "small"),
                         ("ours (viewer on /, following)", "big"),
                         ("Metaflow card server (poll 5 s)", "small")):
        rows = [line for line in out.splitlines() if line.startswith(server) and f" {tree} (" in line]
        assert rows, f"no table row for {server} on {tree}:\n{out}"
        cpu = rows[0].split(")", 2)[-1].split()[0]
        float(cpu)  # measured, not "-"


def test_bigrun_smoke() -> None:
    table = rows(run_smoke("bigrun.py"), "Big live run (smoke)")
    assert int(table["probe round trips"][0]) > 10
    assert float(table["worst round trip, a small run starts beside (ms)"][0]) > 0


def test_chaos_smoke() -> None:
    table = rows(run_smoke("chaos.py", timeout=240), "Chaos soak (smoke)")
    assert int(table["hostile moves"][0]) > 50
    assert table["lost good updates"][0] == "0", table
    assert table["final state equals a fresh scan"][0] == "yes", table
    assert table["server alive at the end"][0] == "yes", table
    assert float(table["/api/status p99 (ms)"][0]) > 0  # measured; the target is judged in full runs


def test_s3_requests_smoke() -> None:
    table = rows(run_smoke("s3_requests.py"), "S3 requests (smoke)")
    assert table["GETs answered 304"][0] == "20"
    assert table["requests sent: LIST / GET"][0] == "40 / 45"
    assert float(table["conditional GET, 304 (ms)"][0].split()[1]) > 0


def test_s3_logs_smoke() -> None:
    table = rows(run_smoke("s3_logs.py"), "S3 logs (smoke)")
    assert table["GETs (ranged)"][-1] == "PASS" and table["tail=1: GETs (ranged) / KiB"][-1] == "PASS", table
    assert table["traceback: GETs (ranged) / KiB"][-1] == "PASS", table


def test_s3_latency_smoke(request: pytest.FixtureRequest) -> None:
    smoke = early.pop(request.node.name)  # started with the file
    table = rows(smoke.finish(), "S3: write -> DOM, requests, cost and CPU (smoke)")
    ours = table["ours: write -> DOM p50 / p90 (ms)"][0]
    assert "missed 0" in ours and float(ours.split()[0]) > 0, table
    assert "missed 0" in table["Metaflow card server, --poll-interval 1: write -> DOM p50 / p90 (ms)"][0]
    assert "GET" in table["ours: S3 requests per minute"][0]  # the proxy counted our requests
    assert table["a new run: found after its first task's keys (s)"][0] != "never"
    assert table["19 more tasks in the viewed run: all listed running after their keys (s)"][0] != "never"
    assert table["20 live tasks: all shown succeeded after their DONE.lock (s)"][0] != "never"


def test_switching_smoke() -> None:
    out = run_smoke("switching.py", 300)
    table = rows(out, "Card switching (smoke)")
    assert float(table["first visit p50 (ms)"][0]) > 0
    assert float(table["visit again p50 (ms)"][0]) > 0
    assert float(table["keyboard previous p50 (ms)"][0]) > 0
    assert float(table["Chromium memory peak (MB)"][0]) > 50  # all of Chromium's processes counted
    assert "keep=0 p50/p90" in out and "keep=4 p50/p90" in out  # before and after, side by side


def test_cardscript_smoke() -> None:
    out = run_smoke("cardscript.py", 300)
    table = rows(out, "Warm frames (smoke)")
    assert float(table["warm, ready / inline p50"][0]) > 0 and float(table["warm, new / inline p50"][0]) > 0
    assert "requests for the script: 3 in 3 split loads" in out  # fetched by every load


def test_cachemem_smoke() -> None:
    table = rows(run_smoke("cachemem.py", 300), "Card page caches (smoke)")
    assert float(table["RSS before the fetches (MB)"][0]) > 20
    assert float(table["bytes received, gzipped (MB)"][0]) > 4  # 8 fetches of 2 MiB pages
