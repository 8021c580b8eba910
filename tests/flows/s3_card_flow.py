"""A flow for the S3 tests: a live card refreshed a few times in `start`, a plain `end`.
Run with `--datastore s3` against the test suite's moto server."""

import time

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown

UPDATES = 2


class S3CardFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        title = Markdown("# update 0")
        current.card.append(title)
        current.card.refresh()
        for i in range(1, UPDATES + 1):
            time.sleep(1.2)  # past refresh_interval, so Metaflow does not drop the refresh
            title.update(f"# update {i}")
            current.card.refresh()
        self.next(self.end)

    @step
    def end(self):
        print("end of S3CardFlow")


if __name__ == "__main__":
    S3CardFlow()
