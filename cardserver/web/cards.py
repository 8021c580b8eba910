"""Card HTML: a card's own HTML with the small runtime injected, sandboxed, compressed once.

Our style goes first into its head (static/card-charts.css: a chart as wide as its frame at any
width; docs/cards.md), the runtime before its last `</body>`.

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
import re
import secrets
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources

from ..index import Card
from ..layout import CardKey
from ..source import Unavailable
from .cardscript import Split, split
from .kept import Kept

MiB = 1024 * 1024
# Each cache is bounded by count and by bytes, so what cards can make the server keep is at
# most CACHE_BYTES in all, however big they are (a page over a cache's share is served, not kept).
CACHE_ENTRIES, CACHE_BYTES_PAGES = 24, 32 * MiB  # whole pages, ~300 KB each compressed: those in view
PARTS_ENTRIES, CACHE_BYTES_PARTS = 64, 16 * MiB  # pages apart from their bundle, ~40 KB compressed
SCRIPT_ENTRIES, CACHE_BYTES_SCRIPTS = 8, 16 * MiB  # bundles met (~1 MB each): one per Metaflow version
CACHE_BYTES_SHELLS = 16 * MiB  # their warm frames' pages, ~300 KB each compressed
CACHE_BYTES = CACHE_BYTES_PAGES + CACHE_BYTES_PARTS + CACHE_BYTES_SCRIPTS + CACHE_BYTES_SHELLS
# Pages read and built at once: each holds a card's bytes a few times over (up to the 64 MiB cap).
BUILDS = 2
CHUNK = 256 * 1024  # a page is sent this much at a time, each piece once the last is on its way
# The bundle as a function in a warm frame; the card page it writes calls it (card-shell.js).
SHELL_OPEN = b"<script>window.__cardserverBundle = function () {"
SHELL_CLOSE = b"\n};</script>"


ReadCard = Callable[[Card], Awaitable[bytes]]  # the source's read of a card's HTML
Slot = tuple[CardKey, str]  # a card's render: its key and version


@dataclass(frozen=True, slots=True)
class CardPage:
    """A response kept compressed (browsers take gzip; anything else is rare, and unpacked a
    chunk at a time as it is sent)."""

    gzipped: bytes
    size: int  # unpacked
    etag: str
    script: str | None = None  # parts only: the name (`<sha256>.js`) of the bundle left out

    @property
    def body(self) -> bytes:
        return gzip.decompress(self.gzipped)

    def chunks(self, gzipped: bool) -> Iterator[bytes | memoryview]:
        """The response in pieces of at most CHUNK bytes, compressed or not."""
        if gzipped:
            whole = memoryview(self.gzipped)
            yield from (whole[at : at + CHUNK] for at in range(0, len(whole), CHUNK))
            return
        unpack, left = zlib.decompressobj(wbits=31), self.gzipped  # (31: gzip's header and trailer)
        while not unpack.eof:
            chunk = unpack.decompress(left, CHUNK)
            left = unpack.unconsumed_tail
            if not (chunk or left):
                return  # cut short: never, as we wrote it
            yield chunk


def compressed(body: bytes, etag: str, script: str | None = None) -> CardPage:
    return CardPage(gzip.compress(body, compresslevel=6, mtime=0), len(body), etag, script)


def load_runtime() -> str:
    return inline_script("card-link.js") + inline_script("card-runtime.js")


def shell_loader() -> str:
    """What a warm frame's page runs before its bundle (card-shell.js, over card-link.js)."""
    return inline_script("card-link.js") + inline_script("card-shell.js")


def load_style() -> str:
    """Our style for every card page (docs/cards.md says why)."""
    return inline("style", "card-charts.css")


def inline_script(name: str) -> str:
    return inline("script", name)


def inline(tag: str, name: str) -> str:
    """One of our static files as an inline `<script>` or `<style>` (nothing in it can end it)."""
    code = resources.files("cardserver").joinpath("static", name).read_text("utf-8")
    return f"<{tag}>" + code.replace("</", "<\\/") + f"</{tag}>"


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


HEAD = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)


def inject_first(html: bytes, snippet: bytes) -> bytes:
    """Just inside `<head>` (before the page's own styles and scripts), else where `inject` puts
    it. Metaflow's page has its `<head>` before any script, so the first is the real one."""
    head = HEAD.search(html)
    return inject(html, snippet) if head is None else html[: head.end()] + snippet + html[head.end() :]


