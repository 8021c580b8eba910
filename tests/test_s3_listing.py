"""S3 listings into events (pure): keys classified by the layout grammar, scope, ETag changes,
task folders without the artifact store and parameters."""

from __future__ import annotations

from cardserver.disk import Scope
from cardserver.events import CardWritten, DataWritten, TaskCardsRead
from cardserver.layout import CardKey, RunKey, TaskKey
from cardserver.s3.client import S3Object
from cardserver.s3.listing import (
    card_events,
    card_objects,
    changed_card_events,
    folder_names,
    task_folders,
)

CARDS = "ds/mf.cards/"


def obj(key: str, etag: str = '"e1"') -> S3Object:
    return S3Object(key, 10, etag, 100.0)


def test_card_keys_become_one_event_per_task_and_the_rest_is_left_out() -> None:
    objects = [
        obj(f"{CARDS}F/runs/1/steps/start/tasks/2/cards/blank-abc.html"),
        obj(f"{CARDS}F/runs/1/steps/start/tasks/2/runtime/blank-abc.data.json"),
        obj(f"{CARDS}F/runs/1/tasks/3/cards/default-old.html"),  # legacy: no steps/ level
        obj(f"{CARDS}F/runs/1/steps/start/tasks/2/cards/notes.txt"),
        obj(f"{CARDS}F/runs/1/steps/../tasks/2/cards/blank-abc.html"),
        obj("ds/elsewhere/F/runs/1/steps/start/tasks/2/cards/blank-abc.html"),
    ]
    events = card_events(card_objects(CARDS, objects, Scope()))
    start, old = TaskKey("F", "1", "start", "2"), TaskKey("F", "1", "_", "3")
    assert sorted(events, key=lambda e: str(e.task) if isinstance(e, TaskCardsRead) else "") == [
        TaskCardsRead(old, True, (("default-old", 100.0, 10, "e1"),), ()),
        TaskCardsRead(start, False, (("blank-abc", 100.0, 10, "e1"),), (("blank-abc", 100.0),)),
    ]


def test_scope_keeps_only_the_flow_and_run_asked_for() -> None:
    objects = [obj(f"{CARDS}F/runs/1/steps/s/tasks/1/cards/blank-a.html"),
               obj(f"{CARDS}G/runs/1/steps/s/tasks/1/cards/blank-a.html"),
               obj(f"{CARDS}F/runs/2/steps/s/tasks/1/cards/blank-a.html")]
    found = card_objects(CARDS, objects, Scope("F", "1"))
    assert [card.file.key.run_key for card in found] == [RunKey("F", "1")]


def test_only_objects_whose_etag_changed_become_events() -> None:
    html = f"{CARDS}F/runs/1/steps/s/tasks/1/cards/blank-a.html"
    data = f"{CARDS}F/runs/1/steps/s/tasks/1/runtime/blank-a.data.json"
    cards = card_objects(CARDS, [obj(html, '"v2"'), obj(data, '"d1"')], Scope())
    key = CardKey(TaskKey("F", "1", "s", "1"), "blank-a")
    assert changed_card_events(cards, {html: '"v1"', data: '"d1"'}) == [
        CardWritten(key, False, 100.0, 10, "v2")]
    assert changed_card_events(cards, {html: '"v2"', data: '"d0"'}) == [DataWritten(key, False, 100.0, None)]


def test_task_folders_leave_out_parameters_and_artifacts() -> None:
    objects = [obj("ds/F/1/start/1/0.attempt.json"), obj("ds/F/1/start/1/0.DONE.lock"),
               obj("ds/F/1/_parameters/0/attempt.json"), obj("ds/F/data/ab/abcdef"),
               obj("ds/F/1/start/1/_meta/x.json"), obj("ds/F/2/start/1/0.attempt.json")]
    found = task_folders("ds/", objects, RunKey("F", "1"))
    assert {key: [item.key for item in items] for key, items in found.items()} == {
        TaskKey("F", "1", "start", "1"): ["ds/F/1/start/1/0.attempt.json", "ds/F/1/start/1/0.DONE.lock"]}


def test_folder_names_of_a_delimiter_listing() -> None:
    listed = [f"{CARDS}FlowA/", f"{CARDS}..bad/", "other/FlowB/", f"{CARDS}Flow C/"]
    assert folder_names(CARDS, listed) == ["FlowA"]
