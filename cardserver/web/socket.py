"""The websocket: one per page of ours (the viewer, or a card's host page; never card HTML).
The page subscribes to topics; the server queues each topic's current state, then every
change, in a per-socket mailbox drained by one writer task.

`ws?card=F/R/S/T/C&cap=...` is a card host page's socket: held to that one card's topic (the
capability stands in for the cookie a cross-site frame cannot send).
Client -> server, JSON text frames of at most a few KiB:
    {"op": "subscribe" | "unsubscribe", "topic": "..."}
    {"op": "visible", "topic": "card/F/R/S/T/C" | null}
`visible` names the one card the page shows now (null: none, e.g. a task view or a hidden
browser tab); its other card subscriptions are then only kept (loaded, hidden), which a source
that polls asks for slowly, and at once when one is named visible again. The viewer sends it
whenever the shown card changes and first thing after each (re)connect. A socket that never
sends it shows every card it subscribes to (a card's own page, older viewers). A card counts
as visible while any socket shows it.
Server -> client: {"type": "hello", ...} first, then feed messages ({"topic", "type", ...}) and
{"type": "error", "topic", "error"} for a refused subscription or a malformed request (the
socket stays open).
Close codes: 4403 a topic outside the socket's card, 4008 too slow (reconnect and resync).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import weakref
from contextlib import suppress
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..feed import Topic, parse_topic
from ..hub import Message, Overflow, Subscriber
from .keys import CONFIG, FEED, HUB, SOCKETS, TASKS
from .security import json_error, socket_card

log = logging.getLogger("cardserver.socket")

CLOSE_CAPABILITY = 4403
CLOSE_TOO_SLOW = 4008
VERSION = 1


async def websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    limits = request.app[CONFIG].limits
    # Origin, token and capability were checked by the security middleware.
    if request.headers.get("Upgrade", "").lower() != "websocket":
        # What a page's failure probe gets when it reaches us: the upgrade was lost on the way.
        return json_error(426, "this is the websocket endpoint: the upgrade did not reach the server")
    only = socket_card(request)
    if only is not None and ((card := parse_topic(only)) is None or card.kind != "card"):
        return json_error(400, "?card= names no card")
    sockets = request.app[SOCKETS]
    if len(sockets) >= limits.max_sockets:
        return json_error(503, "too many open websockets")
    ws = web.WebSocketResponse(
        heartbeat=limits.heartbeat_seconds,
        max_msg_size=limits.max_inbound_message,
        # permessage-deflate would compress each message once per socket (not once per topic)
        # and hold ~250 KB of zlib state per socket: 500 sockets cost 120 MB (bench/fanout.py).
        compress=False,
    )
    await ws.prepare(request)
    bound_send_buffer(request, limits.send_buffer_bytes)
    sockets.add(ws)
    subscriber = Subscriber(limits.mailbox_bytes)
    writer = asyncio.create_task(write(ws, subscriber, limits.stall_seconds, request))
    session = Session(request, ws, subscriber, only)
    subscriber.mailbox.put(Message("", "hello", json.dumps({"type": "hello", "version": VERSION})))
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if not await session.handle(msg.data):
                    break
            elif msg.type is WSMsgType.BINARY:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text frames only")
                break
            else:
                break
    finally:
        hub.leave(subscriber)
        subscriber.mailbox.close()
        writer.cancel()
        with suppress(asyncio.CancelledError):
            await writer
        sockets.discard(ws)
    return ws


class Session:
    """What one socket asked for; checks every request against the socket's rights."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, subscriber: Subscriber,
        only: str | None,
    ) -> None:
        self.app = request.app
        self.ws = ws
        self.subscriber = subscriber
        self.only = only  # a card host page's socket: that card's topic and nothing else

    async def handle(self, text: str) -> bool:
        """Apply one client message; False when the socket must close."""
        request = decode(text)
        if request is None:
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad message")
            return False
        op, name = request.get("op"), request.get("topic")
        if op == "visible":
            return self.visible(name, "topic" in request)
        topic = parse_topic(name) if isinstance(name, str) else None
        if op not in ("subscribe", "unsubscribe") or topic is None:
            self.error(name, "unknown operation or topic")
            return True
        if op == "unsubscribe":
            self.app[HUB].unsubscribe(self.subscriber, str(topic))
            return True
        if self.only is not None and str(topic) != self.only:
            await self.ws.close(code=CLOSE_CAPABILITY, message=b"this socket follows one card")
            return False
        return self.subscribe(topic)

    def visible(self, name: object, named: bool) -> bool:
        """The one card the page shows (None: none); its other cards are kept hidden."""
        topic = parse_topic(name) if isinstance(name, str) else None
        if not named or (name is not None and (topic is None or topic.kind != "card")):
            self.error(name, "visible takes a card's topic, or null")
        elif self.only is not None and topic is not None and str(topic) != self.only:
            self.error(name, "this socket follows one card")
        else:
            self.app[HUB].show(self.subscriber, None if topic is None else str(topic))
        return True

    def subscribe(self, topic: Topic) -> bool:
        limit = self.app[CONFIG].limits.max_subscriptions
        if str(topic) not in self.subscriber.topics and len(self.subscriber.topics) >= limit:
            self.error(str(topic), f"at most {limit} subscriptions per socket")
            return True
        # A card's first viewer tells the source (a hub watch), which reads its data update.
        self.app[HUB].subscribe(self.subscriber, str(topic), self.app[FEED].initial(topic))
        if topic.task is not None:
            self.app[TASKS].refresh(topic.task)  # its details are read by the source, then published
        return True

    def error(self, topic: object, text: str) -> None:
        payload = json.dumps({"type": "error", "topic": topic if isinstance(topic, str) else None,
                              "error": text})
        self.subscriber.mailbox.put(Message("", f"error:{topic}", payload))


