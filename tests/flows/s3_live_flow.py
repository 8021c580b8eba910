"""A live run for the S3 tests: a card refreshed while the test watches (the step waits for a
file named `go` first), then given a new component (Metaflow renders it again, with a new
reload token); a step that fails once and succeeds on retry; a foreach whose item 2 fails
after its siblings ended (so the run fails there, and nothing is killed)."""

import os
import time

from metaflow import FlowSpec, card, current, retry, step
from metaflow.cards import Markdown

UPDATES = 2  # the test needs one update after `go`; a second shows they go on
GAP = 1.5  # past refresh_interval, so Metaflow does not drop a refresh


def wait_for_siblings(count, seconds=180):
    """Until the runtime has reaped `count` other tasks of this step (their verdicts, `0.runtime`,
    are in the bucket): raising then kills none of them."""
    import boto3

    bucket, _, prefix = os.environ["METAFLOW_DATASTORE_SYSROOT_S3"][len("s3://"):].partition("/")
    folder = f"{prefix}/{current.flow_name}/{current.run_id}/{current.step_name}/"
    client = boto3.client("s3", endpoint_url=os.environ["METAFLOW_S3_ENDPOINT_URL"])
    deadline = time.time() + seconds
    while time.time() < deadline:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        if sum(key.endswith("/0.runtime") for key in keys) >= count:
            return
        time.sleep(0.1)


def wait_for_go():
    deadline = time.time() + 180
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)


class S3LiveFlow(FlowSpec):
    @card(type="blank", refresh_interval=1)
    @step
    def start(self):
        title = Markdown("# step 0")
        current.card.append(title)
        current.card.refresh()
        wait_for_go()
        for i in range(1, UPDATES + 1):
            time.sleep(GAP)
            title.update(f"# step {i}")
            current.card.refresh()
        time.sleep(GAP)
        current.card.append(Markdown("# a new section"))
        current.card.refresh()
        time.sleep(GAP)
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @step
    def flaky(self):
        if current.retry_count == 0:
            raise ValueError("the first attempt fails")
        self.items = [1, 2, 3]
        self.next(self.each, foreach="items")

    @step
    def each(self):
        if self.input == 2:
            wait_for_siblings(2)  # the siblings end first: the run fails on this task alone
            raise ValueError("item 2 is bad")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    S3LiveFlow()
