"""A real Metaflow live card on S3 (moto's S3 server).

`S3Cards` is the card store of bench/realcard.py's flow run with `--datastore s3`: the flow
writes to moto directly, the benchmark then PUTs the card's data update itself, as Metaflow's
`card create` does (one PUT of the whole object).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.common import S3_DUMMY_CREDENTIALS, metaflow_s3_env

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
