"""The aiohttp application: state, routes, lifecycle. Building it opens no port."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..config import Config
from ..feed import shown_to, visible_to
from ..localsource import LocalSource
from ..pipeline import Pipeline
from ..prescan import Prescan
from ..source import Source
from . import api, pages, tasks
from .cards import CardPages
from .keys import (
    CARD_PAGES,
    CONFIG,
    FEED,
    GUARD,
    HUB,
    INDEX,
    READY,
    SEEN_TRANSPORTS,
    SOCKETS,
    SOURCE,
    TASKS,
)
from .security import Guard, make_middleware
from .socket import close_all, websocket


def create_app(config: Config, first_scan: Prescan | None = None) -> web.Application:
    guard = Guard.from_config(config)
    seen: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
    source = pick_source(config, first_scan)
    pipeline = Pipeline(source, config.timing.status_grace_seconds)
    pipeline.hub.watches.append(shown_to(source.show))  # the hub knows what is looked at
    pipeline.hub.sight_watches.append(visible_to(source.visible))  # ... and what is on screen
    app = web.Application(
        middlewares=[
            make_middleware(guard, config.base_url, seen),
            after_first_scan(pipeline.ready, config.base_url),
        ],
        client_max_size=64 * 1024,  # we take no uploads
        # After each response the next request head must be complete within this, as the first
        # one's must (`HeaderDeadline`): it bounds idle keep-alive and slow heads alike.
        handler_args={"keepalive_timeout": config.limits.header_timeout_seconds},
    )
    app[CONFIG] = config
    app[GUARD] = guard
    app[INDEX] = pipeline.index
    app[HUB] = pipeline.hub
    app[FEED] = pipeline.feed
    app[TASKS] = pipeline.tasks
    app[SOURCE] = source
    app[READY] = pipeline.ready
    app[CARD_PAGES] = CardPages(source.read_card)
    app[SOCKETS] = weakref.WeakSet()
    app[SEEN_TRANSPORTS] = seen
    base = config.base_url
    app.router.add_get(f"{base}ws", websocket)
    tasks.add_routes(app, base)  # before the API's catch-all
    pages.add_routes(app, base)  # (one of its routes is under api/)
    api.add_routes(app, base)
    app.cleanup_ctx.append(running(pipeline))
    app.on_shutdown.append(close_all)
    return app


def pick_source(config: Config, first_scan: Prescan | None) -> Source:
    """The local disk, or S3 when the config says so (only then is the S3 reader imported)."""
    if config.s3 is None:
        return LocalSource(config, first_scan)
    from ..s3.source import S3Source

    return S3Source(config, config.s3, config.s3_timing)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def after_first_scan(ready: asyncio.Event, base: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The port opens at once, so the viewer's page and assets load while the datastore is
    read; what needs the index (API, sockets, cards) waits for the first scan, never half."""
    gated = (f"{base}api/", f"{base}ws", f"{base}card/", f"{base}card-html/")
    always = f"{base}api/status"

    @web.middleware
    async def wait_for_index(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not ready.is_set() and request.path.startswith(gated) and request.path != always:
            await ready.wait()
        return await handler(request)

    return wait_for_index


def running(pipeline: Pipeline) -> Callable[[web.Application], AsyncIterator[None]]:
    """The pipeline runs for the app's lifetime (a `cleanup_ctx`)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        await pipeline.start()
        yield
        await pipeline.stop()

    return run
