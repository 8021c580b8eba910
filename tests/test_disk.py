"""Reading the datastore (cardserver.disk): one file into an event, the whole tree into events."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardserver import demo
from cardserver.config import Limits, Roots
from cardserver.disk import (
    Problem,
    Scope,
    card_event,
    datastore_event,
    read_data_update,
    read_json,
    scan,
)
from cardserver.events import (
    CardData,
    CardPage,
    CardWritten,
    DataUpdate,
    DataWritten,
    Encoded,
    Event,
    MetaFile,
    Reset,
    RunWritten,
    TaskCardsRead,
    TaskMetaRead,
    TaskMetaWritten,
)
from cardserver.index import Index
from cardserver.layout import LEGACY_STEP, CardKey, MetaKind, RunKey, TaskKey
from cardserver.status import Status

LIMITS = Limits()
ALL = Scope()


def of(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def metas(events: list[Event]) -> dict[TaskKey, list[MetaFile]]:
    return {e.key: list(e.files) for e in of(events, TaskMetaRead)}


def pages(events: list[Event]) -> dict[CardKey, CardPage]:
    return {CardKey(e.task, p[0]): p for e in of(events, TaskCardsRead) for p in e.pages}


def data_files(events: list[Event]) -> dict[CardKey, CardData]:
    return {CardKey(e.task, d[0]): d for e in of(events, TaskCardsRead) for d in e.data}


# --- scan ------------------------------------------------------------------------------------


def test_scan_reads_runs_tasks_and_cards_but_not_data_updates(roots: Roots) -> None:
    run = demo.write_fixture_run(roots.datastore, "ScanFlow", tasks=2, cards_per_task=2)
    events, problems = scan(roots, LIMITS, ALL)
    assert problems == []

    assert [e.key for e in of(events, RunWritten)] == [run.key]
    run_event = of(events, RunWritten)[0]
    assert run_event.user == "demo"
    assert run_event.created is not None

    tasks = metas(events)
    # start (task 2), work 3 and 4, end 5: the `_parameters` pseudo step (task 1) is not a task.
    assert set(tasks) == {
        TaskKey("ScanFlow", run.run, "start", "2"),
        TaskKey("ScanFlow", run.run, "work", "3"),
        TaskKey("ScanFlow", run.run, "work", "4"),
        TaskKey("ScanFlow", run.run, "end", "5"),
    }
    assert len(of(events, TaskMetaRead)) == len(tasks)  # one event per task
    for files in tasks.values():
        # One attempt, ok True: its cards' attempt and its verdict tell nothing more, unread.
        unread = (MetaKind.CARD_INFO, MetaKind.VERDICT, MetaKind.ENDED)  # ENDED is S3's
        read = sorted(k.value for k in MetaKind if k not in unread)
        assert sorted(kind.value for kind, _, _ in files) == read
        verdict = next(doc for kind, _, doc in files if kind is MetaKind.ATTEMPT_OK)
        assert verdict["value"] == "True"

    cards = pages(events)
    on_disk = sorted(roots.cards.rglob("*.html"))
    assert len(on_disk) >= 6  # start, end and 2 x 2 in work
    assert len(cards) == len(on_disk)
    assert {key.task for key in cards} == set(tasks)
    assert all(size > 0 and version for _, _, size, version in cards.values())
    assert not any(e.legacy for e in of(events, TaskCardsRead))
    assert set(data_files(events)) == set(cards)  # every finished card has a final update
    assert of(events, DataWritten) == []  # the scan leaves updates for a lazy read


def test_scan_versions_a_card_as_the_single_file_reader_does(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="VersionFlow")
    card = run.start_task("start").add_card()
    events, _ = scan(roots, LIMITS, ALL)
    one = card_event(roots, card.path_html, LIMITS, ALL)
    assert isinstance(one, CardWritten)
    assert pages(events)[card.key] == (card.key.name, one.mtime, one.size, one.version)


def test_scan_skips_artifacts_step_meta_and_strays(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="StrayFlow")
    task = run.start_task("start")
    task.add_card()
    flow_dir = roots.datastore / "StrayFlow"
    (flow_dir / "data" / "ab").mkdir(parents=True)
    (flow_dir / "data" / "ab" / "abcdef").write_bytes(b"\x00" * 64)
    (flow_dir / "data" / "_meta").mkdir()
    (flow_dir / "data" / "_meta" / "_self.json").write_text("{}")
    cards_dir = task.cards[0].path_html.parent
    (cards_dir / "tmpab12cd34").write_text("half")
    (cards_dir / "notes.txt").write_text("x")
    (cards_dir / f"blank-{'f' * 32}.html").mkdir()  # a folder named like a card is not one
    (task.meta_dir / "sysmeta_attempt-done_123.json").mkdir()  # nor one named like a status file
    (roots.datastore / "not a flow").mkdir()
    (flow_dir / "not a run").mkdir()
    (flow_dir / run.run / "start" / "77").write_text("a file where a task folder would be")

    events, problems = scan(roots, LIMITS, ALL)
    assert problems == []
    assert [e.key for e in of(events, RunWritten)] == [run.key]
    assert list(metas(events)) == [task.key]
    assert MetaKind.ATTEMPT_DONE not in [kind for kind, _, _ in metas(events)[task.key]]
    assert list(pages(events)) == [task.cards[0].key]
    assert data_files(events) == {}  # a card that was never refreshed has no update


def test_scan_reads_legacy_cards_and_id_names(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OldFlow")
    task = run.start_task("start")
    old = task.add_card(legacy=True)
    named = task.add_card(id="training")
    events, _ = scan(roots, LIMITS, ALL)
    legacy_task = TaskKey("OldFlow", run.run, LEGACY_STEP, task.key.task)
    by_task = {e.task: e for e in of(events, TaskCardsRead)}
    assert by_task[legacy_task].legacy
    assert [p[0] for p in by_task[legacy_task].pages] == [old.key.name]
    assert not by_task[task.key].legacy
    assert [p[0] for p in by_task[task.key].pages] == [named.key.name]
    assert named.key.name.startswith("blank-training-")


def test_scan_of_a_missing_datastore_is_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / ".metaflow"
    assert scan(Roots(missing, missing / "mf.cards"), LIMITS, ALL) == ([], [])


def test_scan_reports_a_broken_run_self_and_keeps_going(roots: Roots) -> None:
    bad = demo.start_run(roots.datastore, flow="BrokenFlow")
    good = demo.start_run(roots.datastore, flow="BrokenFlow")
    self_path = roots.datastore / "BrokenFlow" / bad.run / "_meta" / "_self.json"
    self_path.write_text('{"run_number": ')
    events, problems = scan(roots, LIMITS, ALL)
    assert [e.key for e in of(events, RunWritten)] == [good.key]
    assert problems == [Problem(self_path, "not valid JSON (half written?)")]


def test_scan_reads_attempt_files_when_a_task_was_retried(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="RetryFlow")
    task = run.start_task("train")
    task.finish(ok=False)
    task.retry()
    events, _ = scan(roots, LIMITS, ALL)
    files = metas(events)[task.key]
    attempts = sorted((ts, doc["value"]) for kind, ts, doc in files if kind is MetaKind.ATTEMPT)
    assert [value for _, value in attempts] == ["0", "1"]
    assert "flow_id" not in files[0][2]  # slimmed to what status reads


def test_scan_reports_a_broken_verdict_and_keeps_the_rest_of_the_task(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="RetryFlow")
    task = run.start_task("train")
    task.finish(ok=False)
    task.retry()
    verdict = next(task.meta_dir.glob("sysmeta_attempt_ok_*.json"))
    verdict.write_text('{"value": ')
    events, problems = scan(roots, LIMITS, ALL)
    assert problems == [Problem(verdict, "not valid JSON (half written?)")]
    kinds = sorted(kind.value for kind, _, _ in metas(events)[task.key])
    # attempt 0 has no readable attempt_ok, so its verdict is read: it still says "failed"
    assert kinds == sorted(["task", "attempt", "attempt", "attempt-done", "runtime"])


def test_scan_builds_the_index_that_reading_every_file_builds(roots: Roots) -> None:
    """The scan's one event per task stands for the one-file events of its files: the index
    must end the same either way, for every kind of run."""
    run, flaky = write_every_kind_of_run(roots)
    events, problems = scan(roots, LIMITS, ALL)
    assert problems == []
    bulk, one_by_one = Index(), Index()
    bulk_changes = bulk.apply([Reset(tuple(events))])
    written = sorted(roots.datastore.rglob("*"), key=lambda p: (p.suffix == ".runtime", p))  # verdicts last
    per_file = [read_one(roots, path) for path in written if path.is_file()]
    one_by_one_changes = one_by_one.apply([Reset(tuple(e for e in per_file if e is not None))])
    assert bulk.flows == one_by_one.flows
    assert bulk_changes == one_by_one_changes
    shown = {t.shown for t in bulk.run(run.key).tasks.values()}  # type: ignore[union-attr]
    assert {Status.SUCCEEDED, Status.FAILED} <= shown  # the run is one worth comparing
    assert bulk.task(flaky.key).summary()["attempt"] == 2  # type: ignore[union-attr]
    assert len(bulk.task(flaky.key).cards) == 2  # type: ignore[union-attr]


def write_every_kind_of_run(roots: Roots) -> tuple[demo.DemoRun, demo.DemoTask]:
    """Finished and live runs, retries, a killed attempt, old-layout, named and orphan cards;
    returns the run with the odd tasks and its retried task."""
    demo.write_fixture_run(roots.datastore, "SameFlow", tasks=3, cards_per_task=2)
    demo.write_fixture_run(roots.datastore, "SameFlow", tasks=2, finished=False, system_meta=True)
    run = demo.start_run(roots.datastore, flow="SameFlow")
    run.start_task("start").finish()
    flaky = run.start_task("train")
    flaky.add_card().update({})
    flaky.finish(ok=False)
    flaky.retry()  # attempt 1 was killed: it never got a verdict
    flaky.retry()
    flaky.add_card(legacy=True)
    flaky.finish(ok=True)
    run.start_task("train").finish(ok=False)
    silent = run.start_task("train")
    silent.add_card(legacy=True)
    silent.add_card(id="named")
    orphan = demo.DemoTask(TaskKey("SameFlow", run.run, "train", "99"), run)
    orphan.add_card(legacy=True)  # an old-layout card whose task has no status files
    return run, flaky


def read_one(roots: Roots, path: Path) -> Event | None:
    """What the watcher's path makes of one file, with the two reads the scan leaves out."""
    found = datastore_event(roots, path, LIMITS, ALL) or card_event(roots, path, LIMITS, ALL)
    if isinstance(found, TaskMetaWritten) and found.kind is MetaKind.TASK_SELF:
        return TaskMetaWritten(found.key, found.kind, found.ts, {})  # the run's _self names the user
    if isinstance(found, DataWritten):
        return DataWritten(found.key, found.legacy, found.mtime, None)  # read when shown
    assert not isinstance(found, Problem)
    return found


