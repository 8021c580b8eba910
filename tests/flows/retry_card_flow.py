"""A task with a live card whose first attempt fails and whose retry succeeds (used by the tests)."""

from metaflow import FlowSpec, card, current, retry, step
from metaflow.cards import Markdown


class RetryCardFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @card(type="blank", id="attempt", refresh_interval=1)
    @step
    def flaky(self):
        current.card["attempt"].append(Markdown(f"# attempt {current.retry_count}"))
        current.card["attempt"].refresh()  # the failing attempt's card is on disk too
        if current.retry_count == 0:
            raise ValueError("the first attempt fails")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryCardFlow()
