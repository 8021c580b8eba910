"""A live card whose Altair chart (no width: Metaflow draws it as wide as its container) is
updated, beside a chart of a fixed width wider than any narrow pane (used by the tests).

After its last update the step waits for a file named `done`, so the test can look at the live
card first; then the task ends and Metaflow writes the final render.
"""

import os

import altair as alt
from flowhelp import refresh_until_written, wait_for
from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown, VegaChart

UPDATES = int(os.environ.get("CHART_UPDATES", "1"))
WIDE = 1400  # px: wider than the card pane of any window up to 1,700 px


def loss(i):
    points = [{"epoch": k, "loss": 1 / (k + 1)} for k in range(i + 3)]
    return alt.Chart(alt.Data(values=points)).mark_line(point=True).encode(x="epoch:Q", y="loss:Q")


def wide_chart():
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": WIDE, "height": 120,
        "data": {"values": [{"x": k, "y": k % 7} for k in range(60)]},
        "mark": "bar",
        "encoding": {"x": {"field": "x", "type": "ordinal"}, "y": {"field": "y", "type": "quantitative"}},
    }


class ChartCardFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        title = Markdown("# loss 0")
        chart = VegaChart.from_altair_chart(loss(0))
        for component in (title, chart, VegaChart(wide_chart())):
            current.card.append(component)
        current.card.refresh()
        for i in range(1, UPDATES + 1):
            title.update(f"# loss {i}")
            chart.update(loss(i))
            refresh_until_written(f"# loss {i}")
        wait_for("done")
        title.update("# loss final")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ChartCardFlow()
