"""A real Metaflow live card, made at bench time, that the benchmark then drives itself.

A small flow (written to a temp dir) renders a `@card(type="blank", refresh_interval=1)` with a
Markdown, a ProgressBar, a Table and a VegaChart, refreshes twice (the first refresh renders the
HTML, the second writes the first data update) and then blocks, so the task stays running and
the card stays live: its HTML keeps a runtime reload token and `metaflow_card_update`. (Once a
task finishes, Metaflow renders the final card: token "final", no update hook.)

The benchmark then writes the card's `runtime/<stem>.data.json` itself, exactly as Metaflow
does (mkstemp in the same folder + os.replace), with the page's own reload token and the
component ids Metaflow chose, so each update is a real, independent file event that the real
card bundle applies. Nothing Metaflow generates is kept: everything lives in a temp dir that is
removed on exit, and the flow's process group is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import metaflow_env
from cardserver.demo import write_atomic

FLOW_NAME = "LiveBenchFlow"
PROGRESS_MAX = 1000

FLOW_SOURCE = '''
import os
import time

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown, ProgressBar, Table, VegaChart
from metaflow.plugins.cards.card_creator import CardProcessManager

SPEC = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {"values": [{"x": i, "y": (i * 7) % 11} for i in range(20)]},
    "mark": "line",
    "encoding": {"x": {"field": "x", "type": "quantitative"},
                 "y": {"field": "y", "type": "quantitative"}},
}


def list_cards(folder):
    """Names in `folder` below the card root (BENCH_CARDS: a local folder or s3://bucket/prefix)."""
    where = os.environ["BENCH_CARDS"]
    if not where.startswith("s3://"):
        path = os.path.join(where, folder)
        return os.listdir(path) if os.path.isdir(path) else []
    import boto3

    bucket, _, prefix = where[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("METAFLOW_S3_ENDPOINT_URL"))
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/" + folder + "/")
    return [item["Key"].rsplit("/", 1)[1] for item in found.get("Contents", [])]


class LiveBenchFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        text = Markdown("# seq 0")
        bar = ProgressBar(max=@@MAX@@, label="updates", value=0)
        current.card.append(text)
        current.card.append(bar)
        current.card.append(Table([["a", "1"], ["b", "2"]], headers=["name", "value"]))
        current.card.append(VegaChart(SPEC))
        # The first refresh renders the live HTML; a later one writes the first data update.
        # Metaflow skips a refresh while an earlier card process still runs, so refresh until
        # the data update exists, each time waiting for the card processes to finish: once we
        # say "ready", Metaflow writes nothing more and the benchmark owns the data file.
        runtime = "/".join(["LiveBenchFlow", "runs", current.run_id, "steps", "start", "tasks",
                            current.task_id, "runtime"])
        for _ in range(120):
            current.card.refresh()
            while any(p["proc"].poll() is None for p in CardProcessManager.async_card_processes.values()):
                time.sleep(0.05)
            if any(n.endswith(".data.json") for n in list_cards(runtime)):
                break
            time.sleep(1.1)  # refresh_interval=1 rate-limits refreshes
        with open(os.environ["BENCH_READY_FILE"], "w") as ready:
            ready.write(current.run_id)
        # Stay running (the card stays live) until the benchmark is done with us.
        stop, deadline = os.environ["BENCH_STOP_FILE"], time.time() + float(os.environ["BENCH_MAX_SECONDS"])
        while not os.path.exists(stop) and time.time() < deadline:
            time.sleep(0.5)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LiveBenchFlow()
'''.replace("@@MAX@@", str(PROGRESS_MAX))


class CardStore(Protocol):
    """Where the flow's cards go: the local datastore, or S3 (bench/s3card.py)."""

    def flow_env(self, workdir: Path) -> dict[str, str]:
        """What the flow's environment adds, BENCH_CARDS (the card root) included."""
        ...

    def card_names(self, folder: str) -> list[str]:
        """Every key below `folder` (relative to the card root), relative to the card root."""
        ...

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, body: bytes) -> None:
        """Replace the object at once, as Metaflow does."""
        ...


@dataclass(frozen=True)
class LocalCards:
    """The local datastore of the flow's working folder."""

    workdir: Path

    @property
    def root(self) -> Path:
        return self.workdir / ".metaflow" / "mf.cards"

    def flow_env(self, workdir: Path) -> dict[str, str]:
        return {"BENCH_CARDS": str(self.root)}

    def card_names(self, folder: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in (self.root / folder).rglob("*") if p.is_file())

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, body: bytes) -> None:
        write_atomic(self.root / name, body)  # mkstemp + os.replace, as Metaflow does


@dataclass
class LiveCard:
    datastore: Path  # <workdir>/.metaflow (local metadata; the cards too for a local store)
    flow_file: Path
    run_id: str
    parts: tuple[str, str, str, str, str]  # flow, run, step, task, card (file stem)
    token: str  # the page's METAFLOW_RELOAD_TOKEN
    components: dict[str, str]  # component type -> id, e.g. {"markdown": "markdown_22adb1"}
    write_update: Callable[[int], float]  # seq -> time.time() when the write began
    data_name: str  # the data update, relative to the card root
    env: dict[str, str] = field(repr=False, default_factory=dict)
    store: CardStore | None = field(repr=False, default=None)

    @property
    def path(self) -> str:
        """`Flow/run/step/task/card`, as in our URLs and topics."""
        return "/".join(self.parts)


def find_data_name(store: CardStore) -> str | None:
    found = [n for n in store.card_names(FLOW_NAME) if n.endswith(".data.json") and "/runtime/" in n]
    return sorted(found)[0] if found else None


def read_first_update(store: CardStore, name: str) -> dict[str, Any]:
    for _ in range(50):  # Metaflow writes atomically; a retry only covers an odd producer
        with suppress(ValueError, TypeError):
            doc: dict[str, Any] = json.loads(store.read(name) or b"")
            return doc
        time.sleep(0.02)
    raise RuntimeError(f"cannot parse Metaflow's data update {name}")


def make_writer(store: CardStore, name: str, first: dict[str, Any]) -> Callable[[int], float]:
    data = first["data"]
    ids = {component["type"]: key for key, component in data.items()}
    text_id, bar_id = ids["markdown"], ids["progressBar"]

    def write_update(seq: int) -> float:
        """One update as Metaflow writes it: every realtime component, markdown says `seq`."""
        doc = {
            "reload_token": first["reload_token"],
            "data": {
                **data,
                text_id: {**data[text_id], "source": f"# seq {seq}"},
                bar_id: {**data[bar_id], "value": seq % (PROGRESS_MAX + 1)},
            },
            "created_on": 0.0,
        }
        began = time.time()
        doc["created_on"] = began
        store.write(name, json.dumps(doc).encode())
        return began

    return write_update


@contextmanager
def live_card(timeout: float = 120.0, max_seconds: float = 3600.0,
              store: Callable[[Path], CardStore] = LocalCards) -> Iterator[LiveCard]:
    """Run the flow until its live card exists; yield it; kill the flow and delete everything."""
    workdir = Path(tempfile.mkdtemp(prefix="cardserver-bench-live-"))
    cards = store(workdir)
    flow_file = workdir / f"{FLOW_NAME}.py"
    flow_file.write_text(FLOW_SOURCE)
    ready = workdir / "ready"
    env = {**metaflow_env(workdir, "bench"), "BENCH_STOP_FILE": str(workdir / "stop"),
           "BENCH_READY_FILE": str(ready), "BENCH_MAX_SECONDS": str(max_seconds),
           **cards.flow_env(workdir)}
    log = (workdir / "flow.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(flow_file), "--quiet", "run"], cwd=workdir, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("the Metaflow flow did not produce a live card:\n"
                                   + (workdir / "flow.log").read_text()[-3000:])
            time.sleep(0.1)
        name = find_data_name(cards)
        if name is None:
            raise RuntimeError("the flow said ready but wrote no data update")
        first = read_first_update(cards, name)
        rel = name.split("/")
        # <Flow>/runs/<run>/steps/<step>/tasks/<task>/runtime/<stem>.data.json
        stem = rel[-1].removesuffix(".data.json")
        html_name = "/".join([*rel[:-2], "cards", f"{stem}.html"])
        html = cards.read(html_name)
        while html is None and time.monotonic() < deadline:
            time.sleep(0.1)
            html = cards.read(html_name)
        token_line = f'METAFLOW_RELOAD_TOKEN = "{first["reload_token"]}"'.encode()
        if token_line not in (html or b""):
            raise RuntimeError("the card HTML and its data update disagree on the reload token")
        yield LiveCard(
            datastore=workdir / ".metaflow",
            flow_file=flow_file,
            run_id=rel[2],
            parts=(rel[0], rel[2], rel[4], rel[6], stem),
            token=first["reload_token"],
            components={c["type"]: key for key, c in first["data"].items()},
            write_update=make_writer(cards, name, first),
            data_name=name,
            env=env,
            store=cards,
        )
    finally:
        stop_group(process)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Kill the flow and its task and card subprocesses (its own session), by its id."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # a task subprocess that outlived its runner


if __name__ == "__main__":
    with live_card() as found:
        print(found)
        print("write at", found.write_update(1))
