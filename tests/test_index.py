"""The in-memory model (cardserver.index), fed scripted domain events."""

from __future__ import annotations

from typing import Any

import pytest

from cardserver.events import (
    CardData,
    CardRemoved,
    CardWritten,
    DataUpdate,
    DataWritten,
    Event,
    Reset,
    RunWritten,
    TaskCardsRead,
    TaskMetaRead,
    TaskMetaWritten,
    TaskRemoved,
)
from cardserver.index import Changes, Index, merge, natural
from cardserver.layout import LEGACY_STEP, CardKey, MetaKind, RunKey, TaskKey
from cardserver.status import GRACE_SECONDS, STALE_SECONDS, Status

FLOW = "LiveFlow"
RUN = RunKey(FLOW, "1795376725734877")
UUID = "3f1c2e9a0b7d4c5e8f6a1b2c3d4e5f60"


def task(step: str, name: str, run: RunKey = RUN) -> TaskKey:
    return TaskKey(run.flow, run.run, step, name)


def card(key: TaskKey, name: str = f"blank-{UUID}") -> CardKey:
    return CardKey(key, name)


def attempt_doc(n: int) -> dict[str, Any]:
    return {"value": str(n), "tags": [f"attempt_id:{n}"]}


def started(key: TaskKey, ts: float, n: int = 0) -> TaskMetaWritten:
    return TaskMetaWritten(key, MetaKind.ATTEMPT, int(ts * 1000), attempt_doc(n))


def verdict(key: TaskKey, ts: float, ok: bool, n: int = 0) -> TaskMetaWritten:
    doc = {"value": str(ok), "tags": [f"attempt_id:{n}"]}
    return TaskMetaWritten(key, MetaKind.ATTEMPT_OK, int(ts * 1000), doc)


def done(key: TaskKey, ts: float, n: int = 0) -> TaskMetaWritten:
    return TaskMetaWritten(key, MetaKind.ATTEMPT_DONE, int(ts * 1000), attempt_doc(n))


def finished(key: TaskKey, start: float, end: float, ok: bool = True) -> list[Event]:
    return [started(key, start), verdict(key, end, ok), done(key, end)]


def rendered(key: CardKey, mtime: float, version: str = "v1") -> CardWritten:
    return CardWritten(key, False, mtime, 1_100_000, version)


def updated(
    key: CardKey, mtime: float, token: str, created: float, data: dict[str, Any], read_at: float = 0.0
) -> DataWritten:
    return DataWritten(key, False, mtime, DataUpdate(token, created, data), read_at)


def run_written(key: RunKey = RUN, created: float = 1000.0) -> RunWritten:
    return RunWritten(key, created, "tester")


@pytest.fixture
def index() -> Index:
    return Index(clock=lambda: NOW)


NOW = 1_101.0  # the tests' clock: just after their last write, within every grace period


def killed(key: TaskKey, ts: float, n: int = 0) -> TaskMetaWritten:
    """`<n>.runtime` of a worker the runtime killed."""
    doc = {"value": str(n), "success": False, "killed": True}
    return TaskMetaWritten(key, MetaKind.VERDICT, int(ts * 1000), doc)


# --- building up ---------------------------------------------------------------------------


def test_new_run_is_a_change_to_flows_and_runs(index: Index) -> None:
    changes = index.apply([run_written()])
    assert changes.flows
    assert changes.runs == {RUN}
    assert index.run(RUN) is not None
    [flow] = index.flow_summaries()
    assert flow["flow"] == FLOW and flow["runs"] == 1
    assert flow["newest"]["run"] == RUN.run
    assert flow["newest"]["user"] == "tester"
    assert flow["newest"]["status"] == "pending"
    assert flow["newest"]["started"] == 1000.0


def test_task_start_makes_run_running(index: Index) -> None:
    index.apply([run_written()])
    start = task("start", "1")
    changes = index.apply([started(start, 1001.0)])
    assert start in changes.tasks
    assert RUN in changes.runs
    assert index.run(RUN).status is Status.RUNNING  # type: ignore[union-attr]
    assert index.task(start).shown is Status.RUNNING  # type: ignore[union-attr]


