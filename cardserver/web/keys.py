"""Typed application state."""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web

from ..config import Config
from ..pipeline import Pipeline
from .cards import CardPages
from .security import Guard

CONFIG = web.AppKey("config", Config)
PIPELINE = web.AppKey("pipeline", Pipeline)
GUARD = web.AppKey("guard", Guard)
CARD_PAGES = web.AppKey("card_pages", CardPages)
SOCKETS = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
SOCKET_TASKS = web.AppKey("socket_tasks", set[asyncio.Task[None]])
# Connections that sent a complete request head: the header deadline spares them.
SEEN_TRANSPORTS = web.AppKey("seen_transports", weakref.WeakSet[asyncio.BaseTransport])
