"""Task and run status from `_meta` documents (cardserver.status), with Metaflow 2.19's shapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardserver.layout import MetaKind
from cardserver.status import (
    Status,
    TaskFacts,
    TaskState,
    attempt_number,
    failure_time,
    finished_at,
    record,
    run_status,
    shown_status,
    task_status,
    user_of,
)

T0 = 1795376726273  # ms


def self_doc() -> dict[str, Any]:
    return {
        "run_number": "1795376725734877",
        "flow_id": "LiveFlow",
        "user_name": "tester",
        "tags": [],
        "system_tags": [
            "metaflow_version:2.19.39",
            "python_version:3.11.7",
            "user:tester",
            "runtime:dev",
        ],
        "ts_epoch": 1795376725736,
    }


def attempt_doc(n: int) -> dict[str, Any]:
    return {
        "flow_id": "LiveFlow",
        "run_number": "1795376725734877",
        "step_name": "start",
        "task_id": "1",
        "field_name": "attempt",
        "type": "attempt",
        "value": str(n),
        "tags": [f"attempt_id:{n}"],
        "user_name": "tester",
        "ts_epoch": T0,
    }


def ok_doc(n: int, ok: bool) -> dict[str, Any]:
    return {
        **attempt_doc(n),
        "field_name": "attempt_ok",
        "type": "internal_attempt_status",
        "value": str(ok),
    }


def done_doc(n: int) -> dict[str, Any]:
    return {**attempt_doc(n), "field_name": "attempt-done", "type": "attempt-done"}


def started(n: int = 0, ts: int = T0, facts: TaskFacts | None = None) -> TaskFacts:
    facts = facts or TaskFacts()
    assert record(facts, MetaKind.TASK_SELF, 0, self_doc())
    assert record(facts, MetaKind.ATTEMPT, ts, attempt_doc(n))
    return facts


def finish(facts: TaskFacts, n: int, ok: bool, ts: int) -> TaskFacts:
    assert record(facts, MetaKind.ATTEMPT_OK, ts, ok_doc(n, ok))
    assert record(facts, MetaKind.ATTEMPT_DONE, ts + 1, done_doc(n))
    return facts


# --- record ----------------------------------------------------------------------------------


def test_record_self_sets_created_and_user() -> None:
    facts = TaskFacts()
    assert record(facts, MetaKind.TASK_SELF, 0, self_doc())
    assert facts.created == pytest.approx(1795376725.736)
    assert facts.user == "tester"
    assert facts.attempts == {}


def test_record_attempt_lifecycle() -> None:
    facts = started(0, T0)
    attempt = facts.attempts[0]
    assert attempt.started == pytest.approx(T0 / 1000)
    assert attempt.ok is None and attempt.done is None and not attempt.finished

    assert record(facts, MetaKind.ATTEMPT_OK, T0 + 500, ok_doc(0, True))
    assert attempt.ok is True and attempt.finished
    assert record(facts, MetaKind.ATTEMPT_DONE, T0 + 600, done_doc(0))
    assert attempt.done == pytest.approx((T0 + 600) / 1000)


def test_record_attempt_ok_false() -> None:
    facts = started()
    assert record(facts, MetaKind.ATTEMPT_OK, T0 + 1, ok_doc(0, False))
    assert facts.attempts[0].ok is False


def test_attempt_ok_number_comes_from_its_tag_not_its_value() -> None:
    facts = TaskFacts()
    assert record(facts, MetaKind.ATTEMPT_OK, T0, ok_doc(2, True))
    assert list(facts.attempts) == [2]


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        (MetaKind.ATTEMPT, {}),
        (MetaKind.ATTEMPT, {"value": "x", "tags": []}),
        (MetaKind.ATTEMPT_OK, {"value": "True"}),  # no attempt_id tag: which attempt?
        (MetaKind.ATTEMPT_OK, {"value": "True", "tags": ["attempt_id:"]}),
        (MetaKind.ATTEMPT_DONE, {"value": None, "tags": None}),
    ],
)
def test_record_rejects_docs_without_an_attempt(kind: MetaKind, doc: dict[str, Any]) -> None:
    facts = TaskFacts()
    assert not record(facts, kind, T0, doc)
    assert facts.attempts == {}


# --- attempt_number / user_of ----------------------------------------------------------------


def test_attempt_number_from_value() -> None:
    assert attempt_number({"value": "3"}, MetaKind.ATTEMPT) == 3
    assert attempt_number({"value": 4}, MetaKind.ATTEMPT_DONE) == 4


def test_attempt_number_from_tags() -> None:
    doc = {"value": "True", "tags": ["other", "attempt_id:5"]}
    assert attempt_number(doc, MetaKind.ATTEMPT_OK) == 5
    assert attempt_number({"tags": ["attempt_id:1"]}, MetaKind.ATTEMPT) == 1


def test_attempt_ok_value_is_never_read_as_a_number() -> None:
    assert attempt_number({"value": "1", "tags": ["attempt_id:0"]}, MetaKind.ATTEMPT_OK) == 0


@pytest.mark.parametrize(
    "value",
    ["-1", "1.5", "", " 1", "1\n", "\u00b2", "\u0661", pytest.param("9" * 5000, id="5000-digits"),
     True, None, [1]],
)
def test_attempt_number_ignores_odd_values(value: Any) -> None:
    assert attempt_number({"value": value}, MetaKind.ATTEMPT) is None
    assert attempt_number({"tags": [f"attempt_id:{value}"]}, MetaKind.ATTEMPT_OK) is None


@given(st.dictionaries(st.sampled_from(["value", "tags"]),
                       st.one_of(st.text(), st.integers(), st.lists(st.text()), st.none())))
def test_attempt_number_never_raises(doc: dict[str, Any]) -> None:
    for kind in MetaKind:
        number = attempt_number(doc, kind)
        assert number is None or number >= 0


def test_user_of_prefers_system_tag() -> None:
    assert user_of(self_doc()) == "tester"
    assert user_of({"system_tags": ["user:alice"], "user_name": "bob"}) == "alice"


@pytest.mark.parametrize("tags", [5, "user:x", {"user:x": 1}, [None, 3]])
def test_odd_tag_fields_are_ignored(tags: Any) -> None:
    assert user_of({"system_tags": tags, "user_name": "bob"}) == "bob"
    assert attempt_number({"tags": tags}, MetaKind.ATTEMPT_OK) is None


def test_user_of_falls_back_to_user_name() -> None:
    assert user_of({"system_tags": ["runtime:dev"], "user_name": "bob"}) == "bob"
    assert user_of({}) is None
    assert user_of({"user_name": 3}) is None


# --- task_status -----------------------------------------------------------------------------


def test_pending_without_attempts() -> None:
    facts = TaskFacts()
    record(facts, MetaKind.TASK_SELF, 0, self_doc())
    assert task_status(facts) is Status.PENDING


def test_running_once_started() -> None:
    assert task_status(started()) is Status.RUNNING


def test_succeeded() -> None:
    facts = finish(started(), 0, True, T0 + 1000)
    assert task_status(facts) is Status.SUCCEEDED
    assert finished_at(facts) == pytest.approx((T0 + 1001) / 1000)


def test_failed() -> None:
    assert task_status(finish(started(), 0, False, T0 + 1000)) is Status.FAILED


def test_done_without_verdict_is_failed() -> None:
    facts = started()
    record(facts, MetaKind.ATTEMPT_DONE, T0 + 5, done_doc(0))
    assert task_status(facts) is Status.FAILED


def test_verdict_before_done_already_counts() -> None:
    facts = started()
    record(facts, MetaKind.ATTEMPT_OK, T0 + 5, ok_doc(0, True))
    assert task_status(facts) is Status.SUCCEEDED


def test_retry_runs_then_succeeds() -> None:
    facts = finish(started(0, T0), 0, False, T0 + 1000)
    assert task_status(facts) is Status.FAILED

    record(facts, MetaKind.ATTEMPT, T0 + 2000, attempt_doc(1))
    assert task_status(facts) is Status.RUNNING
    assert finished_at(facts) is None

    finish(facts, 1, True, T0 + 3000)
    assert task_status(facts) is Status.SUCCEEDED
    assert sorted(facts.attempts) == [0, 1]


def test_newest_attempt_decides_even_if_files_arrive_out_of_order() -> None:
    facts = TaskFacts()
    record(facts, MetaKind.ATTEMPT, T0 + 2000, attempt_doc(1))
    record(facts, MetaKind.ATTEMPT_OK, T0 + 1000, ok_doc(0, False))
    record(facts, MetaKind.ATTEMPT, T0, attempt_doc(0))
    assert task_status(facts) is Status.RUNNING


# --- killed and run status -------------------------------------------------------------------


def state(step: str, status: Status, activity: float, finished: float | None = None) -> TaskState:
    return TaskState(step, status, activity, finished)


def test_failure_time_is_newest_failed_finish() -> None:
    tasks = [
        state("a", Status.FAILED, 50.0, 40.0),
        state("b", Status.FAILED, 60.0, None),  # no finish time: its last activity
        state("c", Status.RUNNING, 99.0),
        state("d", Status.SUCCEEDED, 98.0, 97.0),
    ]
    assert failure_time(tasks) == 60.0
    assert failure_time([state("c", Status.RUNNING, 1.0)]) is None


def test_running_task_silent_since_failure_is_killed() -> None:
    assert shown_status(state("b", Status.RUNNING, 90.0), 100.0) is Status.KILLED
    assert shown_status(state("b", Status.RUNNING, 100.0), 100.0) is Status.KILLED


def test_running_task_active_after_failure_is_still_running() -> None:
    assert shown_status(state("b", Status.RUNNING, 101.0), 100.0) is Status.RUNNING


def test_no_failure_no_kill() -> None:
    assert shown_status(state("b", Status.RUNNING, 1.0), None) is Status.RUNNING


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.PENDING])
def test_only_running_tasks_can_be_killed(status: Status) -> None:
    assert shown_status(state("b", status, 1.0), 100.0) is status


def test_run_empty_is_pending() -> None:
    assert run_status([]) is Status.PENDING


def test_run_succeeds_when_end_succeeds() -> None:
    tasks = [state("start", Status.SUCCEEDED, 1.0, 1.0), state("end", Status.SUCCEEDED, 2.0, 2.0)]
    assert run_status(tasks) is Status.SUCCEEDED


def test_run_between_steps_is_running() -> None:
    assert run_status([state("start", Status.SUCCEEDED, 1.0, 1.0)]) is Status.RUNNING


def test_run_with_running_task_is_running() -> None:
    tasks = [state("start", Status.SUCCEEDED, 1.0, 1.0), state("train", Status.RUNNING, 5.0)]
    assert run_status(tasks) is Status.RUNNING


def test_run_fails_when_a_task_failed_and_nothing_runs() -> None:
    tasks = [state("start", Status.SUCCEEDED, 1.0, 1.0), state("train", Status.FAILED, 5.0, 5.0)]
    assert run_status(tasks) is Status.FAILED


def test_run_fails_when_the_others_were_killed() -> None:
    tasks = [
        state("train", Status.FAILED, 100.0, 100.0),
        state("train", Status.RUNNING, 90.0),  # silent since before the failure
    ]
    assert run_status(tasks) is Status.FAILED


def test_run_still_runs_while_a_sibling_is_active_after_a_failure() -> None:
    tasks = [
        state("train", Status.FAILED, 100.0, 100.0),
        state("train", Status.RUNNING, 120.0),
    ]
    assert run_status(tasks) is Status.RUNNING
