"""Task and run status from `_meta` documents (cardserver.status), with Metaflow 2.19's shapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardserver.layout import MetaKind
from cardserver.status import (
    GRACE_SECONDS,
    STALE_SECONDS,
    Status,
    TaskFacts,
    TaskState,
    attempt_number,
    card_attempt,
    finished_at,
    record,
    run_status,
    shown_status,
    task_status,
    user_of,
    verdict_doc,
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


# --- verdicts and card attempts ----------------------------------------------------------


def verdict(facts: TaskFacts, n: int, return_code: int, killed: bool, ts: int) -> TaskFacts:
    """Record `<n>.runtime` as Metaflow writes it when it reaps the worker."""
    doc = verdict_doc(n, {"return_code": return_code, "killed": killed, "success": return_code == 0})
    assert doc is not None
    assert record(facts, MetaKind.VERDICT, ts, doc)
    return facts


def test_killed_by_the_runtime() -> None:
    facts = verdict(started(), 0, -9, True, T0 + 5000)  # no attempt_ok, no attempt-done
    assert task_status(facts) is Status.KILLED
    assert finished_at(facts) == pytest.approx((T0 + 5000) / 1000)


def test_verdict_failed_without_attempt_ok_is_failed() -> None:
    """A worker that died on its own (segfault, out of memory) writes nothing; the runtime does."""
    assert task_status(verdict(started(), 0, -11, False, T0 + 5)) is Status.FAILED


def test_a_failure_verdict_after_attempt_ok_false_is_no_news() -> None:
    facts = finish(started(), 0, False, T0)
    assert not record(facts, MetaKind.VERDICT, T0 + 50, {"value": "0", "success": False, "killed": False})
    assert task_status(facts) is Status.FAILED


def test_verdict_is_the_last_word() -> None:
    facts = finish(started(), 0, True, T0 + 1000)
    verdict(facts, 0, 1, False, T0 + 2000)  # the worker exited badly after its attempt_ok
    assert task_status(facts) is Status.FAILED


def test_verdict_success() -> None:
    assert task_status(verdict(started(), 0, 0, False, T0 + 50)) is Status.SUCCEEDED


def test_a_success_verdict_after_attempt_ok_is_no_news() -> None:
    """The scan reads no verdict of an attempt that wrote attempt_ok True: the live path agrees."""
    facts = finish(started(), 0, True, T0)
    assert not record(facts, MetaKind.VERDICT, T0 + 50, {"value": "0", "success": True, "killed": False})
    assert facts.attempts[0].verdict is None and task_status(facts) is Status.SUCCEEDED


def test_a_failed_verdict_then_a_retry_runs() -> None:
    facts = verdict(started(0, T0), 0, 1, False, T0 + 20)
    assert task_status(facts) is Status.FAILED
    record(facts, MetaKind.ATTEMPT, T0 + 300, attempt_doc(1))
    assert task_status(facts) is Status.RUNNING


@pytest.mark.parametrize("doc", [{}, {"success": "true", "killed": False}, {"success": True}])
def test_a_verdict_needs_both_booleans(doc: dict[str, Any]) -> None:
    assert verdict_doc(0, doc) is None


def card_info_doc(uuid: str, n: int) -> dict[str, Any]:
    return {**attempt_doc(n), "field_name": uuid, "type": "card-info", "value": "{}"}


def test_each_card_names_its_attempt() -> None:
    facts = started(0)
    assert not record(facts, MetaKind.CARD_INFO, T0 + 1, card_info_doc("a" * 32, 0))  # the default
    record(facts, MetaKind.ATTEMPT, T0 + 2, attempt_doc(1))
    assert record(facts, MetaKind.CARD_INFO, T0 + 3, card_info_doc("b" * 32, 1))
    assert card_attempt(facts, "a" * 32) == 0
    assert card_attempt(facts, "b" * 32) == 1
    assert card_attempt(TaskFacts(), "a" * 32) is None  # no attempt yet



def test_a_retried_tasks_card_read_from_s3_alone_has_no_attempt() -> None:
    facts = started(0)
    record(facts, MetaKind.ENDED, T0 + 1, attempt_doc(0))  # DONE.lock in an S3 task folder
    assert card_attempt(facts, "a" * 32) == 0  # one attempt: it wrote every card
    record(facts, MetaKind.ATTEMPT, T0 + 2, attempt_doc(1))
    assert card_attempt(facts, "a" * 32) is None  # which of the two? S3 does not say
    record(facts, MetaKind.CARD_INFO, T0 + 3, card_info_doc("b" * 32, 1))
    assert card_attempt(facts, "b" * 32) == 1  # a local _meta does

# --- run status ------------------------------------------------------------------------------

NOW = 10_000.0


def state(step: str, status: Status) -> TaskState:
    return TaskState(step, status)


def status_of(tasks: list[TaskState], quiet: float) -> Status:
    return run_status(tasks, NOW - quiet, NOW).status


def test_run_empty_is_pending() -> None:
    assert run_status([], NOW, NOW).status is Status.PENDING


def test_run_succeeds_when_end_succeeds() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("end", Status.SUCCEEDED)]
    assert status_of(tasks, 0) is Status.SUCCEEDED
    assert status_of(tasks, 10 * STALE_SECONDS) is Status.SUCCEEDED


def test_run_with_running_task_is_running_and_looks_again_when_it_would_go_stale() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("train", Status.RUNNING)]
    found = run_status(tasks, NOW - 5, NOW)
    assert found.status is Status.RUNNING
    assert found.recheck_at == NOW - 5 + STALE_SECONDS


def test_run_silent_for_long_with_tasks_marked_running_is_unknown() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("train", Status.RUNNING)]
    assert status_of(tasks, STALE_SECONDS) is Status.UNKNOWN
    assert run_status(tasks, NOW - STALE_SECONDS, NOW).recheck_at is None


def test_killed_siblings_fail_the_run_at_once() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("each", Status.FAILED),
             state("each", Status.KILLED), state("each", Status.KILLED)]
    assert status_of(tasks, 0) is Status.FAILED


def test_while_siblings_are_being_killed_the_run_still_runs() -> None:
    tasks = [state("each", Status.FAILED), state("each", Status.RUNNING), state("each", Status.KILLED)]
    assert status_of(tasks, 0) is Status.RUNNING


def test_killed_tasks_and_no_failure_is_a_stopped_run() -> None:
    """Ctrl-C to the runtime: it kills every worker, none raised."""
    tasks = [state("start", Status.SUCCEEDED), state("each", Status.KILLED), state("each", Status.KILLED)]
    assert status_of(tasks, 0) is Status.STOPPED


def test_a_lone_failure_waits_for_a_retry_before_failing_the_run() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("train", Status.FAILED)]
    early = run_status(tasks, NOW - 1, NOW)
    assert early.status is Status.RUNNING
    assert early.recheck_at == NOW - 1 + GRACE_SECONDS
    assert status_of(tasks, GRACE_SECONDS) is Status.FAILED


def test_between_steps_the_run_runs_then_its_runtime_is_gone() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("train", Status.SUCCEEDED)]
    assert status_of(tasks, 1) is Status.RUNNING
    assert status_of(tasks, GRACE_SECONDS) is Status.UNKNOWN  # SIGKILL: nothing next, ever


def test_a_pending_task_with_nothing_running_is_launched_at_once_or_never() -> None:
    tasks = [state("start", Status.SUCCEEDED), state("train", Status.PENDING)]
    assert status_of(tasks, 1) is Status.RUNNING
    assert status_of(tasks, GRACE_SECONDS) is Status.UNKNOWN


@pytest.mark.parametrize("task", [Status.RUNNING, Status.PENDING])
def test_tasks_still_marked_running_in_an_unknown_run_are_unknown(task: Status) -> None:
    assert shown_status(task, Status.UNKNOWN) is Status.UNKNOWN
    assert shown_status(task, Status.RUNNING) is task


@pytest.mark.parametrize("task", [Status.SUCCEEDED, Status.FAILED, Status.KILLED])
def test_finished_tasks_keep_their_status_whatever_the_run(task: Status) -> None:
    for run in Status:
        assert shown_status(task, run) is task
