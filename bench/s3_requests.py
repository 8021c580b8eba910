"""S3 reader round trips against moto's S3 server on 127.0.0.1: what one request of each kind
costs in time, and what polling a viewed card would cost in money at S3 list prices.

Only a floor for real S3 (no network, no TLS); it sizes the polling plan in docs/s3.md.
    python bench/s3_requests.py [--smoke] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report, start_moto_server, summary_ms, verdict
from cardserver.s3.client import PRICE_PER_1000, Got, Kind, S3Reader
from cardserver.s3.settings import S3Root

BUCKET = "cardserver-bench"
CARD_BYTES = 1_100_000  # a real Metaflow card's HTML
DATA_POLLS_PER_SECOND = 4  # the data update of the card being viewed
RUN_LISTS_PER_MINUTE = 12  # the task folders of a live run being viewed
HOURLY_BUDGET_USD = 0.02  # issue 12: per live run being viewed
TASK = "mf.cards/F/runs/1/steps/s/tasks/1"
CARD_KEY, DATA_KEY = f"{TASK}/cards/c.html", f"{TASK}/runtime/c.data.json"


def seed(endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=CARD_KEY, Body=b"x" * CARD_BYTES)
    client.put_object(Bucket=BUCKET, Key=DATA_KEY, Body=b"{}" * 1000)
    for name in ("0.attempt.json", "0.task_begin", "0.task_end", "0.DONE.lock", "0.runtime", "0.data.json"):
        client.put_object(Bucket=BUCKET, Key=f"F/1/s/1/{name}", Body=b"{}")


async def timed(count: int, call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - started) * 1000)
    return summary_ms(spent)


async def measure(endpoint: str, count: int) -> tuple[list[list[object]], list[str]]:
    root = S3Root(BUCKET, "")
    async with S3Reader(endpoint) as reader:
        first = await reader.get(BUCKET, DATA_KEY)

        async def unchanged() -> None:
            assert (await reader.get(BUCKET, DATA_KEY, etag=first.etag)).outcome is Got.UNCHANGED

        results = {
            "conditional GET, 304 (ms)": await timed(count, unchanged),
            "GET data update, 2 KB (ms)": await timed(count, lambda: reader.get(BUCKET, DATA_KEY)),
            "GET card HTML, 1.1 MB (ms)": await timed(max(count // 5, 2),
                                                      lambda: reader.get(BUCKET, CARD_KEY)),
            "LIST with delimiter (ms)": await timed(count, lambda: reader.list_folder(root, "F/")),
            "LIST task folder (ms)": await timed(count, lambda: reader.list_tree(root, "F/1/s/1/")),
        }
        counts = reader.counts
    hourly = (DATA_POLLS_PER_SECOND * 3600 * PRICE_PER_1000["GET"]
              + RUN_LISTS_PER_MINUTE * 60 * PRICE_PER_1000["LIST"]) / 1000
    rows: list[list[object]] = [[name, f"p50 {s['p50']:.1f} / p90 {s['p90']:.1f}", "", ""]
                                for name, s in results.items()]
    rows += [
        ["requests sent: LIST / GET", f"{counts.sent[Kind.LIST]} / {counts.sent[Kind.GET]}", "", ""],
        ["GETs answered 304", counts.not_modified, "", ""],
        [f"USD per hour: data {DATA_POLLS_PER_SECOND}/s + task LIST {RUN_LISTS_PER_MINUTE}/min",
         f"{hourly:.4f}", f"<= {HOURLY_BUDGET_USD}", verdict(hourly <= HOURLY_BUDGET_USD)],
    ]
    errors = [] if counts.not_modified == count else [f"{counts.not_modified} of {count} GETs were 304"]
    return rows, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20 requests of each kind")
    parser.add_argument("--requests", type=int, default=200)
    options = parser.parse_args()
    count = 20 if options.smoke else options.requests
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory() as workdir:
        server = start_moto_server(Path(workdir))
        try:
            seed(server.url)
            rows, errors = asyncio.run(measure(server.url, count))
        finally:
            server.stop()
    return report("S3 requests" + (" (smoke)" if options.smoke else ""), rows, errors, options.smoke)


if __name__ == "__main__":
    sys.exit(main())
