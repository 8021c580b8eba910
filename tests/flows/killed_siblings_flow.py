"""A foreach where one branch raises while its siblings still run and write card updates."""

import time
from pathlib import Path

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


def cards_of_step(count, seconds=60):
    """Until `count` tasks of this step have their card's HTML on disk (the tests list them)."""
    folder = Path(".metaflow", "mf.cards", current.flow_name, "runs", current.run_id, "steps",
                  current.step_name, "tasks")
    deadline = time.time() + seconds
    while time.time() < deadline and len(list(folder.glob("*/cards/*.html"))) < count:
        time.sleep(0.1)


class KilledSiblingsFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.each, foreach="items")

    @card(type="blank", id="progress", refresh_interval=1)
    @step
    def each(self):
        text = Markdown(f"# item {self.input}: 0")
        current.card["progress"].append(text)
        current.card["progress"].refresh()
        Path(f"started-{self.input}").touch()
        if self.input == 2:
            # raise once every sibling is running, so the runtime must kill them
            deadline = time.time() + 60
            while time.time() < deadline and not all(
                Path(f"started-{i}").exists() for i in (1, 3)
            ):
                time.sleep(0.1)
            cards_of_step(3)
            raise ValueError("item 2 is bad")
        for tick in range(600):
            text.update(f"# item {self.input}: {tick}")
            current.card["progress"].refresh()
            time.sleep(0.2)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    KilledSiblingsFlow()
