"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once;
Metaflow's JavaScript bundle, which every card page repeats, served apart once (cardscript.py).

The HTML is untrusted: it is served with a CSP `sandbox` so it runs in an opaque origin even
when opened directly. It opens no connection: the trusted page that frames it (the viewer or
the card's host page) posts each update to the runtime, which applies it.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from ..index import Card
from ..layout import CardKey
from ..source import Unavailable
from .cardscript import split

CACHE_ENTRIES = 24  # ~12 KB each compressed (~300 KB with the script inline): the cards in view
SCRIPT_ENTRIES = 8  # one per Metaflow version whose cards are looked at


ReadCard = Callable[[Card], Awaitable[bytes]]  # the source's read of a card's HTML
ScriptUrl = Callable[[str], str]  # a card script's name -> its URL, relative to a card page


@dataclass(frozen=True, slots=True)
class CardPage:
    body: bytes
    gzipped: bytes
    etag: str
    script: str | None = None  # the name of the card script it loads, if split


def compressed(body: bytes, etag: str, script: str | None = None) -> CardPage:
    return CardPage(body, gzip.compress(body, compresslevel=6, mtime=0), etag, script)


def load_runtime() -> str:
    return resources.files("cardserver").joinpath("static/card-runtime.js").read_text("utf-8")


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
        self.runtime = "<script>" + load_runtime().replace("</", "<\\/") + "</script>"
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._cache: OrderedDict[tuple[CardKey, str], CardPage] = OrderedDict()
        self._scripts: OrderedDict[str, CardPage] = OrderedDict()  # name -> the shared bundle

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

    async def _keep_script(self, name: str, script: bytes) -> None:
        if name not in self._scripts:  # ~30 ms to compress 1 MB: not on the event loop
            self._scripts[name] = await asyncio.to_thread(compressed, script, f'"{name}"')
        self._scripts.move_to_end(name)
        while len(self._scripts) > SCRIPT_ENTRIES:
            self._scripts.popitem(last=False)

    def _build(self, card: Card, html: bytes) -> tuple[CardPage, tuple[str, bytes] | None]:
        """The page to serve, and the script split out of it (name, source) if one was."""
        apart = split(html)
        if apart is not None:
            html = apart.page(self.script_url(apart.name))
        name = None if apart is None else apart.name
        page = compressed(inject(html, self.runtime.encode()), self.etag(card), name)
        return page, None if apart is None else (apart.name, apart.script)