class CardPages:
    """Each card's page whole (`page`) and apart from its bundle (`parts`), each built when first
    asked and cached by render; the bundles met, and their warm frames' pages (`shell`)."""

    def __init__(self, read: ReadCard) -> None:
        self.read = read
        self.runtime = load_runtime().encode()
        self.style = load_style().encode()
        self.loader = shell_loader()
        self.instance = secrets.token_hex(4)  # per start: a new runtime
        self._pages: Kept[Slot, CardPage] = Kept(CACHE_ENTRIES, CACHE_BYTES_PAGES, page_bytes)
        self._parts: Kept[Slot, CardPage] = Kept(PARTS_ENTRIES, CACHE_BYTES_PARTS, page_bytes)
        self._scripts: Kept[str, bytes] = Kept(SCRIPT_ENTRIES, CACHE_BYTES_SCRIPTS, len)  # by name
        self._shells: Kept[str, CardPage] = Kept(SCRIPT_ENTRIES, CACHE_BYTES_SHELLS, page_bytes)
        self._building = asyncio.Semaphore(BUILDS)

    @property
    def kept_bytes(self) -> int:
        """The bytes all the caches hold now (at most CACHE_BYTES)."""
        return sum(c.bytes for c in (self._pages, self._parts, self._scripts, self._shells))

    def etag(self, card: Card) -> str:
        return f'"{card.version}-{self.instance}"'

    async def page(self, card: Card) -> CardPage:
        """The card's page, whole, with the runtime (~30 ms for 1 MB: not on the event loop)."""
        slot = self._slot(card)
        found = self._pages.get(slot)
        if found is not None:
            return found
        async with self._building:
            found = self._pages.get(slot)  # built while this one waited its turn
            if found is None:
                html = await self.read(card)
                found = self._pages.put(slot, await asyncio.to_thread(self._build_page, card, html))
        return found

    async def parts(self, card: Card) -> CardPage:
        """The card's page apart from Metaflow's bundle, as JSON, for a warm frame."""
        slot = self._slot(card)
        found = self._usable_parts(slot)
        if found is None:
            async with self._building:
                found = self._usable_parts(slot)  # built while this one waited its turn
                if found is None:
                    found = self._parts.put(slot, await self._read_parts(card))
        if found.script is not None:
            self._scripts.get(found.script)  # its bundle: as recently used as its page
        return found

    async def shell(self, name: str) -> CardPage | None:
        """The warm frame's page for a bundle split out of a page here (compressed once, when
        first asked: ~30 ms for 1 MB, not on the event loop)."""
        found = self._shells.get(name)
        script = self._scripts.get(name)
        if found is None and script is not None:
            body, etag = shell_page(script, self.loader), f'"shell-{name}-{self.instance}"'
            found = self._shells.put(name, await asyncio.to_thread(compressed, body, etag))
        return found

    def _usable_parts(self, slot: Slot) -> CardPage | None:
        """The page apart, cached, unless its bundle was let go (its warm frame needs it)."""
        found = self._parts.get(slot)
        if found is not None and found.script is not None and found.script not in self._scripts:
            return None
        return found

    def _slot(self, card: Card) -> Slot:
        if card.version is None:
            raise Unavailable(404, "card not rendered yet")
        return (card.key, card.version)

    async def _read_parts(self, card: Card) -> CardPage:
        html = await self.read(card)
        parts, bundle = await asyncio.to_thread(self._build_parts, card, html)
        if bundle is not None:
            self._scripts.put(*bundle)
        return parts

    def _build_page(self, card: Card, html: bytes) -> CardPage:
        return compressed(inject(inject_first(html, self.style), self.runtime), self.etag(card))

    def _build_parts(self, card: Card, html: bytes) -> tuple[CardPage, tuple[str, bytes] | None]:
        apart = split(inject_first(html, self.style))  # (in the page before the bundle)
        if apart is not None and not self._scripts.fits(len(apart.script)):
            apart = None  # a bundle too big to keep has no warm frame: the page loads whole
        after = b"" if apart is None else inject(apart.after, self.runtime)  # its last `</body>`
        text, name = page_parts(apart, after, str(card.version))
        bundle = None if apart is None or name is None else (apart.name, apart.script)
        return compressed(text, self.etag(card), name), bundle


def page_bytes(page: CardPage) -> int:
    return len(page.gzipped)