# --- scope -----------------------------------------------------------------------------------


def test_scope_by_flow(roots: Roots) -> None:
    a = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    demo.write_fixture_run(roots.datastore, "BFlow", tasks=1)
    events, _ = scan(roots, LIMITS, Scope(flow="AFlow"))
    assert {e.key.flow for e in of(events, RunWritten)} == {"AFlow"}
    assert {key.flow for key in metas(events)} == {"AFlow"}
    assert {e.task.flow for e in of(events, TaskCardsRead)} == {"AFlow"}
    assert of(events, RunWritten)[0].key == a.key


def test_scope_by_run(roots: Roots) -> None:
    old = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    new = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    events, _ = scan(roots, LIMITS, Scope(flow="AFlow", run=old.run))
    assert [e.key for e in of(events, RunWritten)] == [old.key]
    assert {key.run for key in metas(events)} == {old.run}
    assert {e.task.run for e in of(events, TaskCardsRead)} == {old.run}
    assert new.run != old.run


def test_scope_by_run_looks_at_no_other_run(roots: Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-reading one run of a flow with many must not list the others' folders, or the flow's."""
    wanted = demo.write_fixture_run(roots.datastore, "AFlow", tasks=2)
    other = demo.write_fixture_run(roots.datastore, "AFlow", tasks=2)
    whole, _ = scan(roots, LIMITS, Scope(flow="AFlow", run=wanted.run))
    seen: list[tuple[str, str]] = []
    for name in ("scandir", "listdir", "lstat", "stat", "open"):
        monkeypatch.setattr(os, name, spy(name, getattr(os, name), seen))
    events, problems = scan(roots, LIMITS, Scope(flow="AFlow", run=wanted.run))
    assert (events, problems) == (whole, [])
    assert seen and not [path for _, path in seen if other.run in path]
    listed = {os.path.normpath(path) for call, path in seen if call in ("scandir", "listdir")}
    flow_folders = {str(roots.datastore), str(roots.datastore / "AFlow"), str(roots.cards / "AFlow" / "runs")}
    assert not listed & flow_folders


def spy(name: str, real: Any, seen: list[tuple[str, str]]) -> Any:
    def spied(path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((name, os.fspath(path)))
        return real(path, *args, **kwargs)

    return spied


@pytest.mark.parametrize("name", ["data", "_meta", "..", "../AFlow", "AFlow/..", "no such run", "", "a\0b"])
def test_a_scope_naming_no_flow_or_run_reads_nothing(roots: Roots, name: str) -> None:
    demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    assert scan(roots, LIMITS, Scope(flow="AFlow", run=name)) == ([], [])
    if name:
        assert scan(roots, LIMITS, Scope(flow=name)) == ([], [])


def test_scope_applies_to_single_files(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="AFlow")
    task = run.start_task("start")
    card = task.add_card()
    scope = Scope(flow="BFlow")
    assert card_event(roots, card.path_html, LIMITS, scope) is None
    self_file = roots.datastore / "AFlow" / run.run / "_meta" / "_self.json"
    assert datastore_event(roots, self_file, LIMITS, scope) is None
    assert isinstance(datastore_event(roots, self_file, LIMITS, ALL), RunWritten)


def test_scope_wants() -> None:
    assert Scope().wants("A", "1")
    assert Scope("A").wants("A", "1") and not Scope("A").wants("B", "1")
    assert Scope("A", "1").wants("A") and Scope("A", "1").wants("A", "1")
    assert not Scope("A", "1").wants("A", "2")


# --- single files ----------------------------------------------------------------------------


def test_card_event_reads_a_data_update(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OneFlow")
    card = run.start_task("start").add_card(components=[demo.progress("p", 0, 5)])
    card.update({"p": {"value": 3}})
    event = card_event(roots, card.path_data, LIMITS, ALL)
    assert isinstance(event, DataWritten)
    assert event.update is not None
    assert event.update.token == card.token
    assert json.loads(event.update.data["p"])["value"] == 3  # sent on as the JSON text it was


def test_card_event_ignores_temp_files(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OneFlow")
    card = run.start_task("start").add_card()
    fd, tmp = tempfile.mkstemp(dir=card.path_html.parent)
    os.close(fd)
    assert card_event(roots, Path(tmp), LIMITS, ALL) is None
    assert card_event(roots, roots.datastore / "elsewhere.html", LIMITS, ALL) is None


def test_datastore_event_reads_task_meta(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OneFlow")
    task = run.start_task("start")
    task.finish(ok=False)
    ok_file = next(task.meta_dir.glob("sysmeta_attempt_ok_*.json"))
    event = datastore_event(roots, ok_file, LIMITS, ALL)
    assert isinstance(event, TaskMetaWritten)
    assert event.kind is MetaKind.ATTEMPT_OK
    assert event.doc["value"] == "False"
    assert "flow_id" not in event.doc  # slimmed to what status reads
    runtime_file = next(task.meta_dir.glob("sysmeta_runtime_*.json"))
    assert datastore_event(roots, runtime_file, LIMITS, ALL) is None


def test_datastore_event_ignores_cards_under_the_datastore(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OneFlow")
    card = run.start_task("start").add_card()
    assert datastore_event(roots, card.path_html, LIMITS, ALL) is None


# --- read_json -------------------------------------------------------------------------------


def test_read_json_cap_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    doc = {"k": "x" * 100}
    raw = json.dumps(doc).encode()
    path.write_bytes(raw)
    assert read_json(path, len(raw), tmp_path) == doc
    assert read_json(str(path), len(raw), tmp_path) == doc  # the scan's plain strings
    problem = read_json(path, len(raw) - 1, tmp_path)
    assert isinstance(problem, Problem)
    assert problem.reason.startswith("too large")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"reload_token": "runtime-1", "data": {', "not valid JSON (half written?)"),
        (b"", "not valid JSON (half written?)"),
        (b"\xff\xfe\x00garbage\x89PNG", "not valid JSON (half written?)"),
        ("{\"k\": \"caf\u00e9\"}".encode("latin-1"), "not valid JSON (half written?)"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (half written?)"),
    ],
    ids=["half-written", "empty", "binary", "latin-1", "list", "string", "deep"],
)
def test_read_json_problems(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(content)
    assert read_json(path, 1 << 20, tmp_path) == Problem(path, reason)


def test_read_json_missing_and_folder(tmp_path: Path) -> None:
    gone = tmp_path / "gone.json"
    assert read_json(gone, 100, tmp_path) == Problem(gone, "vanished before it could be read")
    assert read_json(str(gone), 100, tmp_path) == Problem(gone, "vanished before it could be read")
    (tmp_path / "dir.json").mkdir()
    assert read_json(tmp_path / "dir.json", 100, tmp_path) == Problem(tmp_path / "dir.json", "is a folder")


def test_read_json_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.json"
    path.write_text("{}")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the mode: make the OS say no the same way
        real_open = os.open

        def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    try:
        problem = read_json(path, 100, tmp_path)
    finally:
        path.chmod(0o644)
    assert isinstance(problem, Problem)
    assert problem.reason == "unreadable (Permission denied)"


def test_read_data_update_shapes(tmp_path: Path) -> None:
    path = tmp_path / "blank-abc.data.json"
    path.write_text(json.dumps({"reload_token": "runtime-1", "created_on": 12.5, "data": {"a": {"v": 1}}}))
    expected = DataUpdate("runtime-1", 12.5, {"a": Encoded('{"v":1}')})
    assert read_data_update(path, LIMITS, tmp_path) == expected
    path.write_text(json.dumps({"reload_token": "runtime-1", "data": {}}))
    assert read_data_update(path, LIMITS, tmp_path) == DataUpdate("runtime-1", 0.0, {})
    path.write_text(json.dumps({"reload_token": 5, "data": {}}))
    assert read_data_update(path, LIMITS, tmp_path) == Problem(path, "not a card data update")
    path.write_text(json.dumps({"reload_token": "t", "data": []}))
    assert read_data_update(path, LIMITS, tmp_path) == Problem(path, "not a card data update")


def test_read_data_update_respects_max_data_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blank-abc.data.json"
    path.write_text(json.dumps({"reload_token": "t", "data": {"a": "x" * 2000}}))
    update = read_data_update(path, Limits(max_data_bytes=1000), tmp_path)
    assert isinstance(update, Problem) and update.reason.startswith("too large")


def test_out_of_range_numbers_do_not_raise(tmp_path: Path) -> None:
    """Python's json reads NaN, Infinity and 400-digit integers; none of them may escape as an
    exception or as a float that later cannot be written back as JSON."""
    path = tmp_path / "blank-abc.data.json"
    path.write_text('{"reload_token": "t", "created_on": ' + "9" * 400 + ', "data": {"a": {"v": NaN}}}')
    update = read_data_update(path, LIMITS, tmp_path)
    assert isinstance(update, DataUpdate)
    assert update.data == {"a": '{"v":null}'}  # sent on as strict JSON
    assert update.created_on == 0.0
    path.write_text('{"reload_token": "t", "created_on": Infinity, "data": {"a": -Infinity}}')
    update = read_data_update(path, LIMITS, tmp_path)
    assert isinstance(update, DataUpdate)
    assert update.data == {"a": "null"}
    json.dumps(update.created_on, allow_nan=False)


def test_run_self_with_absurd_timestamp(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OddFlow")
    path = roots.datastore / "OddFlow" / run.run / "_meta" / "_self.json"
    path.write_text('{"ts_epoch": ' + "9" * 400 + ', "system_tags": ["user:x"]}')
    event = datastore_event(roots, path, LIMITS, ALL)
    assert event == RunWritten(RunKey("OddFlow", run.run), None, "x")
    events, problems = scan(roots, LIMITS, ALL)
    assert RunWritten(RunKey("OddFlow", run.run), None, "x") in events
    assert problems == []
    path.write_text('{"ts_epoch": Infinity}')
    assert datastore_event(roots, path, LIMITS, ALL) == RunWritten(RunKey("OddFlow", run.run), None, None)


# --- never raises ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**305, max_value=10**312)  # around the float range's edge
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
numbers = st.integers() | st.integers(min_value=10**305, max_value=10**312) | st.floats()
update_like = st.fixed_dictionaries(
    {"reload_token": st.text(max_size=10), "data": st.dictionaries(st.text(max_size=8), json_values)},
    optional={"created_on": numbers | json_values},
) | st.fixed_dictionaries(
    {}, optional={"reload_token": json_values, "created_on": json_values, "data": json_values}
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()  # allow_nan: Python writers do put NaN in files


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=300)
    | update_like.map(encoded)
    | json_values.map(encoded)
    | update_like.map(encoded).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))
)
def test_reading_any_bytes_never_raises(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "blank-abc.data.json"
    path.write_bytes(raw)
    doc = read_json(path, 4096, tmp_path)
    assert isinstance(doc, dict | Problem)
    update = read_data_update(path, Limits(max_data_bytes=4096), tmp_path)
    assert isinstance(update, DataUpdate | Problem)
    if isinstance(update, DataUpdate):
        assert isinstance(update.token, str) and isinstance(update.data, dict)
        # what we read can always be sent on as strict JSON
        json.dumps(update.created_on, allow_nan=False)
        for text in update.data.values():
            assert isinstance(text, Encoded)
            json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} sent on"))
