"""Card links: a signed URL that opens one card page and nothing else, so the token never
has to sit in the URL of a document whose script is untrusted (a notebook's iframe)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from conftest import make_config, next_message, subscribe

from cardserver.config import Roots
from cardserver.demo import DemoCard, markdown, progress, start_run
from cardserver.web.keys import GUARD
from cardserver.web.security import Guard

TOKEN = "s3cret-token-for-link-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOST_CONFIG = re.compile(r'<script type="application/json" id="card-host">(\{.*?\})</script>')


@dataclass
class Pair:
    a: DemoCard
    b: DemoCard


@pytest.fixture
def pair(roots: Roots) -> Pair:
    run = start_run(roots.datastore, roots.cards, flow="LinkFlow")
    a = run.start_task("work").add_card(components=[markdown("m", "# card A"), progress("p", 1, 9)])
    b = run.start_task("work").add_card(components=[markdown("m", "# card B"), progress("p", 1, 9)])
    return Pair(a, b)


async def link_of(client: Any, card: DemoCard, base: str = "/") -> str:
    """The card's link as the API hands it out (relative to the app root)."""
    response = await client.get(f"{base}api/cards/{card.key}", headers=BEARER)
    assert response.status == 200
    link: str = (await response.json())["link"]
    return link


def cap_of(link: str) -> str:
    return yarl.URL(link).query["cap"]


async def refused(client: Any, path: str, **params: str) -> None:
    response = await client.get(path, params=params, allow_redirects=False)
    assert response.status in (401, 403), (path, response.status)
    text = await response.text()
    assert "LinkFlow" not in text and "card A" not in text and "card B" not in text


# --- a link opens its card ----------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["/", "/proxy/8423/"])
async def test_link_opens_its_card_without_cookie_or_token(
    roots: Roots, pair: Pair, start_app: Any, base_url: str
) -> None:
    client = await start_app(make_config(roots, token=TOKEN, base_url=base_url))
    link = await link_of(client, pair.a, base_url)
    path = f"card/{pair.a.key}"
    assert link == f"{path}?cap={client.app[GUARD].link(path)}"
    assert TOKEN not in link
    response = await client.get(f"{base_url}{link}", allow_redirects=False)
    assert response.status == 200  # the card's host page: ours, with our own strict CSP
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "Set-Cookie" not in response.headers  # a link grants one page, never a session
    found = HOST_CONFIG.search(await response.text())
    assert found is not None
    config = json.loads(found.group(1))
    # It frames the card's HTML by that page's own link...
    html = await client.get(f"{base_url}{config['html']}", allow_redirects=False)
    assert html.status == 200 and "card A" in await html.text()
    assert html.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
    assert "Set-Cookie" not in html.headers
    # ...and its capability lets its socket follow that card, with no token and no cookie.
    params = {"card": str(pair.a.key), "cap": config["cap"]}
    async with client.ws_connect(f"{base_url}ws", params=params) as ws:
        await subscribe(ws, config["topic"])
        card = await next_message(ws, lambda m: m.get("type") == "card")
        assert card["topic"] == path and card["exists"] is True


async def test_link_without_a_token_is_the_plain_card_url(
    roots: Roots, pair: Pair, start_app: Any
) -> None:
    client = await start_app(make_config(roots))
    link = await link_of(client, pair.a)
    assert link == f"card/{pair.a.key}"
    response = await client.get(f"/{link}")
    assert response.status == 200 and f'"html": "card-html/{pair.a.key}"' in await response.text()


# --- and nothing else ---------------------------------------------------------------------------


