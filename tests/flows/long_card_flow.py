"""Two branches that refresh a live card for a minute: a run to interrupt (used by the tests)."""

import time
from pathlib import Path

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


class LongCardFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.each, foreach="items")

    @card(type="blank", id="progress", refresh_interval=1)
    @step
    def each(self):
        text = Markdown("# tick 0")
        current.card["progress"].append(text)
        current.card["progress"].refresh()
        Path(f"started-{self.input}").touch()  # the test interrupts the run once both exist
        for tick in range(120):
            text.update(f"# tick {tick}")
            current.card["progress"].refresh()
            print("tick", tick, flush=True)
            time.sleep(0.5)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LongCardFlow()
