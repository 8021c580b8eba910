"""What every benchmark shares: starting servers, reading a process's CPU and memory,
percentiles and result tables. Benchmarks only ever talk to 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CARDSERVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    port: int
    started: float  # time.monotonic() when launched
    ready: float  # time.monotonic() when it announced its URL
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate, then kill if it has not gone within 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metaflow_env(workdir: Path, user: str) -> dict[str, str]:
    """A self-contained Metaflow: local metadata and datastore in `workdir`, no user config."""
    return {
        **os.environ,
        "USERNAME": user,
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_HOME": str(workdir / ".metaflowconfig"),
        "PYTHONUNBUFFERED": "1",
    }


S3_DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}


def metaflow_s3_env(endpoint: str, sysroot: str) -> dict[str, str]:
    """Metaflow's own S3 settings (what a user has set): its datastore at `sysroot` on `endpoint`."""
    return {
        **S3_DUMMY_CREDENTIALS,
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": sysroot,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
    }


def start_cardserver(root: Path, *extra: str, timeout: float = 60, repo: Path = REPO) -> Server:
    """`card server --root <root>` (of the checkout `repo`); returns once it printed its URL (its
    port is open; the first scan may still be running, and the API waits for it)."""
    port = free_port()
    args = [sys.executable, str(repo / "cli.py"), "server", "--root", str(root), "--port", str(port),
            *extra]
    return _launch(args, port, " at http", timeout, cwd=root.parent)


@dataclass
class Jupyter:
    """Jupyter Server on 127.0.0.1 with token auth on; jupyter-server-proxy serves /proxy/."""

    process: subprocess.Popen[str]
    port: int
    token: str
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / ".jupyter_data_dir"

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        stop_process(self.process)


def start_jupyter(root: Path, timeout: float = 90) -> Jupyter:
    """Jupyter Server as a user runs it (token auth on, the proxy extension enabled by being
    installed), with its config, data and runtime folders in `root`. `allow_remote_access`
    lets a public Host name through, as a hub's single-user server does."""
    port, token = free_port(), "jupyter-token-0123456789abcdef"
    home = {name: str(root / f".{name.lower()}") for name in
            ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.allow_remote_access=True", "--ServerApp.port_retries=0"],
        cwd=root, env={**os.environ, **home, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    log: list[str] = []
    started = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if "is running at" in line:
                started.set()
        started.set()  # it exited: the caller sees it below

    threading.Thread(target=pump, daemon=True).start()
    if not started.wait(timeout) or process.poll() is not None:
        process.kill()
        raise RuntimeError("Jupyter Server did not start:\n" + "".join(log[-30:]))
    return Jupyter(process, port, token, root)


def start_metaflow_server(flow_file: Path, run_id: str | None, *extra: str,
                          timeout: float = 120, env: dict[str, str] | None = None) -> Server:
    """Metaflow's own `python flow.py card server` (the baseline we compare against)."""
    port = free_port()
    args = [sys.executable, str(flow_file), "card", "server", "--port", str(port), *extra]
    if run_id:
        args += ["--run-id", run_id]
    return _launch(args, port, f":{port}", timeout, cwd=flow_file.parent, env=env,
                   probe=f"http://127.0.0.1:{port}/")


def start_s3_cardserver(cwd: Path, env: dict[str, str], *extra: str, timeout: float = 60) -> Server:
    """`card server` with no --root, as a user with Metaflow set up for S3 runs it (`env`)."""
    port = free_port()
    args = [sys.executable, str(REPO / "cli.py"), "server", "--port", str(port), *extra]
    return _launch(args, port, " at http", timeout, cwd=cwd, env=env)


def start_s3_proxy(upstream: str, timeout: float = 30) -> Server:
    """tests/s3proxy.py in its own process: counts every request by kind, injects faults."""
    args = [sys.executable, str(REPO / "tests" / "s3proxy.py"), "--upstream", upstream]
    return _launch(args, 0, "proxy at http", timeout, cwd=REPO)


def start_moto_server(workdir: Path, timeout: float = 60) -> Server:
    """moto's S3 server (a real HTTP S3 endpoint) on 127.0.0.1, in its own process."""
    port = free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return _launch(args, port, "", timeout, cwd=workdir, probe=f"http://127.0.0.1:{port}")


def _launch(args: list[str], port: int, marker: str, timeout: float, cwd: Path,
            env: dict[str, str] | None = None, probe: str | None = None) -> Server:
    started = time.monotonic()
    process = subprocess.Popen(
        args, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", "USERNAME": "bench", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if probe is not None and _answers(port):
            return Server(process, probe, port, started, time.monotonic(), output)
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if probe is None and marker in line:
            url = line.rsplit(" at ", 1)[1].strip()
            return Server(process, url, port, started, time.monotonic(), output)
    process.kill()
    raise RuntimeError(f"server did not start: {' '.join(args)}\n{''.join(output)[-2000:]}")


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.05)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- CPU and memory of a process (Linux /proc) ------------------------------------------------


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process (and its reaped children), in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 1e6


class PeakRSS(threading.Thread):
    """A process's highest RSS, sampled every 100 ms until `stop` is set."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, rss_mb(pid), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return


# --- numbers -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, p in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, printed by every benchmark."""
    cells = [[str(h) for h in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells[1:]]
    return "\n".join(lines)


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def report(title: str, rows: Iterable[Sequence[object]], errors: Sequence[str], smoke: bool) -> int:
    """Print a benchmark's measure/value/target/verdict table and its errors; the exit code:
    a smoke run fails on any error, a full run always exits 0 (FAIL rows say what missed)."""
    print()
    print(table(title, ["measure", "value", "target", "verdict"], rows))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if (errors and smoke) else 0


def run_options(doc: str, smoke: str) -> argparse.ArgumentParser:
    """The options of a benchmark on one generated run: --smoke, --tasks, --fixture."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--fixture", help="folder to keep the run in, reused while it has --tasks")
    return parser


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores, from /proc/stat): with
    our own processes' CPU subtracted, what else competed for the cores during a run."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK
