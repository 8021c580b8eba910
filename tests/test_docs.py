"""The README documents every option and API route, and its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from cardserver.cli import card
from cardserver.config import Config, Roots
from cardserver.web.app import create_app

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(card.commands))
def test_every_option_is_documented(command: str) -> None:
    for param in card.commands[command].params:
        if isinstance(param, click.Option):
            names = [n for n in param.opts if n.startswith("--") and n != "--help"]
            for name in names:
                assert f"`{name}" in README or f"{name} " in README or f"[{name}" in README, (
                    f"card {command} {name} is not in the README"
                )


def test_every_api_route_is_documented(tmp_path: Path) -> None:
    app = create_app(Config(roots=Roots(tmp_path, tmp_path / "mf.cards")))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    api = sorted(r for r in routes if r.startswith("/api/") and r != "/api/{rest}")  # 404 catch-all
    assert api, "no API routes found"
    for route in api:
        documented = re.sub(r"\{(\w+)\}", r"<\1>", route.removeprefix("/"))
        assert f"`{documented}" in README, f"{route} is not in the README's API table"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    command = "bash scripts/test.sh"
    assert f"```sh\n{command}\n```" in README
    assert f"exec {command}" in ci


def test_readme_install_command_runs_the_main_job() -> None:
    assert "```sh\npython3 -m venv .venv && .venv/bin/pip install . && .venv/bin/card demo\n```" in README
    assert card.commands.keys() >= {"server", "list", "demo"}
