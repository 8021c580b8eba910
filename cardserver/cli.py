"""`card`: the command line. Options default to None so every default lives in config.py.

    card server   serve every card of the datastore, live
    card list     print the cards and their status, for scripts
    card demo     a live demo run in a temporary datastore, served
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import tempfile
import webbrowser
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cardserver import __version__, disk
from cardserver import config as cfg
from cardserver.config import Config, ConfigError
from cardserver.layout import is_name
from cardserver.prescan import Prescan
from cardserver.s3.client import S3Error
from cardserver.s3.settings import S3Settings, S3SettingsError, explicit_root, read_settings

# asyncio and cardserver.web (aiohttp, jinja2) are imported only once serving: `card server`
# forks its first scan before, so the scan and those imports overlap (see cardserver/prescan.py).


def build_config(
    root: Path | str | None,
    host: str | None,
    port: int | None,
    flow: str | None = None,
    run_id: str | None = None,
    open_browser: bool | None = None,
    base_url: str | None = None,
    token: str | None = None,
    no_token: bool = False,
    allow_hosts: tuple[str, ...] = (),
    allow_any_host: bool = False,
    allow_origins: tuple[str, ...] = (),
    poll: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> Config:
    """Options -> Config, with every rule that ties options together. Raises ConfigError (and
    S3SettingsError for a Metaflow setting that cannot work)."""
    env = dict(os.environ) if env is None else env
    cwd = cwd or Path.cwd()
    s3 = s3_settings(root, env, cwd, home or Path.home())
    local_root = None if s3 is not None or root is None else Path(root)
    roots = cfg.find_roots(local_root, cwd, env)
    host = host or cfg.DEFAULT_HOST
    if token is not None and no_token:
        raise ConfigError("--token and --no-token contradict each other")
    if token is not None and len(token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    if token is None and not no_token and not cfg.is_loopback(host):
        token = secrets.token_urlsafe(24)
    if allow_any_host and token is None:
        raise ConfigError("--allow-any-host needs a token: it turns off the Host check")
    for name in (flow, run_id):
        if name is not None and not is_name(name):
            raise ConfigError(f"not a valid flow or run name: {name!r}")
    return Config(
        roots=roots,
        host=host,
        port=cfg.DEFAULT_PORT if port is None else port,
        flow=flow,
        run_id=run_id,
        open_browser=bool(open_browser),
        base_url=cfg.normalize_base_url(base_url),
        token=token,
        allow_hosts=frozenset(h.lower() for h in allow_hosts),
        allow_any_host=allow_any_host,
        allow_origins=frozenset(cfg.check_origin(o) for o in allow_origins),
        force_polling=poll,
        s3=s3,
    )


def s3_settings(root: Path | str | None, env: dict[str, str], cwd: Path, home: Path) -> S3Settings | None:
    """S3 where `--root s3://...` says so, or, with no `--root`, where Metaflow itself is set up
    for S3 (its environment or config files, as it would read them here); else None."""
    if isinstance(root, str) and root.startswith("s3://"):
        return explicit_root(root, read_settings(env, cwd, home))
    if root is not None:
        return None
    settings = read_settings(env, cwd, home)
    return settings if settings.uses_s3 else None


def s3_origin(settings: S3Settings) -> str:
    """Where the S3 root served came from, and the endpoint (no credentials: only the host)."""
    origins = settings.origins
    if "--root" in origins:
        where = "--root"
    elif settings.sysroot is None or settings.cards != settings.sysroot.child(cfg.CARDS_DIR):
        where = f"METAFLOW_CARD_S3ROOT in {origins['METAFLOW_CARD_S3ROOT']}"
    else:
        where = f"METAFLOW_DATASTORE_SYSROOT_S3 in {origins.get('METAFLOW_DATASTORE_SYSROOT_S3', '?')}"
    endpoint = urlsplit(settings.endpoint_url) if settings.endpoint_url else None
    host = f", endpoint {endpoint.scheme}://{endpoint.hostname}" + (
        f":{endpoint.port}" if endpoint.port else "") if endpoint and endpoint.hostname else ""
    return f"from {where}{host}"


def check_s3(settings: S3Settings) -> None:
    """Before serving: the extra is installed and the card root can be listed, or one line."""
    import asyncio

    from cardserver.s3.client import load_aiobotocore
    from cardserver.s3.readonce import check_reachable

    load_aiobotocore()
    asyncio.run(check_reachable(settings))


def startup_url(config: Config) -> str:
    return config.url + (f"?token={config.token}" if config.token else "")


def announce(prefix: str, config: Config) -> None:
    """The one line with the URL (and the token, which only this terminal sees)."""
    click.echo(f"{prefix} {startup_url(config)}")
    if config.open_browser:
        webbrowser.open(startup_url(config))


def describe_roots(config: Config) -> None:
    store = config.roots.datastore
    if config.s3 is None and not store.is_dir():
        click.echo(f"cardserver: no datastore yet; waiting for {store} (Metaflow creates it on "
                   "the first run)", err=True)
    if config.token and not config.loopback:
        click.echo("cardserver: listening beyond loopback: the token in the URL is required",
                   err=True)
    if config.token is None and not config.loopback:
        click.echo("cardserver: WARNING: --no-token on a non-loopback address: anyone who can "
                   "reach this port can read every card", err=True)


def run_command(job: Callable[[], Any]) -> None:
    """Domain errors become one line and exit code 2, never a traceback."""
    try:
        job()
    except (ConfigError, S3SettingsError, S3Error) as error:
        click.echo(f"card: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--host", default=None, help="Interface to listen on [127.0.0.1]."),
        click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [8423]."),
        click.option("--open/--no-open", "open_browser", default=None,
                     help="Open the viewer in a browser once serving."),
        click.option("--base-url", default=None,
                     help="Path prefix a proxy passes through, e.g. /proxy/8423/."),
        click.option("--token", default=None, help="Require this token (default: generated "
                     "when --host is not loopback)."),
        click.option("--no-token", is_flag=True, help="Serve a non-loopback host without a "
                     "token (prints a warning)."),
        click.option("--allow-host", "allow_hosts", multiple=True,
                     help="Also accept this Host header (repeatable), e.g. a proxy's name."),
        click.option("--allow-any-host", is_flag=True,
                     help="Accept any Host header; only with a token (behind a proxy)."),
        click.option("--allow-origin", "allow_origins", multiple=True,
                     help="Also accept websockets from this exact origin, and let its pages "
                     "frame the viewer (repeatable)."),
        click.option("--poll", is_flag=True, help="Poll the disk instead of OS file events "
                     "(network file systems)."),
        click.option("-v", "--verbose", is_flag=True, help="Log every skipped file and client."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="card",
                      message="%(prog)s (cardserver) %(version)s")
def card() -> None:
    """Live viewer for Metaflow cards."""


ROOT_HELP = ("The .metaflow datastore, or s3://bucket/prefix for one on S3 (default: Metaflow's "
             "own settings and discovery).")


@card.command()
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--flow", default=None, help="Show only this flow.")
@click.option("--run-id", default=None, help="Show only this run of --flow (pins the view).")
@common_options
def server(root: str | None, flow: str | None, run_id: str | None, verbose: bool,
           **options: Any) -> None:
    """Serve every card of the datastore, live, at http://127.0.0.1:8423/."""
    setup_logging(verbose)

    def job() -> None:
        if run_id is not None and flow is None:
            raise ConfigError("--run-id needs --flow")
        config = build_config(root, flow=flow, run_id=run_id, **options)
        if config.s3 is not None and config.s3.cards is not None:
            check_s3(config.s3)
            describe_roots(config)
            run_server(config, f"cardserver: serving {config.s3.cards.url} ({s3_origin(config.s3)}) at")
            return
        describe_roots(config)
        first_scan = Prescan(config.roots, config.limits, disk.Scope(config.flow, config.run_id))
        run_server(config, f"cardserver: serving {config.roots.datastore} at", first_scan=first_scan)

    run_command(job)


