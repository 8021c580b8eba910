"""Metaflow's S3 settings resolved as Metaflow resolves them: env over the local config over
the global config (profile included), the card root default, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cardserver.s3.settings import S3Root, S3SettingsError, explicit_root, parse_s3_url, read_settings

SYSROOT = "METAFLOW_DATASTORE_SYSROOT_S3"


def write_config(folder: Path, values: dict[str, object], name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "project" / "sub"
    path.mkdir(parents=True)
    return path


def test_nothing_set_means_the_local_datastore(cwd: Path, home: Path) -> None:
    settings = read_settings({}, cwd, home)
    assert settings.datastore == "local" and settings.sysroot is None and settings.cards is None
    assert not settings.uses_s3


def test_env_alone_gives_cards_under_sysroot_mf_cards(cwd: Path, home: Path) -> None:
    env = {"METAFLOW_DEFAULT_DATASTORE": "s3", SYSROOT: "s3://my-bucket/team/metaflow/",
           "METAFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    settings = read_settings(env, cwd, home)
    assert settings.uses_s3
    assert settings.sysroot == S3Root("my-bucket", "team/metaflow")
    assert settings.cards == S3Root("my-bucket", "team/metaflow/mf.cards")
    assert settings.endpoint_url == "http://127.0.0.1:9000"
    assert settings.origins[SYSROOT] == "environment"


def test_card_s3root_overrides_the_default(cwd: Path, home: Path) -> None:
    env = {"METAFLOW_DEFAULT_DATASTORE": "s3", SYSROOT: "s3://data-bucket/mf",
           "METAFLOW_CARD_S3ROOT": "s3://cards-bucket/elsewhere"}
    assert read_settings(env, cwd, home).cards == S3Root("cards-bucket", "elsewhere")


def test_global_config_keys_keep_the_metaflow_prefix(cwd: Path, home: Path) -> None:
    write_config(home / ".metaflowconfig", {"METAFLOW_DEFAULT_DATASTORE": "s3", SYSROOT: "s3://from-file/x",
                                            "DATASTORE_SYSROOT_S3": "s3://unprefixed-is-ignored/y"})
    settings = read_settings({}, cwd, home)
    assert settings.uses_s3 and settings.sysroot == S3Root("from-file", "x")
    assert settings.origins[SYSROOT].endswith(".metaflowconfig/config.json")


def test_env_wins_over_local_config_which_wins_over_global(cwd: Path, home: Path, tmp_path: Path) -> None:
    write_config(home / ".metaflowconfig", {SYSROOT: "s3://global-bucket/g", "METAFLOW_CARD_S3ROOT": "s3://global-cards/c"})
    write_config(tmp_path / "project" / ".metaflow", {SYSROOT: "s3://local-bucket/l"})
    settings = read_settings({}, cwd, home)  # the local config is found two folders up
    assert settings.sysroot == S3Root("local-bucket", "l")
    # A key the local config lacks still comes from the global one
    assert settings.cards == S3Root("global-cards", "c")
    assert read_settings({SYSROOT: "s3://env-bucket/e"}, cwd, home).sysroot == S3Root("env-bucket", "e")


def test_an_empty_env_var_hides_the_config_value(cwd: Path, home: Path) -> None:
    write_config(home / ".metaflowconfig", {SYSROOT: "s3://global-bucket/g"})
    settings = read_settings({SYSROOT: ""}, cwd, home)
    assert settings.sysroot is None and settings.cards is None


def test_metaflow_home_and_profile_pick_the_file(cwd: Path, home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mfhome"
    write_config(elsewhere, {SYSROOT: "s3://plain-bucket/p"})
    write_config(elsewhere, {SYSROOT: "s3://prod-bucket/p"}, "config_prod.json")
    env = {"METAFLOW_HOME": str(elsewhere)}
    assert read_settings(env, cwd, home).sysroot == S3Root("plain-bucket", "p")
    assert read_settings({**env, "METAFLOW_PROFILE": "prod"}, cwd, home).sysroot == S3Root("prod-bucket", "p")
    with pytest.raises(S3SettingsError) as raised:
        read_settings({**env, "METAFLOW_PROFILE": "dev"}, cwd, home)
    assert str(raised.value) == f"METAFLOW_PROFILE 'dev': no config_dev.json in {elsewhere}"


@pytest.mark.parametrize(("values", "message"), [
    ({SYSROOT: "/local/path"}, "METAFLOW_DATASTORE_SYSROOT_S3 (environment): '/local/path' is not an s3://"),
    ({SYSROOT: "s3://Bad_Bucket/x"}, "'Bad_Bucket' is not a valid S3 bucket name"),
    ({SYSROOT: "s3://ok-bucket/a//b"}, "has an empty folder name"),
    ({"METAFLOW_S3_ENDPOINT_URL": "localhost:9000"}, "'localhost:9000' is not an http"),
])
def test_bad_values_give_one_line_naming_the_setting(cwd: Path, home: Path, values: dict[str, str],
                                                       message: str) -> None:
    with pytest.raises(S3SettingsError) as raised:
        read_settings(values, cwd, home)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({SYSROOT: 42}), "METAFLOW_DATASTORE_SYSROOT_S3 must be a string, not int"),
])
def test_broken_config_files_give_one_line_with_their_path(
    cwd: Path, home: Path, text: str, message: str
) -> None:
    path = home / ".metaflowconfig" / "config.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(S3SettingsError) as raised:
        read_settings({}, cwd, home)
    line = str(raised.value)
    assert line.startswith(str(path)) and message in line and "\n" not in line


def test_explicit_root_is_a_datastore_with_its_cards_in_mf_cards(cwd: Path, home: Path) -> None:
    base = read_settings({"METAFLOW_S3_ENDPOINT_URL": "https://minio.example:9000"}, cwd, home)
    settings = explicit_root("s3://picked-bucket/run-data", base)
    assert settings.uses_s3 and settings.cards == S3Root("picked-bucket", "run-data/mf.cards")
    assert settings.endpoint_url == "https://minio.example:9000"
    with pytest.raises(S3SettingsError) as raised:
        explicit_root("gs://x/y", base)
    assert str(raised.value) == "--root: 'gs://x/y' is not an s3://bucket/prefix URL"


def test_keys_below_a_root() -> None:
    root = parse_s3_url("s3://some-bucket/a/b/", "test")
    assert root.url == "s3://some-bucket/a/b" and root.folder == "a/b/"
    assert root.key("Flow", "runs") == "a/b/Flow/runs"
    bare = parse_s3_url("s3://some-bucket", "test")
    assert bare.folder == "" and bare.key("Flow") == "Flow" and bare.url == "s3://some-bucket"


def test_agrees_with_metaflow_itself(cwd: Path, home: Path, tmp_path: Path) -> None:
    """The same layered setup read by Metaflow's own config module, in a real process."""
    elsewhere = tmp_path / "mfhome"
    write_config(elsewhere, {"METAFLOW_DEFAULT_DATASTORE": "s3", SYSROOT: "s3://prod-bucket/root",
                             "METAFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "config_prod.json")
    write_config(tmp_path / "project" / ".metaflow", {"METAFLOW_CARD_S3ROOT": "s3://card-bucket/local"})
    env = {"METAFLOW_HOME": str(elsewhere), "METAFLOW_PROFILE": "prod", "PATH": os.environ["PATH"],
           "HOME": str(home)}
    probe = ("import json; from metaflow import metaflow_config as c; print(json.dumps("
             "[c.DEFAULT_DATASTORE, c.DATASTORE_SYSROOT_S3, c.CARD_S3ROOT, c.S3_ENDPOINT_URL]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = read_settings(env, cwd, home)
    assert ours.sysroot and ours.cards
    assert [ours.datastore, ours.sysroot.url, ours.cards.url, ours.endpoint_url] == theirs
