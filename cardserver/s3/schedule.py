"""How often the S3 source asks what, spending requests where someone looks. Pure.

- the data update of each card visible in a viewer: a conditional GET every `card_seconds`;
- the data update of each card a viewer keeps loaded but hidden: every `kept_card_seconds`,
  and at once when it becomes visible again (so it is fresh when shown);
- a live run being viewed (its run, a task or a card of it shown): its card tree and its task
  folders listed every `viewed_run_seconds` (ETags in the listing show re-renders and updates);
- a live run nobody views: the same every `unviewed_run_seconds`;
- new flows and runs: delimiter listings, at most `idle_lists_per_minute` a minute all told;
- finished runs (see `followed`): never again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..status import Status


@dataclass(frozen=True, slots=True)
class PollTiming:
    card_seconds: float = 0.25  # a 304 costs as a GET: 0.0058 USD an hour per visible card
    kept_card_seconds: float = 10.0  # 0.00014 USD an hour per kept card: read at once when shown
    viewed_run_seconds: float = 5.0
    unviewed_run_seconds: float = 30.0
    idle_lists_per_minute: float = 6.0
    min_discovery_seconds: float = 10.0
    recent_seconds: float = 600.0  # a run that wrote this recently may still go on: followed
    retry_seconds: float = 1.0  # after a failed poll, doubling up to `max_retry_seconds`
    max_retry_seconds: float = 60.0

    def discovery_seconds(self, flows: int) -> float:
        """One listing of the card root plus one per flow's runs, paced to the idle budget."""
        return max(self.min_discovery_seconds, (1 + flows) * 60.0 / self.idle_lists_per_minute)

    def update_seconds(self, visible: bool) -> float:
        """How often a shown card's data update is asked for."""
        return self.card_seconds if visible else self.kept_card_seconds

    def run_seconds(self, viewed: bool) -> float:
        return self.viewed_run_seconds if viewed else self.unviewed_run_seconds

    def retry_after(self, failures: int) -> float:
        return min(self.max_retry_seconds, self.retry_seconds * 2.0 ** max(0, failures - 1))


def followed(status: Status, newest_write: float, now: float, recent_seconds: float) -> bool:
    """A run that may still change: running, or anything but succeeded that wrote lately (a
    failed attempt's retry, or a remote step, may take a while to show). A run whose `end`
    succeeded is done; so is one quiet for `recent_seconds` (running ones go unknown when stale)."""
    if status is Status.RUNNING:
        return True
    return status is not Status.SUCCEEDED and now - newest_write < recent_seconds
