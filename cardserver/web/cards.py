"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once.

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

CACHE_ENTRIES = 24  # ~300 KB each compressed: the cards people are looking at right now


ReadCard = Callable[[Card], Awaitable[bytes]]  # the source's read of a card's HTML


@dataclass(frozen=True, slots=True)
class CardPage:
    body: bytes
    gzipped: bytes
    etag: str


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
    def __init__(self, read: ReadCard) -> None:
        self.read = read
        self.runtime = "<script>" + load_runtime().replace("</", "<\\/") + "</script>"
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._cache: OrderedDict[tuple[CardKey, str], CardPage] = OrderedDict()

    def etag(self, card: Card) -> str:
        return f'"{card.version}-{self.instance}"'

    async def page(self, card: Card) -> CardPage:
        if card.version is None:
            raise Unavailable(404, "card not rendered yet")
        slot = (card.key, card.version)
        cached = self._cache.get(slot)
        if cached is not None:
            self._cache.move_to_end(slot)
            return cached
        html = await self.read(card)
        page = await asyncio.to_thread(self._build, card, html)
        self._cache[slot] = page
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return page

    def _build(self, card: Card, html: bytes) -> CardPage:
        body = inject(html, self.runtime.encode())
        return CardPage(body, gzip.compress(body, compresslevel=6, mtime=0), self.etag(card))
