"""Reading one task folder (`cardserver.taskinfo`) and its path grammar in `layout`: verdicts
from each source, and nothing read through a link out of the datastore."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from cardserver.layout import TaskKey, parse_attempt_file, parse_sysmeta_name, task_of_path
from cardserver.taskinfo import AttemptFiles, read_page, read_task, task_detail, verdict

KEY = TaskKey("F", "1", "train", "2")
CAP = 64 * 1024


def test_attempt_and_sysmeta_names() -> None:
    assert parse_attempt_file("1.runtime") == (1, "runtime")
    assert parse_attempt_file("0.runtime_stderr.log") == (0, "runtime_stderr.log")
    assert parse_attempt_file("0.data.json") is None and parse_attempt_file("x.runtime") is None
    assert parse_sysmeta_name("sysmeta_attempt-done_1795951026521.json") == ("attempt-done", 1795951026521)
    assert parse_sysmeta_name("sysmeta_python_version_12.json") == ("python_version", 12)
    assert parse_sysmeta_name("0_artifact_name.json") is None


def test_task_of_path_in_both_trees() -> None:
    assert task_of_path(PurePosixPath("F/1/train/2/0.runtime"), cards=False) == KEY
    assert task_of_path(PurePosixPath("F/1/train/2/_meta/_self.json"), cards=False) == KEY
    assert task_of_path(PurePosixPath("F/1/train"), cards=False) is None
    assert task_of_path(PurePosixPath("F/data/ab/abcdef/x"), cards=False) is None
    card = "F/runs/1/steps/train/tasks/2/cards/blank-0123456789abcdef0123456789abcdef.html"
    assert task_of_path(PurePosixPath(card), cards=True) == KEY
    update = "F/runs/1/steps/train/tasks/2/runtime/blank-0123456789abcdef0123456789abcdef.data.json"
    assert task_of_path(PurePosixPath(update), cards=True) is None


def write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def stat_of(tmp_path: Path) -> os.stat_result:
    (tmp_path / "probe").write_text("")
    return (tmp_path / "probe").stat()


@pytest.mark.parametrize(
    ("runtime", "attempt_ok", "ended", "latest", "expected"),
    [
        ({"return_code": 0, "killed": False, "success": True}, None, True, True, "succeeded"),
        ({"return_code": 1, "killed": False, "success": False}, True, True, True, "failed"),  # runtime wins
        ({"return_code": -9, "killed": True, "success": False}, None, False, True, "killed"),
        (None, False, True, True, "failed"),
        (None, None, True, True, "finished"),
        (None, None, False, True, "running"),
        (None, None, False, False, "killed"),  # a retry followed an attempt that never ended
    ],
)
def test_verdict_sources(tmp_path: Path, runtime: dict[str, object] | None, attempt_ok: bool | None,
                         ended: bool, latest: bool, expected: str) -> None:
    files = AttemptFiles(verdict=runtime, attempt_ok=attempt_ok)
    if ended:
        files.stats["task_end"] = stat_of(tmp_path)
    assert verdict(files, latest) == expected


def test_running_task_of_a_killed_run_is_killed(tmp_path: Path) -> None:
    folder = tmp_path / "F/1/train/2"
    write(folder / "0.attempt.json", {"time": 1.0})
    found = read_task(tmp_path, KEY, CAP)
    assert task_detail(KEY, found, [], "running")["status"] == "running"
    assert task_detail(KEY, found, [], "killed")["status"] == "killed"


def test_links_out_of_the_datastore_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "_meta" / "sysmeta_user_1.json", {"value": "intruder", "tags": []})
    write(outside / "0.runtime", {"return_code": 0, "killed": False, "success": True})
    datastore = tmp_path / "ds"
    (datastore / "F/1/train").mkdir(parents=True)
    (datastore / "F/1/train/2").symlink_to(outside)
    assert read_task(datastore, KEY, CAP) is None  # the task folder itself is a link out
    folder = datastore / "F/1/train/3"
    folder.mkdir()
    (folder / "_meta").symlink_to(outside / "_meta")
    (folder / "0.runtime").symlink_to(outside / "0.runtime")
    (outside / "secret.txt").write_text("secret\n")
    (folder / "0.runtime_stdout.log").symlink_to(outside / "secret.txt")
    found = read_task(datastore, TaskKey("F", "1", "train", "3"), CAP)
    assert found is not None and found.attempts == {} and "user" not in found.metadata
    assert read_page(datastore, TaskKey("F", "1", "train", "3"), "stdout", 0, 10, None, None) is None
