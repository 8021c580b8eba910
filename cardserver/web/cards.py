"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once.

The viewer opens Metaflow's cards in *warm frames* (static/shells.js): a sandboxed page of ours
(`shell`), one per Metaflow bundle, that holds the bundle every Metaflow card page repeats
(~1 MB, split out by cardscript.py) compiled as a function, not run. Given a card's page apart
from its bundle (`parts`), it writes that page into itself and runs the bundle where the page
had it. A page is always served whole too: a card on its own, in a notebook, or anything not in
Metaflow's shape loads its own URL, and never needs a request of its own (which a proxy in front
of us would refuse a sandboxed page: it carries no cookie).

The HTML is untrusted: it is served with a CSP `sandbox` so it runs in an opaque origin even
when opened directly. It opens no connection: the trusted page that frames it (the viewer or
the card's host page) posts each update to the runtime, which applies it, over the channel
that the document it loaded opened with it (card-link.js, injected first into both pages).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from ..index import Card
from ..layout import CardKey
from ..source import Unavailable
from .cardscript import Split, split

CACHE_ENTRIES = 24  # whole pages, ~300 KB each compressed (the bundle inline): the cards in view
PARTS_ENTRIES = 64  # pages apart from their bundle, ~40 KB each compressed: the cards near by
SCRIPT_ENTRIES = 8  # one per Metaflow version whose cards are looked at
# The bundle as a function in a warm frame; the card page it writes calls it (card-shell.js).
SHELL_OPEN = b"<script>window.__cardserverBundle = function () {"
SHELL_CLOSE = b"\n};</script>"


ReadCard = Callable[[Card], Awaitable[bytes]]  # the source's read of a card's HTML
Slot = tuple[CardKey, str]  # a card's render: its key and version


@dataclass(frozen=True, slots=True)
class CardPage:
    """A response kept compressed (browsers take gzip; anything else is rare, and unpacked)."""

    gzipped: bytes
    etag: str
    script: str | None = None  # parts only: the name (`<sha256>.js`) of the bundle left out

    @property
    def body(self) -> bytes:
        return gzip.decompress(self.gzipped)


def compressed(body: bytes, etag: str, script: str | None = None) -> CardPage:
    return CardPage(gzip.compress(body, compresslevel=6, mtime=0), etag, script)


def load_runtime() -> str:
    return inline_script("card-link.js") + inline_script("card-runtime.js")


def shell_loader() -> str:
    """What a warm frame's page runs before its bundle (card-shell.js, over card-link.js)."""
    return inline_script("card-link.js") + inline_script("card-shell.js")


def inline_script(name: str) -> str:
    """One of our static scripts as an inline `<script>` element (nothing in it can end it)."""
    code = resources.files("cardserver").joinpath("static", name).read_text("utf-8")
    return "<script>" + code.replace("</", "<\\/") + "</script>"


def page_parts(apart: Split | None, after: bytes, version: str) -> tuple[bytes, str | None]:
    """The JSON a warm frame is given: the page before and after the bundle, as text, and the
    bundle's name; `script` null for a page not in Metaflow's shape (or not UTF-8)."""
    payload: dict[str, str | None] = {"script": None, "version": version}
    if apart is not None:
        with suppress(UnicodeDecodeError):
            payload |= {"script": apart.name, "before": apart.before.decode(), "after": after.decode()}
    return json.dumps(payload, separators=(",", ":")).encode(), payload["script"]


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


K = TypeVar("K")


def kept(cache: OrderedDict[K, Any], key: K, limit: int) -> None:
    """`key` is the most recently used; the least recently used beyond `limit` go."""
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class CardPages:
    """Each card's page whole (`page`) and apart from its bundle (`parts`), each built when first
    asked and cached by render; the bundles met, and their warm frames' pages (`shell`)."""

    def __init__(self, read: ReadCard) -> None:
        self.read = read
        self.runtime = load_runtime().encode()
        self.loader = shell_loader()
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._pages: OrderedDict[Slot, CardPage] = OrderedDict()
        self._parts: OrderedDict[Slot, CardPage] = OrderedDict()
        self._scripts: OrderedDict[str, bytes] = OrderedDict()  # name -> a bundle met
        self._shells: OrderedDict[str, CardPage] = OrderedDict()  # name -> its warm frame's page

    def etag(self, card: Card) -> str:
        return f'"{card.version}-{self.instance}"'

    async def page(self, card: Card) -> CardPage:
        """The card's page, whole, with the runtime (~30 ms for 1 MB: not on the event loop)."""
        slot = self._slot(card)
        found = self._pages.get(slot)
        if found is None:
            html = await self.read(card)
            found = self._pages[slot] = await asyncio.to_thread(self._build_page, card, html)
        kept(self._pages, slot, CACHE_ENTRIES)
        return found

    async def parts(self, card: Card) -> CardPage:
        """The card's page apart from Metaflow's bundle, as JSON, for a warm frame."""
        slot = self._slot(card)
        found = self._parts.get(slot)
        if found is None or (found.script is not None and found.script not in self._scripts):
            found = self._parts[slot] = await self._read_parts(card)  # (its shell needs its bundle)
        kept(self._parts, slot, PARTS_ENTRIES)
        if found.script is not None:
            kept(self._scripts, found.script, SCRIPT_ENTRIES)
        return found

    async def shell(self, name: str) -> CardPage | None:
        """The warm frame's page for a bundle split out of a page here (compressed once, when
        first asked: ~30 ms for 1 MB, not on the event loop)."""
        found = self._shells.get(name)
        script = self._scripts.get(name)
        if found is None and script is None:
            return None
        if found is None and script is not None:
            body, etag = shell_page(script, self.loader), f'"shell-{name}-{self.instance}"'
            found = self._shells[name] = await asyncio.to_thread(compressed, body, etag)
        kept(self._shells, name, SCRIPT_ENTRIES)
        return found

    def _slot(self, card: Card) -> Slot:
        if card.version is None:
            raise Unavailable(404, "card not rendered yet")
        return (card.key, card.version)

    async def _read_parts(self, card: Card) -> CardPage:
        html = await self.read(card)
        parts, bundle = await asyncio.to_thread(self._build_parts, card, html)
        if bundle is not None:
            self._scripts[bundle[0]] = bundle[1]
        return parts

    def _build_page(self, card: Card, html: bytes) -> CardPage:
        return compressed(inject(html, self.runtime), self.etag(card))

    def _build_parts(self, card: Card, html: bytes) -> tuple[CardPage, tuple[str, bytes] | None]:
        apart = split(html)
        after = b"" if apart is None else inject(apart.after, self.runtime)  # its last `</body>`
        text, name = page_parts(apart, after, str(card.version))
        bundle = None if apart is None or name is None else (apart.name, apart.script)
        return compressed(text, self.etag(card), name), bundle
