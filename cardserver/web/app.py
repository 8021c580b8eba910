"""The aiohttp application: state, routes, lifecycle. Building it opens no port."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..pipeline import Pipeline
from . import api, pages
from .cards import CardPages
from .keys import CARD_PAGES, CONFIG, GUARD, PIPELINE, SEEN_TRANSPORTS, SOCKET_TASKS, SOCKETS
from .security import Guard, make_middleware
from .socket import close_all, websocket


def create_app(config: Config) -> web.Application:
    guard = Guard.from_config(config)
    seen: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
    pipeline = Pipeline(config)
    app = web.Application(
        middlewares=[make_middleware(guard, config.base_url, seen)],
        client_max_size=64 * 1024,  # we take no uploads
    )
    app[CONFIG] = config
    app[GUARD] = guard
    app[PIPELINE] = pipeline
    app[CARD_PAGES] = CardPages(config.roots, config.limits, guard)
    app[SOCKETS] = weakref.WeakSet()
    app[SOCKET_TASKS] = set()
    app[SEEN_TRANSPORTS] = seen
    base = config.base_url
    app.router.add_get(f"{base}ws", websocket)
    api.add_routes(app, base)
    pages.add_routes(app, base)
    app.cleanup_ctx.append(run_pipeline)
    app.on_shutdown.append(close_all)
    return app


async def run_pipeline(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[PIPELINE]
    await pipeline.start()
    await asyncio.wait_for(pipeline.ready.wait(), timeout=120)
    yield
    await pipeline.stop()
