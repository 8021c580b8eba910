"""Metaflow's card bundle, apart from the card page that inlines it, for the warm frames.

Every Metaflow card page inlines the same ~1 MB bundle (Svelte, Vega). Chromium keeps the
compiled code of a script for the next one with the same source *and URL* in the same
renderer, so the viewer's warm frames (cards.py, static/shells.js), one URL per bundle (named
by its SHA-256), compile it once, not once per card, and a card's page comes to them without it.

The split is exact or not made: a page is split only when it has the shape Metaflow writes (its
data script, then one large script, then at most the final render's hook or the live render's
comment before `</body>`), and the large script holds nothing that could end or escape it
earlier in the browser's parser (`<script`, `</script`). Anything else has no warm frame.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MIN_BYTES = 256 * 1024  # smaller scripts are not the shared bundle: not worth a request
OPEN = b"<script>"
CLOSE = b"</script>"
# Metaflow's data script, which sets the render's token; the bundle is the script after it.
DATA_SCRIPT = re.compile(rb"<script>\s*var METAFLOW_RELOAD_TOKEN\b")
# What follows the bundle to the end: at most one of Metaflow's two closing scripts (the final
# render's hook, or a live render's comment), `</body>`, `</html>`.
TAIL = re.compile(
    rb"</script>\s*(?:<script>\s*(?:window\.metaflow_card_update = undefined;"
    rb"|// This Card was Designed to be Realtime Updatable)\s*</script>\s*)?"
    rb"</body>\s*</html>\s*\Z"
)
BETWEEN = re.compile(rb"\s*")


@dataclass(frozen=True, slots=True)
class Split:
    before: bytes  # the page up to the bundle's `<script>` tag
    script: bytes  # the bundle's source, exactly as it sat between its tags
    after: bytes  # from the bundle's `</script>` tag on, that tag excluded
    name: str  # `<sha256>.js`: the script's URL path is its content


def split(html: bytes) -> Split | None:
    """The page apart from its shared bundle, or None when it is not Metaflow's shape."""
    data = DATA_SCRIPT.search(html)
    if data is None:
        return None
    data_end = html.find(CLOSE, data.end())
    if data_end < 0 or b"<script" in html[data.end() : data_end].lower():
        return None
    start = BETWEEN.match(html, data_end + len(CLOSE))
    assert start is not None  # `\s*` always matches
    if not html.startswith(OPEN, start.end()):
        return None
    body_start = start.end() + len(OPEN)
    tail = TAIL.search(html, body_start)
    if tail is None:
        return None
    script = html[body_start : tail.start()]
    lower = script.lower()
    if len(script) < MIN_BYTES or b"<script" in lower or b"</script" in lower:
        return None
    name = hashlib.sha256(script).hexdigest() + ".js"
    return Split(html[: start.end()], script, html[tail.start() + len(CLOSE) :], name)
