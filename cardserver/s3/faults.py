"""Which parts of the S3 source fail, how long each waits before it is tried again, and what
its health says. Each poll (`RUNS`, `CARDS`, and `THROTTLED` for the reader backing off) fails
and recovers on its own; health is ok when all work. A run or card that failed waits alone:
the rest of its poll goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from ..layout import CardKey, RunKey
from ..source import Health
from .client import S3Error
from .schedule import PollTiming

log = logging.getLogger("cardserver")

RUNS, CARDS = "runs", "cards"  # the two polls: listings (discovery and runs), shown cards' updates
THROTTLED = "throttled"  # the reader backing off throttled requests, whichever poll sent them


class Faults:
    """The S3 source's faults: what waits, until when, and its health."""

    def __init__(self, timing: PollTiming, tell: Callable[[Health], None],
                 works_again: Callable[[], None]) -> None:
        self.timing = timing
        self.health = Health()
        self.last_error: S3Error | None = None  # the latest failure, until every poll works again
        self._tell = tell  # hands a new health on (to the sink, once there is one)
        self._works_again = works_again  # wakes the polls: one may be backing off
        self._failures: Counter[str] = Counter()
        self._problems: dict[str, str] = {}
        self._retry_at: dict[RunKey | CardKey, float] = {}  # a run or card that failed -> next try

    def failed(self, poll: str, error: S3Error) -> float:
        """Say why a poll fails (once per change of reason) and how long it waits to retry."""
        self._failures[poll] += 1
        self.last_error = error
        problem = f"{error}; retrying"
        if self._problems.get(poll) != problem:
            log.warning("S3: %s", problem)
            self._problems[poll] = problem
            self._publish_health()
        return self.timing.retry_after(self._failures[poll])

    def recovered(self, poll: str) -> None:
        self._failures[poll] = 0
        if self._problems.pop(poll, None) is None:
            return
        if not self._problems:
            log.warning("S3: polling works again")
            self.last_error = None
        self._works_again()
        self._publish_health()

    def throttled(self, active: bool, code: str) -> None:
        """The reader backs off throttled requests (retrying them until they pass): say so."""
        if active:
            self.failed(THROTTLED, S3Error(f"S3 is throttling requests ({code}), backing off"))
        else:
            self.recovered(THROTTLED)

    def next_retry(self, poll: str) -> float:
        """How long the poll would wait after one more failure."""
        return self.timing.retry_after(self._failures[poll] + 1)

    def back_off(self, poll: str, failed: dict[RunKey | CardKey, S3Error]) -> None:
        """Only what failed waits before it is tried again (the rest of the poll goes on); the
        poll recovers once nothing of it is waiting."""
        if failed:
            delay = self.failed(poll, next(iter(failed.values())))
            self._retry_at.update(dict.fromkeys(failed, time.monotonic() + delay))
        elif not any(isinstance(key, CardKey) == (poll == CARDS) for key in self._retry_at):
            self.recovered(poll)

    def may_try(self, key: RunKey | CardKey, now: float) -> bool:
        return self.retry_at(key) <= now

    def retry_at(self, key: RunKey | CardKey) -> float:
        return self._retry_at.get(key, 0.0)

    def worked(self, key: RunKey | CardKey) -> bool:
        """The run or card was read (or is no longer wanted): it waits no more. Whether it was
        waiting."""
        return self._retry_at.pop(key, None) is not None

    def _publish_health(self) -> None:
        ok = not self._problems
        problem = "; ".join(dict.fromkeys(self._problems.values())) or None
        self.health = Health(ok, self.health.restarts + (1 if self.health.ok and not ok else 0), problem)
        self._tell(self.health)
