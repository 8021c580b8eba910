"""Which cards are visible, not only watched (issue 14): the hub counts, per topic, the sockets
that show it (a page that never names one shows all it subscribes to); the websocket's
`visible` request names the one card a page shows, and a malformed one is answered with an
error on a socket that stays open."""

from __future__ import annotations

from typing import Any

from conftest import make_config, next_message, subscribe

from cardserver.config import Roots
from cardserver.hub import Hub, Subscriber
from cardserver.web.keys import GUARD, HUB

A = "card/F/1/start/1/blank-aaaa"
B = "card/F/1/start/1/blank-bbbb"


def watched_hub() -> tuple[Hub, list[tuple[str, bool]], list[tuple[str, bool]]]:
    hub = Hub()
    watched: list[tuple[str, bool]] = []
    seen: list[tuple[str, bool]] = []
    hub.watches.append(lambda topic, on: watched.append((topic, on)))
    hub.sight_watches.append(lambda topic, on: seen.append((topic, on)))
    return hub, watched, seen


def member(hub: Hub, *topics: str, shows: str | None = "unnamed") -> Subscriber:
    subscriber = Subscriber(1 << 20)
    if shows != "unnamed":
        hub.show(subscriber, shows)
    for topic in topics:
        hub.subscribe(subscriber, topic, ())
    return subscriber


def test_a_page_that_never_names_a_card_shows_every_one_it_subscribes_to() -> None:
    hub, watched, seen = watched_hub()
    page = member(hub, A, B)
    assert hub.visible(A) and hub.visible(B)
    assert watched == [(A, True), (B, True)] and seen == [(A, True), (B, True)]
    hub.leave(page)
    assert not hub.visible(A) and set(seen[-2:]) == {(A, False), (B, False)}
    assert set(watched[-2:]) == {(A, False), (B, False)}


def test_a_viewer_that_names_its_card_keeps_the_others_hidden_but_watched() -> None:
    hub, watched, seen = watched_hub()
    viewer = member(hub, A, B, shows=A)
    assert hub.visible(A) and not hub.visible(B)
    assert hub.has_subscribers(B) and seen == [(A, True)]
    hub.show(viewer, B)  # the viewer switches cards: both stay watched
    assert seen == [(A, True), (A, False), (B, True)] and watched == [(A, True), (B, True)]
    hub.show(viewer, None)  # the task view, or a hidden browser tab
    assert seen[-1] == (B, False) and not hub.visible(A) and not hub.visible(B)


def test_a_card_is_visible_while_any_socket_shows_it() -> None:
    hub, _, seen = watched_hub()
    keeping = member(hub, A, B, shows=B)
    showing = member(hub, A, shows=A)
    assert hub.visible(A) and seen == [(B, True), (A, True)]
    hub.show(keeping, A)  # two now show it: one leaving changes nothing
    hub.leave(showing)
    assert hub.visible(A) and seen == [(B, True), (A, True), (B, False)]
    hub.unsubscribe(keeping, A)
    assert not hub.visible(A) and seen[-1] == (A, False)


def test_naming_a_card_before_subscribing_makes_it_visible_on_subscribe_and_once() -> None:
    hub, watched, seen = watched_hub()
    viewer = member(hub, shows=A)
    assert seen == []
    hub.subscribe(viewer, A, ())
    hub.subscribe(viewer, A, ())  # a resync subscribes again: not a second viewer
    assert seen == [(A, True)] and watched == [(A, True)]
    hub.unsubscribe(viewer, A)
    assert seen == [(A, True), (A, False)] and watched == [(A, True), (A, False)]  # sight goes first


async def test_the_socket_names_the_visible_card_and_refuses_bad_requests(
    start_app: Any, roots: Roots
) -> None:
    client = await start_app(make_config(roots))
    hub: Hub = client.app[HUB]
    ws = await client.ws_connect("/ws")
    await next_message(ws, lambda m: m.get("type") == "hello")
    await ws.send_json({"op": "visible", "topic": A})
    for topic in (A, B):
        await subscribe(ws, topic)
        await next_message(ws, lambda m, t=topic: m.get("topic") == t and m.get("type") == "card")
    assert hub.visible(A) and not hub.visible(B) and hub.has_subscribers(B)
    for bad, what in (({"op": "visible"}, None), ({"op": "visible", "topic": 5}, None),
                      ({"op": "visible", "topic": "runs/F"}, "runs/F"),
                      ({"op": "visible", "topic": "card/../x"}, "card/../x")):
        await ws.send_json(bad)
        error = await next_message(ws, lambda m: m.get("type") == "error")
        assert error["topic"] == what and "card's topic" in error["error"], error
    assert hub.visible(A) and not hub.visible(B)  # a bad request changed nothing
    await ws.send_json({"op": "visible", "topic": None})
    await ws.send_json({"op": "visible", "topic": B})
    await subscribe(ws, B)  # the socket still answers: a round trip after the requests
    await next_message(ws, lambda m: m.get("topic") == B and m.get("type") == "card")
    assert hub.visible(B) and not hub.visible(A)
    await ws.close()
    assert not ws.exception()


async def test_a_card_socket_may_name_only_its_own_card(start_app: Any, roots: Roots) -> None:
    client = await start_app(make_config(roots))
    hub: Hub = client.app[HUB]
    params = {"card": A.removeprefix("card/"), "cap": client.app[GUARD].capability(A)}
    ws = await client.ws_connect("/ws", params=params)
    await subscribe(ws, A)
    await next_message(ws, lambda m: m.get("topic") == A and m.get("type") == "card")
    assert hub.visible(A)  # a host page never names its card: it shows it
    await ws.send_json({"op": "visible", "topic": B})
    error = await next_message(ws, lambda m: m.get("type") == "error")
    assert error["topic"] == B and "one card" in error["error"]
    await ws.send_json({"op": "visible", "topic": None})
    await ws.send_json({"op": "visible", "topic": A})
    await subscribe(ws, A)  # a round trip: the requests before it were handled
    await next_message(ws, lambda m: m.get("topic") == A and m.get("type") == "card")
    assert hub.visible(A) and not ws.closed
