"""A foreach where one task fails after its siblings finished (used by the tests)."""

import time

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


class ForeachFailFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.each, foreach="items")

    @card(type="blank", id="progress")
    @step
    def each(self):
        current.card["progress"].append(Markdown(f"# item {self.input}"))
        if self.input == 2:
            time.sleep(3)  # let the siblings finish first: the run then fails on this task alone
            raise ValueError("item 2 is bad")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachFailFlow()