@card.command(name="list")
@click.option("--root", default=None, help=ROOT_HELP)
@click.option("--flow", default=None, help="Only this flow.")
@click.option("--run", "run_id", default=None, help="Only this run (default: every run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per card, one per line.")
def list_cards(root: str | None, flow: str | None, run_id: str | None, as_json: bool) -> None:
    """Print every card with its task status."""

    def job() -> None:
        config = build_config(root, None, None, flow=flow, run_id=run_id)
        if config.s3 is not None:
            check_s3(config.s3)
        elif not config.roots.datastore.is_dir():
            raise ConfigError(f"no datastore at {config.roots.datastore}")
        rows = card_rows(config)
        if as_json:
            for row in rows:
                click.echo(json.dumps(row))
        else:
            click.echo(format_table(rows))

    run_command(job)


def run_server(config: Config, prefix: str, side_job: Callable[[], Coroutine[Any, Any, None]] | None = None,
               first_scan: Prescan | None = None) -> None:
    import asyncio

    from cardserver.web.server import serve

    asyncio.run(serve(config, side_job=side_job, first_scan=first_scan,
                      announce=lambda url: announce(prefix, config)))


def card_rows(config: Config) -> list[dict[str, Any]]:
    from cardserver.feed import card_topic
    from cardserver.index import Index
    from cardserver.layout import CardKey

    if config.s3 is not None:
        import asyncio

        from cardserver.s3.readonce import read_index

        index = asyncio.run(read_index(config, config.s3))
    else:
        events, _ = disk.scan(config.roots, config.limits, disk.Scope(config.flow, config.run_id))
        index = Index(grace=config.timing.status_grace_seconds)
        index.apply(events)
    rows = []
    for flow_name in sorted(index.flows):
        for found in index.runs(flow_name):
            for task in index.tasks_in_order(found):
                for summary in task.summary()["cards"]:
                    key = CardKey(task.key, summary["name"])
                    rows.append({
                        "flow": flow_name, "run": found.key.run, "run_status": found.status.value,
                        "step": task.key.step, "task": task.key.task, "status": task.shown.value,
                        "card": summary["name"], "type": summary["type"], "id": summary["id"],
                        "attempt": summary["attempt"], "path": card_topic(key),
                    })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["flow", "run", "step", "task", "status", "card"]
    if not rows:
        return "no cards"
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


