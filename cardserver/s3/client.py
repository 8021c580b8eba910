"""An async, read-only S3 reader on aiobotocore: listings and conditional GETs, with backoff on
throttling, one clear line per fault, and a count of every request by kind (for the cost table).

Credentials come from botocore's standard chain; nothing here prints or logs them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import partial
from typing import Any, TypeVar

from .settings import S3Root

INSTALL_HINT = "S3 datastores need the s3 extra: pip install 'cardserver[s3]'"
# S3 Standard list prices, USD per 1,000 requests (docs/s3.md); a 304 is billed as a GET
PRICE_PER_1000 = {"LIST": 0.005, "GET": 0.0004}
# A listing reads at most this many pages (1,000 keys each on S3: a run of some 25,000 tasks)
# and takes at most LIST_SECONDS, throttled retries included: an endpoint that answers
# IsTruncated forever, or trickles pages, is a fault, not a loop that never ends
MAX_LIST_PAGES = 200
LIST_SECONDS = 120.0
THROTTLED = {"SlowDown", "503", "ServiceUnavailable", "RequestLimitExceeded", "Throttling", "500",
             "InternalError"}
T = TypeVar("T")


class S3Error(Exception):
    """Something about S3 a user can fix or must know; the message is one line."""


class Kind(StrEnum):
    LIST = "LIST"
    GET = "GET"


@dataclass
class RequestCounts:
    """Every HTTP request sent, by kind, retries included (S3 bills each one)."""

    started: float = field(default_factory=time.monotonic)
    sent: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    not_modified: int = 0  # GETs answered 304
    retried: int = 0  # requests sent again after throttling or a dropped connection

    def per_minute(self, now: float | None = None) -> dict[str, float]:
        minutes = max((now if now is not None else time.monotonic()) - self.started, 1e-9) / 60
        return {kind.value: count / minutes for kind, count in self.sent.items()}

    def cost_usd(self) -> float:
        return sum(PRICE_PER_1000[kind.value] * count / 1000 for kind, count in self.sent.items())


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff; gives up once `give_up_after` seconds have passed."""

    base: float = 0.1
    cap: float = 10.0
    give_up_after: float = 120.0  # S3 throttling for a minute must not lose anything

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    size: int
    etag: str
    modified: float  # LastModified, seconds since the epoch (S3 keeps whole seconds)


@dataclass(frozen=True, slots=True)
class Listing:
    folders: list[str]  # common prefixes, each ending in the delimiter
    objects: list[S3Object]


class Got(Enum):
    NEW = "new"  # body and etag hold the object (or the range asked for)
    UNCHANGED = "unchanged"  # the etag asked about is still current (304)
    GONE = "gone"  # no such key, or (a ranged GET) not the version listed: rewritten since


@dataclass(frozen=True, slots=True)
class Fetched:
    outcome: Got
    body: bytes = b""
    etag: str = ""


def load_aiobotocore() -> Any:
    """aiobotocore's session module, or one line saying what to install."""
    try:
        from aiobotocore import session
    except ImportError:
        raise S3Error(INSTALL_HINT) from None
    return session


