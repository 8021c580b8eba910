"""Where Metaflow's S3 datastore is, resolved the way Metaflow resolves it (docs/s3.md).

For each setting: the `METAFLOW_<NAME>` environment variable, else the local config
(`config.json` in the nearest `.metaflow` folder at or above the working folder), else the
global config (`$METAFLOW_HOME` or `~/.metaflowconfig`, `config.json` or
`config_<METAFLOW_PROFILE>.json`). Keys in both files keep the `METAFLOW_` prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CARDS_DIR = "mf.cards"
CONFIG_FILE = "config.json"
LOCAL_DIR = ".metaflow"
# S3's rule for bucket names (3-63 characters, lowercase letters, digits, dots, hyphens)
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
NAMES = ("DEFAULT_DATASTORE", "DATASTORE_SYSROOT_S3", "CARD_S3ROOT", "S3_ENDPOINT_URL")


class S3SettingsError(Exception):
    """A setting a user wrote is unusable; the message is one line naming it and where it is."""


@dataclass(frozen=True, slots=True)
class S3Root:
    """A place in a bucket: `prefix` has no leading or trailing slash and may be empty."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def folder(self) -> str:
        """The prefix to list everything below this root: empty or ending in a slash."""
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, *parts: str) -> str:
        """The key of `parts` (folder names, then a file name) below this root."""
        return self.folder + "/".join(parts)

    def child(self, name: str) -> S3Root:
        return S3Root(self.bucket, self.key(name))


def parse_s3_url(text: str, where: str) -> S3Root:
    """`s3://bucket/prefix` -> S3Root; `where` names the setting in the error."""
    if not text.startswith("s3://"):
        raise S3SettingsError(f"{where}: {text!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise S3SettingsError(f"{where}: {bucket!r} is not a valid S3 bucket name")
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise S3SettingsError(f"{where}: {text!r} has an empty folder name (//)")
    return S3Root(bucket, prefix)


def check_endpoint(text: str, where: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise S3SettingsError(f"{where}: {text!r} is not an http(s):// endpoint URL")
    return text


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where the cards of an S3 datastore are. `origins` says where each value came from."""

    datastore: str  # METAFLOW_DEFAULT_DATASTORE: "local" unless set
    sysroot: S3Root | None
    cards: S3Root | None
    endpoint_url: str | None
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def uses_s3(self) -> bool:
        """Metaflow itself is set up to write to S3 (its default datastore, with a root)."""
        return self.datastore == "s3" and self.cards is not None


@dataclass(frozen=True, slots=True)
class Layer:
    """One place settings come from: the environment or a config file."""

    name: str  # how a user finds it: "environment" or the file's path
    values: Mapping[str, object]


def read_config_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise S3SettingsError(f"{path}: cannot read Metaflow config ({error.strerror})") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        raise S3SettingsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise S3SettingsError(f"{path}: a Metaflow config must be a JSON object")
    return values


def global_config(env: Mapping[str, str], home: Path) -> Layer | None:
    """`$METAFLOW_HOME/config[_<profile>].json`; a profile without its file is an error, as in Metaflow."""
    folder = Path(env.get("METAFLOW_HOME", str(home / ".metaflowconfig"))).expanduser()
    profile = env.get("METAFLOW_PROFILE")
    path = folder / (f"config_{profile}.json" if profile else CONFIG_FILE)
    if path.is_file():
        return Layer(str(path), read_config_file(path))
    if profile:
        raise S3SettingsError(f"METAFLOW_PROFILE {profile!r}: no {path.name} in {folder}")
    return None


def local_config(cwd: Path) -> Layer | None:
    """`config.json` in the nearest `.metaflow` folder at or above `cwd` (Metaflow's project config)."""
    for folder in (cwd, *cwd.parents):
        if (folder / LOCAL_DIR).is_dir():
            path = folder / LOCAL_DIR / CONFIG_FILE
            return Layer(str(path), read_config_file(path)) if path.is_file() else None
    return None


def lookup(name: str, layers: list[Layer]) -> tuple[str, str] | None:
    """(value, where it came from) of `METAFLOW_<name>` in the first layer that has it."""
    key = f"METAFLOW_{name}"
    for layer in layers:
        if key in layer.values:
            value = layer.values[key]
            if not isinstance(value, str):
                raise S3SettingsError(f"{layer.name}: {key} must be a string, not {type(value).__name__}")
            return value, layer.name
    return None


def read_settings(env: Mapping[str, str], cwd: Path, home: Path) -> S3Settings:
    """Metaflow's S3 settings as it would see them running in `cwd` with `env` and `home`."""
    layers = [Layer("environment", env)]
    layers += [layer for layer in (local_config(cwd), global_config(env, home)) if layer]
    found = {name: hit for name in NAMES if (hit := lookup(name, layers)) is not None}
    origins = {f"METAFLOW_{name}": where for name, (_, where) in found.items()}

    def value(name: str) -> tuple[str, str] | None:
        hit = found.get(name)
        return (hit[0], f"METAFLOW_{name} ({hit[1]})") if hit and hit[0] else None

    sysroot = parse_s3_url(*hit) if (hit := value("DATASTORE_SYSROOT_S3")) else None
    cards = parse_s3_url(*hit) if (hit := value("CARD_S3ROOT")) else None
    if cards is None and sysroot is not None:
        cards = sysroot.child(CARDS_DIR)
    endpoint = check_endpoint(*hit) if (hit := value("S3_ENDPOINT_URL")) else None
    datastore = found["DEFAULT_DATASTORE"][0] if "DEFAULT_DATASTORE" in found else "local"
    return S3Settings(datastore, sysroot, cards, endpoint, origins)


def explicit_root(url: str, settings: S3Settings) -> S3Settings:
    """`--root s3://bucket/prefix`: that datastore, its cards in `mf.cards`, Metaflow's endpoint."""
    sysroot = parse_s3_url(url, "--root")
    return S3Settings("s3", sysroot, sysroot.child(CARDS_DIR), settings.endpoint_url,
                      {**settings.origins, "--root": "command line"})
