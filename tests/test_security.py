"""The security defenses (DESIGN.md §4, issue 3), each written as the attack it stops.

In-process server (pytest-aiohttp). aiohttp's test client sends `Host: 127.0.0.1:<port>` unless a
test sets it; attacks set their headers explicitly. Requests whose bytes matter (traversal
targets the client would normalize) go over a raw socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from click.testing import CliRunner
from conftest import WAIT, make_config, next_message, subscribe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardserver import cli
from cardserver.config import ConfigError, Limits, Roots
from cardserver.demo import DemoCard, DemoRun, markdown, progress, start_run
from cardserver.layout import LEGACY_STEP, CardFileKind, CardKey, TaskKey, card_path
from cardserver.web.keys import SOCKETS
from cardserver.web.security import costly_route

TOKEN = "s3cret-token-for-tests"
SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"
HOST_CONFIG = re.compile(r'<script type="application/json" id="card-host">(\{.*?\})</script>')
CLEAN_CLOSES = {1000, 1003, 1008, 1009, 4403}


# --- fixtures and helpers ---------------------------------------------------------------------


@dataclass
class Cards:
    """A running run with two live cards, A and B, in different tasks."""

    run: DemoRun
    a: DemoCard
    b: DemoCard

    @property
    def run_topic(self) -> str:
        return f"run/{self.run.key}"


def make_cards(roots: Roots) -> Cards:
    run = start_run(roots.datastore, roots.cards, flow="SecFlow")
    start = run.start_task("start")
    start.finish()
    a = run.start_task("work").add_card(components=[markdown("m", "# card A"), progress("p", 1, 9)])
    b = run.start_task("work").add_card(components=[markdown("m", "# card B"), progress("p", 1, 9)])
    a.update({"p": {"value": 2}})
    b.update({"p": {"value": 3}})
    return Cards(run, a, b)


@pytest.fixture
def cards(roots: Roots) -> Cards:
    return make_cards(roots)


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The server logged no ERROR: an exception escaping a handler is logged as one."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


async def capability_of(client: Any, card: DemoCard, **params: str) -> dict[str, Any]:
    """What the server signed into a card's host page (our page, never the card's HTML)."""
    response = await client.get(f"/card/{card.key}", params=params)
    assert response.status == 200
    found = HOST_CONFIG.search(await response.text())
    assert found is not None, "the card's host page carries no capability"
    config: dict[str, Any] = json.loads(found.group(1))
    return config


def card_socket(client: Any, topic: str, cap: str | None, **headers: str) -> Any:
    """A host page's socket: `ws?card=F/R/S/T/C&cap=...`, held to that card."""
    params = {"card": topic.removeprefix("card/")} | ({"cap": cap} if cap is not None else {})
    return client.ws_connect("/ws", params=params, headers=headers)


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; the close code (None if it dropped the connection)."""

    async def read() -> int | None:
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return ws.close_code

    return await asyncio.wait_for(read(), WAIT)


async def hello(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert (await next_message(ws))["type"] == "hello"


async def raw_request(port: int, target: str, host: str | None = None) -> tuple[int, bytes]:
    """One request with exactly these bytes on the wire: no client-side path normalization."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host_line = f"Host: {host if host is not None else f'127.0.0.1:{port}'}\r\n" if host != "" else ""
    writer.write(f"GET {target} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def assert_reveals_nothing(body: bytes, roots: Roots) -> None:
    text = body.decode("utf-8", "replace")
    assert "root:x:0:0" not in text  # /etc/passwd
    assert SECRET not in text
    assert str(roots.datastore.parent) not in text
    assert "Traceback" not in text


async def wait_left_out(ws: aiohttp.ClientWebSocketResponse, cards: Cards, key: CardKey) -> None:
    """Until the watcher has handled what was just done (an update of card A, written after it,
    arrives), checking that `key` was never listed: nothing reached through a symlink is."""
    topic = f"card/{cards.a.key}"
    await subscribe(ws, topic)
    await next_message(ws, lambda m: m.get("topic") == topic and m.get("type") == "card")
    cards.a.update({"p": {"value": 8}})
    seen: list[dict[str, Any]] = []
    await next_message(ws, lambda m: seen.append(m) is None and m.get("topic") == topic
                       and m.get("type") == "update" and m["data"]["p"]["value"] == 8)
    assert not [m for m in seen if m.get("topic") == f"card/{key}" and m.get("exists")], seen


async def wait_listed(ws: aiohttp.ClientWebSocketResponse, key: CardKey) -> None:
    """Until the index lists the card (the watcher saw it): its topic says `exists`."""
    await next_message(ws, lambda m: m.get("topic") == f"card/{key}" and m.get("type") == "card"
                       and m.get("exists") is True)


# --- Host allowlist (DNS rebinding) -----------------------------------------------------------


async def test_foreign_host_is_refused_with_a_one_line_hint(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    for path in ("/", "/api/flows", f"/card/{cards.a.key}", f"/run/{cards.a.key}",
                 "/static/viewer.js", "/ws", "/no/such/page"):
        response = await client.get(path, headers={"Host": "evil.example"})
        text = await response.text()
        assert response.status == 403, path
        assert text.count("\n") == 1 and text.endswith("\n"), text
        assert "--allow-host evil.example" in text
        assert "SecFlow" not in text


async def test_allow_host_lets_that_name_in(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots, allow_hosts=frozenset({"cards.internal"})))
    for host in ("cards.internal", "cards.internal:8423", "CARDS.internal"):
        response = await client.get("/api/flows", headers={"Host": host})
        assert response.status == 200, host
        assert "SecFlow" in await response.text()
    refused = await client.get("/api/flows", headers={"Host": "other.internal"})
    assert refused.status == 403


async def test_forwarded_headers_never_loosen_the_host_check(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, allow_hosts=frozenset({"cards.internal"})))
    port = client.port
    for spoof in (
        {"X-Forwarded-Host": "localhost"},
        {"X-Forwarded-Host": f"127.0.0.1:{port}"},
        {"X-Forwarded-Host": "cards.internal", "X-Forwarded-Proto": "http"},
        {"Forwarded": "host=localhost;proto=http"},
        {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "X-Original-Host": "localhost"},
    ):
        response = await client.get("/api/flows", headers={"Host": "evil.example", **spoof})
        assert response.status == 403, spoof
        assert "SecFlow" not in await response.text()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LocalHost"])
