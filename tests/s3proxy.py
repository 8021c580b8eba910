"""A small HTTP proxy in front of moto's S3 server that injects the faults real S3 has:
503 SlowDown for a while, 403 on part of a bucket, dropped connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


def s3_error(status: int, code: str, message: str) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


@dataclass
class FaultProxy:
    upstream: str
    slowdowns: int = 0  # answer this many next requests with 503 SlowDown
    drops: int = 0  # drop the connection of this many next requests
    denied: str = ""  # answer 403 AccessDenied to any request whose path and query hold this
    requests: list[str] = field(default_factory=list)  # "METHOD /path?query", each one seen

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        if self.drops:
            self.drops -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if self.slowdowns:
            self.slowdowns -= 1
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        if self.denied and self.denied in request.path_qs:
            return s3_error(403, "AccessDenied", "Access Denied")
        return await self.forward(request)

    async def forward(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read(),
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=answer.status, body=body, headers=kept)


async def start_proxy(upstream: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    """(proxy, its URL) on 127.0.0.1, for the life of one test."""
    proxy = FaultProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
