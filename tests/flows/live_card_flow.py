"""A live card with every updatable component kind, refreshed in a loop (used by the tests).

The step waits for a file named `go` before its loop, so the test can listen first and then
assert that every single update reached it.
"""

import os
import time

from flowhelp import refresh_until_written, wait_for
from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown, ProgressBar, Table, VegaChart

UPDATES = int(os.environ.get("LIVE_UPDATES", "4"))
GAP = float(os.environ.get("LIVE_GAP", "1.2"))


def chart(i):
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": [{"x": k, "y": k * k} for k in range(i + 1)]},
        "mark": "line",
        "encoding": {"x": {"field": "x", "type": "quantitative"},
                     "y": {"field": "y", "type": "quantitative"}},
    }


class LiveCardFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        title = Markdown("# step 0")
        bar = ProgressBar(max=UPDATES, label="Updates")
        cell = Markdown("cell 0")
        plot = VegaChart(chart(0))
        for component in (title, bar, Table([[cell]], headers=["value"]), plot):
            current.card.append(component)
        current.card.refresh()
        wait_for("go")
        for i in range(1, UPDATES + 1):
            time.sleep(GAP)
            title.update(f"# step {i}")
            bar.update(i)
            cell.update(f"cell {i}")
            plot.update(chart(i))
            refresh_until_written(f"# step {i}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LiveCardFlow()
