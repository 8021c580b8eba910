"""S3 keys below the card root are the local layout, so layout.py classifies them; a task's
status from its S3 task folder alone (no `_meta`), on what real runs wrote to moto."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
from s3fixtures import REGION, S3Endpoint, S3Run

from cardserver.layout import LEGACY_STEP, CardFileKind, parse_card_path
from cardserver.s3.client import Got, S3Reader
from cardserver.s3.settings import S3Root
from cardserver.s3.taskfiles import (
    READ_KINDS,
    TASK_OK_NAMES,
    TaskObject,
    attempt_of,
    facts_from_objects,
    s3_task_status,
)
from cardserver.status import Status

OK_NAME = {value: name for name, value in TASK_OK_NAMES.items()}


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


async def read_task_folder(reader: S3Reader, root: S3Root, folder: str) -> list[TaskObject]:
    """List a task folder and read the objects status needs, as the S3 source will."""
    found = []
    for item in await reader.list_tree(root, folder):
        name = item.key.rsplit("/", 1)[1]
        kind = attempt_of(name)
        doc = None
        if kind and kind[1] in READ_KINDS:
            fetched = await reader.get(root.bucket, item.key)
            assert fetched.outcome is Got.NEW
            doc = json.loads(fetched.body)
        found.append(TaskObject(name, item.modified, doc))
    return found


async def test_card_keys_a_real_run_wrote_parse_with_layout(
    s3_server: S3Endpoint, s3_card_run: S3Run
) -> None:
    cards = S3Root(s3_server.bucket, s3_card_run.prefix + "mf.cards")
    async with S3Reader(s3_server.url) as reader:
        objects = await reader.list_tree(cards, f"{s3_card_run.flow}/runs/{s3_card_run.run_id}/")
    parsed = [parse_card_path(PurePosixPath(item.key.removeprefix(cards.folder))) for item in objects]
    assert len(parsed) == 2 and all(parsed)
    kinds = {found.kind: found for found in parsed if found}
    html, data = kinds[CardFileKind.HTML], kinds[CardFileKind.DATA]
    assert html.key == data.key and not html.legacy
    task = html.key.task
    assert (task.flow, task.run, task.step) == (s3_card_run.flow, s3_card_run.run_id, "start")


async def test_legacy_card_keys_parse_with_layout(s3_server: S3Endpoint) -> None:
    cards = S3Root(s3_server.bucket, "legacy/mf.cards")
    uuid = "0123456789abcdef0123456789abcdef"
    task = ("OldFlow", "runs", "7", "tasks", "3")  # no steps/<step>/: written before mid-2022
    s3_server.put_many({cards.key(*task, "cards", f"default-{uuid}.html"): b"<html>",
                        cards.key(*task, "runtime", f"default-{uuid}.data.json"): b"{}"})
    async with S3Reader(s3_server.url) as reader:
        objects = await reader.list_tree(cards)
    parsed = [parse_card_path(PurePosixPath(item.key.removeprefix(cards.folder))) for item in objects]
    assert {(p.kind, p.key.task.step, p.legacy) for p in parsed if p} == {
        (CardFileKind.HTML, LEGACY_STEP, True), (CardFileKind.DATA, LEGACY_STEP, True)}


async def test_status_of_real_tasks_from_their_s3_folders(s3_server: S3Endpoint, s3_card_run: S3Run) -> None:
    datastore = S3Root(s3_server.bucket, s3_card_run.prefix.rstrip("/"))
    async with S3Reader(s3_server.url) as reader:
        for step in ("start", "end"):
            listing = await reader.list_folder(datastore, f"{s3_card_run.flow}/{s3_card_run.run_id}/{step}/")
            [task] = listing.folders
            objects = await read_task_folder(reader, datastore, task.removeprefix(datastore.folder))
            assert all(attempt_of(item.name) for item in objects)  # every file there is one we know
            facts = facts_from_objects(objects)
            assert s3_task_status(facts) is Status.SUCCEEDED
            assert facts.attempts[0].ok is True  # from the artifact index alone, not the verdict
            assert facts.attempts[0].started is not None and facts.attempts[0].done is not None


def attempt_files(attempt: int, *, ok: bool | None = None, verdict: dict[str, object] | None = None,
                  done: bool = True) -> list[TaskObject]:
    files = [TaskObject(f"{attempt}.attempt.json", 100.0 + attempt, {"time": 99.5 + attempt}),
             TaskObject(f"{attempt}.task_begin", 100.0 + attempt)]
    if done:
        files += [TaskObject(f"{attempt}.task_end", 110.0 + attempt),
                  TaskObject(f"{attempt}.DONE.lock", 110.0 + attempt)]
    if ok is not None:
        files.append(TaskObject(f"{attempt}.data.json", 110.0, {"objects": {"_task_ok": OK_NAME[ok]}}))
    if verdict is not None:
        files.append(TaskObject(f"{attempt}.runtime", 111.0, verdict))
    return files


@pytest.mark.parametrize(("files", "status"), [
    ([], Status.PENDING),
    (attempt_files(0, done=False), Status.RUNNING),
    (attempt_files(0, ok=False), Status.FAILED),  # a failed attempt's index names pickle(False)
    (attempt_files(0), Status.UNKNOWN),  # ended (task_end, DONE.lock) and nothing says how
    (attempt_files(0, ok=True, verdict={"return_code": 0, "killed": True, "success": False}), Status.KILLED),
    (attempt_files(0, ok=False) + attempt_files(1, done=False), Status.RUNNING),  # a retry under way
    (attempt_files(0, ok=False) + attempt_files(1, ok=True), Status.SUCCEEDED),
    (attempt_files(0, verdict={"return_code": 1, "killed": False, "success": False}), Status.FAILED),
])
def test_status_from_task_folder_files(files: list[TaskObject], status: Status) -> None:
    assert s3_task_status(facts_from_objects(files)) is status


def test_the_task_ok_names_are_the_ones_metaflow_wrote() -> None:
    """The names seen in moto for `_task_ok` of a succeeded and a failed task (docs/s3.md)."""
    assert OK_NAME[True] == "868436778cb011a1c6230bc12534683ab0b7f1c3"
    assert OK_NAME[False] == "2473d4676d5b2aba674167293142f8031ada401b"


async def test_a_failed_task_is_failed_from_its_s3_folder_with_or_without_the_verdict(
    s3_server: S3Endpoint, s3_failed_run: S3Run
) -> None:
    run = s3_failed_run
    datastore = S3Root(s3_server.bucket, run.prefix.rstrip("/"))
    async with S3Reader(s3_server.url) as reader:
        objects = await read_task_folder(reader, datastore, f"{run.flow}/{run.run_id}/start/1/")
    names = {item.name for item in objects}
    assert {"0.task_end", "0.DONE.lock", "0.runtime", "0.data.json"} <= names  # written in a finally
    assert s3_task_status(facts_from_objects(objects)) is Status.FAILED
    # A remote step's folder has no verdict when no local runtime reaped it: the index still tells
    without_verdict = [item for item in objects if item.name != "0.runtime"]
    facts = facts_from_objects(without_verdict)
    assert facts.attempts[0].ok is False and s3_task_status(facts) is Status.FAILED
