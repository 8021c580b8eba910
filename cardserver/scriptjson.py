"""JSON to write inside an HTML `<script>` element, for the viewer's pages, card pages and the
demo's cards: no character of the data can close the element or open a comment in it."""

from __future__ import annotations

import json


def script_json(value: object) -> str:
    """`<`, `>` and `&` as JSON escapes: the same value to a JSON parser, inert to HTML."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
