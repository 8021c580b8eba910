"""Three live cards in one running task, for the S3 tests of visible and kept cards: each card
is rendered, then on a file named `go` the cards `kept` and `shown` get a
second update, and the task waits for a file named `stop` before it ends."""

import os
import time

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown

CARDS = ("shown", "kept", "other")


def wait_for(name):
    deadline = time.time() + 180
    while not os.path.exists(name) and time.time() < deadline:
        time.sleep(0.05)


class S3ThreeCardsFlow(FlowSpec):
    @card(type="blank", id="shown", refresh_interval=1)
    @card(type="blank", id="kept", refresh_interval=1)
    @card(type="blank", id="other", refresh_interval=1)
    @step
    def start(self):
        titles = {name: Markdown(f"# {name} 0") for name in CARDS}
        for name in CARDS:
            current.card[name].append(titles[name])
            current.card[name].refresh()
        wait_for("go")
        time.sleep(1.2)  # past refresh_interval, so Metaflow does not drop the refresh
        for name in ("kept", "shown"):
            titles[name].update(f"# {name} 1")
            current.card[name].refresh()
        wait_for("stop")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    S3ThreeCardsFlow()
