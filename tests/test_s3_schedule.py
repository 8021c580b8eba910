"""The S3 polling schedule (pure): the idle budget, and which runs are still followed."""

from __future__ import annotations

import pytest

from cardserver.s3.schedule import PollTiming, followed
from cardserver.status import Status

NOW = 1_000_000.0


@pytest.mark.parametrize("flows", [0, 1, 5, 50, 500])
def test_discovery_stays_within_six_listings_a_minute(flows: int) -> None:
    timing = PollTiming()
    per_minute = (1 + flows) * 60 / timing.discovery_seconds(flows)
    assert per_minute <= 6.0
    assert timing.discovery_seconds(flows) >= timing.min_discovery_seconds


def test_a_viewed_run_is_listed_more_often_than_an_unviewed_one() -> None:
    timing = PollTiming()
    assert timing.run_seconds(viewed=True) == 5.0 < timing.run_seconds(viewed=False)


def test_retries_back_off_up_to_a_minute() -> None:
    timing = PollTiming()
    assert [timing.retry_after(n) for n in (1, 2, 3, 7, 20)] == [1.0, 2.0, 4.0, 60.0, 60.0]


@pytest.mark.parametrize(("status", "quiet", "expected"), [
    (Status.RUNNING, 3600, True),  # a running run is followed however long it is quiet
    (Status.SUCCEEDED, 1, False),  # its end succeeded: nothing more will come
    (Status.FAILED, 5, True),  # a retry may come
    (Status.FAILED, 700, False),
    (Status.UNKNOWN, 5, True),  # a remote step may be starting
    (Status.UNKNOWN, 700, False),
    (Status.STOPPED, 700, False),
    (Status.PENDING, 700, False),
])
def test_which_runs_are_followed(status: Status, quiet: float, expected: bool) -> None:
    assert followed(status, NOW - quiet, NOW, recent_seconds=600) is expected
