"""A real Metaflow live card on S3 (moto's S3 server).

`S3Cards` is the card store of bench/realcard.py's flow run with `--datastore s3`: the flow
writes to moto directly, the benchmark then PUTs the card's data update itself, as Metaflow's
`card create` does (one PUT of the whole object).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.common import S3_DUMMY_CREDENTIALS, Server, metaflow_s3_env

BUCKET = "cardserver-bench"
PREFIX = "bench"  # the datastore's sysroot below the bucket


@dataclass(frozen=True)
class S3Place:
    endpoint: str  # http://127.0.0.1:PORT, moto itself (writes are not the server's requests)
    bucket: str = BUCKET
    prefix: str = PREFIX

    @property
    def sysroot(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @cached_property
    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=body)

    def put_many(self, items: dict[str, bytes], threads: int = 8) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: self.put(*item), items.items()))

    def keys(self, folder: str) -> list[str]:
        """Every key below `folder` (relative to the sysroot), relative to the sysroot."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{folder}")
        return [item["Key"].removeprefix(f"{self.prefix}/") for page in pages
                for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
            return bytes(answer["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None


@dataclass(frozen=True)
class S3Cards:
    """bench/realcard.py's card store on S3: the flow runs with Metaflow's S3 settings."""

    place: S3Place

    def flow_env(self, workdir: Path) -> dict[str, str]:
        return {**metaflow_s3_env(self.place.endpoint, self.place.sysroot),
                "BENCH_CARDS": f"{self.place.sysroot}/mf.cards"}

    def card_names(self, folder: str) -> list[str]:
        return [key.removeprefix("mf.cards/") for key in self.place.keys(f"mf.cards/{folder}")]

    def read(self, name: str) -> bytes | None:
        return self.place.read(f"mf.cards/{name}")

    def write(self, name: str, body: bytes) -> None:
        self.place.put(f"mf.cards/{name}", body)


class Proxy:
    """tests/s3proxy.py running in its own process (bench.common.start_s3_proxy), asked over HTTP."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def state(self, **change: object) -> dict[str, Any]:
        body = json.dumps(change).encode() if change else None
        request = urllib.request.Request(self.server.url + "/__proxy__/state", data=body,
                                         method="POST" if change else "GET")
        with urllib.request.urlopen(request, timeout=10) as answer:
            state: dict[str, Any] = json.load(answer)
            return state

    def reset(self) -> None:
        self.state(reset=True)

    def clear_faults(self) -> None:
        self.state(slow_for=0, denied="", gone="", endless="", drops=0, slowdowns=0)


# --- a run written key by key -------------------------------------------------------------------

VERDICT_OK = b'{"return_code": 0, "killed": false, "success": true}'


@dataclass(frozen=True)
class WrittenRun:
    """A run written key by key in Metaflow's S3 layout, as its tasks would: each task's folder
    (attempt files, then the end and the runtime's verdict) and one live card per task."""

    place: S3Place
    flow: str
    run_id: str
    step: str = "work"
    stem: str = "blank-0123456789abcdef0123456789abcdef"
    token: str = "runtime-1"

    def task_folder(self, task: int) -> str:
        return f"{self.flow}/{self.run_id}/{self.step}/{task}"

    def card_folder(self, task: int) -> str:
        return f"mf.cards/{self.flow}/runs/{self.run_id}/steps/{self.step}/tasks/{task}"

    def card_path(self, task: int) -> str:
        """`Flow/run/step/task/card`, as in our URLs and API."""
        return f"{self.flow}/{self.run_id}/{self.step}/{task}/{self.stem}"

    def html_key(self, task: int) -> str:
        return f"{self.card_folder(task)}/cards/{self.stem}.html"

    def update_key(self, task: int) -> str:
        return f"{self.card_folder(task)}/runtime/{self.stem}.data.json"

    def update(self, data: dict[str, object], token: str | None = None) -> bytes:
        return json.dumps({"reload_token": token or self.token, "created_on": time.time(),
                           "data": data}).encode()

    def started(self, tasks: range, html: Callable[[int], bytes],
                first: Callable[[int], bytes]) -> dict[str, bytes]:
        """The keys of `tasks` once each started and rendered its live card (`html`, `first` update)."""
        began = json.dumps({"time": time.time()}).encode()
        keys: dict[str, bytes] = {}
        for task in tasks:
            keys[f"{self.task_folder(task)}/0.attempt.json"] = began
            keys[f"{self.task_folder(task)}/0.task_begin"] = b"{}"
            keys[self.html_key(task)] = html(task)
            keys[self.update_key(task)] = first(task)
        return keys

    def ended(self, tasks: range) -> dict[str, bytes]:
        """The keys of `tasks` once each succeeded and the local runtime reaped it."""
        keys: dict[str, bytes] = {}
        for task in tasks:
            keys[f"{self.task_folder(task)}/0.task_end"] = b"{}"
            keys[f"{self.task_folder(task)}/0.DONE.lock"] = b""
            keys[f"{self.task_folder(task)}/0.runtime"] = VERDICT_OK
        return keys