class S3Reader:
    """`async with S3Reader(endpoint_url) as reader:` then `list_folder`, `list_tree`, `get`,
    `get_range`."""

    def __init__(self, endpoint_url: str | None = None, *, region: str | None = None,
                 backoff: Backoff = Backoff(), connect_timeout: float = 5.0,
                 max_list_pages: int = MAX_LIST_PAGES, list_seconds: float = LIST_SECONDS) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.max_list_pages = max_list_pages
        self.list_seconds = list_seconds
        self.counts = RequestCounts()
        self.throttled = 0  # requests backing off after throttling now
        # Told (True, code) when a first request is throttled, (False, code) when none is any more
        self.on_throttled: Callable[[bool, str], None] | None = None
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> S3Reader:
        session = load_aiobotocore().get_session()
        from aiobotocore.config import AioConfig

        # Retries are ours, so each request is counted and throttling backs off with jitter
        config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=self.connect_timeout,
                           read_timeout=30)
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                  config=config))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def can_list(self, root: S3Root) -> None:
        """One LIST of one key below `root`: S3Error when it cannot be listed at all."""
        args = {"Bucket": root.bucket, "Prefix": root.folder, "MaxKeys": 1}
        await self._send(Kind.LIST, root, root.folder, partial(self._client.list_objects_v2, **args))

    async def list_folder(self, root: S3Root, folder: str = "", delimiter: str | None = "/") -> Listing:
        """Objects and sub-folders of `folder` (a prefix below `root`), every page of them, within
        `max_list_pages` and `list_seconds`: S3Error beyond."""
        folders: list[str] = []
        objects: list[S3Object] = []
        deadline = asyncio.timeout(self.list_seconds)
        try:
            async with deadline:
                async for page in self._pages(root, folder, delimiter):
                    folders += [entry["Prefix"] for entry in page.get("CommonPrefixes", [])]
                    objects += [S3Object(item["Key"], item["Size"], item["ETag"],
                                         item["LastModified"].timestamp())
                                for item in page.get("Contents", [])]
        except TimeoutError:
            if not deadline.expired():
                raise
            raise S3Error(f"listing s3://{root.bucket}/{root.folder + folder} took over "
                          f"{self.list_seconds:g} s, the longest a listing may take") from None
        return Listing(folders, objects)

    async def list_tree(self, root: S3Root, folder: str = "") -> list[S3Object]:
        """Every object below `folder`, however deep."""
        return (await self.list_folder(root, folder, delimiter=None)).objects

    async def _pages(self, root: S3Root, folder: str, delimiter: str | None) -> AsyncIterator[Any]:
        args: dict[str, Any] = {"Bucket": root.bucket, "Prefix": root.folder + folder}
        if delimiter:
            args["Delimiter"] = delimiter
        for _ in range(self.max_list_pages):
            page = await self._send(Kind.LIST, root, args["Prefix"],
                                    partial(self._client.list_objects_v2, **args))
            yield page
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]
        raise S3Error(f"listing s3://{root.bucket}/{args['Prefix']} is still truncated after "
                      f"{self.max_list_pages} pages, the most read per listing")

    async def get(self, bucket: str, key: str, etag: str | None = None, max_bytes: int = 64 << 20) -> Fetched:
        """The object at `key`, or UNCHANGED when `etag` is still current, or GONE."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            args["IfNoneMatch"] = etag
        return await self._get(args, max_bytes)

    async def get_range(self, bucket: str, key: str, start: int, end: int, etag: str) -> Fetched:
        """Bytes `start` to `end` (excluded) of the object at `key` while its ETag is `etag`;
        GONE when it has none, or another (rewritten since it was listed)."""
        args = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}", "IfMatch": etag}
        return await self._get(args, end - start)

    async def _get(self, args: dict[str, Any], max_bytes: int) -> Fetched:
        bucket, key = args["Bucket"], args["Key"]

        async def read() -> Fetched:
            response = await self._client.get_object(**args)
            async with response["Body"] as stream:
                if response["ContentLength"] > max_bytes:  # also an endpoint that ignores Range
                    raise S3Error(f"s3://{bucket}/{key} is {response['ContentLength']} bytes, "
                                  f"over the {max_bytes}-byte limit")
                return Fetched(Got.NEW, await stream.read(), response["ETag"])

        try:
            return await self._send(Kind.GET, S3Root(bucket, ""), key, read)
        except _Answered as answer:
            return answer.fetched

    async def _send(self, kind: Kind, root: S3Root, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """Send one request, again after throttling or a dropped connection, until `give_up_after`."""
        deadline = time.monotonic() + self.backoff.give_up_after
        throttled: list[str] = []  # the code S3 throttled this request with, once it has
        try:
            return await self._send_until(kind, root, key, call, deadline, throttled)
        finally:
            if throttled:
                self._throttle(-1, throttled[0])

    def _throttle(self, change: int, code: str) -> None:
        """Count requests backing off; say when the first starts and when the last is through."""
        self.throttled += change
        if self.on_throttled is not None and (self.throttled == 0 or (change > 0 and self.throttled == 1)):
            self.on_throttled(self.throttled > 0, code)

    async def _send_until(self, kind: Kind, root: S3Root, key: str, call: Callable[[], Awaitable[T]],
                          deadline: float, throttled: list[str]) -> T:
        from botocore import exceptions

        attempt = 0
        while True:
            self.counts.sent[kind] += 1
            try:
                return await call()
            except exceptions.ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code not in THROTTLED or time.monotonic() > deadline:
                    raise _explain(code, error, kind, root, key, self.counts) from None
                if not throttled:
                    throttled.append(code)
                    self._throttle(1, code)
            except (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError) as error:
                raise S3Error(f"cannot reach the S3 endpoint {self.endpoint_url or 'of AWS'}: "
                              f"{type(error).__name__}") from None
            except (exceptions.ConnectionClosedError, exceptions.ReadTimeoutError,
                    exceptions.ResponseStreamingError) as error:
                if time.monotonic() > deadline:
                    raise S3Error(f"S3 kept dropping the connection for s3://{root.bucket}/{key}: "
                                  f"{type(error).__name__}") from None
            except exceptions.NoCredentialsError:
                raise S3Error("no AWS credentials found (environment, ~/.aws, SSO or an "
                              "instance role): set them as for the aws CLI") from None
            self.counts.retried += 1
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1


class _Answered(Exception):
    """A GET answered without a body (304 or no such key): not a fault."""

    def __init__(self, fetched: Fetched) -> None:
        self.fetched = fetched


def _explain(code: str, error: Any, kind: Kind, root: S3Root, key: str, counts: RequestCounts) -> Exception:
    where = f"s3://{root.bucket}/{key}"
    if kind is Kind.GET and code in ("304", "NotModified"):
        counts.not_modified += 1
        return _Answered(Fetched(Got.UNCHANGED))
    if kind is Kind.GET and code in ("NoSuchKey", "404", "PreconditionFailed", "412", "InvalidRange", "416"):
        return _Answered(Fetched(Got.GONE))
    if code == "NoSuchBucket":
        return S3Error(f"S3 bucket {root.bucket!r} does not exist (at this endpoint)")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return S3Error(f"access denied ({code}) to {kind.value} {where}: check the credentials' permissions")
    if code in THROTTLED:
        return S3Error(f"S3 kept throttling ({code}) {kind.value} {where}; giving up for now")
    return S3Error(f"S3 answered {code or 'an error'} to {kind.value} {where}")
