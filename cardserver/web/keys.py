"""Typed application state: the narrow things the handlers use (never the pipeline itself)."""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web

from ..config import Config
from ..feed import Feed
from ..hub import Hub
from ..index import Index
from ..source import Source
from ..taskfeed import TaskFeed
from .cards import CardPages
from .security import Guard

CONFIG = web.AppKey("config", Config)
INDEX = web.AppKey("index", Index)  # queries only
HUB = web.AppKey("hub", Hub)
FEED = web.AppKey("feed", Feed)  # a new subscriber's current state
TASKS = web.AppKey("tasks", TaskFeed)  # task details, and their topic
SOURCE = web.AppKey("source", Source)  # reads on demand: card bytes, data updates, logs
READY = web.AppKey("ready", asyncio.Event)  # the first read is in the index
GUARD = web.AppKey("guard", Guard)
CARD_PAGES = web.AppKey("card_pages", CardPages)
SOCKETS = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
# Connections that sent a complete request head: the header deadline spares them.
SEEN_TRANSPORTS = web.AppKey("seen_transports", weakref.WeakSet[asyncio.BaseTransport])
