"""The defenses every request passes: Host allowlist, token, Origin rules, response headers.

Localhost is not a trust boundary: any web page the user opens can send requests to
127.0.0.1, and DNS rebinding can make them look same-origin. So we check the Host header,
require a token whenever we listen beyond loopback, refuse foreign Origins on the websocket,
refuse what another site's page asks of the API and the card pages we build (by the browser's
fetch metadata), and serve card HTML (untrusted code) into an opaque-origin sandbox.

Card HTML never opens a connection of its own. The card URL `card/F/R/S/T/C` is a trusted
page of ours (same origin as the server) that holds the websocket and frames the sandboxed
card HTML, served apart at `card-html/F/R/S/T/C`. Neither document ever holds the token: a
card URL asked with `?token=` is redirected to its signed link (`?cap=`), which opens that one
page and nothing else.

Who may frame our pages: the viewer, which shows every card, only itself and the origins the
user allows (`--allow-origin`, a notebook or a workspace); a card's host page anyone, as it is
made to be embedded. Neither hands a card's data to anything but the document it loaded into
that card's frame (static/framelink.js): docs/security.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from ..config import LOOPBACK_HOSTS, Config
from ..layout import CardKey, card_key_from_parts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CARD_CSP = "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads"
VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
CARD_IFRAME_SANDBOX = "allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads"
CARD_ROUTE = "card"  # the card's host page: a link opens it
CARD_HTML_ROUTE = "card-html"  # the card's own HTML, framed sandboxed by its host
CARD_ROUTES = (CARD_ROUTE, CARD_HTML_ROUTE)  # the only routes a link opens
CARD_SHELL_ROUTE = "card-shell"  # a warm frame: Metaflow's card bundle, named by its SHA-256
CARD_PARTS = ("flow", "run", "step", "task", "card")
SERVER_HEADER = "X-Cardserver"


def card_page(key: CardKey, route: str = CARD_ROUTE) -> str:
    """A card page's path below the app root: its host page (`card/...`, the same string as
    its topic) or its own HTML (`card-html/...`). Built only here."""
    return f"{route}/{key}"


@dataclass(frozen=True, slots=True)
class Guard:
    """Everything the checks need, derived once from the config."""

    allowed_hosts: frozenset[str]
    allow_any_host: bool
    allowed_origins: frozenset[str]
    token: str | None
    secret: bytes  # signs card links, capabilities and the session cookie
    cookie_name: str
    cookie_path: str
    session_nonce: bytes  # new every start: a session cookie dies with the server that set it
    frame_ancestors: str  # CSP sources that may frame the viewer: itself and each allowed origin

    @classmethod
    def from_config(cls, config: Config) -> Guard:
        hosts = {h.lower().strip("[]") for h in (*LOOPBACK_HOSTS, config.host, *config.allow_hosts)}
        origins = frozenset(o.rstrip("/").lower() for o in config.allow_origins)
        return cls(
            allowed_hosts=frozenset(hosts),
            allow_any_host=config.allow_any_host,
            allowed_origins=origins,
            token=config.token,
            secret=derive_secret(config.token),
            cookie_name=f"cardserver-{config.port}",
            cookie_path=config.base_url,
            session_nonce=secrets.token_bytes(16),
            frame_ancestors=" ".join(["'self'", *sorted(origins)]),
        )

    # --- Host ------------------------------------------------------------------------------

    def host_allowed(self, host_header: str | None) -> bool:
        if self.allow_any_host:
            return True
        name = host_name(host_header or "")
        return name is not None and name in self.allowed_hosts

    # --- token -----------------------------------------------------------------------------

    def session_value(self) -> str:
        """What the cookie holds: derived from the token, so the token itself never sits there."""
        assert self.token is not None
        session = b"session:" + self.session_nonce + self.token.encode()
        return hmac.new(self.secret, session, hashlib.sha256).hexdigest()

    def token_ok(self, candidate: str | None) -> bool:
        return (
            self.token is not None
            and candidate is not None
            and hmac.compare_digest(candidate.encode(), self.token.encode())
        )

    def authenticated(self, request: web.Request) -> bool | None:
        """True: valid credentials. False: credentials given but wrong. None: none given."""
        if self.token is None:
            return True
        cookie = request.cookies.get(self.cookie_name)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.session_value().encode()):
            return True
        auth = request.headers.get("Authorization", "")
        offered = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        offered = offered or request.query.get("token")
        if offered is None:
            return False if cookie is not None else None
        return self.token_ok(offered)

    # --- Origin ----------------------------------------------------------------------------

    def origin_kind(self, request: web.Request) -> str:
        """`none` (no Origin: not a browser), `same`, `allowed`, `opaque` (a sandboxed page:
        a card, or any site's sandboxed iframe), or `foreign`."""
        origin = request.headers.get("Origin")
        if origin is None:
            return "none"
        if origin == "null":
            return "opaque"
        parts = urlsplit(origin)
        host = request.headers.get("Host", "")
        if parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() and host:
            return "same"
        if origin.rstrip("/").lower() in self.allowed_origins:
            return "allowed"
        return "foreign"

    # --- card links and capabilities -------------------------------------------------------

    def link(self, path: str) -> str:
        """`?cap=` for the page `path` (`card/F/R/S/T/C` or `card-html/...`): opens it alone."""
        return hmac.new(self.secret, b"link:" + path.encode(), hashlib.sha256).hexdigest()

    def link_ok(self, path: str, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(
            offered.encode(), self.link(path).encode()
        )

    def card_url(self, key: CardKey, route: str = CARD_ROUTE) -> str:
        """A card page's URL relative to the app root; signed when a token guards the server."""
        return self.signed(card_page(key, route))

    def signed(self, path: str) -> str:
        return f"{path}?{urlencode({'cap': self.link(path)})}" if self.token else path

    def capability(self, topic: str) -> str:
        """Signed into a card's host page: its socket may follow that card only (`ws?card=`)."""
        return hmac.new(self.secret, b"topic:" + topic.encode(), hashlib.sha256).hexdigest()[:40]

    def capability_ok(self, topic: str, offered: object) -> bool:
        return isinstance(offered, str) and hmac.compare_digest(
            offered.encode(), self.capability(topic).encode()
        )


def page_headers(guard: Guard, embeddable: bool) -> dict[str, str]:
    """The headers of a page of ours: its CSP, and who may frame it. The viewer: itself and the
    allowed origins (`X-Frame-Options` too, for browsers without `frame-ancestors`, when no
    origin is allowed: it cannot name one). A card's host page (`embeddable`): anyone, so no
    `frame-ancestors` at all (even `*` would refuse a notebook output's own scheme)."""
    if embeddable:
        return {"Content-Security-Policy": VIEWER_CSP}
    headers = {"Content-Security-Policy": f"{VIEWER_CSP}; frame-ancestors {guard.frame_ancestors}"}
    if not guard.allowed_origins:
        headers["X-Frame-Options"] = "SAMEORIGIN"
    return headers


def derive_secret(token: str | None) -> bytes:
    """From the token, so links and capabilities survive a restart with the same --token;
    without one nothing is worth keeping, so it is new every start."""
    if token is None:
        return secrets.token_bytes(32)
    return hmac.new(token.encode(), b"cardserver secret", hashlib.sha256).digest()


def card_of(request: web.Request) -> tuple[str, CardKey] | None:
    """(route, card) when this request was routed to a card's host page or its HTML."""
    resource = request.match_info.route.resource
    if resource is None or resource.name not in CARD_ROUTES:
        return None
    key = card_key_from_parts([request.match_info.get(k, "") for k in CARD_PARTS])
    return None if key is None else (resource.name, key)


def socket_card(request: web.Request) -> str | None:
    """The card topic a host page's socket asks to be held to (`ws?card=F/R/S/T/C`)."""
    card = request.query.get("card")
    return None if card is None else f"card/{card}"  # raw text: the socket refuses it unless it parses


def host_name(header: str) -> str | None:
    """`Host` header -> lower-case name without port; None when malformed."""
    header = header.strip().lower()
    if not header or any(c in header for c in "/\\@ \t"):
        return None
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (len(header) > end + 1 and not header[end + 1 :].startswith(":")):
            return None
        return header[1:end]
    name, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def own_code(request: web.Request, base_url: str) -> bool:
    """A page of ours loading its own static code. A card's host page opened by its link in a
    notebook's cross-site frame has no cookie, but its subresource requests are same-origin,
    which the browser (not a script) states in `Sec-Fetch-Site`; no other site's page is."""
    return (
        request.path.startswith(f"{base_url}static/")
        and request.headers.get("Sec-Fetch-Site") == "same-origin"
    )


# Routes that read files or build a page on each request. `api/` also holds what only our pages
# may read (a card's page apart, a task's details).
COSTLY_ROUTES = ("api/", f"{CARD_HTML_ROUTE}/", f"{CARD_SHELL_ROUTE}/")
OUR_SITE = ("same-origin", "none")  # asked by a page of ours, or by the user (address bar, bookmark)


def costly_route(path: str, base_url: str) -> str | None:
    """Which of `COSTLY_ROUTES` the path is under, if any."""
    rest = path[len(base_url):] if path.startswith(base_url) else None
    return next((route for route in COSTLY_ROUTES if rest is not None and rest.startswith(route)), None)


def another_site_asks(request: web.Request, origin: str, page: bool) -> bool:
    """A browser sent this for a page of another site; a card's opaque origin is one. The browser
    itself, never a script, sets `Sec-Fetch-Site`, whatever the way of asking (a fetch in any mode,
    an image, a script, a frame): a card's requests say `cross-site`. A browser too old to send it
    still names a foreign or null `Origin` on a CORS fetch. Clients that are no browser (curl, the
    CLI, the notebook helpers) send neither. `page`: a page a link may open from anywhere, so a
    top-level navigation from another site is a user following a link."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is None:
        return origin in ("opaque", "foreign")
    if site in OUR_SITE:
        return False
    followed = request.headers.get("Sec-Fetch-Mode") == "navigate" and (
        request.headers.get("Sec-Fetch-Dest") == "document")
    return not (page and followed)


def refuse_another_site(request: web.Request) -> web.Response:
    asked = request.headers.get("Sec-Fetch-Site") or f"origin {request.headers.get('Origin')!r}"
    text = f"refused: asked by another site's page ({asked}); a card reads nothing of the server"
    return json_error(403, text) if wants_json(request) else plain_error(403, text)


def plain_error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def json_error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def wants_json(request: web.Request) -> bool:
    return "/api/" in request.path or "application/json" in request.headers.get("Accept", "")


def make_middleware(
    guard: Guard, base_url: str, seen: weakref.WeakSet[asyncio.BaseTransport]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.transport is not None:
            seen.add(request.transport)  # a whole request head arrived: no header deadline
        try:
            response = await check(request, handler)
        except web.HTTPException as error:  # the router's own 404/405: same headers
            harden(error)
            raise
        return harden(response)

    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guard.host_allowed(request.headers.get("Host")):
            name = host_name(request.headers.get("Host", ""))
            if name is None:
                return plain_error(403, "missing or malformed Host header")
            return plain_error(
                403, f"Host {name!r} is not allowed: start the server with --allow-host {name}"
            )
        is_socket = request.path == f"{base_url}ws"
        origin = guard.origin_kind(request)
        if is_socket and origin in ("opaque", "foreign"):
            # No page of ours is sandboxed and holds a socket: a `null` Origin is a card's
            # script or any site's sandboxed iframe, and gets nothing, token or not.
            return json_error(403, f"websocket from origin {request.headers.get('Origin')!r} refused")
        state = guard.authenticated(request)
        target = card_of(request)
        offered = request.query.get("cap")
        if state is not True and offered is not None:
            if target is not None:
                # A card link is a credential for exactly one page (a notebook's iframe).
                route, card = target
                state = request.method == "GET" and guard.link_ok(card_page(card, route), offered)
            elif is_socket and (topic := socket_card(request)) is not None:
                # A card's host page, opened by its link: its socket follows that card only.
                state = guard.capability_ok(topic, offered)
        if state is not True and own_code(request, base_url):
            state = True
        if state is not True:
            return refuse(request, state)
        # A card (an opaque origin) or another site's page makes us do no costly work: no 200.
        costly = costly_route(request.path, base_url)
        if costly is not None and another_site_asks(request, origin, page=costly != "api/"):
            return refuse_another_site(request)
        if "token" in request.query and guard.token and request.method == "GET":
            # A card's script can read its own URL: swap the token for that page's link.
            if target is not None and guard.token_ok(request.query["token"]):
                return to_link(request, guard, *target)
            if not (is_socket or target is not None):
                return drop_token(request, guard)
        return await handler(request)

    return security


def harden(response: web.StreamResponse) -> web.StreamResponse:
    if not response.prepared:  # a websocket has sent its headers already
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        # Tells a page's failure probe our answer from a proxy's (a 403 from Jupyter, a 502).
        response.headers.setdefault(SERVER_HEADER, "1")
    return response


def refuse(request: web.Request, state: bool | None) -> web.Response:
    status, text = (
        (401, "a token is required: open the URL printed by `card server` (it ends in ?token=...)")
        if state is None
        else (403, "wrong token")
    )
    return json_error(status, text) if wants_json(request) else plain_error(status, text)


def to_link(request: web.Request, guard: Guard, route: str, card: CardKey) -> web.Response:
    """A card URL with ?token=: the same page with its own link instead. No cookie: a
    cross-site iframe would not send it back."""
    query = [(k, v) for k, v in request.query.items() if k not in ("token", "cap")]
    query.append(("cap", guard.link(card_page(card, route))))
    # Relative, like drop_token's; a validated card name is never mistaken for a scheme.
    target = f"{card.name}?{urlencode(query)}"
    return web.Response(status=302, headers={"Location": target, "Cache-Control": "no-store"})


def drop_token(request: web.Request, guard: Guard) -> web.Response:
    """First visit with ?token=: keep it in a cookie and take it out of the address bar."""
    query = {k: v for k, v in request.query.items() if k != "token"}
    # Relative, so a proxy that strips a path prefix keeps it in the browser's address bar.
    target = (request.path.rsplit("/", 1)[-1] or "./") + (f"?{urlencode(query)}" if query else "")
    response = web.Response(status=302, headers={"Location": target})
    response.set_cookie(
        guard.cookie_name,
        guard.session_value(),
        path=guard.cookie_path,
        httponly=True,
        samesite="Strict",
    )
    return response