@card.command()
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5,
              help="Seconds between updates [0.5].")
@common_options
def demo(interval: float, verbose: bool, **options: Any) -> None:
    """A live demo run in a temporary datastore (no Metaflow needed), served."""
    import asyncio

    from cardserver.livedemo import run_demo

    setup_logging(verbose)

    def job() -> None:
        folder = Path(tempfile.mkdtemp(prefix="cardserver-demo-"))
        config = build_config(folder / cfg.DATASTORE_DIR, **options)
        config = replace(config, roots=cfg.Roots(folder / cfg.DATASTORE_DIR,
                                                 folder / cfg.DATASTORE_DIR / cfg.CARDS_DIR))

        async def writer() -> None:
            await run_demo(config.roots.datastore, asyncio.Event(), interval=interval,
                           cards=config.roots.cards)

        config.roots.datastore.mkdir(parents=True, exist_ok=True)
        run_server(config, f"cardserver: demo run in {folder} at", side_job=writer)

    run_command(job)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="cardserver: %(message)s",
    )


def main() -> None:
    card(prog_name="card")


def script_main() -> None:
    """`python cli.py card server ...` reads like the installed `card server ...`."""
    args = sys.argv[1:]
    card(args=args[1:] if args[:1] == ["card"] else args, prog_name="card")
