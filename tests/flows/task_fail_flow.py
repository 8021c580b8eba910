"""A foreach where one branch raises at once while its siblings still run: Metaflow kills
them (used by the task view tests)."""

import sys
import time

from metaflow import FlowSpec, step


class TaskFailFlow(FlowSpec):
    @step
    def start(self):
        self.items = [0, 1, 2]
        self.next(self.each, foreach="items")

    @step
    def each(self):
        print(f"item {self.input}")
        if self.input == 0:
            time.sleep(2)  # the siblings are running by now
            print("<img src=x onerror=alert(1)>")
            print("about to fail", file=sys.stderr)
            raise RuntimeError("diverged")
        time.sleep(120)  # killed by the runtime long before this ends
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TaskFailFlow()
