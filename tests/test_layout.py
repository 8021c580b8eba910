"""Metaflow's path grammar (cardserver.layout): what is ours, what is not, and round trips."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cardserver import layout
from cardserver.layout import (
    LEGACY_STEP,
    CardFile,
    CardFileKind,
    CardKey,
    CardName,
    MetaKind,
    RunFile,
    RunKey,
    TaskFile,
    TaskKey,
    card_key_from_parts,
    card_path,
    is_name,
    meta_file_name,
    parse_card_name,
    parse_card_path,
    parse_datastore_path,
    parse_meta_name,
    run_meta_path,
    task_meta_dir,
)

UUID = "3f1c2e9a0b7d4c5e8f6a1b2c3d4e5f60"
TASK_DIR = "LiveFlow/runs/1795376725734877/steps/start/tasks/1"
LEGACY_TASK_DIR = "LiveFlow/runs/1795376725734877/tasks/1"
START = TaskKey("LiveFlow", "1795376725734877", "start", "1")


def card(rel: str) -> CardFile | None:
    return parse_card_path(PurePosixPath(rel))


def meta(rel: str) -> RunFile | TaskFile | None:
    return parse_datastore_path(PurePosixPath(rel))


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["LiveFlow", "1795376725734877", "start", "1", "_", "a.b", "a-b"])
def test_is_name_accepts_metaflow_names(text: str) -> None:
    assert is_name(text)


@pytest.mark.parametrize(
    "text",
    [
        "", ".", "..", "a..b", ".hidden", "-x", "a/b", "a\\b", "a b", "a\x00b", "a\n",
        "\u00e9", "\uff46\uff4c\uff4f\uff57", "\u0661", "x" * 201,
    ],
)
def test_is_name_rejects_what_a_path_could_abuse(text: str) -> None:
    assert not is_name(text)


def test_is_name_length_limit_is_200() -> None:
    assert is_name("x" * 200)
    assert not is_name("x" * 201)


def test_card_name_without_id() -> None:
    assert parse_card_name(f"blank-{UUID}") == CardName("blank", None, UUID)


def test_card_name_with_id() -> None:
    assert parse_card_name(f"blank-progress_1-{UUID}") == CardName("blank", "progress_1", UUID)


@pytest.mark.parametrize(
    "stem", ["blank", f"-{UUID}", f"blank-{UUID}-", f"blank--{UUID}", f"bl-a-nk-{UUID}",
             f"blank-{UUID}.x", "tmpa1b2c3d4", "tmp_a1b2c3d", f"blänk-{UUID}", f"blank-{'a' * 65}"],
)
def test_card_name_rejects(stem: str) -> None:
    assert parse_card_name(stem) is None


# The card name grammar as first written, with backtracking quantifiers: the reference.
PLAIN_CARD_NAME = re.compile(
    r"(?P<type>[A-Za-z0-9_]{1,100})(?:-(?P<id>[A-Za-z0-9_]{1,100}))?-(?P<uuid>[A-Za-z0-9]{1,64})"
)
segments = st.lists(st.text(alphabet="a9_.é", max_size=102), min_size=1, max_size=4).map("-".join)


@given(segments | st.text(max_size=30))
@example(f"{'t' * 100}-{'i' * 100}-{'u' * 64}")
@example(f"{'t' * 101}-{'u' * 64}")
@example(f"t-{'i' * 101}-u")
@example(f"t-{'u' * 65}")
def test_card_name_grammar_is_the_plain_one(stem: str) -> None:
    plain = PLAIN_CARD_NAME.fullmatch(stem)
    expected = CardName(plain["type"], plain["id"], plain["uuid"]) if plain else None
    assert parse_card_name(stem) == expected
    assert layout.card_stem(f"{stem}.html", CardFileKind.HTML) == (stem if plain else None)
    assert layout.card_stem(f"{stem}.data.json", CardFileKind.DATA) == (stem if plain else None)
    assert layout.card_stem(f"{stem}.html", CardFileKind.DATA) is None


# --- card files ----------------------------------------------------------------------------


def test_card_html_with_step_level() -> None:
    found = card(f"{TASK_DIR}/cards/blank-{UUID}.html")
    assert found == CardFile(CardKey(START, f"blank-{UUID}"), CardFileKind.HTML)


def test_card_html_with_id() -> None:
    found = card(f"{TASK_DIR}/cards/default-mycard-{UUID}.html")
    assert found is not None
    assert found.key == CardKey(START, f"default-mycard-{UUID}")
    assert found.kind is CardFileKind.HTML


def test_legacy_card_has_no_step_level() -> None:
    found = card(f"{LEGACY_TASK_DIR}/cards/blank-{UUID}.html")
    assert found is not None
    assert found.key.task == TaskKey("LiveFlow", "1795376725734877", LEGACY_STEP, "1")
    assert found.kind is CardFileKind.HTML
    assert found.legacy


def test_data_update_under_runtime() -> None:
    found = card(f"{TASK_DIR}/runtime/blank-{UUID}.data.json")
    assert found == CardFile(CardKey(START, f"blank-{UUID}"), CardFileKind.DATA)


def test_legacy_data_update() -> None:
    found = card(f"{LEGACY_TASK_DIR}/runtime/blank-x-{UUID}.data.json")
    assert found is not None
    assert found.kind is CardFileKind.DATA
    assert found.legacy
    assert found.key.task.step == LEGACY_STEP
    assert found.key.name == f"blank-x-{UUID}"


def test_html_and_data_of_one_card_share_a_key() -> None:
    html = card(f"{TASK_DIR}/cards/blank-{UUID}.html")
    data = card(f"{TASK_DIR}/runtime/blank-{UUID}.data.json")
    assert html is not None and data is not None
    assert html.key == data.key


@pytest.mark.parametrize(
    "name",
    [
        "tmpa1b2c3d4",  # what Metaflow's mkstemp actually writes before the rename
        "tmp_k2x9q0z",
        "tmpa1b2c3d4.html",  # not a <type>-<uuid> stem either
        "tmpa1b2c3d4.data.json",
        f"blank-{UUID}.html.tmp",
        f".blank-{UUID}.html.swp",
        f"blank-{UUID}.htm",
        f"blank-{UUID}",
    ],
)
@pytest.mark.parametrize("folder", ["cards", "runtime"])
def test_temp_and_stray_files_are_ignored(folder: str, name: str) -> None:
    assert card(f"{TASK_DIR}/{folder}/{name}") is None


@pytest.mark.parametrize(
    "rel",
    [
        f"{TASK_DIR}/runtime/blank-{UUID}.html",  # html belongs in cards/
        f"{TASK_DIR}/cards/blank-{UUID}.data.json",  # data belongs in runtime/
        f"{TASK_DIR}/other/blank-{UUID}.html",
        f"{TASK_DIR}/cards/sub/blank-{UUID}.html",  # extra depth
        f"extra/{TASK_DIR}/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/start/cards/blank-{UUID}.html",  # missing tasks level
        f"LiveFlow/run/1/steps/start/tasks/1/cards/blank-{UUID}.html",  # "run" not "runs"
        f"LiveFlow/runs/1/step/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/start/task/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/task/1/cards/blank-{UUID}.html",
        f"../runs/1/steps/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/../steps/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/../tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/start/tasks/../cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/tasks/../cards/blank-{UUID}.html",
        f"/LiveFlow/runs/1/steps/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlöw/runs/1/steps/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/stärt/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/start/tasks/1/cards/blänk-{UUID}.html",
        f"LiveFlow/runs/1\x00/steps/start/tasks/1/cards/blank-{UUID}.html",
        f"{'F' * 201}/runs/1/steps/start/tasks/1/cards/blank-{UUID}.html",
        f"LiveFlow/runs/1/steps/start/tasks/1/cards/{'b' * 101}-{UUID}.html",
        "LiveFlow/runs/1/steps/start/tasks/1/cards/.html",
        "",
        "LiveFlow",
    ],
)
def test_near_misses_are_not_cards(rel: str) -> None:
    assert card(rel) is None


def test_empty_segments_change_the_depth_so_are_not_cards() -> None:
    # PurePosixPath collapses "//": one missing segment means the shape no longer fits.
    assert card(f"LiveFlow/runs//steps/start/tasks/1/cards/blank-{UUID}.html") is None
    assert card(f"LiveFlow/runs/1/steps//tasks/1/cards/blank-{UUID}.html") is None


def test_longest_accepted_segments() -> None:
    flow = "F" * 200
    found = card(f"{flow}/runs/1/steps/start/tasks/1/cards/{'b' * 100}-{'c' * 100}-{'d' * 64}.html")
    assert found is not None
    assert found.key.task.flow == flow


# --- datastore (status) files --------------------------------------------------------------


def test_run_self() -> None:
    assert meta("LiveFlow/1795376725734877/_meta/_self.json") == RunFile(
        RunKey("LiveFlow", "1795376725734877")
    )


def test_task_self() -> None:
    found = meta("LiveFlow/1795376725734877/start/1/_meta/_self.json")
    assert found == TaskFile(START, MetaKind.TASK_SELF, 0)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sysmeta_attempt_1795376726273.json", MetaKind.ATTEMPT),
        ("sysmeta_attempt_ok_1795376726273.json", MetaKind.ATTEMPT_OK),
        ("sysmeta_attempt-done_1795376726273.json", MetaKind.ATTEMPT_DONE),
    ],
)
def test_attempt_files_carry_kind_and_ts(name: str, kind: MetaKind) -> None:
    found = meta(f"LiveFlow/1795376725734877/start/1/_meta/{name}")
    assert found == TaskFile(START, kind, 1795376726273)


@pytest.mark.parametrize(
    "name",
    [
        "sysmeta_code-package_1795376726273.json",
        "sysmeta_log_location_stdout_1795376726273.json",
        "sysmeta_attempt_.json",
        "sysmeta_attempt_12x.json",
        "sysmeta_attempt_ok_1795376726273.json.tmp",
        "sysmeta_attempt-done_1795376726273",
        "sysmeta_attempt_1795376726273.JSON",
        "tmpa1b2c3d4",
        "0.data.json",
        "_self.json.tmp",
    ],
)
def test_other_meta_files_are_ignored(name: str) -> None:
    assert meta(f"LiveFlow/1795376725734877/start/1/_meta/{name}") is None
    assert parse_meta_name(name) is None


def test_parameters_step_is_ignored() -> None:
    assert meta("LiveFlow/1795376725734877/_parameters/0/_meta/_self.json") is None
    assert meta("LiveFlow/1795376725734877/_parameters/0/_meta/sysmeta_attempt_1.json") is None


@pytest.mark.parametrize(
    "rel",
    [
        "LiveFlow/data/ab/abcdef0123456789",
        "LiveFlow/data/_meta/_self.json",
        "LiveFlow/data/ab/cd/_meta/_self.json",
        "LiveFlow/data/ab/cd/_meta/sysmeta_attempt_1.json",
    ],
)
def test_artifact_store_is_ignored(rel: str) -> None:
    assert meta(rel) is None


@pytest.mark.parametrize(
    "rel",
    [
        "LiveFlow/latest_run",
        "LiveFlow/1/_meta/other.json",
        "LiveFlow/1/start/_meta/_self.json",  # step-level _meta is not a task
        "LiveFlow/1/start/1/0.data.json",
        "LiveFlow/1/start/1/_meta/sub/_self.json",
        "LiveFlow/1/start/1/meta/_self.json",
        "LiveFlow/../start/1/_meta/_self.json",
        "../1/_meta/_self.json",
        "LiveFlow/1/start/../_meta/_self.json",
        "LiveFlöw/1/_meta/_self.json",
        "/LiveFlow/1/start/1/_meta/_self.json",
        "",
    ],
)
def test_datastore_near_misses(rel: str) -> None:
    assert meta(rel) is None


def test_meta_paths_round_trip() -> None:
    run = RunKey("LiveFlow", "1795376725734877")
    assert meta(str(run_meta_path(run))) == RunFile(run)
    for kind, ts in [(MetaKind.TASK_SELF, 0), (MetaKind.ATTEMPT, 5), (MetaKind.ATTEMPT_OK, 6),
                     (MetaKind.ATTEMPT_DONE, 7)]:
        rel = task_meta_dir(START) / meta_file_name(kind, ts)
        assert meta(str(rel)) == TaskFile(START, kind, ts)


# --- keys <-> paths ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CardFileKind))
def test_card_path_round_trip(kind: CardFileKind) -> None:
    key = CardKey(START, f"blank-live-{UUID}")
    assert parse_card_path(card_path(key, kind, legacy=False)) == CardFile(key, kind)


def test_card_path_layouts() -> None:
    key = CardKey(START, f"blank-{UUID}")
    assert str(card_path(key, CardFileKind.HTML, legacy=False)) == (
        f"{TASK_DIR}/cards/blank-{UUID}.html"
    )
    legacy = CardKey(TaskKey("LiveFlow", "1795376725734877", LEGACY_STEP, "1"), f"blank-{UUID}")
    assert str(card_path(legacy, CardFileKind.DATA, legacy=True)) == (
        f"{LEGACY_TASK_DIR}/runtime/blank-{UUID}.data.json"
    )
    assert parse_card_path(card_path(legacy, CardFileKind.DATA, legacy=True)) == CardFile(
        legacy, CardFileKind.DATA, legacy=True
    )


def test_card_key_from_parts() -> None:
    key = CardKey(START, f"blank-{UUID}")
    assert card_key_from_parts(str(key).split("/")) == key
    assert card_key_from_parts(["LiveFlow", "1", LEGACY_STEP, "1", f"blank-{UUID}"]) is not None


@pytest.mark.parametrize(
    "parts",
    [
        [],
        ["LiveFlow", "1", "start", "1"],
        ["LiveFlow", "1", "start", "1", f"blank-{UUID}", "x"],
        ["..", "1", "start", "1", f"blank-{UUID}"],
        ["LiveFlow", "..", "start", "1", f"blank-{UUID}"],
        ["LiveFlow", "1", "..", "1", f"blank-{UUID}"],
        ["LiveFlow", "1", "start", "..", f"blank-{UUID}"],
        ["LiveFlow", "1", "start", "1", ".."],
        ["LiveFlow", "1", "start", "1", f"blank-{UUID}.html"],
        ["LiveFlow", "", "start", "1", f"blank-{UUID}"],
        ["Live/Flow", "1", "start", "1", f"blank-{UUID}"],
        ["LiveFlow", "1", "start", "1", "tmpa1b2c3d4"],
    ],
)
def test_card_key_from_parts_rejects(parts: list[str]) -> None:
    assert card_key_from_parts(parts) is None


# --- properties ----------------------------------------------------------------------------

segment = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["runs", "steps", "tasks", "cards", "runtime", "_meta", "_self.json", "..",
                     ".", "", "data", "_parameters", f"blank-{UUID}.html",
                     f"blank-{UUID}.data.json", "sysmeta_attempt_1.json"]),
)


def assert_clean(*names: str) -> None:
    for name in names:
        assert name
        assert "/" not in name
        assert ".." not in name
        assert "\x00" not in name
        assert is_name(name)


@given(st.lists(segment, max_size=11))
def test_parse_card_path_never_raises_and_accepts_only_clean_keys(parts: list[str]) -> None:
    found = parse_card_path(PurePosixPath(*parts))
    if found is not None:
        t = found.key.task
        assert_clean(t.flow, t.run, t.step, t.task, found.key.name)
        assert parse_card_name(found.key.name) is not None


@given(st.lists(segment, max_size=8))
def test_parse_datastore_path_never_raises_and_accepts_only_clean_keys(parts: list[str]) -> None:
    found = parse_datastore_path(PurePosixPath(*parts))
    if isinstance(found, RunFile):
        assert_clean(found.key.flow, found.key.run)
    elif isinstance(found, TaskFile):
        k = found.key
        assert_clean(k.flow, k.run, k.step, k.task)
        assert k.step != "_parameters"
        assert k.run != "data"


@given(st.lists(st.text(max_size=30), max_size=7))
def test_card_key_from_parts_never_raises_and_accepts_only_clean_keys(parts: list[str]) -> None:
    key = card_key_from_parts(parts)
    if key is not None:
        assert_clean(key.task.flow, key.task.run, key.task.step, key.task.task, key.name)


name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,30}(\.[A-Za-z0-9_\-]{1,10})?", fullmatch=True)
word = st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True)
hex_uuid = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
card_stem = st.builds(
    lambda t, i, u: f"{t}-{i}-{u}" if i else f"{t}-{u}", word, st.one_of(st.none(), word), hex_uuid
)


@given(name, name, name, name, card_stem, st.sampled_from(list(CardFileKind)), st.booleans())
def test_round_trip_for_valid_keys(
    flow: str, run: str, step: str, task: str, stem: str, kind: CardFileKind, legacy: bool
) -> None:
    key = CardKey(TaskKey(flow, run, LEGACY_STEP if legacy else step, task), stem)
    assert parse_card_path(card_path(key, kind, legacy)) == CardFile(key, kind, legacy)
    assert card_key_from_parts(str(key).split("/")) == key
