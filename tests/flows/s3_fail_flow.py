"""A step that refreshes its live card, then raises (for the S3 tests: a failed task's S3
folder, and cards under a METAFLOW_CARD_S3ROOT apart from the datastore)."""

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


class S3FailFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        current.card.append(Markdown("# before the failure"))
        current.card.refresh()
        raise ValueError("this step fails on purpose")
        self.next(self.end)  # never reached; Metaflow's graph check needs it

    @step
    def end(self):
        pass


if __name__ == "__main__":
    S3FailFlow()
