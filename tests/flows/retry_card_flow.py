"""A task with a live card whose first attempt fails and whose retry succeeds (used by the tests)."""

import glob
import time

from metaflow import FlowSpec, card, current, retry, step
from metaflow.cards import Markdown


def wait_for_own_card(seconds: float = 60) -> None:
    """Card renders run in a subprocess: a step that raises at once may leave none on disk."""
    pattern = (f".metaflow/mf.cards/{current.flow_name}/runs/{current.run_id}/steps/"
               f"{current.step_name}/tasks/{current.task_id}/cards/*.html")
    deadline = time.time() + seconds
    while not glob.glob(pattern) and time.time() < deadline:
        time.sleep(0.05)


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
            wait_for_own_card()
            raise ValueError("the first attempt fails")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryCardFlow()