def decode(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # `[[[[...` within the size cap exhausts the C stack guard
        return None
    return value if isinstance(value, dict) else None


async def write(
    ws: web.WebSocketResponse, subscriber: Subscriber, stall: float, request: web.Request
) -> None:
    """The socket's only sender. A client that stops reading is dropped, never buffered.

    A send cannot block while the socket's backlog stays under its high-water mark, so it
    needs no timeout then (a `wait_for` per message was a quarter of the fan-out CPU). Once a
    backlog builds, a client that takes nothing of it for `stall` seconds is cut off.
    """
    transport = request.transport
    low, high = transport.get_write_buffer_limits() if transport is not None else (0, 0)
    loop = asyncio.get_running_loop()
    stuck_since: float | None = None
    queued = 0  # our backlog right after the previous send
    try:
        while True:
            text = await subscriber.mailbox.get()
            backlog = transport.get_write_buffer_size() if transport is not None else 0
            if backlog == 0 or backlog < queued:  # the client took something since the last send
                stuck_since = None
            elif stuck_since is None:
                stuck_since = loop.time()
            elif loop.time() - stuck_since > stall:
                raise TimeoutError
            if backlog <= low and backlog + 4 * len(text) + 16 <= high:  # 4: UTF-8 worst case
                await ws.send_str(text)
            else:
                await asyncio.wait_for(ws.send_str(text), stall)
            queued = transport.get_write_buffer_size() if transport is not None else 0
    except Overflow:
        if not ws.closed:
            await close_quickly(ws, CLOSE_TOO_SLOW, b"too slow: reconnect and resync")
    except TimeoutError:
        log.info("dropping a websocket client that stopped reading")
        reset(request)
    except (ConnectionError, RuntimeError):
        pass


def bound_send_buffer(request: web.Request, size: int) -> None:
    """Cap what the kernel queues for a socket: Linux grows it up to 4 MB for a client that
    does not read, which hides the stall from us instead of dropping the client."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def reset(request: web.Request) -> None:
    """Cut a client off with a TCP reset: a plain close queues the FIN behind the data the
    client never read, so the kernel would keep holding it (FIN-WAIT-1) and the client would
    never learn it was dropped."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def close_quickly(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    with suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=message), 0.5)


async def close_all(app: web.Application) -> None:
    """on_shutdown: tell every page we are going away, without waiting on slow ones."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    await asyncio.gather(
        *(close_quickly(ws, WSCloseCode.GOING_AWAY, b"server shutdown") for ws in set(sockets))
    )
