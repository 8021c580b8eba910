"""What the local flows the tests start share (conftest.start_flow copies it beside the flow)."""

import glob
import os
import time

from metaflow import current


def refresh_until_written(text):
    """Metaflow renders each refresh in a card subprocess and silently drops a refresh while
    the previous one still runs: refresh again until `text` is really in the data file, so
    the test may expect every value."""
    pattern = os.path.join(".metaflow", "mf.cards", current.flow_name, "runs", current.run_id,
                           "steps", current.step_name, "tasks", current.task_id, "runtime", "*.data.json")
    deadline = time.time() + 60
    while time.time() < deadline:
        current.card.refresh()
        for _ in range(30):
            time.sleep(0.05)
            for path in glob.glob(pattern):
                with open(path) as handle:
                    if text in handle.read():
                        return


def wait_for(name, seconds=120):
    """Until the test makes a file called `name` (or `seconds` pass)."""
    deadline = time.time() + seconds
    while not os.path.exists(name) and time.time() < deadline:
        time.sleep(0.05)
