"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once.

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
from dataclasses import dataclass
from importlib import resources

from ..config import Limits, Roots
from ..disk import Problem, read_regular
from ..index import Card
from ..layout import CardFileKind, CardKey, card_path

CACHE_ENTRIES = 24  # ~300 KB each compressed: the cards people are looking at right now


class CardUnavailable(Exception):
    """Why a card cannot be served; the message is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def script_json(value: object) -> str:
    """JSON that is safe inside <script>: no `</` to close it early."""
    return json.dumps(value).replace("</", "<\\/").replace("<!--", "<\\!--")


class CardPages:
    def __init__(self, roots: Roots, limits: Limits) -> None:
        self.roots = roots
        self.limits = limits
        self.runtime = "<script>" + load_runtime().replace("</", "<\\/") + "</script>"
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._cache: OrderedDict[tuple[CardKey, str], CardPage] = OrderedDict()

    def etag(self, card: Card) -> str:
        return f'"{card.version}-{self.instance}"'

    async def page(self, card: Card) -> CardPage:
        if card.version is None:
            raise CardUnavailable(404, "card not rendered yet")
        slot = (card.key, card.version)
        cached = self._cache.get(slot)
        if cached is not None:
            self._cache.move_to_end(slot)
            return cached
        page = await asyncio.to_thread(self._build, card)
        self._cache[slot] = page
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return page

    def _build(self, card: Card) -> CardPage:
        body = inject(self.read(card), self.runtime.encode())
        return CardPage(body, gzip.compress(body, compresslevel=6, mtime=0), self.etag(card))

    def read(self, card: Card) -> bytes:
        # A regular file inside the root, reached through no symlink, opened without blocking.
        html = read_regular(self.roots.cards / card_path(card.key, CardFileKind.HTML, card.legacy),
                            self.limits.max_card_bytes + 1, self.roots.cards)
        if isinstance(html, Problem):
            raise CardUnavailable(404, "card not found") from None
        if len(html) > self.limits.max_card_bytes:
            cap = self.limits.max_card_bytes
            size = f"{cap // (1024 * 1024)} MB" if cap >= 1024 * 1024 else f"{cap} bytes"
            raise CardUnavailable(413, f"card file too large to serve (over {size})")
        return html
