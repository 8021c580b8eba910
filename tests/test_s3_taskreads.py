"""What the S3 source keeps of task-folder JSON, and what a local `_meta` adds to an S3 task view."""

from __future__ import annotations

from cardserver.s3.taskreads import slim, with_local_meta
from cardserver.taskinfo import AttemptFiles, TaskFolder


def test_an_artifact_index_is_kept_as_its_task_ok_name_only() -> None:
    index = {"objects": {"_task_ok": "868436", "model": "abc", **{f"x{i}": "f" * 40 for i in range(500)}},
             "info": {"model": {"size": 10}}}
    assert slim("data.json", index) == {"objects": {"_task_ok": "868436"}}
    assert slim("data.json", {"objects": "not a mapping"}) == {}
    assert slim("runtime", {"return_code": 0, "killed": False, "success": True}) == {
        "return_code": 0, "killed": False, "success": True}


def test_local_meta_adds_metadata_card_attempts_and_missing_verdicts() -> None:
    found = TaskFolder(attempts={0: AttemptFiles(attempt_ok=False), 1: AttemptFiles()})
    local = TaskFolder(attempts={0: AttemptFiles(attempt_ok=True), 1: AttemptFiles(attempt_ok=True)},
                       metadata={"user": "tester"}, card_attempts={"abc": 1})
    with_local_meta(found, local)
    assert found.metadata == {"user": "tester"} and found.card_attempts == {"abc": 1}
    # S3's own `_task_ok` stands; the local one fills only what S3 did not say
    assert [found.attempts[n].attempt_ok for n in (0, 1)] == [False, True]