async def test_link_for_a_does_not_open_anything_else(
    roots: Roots, pair: Pair, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    cap = cap_of(await link_of(client, pair.a))
    assert (await client.get(f"/card/{pair.a.key}", params={"cap": cap})).status == 200
    a, b = pair.a.key, pair.b.key
    for path in (f"/card/{b}", f"/card-html/{a}", f"/card-html/{b}", "/", f"/run/{a}",
                 f"/run/{a.run_key}", "/flow/LinkFlow",
                 "/api/flows", "/api/status", f"/api/cards/{a}", f"/api/runs/{a.run_key}",
                 "/static/viewer.js", f"/card/{a}/", "/no/such/page"):
        await refused(client, path, cap=cap)
    # Only a page of ours loads its own code without a cookie: the browser says same-origin.
    for site in ("cross-site", "same-site", "none"):
        response = await client.get("/static/card-host.js", headers={"Sec-Fetch-Site": site})
        assert response.status in (401, 403), site
    own = await client.get("/static/card-host.js", headers={"Sec-Fetch-Site": "same-origin"})
    assert own.status == 200
    # Not the other methods of the card route either.
    head = await client.head(f"/card/{a}", params={"cap": cap})
    assert head.status in (401, 403)
    with pytest.raises(aiohttp.WSServerHandshakeError) as socket:
        await client.ws_connect("/ws", params={"cap": cap})
    assert socket.value.status in (401, 403)


async def test_tampered_links_are_refused(roots: Roots, pair: Pair, start_app: Any) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    cap = cap_of(await link_of(client, pair.a))
    guard: Guard = client.app[GUARD]
    topic = f"card/{pair.a.key}"
    flipped = cap[:-1] + ("0" if cap[-1] != "0" else "1")
    forgeries = [
        flipped,
        cap[:-1],
        cap + "0",
        cap.upper(),
        "",
        "0" * len(cap),
        guard.capability(topic),  # the websocket capability is no link
        hmac.new(guard.secret, f"topic:{topic}".encode(), hashlib.sha256).hexdigest(),
        hmac.new(TOKEN.encode(), f"link:{topic}".encode(), hashlib.sha256).hexdigest(),
        guard.link(f"card/{pair.b.key}"),
    ]
    for forged in forgeries:
        response = await client.get(f"/card/{pair.a.key}", params={"cap": forged},
                                    allow_redirects=False)
        assert response.status == 403, forged
        assert "card A" not in await response.text()
    # A second cap next to a forged first one does not help (the first one is checked).
    response = await client.get(f"/card/{pair.a.key}?cap={flipped}&cap={cap}")
    assert response.status == 403


# --- ?token= on a card URL ----------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["/", "/proxy/8423/"])
async def test_token_on_a_card_url_redirects_to_its_link(
    roots: Roots, pair: Pair, start_app: Any, base_url: str
) -> None:
    client = await start_app(make_config(roots, token=TOKEN, base_url=base_url))
    url = f"{base_url}card/{pair.a.key}"
    response = await client.get(url, params={"max_height": "500", "token": TOKEN},
                                allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert TOKEN not in location and "token" not in location
    assert "://" not in location and not location.startswith("/")  # relative: proxy-safe
    cap = cap_of(await link_of(client, pair.a, base_url))
    assert location == f"{pair.a.key.name}?max_height=500&cap={cap}"
    assert "Set-Cookie" not in response.headers
    followed = response.url.join(yarl.URL(location))
    assert followed.path == url
    page = await client.get(followed.relative(), allow_redirects=False)  # no cookie, no token
    assert page.status == 200 and f"card-html/{pair.a.key}?cap=" in await page.text()
    # A wrong token is refused, not traded for a link.
    wrong = await client.get(url, params={"token": "wrong-token-value"}, allow_redirects=False)
    assert wrong.status == 403 and "Location" not in wrong.headers


async def test_cookie_and_bearer_still_open_cards_in_place(
    roots: Roots, pair: Pair, start_app: Any
) -> None:
    client = await start_app(make_config(roots, token=TOKEN))
    bearer = await client.get(f"/card-html/{pair.a.key}", headers=BEARER, allow_redirects=False)
    assert bearer.status == 200 and "card A" in await bearer.text()
    login = await client.get("/", params={"token": TOKEN}, allow_redirects=False)
    morsel = next(iter(login.cookies.values()))
    assert morsel.value != TOKEN
    cookie = {"Cookie": f"{morsel.key}={morsel.value}"}
    for route, marker in (("card", f"card-html/{pair.a.key}"), ("card-html", "card A")):
        page = await client.get(f"/{route}/{pair.a.key}", headers=cookie, allow_redirects=False)
        assert page.status == 200 and marker in await page.text()


# --- the secret ---------------------------------------------------------------------------------


def test_secret_follows_the_token(roots: Roots, tmp_path: Path) -> None:
    same = [Guard.from_config(make_config(roots, token=TOKEN)) for _ in range(2)]
    assert same[0].secret == same[1].secret
    assert same[0].link("card/F/1/s/2/blank-a") == same[1].link("card/F/1/s/2/blank-a")
    # The session cookie is not: it dies with the server that set it (see the README, Security)
    assert same[0].session_value() != same[1].session_value()
    assert TOKEN not in (same[0].session_value(), same[1].session_value())
    assert TOKEN.encode() not in same[0].secret
    other = Guard.from_config(make_config(roots, token=TOKEN + "-other"))
    assert other.secret != same[0].secret
    open_ = [Guard.from_config(make_config(roots)) for _ in range(2)]
    assert open_[0].secret != open_[1].secret
    assert len(open_[0].secret) == 32


async def test_links_and_capabilities_survive_a_restart_with_the_same_token(
    roots: Roots, pair: Pair, start_app: Any
) -> None:
    first = await start_app(make_config(roots, token=TOKEN))
    link = await link_of(first, pair.a)
    found = HOST_CONFIG.search(await (await first.get(f"/{link}")).text())
    assert found is not None
    config = json.loads(found.group(1))
    await first.close()
    again = await start_app(make_config(roots, token=TOKEN))
    response = await again.get(f"/{link}", allow_redirects=False)
    assert response.status == 200
    assert (await again.get(f"/{config['html']}", allow_redirects=False)).status == 200
    params = {"card": str(pair.a.key), "cap": config["cap"]}
    async with again.ws_connect("/ws", params=params) as ws:
        await subscribe(ws, config["topic"])
        card = await next_message(ws, lambda m: m.get("type") == "card")
        assert card["exists"] is True
    other = await start_app(make_config(roots, token=TOKEN + "-other"))
    assert (await other.get(f"/{link}", allow_redirects=False)).status == 403
