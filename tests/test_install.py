"""Installed as users install it: the README's first command (a venv and `pip install .`, not
`-e`) in a copy of the checkout, with the system's own python3 (which refuses a bare `pip
install` on Debian 12 and Ubuntu 24.04: PEP 668), then `card demo` and `card server` run from a
folder outside the checkout. Every part of the app must come out of the wheel: viewer, static
files, templates, API, websocket and card pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from cardserver.demo import write_fixture_run
from tests.conftest import REPO, ServerProcess, launch_command, next_message, subscribe

README = (REPO / "README.md").read_text()
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's own, marked EXTERNALLY-MANAGED


def readme_install_command() -> str:
    """The README's first command, up to the `card demo` it ends with."""
    block = re.search(r"```sh\n(python3 -m venv [^\n]+)\n```", README)
    assert block, "the README's first command is not a venv line"
    command = block.group(1)
    assert command.endswith("&& .venv/bin/card demo"), command
    return command.removesuffix(" && .venv/bin/card demo")


def clean_env(path_first: str | None = None) -> dict[str, str]:
    """The environment of a fresh shell: no venv of ours, no PYTHONPATH into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p]
    env["PATH"] = os.pathsep.join(([path_first] if path_first else []) + paths)
    return env


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with the README's first command run in it: its .venv."""
    source = tmp_path_factory.mktemp("checkout") / "cardserver"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "build", "__pycache__", ".*_cache", "bench"))
    system = Path(SYSTEM_PYTHON)
    env = clean_env(str(system.parent) if system.exists() else None)
    done = subprocess.run(["bash", "-c", readme_install_command()], cwd=source, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return source / ".venv"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def run_installed(venv: Path, outside: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=outside, env=clean_env(),
                          capture_output=True, text=True, timeout=60)


def test_the_wheel_holds_the_whole_package_and_not_the_checkout(installed: Path, outside: Path) -> None:
    where = run_installed(installed, outside, "python", "-c",
                          "import cardserver, cardserver.web.server; print(cardserver.__file__)")
    assert where.returncode == 0, where.stderr
    assert "site-packages" in where.stdout and str(REPO) not in where.stdout
    package = Path(where.stdout.strip()).parent
    for part in ("web/server.py", "static/viewer.js", "static/card-runtime.js", "templates/viewer.html"):
        assert (package / part).is_file(), f"{part} is missing from the wheel"
    assert not list(package.parent.glob("cli.py")), "a top-level cli module would clash with users'"


def test_version_from_card_and_python_m(installed: Path, outside: Path) -> None:
    from cardserver import __version__

    for args in (("card", "--version"), ("python", "-m", "cardserver", "--version")):
        done = run_installed(installed, outside, *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"card (cardserver) {__version__}"
    helped = run_installed(installed, outside, "python", "-m", "cardserver", "--help")
    assert "server" in helped.stdout and "demo" in helped.stdout


async def check_serves_everything(url: str) -> None:
    """Viewer, static files, API, websocket and a card page, as a browser would ask for them."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            html = await page.text()
            assert page.status == 200 and "viewer.js" in html, html[:300]
        for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', html):
            async with http.get(url + asset) as got:
                assert got.status == 200, asset
        async with http.ws_connect(url + "ws", origin=url.rstrip("/")) as ws:
            assert (await next_message(ws))["type"] == "hello"
            await subscribe(ws, "flows")  # the demo's writer may start after the port opens
            message = await next_message(ws, lambda m: m["type"] == "flows" and bool(m["flows"]))
        flow, run = message["flows"][0]["flow"], message["flows"][0]["newest"]["run"]
        async with http.get(url + "api/flows") as got:
            assert flow in [f["flow"] for f in (await got.json())["flows"]]
        async with http.get(url + f"api/runs/{flow}/{run}") as got:
            tasks = (await got.json())["tasks"]
        task = next(t for t in tasks if t["cards"])
        card_path = f"{flow}/{run}/{task['step']}/{task['task']}/{task['cards'][0]['name']}"
        async with http.get(url + f"card-html/{card_path}") as got:
            body = await got.text()
            assert got.status == 200 and "<html" in body.lower()
            assert "metaflow_card_update" in body and "__cardserverRuntime" in body, "no live runtime"
        async with http.get(url + f"card/{card_path}") as got:  # its host page, with our code
            assert got.status == 200 and "static/card-host.js" in await got.text()
        async with http.get(url + "static/card-host.js") as got:
            assert got.status == 200, "the wheel lacks the host page's script"


@pytest.fixture
def installed_server() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


async def test_installed_card_demo_serves_everything(
        installed: Path, outside: Path, installed_server: list[ServerProcess]) -> None:
    server = launch_command([str(installed / "bin" / "card"), "demo"], outside, clean_env())
    installed_server.append(server)
    await check_serves_everything(server.url)


async def test_installed_card_server_serves_everything(
        installed: Path, outside: Path, installed_server: list[ServerProcess]) -> None:
    datastore = outside / ".metaflow"
    write_fixture_run(datastore, "InstalledFlow", tasks=2, finished=False)
    server = launch_command([str(installed / "bin" / "card"), "server"], outside, clean_env())
    installed_server.append(server)
    assert str(datastore) in "".join(server.startup)
    await check_serves_everything(server.url)
