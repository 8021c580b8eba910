"""A real S3 endpoint for the tests: moto's S3 server on 127.0.0.1, and real Metaflow flows
run with `--datastore s3` against it (see docs/s3.md for what they leave in the bucket)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.common import metaflow_env, metaflow_s3_env, start_moto_server
from cardserver.config import Config, Roots, WatchTiming
from cardserver.s3.schedule import PollTiming
from cardserver.s3.settings import S3Settings, parse_s3_url

FLOWS = Path(__file__).resolve().parent / "flows"
BUCKET = "cardserver-test"
REGION = "us-east-1"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
FLOW_WAIT = 240  # seconds: card subprocesses and S3 uploads on a loaded 2-core machine


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    bucket: str

    def client(self) -> Any:
        """A plain boto3 client for the tests' own setup and checks (never the server's)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, **_boto_keys())

    def put_many(self, items: dict[str, bytes]) -> None:
        """PUT every key at once, a few in parallel (one by one, 1,000 keys take 40 s)."""
        client = self.client()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: client.put_object(Bucket=self.bucket, Key=item[0], Body=item[1]),
                          items.items()))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS chain, fed from the environment as a user would (for the server in process)."""
    for name, value in {**DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto's S3 server for the whole session, with one empty bucket. Its own process: in the
    test process it would share the GIL with the tests (a PUT took 90 ms instead of 40)."""
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    endpoint = S3Endpoint(server.url, BUCKET)
    try:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def s3_env(workdir: Path, endpoint: S3Endpoint, sysroot: str, **extra: str) -> dict[str, str]:
    """Metaflow writing its datastore to `sysroot` on the moto server; metadata stays local."""
    return {**metaflow_env(workdir, "tester"), **metaflow_s3_env(endpoint.url, sysroot), **extra}


@dataclass(frozen=True)
class S3Run:
    flow: str
    run_id: str
    sysroot: str  # s3://bucket/prefix
    workdir: Path  # where the flow ran: its local metadata is in workdir/.metaflow

    @property
    def prefix(self) -> str:
        """The datastore's key prefix inside the bucket, with a trailing slash."""
        return self.sysroot.split("/", 3)[3] + "/"


def run_s3_flow(script: str, workdir: Path, endpoint: S3Endpoint, prefix: str, exit_code: int = 0,
                **extra_env: str) -> S3Run:
    """Run tests/flows/`script` to its end (`exit_code`) with `--datastore s3` under s3://bucket/`prefix`."""
    sysroot = f"s3://{endpoint.bucket}/{prefix}"
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(FLOWS / script), "--no-pylint", "run"],
        cwd=workdir, env=s3_env(workdir, endpoint, sysroot, **extra_env),
        capture_output=True, text=True, timeout=FLOW_WAIT, check=False,
    )
    assert done.returncode == exit_code, (done.stdout + done.stderr)[-3000:]
    # s3_card_flow.py -> S3CardFlow
    flow = "".join(part.title() for part in script.removesuffix(".py").split("_"))
    # The run id, from the local metadata (`--run-id-file` is written only when the run succeeds)
    [run_id] = [path.name for path in (workdir / ".metaflow" / flow).iterdir() if path.name.isdigit()]
    return S3Run(flow, run_id, sysroot, workdir)


@dataclass
class LiveRun:
    """tests/flows/s3_live_flow.py running in `workdir` against the moto server; its live card
    waits for `go()` before its updates."""

    process: subprocess.Popen[str]
    workdir: Path
    sysroot: str
    flow: str = "S3LiveFlow"

    def go(self) -> None:
        (self.workdir / "go").touch()

    def finish(self) -> S3Run:
        """Waits for the run to end (it fails: a foreach item raises) and returns it."""
        self.go()
        self.process.wait(timeout=FLOW_WAIT)
        out = (self.workdir / "flow.log").read_text()
        assert self.process.returncode == 1, out[-3000:]
        runs = (self.workdir / ".metaflow" / self.flow).iterdir()
        [run_id] = [path.name for path in runs if path.name.isdigit()]
        return S3Run(self.flow, run_id, self.sysroot, self.workdir)


@pytest.fixture(scope="session")
def s3_live_run(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    """One run of tests/flows/s3_live_flow.py, started when first asked for and shared: the live
    test watches it, later tests read it finished."""
    workdir = tmp_path_factory.mktemp("s3live")
    sysroot = f"s3://{s3_server.bucket}/live"
    with open(workdir / "flow.log", "w") as output:  # a file: a full pipe would stall the flow
        process = subprocess.Popen(
            [sys.executable, str(FLOWS / "s3_live_flow.py"), "--no-pylint", "run"],
            cwd=workdir, env=s3_env(workdir, s3_server, sysroot), stdout=output, stderr=subprocess.STDOUT,
            text=True,
        )
    live = LiveRun(process, workdir, sysroot)
    try:
        yield live
    finally:
        live.go()
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_card_run(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> S3Run:
    """One finished run of tests/flows/s3_card_flow.py in the moto bucket, shared by the session."""
    run = run_s3_flow("s3_card_flow.py", tmp_path_factory.mktemp("s3flow"), s3_server, "datastore")
    assert run.flow == "S3CardFlow"
    return run


@pytest.fixture(scope="session")
def s3_failed_run(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> S3Run:
    """One run of tests/flows/s3_fail_flow.py (its start step raises), its cards under a
    METAFLOW_CARD_S3ROOT apart from the datastore: s3://bucket/elsewhere/cards."""
    run = run_s3_flow("s3_fail_flow.py", tmp_path_factory.mktemp("s3fail"), s3_server, "failing", exit_code=1,
                      METAFLOW_CARD_S3ROOT=f"s3://{s3_server.bucket}/elsewhere/cards")
    assert run.flow == "S3FailFlow"
    return run


# --- the server on S3, in process ---------------------------------------------------------------

# The tests' pace: what the server does every 5 s or 30 s, they see done in a second
FAST = PollTiming(card_seconds=0.1, viewed_run_seconds=0.5, unviewed_run_seconds=1.0,
                  min_discovery_seconds=0.5, idle_lists_per_minute=600)


def settings_for(endpoint_url: str, sysroot: str | None, cards: str | None = None) -> S3Settings:
    """A datastore at `sysroot` (None: cards only) with its cards in mf.cards or at `cards`."""
    root = parse_s3_url(sysroot, "test") if sysroot else None
    card_root = parse_s3_url(cards, "test") if cards else root.child("mf.cards") if root else None
    return S3Settings("s3", root, card_root, endpoint_url)


def s3_config(workdir: Path, settings: S3Settings, timing: PollTiming = FAST) -> Config:
    """The server as started in `workdir` (its `.metaflow` is where a local runtime's _meta is)."""
    datastore = workdir / ".metaflow"
    return Config(Roots(datastore, datastore / "mf.cards"), port=0, s3=settings, s3_timing=timing,
                  timing=WatchTiming(status_grace_seconds=0))


async def get_json(client: Any, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, (path, response.status, await response.text())
    return await response.json()
