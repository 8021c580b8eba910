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
from cardserver.events import CardWritten, DataUpdate, DataWritten, Event, RunWritten, TaskMetaWritten
from cardserver.layout import LEGACY_STEP, CardKey, MetaKind, RunKey, TaskKey

LIMITS = Limits()
ALL = Scope()


def of(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# --- scan ------------------------------------------------------------------------------------


def test_scan_reads_runs_tasks_and_cards_but_not_data_updates(roots: Roots) -> None:
    run = demo.write_fixture_run(roots.datastore, "ScanFlow", tasks=2, cards_per_task=2)
    events, problems = scan(roots, LIMITS, ALL)
    assert problems == []

    assert [e.key for e in of(events, RunWritten)] == [run.key]
    run_event = of(events, RunWritten)[0]
    assert run_event.user == "demo"
    assert run_event.created is not None

    metas = of(events, TaskMetaWritten)
    tasks = {e.key for e in metas}
    # start (task 2), work 3 and 4, end 5: the `_parameters` pseudo step (task 1) is not a task.
    assert tasks == {
        TaskKey("ScanFlow", run.run, "start", "2"),
        TaskKey("ScanFlow", run.run, "work", "3"),
        TaskKey("ScanFlow", run.run, "work", "4"),
        TaskKey("ScanFlow", run.run, "end", "5"),
    }
    for key in tasks:
        kinds = sorted(e.kind.value for e in metas if e.key == key)
        assert kinds == sorted(k.value for k in MetaKind)

    cards = of(events, CardWritten)
    on_disk = sorted(roots.cards.rglob("*.html"))
    assert len(on_disk) >= 6  # start, end and 2 x 2 in work
    assert len(cards) == len(on_disk)
    assert {c.key.task for c in cards} == tasks
    assert all(c.size > 0 and c.version and not c.legacy for c in cards)
    data = of(events, DataWritten)
    assert {d.key for d in data} == {c.key for c in cards}  # every finished card has a final update
    assert all(d.update is None for d in data)  # the scan leaves them for a lazy read


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
    (roots.datastore / "not a flow").mkdir()

    events, problems = scan(roots, LIMITS, ALL)
    assert problems == []
    assert [e.key for e in of(events, RunWritten)] == [run.key]
    assert {e.key for e in of(events, TaskMetaWritten)} == {task.key}
    assert [e.key for e in of(events, CardWritten)] == [task.cards[0].key]
    assert of(events, DataWritten) == []  # a card that was never refreshed has no update


def test_scan_reads_legacy_cards_and_id_names(roots: Roots) -> None:
    run = demo.start_run(roots.datastore, flow="OldFlow")
    task = run.start_task("start")
    old = task.add_card(legacy=True)
    named = task.add_card(id="training")
    events, _ = scan(roots, LIMITS, ALL)
    by_key = {e.key: e for e in of(events, CardWritten)}
    legacy_key = CardKey(TaskKey("OldFlow", run.run, LEGACY_STEP, task.key.task), old.key.name)
    assert by_key[legacy_key].legacy
    assert not by_key[named.key].legacy
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
    attempts = sorted(
        (e.ts, e.doc["value"]) for e in of(events, TaskMetaWritten) if e.kind is MetaKind.ATTEMPT
    )
    assert [value for _, value in attempts] == ["0", "1"]


# --- scope -----------------------------------------------------------------------------------


def test_scope_by_flow(roots: Roots) -> None:
    a = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    demo.write_fixture_run(roots.datastore, "BFlow", tasks=1)
    events, _ = scan(roots, LIMITS, Scope(flow="AFlow"))
    assert {e.key.flow for e in of(events, RunWritten)} == {"AFlow"}
    assert {e.key.flow for e in of(events, TaskMetaWritten)} == {"AFlow"}
    assert {e.key.task.flow for e in of(events, CardWritten)} == {"AFlow"}
    assert of(events, RunWritten)[0].key == a.key


def test_scope_by_run(roots: Roots) -> None:
    old = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    new = demo.write_fixture_run(roots.datastore, "AFlow", tasks=1)
    events, _ = scan(roots, LIMITS, Scope(flow="AFlow", run=old.run))
    assert [e.key for e in of(events, RunWritten)] == [old.key]
    assert {e.key.run for e in of(events, TaskMetaWritten)} == {old.run}
    assert {e.key.task.run for e in of(events, CardWritten)} == {old.run}
    assert new.run != old.run


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
    assert event.update.data["p"]["value"] == 3


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
    assert read_json(path, len(raw)) == doc
    problem = read_json(path, len(raw) - 1)
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
    assert read_json(path, 1 << 20) == Problem(path, reason)


def test_read_json_missing_and_folder(tmp_path: Path) -> None:
    gone = tmp_path / "gone.json"
    assert read_json(gone, 100) == Problem(gone, "vanished before it could be read")
    (tmp_path / "dir.json").mkdir()
    assert read_json(tmp_path / "dir.json", 100) == Problem(tmp_path / "dir.json", "is a folder")


def test_read_json_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.json"
    path.write_text("{}")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the mode: make the OS say no the same way
        real_open = Path.open

        def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    try:
        problem = read_json(path, 100)
    finally:
        path.chmod(0o644)
    assert isinstance(problem, Problem)
    assert problem.reason == "unreadable (Permission denied)"


def test_read_data_update_shapes(tmp_path: Path) -> None:
    path = tmp_path / "blank-abc.data.json"
    path.write_text(json.dumps({"reload_token": "runtime-1", "created_on": 12.5, "data": {"a": {"v": 1}}}))
    assert read_data_update(path, LIMITS) == DataUpdate("runtime-1", 12.5, {"a": {"v": 1}})
    path.write_text(json.dumps({"reload_token": "runtime-1", "data": {}}))
    assert read_data_update(path, LIMITS) == DataUpdate("runtime-1", 0.0, {})
    path.write_text(json.dumps({"reload_token": 5, "data": {}}))
    assert read_data_update(path, LIMITS) == Problem(path, "not a card data update")
    path.write_text(json.dumps({"reload_token": "t", "data": []}))
    assert read_data_update(path, LIMITS) == Problem(path, "not a card data update")


def test_read_data_update_respects_max_data_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blank-abc.data.json"
    path.write_text(json.dumps({"reload_token": "t", "data": {"a": "x" * 2000}}))
    update = read_data_update(path, Limits(max_data_bytes=1000))
    assert isinstance(update, Problem) and update.reason.startswith("too large")


def test_out_of_range_numbers_do_not_raise(tmp_path: Path) -> None:
    """Python's json reads NaN, Infinity and 400-digit integers; none of them may escape as an
    exception or as a float that later cannot be written back as JSON."""
    path = tmp_path / "blank-abc.data.json"
    path.write_text('{"reload_token": "t", "created_on": ' + "9" * 400 + ', "data": {"a": {"v": NaN}}}')
    update = read_data_update(path, LIMITS)
    assert isinstance(update, DataUpdate)
    json.dumps(update.data, allow_nan=False)
    assert update.created_on == 0.0
    path.write_text('{"reload_token": "t", "created_on": Infinity, "data": {"a": -Infinity}}')
    update = read_data_update(path, LIMITS)
    assert isinstance(update, DataUpdate)
    json.dumps({"c": update.created_on, "d": update.data}, allow_nan=False)


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
    doc = read_json(path, 4096)
    assert isinstance(doc, dict | Problem)
    update = read_data_update(path, Limits(max_data_bytes=4096))
    assert isinstance(update, DataUpdate | Problem)
    if isinstance(update, DataUpdate):
        assert isinstance(update.token, str) and isinstance(update.data, dict)
        # what we read can always be sent on as strict JSON
        json.dumps({"c": update.created_on, "d": update.data}, allow_nan=False)
