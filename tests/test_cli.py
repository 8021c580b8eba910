"""The `card` command: option rules, one-line errors with exit code 2, `card list` output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, launch

from cardserver import demo
from cardserver.cli import build_config, card
from cardserver.config import ConfigError


def fixture_datastore(tmp_path: Path) -> Path:
    store = tmp_path / ".metaflow"
    run = demo.start_run(store, flow="ListFlow")
    ok = run.start_task("start")
    ok.add_card(id="summary", components=[demo.text("t", "x")])
    ok.finish()
    bad = run.start_task("train")
    bad.add_card(components=[demo.text("t", "y")])
    bad.finish(ok=False)
    return store


def test_list_table_and_json(tmp_path: Path) -> None:
    store = fixture_datastore(tmp_path)
    runner = CliRunner()
    table = runner.invoke(card, ["list", "--root", str(store)])
    assert table.exit_code == 0, table.output
    lines = table.output.strip().splitlines()
    assert lines[0].split() == ["FLOW", "RUN", "STEP", "TASK", "STATUS", "CARD"]
    assert len(lines) == 3 and "succeeded" in lines[1] and "failed" in lines[2]
    as_json = runner.invoke(card, ["list", "--root", str(store), "--json"])
    rows = [json.loads(line) for line in as_json.output.splitlines()]
    assert {(r["step"], r["status"], r["id"]) for r in rows} == {
        ("start", "succeeded", "summary"), ("train", "failed", None)}
    # The failure was just written: a retry may follow for 10 s (the README's status rules).
    assert all(r["run_status"] == "running" and r["path"].startswith("card/ListFlow/") for r in rows)
    assert {r["attempt"] for r in rows} == {0}
    only = runner.invoke(card, ["list", "--root", str(store), "--flow", "Other", "--json"])
    assert only.output == ""


def test_python_cli_py_card_list_works_too(tmp_path: Path) -> None:
    store = fixture_datastore(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "card", "list", "--root",
                           str(store), "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["server", "--run-id", "5"], "--run-id needs --flow"),
    (["server", "--base-url", "http://x/"], "--base-url must be a path"),
    (["server", "--token", "short"], "at least 8 characters"),
    (["server", "--allow-any-host"], "needs a token"),
    (["server", "--flow", "../etc"], "not a valid flow or run name"),
    (["list", "--root", "/nonexistent/.metaflow"], "no datastore at"),
])
def test_user_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(card, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_token_rules(tmp_path: Path) -> None:
    local = build_config(tmp_path, None, None)
    assert local.token is None and local.host == "127.0.0.1" and local.port == 8423
    wide = build_config(tmp_path, "0.0.0.0", None)
    assert wide.token is not None and len(wide.token) >= 24
    assert build_config(tmp_path, "0.0.0.0", None, no_token=True).token is None
    with pytest.raises(ConfigError):
        build_config(tmp_path, None, None, token="x" * 10, no_token=True)


def test_discovery_follows_metaflow(tmp_path: Path) -> None:
    (tmp_path / ".metaflow").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = build_config(None, None, None, cwd=deep, env={})
    assert found.roots.datastore == tmp_path / ".metaflow"
    assert found.roots.cards == tmp_path / ".metaflow" / "mf.cards"
    sysroot = build_config(None, None, None, cwd=deep,
                           env={"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "elsewhere"),
                                "METAFLOW_CARD_LOCALROOT": str(tmp_path / "cards")})
    assert sysroot.roots.datastore == tmp_path / "elsewhere" / ".metaflow"
    assert sysroot.roots.cards == tmp_path / "cards"


def test_server_without_datastore_says_where_it_waits(tmp_path: Path) -> None:
    server = launch(["server"], tmp_path)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        waiting = [line for line in server.startup if "waiting for" in line]
        assert waiting and str(tmp_path / ".metaflow") in waiting[0]
    finally:
        server.stop()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("127.example.com", False), ("0.0.0.0", False), ("10.0.0.1", False),
])
def test_only_real_loopback_skips_the_token(tmp_path: Path, host: str, loopback: bool) -> None:
    assert (build_config(tmp_path, host, None).token is None) is loopback
