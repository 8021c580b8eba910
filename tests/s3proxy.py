"""A small HTTP proxy in front of moto's S3 server that injects the faults real S3 has:
503 SlowDown for a while, 403 on part of a bucket, dropped connections, a key gone between its
listing and its GET; and one a hostile endpoint has: listings that say IsTruncated forever. It
counts every request by kind (what S3 would bill), and the bytes and Range of every GET.

In a test: `async for proxy, url in start_proxy(upstream)`. As its own process (a server under
test or a benchmark talks to it while the caller sleeps or blocks):
    python tests/s3proxy.py --upstream http://127.0.0.1:PORT [--port N]
prints `proxy at http://127.0.0.1:N`; `GET /__proxy__/state` answers the counts and faults as
JSON, `POST /__proxy__/state` with a JSON object sets faults (`slow_for` seconds of SlowDown,
`denied`, `gone`, `endless`, `drops`, `slowdowns`) and `"reset": true` zeroes the counts."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


def s3_error(status: int, code: str, message: str) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def request_kind(method: str, path: str, query: str) -> str:
    """What S3 bills a request as: LIST (a bucket listing), GET (GET or HEAD of an object), PUT."""
    if method == "GET" and "/" not in path.strip("/"):
        return "LIST"
    return "GET" if method in ("GET", "HEAD") else "PUT"


@dataclass(frozen=True)
class Got:
    """An object GET the proxy answered: its path, its Range header, its status, the body bytes sent."""

    path: str
    range: str | None
    status: int
    bytes: int


def never_over(listing: bytes) -> bytes:
    """A ListObjectsV2 answer that says more pages follow, whatever it holds."""
    truncated = re.sub(rb"<IsTruncated>\w+</IsTruncated>", b"<IsTruncated>true</IsTruncated>", listing)
    token = re.sub(rb"<NextContinuationToken>[^<]*</NextContinuationToken>", b"", truncated)
    more = b"</IsTruncated><NextContinuationToken>more</NextContinuationToken>"
    return token.replace(b"</IsTruncated>", more, 1)


@dataclass
class FaultProxy:
    upstream: str
    slowdowns: int = 0  # answer this many next requests with 503 SlowDown
    slow_until: float = 0.0  # answer every request with 503 SlowDown until this time.monotonic()
    drops: int = 0  # drop the connection of this many next requests
    denied: str = ""  # answer 403 AccessDenied to any request whose path and query hold this
    gone: str = ""  # answer 404 NoSuchKey to a GET of any key whose path holds this
    endless: str = ""  # a listing whose query holds this is never over: IsTruncated, always
    requests: list[str] = field(default_factory=list)  # "METHOD /path?query", each one seen
    gets: list[Got] = field(default_factory=list)  # each object GET answered, with its bytes
    getting: int = 0  # object GETs being answered now
    most_getting: int = 0  # the most at once
    kinds: Counter[str] = field(default_factory=Counter)  # LIST / GET / PUT, each one seen
    not_modified: int = 0  # answers 304 from upstream
    started: float = field(default_factory=time.monotonic)
    session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/__proxy__/"):
            return await self.control(request)
        self.requests.append(f"{request.method} {request.path_qs}")
        kind = request_kind(request.method, request.path, request.query_string)
        self.kinds[kind] += 1
        if self.drops:
            self.drops -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if self.slowdowns or time.monotonic() < self.slow_until:
            self.slowdowns = max(0, self.slowdowns - 1)
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        if self.denied and self.denied in request.path_qs:
            return s3_error(403, "AccessDenied", "Access Denied")
        if self.gone and request.method in ("GET", "HEAD") and self.gone in request.path:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        endless = bool(self.endless) and kind == "LIST" and self.endless in request.path_qs
        get = kind == "GET" and request.method == "GET"
        self.getting += get
        self.most_getting = max(self.most_getting, self.getting)
        try:
            answer = await self.forward(request, endless)
        finally:
            self.getting -= get
        self.not_modified += answer.status == 304
        if get:
            body = answer.body if isinstance(answer.body, bytes) else b""
            self.gets.append(Got(request.path, request.headers.get("Range"), answer.status, len(body)))
        return answer

    async def forward(self, request: web.Request, endless: bool = False) -> web.Response:
        if self.session is None:  # one pool of connections upstream, as a real client keeps
            self.session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = URL(self.upstream + request.path_qs, encoded=True)
        if endless:  # every page is the first page again, said to go on
            url = url.without_query_params("continuation-token")
        data = await request.read()
        async with self.session.request(request.method, url, headers=headers, data=data) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            body = never_over(body) if endless else body
            return web.Response(status=answer.status, body=body, headers=kept)

    def state(self) -> dict[str, Any]:
        return {"kinds": dict(self.kinds), "not_modified": self.not_modified,
                "seconds": time.monotonic() - self.started, "requests": len(self.requests),
                "gets": [[got.path, got.range, got.status, got.bytes] for got in self.gets],
                "most_getting": self.most_getting,
                "slow_for": max(0.0, self.slow_until - time.monotonic()), "denied": self.denied,
                "gone": self.gone, "endless": self.endless, "drops": self.drops, "slowdowns": self.slowdowns}

    def set_faults(self, faults: dict[str, Any]) -> None:
        if faults.get("reset"):
            self.requests.clear()
            self.gets.clear()
            self.most_getting = self.getting
            self.kinds.clear()
            self.not_modified, self.started = 0, time.monotonic()
        if "slow_for" in faults:
            self.slow_until = time.monotonic() + float(faults["slow_for"])
        for name in ("denied", "gone", "endless"):
            if name in faults:
                setattr(self, name, str(faults[name]))
        for name in ("drops", "slowdowns"):
            if name in faults:
                setattr(self, name, int(faults[name]))

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.set_faults(await request.json())
        return web.json_response(self.state())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def start_proxy(upstream: str, port: int = 0) -> AsyncIterator[tuple[FaultProxy, str]]:
    """(proxy, its URL) on 127.0.0.1, for the life of one test."""
    proxy = FaultProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await proxy.close()


async def serve(upstream: str, port: int) -> None:
    async for _, url in start_proxy(upstream, port):
        print(f"proxy at {url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A fault-injecting, counting proxy in front of S3")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    asyncio.run(serve(options.upstream, options.port))
