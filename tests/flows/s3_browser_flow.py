"""One run for every S3 browser test (tests/test_browser_s3.py), driven by files the test touches
in the working folder:
- `start` ticks its live card ("# tick N") until `go` exists; once `rerender` exists it adds a
  component (a new layout: Metaflow renders the card's HTML again, with a new reload token);
  its last value is "# last tick", which the final card shows;
- `flaky` fails its first attempt and succeeds on the retry;
- `each` is a foreach whose item 2 raises while items 1 and 3 run: the runtime kills them and
  the run fails.
"""

import os
import time

from metaflow import FlowSpec, card, current, retry, step
from metaflow.cards import Markdown


def exists(name):
    return os.path.exists(name)


def own_cards():
    """The bucket, a client, and the key prefix of this task's card HTML."""
    import boto3

    bucket, _, prefix = os.environ["METAFLOW_DATASTORE_SYSROOT_S3"][len("s3://"):].partition("/")
    folder = (f"{prefix}/mf.cards/{current.flow_name}/runs/{current.run_id}/steps/"
              f"{current.step_name}/tasks/{current.task_id}/cards/")
    return bucket, boto3.client("s3", endpoint_url=os.environ["METAFLOW_S3_ENDPOINT_URL"]), folder


def wait_for_own_card(seconds=60):
    """Card renders run in a subprocess and a failed attempt gets no final render: wait until
    this task's card HTML is in the bucket before raising."""
    bucket, client, folder = own_cards()
    deadline = time.time() + seconds
    while time.time() < deadline:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
        if len(listed) > current.retry_count:  # this attempt's card too
            return
        time.sleep(0.1)


def own_card_html():
    """The ETags of this task's card HTML in the bucket: a render that lands changes them."""
    bucket, client, folder = own_cards()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


class S3BrowserFlow(FlowSpec):
    @card(type="blank", id="live", refresh_interval=1)
    @step
    def start(self):
        text = Markdown("# tick 0")
        current.card["live"].append(text)
        current.card["live"].refresh()
        tick, before, rerendered, deadline = 0, None, False, time.time() + 240
        while not exists("go") and time.time() < deadline:
            time.sleep(1.1)  # past refresh_interval, so Metaflow does not drop the refresh
            tick += 1
            text.update(f"# tick {tick}")
            if exists("rerender") and before is None:
                before = own_card_html()
                current.card["live"].append(Markdown("# re-rendered"))
            elif before is not None and not rerendered:
                rerendered = own_card_html() != before
            # Metaflow refuses a render asked for while its last card process still runs (and
            # forgets the layout changed): render again until new HTML is in the bucket
            current.card["live"].refresh(force=before is not None and not rerendered)
        text.update("# last tick")
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @card(type="blank", id="attempt", refresh_interval=1)
    @step
    def flaky(self):
        current.card["attempt"].append(Markdown(f"# attempt {current.retry_count}"))
        current.card["attempt"].refresh()
        if current.retry_count == 0:
            wait_for_own_card()
            raise ValueError("the first attempt fails")
        self.items = [1, 2, 3]
        self.next(self.each, foreach="items")

    @card(type="blank", id="progress", refresh_interval=1)
    @step
    def each(self):
        text = Markdown(f"# item {self.input}: 0")
        current.card["progress"].append(text)
        current.card["progress"].refresh()
        open(f"started-{self.input}", "w").close()
        if self.input == 2:
            # raise once every sibling runs, so the runtime must kill them
            deadline = time.time() + 120
            while time.time() < deadline and not (exists("started-1") and exists("started-3")):
                time.sleep(0.1)
            wait_for_own_card()
            time.sleep(2)
            raise ValueError("item 2 is bad")
        for tick in range(600):
            text.update(f"# item {self.input}: {tick}")
            current.card["progress"].refresh()
            time.sleep(0.5)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    S3BrowserFlow()
