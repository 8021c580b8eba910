"""`cardserver/s3/faults.py` on its own: which part backs off, and what health says. Pure, no S3
(`tests/test_s3_faults.py` injects real faults into a real server)."""

from __future__ import annotations

import time

from cardserver.layout import CardKey, RunKey, TaskKey
from cardserver.s3.client import S3Error
from cardserver.s3.faults import CARDS, RUNS, Faults
from cardserver.s3.schedule import PollTiming
from cardserver.source import Health

RUN, OTHER = RunKey("F", "1"), RunKey("F", "2")
CARD = CardKey(TaskKey("F", "1", "start", "1"), "blank-abc")


class Told:
    """What the faults hand on: each new health, and each time the polls are woken."""

    def __init__(self) -> None:
        self.healths: list[Health] = []
        self.wakes = 0

    def faults(self) -> Faults:
        return Faults(PollTiming(retry_seconds=1.0, max_retry_seconds=4.0), self.healths.append, self.woken)

    def woken(self) -> None:
        self.wakes += 1


def test_only_the_run_that_failed_waits_and_the_reason_is_said_once() -> None:
    told = Told()
    faults = told.faults()
    faults.back_off(RUNS, {RUN: S3Error("access denied")})
    faults.back_off(RUNS, {RUN: S3Error("access denied")})
    now = time.monotonic()
    assert not faults.may_try(RUN, now) and faults.may_try(OTHER, now)
    assert told.healths == [Health(False, 1, "access denied; retrying")]  # said once, one restart
    assert faults.next_retry(RUNS) == 4.0  # doubled twice, capped


def test_a_poll_recovers_once_nothing_of_it_waits_and_wakes_the_others() -> None:
    told = Told()
    faults = told.faults()
    faults.back_off(RUNS, {RUN: S3Error("down")})
    faults.back_off(RUNS, {})
    assert faults.last_error is not None and told.wakes == 0  # the run still waits
    assert faults.worked(RUN) and not faults.worked(RUN)
    faults.back_off(RUNS, {})
    assert told.healths[-1] == Health(True, 1, None) and told.wakes == 1
    assert faults.last_error is None


def test_a_waiting_card_keeps_only_the_cards_poll_failing() -> None:
    told = Told()
    faults = told.faults()
    faults.back_off(CARDS, {CARD: S3Error("garbage")})
    faults.throttled(True, "SlowDown")
    throttling = "S3 is throttling requests (SlowDown), backing off; retrying"
    assert told.healths[-1].problem == f"garbage; retrying; {throttling}"  # both, in order
    faults.throttled(False, "SlowDown")
    faults.back_off(RUNS, {})
    assert told.healths[-1] == Health(False, 1, "garbage; retrying")
    faults.back_off(CARDS, {})
    assert not told.healths[-1].ok  # the card still waits