async def test_loopback_names_are_accepted(
    roots: Roots, cards: Cards, start_app: Any, host: str
) -> None:
    client = await start_app(make_config(roots))
    for value in (host, f"{host}:{client.port}"):
        response = await client.get("/api/flows", headers={"Host": value})
        assert response.status == 200, value


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:abc",
        "127.0.0.1:80:80",
        "[::1",
        "[::1]evil",
        "user@127.0.0.1",
        "127.0.0.1@evil.example",
        "127.0.0.1/evil",
        "127.0.0.1\\evil",
        "127.0.0.1 evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        ":8423",
    ],
)
async def test_malformed_or_lookalike_host_is_refused(
    roots: Roots, cards: Cards, start_app: Any, host: str
) -> None:
    client = await start_app(make_config(roots))
    response = await client.get("/api/flows", headers={"Host": host})
    assert response.status == 403
    assert "SecFlow" not in await response.text()


async def test_missing_host_is_refused(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots))
    status, body = await raw_request(client.port, "/api/flows", host="")
    assert status in (400, 403)
    assert b"SecFlow" not in body


async def test_allow_any_host_with_a_token_accepts_any_host_but_keeps_the_token(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN, allow_any_host=True))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ok = await client.get("/api/flows", headers={"Host": "evil.example", **bearer})
    assert ok.status == 200
    assert "SecFlow" in await ok.text()
    refused = await client.get("/api/flows", headers={"Host": "evil.example"})
    assert refused.status == 401


# --- token --------------------------------------------------------------------------------------


