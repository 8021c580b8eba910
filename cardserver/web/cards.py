"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once;
Metaflow's JavaScript bundle, which every card page repeats, served apart once (cardscript.py).

The viewer opens a card in a *warm frame* when it can: a sandboxed page of ours (`shell`) that
holds Metaflow's bundle compiled as a function, not yet run. Given the card's page apart from its
bundle (`parts`), it writes that page into itself and runs the bundle where the page had it.
A card's first visit then skips the navigation and the bundle's 1 MB parse (bench/README.md).
Each warm frame takes one card and is never used for another.

The HTML is untrusted: it is served with a CSP `sandbox` so it runs in an opaque origin even
when opened directly. It opens no connection: the trusted page that frames it (the viewer or
the card's host page) posts each update to the runtime, which applies it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from ..index import Card
from ..layout import CardKey
from ..source import Unavailable
from .cardscript import Split, split

CACHE_ENTRIES = 24  # ~12 KB each compressed (~300 KB with the script inline): the cards in view
SCRIPT_ENTRIES = 8  # one per Metaflow version whose cards are looked at
# The bundle as a function in a warm frame; the card page it writes calls it (card-shell.js).
SHELL_OPEN = b"<script>window.__cardserverBundle = function () {"
SHELL_CLOSE = b"\n};</script>"


ReadCard = Callable[[Card], Awaitable[bytes]]  # the source's read of a card's HTML
ScriptUrl = Callable[[str], str]  # a card script's name -> its URL, relative to a card page


@dataclass(frozen=True, slots=True)
class CardPage:
    body: bytes
    gzipped: bytes
    etag: str
    script: str | None = None  # the name of the card script it loads, if split
    parts: CardPage | None = None  # JSON: the page apart from that script, for a warm frame


def compressed(
    body: bytes, etag: str, script: str | None = None, parts: CardPage | None = None
) -> CardPage:
    return CardPage(body, gzip.compress(body, compresslevel=6, mtime=0), etag, script, parts)


def load_runtime() -> str:
    return inline_script("card-runtime.js")


def inline_script(name: str) -> str:
    """One of our static scripts as an inline `<script>` element (nothing in it can end it)."""
    code = resources.files("cardserver").joinpath("static", name).read_text("utf-8")
    return "<script>" + code.replace("</", "<\\/") + "</script>"


def page_parts(apart: Split, after: bytes, version: str) -> bytes | None:
    """The JSON a warm frame is given: the page before and after the script, as text (a page
    that is not UTF-8 is served whole: it has no parts)."""
    try:
        before, rest = apart.before.decode(), after.decode()
    except UnicodeDecodeError:
        return None
    payload = {"script": apart.name, "version": version, "before": before, "after": rest}
    return json.dumps(payload, separators=(",", ":")).encode()


def shell_page(script: bytes, loader: str) -> bytes:
    """A warm frame's page: the loader, then the bundle compiled into a function it calls once it
    has written a card's page (split() made sure nothing in the bundle ends its element)."""
    head = b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">" + loader.encode()
    return head + SHELL_OPEN + script + SHELL_CLOSE + b"</head><body></body></html>\n"


def inject(html: bytes, snippet: bytes) -> bytes:
    """Before the *last* `</body>`: Metaflow's bundle has `</body>` inside its JS strings."""
    lower = html.lower()
    at = lower.rfind(b"</body>")
    if at < 0:
        at = lower.rfind(b"</html>")
    return html + snippet if at < 0 else html[:at] + snippet + html[at:]


class CardPages:
    def __init__(self, read: ReadCard, script_url: ScriptUrl) -> None:
        self.read = read
        self.script_url = script_url
        self.runtime = load_runtime()
        self.loader = inline_script("card-shell.js")
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._cache: OrderedDict[tuple[CardKey, str], CardPage] = OrderedDict()
        self._scripts: OrderedDict[str, CardPage] = OrderedDict()  # name -> the shared bundle
        self._shells: OrderedDict[str, CardPage] = OrderedDict()  # name -> its warm frame's page

    def etag(self, card: Card) -> str:
        return f'"{card.version}-{self.instance}"'

    async def page(self, card: Card) -> CardPage:
        if card.version is None:
            raise Unavailable(404, "card not rendered yet")
        slot = (card.key, card.version)
        cached = self._cache.get(slot)
        if cached is not None and (cached.script is None or self.script(cached.script)):
            self._cache.move_to_end(slot)
            return cached  # (a page whose script was let go is built again, and keeps it again)
        html = await self.read(card)
        page, script = await asyncio.to_thread(self._build, card, html)
        if script is not None:
            await self._keep_script(*script)
        self._cache[slot] = page
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return page

    def script(self, name: str) -> CardPage | None:
        """A card script split out of a page built here, by its name (`<sha256>.js`)."""
        found = self._scripts.get(name)
        if found is not None:
            self._scripts.move_to_end(name)
        return found

    async def shell(self, name: str) -> CardPage | None:
        """The warm frame's page for a card script split out of a page built here."""
        found = self._shells.get(name)
        script = self.script(name)
        if found is None and script is not None:
            body, etag = shell_page(script.body, self.loader), f'"shell-{name}-{self.instance}"'
            found = self._shells[name] = await asyncio.to_thread(compressed, body, etag)
        if found is not None:
            self._shells.move_to_end(name)
        while len(self._shells) > SCRIPT_ENTRIES:
            self._shells.popitem(last=False)
        return found

    async def _keep_script(self, name: str, script: bytes) -> None:
        if name not in self._scripts:  # ~30 ms to compress 1 MB: not on the event loop
            self._scripts[name] = await asyncio.to_thread(compressed, script, f'"{name}"')
        self._scripts.move_to_end(name)
        while len(self._scripts) > SCRIPT_ENTRIES:
            self._scripts.popitem(last=False)

    def _build(self, card: Card, html: bytes) -> tuple[CardPage, tuple[str, bytes] | None]:
        """The page to serve, and the script split out of it (name, source) if one was."""
        apart = split(html)
        runtime, etag = self.runtime.encode(), self.etag(card)
        if apart is None:
            return compressed(inject(html, runtime), etag), None
        after = inject(apart.after, runtime)  # the last `</body>` is in what follows the script
        page = apart.page(self.script_url(apart.name))
        text = page_parts(apart, after, str(card.version))
        parts = None if text is None else compressed(text, etag)
        return compressed(inject(page, runtime), etag, apart.name, parts), (apart.name, apart.script)
