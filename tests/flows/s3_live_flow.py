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


def bucket_items(folder):
    """Every object below `folder` (a key prefix under the sysroot): its Key and ETag."""
    import boto3

    bucket, _, prefix = os.environ["METAFLOW_DATASTORE_SYSROOT_S3"][len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ["METAFLOW_S3_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{folder}")
    return [item for page in pages for item in page.get("Contents", [])]


def wait_for_siblings(count, seconds=180):
    """Until the runtime has reaped `count` other tasks of this step (their verdicts, `0.runtime`,
    are in the bucket): raising then kills none of them."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        items = bucket_items(f"{current.flow_name}/{current.run_id}/{current.step_name}/")
        if sum(item["Key"].endswith("/0.runtime") for item in items) >= count:
            return
        time.sleep(0.1)


def card_html():
    """The ETags of this task's card HTML in the bucket: a render that lands changes them."""
    folder = (f"mf.cards/{current.flow_name}/runs/{current.run_id}/steps/{current.step_name}/"
              f"tasks/{current.task_id}/cards/")
    return {item["Key"]: item["ETag"] for item in bucket_items(folder)}


def render_again(before, seconds=180):
    """Render the card until its HTML in the bucket is no longer `before`: Metaflow refuses a
    render while its last card process runs, and then forgets the layout changed."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        current.card.refresh(force=True)
        time.sleep(GAP)
        if card_html() != before:
            return


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
        before = card_html()
        current.card.append(Markdown("# a new section"))
        render_again(before)
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
