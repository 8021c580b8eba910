"""A live card with every updatable component kind, refreshed in a loop (used by the tests).

The step waits for a file named `go` before its loop, so the test can listen first and then
assert that every single update reached it.
"""

import os
import time

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown, ProgressBar, Table, VegaChart

UPDATES = int(os.environ.get("LIVE_UPDATES", "4"))
# Metaflow renders each refresh in a card subprocess and silently drops a refresh while the
# previous one still runs (about 1 s on a busy 2-core machine): pace above that.
GAP = float(os.environ.get("LIVE_GAP", "2.5"))


def chart(i):
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": [{"x": k, "y": k * k} for k in range(i + 1)]},
        "mark": "line",
        "encoding": {"x": {"field": "x", "type": "quantitative"},
                     "y": {"field": "y", "type": "quantitative"}},
    }


def wait_for_go():
    deadline = time.time() + 120
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)


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
        wait_for_go()
        for i in range(1, UPDATES + 1):
            time.sleep(GAP)
            title.update(f"# step {i}")
            bar.update(i)
            cell.update(f"cell {i}")
            plot.update(chart(i))
            current.card.refresh()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LiveCardFlow()
