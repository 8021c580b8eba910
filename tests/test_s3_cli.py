"""`card server` and `card list` on an S3 datastore: found with no flags where Metaflow is set up
for S3 (its environment, its config file with METAFLOW_PROFILE), picked with `--root s3://`,
and every fault at start one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from conftest import REPO
from s3fixtures import DUMMY_CREDENTIALS, REGION, S3Endpoint, S3Run

from bench.common import free_port
from cardserver.cli import card
from cardserver.s3.client import INSTALL_HINT

SECRET = "never-print-this-secret-key"


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment of a user with no Metaflow settings but `values` (and test credentials)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("METAFLOW_", "AWS_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, **DUMMY_CREDENTIALS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
            "HOME": str(home), **values}


def s3_metaflow_env(tmp_path: Path, s3_server: S3Endpoint, run: S3Run) -> dict[str, str]:
    return clean_env(tmp_path, METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=run.sysroot,
                     METAFLOW_S3_ENDPOINT_URL=s3_server.url)


def card_list(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "card", "list", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def rows_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_card_list_with_no_flags_reads_s3_where_metaflow_env_says(
    tmp_path: Path, s3_server: S3Endpoint, s3_card_run: S3Run
) -> None:
    rows = rows_of(card_list(s3_metaflow_env(tmp_path, s3_server, s3_card_run), tmp_path, "--json"))
    assert [(r["flow"], r["run"], r["step"], r["status"], r["type"]) for r in rows] == [
        (s3_card_run.flow, s3_card_run.run_id, "start", "succeeded", "blank")]
    table = card_list(s3_metaflow_env(tmp_path, s3_server, s3_card_run), tmp_path)
    assert table.returncode == 0 and "succeeded" in table.stdout.splitlines()[1]


def test_card_list_reads_s3_from_a_metaflow_profile(
    tmp_path: Path, s3_server: S3Endpoint, s3_card_run: S3Run
) -> None:
    config = tmp_path / "mfconfig"
    config.mkdir()
    (config / "config_team.json").write_text(json.dumps({
        "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": s3_card_run.sysroot,
        "METAFLOW_S3_ENDPOINT_URL": s3_server.url}))
    env = clean_env(tmp_path, METAFLOW_HOME=str(config), METAFLOW_PROFILE="team")
    rows = rows_of(card_list(env, tmp_path, "--json"))
    assert {(r["flow"], r["status"]) for r in rows} == {(s3_card_run.flow, "succeeded")}


def test_card_list_with_root_s3_url(tmp_path: Path, s3_server: S3Endpoint, s3_failed_run: S3Run,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--root s3://` is a datastore with its cards in mf.cards: the failed run's cards are
    elsewhere (METAFLOW_CARD_S3ROOT), so listing its datastore finds none of them."""
    env = clean_env(tmp_path, METAFLOW_S3_ENDPOINT_URL=s3_server.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(card, ["list", "--root", f"s3://{s3_server.bucket}/elsewhere", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    # The cards root itself holds the failed run's card; `--root` names a datastore, whose cards
    # are in mf.cards, so the card root apart is served with METAFLOW_CARD_S3ROOT instead
    env = clean_env(tmp_path, METAFLOW_DEFAULT_DATASTORE="s3",
                    METAFLOW_DATASTORE_SYSROOT_S3=s3_failed_run.sysroot, METAFLOW_CARD_S3ROOT=f"s3://{s3_server.bucket}/elsewhere/cards",
                    METAFLOW_S3_ENDPOINT_URL=s3_server.url)
    rows = rows_of(card_list(env, tmp_path, "--json"))
    assert {(r["flow"], r["step"], r["status"]) for r in rows} == {(s3_failed_run.flow, "start", "failed")}


@pytest.mark.parametrize("how", ["metaflow env", "--root"])
async def test_card_server_says_what_it_serves_and_serves_it(
    tmp_path: Path, s3_server: S3Endpoint, s3_card_run: S3Run, how: str
) -> None:
    port = free_port()
    if how == "--root":
        env, extra, origin = clean_env(tmp_path, METAFLOW_S3_ENDPOINT_URL=s3_server.url), [
            "--root", s3_card_run.sysroot], "from --root"
    else:
        env, extra = s3_metaflow_env(tmp_path, s3_server, s3_card_run), []
        origin = "from METAFLOW_DATASTORE_SYSROOT_S3 in environment"
    command = [sys.executable, str(REPO / "cli.py"), "card", "server", "--port", str(port), *extra]
    process = subprocess.Popen(command, cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"serving {s3_card_run.sysroot}/mf.cards ({origin}, endpoint {s3_server.url}) at" in line, line
        assert SECRET not in line and "testing" not in line
        url = f"http://127.0.0.1:{port}/api/runs/{s3_card_run.flow}/{s3_card_run.run_id}"
        async with aiohttp.ClientSession() as session, session.get(url) as got:
            detail = await got.json()
        assert detail["run"]["status"] == "succeeded"
    finally:
        process.terminate()
        process.wait(timeout=30)


def one_line_exit_2(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("card: ") and expected in line and SECRET not in line


@pytest.mark.parametrize(("root", "endpoint", "expected"), [
    ("s3://no-such-bucket-here/x", None, "bucket 'no-such-bucket-here' does not exist"),
    ("s3://cardserver-test/x", "http://127.0.0.1:9", "cannot reach the S3 endpoint http://127.0.0.1:9"),
])
def test_s3_faults_at_start_are_one_line(tmp_path: Path, s3_server: S3Endpoint, root: str,
                                         endpoint: str | None, expected: str) -> None:
    env = clean_env(tmp_path, METAFLOW_S3_ENDPOINT_URL=endpoint or s3_server.url)
    for command in ("list", "server"):
        done = subprocess.run([sys.executable, str(REPO / "cli.py"), "card", command, "--root", root],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        one_line_exit_2(done, expected)


def test_no_credentials_at_start_is_one_line(tmp_path: Path, s3_server: S3Endpoint) -> None:
    env = clean_env(tmp_path, METAFLOW_S3_ENDPOINT_URL=s3_server.url)
    for name in DUMMY_CREDENTIALS:
        env.pop(name)
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    done = card_list(env, tmp_path, "--root", f"s3://{s3_server.bucket}/x")
    one_line_exit_2(done, "no AWS credentials found")


def test_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    """A real process where aiobotocore cannot be imported (as without `pip install 'cardserver[s3]'`)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['aiobotocore'] = None\n")
    env = clean_env(tmp_path, PYTHONPATH=str(blocker), METAFLOW_DEFAULT_DATASTORE="s3",
                    METAFLOW_DATASTORE_SYSROOT_S3="s3://some-bucket/prefix")
    for command in ("list", "server"):
        done = subprocess.run([sys.executable, str(REPO / "cli.py"), "card", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [f"card: {INSTALL_HINT}"]
