"""Settings and datastore discovery. Every default lives here and only here."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .s3.schedule import PollTiming
from .s3.settings import S3Settings
from .status import GRACE_SECONDS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8423
DATASTORE_DIR = ".metaflow"
CARDS_DIR = "mf.cards"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class ConfigError(Exception):
    """A setting the user gave cannot work; the message is one line for the terminal."""


@dataclass(frozen=True, slots=True)
class Roots:
    """Where Metaflow keeps status files (datastore) and card files (cards)."""

    datastore: Path
    cards: Path


@dataclass(frozen=True, slots=True)
class Limits:
    max_card_bytes: int = 64 * 1024 * 1024  # a card with a big inline table is still a card
    max_data_bytes: int = 16 * 1024 * 1024
    max_meta_bytes: int = 64 * 1024
    max_sockets: int = 2000
    max_inbound_message: int = 4096
    max_subscriptions: int = 64  # per socket
    mailbox_bytes: int = 8 * 1024 * 1024  # per socket, before a slow client is dropped
    stall_seconds: float = 10.0  # a socket that accepts nothing this long is dropped
    send_buffer_bytes: int = 64 * 1024  # kernel send buffer per socket (Linux doubles it)
    heartbeat_seconds: float = 20.0
    header_timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class WatchTiming:
    """Watcher pacing. `hot_step_ms` right after activity, `cold_step_ms` when all is quiet.

    Measured (bench/latency.py, bench/idle.py): step 2 ms gives ~5 ms file-to-socket at ~1.4 s CPU
    per minute of waiting; step 50 ms costs ~0.09 s per minute. Live cards write in bursts, so
    we wait hot only while something changed recently.
    """

    hot_step_ms: int = 2
    cold_step_ms: int = 50
    shape_step_ms: int = 100  # new flows and runs: rare, and read whole when seen
    hot_seconds: float = 30.0
    settle_seconds: float = 300.0  # a final run quiet this long is finished: no longer watched
    # The longest a burst is held back. 50 cards writing at 10 Hz never leave a 2 ms gap, so
    # every batch waits this long: 40 ms gave a p50 lag of 44 ms, 10 ms gives 20 ms (+15% CPU).
    debounce_ms: int = 10
    poll_delay_ms: int = 300  # for the polling fallback
    # Nothing running and nothing written this long: a run's runtime will not act any more
    # (see status.GRACE_SECONDS). Tests of just-written finished fixtures set 0.
    status_grace_seconds: float = GRACE_SECONDS
    supervise_seconds: float = 1.0  # how often the supervisor checks that the watch runs
    stuck_seconds: float = 60.0  # one change handled this long: the watch is stuck, restart it


@dataclass(frozen=True, slots=True)
class Config:
    roots: Roots
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    flow: str | None = None
    run_id: str | None = None
    open_browser: bool = False
    base_url: str = "/"
    token: str | None = None
    allow_hosts: frozenset[str] = frozenset()
    allow_any_host: bool = False
    allow_origins: frozenset[str] = frozenset()
    force_polling: bool = False
    limits: Limits = field(default_factory=Limits)
    timing: WatchTiming = field(default_factory=WatchTiming)
    # Where the cards are when they are on S3 (then `roots` is only where a local runtime keeps
    # its `_meta`); None for a local datastore.
    s3: S3Settings | None = None
    s3_timing: PollTiming = field(default_factory=PollTiming)  # how often S3 is asked what

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}{self.base_url}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name such as 127.example.com is not loopback
        return False


def find_datastore(cwd: Path, env: Mapping[str, str]) -> Path:
    """Metaflow's rule: SYSROOT_LOCAL/.metaflow, else the nearest `.metaflow` at or above cwd.

    Without one, Metaflow creates `.metaflow` in cwd on the first run: that is where we wait.
    """
    sysroot = env.get("METAFLOW_DATASTORE_SYSROOT_LOCAL")
    if sysroot:
        return Path(sysroot).expanduser().resolve() / DATASTORE_DIR
    here = cwd.resolve()
    for folder in (here, *here.parents):
        candidate = folder / DATASTORE_DIR
        if candidate.is_dir():
            return candidate
    return here / DATASTORE_DIR


def find_roots(root: Path | None, cwd: Path, env: Mapping[str, str]) -> Roots:
    """`--root` (a datastore) wins; else Metaflow's discovery and METAFLOW_CARD_LOCALROOT."""
    if root is not None:
        datastore = root.expanduser().resolve()
        if datastore.exists() and not datastore.is_dir():
            raise ConfigError(f"--root {root} is a file, not a folder")
        return Roots(datastore, datastore / CARDS_DIR)
    datastore = find_datastore(cwd, env)
    cards_env = env.get("METAFLOW_CARD_LOCALROOT")
    cards = Path(cards_env).expanduser().resolve() if cards_env else datastore / CARDS_DIR
    return Roots(datastore, cards)


ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]+)?/?", re.IGNORECASE)


def check_origin(origin: str) -> str:
    """An `--allow-origin` is an origin (`scheme://host[:port]`): it is also a CSP source, so
    nothing in it may end one."""
    if not ORIGIN.fullmatch(origin):
        raise ConfigError(f"--allow-origin takes an origin such as http://localhost:8888, not {origin!r}")
    return origin


def normalize_base_url(base_url: str | None) -> str:
    """`proxy/8423`, `/proxy/8423` and `/proxy/8423/` all mean `/proxy/8423/`."""
    if not base_url:
        return "/"
    if "://" in base_url or any(c in base_url for c in "?#\\"):
        raise ConfigError(f"--base-url must be a path such as /proxy/8423/, not {base_url!r}")
    parts = [p for p in base_url.split("/") if p]
    if any(p in {".", ".."} for p in parts):
        raise ConfigError(f"--base-url must not contain . or .. segments: {base_url!r}")
    return "/" + "".join(f"{p}/" for p in parts)