def test_same_state_again_changes_nothing(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([run_written(), started(key.task, 1001.0), rendered(key, 1002.0)])
    changes = index.apply([rendered(key, 1002.0)])
    assert not changes
    assert changes == Changes()


def test_run_succeeds_when_end_succeeds(index: Index) -> None:
    index.apply([run_written(), *finished(task("start", "1"), 1096.0, 1097.0)])
    assert index.run(RUN).status is Status.RUNNING  # the next task is on its way  # type: ignore[union-attr]
    changes = index.apply(finished(task("end", "2"), 1098.0, 1099.0))
    assert index.run(RUN).status is Status.SUCCEEDED  # type: ignore[union-attr]
    assert changes.flows  # the flows list shows each flow's newest run status
    assert RUN in changes.runs


def test_summary_counts_tasks_and_cards(index: Index) -> None:
    a, b = task("start", "1"), task("train", "2")
    index.apply([
        run_written(),
        *finished(a, 1001.0, 1002.0),
        started(b, 1003.0),
        rendered(card(a), 1002.0),
        rendered(card(b), 1004.0),
        rendered(card(b, f"default-extra-{UUID}"), 1004.0),
    ])
    summary = index.run(RUN).summary()  # type: ignore[union-attr]
    assert summary["tasks"] == 2
    assert summary["cards"] == 3
    assert summary["counts"] == {"succeeded": 1, "running": 1}


# --- queries ---------------------------------------------------------------------------------


def test_runs_newest_first_and_newest_run(index: Index) -> None:
    index.apply([
        run_written(RunKey(FLOW, "9"), 3000.0),
        run_written(RunKey(FLOW, "10"), 1000.0),
        run_written(RunKey(FLOW, "100"), 2000.0),
        run_written(RunKey("OtherFlow", "1"), 500.0),
    ])
    assert [r.key.run for r in index.runs(FLOW)] == ["9", "100", "10"]
    assert index.newest_run(FLOW).key == RunKey(FLOW, "9")  # type: ignore[union-attr]
    assert index.newest_run("OtherFlow").key == RunKey("OtherFlow", "1")  # type: ignore[union-attr]
    assert index.newest_run().key == RunKey(FLOW, "9")  # type: ignore[union-attr]
    assert index.runs("Missing") == []
    assert index.newest_run("Missing") is None


def test_runs_started_at_the_same_time_sort_by_number_not_text(index: Index) -> None:
    index.apply([run_written(RunKey(FLOW, r), 1000.0) for r in ("9", "10", "2")])
    assert [r.key.run for r in index.runs(FLOW)] == ["10", "9", "2"]


def test_run_without_self_file_is_dated_by_its_first_activity(index: Index) -> None:
    old, new = RunKey(FLOW, "1"), RunKey(FLOW, "2")
    index.apply([run_written(old, 1000.0), started(task("start", "1", new), 2000.0)])
    assert index.newest_run(FLOW).key == new  # type: ignore[union-attr]


def test_flow_summaries_sorted_by_name(index: Index) -> None:
    index.apply([run_written(RunKey("Zeta", "1")), run_written(RunKey("Alpha", "1")),
                 run_written(RunKey("Alpha", "2"), 2000.0)])
    summaries = index.flow_summaries()
    assert [f["flow"] for f in summaries] == ["Alpha", "Zeta"]
    assert summaries[0]["runs"] == 2
    assert summaries[0]["newest"]["run"] == "2"


def test_run_detail_orders_steps_by_first_start_and_tasks_naturally(index: Index) -> None:
    events: list[Event] = [run_written()]
    # Step names sort the other way alphabetically; events arrive out of order.
    events += finished(task("zeta", "1"), 1001.0, 1002.0)
    events += finished(task("end", "30"), 1009.0, 1010.0)
    for n, t in (("10", 1005.0), ("2", 1004.0), ("9", 1003.5)):
        events += finished(task("alpha", n), t, t + 1)
    index.apply(reversed(events))
    detail = index.run_detail(RUN)
    assert detail is not None
    assert detail["steps"] == ["zeta", "alpha", "end"]
    assert [(t["step"], t["task"]) for t in detail["tasks"]] == [
        ("zeta", "1"), ("alpha", "2"), ("alpha", "9"), ("alpha", "10"), ("end", "30"),
    ]
    assert detail["run"]["status"] == "succeeded"
    first = detail["tasks"][0]
    assert first["status"] == "succeeded"
    assert first["attempt"] == 0
    assert first["started"] == pytest.approx(1001.0)
    assert first["finished"] == pytest.approx(1002.0)


def test_run_detail_of_unknown_run(index: Index) -> None:
    assert index.run_detail(RUN) is None


def test_natural_order() -> None:
    assert sorted(["10", "2", "1", "a10", "a2"], key=natural) == ["1", "2", "10", "a2", "a10"]


def test_card_detail(index: Index) -> None:
    key = card(task("start", "1"), f"blank-live-{UUID}")
    index.apply([run_written(), started(key.task, 1001.0), rendered(key, 1002.0, "v1")])
    detail = index.card_detail(key)
    assert detail is not None
    assert detail["flow"] == FLOW and detail["run"] == RUN.run
    assert detail["step"] == "start" and detail["task"] == "1"
    assert detail["task_status"] == "running"
    assert detail["type"] == "blank" and detail["id"] == "live"
    assert detail["version"] == "v1"
    assert detail["has_html"] is True
    assert detail["update"] is None
    assert index.card_detail(card(task("start", "1"), f"blank-{UUID}")) is None


def test_data_before_html_is_a_card_without_html(index: Index) -> None:
    key = card(task("start", "1"))
    changes = index.apply([updated(key, 1002.0, "t1", 1.0, {"a": 1})])
    assert key in changes.updates
    assert key not in changes.renders
    detail = index.card_detail(key)
    assert detail is not None
    assert detail["has_html"] is False
    assert detail["update"] == {"token": "t1", "created_on": 1.0, "data": {"a": 1}}


# --- re-renders and data updates -------------------------------------------------------------


def test_re_render_detected_by_version(index: Index) -> None:
    key = card(task("start", "1"))
    changes = index.apply([rendered(key, 1002.0, "v1")])
    assert key in changes.renders
    assert key.task in changes.tasks

    changes = index.apply([rendered(key, 1002.0, "v1")])
    assert key not in changes.renders

    changes = index.apply([rendered(key, 1003.0, "v2")])
    assert changes.renders == {key}
    assert index.card(key).version == "v2"  # type: ignore[union-attr]
    assert index.card(key).mtime == 1003.0  # type: ignore[union-attr]


def test_data_updates_merge_per_component(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([rendered(key, 1000.0)])
    changes = index.apply([updated(key, 1001.0, "t1", 10.0, {"bar": 1, "text": "a"})])
    assert changes.updates == {key}
    index.apply([updated(key, 1002.0, "t1", 11.0, {"bar": 2})])
    assert index.card(key).update.data == {"bar": 2, "text": "a"}  # type: ignore[union-attr]
    assert index.card(key).update.created_on == 11.0  # type: ignore[union-attr]


def test_an_update_read_before_the_shown_one_is_ignored(index: Index) -> None:
    """A slow read, overtaken by a later one, whatever its `created_on` says."""
    key = card(task("start", "1"))
    index.apply([updated(key, 1001.0, "t1", 11.0, {"bar": 2, "text": "new"}, read_at=5.0)])
    changes = index.apply([updated(key, 1002.0, "t1", 12.0, {"bar": 1, "text": "old", "extra": 0},
                                   read_at=4.0)])
    assert key not in changes.updates  # nothing new to tell anyone
    update = index.card(key).update  # type: ignore[union-attr]
    assert update is not None
    assert update.data == {"bar": 2, "text": "new"}
    assert update.created_on == 11.0


def test_an_update_stamped_ahead_is_shown_and_holds_back_none_after_it(index: Index) -> None:
    """Order by arrival: one update stamped an hour ahead (or a clock stepped back after it)
    is shown, and the correct ones read after it are shown too."""
    key = card(task("start", "1"))
    index.apply([updated(key, 1001.0, "t1", 1001.0, {"bar": 1}, read_at=1.0)])
    ahead = index.apply([updated(key, 1002.0, "t1", 1002.0 + 3600, {"bar": 2}, read_at=2.0)])
    assert ahead.updates == {key}
    later = index.apply([updated(key, 1003.0, "t1", 1003.0, {"bar": 3, "text": "later"}, read_at=3.0)])
    assert later.updates == {key}
    update = index.card(key).update  # type: ignore[union-attr]
    assert update == DataUpdate("t1", 1003.0, {"bar": 3, "text": "later"})


def test_created_on_only_breaks_a_tie(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([updated(key, 1001.0, "t1", 11.0, {"bar": 2}, read_at=5.0)])
    changes = index.apply([updated(key, 1001.0, "t1", 10.0, {"bar": 1}, read_at=5.0)])
    assert key not in changes.updates
    assert index.card(key).update.data == {"bar": 2}  # type: ignore[union-attr]


def test_new_reload_token_starts_fresh(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([updated(key, 1001.0, "t1", 10.0, {"old_component": 1})])
    index.apply([updated(key, 1002.0, "t2", 12.0, {"new_component": 1})])
    update = index.card(key).update  # type: ignore[union-attr]
    assert update == DataUpdate("t2", 12.0, {"new_component": 1})


def test_merge_does_not_mutate_its_inputs() -> None:
    old = DataUpdate("t", 1.0, {"a": 1})
    new = DataUpdate("t", 2.0, {"b": 2})
    merged = merge(old, new)
    assert merged.data == {"a": 1, "b": 2}
    assert old.data == {"a": 1} and new.data == {"b": 2}
    assert merge(None, new) is new


def test_data_known_but_unread_is_not_an_update(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([rendered(key, 1000.0)])
    changes = index.apply([DataWritten(key, False, 1005.0, None)])
    assert not changes.updates
    assert index.card(key).data_mtime == 1005.0  # type: ignore[union-attr]
    assert index.task(key.task).last_activity == 1005.0  # type: ignore[union-attr]


def test_data_update_on_healthy_run_does_not_settle_the_run(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = card(task("start", "1"))
    index.apply([run_written(), started(key.task, 1001.0), rendered(key, 1002.0)])
    settled: list[RunKey] = []
    original = Index._settle_run

    def spy(self: Index, run: RunKey, changes: Changes, now: float) -> None:
        settled.append(run)
        original(self, run, changes, now)

    monkeypatch.setattr(Index, "_settle_run", spy)
    changes = index.apply([updated(key, 1003.0, "t1", 1.0, {"a": 1})])
    assert settled == []
    assert changes.updates == {key}
    assert not changes.runs and not changes.tasks and not changes.flows

    index.apply([started(task("train", "2"), 1004.0)])  # the spy does see ordinary settles
    assert settled == [RUN]


# --- removal and reset -----------------------------------------------------------------------


def test_card_removed(index: Index) -> None:
    key = card(task("start", "1"))
    index.apply([run_written(), started(key.task, 1001.0), rendered(key, 1002.0)])
    changes = index.apply([CardRemoved(key)])
    assert changes.renders == {key}
    assert key.task in changes.tasks
    assert RUN in changes.runs
    assert index.card(key) is None
    assert index.card_detail(key) is None
    assert index.run(RUN).summary()["cards"] == 0  # type: ignore[union-attr]
    assert not index.apply([CardRemoved(key)])


def test_task_removed(index: Index) -> None:
    a, b = task("start", "1"), task("train", "2")
    index.apply([run_written(), *finished(a, 1001.0, 1002.0), started(b, 1003.0)])
    changes = index.apply([TaskRemoved(b)])
    assert RUN in changes.runs
    assert index.task(b) is None
    assert index.run(RUN).summary()["tasks"] == 1  # type: ignore[union-attr]
    assert not index.apply([TaskRemoved(b)])


def test_reset_replaces_everything(index: Index) -> None:
    index.apply([run_written(RunKey("Gone", "1")), rendered(card(task("start", "1")), 1.0)])
    fresh = RunKey("Fresh", "7")
    changes = index.apply([Reset((run_written(fresh), started(task("start", "1", fresh), 1001.0)))])
    assert changes.reset
    assert bool(changes)
    assert [f["flow"] for f in index.flow_summaries()] == ["Fresh"]
    assert index.run(RUN) is None
    assert index.run(fresh).status is Status.RUNNING  # type: ignore[union-attr]


def test_empty_reset_clears(index: Index) -> None:
    index.apply([run_written()])
    changes = index.apply([Reset(())])
    assert changes.reset
    assert index.flows == {}
    assert index.flow_summaries() == []


# --- failed, killed, retried -----------------------------------------------------------------


def failing_run(index: Index) -> tuple[TaskKey, TaskKey, TaskKey]:
    """`start` succeeded; two `train` tasks ran; one failed at 1100 while the other still ran."""
    start, bad, sibling = task("start", "1"), task("train", "2"), task("train", "3")
    index.apply([
        run_written(),
        *finished(start, 1001.0, 1002.0),
        started(bad, 1010.0),
        started(sibling, 1010.0),
        rendered(card(sibling), 1090.0),
    ])
    assert index.run(RUN).status is Status.RUNNING  # type: ignore[union-attr]
    index.apply([verdict(bad, 1100.0, False), done(bad, 1100.0)])
    return start, bad, sibling


def test_a_sibling_runs_until_the_runtime_kills_it(index: Index) -> None:
    _, bad, sibling = failing_run(index)
    assert index.task(bad).shown is Status.FAILED  # type: ignore[union-attr]
    assert index.task(sibling).shown is Status.RUNNING  # type: ignore[union-attr]
    assert index.run(RUN).status is Status.RUNNING  # type: ignore[union-attr]
    changes = index.apply([killed(sibling, 1100.5)])
    assert index.run(RUN).status is Status.FAILED  # type: ignore[union-attr]
    assert index.task(sibling).shown is Status.KILLED  # type: ignore[union-attr]
    assert {sibling} <= changes.tasks and RUN in changes.runs and changes.flows
    counts = index.run(RUN).summary()["counts"]  # type: ignore[union-attr]
    assert counts == {"succeeded": 1, "failed": 1, "killed": 1}
    [flow] = index.flow_summaries()
    assert flow["newest"]["status"] == "failed"


def test_card_updates_of_a_killed_task_change_no_status(index: Index) -> None:
    """Killed workers keep writing card updates for seconds after the verdicts."""
    _, _, sibling = failing_run(index)
    index.apply([killed(sibling, 1100.5)])
    changes = index.apply([updated(card(sibling), 1105.0, "t1", 1105.0, {"a": 1})])
    assert index.task(sibling).shown is Status.KILLED  # type: ignore[union-attr]
    assert index.run(RUN).status is Status.FAILED  # type: ignore[union-attr]
    assert RUN not in changes.runs


def test_a_lone_failure_fails_the_run_once_no_retry_came() -> None:
    now = [1_100.5]
    index = Index(clock=lambda: now[0])
    start, bad = task("start", "1"), task("train", "2")
    index.apply([run_written(), *finished(start, 1001.0, 1002.0), started(bad, 1010.0),
                 verdict(bad, 1100.0, False), done(bad, 1100.0)])
    run = index.run(RUN)
    assert run is not None and run.status is Status.RUNNING  # a retry may be on its way
    assert index.next_recheck() == pytest.approx(1100.0 + GRACE_SECONDS)
    assert not index.apply([])  # nothing is due yet
    now[0] = 1100.0 + GRACE_SECONDS
    changes = index.apply([])
    assert run.status is Status.FAILED and RUN in changes.runs
    assert index.next_recheck() is None


def test_a_file_time_in_the_future_does_not_hold_a_failed_run_as_running() -> None:
    """One data file stamped an hour ahead: the run is quiet from when it was seen, so it
    fails once the grace is over, not an hour later."""
    now = [1_100.5]
    index = Index(clock=lambda: now[0])
    bad = task("start", "1")
    index.apply([run_written(), started(bad, 1010.0), verdict(bad, 1100.0, False), done(bad, 1100.0),
                 updated(card(bad), 1100.0 + 3600, "t1", 1100.0, {"bar": 1})])
    run = index.run(RUN)
    assert run is not None and run.status is Status.RUNNING  # a retry may be on its way
    now[0] += GRACE_SECONDS
    index.apply([])
    assert run.status is Status.FAILED
    assert index.next_recheck() is None


def test_a_clock_stepped_back_does_not_hold_a_failed_run_as_running() -> None:
    now = [1_100.5]
    index = Index(clock=lambda: now[0])
    bad = task("start", "1")
    index.apply([run_written(), started(bad, 1010.0), verdict(bad, 1100.0, False), done(bad, 1100.0)])
    now[0] = 1_100.5 - 3600  # an NTP step back, an hour
    index.apply([])
    now[0] += GRACE_SECONDS
    index.apply([])
    assert index.run(RUN).status is Status.FAILED  # type: ignore[union-attr]


def test_a_run_silent_for_long_is_unknown_until_it_writes_again() -> None:
    now = [1_020.0]
    index = Index(clock=lambda: now[0])
    start, train = task("start", "1"), task("train", "2")
    index.apply([run_written(), *finished(start, 1001.0, 1002.0), started(train, 1010.0)])
    now[0] = 1010.0 + STALE_SECONDS
    index.apply([])
    assert index.run(RUN).status is Status.UNKNOWN  # type: ignore[union-attr]
    assert index.task(train).shown is Status.UNKNOWN  # type: ignore[union-attr]
    index.apply([rendered(card(train), now[0])])
    assert index.run(RUN).status is Status.RUNNING  # type: ignore[union-attr]
    assert index.task(train).shown is Status.RUNNING  # type: ignore[union-attr]



def test_retry_runs_then_succeeds(index: Index) -> None:
    start, flaky = task("start", "1"), task("train", "2")
    index.apply([run_written(), *finished(start, 1001.0, 1002.0), started(flaky, 1003.0),
                 verdict(flaky, 1004.0, False), done(flaky, 1004.0)])
    assert index.run(RUN).status is Status.FAILED  # type: ignore[union-attr]

    changes = index.apply([started(flaky, 1005.0, n=1)])
    assert index.task(flaky).shown is Status.RUNNING  # type: ignore[union-attr]
    assert index.run(RUN).status is Status.RUNNING  # type: ignore[union-attr]
    assert flaky in changes.tasks and RUN in changes.runs
    assert index.task(flaky).summary()["attempt"] == 1  # type: ignore[union-attr]

    index.apply([verdict(flaky, 1006.0, True, n=1), done(flaky, 1006.0, n=1)])
    assert index.task(flaky).shown is Status.SUCCEEDED  # type: ignore[union-attr]
    index.apply(finished(task("end", "3"), 1007.0, 1008.0))
    assert index.run(RUN).status is Status.SUCCEEDED  # type: ignore[union-attr]


def test_revision_moves_with_run_detail(index: Index) -> None:
    a, other = task("start", "1"), RunKey(FLOW, "2")
    index.apply([run_written(), run_written(other), started(a, 1001.0), rendered(card(a), 1002.0)])
    before, other_before = index.revision(RUN), index.revision(other)

    index.apply([updated(card(a), 1003.0, "t1", 1.0, {"x": 1})])  # not part of run_detail
    assert index.revision(RUN) == before

    index.apply([started(task("train", "2"), 1004.0)])
    after = index.revision(RUN)
    assert after != before
    assert index.revision(other) == other_before

    index.apply([Reset((run_written(),))])
    assert index.revision(RUN) != after


def test_legacy_card_joins_the_task_of_its_id(index: Index) -> None:
    """Cards from before mid-2022 have no step in their path: they belong to the task with
    their id, not to a phantom task under step `_`, whichever arrives first."""
    from cardserver.layout import LEGACY_STEP

    real = task("train", "7")
    early = card(TaskKey(RUN.flow, RUN.run, LEGACY_STEP, "7"), f"blank-{UUID}")
    changes = index.apply([rendered(early, 1000.0)])  # the card before any status file
    assert index.task(early.task) is not None
    changes = index.apply([started(real, 1000.5)])
    assert index.task(early.task) is None  # the placeholder is gone...
    assert early.task in changes.tasks  # ...and subscribers are told
    owner = index.task(real)
    assert owner is not None and list(owner.cards) == [early.name]
    assert index.card(early) is owner.cards[early.name]  # the card's own key still finds it
    late = card(TaskKey(RUN.flow, RUN.run, LEGACY_STEP, "7"), f"default-{UUID}")
    changes = index.apply([rendered(late, 1001.0)])  # after its task: straight onto it
    assert real in changes.tasks
    assert sorted(owner.cards) == sorted([early.name, late.name])
    detail = index.run_detail(RUN)
    assert detail is not None and [t["step"] for t in detail["tasks"]] == ["train"]
    assert index.card_detail(early)["task_status"] == "running"  # type: ignore[index]


# --- a scan's events: one per task folder ----------------------------------------------------


def per_file(event: Event) -> list[Event]:
    """The one-file events a scan's per-task event stands for, in order."""
    if isinstance(event, TaskMetaRead):
        return [TaskMetaWritten(event.key, kind, ts, dict(doc)) for kind, ts, doc in event.files]
    if isinstance(event, TaskCardsRead):
        owner, legacy = event.task, event.legacy
        return [
            *(CardWritten(CardKey(owner, n), legacy, mtime, size, v) for n, mtime, size, v in event.pages),
            *(DataWritten(CardKey(owner, n), legacy, mtime, None) for n, mtime in event.data),
        ]
    return [event]


def meta_read(key: TaskKey, *files: TaskMetaWritten) -> TaskMetaRead:
    return TaskMetaRead(key, tuple((f.kind, f.ts, f.doc) for f in files))


def cards_read(
    key: TaskKey, pages: list[tuple[str, float]], data: tuple[CardData, ...] = (), legacy: bool = False
) -> TaskCardsRead:
    return TaskCardsRead(key, legacy, tuple((n, mtime, 1000, f"v{mtime}") for n, mtime in pages), data)


def legacy(key: TaskKey) -> TaskKey:
    return TaskKey(key.flow, key.run, LEGACY_STEP, key.task)


def scanned() -> list[Event]:
    """A scan's events for runs of every kind: failed, killed, retried, old-layout cards."""
    other, cards_only = RunKey(FLOW, "2"), RunKey("OldFlow", "5")
    start, bad, silent, flaky = task("start", "1"), task("train", "2"), task("train", "3"), task("train", "4")
    end, late = task("end", "9", other), task("train", "7", cards_only)
    a, b = f"blank-{UUID}", f"default-{UUID}"
    self_file = TaskMetaWritten(flaky, MetaKind.TASK_SELF, 0, {})
    mute = TaskMetaWritten(silent, MetaKind.ATTEMPT_DONE, 1095_000, {"value": "x"})  # names no attempt
    return [
        run_written(),
        meta_read(start, started(start, 1001.0), verdict(start, 1002.0, True), done(start, 1002.0)),
        meta_read(bad, started(bad, 1010.0), verdict(bad, 1100.0, False), done(bad, 1100.0)),
        meta_read(silent, started(silent, 1010.0), mute, killed(silent, 1100.5)),
        meta_read(
            flaky,
            self_file,
            started(flaky, 1003.0), verdict(flaky, 1004.0, False), done(flaky, 1004.0),
            started(flaky, 1005.0, n=1),  # killed: never a verdict
            started(flaky, 1006.0, n=2), verdict(flaky, 1007.0, True, n=2), done(flaky, 1007.0, n=2),
        ),
        cards_read(start, [(a, 1002.0)], ((a, 1002.0),)),
        cards_read(silent, [(a, 1090.0), (b, 1091.0)], ((a, 1092.0), (f"blank-only-{UUID}", 1093.0))),
        cards_read(legacy(flaky), [(b, 1007.0)], legacy=True),  # after its task
        cards_read(legacy(task("train", "9")), [(a, 1008.0)], legacy=True),  # no task of its own
        run_written(other, 2000.0),
        meta_read(end, started(end, 2001.0), verdict(end, 2002.0, True), done(end, 2002.0)),
        cards_read(legacy(late), [(a, 3000.0)], legacy=True),  # before its task
        meta_read(late, started(late, 2999.0)),
    ]


def expanded(events: list[Event]) -> list[Event]:
    return [one for event in events for one in per_file(event)]


def same_state(bulk: Index, one_by_one: Index) -> None:
    assert bulk.flows == one_by_one.flows
    keys = [run.key for flow in bulk.flows.values() for run in flow.runs.values()]
    assert [bulk.revision(k) for k in keys] == [one_by_one.revision(k) for k in keys]


def test_scan_events_build_the_state_their_files_build() -> None:
    bulk, one_by_one = Index(clock=lambda: NOW), Index(clock=lambda: NOW)
    changes = bulk.apply([Reset(tuple(scanned()))])
    assert changes == one_by_one.apply([Reset(tuple(expanded(scanned())))])
    same_state(bulk, one_by_one)
    # the runs are worth comparing: each kind of task is there
    run = bulk.run(RUN)
    assert run is not None and run.status is Status.FAILED
    shown = {key: t.shown for key, t in run.tasks.items()}
    assert shown == {
        ("start", "1"): Status.SUCCEEDED,
        ("train", "2"): Status.FAILED,
        ("train", "3"): Status.KILLED,
        ("train", "4"): Status.SUCCEEDED,
        (LEGACY_STEP, "9"): Status.PENDING,
    }
    assert bulk.task(task("train", "4")).summary()["attempt"] == 2  # type: ignore[union-attr]
    assert len(bulk.task(task("train", "3")).cards) == 3  # type: ignore[union-attr]
    assert bulk.task(legacy(task("train", "7", RunKey("OldFlow", "5")))) is None  # adopted


@pytest.mark.parametrize("batches", ["one", "each"])
def test_scan_events_outside_a_reset_apply_like_their_files(batches: str) -> None:
    """A re-read of one run lands on a live index: first half the files, one by one."""
    bulk, one_by_one = Index(clock=lambda: NOW), Index(clock=lambda: NOW)
    live = expanded(scanned())[::2]
    assert bulk.apply(live) == one_by_one.apply(live)
    if batches == "one":
        assert bulk.apply(scanned()) == one_by_one.apply(expanded(scanned()))
    else:
        for event in scanned():
            assert bulk.apply([event]) == one_by_one.apply(per_file(event))
    same_state(bulk, one_by_one)


def test_scan_events_again_change_nothing(index: Index) -> None:
    index.apply([Reset(tuple(scanned()))])
    changes = index.apply(scanned())
    assert not changes.renders and not changes.updates and not changes.flows


def test_reading_the_same_files_again_changes_nothing() -> None:
    """A catch-up reads a run the watcher newly follows: known files must not be re-published."""
    index = Index(clock=lambda: NOW)
    index.apply([Reset(tuple(scanned()))])
    before = {run.key: index.revision(run.key) for f in index.flows.values() for run in f.runs.values()}
    assert not index.apply(scanned())
    assert not index.apply(expanded(scanned()))  # the same files as one-by-one events
    assert {key: index.revision(key) for key in before} == before


def test_a_re_read_that_says_something_new_still_counts() -> None:
    index = Index(clock=lambda: NOW)
    index.apply([Reset(tuple(scanned()))])
    start = task("start", "1")
    changes = index.apply([meta_read(start, started(start, 1001.0, n=1))])  # a retry began
    assert changes.tasks == {start}
