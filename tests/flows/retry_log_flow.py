"""A step that fails once and succeeds on its retry, then a step that prints 200,000 lines
(used by the task view tests)."""

import sys

from metaflow import FlowSpec, card, current, retry, step
from metaflow.cards import Markdown

LINES = 200_000


class RetryLogFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky)

    @card(type="blank", id="tries")
    @retry(times=1, minutes_between_retries=0)
    @step
    def flaky(self):
        current.card["tries"].append(Markdown(f"# attempt {current.retry_count}"))
        print(f"attempt {current.retry_count}")
        if current.retry_count == 0:
            print("first try fails", file=sys.stderr)
            raise RuntimeError("diverged")
        self.next(self.chatty)

    @step
    def chatty(self):
        out = sys.stdout
        for i in range(LINES):
            out.write("<img src=x onerror=alert(1)>\n" if i == LINES // 2 else f"line {i}\n")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryLogFlow()
