"""A finished Metaflow run with many real cards, made at bench time: a foreach whose every
branch renders a `@card(type="blank")` with a Markdown, a Table and a VegaChart (Metaflow's
~1.1 MB self-contained card page each), and the `start` step's default card. Kept in a fixture
folder when one is given (made again only when it holds fewer cards), else in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import metaflow_env

FLOW_NAME = "SwitchBenchFlow"

FLOW_SOURCE = '''
from metaflow import FlowSpec, Parameter, card, current, step
from metaflow.cards import Markdown, Table, VegaChart


def chart(seed):
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": [{"x": i, "y": (i * seed) % 17} for i in range(30)]},
        "mark": "line",
        "encoding": {"x": {"field": "x", "type": "quantitative"},
                     "y": {"field": "y", "type": "quantitative"}},
    }


class SwitchBenchFlow(FlowSpec):
    branches = Parameter("branches", default=5)

    @card
    @step
    def start(self):
        self.items = list(range(self.branches))
        self.next(self.branch, foreach="items")

    @card(type="blank")
    @step
    def branch(self):
        current.card.append(Markdown(f"# branch {self.input}"))
        current.card.append(Table([[str(self.input), str(self.input * 3)]], headers=["item", "value"]))
        current.card.append(VegaChart(chart(self.input + 2)))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchBenchFlow()
'''


def card_count(workdir: Path) -> int:
    return sum(1 for _ in (workdir / ".metaflow" / "mf.cards").rglob("cards/*.html"))


def make_run(workdir: Path, branches: int, timeout: float = 1800) -> None:
    """Run the flow once in `workdir` (its datastore in `workdir/.metaflow`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ".metaflow").mkdir(exist_ok=True)
    flow_file = workdir / f"{FLOW_NAME}.py"
    flow_file.write_text(FLOW_SOURCE)
    done = subprocess.run(
        [sys.executable, str(flow_file), "--quiet", "run", "--branches", str(branches),
         "--max-workers", "4"],
        cwd=workdir, env=metaflow_env(workdir, "bench"), capture_output=True, text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Metaflow run failed:\n{(done.stdout + done.stderr)[-3000:]}")


@contextmanager
def many_cards(branches: int, fixture: str | None = None) -> Iterator[Path]:
    """The datastore (`.metaflow`) of a finished run with `branches` + 1 cards."""
    workdir = Path(fixture) if fixture else Path(tempfile.mkdtemp(prefix="cardserver-bench-switch-"))
    try:
        if card_count(workdir) < branches + 1:
            shutil.rmtree(workdir / ".metaflow", ignore_errors=True)
            make_run(workdir, branches)
        yield workdir / ".metaflow"
    finally:
        if not fixture:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="make the switching benchmark's run")
    parser.add_argument("--branches", type=int, default=50)
    parser.add_argument("fixture")
    args = parser.parse_args()
    with many_cards(args.branches, args.fixture) as datastore:
        print(datastore, card_count(datastore.parent))