async def test_missing_token_is_401_wrong_token_is_403(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    paths = ("/", f"/run/{cards.run.key}", "/api/flows", "/api/status", f"/card/{cards.a.key}",
             "/static/viewer.js")
    for path in paths:
        missing = await client.get(path, allow_redirects=False)
        assert missing.status == 401, path
        assert "SecFlow" not in await missing.text()
    for path in paths:
        for attempt in (
            {"params": {"token": "wrong-token-value"}},
            {"headers": {"Authorization": "Bearer wrong-token-value"}},
            {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
            {"headers": {"Cookie": "cardserver-0=forged"}},
        ):
            wrong = await client.get(path, allow_redirects=False, **attempt)
            assert wrong.status == 403, (path, attempt)
            assert "SecFlow" not in await wrong.text()
    api = await client.get("/api/flows")
    assert (await api.json())["error"]  # the API answers JSON even when it refuses


@pytest.mark.parametrize("base_url", ["/", "/proxy/8423/"])
async def test_token_in_url_becomes_a_strict_httponly_cookie(
    roots: Roots, cards: Cards, start_app: Any, base_url: str
) -> None:
    client = await start_app(make_config(roots, token=TOKEN, base_url=base_url))
    run_page = f"{base_url}run/{cards.run.key}"
    response = await client.get(run_page, params={"token": TOKEN, "follow": "1"},
                                allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert TOKEN not in location and "token" not in location
    assert "://" not in location and not location.startswith("/")  # relative: proxy-safe
    assert location == f"{cards.run.run}?follow=1"
    root = await client.get(base_url, params={"token": TOKEN}, allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "./"

    cookies = response.cookies
    assert len(cookies) == 1
    morsel = next(iter(cookies.values()))
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == base_url
    assert TOKEN not in morsel.value  # the cookie holds a derived value, never the token
    raw = response.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and f"Path={base_url}" in raw

    with_cookie = {"Cookie": f"{morsel.key}={morsel.value}"}
    page = await client.get(run_page, headers=with_cookie, allow_redirects=False)
    assert page.status == 200
    api = await client.get(f"{base_url}api/flows", headers=with_cookie)
    assert api.status == 200 and "SecFlow" in await api.text()
    async with client.ws_connect(f"{base_url}ws", headers=with_cookie) as ws:
        await hello(ws)


async def test_bearer_token_works_for_pages_api_and_socket(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/api/flows", f"/card/{cards.a.key}"):
        response = await client.get(path, headers=bearer, allow_redirects=False)
        assert response.status == 200, path
    async with client.ws_connect("/ws", headers=bearer) as ws:
        await hello(ws)
        await subscribe(ws, "flows")
        flows = await next_message(ws, lambda m: m.get("type") == "flows")
        assert [f["flow"] for f in flows["flows"]] == ["SecFlow"]


async def test_socket_requires_the_token(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    for attempt in ({}, {"headers": {"Authorization": "Bearer nope-nope-nope"}},
                    {"params": {"token": "nope-nope-nope"}}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", **attempt)
        assert refused.value.status in (401, 403)
    async with client.ws_connect("/ws", params={"token": TOKEN}) as ws:  # no redirect for /ws
        await hello(ws)


async def test_card_url_trades_the_token_for_its_link(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """The token leaves the URL before any page loads (history, referrers, the card's frame)."""
    client = await start_app(make_config(roots, token=TOKEN))
    for route, marker in (("card", "card-html/"), ("card-html", "card A")):
        response = await client.get(f"/{route}/{cards.a.key}", params={"token": TOKEN},
                                    allow_redirects=False)
        assert response.status == 302
        location = response.headers["Location"]
        assert TOKEN not in location and "token" not in location and "cap=" in location
        assert "Set-Cookie" not in response.headers  # a cross-site iframe would not send it back
        page = await client.get(response.url.join(yarl.URL(location)).relative(),
                                allow_redirects=False)
        assert page.status == 200
        text = await page.text()
        assert marker in text and TOKEN not in text
        assert "Set-Cookie" not in page.headers
    assert page.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")


async def test_null_origin_sockets_are_refused_even_with_the_token_off_loopback(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """Issue 16, finding 3: a `null` Origin (any site's sandboxed iframe) used to skip the token
    and get `hello`; 250 of them filled the socket cap. No page of ours is sandboxed and holds a
    socket now, so a null Origin gets nothing before the upgrade, with or without a token."""
    client = await start_app(make_config(roots, host="0.0.0.0", token=TOKEN))
    for _ in range(20):  # the red team's 250, fewer: each one is refused the same way
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers={"Origin": "null"})
        assert refused.value.status == 403
    # Not with the token either, nor with a card's capability: a sandboxed page gets nothing.
    config = await capability_of(client, cards.a, token=TOKEN)
    for attempt in ({"params": {"token": TOKEN}},
                    {"params": {"card": config["topic"][5:], "cap": config["cap"]}}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers={"Origin": "null"}, **attempt)
        assert refused.value.status == 403, attempt
    open_server = await start_app(make_config(roots))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_server.ws_connect("/ws", headers={"Origin": "null"})
    assert refused.value.status == 403
    assert len(client.app[SOCKETS]) == len(open_server.app[SOCKETS]) == 0


async def test_host_page_socket_without_token_follows_its_own_card_only(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """A card's host page opened by its link (a notebook's cross-site frame) has no cookie: its
    socket is let in by the capability signed into the page, and held to that card."""
    client = await start_app(make_config(roots, token=TOKEN))
    config = await capability_of(client, cards.a, token=TOKEN)
    same = {"Origin": f"http://127.0.0.1:{client.port}"}
    async with card_socket(client, config["topic"], config["cap"], **same) as ws:
        await hello(ws)
        await subscribe(ws, config["topic"])
        card = await next_message(ws, lambda m: m.get("type") == "card")
        assert card["topic"] == f"card/{cards.a.key}" and card["exists"] is True
        await subscribe(ws, "flows")
        assert await close_code(ws) == 4403


def test_non_loopback_host_without_token_generates_one(tmp_path: Path) -> None:
    first = cli.build_config(tmp_path / ".metaflow", "0.0.0.0", None, cwd=tmp_path, env={})
    second = cli.build_config(tmp_path / ".metaflow", "0.0.0.0", None, cwd=tmp_path, env={})
    assert first.token is not None and len(first.token) >= 24
    assert second.token is not None and second.token != first.token
    assert cli.startup_url(first).endswith(f"?token={first.token}")
    for host in ("192.168.1.20", "::", "my-laptop.local"):
        assert cli.build_config(tmp_path, host, None, cwd=tmp_path, env={}).token is not None
    for host in (None, "127.0.0.1", "localhost", "::1"):
        assert cli.build_config(tmp_path, host, None, cwd=tmp_path, env={}).token is None


def test_no_token_on_a_non_loopback_host_is_explicit(tmp_path: Path) -> None:
    config = cli.build_config(tmp_path, "0.0.0.0", None, no_token=True, cwd=tmp_path, env={})
    assert config.token is None and config.host == "0.0.0.0"
    given = cli.build_config(tmp_path, "0.0.0.0", None, token=TOKEN, cwd=tmp_path, env={})
    assert given.token == TOKEN


def test_allow_any_host_without_a_token_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--allow-any-host"):
        cli.build_config(tmp_path, None, None, allow_any_host=True, cwd=tmp_path, env={})
    with pytest.raises(ConfigError, match="--allow-any-host"):
        cli.build_config(tmp_path, "0.0.0.0", None, allow_any_host=True, no_token=True,
                         cwd=tmp_path, env={})
    with pytest.raises(ConfigError):
        cli.build_config(tmp_path, None, None, token=TOKEN, no_token=True, cwd=tmp_path, env={})
    with pytest.raises(ConfigError):
        cli.build_config(tmp_path, None, None, token="short", cwd=tmp_path, env={})
    ok = cli.build_config(tmp_path, None, None, allow_any_host=True, token=TOKEN, cwd=tmp_path,
                          env={})
    assert ok.allow_any_host and ok.token == TOKEN


def test_allow_any_host_without_a_token_fails_cleanly_on_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.card, ["server", "--root", str(tmp_path), "--allow-any-host"])
    assert result.exit_code == 2
    assert result.stderr.startswith("card: --allow-any-host needs a token")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


# --- websocket Origin ---------------------------------------------------------------------------


def foreign_origins(port: int) -> list[str]:
    return [
        "http://evil.example",
        "https://evil.example",
        "http://localhost.evil.example",
        f"http://127.0.0.1:{port}.evil.example",
        f"http://127.0.0.1.evil.example:{port}",
        f"http://127.0.0.1:{port}@evil.example",
        f"http://127.0.0.1:{port + 1}",  # another local server is another origin
        f"ws://127.0.0.1:{port}",
        f"file://127.0.0.1:{port}",
        "http://localhost",
        "",
    ]


async def test_foreign_origins_are_refused_before_the_upgrade(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    for origin in foreign_origins(client.port):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers={"Origin": origin})
        assert refused.value.status == 403, origin
    # the server answered each with a plain 403: the socket route still works
    async with client.ws_connect("/ws") as ws:
        await hello(ws)


async def test_a_proxy_on_another_loopback_port_needs_allow_origin(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """nginx without `proxy_set_header Host` sends Host 127.0.0.1:<our port> while the page's
    Origin is the proxy's, say http://localhost:8080. Another loopback origin is still another
    site (any local dev server's pages), so it is refused until named with --allow-origin."""
    proxy = "http://localhost:8080"
    client = await start_app(make_config(roots))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Host": f"127.0.0.1:{client.port}", "Origin": proxy})
    assert refused.value.status == 403
    allowed = await start_app(make_config(roots, allow_origins=frozenset({proxy})))
    headers = {"Host": f"127.0.0.1:{allowed.port}", "Origin": proxy}
    async with allowed.ws_connect("/ws", headers=headers) as ws:
        await hello(ws)


async def test_allowlisted_origin_is_matched_exactly(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, allow_origins=frozenset({"http://good.example"})))
    for origin in ("http://good.example.evil.com", "http://good.exampleevil.com",
                   "http://good.example:8080", "https://good.example", "http://evil.good.example",
                   "http://good.example.", "http://good.example@evil.com"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers={"Origin": origin})
        assert refused.value.status == 403, origin
    for origin in ("http://good.example", "http://good.example/"):
        async with client.ws_connect("/ws", headers={"Origin": origin}) as ws:
            await hello(ws)


async def test_same_origin_and_no_origin_are_accepted(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    port = client.port
    for headers in ({}, {"Origin": f"http://127.0.0.1:{port}"},
                    {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}):
        async with client.ws_connect("/ws", headers=headers) as ws:
            await hello(ws)
            await subscribe(ws, cards.run_topic)
            detail = await next_message(ws, lambda m: m.get("type") == "run-detail")
            assert detail["exists"] is True


async def test_host_page_socket_needs_a_valid_capability(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    topic = f"card/{cards.a.key}"
    good = (await capability_of(client, cards.a, token=TOKEN))["cap"]
    for cap in (None, "", "0" * 40, good[:-1], good.upper(), good + "0"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with card_socket(client, topic, cap):
                pass
        assert refused.value.status in (401, 403), cap
    # A's capability names A: asked for B, or for no card at all, it opens nothing.
    for other in (f"card/{cards.b.key}", "card/"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with card_socket(client, other, good):
                pass
        assert refused.value.status in (400, 401, 403), other
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", params={"cap": good})


async def test_capability_for_card_a_does_not_open_card_b(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    config = await capability_of(client, cards.a, token=TOKEN)
    assert config["topic"] == f"card/{cards.a.key}"
    async with card_socket(client, config["topic"], config["cap"]) as ws:
        await hello(ws)
        await subscribe(ws, f"card/{cards.b.key}")
        assert await close_code(ws) == 4403


@pytest.mark.parametrize("kind", ["flows", "runs", "run"])
async def test_capability_does_not_open_other_topics(
    roots: Roots, cards: Cards, start_app: Any, kind: str
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    config = await capability_of(client, cards.a, token=TOKEN)
    topic = {"flows": "flows", "runs": "runs/SecFlow", "run": cards.run_topic}[kind]
    async with card_socket(client, config["topic"], config["cap"]) as ws:
        await hello(ws)
        await subscribe(ws, topic)
        assert await close_code(ws) == 4403


async def test_capability_opens_its_own_card(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    config = await capability_of(client, cards.a, token=TOKEN)
    async with card_socket(client, config["topic"], config["cap"]) as ws:
        await hello(ws)
        await subscribe(ws, config["topic"])
        card = await next_message(ws, lambda m: m.get("type") == "card")
        assert card["topic"] == config["topic"] and card["exists"] is True
        update = await next_message(ws, lambda m: m.get("type") == "update")
        assert update["data"]["p"]["value"] == 2
        await asyncio.to_thread(cards.a.update, {"p": {"value": 7}})
        live = await next_message(ws, lambda m: m.get("type") == "update"
                                  and m["data"]["p"]["value"] == 7)
        assert live["topic"] == config["topic"]
        # ...and the same socket still cannot reach card B
        await subscribe(ws, f"card/{cards.b.key}")
        assert await close_code(ws) == 4403


async def test_card_html_holds_no_credential(roots: Roots, cards: Cards, start_app: Any) -> None:
    """The untrusted document gets no token, no capability and no socket address: its host
    holds them. Its own URL's `cap` opens that HTML and nothing else."""
    client = await start_app(make_config(roots, token=TOKEN))
    config = await capability_of(client, cards.a, token=TOKEN)
    html_url = config["html"]
    assert html_url.startswith(f"card-html/{cards.a.key}?cap=")
    page = await client.get(f"/{html_url}", allow_redirects=False)
    assert page.status == 200
    text = await page.text()
    assert "card A" in text
    for secret in (TOKEN, config["cap"], "ws?", "WebSocket", "__cardserver ="):
        assert secret not in text, secret
    html_cap = yarl.URL(html_url).query["cap"]
    assert (await client.get(f"/card/{cards.a.key}", params={"cap": html_cap})).status == 403
    assert (await client.get(f"/card-html/{cards.b.key}", params={"cap": html_cap})).status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await card_socket(client, config["topic"], html_cap)


# --- the API from a card page or a foreign page -------------------------------------------------


async def test_api_refuses_null_and_foreign_origins(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    paths = ("/api/flows", "/api/status", "/api/flows/SecFlow/runs", f"/api/runs/{cards.run.key}",
             f"/api/cards/{cards.a.key}")
    for path in paths:
        for origin in ("null", "http://evil.example", f"http://127.0.0.1:{client.port + 1}"):
            response = await client.get(path, headers={"Origin": origin})
            assert response.status == 403, (path, origin)
            assert "SecFlow" not in await response.text()
        same = await client.get(path, headers={"Origin": f"http://127.0.0.1:{client.port}"})
        assert same.status == 200, path
        plain = await client.get(path)
        assert plain.status == 200, path


def costly_paths(cards: Cards) -> list[str]:
    task = cards.a.key.task
    return ["/api/flows", "/api/status", f"/api/runs/{cards.run.key}", f"/api/cards/{cards.a.key}",
            f"/api/cards/{cards.a.key}/page", f"/api/tasks/{task}", f"/api/logs/{task}",
            f"/card-html/{cards.a.key}", "/card-shell/" + "0" * 64]


# What Chromium sends for each way a card (an opaque origin) asks (tests/test_browser_fetchsite.py).
A_CARDS_ASKS = [("cors", "empty"), ("no-cors", "empty"), ("no-cors", "image"), ("no-cors", "script"),
                ("navigate", "iframe")]


def fetch_metadata(site: str, mode: str, dest: str) -> dict[str, str]:
    return {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}


async def test_what_another_site_asks_is_refused_on_every_costly_route_in_every_mode(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    for path in costly_paths(cards):
        for site in ("cross-site", "same-site"):  # same-site: another port of localhost
            for mode, dest in A_CARDS_ASKS:
                response = await client.get(path, headers=fetch_metadata(site, mode, dest))
                assert response.status == 403, (path, site, mode, dest)
                text = await response.text()
                assert "SecFlow" not in text and "another site" in text


async def test_our_pages_the_user_and_clients_that_are_no_browser_are_served(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    ours = [fetch_metadata("same-origin", "cors", "empty"),
            fetch_metadata("same-origin", "navigate", "iframe"),
            fetch_metadata("none", "navigate", "document"),
            {}]  # curl, the CLI, the notebook helpers
    for path in costly_paths(cards):
        for headers in ours:
            response = await client.get(path, headers=headers)
            assert response.status in (200, 404), (path, headers)  # 404: no such shell, no log yet
            assert "another site" not in await response.text()


async def test_a_link_followed_from_another_site_opens_pages_but_never_the_api(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    followed = fetch_metadata("cross-site", "navigate", "document")
    for path in ("/", f"/run/{cards.a.key}", f"/card/{cards.a.key}", f"/card-html/{cards.a.key}"):
        assert (await client.get(path, headers=followed)).status == 200, path
    # A notebook (another origin) frames a card's host page: that page is ours and cheap.
    framed = fetch_metadata("cross-site", "navigate", "iframe")
    assert (await client.get(f"/card/{cards.a.key}", headers=framed)).status == 200
    assert (await client.get(f"/card-html/{cards.a.key}", headers=framed)).status == 403
    assert (await client.get("/api/flows", headers=followed)).status == 403


def test_costly_routes_are_found_below_the_base_url() -> None:
    assert costly_route("/proxy/8423/api/flows", "/proxy/8423/") == "api/"
    assert costly_route("/proxy/8423/card-html/F/1/s/2/c", "/proxy/8423/") == "card-html/"
    assert costly_route("/proxy/8423/card-shell/abc", "/proxy/8423/") == "card-shell/"
    assert costly_route("/proxy/8423/card/F/1/s/2/c", "/proxy/8423/") is None
    assert costly_route("/api/flows", "/proxy/8423/") is None  # not ours: the router answers 404
    assert costly_route("/proxy/8423/static/viewer.js", "/proxy/8423/") is None


async def test_no_cors_headers_anywhere(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots))
    paths = ("/", f"/run/{cards.a.key}", "/api/flows", "/api/status", f"/card/{cards.a.key}",
             "/static/viewer.js", "/api/nothing", "/card/x/y/z/w/v", "/ws")
    for path in paths:
        for origin in ("null", "http://evil.example", f"http://127.0.0.1:{client.port}"):
            for method in ("GET", "OPTIONS"):
                response = await client.request(
                    method, path, headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
                )
                leaked = [h for h in response.headers if h.lower().startswith("access-control-")]
                assert leaked == [], (method, path, origin, leaked)


# --- untrusted card HTML: CSP sandbox, nosniff; the viewer's own CSP ---------------------------


def assert_card_headers(response: aiohttp.ClientResponse) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox allow-scripts"), csp
    assert "allow-same-origin" not in csp
    assert "allow-top-navigation" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_every_card_response_is_sandboxed(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots))
    url = f"/card-html/{cards.a.key}"
    plain = await client.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status == 200 and "card A" in await plain.text()
    assert_card_headers(plain)
    zipped = await client.get(url, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"card A" in gzip.decompress(await zipped.read())
    assert_card_headers(zipped)
    cached = await client.get(url, headers={"If-None-Match": plain.headers["ETag"]})
    assert cached.status == 304
    assert_card_headers(cached)
    head = await client.head(url)
    assert head.status == 200
    assert_card_headers(head)
    old = cards.run.start_task("other").add_card(legacy=True, components=[markdown("m", "old")])
    t = old.key.task
    legacy = CardKey(TaskKey(t.flow, t.run, LEGACY_STEP, t.task), old.key.name)  # no step level
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{legacy}")
        await wait_listed(ws, legacy)
    assert_card_headers(await client.get(f"/card-html/{legacy}"))


async def test_viewer_pages_carry_their_own_csp_and_sandbox_the_card_frame(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    for path in ("/", "/flow/SecFlow", f"/run/{cards.run.key}", f"/run/{cards.a.key}"):
        response = await client.get(path)
        assert response.status == 200, path
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "sandbox" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        found = re.search(r'data-sandbox="([^"]*)"', await response.text())
        assert found is not None
        assert "allow-scripts" in found.group(1).split()
        assert "allow-same-origin" not in found.group(1)
    frames = await (await client.get("/static/frames.js")).text()
    link = await (await client.get("/static/framelink.js")).text()  # where every card frame is made
    assert "cardFrame(url, this.sandbox)" in frames and 'setAttribute("sandbox", sandbox)' in link
    assert "container.dataset.sandbox" in frames
    for code in (frames, link):
        assert "allow-same-origin\"" not in code and "allow-same-origin'" not in code


def frame_ancestors(response: aiohttp.ClientResponse) -> str | None:
    """The `frame-ancestors` sources of a response's CSP (None: any page may frame it)."""
    for directive in response.headers.get("Content-Security-Policy", "").split(";"):
        name, _, sources = directive.strip().partition(" ")
        if name == "frame-ancestors":
            return sources
    return None


async def test_only_its_own_origin_frames_the_viewer_and_anyone_a_card_host_page(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """The viewer shows every card: no other origin's page may frame it (a page that frames
    ours may navigate the card frames inside). A card's host page is made to be embedded."""
    client = await start_app(make_config(roots))
    t = cards.a.key.task
    viewer = ("/", "/flow/SecFlow", f"/run/{cards.run.key}", f"/run/{cards.a.key}",
              f"/run/{t.flow}/{t.run}/{t.step}/{t.task}")  # the task deep link
    for path in viewer:
        response = await client.get(path)
        assert response.status == 200, path
        assert frame_ancestors(response) == "'self'", path
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN", path  # for older browsers
    for path in (f"/card/{cards.a.key}", f"/card-html/{cards.a.key}"):
        response = await client.get(path)
        assert response.status == 200, path
        assert frame_ancestors(response) is None and "X-Frame-Options" not in response.headers, path


async def test_allowed_origins_may_frame_the_viewer(roots: Roots, cards: Cards, start_app: Any) -> None:
    """`--allow-origin` (a notebook, a workspace) may frame the viewer too; exactly that origin.
    `X-Frame-Options` cannot name it, and browsers that know `frame-ancestors` ignore it."""
    origins = frozenset({"http://localhost:8888", "https://hub.example.org/"})
    client = await start_app(make_config(roots, allow_origins=origins))
    response = await client.get(f"/run/{cards.a.key}")
    assert frame_ancestors(response) == "'self' http://localhost:8888 https://hub.example.org"
    assert "X-Frame-Options" not in response.headers


def test_allow_origin_takes_an_origin_only(tmp_path: Path) -> None:
    """An allowed origin is written into the viewer's CSP: nothing in it may end its source."""
    for bad in ("http://a.example; script-src *", "http://a.example http://b.example", "*",
                "null", "http://a.example/notebooks", "localhost:8888", "'self'"):
        with pytest.raises(ConfigError, match="--allow-origin takes an origin"):
            cli.build_config(tmp_path, None, None, allow_origins=(bad,), cwd=tmp_path, env={})
    good = ("http://localhost:8888", "https://hub.example.org/", "http://[::1]:8080")
    config = cli.build_config(tmp_path, None, None, allow_origins=good, cwd=tmp_path, env={})
    assert config.allow_origins == frozenset(good)
    result = CliRunner().invoke(cli.card, ["server", "--root", str(tmp_path), "--allow-origin", "*"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1


async def test_refusals_and_errors_are_nosniff_too(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    responses = [
        await client.get("/", headers={"Host": "evil.example"}),
        await client.get("/"),
        await client.get("/api/flows", headers={**bearer, "Origin": "null"}),
        await client.get("/no/such/route", headers=bearer),
        await client.get("/card/a/b/c/d/e", headers=bearer),
        await client.get("/static/nothing.js", headers=bearer),
    ]
    for response in responses:
        assert response.status >= 400
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url
        assert "html" not in response.headers.get("Content-Type", "")


# --- paths ------------------------------------------------------------------------------------


def traversal_targets(card: CardKey) -> list[str]:
    t = card.task
    return [
        "/card/../../../../../etc/passwd",
        "/card/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/card/..%2f..%2f..%2f..%2fetc/passwd/x/y/z",
        f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"/card/{t.flow}/{t.run}/{t.step}/..%2f{t.task}/{card.name}",
        f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/{card.name}%2f..%2f..%2f..",
        f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/{card.name}.html",
        f"/card/..%2fmf.cards-evil/{t.run}/{t.step}/{t.task}/{card.name}",
        f"/card/{t.flow}/{t.run}/..%5c..%5c/{t.task}/{card.name}",
        f"/card/{t.flow}%00/{t.run}/{t.step}/{t.task}/{card.name}",
        f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/{card.name}%00.html",
        "//etc/passwd",
        "/card//etc/passwd",
        "/card/%2fetc%2fpasswd/a/b/c/d",
        "/card/%2Fetc/passwd/a/b/c",
        f"/card/{'A' * 5000}/{t.run}/{t.step}/{t.task}/{card.name}",
        f"/card/{t.flow}/{t.run}/{t.step}/{t.task}/blank-{'a' * 3000}",
        f"/run/{t.flow}/{t.run}/{t.step}/{t.task}/..%2f..%2fetc%2fpasswd",
        "/run/..%2f..%2f/etc",
        "/flow/%2e%2e",
        "/static/../../../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/..%5c..%5c..%5cetc%5cpasswd",
        "/api/flows/..%2f..%2f..%2fetc/runs",
        "/api/flows/%2e%2e/runs",
        "/api/runs/%2e%2e/%2e%2e",
        "/api/runs/..%2f..%2fetc/passwd",
        f"/api/cards/{t.flow}/{t.run}/{t.step}/{t.task}/..%2f..%2f..%2fetc%2fpasswd",
        "/api/cards/../../../../../etc/passwd",
        "/api/cards/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e",
        f"/api/cards/{t.flow}%00/{t.run}/{t.step}/{t.task}/{card.name}",
        f"/api/runs/{'A' * 5000}/1",
    ]


async def test_traversal_attempts_are_refused_revealing_nothing(
    roots: Roots, cards: Cards, start_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    outside = roots.datastore.parent / "mf.cards-evil" / "SecFlow"
    outside.mkdir(parents=True)
    (outside / "passwd").write_text(SECRET)
    client = await start_app(make_config(roots))
    for target in traversal_targets(cards.a.key):
        status, body = await raw_request(client.port, target)
        assert status in (400, 404), (target, status, body[:200])
        assert_reveals_nothing(body, roots)
    no_errors(caplog)
    # the real card is still served: the refusals above are not a broken route
    assert (await client.get(f"/card/{cards.a.key}")).status == 200


async def test_overlong_request_line_is_a_400(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots))
    status, body = await raw_request(client.port, "/card/" + "a" * 20_000 + "/r/s/t/c")
    assert status in (400, 414)
    assert_reveals_nothing(body, roots)
    assert (await client.get("/api/status")).status == 200


async def test_symlinked_card_file_leading_out_of_the_root_is_not_served(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    outside = roots.datastore.parent / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text(f"<html><body>{SECRET}</body></html>")
    sneaky = CardKey(cards.a.key.task, "blank-5ymlink0ut")
    link = roots.cards / card_path(sneaky, CardFileKind.HTML, False)
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{sneaky}")
        os.symlink(outside / "secret.html", link)
        await wait_left_out(ws, cards, sneaky)
    response = await client.get(f"/card-html/{sneaky}")
    assert response.status == 404
    assert_reveals_nothing(await response.read(), roots)


async def test_sibling_prefix_root_is_outside_the_root(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    """`/x/mf.cards-evil/...` starts with the string `/x/mf.cards`: it is still outside."""
    sibling_key = CardKey(cards.b.key.task, "blank-51b11ng")
    sibling = roots.cards.parent / "mf.cards-evil"
    sibling_file = sibling / card_path(sibling_key, CardFileKind.HTML, False)
    sibling_file.parent.mkdir(parents=True)
    sibling_file.write_text(f"<html><body>{SECRET}</body></html>")
    assert str(sibling_file).startswith(str(roots.cards))
    link = roots.cards / card_path(sibling_key, CardFileKind.HTML, False)
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{sibling_key}")
        os.symlink(sibling_file, link)
        await wait_left_out(ws, cards, sibling_key)
    response = await client.get(f"/card-html/{sibling_key}")
    assert response.status == 404
    assert_reveals_nothing(await response.read(), roots)
    t = sibling_key.task
    status, body = await raw_request(
        client.port, f"/card-html/..%2fmf.cards-evil%2f{t.flow}/{t.run}/{t.step}/{t.task}/{sibling_key.name}"
    )
    assert status == 404
    assert_reveals_nothing(body, roots)


async def test_symlinked_task_folder_leading_out_of_the_root_is_not_served(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    a = cards.a.key.task
    hidden = CardKey(TaskKey(a.flow, a.run, a.step, "666"), "blank-0ut5ide")
    outside_task = roots.datastore.parent / "outside-task"
    (outside_task / "cards").mkdir(parents=True)
    (outside_task / "cards" / f"{hidden.name}.html").write_text(f"<html><body>{SECRET}</body></html>")
    task_dir = (roots.cards / card_path(hidden, CardFileKind.HTML, False)).parent.parent
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await subscribe(ws, f"card/{hidden}")
        os.symlink(outside_task, task_dir, target_is_directory=True)
        await wait_left_out(ws, cards, hidden)
    response = await client.get(f"/card-html/{hidden}")
    assert response.status == 404
    assert_reveals_nothing(await response.read(), roots)


# --- limits -----------------------------------------------------------------------------------


async def test_oversized_message_gets_a_clean_1009(
    roots: Roots, cards: Cards, start_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_inbound_message=1024)
    client = await start_app(make_config(roots, limits=limits))
    async with client.ws_connect("/ws") as ws:
        await hello(ws)
        await ws.send_str(json.dumps({"op": "subscribe", "topic": "flows", "pad": "x" * 2000}))
        assert await close_code(ws) == 1009
    assert (await client.get("/api/flows")).status == 200
    no_errors(caplog)


async def test_binary_frame_gets_a_clean_1003(
    roots: Roots, cards: Cards, start_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await hello(ws)
        await ws.send_bytes(b'{"op": "subscribe", "topic": "flows"}')
        assert await close_code(ws) == 1003
    assert (await client.get("/api/flows")).status == 200
    no_errors(caplog)


@pytest.mark.parametrize(
    "frame",
    ["not json", "{", "[1, 2]", '"subscribe"', "null", "1e999999", "[" * 3000, '{"a":' * 800,
     '{"op": "subscribe", "topic": "flows"', "\ufffd\x00"],
)
async def test_invalid_json_gets_a_clean_1008(
    roots: Roots, cards: Cards, start_app: Any, caplog: pytest.LogCaptureFixture, frame: str
) -> None:
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await hello(ws)
        await ws.send_str(frame)
        assert await close_code(ws) == 1008
    assert (await client.get("/api/flows")).status == 200
    no_errors(caplog)


async def test_odd_but_valid_requests_get_an_error_message_not_a_close(
    roots: Roots, cards: Cards, start_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_app(make_config(roots))
    async with client.ws_connect("/ws") as ws:
        await hello(ws)
        for request in ({}, {"op": "subscribe"}, {"op": "subscribe", "topic": 5},
                        {"op": ["subscribe"], "topic": "flows"}, {"op": "delete", "topic": "flows"},
                        {"op": "subscribe", "topic": "card/../../etc/passwd"},
                        {"op": "subscribe", "topic": "x" * 2000}, {"op": {}, "topic": {}}):
            await ws.send_json(request)
            error = await next_message(ws, lambda m: m.get("type") == "error")
            assert error["error"] == "unknown operation or topic"
        await subscribe(ws, "flows")
        assert (await next_message(ws))["type"] == "flows"
    no_errors(caplog)


async def test_too_many_subscriptions_get_an_error(
    roots: Roots, cards: Cards, start_app: Any
) -> None:
    client = await start_app(make_config(roots, limits=Limits(max_subscriptions=2)))
    async with client.ws_connect("/ws") as ws:
        await hello(ws)
        await subscribe(ws, "flows")
        await subscribe(ws, "runs/SecFlow")
        await subscribe(ws, cards.run_topic)
        error = await next_message(ws, lambda m: m.get("type") == "error")
        assert error["topic"] == cards.run_topic
        assert "at most 2 subscriptions" in error["error"]
        await subscribe(ws, "flows")  # again: not a new subscription, still fine
        await ws.send_json({"op": "unsubscribe", "topic": "runs/SecFlow"})
        await subscribe(ws, cards.run_topic)
        detail = await next_message(ws, lambda m: m.get("type") == "run-detail")
        assert detail["topic"] == cards.run_topic


async def test_too_many_sockets_get_503(roots: Roots, cards: Cards, start_app: Any) -> None:
    client = await start_app(make_config(roots, limits=Limits(max_sockets=2)))
    async with client.ws_connect("/ws") as first, client.ws_connect("/ws") as second:
        await hello(first)
        await hello(second)
        for headers in ({}, {"Origin": f"http://127.0.0.1:{client.port}"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect("/ws", headers=headers)
            assert refused.value.status == 503
        await first.close()
        await round_trip(second)
    async with client.ws_connect("/ws") as again:  # the slots came back
        await hello(again)


async def round_trip(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A round trip on `ws`: by the time it answers, the server has handled earlier closes."""
    await subscribe(ws, "nonsense")
    await next_message(ws, lambda m: m.get("type") == "error")


async def test_card_larger_than_the_cap_is_413(roots: Roots, cards: Cards, start_app: Any) -> None:
    size = cards.a.path_html.stat().st_size
    client = await start_app(make_config(roots, limits=Limits(max_card_bytes=size - 1)))
    response = await client.get(f"/card-html/{cards.a.key}")
    assert response.status == 413
    text = await response.text()
    assert text == f"card file too large to serve (over {size - 1} bytes)\n"
    assert "card A" not in text
    big = await start_app(make_config(roots, limits=Limits(max_card_bytes=2 * 1024 * 1024)))
    assert (await big.get(f"/card-html/{cards.a.key}")).status == 200


# --- property: garbage frames -------------------------------------------------------------------


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.one_of(
            st.text(max_size=64),
            st.text(min_size=4000, max_size=5000, alphabet="{}[]\":,ab01 "),
            st.builds(str.__mul__, st.sampled_from(["[", '{"a":', "[{}", '"\\']), st.integers(1, 4200)),
            st.builds(json.dumps, st.dictionaries(
                st.sampled_from(["op", "topic", "cap", "x"]),
                st.one_of(st.sampled_from(["subscribe", "unsubscribe", "flows", "card/a/b/c/d/e"]),
                          st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers())),
            )),
        ),
        min_size=1,
        max_size=4,
    ),
    one_card=st.booleans(),
)
async def test_garbage_frames_never_crash_the_server(
    shared_client: Any, caplog: pytest.LogCaptureFixture, frames: list[str], one_card: bool
) -> None:
    params = {"card": "F/1/s/2/blank-abc"} if one_card else {}  # a host page's socket: one card
    async with shared_client.ws_connect("/ws", params=params) as ws:
        await hello(ws)
        try:
            for frame in frames:
                await ws.send_str(frame)
            await subscribe(ws, "probe")  # answered unless the server closed on an earlier frame
        except ConnectionError:
            pass
        answered = await asyncio.wait_for(answer_or_close(ws), WAIT)
        assert answered == "error" or answered in CLEAN_CLOSES, answered
    status = await shared_client.get("/api/status")
    assert status.status == 200
    no_errors(caplog)


async def answer_or_close(ws: aiohttp.ClientWebSocketResponse) -> str | int | None:
    while True:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            if json.loads(msg.data).get("topic") == "probe":
                return "error"
            continue
        return ws.close_code


@pytest.fixture
async def shared_client(tmp_path: Path, start_app: Any) -> Any:
    """One server for every hypothesis example: garbage from one example must not hurt the next."""
    datastore = tmp_path / ".metaflow"
    datastore.mkdir()
    roots = Roots(datastore, datastore / "mf.cards")
    make_cards(roots)
    return await start_app(make_config(roots))
