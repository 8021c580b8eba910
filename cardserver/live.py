"""Which runs may still change: the local source watches those deeply and no others.

A run is finished when its status is final (succeeded, failed or stopped) and it has been
quiet for `settle_seconds`. A run whose status is unknown (its runtime went without a word) is
still followed: a task of it may be alive and write again. The quiet spell matters: Metaflow
records a task's `attempt_ok` before it renders the task's final cards, and killed workers
keep writing card updates for seconds. A resume is a new run, so nothing else writes to a
finished run.
"""

from __future__ import annotations

from collections.abc import Iterable

from .index import Index
from .layout import RunKey
from .status import Status

FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.STOPPED})


class LiveRuns:
    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._quiet_since: dict[RunKey, float] = {}  # wall-clock seconds, for final runs

    def update(
        self, index: Index, changed: Iterable[RunKey], now: float, reset: bool = False
    ) -> tuple[set[RunKey], float | None]:
        """The runs to follow, and when to ask again (the first followed final run settles).

        `changed`: runs that something just happened in. After a `reset` every run looks
        changed, so the files' own times say how long each has been quiet instead.
        """
        if reset:
            self._quiet_since.clear()
        else:
            for key in changed:
                self._quiet_since[key] = now
        live: set[RunKey] = set()
        next_check: float | None = None
        for run in index.all_runs():
            if run.status not in FINAL:
                live.add(run.key)
                continue
            since = self._quiet_since.get(run.key)
            if since is None:  # once per run: it walks the run's tasks
                since = self._quiet_since[run.key] = run.last_activity()
            settles = since + self.settle_seconds
            if settles > now:
                live.add(run.key)
                next_check = settles if next_check is None else min(next_check, settles)
        return live, next_check
